"""TIFF stack and NIfTI writers: exact read-back, voxel sizes, orientation, atomic writes, recon info."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recon_cli.errors import InputError
from recon_cli.io.tiff_nifti import read_nifti, read_tiff, write_nifti, write_tiff


def _volume(shape=(3, 20, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape, dtype=np.float32) * 0.05).astype(np.float32)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_tiff_round_trip_exact_with_voxel_size(tmp_path):
    vol = _volume()
    path = tmp_path / "r.tif"
    write_tiff(path, vol, 0.7)
    back, voxel = read_tiff(path)
    assert back.dtype == np.float32 and np.array_equal(back, vol) and voxel == 0.7
    import tifffile

    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3 and tif.imagej_metadata["unit"] == "mm"
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.7, rel=1e-6)  # pixels per mm written for other readers


def test_tiff_single_image_is_one_page(tmp_path):
    img = _volume((16, 12))
    write_tiff(tmp_path / "s.tif", img, 1.25)
    back, voxel = read_tiff(tmp_path / "s.tif")
    assert back.shape == (1, 16, 12) and np.array_equal(back[0], img) and voxel == 1.25


@pytest.mark.parametrize("name", ["r.nii.gz", "r.nii"])
def test_nifti_round_trip_exact_and_affine(tmp_path, name):
    import nibabel as nib

    vol = _volume((4, 10, 12))
    vol[1, 0, 11] = 1.0  # marker: slice 1, top row (+y), right column (+x)
    path = tmp_path / name
    write_nifti(path, vol, 0.5)
    back, voxel = read_nifti(path)
    assert np.array_equal(back, vol) and voxel == 0.5
    img = nib.load(path)
    assert img.header.get_xyzt_units()[0] == "mm" and img.header.get_zooms()[:3] == (0.5, 0.5, 0.5)
    assert int(img.header["sform_code"]) == 1 and np.allclose(img.affine, img.get_qform())
    i, j, k = np.argwhere(np.asarray(img.dataobj) == 1.0)[0]
    x, y, z = (img.affine @ np.array([i, j, k, 1.0]))[:3]
    assert x == pytest.approx(5.5 * 0.5) and y == pytest.approx(4.5 * 0.5) and z == pytest.approx(-0.5 * 0.5)
    centre = img.affine @ np.array([(12 - 1) / 2, (10 - 1) / 2, (4 - 1) / 2, 1.0])
    assert np.allclose(centre[:3], 0.0)  # centred on the rotation axis


def test_nifti_single_image(tmp_path):
    img = _volume((8, 6))
    write_nifti(tmp_path / "s.nii.gz", img, 2.0)
    back, voxel = read_nifti(tmp_path / "s.nii.gz")
    assert back.shape == (1, 8, 6) and np.array_equal(back[0], img) and voxel == 2.0


@pytest.mark.parametrize("writer,name", [(write_tiff, "x.tif"), (write_nifti, "x.nii.gz")])
def test_writers_are_atomic_and_refuse_to_overwrite(tmp_path, writer, name):
    path = tmp_path / name
    writer(path, _volume(), 1.0)
    first = path.read_bytes()
    with pytest.raises(InputError, match="exists; use --overwrite"):
        writer(path, _volume(seed=1), 1.0)
    assert path.read_bytes() == first
    writer(path, _volume(seed=1), 1.0, overwrite=True)
    assert path.read_bytes() != first
    with pytest.raises(InputError, match="2-D .* or 3-D"):
        writer(tmp_path / ("bad_" + name), np.zeros(5, np.float32), 1.0)
    with pytest.raises(InputError, match="voxel size"):
        writer(tmp_path / ("bad_" + name), _volume(), -1.0)
    assert not (tmp_path / ("bad_" + name)).exists() and not _leftovers(tmp_path)


def test_recon_info_reads_tiff_and_nifti(tmp_path, capsys):
    from recon_cli.cli.main import main

    vol = _volume()
    write_tiff(tmp_path / "r.tif", vol, 0.7)
    write_nifti(tmp_path / "r.nii.gz", vol, 0.7)
    for name, fmt in (("r.tif", "tiff"), ("r.nii.gz", "nifti")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["-q", "info", str(tmp_path / name), "--json"])
        out = json.loads(capsys.readouterr().out)
        assert exc.value.code == 0 and out["format"] == fmt
        assert out["image"]["shape"] == [3, 20, 24] and out["image"]["voxel_size"] == pytest.approx(0.7)
