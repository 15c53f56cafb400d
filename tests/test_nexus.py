"""NXtomo and DXchange input: flat/dark correction, -log, rows, centre of rotation; reconstructions equal
to those of the layout v1 file of the same data; the CLI running a pipeline on NXtomo with TIFF + NIfTI out."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from recon_cli import preprocess as P
from recon_cli.backend import Device
from recon_cli.errors import InputError
from recon_cli.geometry import Parallel2D, VolumeGrid, parallel_beam_geometry
from recon_cli.io.formats import describe, detect_format, read_input
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.projectors import make_projector
from recon_cli.simulate import simulate_sinogram
from recon_cli.sinogram import Sinogram
from recon_cli.solvers.registry import run_solver
from cli_helpers import recon_quiet as _recon  # noqa: E402

N, NZ, N_ANGLES = 64, 3, 90
DARK = 100.0
#: Largest |FBP(NXtomo) - FBP(layout v1)| relative to the image maximum. Measured ~1e-6 (float32 exp/log).
REL_TOL = 2e-5


@pytest.fixture(scope="module")
def line_integrals():
    """Simulated parallel-beam line integrals (NZ, N_ANGLES, N) of three different slices, 1 mm pixels."""
    base = shepp_logan(N)
    stack = np.stack([base, base[::-1] * 0.8, np.roll(base, 7, axis=1)]).astype(np.float32)
    geometry = parallel_beam_geometry(N_ANGLES, N, 1.0)
    sino = simulate_sinogram(stack, 1.0, geometry, VolumeGrid((NZ, N, N), 1.0), upsample=2)
    return sino.data, geometry.angles


def _flat() -> np.ndarray:
    cols = np.linspace(0.9, 1.1, N, dtype=np.float32)
    return (1.0e4 * cols[None, :] * np.linspace(1.0, 0.95, NZ, dtype=np.float32)[:, None]).astype(np.float32)


def _frames(p: np.ndarray) -> np.ndarray:
    """Counts I = dark + (flat - dark) exp(-p), frames (N_ANGLES, NZ rows, N cols)."""
    flat = _flat()
    return (DARK + (flat - DARK)[:, None, :] * np.exp(-p)).transpose(1, 0, 2).astype(np.float32)


def _nxtomo_with_package(path, frames, angles_deg, entry="entry0000"):
    import nxtomo as nx  # in the test extra: this test must run, never skip
    import pint
    from nxtomo.nxobject.nxdetector import ImageKey

    ureg = pint.get_application_registry()
    flat, dark = _flat()[None], np.full((1, NZ, N), DARK, np.float32)
    data = np.concatenate([dark, dark, flat, flat, frames, flat]).astype(np.float32)
    keys = [ImageKey.DARK_FIELD] * 2 + [ImageKey.FLAT_FIELD] * 2 + [ImageKey.PROJECTION] * len(frames) + \
        [ImageKey.FLAT_FIELD]
    tomo = nx.NXtomo()
    tomo.instrument.detector.data = data
    tomo.instrument.detector.image_key_control = keys
    tomo.sample.rotation_angle = np.concatenate([[0, 0, 0, 0], angles_deg, [180.0]]) * ureg.degree
    tomo.instrument.detector.x_pixel_size = 1.0e-3 * ureg.meter
    tomo.instrument.detector.y_pixel_size = 1.0e-3 * ureg.meter
    tomo.save(str(path), entry, overwrite=True)


def _nxtomo_variant_h5py(path, frames, angles_deg):
    """The entry1/tomo_entry (Diamond) variant, written with h5py following NXtomo."""
    flat, dark = _flat()[None], np.full((1, NZ, N), DARK, np.float32)
    data = np.concatenate([dark, flat, frames[::-1]])  # projections stored in reverse angle order
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry1")
        entry.attrs["NX_class"] = "NXentry"
        tomo = entry.create_group("tomo_entry")
        tomo.attrs["NX_class"] = "NXsubentry"
        det = tomo.create_group("instrument/detector")
        det.create_dataset("data", data=data)
        det.create_dataset("image_key", data=np.array([2, 1] + [0] * len(frames), np.int32))
        det.create_dataset("x_pixel_size", data=1.0).attrs["units"] = "mm"
        tomo.create_dataset("sample/rotation_angle", data=np.concatenate([[0.0, 0.0], angles_deg[::-1]]))
        tomo["sample/rotation_angle"].attrs["units"] = "degree"


def _dxchange(path, frames, angles_deg, *, pixel_um=1000.0, with_theta=True):
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", data=frames)
        f.create_dataset("exchange/data_white", data=np.stack([_flat()] * 3))
        f.create_dataset("exchange/data_dark", data=np.full((2, NZ, N), DARK, np.float32))
        if with_theta:
            f.create_dataset("exchange/theta", data=angles_deg)
        f.create_dataset("measurement/instrument/detector/actual_pixel_size_x", data=pixel_um).attrs["units"] = "um"


def _fbp(sino: Sinogram) -> np.ndarray:
    op = make_projector(sino.geometry, sino.grid, Device("cpu"), "astra")  # FBP only needs its shape
    return np.asarray(run_solver("fbp", op, sino, {}).volume)


@pytest.fixture(scope="module")
def v1_reference(line_integrals, tmp_path_factory):
    """FBP of the layout v1 file holding the line integrals themselves."""
    p, angles = line_integrals
    path = tmp_path_factory.mktemp("v1") / "v1.h5"
    write_sinogram(path, Sinogram(p, Parallel2D(angles=angles, detector_spacing=1.0, detector_count=N),
                                  VolumeGrid((NZ, N, N), 1.0)))
    sino = read_input(path)
    return _fbp(sino)


def _assert_same_image(image, reference):
    err = float(np.abs(image - reference).max()) / float(np.abs(reference).max())
    assert err < REL_TOL, f"relative difference {err:.2e}"


def test_nxtomo_package_file_reconstructs_like_layout_v1(tmp_path, line_integrals, v1_reference):
    p, angles = line_integrals
    path = tmp_path / "scan.nx"
    _nxtomo_with_package(path, _frames(p), np.rad2deg(angles))
    assert detect_format(path) == "nxtomo"
    sino = read_input(path)
    assert sino.data.shape == (NZ, N_ANGLES, N) and sino.grid.shape == (NZ, N, N)
    assert sino.geometry.detector_spacing == pytest.approx(1.0) and sino.grid.voxel_size == pytest.approx(1.0)
    assert np.allclose(sino.geometry.angles, angles, atol=1e-12)
    assert sino.metadata["n_flats"] == 3 and sino.metadata["n_darks"] == 2
    assert np.abs(sino.data - p).max() < 1e-4
    _assert_same_image(_fbp(sino), v1_reference)


def test_tomo_entry_variant_with_rows_and_unsorted_angles(tmp_path, line_integrals, v1_reference):
    p, angles = line_integrals
    path = tmp_path / "dls.nxs"
    _nxtomo_variant_h5py(path, _frames(p), np.rad2deg(angles))
    assert detect_format(path) == "nxtomo"
    sino = read_input(path, rows="1:3")
    assert sino.data.shape == (2, N_ANGLES, N) and sino.metadata["entry"] == "/entry1/tomo_entry"
    assert np.all(np.diff(sino.geometry.angles) > 0)  # views sorted by angle
    _assert_same_image(_fbp(sino), v1_reference[1:3])


def test_dxchange_single_row_reconstructs_like_layout_v1(tmp_path, line_integrals, v1_reference):
    p, angles = line_integrals
    path = tmp_path / "scan.h5"
    _dxchange(path, _frames(p), np.rad2deg(angles), pixel_um=500.0)
    assert detect_format(path) == "dxchange"
    sino = read_input(path, rows=2, pixel_size=1.0)  # the option wins over the file's 0.5 mm
    assert sino.data.shape == (N_ANGLES, N) and sino.grid.shape == (N, N)
    _assert_same_image(_fbp(sino), v1_reference[2])
    from_file = read_input(path, rows=[0, 2], grid_shape=(32, 32))
    assert from_file.geometry.detector_spacing == pytest.approx(0.5) and from_file.grid.voxel_size == 0.5
    assert from_file.grid.shape == (2, 32, 32) and np.array_equal(from_file.data[1], sino.data)


def test_centre_of_rotation_offset_is_removed(tmp_path, line_integrals):
    p, angles = line_integrals
    shift = 3  # the rotation axis projects 3 pixels right of the detector centre
    shifted = np.concatenate([np.repeat(p[..., :1], shift, axis=-1), p[..., :-shift]], axis=-1)
    path = tmp_path / "cor.h5"
    _dxchange(path, _frames(shifted), np.rad2deg(angles))
    plain = read_input(path)
    fixed = read_input(path, cor_offset=float(shift))
    assert np.abs(fixed.data[..., : N - shift] - p[..., : N - shift]).max() < 1e-4
    assert np.abs(plain.data - p).max() > 0.1  # without the offset the data are off-centre


def test_errors_are_one_clear_line(tmp_path, line_integrals):
    p, angles = line_integrals
    frames = _frames(p)
    path = tmp_path / "scan.h5"
    _dxchange(path, frames, np.rad2deg(angles))
    with pytest.raises(InputError, match=r"row 5 is outside the detector's 3 rows") as exc:
        read_input(path, rows=5)
    assert exc.value.field == "rows"
    with pytest.raises(InputError, match="detector_row do not apply to dxchange") as exc:
        read_input(path, detector_row=1)
    assert exc.value.field == "input.detector_row"
    with pytest.raises(InputError, match="no NXtomo entry"):
        read_input(path, format="nxtomo")
    frames[5, 1, 10] = DARK - 1.0  # a reading below the dark current: transmission < 0
    bad = tmp_path / "bad.h5"
    _dxchange(bad, frames, np.rad2deg(angles))
    with pytest.raises(InputError, match=r"1 transmission value\(s\) <= 0 before the log.*set clamp") as exc:
        read_input(bad)
    assert exc.value.file == str(bad)
    clamped = read_input(bad, clamp=1e-3)
    assert clamped.data[1, 5, 10] == pytest.approx(-np.log(1e-3), rel=1e-5)
    no_theta = tmp_path / "no_theta.h5"
    _dxchange(no_theta, frames, np.rad2deg(angles), with_theta=False)
    with pytest.raises(InputError, match="missing dataset") as exc:
        read_input(no_theta)
    assert exc.value.field == "/exchange/theta"
    no_flats = tmp_path / "no_flats.nxs"
    with h5py.File(no_flats, "w") as f:
        f.create_dataset("entry/instrument/detector/data", data=frames)
        f.create_dataset("entry/instrument/detector/image_key", data=np.zeros(N_ANGLES, np.int8))
        f.create_dataset("entry/sample/rotation_angle", data=np.rad2deg(angles))
    with pytest.raises(InputError, match=r"no flat fields \(image_key 1\)"):
        read_input(no_flats)


def test_flat_dark_and_log_maths():
    proj = np.array([[[550.0, 100.0, 1100.0]]], np.float32)
    flat = np.array([[1000.0, 1000.0, 1000.0]], np.float32)
    dark = np.array([[100.0, 100.0, 100.0]], np.float32)
    t = P.flat_dark_correct(proj, flat, dark)
    assert np.allclose(t, [[[0.5, 0.0, 10 / 9]]])
    with pytest.raises(InputError, match=r"1 transmission value\(s\) <= 0"):
        P.minus_log(t)
    assert np.allclose(P.minus_log(t, clamp=1e-6), [[[np.log(2), -np.log(1e-6), -np.log(10 / 9)]]], rtol=1e-5)
    with pytest.raises(InputError, match="flat field <= dark current"):
        P.flat_dark_correct(proj, dark, dark)
    assert np.allclose(P.log_transform_counts(np.array([50.0, 100.0]), 100.0), [np.log(2), 0.0])
    with pytest.raises(InputError, match=r"1 count value\(s\) <= 0"):
        P.log_transform_counts(np.array([0.0, 100.0]), 100.0)
    assert P.log_transform_counts(np.array([0.0]), 100.0, clamp=0.5)[0] == pytest.approx(np.log(200.0))


def test_row_selection_and_detector_shift():
    assert P.parse_rows(None, 4)[0].tolist() == [0, 1, 2, 3]
    rows, single = P.parse_rows(-1, 4)
    assert rows.tolist() == [3] and single
    assert P.parse_rows("1:4:2", 8)[0].tolist() == [1, 3] and not P.parse_rows("1:4:2", 8)[1]
    assert P.parse_rows([5, 1, 1], 8)[0].tolist() == [1, 5]
    for bad, match in (("3:3", "selects no rows"), ("a:b", "integers"), ([0, 9], r"row\(s\) \[9\]"),
                       ("1", "start:stop")):
        with pytest.raises(InputError, match=match):
            P.parse_rows(bad, 8)
    ramp = np.arange(10, dtype=np.float32)[None, :]
    assert np.allclose(P.shift_detector(ramp, 1.5)[0, :8], np.arange(8) + 1.5)




def test_cli_pipeline_on_nxtomo_writes_tiff_nifti_and_windowed_png(tmp_path, capsys, line_integrals):
    from PIL import Image

    from recon_cli.io.hdf5 import read_image
    from recon_cli.io.tiff_nifti import read_nifti, read_tiff

    p, angles = line_integrals
    scan = tmp_path / "scan.nxs"
    _nxtomo_variant_h5py(scan, _frames(p), np.rad2deg(angles))
    out = tmp_path / "out" / "rec.h5"
    pipeline = tmp_path / "nx.yaml"
    pipeline.write_text(f"name: nxtomo-fbp\ninput: {{path: {scan}, format: nxtomo, rows: 1:3}}\ndevice: cpu\n"
                        f"solver: {{name: fbp}}\noutput: {{path: {out}, formats: [hdf5, tiff, nifti]}}\n"
                        "metrics: {list: [residual]}\n")
    code, stdout, err = _recon(capsys, "run", str(pipeline), "--json", "--window", "40,400")
    assert code == 0, err
    outputs = json.loads(stdout)["outputs"]
    assert set(outputs) == {"hdf5", "tiff", "nifti", "png"}
    volume, voxel = read_image(out)
    assert volume.shape == (2, N, N) and voxel == pytest.approx(1.0)  # rows 1:3 stays a string in YAML
    tiff, tiff_voxel = read_tiff(outputs["tiff"])
    nifti, nifti_voxel = read_nifti(outputs["nifti"])
    assert np.array_equal(tiff, volume) and np.array_equal(nifti, volume) and tiff_voxel == nifti_voxel == voxel
    gray = np.asarray(Image.open(outputs["png"]))
    hu = 1000.0 * (volume[1] - 0.0192) / 0.0192
    expected = np.rint(np.clip((hu - (40 - 200)) / 400, 0, 1) * 255)
    assert np.abs(gray.astype(float) - expected).max() <= 1.0
    code, _, err = _recon(capsys, "run", str(pipeline), "--window", "40", "-o", str(tmp_path / "o2.h5"))
    assert code == 2 and "--window" in err and "CENTER,WIDTH" in err


def test_recon_info_on_nxtomo_and_dxchange(tmp_path, capsys, line_integrals):
    p, angles = line_integrals
    nxs, dxc = tmp_path / "a.nxs", tmp_path / "b.h5"
    _nxtomo_variant_h5py(nxs, _frames(p), np.rad2deg(angles))
    _dxchange(dxc, _frames(p), np.rad2deg(angles))
    code, out, err = _recon(capsys, "info", str(nxs), "--json")
    d = json.loads(out)
    assert code == 0 and d["format"] == "nxtomo" and d["entry"] == "/entry1/tomo_entry"
    assert d["detector"]["projections"] == N_ANGLES and d["detector"]["flats"] == 1 and d["detector"]["darks"] == 1
    assert d["angles"]["angle_last_deg"] == pytest.approx(float(np.rad2deg(angles[-1])))
    d = describe(dxc)
    assert d["format"] == "dxchange" and d["detector"]["rows"] == NZ and d["detector"]["pixel_size_mm"] == 1.0
    code, out, _ = _recon(capsys, "info", str(dxc))
    assert code == 0 and "dxchange" in out
