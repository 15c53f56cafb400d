"""``rising``: RISING (Evangelista et al. 2023; METHODS.md section 2) - a few iterations, then a network.

Step one (RIS): ``k`` iterations of a registered iterative solver (``sgp_tv`` by default; ``tv`` and
``svtv`` work too), started from zero, give an early iterate x_k. Step two (ING): a trained U-Net
(ONNX, through recon_cli.networks) maps x_k to the *converged* solution of the same solver with the
same parameters (not to the ground truth), so the result stays tied to the variational model.

The network only fits the conditions it was trained for, so the model's metadata must match the
iterative solver's name and parameters (all but the iteration count), ``k``, the geometry, the grid
and the noise level; otherwise InputError naming the model file and the first mismatching field
(``pre_estimate.name``, ``pre_estimate.params.<name>``, ``k``, ``geometry``, ``grid``, ``noise``,
``target``). ``allow_mismatch: true`` runs anyway with warnings.

Out-of-distribution guard (recon_cli.solvers.learned_guard): the network's output must explain the
data about as well as the iterate x_k does (data residual at most ``implausible_factor`` times
x_k's, and finite); with ``noise_factor`` set, also within that many times the data's expected
misfit (noise plus model error, learned_guard.data_misfit; the ratio is always reported).
Otherwise ``on_implausible``: ``fallback`` (default) runs the iterative solver as given in
``pre_estimate`` (its own iteration count: the data-consistent result RISING approximates) and
returns that, with a warning naming both residuals; ``fail`` stops (exit 1); ``ignore`` keeps the
network's output. The residuals and the decision are in ``info`` (``guard_*``) and ``/metrics``.

A stack of 2D slices is processed slice by slice (step one on each slice with a one-slice
projector of the same kind), as in training: solvers such as ``sgp_tv`` share step sizes over a
stack, so k joint iterations would not give the per-slice early iterates the network learned from.
A solver with a lam search (``tv``/``svtv`` with ``lam: auto``) runs its search before its k
iterations, so step one is then not cheap: train and run RISING with a fixed lam, or with ``sgp_tv``'s
``lam: noise`` (a rule from the noise level, no solve), which lets one model serve every dose of an envelope.

An envelope model (metadata ``envelope`` with a canonical pixel size) is run per ``resample``: ``native``
(default) on x_k's own grid, ``residual`` on the canonical grid with its correction added to x_k, ``image``
with its output resampled back (recon_cli.networks.Model.apply).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math

import numpy as np

from recon_cli.networks import conditions_for, load_model, param_differences
from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram
from recon_cli.solvers.algorithm import Stopwatch
from recon_cli.solvers.learned_guard import guard_output, misfit_or_none
from recon_cli.solvers.registry import IterationState, SolverRef, default_params, get_solver, register, run_ref
from recon_cli.solvers.params.rising import (DEFAULT_MODEL, ITERATIONS_KEY, NOT_ITERATIVE,  # noqa: F401
                                             RisingParams)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- step one


def early_ref(ref: SolverRef, k: int) -> SolverRef:
    """``ref`` with its iteration budget set to k (unchanged if the solver has no ``iterations``)."""
    fields = get_solver(ref.name).params_model.model_fields
    if ITERATIONS_KEY not in fields:
        return ref
    return SolverRef(name=ref.name, params={**ref.params, ITERATIONS_KEY: int(k)})


def _stop_after(k: int, callback):
    """A callback that stops the solver after k iterations (for solvers without ``iterations``)."""

    def cb(state: IterationState):
        stop = callback(state) if callback is not None else None
        return bool(stop) or state.iteration >= k

    return cb


def run_early(ref: SolverRef, k: int, op: Operator, sino: Sinogram, callback=None, *,
              resume_state: dict | None = None) -> Reconstruction:
    """k iterations of ``ref`` from zero on ``sino`` (one 2D slice, or a stack solved as the op does);
    ``resume_state``: continue from a state ``ref`` reported."""
    ref_k = early_ref(ref, k)
    if ITERATIONS_KEY in get_solver(ref.name).params_model.model_fields:
        return run_ref(ref_k, op, sino, callback, resume_state=resume_state)
    return run_ref(ref_k, op, sino, _stop_after(k, callback), resume_state=resume_state)


def _in_slice(callback, i: int, done, done_info: list):
    """``callback`` seeing slice ``i``'s iterations with the state a resumed run needs: {iteration (of that
    slice), slice, done (x_k of the slices before it), done_info (their infos), inner (the iterative
    solver's state)}; states without a solver state (stage announcements) pass unchanged."""
    if callback is None:
        return None

    def reporting(state: IterationState):
        inner = (state.extra or {}).get("state")
        if inner is None:
            return callback(state)
        return callback(IterationState(state.iteration, state.x, state.objective, state.residual, state.gap,
                                       extra={"state": {"iteration": state.iteration, "slice": i, "done": done,
                                                        "done_info": done_info, "inner": inner}}))

    reporting.wants_stages = getattr(callback, "wants_stages", False)  # a pre-estimate's stages, as before
    return reporting


def slice_operator(op: Operator, sino: Sinogram) -> Operator | None:
    """A projector of the same kind as ``op`` for one slice of ``sino``'s stack, or None if unknown."""
    cls = type(op)
    if getattr(op, "geometry", None) is None or getattr(op, "grid", None) is None:
        return None
    grid = sino.grid.slice_grid()
    try:
        takes_type = "projector_type" in inspect.signature(cls.__init__).parameters
        if takes_type and getattr(op, "projector_type", None) is not None:
            return cls(sino.geometry, grid, op.projector_type)
        return cls(sino.geometry, grid)
    except (TypeError, ValueError):  # an operator this module does not know how to rebuild
        return None


def _slice(sino: Sinogram, i: int) -> Sinogram:
    ref = sino.reference[i] if sino.reference is not None else None
    return dataclasses.replace(sino, data=sino.data[i], grid=sino.grid.slice_grid(), reference=ref)


def step_one(ref: SolverRef, k: int, op: Operator, sino: Sinogram, callback=None, *,
             resume_state: dict | None = None) -> tuple[object, dict, list]:
    """(x_k with op.domain_shape, history, per-slice infos): slice by slice for a stack.

    Restartable: ``resume_state`` (a state the callback saw, see :func:`_in_slice`) keeps the finished
    slices and continues the iterative solver's run of the slice in progress from its state."""
    n = sino.grid.n_slices
    first, inner = (0, None) if resume_state is None else (int(resume_state["slice"]), resume_state["inner"])
    one = None if n is None or n == 1 else slice_operator(op, sino)
    if one is None:
        if n is not None and n > 1:
            log.warning("rising: cannot build a one-slice projector like %s; running the %d slices jointly",
                        type(op).__name__, n)
        rec = run_early(ref, k, op, sino, _in_slice(callback, 0, None, []), resume_state=inner)
        return rec.volume, dict(rec.info.get("history") or {}), [rec.info]
    xp = op.xp
    volume = xp.empty(tuple(op.domain_shape), dtype=np.float32)
    infos: list = []
    if resume_state is not None and first > 0:
        volume[:first] = xp.asarray(resume_state["done"], dtype=np.float32)
        infos = [dict(info) for info in resume_state["done_info"]]
    for i in range(first, n):
        rec = run_early(ref, k, one, _slice(sino, i), _in_slice(callback, i, volume[:i], infos),
                        resume_state=inner if i == first else None)
        volume[i] = rec.volume
        infos.append(rec.info)
    history = {f"{name}_slice{i}": values for i, info in enumerate(infos)
               for name, values in (info.get("history") or {}).items()}
    return volume, history, infos


# ----------------------------------------------------------------------------- the model's fit


def _params_without_iterations(params: dict | None) -> dict:
    return {k: v for k, v in (params or {}).items() if k != ITERATIONS_KEY and v is not None}


def _param_differences(want: dict, have: dict, name: str) -> list[str]:
    """Names of parameters of solver ``name`` (iteration count excluded) whose values differ; a missing
    one counts as its default, a former name as its current one (networks.param_differences)."""
    want, have = _params_without_iterations(want), _params_without_iterations(have)
    return param_differences(want, have, default_params(name), get_solver(name).params_model.renamed)


def rising_mismatches(meta: dict, ref: SolverRef, k: int) -> list[tuple[str, str]]:
    """(field, explanation) for each way solver, parameters and k differ from the model's training."""
    found: list[tuple[str, str]] = []
    target = meta.get("target") or {}
    trained_in = meta.get("input") or {}
    if target.get("kind") != "converged":
        found.append(("target", f"the model maps to {target.get('kind', 'an unknown target')!r}, not to a converged "
                                "solver's solution: it is not a RISING model"))
        return found
    have = ref.model_dump(mode="json", exclude_none=True)
    if trained_in.get("name") != have["name"]:
        found.append(("pre_estimate.name", f"trained on {trained_in.get('name')!r} iterates, got {have['name']!r}"))
        return found
    trained_params = trained_in.get("params") or {}
    trained_k = trained_params.get(ITERATIONS_KEY)
    if trained_k is not None and int(trained_k) != int(k):
        found.append(("k", f"trained on {trained_k} iterations, got k={k}"))
    for name in _param_differences(trained_params, have.get("params") or {}, have["name"]):
        found.append((f"pre_estimate.params.{name}", f"{have['name']} {name}={have['params'].get(name)!r} "
                                                  f"(trained {trained_params.get(name)!r})"))
    conv = target.get("solver") or {}
    if conv.get("name") != trained_in.get("name") or _param_differences(trained_params, conv.get("params"),
                                                                          have["name"]):
        found.append(("target", f"the model's target solver {conv.get('name')!r} is not its input solver "
                                f"{trained_in.get('name')!r} with the same parameters"))
    return found


def check_model(model, ref: SolverRef, k: int, sino: Sinogram, override: bool) -> list[tuple[str, str]]:
    """Raise InputError (file = model, field = first mismatch) unless the model fits or ``override``."""
    found = rising_mismatches(model.meta, ref, k)
    found += model.mismatches(sino.geometry, sino.grid, noise=sino.metadata)
    return model.enforce_fit(found, override, "RISING model does not fit this run")


# ----------------------------------------------------------------------------- the solver


def _scalars(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}


def _slice_independent(params: RisingParams) -> bool:
    """Slices are processed one by one (step one per slice, network per slice)."""
    return True


@register("rising", RisingParams, state_arrays=(32, 5), slice_independent=_slice_independent)
def solve(op: Operator, sino: Sinogram, params: RisingParams, callback=None, *,
          resume_state: dict | None = None) -> Reconstruction:
    """Network(x_k); ``volume`` has ``op.domain_shape`` in 1/mm (numpy or cupy as ``op.xp``).

    Restartable in step one (see :func:`step_one`); the network then runs on the same x_k.

    ``info``: ``k``, ``time_iterative`` / ``time_network`` / ``time_total`` (s), ``history`` (the
    iterate's per-iteration history, per slice for a stack), ``objective_iterate`` /
    ``residual_iterate`` (its last values), ``network_change`` (||x - x_k|| / ||x_k||), the model,
    its target's iteration count and any tolerated mismatches. The final image's data residual is
    the runner's ``residual`` metric.
    """
    clock = Stopwatch()
    t0 = clock.seconds()
    model = load_model(params.model)
    ref = params.pre_estimate
    mismatches = check_model(model, ref, params.k, sino, params.allow_mismatch)
    t1 = clock.seconds()
    x_k, history, infos = step_one(ref, params.k, op, sino, callback, resume_state=resume_state)
    t2 = clock.seconds()
    network_out = model.apply(x_k, voxel_size=sino.grid.voxel_size, conditions=conditions_for(sino),
                              residual=params.resample == "residual", native=params.resample == "native")
    t3 = clock.seconds()
    xp = op.xp
    norm_k = float(xp.linalg.norm(x_k.ravel()))
    change = float(xp.linalg.norm((network_out - x_k).ravel())) / norm_k if norm_k > 0 else math.inf
    volume, guard = guard_output(op, sino.data, network_out, x_k, baseline_name=f"{ref.name} (k={params.k})",
                                 factor=params.implausible_factor, on_implausible=params.on_implausible,
                                 what=f"RISING network {model.name!r}",
                                 fallback=lambda: run_ref(ref, op, sino).volume, fallback_name=f"{ref.name} (full)",
                                 misfit=misfit_or_none(sino), noise_factor=params.noise_factor)
    t4 = clock.seconds()
    conv = (model.meta.get("target") or {}).get("solver") or {}
    info = {
        "iterations": int(max(int(i.get("iterations", params.k) or 0) for i in infos)),
        "history": history,
        "stopped": f"{params.k} {ref.name} iterations, then the network",
        "k": int(params.k),
        "iterative_solver": ref.name,
        "iterative_info": _scalars(infos[0]),
        "model": str(model.path),
        "model_name": model.name,
        "converged_iterations": (conv.get("params") or {}).get(ITERATIONS_KEY),
        "mismatches": [f"{f}: {m}" for f, m in mismatches],
        "providers": ",".join(model.providers),
        "network_change": change,
        "time_load": t1 - t0,
        "time_iterative": t2 - t1,
        "time_network": t3 - t2,
        "time_guard": t4 - t3,
        "time_total": t4 - t0,
        **guard,
    }
    if info["converged_iterations"] is None:
        info.pop("converged_iterations")
    if resume_state is not None:
        info["resumed_from"] = int(resume_state["iteration"])
    for name in ("objective", "residual"):  # the iterate's last values, when the solver records them
        last = [float(i["history"][name][-1]) for i in infos if (i.get("history") or {}).get(name)]
        if last:
            info[f"{name}_iterate"] = float(np.mean(last)) if len(last) > 1 else last[0]
    return Reconstruction(volume=volume, info=info)
