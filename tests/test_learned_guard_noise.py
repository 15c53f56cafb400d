"""The learned-output guard's noise check (issue 14): a network output must explain the data to within a
factor of their expected misfit (what TV lam auto leaves), not only about as well as FBP does."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

pytest.importorskip("onnx")

from recon_cli.backend import Device  # noqa: E402
from recon_cli.errors import RunError  # noqa: E402
from recon_cli.geometry import Parallel2D, VolumeGrid  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.sinogram import Sinogram  # noqa: E402
from recon_cli.solvers.learned_guard import NOISE_FACTOR, data_misfit, guard_output, relative_residual  # noqa: E402
from recon_cli.solvers.regularisation_parameter import detector_curvature_error, noise_norm  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402

from test_learned_guard import scaling_model  # noqa: E402

GEOMETRY = Parallel2D(angles=np.linspace(0, np.pi, 30, endpoint=False), detector_spacing=1.0, detector_count=48)
GRID = VolumeGrid((32, 32), 1.0)


@pytest.fixture(scope="module")
def case():
    from recon_cli.phantoms import coule_phantom
    from recon_cli.simulate import simulate_sinogram

    sino = simulate_sinogram(coule_phantom(32, np.random.default_rng(3)), 1.0, GEOMETRY, GRID, I0=1e5, seed=3)
    return make_projector(GEOMETRY, GRID, Device("cpu")), sino


def test_misfit_is_the_noise_norm_raised_by_model_error_and_per_slice(case):
    op, sino = case
    m = data_misfit(sino)
    e, _ = noise_norm(sino.data, sino.metadata)
    assert m.shape == (1,) and e <= m[0] <= 2.0 * e
    # the true image's residual is about the misfit (data simulated on a finer grid)
    true_res = float(np.linalg.norm(op.forward(sino.reference) - sino.data))
    assert 0.7 * m[0] <= true_res <= 1.4 * m[0]
    stack = Sinogram(np.stack([sino.data, 2 * sino.data]), GEOMETRY, VolumeGrid((2, 32, 32), 1.0),
                     metadata={"sigma": 0.01})
    ms = data_misfit(stack)
    assert ms.shape == (2,)
    # per slice: the stated noise, raised by each slice's own model error (detector curvature: this
    # detector is no finer than the grid), so the slice with twice the contrast gets the larger one
    e_slice = 0.01 * np.sqrt(sino.data.size)
    for k, y_k in enumerate((sino.data, 2 * sino.data)):
        assert ms[k] == pytest.approx(np.hypot(e_slice, detector_curvature_error(y_k, e_slice)), rel=1e-6)
    assert e_slice < ms[0] < ms[1]


def _worse_than_fbp(op, sino, fbp, factor: float):
    """FBP moved towards its 5x5 blur until its residual is ``factor`` x FBP's (bisection)."""
    blurred = uniform_filter(fbp, 5)
    target = factor * relative_residual(op, fbp, sino.data)
    lo, hi = 0.0, 1.0
    assert relative_residual(op, blurred, sino.data) > target
    for _ in range(30):
        t = 0.5 * (lo + hi)
        lo, hi = (t, hi) if relative_residual(op, fbp + t * (blurred - fbp), sino.data) < target else (lo, t)
    return (fbp + lo * (blurred - fbp)).astype(np.float32)


