"""Bad input through the real command line: exit code 2, one ``Error:`` line naming the file and the
problem, and nothing written.

Each case of the table builds one malformed input in a folder of its own and runs ``recon ...``
there through the console-script entry point (``recon_cli.cli.main.main``, in this process, so the
table stays fast); a few cases run again as real processes (``python -m recon_cli``), where the
process's own logging set-up writes to stderr. Checks:

* exit code 2 and no traceback;
* apart from log records (``LEVEL logger: message``), stderr is exactly one line, it starts with
  ``Error:`` and contains every expected piece (the file's name, the field / tag, the problem);
* the case folder is unchanged afterwards: no output, no temporary file, no folder (an output that
  existed before keeps its bytes and time stamp).

DICOM image series cannot be a pipeline input (``recon run`` refuses them: they are images, not
projections), so single-slice DICOM problems go through ``recon simulate --image`` and series
problems through ``recon info`` and, at the end of this file, through the reader
(``recon_cli.io.dicom_series.read_series``) directly.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import yaml

from recon_cli.backend import gpu_available
from recon_cli.errors import InputError
from recon_cli.geometry import Parallel2D, VolumeGrid, fingerprint
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.sinogram import Sinogram

N_ANGLES, N_DET, N = 16, 24, 16
#: Lines of stderr that are log records, not the error message.
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING) [\w.]+: ")


# ----------------------------------------------------------------------------- building inputs


def geometry(n_angles: int = N_ANGLES, n_det: int = N_DET) -> Parallel2D:
    return Parallel2D(angles=np.linspace(0, np.pi, n_angles, endpoint=False), detector_spacing=1.0,
                      detector_count=n_det)


def good_h5(path: Path, *, counts: bool = False) -> Path:
    """A small valid layout-v1 sinogram (16 angles x 24 detectors, 16x16 grid, with /reference).

    ``counts``: raw photon counts I0 * exp(-p) instead of line integrals (for log_transform).
    """
    rng = np.random.default_rng(0)
    data = rng.random((N_ANGLES, N_DET), dtype=np.float32) * np.float32(0.5)
    meta = {}
    if counts:
        data = (1.0e4 * np.exp(-data)).astype(np.float32)
        meta = {"I0": 1.0e4}
    ref = np.zeros((N, N), np.float32)
    ref[4:12, 4:12] = 0.0192
    path.parent.mkdir(parents=True, exist_ok=True)
    write_sinogram(path, Sinogram(data, geometry(), VolumeGrid((N, N), 1.0), ref, meta), overwrite=True)
    return path


def edited_h5(path: Path, edit: Callable[[h5py.File], None], *, counts: bool = False) -> Path:
    """A good file changed by ``edit(f)`` (opened read-write)."""
    good_h5(path, counts=counts)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def replace_dataset(name: str, data=None, **kwargs) -> Callable[[h5py.File], None]:
    def edit(f):
        attrs = dict(f[name].attrs) if name in f and isinstance(f[name], h5py.Dataset) else {}
        del f[name]
        ds = f.create_dataset(name, data=data, **kwargs)
        for k, v in attrs.items():
            ds.attrs[k] = v
    return edit


def set_attr(obj: str, key: str, value) -> Callable[[h5py.File], None]:
    def edit(f):
        f[obj].attrs[key] = value
    return edit


def del_attr(obj: str, key: str) -> Callable[[h5py.File], None]:
    def edit(f):
        del f[obj].attrs[key]
    return edit


def delete(name: str) -> Callable[[h5py.File], None]:
    def edit(f):
        del f[name]
    return edit


def with_value(name: str, index, value) -> Callable[[h5py.File], None]:
    def edit(f):
        data = f[name][()]
        data[index] = value
        replace_dataset(name, data)(f)
    return edit


def pipeline(d: Path, name: str = "p.yaml", *, input_path: Path | None = None, **sections) -> Path:
    """A pipeline YAML (FBP, outputs hdf5 + png under d/out) with sections replaced by ``sections``."""
    raw = {"name": "bad-input", "input": {"path": str(input_path or d / "in" / "good.h5")},
           "solver": {"name": "fbp"},
           "output": {"path": str(d / "out" / "default.h5"), "formats": ["hdf5", "png"]}}
    raw.update(sections)
    path = d / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def dicom_slice(folder: Path, **changes) -> Path:
    """One CT slice written by recon-cli's DICOM writer, then edited (value None deletes the tag)."""
    import pydicom

    from recon_cli.io.dicom_writer import write_series_hu

    hu = np.zeros((1, N, N), np.float32)
    hu[0, 4:12, 4:12] = 100.0
    [path] = write_series_hu(folder, hu, 0.8)
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)
    return path


