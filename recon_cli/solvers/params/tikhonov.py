"""Parameters of ``tikhonov`` (no numpy)."""
from __future__ import annotations

from typing import Literal, Union

from recon_cli.solvers.registry import SolverParams, declare, unit


class TikhonovParams(SolverParams):
    """Parameters of ``tikhonov`` (lam for unit pixels: the solver uses lam * voxel_size^2)."""

    needs_exact_adjoint = True  # CGLS: diverged on ASTRA's CUDA projector (benchmarks/results/gpu.md)

    lam: Union[float, Literal["gcv", "discrepancy", "auto"]] = unit(
        "1 (unit pixels)", "weight of ||D x||^2; the solver uses lam * voxel_size^2. 'gcv': generalised "
        "cross-validation on a Golub-Kahan projection of the problem; 'discrepancy': residual = discrepancy_tau x "
        "noise norm on the same projection; 'auto' (as in every regularised solver): auto_lam_factor x the "
        "discrepancy lam", default="gcv")
    iterations: int = unit("1", "maximum number of CGLS iterations on the stacked system", default=500, ge=1)
    tol: float = unit("1", "stop when ||A^T(b - A x)|| / ||A^T b|| < tol (A = [K; sqrt(lam) D])",
                      default=1e-6, ge=0.0)
    gcv_steps: int = unit("1", "lam gcv / discrepancy: Golub-Kahan steps of the projected problem", default=40,
                          ge=2, le=500)
    gcv_omega: float = unit("1", "lam gcv: weight omega of the weighted GCV (1 = standard GCV)",
                            default=1.0, gt=0.0, le=1.0)
    discrepancy_tau: float = unit("1", "lam discrepancy: target residual = discrepancy_tau * noise norm "
                                  "(metadata sigma or I0, else estimated)", default=1.01, ge=0.5, le=3.0)
    auto_lam_factor: float = unit("1", "lam auto: lam = auto_lam_factor x the discrepancy-principle lam (which "
                                  "over-smooths a quadratic regulariser; chosen on the evaluation suite's "
                                  "tuning cases); 1 = lam discrepancy", default=0.4, gt=0.0, le=1.0)
    nonnegative: bool = unit("-", "clip the result to x >= 0", default=False)
    mode: Literal["slicewise", "3d"] = unit("-", "gradient of a slice stack: per slice or 3D", default="slicewise")

    def iteration_budget(self) -> int:
        return self.iterations


declare("tikhonov", TikhonovParams,
        "Tikhonov with a gradient regulariser, CGLS on the stacked system; lam fixed or by "
        "generalised cross-validation (projected GCV)",
        iterative=True)