def test_an_output_within_the_fbp_ratio_but_above_the_noise_limit_is_rejected(case):
    op, sino = case
    fbp = run_solver("fbp", op, sino, {}).volume
    worse = _worse_than_fbp(op, sino, fbp, 1.4)
    out, info = guard_output(op, sino.data, worse, fbp, baseline_name="fbp")
    assert info["guard_decision"] == "accepted" and out is worse  # the FBP rule alone accepts it
    misfit = data_misfit(sino)
    ratio = float(np.linalg.norm(op.forward(worse) - sino.data)) / misfit[0]
    out, info = guard_output(op, sino.data, worse, fbp, baseline_name="fbp", misfit=misfit, noise_factor=ratio / 1.1)
    assert info["guard_decision"] == "fallback" and info["guard_implausible"] == 1
    np.testing.assert_array_equal(out, fbp)
    assert info["guard_noise_ratio"] == pytest.approx(ratio, rel=1e-4)
    assert info["guard_residual_noise"] == pytest.approx(misfit[0] / np.linalg.norm(sino.data), rel=1e-4)
    _, info = guard_output(op, sino.data, worse, fbp, baseline_name="fbp", misfit=misfit, noise_factor=ratio * 1.1)
    assert info["guard_decision"] == "accepted"
    # without noise_factor the ratio is reported, not used
    _, info = guard_output(op, sino.data, worse, fbp, baseline_name="fbp", misfit=misfit)
    assert info["guard_decision"] == "accepted" and info["guard_noise_ratio"] == pytest.approx(ratio, rel=1e-4)


def test_the_fail_setting_names_the_noise_residual(case):
    op, sino = case
    fbp = run_solver("fbp", op, sino, {}).volume
    with pytest.raises(RunError) as err:
        guard_output(op, sino.data, _worse_than_fbp(op, sino, fbp, 1.4), fbp, baseline_name="fbp",
                     misfit=data_misfit(sino), noise_factor=1.01, on_implausible="fail")
    assert "expected misfit" in str(err.value) and "residual" in str(err.value)


def test_unet_checks_the_noise_by_default_and_falls_back_to_a_chosen_solver(case, tmp_path):
    op, sino = case
    garbage = scaling_model(tmp_path / "garbage.onnx", 10.0)
    tv_params = {"lam": 1.0, "iterations": 20}
    res = run_solver("unet", op, sino, {"model": str(garbage), "fallback": {"name": "tv", "params": tv_params}})
    np.testing.assert_array_equal(res.volume, run_solver("tv", op, sino, tv_params).volume)
    info = res.info
    assert info["guard_fallback_solver"] == "tv" and info["guard_noise_factor"] == NOISE_FACTOR
    assert info["guard_noise_ratio"] > NOISE_FACTOR and info["guard_residual_noise"] > 0
    # an output as data-consistent as FBP passes both checks on this well-sampled case
    mild = scaling_model(tmp_path / "mild.onnx", 1.0)
    ok = run_solver("unet", op, sino, {"model": str(mild)})
    assert ok.info["guard_decision"] == "accepted" and ok.info["guard_noise_ratio"] <= NOISE_FACTOR
    # noise_factor null: the noise is not checked (the ratio is still reported)
    off = run_solver("unet", op, sino, {"model": str(mild), "noise_factor": None})
    assert "guard_noise_factor" not in off.info and off.info["guard_noise_ratio"] == pytest.approx(
        ok.info["guard_noise_ratio"])


def test_rising_reports_the_noise_ratio_and_enforces_it_when_set(case, tmp_path):
    from test_learned_guard import _ref

    op, sino = case
    k, solver_params = 3, {"lam": 10.0}
    extra = {"input": _ref("sgp_tv", {**solver_params, "iterations": k}),
             "target": {"kind": "converged", "solver": _ref("sgp_tv", {**solver_params, "iterations": 40})}}
    identity = scaling_model(tmp_path / "rising_identity.onnx", 1.0, extra)  # returns x_k: far from converged
    params = {"iterative": {"name": "sgp_tv", "params": {**solver_params, "iterations": 40}}, "k": k,
              "model": str(identity)}
    res = run_solver("rising", op, sino, params)
    assert res.info["guard_decision"] == "accepted" and res.info["guard_noise_ratio"] > 3.0
    res = run_solver("rising", op, sino, {**params, "noise_factor": 3.0})
    assert res.info["guard_decision"] == "fallback" and res.info["guard_fallback_solver"] == "sgp_tv (full)"
    full = run_solver("sgp_tv", op, sino, {**solver_params, "iterations": 40}).volume
    np.testing.assert_array_equal(res.volume, full)
