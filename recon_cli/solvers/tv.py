"""Total variation by Chambolle-Pock: min_{x>=0} 1/2||Kx - y||^2 + lam_abs * sum_i w_i |Dx|_i.

``tv`` is the unweighted case (w = 1); :func:`solve_weighted` is the shared driver also used by
``svtv`` (fixed weights from a pre-estimate) and ``tpv`` (reweighted), and by benchmarks that
supply their own weights.

Convention for ``lam`` (the same as ``sgp_tv``): lam is given for the image divided by
``intensity_scale`` s (1/mm) on a grid of unit pixels, as in the papers (images in [0, 1]); with
voxel size h (mm) the solver uses lam_abs = lam * s * h^2 (mm), which makes the problem exactly the
normalised one scaled by s^2 h^2. D is the forward-difference gradient in pixel units (slice-wise
for stacks, or 3D with the slice difference times ``slice_weight``).
``lam: auto`` picks lam by the discrepancy principle (target: regularisation_parameter.py), followed
by a controller along one PDHG chain (:func:`choose_lam`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from recon_cli.ops.finite_differences import Gradient
from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.algorithm import Stopwatch, run
from recon_cli.solvers.pdhg import ChambollePock, pdhg
from recon_cli.solvers.regularisation_parameter import LAM_AUTO_BUDGET, data_misfit_norm, follow_discrepancy
from recon_cli.solvers.registry import register
from recon_cli.solvers.params.tv import TVParams  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)



def make_gradient(op: Operator, params) -> Gradient:
    """The gradient operator D for the op's image shape, on its array module."""
    return Gradient(tuple(op.domain_shape), mode=params.mode, slice_weight=params.slice_weight, xp=op.xp)


def lam_scale(sino: Sinogram, params) -> float:
    """mm per unit of normalised lam: intensity_scale * voxel_size^2."""
    return float(params.intensity_scale) * float(sino.grid.voxel_size) ** 2


#: lam auto (:func:`choose_lam`) follows the discrepancy target along one warm-started PDHG chain
#: (regularisation_parameter.follow_discrepancy): a first leg of FIRST_LEG_FRACTION x ``iterations``
#: (cold; one leg from a warm start), then legs of ``search_iterations`` (at most iterations / 6),
#: each followed by one damped Newton step on log lam, until two legs in a row end within
#: ``search_rtol`` of the target or the budget is spent; then a final leg at the last lam of
#: max(iterations - chain, FINAL_FRACTION x iterations). In all at most LAM_AUTO_BUDGET x ``iterations``.
#: Why a controller and not a root search over separate trials (the previous design: a cold trial
#: of ``iterations``, then x10 bracketing and regula falsi on 50-iteration warm trials): a trial
#: stops before PDHG converges and its residual is still falling, by an amount that shrinks as the
#: chain grows, so the residual of the "same" lam differed from trial to trial; regula falsi then
#: stalled (12 trials and 3.6x one solve on a 64^2 test case, final residual 6 % under the target)
#: and needed a cold trial as long as the solve itself (2.0x one solve on the suite). A controller
#: only needs the sign and size of the present mismatch; the lam it settles on is the one whose
#: *converged* residual meets the target. Suite (benchmarks/results/suite.md): within 0.33 dB of
#: each case's best lam, 1.0-1.33x the iterations of one solve.
FIRST_LEG_FRACTION = 1.0 / 3.0
FINAL_FRACTION = 1.0 / 3.0
#: ``search_start: auto``: the first lam is this times the noise std of one line integral
#: (||e|| / sqrt(M)) over the pixel size (mm). On the suite's tuning cases the chosen lam times the
#: pixel size over the noise std was 240-610 mm (geometric mean 380), on its reported cases 320-660,
#: and 290 on a 4 mm-pixel test case: a start within 2x of the answer (without the pixel size: 18x).
START_PER_NOISE_STD = 400.0  # mm


