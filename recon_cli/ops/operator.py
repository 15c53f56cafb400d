"""The Operator interface shared by projectors and regularisation operators."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Operator(ABC):
    """A linear map from ``domain_shape`` to ``range_shape`` (float32 arrays).

    ``xp`` is the array module of its inputs and outputs (numpy or cupy).
    Subclasses implement ``forward`` and ``adjoint``; ``norm`` is estimated once by
    power iteration and cached.
    """

    domain_shape: tuple[int, ...]
    range_shape: tuple[int, ...]
    xp = np
    dtype = np.float32
    #: ``adjoint`` is the exact transpose of ``forward`` (to rounding), as Krylov solvers need.
    exact_adjoint = True

    @abstractmethod
    def forward(self, x):
        """A x: domain_shape -> range_shape."""

    @abstractmethod
    def adjoint(self, y):
        """A^T y: range_shape -> domain_shape."""

    def __call__(self, x):
        return self.forward(x)

    def norm(self, iterations: int = 30, seed: int = 0) -> float:
        """Largest singular value ||A||_2 (power iteration on A^T A, cached, plain float)."""
        cached = getattr(self, "_norm_cache", None)
        if cached is not None:
            return cached
        value = power_norm(self, iterations=iterations, seed=seed)
        self._norm_cache = value
        return value


def power_norm(op: Operator, iterations: int = 30, seed: int = 0) -> float:
    """||A||_2 estimated by ``iterations`` steps of power iteration on A^T A (plain float)."""
    xp = op.xp
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal(op.domain_shape).astype(op.dtype))
    x /= float(xp.linalg.norm(x))
    s = 0.0
    for _ in range(iterations):
        z = op.adjoint(op.forward(x))
        s_new = float(xp.linalg.norm(z))
        if s_new == 0.0:
            return 0.0
        x = z / s_new
        if abs(s_new - s) <= 1e-6 * s_new:
            s = s_new
            break
        s = s_new
    return float(np.sqrt(s))


def adjoint_mismatch(op: Operator, seed: int = 0) -> float:
    """Relative dot-product test |<Ax, y> - <x, A^T y>| / (||Ax|| ||y||) with random x, y."""
    xp = op.xp
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.random(op.domain_shape).astype(op.dtype))
    y = xp.asarray(rng.random(op.range_shape).astype(op.dtype))
    ax = op.forward(x)
    aty = op.adjoint(y)
    lhs = float(xp.vdot(ax.astype(np.float64), y.astype(np.float64)))
    rhs = float(xp.vdot(x.astype(np.float64), aty.astype(np.float64)))
    scale = float(xp.linalg.norm(ax)) * float(xp.linalg.norm(y))
    return abs(lhs - rhs) / scale
