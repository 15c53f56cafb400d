"""The acquisition envelope a trained model serves, and the check that an input lies inside it.

A model's metadata ``envelope`` (JSON) says which inputs it was trained for::

    {"geometry_types": ["parallel", "fanflat"],   # 2D geometry types
     "n_views": [30, 360],                         # number of views (inclusive range)
     "grid": [128, 1024],                          # pixels along each side of a slice
     "pixel_size_mm": [0.3, 1.5],                  # in-plane pixel size, mm
     "I0": [1.0e4, 1.0e6],                         # Poisson dose (counts per detector element), or null
     "sigma": [0.001, 0.02],                       # Gaussian line-integral noise std, or null
     "canonical_pixel_size_mm": 1.0,               # the network's pixel size when it resamples, else null
     "trained_geometry": {"attrs": {...}, "angles": [...]},   # single-scanner models only
     "grid_shape": [256, 256]}                     # single-scanner models only

A model trained for one scanner (``trained_geometry`` and ``grid_shape`` set, or old metadata
without an ``envelope``, from which :func:`envelope_of` derives that one-point envelope) fits an
input whose geometry equals the trained one within tolerances: angles within
:data:`ANGLE_TOLERANCE` rad (so a float32-stored copy fits), detector sizes and distances within
:data:`REL_TOLERANCE`, the same grid, and the noise within :data:`NOISE_TOLERANCE` of the trained
level. Mismatches are then reported under the fields ``geometry``, ``grid``, ``noise``. A model with
ranges reports ``envelope.<field>`` (e.g. ``envelope.n_views``). No I/O here; pure checks.
"""
from __future__ import annotations

import math

import numpy as np

#: Angles equal to a trained set within this many radians count as that set (float32 storage: ~2e-7).
ANGLE_TOLERANCE = 1e-5
#: Relative tolerance for lengths, pixel sizes and range ends (float32 storage: ~6e-8).
REL_TOLERANCE = 1e-5
#: Noise levels (I0 or sigma) within this factor of a single trained level count as a fit.
NOISE_TOLERANCE = 2.0


def envelope_of(meta: dict) -> dict:
    """The model's envelope: ``meta["envelope"]``, or the one-point envelope of old metadata.

    Old metadata (no ``envelope``) has ``geometry`` (attrs, angles), ``grid`` (shape, voxel_size)
    and ``noise`` (I0 or sigma); these become ``trained_geometry``, ``grid_shape`` and a one-point
    pixel size, view count and noise level (the noise checked within NOISE_TOLERANCE).
    """
    if meta.get("envelope"):
        return dict(meta["envelope"])
    env: dict = {}
    geo = meta.get("geometry") or {}
    if geo.get("attrs") or geo.get("angles") is not None:
        env["trained_geometry"] = {"attrs": geo.get("attrs") or {}, "angles": geo.get("angles")}
        if geo.get("attrs", {}).get("type"):
            env["geometry_types"] = [geo["attrs"]["type"]]
        if geo.get("angles") is not None:
            env["n_views"] = [len(geo["angles"])] * 2
    grid = meta.get("grid") or {}
    if grid.get("shape"):
        env["grid_shape"] = list(grid["shape"])
        env["grid"] = [min(grid["shape"]), max(grid["shape"])]
    if grid.get("voxel_size") is not None:
        env["pixel_size_mm"] = [float(grid["voxel_size"])] * 2
    if "noise" in meta:  # a single trained noise level (none: noiseless training data)
        noise = meta.get("noise") or {}
        env["noise_trained"] = {}
        for key in ("I0", "sigma"):
            if noise.get(key) is not None:
                env[key] = [float(noise[key]) / NOISE_TOLERANCE, float(noise[key]) * NOISE_TOLERANCE]
                env["noise_trained"][key] = float(noise[key])
    return env


def single_geometry_envelope(attrs: dict, angles, grid_shape, voxel_size: float, noise: dict) -> dict:
    """The envelope of a model trained for one scanner (what ``recon train`` writes without ranges)."""
    angles = [float(a) for a in np.asarray(angles, float).ravel()]
    meta = {"geometry": {"attrs": attrs, "angles": angles},
            "grid": {"shape": list(grid_shape), "voxel_size": float(voxel_size)}, "noise": noise}
    return envelope_of(meta)


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=REL_TOLERANCE, abs_tol=1e-12)


def _in_range(value: float, rng) -> bool:
    lo, hi = float(rng[0]), float(rng[1])
    return lo * (1 - REL_TOLERANCE) - 1e-12 <= float(value) <= hi * (1 + REL_TOLERANCE) + 1e-12


def _range_text(rng) -> str:
    lo, hi = rng
    return f"{lo:g}" if _close(lo, hi) else f"{lo:g}-{hi:g}"


