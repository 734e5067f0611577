"""What every paper's ``bench.py`` shares: interleaved timing, the environment header, the result files.

A benchmark measures speed only (never a test assertion): ``nox -s bench`` runs each paper's
``bench.py`` and writes ``reports/<paper>/bench.md`` and ``bench.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common.tracking import cpu_name, git_info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device = CPU) -> dict[str, float]:
    """Median seconds per call of each function after one untimed warm-up call each. The functions take
    turns, so that a busy machine slows them all alike and their ratios stay meaningful."""
    times: dict[str, list[float]] = {}
    for name, fn in fns.items():
        fn()
        times[name] = []
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _commit() -> str:
    info = git_info()
    return info["git_commit"][:10] + (" (dirty)" if info["git_dirty"] == "true" else "")


def environment(device: torch.device) -> dict:
    """Where the numbers come from: ``hardware`` (cpu, gpu, device, threads), ``torch``, ``commit``, ``date``."""
    return {
        "hardware": {
            "cpu": cpu_name(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "device": device.type,
            "threads": torch.get_num_threads(),
        },
        "torch": torch.__version__,
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def environment_line(result: dict) -> str:
    hw = result["hardware"]
    return (
        f"CPU: {hw['cpu']}; GPU: {hw['gpu'] or 'none'}; device: {hw['device']}, {hw['threads']} threads; "
        f"torch {result['torch']}; commit {result.get('commit', '?')}; {result['date']}"
    )


def write_results(out_dir: str | Path, result: dict, markdown: Callable[[dict], str]) -> dict:
    """``out_dir/bench.json`` (the numbers) and ``out_dir/bench.md`` (``markdown(result)``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(result))
    return result


def cli(
    description: str, default_out: Path, run: Callable[..., dict], markdown: Callable[[dict], str]
) -> None:
    """A paper's ``python -m papers.<slug>.bench [--out DIR] [--lengths L ...] [--repeats N]``: ``run(out,
    lengths, repeats)``, then its markdown on stdout."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(markdown(run(args.out, tuple(args.lengths), args.repeats)), end="")