def onnx_identity(path: Path, meta: dict | None) -> Path:
    """A real ONNX model (y = x) carrying recon-cli metadata ``meta``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "height", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, "height", "width"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "recon_cli", json.dumps(meta)
    onnx.save(model, str(path))
    return path


def model_meta(geom: Parallel2D, grid: VolumeGrid) -> dict:
    """recon-cli model metadata for a model trained on ``geom`` / ``grid`` with FBP inputs."""
    return {"format": "recon-cli-model/1", "name": "other-geometry",
            "normalization": {"input_scale": 0.02, "output_scale": 0.02}, "pad_multiple": 1,
            "geometry": {"attrs": geom.attrs(), "angles": geom.angles.tolist(),
                         "fingerprint": fingerprint(geom, grid)},
            "grid": {"shape": list(grid.shape), "voxel_size": grid.voxel_size}, "noise": {},
            "input": {"name": "fbp"}}


def torch_unet_onnx(path: Path, meta: dict) -> Path:
    """A tiny untrained U-Net (recon_cli.learn.unet) exported to ONNX with ``meta``."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    import warnings

    from recon_cli.learn.unet import UNet

    net = UNet(depth=1, base_channels=2).eval()
    raw = path.with_name("raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, N, N),), str(raw), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "h", 3: "w"}},
                          opset_version=17, dynamo=False)
    proto = onnx.load(str(raw))
    raw.unlink()
    entry = proto.metadata_props.add()
    entry.key, entry.value = "recon_cli", json.dumps({**meta, "pad_multiple": net.pad_multiple})
    onnx.save(proto, str(path))
    return path


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    """``argv`` for recon; ``expect``: pieces the error line must contain."""

    argv: list[str]
    expect: list[str]
    env: dict[str, str] = field(default_factory=dict)


#: id -> builder(case folder) -> Case. The folder holds in/ (inputs) and out/ (empty output folder).
CASES: dict[str, Callable[[Path], Case]] = {}
#: ids skipped on a machine with a usable GPU (they test its absence).
NEEDS_NO_GPU = {"device-gpu-without-gpu"}


def case(name: str):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


def run_input(d: Path, bad: Path, *more: str, pipe: Path | None = None) -> list[str]:
    """``recon run PIPELINE -i BAD -o d/out/recon.h5`` (the default FBP pipeline)."""
    return ["run", str(pipe or pipeline(d)), "-i", str(bad), "-o", str(d / "out" / "recon.h5"), *more]


def h5_case(name: str, edit, expect: list[str], *, counts: bool = False, pipe_sections: dict | None = None):
    """A `recon run` case on a good file changed by ``edit``; ``expect`` besides the file's name."""

    def build(d: Path) -> Case:
        bad = edited_h5(d / "in" / f"{name}.h5", edit, counts=counts)
        pipe = pipeline(d, **pipe_sections) if pipe_sections else None
        return Case(run_input(d, bad, pipe=pipe), [f"{name}.h5", *expect])

    case(name)(build)


# --- HDF5 files that are not (whole) HDF5 files


@case("empty-file")
def _(d):
    bad = d / "in" / "empty.h5"
    bad.touch()
    return Case(run_input(d, bad), ["empty.h5", "unknown file format"])


