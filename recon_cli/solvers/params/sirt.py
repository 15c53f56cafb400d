"""Parameters of ``sirt`` (no numpy)."""
from __future__ import annotations

from recon_cli.solvers.registry import SolverParams, declare, unit


class SIRTParams(SolverParams):
    iterations: int = unit("-", "number of iterations", default=100, ge=1)
    nonnegative: bool = unit("-", "project onto x >= 0 after each update", default=True)
    relaxation: float = unit("-", "relaxation factor (0 < relaxation < 2)", default=1.0, gt=0.0, lt=2.0)

    def iteration_budget(self) -> int:
        return self.iterations


declare("sirt", SIRTParams,
        "simultaneous iterative reconstruction technique",
        iterative=True)
