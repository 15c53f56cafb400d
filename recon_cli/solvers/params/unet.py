"""Parameters of ``unet`` (no numpy)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from recon_cli.solvers.params.guard import IMPLAUSIBLE_FACTOR, NOISE_FACTOR
from recon_cli.solvers.registry import SolverParams, SolverRef, declare, unit


class UNetParams(SolverParams):
    """Parameters of ``unet``; ``input`` is the former name of ``pre_estimate`` (one release)."""

    renamed = {"input": "pre_estimate"}

    model: str = unit("-", "model file (.onnx, or its .pt/.json sibling, or a packaged model's name)")
    pre_estimate: Optional[SolverRef] = Field(
        None, description="solver whose output the network maps; default: the input the model was trained on "
                          "(from its metadata, e.g. {name: fbp})")
    allow_mismatch: bool = unit("-", "run even if the model was trained for another geometry, grid, noise "
                                     "or input (warns instead of failing)", default=False)
    on_implausible: Literal["fallback", "fail", "ignore"] = unit(
        "-", "when the network's output explains the data clearly worse than its input (data residual > "
             "implausible_factor x the input solver's, or not finite): return the input solver's image "
             "(fallback), stop with an error (fail) or keep it (ignore); each with a warning", default="fallback")
    implausible_factor: float = unit("1", "largest accepted ratio of the network output's data residual to "
                                          "the input solver's", default=IMPLAUSIBLE_FACTOR, gt=1.0)
    noise_factor: Optional[float] = unit(
        "1", "largest accepted ratio of the network output's data residual to the data's expected misfit (noise "
             "plus model error, from I0/sigma or estimated from the sinogram; TV lam auto leaves 0.97x it); "
             "null: not checked", default=NOISE_FACTOR, gt=1.0)
    correction_weight: Optional[float] = unit(
        "1", "output = x + a (network(x) - x), x the input solver's image: a < 1 keeps part of the input where "
             "the network's correction is unreliable (images unlike its training data); null: the model's own "
             "(metadata inference.correction_weight, chosen on tuning data; 1 if absent)", default=None, gt=0.0, le=1.0)
    dihedral_average: Optional[bool] = unit(
        "-", "average the network over the 8 turns / mirrors of its input (8x the network's time; +0.10 dB mean "
             "on the evaluation suite's tuning cases with postproc_tv_envelope_big, no case lower); null: on for "
             "models trained with dihedral augmentation (training.dihedral), off otherwise", default=None)
    fallback: Optional[SolverRef] = Field(
        None, description="solver whose image replaces an implausible output (on_implausible: fallback); "
                          "default: the input solver's image (no extra cost), e.g. {name: tv, params: {lam: auto}}")


declare("unet", UNetParams,
        "trained U-Net (ONNX) applied to the output of an input solver (default: FBP, as in "
        "training)",
        iterative=False)
