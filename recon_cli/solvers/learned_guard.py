"""Out-of-distribution guard for learned outputs: is the network's image consistent with the data?

A network applied outside what it learned can return an image that looks clean but no longer
explains the measured sinogram. The guard compares the relative data residual of the network's
output, ``r_net = ||A f(x) - y|| / ||y||``, with that of a data-consistent baseline computed in the
same run (the network's input solver, e.g. FBP, or RISING's iterate): the output is *implausible*
when it is not finite or when ``r_net > factor * r_base``.

Default factor :data:`IMPLAUSIBLE_FACTOR` = 1.5, from measurements on 60-view fan-beam data at
I0 = 1e5 with the post-processing model (benchmarks/guard_residuals.py, docs/models.md): its
residual was 0.30-0.56x FBP's (Hann) on phantoms and real slices alike, so 1.5x FBP's is far
outside anything a working model produced; it catches broken outputs (wrong scale, garbage,
NaN), not a network that is merely somewhat worse than TV.

Second check, against the noise (issue 14): the data cannot be fitted better than their misfit m
(noise plus model error; recon_cli.solvers.regularisation_parameter.data_misfit_norm, from the
metadata or estimate_noise_model), and TV with ``lam: auto`` leaves by construction a residual of
tau * m (tau = 0.97, the discrepancy principle). So ``||A f(x) - y|| / m`` is the network's residual
against the expected misfit and against TV ``lam: auto``'s residual at once, without running TV.
With ``noise_factor`` set, an output whose residual exceeds ``noise_factor * m`` is implausible too.

``on_implausible``: ``fallback`` (return the baseline, warn), ``fail`` (RunError, exit 1) or
``ignore`` (keep the network's output, warn). The residuals, the ratio and the decision go into
the solver's info under ``guard_*`` keys; the runner writes the numeric ones to ``/metrics``
(``guard_residual_network``, ``guard_residual_baseline``, ``guard_ratio``, ``guard_factor``,
``guard_implausible`` and ``guard_fallback`` as 0/1, ``guard_implausible_slices``; with a misfit:
``guard_residual_noise`` (m / ||y||), ``guard_noise_ratio``, ``guard_noise_factor``) and all of them
to ``/info``. A 2D slice stack is judged slice by slice; only implausible slices are replaced.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Literal

import numpy as np

from recon_cli.errors import RunError
from recon_cli.solvers.params.guard import IMPLAUSIBLE_FACTOR, NOISE_FACTOR  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

#: IMPLAUSIBLE_FACTOR, NOISE_FACTOR: the guard's defaults (defined without numpy for the parameter models).

OnImplausible = Literal["fallback", "fail", "ignore"]


def relative_residual(op, x, y) -> float:
    """||A x - y|| / ||y|| (inf when x is not finite); x of op.domain_shape, y of the data's shape."""
    res, norm = _residual_parts(op, x, y)
    total, ny = math.sqrt(float(np.sum(res**2))), math.sqrt(float(np.sum(norm**2)))
    return total / ny if ny > 0 else total


