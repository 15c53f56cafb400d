"""Space-variant TV (SV-TV): TV with fixed pixel weights from a pre-estimate u = Psi(y).

    min_{x>=0} 1/2 ||Kx - y||^2 + lam_abs * sum_i w_i |Dx|_i,
    w_i = (eta_abs / sqrt(eta_abs^2 + |D G u|_i^2))^(1 - p)

(Morotti, Evangelista, Sebastiani, Loli Piccolomini 2024), G an optional in-plane Gaussian blur of
``smoothing`` pixels. The weights are computed once, so the problem stays convex; it is solved by
the same PDHG driver as ``tv``. p = 1 gives w = 1, i.e. plain TV; small p preserves edges
(w -> small where |Du| >> eta).

Convention for ``eta``: relative to the pre-estimate's intensity range,
eta_abs = eta * (max(u) - min(u)) (1/mm per pixel); the paper's 2e-3 is for images in [0, 1].
``lam`` as in ``tv`` (normalised by intensity_scale and voxel_size^2; ``auto``: the same
discrepancy principle, so SV-TV and TV compare at the same data residual).
The pre-estimate is any registered solver named by ``pre_estimate`` (default FBP).

Defaults (p 0.5, eta 0.05, smoothing 1 px), chosen on tuning images no benchmark uses (COULE seed
5000 and anatomy seed 5100, 60-view fan beam, I0 = 1e5; lam auto for SV-TV and TV alike): with the
paper's eta = 2e-3 and a raw FBP or SIRT pre-estimate the weights follow the pre-estimate's noise
and streaks (mean weight 0.4-0.8) and SV-TV lost 1.2-3.6 dB to TV. A larger eta and a 1-pixel blur
keep the weights near 1 except at edges that stand out: FBP 0.00 / -0.34 dB, SIRT -0.17 / -0.29 dB
against TV (COULE / anatomy), weights from the true image +0.41 / -0.25 dB. No setting tried
(eta 0.01-0.3, blur 0-2 px, p 0.5) made SV-TV with an FBP or SIRT pre-estimate beat TV at lam
auto on both images: at this dose and view count TV already keeps the edges, and lowering the
penalty along them lets few-view streaks stay there. The closer the weights are to 1 the smaller
the loss, i.e. the closer SV-TV is to TV. benchmarks/results/solvers.md has the held-out numbers.
"""
from __future__ import annotations

import numpy as np

from recon_cli.ops.finite_differences import Gradient, gradient_magnitude
from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.algorithm import Stopwatch
from recon_cli.solvers.registry import register, run_stage
from recon_cli.solvers.params.svtv import SVTVParams  # noqa: F401 (re-exported)
from recon_cli.solvers.tv import TV_STATE_ARRAYS, make_gradient, solve_weighted


def smooth_in_plane(u, sigma_px: float, xp):
    """``u`` (ny, nx) or (nz, ny, nx) blurred by a Gaussian of ``sigma_px`` pixels in each slice's plane."""
    if not sigma_px > 0:
        return u
    if xp is np:
        from scipy.ndimage import gaussian_filter
    else:  # cupy
        from cupyx.scipy.ndimage import gaussian_filter
    sigma = (0.0,) * (u.ndim - 2) + (float(sigma_px), float(sigma_px))
    return gaussian_filter(u, sigma, mode="nearest")


