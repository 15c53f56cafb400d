"""Geometry-general training and inference: envelope pairs, real slices with augmentation, the
reserved-file guard, resampling to a canonical pixel size, per-image normalisation, extra channels."""
from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import pytest

from recon_cli.errors import ConfigError, InputError
from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid
from recon_cli.learn.config import config_from_dict
from recon_cli.networks import canonical_shape, image_scale, load_model, resample

TINY_ENVELOPE = {
    "name": "tiny_env",
    "grid": {"shape": [32, 32], "voxel_size": 1.0},          # canonical: 32 mm field of 1 mm pixels
    "envelope": {"geometry_types": ["parallel", "fanflat"], "n_views": [20, 40], "pixel_size_mm": [0.8, 1.6],
                 "grid": [16, 48], "I0": [1.0e4, 1.0e6], "gaussian_rel": [0.005, 0.02], "gaussian_fraction": 0.3,
                 "extra_channels": ["noise_level", "n_views"]},
    "data": {"sources": [{"kind": "anatomy"}, {"kind": "dicom", "names": ["CT_small.dcm"]}],
             "train": 6, "val": 2, "test": 0},
    "input": {"name": "fbp"},
    "model": {"depth": 2, "base_channels": 4},
    "training": {"epochs": 1, "batch_size": 3, "patch": 16, "threads": 1},
}


def _raw(cache, **changes):
    raw = json.loads(json.dumps(TINY_ENVELOPE))
    raw["data"]["cache_dir"] = str(cache)
    raw.update(changes)
    return raw


# ----------------------------------------------------------------------------- pure parts


def test_resample_round_trips_shapes_and_keeps_units():
    rng = np.random.default_rng(0)
    flat = np.full((3, 50, 70), 0.0192, np.float32)
    for shape in [(25, 35), (100, 140), (37, 41)]:
        there = resample(flat, shape)
        assert there.shape == (3, *shape) and there.dtype == np.float32
        np.testing.assert_allclose(there, 0.0192, rtol=1e-6)  # a constant stays that constant (1/mm)
        np.testing.assert_allclose(resample(there, (50, 70)), 0.0192, rtol=1e-6)
    # a smooth image survives a 2x down/up round trip closely; noise above the new Nyquist is filtered out
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    smooth = (0.02 * (1 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy))).astype(np.float32)
    back = resample(resample(smooth, (32, 32)), (64, 64))
    assert np.abs(back - smooth)[4:-4, 4:-4].max() < 0.01 * 0.02
    noise = rng.standard_normal((64, 64)).astype(np.float32)
    assert resample(noise, (16, 16)).std() < 0.5 * noise.std()  # anti-aliased
    assert canonical_shape((512, 512), 0.5, 1.0) == (256, 256) and canonical_shape((100, 60), 1.5, 1.0) == (150, 90)


def test_image_scale_is_per_slice_and_robust():
    stack = np.zeros((2, 20, 20), np.float32)
    stack[0, 5:15, 5:15] = 0.02
    stack[1, 5:15, 5:15] = 0.04
    stack[1, 0, 0] = 5.0  # one hot pixel does not set the scale
    np.testing.assert_allclose(image_scale(stack, fallback=0.0384), [0.02, 0.04], rtol=1e-5)
    assert image_scale(np.zeros((1, 8, 8), np.float32), fallback=0.0384)[0] == pytest.approx(0.0384)


def _reserved_files() -> list[Path]:
    """The reserved files shipped by pydicom / pydicom-data, found by their content digests (the project
    never writes their names)."""
    import hashlib

    import pydicom.data

    from recon_cli.learn.config import RESERVED_CONTENT_DIGESTS
    from recon_cli.learn.real_slices import locate

    folders = {Path(pydicom.data.__file__).parent / "test_files", locate("bad_sequence.dcm").parent}
    return sorted(p for folder in folders for p in folder.glob("*.dcm")
                  if hashlib.sha256(p.read_bytes()).hexdigest() in RESERVED_CONTENT_DIGESTS)


def test_reserved_acceptance_files_are_refused_as_training_sources(tmp_path):
    from recon_cli.learn.real_slices import load_slice, refuse_reserved

    reserved = _reserved_files()
    assert len(reserved) == 5, reserved  # pydicom's one and pydicom-data's four
    names = [p.name for p in reserved]
    # another file of the reserved prefix pattern: the part before the first "_" kept, the rest changed
    names += [n[: n.index("_") + 1] + "OTHER.dcm" for n in names if "_" in n][:1]
    for bad in names + [n.upper() for n in names] + ["/data/x/" + n for n in names]:
        for source in ({"kind": "dicom", "names": [bad]}, {"kind": "dicom", "paths": [bad]},
                       {"kind": "hdf5", "paths": [bad]}):
            raw = _raw(tmp_path)
            raw["data"]["sources"] = [source]
            with pytest.raises(ConfigError) as err:
                config_from_dict(raw)
            assert "reserved for acceptance tests" in err.value.one_line()
        with pytest.raises(InputError):
            refuse_reserved(bad)
        with pytest.raises(InputError):
            load_slice(bad)
    # a renamed copy is refused by its contents
    copy = tmp_path / "renamed_slice.dcm"
    copy.write_bytes(reserved[0].read_bytes())
    with pytest.raises(InputError, match="its contents"):
        load_slice(str(copy))
    raw = _raw(tmp_path)
    raw["data"]["sources"] = [{"kind": "dicom", "paths": [str(copy)]}]
    with pytest.raises(ConfigError):
        config_from_dict(raw)
    refuse_reserved("CT_small.dcm")  # allowed ones pass
    refuse_reserved(str(Path(__import__("pydicom").data.get_testdata_file("CT_small.dcm"))))