@case("truncated-hdf5")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    bad = d / "in" / "truncated.h5"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    return Case(run_input(d, bad), ["truncated.h5", "truncated or corrupt"])


@case("random-bytes")
def _(d):
    bad = d / "in" / "noise.h5"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return Case(run_input(d, bad), ["noise.h5", "unknown file format"])


@case("input-not-found")
def _(d):
    return Case(run_input(d, d / "in" / "missing.h5"), ["missing.h5", "not found"])


@case("input-is-a-folder-without-dicom")
def _(d):
    folder = d / "in" / "scans"
    folder.mkdir()
    (folder / "notes.txt").write_text("no projections here\n")
    return Case(run_input(d, folder), ["scans", "neither DICOM-CT-PD projections nor DICOM images"])


# --- layout v1: missing datasets, groups and attributes

h5_case("missing-sinogram", delete("sinogram"), ["/sinogram", "missing dataset"])
h5_case("missing-angles", delete("geometry/angles"), ["/geometry/angles", "missing dataset"])
h5_case("missing-volume-group", delete("volume"), ["/volume", "missing group"])
h5_case("missing-layout-version", del_attr("/", "layout_version"), ["/@layout_version", "missing attribute"])
h5_case("unsupported-layout-version", set_attr("/", "layout_version", "7"), ["/@layout_version", "unsupported"])
h5_case("missing-geometry-type", del_attr("geometry", "type"), ["/geometry@type", "missing attribute"])
h5_case("missing-detector-count", del_attr("geometry", "detector_count"),
        ["/geometry@detector_count", "missing attribute"])
h5_case("missing-voxel-size", del_attr("volume", "voxel_size"), ["/volume@voxel_size", "missing attribute"])
h5_case("sinogram-is-a-group", lambda f: (f.__delitem__("sinogram"), f.create_group("sinogram")),
        ["/sinogram", "found a group"])

# --- wrong types, ranks and values

h5_case("integer-sinogram", replace_dataset("sinogram", np.ones((N_ANGLES, N_DET), np.int32)),
        ["/sinogram", "floating point", "int32"])
h5_case("string-sinogram", replace_dataset("sinogram", np.array(["a", "b"], dtype=h5py.string_dtype())),
        ["/sinogram", "floating point"])
h5_case("sinogram-rank-1", replace_dataset("sinogram", np.ones(N_DET, np.float32)), ["/sinogram", "2-D", "[24]"])
h5_case("sinogram-rank-4", replace_dataset("sinogram", np.ones((1, 1, N_ANGLES, N_DET), np.float32)),
        ["/sinogram", "[1, 1, 16, 24]"])
h5_case("nan-in-sinogram", with_value("sinogram", (3, 5), np.nan), ["/sinogram", "NaN or Inf"])
h5_case("inf-in-sinogram", with_value("sinogram", (0, 0), np.inf), ["/sinogram", "NaN or Inf"])
h5_case("nan-in-reference", with_value("reference", (2, 2), np.nan), ["/reference", "NaN or Inf"])
h5_case("nan-in-angles", with_value("geometry/angles", 4, np.nan), ["/geometry/angles", "NaN or Inf"])
h5_case("angles-2d", replace_dataset("geometry/angles", np.zeros((4, 4))), ["/geometry/angles", "1-D"])
h5_case("angle-count-mismatch", replace_dataset("geometry/angles", np.linspace(0, np.pi, 15, endpoint=False)),
        ["/geometry/angles", "15 angles", "16"])
h5_case("detector-count-mismatch", set_attr("geometry", "detector_count", 30),
        ["/geometry@detector_count", "30", "24 detector columns"])
h5_case("detector-count-not-integer", set_attr("geometry", "detector_count", 23.5),
        ["/geometry@detector_count", "integer"])
h5_case("detector-spacing-zero", set_attr("geometry", "detector_spacing", 0.0),
        ["/geometry@detector_spacing", "positive"])
