"""Stripe (ring artifact) removal in sinograms: the sorting method.

A detector column whose gain is slightly off adds the same error to every view: a stripe along the angle
direction of the sinogram, a ring in the reconstruction. The sorting method (Vo, Atwood and Drakopoulos,
Optics Express 26(21), 2018) removes it: each column's values are sorted along the angle axis, so that
neighbouring columns become smooth, nearly equal profiles except for the stripe offset; a median filter
across columns (``size`` columns wide, 1 view tall) in that sorted domain removes the outlying columns;
the values are put back in their original view order. Real structure, which moves across columns from view
to view, is barely touched.
"""
from __future__ import annotations

import numpy as np

from recon_cli.errors import InputError


def remove_stripes_sorting(sinogram, size: int = 11) -> np.ndarray:
    """Sinogram (n_angles, n_det) or stack (nz, n_angles, n_det) with stripes removed (float32, same shape).

    size: width of the median filter across detector columns (odd, >= 3; wider removes wider stripes
    and smooths more).
    """
    from scipy.ndimage import median_filter

    data = np.asarray(sinogram, dtype=np.float32)
    if data.ndim not in (2, 3) or min(data.shape) < 1:
        raise InputError(f"expected a sinogram (n_angles, n_det) or a stack, got shape {list(data.shape)}",
                         field="preprocess.remove_stripes")
    if int(size) < 3:
        raise InputError(f"size must be at least 3 columns, got {size}", field="preprocess.remove_stripes.size")
    if not np.all(np.isfinite(data)):
        raise InputError("the sinogram has NaN or infinite values", field="preprocess.remove_stripes")
    stack = data[None] if data.ndim == 2 else data
    out = np.empty_like(stack)
    for k, sino in enumerate(stack):
        order = np.argsort(sino, axis=0, kind="stable")  # per column, views by value
        ranked = np.take_along_axis(sino, order, axis=0)
        smoothed = median_filter(ranked, size=(1, int(size)), mode="reflect")
        restored = np.empty_like(sino)
        np.put_along_axis(restored, order, smoothed, axis=0)
        out[k] = restored
    return out[0] if data.ndim == 2 else out


__all__ = ["remove_stripes_sorting"]


def remove_stripes_step(sino, step):
    """The pipeline step ``remove_stripes`` (recon_cli.config.RemoveStripesStep) on a Sinogram of line integrals."""
    import dataclasses

    data = remove_stripes_sorting(sino.data, size=step.size)
    return dataclasses.replace(sino, data=data, metadata={**sino.metadata, "stripes_removed": step.method})
