"""Parameters of ``fbp`` (declared without numpy: validation and ``recon solvers`` import this module only)."""
from __future__ import annotations

from typing import Literal

from recon_cli.solvers.registry import SolverParams, declare, unit


FilterName = Literal["ram-lak", "shepp-logan", "cosine", "hamming", "hann"]


class FBPParams(SolverParams):
    filter: FilterName = unit("-", "ramp filter window", default="ram-lak")
    frequency_scaling: float = unit("-", "cut-off frequency as a fraction of Nyquist", default=1.0, gt=0.0, le=1.0)
    padding: bool = unit("-", "zero-pad the detector to the next power of two >= 2 n_det", default=True)
    nonnegative: bool = unit("-", "clip negative values to 0", default=False)


declare("fbp", FBPParams,
        "filtered backprojection (parallel beam, fan beam with a flat detector)",
        iterative=False)
