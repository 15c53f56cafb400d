"""RISING across an envelope (issue 14): sgp_tv's lam 'noise' rule, the envelope config, a tiny envelope
RISING model trained end to end through `recon train`, and the rising solver on geometries other than any
reference one, without allow_mismatch."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recon_cli.backend import Device
from recon_cli.errors import InputError
from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid
from recon_cli.learn.config import load_train_config
from recon_cli.networks import conditions_for, load_model
from recon_cli.phantoms import coule_phantom
from recon_cli.projectors import make_projector
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.registry import run_solver

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "rising_sgp_tv_envelope.yaml"
K = 4
TINY = {
    "name": "tiny_rising_env",
    "grid": {"shape": [32, 32], "voxel_size": 1.0},
    "envelope": {"geometry_types": ["parallel", "fanflat"], "n_views": [20, 40], "pixel_size_mm": [0.8, 1.6],
                 "grid": [16, 48], "I0": [1.0e4, 1.0e6], "gaussian_rel": [0.005, 0.02], "gaussian_fraction": 0.3,
                 "extra_channels": ["noise_level", "n_views"]},
    "data": {"sources": [{"kind": "anatomy"}, {"kind": "coule"}], "train": 6, "val": 2, "test": 0},
    "input": {"name": "sgp_tv", "params": {"iterations": K, "lam": "noise"}},
    "target": {"converged": {"name": "sgp_tv", "params": {"iterations": 40, "lam": "noise"}}},
    "model": {"depth": 2, "base_channels": 4, "residual_blocks": True},
    "training": {"epochs": 2, "batch_size": 3, "patch": 16, "threads": 1, "loss": {"kind": "mse"}},
}


def _case(geometry, grid, I0=1.0e5, seed=3):
    image = coule_phantom(grid.shape[0], np.random.default_rng(seed))
    sino = simulate_sinogram(image, grid.voxel_size, geometry, grid, I0=I0, seed=seed)
    return make_projector(geometry, grid, Device("cpu")), sino


def _rising_and_x_k(geometry, grid, model, I0=1.0e5):
    """(op, sino, rising params, rising's result, x_k: K sgp_tv iterations from zero) with ``model``, lam 'noise';
    rising ran without a mismatch and returned the grid's shape."""
    op, sino = _case(geometry, grid, I0=I0)
    params = {"pre_estimate": {"name": "sgp_tv", "params": {"lam": "noise"}}, "k": K, "model": str(model),
              "on_implausible": "ignore"}
    res = run_solver("rising", op, sino, params)
    assert res.info["mismatches"] == [] and res.volume.shape == grid.shape
    return op, sino, params, res, run_solver("sgp_tv", op, sino, {"lam": "noise", "iterations": K}).volume


def _parallel(n_views=30, spacing=1.0, count=64):
    return Parallel2D(angles=np.linspace(0, np.pi, n_views, endpoint=False), detector_spacing=spacing,
                      detector_count=count)


# ----------------------------------------------------------------------------- lam 'noise'


def test_lam_noise_follows_the_noise_std_over_the_pixel_size():
    grid = VolumeGrid((40, 40), 0.8)
    op, sino = _case(_parallel(), grid, I0=1.0e5)
    res = run_solver("sgp_tv", op, sino, {"lam": "noise", "iterations": 5})
    info = res.info
    y = np.asarray(sino.data, np.float64)
    std = math.sqrt(float(np.sum(np.exp(y))) / 1.0e5 / y.size)  # Poisson after -log, I0 from the metadata
    assert info["lam_rule"] == "noise" and info["lam_rule_noise_std"] == pytest.approx(std, rel=1e-4)
    assert info["lam"] == pytest.approx(400.0 * std / 0.8, rel=1e-4)
    # 4x the dose halves the noise std and so lam; the factor is a parameter
    _, sino4 = _case(_parallel(), grid, I0=4.0e5)
    lam4 = run_solver("sgp_tv", op, sino4, {"lam": "noise", "iterations": 5}).info["lam"]
    assert lam4 == pytest.approx(info["lam"] / 2, rel=0.02)
    lam_half = run_solver("sgp_tv", op, sino, {"lam": "noise", "lam_per_noise_std": 200.0, "iterations": 5}).info["lam"]
    assert lam_half == pytest.approx(info["lam"] / 2, rel=1e-6)
    # the same as giving that lam as a number
    fixed = run_solver("sgp_tv", op, sino, {"lam": info["lam"], "iterations": 5})
    np.testing.assert_allclose(res.volume, fixed.volume, rtol=1e-5, atol=1e-7)


def test_lam_noise_without_metadata_estimates_the_noise_from_the_sinogram():
    import dataclasses

    grid = VolumeGrid((64, 64), 1.0)
    op, sino = _case(_parallel(60, count=96), grid, I0=1.0e4)
    with_meta = run_solver("sgp_tv", op, sino, {"lam": "noise", "iterations": 3}).info
    bare = dataclasses.replace(sino, metadata={})
    estimated = run_solver("sgp_tv", op, bare, {"lam": "noise", "iterations": 3}).info
    assert "metadata" in with_meta["lam_rule_noise_source"] and "metadata" not in estimated["lam_rule_noise_source"]
    assert estimated["lam"] == pytest.approx(with_meta["lam"], rel=0.2)


# ----------------------------------------------------------------------------- the shipped config


def test_envelope_config_validates_and_pairs_one_solver_with_one_lam_rule():
    cfg = load_train_config(CONFIG)
    assert cfg.envelope is not None and cfg.envelope.extra_channels == ["noise_level", "n_views"]
    assert tuple(cfg.envelope.n_views) == (30, 360) and tuple(cfg.envelope.pixel_size_mm) == (0.3, 1.5)
    assert tuple(cfg.envelope.grid) == (128, 1024) and tuple(cfg.envelope.I0) == (1.0e4, 1.0e6)
    assert cfg.envelope.max_train_n <= 256
    target = cfg.target_spec()
    assert target["kind"] == "converged" and target["solver"]["name"] == cfg.input.name == "sgp_tv"
    conv = dict(target["solver"]["params"])
    k = cfg.input.params["iterations"]
    assert conv.pop("iterations") >= 5 * k  # RISING must be >= 5x faster than the converged solver
    assert {n: v for n, v in cfg.input.params.items() if n != "iterations"} == conv
    assert conv["lam"] == "noise"  # chosen without the converged solve


# ----------------------------------------------------------------------------- a tiny envelope model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from cli_helpers import train_via_cli

    out, _, _ = train_via_cli(tmp_path_factory.mktemp("rising_env"), TINY)
    return out / "tiny_rising_env.onnx"


def test_tiny_envelope_rising_model_states_its_envelope_and_target(tiny_model):
    meta = load_model(tiny_model).meta
    assert meta["envelope"]["n_views"] == [20, 40] and meta["envelope"]["canonical_pixel_size_mm"] == 1.0
    trained, target = meta["input"]["params"], meta["target"]["solver"]["params"]
    assert meta["input"]["name"] == meta["target"]["solver"]["name"] == "sgp_tv" and meta["target"]["kind"] == "converged"
    assert trained["iterations"] == K and target["iterations"] == 40 and trained["lam"] == target["lam"] == "noise"
    assert {n: v for n, v in trained.items() if n != "iterations"} == {n: v for n, v in target.items() if n != "iterations"}


GEOMETRIES = [
    (_parallel(25, 1.0, 64), VolumeGrid((40, 40), 0.8)),
    (FanFlat2D(angles=np.linspace(0, 2 * np.pi, 36, endpoint=False), detector_spacing=1.5, detector_count=48,
               source_origin=70.0, origin_detector=40.0), VolumeGrid((24, 24), 1.33)),
]


@pytest.mark.parametrize("geometry,grid", GEOMETRIES, ids=["parallel25_0.8mm", "fan36_1.33mm"])
def test_rising_runs_the_envelope_model_on_other_geometries_without_allow_mismatch(tiny_model, geometry, grid):
    op, sino, params, res, x_k = _rising_and_x_k(geometry, grid, tiny_model, I0=3.0e4)
    # the network applied (resampled to 1 mm, with its noise / view planes) to k iterations from zero
    model = load_model(tiny_model)
    cond = conditions_for(sino)
    # default 'native': the network on x_k's own grid, no resampling (its planes still say noise and views)
    expected = model.apply(x_k, voxel_size=grid.voxel_size, conditions=cond, native=True)
    np.testing.assert_array_equal(res.volume, expected)
    np.testing.assert_array_equal(expected, model.apply(x_k, voxel_size=1.0, conditions=cond))  # = at 1 mm
    assert np.all(np.isfinite(res.volume)) and not np.allclose(res.volume, x_k)
    for mode, kwargs in (("residual", {"residual": True}), ("image", {})):
        out = run_solver("rising", op, sino, {**params, "resample": mode}).volume
        np.testing.assert_array_equal(out, model.apply(x_k, voxel_size=grid.voxel_size, conditions=cond, **kwargs))
        assert not np.allclose(out, res.volume)  # the modes differ off the canonical pixel size


def test_residual_resampling_adds_the_canonical_correction_and_keeps_fine_detail(tiny_model):
    from recon_cli.networks import resample

    model = load_model(tiny_model)
    cond = {"noise_std": 3e-3, "n_views": 30}
    rng = np.random.default_rng(2)
    smooth = resample((0.02 * (1 + 0.2 * rng.random((8, 8)))).astype(np.float32), (64, 64))
    checker = 0.004 * (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)  # detail at 0.5 mm
    x = smooth + checker                                                          # 64 px of 0.5 mm: 32 mm
    res = model.apply(x, voxel_size=0.5, conditions=cond, residual=True)
    xc = resample(x, (32, 32))
    net_c = model.apply(xc, voxel_size=1.0, conditions=cond)          # the network on the canonical grid
    np.testing.assert_allclose(res, np.maximum(x + resample(net_c - xc, (64, 64)), 0), rtol=1e-5, atol=1e-6)
    plain = model.apply(x, voxel_size=0.5, conditions=cond)
    np.testing.assert_allclose(plain, resample(net_c, (64, 64)), rtol=1e-5, atol=1e-6)

    def detail(img):  # the checkerboard's amplitude: projection on the +-1 pattern
        return float(np.mean((img - img.mean()) * (2 * checker / 0.004 - 1)))

    assert detail(res) == pytest.approx(detail(x), rel=0.05) and abs(detail(plain)) < 0.1 * detail(x)
    # on the canonical grid itself both modes are the network's output
    np.testing.assert_allclose(model.apply(xc, voxel_size=1.0, conditions=cond, residual=True),
                               np.maximum(net_c, 0), rtol=1e-5, atol=1e-6)


def test_rising_refuses_outside_the_envelope_or_another_lam_naming_the_field(tiny_model):
    params = {"pre_estimate": {"name": "sgp_tv", "params": {"lam": "noise"}}, "k": K, "model": str(tiny_model)}
    op, sino = _case(_parallel(60, 1.0, 64), VolumeGrid((40, 40), 0.8))  # 60 views: outside 20-40
    with pytest.raises(InputError) as err:
        run_solver("rising", op, sino, params)
    assert err.value.field == "envelope.n_views"
    op, sino = _case(*GEOMETRIES[0])
    with pytest.raises(InputError) as err:
        run_solver("rising", op, sino, {**params, "pre_estimate": {"name": "sgp_tv", "params": {"lam": 10.0}}})
    assert err.value.field == "pre_estimate.params.lam"
    with pytest.raises(InputError) as err:
        run_solver("rising", op, sino, {**params, "k": K + 1})
    assert err.value.field == "k"


def test_native_grid_pairs_keep_the_drawn_pixel_and_the_model_runs_on_the_data_grid(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from recon_cli.learn.config import config_from_dict
    from recon_cli.learn.datasets import plan_samples
    from recon_cli.learn.train import train

    raw = json.loads(json.dumps(TINY))
    raw["name"] = "tiny_native"
    raw["envelope"]["native_grid"] = True
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    raw["training"]["loss"]["per_pair"] = "relative"
    cfg = config_from_dict(raw)
    acqs = [s.acquisition for s in plan_samples(cfg)["train"]]
    assert all(a["n"] == 32 and 0.8 * 0.99 <= a["pixel_size"] <= 1.6 * 1.01 for a in acqs)
    assert len({round(a["pixel_size"], 6) for a in acqs}) == len(acqs)  # the field (32 x pixel) varies
    result = train(cfg, out_dir=tmp_path / "out")
    path = result.paths["onnx"]
    model = load_model(path)
    _inference_reproduces_training(cfg, result, model)
    assert model.meta["envelope"]["canonical_pixel_size_mm"] is None and model.canonical_pixel_size is None
    # no resampling anywhere: the same output at any stated voxel size, and from rising without a mode
    geometry, grid = GEOMETRIES[0]
    _, sino, _, res, x_k = _rising_and_x_k(geometry, grid, path)
    cond = conditions_for(sino)
    np.testing.assert_array_equal(res.volume, model.apply(x_k, voxel_size=0.8, conditions=cond))
    np.testing.assert_array_equal(res.volume, model.apply(x_k, voxel_size=1.3, conditions=cond))


def _inference_reproduces_training(cfg, result, model):
    """The validation pairs through Model.apply (what rising runs: per-image scale, extra channels from the
    pair's noise and views, the data's own grid) give the training-time forward pass of the trained network
    (recon_cli.learn.train.predict on the training tensors) to 1e-5 of the image scale, and the validation
    PSNR the training recorded."""
    import torch

    from recon_cli.learn.datasets import build_dataset
    from recon_cli.learn.train import image_metrics, predict, to_tensors

    arrays, _ = build_dataset(cfg)
    val = arrays["val"]
    tensors = to_tensors(val, cfg, result.model.pad_multiple, torch.device("cpu"))
    expected = predict(result.model, tensors, 8)[:, 0].numpy() * tensors.scale[:, None, None]
    got = np.stack([model.apply(x, voxel_size=0.5, conditions={"noise_std": float(c[0]), "n_views": int(c[1])},
                                native=True) for x, c in zip(val.inputs, val.conditions)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
    assert image_metrics(got, val.targets)["psnr"] == pytest.approx(result.metadata["metrics"]["val"]["psnr"],
                                                                   abs=1e-3)
