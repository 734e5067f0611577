"""Seeded, deterministic synthetic tasks, generated in code (no files, no downloads).

Every generator is a pure function of ``(seed, split, index)``: batch ``index`` of a run is the
same whether the run was interrupted or not, on one process or on many. Papers add their own
generators here when more than one paper uses them.

Tasks
    selective_copying   Gu & Dao 2023 (Mamba), Sec. 4.1.1 / App. E.1: memorise the data tokens
                        scattered among noise tokens, output them in order after the markers.
    induction_heads     Olsson et al. 2022; Mamba Sec. 4.1.2: after "... k v ... k", predict v.
"""

from __future__ import annotations

import hashlib

import torch

IGNORE_INDEX = -100
SPLITS = {"train": 0, "val": 1, "test": 2}


def generator(seed: int, split: str, index: int) -> torch.Generator:
    """A torch.Generator determined by (seed, split, index) and nothing else."""
    digest = hashlib.blake2b(f"{seed}/{SPLITS.get(split, split)}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