def svtv_weights(u, eta_abs: float, p: float, xp=None, gradient: Gradient | None = None, smoothing: float = 0.0):
    """w = (eta_abs / sqrt(eta_abs^2 + |D G u|^2))^(1-p), float32 of u's shape, values in (0, 1].

    ``u``: image (ny, nx) or stack (nz, ny, nx) in 1/mm; ``eta_abs`` in the units of u (absolute);
    ``gradient``: the D to use (default: slice-wise forward differences); ``smoothing``: sigma (pixels)
    of the in-plane Gaussian G applied to u first (0: none). p = 1 gives exactly 1.
    """
    if xp is None:
        from recon_cli.backend import array_module

        xp = array_module(u)
    eta_abs, p = float(eta_abs), float(p)
    if not eta_abs > 0:
        raise ValueError(f"eta must be positive, got {eta_abs}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    u = smooth_in_plane(xp.asarray(u, dtype=np.float32), smoothing, xp)
    if gradient is None:
        gradient = Gradient(tuple(u.shape), xp=xp)
    mag = gradient_magnitude(gradient.forward(u), xp=xp)  # |Du|
    if p == 1.0:
        return xp.ones_like(mag)
    # eta / sqrt(eta^2 + |Du|^2) = 1 / sqrt(1 + (|Du| / eta)^2), in float32 without overflow
    mag *= np.float32(1.0 / eta_abs)
    mag *= mag
    mag += np.float32(1.0)
    # (1 + t^2)^(-(1-p)/2)
    xp.power(mag, np.float32(-(1.0 - p) / 2.0), out=mag)
    return mag


def eta_absolute(u, eta: float, xp) -> float:
    """eta_abs = eta * (max(u) - min(u)) (falls back to eta * max|u|, then eta, for a flat u)."""
    span = float(xp.max(u)) - float(xp.min(u))
    if span <= 0:
        span = float(xp.max(xp.abs(u))) or 1.0
    return float(eta) * span


def _solve_with_weights(op: Operator, sino: Sinogram, params: SVTVParams, w, eta_abs: float, B: Operator,
                        callback=None, resume_state: dict | None = None, keep: dict | None = None) -> Reconstruction:
    """The weighted TV of SV-TV; the callback's state also carries ``weights``, ``eta_abs`` and ``keep``."""
    xp = op.xp
    rec = solve_weighted(op, sino, params, w, callback, B=B, resume_state=resume_state,
                         context={"weights": w, "eta_abs": eta_abs, **(keep or {})})
    rec.info.update(p=float(params.p), eta=float(params.eta), eta_abs=eta_abs,
                    weight_mean=float(xp.mean(w)), weight_min=float(xp.min(w)))
    return rec


def solve_with_pre_estimate(op: Operator, sino: Sinogram, params: SVTVParams, u, callback=None) -> Reconstruction:
    """SV-TV with the weights of a given pre-estimate ``u`` (e.g. the true image, for a ceiling test)."""
    xp = op.xp
    B = make_gradient(op, params)
    u = xp.asarray(u, dtype=np.float32)
    eta_abs = eta_absolute(u, params.eta, xp)
    w = svtv_weights(u, eta_abs, params.p, xp, gradient=B, smoothing=params.smoothing)
    del u
    return _solve_with_weights(op, sino, params, w, eta_abs, B, callback)


#: (image-sized, sinogram-sized) float32 arrays at the peak: ``tv``'s plus the weights and the
#: weighted radius lam * w of the dual projection (measured with a fixed lam: 17.0 and 4.1). The
#: pre-estimate runs before and is released (FBP's peak, 10.2 and 7.2 measured, is below this).
SVTV_STATE_ARRAYS = (TV_STATE_ARRAYS[0] + 2, TV_STATE_ARRAYS[1])


@register("svtv", SVTVParams, state_arrays=SVTV_STATE_ARRAYS, slice_independent=False)
def solve(op: Operator, sino: Sinogram, params: SVTVParams, callback=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """SV-TV of ``sino``: run the pre-estimate, compute the weights once, solve the weighted TV.

    Restartable: the callback's state is ``tv``'s plus the weights (so a resumed run neither
    runs the pre-estimate again nor recomputes the weights), eta_abs and time_pre_estimate.
    """
    clock = Stopwatch()
    xp = op.xp
    B = make_gradient(op, params)
    if resume_state is None:
        pre = run_stage("pre-estimate", params.pre_estimate, op, sino, callback)
        t_pre = clock.seconds()
        u = xp.asarray(pre.volume, dtype=np.float32)
        del pre
        eta_abs = eta_absolute(u, params.eta, xp)
        w = svtv_weights(u, eta_abs, params.p, xp, gradient=B, smoothing=params.smoothing)
        del u
    else:
        w = xp.array(resume_state["weights"], dtype=np.float32, copy=True)
        eta_abs, t_pre = float(resume_state["eta_abs"]), float(resume_state["time_pre_estimate"])
    rec = _solve_with_weights(op, sino, params, w, eta_abs, B, callback, resume_state,
                              keep={"time_pre_estimate": t_pre})
    rec.info.update(pre_estimate=params.pre_estimate.name, time_pre_estimate=t_pre,
                    time_total=clock.seconds())
    return rec
