"""What every paper's ``bench.py`` shares: interleaved timing, the environment header, the result files.

A benchmark measures speed only (never a test assertion): ``nox -s bench`` runs each paper's
``bench.py`` and writes ``reports/<paper>/bench.md`` and ``bench.json``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import time
from collections.abc import Callable
from functools import partial
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


def _fwd_bwd(fn: Callable, x: dict) -> None:
    out = fn(**x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()  # an output, or (output, state)


def time_paths(
    label: str,
    inputs: Callable[[int, torch.device], dict],
    paths: dict[str, Callable | None],
    lengths: tuple[int, ...],
    repeats: int,
    device: torch.device,
    log: Callable[[str], None],
    budget_s: float,
    extrapolated: Callable[[str], bool] = lambda name: name != "fast",
) -> list[dict]:
    """Seconds per forward + backward of each path (``fn(**inputs(L, device))`` -> an output, or a tuple
    starting with one; None: "not installed") at each length L, the paths taking turns (``timed``). A path
    for which ``extrapolated(name)`` (a sequential loop: time linear in L) is "skipped" once its time,
    extrapolated from the last length, would exceed ``budget_s``. A row also holds ``speedup_vs_<path>``:
    that path's time over the "fast" one's."""
    rows, last_time = [], {}
    for length in lengths:
        x = inputs(length, device)
        row: dict = {"L": length} | dict.fromkeys(paths)
        to_time = {}
        for name, fn in paths.items():
            if fn is None:
                row[name] = "not installed"
                continue
            if extrapolated(name) and name in last_time:
                timed_length, seconds = last_time[name]
                estimate = (repeats + 1) * seconds * length / timed_length
                if estimate > budget_s:
                    row[name] = "skipped"
                    log(f"{label} L={length} {name}: skipped (would take about {estimate:.0f} s)")
                    continue
            to_time[name] = partial(_fwd_bwd, fn, x)
        log(f"{label} L={length}: timing {', '.join(to_time)} ({repeats} repeats, taking turns)")
        for name, seconds in timed(to_time, repeats, device).items():
            row[name], last_time[name] = seconds, (length, seconds)
            log(f"{label} L={length} {name}: {1e3 * seconds:.1f} ms fwd+bwd")
        for other in paths:
            if other != "fast" and isinstance(row[other], float):
                row[f"speedup_vs_{other}"] = row[other] / row["fast"]
        rows.append(row)
    return rows


def package_version(package: str) -> str | None:
    """The installed version of ``package``, None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


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
