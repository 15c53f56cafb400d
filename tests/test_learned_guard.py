"""Out-of-distribution guard: a network output that no longer explains the data is not returned silently."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from recon_cli.backend import Device  # noqa: E402
from recon_cli.errors import RunError  # noqa: E402
from recon_cli.geometry import Parallel2D, VolumeGrid  # noqa: E402
from recon_cli.io.hdf5 import read_sinogram  # noqa: E402
from recon_cli.networks import load_model  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.solvers.learned_guard import IMPLAUSIBLE_FACTOR, relative_residual  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = Parallel2D(angles=np.linspace(0, np.pi, 30, endpoint=False), detector_spacing=1.0, detector_count=48)
GRID = VolumeGrid((32, 32), 1.0)


def _ref(name: str, params: dict) -> dict:
    from recon_cli.solvers.registry import SolverRef

    return SolverRef(name=name, params=params).model_dump(mode="json", exclude_none=True)


def scaling_model(path: Path, factor: float, meta_extra: dict | None = None) -> Path:
    """An ONNX 'network' y = factor * x with metadata for GEOMETRY/GRID (factor 1: the identity)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, "h", "w"])
    c = helper.make_tensor("c", TensorProto.FLOAT, [], [float(factor)])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "scale", [x], [y], initializer=[c])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    meta = {"format": "recon-cli-model/1", "name": path.stem, "normalization": {"input_scale": 0.0384},
            "pad_multiple": 1, "input": _ref("fbp", {}),
            "geometry": {"attrs": GEOMETRY.attrs(), "angles": GEOMETRY.angles.tolist()},
            "grid": {"shape": [32, 32], "voxel_size": 1.0}, "noise": {"I0": 1.0e5}, **(meta_extra or {})}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "recon_cli", json.dumps(meta)
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def case():
    from recon_cli.phantoms import coule_phantom
    from recon_cli.simulate import simulate_sinogram

    sino = simulate_sinogram(coule_phantom(32, np.random.default_rng(3)), 1.0, GEOMETRY, GRID, I0=1e5, seed=3)
    return make_projector(GEOMETRY, GRID, Device("cpu")), sino


def test_garbage_output_falls_back_to_the_input_solver_and_records_the_residuals(case, tmp_path, caplog):
    op, sino = case
    garbage = scaling_model(tmp_path / "garbage.onnx", 10.0)  # an input scaled wrongly: 10x the attenuation
    fbp = run_solver("fbp", op, sino, {}).volume
    res = run_solver("unet", op, sino, {"model": str(garbage)})
    np.testing.assert_array_equal(res.volume, fbp)  # exactly the data-consistent baseline
    info = res.info
    assert info["guard_decision"] == "fallback" and info["guard_fallback"] == 1 and info["guard_implausible"] == 1
    assert info["guard_residual_baseline"] == pytest.approx(relative_residual(op, fbp, sino.data))
    assert info["guard_residual_network"] == pytest.approx(relative_residual(op, 10 * fbp, sino.data), rel=1e-4)
    assert info["guard_ratio"] > IMPLAUSIBLE_FACTOR
    assert "implausible" in caplog.text and f"{info['guard_residual_network']:.4g}" in caplog.text
    # fail: a run error naming both residuals; ignore: the network's output, flagged
    with pytest.raises(RunError) as err:
        run_solver("unet", op, sino, {"model": str(garbage), "on_implausible": "fail"})
    assert "residual" in str(err.value) and "fbp" in str(err.value)
    kept = run_solver("unet", op, sino, {"model": str(garbage), "on_implausible": "ignore"})
    np.testing.assert_allclose(kept.volume, 10 * fbp, rtol=1e-5)
    assert kept.info["guard_decision"] == "ignored" and kept.info["guard_implausible"] == 1


def test_non_finite_output_is_implausible(case, tmp_path):
    op, sino = case
    nan_model = scaling_model(tmp_path / "nan.onnx", float("nan"))
    res = run_solver("unet", op, sino, {"model": str(nan_model)})
    assert np.all(np.isfinite(res.volume)) and res.info["guard_decision"] == "fallback"
    assert res.info["guard_residual_network"] is None and res.info["guard_ratio"] is None


def test_plausible_output_passes_through(case, tmp_path):
    op, sino = case
    mild = scaling_model(tmp_path / "mild.onnx", 0.998)  # close to the input: as data-consistent as it
    fbp = run_solver("fbp", op, sino, {}).volume
    res = run_solver("unet", op, sino, {"model": str(mild)})
    np.testing.assert_allclose(res.volume, 0.998 * fbp, rtol=1e-5)
    assert res.info["guard_decision"] == "accepted" and res.info["guard_fallback"] == 0
    assert res.info["guard_ratio"] <= IMPLAUSIBLE_FACTOR


