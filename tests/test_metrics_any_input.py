"""``recon metrics`` and ``metrics.reference`` take any readable image: a DICOM series folder, NIfTI, TIFF, HDF5."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from recon_cli.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SERIES = REPO / "sample_data" / "head_dicom"  # the series pipelines/dicom.yaml simulates from (its reference)
NAMES = ("psnr", "ssim", "rel_err", "rmse", "hu_rmse")


def recon_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args, "--json"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """pipelines/dicom.yaml (the series is the reference of its metrics), written as HDF5, TIFF and NIfTI."""
    if not SERIES.is_dir():
        pytest.skip("sample_data not generated")
    folder = tmp_path_factory.mktemp("metrics_any")
    out = folder / "d.h5"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(REPO / "pipelines" / "dicom.yaml"), "-o", str(out), "--set",
              "output.formats=[hdf5, tiff, nifti]", "--json"])
    assert exc.value.code == 0
    with h5py.File(out) as f:
        metrics = {k: float(v) for k, v in f["metrics"].attrs.items()}
    return folder, metrics


@pytest.mark.parametrize("recon_file", ["d.h5", "d.tif", "d.nii.gz"])
def test_metrics_against_a_dicom_folder(dicom_run, capsys, recon_file):
    folder, expected = dicom_run
    got = recon_json(capsys, "metrics", str(folder / recon_file), str(SERIES))
    for name in NAMES:
        assert got[name] == pytest.approx(expected[name], rel=1e-4), name
    assert 25 < got["psnr"] < 60


def test_pipeline_metrics_reference_may_be_a_dicom_folder(dicom_run, tmp_path, capsys):
    _, expected = dicom_run
    result = recon_json(capsys, "run", str(REPO / "pipelines" / "dicom.yaml"), "-o", str(tmp_path / "r.h5"),
                        "--set", "output.formats=[hdf5]", "--set", f"metrics.reference={SERIES}")
    for name in NAMES:
        assert result["metrics"][name] == pytest.approx(expected[name], rel=1e-4), name
