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

import sys

import numpy as np

from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.algorithm import Algorithm, Stopwatch, advance, run
from recon_cli.solvers.registry import IterationState, register
from recon_cli.solvers.params.tpv import TpVParams  # noqa: F401 (re-exported)
from recon_cli.solvers.svtv import SVTV_STATE_ARRAYS, eta_absolute, svtv_weights
from recon_cli.solvers.tv import WeightedTV, make_gradient, setup_weighted, weighted_info


#: (image-sized, sinogram-sized) float32 arrays at the peak: ``svtv``'s plus the previous outer
#: step's x and dual pair (q, s) held while the next step runs, and the new weights computed while
#: the old ones are alive (measured with a fixed lam: 20.1 and 5.2; see tv.TV_STATE_ARRAYS for lam auto).
TPV_STATE_ARRAYS = (SVTV_STATE_ARRAYS[0] + 4, SVTV_STATE_ARRAYS[1] + 1)


class ReweightedTV(Algorithm):
    """TpV's outer reweighting as one algorithm: each step is one PDHG iteration of the weighted TV solve
    in progress; when that solve ends (its budget or tolerance) the next one is set up (weights from
    the current x, lam search when auto, warm start primal and dual) before its first iteration.

    ``iteration`` counts PDHG iterations over all outer steps. State {iteration, outer (the step in
    progress), done (iterations of the steps before it), weights (of that step; None for the first),
    history and lams of the finished steps, inner (``tv``'s state of the step)}.
    """

    budget_reason = "max_iter"

    def __init__(self, op: Operator, sino: Sinogram, params: TpVParams, B: Operator, state: dict | None = None):
        self.op, self.sino, self.params, self.B, self.xp = op, sino, params, B, op.xp
        self.hist: dict[str, list] = {"objective": [], "residual": [], "rel_change": [], "gap": [],
                                      "gap_iteration": [], "outer_start": []}
        self.outer, self.done, self.time_projector = 0, 0, 0.0
        self.lams: list[float] = []
        self.weights = self.dual = self.kx = None
        self.step_params = params
        self.inner: WeightedTV | None = None
        self.last_info: dict | None = None
        if state is not None:
            self.resume(state)

    @property
    def max_iterations(self) -> int:
        """Known once the last outer step is set up (lam auto sets each step's budget); until then open."""
        if self.inner is not None and self.outer == self.params.outer_iterations - 1:
            return self.done + self.inner.algorithm.max_iterations
        return sys.maxsize

    def load_state(self, state: dict) -> None:
        params = self.params
        self.outer, self.done = int(state["outer"]), int(state["done"])
        self.hist = {name: list(state["history"][name]) for name in self.hist}
        self.lams = [float(v) for v in state["lams"]]
        if state.get("weights") is not None:
            self.weights = self.xp.array(state["weights"], dtype=np.float32, copy=True)
        if params.lam == "auto" and self.lams:
            self.step_params = params.model_copy(update={"search_start": self.lams[-1]})
        self._open(resume_state=state["inner"])

    def _open(self, resume_state: dict | None = None) -> None:
        """Set up outer step ``self.outer``: its weights (after the first), lam and warm start."""
        k = self.outer
        if k > 0 and resume_state is None:
            self.weights = svtv_weights(self.x, eta_absolute(self.x, self.params.eta, self.xp), self.params.p,
                                        self.xp, gradient=self.B)
        self.inner = setup_weighted(self.op, self.sino, self.step_params, self.weights, x0=self.x,
                                    dual0=self.dual, B=self.B, search_factor=10.0 if k == 0 else 2.0,
                                    resume_state=resume_state, kx0=self.kx)
        self.x = self.inner.algorithm.x

    def _close(self, stopped: str) -> None:
        """Record the finished outer step and keep its x and dual pair as the next warm start."""
        alg = self.inner.algorithm
        alg.finish()
        info = weighted_info(self.inner, stopped, self.op, self.sino.data)
        self.x, self.dual, self.kx = alg.x, (alg.q, alg.s), alg.kx  # K x: the next step needs no projection
        self.lams.append(info["lam"])
        self.hist["outer_start"].append(self.done + 1)
        for name in ("objective", "residual", "rel_change", "gap"):
            self.hist[name].extend(info["history"][name])
        self.hist["gap_iteration"].extend(i + self.done for i in info["history"]["gap_iteration"])
        self.done += info["iterations"]
        self.time_projector += info["time_projector"]
        if self.params.lam == "auto":  # next search starts at this lam
            self.step_params = self.params.model_copy(update={"search_start": info["lam"]})
        self.last_info, self.inner = info, None
        self.outer += 1

    def _inner_finished(self) -> bool:
        alg = self.inner.algorithm
        return alg.pending_stop is not None or alg.iteration >= alg.max_iterations

    def step(self, k: int):
        if self.inner is not None and self._inner_finished():
            self._close(self.inner.algorithm.pending_stop or "max_iter")
        if self.inner is None:
            self._open()
        self.inner.algorithm.observed = self.observed
        advance(self.inner.algorithm)  # Chambolle-Pock never halts by itself
        self.x = self.inner.algorithm.x
        return None

    def converged(self):
        """The last step's tolerance ends the run; earlier steps' tolerances end only their step."""
        if self.outer == self.params.outer_iterations - 1:
            return self.inner.algorithm.pending_stop
        return None

    def report(self) -> IterationState:
        state = self.inner.algorithm.report()
        state.iteration = self.iteration
        return state

    def state(self) -> dict:
        alg = self.inner.algorithm
        inner = {**alg.state(), "pending_stop": alg.pending_stop, **self.inner.context}
        return {"iteration": self.iteration, "outer": self.outer, "done": self.done, "weights": self.weights,
                "history": self.hist, "lams": self.lams, "inner": inner}

    def finish(self) -> None:
        if self.inner is not None:
            self._close(self.inner.algorithm.pending_stop or "max_iter")


@register("tpv", TpVParams, state_arrays=TPV_STATE_ARRAYS, slice_independent=False)
def solve(op: Operator, sino: Sinogram, params: TpVParams, callback=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """TpV of ``sino``; ``info['iterations']`` counts PDHG iterations over all outer steps.

    Restartable: the callback's ``extra['state']`` is :class:`ReweightedTV`'s state; ``resume_state``
    (such a dict) continues that step, then the remaining ones.
    """
    clock = Stopwatch()
    alg = ReweightedTV(op, sino, params, make_gradient(op, params), state=resume_state)
    record = run(alg, callback)
    out = dict(alg.last_info)
    out.pop("resumed_from", None)
    out.update(iterations=alg.done, history=alg.hist, stopped=record.stopped, time_projector=alg.time_projector,
               time_total=clock.seconds(), outer_iterations=len(alg.lams), p=float(params.p),
               eta=float(params.eta), lam_per_outer=",".join(f"{v:.6g}" for v in alg.lams))
    if record.resumed_from is not None:
        out["resumed_from"] = record.resumed_from
    return Reconstruction(volume=alg.x, info=out)
