"""DICOM CT series in and out: exact round trips, order by geometry, compressed transfer syntaxes,
Enhanced CT multi-frame, dciodvfy on every written file, clear errors on bad input."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless, generate_uid

from recon_cli.errors import InputError
from recon_cli.io.dicom_series import describe_series, read_series, read_series_mu
from recon_cli.io.dicom_writer import ANONYMOUS_IDENTITY, mu_to_hu, write_series, write_series_hu

SPACING = (2.5, 0.75, 0.75)  # (dz, dy, dx) mm


def make_hu(nz=4, ny=40, nx=48, seed=0) -> np.ndarray:
    """A volume in HU with a different pattern in every slice, row and column (catches flips/transposes)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    hu = -1000.0 + 37.0 * x + 11.0 * y ** 1.5 + 300.0 * z + rng.uniform(-50, 50, (nz, ny, nx))
    return hu.astype(np.float32)


def shuffled_copy(files, dest: Path, seed=1) -> Path:
    """Copy ``files`` to ``dest`` under random names whose order has nothing to do with the slice order."""
    dest.mkdir()
    names = [f"{generate_uid()[-12:]}_{k}" for k in range(len(files))]
    random.Random(seed).shuffle(names)
    for f, name in zip(files, names):
        shutil.copy(f, dest / name)
    return dest


@pytest.fixture
def written(tmp_path):
    hu = make_hu()
    files = write_series_hu(tmp_path / "series", hu, SPACING, series_description="test-pipeline")
    return hu, files


# ----------------------------------------------------------------------------- round trips


def test_round_trip_exact_within_quantisation_and_sorted_by_geometry(written, tmp_path):
    hu, files = written
    assert [f.name for f in files] == [f"CT{k:06d}.dcm" for k in range(1, 5)]
    folder = shuffled_copy(list(reversed(files)), tmp_path / "shuffled")
    series = read_series(folder)
    assert series.volume.dtype == np.float32 and series.shape == hu.shape
    assert np.abs(series.volume - hu).max() <= 0.5 + 1e-3
    assert series.spacing == SPACING
    assert series.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    nz, ny, nx = hu.shape
    dz, dy, dx = SPACING
    assert series.origin == pytest.approx((-(nx - 1) / 2 * dx, -(ny - 1) / 2 * dy, -(nz - 1) / 2 * dz))
    # order by ImagePositionPatient: slice k of the result came from the file written for slice k
    assert [pydicom.dcmread(f).InstanceNumber for f in series.files] == [1, 2, 3, 4]


def test_round_trip_of_a_list_of_files_and_a_single_slice(written, tmp_path):
    hu, files = written
    series = read_series([str(f) for f in reversed(files)])
    assert np.abs(series.volume - hu).max() <= 0.5 + 1e-3
    one = write_series_hu(tmp_path / "one", hu[2], 0.5)
    single = read_series(one[0])
    assert single.shape == (1, *hu.shape[1:]) and single.spacing == (0.5, 0.5, 0.5)
    assert np.abs(single.volume[0] - hu[2]).max() <= 0.5 + 1e-3


def test_mu_round_trip_and_fine_rescale_slope(tmp_path):
    mu_water = 0.02
    mu = (mu_water * (1 + np.maximum(make_hu(2, 16, 20), -1000.0) / 1000.0)).astype(np.float32)
    files = write_series(tmp_path / "mu", mu, 0.8, mu_water=mu_water, rescale_slope=None)
    ds = pydicom.dcmread(files[0])
    slope = float(ds.RescaleSlope)
    assert 0 < slope < 0.2  # finer than 1 HU: the range fills int16
    back, series = read_series_mu(tmp_path / "mu", mu_water=mu_water)
    hu = mu_to_hu(mu, mu_water)
    assert np.abs(series.volume - hu).max() <= slope / 2 + 1e-3 * slope + 1e-3
    assert np.abs(back - mu).max() <= mu_water * (slope / 2 + 1e-2) / 1000.0


def test_hu_outside_int16_is_clipped(tmp_path):
    hu = np.zeros((1, 4, 4), np.float32)
    hu[0, 0, 0], hu[0, 0, 1] = 40000.0, -40000.0
    files = write_series_hu(tmp_path / "clip", hu, 1.0)
    back = read_series(files[0]).volume
    assert back[0, 0, 0] == 32767 and back[0, 0, 1] == -32768