h5_case("detector-spacing-text", set_attr("geometry", "detector_spacing", "wide"),
        ["/geometry@detector_spacing", "must be a number"])
h5_case("unknown-geometry-type", set_attr("geometry", "type", "helical"), ["/geometry@type", "'helical'"])
h5_case("voxel-size-negative", set_attr("volume", "voxel_size", -1.0), ["/volume@voxel_size", "positive"])
h5_case("volume-shape-text", set_attr("volume", "shape", "16x16"), ["/volume@shape", "[ny, nx]"])
h5_case("volume-shape-zero", set_attr("volume", "shape", np.array([0, 16])), ["/volume@shape", "positive"])
h5_case("reference-shape-mismatch", replace_dataset("reference", np.zeros((8, 8), np.float32)),
        ["/reference", "[8, 8]", "[16, 16]"])
h5_case("negative-I0", set_attr("sinogram", "I0", -5.0), ["/sinogram@I0", "positive"])

# --- absurd sizes: refused from the header, before any allocation


@case("absurd-volume-shape")
def _(d):
    def edit(f):
        f["volume"].attrs["shape"] = np.array([10**6, 10**6])
        del f["reference"]

    bad = edited_h5(d / "in" / "huge_volume.h5", edit)
    return Case(run_input(d, bad), ["huge_volume.h5", "/volume@shape", "memory"])


@case("absurd-sinogram-shape")
def _(d):
    def edit(f):  # 64 TB declared, a few kB on disk (chunks never written)
        del f["sinogram"]
        f.create_dataset("sinogram", shape=(10**6, N_ANGLES, 10**6), dtype="f4", chunks=(1, N_ANGLES, 1024))
        f["geometry"].attrs["detector_count"] = 10**6
        f["volume"].attrs["shape"] = np.array([10**6, N, N])
        del f["reference"]

    bad = edited_h5(d / "in" / "huge_sinogram.h5", edit)
    return Case(run_input(d, bad), ["huge_sinogram.h5", "/sinogram", "memory"])


# --- raw counts before the log

h5_case("zero-counts-before-log", with_value("sinogram", (1, 1), 0.0), ["preprocess.log_transform", "<= 0"],
        counts=True, pipe_sections={"preprocess": [{"step": "log_transform"}]})
h5_case("negative-counts-before-log", with_value("sinogram", (2, 3), -7.0), ["preprocess.log_transform", "<= 0"],
        counts=True, pipe_sections={"preprocess": [{"step": "log_transform"}]})


# --- DICOM


@case("dicom-mr-slice")
def _(d):
    bad = dicom_slice(d / "in" / "mr", Modality="MR")
    return Case(["simulate", str(d / "out" / "sim.h5"), "--image", str(bad), "--size", "16", "--angles", "8"],
                [bad.name, "Modality", "'MR'"])


@case("dicom-missing-pixel-spacing")
def _(d):
    bad = dicom_slice(d / "in" / "nospacing", PixelSpacing=None)
    return Case(["simulate", str(d / "out" / "sim.h5"), "--image", str(bad), "--size", "16", "--angles", "8"],
                [bad.name, "PixelSpacing", "missing DICOM tag"])


@case("dicom-truncated")
def _(d):
    good = dicom_slice(d / "in" / "cut")
    good.write_bytes(good.read_bytes()[:-100])  # the end of the pixel data is missing
    return Case(["simulate", str(d / "out" / "sim.h5"), "--image", str(good), "--size", "16", "--angles", "8"],
                [good.name, "PixelData", "less than expected"])


@case("dicom-undecodable-value")
def _(d):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    import pydicom

    path = dicom_slice(d / "in" / "badvr")
    ds = pydicom.dcmread(path)
    tag = Tag(0x0028, 0x1053)  # RescaleSlope, stored as 3 bytes of an 8-byte float
    ds[tag] = RawDataElement(tag, "FD", 4, b"\x01\x02\x03 ", 0, False, True)
    ds.save_as(path)
    return Case(["simulate", str(d / "out" / "sim.h5"), "--image", str(path), "--size", "16", "--angles", "8"],
                [path.name, "RescaleSlope", "cannot decode the value"])


