"""Filtered backprojection for 2D parallel-beam and flat-detector fan-beam data.

Written in array-module-agnostic numpy (``xp = op.xp``), so it runs on numpy or cupy
arrays; single slices ``(n_angles, n_det)`` or stacks ``(nz, n_angles, n_det)`` give
images ``(ny, nx)`` or ``(nz, ny, nx)`` in 1/mm.

Conventions (ASTRA's, checked by projecting an off-centre point): a pixel centre
(x, y) (x along columns, y up: row 0 is +y) projects at view angle b to the
detector coordinate t = x cos b + y sin b (mm, parallel; detector index
t / spacing + (n_det - 1) / 2). Fan beam: the source sits at
SO (sin b, -cos b), so the distance from the source along the central ray is
U = SO - x sin b + y cos b and the coordinate scaled to the isocentre is t SO / U.

Backprojection is pixel-driven (linear interpolation on the detector), our own, not
``op.adjoint``: ASTRA's ray-driven adjoint is not an exact backprojector. Measured on
Shepp-Logan, parallel 180 views, 256^2: pixel-driven 27.43 dB; op.adjoint (scaled by
pi / n_angles) 27.35 dB ('linear'), 27.43 dB ('strip'), 26.79 dB ('line'). The
pixel-driven one is as good as the best adjoint, needs no projector and serves fan beam too.

Fan beam (Kak & Slaney, ch. 3): cosine pre-weighting SO / sqrt(SO^2 + u^2), ramp
filter at the magnified spacing, backprojection weighted by (SO / U)^2. Full scans
(2 pi) weigh every view by d_theta / 2; short scans (>= pi + fan angle) use Parker
weights. Parallel beam over pi weighs views by d_theta (over 2 pi by d_theta / 2).
"""
from __future__ import annotations

import logging
import math

import numpy as np

from recon_cli.errors import ConfigError, InputError
from recon_cli.solvers.algorithm import Stopwatch
from recon_cli.solvers.filters import ramp_filter
from recon_cli.solvers.registry import IterationState, register
from recon_cli.solvers.params.fbp import FBPParams, FilterName  # noqa: F401 (re-exported)
from recon_cli.sinogram import Reconstruction

log = logging.getLogger(__name__)

#: Slices x pixels backprojected at once (each per-angle temporary is this many float32 values).
_CHUNK_ELEMENTS = 2**24


def angular_step(angles: np.ndarray) -> float:
    """Mean spacing of the view angles (radians, signed: negative for decreasing angles)."""
    if angles.size < 2:
        return math.pi
    return float((angles[-1] - angles[0]) / (angles.size - 1))


def parker_weights(angles: np.ndarray, gamma: np.ndarray, d_theta: float) -> np.ndarray:
    """Parker short-scan weights (n_angles, n_det) for fan angles ``gamma`` (radians, ASTRA's sign).

    In ASTRA's convention the ray (b, gamma) with gamma = atan(u / SO) meets its
    conjugate at (b + pi - 2 gamma, -gamma) for increasing angles, so Parker's
    formula is applied to -gamma (to +gamma for decreasing angles).
    """
    sign = 1.0 if d_theta >= 0 else -1.0
    beta = (angles - angles[0]) * sign
    span = float(beta[-1])
    gm = (span - math.pi) / 2.0  # half of the overscan; >= the fan's half angle
    g = (-sign * gamma)[None, :]
    b = beta[:, None]
    w = np.ones((angles.size, gamma.size))
    rise = b < 2 * gm - 2 * g
    fall = b > math.pi - 2 * g
    with np.errstate(divide="ignore", invalid="ignore"):
        w_rise = np.sin(math.pi / 4 * b / (gm - g)) ** 2
        w_fall = np.sin(math.pi / 4 * (math.pi + 2 * gm - b) / (gm + g)) ** 2
    w = np.where(rise, w_rise, w)
    w = np.where(fall, w_fall, w)
    return np.nan_to_num(np.clip(w, 0.0, 1.0))


