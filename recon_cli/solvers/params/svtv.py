"""Parameters of ``svtv`` (no numpy)."""
from __future__ import annotations

from pydantic import Field

from recon_cli.solvers.params.tv import TVParams
from recon_cli.solvers.registry import SolverRef, declare, unit


class SVTVParams(TVParams):
    """``tv``'s parameters plus p, eta and the pre-estimate."""

    p: float = unit("1", "exponent: w = (eta / sqrt(eta^2 + |Du|^2))^(1-p); 1 = plain TV", default=0.5,
                    ge=0.0, le=1.0)
    eta: float = unit("1 (relative)", "edge threshold relative to the pre-estimate's range: "
                      "eta_abs = eta * (max u - min u); the paper's 2e-3 follows FBP noise", default=0.05, gt=0.0)
    smoothing: float = unit("pixels", "sigma of the in-plane Gaussian blur of the pre-estimate before its "
                            "gradient (0: none)", default=1.0, ge=0.0, le=20.0)
    pre_estimate: SolverRef = Field(default_factory=lambda: SolverRef(name="fbp"),
                                    description="solver giving u = Psi(y), whose gradient sets the weights")


declare("svtv", SVTVParams,
        "Space-variant TV: TV weighted by the edges of a pre-estimate (FBP, an iterative solver "
        "or a network), PDHG with x >= 0",
        iterative=True)
