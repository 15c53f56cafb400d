"""RISING: k iterations of an iterative solver, then a network trained on (x_k, converged) pairs.

Tiny models (32 x 32 parallel beam) are trained here for sgp_tv, tv and svtv as the iterative
solver; the shipped model (recon_cli/models/rising_sgp_tv_fan60.onnx) is checked on the sample data.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner  # noqa: E402

from recon_cli.backend import Device  # noqa: E402
from recon_cli.errors import InputError  # noqa: E402
from recon_cli.geometry import Parallel2D, VolumeGrid  # noqa: E402
from recon_cli.learn.config import config_from_dict  # noqa: E402
from recon_cli.networks import load_model  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K = 3
#: Iterative solvers and their (fixed-lam) parameters for the tiny models.
SOLVERS = {
    "sgp_tv": {"lam": 10.0},
    "tv": {"lam": 1.0},
    "svtv": {"lam": 1.0},
}
TINY = {
    "geometry": {"type": "parallel", "n_angles": 30, "detector_count": 48, "detector_spacing": 1.0},
    "grid": {"shape": [32, 32], "voxel_size": 1.0},
    "noise": {"I0": 1.0e5},
    "data": {"sources": [{"kind": "coule"}, {"kind": "anatomy"}], "train": 6, "val": 2, "test": 0},
    "model": {"depth": 2, "base_channels": 4, "residual_blocks": True},
    "training": {"epochs": 2, "batch_size": 3, "patch": 16, "lr": 1.0e-3, "threads": 1, "loss": {"kind": "mse"}},
}


def tiny_config(solver: str, cache: Path, converged_iterations: int = 40) -> dict:
    raw = json.loads(json.dumps(TINY))
    raw["name"] = f"rising_{solver}"
    raw["data"]["cache_dir"] = str(cache)
    raw["input"] = {"name": solver, "params": {**SOLVERS[solver], "iterations": K}}
    raw["target"] = {"converged": {"name": solver, "params": {**SOLVERS[solver], "iterations": converged_iterations}}}
    return raw


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{solver: path of a tiny RISING model}; the sgp_tv one through `recon train`, the others through the API."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import yaml

    from recon_cli.cli.main import cli
    from recon_cli.learn.train import train

    root = tmp_path_factory.mktemp("rising")
    out = {}
    raw = tiny_config("sgp_tv", root / "cache")
    cfg_path = root / "rising_sgp_tv.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli, ["-q", "train", str(cfg_path), "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    out["sgp_tv"] = root / "out" / "rising_sgp_tv.onnx"
    for solver in ("tv", "svtv"):
        res = train(config_from_dict(tiny_config(solver, root / "cache")), out_dir=root / "out")
        out[solver] = res.paths["onnx"]
    return out


def _geometry(n_angles=30):
    return Parallel2D(angles=np.linspace(0, np.pi, n_angles, endpoint=False), detector_spacing=1.0, detector_count=48)


def _sinogram(geometry, grid, seed=7, I0=1.0e5):
    from recon_cli.phantoms import coule_phantom
    from recon_cli.simulate import simulate_sinogram

    n = grid.shape[-1]
    image = coule_phantom(n, np.random.default_rng(seed))
    if len(grid.shape) == 3:
        image = np.stack([image, coule_phantom(n, np.random.default_rng(seed + 1))])
    return simulate_sinogram(image, grid.voxel_size, geometry, grid, I0=I0, seed=seed)


@pytest.fixture(scope="module")
def data():
    geometry, grid = _geometry(), VolumeGrid((32, 32), 1.0)
    return make_projector(geometry, grid, Device("cpu")), _sinogram(geometry, grid)


def _params(solver, model, **extra):
    return {"pre_estimate": {"name": solver, "params": dict(SOLVERS[solver])}, "k": K, "model": str(model), **extra}


# ----------------------------------------------------------------------------- the two steps


@pytest.mark.parametrize("solver", ["sgp_tv", "tv", "svtv"])
def test_rising_is_the_network_applied_to_k_iterations_from_zero(models, data, solver):
    op, sino = data
    res = run_solver("rising", op, sino, _params(solver, models[solver]))
    x_k = run_solver(solver, op, sino, {**SOLVERS[solver], "iterations": K}).volume
    np.testing.assert_array_equal(res.volume, load_model(models[solver]).apply(x_k))
    assert res.volume.shape == (32, 32) and res.volume.dtype == np.float32
    assert np.all(np.isfinite(res.volume)) and float(res.volume.min()) >= 0.0  # nonneg output (relu)
    assert not np.allclose(res.volume, x_k)  # the network changed the iterate
    info = res.info
    assert info["k"] == K and info["iterative_solver"] == solver and info["iterations"] == K
    assert info["mismatches"] == [] and info["model"] == str(Path(models[solver]).resolve())
    assert info["time_iterative"] > 0 and info["time_network"] > 0
    assert info["time_total"] >= info["time_iterative"] + info["time_network"]
    assert info["converged_iterations"] == 40
    assert info["network_change"] > 0 and info["residual_iterate"] > 0 and info["objective_iterate"] > 0
    lengths = {len(v) for v in info["history"].values() if v is not None and len(v) > 0}
    assert lengths and max(lengths) <= K


def test_pairs_are_k_iterations_and_the_same_solver_converged(models):
    """The shipped pairs' input is the k-iteration run and the target that solver's converged run."""
    meta = load_model(models["sgp_tv"]).meta
    assert meta["input"]["name"] == "sgp_tv" and meta["input"]["params"]["iterations"] == K
    assert meta["target"]["kind"] == "converged" and meta["target"]["solver"]["name"] == "sgp_tv"
    target = dict(meta["target"]["solver"]["params"])
    assert target.pop("iterations") == 40
    assert {k: v for k, v in meta["input"]["params"].items() if k != "iterations"} == target


def test_stack_is_processed_slice_by_slice(models):
    """Two slices give exactly the two 2D results (step one per slice, as in training)."""
    geometry = _geometry()
    grid3 = VolumeGrid((2, 32, 32), 1.0)
    sino3 = _sinogram(geometry, grid3)
    op3 = make_projector(geometry, grid3, Device("cpu"))
    res3 = run_solver("rising", op3, sino3, _params("sgp_tv", models["sgp_tv"]))
    assert res3.volume.shape == (2, 32, 32)
    from recon_cli.solvers.rising import _slice

    op2 = make_projector(geometry, VolumeGrid((32, 32), 1.0), Device("cpu"))
    for i in range(2):
        res2 = run_solver("rising", op2, _slice(sino3, i), _params("sgp_tv", models["sgp_tv"]))
        np.testing.assert_allclose(res3.volume[i], res2.volume, rtol=0, atol=1e-6)
    assert set(res3.info["history"]) >= {"objective_slice0", "objective_slice1"}


def test_recon_run_from_yaml(models, tmp_path):
    import h5py
    import yaml

    from recon_cli.cli.main import cli
    from recon_cli.io.hdf5 import write_sinogram

    geometry, grid = _geometry(), VolumeGrid((32, 32), 1.0)
    write_sinogram(tmp_path / "in.h5", _sinogram(geometry, grid))
    pipe = {"name": "rising-tiny", "input": {"path": str(tmp_path / "in.h5")},
            "solver": {"name": "rising", "params": _params("sgp_tv", models["sgp_tv"])},
            "output": {"path": str(tmp_path / "out.h5"), "formats": ["hdf5"]},
            "metrics": {"list": ["psnr", "rel_err", "wall_time"]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipe))
    result = CliRunner().invoke(cli, ["-q", "run", str(tmp_path / "p.yaml")])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "out.h5") as f:
        rec = f["/reconstruction"][...]
        assert rec.shape == (32, 32) and np.all(np.isfinite(rec))
        assert int(f["/info"].attrs["k"]) == K
        assert "objective" in f["/history"]
    # a wrong k in the YAML stops the run with the model file and field named, and writes nothing
    pipe["solver"]["params"]["k"] = K + 1
    pipe["output"]["path"] = str(tmp_path / "bad.h5")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(pipe))
    result = CliRunner().invoke(cli, ["-q", "run", str(tmp_path / "bad.yaml")])
    assert isinstance(result.exception, InputError) and result.exception.exit_code == 2
    assert result.exception.field == "k" and "rising_sgp_tv.onnx: k:" in result.exception.one_line()
    assert not (tmp_path / "bad.h5").exists()


# ----------------------------------------------------------------------------- the model must fit


@pytest.mark.parametrize("change, field", [
    ({"k": K + 2}, "k"),
    ({"pre_estimate": {"name": "sgp_tv", "params": {"lam": 5.0}}}, "pre_estimate.params.lam"),
    ({"pre_estimate": {"name": "sgp_tv", "params": {"lam": 10.0, "beta": 1e-2}}}, "pre_estimate.params.beta"),
    ({"pre_estimate": {"name": "tv", "params": {"lam": 1.0}}}, "pre_estimate.name"),
])
def test_other_solver_params_or_k_is_refused_naming_the_field(models, data, change, field):
    op, sino = data
    path = models["sgp_tv"]
    params = {**_params("sgp_tv", path), **change}
    with pytest.raises(InputError) as err:
        run_solver("rising", op, sino, params)
    assert err.value.field == field and err.value.file == str(Path(path).resolve())
    assert "allow_mismatch" in err.value.one_line() and "rising_sgp_tv.onnx" in err.value.one_line()
    res = run_solver("rising", op, sino, {**params, "allow_mismatch": True})
    assert np.all(np.isfinite(res.volume)) and res.info["mismatches"][0].startswith(field)


def test_other_geometry_grid_or_noise_is_refused(models):
    path = models["sgp_tv"]
    cases = [(_geometry(20), VolumeGrid((32, 32), 1.0), 1.0e5, "geometry"),
             (_geometry(), VolumeGrid((32, 32), 0.8), 1.0e5, "grid"),
             (_geometry(), VolumeGrid((32, 32), 1.0), 1.0e3, "noise")]
    for geometry, grid, I0, field in cases:
        op, sino = make_projector(geometry, grid, Device("cpu")), _sinogram(geometry, grid, I0=I0)
        with pytest.raises(InputError) as err:
            run_solver("rising", op, sino, _params("sgp_tv", path))
        assert err.value.field == field and err.value.file == str(Path(path).resolve())
        res = run_solver("rising", op, sino, _params("sgp_tv", path, allow_mismatch=True))
        assert res.volume.shape == (32, 32) and res.info["mismatches"][0].startswith(field)


def test_a_model_trained_on_the_ground_truth_is_not_a_rising_model(models, data, tmp_path):
    """A post-processing model (target: ground truth) is refused with field 'target'."""
    from recon_cli.learn.train import train  # torch: the models fixture has checked it

    raw = tiny_config("sgp_tv", tmp_path / "cache")
    raw.update(name="gt", target="ground_truth")
    raw["data"].update(train=2, val=1)
    raw["training"]["epochs"] = 1
    path = train(config_from_dict(raw), out_dir=tmp_path).paths["onnx"]
    op, sino = data
    with pytest.raises(InputError) as err:
        run_solver("rising", op, sino, _params("sgp_tv", path))
    assert err.value.field == "target"


def test_bad_parameters_are_config_errors():
    from recon_cli.solvers.registry import SolverRef

    for params, text in [({"iterative": {"name": "fbp"}}, "not an iterative solver"),
                         ({"k": 0}, "greater than or equal to 1"),
                         ({"iterative": {"name": "sgp_tv", "params": {"nope": 1}}}, "nope")]:
        with pytest.raises(ValueError, match=text):
            SolverRef(name="rising", params=params)
    with pytest.raises(InputError) as err:
        op = make_projector(_geometry(), VolumeGrid((32, 32), 1.0), Device("cpu"))
        run_solver("rising", op, _sinogram(_geometry(), VolumeGrid((32, 32), 1.0)), {"model": "no_such_model"})
    assert err.value.field == "model"


def test_pipelines_use_identical_sgp_tv_parameters():
    """pipelines/rising.yaml runs sgp_tv with exactly the parameters of pipelines/sgp_tv.yaml (bar iterations),
    and the shipped model's training config used them too."""
    import yaml

    from recon_cli.learn.config import load_train_config
    from recon_cli.solvers.registry import SolverRef

    conv = SolverRef(**yaml.safe_load((REPO / "pipelines/sgp_tv.yaml").read_text())["solver"])
    rising = SolverRef(**yaml.safe_load((REPO / "pipelines/rising.yaml").read_text())["solver"]).parsed()
    cfg = load_train_config(REPO / "training/rising_sgp_tv_fan60.yaml")
    strip = lambda p: {k: v for k, v in p.items() if k != "iterations"}  # noqa: E731
    assert rising.iterative.name == conv.name == cfg.input.name == cfg.target.converged.name == "sgp_tv"
    assert strip(rising.iterative.params) == strip(conv.params) == strip(cfg.input.params)
    assert strip(cfg.target.converged.params) == strip(conv.params)
    assert conv.params["iterations"] == cfg.target.converged.params["iterations"] == 200
    assert rising.k == cfg.input.params["iterations"] == 30