@dataclass(frozen=True)
class LamSearch:
    """What the lam-auto search of :func:`choose_lam` needs (the fields of TVParams of the same names):
    the PDHG problem (isotropic, nonnegative), the final budget ``iterations``, and the search's own
    ``search_iterations``, ``search_start``, ``search_rtol``, ``discrepancy_tau`` and ``model_error``."""

    isotropic: bool
    nonnegative: bool
    iterations: int
    search_iterations: int
    search_start: float | str  # a number or "auto"
    search_rtol: float
    discrepancy_tau: float
    model_error: bool

    @classmethod
    def from_params(cls, params) -> "LamSearch":
        return cls(**{name: getattr(params, name) for name in cls.__dataclass_fields__})


def choose_lam(op: Operator, y, B: Operator, weights, params: LamSearch, metadata: dict, scale: float,
               x0=None, dual0=None, factor: float = 10.0, geometry=None, voxel_size: float | None = None,
               kx0=None) -> dict:
    """lam (normalised) by the discrepancy principle, followed along one PDHG chain (see
    FIRST_LEG_FRACTION above), with the chain's state for the final run. ``factor``: the largest
    change of lam after the first leg (smaller from a good start).

    ``kx0``: K x0 when known (TpV's previous step). Returns {lam, lam_abs, x0, dual0, kx0 (K x0 of the
    chain's last x), info: {...scalars for Reconstruction.info, final_iterations: the iterations left for
    the final solve, final_step_ratio}}.
    """
    misfit, misfit_info = data_misfit_norm(y, metadata, geometry, voxel_size,
                                           model_error=bool(params.model_error))
    target = float(params.discrepancy_tau) * misfit
    clock = Stopwatch()
    n_total = int(params.iterations)
    y_norm = float(op.xp.linalg.norm(y.ravel()))
    if params.search_start == "auto":
        noise_std = float(misfit_info["noise_norm"]) / math.sqrt(float(np.prod(y.shape)))
        lam0 = START_PER_NOISE_STD * noise_std / float(voxel_size or 1.0)
    else:
        lam0 = float(params.search_start)
    # legs of at most a sixth of the run, so that a short run still gets several corrections
    leg = max(5, min(int(params.search_iterations), int(math.ceil(n_total / 6))))
    first = leg if x0 is not None else max(leg, int(math.ceil(FIRST_LEG_FRACTION * n_total)))
    final_min = int(math.ceil(FINAL_FRACTION * n_total))
    chain = {"x": x0, "dual": dual0, "lam": None, "ratio": "auto", "time_projector": 0.0, "kx": kx0}

    def run_leg(lam: float, n: int):
        dual = chain["dual"]
        if dual is not None and chain["lam"]:  # the dual s scales about with lam
            dual = (dual[0], dual[1] * np.float32(lam / chain["lam"]))
        keep: dict = {}
        # each leg starts from the last one's K x too: no projection to restart the chain
        x, info, dual = pdhg(op, y, B, lam * scale, weights, isotropic=params.isotropic,
                             nonnegative=params.nonnegative, x0=chain["x"], dual0=dual, max_iter=n, gap_every=n,
                             record_every=n, return_dual=True, step_ratio=chain["ratio"],
                             kx0=chain["kx"] if chain["x"] is not None else None, keep=keep)
        chain.update(x=x, dual=dual, lam=lam, ratio=float(info["step_ratio"]), kx=keep["kx"])
        chain["time_projector"] += info["time_projector"]
        return float(info["residual"]) * y_norm, int(info["iterations"])

    followed = follow_discrepancy(run_leg, target, lam0, first=first, leg=leg,
                                  budget=int(LAM_AUTO_BUDGET * n_total) - final_min,
                                  rtol=float(params.search_rtol), factor=min(2.0, factor))
    lam, used, settled, mismatch = followed.lam, followed.iterations, followed.settled, followed.mismatch
    if not settled:
        log.info("lam auto: lam=%.4g still moving after %d iterations (residual/target %.3f); the final "
                 "leg keeps it", lam, used, mismatch)
    final_iterations = max(n_total - used, final_min)
    info = {"lam_auto": True, **misfit_info, "discrepancy_target": target, "final_iterations": final_iterations,
            "final_step_ratio": chain["ratio"],
            "discrepancy_tau": float(params.discrepancy_tau),
            "lam_search_evaluations": followed.legs, "lam_search_iterations": used,
            "lam_search_converged": settled, "lam_search_rtol": float(params.search_rtol),
            "time_lam_search": clock.seconds(),
            "time_projector_lam_search": chain["time_projector"]}
    return {"lam": lam, "lam_abs": lam * scale, "x0": chain["x"], "dual0": chain["dual"], "kx0": chain["kx"],
            "info": info}


