"""SV-TV with the shipped learned pre-estimate (svtv_prior_fan60) on the sample data.

The shipped model must be there: a missing model fails these tests (no skip). The learned run on
the real-anatomy sample goes through the real CLI (`recon run pipelines/svtv_learned.yaml`) in a
subprocess in which `import torch` raises ImportError, as in an installation without PyTorch.

What holds (benchmarks/results/learned.md, settings of pipelines/svtv_learned.yaml): the learned
pre-estimate beats the FBP pre-estimates in PSNR and SSIM on both samples, and beats tv.yaml on the
Shepp-Logan sample; on the real CT slice tv.yaml is still 0.2 dB better (held here within 0.3 dB).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recon_cli.backend import Device
from recon_cli.geometry import fingerprint, reference_geometry
from recon_cli.io.hdf5 import read_sinogram
from recon_cli.metrics import compute_metrics
from recon_cli.networks import PACKAGED_MODELS, load_model
from recon_cli.projectors import make_projector
from recon_cli.solvers.registry import run_solver

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "svtv_learned.yaml"
SAMPLE = REPO / "sample_data" / "head_fan60.h5"
SHIPPED = ("svtv_prior_fan60", "postproc_fan60")
METRICS = ("psnr", "ssim")

# Measured (benchmarks/results/learned.md): head 38.11 dB / 0.9505, Shepp-Logan 41.18 dB / 0.9945.
FLOORS = {"head_fan60.h5": {"psnr": 38.0, "ssim": 0.949}, "shepp_logan_fan60.h5": {"psnr": 41.0, "ssim": 0.994}}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_exists_and_fits_the_reference_geometry(name):
    onnx = PACKAGED_MODELS / f"{name}.onnx"
    assert onnx.is_file(), f"shipped model {onnx} is missing: train it (docs/models.md)"
    assert onnx.stat().st_size < 20 * 2**20
    model = load_model(name)  # by bare name: the packaged folder
    assert model.path == onnx.resolve()
    geometry, grid = reference_geometry()
    assert model.meta["geometry"]["fingerprint"] == fingerprint(geometry, grid)
    assert model.meta["grid"] == {"shape": [256, 256], "voxel_size": 1.0}
    assert model.meta["noise"]["I0"] == 1.0e5
    assert model.meta["input"]["name"] == "fbp"
    assert model.check_fits(geometry, grid, noise={"I0": 1.0e5}) == []


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """`recon run pipelines/svtv_learned.yaml` with torch blocked: (JSON report, hook report, output file)."""
    out = tmp_path_factory.mktemp("svtv_learned")
    output, marker = out / "svtv_learned.h5", out / "hook.json"
    script = textwrap.dedent(f"""
        import atexit, json, sys
        class NoTorch:  # a finder refusing torch: `import torch` raises ImportError
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        try:
            import torch  # noqa: F401
            blocked = False
        except ImportError:
            blocked = True
        def report():
            with open({str(marker)!r}, "w") as f:
                json.dump({{"blocked": blocked, "torch_loaded": "torch" in sys.modules}}, f)
        atexit.register(report)
        from recon_cli.cli.main import main
        main(["-q", "run", {str(PIPELINE)!r}, "-o", {str(output)!r}, "--json", "--overwrite"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), json.loads(marker.read_text()), output


def test_learned_pipeline_runs_through_the_cli_without_torch(learned_run):
    report, hook, output = learned_run
    assert hook == {"blocked": True, "torch_loaded": False}
    assert report["solver"] == "svtv"
    assert output.is_file()
    from recon_cli.io.hdf5 import read_image

    volume, voxel = read_image(output)
    assert volume.shape == (256, 256) and voxel == 1.0
    reference = read_sinogram(SAMPLE).reference
    want = compute_metrics(volume, reference, names=["psnr", "ssim"])
    assert report["metrics"]["psnr"] == pytest.approx(want["psnr"], abs=1e-6)
    assert report["metrics"]["ssim"] == pytest.approx(want["ssim"], abs=1e-6)


@pytest.mark.xfail(strict=True, reason="issue 4 open: on the head sample svtv with the shipped learned "
                   "pre-estimate does not yet beat tv (benchmarks/results/learned.md); strict, so a fix flips it")
def _pipeline_params(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "pipelines" / name).read_text())["solver"]["params"]


def _scores(sample: str, runs: dict) -> dict:
    """{label: {psnr, ssim}} of each (solver, params) in ``runs`` on sample_data/<sample>."""
    sino = read_sinogram(REPO / "sample_data" / sample)
    op = make_projector(sino.geometry, sino.grid, Device("cpu"))
    return {label: compute_metrics(run_solver(solver, op, sino, params).volume, sino.reference, names=list(METRICS))
            for label, (solver, params) in runs.items()}


def _fbp_runs(svtv: dict) -> dict:
    """SV-TV with the pipeline's settings but FBP pre-estimates (svtv's default Ram-Lak, and Hann)."""
    return {"svtv_fbp": ("svtv", {**svtv, "pre_estimate": {"name": "fbp"}}),
            "svtv_fbp_hann": ("svtv", {**svtv, "pre_estimate": {"name": "fbp", "params": {"filter": "hann"}}})}


def test_learned_pre_estimate_beats_fbp_pre_estimates_on_the_real_ct_slice(learned_run):
    report, _, _ = learned_run
    learned = report["metrics"]
    svtv = _pipeline_params("svtv_learned.yaml")
    others = _scores("head_fan60.h5", {**_fbp_runs(svtv), "tv": ("tv", _pipeline_params("tv.yaml"))})
    for metric in METRICS:
        assert learned[metric] >= FLOORS["head_fan60.h5"][metric], (metric, learned)
        for name in ("svtv_fbp", "svtv_fbp_hann"):
            assert learned[metric] > others[name][metric], (metric, name, learned, others)
    # a limit, not a win: TV is slightly better on this real slice (38.31 vs 38.11 dB); keep it close
    assert learned["psnr"] >= others["tv"]["psnr"] - 0.3, (learned, others)
    assert learned["ssim"] >= others["tv"]["ssim"] - 0.003, (learned, others)


def test_learned_pre_estimate_beats_fbp_pre_estimates_and_tv_on_shepp_logan():
    svtv = _pipeline_params("svtv_learned.yaml")
    scores = _scores("shepp_logan_fan60.h5", {"learned": ("svtv", svtv), **_fbp_runs(svtv),
                                              "tv": ("tv", _pipeline_params("tv.yaml"))})
    learned = scores.pop("learned")
    for metric in METRICS:
        assert learned[metric] >= FLOORS["shepp_logan_fan60.h5"][metric], (metric, learned)
        for name, other in scores.items():
            assert learned[metric] > other[metric], (metric, name, learned, scores)
