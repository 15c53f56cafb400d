"""``unet``: a trained network (ONNX, through recon_cli.networks) applied to an input solver's output.

Used on its own (FBP + U-Net post-processing), as SV-TV's pre-estimate, graphLa's Psi
and RISING's second step. The data must lie in the model's envelope (geometry types, view
count, grid, pixel size and noise range; a single-scanner model: its geometry within 1e-5 rad)
and the input solver must be the trained one (InputError naming the model file and the field
otherwise; ``allow_mismatch: true`` runs anyway with a warning).

Out-of-distribution guard (recon_cli.solvers.learned_guard): the network's output must explain
the data about as well as its input (e.g. FBP) does, and its residual must stay within
``noise_factor`` times the data's expected misfit (what TV ``lam: auto`` leaves, 0.97x); otherwise
``on_implausible`` decides: ``fallback`` (default: the ``fallback`` solver's image, by default the
input solver's, with a warning naming the residuals), ``fail`` or ``ignore``. The residuals and
the decision are in ``info`` (``guard_*``) and ``/metrics``.

A model trained with dihedral augmentation is by default averaged over the 8 turns / mirrors of its
input (``dihedral_average``; networks.dihedral_mean). The output is x + a (network(x) - x), x the input
solver's image, with a = ``correction_weight`` (default: the model's, chosen on tuning data; 1 if none).
No torch: inference is ONNX Runtime only.
"""
from __future__ import annotations

from recon_cli.networks import conditions_for, dihedral_mean, load_model
from recon_cli.sinogram import Reconstruction
from recon_cli.solvers.algorithm import Stopwatch
from recon_cli.solvers.learned_guard import guard_output, misfit_or_none
from recon_cli.solvers.registry import SolverRef, default_params, get_solver, register, run_ref
from recon_cli.solvers.params.unet import UNetParams  # noqa: F401 (re-exported)


def _input_ref(params: UNetParams, model) -> SolverRef:
    return params.pre_estimate if params.pre_estimate is not None else SolverRef.model_validate(model.trained_input or {"name": "fbp"})


def _slice_independent(params: UNetParams) -> bool:
    """The network works slice by slice, so a stack splits exactly when its input solver does."""
    try:
        ref = _input_ref(params, load_model(params.model))
    except Exception:  # model missing or unreadable: the solve reports it; do not split
        return False
    return get_solver(ref.name).is_slice_independent(ref.parsed())


def _scalars(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}


@register("unet", UNetParams, slice_independent=_slice_independent)
def solve(op, sino, params: UNetParams, callback=None) -> Reconstruction:
    """Network(input solver(sino)); ``volume`` has ``op.domain_shape`` in 1/mm."""
    clock = Stopwatch()
    t0 = clock.seconds()
    model = load_model(params.model)
    ref = _input_ref(params, model)
    expected = ref.model_dump(mode="json", exclude_none=True)
    mismatches = model.check_fits(sino.geometry, sino.grid, expected_input=expected, noise=sino.metadata,
                                  override=params.allow_mismatch, input_defaults=default_params(ref.name),
                                  input_renamed=get_solver(ref.name).params_model.renamed)
    first = run_ref(ref, op, sino, callback)
    t1 = clock.seconds()
    conditions = conditions_for(sino)

    def network(x):
        return model.apply(x, voxel_size=sino.grid.voxel_size, conditions=conditions)

    average = model.trained_dihedral if params.dihedral_average is None else params.dihedral_average
    network_out = dihedral_mean(network, first.volume) if average else network(first.volume)
    weight = model.correction_weight if params.correction_weight is None else float(params.correction_weight)
    if weight != 1.0:
        network_out = first.volume + weight * (network_out - first.volume)
    t2 = clock.seconds()
    fb = params.fallback
    volume, guard = guard_output(op, sino.data, network_out, first.volume, baseline_name=ref.name,
                                 factor=params.implausible_factor, on_implausible=params.on_implausible,
                                 what=f"network {model.name!r}", misfit=misfit_or_none(sino),
                                 noise_factor=params.noise_factor,
                                 fallback=(lambda: run_ref(fb, op, sino).volume) if fb is not None else None,
                                 fallback_name=fb.name if fb is not None else None)
    t3 = clock.seconds()
    info = {
        "iterations": int(first.info.get("iterations", 0) or 0),
        "history": first.info.get("history", {}),
        "stopped": "network applied",
        "model": str(model.path),
        "model_name": model.name,
        "input_solver": ref.name,
        "dihedral_average": bool(average),
        "correction_weight": weight,
        "input_info": _scalars(first.info),
        "mismatches": [f"{f}: {m}" for f, m in mismatches],
        "providers": ",".join(model.providers),
        "time_input": t1 - t0,
        "time_network": t2 - t1,
        "time_guard": t3 - t2,
        "time_total": t3 - t0,
        **guard,
    }
    return Reconstruction(volume=volume, info=info)
