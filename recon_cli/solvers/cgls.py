"""CGLS: conjugate gradients on the normal equations of min ||A x - y||, from x = 0.

Works on one slice (ny, nx) or a stack (nz, ny, nx) with any Operator (numpy or
cupy, ``xp = op.xp``). For 2D geometries the step sizes are computed per slice
(arrays of shape (nz, 1, 1)), so a stack gives the slice-by-slice result; for 3D
geometries the whole volume is one problem.
"""
from __future__ import annotations

import time

from recon_cli.solvers.registry import IterationState, SolverParams, register, unit
from recon_cli.solvers.sirt import TimedOperator, relative_norm
from recon_cli.sinogram import Reconstruction


class CGLSParams(SolverParams):
    iterations: int = unit("-", "maximum number of iterations", default=30, ge=1)
    tol: float = unit("-", "stop when ||A^T(y - A x)|| / ||A^T y|| < tol in every slice (0: never)",
                      default=0.0, ge=0.0)


def _ratio(num, den, xp):
    """num / den where den > 0, else 0 (float32 arrays)."""
    return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0).astype(xp.float32, copy=False)


@register("cgls", CGLSParams, "conjugate gradient least squares (no regularisation)", iterative=True,
          state_arrays=(5, 4), slice_independent=True)
def solve(op, sino, params: CGLSParams, callback=None, *, resume_state: dict | None = None) -> Reconstruction:
    """CGLS; ``info['history']`` holds 'residual' (||A x - y|| / ||y||) and 'normal_residual'
    (max over slices of ||A^T(y - A x)|| / ||A^T y||) per iteration.

    Restartable: the callback's ``extra['state']`` is {iteration, x, r, p, gamma, gamma0, history};
    ``resume_state`` (such a dict) continues after its iteration with the uninterrupted iterates.
    """
    t_start = time.perf_counter()
    xp = op.xp
    timed = TimedOperator(op)
    y = xp.asarray(sino.data, dtype=xp.float32).reshape(op.range_shape)
    per_slice = len(op.domain_shape) == 3 and not getattr(sino.geometry, "is_3d", False)
    x_axes = (-2, -1) if per_slice else tuple(range(len(op.domain_shape)))
    y_axes = (-2, -1) if per_slice else tuple(range(len(op.range_shape)))

    def sumsq(v, axes):
        return xp.sum(v * v, axis=axes, keepdims=True, dtype=xp.float32)

    y_norm = float(xp.linalg.norm(y.ravel()))
    history: dict[str, list[float]] = {"residual": [], "normal_residual": []}
    start = 0
    if resume_state is None:
        x = xp.zeros(op.domain_shape, dtype=xp.float32)
        r = y.copy()
        s = timed.adjoint(r)
        p = s.copy()
        gamma = sumsq(s, x_axes)
        gamma0 = gamma.copy()
    else:
        def restored(key):
            return xp.array(resume_state[key], dtype=xp.float32)

        x, r, p = restored("x"), restored("r"), restored("p")
        gamma, gamma0 = restored("gamma"), restored("gamma0")
        start = int(resume_state["iteration"])
        history = {k: [float(v) for v in resume_state["history"][k]] for k in history}
    stopped = "iterations"
    k = start
    for k in range(start + 1, params.iterations + 1):
        q = timed.forward(p)
        alpha = _ratio(gamma, sumsq(q, y_axes), xp)
        x += alpha * p
        r -= alpha * q  # alpha: (nz, 1, 1) per slice or (1, ..., 1)
        s = timed.adjoint(r)
        gamma_new = sumsq(s, x_axes)
        beta = _ratio(gamma_new, gamma, xp)
        p = s + beta * p
        gamma = gamma_new
        residual = relative_norm(r, y_norm, xp)
        normal = float(xp.sqrt(xp.max(_ratio(gamma, gamma0, xp))))
        history["residual"].append(residual)
        history["normal_residual"].append(normal)
        state = {"iteration": k, "x": x, "r": r, "p": p, "gamma": gamma, "gamma0": gamma0, "history": history}
        if callback is not None and callback(IterationState(k, x, residual=residual, extra={"state": state})):
            stopped = "callback"
            break
        if params.tol > 0 and normal < params.tol:
            stopped = "tol"
            break
    info = {"iterations": k, "history": history, "stopped": stopped, "tol": params.tol,
            "time_projector": timed.seconds, "time_total": time.perf_counter() - t_start}
    if start:
        info["resumed_from"] = start
    return Reconstruction(x, info)
