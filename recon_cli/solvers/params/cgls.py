"""Parameters of ``cgls`` (no numpy)."""
from __future__ import annotations

from recon_cli.solvers.registry import SolverParams, declare, unit


class CGLSParams(SolverParams):
    iterations: int = unit("-", "maximum number of iterations", default=30, ge=1)
    tol: float = unit("-", "stop when ||A^T(y - A x)|| / ||A^T y|| < tol in every slice (0: never)",
                      default=0.0, ge=0.0)

    def iteration_budget(self) -> int:
        return self.iterations


declare("cgls", CGLSParams,
        "conjugate gradient least squares (no regularisation)",
        iterative=True)