def test_patient_coordinate_mapping_row0_is_anterior(tmp_path):
    """Image row 0 (+y in recon-cli) is stored as DICOM row 0 at the most anterior (smallest LPS y) position."""
    image = np.zeros((1, 6, 8), np.float32)
    image[0, 0, :] = 1000.0  # top row
    image[0, :, -1] = 500.0  # right column (patient left, +x)
    files = write_series_hu(tmp_path / "map", image, 1.0)
    ds = pydicom.dcmread(files[0])
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(ds.ImagePositionPatient[1]) == -2.5  # row 0 centre: y = -(ny-1)/2 mm (anterior)
    assert float(ds.ImagePositionPatient[0]) == -3.5
    stored = ds.pixel_array
    assert stored[0, 0] == 1000 and stored[1, -1] == 500 and stored[1, 0] == 0


# ----------------------------------------------------------------------------- compressed transfer syntaxes


def _jpeg_lossless_sv1(image: np.ndarray) -> bytes:
    """A JPEG lossless (process 14, first-order prediction, selection value 1) bitstream of a 16-bit image.

    Written here because pydicom has no encoder for this syntax; one Huffman table with 5-bit codes for
    the 17 difference categories (ITU T.81 Annex H)."""
    rows, cols = image.shape
    samples = image.astype(np.int64) & 0xFFFF
    out = bytearray(b"\xff\xd8")
    out += b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + b"\x00" + bytes([0, 0, 0, 0, 17] + [0] * 11) \
        + bytes(range(17))
    out += b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") \
        + bytes([1, 1, 0x11, 0])
    out += b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))

    for r in range(rows):
        for c in range(cols):
            if r == 0 and c == 0:
                pred = 1 << 15
            elif r == 0:
                pred = samples[r, c - 1]
            elif c == 0:
                pred = samples[r - 1, c]
            else:
                pred = samples[r, c - 1]
            diff = int(samples[r, c] - pred) & 0xFFFF
            if diff >= 0x8000:
                diff -= 0x10000  # signed difference in -32767..32768
            if diff == -0x8000:
                diff = 0x8000
            ssss = 0 if diff == 0 else abs(diff).bit_length()
            put(ssss, 5)
            if 0 < ssss < 16:
                put(diff if diff > 0 else diff + (1 << ssss) - 1, ssss)
    bits.extend([1] * (-len(bits) % 8))
    for i in range(0, len(bits), 8):
        byte = int("".join(map(str, bits[i:i + 8])), 2)
        out.append(byte)
        if byte == 0xFF:
            out.append(0x00)
    return bytes(out + b"\xff\xd9")


def _recode(src: Path, dst: Path, syntax) -> None:
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(src)
    if syntax == JPEGLosslessSV1:
        ds.PixelData = encapsulate([_jpeg_lossless_sv1(ds.pixel_array)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    else:
        ds.compress(syntax)
    ds.save_as(dst, enforce_file_format=True)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1],
                         ids=["rle", "jpeg2000-lossless", "jpeg-lossless-sv1"])
def test_compressed_series_decode_to_the_same_volume(written, tmp_path, syntax):
    hu, files = written
    plain = read_series(files[0].parent)
    folder = tmp_path / "compressed"
    folder.mkdir()
    for k, f in enumerate(files):
        _recode(f, folder / f"x{(7 * k) % 5}{k}", syntax)
    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == syntax
    series = read_series(folder)
    np.testing.assert_array_equal(series.volume, plain.volume)
    assert series.info["TransferSyntaxUID"] == [str(syntax)]


# ----------------------------------------------------------------------------- Enhanced CT multi-frame


