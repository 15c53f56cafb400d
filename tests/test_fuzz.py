"""Property-based tests (hypothesis): the readers and the YAML loader never crash.

Property: on any input, ``read_sinogram`` / ``read_image`` / ``describe`` / ``read_input`` and the
pipeline loader either succeed or raise a :class:`~recon_cli.errors.ReconError` (InputError,
ConfigError) whose message is one line; never another exception, never a hang (hypothesis'
deadline). Inputs: random HDF5 structures grown from a valid layout-v1 file by random
deletions, replacements and attributes (bounded sizes), damaged bytes of a valid file, random
text and bytes as YAML, random YAML documents built from the pipeline's own keys, and random
``--set`` overrides. Example counts are sized for the whole file to run in well under a minute.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from recon_cli.errors import ReconError  # noqa: E402
from recon_cli.geometry import FanFlat2D, VolumeGrid  # noqa: E402
from recon_cli.io.hdf5 import write_sinogram  # noqa: E402
from recon_cli.sinogram import Sinogram  # noqa: E402

#: RECON_FUZZ_SCALE=10 runs ten times the examples, with fresh random ones (default: the same
#: derandomised examples every run, so CI is reproducible). No example database is written.
SCALE = float(os.environ.get("RECON_FUZZ_SCALE", "1") or 1)
FUZZ = settings(deadline=5000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=SCALE == 1, database=None, print_blob=True)


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(max_examples * SCALE)))


def _expect_recon_error_or_success(fn, *args, **kwargs):
    """Call ``fn``; a ReconError is fine (its message must be one line), anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except ReconError as exc:
        assert "\n" not in exc.one_line()
        return None


# ----------------------------------------------------------------------------- HDF5 structures

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8)
SHAPE = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
NUMERIC_DTYPES = st.sampled_from(["f4", "f8", "f2", "i1", "i4", "i8", "u1", "u8", "?", "c8"])

ATTR_VALUE = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(-(10**7), 10**7), max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=4),
    st.lists(st.text(max_size=4), min_size=1, max_size=3),
    hnp.arrays(NUMERIC_DTYPES, SHAPE, elements=None),
)


@st.composite
def dataset_values(draw):
    """A small array of a random dtype (numeric with NaN/Inf/extremes, or strings)."""
    if draw(st.integers(0, 5)) == 0:
        return np.array(draw(st.lists(st.text(max_size=5), max_size=4)), dtype=h5py.string_dtype())
    return draw(hnp.arrays(NUMERIC_DTYPES, SHAPE, elements=None))


#: Attributes the layout-v1 reader looks at, per object, with plausible values to draw from.
GEOMETRY_KEYS = ("type", "detector_spacing", "detector_count", "source_origin", "origin_detector", "detector_rows",
                 "detector_row_spacing")
PLAUSIBLE = {
    "type": st.sampled_from(["parallel", "fanflat", "parallel3d", "cone", "helical", ""]),
    "layout_version": st.sampled_from(["1", "2", "", 1, b"1"]),
    "shape": st.one_of(st.lists(st.integers(-2, 8), min_size=1, max_size=4), st.text(max_size=5)),
}


def _attr(draw, key: str):
    if key in PLAUSIBLE and draw(st.booleans()):
        return draw(PLAUSIBLE[key])
    if draw(st.booleans()):
        return draw(st.one_of(st.integers(-3, 64), st.floats(-2.0, 1000.0)))
    return draw(ATTR_VALUE)


