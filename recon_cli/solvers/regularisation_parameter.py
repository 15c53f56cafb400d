"""``lam: auto``: the regularisation parameter by Morozov's discrepancy principle.

Choose lam such that the data residual of the regularised solution matches the misfit that the
data must keep (noise plus model error, below),

    ||K x_lam - y|| = tau * ||m||,      ||m|| = ||e|| * sqrt(max(1, r))      (tau default 0.97),

where ||e|| is the expected norm of the noise in the line integrals y:

* metadata ``sigma`` (Gaussian std of one line integral): ||e||^2 = M sigma^2 (M data values);
* else metadata ``I0`` (incident counts; Poisson, after -log: var(y_i) ~ exp(y_i) / I0):
  ||e||^2 = sum_i exp(y_i) / I0;
* else estimated from the sinogram itself (:func:`estimate_noise_norm`),

and r >= 1 raises it by the model error (:func:`data_misfit_norm`): the energy of y above the image
grid's Nyquist frequency on the detector, where an object without sub-pixel detail has none, over
what the noise puts there. An object with sharp, bright, sub-pixel edges cannot be fitted by any
image on the grid even without noise; without this term the principle over-fits such data (the
Shepp-Logan sample: true misfit 1.24 ||e||, r = 1.35, lam 2x too small, 2.1 dB below the best lam).
The estimate is a proxy, not exact: on phantoms with a bright thin ring it was within -3% to +6% of
the true misfit ||K x_true - y|| (Shepp-Logan sample: -6%).

Why tau < 1: in few-view CT there are fewer data than pixels, so the regularised solution fits part
of the noise, and the best lam in hindsight leaves a residual a little under the misfit. Tuning
images (60-view fan beam, 256 x 256 of 1 mm, simulated on a 2x finer grid; none of them is in any
benchmark): COULE seeds 5000-5001 and anatomy seed 5100 at I0 = 1e5 and 2e4, and three COULE
phantoms with a bright thin elliptical ring (seeds 5200-5202, model error 1.6-3.3 x the noise). The
best lam left 0.92-0.98 ||m||; PSNR stayed within 0.5 dB of the best lam for tau in [0.943, 0.97] on
all of them but ring seed 5202, whose misfit the proxy overestimates by 6% (it wants tau <= 0.937; at
0.97 it lands 1.2 dB below its best lam). PSNR falls faster below the best lam than above it (COULE
5000: half the best lam -1.29 dB, twice -0.56 dB), hence the upper end, 0.97. ``search_rtol``
(0.005) is small next to that interval. Parallel beam with detector elements as large as the pixels
has no band above the cut-off: there r is not used (the noise alone).

Two ways to find that lam. The Chambolle-Pock solvers (tv, svtv, tpv, graphla with pdhg) and sgp_tv
follow the target along one warm-started chain (:func:`follow_discrepancy`: tv within 0.33 dB of the
best lam on every case of the evaluation suite, at most LAM_AUTO_BUDGET x the iterations of one solve;
sgp_tv then scales the lam it found by its few-view factor, sgp_tv.auto_lam_factor).
:func:`discrepancy_search` (used by no solver's lam auto any more) searches over trials: the
residual grows monotonically with lam, so we bracket the target on log(lam) (steps of x10 from the starting value) and then refine by regula falsi
(Illinois variant) on (log lam, log residual), stopping when the residual is within ``rtol`` of the
target. Every evaluation is a shortened solver run (``search_iterations``, warm-started from the
evaluation at the nearest lam, primal and dual), so the cost is about
``evaluations * search_iterations`` extra iterations: typically 4-8 evaluations, i.e. 1-3 times
the cost of the final solve at 100 iterations each. The final solve is warm-started from the
nearest evaluation.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from recon_cli.backend import to_numpy
from recon_cli.errors import InputError

log = logging.getLogger(__name__)

#: 1 / Phi^-1(3/4): turns a median absolute deviation into a Gaussian standard deviation.
MAD_TO_STD = 1.482602218505602


def _robust_std(d: np.ndarray) -> float:
    """Gaussian std from the median absolute deviation of ``d`` (float64)."""
    if d.size == 0:
        return 0.0
    med = np.median(d)
    return MAD_TO_STD * float(np.median(np.abs(d - med)))


#: Order of the detector difference filter of the noise estimate: 4 leaks 2-4x less of the object's
#: own structure than 2 (measured on the suite, benchmarks/suite_cases.py), and every order has the
#: variance of one value of white noise after normalisation.
NOISE_DIFFERENCE_ORDER = 4

#: The noise model's two parts are fitted only when the usable groups span at least this factor in
#: exp(level); below it the noise is taken as Poisson alone (see estimate_noise_model).
MIN_GAIN_SPAN = 2.0


@dataclass(frozen=True)
class NoiseModel:
    """Variance of one line integral y_i: ``gaussian + poisson * exp(y_i)`` (1/mm^0: y is unitless).

    ``poisson`` is 1 / I0 for Poisson counts after -log (var ~ exp(y) / I0), ``gaussian`` the
    variance of additive (electronic) noise. Either may be 0.
    """
    gaussian: float
    poisson: float

    def variance(self, y) -> np.ndarray:
        return self.gaussian + self.poisson * np.exp(np.asarray(y, dtype=np.float64))

    def norm(self, y) -> float:
        """Expected ||e|| over all values of ``y``."""
        return math.sqrt(float(np.sum(self.variance(y))))

    @property
    def I0(self) -> float | None:
        """Incident counts implied by the Poisson part (None without one)."""
        return 1.0 / self.poisson if self.poisson > 0 else None


def _difference_filter(order: int) -> np.ndarray:
    """Binomial high-pass (1, -order, ..., +-1) scaled to unit norm: unit gain on white noise."""
    from math import comb

    c = np.array([(-1) ** j * comb(order, j) for j in range(order + 1)], dtype=np.float64)
    return c / np.linalg.norm(c)


def estimate_noise_model(y, *, order: int = NOISE_DIFFERENCE_ORDER, n_groups: int = 24,
                         outlier_ratio: float = 1.25) -> NoiseModel:
    """Noise model of a sinogram ``y`` (..., n_angles, n_det) of line integrals, from the data alone.

    1. High-pass along the detector with a binomial difference of ``order`` (4): d_i has the variance
       of one noise value and almost none of the object, whose line integrals are smooth along the
       detector except at edges (a few values, which the robust statistics ignore).
    2. The level of each d_i is the mean of y over the same window, uncorrelated with d_i's noise
       (the filter's taps sum to zero). Values are sorted by level into ``n_groups`` equally populated
       groups; each group's variance is estimated robustly (1.4826 x median absolute deviation).
    3. The group variances are fitted by v = a + b exp(level), a, b >= 0 (non-negative least squares
       on relative errors): b = 1/I0 is Poisson noise after -log, a additive Gaussian noise. Groups
       more than ``outlier_ratio`` above the fit (where edges of the object leak into d: body outlines,
       bone) are dropped and the fit repeated, keeping at least a third of the groups.
    Measured on the evaluation suite (benchmarks/results/suite.md; real neck, abdomen and head slices
    and phantoms, 30-180 views, parallel and fan beam, I0 1e4-1e6 and Gaussian noise): within 6% of
    the true noise std on every case; the previous second-difference estimator was up to 42% high on
    textured images at high dose. Limits: noise correlated along the detector (detector cross-talk,
    data resampled from an arc detector) is underestimated; an object with detail at every detector
    sample (no smooth stretch at any level) is overestimated.
    """
    from scipy.optimize import nnls

    y = np.asarray(to_numpy(y), dtype=np.float64)
    if y.ndim < 1 or y.shape[-1] < order + 4:
        raise InputError(f"cannot estimate noise: fewer than {order + 4} detector elements", field="sinogram")
    taps = _difference_filter(order)
    m = y.shape[-1] - order
    d = sum(taps[j] * y[..., j:j + m] for j in range(order + 1)).ravel()
    level = (sum(y[..., j:j + m] for j in range(order + 1)) / (order + 1)).ravel()
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(level))):
        raise InputError("cannot estimate noise: the sinogram has non-finite values", field="sinogram")
    n_groups = max(1, min(int(n_groups), d.size // 50))
    groups = np.array_split(np.argsort(level, kind="stable"), n_groups)
    variance = np.array([_robust_std(d[g]) ** 2 for g in groups])
    # exp(level) relative to the smallest level: keeps the design matrix well scaled for any offset
    shift = float(level.min())
    gain = np.array([float(np.mean(np.exp(level[g] - shift))) for g in groups])
    if not np.any(variance > 0):
        return NoiseModel(0.0, 0.0)
    floor = 1e-12 * float(variance.max())
    weight = 1.0 / np.maximum(variance, floor)
    design = np.stack([np.ones(n_groups), gain], axis=1)
    keep = np.ones(n_groups, bool)
    coef = np.zeros(2)
    for _ in range(6):
        coef, _ = nnls(design[keep] * weight[keep, None], np.ones(int(keep.sum())))
        fit = design @ coef
        ratio = variance / np.maximum(fit, floor)
        new_keep = ratio < outlier_ratio
        if new_keep.sum() < max(1, n_groups // 3):
            new_keep = ratio <= np.sort(ratio)[max(1, n_groups // 3) - 1]
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if gain[keep].max() < MIN_GAIN_SPAN * gain[keep].min():
        # the groups free of the object's structure all sit at one signal level (textured bodies at high
        # dose: only the air around the object is left), where a and b cannot be told apart: take the
        # noise as Poisson, CT's physics after -log (an additive-only fit would put the air's variance
        # everywhere and miss the body's exp(y) growth: 2x low on a textured phantom at I0 1e6)
        coef = np.array([0.0, float(np.median(variance[keep] / gain[keep]))])
    return NoiseModel(gaussian=float(coef[0]), poisson=float(coef[1]) * math.exp(-shift))


def estimate_noise_norm(y, **kwargs) -> float:
    """Estimated ||e|| of the noise in a sinogram ``y`` (..., n_angles, n_det), no metadata needed
    (:func:`estimate_noise_model`, summed over every value of ``y``)."""
    return estimate_noise_model(y, **kwargs).norm(y)


def noise_norm(y, metadata: dict | None) -> tuple[float, str]:
    """(||e||, where it came from): metadata sigma, metadata I0, or the sinogram estimate."""
    metadata = metadata or {}
    m = int(np.prod(y.shape))
    sigma = metadata.get("sigma")
    if sigma is not None and float(sigma) > 0:
        return math.sqrt(m) * float(sigma), f"metadata sigma={float(sigma):.4g}"
    i0 = metadata.get("I0")
    if i0 is not None and float(i0) > 0:
        yh = np.asarray(to_numpy(y), dtype=np.float64)
        return math.sqrt(float(np.sum(np.exp(yh))) / float(i0)), f"metadata I0={float(i0):.4g}"
    if sigma is not None:
        log.warning("metadata says the data are noise-free (sigma=0); estimating the noise from the sinogram")
    model = estimate_noise_model(y)
    kind = ("Poisson, I0 ~ %.3g" % model.I0) if model.poisson > 0 else "Gaussian"
    if model.poisson > 0 and model.gaussian > 0:
        kind += " + Gaussian sigma ~ %.3g" % math.sqrt(model.gaussian)
    return model.norm(y), f"estimated from the sinogram ({kind}; robust detector differences)"


def grid_cutoff(geometry, voxel_size: float) -> float | None:
    """The image grid's Nyquist frequency seen on the detector, in cycles per detector sample.

    A pixel of ``voxel_size`` mm resolves at most 1 / (2 voxel_size) cycles/mm at the rotation axis;
    a detector element covers ``detector_spacing / magnification`` mm there. None when the geometry
    has no detector spacing.
    """
    spacing = getattr(geometry, "detector_spacing", None)
    if spacing is None or not voxel_size:
        return None
    magnification = float(getattr(geometry, "magnification", 1.0) or 1.0)
    return 0.5 * (float(spacing) / magnification) / float(voxel_size)


def unresolved_energy_ratio(y, cutoff: float | None, noise_norm_value: float, min_band: float = 0.05) -> float | None:
    """Energy of ``y`` above the grid's cut-off over the energy the noise alone puts there.

    ``y`` (..., n_det): line integrals; ``cutoff``: :func:`grid_cutoff` (cycles/sample). The rows are
    taken to an orthonormal DCT-II along the detector (even extension: no wrap-around jump, so truncated
    rows do not leak into high frequencies); white noise of total energy ||e||^2 puts ||e||^2 * (band
    size / n_det) into the coefficients above the cut-off, where an object without detail finer than
    the grid has no energy (tests/test_tv_svtv.py: a blurred phantom gives 1.00-1.05, white noise 1).
    A ratio above 1 measures the sub-pixel detail that the discrete model cannot explain (the model
    error). The rule looks at the data only: ASTRA's line kernel itself aliases energy into that band,
    so K x for an image on the grid is no guide.
    None when the band is empty or under ``min_band`` of the spectrum (detector no finer than the grid).
    """
    import scipy.fft

    if cutoff is None or not noise_norm_value > 0:
        return None
    y = np.asarray(to_numpy(y), dtype=np.float64)
    n = y.shape[-1]
    first = int(math.floor(2.0 * n * cutoff)) + 1  # DCT-II coefficient k has k / (2 n) cycles/sample
    if n - first < min_band * n:
        return None
    coefficients = scipy.fft.dct(y, type=2, norm="ortho", axis=-1)[..., first:]
    band_energy = float(np.sum(coefficients * coefficients))
    rows = y.size // n
    return band_energy / (noise_norm_value ** 2 * (n - first) * rows / y.size)


def data_misfit_norm(y, metadata: dict | None, geometry=None, voxel_size: float | None = None,
                     model_error: bool = True) -> tuple[float, dict]:
    """(expected ||K x_true - y||, how it was found): the noise norm, raised by the model error.

    ||e|| comes from :func:`noise_norm`. Data simulated from (or measured on) an object with detail
    finer than the grid cannot be fitted by any image on the grid even without noise; that model error
    adds to the misfit the solution should keep. It shows above the grid's cut-off on the detector
    (:func:`unresolved_energy_ratio`, r); assuming it is as white as the noise there,
    misfit = ||e|| * sqrt(max(1, r)). On the reference fan-beam geometry r is 0.97-1.03 for COULE and
    anatomy phantoms (true misfit 1.00-1.07 ||e||) and 1.35 for the Shepp-Logan sample, whose thin,
    bright, perfectly sharp skull gives a true misfit of 1.24 ||e||.

    Not for data made by the grid's own projector (an "inverse crime"): ASTRA's line kernel aliases
    energy above the cut-off, which this reads as model error (a 64 x 64 pixel-sharp Shepp-Logan:
    r = 8.8, misfit 3x the noise). Metadata ``upsample: 1`` (``recon simulate --upsample 1``) turns
    it off, and so does ``model_error=False`` (solver parameter ``model_error: false``).
    """
    e_norm, source = noise_norm(y, metadata)
    info = {"noise_norm": e_norm, "noise_source": source, "unresolved_energy_ratio": None}
    upsample = (metadata or {}).get("upsample")
    if upsample is not None and int(upsample) == 1:
        model_error = False  # simulated by the grid's own projector (inverse crime): no model error
    ratio = unresolved_energy_ratio(y, grid_cutoff(geometry, voxel_size), e_norm) if model_error else None
    misfit = e_norm
    if ratio is not None:
        info["unresolved_energy_ratio"] = ratio
        misfit = e_norm * math.sqrt(max(1.0, ratio))
    elif model_error and geometry is not None:  # no band to read it from: the detector curvature
        curvature = detector_curvature_error(y, e_norm)
        info["curvature_model_error"] = curvature
        misfit = math.sqrt(e_norm * e_norm + curvature * curvature)
    info["misfit_norm"] = misfit
    return misfit, info


#: Model error without a detector band above the grid's cut-off, as a multiple of the detector-aperture
#: term ||y''|| / 24 (:func:`detector_curvature_error`). Fitted with tau 0.97 on the residuals that the
#: best lam leaves (benchmarks/results/suite.md, findings): 1.7-2.0 where the model error dominates
#: (small bodies at I0 1e6: model error 2x the noise), up to 2.7 on a sharp COULE phantom; 1.7 keeps
#: the suite's cases (model error under 0.7x the noise) within 0.3 dB.
CURVATURE_MODEL_ERROR_FACTOR = 1.7


def detector_curvature_error(y, noise_norm_value: float) -> float:
    """Model error of ``y`` (..., n_det) without a band above the grid's cut-off on the detector.

    A detector element integrates the projection over its width, the projector samples one ray at
    its centre: the two differ by about p''(u) / 24 (u in elements). That aperture term, and the
    pixel basis' own error of the same order, grow with the sub-element detail of the object, which
    the data show as energy in the second difference along the detector beyond what the noise puts
    there (6 ||e||^2 per value for white noise). Returns CURVATURE_MODEL_ERROR_FACTOR x
    sqrt(||D2 y||^2 - 6 ||e||^2 * fraction) / 24 (same units as y). Measured against the true model
    error ||K x_true - p|| on the evaluation suite and small cases: within 0.7-5x of it before the
    factor (median 2.5); it reads the same from noisy and noise-free data (within 1 %, 4 % at I0 1e4).
    """
    y = np.asarray(to_numpy(y), dtype=np.float64)
    if y.shape[-1] < 3 or not noise_norm_value >= 0:
        return 0.0
    d2 = np.diff(y, 2, axis=-1)
    excess = float(np.sum(d2 * d2)) - 6.0 * noise_norm_value ** 2 * d2.size / y.size
    return CURVATURE_MODEL_ERROR_FACTOR * math.sqrt(max(0.0, excess)) / 24.0


@dataclass
class SearchResult:
    lam: float
    residual_norm: float
    target: float
    evaluations: int
    converged: bool
    state: Any = None
    trace: list = field(default_factory=list)  # (lam, residual_norm) per evaluation


def discrepancy_search(evaluate: Callable[[float, Any], tuple[float, Any]], target: float, lam0: float, *,
                       rtol: float = 0.02, max_evaluations: int = 12, factor: float = 10.0,
                       lam_min: float = 1e-12, lam_max: float = 1e12) -> SearchResult:
    """lam with residual(lam) ~= target, for an increasing residual(lam).

    ``evaluate(lam, warm_state) -> (residual_norm, state)``: ``warm_state`` is the state returned
    by the evaluation at the nearest lam so far (None at first). Brackets on log(lam) by steps of
    ``factor``, then regula falsi (Illinois) on (log lam, log residual). Returns the evaluation
    closest to the target (in log residual) with its state.
    """
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"discrepancy target must be positive, got {target}")
    trace: list[tuple[float, float, Any]] = []

    def run(lam: float) -> float:
        warm = None
        kept = [t for t in trace if t[2] is not None]
        if kept:
            warm = min(kept, key=lambda t: abs(math.log(t[0] / lam)))[2]
        r, state = evaluate(lam, warm)
        trace.append((lam, float(r), state))
        log.debug("discrepancy search: lam=%.4g residual=%.4g target=%.4g", lam, r, target)
        _keep_useful_states(trace, target)
        return float(r)

    def mismatch(r: float) -> float:
        return math.log(max(r, 1e-300) / target)

    def done(r: float) -> bool:
        return abs(r / target - 1.0) <= rtol

    lo = hi = None  # (log lam, mismatch) with mismatch < 0 / > 0
    lam, r = float(lam0), None
    # evaluate lam0, then bracket; give up when a step of ``factor`` no longer moves the residual (a
    # floor or a ceiling the target lies beyond, e.g. the model error of the data, or too few
    # iterations per trial)
    while (lo is None or hi is None) and len(trace) < max_evaluations:
        if trace:
            lam = lam * factor if hi is None else lam / factor
            if not (lam_min <= lam <= lam_max):
                break
        r_prev, r = r, run(lam)
        if done(r):
            return _result(trace, target, True)
        if r < target:
            lo = (math.log(lam), mismatch(r))
        else:
            hi = (math.log(lam), mismatch(r))
        if r_prev is not None and (lo is None or hi is None) and abs(r / r_prev - 1.0) < 0.2 * rtol:
            break
    if lo is None or hi is None:
        log.warning("discrepancy principle: could not bracket the target residual %.4g "
                    "(residuals %s)", target, [f"{t[1]:.4g}" for t in trace])
        return _result(trace, target, False)
    # regula falsi, Illinois variant
    side = 0
    while len(trace) < max_evaluations:
        (a, fa), (b, fb) = lo, hi
        t = a - fa * (b - a) / (fb - fa)
        if not (min(a, b) < t < max(a, b)):
            t = 0.5 * (a + b)
        r = run(math.exp(t))
        if done(r):
            return _result(trace, target, True)
        f = mismatch(r)
        if f < 0:
            lo = (t, f)
            if side == -1:
                hi = (hi[0], hi[1] / 2)
            side = -1
        else:
            hi = (t, f)
            if side == 1:
                lo = (lo[0], lo[1] / 2)
            side = 1
    return _result(trace, target, False)


def _keep_useful_states(trace: list, target: float) -> None:
    """Drop the warm states (memory: a solver state each) of all but the evaluations a later one can
    start from or the search can return: the closest residuals below and above the target, the one
    closest to it, and the latest."""
    below = [i for i, t in enumerate(trace) if t[1] < target]
    above = [i for i, t in enumerate(trace) if t[1] >= target]
    keep = {len(trace) - 1, min(range(len(trace)), key=lambda i: abs(math.log(max(trace[i][1], 1e-300) / target)))}
    if below:
        keep.add(max(below, key=lambda i: trace[i][1]))
    if above:
        keep.add(min(above, key=lambda i: trace[i][1]))
    for i, t in enumerate(trace):
        if i not in keep and t[2] is not None:
            trace[i] = (t[0], t[1], None)


def _result(trace, target: float, converged: bool) -> SearchResult:
    best = min(trace, key=lambda t: abs(math.log(max(t[1], 1e-300) / target)))
    return SearchResult(lam=best[0], residual_norm=best[1], target=target, evaluations=len(trace),
                        converged=converged, state=best[2], trace=[(t[0], t[1]) for t in trace])


# ----------------------------------------------------------------------------- following the target
#: Iterations of a lam-auto run (search legs and final leg) at most this times the solver's
#: ``iterations``: 1.5x one solve is the cost target, and a lam-auto run costs a few per cent beyond
#: its iterations (misfit estimate, bookkeeping; until session 6 also a projection or three to restart
#: each leg, which the chains now hand on), so the legs stop short of it.
LAM_AUTO_BUDGET = 1.45
#: Prior d log(residual) / d log(lam) near the target: 0.33-0.56 measured between warm PDHG trials
#: on the evaluation suite's tuning cases.
RESIDUAL_SLOPE = 0.45
#: After the first step the slope is the secant of the last two legs, kept in this range (the
#: residual lags a change of lam, so a secant over one leg can be far off).
SLOPE_RANGE = (0.2, 0.6)
#: Fraction of the Newton step taken: the residual lags a change of lam by tens of iterations.
CONTROLLER_GAIN = 0.8


@dataclass
class FollowResult:
    lam: float                 # the lam of the last leg (the final run keeps it)
    mismatch: float            # residual / target at the end of the last leg
    legs: int
    iterations: int            # spent in the legs
    settled: bool              # two legs in a row ended within rtol
    trace: list = field(default_factory=list)  # (lam, residual / target) per leg


def follow_discrepancy(run_leg: Callable[[float, int], tuple[float, int]], target: float, lam0: float, *,
                       first: int, leg: int, budget: int, rtol: float = 0.02, first_factor: float = 10.0,
                       factor: float = 2.0) -> FollowResult:
    """Follow the discrepancy target along one iterative chain: lam with ||K x_lam - y|| ~= target.

    ``run_leg(lam, n) -> (residual_norm, iterations_done)`` continues the solver's chain (its
    iterate and dual state, warm) for ``n`` iterations at ``lam``. The first leg runs ``first``
    iterations, the others ``leg``; after each, one damped Newton step on (log lam, log residual),
    lam <- lam * (target / residual)^(CONTROLLER_GAIN / slope), with the prior RESIDUAL_SLOPE first
    and the secant of the last two legs after (within SLOPE_RANGE), at most a factor
    ``first_factor`` after the first leg and ``factor`` after the others. Stops when two legs in a
    row end within ``rtol`` of the target, or before a leg would take the iterations past ``budget``.
    Unlike a root search over separate trials, it needs no converged residual per lam: a trial
    stopped early still has a falling residual, by an amount that shrinks as the chain grows, so
    repeated trials of one lam disagree and regula falsi stalls on them; a controller reads only the
    present mismatch, and the lam it settles on is the one whose converged residual meets the target.
    """
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"discrepancy target must be positive, got {target}")
    lam, n = float(lam0), int(first)
    used = settled = 0
    trace: list[tuple[float, float]] = []
    while True:
        residual, done = run_leg(lam, n)
        used += int(done)
        mismatch = float(residual) / target
        trace.append((lam, mismatch))
        log.debug("discrepancy: leg %d lam=%.4g residual/target=%.4f", len(trace), lam, mismatch)
        settled = settled + 1 if abs(mismatch - 1.0) <= rtol else 0
        if settled >= 2 or used + leg > budget:
            break
        slope = RESIDUAL_SLOPE
        if len(trace) >= 2:
            (lam_p, m_p), (lam_q, m_q) = trace[-2], trace[-1]
            if lam_p != lam_q and m_p > 0 and m_q > 0:
                slope = math.log(m_q / m_p) / math.log(lam_q / lam_p)
                slope = min(max(slope, SLOPE_RANGE[0]), SLOPE_RANGE[1])
        cap = math.log(first_factor if len(trace) == 1 else factor)
        step = CONTROLLER_GAIN * math.log(1.0 / max(mismatch, 1e-300)) / slope
        lam *= math.exp(min(max(step, -cap), cap))
        n = int(leg)
    return FollowResult(lam=lam, mismatch=mismatch, legs=len(trace), iterations=used, settled=settled >= 2,
                        trace=trace)
