"""Pure maths that turns measured projections into line integrals on the geometry ASTRA expects.

No file I/O here: readers (recon_cli.io.nexus, recon_cli.io.dicom_ctpd) and the pipeline's
``log_transform`` step (:func:`log_transform_step`) call these functions. Arrays are float32 on the way out.

- :func:`flat_dark_correct`: transmission T = (I - dark) / (flat - dark).
- :func:`minus_log` / :func:`log_transform_counts`: line integrals -log(T), -log(I / I0); values
  <= 0 before the log raise InputError unless ``clamp`` (the smallest value allowed) is given.
- :func:`parse_rows`: detector row (slice) selection from an int, a ``"start:stop[:step]"``
  string or a list of indices.
- :func:`shift_detector`: centre-of-rotation correction by shifting the detector axis.
- :func:`arc_to_flat`: cylindrical (equiangular) or off-centre flat detector -> centred flat
  detector (ASTRA ``fanflat``), by linear interpolation in the fan angle.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence, Union

import numpy as np

from recon_cli.errors import InputError

log = logging.getLogger(__name__)

RowSpec = Union[None, int, str, Sequence[int]]


# ----------------------------------------------------------------------------- flat / dark and -log


def average_frames(frames: np.ndarray) -> np.ndarray:
    """Mean of a stack of frames (n, rows, cols) -> (rows, cols) float32; a single frame is returned as float32."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        return frames.astype(np.float32)
    if frames.ndim != 3 or frames.shape[0] == 0:
        raise InputError(f"expected frames (n, rows, cols) with n >= 1, got shape {list(frames.shape)}")
    return frames.mean(axis=0, dtype=np.float64).astype(np.float32)


def flat_dark_correct(projections: np.ndarray, flat: np.ndarray, dark: np.ndarray | None = None, *,
                      clamp: float | None = None, what: str = "flat field") -> np.ndarray:
    """Transmission (I - dark) / (flat - dark), float32, same shape as ``projections``.

    ``projections`` (..., rows, cols); ``flat`` and ``dark`` broadcast against it (usually
    (rows, cols) averages). Detector elements with flat <= dark cannot be normalised: InputError,
    unless ``clamp`` is given, then they are set to transmission 1 (line integral 0) with a warning.
    """
    proj = np.asarray(projections, dtype=np.float32)
    flat = np.asarray(flat, dtype=np.float32)
    dark = np.zeros((), np.float32) if dark is None else np.asarray(dark, dtype=np.float32)
    denom = flat - dark
    bad = ~(denom > 0)
    if bad.any():
        n_bad = int(np.count_nonzero(bad))
        if clamp is None:
            raise InputError(f"{n_bad} detector element(s) have {what} <= dark current, so they cannot be "
                             "normalised; set clamp to treat them as transmission 1")
        log.warning("%d detector element(s) have %s <= dark; set to transmission 1", n_bad, what)
        denom = np.where(bad, np.float32(1), denom)
    out = (proj - dark) / denom
    if bad.any():
        out = np.where(np.broadcast_to(bad, out.shape), np.float32(1), out)
    return out.astype(np.float32, copy=False)


def minus_log(values: np.ndarray, *, clamp: float | None = None, what: str = "transmission") -> np.ndarray:
    """-log(values) as float32. Values <= 0 (or NaN) raise InputError naming how many, unless ``clamp`` > 0
    is given: then values below ``clamp`` are raised to it first (a warning says how many)."""
    v = np.asarray(values, dtype=np.float32)
    if np.isnan(v).any():
        raise InputError(f"{what} contains {int(np.isnan(v).sum())} NaN value(s) before the log")
    if clamp is not None:
        if not (math.isfinite(clamp) and clamp > 0):
            raise InputError(f"clamp must be a positive number, got {clamp}", field="clamp")
        low = v < clamp
        if low.any():
            log.warning("%d %s value(s) below %g raised to it before the log", int(low.sum()), what, clamp)
            v = np.maximum(v, np.float32(clamp))
    else:
        bad = ~(v > 0)
        if bad.any():
            raise InputError(f"{int(bad.sum())} {what} value(s) <= 0 before the log (smallest {float(v.min()):.4g}); "
                             "set clamp (e.g. 1e-6 for transmission, 0.5 for photon counts) to clamp them")
    with np.errstate(over="ignore"):
        return (-np.log(v)).astype(np.float32, copy=False)