@st.composite
def h5_specs(draw):
    """(objects, root attrs): objects maps an HDF5 path to ("dataset", array, attrs) or ("group", attrs).

    Starts from a valid small layout-v1 file and mutates each object: keep it, drop it, turn it
    into a group, give it random data, or add / change / drop attributes; then adds random objects.
    """
    na, nd, n = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    ns = draw(st.sampled_from([None, 1, 2]))
    sino_shape = (na, nd) if ns is None else (ns, na, nd)
    grid_shape = [n, n] if ns is None else [ns, n, n]
    objects = {
        "sinogram": ["dataset", np.ones(sino_shape, np.float32), {"I0": 1e4}],
        "geometry": ["group", {"type": "fanflat", "detector_spacing": 1.0, "detector_count": nd,
                               "source_origin": 50.0, "origin_detector": 20.0}],
        "geometry/angles": ["dataset", np.linspace(0, 6.28, na), {}],
        "volume": ["group", {"shape": np.array(grid_shape), "voxel_size": 1.0}],
        "reference": ["dataset", np.zeros(grid_shape, np.float32), {}],
        "metadata": ["group", {"phantom": "fuzz"}],
    }
    root_attrs = {"layout_version": "1"}
    for name in list(objects):
        if name not in objects:  # dropped with its parent
            continue
        action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "group", "data", "attrs", "attrs"]))
        obj = objects[name]
        if action == "drop":
            del objects[name]
            for child in [k for k in objects if k.startswith(name + "/")]:
                del objects[child]
        elif action == "group":
            objects[name] = ["group", {}]
        elif action == "data":
            objects[name] = ["dataset", draw(dataset_values()), obj[-1]]
        elif action == "attrs":
            attrs = obj[-1]
            keys = GEOMETRY_KEYS if name == "geometry" else ("shape", "voxel_size", "I0", "sigma", "units")
            for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
                if draw(st.integers(0, 3)) == 0:
                    attrs.pop(key, None)
                else:
                    attrs[key] = _attr(draw, key)
    if draw(st.booleans()):
        root_attrs["layout_version"] = _attr(draw, "layout_version")
    for _ in range(draw(st.integers(0, 2))):
        objects.setdefault(draw(NAME), ["dataset", draw(dataset_values()), {draw(NAME): draw(ATTR_VALUE)}])
    return objects, root_attrs


def write_spec(path: Path, objects: dict, root_attrs: dict) -> None:
    """Write the spec; values h5py cannot store are left out (the reader never sees them)."""
    with h5py.File(path, "w") as f:
        for key, value in root_attrs.items():
            _set_attr(f, key, value)
        for name in sorted(objects, key=lambda k: k.count("/")):
            kind, *rest = objects[name]
            parent = name.rsplit("/", 1)[0] if "/" in name else None
            if parent is not None and parent not in f:
                f.create_group(parent)
            if parent is not None and not isinstance(f[parent], h5py.Group):
                continue
            if kind == "group":
                obj = f.create_group(name)
                attrs = rest[0]
            else:
                data, attrs = rest
                try:
                    obj = f.create_dataset(name, data=data)
                except (TypeError, ValueError):
                    continue
            for key, value in attrs.items():
                _set_attr(obj, key, value)


def _set_attr(obj, key, value) -> None:
    try:
        obj.attrs[key] = value
    except (TypeError, ValueError, OSError):
        pass


def _read_everything(path: Path) -> None:
    """Every reader and describer that takes an HDF5 file, each either fine or a ReconError."""
    from recon_cli.io.formats import describe, read_input
    from recon_cli.io.hdf5 import describe_file, read_image, read_sinogram

    sino = _expect_recon_error_or_success(read_sinogram, path)
    if sino is not None:
        assert sino.data.dtype == np.float32 and np.all(np.isfinite(sino.data))
        assert sino.data.shape[-2:] == (sino.geometry.n_angles, sino.geometry.detector_count)
    _expect_recon_error_or_success(read_image, path)
    _expect_recon_error_or_success(describe_file, path)
    _expect_recon_error_or_success(describe, path)
    _expect_recon_error_or_success(read_input, path)


@fuzz(150)
@given(spec=h5_specs())
def test_hdf5_readers_on_random_structures(spec):
    objects, root_attrs = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.h5"
        write_spec(path, objects, root_attrs)
        _read_everything(path)


