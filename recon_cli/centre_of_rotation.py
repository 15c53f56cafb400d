"""Centre of rotation of a parallel-beam scan, estimated from the data.

Method (opposite-view correlation): in a parallel-beam scan, the view at angle theta + pi is the view at
theta mirrored about the rotation axis. With the axis projecting at column c = (n - 1) / 2 + offset,
p(theta + pi, u) = p(theta, 2c - u), so the flipped opposite view q(u) = p(theta + pi, n - 1 - u) equals
p(theta, u + 2 offset): q is p shifted by 2 offset columns. For every pair of views about pi apart (within
half an angular step), the cross-correlation of the column differences of p and q (edges make a sharp peak;
zero-padded FFT, no wrap-around) is summed over pairs
and detector rows; its peak, refined to sub-pixel by a parabola through the three samples around it, is
2 offset. Needs views about pi apart: a 180-degree scan with both end views (0 and 180 degrees) or a
360-degree scan.

Units: pixels (detector columns); the offset is the rotation axis position minus the detector centre,
the convention of ``input.cor_offset`` (recon_cli.preprocess.shift_detector).
"""
from __future__ import annotations

import numpy as np

from recon_cli.errors import InputError

METHOD = "opposite-view cross-correlation (views pi apart, flipped), parabolic sub-pixel peak"


def opposite_pairs(angles: np.ndarray, tolerance: float | None = None) -> list[tuple[int, int]]:
    """(i, j) view indices with angle_j - angle_i = pi (mod 2 pi) within ``tolerance`` rad (default: half
    the median angular step, at least 1e-6 rad), each view used at most once as i."""
    angles = np.asarray(angles, np.float64).reshape(-1)
    if angles.size < 2:
        return []
    steps = np.diff(np.sort(angles))
    steps = steps[steps > 0]
    step = float(np.median(steps)) if steps.size else 0.0
    tol = max(0.5 * step, 1e-6) if tolerance is None else float(tolerance)
    pairs = []
    for i, a in enumerate(angles):
        gap = np.abs(np.angle(np.exp(1j * (angles - a - np.pi))))  # wrapped difference to a + pi
        j = int(np.argmin(gap))
        if gap[j] <= tol and j != i:
            pairs.append((i, j))
    return pairs


def estimate_cor_offset(sinogram, angles, *, max_offset: float | None = None) -> float:
    """Rotation axis position minus the detector centre, in pixels (see the module docstring).

    sinogram: (n_angles, n_det) or (nz, n_angles, n_det) line integrals; angles: (n_angles,) rad.
    max_offset: largest |offset| searched (pixels; default n_det / 4). InputError when no two views are
    about pi apart or the data is flat.
    """
    data = np.asarray(sinogram, dtype=np.float64)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(f"expected a sinogram (n_angles, n_det) or a stack, got shape {list(data.shape)}",
                         field="cor_offset")
    angles = np.asarray(angles, np.float64).reshape(-1)
    if angles.size != data.shape[1]:
        raise InputError(f"{angles.size} angles for {data.shape[1]} views", field="cor_offset")
    pairs = opposite_pairs(angles)
    if not pairs:
        raise InputError("cannot estimate the centre of rotation: no two views are 180 degrees apart (a 180-degree "
                         "scan needs both end views, or scan 360 degrees); give a number", field="input.cor_offset")
    n = data.shape[2]
    limit = n / 4.0 if max_offset is None else float(max_offset)
    max_shift = int(min(n - 2, np.ceil(2 * limit) + 1))
    i, j = np.array(pairs).T
    p = data[:, i, :].reshape(-1, n)
    q = data[:, j, ::-1].reshape(-1, n)
    p, q = np.diff(p, axis=1), np.diff(q, axis=1)  # edges give a sharp peak; a constant level drops out
    size = 2 * n
    spectrum = np.fft.rfft(p, size) * np.conj(np.fft.rfft(q, size))
    corr = np.fft.irfft(spectrum.sum(axis=0), size)  # corr[s] = sum_u p(u + s) q(u), s mod 2n
    shifts = np.arange(-max_shift, max_shift + 1)
    values = corr[shifts % size]
    if not np.all(np.isfinite(values)) or np.ptp(values) <= 0:
        raise InputError("cannot estimate the centre of rotation: the projections are flat or not finite",
                         field="input.cor_offset")
    k = int(np.argmax(values))
    peak = float(shifts[k])
    if 0 < k < values.size - 1:
        left, mid, right = values[k - 1], values[k], values[k + 1]
        curvature = left - 2 * mid + right
        if curvature < 0:
            peak += 0.5 * (left - right) / curvature
    return peak / 2.0


__all__ = ["estimate_cor_offset", "opposite_pairs", "METHOD"]