def log_transform_counts(counts: np.ndarray, I0: float, *, clamp: float | None = None) -> np.ndarray:
    """Photon counts -> line integrals -log(counts / I0), float32. ``clamp``: smallest count allowed
    (counts <= 0 raise InputError without it)."""
    I0 = float(I0)
    if not (math.isfinite(I0) and I0 > 0):
        raise InputError(f"incident intensity I0 must be positive, got {I0}", field="I0")
    c = np.asarray(counts, dtype=np.float32)
    if clamp is not None:
        if not (math.isfinite(clamp) and clamp > 0):
            raise InputError(f"clamp must be a positive number of counts, got {clamp}", field="clamp")
        c = _clamped(c, float(clamp), "count")
    return minus_log(c / np.float32(I0), what="count")



def log_transform_step(sino, step):
    """The pipeline step ``log_transform`` (recon_cli.config.LogTransformStep): a Sinogram of intensities ->
    one of line integrals -log(I / I0); I0 from the step, else metadata I0, else the largest value.

    Counts <= 0 raise InputError unless the step's ``clamp`` (the smallest count allowed) is given.
    """
    import dataclasses

    data = np.asarray(sino.data, dtype=np.float32)
    I0 = step.I0
    if I0 is None:
        I0 = float(sino.metadata.get("I0") or data.max())
    if not I0 > 0:
        raise InputError(f"log_transform needs positive intensities (I0 = {I0})", field="preprocess.log_transform")
    try:
        line_integrals = log_transform_counts(data, I0, clamp=step.clamp)
    except InputError as exc:
        raise InputError(exc.message, file=sino.metadata.get("source"), field="preprocess.log_transform") from None
    return dataclasses.replace(sino, data=line_integrals, metadata={**sino.metadata, "log_transform_I0": float(I0)})

def _clamped(values: np.ndarray, floor: float, what: str) -> np.ndarray:
    low = values < floor
    if low.any():
        log.warning("%d %s value(s) below %g raised to it before the log", int(low.sum()), what, floor)
        return np.maximum(values, np.float32(floor))
    return values


# ----------------------------------------------------------------------------- rows and centre of rotation


def parse_rows(spec: RowSpec, n_rows: int) -> tuple[np.ndarray, bool]:
    """(sorted row indices, single) for a detector row selection.

    ``spec``: None (all rows), an int (one row -> ``single`` True: a 2-D sinogram), a string
    ``"start:stop[:step]"`` (Python slice semantics, negative indices allowed) or a list of ints.
    Rows out of range or an empty selection raise InputError.
    """
    field = "rows"
    if spec is None:
        return np.arange(n_rows), False
    if isinstance(spec, (bool, np.bool_)):
        raise InputError(f"expected an int, 'start:stop[:step]' or a list of ints, got {spec!r}", field=field)
    if isinstance(spec, (int, np.integer)):
        row = int(spec)
        if not -n_rows <= row < n_rows:
            raise InputError(f"row {row} is outside the detector's {n_rows} rows", field=field)
        return np.array([row % n_rows]), True
    if isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise InputError(f"expected 'start:stop' or 'start:stop:step', got {spec!r}", field=field)
        try:
            values = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise InputError(f"expected integers in {spec!r}", field=field) from None
        if len(values) == 3 and values[2] is not None and values[2] <= 0:
            raise InputError(f"step must be positive in {spec!r}", field=field)
        rows = np.arange(n_rows)[slice(*values)]
    else:
        try:
            rows = np.asarray([int(r) for r in spec])
        except (TypeError, ValueError):
            raise InputError(f"expected an int, 'start:stop[:step]' or a list of ints, got {spec!r}",
                             field=field) from None
        out = rows[(rows < -n_rows) | (rows >= n_rows)]
        if out.size:
            raise InputError(f"row(s) {out.tolist()} outside the detector's {n_rows} rows", field=field)
        rows = np.unique(rows % n_rows)
    if rows.size == 0:
        raise InputError(f"selects no rows of the detector's {n_rows}", field=field)
    return rows, False


def shift_detector(sino: np.ndarray, offset: float) -> np.ndarray:
    """Centre-of-rotation correction: the rotation axis projects ``offset`` detector pixels right of the
    detector centre ((n - 1) / 2 + offset); returns the data resampled (linear) so that it projects
    at the centre. Works on (..., n_det); values beyond the edge repeat the edge value."""
    sino = np.asarray(sino, dtype=np.float32)
    offset = float(offset)
    if offset == 0.0:
        return sino
    if not math.isfinite(offset):
        raise InputError(f"must be finite, got {offset}", field="cor_offset")
    n = sino.shape[-1]
    positions = np.arange(n, dtype=np.float64) + offset
    return _interp_last_axis(sino, positions)