def _valid_file_bytes() -> bytes:
    geometry = FanFlat2D(angles=np.linspace(0, 6.28, 8, endpoint=False), detector_spacing=1.0, detector_count=12,
                         source_origin=50.0, origin_detector=20.0)
    grid = VolumeGrid((8, 8), 1.0)
    rng = np.random.default_rng(0)
    sino = Sinogram(rng.random((8, 12), dtype=np.float32), geometry, grid, rng.random((8, 8), dtype=np.float32),
                    {"I0": 1e4, "phantom": "x"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "valid.h5"
        write_sinogram(path, sino)
        return path.read_bytes()


VALID = _valid_file_bytes()


@fuzz(120)
@given(cut=st.integers(0, len(VALID)),
       flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
       tail=st.binary(max_size=64))
@example(cut=0, flips=[], tail=b"")
@example(cut=len(VALID) // 2, flips=[], tail=b"")
@example(cut=len(VALID), flips=[(0, 0)], tail=b"")
def test_hdf5_readers_on_damaged_bytes(cut, flips, tail):
    data = bytearray(VALID)
    for pos, byte in flips:
        data[pos] = byte
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.h5"
        path.write_bytes(bytes(data[:cut]) + tail)
        _read_everything(path)


# ----------------------------------------------------------------------------- YAML pipelines

KEYS = ["name", "input", "path", "format", "device", "projector", "kind", "type", "preprocess", "step",
        "log_transform", "I0", "clamp", "solver", "params", "iterations", "lam", "filter", "model", "output",
        "formats", "metrics", "reference", "list", "mu_water", "mask", "fbp", "sirt", "sgp_tv", "unet", "rows",
        "grid_shape", "voxel_size", "png_window", "hdf5", "png"]
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from(KEYS), st.text(max_size=10))
YAML_VALUE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner,
                                                 max_size=5)), max_leaves=25)

VALID_PIPELINE = ("name: fuzz\ninput: {path: data.h5}\nsolver:\n  name: sirt\n  params: {iterations: 5}\n"
                  "output: {path: out/x.h5, formats: [hdf5]}\n")


def _load_text(text: str):
    from recon_cli.config import config_from_text

    return _expect_recon_error_or_success(config_from_text, text, source="fuzz.yaml")


@fuzz(150)
@given(doc=st.dictionaries(st.sampled_from(KEYS), YAML_VALUE, max_size=8))
def test_pipeline_loader_on_random_documents(doc):
    text = yaml.safe_dump(doc, allow_unicode=True)
    _load_text(text)


@fuzz(150)
@given(text=st.one_of(st.text(max_size=200),
                      st.text(alphabet="{}[]:,-&*!|>'\"#%@`? \n\tab01.e", max_size=120),
                      st.tuples(st.integers(0, len(VALID_PIPELINE)), st.text(max_size=20))
                      .map(lambda t: VALID_PIPELINE[:t[0]] + t[1] + VALID_PIPELINE[t[0]:])))
@example(text="name: &a [*a]\n")
@example(text="a: &x {b: *x}\nname: x\n")
@example(text="name: " + "[" * 3000 + "]" * 3000)
@example(text="a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
              "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
              "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nname: x\n")
@example(text="name: x\nsolver: {name: sirt, params: {iterations: 1" + "0" * 5000 + "}}\n")
@example(text="name: 2001-13-45\n")
@example(text="name: !!python/object/apply:os.system [echo]\n")
def test_pipeline_loader_on_random_text(text):
    _load_text(text)


@fuzz(60)
@given(data=st.binary(max_size=300))
@example(data=b"\xff\xfe\x00\x00")
@example(data=b"\xef\xbb\xbfname: x\n")
def test_pipeline_file_of_random_bytes(data):
    from recon_cli.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        path.write_bytes(data)
        _expect_recon_error_or_success(load_config, path)


