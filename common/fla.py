"""fla-core's pure-PyTorch reference implementations, loaded by file path: code nobody here wrote, for parity
tests and benchmark baselines only.

fla-core is the core of flash-linear-attention (Yang, Zhang et al., https://github.com/fla-org/
flash-linear-attention, MIT licence): triton kernels for linear-attention models, with plain PyTorch
references (``naive.py``) beside them. ``import fla`` needs triton, so a reference file (which imports only
torch, and sometimes einops) is found through the installed distribution and loaded by path, without importing
the ``fla`` package:

    naive = fla_naive("ops/ttt/naive.py")        # the module; a one-line PaperzooError when it is missing
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

from common.errors import PaperzooError


def fla_file(relative: str) -> Path:
    """The path of ``fla/<relative>`` in the installed fla-core distribution (without importing fla)."""
    try:
        dist = importlib.metadata.distribution("fla-core")
    except importlib.metadata.PackageNotFoundError:
        raise PaperzooError(
            "fla-core is not installed (pip install fla-core; used for comparison only)"
        ) from None
    path = Path(dist.locate_file(f"fla/{relative}"))
    if not path.is_file():
        raise PaperzooError(f"fla-core {dist.version} has no fla/{relative} (looked at {path})")
    return path


@functools.cache
def fla_naive(relative: str) -> ModuleType:
    """fla-core's ``fla/<relative>`` as a module (errors are not cached: the next call looks again)."""
    path = fla_file(relative)
    if importlib.util.find_spec("einops") is None:
        raise PaperzooError(f"fla-core's {path.name} needs einops: pip install einops")
    spec = importlib.util.spec_from_file_location(f"fla_naive_{relative.replace('/', '_')[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