def test_converged_targets_are_cached_on_their_own_and_reused_for_another_k(tmp_path):
    """Training pairs for k=2 and k=3 share the converged targets: the second config reads them from the cache."""
    from recon_cli.learn.datasets import build_dataset, plan_samples

    def cfg(k):
        raw = tiny_config("sgp_tv", tmp_path, converged_iterations=30)
        raw["input"]["params"]["iterations"] = k
        raw["data"].update(train=2, val=1)
        return config_from_dict(raw)

    first, info = build_dataset(cfg(2))
    assert info["computed"] == 3
    specs = [s for split in plan_samples(cfg(2)).values() for s in split]
    targets = [tmp_path / f"target_{s.target_key}.npz" for s in specs]
    assert all(p.is_file() for p in targets)
    # same target keys for k=3, different pair keys
    specs3 = [s for split in plan_samples(cfg(3)).values() for s in split]
    assert [s.target_key for s in specs3] == [s.target_key for s in specs]
    assert not {s.key for s in specs3} & {s.key for s in specs}
    # mark the cached targets: the k=3 pairs must take them from the cache instead of recomputing
    for p in targets:
        with np.load(p) as z:
            t = z["target"]
        np.savez(p, target=t + np.float32(1.0))
    second, info3 = build_dataset(cfg(3))
    assert info3["computed"] == 3
    np.testing.assert_array_equal(second["train"].targets, first["train"].targets + np.float32(1.0))
    assert not np.array_equal(second["train"].inputs, first["train"].inputs)