@case("dicom-series-missing-series-uid")
def _(d):
    bad = dicom_slice(d / "in" / "series", SeriesInstanceUID=None)
    return Case(["info", str(bad.parent)], [bad.name, "SeriesInstanceUID", "missing DICOM tag"])


@case("dicom-series-with-a-non-dicom-file")
def _(d):
    first = dicom_slice(d / "in" / "series")
    junk = first.parent / "CT000002.dcm"
    junk.write_text("a text file among the slices\n")
    return Case(["info", str(first.parent)], [junk.name, "not a DICOM file"])


@case("dicom-series-with-a-garbage-dicom-file")
def _(d):
    first = dicom_slice(d / "in" / "series")
    junk = first.parent / "CT000002.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 20)  # the magic, then garbage
    return Case(["info", str(first.parent)], [junk.name, "SeriesInstanceUID"])


@case("dicom-input-with-two-series")
def _(d):
    dicom_slice(d / "in" / "both" / "a")
    dicom_slice(d / "in" / "both" / "b")
    return Case(run_input(d, d / "in" / "both"), ["both", "SeriesInstanceUID", "2 series found", "input.series_uid"])


# --- pipeline YAML


@case("yaml-syntax-error")
def _(d):
    p = d / "p.yaml"
    p.write_text("name: x\ninput: {path: a.h5\nsolver: {name: fbp}\n")
    return Case(["validate", str(p)], ["p.yaml:", "YAML syntax error"])


@case("yaml-tab-indent")
def _(d):
    p = d / "p.yaml"
    p.write_text("name: x\nsolver:\n\tname: fbp\n")
    return Case(["run", str(p), "-o", str(d / "out" / "recon.h5")], ["p.yaml:3", "YAML syntax error"])


@case("yaml-not-a-mapping")
def _(d):
    p = d / "p.yaml"
    p.write_text("- fbp\n- sirt\n")
    return Case(["validate", str(p)], ["p.yaml:1", "mapping"])


@case("yaml-empty")
def _(d):
    p = d / "p.yaml"
    p.write_text("# nothing\n")
    return Case(["validate", str(p)], ["p.yaml:1", "empty pipeline"])


@case("yaml-binary")
def _(d):
    p = d / "p.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    return Case(["run", str(p), "-o", str(d / "out" / "recon.h5")], ["p.yaml", "cannot read pipeline"])


@case("yaml-recursive-alias")
def _(d):
    p = d / "p.yaml"
    p.write_text("name: x\nsolver: &s {name: fbp, params: *s}\n")
    return Case(["validate", str(p)], ["p.yaml:2", "recursive alias"])


@case("yaml-alias-bomb")
def _(d):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values expanded
    p = d / "p.yaml"
    p.write_text("\n".join(lines) + "\nname: x\n")
    return Case(["validate", str(p)], ["p.yaml:", "expands to more than"])


@case("yaml-nested-too-deep")
def _(d):
    p = d / "p.yaml"
    p.write_text("name: x\nsolver: " + "[" * 5000 + "]" * 5000 + "\n")
    return Case(["validate", str(p)], ["p.yaml:2", "nested more than"])


@case("yaml-duplicate-key")
def _(d):
    good_h5(d / "in" / "good.h5")
    p = d / "p.yaml"
    p.write_text(f"name: x\ninput: {{path: {d / 'in' / 'good.h5'}}}\nsolver: {{name: fbp}}\nname: y\n")
    return Case(["validate", str(p)], ["p.yaml:4", "duplicate key 'name'"])


@case("yaml-unknown-top-level-key")
def _(d):
    good_h5(d / "in" / "good.h5")
    return Case(["run", str(pipeline(d, outptu={"path": "x.h5"})), "-o", str(d / "out" / "recon.h5")],
                ["p.yaml:", "unknown key 'outptu'", "did you mean 'output'"])


