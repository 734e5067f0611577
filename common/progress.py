"""Training progress a person can read: a tqdm bar on a terminal, plain lines in a log file.

On a terminal (stderr is a TTY) the bar shows step, loss, lr and tokens/s. Anywhere else (CI, ``nohup``,
``> log 2>&1``) carriage-return frames would flood the log with thousands of frames on one line, so
a plain line is printed instead, at most every ``every_s`` seconds or every 10% of the run, and at the
end::

    shakespeare_char/gpt/s0: step 400/800 (50%) loss 1.9321 lr 1.02e-03 tokens/s 20,480 ETA 1m12s

``progress=false`` (a config override of every paper) silences both.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """``update(1)`` per step; ``show(loss=, lr=, tokens_per_s=)`` when new numbers are logged; ``close()``."""

    bars = True  # False: plain lines even on a terminal (common.workers: bars of parallel runs would collide)

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True,
                 stream: TextIO | None = None, every_s: float = 30.0):  # fmt: skip
        self.stream = stream or sys.stderr
        self.total, self.step, self.desc, self.every_s = total, initial, desc, every_s
        self.enabled = enabled
        self.numbers: dict[str, float] = {}
        self.bar = None
        if enabled and self.bars and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, file=self.stream)
        self.started, self.first = time.monotonic(), initial
        self.last_line, self.last_tenth = self.started, 10 * initial // max(total, 1)

    def show(self, loss: float, lr: float, tokens_per_s: float) -> None:
        self.numbers = {"loss": loss, "lr": lr, "tokens_per_s": tokens_per_s}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.enabled:
            return
        now, tenth = time.monotonic(), 10 * self.step // max(self.total, 1)
        if now - self.last_line >= self.every_s or tenth > self.last_tenth or self.step == self.total:
            self.last_line, self.last_tenth = now, tenth
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        parts = [f"{self.desc}: step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)"]
        if self.numbers:
            n = self.numbers
            parts.append(f"loss {n['loss']:.4f} lr {n['lr']:.2e} tokens/s {n['tokens_per_s']:,.0f}")
        done = self.step - self.first
        if done > 0 and self.step < self.total:
            parts.append(f"ETA {_duration((now - self.started) / done * (self.total - self.step))}")
        return " ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
