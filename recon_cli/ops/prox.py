"""Proximal maps and projections used by the primal-dual solvers (in place, numpy or cupy).

All functions overwrite their first argument and return it, so the PDHG hot loop allocates
nothing here beyond one image-sized work array for the isotropic case.

* ``project_l2_balls(s, radius)``: isotropic (group) projection. ``s`` has shape ``(m, *img)``;
  for every pixel i the vector ``s[:, i]`` is projected onto the Euclidean ball of radius
  ``radius_i`` (a scalar or an array of shape ``img``): ``s_i <- s_i * min(1, r_i / |s_i|)``,
  where ``|s_i|`` is the *magnitude* ``sqrt(sum_k s[k, i]^2)`` (not its square).
* ``project_linf_box(s, radius)``: anisotropic projection, ``s <- clip(s, -r, r)`` componentwise
  (``radius`` broadcast against ``s``: a scalar, an array of ``s.shape`` or of ``s.shape[1:]``).
* ``project_nonnegative(x)``: ``x <- max(x, 0)``.
* ``prox_l2_data_conjugate(q, y, sigma)``: prox of sigma * f* for f(z) = 1/2 ||z - y||^2,
  ``q <- (q - sigma y) / (1 + sigma)``.

A radius of 0 gives 0 (the whole ball collapses), never NaN.
"""
from __future__ import annotations

import numpy as np

from recon_cli.backend import array_module

#: Floor on magnitudes, to avoid 0/0 when a radius is 0 (float32's smallest normal number).
_TINY = float(np.finfo(np.float32).tiny)


def group_magnitude(s, out=None, scratch=None):
    """``sqrt(sum_k s[k]^2)`` over axis 0 (shape ``s.shape[1:]``), into ``out`` when given.

    ``scratch``: optional array of shape ``s.shape[1:]`` used as work space (no allocation).
    """
    xp = array_module(s)
    if out is None:
        out = xp.empty(s.shape[1:], dtype=s.dtype)
    xp.multiply(s[0], s[0], out=out)
    if s.shape[0] > 1:
        work = xp.empty_like(out) if scratch is None else scratch
        for k in range(1, s.shape[0]):
            xp.multiply(s[k], s[k], out=work)
            out += work
    xp.sqrt(out, out=out)
    return out


def project_l2_balls(s, radius, work=None, scratch=None):
    """Project every ``s[:, i]`` onto ``{|v| <= radius_i}`` in place; returns ``s``.

    ``work``, ``scratch``: optional arrays of shape ``s.shape[1:]`` reused as work space.
    """
    xp = array_module(s)
    mag = group_magnitude(s, out=work, scratch=scratch)
    # factor = r / max(|s|, r): 1 inside the ball, r/|s| outside; r = 0 -> 0
    if np.isscalar(radius) or getattr(radius, "ndim", 1) == 0:
        r = float(radius)
        xp.maximum(mag, r, out=mag)
        xp.maximum(mag, _TINY, out=mag)
        xp.divide(r, mag, out=mag)
    else:
        xp.maximum(mag, radius, out=mag)
        xp.maximum(mag, _TINY, out=mag)
        xp.divide(radius, mag, out=mag)
    s *= mag[None]
    return s


def project_linf_box(s, radius):
    """Clip ``s`` to ``[-radius, radius]`` componentwise in place; returns ``s``."""
    xp = array_module(s)
    if np.isscalar(radius) or getattr(radius, "ndim", 1) == 0:
        r = float(radius)
        xp.clip(s, -r, r, out=s)
        return s
    if radius.shape != s.shape and radius.shape == s.shape[1:]:
        radius = radius[None]
    xp.minimum(s, radius, out=s)
    # max(s, -r) without allocating -r: s = -min(-s, r)
    xp.negative(s, out=s)
    xp.minimum(s, radius, out=s)
    xp.negative(s, out=s)
    return s


def project_nonnegative(x):
    """``x <- max(x, 0)`` in place; returns ``x``."""
    xp = array_module(x)
    xp.maximum(x, 0, out=x)
    return x


def prox_l2_data_conjugate(q, y, sigma: float):
    """Prox of ``sigma * f*`` for ``f(z) = 1/2 ||z - y||^2`` in place: ``q <- (q - sigma y) / (1 + sigma)``.

    (Callers that already added ``sigma * K xbar`` to ``q`` get the PDHG data-dual update
    ``q <- (q + sigma (K xbar - y)) / (1 + sigma)``.)
    """
    sigma = float(sigma)
    q -= sigma * y
    q *= 1.0 / (1.0 + sigma)
    return q