# ----------------------------------------------------------------------------- the shipped model


SHIPPED = REPO / "recon_cli" / "models" / "rising_sgp_tv_fan60.onnx"


@pytest.mark.parametrize("sample", ["shepp_logan_fan60.h5", "head_fan60.h5"])
def test_shipped_model_brings_the_iterate_closer_to_the_converged_solution(sample):
    """On the sample data, ||x_rising - x_conv|| < ||x_k - x_conv|| (x_conv: pipelines/sgp_tv.yaml's 200 iterations).

    Fails (does not skip) when the shipped model is missing: it is part of the package.
    """
    import yaml

    from recon_cli.io.hdf5 import read_sinogram
    from recon_cli.solvers.registry import SolverRef

    assert SHIPPED.is_file(), f"shipped model missing: {SHIPPED} (train: docs/models.md, rising_sgp_tv_fan60)"
    rising = SolverRef(**yaml.safe_load((REPO / "pipelines/rising.yaml").read_text())["solver"]).parsed()
    conv = SolverRef(**yaml.safe_load((REPO / "pipelines/sgp_tv.yaml").read_text())["solver"])
    sino = read_sinogram(REPO / "sample_data" / sample)
    op = make_projector(sino.geometry, sino.grid, Device("cpu"))
    params = rising.model_copy(update={"model": str(SHIPPED)})
    res = run_solver("rising", op, sino, params)
    assert res.info["mismatches"] == []
    x_k = run_solver("sgp_tv", op, sino, {**conv.params, "iterations": rising.k}).volume
    x_conv = run_solver("sgp_tv", op, sino, conv.params).volume
    err_rising = np.linalg.norm(res.volume - x_conv) / np.linalg.norm(x_conv)
    err_k = np.linalg.norm(x_k - x_conv) / np.linalg.norm(x_conv)
    assert err_rising < 0.9 * err_k, (err_rising, err_k)