def _residual_parts(op, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(||A x_i - y_i||, ||y_i||) per slice i of a 2D stack (one entry otherwise); inf where x_i is not finite."""
    xp = op.xp
    per_slice = x.ndim == 3 and y.ndim == 3 and y.shape[0] == x.shape[0]
    axes_x = tuple(range(1, x.ndim)) if per_slice else tuple(range(x.ndim))
    finite = xp.all(xp.isfinite(x), axis=axes_x)
    r = op.forward(xp.where(xp.isfinite(x), x, 0).astype(x.dtype, copy=False)) - y
    axes_y = tuple(range(1, y.ndim)) if per_slice else tuple(range(y.ndim))
    res = xp.sqrt(xp.sum(r.astype(np.float64) ** 2, axis=axes_y))
    norm = xp.sqrt(xp.sum(y.astype(np.float64) ** 2, axis=axes_y))
    res = xp.where(finite, res, xp.inf)
    to_host = (lambda a: a.get()) if xp is not np else np.asarray
    return np.atleast_1d(to_host(res)), np.atleast_1d(to_host(norm))


def data_misfit(sino, per_slice: bool = True) -> np.ndarray:
    """Expected ||K x_true - y|| (noise plus model error) of a sinogram, per slice of a 2D stack.

    From the metadata (I0 / sigma) or the sinogram alone (regularisation_parameter.data_misfit_norm);
    (n_slices,) for a stack, (1,) otherwise. TV with ``lam: auto`` leaves tau times this residual.
    """
    from recon_cli.backend import to_numpy
    from recon_cli.solvers.regularisation_parameter import data_misfit_norm

    y = np.asarray(to_numpy(sino.data))
    voxel = float(sino.grid.voxel_size)
    if per_slice and y.ndim == 3 and sino.geometry.type in ("parallel", "fanflat"):
        return np.array([data_misfit_norm(y[i], sino.metadata, sino.geometry, voxel)[0] for i in range(y.shape[0])])
    return np.array([data_misfit_norm(y, sino.metadata, sino.geometry, voxel)[0]])


def misfit_or_none(sino):
    """:func:`data_misfit`, or None (with a log line) when the sinogram is too small to estimate its noise."""
    from recon_cli.errors import InputError

    try:
        return data_misfit(sino)
    except InputError as exc:
        log.info("no noise check of the learned output: %s", exc.message)
        return None


def guard_output(op, data, network_out, baseline, *, baseline_name: str, factor: float = IMPLAUSIBLE_FACTOR,
                 on_implausible: OnImplausible = "fallback", what: str = "network",
                 fallback: Callable[[], object] | None = None, fallback_name: str | None = None,
                 misfit=None, noise_factor: float | None = None) -> tuple[object, dict]:
    """(volume to return, ``guard_*`` info) after checking ``network_out`` against ``baseline``.

    ``data``: the measured sinogram array; ``baseline``: a data-consistent image of the same shape.
    A 2D slice stack is judged slice by slice: only implausible slices are replaced.
    ``fallback``: computes the image whose slices replace implausible ones (default: ``baseline``
    itself), named ``fallback_name``. Raises RunError when implausible and ``on_implausible == "fail"``.
    ``misfit``: expected ||K x_true - y|| (:func:`data_misfit`; scalar or one per slice); with
    ``noise_factor``, a residual above ``noise_factor * misfit`` is implausible as well.
    Info: stack-wide relative residuals, the largest per-slice ratio, the implausible slices' count.
    """
    res_net, norm = _residual_parts(op, network_out, data)
    res_base, _ = _residual_parts(op, baseline, data)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(res_base > 0, res_net / np.where(res_base > 0, res_base, 1.0),
                          np.where(res_net > 0, np.inf, 1.0))
    bad = ~np.isfinite(res_net) | ~(ratios <= factor)
    y_norm = math.sqrt(float(np.sum(norm**2))) or 1.0
    r_net = math.sqrt(float(np.sum(res_net**2))) / y_norm
    r_base = math.sqrt(float(np.sum(res_base**2))) / y_norm
    ratio = float(np.max(ratios))
    info = {"guard_residual_network": _finite_or_none(r_net), "guard_residual_baseline": _finite_or_none(r_base),
            "guard_ratio": _finite_or_none(ratio), "guard_factor": float(factor), "guard_baseline": baseline_name}
    reasons = [f"{baseline_name}'s {r_base:.4g} (largest ratio {ratio:.3g} > {factor:g})"] if bad.any() else []
    if misfit is not None:
        m = np.broadcast_to(np.asarray(misfit, np.float64).ravel(), res_net.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            noise_ratios = np.where(m > 0, res_net / np.where(m > 0, m, 1.0), np.inf)
        r_noise = math.sqrt(float(np.sum(m**2))) / y_norm
        noise_ratio = float(np.max(noise_ratios))
        info.update(guard_residual_noise=_finite_or_none(r_noise), guard_noise_ratio=_finite_or_none(noise_ratio))
        if noise_factor is not None:
            info["guard_noise_factor"] = float(noise_factor)
            noisy = ~(noise_ratios <= noise_factor)
            if noisy.any():
                reasons.append(f"the expected misfit (noise) {r_noise:.4g} (largest ratio {noise_ratio:.3g} > "
                               f"{noise_factor:g}; TV lam auto leaves 0.97x the misfit)")
            bad = bad | noisy
    implausible = bool(bad.any())
    info.update(guard_implausible=int(implausible), guard_implausible_slices=int(bad.sum()), guard_fallback=0)
    if not implausible:
        info["guard_decision"] = "accepted"
        log.info("%s output consistent with the data: residual %.4g vs %s %.4g (ratio %.3g <= %g)%s", what, r_net,
                 baseline_name, r_base, ratio, factor,
                 "" if misfit is None else f", noise misfit {info['guard_residual_noise']:.4g} "
                                           f"(ratio {info['guard_noise_ratio']:.3g})")
        return network_out, info
    where = f" in {int(bad.sum())} of {bad.size} slices" if bad.size > 1 else ""
    text = (f"{what} output implausible for this data{where}: relative data residual {r_net:.4g} against "
            + " and ".join(reasons))
    if on_implausible == "fail":
        raise RunError(text + "; on_implausible: fail")
    if on_implausible == "ignore":
        info["guard_decision"] = "ignored"
        log.warning("%s; keeping it (on_implausible: ignore)", text)
        return network_out, info
    name = fallback_name or baseline_name
    info.update(guard_decision="fallback", guard_fallback=1, guard_fallback_solver=name)
    log.warning("%s; returning the %s result instead (on_implausible: fallback)", text, name)
    replacement = fallback() if fallback is not None else baseline
    if bad.size == 1 or bool(bad.all()):
        return replacement, info
    xp = op.xp
    mask = xp.asarray(bad)[:, None, None]
    return xp.where(mask, replacement, network_out).astype(network_out.dtype, copy=False), info


def _finite_or_none(v: float):
    return float(v) if np.isfinite(v) else None
