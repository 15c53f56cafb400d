"""The shipped envelope post-processing model (issue 14): small, states its envelope and held-out data,
runs on scanners it was never given explicitly, and improves on FBP (Hann) on an unseen image."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from recon_cli.backend import Device  # noqa: E402
from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid  # noqa: E402
from recon_cli.metrics import compute_metrics  # noqa: E402
from recon_cli.networks import PACKAGED_MODELS, load_model  # noqa: E402
from recon_cli.projectors import make_projector  # noqa: E402
from recon_cli.solvers.registry import run_solver  # noqa: E402

NAME = "postproc_envelope"


def test_shipped_model_is_small_and_states_its_envelope_and_held_out_data():
    path = PACKAGED_MODELS / f"{NAME}.onnx"
    assert path.is_file() and path.stat().st_size < 5 * 2**20
    meta = load_model(NAME).meta
    env = meta["envelope"]
    assert env["geometry_types"] == ["parallel", "fanflat"] and env["n_views"] == [30, 360]
    assert env["pixel_size_mm"] == [0.3, 1.5] and env["grid"] == [128, 1024] and env["I0"] == [1.0e4, 1.0e6]
    assert env["canonical_pixel_size_mm"] == 1.0
    names = [n for s in meta["data"]["sources"] if s["kind"] == "dicom" for n in s["names"] + s["paths"]]
    assert names and "explicit_VR-UN.dcm" not in names  # the suite's abdomen slice is never a training image
    assert "explicit_VR-UN.dcm" in meta["card"]["held_out_images"]
    assert meta["card"]["suite"]["psnr_db"] and meta["card"]["regenerate"].startswith("recon train")


def _case(geometry, n: int, voxel: float, seed: int):
    from recon_cli.learn.anatomy import anatomy_phantom
    from recon_cli.simulate import simulate_sinogram

    grid = VolumeGrid((n, n), voxel)
    image = anatomy_phantom(2 * n, np.random.default_rng(seed))  # integer seed: never a training image
    sino = simulate_sinogram(image, voxel / 2, geometry, grid, I0=1e5, seed=seed)
    return make_projector(geometry, grid, Device("cpu")), sino


@pytest.mark.parametrize("geometry, n, voxel", [
    (Parallel2D(angles=np.linspace(0, np.pi, 90, endpoint=False), detector_spacing=1.5, detector_count=184), 128, 1.5),
    (FanFlat2D(angles=np.linspace(0, 2 * np.pi, 45, endpoint=False), detector_spacing=1.6, detector_count=256,
               source_origin=500.0, origin_detector=300.0), 160, 1.0),
], ids=["parallel90_128_1.5mm", "fan45_160_1mm"])
def test_unet_beats_fbp_on_an_unseen_image_in_two_scanners_inside_the_envelope(geometry, n, voxel):
    op, sino = _case(geometry, n, voxel, seed=4242)
    res = run_solver("unet", op, sino, {"model": NAME})
    assert res.info["mismatches"] == [] and res.info["guard_decision"] == "accepted"
    fbp = run_solver("fbp", op, sino, {"filter": "hann"}).volume
    dr = float(sino.reference.max() - sino.reference.min())
    psnr_net = compute_metrics(res.volume, sino.reference, names=["psnr"], data_range=dr)["psnr"]
    psnr_fbp = compute_metrics(fbp, sino.reference, names=["psnr"], data_range=dr)["psnr"]
    assert psnr_net > psnr_fbp + 0.5  # measured +1.3 (parallel) and +7.1 dB (fan)
    assert np.all(np.isfinite(res.volume)) and res.volume.shape == (n, n)


def test_a_float32_copy_of_a_geometry_fits_and_outside_the_envelope_is_refused():
    from recon_cli.errors import InputError

    model = load_model(NAME)
    g = FanFlat2D(angles=np.linspace(0, 2 * np.pi, 60, endpoint=False), detector_spacing=1.2, detector_count=512,
                  source_origin=595.0, origin_detector=490.0)
    g32 = dataclasses.replace(g, angles=np.asarray(g.angles, np.float32).astype(np.float64))
    assert model.check_fits(g32, VolumeGrid((256, 256), 1.0), noise={"I0": 1e5}) == []
    with pytest.raises(InputError) as err:
        model.check_fits(dataclasses.replace(g, angles=g.angles[:20]), VolumeGrid((256, 256), 1.0))
    assert err.value.field == "envelope.n_views"
    with pytest.raises(InputError) as err:
        model.check_fits(g, VolumeGrid((256, 256), 2.0))
    assert err.value.field == "envelope.pixel_size_mm"


# ----------------------------------------------------------------------------- second design: TV (lam auto) input
TV_NAME = "postproc_tv_envelope"


def test_tv_input_model_is_small_states_the_same_envelope_and_holds_out_the_abdomen():
    from pathlib import Path

    from recon_cli.learn.config import load_train_config

    path = PACKAGED_MODELS / f"{TV_NAME}.onnx"
    assert path.is_file() and path.stat().st_size < 5 * 2**20
    model = load_model(TV_NAME)
    assert model.trained_input["name"] == "tv" and model.trained_input["params"]["lam"] == "auto"
    env, env_fbp = model.meta["envelope"], load_model(NAME).meta["envelope"]
    for key in ("geometry_types", "n_views", "pixel_size_mm", "grid", "I0", "canonical_pixel_size_mm"):
        assert env[key] == env_fbp[key], key  # the same envelope as the FBP-input design
    names = [n for s in model.meta["data"]["sources"] if s["kind"] == "dicom" for n in s["names"] + s["paths"]]
    assert names and "explicit_VR-UN.dcm" not in names
    cfg = load_train_config(Path(__file__).resolve().parents[1] / "training" / f"{TV_NAME}.yaml")
    assert cfg.input.name == "tv" and cfg.input.params["lam"] == "auto" and cfg.model.global_skip
    dicom = [n for s in cfg.data.sources if s.kind == "dicom" for n in s.names]
    assert dicom and "explicit_VR-UN.dcm" not in dicom
    assert "explicit_VR-UN.dcm" in model.meta["card"]["held_out_images"]
    assert model.meta["card"]["suite"]["psnr_db"] and model.meta["card"]["regenerate"].startswith("recon train")


def test_tv_input_unet_on_an_unseen_image_is_far_above_fbp_and_near_but_not_above_its_tv_input():
    """Measured, not wished: on this unseen phantom the TV-input network is 0.4 dB BELOW its own TV (lam
    auto) input (38.75 vs 39.16 dB) and 9 dB above FBP (Hann). It is therefore a documented design, not
    the shipped default (benchmarks/results/learned.md); this pins that state so a retrained model that
    changes it is noticed."""
    geometry = FanFlat2D(angles=np.linspace(0, 2 * np.pi, 45, endpoint=False), detector_spacing=1.6,
                         detector_count=256, source_origin=500.0, origin_detector=300.0)
    op, sino = _case(geometry, 160, 1.0, seed=4242)
    res = run_solver("unet", op, sino, {"model": TV_NAME, "on_implausible": "ignore"})
    assert res.info["mismatches"] == [] and res.info["input_solver"] == "tv"
    tv = run_solver("tv", op, sino, {"lam": "auto"}).volume
    fbp = run_solver("fbp", op, sino, {"filter": "hann"}).volume
    dr = float(sino.reference.max() - sino.reference.min())
    psnr = {k: compute_metrics(v, sino.reference, names=["psnr"], data_range=dr)["psnr"]
            for k, v in (("net", res.volume), ("tv", tv), ("fbp", fbp))}
    assert psnr["net"] > psnr["fbp"] + 3.0
    assert abs(psnr["net"] - psnr["tv"]) < 1.0  # measured -0.41 dB: no gain over its input here
    assert np.all(np.isfinite(res.volume)) and res.volume.shape == (160, 160)
