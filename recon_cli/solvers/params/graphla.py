"""Parameters of ``graphla`` (no numpy); lam and eps in the normalised convention of recon_cli.solvers.graphla."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field

from recon_cli.constants import MU_WATER  # 1/mm
from recon_cli.solvers.registry import SolverParams, SolverRef, declare, unit


class GraphLaParams(SolverParams):
    """Parameters of ``graphla`` (lam and eps in the normalised convention of recon_cli.solvers.graphla).

    Former names (accepted for one release): ``psi`` (now ``pre_estimate``, as in svtv), ``graph_mode``
    (``mode``, as in tv), ``tau`` (``discrepancy_tau``, as in tv, sgp_tv and tikhonov).
    """

    renamed = {"psi": "pre_estimate", "graph_mode": "mode", "tau": "discrepancy_tau"}

    pre_estimate: SolverRef = Field(default_factory=lambda: SolverRef(name="fbp"),
                           description="solver giving the preliminary reconstruction u = Psi(y) that defines L")
    R: int = unit("pixels", "window: neighbours at ||pos_i - pos_j||_inf <= R - 1 (R = 5: 9 x 9)", default=5,
                  ge=1, le=20)
    sigma: float = unit("1 (relative)", "graph weight scale: w_ij = exp(-(u_i - u_j)^2 / sigma), u mapped to [0, 1]; contrasts "
                        "below about sqrt(sigma) are smoothed (1e-3 synthetic, 2e-4 clinical in the paper)", default=1e-3, gt=0.0)
    mode: Literal["slicewise", "3d"] = unit("-", "graph of a slice stack: per slice (block-diagonal) or 3D",
                                                  default="slicewise")
    slice_half_width: int = unit("slices", "mode 3d: neighbours in slices |dz| <= this", default=1, ge=0)
    lam: Union[float, Literal["auto"]] = unit(
        "1 (image / intensity_scale, unit pixels)",
        "weight of ||L x||_1 for the normalised image (the solver uses lam * intensity_scale * voxel_size^2); "
        "'auto': discrepancy principle (mmgks: at every iteration; pdhg: search)", default="auto")
    algorithm: Literal["mmgks", "pdhg"] = unit("-", "mmgks (paper) or pdhg (Chambolle-Pock, with x >= 0)",
                                               default="mmgks")
    nonnegative: bool = unit("-", "x >= 0 (pdhg: constraint; mmgks: final clip)", default=True)
    iterations: int = unit("1", "maximum number of iterations", default=200, ge=1)
    tol: float = unit("1", "stop when ||x_k+1 - x_k|| / ||x_k+1|| < tol (0: off)", default=1e-4, ge=0.0)
    intensity_scale: float = unit("1/mm", "attenuation that maps to 1 in the normalised image (2 x water)",
                                  default=2 * MU_WATER, gt=0.0)
    discrepancy_tau: float = unit("1", "discrepancy principle: target residual = discrepancy_tau * noise norm",
                                  default=1.01, ge=0.5, le=3.0)
    noise_sigma: Optional[float] = unit("1 (line integral)", "noise std per sinogram value; default: metadata "
                                        "sigma / I0, else estimated", default=None)
    eps: float = unit("1 (normalised)", "mmgks: smoothing of |t| as sqrt(t^2 + eps^2)", default=0.1, gt=0.0)
    restart: int = unit("1", "mmgks: restart the subspace every this many iterations", default=30, ge=1)
    krylov_dim: int = unit("1", "mmgks: initial Golub-Kahan vectors (plus u)", default=5, ge=1, le=100)
    step_ratio: Union[float, Literal["auto"]] = unit("1", "pdhg: primal/dual step balance (see pdhg.py)",
                                                     default="auto")
    search_iterations: int = unit("1", "pdhg lam auto: iterations per leg of the lam controller (at most iterations / 6)", default=100, ge=5)
    search_start: float = unit("1 (normalised)", "pdhg lam auto: first lam of the controller", default=1000.0, gt=0.0)
    search_rtol: float = unit("1", "pdhg lam auto: lam is settled when two legs in a row end with |residual / target - 1| <= search_rtol", default=0.02,
                              gt=0.0, lt=1.0)

    def iteration_budget(self) -> int:
        return self.iterations


declare("graphla", GraphLaParams,
        "graphLa+Psi: l1 of the graph Laplacian of a preliminary reconstruction Psi(y); MM-GKS "
        "with the discrepancy principle, or Chambolle-Pock with x >= 0",
        iterative=True)
