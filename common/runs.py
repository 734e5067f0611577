"""Finished runs as artifacts that other runs start from.

``RunRef(paper, preset, task, variant, seed)`` names a finished run of a reproduction.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunRef:
    paper: str  # slug, e.g. "transformer"
    preset: str  # smoke | cpu | gpu
    task: str
    variant: str
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.paper}:{self.preset}:{self.task}/{self.variant}/s{self.seed}"
