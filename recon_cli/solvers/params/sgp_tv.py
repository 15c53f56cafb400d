"""Parameters of ``sgp_tv`` (no numpy); lam and beta in the normalised convention of recon_cli.solvers.sgp_tv."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from recon_cli.constants import MU_WATER  # 1/mm
from recon_cli.solvers.registry import SolverParams, SolverRef, declare, unit


class SGPTVParams(SolverParams):
    """Parameters of ``sgp_tv`` (lam and beta in the normalised convention of recon_cli.solvers.sgp_tv)."""

    lam: Union[Annotated[float, Field(ge=0.0, allow_inf_nan=False)], Literal["auto", "noise"]] = unit(
        "1 (normalised)", "TV weight for x / intensity_scale on unit pixels, applied as "
        "lam * intensity_scale * voxel_size^2 (mm); RISING paper: 0.1, too weak for our I0 = 1e5 samples. "
        "'auto': discrepancy principle, as in tv (noise from metadata or the sinogram, raised by the model "
        "error); 'noise': a rule without any solve, lam = lam_per_noise_std * (noise std of one line "
        "integral, from metadata or the sinogram) / voxel_size (mm): RISING's lam across an envelope",
        default=10.0)
    lam_per_noise_std: float = unit("mm", "lam 'noise': lam * voxel_size / noise std (tv's lam auto lands at "
                                    "240-660 on the suite, geometric mean ~380)", default=400.0, gt=0.0)
    beta: float = unit("1 (normalised)", "TV smoothing sqrt(|Dx|^2 + beta^2) for x / intensity_scale, "
                       "applied as beta * intensity_scale (1/mm)", default=1e-3, gt=0.0)
    intensity_scale: float = unit("1/mm", "attenuation that maps to 1 in the normalised image "
                                  "(default 2 x water, about bone)", default=2 * MU_WATER, gt=0.0)
    iterations: int = unit("1", "maximum number of iterations", default=200, ge=1)
    tol: float = unit("1", "stop when ||x_k+1 - x_k|| / ||x_k+1|| < tol (0: off)", default=0.0, ge=0.0)
    tol_objective: float = unit("1", "stop when |f_k - f_k+1| / |f_k+1| < tol_objective (0: off)",
                                default=0.0, ge=0.0)
    scaling: bool = unit("-", "diagonal SGP scaling clip(x / V(x)) from the split gradient V - U; "
                         "false: plain gradient projection with steps in units of 1/||K||^2", default=True)
    scaling_bound: float = unit("1", "L: after k iterations the scaling lies within [1/L_k, L_k] / ||K||^2, "
                                "L_k = sqrt(1 + L^2 / k^2.1)", default=1e3, ge=1.0)
    alpha_init: float = unit("1", "first step size (units of the scaling)", default=1.0, gt=0.0)
    alpha_min: float = unit("1", "lower bound of the Barzilai-Borwein step", default=1e-5, gt=0.0)
    alpha_max: float = unit("1", "upper bound of the Barzilai-Borwein step", default=1e5, gt=0.0)
    bb_memory: int = unit("1", "number of past BB2 steps whose minimum ABB_min takes", default=3, ge=1)
    armijo_memory: int = unit("1", "line search reference: max of the last M objectives "
                              "(1: monotone, the objective decreases every iteration)", default=1, ge=1)
    armijo_sigma: float = unit("1", "sufficient-decrease constant of the Armijo rule", default=1e-4,
                               gt=0.0, lt=1.0)
    backtrack_factor: float = unit("1", "step reduction per Armijo backtrack", default=0.4, gt=0.0, lt=1.0)
    discrepancy_tau: float = unit("1", "lam auto: target residual = discrepancy_tau * misfit norm (as tv)",
                                  default=0.97, ge=0.5, le=3.0)
    model_error: bool = unit("-", "lam auto: raise the noise norm by the model error (as tv)", default=True)
    auto_lam_factor: Union[Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)], Literal["auto"]] = unit(
        "1", "lam auto: lam = auto_lam_factor x the discrepancy-principle lam; 'auto': min(1, s / 0.35) with "
        "s = data values / pixels of a slice (views x detector elements / ny nx): few-view data, where the "
        "principle over-smooths SGP-TV (chosen on the evaluation suite's tuning cases); 1 = lam discrepancy",
        default="auto")
    search_iterations: int = unit("1", "lam auto: SGP iterations per leg of the lam controller (at most "
                                  "iterations / 6)", default=50, ge=5)
    search_start: float = unit("1 (normalised)", "lam auto: first lam of the controller", default=1.0, gt=0.0)
    search_rtol: float = unit("1", "lam auto: lam is settled when two legs in a row end with "
                              "|residual / target - 1| <= search_rtol", default=0.005, gt=0.0, lt=1.0)
    max_backtracks: int = unit("1", "Armijo backtracks before giving up", default=40, ge=1)
    x0: Optional[SolverRef] = Field(default=None, description="warm start: a solver run first "
                                    "(e.g. {name: fbp}); none starts from zeros, as RISING does")

    @model_validator(mode="after")
    def _alpha_bounds(self):
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must not exceed alpha_max ({self.alpha_max})")
        return self

    def iteration_budget(self) -> int:
        return self.iterations


declare("sgp_tv", SGPTVParams,
        "Scaled gradient projection (Bonettini et al. 2009) on smoothed TV, x >= 0; RISING's "
        "iterative solver",
        iterative=True)