def _enhanced_ct(files, path: Path, frame_order) -> None:
    """An Enhanced CT Image file holding the slices of ``files`` as frames in ``frame_order``: shared pixel
    measures, orientation and rescale; per-frame PlanePositionSequence."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    slices = [pydicom.dcmread(files[k]) for k in frame_order]
    first = slices[0]
    ds = Dataset()
    for name in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                 "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                 "HighBit", "PixelRepresentation"):
        setattr(ds, name, first.get(name))
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    ds.NumberOfFrames = len(slices)

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    shared = item(
        PixelMeasuresSequence=Sequence([item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)]),
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=first.ImageOrientationPatient)]),
        PixelValueTransformationSequence=Sequence([item(RescaleIntercept=first.RescaleIntercept,
                                                        RescaleSlope=first.RescaleSlope, RescaleType="HU")]))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [item(PlanePositionSequence=Sequence([item(ImagePositionPatient=s.ImagePositionPatient)])) for s in slices])
    ds.PixelData = np.stack([s.pixel_array for s in slices]).astype("<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_ct_multiframe_read_in_geometric_order(written, tmp_path):
    hu, files = written
    plain = read_series(files[0].parent)
    path = tmp_path / "enhanced.dcm"
    _enhanced_ct(files, path, frame_order=[2, 0, 3, 1])
    series = read_series(path)
    np.testing.assert_array_equal(series.volume, plain.volume)
    assert series.spacing == plain.spacing and series.origin == plain.origin
    assert series.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.1"


def test_enhanced_ct_missing_plane_position_names_the_tag(written, tmp_path):
    hu, files = written
    path = tmp_path / "enhanced.dcm"
    _enhanced_ct(files, path, frame_order=[0, 1, 2, 3])
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(InputError) as exc:
        read_series(path)
    assert exc.value.file == str(path) and "PlanePositionSequence.ImagePositionPatient" in exc.value.field
    assert "frame 3" in exc.value.message


# ----------------------------------------------------------------------------- validity of the output


def _dciodvfy() -> str | None:
    found = shutil.which("dciodvfy")
    if found is None and not os.environ.get("CI"):
        pytest.skip("dciodvfy not installed (apt-get install -y dicom3tools); required when CI is set")
    assert found, "dciodvfy is required in CI: apt-get install -y dicom3tools"
    return found


def test_dciodvfy_reports_no_errors_on_every_output_file(tmp_path):
    dciodvfy = _dciodvfy()
    hu = make_hu(3, 20, 20)
    anonymous = write_series_hu(tmp_path / "anon", hu, SPACING, series_description="svtv-fan60",
                                recon={"solver": "svtv", "params": {"lam": 2e-3},
                                       "geometry": {"type": "fanflat", "source_origin": 595.0,
                                                    "origin_detector": 490.6}})
    source = read_series(tmp_path / "anon")
    identity = dict(source.identity, PatientName="Müller^Jürgen", PatientID="12345", PatientBirthDate="19600101",
                    PatientSex="M", AccessionNumber="ACC1")
    derived = write_series_hu(tmp_path / "derived", hu, SPACING, identity=identity, origin=source.origin,
                              rescale_slope=None, window=None, source_series_uid=source.series_uid)
    for f in [*anonymous, *derived]:
        result = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.lstrip().startswith("Error")]
        assert not errors, f"{f}:\n{report}"
        assert "CTImage" in report  # dciodvfy recognised the IOD


def test_identity_copied_from_a_dicom_source_else_anonymous(tmp_path):
    hu = make_hu(2, 8, 8)
    anon_files = write_series_hu(tmp_path / "anon", hu, 1.0, series_description="fbp-pipeline",
                                 recon={"solver": "fbp"})
    anon = pydicom.dcmread(anon_files[0])
    assert anon.PatientName == ANONYMOUS_IDENTITY["PatientName"] and anon.PatientID == "ANONYMOUS"
    assert list(anon.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert anon.SeriesDescription == "fbp-pipeline" and anon.ConvolutionKernel == "fbp"
    assert anon.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in anon_files}) == 2
    source = read_series(tmp_path / "anon")
    identity = dict(source.identity, PatientName="Doe^Jane", PatientID="P-42")
    derived_files = write_series_hu(tmp_path / "derived", hu, 1.0, identity=identity)
    derived = pydicom.dcmread(derived_files[0])
    assert derived.PatientName == "Doe^Jane" and derived.PatientID == "P-42"
    assert derived.StudyInstanceUID == anon.StudyInstanceUID  # joins the source's study
    assert derived.SeriesInstanceUID != anon.SeriesInstanceUID
    assert derived.FrameOfReferenceUID != anon.FrameOfReferenceUID  # positions are not the source's
    again = write_series_hu(tmp_path / "again", hu, 1.0, identity=identity, origin=source.origin)
    assert pydicom.dcmread(again[0]).FrameOfReferenceUID == anon.FrameOfReferenceUID


# ----------------------------------------------------------------------------- atomic output


def test_existing_folder_kept_unless_overwrite(tmp_path):
    hu = make_hu(2, 8, 8)
    target = tmp_path / "out"
    first = write_series_hu(target, hu, 1.0)
    uid = pydicom.dcmread(first[0]).SOPInstanceUID
    with pytest.raises(InputError, match="exists"):
        write_series_hu(target, hu, 1.0)
    assert pydicom.dcmread(first[0]).SOPInstanceUID == uid
    write_series_hu(target, hu[:1], 1.0, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["CT000001.dcm"]
    (target / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="other things"):
        write_series_hu(target, hu, 1.0, overwrite=True)
    assert (target / "notes.txt").exists()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pydicom.dcmwrite

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", failing)
    with pytest.raises(OSError, match="disk full"):
        write_series_hu(tmp_path / "out", make_hu(4, 8, 8), 1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="NaN"):
        write_series_hu(tmp_path / "nan", np.full((2, 4, 4), np.nan, np.float32), 1.0)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad inputs


def _edit(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        if value is None:
            delattr(ds, name)
        else:
            setattr(ds, name, value)
    ds.save_as(path)


def test_not_dicom_names_the_file(written):
    _, files = written
    bad = files[0].parent / "readme.txt"
    bad.write_text("not an image")
    with pytest.raises(InputError) as exc:
        read_series(files[0].parent)
    assert exc.value.file == str(bad) and "not a DICOM file" in exc.value.message


def test_non_ct_modality_and_sop_class(written):
    _, files = written
    _edit(files[1], Modality="MR")
    with pytest.raises(InputError) as exc:
        read_series(files[0].parent)
    assert exc.value.file == str(files[1]) and exc.value.field == "Modality" and "'MR'" in exc.value.message
    _edit(files[1], Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7")
    with pytest.raises(InputError) as exc:
        read_series(files[0].parent)
    assert exc.value.field == "SOPClassUID" and "Secondary Capture" in exc.value.message


@pytest.mark.parametrize("tag", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                 "RescaleSlope", "RescaleIntercept", "SeriesInstanceUID"])
def test_missing_tag_names_file_and_tag(written, tag):
    _, files = written
    _edit(files[2], **{tag: None})
    with pytest.raises(InputError) as exc:
        read_series(files[0].parent)
    assert exc.value.file == str(files[2]) and exc.value.field == tag
    assert f"{files[2]}: {tag}: missing DICOM tag" in str(exc.value)


def test_mixed_series_needs_a_choice(written, tmp_path):
    hu, files = written
    other = write_series_hu(tmp_path / "other", hu[:2] + 5, SPACING, series_description="other")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in [*files, *other]:
        shutil.copy(f, folder / f"{f.parent.name}_{f.name}")
    with pytest.raises(InputError) as exc:
        read_series(folder)
    assert exc.value.field == "SeriesInstanceUID" and "2 series" in exc.value.message
    assert "series UID option" in exc.value.message
    other_uid = pydicom.dcmread(other[0]).SeriesInstanceUID
    assert other_uid in exc.value.message and "(2 files, CT, other)" in exc.value.message
    chosen = read_series(folder, series_uid=other_uid)
    assert chosen.shape == (2, *hu.shape[1:]) and np.abs(chosen.volume - (hu[:2] + 5)).max() <= 0.5 + 1e-3
    with pytest.raises(InputError, match="no series with SeriesInstanceUID 1.2.3"):
        read_series(folder, series_uid="1.2.3")


def test_inconsistent_geometry(written):
    _, files = written
    files[1].unlink()  # a gap: non-uniform spacing
    with pytest.raises(InputError) as exc:
        read_series(files[0].parent)
    assert exc.value.field == "ImagePositionPatient" and "non-uniform slice spacing" in exc.value.message
    assert exc.value.file == str(files[2])
    _edit(files[3], ImageOrientationPatient=[1, 0, 0, 0, 0.8, -0.6])
    with pytest.raises(InputError) as exc:
        read_series(files[0].parent)
    assert exc.value.field == "ImageOrientationPatient" and exc.value.file == str(files[3])
    _edit(files[3], ImageOrientationPatient=[1, 0, 0, 0, 1, 0], PixelSpacing=[0.8, 0.8])
    with pytest.raises(InputError) as exc:
        read_series(files[0].parent)
    assert exc.value.field == "PixelSpacing" and "inconsistent pixel spacing" in exc.value.message


def test_duplicate_and_sheared_positions(written):
    _, files = written
    _edit(files[3], ImagePositionPatient=pydicom.dcmread(files[2]).ImagePositionPatient)
    with pytest.raises(InputError, match="same position"):
        read_series(files[0].parent)
    position = [float(v) for v in pydicom.dcmread(files[3]).ImagePositionPatient]
    for k, f in enumerate(files):  # gantry tilt: y shifts with z
        p = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
        _edit(f, ImagePositionPatient=[p[0], p[1] + 0.5 * k, position[2] - 2.5 * (3 - k)])
    with pytest.raises(InputError, match="sheared"):
        read_series(files[0].parent)


# ----------------------------------------------------------------------------- recon info


def test_describe_series_hides_phi_unless_asked(tmp_path):
    hu = make_hu(3, 8, 10)
    identity = {"PatientName": "Doe^Jane", "PatientID": "P-42", "PatientBirthDate": "19700101", "PatientSex": "F"}
    write_series_hu(tmp_path / "s", hu, SPACING, identity=identity, series_description="desc")
    summary = describe_series(tmp_path / "s")
    assert summary["format"] == "DICOM" and summary["files"] == 3 and summary["series_count"] == 1
    entry = summary["series"][0]
    assert entry["shape"] == [3, 8, 10] and entry["spacing_mm"] == list(SPACING)
    assert entry["SOP class"] == "CT Image"
    text = repr(summary)
    assert "Doe" not in text and "P-42" not in text and "19700101" not in text
    assert entry["patient_study"]["PatientSex"] == "F"
    shown = describe_series(tmp_path / "s", show_phi=True)
    assert shown["series"][0]["patient_study"]["PatientName"] == "Doe^Jane"