@case("yaml-unknown-solver-param")
def _(d):
    good_h5(d / "in" / "good.h5")
    p = pipeline(d, solver={"name": "sirt", "params": {"iteratons": 5}})
    return Case(["validate", str(p)], ["p.yaml:", "solver.params.iteratons", "did you mean 'iterations'"])


@case("yaml-wrong-type")
def _(d):
    good_h5(d / "in" / "good.h5")
    p = pipeline(d, solver={"name": "sirt", "params": {"iterations": "many"}})
    return Case(["run", str(p), "-o", str(d / "out" / "recon.h5")], ["p.yaml:", "solver.params.iterations"])


@case("yaml-unknown-solver")
def _(d):
    good_h5(d / "in" / "good.h5")
    p = pipeline(d, solver={"name": "fpb"})
    return Case(["validate", str(p)], ["p.yaml:", "solver.name", "'fpb'"])


@case("yaml-unknown-preprocess-step")
def _(d):
    good_h5(d / "in" / "good.h5")
    p = pipeline(d, preprocess=[{"step": "log_transfrom"}])
    return Case(["validate", str(p)], ["p.yaml:", "preprocess.0", "log_transfrom"])


@case("pipeline-not-found")
def _(d):
    return Case(["run", str(d / "nope.yaml"), "-o", str(d / "out" / "recon.h5")], ["nope.yaml", "not found"])


@case("pipeline-input-not-found")
def _(d):
    p = pipeline(d, input={"path": str(d / "in" / "gone.h5")})
    return Case(["run", str(p), "-o", str(d / "out" / "recon.h5")], ["p.yaml:", "input.path", "gone.h5", "not found"])


@case("reference-not-found")
def _(d):
    good_h5(d / "in" / "good.h5")
    p = pipeline(d, metrics={"reference": str(d / "in" / "ref_gone.h5")})
    return Case(["validate", str(p)], ["p.yaml:", "metrics.reference", "ref_gone.h5"])


# --- command-line overrides and options


@case("set-unknown-key")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    return Case(run_input(d, good, "--set", "solver.params.lamda=0.1"), ["--set", "lamda"])


@case("set-wrong-type")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    p = pipeline(d, solver={"name": "sirt", "params": {"iterations": 3}})
    return Case(run_input(d, good, "--set", "solver.params.iterations=ten", pipe=p),
                ["--set solver.params.iterations"])


@case("set-without-value")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    return Case(run_input(d, good, "--set", "solver.params"), ["--set", "KEY.PATH=VALUE"])


@case("set-into-a-value")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    return Case(run_input(d, good, "--set", "name.first=3"), ["--set name.first", "not a section"])


@case("device-gpu-without-gpu")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    return Case(run_input(d, good, "--device", "gpu"), ["device", "no GPU"])


# --- outputs


@case("output-exists-without-overwrite")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    (d / "out" / "recon.h5").write_bytes(b"an earlier result")
    return Case(run_input(d, good), ["recon.h5", "exists; use --overwrite"])


@case("output-parent-is-a-file")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    blocker = d / "out" / "notes.txt"
    blocker.write_text("a regular file, not a folder\n")
    p = pipeline(d)
    return Case(["run", str(p), "-i", str(good), "-o", str(blocker / "recon.h5")], ["notes.txt", "recon.h5"])


@case("output-is-the-input")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    return Case(["run", str(pipeline(d)), "-i", str(good), "-o", str(good), "--overwrite"],
                ["good.h5", "replace the input"])


# --- models (the unet solver)


@case("model-not-a-model")
def _(d):
    good_h5(d / "in" / "good.h5")
    junk = d / "in" / "junk.onnx"
    junk.write_bytes(b"this is not a neural network\n" * 10)
    p = pipeline(d, solver={"name": "unet", "params": {"model": str(junk)}})
    return Case(run_input(d, d / "in" / "good.h5", pipe=p), ["junk.onnx", "model", "cannot load the ONNX model"])


