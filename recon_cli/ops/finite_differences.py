"""Forward-difference image gradient D and its adjoint (-divergence), 2D, slice-wise or 3D.

Neumann boundary: the difference across the last row/column/slice is zero.
For x of shape (ny, nx): D x has shape (2, ny, nx) (d/dy, d/dx).
For x of shape (nz, ny, nx): ``mode='slicewise'`` gives (2, nz, ny, nx) (no coupling between
slices); ``mode='3d'`` gives (3, nz, ny, nx) with the slice-direction difference multiplied by
``slice_weight``.
Works on numpy and cupy arrays (``xp``).
"""
from __future__ import annotations

import numpy as np

from recon_cli.ops.operator import Operator


class Gradient(Operator):
    def __init__(self, shape: tuple[int, ...], mode: str = "slicewise", slice_weight: float = 1.0, xp=np):
        if len(shape) not in (2, 3):
            raise ValueError(f"Gradient needs a 2D or 3D shape, got {shape}")
        if mode not in ("slicewise", "3d"):
            raise ValueError(f"mode must be 'slicewise' or '3d', got {mode!r}")
        self.domain_shape = tuple(shape)
        self.mode = mode if len(shape) == 3 else "slicewise"
        self.slice_weight = float(slice_weight)
        # axes differentiated, last two are always (y, x)
        self.axes = (-3, -2, -1) if self.mode == "3d" else (-2, -1)
        self.weights = ((self.slice_weight,) if self.mode == "3d" else ()) + (1.0, 1.0)
        self.range_shape = (len(self.axes), *shape)
        self.xp = xp

    def forward(self, x):
        xp = self.xp
        out = xp.zeros(self.range_shape, dtype=x.dtype)
        for k, (ax, w) in enumerate(zip(self.axes, self.weights)):
            d = xp.diff(x, axis=ax)
            sl = [slice(None)] * x.ndim
            sl[ax] = slice(0, x.shape[ax] - 1)
            if w != 1.0:
                d *= w
            out[k][tuple(sl)] = d
        return out

    def adjoint(self, g):
        """D^T g = -div g, for g of shape range_shape."""
        xp = self.xp
        out = xp.zeros(self.domain_shape, dtype=g.dtype)
        for k, (ax, w) in enumerate(zip(self.axes, self.weights)):
            gk = g[k]
            n = gk.shape[ax]
            lo = [slice(None)] * gk.ndim
            hi = [slice(None)] * gk.ndim
            lo[ax] = slice(0, n - 1)
            hi[ax] = slice(1, n)
            # (D^T g)_i = g_{i-1} - g_i, with g_{-1} = 0 and g_{n-1} treated as 0
            part = xp.zeros_like(gk)
            part[tuple(lo)] -= gk[tuple(lo)]
            part[tuple(hi)] += gk[tuple(lo)]
            if w != 1.0:
                part *= w
            out += part
        return out

    def normal(self, x, out=None):
        """D^T D x (a Neumann Laplacian, negated), in domain_shape; written into ``out`` when given. Equals
        adjoint(forward(x)) up to rounding, with half its temporaries."""
        xp = self.xp
        if out is None:
            out = xp.zeros(self.domain_shape, dtype=x.dtype)
        else:
            out[...] = 0
        for ax, w in zip(self.axes, self.weights):
            d = xp.diff(x, axis=ax)
            if w != 1.0:
                d *= w * w
            n = x.shape[ax]
            lo = [slice(None)] * x.ndim
            hi = [slice(None)] * x.ndim
            lo[ax] = slice(0, n - 1)
            hi[ax] = slice(1, n)
            out[tuple(lo)] -= d
            out[tuple(hi)] += d
        return out

    def norm(self, iterations: int = 30, seed: int = 0) -> float:
        """Upper bound sqrt(4 * sum of squared weights) (tight for large grids)."""
        return float(np.sqrt(4.0 * sum(w * w for w in self.weights)))


def gradient_magnitude(g, xp=np):
    """Pointwise isotropic magnitude |g|_i over the first axis: shape range_shape[1:]."""
    return xp.sqrt(xp.sum(g * g, axis=0))