def _view_weights(geometry, u_iso: np.ndarray, d_theta: float) -> tuple[float, np.ndarray | None]:
    """(scalar weight per view, optional per-(view, detector) weights) for the angular integral."""
    n = geometry.n_angles
    step = abs(d_theta)
    arc = n * step
    if geometry.type == "parallel":
        return step * (math.pi / arc if arc > math.pi * (1 + 1e-3) else 1.0), None
    half_fan = math.atan(float(np.max(np.abs(u_iso))) / geometry.source_origin)
    if arc >= 2 * math.pi * (1 - 1e-3):
        return step * math.pi / arc, None  # full scan: each ray measured twice on average
    span = (n - 1) * step
    if span < math.pi + 2 * half_fan - step:
        log.warning("fan-beam scan of %.1f deg is shorter than a short scan (180 + fan angle %.1f deg); "
                    "FBP will show limited-angle artefacts", math.degrees(arc), math.degrees(2 * half_fan))
        return step * 0.5, None
    gamma = np.arctan(u_iso / geometry.source_origin)
    return step, parker_weights(geometry.angles, gamma, d_theta)


def _check(op, sino):
    geometry = sino.geometry
    if geometry.type not in ("parallel", "fanflat"):
        raise ConfigError(f"fbp supports 2D 'parallel' and 'fanflat' geometries, not {geometry.type!r}",
                          field="solver.name")
    data_shape = tuple(sino.data.shape)
    if data_shape[-2:] != (geometry.n_angles, geometry.detector_count) or len(data_shape) not in (2, 3):
        raise InputError(f"sinogram shape {list(data_shape)} does not match the geometry "
                         f"({geometry.n_angles} angles x {geometry.detector_count} detectors)", field="sinogram")
    out_shape = tuple(op.domain_shape) if op is not None else tuple(sino.grid.shape)
    n_slices = data_shape[0] if len(data_shape) == 3 else 1
    if int(np.prod(out_shape[:-2], dtype=np.int64)) != n_slices:
        raise InputError(f"sinogram has {n_slices} slice(s) but the volume shape is {list(out_shape)}",
                         field="volume/shape")
    return out_shape


def quarter_turn_groups(angles, slice_shape, tol: float = 1e-6) -> list[list[tuple[int, int]]]:
    """Views grouped by quarter turns: each group is [(view, k), ...] with angle = base angle + k pi/2
    (mod 2 pi), the base view first with k = 0. On a square grid the backprojection field of view
    ``base + k pi/2`` is the base view's field turned by np.rot90(., k), so one geometry evaluation
    serves the whole group. Non-square grids: every view alone."""
    angles = np.asarray(angles, dtype=np.float64)
    if slice_shape[0] != slice_shape[1]:
        return [[(v, 0)] for v in range(angles.size)]
    reduced = np.mod(angles, 2 * math.pi)
    taken = np.zeros(angles.size, dtype=bool)
    groups = []
    for v in range(angles.size):
        if taken[v]:
            continue
        taken[v] = True
        group = [(v, 0)]
        for k in (1, 2, 3):
            target = (reduced[v] + k * math.pi / 2) % (2 * math.pi)
            diff = np.abs(reduced - target)
            diff = np.minimum(diff, 2 * math.pi - diff)
            match = np.flatnonzero((diff < tol) & ~taken)
            if match.size:
                taken[match[0]] = True
                group.append((int(match[0]), k))
        groups.append(group)
    return groups


def backproject(q, geometry, grid, view_weight: float, xp=np):
    """Pixel-driven weighted backprojection of filtered data ``q`` (nz, n_angles, n_det) -> (nz, ny, nx).

    Linear interpolation on the detector, zero outside it; fan beam adds the
    (SO / U)^2 distance weight. Vectorised over pixels and slices, one angle at a time; views a
    quarter turn apart share one evaluation of the geometry (:func:`quarter_turn_groups`): their
    contributions are summed per turn and the sums turned back once at the end.
    """
    nz, n_angles, n_det = q.shape
    ny, nx = grid.slice_shape
    vs = grid.voxel_size
    xs = xp.asarray(((np.arange(nx) - (nx - 1) / 2.0) * vs).astype(np.float32))[None, :]
    ys = xp.asarray((((ny - 1) / 2.0 - np.arange(ny)) * vs).astype(np.float32))[:, None]
    # two zero bins each side; indices are clipped into them so outside the detector reads 0
    qpad = xp.zeros((nz, n_angles, n_det + 4), dtype=xp.float32)
    qpad[:, :, 2:-2] = q
    fan = geometry.type == "fanflat"
    if fan:
        so = float(geometry.source_origin)
        spacing = float(geometry.detector_spacing) / float(geometry.magnification)
    else:
        spacing = float(geometry.detector_spacing)
    centre = (n_det - 1) / 2.0 + 2.0
    angles = np.asarray(geometry.angles, dtype=np.float64)
    turned = {}  # quarter turns k -> sum of the contributions computed on the unturned grid
    for group in quarter_turn_groups(angles, (ny, nx)):
        theta = angles[group[0][0]]
        c, s = float(math.cos(theta)), float(math.sin(theta))
        t = xs * c + ys * s
        if fan:
            u_dist = (ys * c - xs * s) + so  # distance from the source along the central ray
            inv_u = 1.0 / u_dist
            t = t * (so * inv_u)
            weight = ((so * inv_u) ** 2).reshape(-1)
        pos = xp.clip(t.reshape(-1) * (1.0 / spacing) + centre, 0.5, n_det + 2.5)
        i0 = xp.floor(pos)
        frac = (pos - i0).astype(xp.float32)
        rest = 1.0 - frac
        i0 = i0.astype(xp.int64)
        i1 = i0 + 1
        for view, k in group:
            row = qpad[:, view, :]
            vals = xp.take(row, i0, axis=1) * rest + xp.take(row, i1, axis=1) * frac
            if k not in turned:
                turned[k] = xp.zeros((nz, ny * nx), dtype=xp.float32)
            turned[k] += vals * weight if fan else vals
    out = xp.zeros((nz, ny, nx), dtype=xp.float32)
    for k, part in turned.items():
        out += xp.rot90(part.reshape(nz, ny, nx), k, axes=(1, 2))
    out *= float(view_weight)
    return out


