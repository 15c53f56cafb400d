"""Parameters of ``rising`` (no numpy)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from recon_cli.solvers.params.guard import IMPLAUSIBLE_FACTOR
from recon_cli.solvers.registry import SolverParams, SolverRef, declare, solver_info, unit


#: Parameter name of the iteration budget in the registry's iterative solvers (sgp_tv, tv, svtv, ...).
ITERATIONS_KEY = "iterations"
#: The model shipped with the package for the reference geometry (sgp_tv, k = 30).
DEFAULT_MODEL = "rising_sgp_tv_fan60"
#: Composed or learned solvers that cannot serve as RISING's first step.
NOT_ITERATIVE = ("rising", "unet")


class RisingParams(SolverParams):
    """Parameters of ``rising``; ``iterative`` is the former name of ``pre_estimate`` (one release)."""

    renamed = {"iterative": "pre_estimate"}

    pre_estimate: SolverRef = Field(default_factory=lambda: SolverRef(name="sgp_tv"),
                                    description="the iterative solver of step one, with its parameters (its "
                                                "iteration count is replaced by k); must be those of training")
    k: int = unit("1", "iterations of the iterative solver from x = 0 (the network's input)", default=5, ge=1)
    model: str = unit("-", "model file (.onnx, or its .pt/.json sibling) or a shipped model's name",
                      default=DEFAULT_MODEL)
    resample: Literal["native", "residual", "image"] = unit(
        "-", "a model with a canonical pixel size (envelope models): 'native' runs the network on x_k's own grid "
             "(no resampling; on procedural anatomy at 0.4-0.5 mm it gained +3.2 to +6.3 dB towards the converged "
             "solution, 'residual' +0.0 to +1.8); 'residual' adds the network's correction, computed on the "
             "canonical grid and resampled, to x_k; 'image' resamples the network's output image back",
        default="native")
    allow_mismatch: bool = unit("-", "run even if the model was trained for another solver, parameters, k, "
                                     "geometry, grid or noise (warns instead of failing)", default=False)
    on_implausible: Literal["fallback", "fail", "ignore"] = unit(
        "-", "when the network's output explains the data clearly worse than the iterate x_k (data residual > "
             "implausible_factor x x_k's, or not finite): run the iterative solver to its own iteration count "
             "and return that (fallback), stop with an error (fail) or keep it (ignore); each with a warning",
        default="fallback")
    implausible_factor: float = unit("1", "largest accepted ratio of the network output's data residual to "
                                          "the iterate's", default=IMPLAUSIBLE_FACTOR, gt=1.0)
    noise_factor: Optional[float] = unit(
        "1", "largest accepted ratio of the network output's data residual to the data's expected misfit (noise "
             "plus model error; the converged solver with lam auto leaves about 1x it); null (default): "
             "the ratio is reported (guard_noise_ratio), not enforced",
        default=None, gt=1.0)

    def iteration_budget(self) -> int:
        """Iterations of the iterative solver per slice (states count them per slice)."""
        return self.k

    @field_validator("pre_estimate")
    @classmethod
    def _iterative(cls, ref: SolverRef) -> SolverRef:
        spec = solver_info(ref.name)
        if ref.name in NOT_ITERATIVE or not spec.iterative:
            raise ValueError(f"solver {ref.name!r} is not an iterative solver; RISING's first step needs one "
                             "(e.g. sgp_tv, tv, svtv)")
        return ref


declare("rising", RisingParams,
        "RISING: k iterations of an iterative solver (default sgp_tv) from zero, then a U-Net "
        "trained to map them to that solver's converged solution",
        iterative=True)
