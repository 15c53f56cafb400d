"""Parameters of ``tv`` (no numpy); lam in the normalised convention of recon_cli.solvers.tv."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from recon_cli.constants import MU_WATER  # 1/mm
from recon_cli.solvers.registry import SolverParams, declare, unit


class TVParams(SolverParams):
    """Parameters of ``tv`` (lam in the normalised convention of recon_cli.solvers.tv)."""

    lam: Union[Annotated[float, Field(ge=0.0, allow_inf_nan=False)], Literal["auto"]] = unit(
        "1 (image / intensity_scale, unit pixels)",
        "TV weight for the normalised image; the solver uses lam * intensity_scale * voxel_size^2 (mm). "
        "'auto': discrepancy principle on the noise level (metadata sigma or I0, else estimated), "
        "raised by the model error",
        default="auto")
    intensity_scale: float = unit("1/mm", "attenuation that maps to 1 in the normalised image "
                                  "(default 2 x water, about bone)", default=2 * MU_WATER, gt=0.0)
    iterations: int = unit("1", "maximum number of PDHG iterations", default=300, ge=1)
    tol: float = unit("1", "stop when ||x_k+1 - x_k|| / ||x_k+1|| < tol (0: off)", default=0.0, ge=0.0)
    tol_gap: float = unit("1", "stop when primal-dual gap / objective < tol_gap (0: off)", default=0.0, ge=0.0)
    gap_every: int = unit("1", "compute the primal-dual gap every this many iterations", default=10, ge=1)
    isotropic: bool = unit("-", "isotropic TV (gradient magnitude); false: anisotropic (sum of |d/dy| + |d/dx|)",
                           default=True)
    nonnegative: bool = unit("-", "constrain x >= 0", default=True)
    mode: Literal["slicewise", "3d"] = unit("-", "gradient of a slice stack: per slice or 3D", default="slicewise")
    slice_weight: float = unit("1", "weight of the slice-direction difference in mode 3d", default=1.0, ge=0.0)
    discrepancy_tau: float = unit("1", "lam auto: target residual = discrepancy_tau * misfit norm "
                                  "(noise, raised by the model error; regularisation_parameter.py)",
                                  default=0.97, ge=0.5, le=3.0)
    model_error: bool = unit("-", "lam auto: raise the noise norm by the energy the sinogram has above the "
                             "grid's resolution (model error); false: noise alone", default=True)
    search_iterations: int = unit("1", "lam auto: PDHG iterations per leg of the lam controller (choose_lam)",
                                  default=50, ge=5)
    search_start: Union[Annotated[float, Field(gt=0.0, allow_inf_nan=False)], Literal["auto"]] = unit(
        "1 (normalised)", "lam auto: first lam of the controller; 'auto': START_PER_NOISE_STD (400 mm) x the "
        "noise std of one line integral / the pixel size", default="auto")
    search_rtol: float = unit("1", "lam auto: lam is settled when two legs in a row end with "
                              "|residual / target - 1| <= search_rtol", default=0.02, gt=0.0, lt=1.0)

    def iteration_budget(self) -> int:
        """PDHG iterations of the final solve (lam auto's search runs before and is not counted)."""
        return self.iterations


declare("tv", TVParams,
        "Total variation, Chambolle-Pock (PDHG) with x >= 0; lam fixed or by the discrepancy "
        "principle",
        iterative=True)
