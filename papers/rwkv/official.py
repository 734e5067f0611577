"""Run an RWKV-LM ``.pth`` in the official runtime, the ``rwkv`` pip package (BlinkDL/ChatRWKV), on CPU.

    seq, steps = official_logits(path, tokens)     # (T, V) from one sequence forward, (T, V) token by token

The package picks RWKV-4 or RWKV-7 when it is imported (``RWKV_V7_ON``), so each call runs it in a fresh
Python process, with ``RWKV_JIT_ON=0`` and ``RWKV_CUDA_ON=0`` (CPU, fp32). Used by the tests (parity on tiny
random models) and by ``nox -s reproduce-rwkv`` (the trained LMs, exported with ``blinkdl.save_blinkdl``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common.errors import PaperzooError

from .blinkdl import RWKV7_MARK

_RUNNER = r"""
import json, sys, time
import torch
from rwkv import model as official

path, version, tokens, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(sys.argv[5]))
if version == "7":
    lm = official.RWKV_x070(path[: -len(".pth")], "cpu fp32")
else:
    lm = official.RWKV(path, "cpu fp32", verbose=False)
seq, _ = lm.forward(tokens, None, full_output=True)
state, steps = None, []
start = time.perf_counter()
for token in tokens:
    logits, state = lm.forward([token], state)
    steps.append(logits.float())
seconds = time.perf_counter() - start
torch.save({"seq": seq.float(), "steps": torch.stack(steps), "ms_per_token": 1e3 * seconds / len(tokens)}, out)
"""


def blinkdl_version(path: str | Path) -> str:
    keys = torch.load(
        path, map_location="cpu", weights_only=True, mmap=True
    ).keys()  # names only: no tensor read
    return "7" if RWKV7_MARK in keys else "4"


def official_logits(path: str | Path, tokens: list[int], threads: int = 1) -> dict:
    """{"seq": (T, V) logits of the package's sequence forward, "steps": (T, V) of its token-by-token RNN
    form, "ms_per_token": its generation speed} for the ``.pth`` at ``path``."""
    try:
        import rwkv  # noqa: F401  (only to fail early, in this process, with a clear message)
    except ImportError:
        raise PaperzooError("the official runtime is missing: pip install rwkv") from None
    path = Path(path)
    if path.suffix != ".pth":
        raise PaperzooError(f"{path}: the rwkv package reads '.pth' files only")
    env = {**os.environ, "RWKV_JIT_ON": "0", "RWKV_CUDA_ON": "0", "RWKV_V7_ON": "0"}
    version = blinkdl_version(path)
    if version == "7":
        env["RWKV_V7_ON"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.pt"
        args = [str(path), version, json.dumps([int(t) for t in tokens]), str(out), str(threads)]
        done = subprocess.run([sys.executable, "-c", _RUNNER, *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PaperzooError(f"the rwkv package failed on {path.name}: {last}")
        return torch.load(out, weights_only=True)