def monotonic_views(geometry, data, xp=np):
    """(geometry, data) with the views in increasing angle order when the angles are not monotonic.

    The angular weights (step, arc, Parker) assume monotonic angles; views given in another order
    (rows permuted with their angles) are sorted together with their sinogram rows (axis -2).
    """
    angles = np.asarray(geometry.angles, dtype=np.float64)
    steps = np.diff(angles)
    if angles.size < 2 or np.all(steps > 0) or np.all(steps < 0):
        return geometry, data
    order = np.argsort(angles, kind="stable")
    log.info("fbp: %d view angles are not in monotonic order; sorting the views with their rows", angles.size)
    import dataclasses

    return dataclasses.replace(geometry, angles=angles[order]), xp.take(data, xp.asarray(order), axis=-2)


def fbp_volume(sino, out_shape, params: FBPParams, xp=np):
    """FBP of ``sino.data`` as a float32 array of ``out_shape`` (xp array)."""
    geometry, grid = sino.geometry, sino.grid
    data = xp.asarray(sino.data, dtype=xp.float32)
    data = data.reshape((-1, geometry.n_angles, geometry.detector_count))
    geometry, data = monotonic_views(geometry, data, xp=xp)
    n_det = geometry.detector_count
    fan = geometry.type == "fanflat"
    spacing = geometry.detector_spacing / (geometry.magnification if fan else 1.0)
    u_iso = (np.arange(n_det) - (n_det - 1) / 2.0) * spacing
    d_theta = angular_step(geometry.angles)
    view_weight, parker = _view_weights(geometry, u_iso, d_theta)
    if fan:
        so = geometry.source_origin
        pre = so / np.sqrt(so**2 + u_iso**2)
        pre = pre[None, :] * (parker if parker is not None else 1.0)
        data = data * xp.asarray(pre.astype(np.float32))
    q = ramp_filter(data, spacing, params.filter, params.frequency_scaling, params.padding, xp=xp)
    ny, nx = grid.slice_shape
    # bounds the per-angle temporaries and backproject's four per-turn sums on big stacks
    chunk = max(1, _CHUNK_ELEMENTS // (4 * ny * nx))
    image = xp.concatenate([backproject(q[i:i + chunk], geometry, grid, view_weight, xp=xp)
                            for i in range(0, q.shape[0], chunk)])
    if params.nonnegative:
        image = xp.maximum(image, 0.0)
    return image.reshape(out_shape)


@register("fbp", FBPParams, state_arrays=(8, 8), slice_independent=True)
def solve(op, sino, params: FBPParams, callback=None) -> Reconstruction:
    """FBP of ``sino`` on ``op.domain_shape``; ``op`` only supplies the shape and array module."""
    clock = Stopwatch()
    out_shape = _check(op, sino)
    xp = op.xp if op is not None else np
    image = fbp_volume(sino, out_shape, params, xp=xp)
    info = {"iterations": 1, "history": {}, "stopped": "done", "filter": params.filter,
            "frequency_scaling": params.frequency_scaling, "padding": params.padding,
            "time_total": clock.seconds()}
    if callback is not None:
        callback(IterationState(1, image))
    return Reconstruction(image, info)
