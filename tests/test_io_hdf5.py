"""HDF5 layout v1 (read/write/validate/describe), atomic outputs and PNG previews."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from recon_cli.errors import InputError
from recon_cli.geometry import Cone3D, FanFlat2D, Parallel2D, Parallel3D, VolumeGrid
from recon_cli.io.atomic import atomic_path
from recon_cli.io.hdf5 import describe_file, read_image, read_sinogram, write_reconstruction, write_sinogram
from recon_cli.io.png import to_uint8, write_png
from recon_cli.sinogram import Sinogram

N_ANG, N_DET, N = 12, 16, 10
RNG = np.random.default_rng(1234)


def _angles(n=N_ANG):
    return np.linspace(0.0, np.pi, n, endpoint=False) + 1e-3  # not representable in float32


def _sino_2d(n_slices=None, reference=True, metadata=None):
    geo = FanFlat2D(angles=_angles(), detector_spacing=0.8, detector_count=N_DET,
                    source_origin=500.0, origin_detector=300.5)
    shape = geo.sinogram_shape(n_slices)
    grid = VolumeGrid((N, N) if n_slices is None else (n_slices, N, N), 0.75)
    data = RNG.standard_normal(shape).astype(np.float32) * np.float32(3.3)
    ref = RNG.random(grid.shape).astype(np.float32) * np.float32(0.04) if reference else None
    return Sinogram(data, geo, grid, ref, dict(metadata or {}))


def _assert_same(a: Sinogram, b: Sinogram):
    assert b.data.dtype == np.float32 and b.data.flags["C_CONTIGUOUS"]
    assert np.array_equal(a.data, b.data)
    assert type(a.geometry) is type(b.geometry)
    assert a.geometry.attrs() == b.geometry.attrs()
    assert b.geometry.angles.dtype == np.float64 and np.array_equal(a.geometry.angles, b.geometry.angles)
    assert a.grid.shape == b.grid.shape and a.grid.voxel_size == b.grid.voxel_size
    if a.reference is None:
        assert b.reference is None
    else:
        assert b.reference.dtype == np.float32 and np.array_equal(a.reference, b.reference)


# ------------------------------------------------------------------ round trips

def test_round_trip_single_slice_with_reference_and_I0(tmp_path):
    sino = _sino_2d(metadata={"I0": 1.0e5, "phantom": "shepp_logan", "seed": 3})
    path = tmp_path / "s.h5"
    write_sinogram(path, sino)
    back = read_sinogram(path)
    _assert_same(sino, back)
    assert back.metadata == {"I0": 1.0e5, "phantom": "shepp_logan", "seed": 3, "source": str(path)}
    with h5py.File(path, "r") as f:
        assert f.attrs["layout_version"] == "1"
        assert f["sinogram"].attrs["I0"] == 1.0e5
        assert f["geometry"].attrs["type"] == "fanflat"
        assert list(f["volume"].attrs["shape"]) == [N, N]


def test_round_trip_stack_with_sigma(tmp_path):
    sino = _sino_2d(n_slices=3, metadata={"sigma": 0.01, "source": "elsewhere.h5"})
    path = tmp_path / "stack.h5"
    write_sinogram(path, sino)
    back = read_sinogram(path)
    _assert_same(sino, back)
    assert back.metadata == {"sigma": 0.01, "source": str(path)}


@pytest.mark.parametrize("cls,extra", [(Parallel2D, {}), (Parallel3D, {"detector_rows": 4, "detector_row_spacing": 0.5}),
                                       (Cone3D, {"detector_rows": 4, "detector_row_spacing": 0.5,
                                                 "source_origin": 400.0, "origin_detector": 100.0})])
def test_round_trip_other_geometries(tmp_path, cls, extra):
    geo = cls(angles=_angles(), detector_spacing=1.25, detector_count=N_DET, **extra)
    grid = VolumeGrid((4, N, N) if geo.is_3d else (N, N), 1.5)
    data = RNG.random(geo.sinogram_shape()).astype(np.float32)
    sino = Sinogram(data, geo, grid)
    write_sinogram(tmp_path / "g.h5", sino)
    _assert_same(sino, read_sinogram(tmp_path / "g.h5"))


def test_float64_input_is_converted_to_float32(tmp_path):
    sino = _sino_2d(reference=False)
    path = tmp_path / "f64.h5"
    write_sinogram(path, sino)
    with h5py.File(path, "a") as f:
        del f["sinogram"]
        f["sinogram"] = np.asfortranarray(sino.data.astype(np.float64))
    back = read_sinogram(path)
    assert back.data.dtype == np.float32 and back.data.flags["C_CONTIGUOUS"]
    assert np.array_equal(back.data, sino.data)


def test_write_sinogram_refuses_inconsistent_shapes_and_writes_nothing(tmp_path):
    sino = _sino_2d(reference=False)
    sino.data = sino.data[:, :-1]
    with pytest.raises(InputError) as err:
        write_sinogram(tmp_path / "bad.h5", sino)
    assert err.value.field == "/geometry@detector_count"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ malformed inputs

def _set(name, value):
    def mutate(f):
        del f[name]
        f[name] = value
    return mutate


def _attr(obj, key, value):
    def mutate(f):
        if value is None:
            del f[obj].attrs[key]
        else:
            f[obj].attrs[key] = value
    return mutate


def _delete(name):
    def mutate(f):
        del f[name]
    return mutate


def _nan_at(name, value):
    def mutate(f):
        data = f[name][()]
        data.flat[5] = value
        f[name][...] = data
    return mutate


def _group_instead(f):
    del f["sinogram"]
    f.create_group("sinogram")


BAD_FILES = [
    ("no layout_version", _attr("/", "layout_version", None), "/@layout_version"),
    ("layout_version 2", _attr("/", "layout_version", "2"), "/@layout_version"),
    ("no /sinogram", _delete("sinogram"), "/sinogram"),
    ("/sinogram is a group", _group_instead, "/sinogram"),
    ("no /geometry", _delete("geometry"), "/geometry"),
    ("no /geometry/angles", _delete("geometry/angles"), "/geometry/angles"),
    ("no /volume", _delete("volume"), "/volume"),
    ("int sinogram", _set("sinogram", np.ones((N_ANG, N_DET), np.int16)), "/sinogram"),
    ("rank-1 sinogram", _set("sinogram", np.ones(N_ANG * N_DET, np.float32)), "/sinogram"),
    ("rank-4 sinogram", _set("sinogram", np.ones((1, 1, N_ANG, N_DET), np.float32)), "/sinogram"),
    ("angle count", _set("geometry/angles", _angles(N_ANG - 1)), "/geometry/angles"),
    ("2-D angles", _set("geometry/angles", _angles().reshape(3, -1)), "/geometry/angles"),
    ("NaN angle", _nan_at("geometry/angles", np.nan), "/geometry/angles"),
    ("detector_count", _attr("geometry", "detector_count", N_DET - 1), "/geometry@detector_count"),
    ("fractional detector_count", _attr("geometry", "detector_count", N_DET + 0.5), "/geometry@detector_count"),
    ("zero detector_count", _attr("geometry", "detector_count", 0), "/geometry@detector_count"),
    ("missing detector_spacing", _attr("geometry", "detector_spacing", None), "/geometry@detector_spacing"),
    ("zero detector_spacing", _attr("geometry", "detector_spacing", 0.0), "/geometry@detector_spacing"),
    ("text detector_spacing", _attr("geometry", "detector_spacing", "wide"), "/geometry@detector_spacing"),
    ("missing source_origin", _attr("geometry", "source_origin", None), "/geometry@source_origin"),
    ("negative origin_detector", _attr("geometry", "origin_detector", -3.0), "/geometry@origin_detector"),
    ("unknown geometry type", _attr("geometry", "type", "helical"), "/geometry@type"),
    ("missing geometry type", _attr("geometry", "type", None), "/geometry@type"),
    ("missing volume shape", _attr("volume", "shape", None), "/volume@shape"),
    ("negative volume size", _attr("volume", "shape", np.array([-N, N])), "/volume@shape"),
    ("rank-4 volume shape", _attr("volume", "shape", np.array([1, 1, N, N])), "/volume@shape"),
    ("missing voxel_size", _attr("volume", "voxel_size", None), "/volume@voxel_size"),
    ("zero voxel_size", _attr("volume", "voxel_size", 0.0), "/volume@voxel_size"),
    ("stack vs 2-D volume", _set("sinogram", np.ones((3, N_ANG, N_DET), np.float32)), "/volume@shape"),
    ("stack vs volume slices", lambda f: (_set("sinogram", np.ones((3, N_ANG, N_DET), np.float32))(f),
                                          _attr("volume", "shape", np.array([4, N, N]))(f),
                                          _delete("reference")(f)), "/volume@shape"),
    ("NaN in sinogram", _nan_at("sinogram", np.nan), "/sinogram"),
    ("Inf in sinogram", _nan_at("sinogram", -np.inf), "/sinogram"),
    ("float64 overflow to Inf", _set("sinogram", np.full((N_ANG, N_DET), 1e300)), "/sinogram"),
    ("reference shape", _set("reference", np.zeros((N, N + 1), np.float32)), "/reference"),
    ("NaN in reference", _nan_at("reference", np.nan), "/reference"),
    ("negative I0", _attr("sinogram", "I0", -5.0), "/sinogram@I0"),
    ("non-scalar sigma", _attr("sinogram", "sigma", np.array([0.1, 0.2])), "/sinogram@sigma"),
]


@pytest.mark.parametrize("mutate,field", [(m, f) for _, m, f in BAD_FILES], ids=[i for i, _, _ in BAD_FILES])
def test_malformed_file_raises_input_error_naming_file_and_field(tmp_path, mutate, field):
    path = tmp_path / "bad.h5"
    write_sinogram(path, _sino_2d())
    with h5py.File(path, "a") as f:
        mutate(f)
    with pytest.raises(InputError) as err:
        read_sinogram(path)
    msg = str(err.value)
    assert err.value.field == field
    assert err.value.file == str(path)
    assert msg.startswith(f"{path}: {field}: ") and "\n" not in msg
    assert err.value.exit_code == 2


def test_3d_geometry_needs_3d_sinogram_and_matching_rows(tmp_path):
    geo = Parallel3D(angles=_angles(), detector_spacing=1.0, detector_count=N_DET, detector_rows=4,
                     detector_row_spacing=1.0)
    path = tmp_path / "p3.h5"
    write_sinogram(path, Sinogram(np.zeros((4, N_ANG, N_DET), np.float32), geo, VolumeGrid((4, N, N))))
    with h5py.File(path, "a") as f:
        f["geometry"].attrs["detector_rows"] = 5
    with pytest.raises(InputError) as err:
        read_sinogram(path)
    assert err.value.field == "/geometry@detector_rows"
    with h5py.File(path, "a") as f:
        f["geometry"].attrs["detector_rows"] = 4
        f["volume"].attrs["shape"] = np.array([N, N])
    with pytest.raises(InputError) as err:
        read_sinogram(path)
    assert err.value.field == "/volume@shape"


def _truncated(tmp_path):
    good = tmp_path / "good.h5"
    write_sinogram(good, _sino_2d())
    path = tmp_path / "truncated.h5"
    path.write_bytes(good.read_bytes()[:3000])
    return path


@pytest.mark.parametrize("make,words", [
    (lambda p: p / "missing.h5", "not found"),
    (lambda p: (p / "text.h5").write_text("not hdf5\n") and p / "text.h5", "not an HDF5 file"),
    (lambda p: (p / "empty.h5").write_bytes(b"") or p / "empty.h5", "not an HDF5 file"),
    (_truncated, "truncated"),
    (lambda p: (p / "folder.h5").mkdir() or p / "folder.h5", "folder"),
], ids=["missing", "text", "empty", "truncated", "folder"])
def test_unreadable_files_raise_input_error_naming_file(tmp_path, make, words):
    path = make(tmp_path)
    for reader in (read_sinogram, read_image, describe_file):
        with pytest.raises(InputError) as err:
            reader(path)
        assert err.value.file == str(path)
        assert str(err.value).startswith(f"{path}: ") and words in str(err.value)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------ reconstruction files

def test_write_reconstruction_contents(tmp_path):
    vol = RNG.random((2, N, N))  # float64 in, float32 stored
    path = tmp_path / "out" / "recon.h5"  # parent created
    write_reconstruction(
        path, vol, 0.75, metrics={"psnr": 31.5, "ssim": 0.91, "skipped": None},
        provenance={"command": "recon run p.yaml", "config": {"solver": {"name": "tv", "lam": 1e-3}},
                    "versions": ["astra 2.5", "numpy 2"]},
        history={"objective": [3.0, 2.0, 1.5], "gap": np.array([1.0, 0.5, 0.25])},
        info={"iterations": 3, "stopped": "max_iterations", "lam": 1e-3, "converged": False})
    with h5py.File(path, "r") as f:
        assert f.attrs["layout_version"] == "1"
        rec = f["reconstruction"]
        assert rec.dtype == np.float32 and rec.shape == (2, N, N)
        assert np.array_equal(rec[()], vol.astype(np.float32))
        assert rec.attrs["voxel_size"] == 0.75 and rec.attrs["units"] == "1/mm"
        assert dict(f["metrics"].attrs) == {"psnr": 31.5, "ssim": 0.91}
        prov = f["provenance"].attrs
        assert prov["command"] == "recon run p.yaml"
        assert json.loads(prov["config"]) == {"solver": {"name": "tv", "lam": 1e-3}}
        assert json.loads(prov["versions"]) == ["astra 2.5", "numpy 2"]
        assert np.array_equal(f["history/objective"][()], [3.0, 2.0, 1.5])
        assert np.array_equal(f["history/gap"][()], [1.0, 0.5, 0.25])
        info = f["info"].attrs
        assert info["iterations"] == 3 and info["stopped"] == "max_iterations" and info["lam"] == 1e-3
        assert not info["converged"]
    image, voxel = read_image(path)
    assert voxel == 0.75 and image.dtype == np.float32 and np.array_equal(image, vol.astype(np.float32))


def test_history_taken_from_info_and_none_becomes_nan(tmp_path):
    path = tmp_path / "r.h5"
    write_reconstruction(path, np.zeros((N, N), np.float32), 1.0, metrics={}, provenance={},
                         info={"iterations": 2, "history": {"objective": [1.0, None]}})
    with h5py.File(path, "r") as f:
        assert "history" not in f["info"].attrs
        obj = f["history/objective"][()]
        assert obj[0] == 1.0 and np.isnan(obj[1])


def test_long_provenance_string_is_stored_as_dataset(tmp_path):
    path = tmp_path / "r.h5"
    yaml_text = "solver: tv\n" * 10_000
    write_reconstruction(path, np.zeros((N, N), np.float32), 1.0, metrics={}, provenance={"pipeline": yaml_text})
    assert describe_file(path)["provenance"]["pipeline"] == yaml_text


def test_read_image_sources_and_voxel_size(tmp_path):
    sino = _sino_2d()
    write_sinogram(tmp_path / "s.h5", sino)
    image, voxel = read_image(tmp_path / "s.h5")  # /reference with /volume@voxel_size
    assert voxel == 0.75 and np.array_equal(image, sino.reference)
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["image"] = np.ones((N, N), np.float64)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "img.h5")
    assert err.value.field == "/image@voxel_size"
    with h5py.File(tmp_path / "img.h5", "a") as f:
        f["image"].attrs["voxel_size"] = 0.5
    image, voxel = read_image(tmp_path / "img.h5")
    assert voxel == 0.5 and image.dtype == np.float32
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f["other"] = np.ones(3)
    with pytest.raises(InputError, match="no image found"):
        read_image(tmp_path / "none.h5")


def test_describe_file(tmp_path):
    sino = _sino_2d(n_slices=2, metadata={"I0": 5e4, "phantom": "coule"})
    write_sinogram(tmp_path / "s.h5", sino)
    d = describe_file(tmp_path / "s.h5")
    assert d["format"] == "hdf5-v1-sinogram"
    assert d["sinogram"]["shape"] == [2, N_ANG, N_DET] and d["sinogram"]["dtype"] == "float32"
    assert d["sinogram"]["max"] == float(sino.data.max())
    assert d["geometry"]["type"] == "fanflat" and d["geometry"]["n_angles"] == N_ANG
    assert d["geometry"]["source_origin"] == 500.0
    assert d["volume"] == {"shape": [2, N, N], "voxel_size": 0.75}
    assert d["has_reference"] is True and d["noise"] == {"I0": 5e4} and d["metadata"] == {"phantom": "coule"}
    json.dumps(d)  # plain values only
    write_reconstruction(tmp_path / "r.h5", np.ones((N, N)), 1.0, metrics={"psnr": 20.0}, provenance={"a": 1},
                         history={"objective": [1.0, 2.0]})
    r = describe_file(tmp_path / "r.h5")
    assert r["format"] == "hdf5-v1-reconstruction" and r["reconstruction"]["shape"] == [N, N]
    assert r["metrics"] == {"psnr": 20.0} and r["history"] == {"objective": 2}
    json.dumps(r)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["entry/data"] = np.zeros((2, 3), np.uint16)
    o = describe_file(tmp_path / "other.h5")
    assert o["format"] == "hdf5" and o["datasets"] == {"/entry/data": {"shape": [2, 3], "dtype": "uint16"}}


def test_describe_file_validates_sinograms(tmp_path):
    path = tmp_path / "s.h5"
    write_sinogram(path, _sino_2d())
    with h5py.File(path, "a") as f:
        f["geometry"].attrs["detector_count"] = 3
    with pytest.raises(InputError) as err:
        describe_file(path)
    assert err.value.field == "/geometry@detector_count"


# ------------------------------------------------------------------ atomic outputs

def test_atomic_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            assert tmp.parent == tmp_path and tmp != target
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_refuses_existing_and_overwrites_on_request(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(InputError) as err:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    assert str(err.value) == f"{target}: exists; use --overwrite"
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


def test_writers_refuse_existing_outputs_and_clean_up_on_failure(tmp_path):
    path = tmp_path / "r.h5"
    write_reconstruction(path, np.ones((N, N)), 1.0, metrics={}, provenance={})
    before = path.read_bytes()
    with pytest.raises(InputError, match="exists; use --overwrite"):
        write_reconstruction(path, np.zeros((N, N)), 1.0, metrics={}, provenance={})
    with pytest.raises(InputError, match="exists; use --overwrite"):
        write_sinogram(path, _sino_2d())
    with pytest.raises(InputError, match="exists; use --overwrite"):
        write_png(path, np.ones((N, N)))
    assert path.read_bytes() == before
    # a failure half-way through writing (history value not a number) leaves no file at all
    with pytest.raises(ValueError):
        write_reconstruction(tmp_path / "half.h5", np.ones((N, N)), 1.0, metrics={}, provenance={},
                             history={"objective": ["not a number"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]
    write_reconstruction(path, np.zeros((N, N)), 1.0, metrics={}, provenance={}, overwrite=True)
    assert np.array_equal(read_image(path)[0], np.zeros((N, N)))


# ------------------------------------------------------------------ PNG previews

def test_png_window_in_hounsfield_units_and_orientation(tmp_path):
    mu_water = 0.0192
    img = np.full((8, 6), mu_water, np.float32)  # water: 0 HU
    img[0, :] = 2 * mu_water                       # top row: +1000 HU
    img[-1, :] = 0.0                               # bottom row: air, -1000 HU
    img[3, 2] = 1.5 * mu_water                     # +500 HU
    path = tmp_path / "w.png"
    write_png(path, img, window=(0.0, 2000.0))
    png = np.asarray(Image.open(path))
    assert Image.open(path).mode == "L" and png.shape == (8, 6)
    assert (png[0] == 255).all() and (png[-1] == 0).all()
    assert png[1, 0] == 128 and png[3, 2] == 191  # rint(127.5), rint(0.75 * 255)
    narrow = to_uint8(img, window=(0.0, 400.0))   # [-200, 200] HU
    assert narrow[0, 0] == 255 and narrow[-1, 0] == 0 and narrow[1, 0] == 128


def test_png_min_max_and_stack_middle_slice(tmp_path):
    stack = np.zeros((3, 4, 5), np.float32)
    stack[1] = np.arange(20, dtype=np.float32).reshape(4, 5) * 0.01 + 0.5
    write_png(tmp_path / "s.png", stack)
    png = np.asarray(Image.open(tmp_path / "s.png"))
    assert png.shape == (4, 5) and png[0, 0] == 0 and png[-1, -1] == 255
    assert png[0, 1] == round(255 / 19)
    assert (to_uint8(np.full((3, 3), 7.0)) == 0).all()  # constant image
    assert list(tmp_path.iterdir()) == [tmp_path / "s.png"]
