"""Progress in a log file is a few plain lines, never carriage-return frames (newcomer issue, point 7)."""

import io

from common.progress import Progress
from common.testing import run_cli


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream, total=1000, **kw) -> str:
    bar = Progress(total, 0, "task/variant/s0", stream=stream, **kw)
    for step in range(1, total + 1):
        if step % 10 == 0:
            bar.show(loss=2.0 - step / total, lr=1e-3, tokens_per_s=20480.0)
        bar.update(1)
    bar.close()
    return stream.getvalue()


def test_a_log_file_gets_a_line_every_tenth_and_no_frames():
    lines = run(io.StringIO()).splitlines()
    assert len(lines) == 10 and "\r" not in "".join(lines)
    assert lines[4].startswith(
        "task/variant/s0: step 500/1000 (50%) loss 1.5000 lr 1.00e-03 tokens/s 20,480 ETA"
    )
    assert lines[-1].startswith("task/variant/s0: step 1000/1000 (100%)") and "ETA" not in lines[-1]


def test_a_line_every_30_seconds_on_a_slow_run(monkeypatch):
    clock = iter(range(0, 10**6, 7))  # each call of the clock: 7 s later (a 1000-step run of ~1 h)
    monkeypatch.setattr("common.progress.time.monotonic", lambda: next(clock))
    lines = run(io.StringIO(), total=1000).splitlines()
    assert 100 < len(lines) < 260  # ~every 5th step (35 s apart), not every step; the tenths fall among them
    assert all("ETA" in line for line in lines[:-1])


def test_a_terminal_gets_the_bar_and_progress_false_prints_nothing():
    assert "\r" in run(Terminal())
    assert run(io.StringIO(), enabled=False) == "" and run(Terminal(), enabled=False) == ""


def test_a_reproduction_logged_to_a_file_is_readable(lab):
    result = run_cli(
        "-m", "common.reproduce", "template", "scale=smoke", "only=[rings/mlp]"
    )  # stderr: a pipe
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "rings/mlp/s0: step" in line]
    assert 1 <= len(progress) <= 11 and "\r" not in result.stderr
