"""Test images in 1/mm: the modified Shepp-Logan phantom and COULE-like random images.

Shapes are drawn analytically on the square [-1, 1]^2 that the image covers
(x to the right, y up; image row 0 is +y as in ASTRA) and rasterised with
``supersample`` x ``supersample`` samples per pixel, so any size works and edges
are area-weighted. :func:`ellipse_line_integrals` gives exact line integrals of
the same ellipses, an oracle for projector and simulation tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon_cli.errors import InputError

from recon_cli.constants import MU_WATER  # 1/mm


@dataclass(frozen=True)
class Ellipse:
    """Uniform ellipse: ``value`` (1/mm), centre (x0, y0) and semi-axes (a, b) in units of the
    half-width of the image, ``phi`` (radians) counter-clockwise from +x to the ``a`` axis."""

    value: float
    a: float
    b: float
    x0: float
    y0: float
    phi: float = 0.0


def _modified_shepp_logan() -> tuple[Ellipse, ...]:
    # Toft's modified Shepp-Logan table (value, a, b, x0, y0, phi in degrees), with the values mapped
    # affinely inside the head: v -> mu_water * (0.75 + 1.25 v), i.e. the skull ellipse carries
    # 2x water and every inner ellipse 1.25 * mu_water * its Toft value. Brain (v=0.2) = water,
    # skull (v=1) = 2x water, dark ellipses (v=0) = 0.75x water, small bright ones 1.125-1.25x water.
    k = 1.25 * MU_WATER
    table = [
        (2.0 * MU_WATER, 0.69, 0.92, 0.0, 0.0, 0.0),
        (-0.8 * k, 0.6624, 0.874, 0.0, -0.0184, 0.0),
        (-0.2 * k, 0.11, 0.31, 0.22, 0.0, -18.0),
        (-0.2 * k, 0.16, 0.41, -0.22, 0.0, 18.0),
        (0.1 * k, 0.21, 0.25, 0.0, 0.35, 0.0),
        (0.1 * k, 0.046, 0.046, 0.0, 0.1, 0.0),
        (0.1 * k, 0.046, 0.046, 0.0, -0.1, 0.0),
        (0.1 * k, 0.046, 0.023, -0.08, -0.605, 0.0),
        (0.1 * k, 0.023, 0.023, 0.0, -0.606, 0.0),
        (0.1 * k, 0.023, 0.046, 0.06, -0.605, 0.0),
    ]
    return tuple(Ellipse(v, a, b, x, y, np.deg2rad(p)) for v, a, b, x, y, p in table)


#: The modified Shepp-Logan phantom as additive ellipses, values in 1/mm.
SHEPP_LOGAN_ELLIPSES = _modified_shepp_logan()


def _pixel_centres(n: int, supersample: int) -> np.ndarray:
    """Sub-sample coordinates along one axis of an n-pixel image on [-1, 1] (increasing)."""
    m = n * supersample
    return -1.0 + (np.arange(m) + 0.5) * (2.0 / m)


def _coverage(n: int, supersample: int, inside, bbox) -> tuple[slice, slice, np.ndarray] | None:
    """Fraction of each pixel inside a shape, within the shape's bounding box.

    ``inside(x, y)`` -> bool array; ``bbox`` = (xmin, xmax, ymin, ymax) in [-1, 1] units.
    Returns (row slice, column slice, coverage) or None if the shape misses the image.
    """
    xmin, xmax, ymin, ymax = bbox
    h = 2.0 / n
    c0, c1 = max(int(np.floor((xmin + 1) / h)), 0), min(int(np.ceil((xmax + 1) / h)), n)
    r0, r1 = max(int(np.floor((1 - ymax) / h)), 0), min(int(np.ceil((1 - ymin) / h)), n)
    if c0 >= c1 or r0 >= r1:
        return None
    s = supersample
    xs = _pixel_centres(n, s)[c0 * s:c1 * s]
    ys = -_pixel_centres(n, s)[r0 * s:r1 * s]  # row 0 is +y
    mask = inside(xs[None, :], ys[:, None]).astype(np.float32)
    cov = mask.reshape(r1 - r0, s, c1 - c0, s).mean(axis=(1, 3))
    return slice(r0, r1), slice(c0, c1), cov


def _ellipse_coverage(n: int, e: Ellipse, supersample: int):
    c, s = np.cos(e.phi), np.sin(e.phi)

    def inside(x, y):
        u = ((x - e.x0) * c + (y - e.y0) * s) / e.a
        v = (-(x - e.x0) * s + (y - e.y0) * c) / e.b
        return u * u + v * v <= 1.0

    hx = np.hypot(e.a * c, e.b * s)
    hy = np.hypot(e.a * s, e.b * c)
    return _coverage(n, supersample, inside, (e.x0 - hx, e.x0 + hx, e.y0 - hy, e.y0 + hy))


def _bar_coverage(n: int, x0: float, y0: float, length: float, width: float, phi: float, supersample: int):
    c, s = np.cos(phi), np.sin(phi)

    def inside(x, y):
        u = (x - x0) * c + (y - y0) * s
        v = -(x - x0) * s + (y - y0) * c
        return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)

    hx = abs(c) * length / 2 + abs(s) * width / 2
    hy = abs(s) * length / 2 + abs(c) * width / 2
    return _coverage(n, supersample, inside, (x0 - hx, x0 + hx, y0 - hy, y0 + hy))


def _check_size(n: int, supersample: int) -> None:
    if int(n) != n or n < 1:
        raise InputError(f"image size must be a positive integer, got {n}", field="size")
    if int(supersample) != supersample or supersample < 1:
        raise InputError(f"supersample must be a positive integer, got {supersample}", field="supersample")


def ellipse_image(n: int, ellipses, *, supersample: int = 4) -> np.ndarray:
    """Sum of uniform ellipses on an (n, n) float32 image covering [-1, 1]^2 (row 0 = +y)."""
    _check_size(n, supersample)
    img = np.zeros((n, n), np.float32)
    for e in ellipses:
        hit = _ellipse_coverage(n, e, supersample)
        if hit is not None:
            rows, cols, cov = hit
            img[rows, cols] += np.float32(e.value) * cov
    return img


def shepp_logan(n: int, *, scale: float = 1.0, supersample: int = 4) -> np.ndarray:
    """Modified Shepp-Logan phantom, (n, n) float32 in 1/mm; row 0 is the top (+y).

    Brain = water (0.0192/mm), skull = 2x water, range [0, 0.0384]. The three small
    ellipses sit in the lower half. ``scale`` < 1 shrinks the head about the centre
    (used to vary the slices of a stack).
    """
    ellipses = [Ellipse(e.value, e.a * scale, e.b * scale, e.x0 * scale, e.y0 * scale, e.phi)
                for e in SHEPP_LOGAN_ELLIPSES]
    return np.clip(ellipse_image(n, ellipses, supersample=supersample), 0.0, None)


def coule_phantom(n: int, rng: np.random.Generator, *, supersample: int = 4) -> np.ndarray:
    """COULE-like image, (n, n) float32 in 1/mm: a water-like body ellipse holding overlapping
    uniform ellipses and thin lines of random contrast (0.1x-2.5x water), painted in turn.
    Values lie in [0, 2.5 * 0.0192]; the same generator state gives the same image.
    """
    _check_size(n, supersample)
    img = np.zeros((n, n), np.float32)

    def paint(hit, value):
        if hit is not None:
            rows, cols, cov = hit
            img[rows, cols] = img[rows, cols] * (1 - cov) + np.float32(value) * cov

    body = Ellipse(MU_WATER * rng.uniform(0.8, 1.2), rng.uniform(0.75, 0.92), rng.uniform(0.6, 0.85),
                   0.0, 0.0, rng.uniform(-np.pi / 8, np.pi / 8))
    paint(_ellipse_coverage(n, body, supersample), body.value)
    cb, sb = np.cos(body.phi), np.sin(body.phi)

    def point_in_body(margin: float) -> tuple[float, float]:
        r, t = np.sqrt(rng.uniform(0, 1)) * (1 - margin), rng.uniform(0, 2 * np.pi)
        u, v = r * body.a * np.cos(t), r * body.b * np.sin(t)
        return u * cb - v * sb, u * sb + v * cb

    for _ in range(int(rng.integers(6, 14))):
        x0, y0 = point_in_body(0.35)
        e = Ellipse(MU_WATER * rng.uniform(0.1, 2.5), rng.uniform(0.03, 0.28), rng.uniform(0.03, 0.28),
                    x0, y0, rng.uniform(0, np.pi))
        paint(_ellipse_coverage(n, e, supersample), e.value)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = point_in_body(0.4)
        width = max(rng.uniform(1.0, 3.0) * 2.0 / n, 0.004)
        paint(_bar_coverage(n, x0, y0, rng.uniform(0.15, 0.6), width, rng.uniform(0, np.pi), supersample),
              MU_WATER * rng.uniform(0.1, 2.5))
    return np.clip(img, 0.0, None)


def phantom_stack(name: str, n: int, n_slices: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n_slices, n, n) float32 stack in 1/mm: Shepp-Logan shrinking from 100% to 90% of its size
    across the stack ('shepp-logan'), or independent COULE images ('coule', from ``rng``)."""
    if n_slices < 1:
        raise InputError(f"must be at least 1, got {n_slices}", field="slices")
    if name == "shepp-logan":
        scales = np.linspace(1.0, 0.9, n_slices) if n_slices > 1 else [1.0]
        return np.stack([shepp_logan(n, scale=float(s)) for s in scales])
    if name == "coule":
        rng = rng if rng is not None else np.random.default_rng(0)
        return np.stack([coule_phantom(n, rng) for _ in range(n_slices)])
    raise InputError(f"unknown phantom {name!r}; expected 'shepp-logan' or 'coule'", field="phantom")