def lam_search_converged(search_info: dict, final_mismatch: float, rtol: float) -> bool:
    """Whether lam auto met its target: two legs in a row within ``rtol``, or the final residual
    over the target (``final_mismatch``) within 2 ``rtol``."""
    return bool(search_info.get("lam_search_converged")) or abs(float(final_mismatch) - 1.0) <= 2.0 * rtol


@dataclass
class WeightedTV:
    """A weighted-TV solve set up at its lam: the Chambolle-Pock ``algorithm`` (lam_abs = lam * scale),
    ``lam`` (normalised), ``scale`` (mm per unit lam) and the lam-search record ``search`` ({} for a
    fixed lam). ``context``: what its states carry besides PDHG's (lam, lam_search)."""

    algorithm: ChambollePock
    lam: float
    scale: float
    search: dict

    @property
    def context(self) -> dict:
        return {"lam": self.lam, "lam_search": self.search}


def setup_weighted(op: Operator, sino: Sinogram, params, weights=None, *, x0=None, dual0=None,
                   B: Operator | None = None, search_factor: float = 10.0,
                   resume_state: dict | None = None, kx0=None) -> WeightedTV:
    """The weighted TV of :func:`solve_weighted` set up: lam fixed, searched (lam auto) or resumed.
    ``kx0``: K x0 when the caller knows it (TpV's previous step), saving a projection."""
    y = sino.data
    B = B if B is not None else make_gradient(op, params)
    scale = lam_scale(sino, params)
    extra: dict = {}
    if resume_state is not None:
        lam, extra = float(resume_state["lam"]), dict(resume_state.get("lam_search") or {})
        x0 = dual0 = kx0 = None
    elif params.lam == "auto":
        chosen = choose_lam(op, y, B, weights, LamSearch.from_params(params), sino.metadata, scale, x0=x0, dual0=dual0,
                            factor=search_factor, geometry=sino.geometry, voxel_size=sino.grid.voxel_size,
                            kx0=kx0 if x0 is not None else None)
        lam, x0, dual0, extra = chosen["lam"], chosen["x0"], chosen["dual0"], chosen["info"]
        kx0 = chosen["kx0"]
    else:
        lam = float(params.lam)
    max_iter = int(extra.get("final_iterations", params.iterations))
    alg = ChambollePock(op, y, B, lam * scale, weights, isotropic=params.isotropic,
                        nonnegative=params.nonnegative, x0=x0, dual0=dual0, max_iter=max_iter,
                        tol_rel_change=params.tol, tol_gap=params.tol_gap, gap_every=params.gap_every,
                        step_ratio=extra.get("final_step_ratio", "auto"), state=resume_state,
                        kx0=kx0 if x0 is not None else None)
    return WeightedTV(alg, lam, scale, extra)


