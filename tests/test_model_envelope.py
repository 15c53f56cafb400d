"""Model envelopes: the fit check with tolerances, ranged envelopes, old metadata, the override."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from recon_cli.cli.main import main
from recon_cli.errors import InputError
from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid
from recon_cli.model_envelope import ANGLE_TOLERANCE, envelope_mismatches, envelope_of
from recon_cli.networks import Model, load_model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("postproc_fan60", "svtv_prior_fan60", "rising_sgp_tv_fan60")


def _float32_copy(meta: dict) -> tuple[FanFlat2D, VolumeGrid]:
    """The trained geometry and grid as a scanner file storing float32 would give them back."""
    attrs = meta["geometry"]["attrs"]
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    geometry = FanFlat2D(angles=np.asarray(meta["geometry"]["angles"], np.float32).astype(np.float64),
                         detector_spacing=f32(attrs["detector_spacing"]), detector_count=attrs["detector_count"],
                         source_origin=f32(attrs["source_origin"]), origin_detector=f32(attrs["origin_detector"]))
    return geometry, VolumeGrid(tuple(meta["grid"]["shape"]), f32(meta["grid"]["voxel_size"]))


@pytest.mark.parametrize("name", SHIPPED)
def test_float32_copy_of_the_trained_geometry_fits_the_shipped_models(name):
    model = load_model(name)
    geometry, grid = _float32_copy(model.meta)
    exact = np.asarray(model.meta["geometry"]["angles"])
    assert 1e-8 < np.max(np.abs(geometry.angles - exact)) < ANGLE_TOLERANCE  # really a float32 copy
    assert model.check_fits(geometry, grid, noise={"I0": float(np.float32(1.0e5))}) == []
    # angles 2e-5 rad off are another geometry: refused, naming the field and the size of the difference
    shifted = FanFlat2D(angles=exact + 2e-5, detector_spacing=1.2, detector_count=512, source_origin=595.0,
                        origin_detector=490.0)
    with pytest.raises(InputError) as err:
        model.check_fits(shifted, grid)
    assert err.value.field == "geometry" and "angles differ by up to 2e-05 rad" in err.value.message


def test_old_metadata_without_an_envelope_becomes_a_one_point_envelope():
    angles = np.linspace(0, np.pi, 30, endpoint=False)
    meta = {"geometry": {"attrs": {"type": "parallel", "detector_spacing": 1.0, "detector_count": 48},
                         "angles": angles.tolist()},
            "grid": {"shape": [32, 32], "voxel_size": 1.0}, "noise": {"I0": 1.0e5}}
    env = envelope_of(meta)
    assert env["n_views"] == [30, 30] and env["pixel_size_mm"] == [1.0, 1.0] and env["grid_shape"] == [32, 32]
    assert env["noise_trained"] == {"I0": 1.0e5}
    grid = VolumeGrid((32, 32), 1.0)
    same = Parallel2D(angles=angles.astype(np.float32), detector_spacing=np.float32(1.0), detector_count=48)
    assert envelope_mismatches(env, same, grid, {"I0": 1.9e5}) == []
    other = Parallel2D(angles=angles[:20], detector_spacing=1.0, detector_count=48)
    fields = [f for f, _ in envelope_mismatches(env, other, VolumeGrid((32, 32), 0.5), {"I0": 1e3})]
    assert fields == ["grid", "geometry", "noise"]
    # noiseless training data: a noisy input is another noise
    assert [f for f, _ in envelope_mismatches(envelope_of({**meta, "noise": {}}), same, grid, {"I0": 1e5})] == ["noise"]


def _ranged_model(tmp_path, **envelope) -> Model:
    env = {"geometry_types": ["parallel", "fanflat"], "n_views": [30, 360], "grid": [128, 1024],
           "pixel_size_mm": [0.3, 1.5], "I0": [1e4, 1e6], "sigma": None, "canonical_pixel_size_mm": 1.0, **envelope}
    meta = {"format": "recon-cli-model/1", "normalization": {"input_scale": 0.0384}, "envelope": env}
    return Model(tmp_path / "ranged.onnx", meta, session=None)


def _fan(n_views):
    return FanFlat2D(angles=np.linspace(0, 2 * np.pi, n_views, endpoint=False), detector_spacing=1.0,
                     detector_count=400, source_origin=500.0, origin_detector=400.0)


def test_ranged_envelope_accepts_inside_and_names_the_field_outside(tmp_path, caplog):
    model = _ranged_model(tmp_path)
    inside = [(_fan(30), VolumeGrid((128, 128), 1.5), {"I0": 1e4}),
              (_fan(360), VolumeGrid((1024, 1024), 0.3), {"I0": float(np.float32(1e6))}),
              (Parallel2D(angles=np.linspace(0, np.pi, 97, endpoint=False), detector_spacing=0.5,
                          detector_count=300), VolumeGrid((200, 300), 0.7), {}),
              (_fan(60), VolumeGrid((256, 256), 1.0), None)]
    for geometry, grid, noise in inside:
        assert model.check_fits(geometry, grid, noise=noise) == []
    cases = [((_fan(20), VolumeGrid((256, 256), 1.0), {"I0": 1e5}), "envelope.n_views", "20 views"),
             ((_fan(400), VolumeGrid((256, 256), 1.0), {"I0": 1e5}), "envelope.n_views", "30-360"),
             ((_fan(60), VolumeGrid((64, 64), 1.0), {"I0": 1e5}), "envelope.grid", "64x64"),
             ((_fan(60), VolumeGrid((256, 256), 2.0), {"I0": 1e5}), "envelope.pixel_size_mm", "2 mm"),
             ((_fan(60), VolumeGrid((256, 256), 1.0), {"I0": 1e3}), "envelope.I0", "I0=1000"),
             ((_fan(60), VolumeGrid((256, 256), 1.0), {"sigma": 0.01}), "envelope.sigma", "Poisson"),
             ]
    for (geometry, grid, noise), field, text in cases:
        with pytest.raises(InputError) as err:
            model.check_fits(geometry, grid, noise=noise)
        line = err.value.one_line()
        assert err.value.field == field and text in err.value.message, line
        assert "\n" not in line and "allow_mismatch" in line and "ranged.onnx" in line
    # allow_mismatch: warnings instead of the error, the mismatches returned for the record
    caplog.set_level(logging.WARNING)
    found = model.check_fits(_fan(20), VolumeGrid((256, 256), 2.0), override=True)
    assert [f for f, _ in found] == ["envelope.pixel_size_mm", "envelope.n_views"]
    assert "outside its training conditions" in caplog.text
    # a Gaussian-noise envelope: sigma inside passes, Poisson data is named
    gauss = _ranged_model(tmp_path, I0=None, sigma=[1e-3, 1e-2])
    assert gauss.check_fits(_fan(60), VolumeGrid((256, 256), 1.0), noise={"sigma": 5e-3}) == []
    with pytest.raises(InputError) as err:
        gauss.check_fits(_fan(60), VolumeGrid((256, 256), 1.0), noise={"I0": 1e5})
    assert err.value.field == "envelope.I0"
    # a geometry type outside the list
    fan_only = _ranged_model(tmp_path, geometry_types=["fanflat"])
    with pytest.raises(InputError) as err:
        fan_only.check_fits(inside[2][0], VolumeGrid((256, 256), 1.0))
    assert err.value.field == "envelope.geometry_types"


def test_recon_run_outside_the_envelope_exits_2_with_one_line_and_allow_mismatch_runs(tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "o.h5"
    args = ["-q", "run", "pipelines/unet.yaml", "-i", "sample_data/shepp_logan_parallel180.h5", "-o", str(out),
            "--set", "output.formats=[hdf5]", "--set", "solver.params.model=postproc_fan60"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(lines) == 1, err
    assert "postproc_fan60.onnx" in lines[0] and "geometry" in lines[0] and not out.exists()
    with pytest.raises(SystemExit) as exc:
        main([*args, "--set", "solver.params.allow_mismatch=true"])
    assert exc.value.code == 0, capsys.readouterr().err
    with h5py.File(out, "r") as f:  # the guard's residuals and decision are recorded
        metrics, info = dict(f["metrics"].attrs), dict(f["info"].attrs)
        assert metrics["guard_residual_network"] > 0 and metrics["guard_fallback"] in (0, 1)
        assert info["guard_decision"] in ("accepted", "fallback")
        assert np.all(np.isfinite(f["reconstruction"][...]))


def test_the_shipped_unet_pipeline_runs_another_geometry_without_allow_mismatch(tmp_path, monkeypatch):
    """pipelines/unet.yaml (the envelope model) on the 180-view parallel-beam sample, which the single-geometry
    model refuses (above): it runs, and beats FBP (Hann) on the same data (measured 42.66 vs 25.88 dB)."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "u.h5"
    fbp = tmp_path / "f.h5"
    sample = "sample_data/shepp_logan_parallel180.h5"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", "pipelines/unet.yaml", "-i", sample, "-o", str(out), "--set", "output.formats=[hdf5]"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", "pipelines/fbp.yaml", "-i", sample, "-o", str(fbp), "--set", "output.formats=[hdf5]",
              "--set", "solver.params.filter=hann"])
    assert exc.value.code == 0
    with h5py.File(out, "r") as f, h5py.File(fbp, "r") as g:
        assert dict(f["info"].attrs)["guard_decision"] == "accepted"
        assert float(f["metrics"].attrs["psnr"]) > float(g["metrics"].attrs["psnr"]) + 3.0


def test_trained_single_geometry_model_writes_its_envelope(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from test_learn import TINY

    from recon_cli.learn.config import config_from_dict
    from recon_cli.learn.train import train

    raw = json.loads(json.dumps(TINY))
    raw["data"].update(cache_dir=str(tmp_path / "cache"), train=4, val=1, test=0)
    raw["training"]["epochs"] = 1
    res = train(config_from_dict(raw), out_dir=tmp_path / "out")
    env = res.metadata["envelope"]
    assert env["geometry_types"] == ["parallel"] and env["n_views"] == [30, 30] and env["grid_shape"] == [32, 32]
    assert len(env["trained_geometry"]["angles"]) == 30
    model = load_model(res.paths["onnx"])
    assert model.envelope == env
    grid = VolumeGrid((32, 32), 1.0)
    f32 = Parallel2D(angles=np.linspace(0, np.pi, 30, endpoint=False).astype(np.float32), detector_spacing=1.0,
                     detector_count=48)
    assert model.check_fits(f32, grid, noise={"I0": 1e5}) == []