@case("model-without-metadata")
def _(d):
    good_h5(d / "in" / "good.h5")
    model = onnx_identity(d / "in" / "bare.onnx", None)
    p = pipeline(d, solver={"name": "unet", "params": {"model": str(model)}})
    return Case(run_input(d, d / "in" / "good.h5", pipe=p), ["bare.onnx", "metadata"])


@case("model-for-another-geometry")
def _(d):
    good_h5(d / "in" / "good.h5")
    model = onnx_identity(d / "in" / "other.onnx", model_meta(geometry(n_angles=60), VolumeGrid((N, N), 1.0)))
    p = pipeline(d, solver={"name": "unet", "params": {"model": str(model)}})
    return Case(run_input(d, d / "in" / "good.h5", pipe=p),
                ["other.onnx", "geometry", "16 angles (trained 60)", "allow_mismatch"])


@case("model-for-another-grid")
def _(d):
    good_h5(d / "in" / "good.h5")
    model = onnx_identity(d / "in" / "grid.onnx", model_meta(geometry(), VolumeGrid((32, 32), 0.5)))
    p = pipeline(d, solver={"name": "unet", "params": {"model": str(model)}})
    return Case(run_input(d, d / "in" / "good.h5", pipe=p), ["grid.onnx", "grid", "[32, 32]"])


@case("torch-unet-for-another-geometry")
def _(d):
    good_h5(d / "in" / "good.h5")
    model = torch_unet_onnx(d / "in" / "unet.onnx",
                            model_meta(geometry(n_det=48), VolumeGrid((N, N), 1.0)))
    p = pipeline(d, solver={"name": "unet", "params": {"model": str(model)}})
    return Case(run_input(d, d / "in" / "good.h5", pipe=p), ["unet.onnx", "geometry", "detector_count=24"])


# --- recon metrics and recon info


@case("metrics-no-image")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    bad = edited_h5(d / "in" / "noimage.h5", delete("reference"))
    return Case(["metrics", str(bad), str(good)], ["noimage.h5", "/reconstruction", "no image found"])


@case("metrics-shape-mismatch")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    small = edited_h5(d / "in" / "small.h5", replace_dataset("reference", np.zeros((8, 8), np.float32)))
    return Case(["metrics", str(small), str(good)], ["small.h5", "[8, 8]", "[16, 16]"])


@case("metrics-missing-voxel-size")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    bad = edited_h5(d / "in" / "novoxel.h5", del_attr("volume", "voxel_size"))
    return Case(["metrics", str(bad), str(good)], ["novoxel.h5", "voxel_size", "missing attribute"])


@case("info-truncated-hdf5")
def _(d):
    good = good_h5(d / "in" / "good.h5")
    bad = d / "in" / "cut.h5"
    bad.write_bytes(good.read_bytes()[:3000])
    return Case(["info", str(bad)], ["cut.h5", "truncated or corrupt"])


@case("info-text-file")
def _(d):
    bad = d / "in" / "readme.md"
    bad.write_text("# not data\n")
    return Case(["info", str(bad)], ["readme.md", "unknown file format"])


