"""View symmetries of 2D geometries: which views are rotated or mirrored copies of others.

A quarter-turn rotation or a transpose of a square image is an index permutation, and for a
detector centred on the rotation axis (always so here) it maps the projection at one view
angle onto the projection at another (exactly for exact ray/pixel weights; ASTRA's float32 ray
stepping breaks it by up to 1e-3 on products at 512^2 unless its matrix is built on tiles, see
recon_cli.projectors.tiled_matrix; checked in tests/test_symmetric_projector.py and
tests/test_tiled_matrix.py):

* ``P_theta(rot90(x, r)) = P_(theta - r pi/2)(x)`` (np.rot90 on image axes (row, column));
* ``P_theta(x.T) = flip(P_(pi/2 - theta)(x))`` (flip: the detector reversed);
* parallel beam only: ``P_(theta + pi)(x) = flip(P_theta(x))``.

So a projector needs only the matrix rows of a few *stored* views: every other view is a
stored view applied to a transformed copy of the image, possibly with its detector reversed.
60 equally spaced views over 2 pi keep 8 stored views (quarter turns and mirrors), 15 without
mirrors. :func:`find_view_symmetry` finds the covering greedily for any angle set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: (transpose first, quarter turns) of every image transform tried; identity first.
TRANSFORMS: tuple[tuple[bool, int], ...] = tuple((t, r) for t in (False, True) for r in range(4))
#: Two view angles closer than this (radians) are the same view.
ANGLE_TOL = 1e-6


def transform_image(x: np.ndarray, transform: tuple[bool, int]) -> np.ndarray:
    """rot90(x^T, r) on the last two axes of ``x`` ((ny, nx) or (nz, ny, nx)); a view, no copy."""
    transpose, turns = transform
    if transpose:
        x = np.swapaxes(x, -1, -2)
    return np.rot90(x, turns, axes=(-2, -1))


def inverse_transform_image(x: np.ndarray, transform: tuple[bool, int]) -> np.ndarray:
    """The inverse of :func:`transform_image` (also its transpose: both are permutations)."""
    transpose, turns = transform
    x = np.rot90(x, -turns, axes=(-2, -1))
    return np.swapaxes(x, -1, -2) if transpose else x


@dataclass(frozen=True)
class ViewSymmetry:
    """Stored views and how every view of the geometry follows from one of them.

    ``stored``: indices of the views whose matrix rows are kept. ``transforms``: image
    transforms used (columns of the product, identity first). ``entries``: int array of shape
    (n_views, 4), one row per view u: (stored position s, transform position k, u, flip), meaning
    ``P_u(x) = flip^f(P_stored[s](transform_k(x)))``.
    """

    n_views: int
    stored: tuple[int, ...]
    transforms: tuple[tuple[bool, int], ...]
    entries: np.ndarray

    @property
    def order(self) -> float:
        """How many times fewer matrix rows are stored than the full matrix has."""
        return self.n_views / len(self.stored)

    @property
    def is_trivial(self) -> bool:
        return len(self.stored) == self.n_views


def _transformed_angle(theta: float, transform: tuple[bool, int]) -> tuple[float, int]:
    """(angle phi, flip) with P_theta(transform(x)) = flip^f P_phi(x)."""
    transpose, turns = transform
    if transpose:
        return math.pi / 2 - (theta - turns * math.pi / 2), 1
    return theta - turns * math.pi / 2, 0


def find_view_symmetry(angles: np.ndarray, geometry_type: str, slice_shape: tuple[int, int],
                       tol: float = ANGLE_TOL) -> ViewSymmetry:
    """Greedy covering of the views by transformed stored views (see the module docstring).

    Non-square slices allow only the half turn; a geometry without symmetry stores every view
    (``is_trivial``).
    """
    angles = np.asarray(angles, dtype=np.float64)
    n = angles.size
    parallel = geometry_type == "parallel"
    period = math.pi if parallel else 2 * math.pi
    allowed = [g for g in TRANSFORMS if slice_shape[0] == slice_shape[1] or (not g[0] and g[1] % 2 == 0)]
    reduced = np.mod(angles, period)
    parity = np.rint((angles - reduced) / math.pi).astype(np.int64) % 2 if parallel else np.zeros(n, np.int64)
    order = np.argsort(reduced, kind="stable")
    sorted_angles = reduced[order]

    def matches(phi: float, flip: int):
        """Views u (and their flips) whose projection is flip^f P_phi; nearest first."""
        m = phi % period
        k = int(round((phi - m) / math.pi)) % 2 if parallel else 0
        found = []
        for target in (m, m - period, m + period):  # the wrap-around at 0 / period
            lo = np.searchsorted(sorted_angles, target - tol)
            hi = np.searchsorted(sorted_angles, target + tol, side="right")
            found.extend(int(u) for u in order[lo:hi])
        return [(u, (flip + k + int(parity[u])) % 2) for u in found]

    covered = np.zeros(n, dtype=bool)
    stored: list[int] = []
    rows: list[tuple[int, int, int, int]] = []
    used: list[tuple[bool, int]] = []
    for v in range(n):
        if covered[v]:
            continue
        s = len(stored)
        stored.append(v)
        for g in allowed:
            phi, flip = _transformed_angle(float(angles[v]), g)
            for u, f in matches(phi, flip):
                if not covered[u]:
                    if g == (False, 0) and u != v:
                        continue  # the identity covers the stored view itself
                    covered[u] = True
                    if g not in used:
                        used.append(g)
                    rows.append((s, used.index(g), u, f))
                    break
    entries = np.array(sorted(rows, key=lambda r: r[2]), dtype=np.int64).reshape(-1, 4)
    # identity first, so a trivial symmetry is the plain product
    return ViewSymmetry(n_views=n, stored=tuple(stored), transforms=tuple(used), entries=entries)