def ellipse_line_integrals(ellipses, half_width: float, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Exact line integrals (value x chord length) of ``ellipses`` drawn on an image of half-width
    ``half_width`` mm, along rays ``origins + t * directions`` (arrays (..., 2) of (x, y) in mm,
    any direction length). Returns an array of shape ``origins.shape[:-1]``, in value x mm.
    """
    o = np.asarray(origins, np.float64) / half_width
    d = np.asarray(directions, np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    total = np.zeros(o.shape[:-1])
    for e in ellipses:
        c, s = np.cos(e.phi), np.sin(e.phi)
        px, py = o[..., 0] - e.x0, o[..., 1] - e.y0
        # to the ellipse's frame, scaled to the unit circle
        pu, pv = (px * c + py * s) / e.a, (-px * s + py * c) / e.b
        du, dv = (d[..., 0] * c + d[..., 1] * s) / e.a, (-d[..., 0] * s + d[..., 1] * c) / e.b
        qa = du * du + dv * dv
        qb = pu * du + pv * dv
        disc = qb * qb - qa * (pu * pu + pv * pv - 1.0)
        chord = 2.0 * np.sqrt(np.clip(disc, 0.0, None)) / qa  # in [-1, 1] units along the unit d
        total += e.value * chord
    return total * half_width