# ----------------------------------------------------------------------------- running the table


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: relative path -> (size, mtime_ns) (folders: None)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = None if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def run_in_process(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``recon ARGV`` through the console-script entry point, in ``cwd``.

    The root logger's handlers and level are restored afterwards, so a handler bound to the
    captured stream cannot outlive the call.
    """
    import contextlib
    import io
    import logging

    from recon_cli.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(argv))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(old)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    return code, out.getvalue(), err.getvalue()


def run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m recon_cli ARGV`` in ``cwd`` (what a shell sees)."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "recon_cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


_BUILD_LOCK = threading.Lock()


def check_case(name: str, d: Path, run=run_in_process) -> None:
    """Build case ``name`` in ``d``, run it, and check exit code, the error line and the files."""
    (d / "in").mkdir(parents=True, exist_ok=True)
    (d / "out").mkdir(exist_ok=True)
    with _BUILD_LOCK:  # h5py/HDF5 is not safe to drive from several threads at once
        c = CASES[name](d)
    before = _snapshot(d)
    code, _, err = run(c.argv, d)
    assert "Traceback" not in err, err
    message = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert code == 2, f"exit {code}; stderr:\n{err}"
    assert len(message) == 1, f"expected one error line, got:\n{err}"
    line = message[0]
    assert line.startswith("Error: "), line
    for piece in c.expect:
        assert piece in line, f"{piece!r} not in {line!r}"
    assert not re.search(r"^(ERROR|CRITICAL) ", err, re.M), err
    after = _snapshot(d)
    assert after == before, f"files changed: {sorted(set(after) ^ set(before))}"


def test_the_table_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path):
    if name in NEEDS_NO_GPU and gpu_available():
        pytest.skip("a usable GPU is present")
    check_case(name, tmp_path)


#: A few cases again as real processes: the one-line rule holds with the process's own logging set-up.
SUBPROCESS_CASES = ["yaml-unknown-solver-param", "nan-in-sinogram", "output-parent-is-a-file",
                    "model-for-another-geometry"]


def test_bad_input_in_real_processes(tmp_path):
    with ThreadPoolExecutor(max_workers=len(SUBPROCESS_CASES)) as pool:
        futures = [pool.submit(check_case, n, tmp_path / n, run_subprocess) for n in SUBPROCESS_CASES]
        for f in futures:
            f.result()


# ----------------------------------------------------------------------------- DICOM series (reader level)


@pytest.fixture
def series(tmp_path):
    """A 3-slice CT series written by recon-cli (folder, files)."""
    from recon_cli.io.dicom_writer import write_series_hu

    hu = np.zeros((3, N, N), np.float32)
    hu[:, 4:12, 4:12] = 50.0
    files = write_series_hu(tmp_path / "series", hu, (2.0, 0.8, 0.8))
    return tmp_path / "series", files


def _edit(path: Path, **changes) -> None:
    """Change tags of a DICOM file: None deletes, a ("VR", value) pair stores the value with that VR
    (how a bad value such as a non-number in a DS tag is written past pydicom's checks)."""
    import pydicom
    from pydicom.datadict import tag_for_keyword

    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        elif isinstance(value, tuple):
            del ds[tag_for_keyword(key)]
            ds.add_new(tag_for_keyword(key), *value)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


@pytest.mark.parametrize("changes, field, text", [
    ({"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, "Modality", "'MR'"),
    ({"PixelSpacing": [0.8, 0.9]}, "PixelSpacing", "inconsistent pixel spacing"),
    ({"Rows": 20}, "Rows/Columns", "inconsistent image size"),
    ({"ImagePositionPatient": None}, "ImagePositionPatient", "missing DICOM tag"),
    ({"RescaleSlope": ("LO", "abc")}, "RescaleSlope", "number"),
    ({"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}, "ImageOrientationPatient", ""),
])
def test_dicom_series_reader_names_file_and_tag(series, changes, field, text):
    from recon_cli.io.dicom_series import read_series

    folder, files = series
    _edit(files[1], **changes)
    with pytest.raises(InputError) as err:
        read_series(folder)
    assert err.value.field == field and text in err.value.message
    assert err.value.file in (str(files[0]), str(files[1]))
    assert "\n" not in err.value.one_line()


def test_dicom_mixed_series_in_one_folder(series, tmp_path):
    from recon_cli.io.dicom_series import read_series
    from recon_cli.io.dicom_writer import write_series_hu

    folder, files = series
    other = write_series_hu(tmp_path / "other", np.zeros((2, N, N), np.float32), 1.0)
    for f in other:
        shutil.copy(f, folder / f"other_{f.name}")
    with pytest.raises(InputError) as err:
        read_series(folder)
    assert err.value.field == "SeriesInstanceUID" and "2 series found" in err.value.message
    assert err.value.file == str(folder)
