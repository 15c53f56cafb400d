"""A small FBP run computes every default metric (SSIM included) and writes HDF5 and PNG without
scikit-image or scipy.ndimage, and reads an HDF5 (layout v1) input without the NeXus reader (issue 17:
the fixed cost of a small run); its SSIM is scikit-image's."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from cli_helpers import recon_in_fresh_process


def test_fbp_run_with_metrics_and_png_imports_no_scikit_image(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "fbp.h5"
    code, text, modules = recon_in_fresh_process(["-q", "run", "pipelines/fbp.yaml", "-o", str(out)])
    assert code == 0, text
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert not {"skimage", "scipy.ndimage", "recon_cli.io.nexus", "recon_cli.preprocess"} & modules
    with h5py.File(out, "r") as f:
        metrics = {k: float(v) for k, v in f["metrics"].attrs.items()}
        volume = f["reconstruction"][()].astype(np.float64)
    assert {"psnr", "ssim", "rel_err", "rmse", "hu_rmse", "residual", "wall_time"} <= set(metrics)
    with h5py.File("sample_data/shepp_logan_fan60.h5", "r") as f:
        reference = f["reference"][()].astype(np.float64)
    expected = structural_similarity(reference, volume, data_range=float(reference.max() - reference.min()))
    assert metrics["ssim"] == pytest.approx(expected, rel=1e-9)
