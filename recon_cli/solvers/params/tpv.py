"""Parameters of ``tpv`` (no numpy)."""
from __future__ import annotations

from recon_cli.solvers.params.tv import TVParams
from recon_cli.solvers.registry import declare, unit


class TpVParams(TVParams):
    """``tv``'s parameters (``iterations`` per outer step) plus outer_iterations, p and eta."""

    iterations: int = unit("1", "PDHG iterations per outer (reweighting) step", default=100, ge=1)
    outer_iterations: int = unit("1", "number of weighted TV solves (the first is plain TV)", default=5, ge=1)
    p: float = unit("1", "exponent of TpV: w = (eta / sqrt(eta^2 + |Dx|^2))^(1-p)", default=0.5, ge=0.0, le=1.0)
    eta: float = unit("1 (relative)", "edge threshold relative to the current iterate's range", default=2e-3, gt=0.0)

    def iteration_budget(self) -> int:
        """PDHG iterations over all outer steps."""
        return self.iterations * self.outer_iterations


declare("tpv", TpVParams,
        "Iteratively reweighted TV (TpV): weights from the current iterate, PDHG with x >= 0, "
        "warm-started",
        iterative=True)
