"""TpV by iterative reweighting: the SV-TV weights recomputed from the current iterate.

Outer step k solves the convex weighted TV problem (PDHG, warm-started from step k-1, primal and
dual) with w^(0) = 1 (plain TV) and

    w^(k)_i = (eta_abs / sqrt(eta_abs^2 + |D x^(k-1)|_i^2))^(1-p),  eta_abs = eta * (max - min of x^(k-1)),

a majorise-minimise scheme for the non-convex sum_i (eta^2 + |Dx|_i^2)^(p/2) (reweighted l1).
It is the baseline the SV-TV papers compare against. ``lam: auto`` runs the discrepancy principle
at every outer step (warm-started at the previous lam), so the final model meets the residual
target; ``iterations`` is per outer step.
"""
from __future__ import annotations

import time

import numpy as np

from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.registry import register, unit
from recon_cli.solvers.svtv import SVTV_STATE_ARRAYS, eta_absolute, svtv_weights
from recon_cli.solvers.tv import TVParams, make_gradient, solve_weighted


class TpVParams(TVParams):
    """``tv``'s parameters (``iterations`` per outer step) plus outer_iterations, p and eta."""

    iterations: int = unit("1", "PDHG iterations per outer (reweighting) step", default=100, ge=1)
    outer_iterations: int = unit("1", "number of weighted TV solves (the first is plain TV)", default=5, ge=1)
    p: float = unit("1", "exponent of TpV: w = (eta / sqrt(eta^2 + |Dx|^2))^(1-p)", default=0.5, ge=0.0, le=1.0)
    eta: float = unit("1 (relative)", "edge threshold relative to the current iterate's range", default=2e-3, gt=0.0)


#: (image-sized, sinogram-sized) float32 arrays at the peak: ``svtv``'s plus the previous outer
#: step's x and dual pair (q, s) held while the next step runs, and the new weights computed while
#: the old ones are alive (measured with a fixed lam: 20.1 and 5.2; see tv.TV_STATE_ARRAYS for lam auto).
TPV_STATE_ARRAYS = (SVTV_STATE_ARRAYS[0] + 4, SVTV_STATE_ARRAYS[1] + 1)


@register("tpv", TpVParams, "Iteratively reweighted TV (TpV): weights from the current iterate, "
          "PDHG with x >= 0, warm-started", iterative=True, state_arrays=TPV_STATE_ARRAYS,
          slice_independent=False)
def solve(op: Operator, sino: Sinogram, params: TpVParams, callback=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """TpV of ``sino``; ``info['iterations']`` counts PDHG iterations over all outer steps.

    Restartable: the callback's ``extra['state']`` is {iteration (counted over all outer steps),
    outer (the step in progress), done (iterations of the steps before it), weights (of that
    step; None for the first), history and lams of the finished steps, inner (``tv``'s state of
    the step)}; ``resume_state`` (such a dict) continues that step, then the remaining ones.
    """
    t0 = time.perf_counter()
    xp = op.xp
    B = make_gradient(op, params)
    x, dual, weights = None, None, None
    hist: dict[str, list] = {"objective": [], "residual": [], "rel_change": [], "gap": [], "gap_iteration": [],
                             "outer_start": []}
    done = 0
    t_proj = 0.0
    step_params = params
    rec = None
    lams: list[float] = []
    first, inner_state, start = 0, None, 0
    if resume_state is not None:
        first, done, start = int(resume_state["outer"]), int(resume_state["done"]), int(resume_state["iteration"])
        hist = {name: list(resume_state["history"][name]) for name in hist}
        lams = [float(v) for v in resume_state["lams"]]
        if resume_state.get("weights") is not None:
            weights = xp.array(resume_state["weights"], dtype=np.float32, copy=True)
        inner_state = resume_state["inner"]
        if params.lam == "auto" and lams:
            step_params = params.model_copy(update={"search_start": lams[-1]})
    for k in range(first, params.outer_iterations):
        resuming = inner_state is not None and k == first
        if k > 0 and not resuming:
            weights = svtv_weights(x, eta_absolute(x, params.eta, xp), params.p, xp, gradient=B)

        def shifted(state, offset=done, outer=k, w=weights):
            inner = state.extra["state"]
            state.iteration += offset
            state.extra = {"state": {"iteration": state.iteration, "outer": outer, "done": offset, "weights": w,
                                     "history": hist, "lams": lams, "inner": inner}}
            return callback(state)

        rec, dual = solve_weighted(op, sino, step_params, weights, shifted if callback else None,
                                   x0=x, dual0=dual, B=B, return_dual=True,
                                   search_factor=10.0 if k == 0 else 2.0,
                                   resume_state=inner_state if resuming else None)
        x = rec.volume
        info = rec.info
        lams.append(info["lam"])
        hist["outer_start"].append(done + 1)
        for name in ("objective", "residual", "rel_change", "gap"):
            hist[name].extend(info["history"][name])
        hist["gap_iteration"].extend(i + done for i in info["history"]["gap_iteration"])
        done += info["iterations"]
        t_proj += info["time_projector"]
        if params.lam == "auto":  # next search starts at this lam
            step_params = params.model_copy(update={"search_start": info["lam"]})
        if info["stopped"] == "callback":
            break
    out = dict(rec.info)
    out.pop("resumed_from", None)
    out.update(iterations=done, history=hist, time_projector=t_proj, time_total=time.perf_counter() - t0,
               outer_iterations=len(lams), p=float(params.p), eta=float(params.eta),
               lam_per_outer=",".join(f"{v:.6g}" for v in lams))
    if resume_state is not None:
        out["resumed_from"] = start
    return Reconstruction(volume=x, info=out)