def test_default_real_slices_are_the_three_allowed_files(tmp_path):
    from recon_cli.learn.real_slices import locate

    raw = _raw(tmp_path)
    raw["data"]["sources"] = [{"kind": "dicom"}]
    cfg = config_from_dict(raw)
    assert cfg.data.sources[0].names == ["bad_sequence.dcm", "explicit_VR-UN.dcm", "CT_small.dcm"]
    try:
        import data_store  # noqa: F401  (pydicom-data)
    except ImportError:
        pytest.skip("pydicom-data not installed")
    for name in cfg.data.sources[0].names:
        assert locate(name).is_file()


def test_augmentation_is_deterministic_varied_and_physical():
    from recon_cli.learn.config import Augment
    from recon_cli.learn.real_slices import augment_slice, close_truncated_body, load_slice, locate

    mu, spacing = load_slice(str(locate("CT_small.dcm")))
    a = augment_slice(mu, spacing, 64, 1.5, Augment(), np.random.default_rng(1))
    assert a.shape == (64, 64) and a.dtype == np.float32 and np.all(np.isfinite(a)) and a.min() >= 0
    assert np.array_equal(a, augment_slice(mu, spacing, 64, 1.5, Augment(), np.random.default_rng(1)))
    b = augment_slice(mu, spacing, 64, 1.5, Augment(), np.random.default_rng(2))
    assert not np.allclose(a, b)
    # CT_small's head is cut by its border: it gets an elliptical outline (corners air, centre kept)
    closed = close_truncated_body(np.asarray(mu))
    assert closed[0, 0] == 0 and mu[0, 0] > 0 and np.array_equal(closed[64, 64], mu[64, 64])
    # without augmentation: the (closed) slice on the new grid, same total attenuation (area x mean)
    plain = Augment(rotate=False, flip=False, scale=(1.0, 1.0), crop=False, intensity=0, window=0, elastic=0)
    c = augment_slice(mu, spacing, 64, 1.5, plain, np.random.default_rng(3))
    assert c.sum() * 1.5**2 == pytest.approx(float(closed.sum()) * spacing**2, rel=0.03)
    assert a[0, 0] == 0  # air around the head
    abdomen = np.asarray(load_slice(str(locate("explicit_VR-UN.dcm")))[0])
    assert np.array_equal(close_truncated_body(abdomen), abdomen)  # a whole body is left as it is


def test_envelope_pairs_draw_geometries_across_the_envelope(tmp_path):
    from recon_cli.learn.datasets import acquisition_setup, plan_samples

    raw = _raw(tmp_path)
    raw["data"]["train"] = 40
    cfg = config_from_dict(raw)
    assert cfg.model.in_channels == 3
    acqs = [s.acquisition for s in plan_samples(cfg)["train"]]
    assert {a["type"] for a in acqs} == {"parallel", "fanflat"}
    assert all(20 <= a["n_views"] <= 40 and 0.8 * 0.99 <= a["pixel_size"] <= 1.6 * 1.01 for a in acqs)
    assert any("gaussian_rel" in a for a in acqs) and any("I0" in a for a in acqs)
    assert all(a["n"] * a["pixel_size"] == pytest.approx(32.0) for a in acqs)  # the canonical field of view
    assert acqs == [s.acquisition for s in plan_samples(cfg)["train"]]  # deterministic
    fan = next(a for a in acqs if a["type"] == "fanflat")
    geometry, grid = acquisition_setup(fan)
    assert isinstance(geometry, FanFlat2D) and geometry.n_angles == fan["n_views"] and grid.shape == (fan["n"],) * 2
    # the detector sees the whole field: its half-width covers the corners' projection
    for a in acqs:
        geometry, grid = acquisition_setup(a)
        half = geometry.detector_count * geometry.detector_spacing / 2
        mag = getattr(geometry, "magnification", 1.0)
        assert half >= grid.shape[0] * grid.voxel_size / np.sqrt(2) * mag


# ----------------------------------------------------------------------------- a tiny envelope model


