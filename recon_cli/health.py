"""Numeric health checks of what goes into a solver and what comes out of it.

Readers refuse NaN and Inf; these checks catch finite data that still cannot give a meaningful
image, before anything is computed (InputError, exit 2), and results that are not finite, before
anything is written (RunError, exit 1, naming the stage that produced them):

- line integrals beyond :data:`MAX_LINE_INTEGRAL` (a real attenuation line integral mu * L stays
  below ~100; 1e37 in one bin, or a 1e30 scaling, overflow float32 inside any solver);
- a constant sinogram (all zero included): there is nothing to reconstruct;
- mostly negative line integrals: the projections are brighter than the flat field / I0;
- a reference image that is constant (PSNR / SSIM against it are meaningless).
"""
from __future__ import annotations

import numpy as np

from recon_cli.errors import InputError, RunError

#: Largest |line integral| accepted (dimensionless, mu [1/mm] * length [mm]). Water over 1 m is 19.
MAX_LINE_INTEGRAL = 1.0e6


def _host(array) -> np.ndarray:
    from recon_cli.backend import to_numpy

    return np.asarray(to_numpy(array))


def check_sinogram(data, *, file: str | None, field: str = "/sinogram") -> None:
    """InputError (naming ``file`` and ``field``) for line integrals that cannot give an image:
    non-finite, beyond MAX_LINE_INTEGRAL, constant, or mostly negative (brighter than the flat field)."""
    y = _host(data)
    if y.size == 0:
        raise InputError("is empty", file=file, field=field)
    finite = np.isfinite(y)
    if not finite.all():
        raise InputError(f"contains {int(y.size - finite.sum())} NaN or Inf value(s)", file=file, field=field)
    lo, hi = float(y.min()), float(y.max())
    worst = max(abs(lo), abs(hi))
    if worst > MAX_LINE_INTEGRAL:
        raise InputError(f"holds line integrals up to {worst:.3g}, beyond the {MAX_LINE_INTEGRAL:g} a real "
                         "scan can have (raw counts without the log_transform step, or wrong scaling?)",
                         file=file, field=field)
    if lo == hi:
        raise InputError(f"is constant (every value is {lo:g}): there is nothing to reconstruct",
                         file=file, field=field)
    mean = float(y.mean(dtype=np.float64))
    negative = float(np.count_nonzero(y < 0)) / y.size
    if mean < 0 and negative > 0.5:
        raise InputError(f"{100 * negative:.0f}% of the line integrals are negative (mean {mean:.3g}): the "
                         "projections are brighter than the flat field / I0 (flat and data swapped, or a wrong "
                         "I0?)", file=file, field=field)


def check_reference(image, *, file: str | None, field: str = "/reference") -> None:
    """InputError for a reference image that metrics cannot use: non-finite or constant (all zero)."""
    ref = _host(image)
    if ref.size == 0 or not np.isfinite(ref).all():
        raise InputError("is empty or holds NaN / Inf values", file=file, field=field)
    lo, hi = float(ref.min()), float(ref.max())
    if lo == hi:
        raise InputError(f"is constant (every pixel is {lo:g}): image metrics (PSNR, SSIM) need a real image",
                         file=file, field=field)


def check_finite_output(volume, stage: str) -> None:
    """RunError (exit 1) naming ``stage`` when ``volume`` holds NaN or Inf: nothing non-finite is written."""
    arr = _host(volume)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - finite.sum())
        raise RunError(f"{stage} produced {bad} non-finite pixel(s) (NaN or Inf) of {arr.size}; nothing was "
                       "written (check the input's scaling and the solver's parameters)", field=stage)