def test_shipped_model_in_distribution_is_accepted():
    sino = read_sinogram(REPO / "sample_data" / "head_fan60.h5")
    op = make_projector(sino.geometry, sino.grid, Device("cpu"))
    res = run_solver("unet", op, sino, {"model": "postproc_fan60"})
    assert res.info["guard_decision"] == "accepted" and res.info["guard_ratio"] < 1.0
    fbp = run_solver("fbp", op, sino, {"filter": "hann"}).volume
    np.testing.assert_array_equal(res.volume, load_model("postproc_fan60").apply(fbp))


def test_rising_garbage_falls_back_to_the_full_iterative_solver(case, tmp_path):
    op, sino = case
    k, solver_params = 3, {"lam": 10.0}
    extra = {"input": _ref("sgp_tv", {**solver_params, "iterations": k}),
             "target": {"kind": "converged", "solver": _ref("sgp_tv", {**solver_params, "iterations": 40})}}
    garbage = scaling_model(tmp_path / "rising_garbage.onnx", 8.0, extra)
    params = {"iterative": {"name": "sgp_tv", "params": {**solver_params, "iterations": 40}}, "k": k,
              "model": str(garbage)}
    res = run_solver("rising", op, sino, params)
    full = run_solver("sgp_tv", op, sino, {**solver_params, "iterations": 40}).volume
    np.testing.assert_array_equal(res.volume, full)
    assert res.info["guard_decision"] == "fallback" and res.info["guard_fallback_solver"] == "sgp_tv (full)"
    good = scaling_model(tmp_path / "rising_identity.onnx", 1.0, extra)
    res = run_solver("rising", op, sino, {**params, "model": str(good)})
    assert res.info["guard_decision"] == "accepted" and res.info["guard_ratio"] == pytest.approx(1.0)


def test_runner_writes_the_guard_to_metrics(case, tmp_path, monkeypatch):
    from recon_cli.config import load_config
    from recon_cli.io.hdf5 import write_sinogram
    from recon_cli.runner import run_pipeline

    op, sino = case
    data = tmp_path / "case.h5"
    write_sinogram(data, sino)
    garbage = scaling_model(tmp_path / "garbage.onnx", 10.0)
    monkeypatch.chdir(REPO)
    cfg = load_config("pipelines/unet.yaml", ["output.formats=[hdf5]", f"solver.params.model={garbage}",
                                              "solver.params.input={name: fbp}"])
    result = run_pipeline(cfg, input_override=str(data), output_override=str(tmp_path / "out.h5"), progress=False)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        metrics, info = dict(f["metrics"].attrs), dict(f["info"].attrs)
    assert metrics["guard_fallback"] == 1 and metrics["guard_ratio"] > IMPLAUSIBLE_FACTOR
    assert metrics["guard_residual_baseline"] == pytest.approx(result.metrics["residual"], rel=1e-4)
    assert info["guard_decision"] == "fallback"


def test_a_stack_is_judged_slice_by_slice(tmp_path):
    from recon_cli.phantoms import coule_phantom
    from recon_cli.simulate import simulate_sinogram
    from recon_cli.solvers.learned_guard import guard_output

    grid = VolumeGrid((3, 32, 32), 1.0)
    images = np.stack([coule_phantom(32, np.random.default_rng(s)) for s in (1, 2, 3)])
    sino = simulate_sinogram(images, 1.0, GEOMETRY, grid, I0=1e5, seed=4)
    op = make_projector(GEOMETRY, grid, Device("cpu"))
    fbp = run_solver("fbp", op, sino, {}).volume
    network = fbp.copy()
    network[1] *= 10.0  # only the middle slice is garbage
    network[2, 0, 0] = np.nan  # and one value of the last is not finite
    out, info = guard_output(op, sino.data, network, fbp, baseline_name="fbp")
    np.testing.assert_array_equal(out[0], network[0])
    np.testing.assert_array_equal(out[1:], fbp[1:])
    assert info["guard_implausible_slices"] == 2 and info["guard_decision"] == "fallback"
    assert info["guard_residual_network"] is None  # one slice is not finite
    ok, info = guard_output(op, sino.data, fbp * 1.001, fbp, baseline_name="fbp")
    assert info["guard_decision"] == "accepted" and info["guard_implausible_slices"] == 0
    assert info["guard_residual_baseline"] == pytest.approx(relative_residual(op, fbp, sino.data), rel=1e-6)
