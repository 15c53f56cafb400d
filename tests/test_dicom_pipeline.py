"""A DICOM series as pipeline input and DICOM (+ PACS) as pipeline output, through the CLI entry point:
pipelines/dicom.yaml on sample_data/head_dicom/, read back; a live Orthanc receives output.pacs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest

from orthanc_server import free_port, running_orthanc, skip_reason
from recon_cli.cli.main import main
from recon_cli.io.dicom_series import read_series
from recon_cli.io.dicom_writer import ANONYMOUS_IDENTITY, write_series
from cli_helpers import recon_quiet as recon  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "dicom.yaml"
SAMPLE = REPO / "sample_data" / "head_dicom"
MU_WATER = 0.0192
#: Measured: 27.94 dB (FBP, Hann filter, 60 views, I0 = 1e5, against the series itself).
PSNR_FLOOR = 26.5




def hu_of(mu: np.ndarray) -> np.ndarray:
    return 1000.0 * (mu.astype(np.float64) - MU_WATER) / MU_WATER


@pytest.fixture(scope="module")
def sample_series():
    return read_series(SAMPLE)


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """pipelines/dicom.yaml run once through `recon run` into a temporary folder; (out.h5, result JSON)."""
    out = tmp_path_factory.mktemp("dicom_run") / "head.h5"
    cwd = os.getcwd()
    os.chdir(REPO)  # the pipeline's paths are relative to the repository root
    try:
        with pytest.raises(SystemExit) as exc:
            main(["-q", "run", str(PIPELINE), "-o", str(out), "--json"])
    finally:
        os.chdir(cwd)
    assert exc.value.code == 0
    return out


def test_dicom_pipeline_writes_hdf5_dicom_png_and_meets_the_psnr_floor(dicom_run, sample_series):
    out = dicom_run
    dicom_dir = out.with_name("head_dicom")
    assert out.is_file() and out.with_suffix(".png").is_file() and dicom_dir.is_dir()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    with h5py.File(out, "r") as f:
        recon_mu = f["reconstruction"][()]
        psnr = float(f["metrics"].attrs["psnr"])
        reference_source = f["provenance"].attrs["reference"]
    assert recon_mu.shape == sample_series.shape == (3, 256, 256)
    assert psnr > PSNR_FLOOR
    assert "head_dicom:/reference" in str(reference_source)


def test_dicom_output_reads_back_within_hu_quantisation(dicom_run):
    out = dicom_run
    with h5py.File(out, "r") as f:
        recon_mu = f["reconstruction"][()]
    series = read_series(out.with_name("head_dicom"))
    assert series.shape == recon_mu.shape
    # int16 HU with slope 1: within half a HU (plus float32 rounding), slice for slice
    np.testing.assert_allclose(series.volume, hu_of(recon_mu), rtol=0, atol=0.5 + 1e-3)
    assert np.abs(series.volume - hu_of(recon_mu)).max() > 0.01  # really quantised, not a copy of the floats


def test_dicom_output_copies_identity_and_position_from_the_input(dicom_run, sample_series):
    series = read_series(dicom_run.with_name("head_dicom"))
    for name in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDescription", "FrameOfReferenceUID"):
        assert series.identity[name] == sample_series.identity[name], name
    assert sample_series.identity["PatientName"] == "SAMPLE^HEAD"
    assert series.series_uid != sample_series.series_uid
    # the reconstruction lies on the input slices: same spacing (5 mm between slices) and positions
    assert series.spacing == pytest.approx(sample_series.spacing) and series.spacing[0] == pytest.approx(5.0)
    assert series.origin == pytest.approx(sample_series.origin)
    ds = pydicom.dcmread(series.files[0])
    assert ds.SeriesDescription == "dicom-head" and ds.ConvolutionKernel == "fbp"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert float(ds.DistanceSourceToDetector) == pytest.approx(595.0 + 490.0)
    assert sample_series.series_uid in ds.DerivationDescription
    comments = json.loads(ds.ImageComments.removeprefix("recon-cli parameters: "))
    assert comments["params"]["filter"] == "hann" and comments["n_angles"] == 60
    assert [float(ds.WindowCenter), float(ds.WindowWidth)] == [40.0, 400.0]


def test_dicom_output_passes_dciodvfy(dicom_run):
    found = shutil.which("dciodvfy")
    if found is None and not os.environ.get("CI"):
        pytest.skip("dciodvfy not installed (apt-get install -y dicom3tools); required when CI is set")
    assert found, "dciodvfy is required in CI: apt-get install -y dicom3tools"
    for f in sorted(dicom_run.with_name("head_dicom").glob("*.dcm")):
        report = subprocess.run([found, str(f)], capture_output=True, text=True, timeout=60)
        text = report.stdout + report.stderr
        assert not [line for line in text.splitlines() if line.lstrip().startswith("Error")], f"{f}:\n{text}"


# ----------------------------------------------------------------------------- small, fast pipelines


def small_pipeline(tmp_path: Path, input_path: Path, formats=("hdf5", "dicom"), **input_extra) -> Path:
    """An FBP pipeline on a small input (64 x 64 images, 24 views of 96 detectors)."""
    import yaml

    input_section = {"path": str(input_path), **input_extra}
    if "simulate" not in input_section and input_path.is_dir():
        input_section["simulate"] = {"angles": 24, "detector_count": 96, "detector_spacing": 1.2}
    raw = {"name": "small-dicom", "input": input_section, "solver": {"name": "fbp"},
           "output": {"path": str(tmp_path / "out" / "x.h5"), "formats": list(formats)}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def small_series(tmp_path):
    """A 2-slice 64 x 64 series (1 mm) with a named patient; its folder."""
    from recon_cli.phantoms import shepp_logan

    image = shepp_logan(64)
    write_series(tmp_path / "in" / "small", np.stack([image, 0.8 * image]), 1.0,
                 identity={"PatientName": "Small^Test", "PatientID": "S-1"})
    return tmp_path / "in" / "small"


def test_existing_dicom_output_is_refused_before_computing(tmp_path, small_series, capsys, monkeypatch):
    import recon_cli.simulate_dicom as dicom_input

    def must_not_read(*args, **kwargs):
        raise AssertionError("the input was read although an output exists")

    monkeypatch.setattr(dicom_input, "read_dicom_image_input", must_not_read)
    (tmp_path / "out" / "x_dicom").mkdir(parents=True)
    code, _, err = recon(capsys, "run", str(small_pipeline(tmp_path, small_series)))
    assert code == 2 and "x_dicom: exists; use --overwrite" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_dicom"]


def test_overwrite_replaces_only_a_folder_of_dcm_files(tmp_path, small_series, capsys):
    pipe = small_pipeline(tmp_path, small_series)
    target = tmp_path / "out" / "x_dicom"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("not a DICOM file\n")
    code, _, err = recon(capsys, "run", str(pipe), "--overwrite")
    assert code == 2 and "holds other things than .dcm files" in err
    assert (target / "notes.txt").is_file() and not (tmp_path / "out" / "x.h5").exists()
    (target / "notes.txt").unlink()
    (target / "CT000009.dcm").write_bytes(b"old")
    code, _, err = recon(capsys, "run", str(pipe), "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in target.iterdir()) == ["CT000001.dcm", "CT000002.dcm"]


def test_a_failing_later_output_removes_the_dicom_folder(tmp_path, small_series, capsys, monkeypatch):
    import recon_cli.io.png as png

    def broken_png(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(png, "write_png", broken_png)
    code, _, err = recon(capsys, "run", str(small_pipeline(tmp_path, small_series, ("hdf5", "dicom", "png"))))
    assert code == 1 and "disk full" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_non_dicom_input_gives_an_anonymous_series(tmp_path, capsys):
    pipe = small_pipeline(tmp_path, REPO / "sample_data" / "shepp_logan_fan60.h5", ("dicom",))
    code, _, err = recon(capsys, "run", str(pipe))
    assert code == 0, err
    series = read_series(tmp_path / "out" / "x_dicom")
    assert series.shape == (1, 256, 256) and series.spacing[1:] == (1.0, 1.0)
    assert series.identity["PatientName"] == ANONYMOUS_IDENTITY["PatientName"]
    assert series.identity["PatientID"] == "ANONYMOUS"


def test_series_uid_chooses_among_several_series(tmp_path, small_series, capsys):
    from recon_cli.phantoms import shepp_logan

    other = write_series(small_series.parent / "other", shepp_logan(64)[None] * 1.2, 1.0)
    other_uid = pydicom.dcmread(other[0]).SeriesInstanceUID
    folder = small_series.parent
    code, _, err = recon(capsys, "run", str(small_pipeline(tmp_path, folder)))
    assert code == 2 and "2 series found" in err and "input.series_uid" in err
    code, out, err = recon(capsys, "run", str(small_pipeline(tmp_path, folder, series_uid=str(other_uid))), "--json")
    assert code == 0, err
    result = json.loads(out)
    series = read_series(result["outputs"]["dicom"])
    assert series.shape == (1, 64, 64) and series.identity["PatientName"] == ANONYMOUS_IDENTITY["PatientName"]
    assert result["metrics"]["psnr"] > 15


def test_simulate_options_are_refused_for_projection_input(tmp_path, capsys):
    pipe = small_pipeline(tmp_path, REPO / "sample_data" / "shepp_logan_fan60.h5", ("hdf5",),
                          simulate={"angles": 10})
    code, _, err = recon(capsys, "run", str(pipe))
    assert code == 2 and "simulate do not apply to hdf5 input" in err


def test_simulated_acquisition_follows_input_simulate(tmp_path, small_series):
    from recon_cli.io.formats import read_input

    sino = read_input(small_series, simulate={"geometry": "parallel", "angles": 30, "detector_count": 80,
                                              "detector_spacing": 1.0, "I0": 1e4, "seed": 5})
    assert sino.geometry.type == "parallel" and sino.data.shape == (2, 30, 80)
    assert sino.geometry.angles[-1] < np.pi and sino.metadata["I0"] == 1e4
    assert sino.grid.shape == (2, 64, 64) and sino.grid.voxel_size == 1.0
    assert sino.metadata["dicom"]["identity"]["PatientName"] == "Small^Test"
    np.testing.assert_allclose(sino.reference, np.clip(0.0192 * (1 + read_series(small_series).volume / 1000), 0,
                                                       None), rtol=0, atol=1e-7)
    default = read_input(small_series)  # the reference geometry, no noise
    assert default.geometry.type == "fanflat" and default.data.shape == (2, 60, 512) and "I0" not in default.metadata


# ----------------------------------------------------------------------------- PACS


def test_pacs_failure_keeps_outputs_writes_the_partial_record_and_exits_1(tmp_path, small_series, capsys):
    pipe = small_pipeline(tmp_path, small_series)
    port = free_port()  # nobody listens there
    code, _, err = recon(capsys, "run", str(pipe), "--set",
                         f"output.pacs={{host: 127.0.0.1, port: {port}, ae_title: NOBODY, retries: 0, timeout: 2}}")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "2 of 2 instances not stored at NOBODY" in err and "x.pacs.json" in err
    record = json.loads((tmp_path / "out" / "x.pacs.json").read_text())
    assert record["stored"] == 0 and record["failed"] == 2 and record["attempts"] == 1
    assert (tmp_path / "out" / "x.h5").is_file() and len(list((tmp_path / "out" / "x_dicom").iterdir())) == 2


def test_pacs_needs_the_dicom_output(tmp_path, small_series, capsys):
    pipe = small_pipeline(tmp_path, small_series, ("hdf5",))
    code, _, err = recon(capsys, "run", str(pipe), "--set", "output.pacs={host: h, port: 104, ae_title: X}")
    assert code == 2 and "add dicom to output.formats" in err




def test_pipeline_sends_its_dicom_output_to_orthanc(orthanc, tmp_path, capsys, monkeypatch, sample_series):
    monkeypatch.chdir(REPO)
    out = tmp_path / "sent.h5"
    pacs = f"{{host: {orthanc.host}, port: {orthanc.dicom_port}, ae_title: {orthanc.aet}, calling_ae_title: RECON_TEST}}"
    code, stdout, err = recon(capsys, "run", str(PIPELINE), "-o", str(out), "--json", "--set", f"output.pacs={pacs}")
    assert code == 0, err
    outputs = json.loads(stdout)["outputs"]
    assert outputs["pacs_record"] == str(tmp_path / "sent.pacs.json")
    record = json.loads((tmp_path / "sent.pacs.json").read_text())
    files = sorted((tmp_path / "sent_dicom").glob("*.dcm"))
    assert record["stored"] == 3 and record["failed"] == 0 and record["ae_title"] == orthanc.aet
    assert [i["status"] for i in record["instances"]] == ["0x0000"] * 3
    local = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    assert {i["sop_instance_uid"] for i in record["instances"]} == set(local)
    series_uid = next(iter(local.values())).SeriesInstanceUID
    with h5py.File(out, "r") as f:
        recon_mu = f["reconstruction"][()]
    found = 0
    for orthanc_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        if tags.get("SeriesInstanceUID") != series_uid:
            continue
        found += 1
        assert tags["PatientName"] == "SAMPLE^HEAD" and tags["PatientID"] == sample_series.identity["PatientID"]
        assert tags["StudyInstanceUID"] == sample_series.identity["StudyInstanceUID"]
        assert tags["SeriesDescription"] == "dicom-head"
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.get(f"/instances/{orthanc_id}/file",
                                                                           raw=True)))
        np.testing.assert_array_equal(stored.pixel_array, local[tags["SOPInstanceUID"]].pixel_array)
        k = int(stored.InstanceNumber) - 1
        hu = stored.pixel_array * float(stored.RescaleSlope) + float(stored.RescaleIntercept)
        assert np.abs(hu - hu_of(recon_mu[k])).max() <= 0.5 + 1e-3
    assert found == 3