def _interp_last_axis(data: np.ndarray, positions: np.ndarray, fill: float | None = None) -> np.ndarray:
    """Linear interpolation of ``data`` (..., n) at fractional indices ``positions`` (m,) -> (..., m).

    Positions outside [0, n - 1] take the edge value (``fill`` None) or ``fill``.
    """
    n = data.shape[-1]
    pos = np.clip(positions, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
    frac = (pos - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n - 1)
    out = data[..., i0] * (np.float32(1) - frac) + data[..., i1] * frac
    if fill is not None:
        outside = (positions < -1e-9) | (positions > n - 1 + 1e-9)
        out[..., outside] = np.float32(fill)
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- fan-beam detector rebinning


def flat_detector_for_arc(n_cols: int, central_col: float, col_step: float, source_detector: float, *,
                          cylindrical: bool = True, spacing: float | None = None) -> tuple[int, float]:
    """(count, spacing mm) of a centred flat detector at ``source_detector`` mm from the source that
    covers every column of the measured detector.

    ``central_col``: 0-based fractional index of the column on the central ray; ``col_step``: column
    pitch in radians of fan angle (cylindrical) or in mm at the detector (flat). ``spacing`` defaults to
    the measured pitch on the central ray (col_step * source_detector for a cylindrical detector).
    """
    reach = max(central_col + 0.5, n_cols - 0.5 - central_col)  # columns from the central ray to the far edge
    if cylindrical:
        half_fan = reach * col_step
        if half_fan >= math.pi / 2:
            raise InputError(f"fan half-angle {math.degrees(half_fan):.1f} deg is too wide for a flat detector")
        half_width = source_detector * math.tan(half_fan)
        spacing = col_step * source_detector if spacing is None else float(spacing)
    else:
        half_width = reach * col_step
        spacing = col_step if spacing is None else float(spacing)
    count = 2 * int(math.ceil(half_width / spacing - 1e-9))
    return count, float(spacing)


def arc_to_flat(data: np.ndarray, *, central_col: float, col_step: float, source_detector: float,
                flat_count: int, flat_spacing: float, cylindrical: bool = True) -> np.ndarray:
    """Resample detector data (..., n_cols) to a flat detector (..., flat_count) centred on the central ray.

    Flat element j sits at s_j = (j - (flat_count - 1) / 2) * flat_spacing (mm, in the plane at
    ``source_detector`` mm from the source). Cylindrical detector: its fan angle atan(s_j / D) is
    found at column ``central_col + angle / col_step`` (``col_step`` in radians); flat measured
    detector: at ``central_col + s_j / col_step`` (``col_step`` in mm). Linear interpolation;
    elements outside the measured detector are 0 (no data). Line integrals along the same ray are
    equal on both detectors, so values are not re-weighted.
    """
    s = (np.arange(flat_count, dtype=np.float64) - (flat_count - 1) / 2.0) * float(flat_spacing)
    if cylindrical:
        positions = central_col + np.arctan2(s, float(source_detector)) / float(col_step)
    else:
        positions = central_col + s / float(col_step)
    n_cols = np.asarray(data).shape[-1]
    half = 0.5  # the outer half of the edge columns still holds measured data
    inside = (positions >= -half) & (positions <= n_cols - 1 + half)
    out = _interp_last_axis(np.asarray(data, dtype=np.float32), positions)
    out[..., ~inside] = 0.0
    return out


def flat_to_arc(data: np.ndarray, *, flat_spacing: float, source_detector: float, n_cols: int,
                central_col: float, col_step: float) -> np.ndarray:
    """Sample data on a centred flat detector (..., n_flat) at the columns of a cylindrical detector
    (..., n_cols): column k has fan angle (k - central_col) * col_step (radians) and meets the flat
    detector at s = D tan(angle) (``source_detector`` D in mm). Linear interpolation, 0 outside.
    The inverse of :func:`arc_to_flat` (used to simulate cylindrical-detector scans)."""
    data = np.asarray(data, dtype=np.float32)
    n_flat = data.shape[-1]
    gamma = (np.arange(n_cols, dtype=np.float64) - float(central_col)) * float(col_step)
    positions = float(source_detector) * np.tan(gamma) / float(flat_spacing) + (n_flat - 1) / 2.0
    return _interp_last_axis(data, positions, fill=0.0)