def angle_difference(a, b) -> float:
    """Largest |a_i - b_i| in radians, each difference wrapped to (-pi, pi]; inf if lengths differ."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    d = np.angle(np.exp(1j * (a - b)))
    return float(np.max(np.abs(d)))


def geometry_differences(trained: dict, geometry) -> list[str]:
    """How ``geometry`` differs from a single trained geometry (empty: it is that geometry)."""
    attrs = trained.get("attrs") or {}
    parts = []
    for key, value in geometry.attrs().items():
        want = attrs.get(key)
        same = (_close(want, value) if isinstance(value, (int, float)) and isinstance(want, (int, float))
                and not isinstance(value, bool) else want == value)
        if not same:
            parts.append(f"{key}={value!r} (trained {want!r})")
    angles = trained.get("angles")
    if not parts and angles is not None:
        if len(angles) != geometry.n_angles:
            parts.append(f"{geometry.n_angles} angles (trained {len(angles)})")
        else:
            diff = angle_difference(geometry.angles, angles)
            if diff > ANGLE_TOLERANCE:
                parts.append(f"angles differ by up to {diff:.3g} rad (tolerance {ANGLE_TOLERANCE:g})")
    return parts


def noise_mismatch(trained: dict, data: dict) -> str | None:
    """Why the data's noise (sinogram metadata: I0 / sigma) differs from one trained level, or None.

    Data without any noise description cannot be checked and counts as a fit.
    """
    t_i0, t_sigma = trained.get("I0"), trained.get("sigma")
    d_i0, d_sigma = data.get("I0"), data.get("sigma")
    if d_i0 is None and d_sigma is None:
        return None
    if d_i0 is not None:
        if t_i0 is None:
            return f"data has Poisson noise I0={float(d_i0):g}, the model was trained on {noise_text(trained)}"
        ratio = float(d_i0) / float(t_i0)
        if not 1 / NOISE_TOLERANCE <= ratio <= NOISE_TOLERANCE:
            return f"data has I0={float(d_i0):g}, the model was trained on I0={float(t_i0):g}"
        return None
    if t_sigma is None:
        return f"data has Gaussian noise sigma={float(d_sigma):g}, the model was trained on {noise_text(trained)}"
    ratio = float(d_sigma) / float(t_sigma) if float(t_sigma) > 0 else math.inf
    if not 1 / NOISE_TOLERANCE <= ratio <= NOISE_TOLERANCE:
        return f"data has sigma={float(d_sigma):g}, the model was trained on sigma={float(t_sigma):g}"
    return None


def noise_text(noise: dict) -> str:
    if noise.get("I0") is not None:
        return f"Poisson noise I0={float(noise['I0']):g}"
    if noise.get("sigma") is not None:
        return f"Gaussian noise sigma={float(noise['sigma']):g}"
    return "noiseless data"


def envelope_mismatches(env: dict, geometry, grid, noise: dict | None = None) -> list[tuple[str, str]]:
    """(field, explanation) for each way (geometry, slice grid, noise metadata) leaves the envelope.

    ``grid``: a VolumeGrid (its slice shape and voxel size, mm); ``noise``: sinogram metadata with
    ``I0`` / ``sigma`` (None or neither: not checked). Empty list: the input fits.
    """
    found: list[tuple[str, str]] = []
    shape = [int(s) for s in grid.slice_shape]
    vs = float(grid.voxel_size)
    # the grid
    if env.get("grid_shape") is not None:
        want_shape, want_vs = list(env["grid_shape"]), (env.get("pixel_size_mm") or [vs])[0]
        if want_shape != shape or not _close(want_vs, vs):
            found.append(("grid", f"trained for a {want_shape} grid of {want_vs} mm voxels, got {shape} of {vs} mm"))
    else:
        if env.get("grid") is not None and not all(_in_range(n, env["grid"]) for n in shape):
            found.append(("envelope.grid", f"a {shape[0]}x{shape[1]} grid is outside the model's "
                                           f"{_range_text(env['grid'])} pixels per side"))
        if env.get("pixel_size_mm") is not None and not _in_range(vs, env["pixel_size_mm"]):
            found.append(("envelope.pixel_size_mm", f"pixel size {vs:g} mm is outside the model's "
                                                    f"{_range_text(env['pixel_size_mm'])} mm"))
    # the geometry
    if env.get("trained_geometry") is not None:
        parts = geometry_differences(env["trained_geometry"], geometry)
        if parts:
            found.append(("geometry", "trained for another geometry: " + "; ".join(parts)))
    else:
        types = env.get("geometry_types")
        if types is not None and geometry.type not in types:
            found.append(("envelope.geometry_types", f"geometry type {geometry.type!r} is not one of the "
                                                     f"model's {list(types)}"))
        if env.get("n_views") is not None and not _in_range(geometry.n_angles, env["n_views"]):
            found.append(("envelope.n_views", f"{geometry.n_angles} views are outside the model's "
                                              f"{_range_text(env['n_views'])}"))
    # the noise
    if noise is not None:
        if "noise_trained" in env:
            msg = noise_mismatch(env["noise_trained"], noise)
            if msg:
                found.append(("noise", msg))
        else:
            found += _noise_range_mismatches(env, noise)
    return found


def _noise_range_mismatches(env: dict, noise: dict) -> list[tuple[str, str]]:
    d_i0, d_sigma = noise.get("I0"), noise.get("sigma")
    if d_i0 is None and d_sigma is None:
        return []
    key, value = ("I0", d_i0) if d_i0 is not None else ("sigma", d_sigma)
    rng = env.get(key)
    if rng is None:
        other = "Gaussian noise" if key == "I0" else "Poisson noise"
        if env.get("I0") is None and env.get("sigma") is None:
            return []  # the model states no noise range: nothing to check
        return [(f"envelope.{key}", f"data has {key}={float(value):g} but the model was trained on {other} only")]
    if not _in_range(float(value), rng):
        return [(f"envelope.{key}", f"{key}={float(value):g} is outside the model's {_range_text(rng)}")]
    return []