@fuzz(150)
@given(overrides=st.lists(st.one_of(
    st.text(max_size=30),
    st.tuples(st.lists(st.one_of(st.sampled_from(KEYS), st.sampled_from(["0", "1", "-1", ""])), min_size=1,
                       max_size=4), st.text(max_size=12)).map(lambda t: ".".join(t[0]) + "=" + t[1]),
), max_size=3))
@example(overrides=["solver.params.iterations=" + "[" * 3000])
@example(overrides=["solver.params=&a [*a]"])
@example(overrides=["preprocess.0.step=log_transform"])
def test_overrides_on_random_strings(overrides):
    from recon_cli.config import config_from_text

    _expect_recon_error_or_success(config_from_text, VALID_PIPELINE, source="fuzz.yaml", overrides=overrides)


# ----------------------------------------------------------------------------- DICOM files

#: Tags the CT readers look at (tag keyword -> its VR in the data dictionary).
DICOM_TAGS = ["Modality", "SOPClassUID", "SeriesInstanceUID", "PixelSpacing", "ImagePositionPatient",
              "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "Rows", "Columns", "NumberOfFrames",
              "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation", "SliceThickness",
              "PixelPaddingValue", "PhotometricInterpretation", "PatientName"]
DICOM_VALUE = st.one_of(
    st.none(),  # delete the tag
    st.tuples(st.sampled_from(["LO", "UN", "DS", "IS", "US", "SH"]), st.binary(max_size=16)),  # raw bytes, any VR
    st.tuples(st.just("LO"), st.text(alphabet="0123456789.-+eE\\ abcnaNI", max_size=16)),
)


def _dicom_series_bytes() -> list[bytes]:
    from recon_cli.io.dicom_writer import write_series_hu

    hu = np.zeros((2, 8, 8), np.float32)
    hu[:, 2:6, 2:6] = 40.0
    with tempfile.TemporaryDirectory() as tmp:
        return [p.read_bytes() for p in write_series_hu(Path(tmp) / "s", hu, (2.0, 0.5, 0.5))]


SERIES = _dicom_series_bytes()


def _edit_dicom(path: Path, changes: dict) -> None:
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        tag = Tag(tag_for_keyword(keyword))
        if tag in ds:
            del ds[tag]
        if value is None:
            continue
        vr, raw = value
        data = raw.encode("latin-1") if isinstance(raw, str) else raw
        if len(data) % 2:
            data += b" "
        ds[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)  # kept as the bytes given
    ds.save_as(path)


@fuzz(80)
@given(changes=st.dictionaries(st.sampled_from(DICOM_TAGS), DICOM_VALUE, max_size=3),
       which=st.integers(0, 1), cut=st.one_of(st.none(), st.integers(0, len(SERIES[0]))))
@example(changes={"PixelSpacing": ("UN", b"\x00\x01")}, which=0, cut=None)
@example(changes={"Rows": ("US", b"\xff\xff"), "Columns": ("US", b"\xff\xff")}, which=0, cut=None)
@example(changes={"NumberOfFrames": ("IS", b"-3")}, which=1, cut=None)
def test_dicom_readers_on_damaged_files(changes, which, cut):
    from recon_cli.io.dicom_image import read_ct_slice
    from recon_cli.io.dicom_series import describe_series, read_series

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        folder.mkdir()
        files = []
        for k, data in enumerate(SERIES):
            files.append(folder / f"CT{k + 1:06d}.dcm")
            files[-1].write_bytes(data)
        try:
            _edit_dicom(files[which], changes)
        except Exception:  # pydicom cannot write this combination: nothing to read
            hypothesis.assume(False)
        if cut is not None:
            files[which].write_bytes(files[which].read_bytes()[:cut])
        series = _expect_recon_error_or_success(read_series, folder)
        if series is not None:
            assert series.volume.dtype == np.float32 and series.volume.ndim == 3
        _expect_recon_error_or_success(describe_series, folder)
        _expect_recon_error_or_success(read_ct_slice, files[which])