@pytest.fixture(scope="module")
def envelope_model(tmp_path_factory):
    """`recon train` on the tiny envelope config through the CLI: the model's path."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import yaml
    from click.testing import CliRunner

    from recon_cli.cli.main import cli

    root = tmp_path_factory.mktemp("learn_env")
    cfg_path = root / "tiny_env.yaml"
    cfg_path.write_text(yaml.safe_dump(_raw(root / "cache")))
    result = CliRunner().invoke(cli, ["-q", "train", str(cfg_path), "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    return root / "out" / "tiny_env.onnx"


def test_envelope_model_metadata_states_its_envelope(envelope_model):
    meta = load_model(envelope_model).meta
    env = meta["envelope"]
    assert env["geometry_types"] == ["parallel", "fanflat"] and env["n_views"] == [20, 40]
    assert env["pixel_size_mm"] == [0.8, 1.6] and env["I0"] == [1.0e4, 1.0e6] and env["canonical_pixel_size_mm"] == 1.0
    assert env["sigma"] is not None and env["sigma"][0] < env["sigma"][1]
    assert meta["input_channels"] == ["image", "noise_level", "n_views"] and meta["normalization"]["mode"] == "per_image"
    assert meta["geometry"] is None and meta["data"]["sources"][1]["kind"] == "dicom"


def test_envelope_model_resamples_round_trip_in_units_and_matches_torch(envelope_model):
    import torch

    from recon_cli.learn.train import load_torch_model
    from recon_cli.networks import condition_value

    model = load_model(envelope_model)
    rng = np.random.default_rng(5)
    x = (0.0192 * (1 + 0.1 * rng.standard_normal((48, 48)))).astype(np.float32)  # 48 px of 0.667 mm = 32 mm
    cond = {"noise_std": 1e-2 ** 1.5, "n_views": 30}
    y = model.apply(x, voxel_size=32 / 48, conditions=cond)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    # what apply must do, written out: resample to 32 x 32, divide by the scale, network with the planes, back
    xc = resample(x, (32, 32))
    s = image_scale(xc[None], fallback=0.0384)[0]
    planes = [xc / s] + [np.full_like(xc, condition_value(n, cond)) for n in ("noise_level", "n_views")]
    net, _ = load_torch_model(envelope_model.with_suffix(".pt"))
    with torch.no_grad():
        out = net(torch.from_numpy(np.stack(planes)[None]))[0, 0].numpy() * s
    np.testing.assert_allclose(y, resample(out, (48, 48)), rtol=1e-4, atol=1e-6)
    # units: the output is in 1/mm, about the input's level (a 1-epoch network starts near the identity)
    assert 0.5 < float(np.median(y)) / 0.0192 < 2.0
    # a stack and a single slice agree; doubling the input doubles the output (per-image normalisation)
    stack = model.apply(np.stack([x, 2 * x]), voxel_size=32 / 48, conditions=cond)
    np.testing.assert_allclose(stack[0], y, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stack[1], 2 * y, rtol=1e-4, atol=1e-7)
    with pytest.raises(InputError) as err:
        model.apply(x)
    assert err.value.field == "voxel_size"


def test_envelope_model_runs_in_the_unet_solver_on_any_geometry_inside(envelope_model):
    from recon_cli.backend import Device
    from recon_cli.phantoms import coule_phantom
    from recon_cli.projectors import make_projector
    from recon_cli.simulate import simulate_sinogram
    from recon_cli.solvers.registry import run_solver

    for geometry, grid in [
        (Parallel2D(angles=np.linspace(0, np.pi, 25, endpoint=False), detector_spacing=1.0, detector_count=64),
         VolumeGrid((40, 40), 0.8)),
        (FanFlat2D(angles=np.linspace(0, 2 * np.pi, 36, endpoint=False), detector_spacing=1.5, detector_count=48,
                   source_origin=70.0, origin_detector=40.0), VolumeGrid((24, 24), 1.33))]:
        sino = simulate_sinogram(coule_phantom(grid.shape[0], np.random.default_rng(1)), grid.voxel_size, geometry,
                                 grid, I0=1e5, seed=1)
        op = make_projector(geometry, grid, Device("cpu"))
        res = run_solver("unet", op, sino, {"model": str(envelope_model)})
        assert res.volume.shape == grid.shape and np.all(np.isfinite(res.volume))
        assert res.info["mismatches"] == [] and res.info["guard_decision"] in ("accepted", "fallback")
    outside = Parallel2D(angles=np.linspace(0, np.pi, 60, endpoint=False), detector_spacing=1.0, detector_count=64)
    with pytest.raises(InputError) as err:
        run_solver("unet", make_projector(outside, VolumeGrid((40, 40), 0.8), Device("cpu")),
                   simulate_sinogram(np.zeros((40, 40), np.float32), 0.8, outside, VolumeGrid((40, 40), 0.8)),
                   {"model": str(envelope_model)})
    assert err.value.field == "envelope.n_views"