def weighted_info(setup: WeightedTV, stopped: str, op: Operator, y) -> dict:
    """Reconstruction.info of a finished weighted-TV solve (without time_total; see solve_weighted)."""
    info = setup.algorithm.info()
    out = {k: info[k] for k in ("iterations", "history", "time_projector", "objective", "gap",
                                "rel_gap", "residual", "tau", "sigma", "sigma_B", "step_ratio", "norm_K",
                                "norm_B")}
    out["stopped"] = stopped
    extra = setup.search
    out.update(lam=setup.lam, lam_abs=setup.lam * setup.scale,
               lam_units="normalised (x / intensity_scale, unit pixels)", **extra)
    if setup.algorithm.resumed_from is not None:
        out["resumed_from"] = setup.algorithm.resumed_from
    if extra:
        out["time_projector"] += extra["time_projector_lam_search"]
        out["discrepancy_ratio"] = info["residual"] * float(op.xp.linalg.norm(y.ravel())) / extra["misfit_norm"]
        out["lam_search_converged"] = lam_search_converged(extra, out["discrepancy_ratio"] / extra["discrepancy_tau"],
                                                           extra["lam_search_rtol"])
    return out


def solve_weighted(op: Operator, sino: Sinogram, params, weights=None, callback=None, *, x0=None,
                   dual0=None, B: Operator | None = None, return_dual: bool = False,
                   search_factor: float = 10.0, resume_state: dict | None = None, context: dict | None = None):
    """TV with fixed pixel weights ``weights`` (shape of the image; None = 1) by PDHG.

    ``params``: a TVParams (or any model with its fields). ``x0``/``dual0``: warm start.
    ``search_factor``: lam auto's bracketing step (x10 from a guess; smaller from a good start).
    Returns a Reconstruction (``info``: iterations, history, stopped, gap, rel_gap, lam, lam_abs,
    time_projector, time_total (both including the lam search), and the lam-search record when lam is
    auto: noise_norm, noise_source, unresolved_energy_ratio, misfit_norm, discrepancy_target,
    discrepancy_ratio = ||Kx - y|| / misfit_norm,
    lam_search_evaluations / _iterations / _converged, time_lam_search), and with
    ``return_dual`` also the final dual pair (q, s).

    Restartable: the callback's ``extra['state']`` is PDHG's state (see :class:`ChambollePock`) plus
    ``lam`` (normalised), ``lam_search`` (the lam-search record) and ``context`` (a caller's fixed
    values); ``resume_state`` (such a dict) continues the PDHG run with that lam, without searching again.
    """
    clock = Stopwatch()
    setup = setup_weighted(op, sino, params, weights, x0=x0, dual0=dual0, B=B, search_factor=search_factor,
                           resume_state=resume_state)
    record = run(setup.algorithm, callback, context={**setup.context, **(context or {})})
    out = weighted_info(setup, record.stopped, op, sino.data)
    out["time_total"] = clock.seconds()
    alg = setup.algorithm
    rec = Reconstruction(volume=alg.x, info=out)
    return (rec, (alg.q, alg.s)) if return_dual else rec


#: (image-sized, sinogram-sized) float32 arrays at the peak of ``tv`` (recon_cli.memory).
#: The PDHG loop holds 15 and 5: x, x_prev, s, B x, B xbar (2 each: D has 2 components), the dual
#: projection's 2 work arrays, B x_{k+1} (2) and the B^T s / K^T q temporaries; q, K x, K xbar,
#: K x_{k+1} and the CSR product's temporary (tracemalloc on 128^2, 60 and 360 views: 15.0 and 4.1).
#: ``lam: auto`` (the default) hands one chain state (x, q, s, K x: 3 + 2) from leg to leg of its
#: controller (regularisation_parameter.follow_discrepancy) plus the running one and a rescaled s (2):
#: about 20 and 7; the hint keeps room above that. A fixed lam needs 15 and 5.
TV_STATE_ARRAYS = (24, 8)


@register("tv", TVParams, state_arrays=TV_STATE_ARRAYS, slice_independent=False)
def solve(op: Operator, sino: Sinogram, params: TVParams, callback=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """Isotropic (or anisotropic) TV reconstruction of ``sino`` on ``op``'s grid (1/mm).

    Restartable (see :func:`solve_weighted`): a resumed ``lam: auto`` run keeps the lam it chose.
    """
    return solve_weighted(op, sino, params, None, callback, resume_state=resume_state)
