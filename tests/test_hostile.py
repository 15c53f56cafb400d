"""Hostile and unlucky inputs (issue 15): no hang, no silent NaN or wrong image, no host file read,
no PHI leak, no crash on a full disk. Each case runs the CLI as a user would; every case that could
hang runs in a subprocess with a timeout, so a regression fails the test instead of freezing it."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from recon_cli.cli.main import main
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.simulate import simulate_sinogram

N = 64  # grid size of the small cases
N_ANGLES = 90


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def clean_case(tmp_path_factory) -> Path:
    """A small valid parallel-beam case (64^2 grid, 90 views over pi, with /reference)."""
    path = tmp_path_factory.mktemp("clean") / "case.h5"
    geometry = parallel_beam_geometry(N_ANGLES, N, 1.0)
    grid = VolumeGrid((N, N), 1.0)
    image = shepp_logan(N * 2)
    sino = simulate_sinogram(image, 0.5, geometry, grid, upsample=2)
    write_sinogram(path, sino)
    return path


def read_case(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {"data": f["sinogram"][()], "angles": f["geometry/angles"][()],
                "geometry": dict(f["geometry"].attrs), "shape": f["volume"].attrs["shape"],
                "voxel_size": float(f["volume"].attrs["voxel_size"]),
                "reference": f["reference"][()] if "reference" in f else None}


def write_raw(path: Path, case: dict) -> Path:
    """A layout-v1 file written with h5py directly (no validation), from read_case()'s dict."""
    with h5py.File(path, "w") as f:
        f.attrs["layout_version"] = "1"
        f.create_dataset("sinogram", data=np.asarray(case["data"], np.float32))
        geo = f.create_group("geometry")
        for key, value in case["geometry"].items():
            geo.attrs[key] = value
        geo.create_dataset("angles", data=np.asarray(case["angles"], np.float64))
        vol = f.create_group("volume")
        vol.attrs["shape"] = np.asarray(case["shape"], np.int64)
        vol.attrs["voxel_size"] = case["voxel_size"]
        if case.get("reference") is not None:
            f.create_dataset("reference", data=np.asarray(case["reference"], np.float32))
    return path


def variant(clean: Path, path: Path, **changes) -> Path:
    case = read_case(clean)
    case.update(changes)
    return write_raw(path, case)


def pipeline(path: Path, input_path, *, name: str = "hostile", solver: str = "fbp", formats=("hdf5",),
             output=None, **extra) -> Path:
    cfg = {"name": name, "input": {"path": str(input_path)}, "device": "cpu", "projector": {"kind": "astra"},
           "solver": {"name": solver}, "output": {"formats": list(formats)}, "metrics": {"list": ["psnr"]}}
    if output is not None:
        cfg["output"]["path"] = str(output)
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(args, cwd: Path, *, timeout: float = 120, env: dict | None = None, preexec_fn=None):
    """``python -m recon_cli ARGS`` in a subprocess; (exit code, stdout, stderr). A hang fails the test."""
    full_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    if env and "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):  # keep the caller's path after ours
        full_env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], os.environ["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "recon_cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(err: str) -> str:
    """The stderr of a refused command: exactly one 'Error:' line and no traceback."""
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err, err
    errors = [l for l in lines if l.startswith("Error")]
    assert len(errors) == 1, err
    return errors[0]


def recon(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*map(str, args)])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(10 * np.log10(np.ptp(b) ** 2 / np.mean((a - b) ** 2)))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")


# ----------------------------------------------------------------------------- 1. hangs


HANG_SITE = '''
import os, signal, time
from recon_cli.registries import INPUT_FORMATS

_read = INPUT_FORMATS.get("hdf5")

def _hanging_reader(path, **options):
    if "hang" in os.path.basename(path):
        # what ASTRA's geometry check did on angles of 1e8 rad: loop forever, deaf to SIGTERM
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        while True:
            time.sleep(1)
    return _read.load()(path, **options)

INPUT_FORMATS.add("hdf5", _hanging_reader, replace=True, **_read.facts)
'''


@pytest.mark.parametrize("bad_angle", [1e8, 3e9, -1e12, 1e4 * 1.01])
def test_absurd_angle_is_refused_before_astra(tmp_path, clean_case, bad_angle):
    angles = read_case(clean_case)["angles"].copy()
    angles[7] = bad_angle
    case = variant(clean_case, tmp_path / "case.h5", angles=angles)
    pipe = pipeline(tmp_path / "p.yaml", case)
    code, _, err = cli(["run", pipe, "-o", tmp_path / "out.h5"], tmp_path, timeout=60)
    line = one_line_error(err)
    assert code == 2 and "/geometry/angles" in line and "out of range" in line and str(case) in line
    assert not (tmp_path / "out.h5").exists()


def test_angles_in_degrees_are_refused(tmp_path, clean_case):
    angles = np.degrees(read_case(clean_case)["angles"])
    case = variant(clean_case, tmp_path / "deg.h5", angles=angles)
    code, _, err = cli(["run", pipeline(tmp_path / "p.yaml", case), "-o", tmp_path / "o.h5"], tmp_path, timeout=60)
    line = one_line_error(err)
    assert code == 2 and "/geometry/angles" in line and "degrees" in line


def test_simulate_with_a_huge_arc_is_refused_quickly(tmp_path):
    code, _, err = cli(["simulate", tmp_path / "s.h5", "--arc", "1e20", "--size", "32"], tmp_path, timeout=60)
    assert code == 2 and "arc" in one_line_error(err)
    assert not (tmp_path / "s.h5").exists()


def test_info_on_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    code, _, err = cli(["info", fifo], tmp_path, timeout=60)
    line = one_line_error(err)
    assert code == 2 and "FIFO" in line and str(fifo) in line


def test_run_on_a_fifo_input_is_refused_at_once(tmp_path, clean_case):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    pipe = pipeline(tmp_path / "p.yaml", fifo)
    code, _, err = cli(["run", pipe, "-o", tmp_path / "o.h5"], tmp_path, timeout=60)
    assert code == 2 and str(fifo) in one_line_error(err)


def test_log_file_on_a_fifo_is_refused_at_once(tmp_path, clean_case):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    code, _, err = cli(["--log-file", fifo, "info", clean_case], tmp_path, timeout=60)
    assert code == 2 and "--log-file" in err and "FIFO" in err and "Traceback" not in err


def test_pipeline_file_on_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    code, _, err = cli(["validate", fifo], tmp_path, timeout=60)
    assert code == 2 and "regular file" in one_line_error(err)


@pytest.fixture
def hang_env(tmp_path) -> dict:
    """PYTHONPATH with a sitecustomize that makes reading any input named '*hang*' hang, deaf to SIGTERM."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(HANG_SITE))
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _batch_inputs(tmp_path, clean_case) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [folder / "a.h5", folder / "hang.h5", folder / "b.h5"]
    for p in paths:
        p.write_bytes(clean_case.read_bytes())
    return paths


def test_batch_with_a_hanging_input_times_out_and_writes_the_summary(tmp_path, clean_case, hang_env):
    inputs = _batch_inputs(tmp_path, clean_case)
    pipe = pipeline(tmp_path / "p.yaml", inputs[0])
    out = tmp_path / "out"
    code, _, err = cli(["-q", "batch", pipe, *inputs, "-o", out, "--timeout", "8"], tmp_path, timeout=90,
                       env=hang_env)
    assert code == 1, err
    summary = json.loads((out / "batch_summary.json").read_text())
    status = {Path(i["input"]).name: (i["status"], i["error"]) for i in summary["items"]}
    assert status["a.h5"][0] == "ok" and status["b.h5"][0] == "ok"
    assert status["hang.h5"][0] == "failed" and "timed out after 8 s" in status["hang.h5"][1]
    assert (out / "a.h5").is_file() and (out / "b.h5").is_file() and not (out / "hang.h5").exists()
    assert leftovers(out) == []


def test_batch_with_a_hanging_input_under_timeout_90_ends_with_a_summary(tmp_path, clean_case, hang_env):
    """No --timeout given (default 1 h): `timeout 90` (here 20 s) sends SIGTERM; the hung worker is
    killed and the summary written (recon exits 143; `timeout` reports 124)."""
    inputs = _batch_inputs(tmp_path, clean_case)
    pipe = pipeline(tmp_path / "p.yaml", inputs[0])
    out = tmp_path / "out"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **hang_env}
    proc = subprocess.run(["timeout", "-k", "40", "20", sys.executable, "-m", "recon_cli", "-q", "batch", str(pipe),
                           *map(str, inputs), "-o", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 124, proc.stderr  # timeout's code; recon itself ended (no SIGKILL: 137)
    assert "Interrupted (SIGTERM)" in proc.stderr
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["exit_code"] == 143
    status = {Path(i["input"]).name: i["status"] for i in summary["items"]}
    assert status == {"a.h5": "ok", "hang.h5": "interrupted", "b.h5": "interrupted"}
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- 2. silently wrong results


def _fbp_image(tmp_path: Path, case: Path, name: str = "out") -> np.ndarray:
    out = tmp_path / f"{name}.h5"
    code, _, err = cli(["-q", "run", pipeline(tmp_path / f"{name}.yaml", case), "-o", out], tmp_path)
    assert code == 0, err
    with h5py.File(out, "r") as f:
        return f["reconstruction"][()]


def test_fbp_with_permuted_views_equals_fbp_in_order(tmp_path, clean_case):
    base = read_case(clean_case)
    rng = np.random.default_rng(3)
    order = rng.permutation(N_ANGLES)
    shuffled = variant(clean_case, tmp_path / "shuffled.h5", angles=base["angles"][order],
                       data=base["data"][order])
    in_order = _fbp_image(tmp_path, clean_case, "in_order")
    permuted = _fbp_image(tmp_path, shuffled, "permuted")
    assert psnr(in_order, base["reference"]) > 20
    np.testing.assert_allclose(permuted, in_order, atol=1e-6 * float(np.abs(in_order).max()))


@pytest.mark.parametrize("change, field, words", [
    ("one_bin_1e37", "/sinogram", "beyond"),
    ("scaled_1e30", "/sinogram", "beyond"),
    ("float64_3e38", "/sinogram", "NaN or Inf"),
    ("all_zero", "/sinogram", "constant"),
    ("constant", "/sinogram", "constant"),
    ("brighter_than_flat", "/sinogram", "brighter than the flat field"),
    ("all_equal_angles", "/geometry/angles", "are equal"),
    ("pixel_1e-30", "/geometry@detector_spacing", "out of the supported range"),
    ("voxel_1e30", "/volume@voxel_size", "out of the supported range"),
    ("voxel_1e-30", "/volume@voxel_size", "out of the supported range"),
    ("reference_constant", "/reference", "constant"),
    ("reference_zero", "/reference", "constant"),
])
def test_data_that_cannot_give_an_image_is_refused_before_computing(tmp_path, clean_case, change, field, words):
    case = read_case(clean_case)
    data = case["data"].astype(np.float64)
    if change == "one_bin_1e37":
        data[10, 20] = 1e37
    elif change == "scaled_1e30":
        data = data * 1e30
    elif change == "float64_3e38":
        data[5, 5] = 3e39
    elif change == "all_zero":
        data[:] = 0
    elif change == "constant":
        data[:] = 1.5
    elif change == "brighter_than_flat":
        data = -data - 0.05
    elif change == "all_equal_angles":
        case["angles"] = np.full(N_ANGLES, 0.3)
    elif change == "pixel_1e-30":
        case["geometry"]["detector_spacing"] = 1e-30
    elif change == "voxel_1e30":
        case["voxel_size"] = 1e30
    elif change == "voxel_1e-30":
        case["voxel_size"] = 1e-30
    elif change == "reference_constant":
        case["reference"] = np.full((N, N), 0.02)
    elif change == "reference_zero":
        case["reference"] = np.zeros((N, N))
    path = tmp_path / f"{change}.h5"
    with np.errstate(over="ignore"), h5py.File(write_raw(path, {**case, "data": data.astype(np.float32)}), "a") as f:
        if change == "float64_3e38":
            del f["sinogram"]
            f.create_dataset("sinogram", data=data)
    out = tmp_path / "out.h5"
    code, _, err = cli(["run", pipeline(tmp_path / "p.yaml", path, formats=["hdf5", "png"]), "-o", out], tmp_path)
    line = one_line_error(err)
    assert code == 2, err
    assert str(path) in line and field in line and words in line, line
    assert not out.exists() and not (tmp_path / "out.png").exists() and leftovers(tmp_path) == []


def test_constant_reference_file_is_refused_naming_it(tmp_path, clean_case):
    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w") as f:
        f.create_dataset("reference", data=np.zeros((N, N), np.float32)).attrs["voxel_size"] = 1.0
    pipe = pipeline(tmp_path / "p.yaml", clean_case, metrics={"reference": str(ref), "list": ["psnr"]})
    code, _, err = cli(["run", pipe, "-o", tmp_path / "o.h5"], tmp_path)
    line = one_line_error(err)
    assert code == 2 and str(ref) in line and "constant" in line
    assert not (tmp_path / "o.h5").exists()


def test_non_finite_solver_output_is_never_written(tmp_path, clean_case):
    """A solver that diverges to Inf: exit 1 naming the solver stage, nothing written."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent('''
        import numpy as np
        import recon_cli.solvers.fbp as fbp
        _volume = fbp.fbp_volume
        def diverging(*args, **kwargs):
            image = _volume(*args, **kwargs)
            image[0, 0] = np.inf
            return image
        fbp.fbp_volume = diverging
    '''))
    out = tmp_path / "o.h5"
    code, _, err = cli(["run", pipeline(tmp_path / "p.yaml", clean_case, formats=["hdf5", "png"]), "-o", out],
                       tmp_path, env={"PYTHONPATH": str(site)})
    line = one_line_error(err)
    assert code == 1 and "solver fbp" in line and "non-finite" in line
    assert not out.exists() and not (tmp_path / "o.png").exists()


def test_batch_reruns_an_input_whose_content_changed(tmp_path, clean_case):
    folder = tmp_path / "in"
    folder.mkdir()
    target = folder / "case.h5"
    target.write_bytes(clean_case.read_bytes())
    pipe = pipeline(tmp_path / "p.yaml", target)
    out = tmp_path / "out"
    assert cli(["-q", "batch", pipe, target, "-o", out, "--timeout", "0"], tmp_path)[0] == 0
    first = json.loads((out / "batch_summary.json").read_text())["items"][0]
    assert first["status"] == "ok"
    # same content again: skipped
    assert cli(["-q", "batch", pipe, target, "-o", out, "--timeout", "0"], tmp_path)[0] == 0
    assert json.loads((out / "batch_summary.json").read_text())["items"][0]["status"] == "skipped"
    # new content under the same name: run again, and the output follows the new data
    base = read_case(clean_case)
    variant(clean_case, target, data=base["data"] * 0.5, reference=base["reference"] * 0.5)
    assert cli(["-q", "batch", pipe, target, "-o", out, "--timeout", "0"], tmp_path)[0] == 0
    again = json.loads((out / "batch_summary.json").read_text())["items"][0]
    assert again["status"] == "ok"
    from recon_cli.provenance import file_sha256

    with h5py.File(out / "case.h5", "r") as f:
        assert f["provenance"].attrs["input_sha256"] == file_sha256(target)


# ----------------------------------------------------------------------------- 3. reading what it must not


def _external_variants(clean: Path, folder: Path) -> dict[str, Path]:
    """The clean case with /sinogram in external raw storage, /reference behind an ExternalLink,
    and /sinogram as a virtual dataset over another file."""
    case = read_case(clean)
    data = np.ascontiguousarray(case["data"], np.float32)
    host_file = folder / "host_file.bin"  # stands for any file of the host (/etc/shadow, a key, ...)
    host_file.write_bytes(data.tobytes())
    out = {}
    out["external_storage"] = write_raw(folder / "external_storage.h5", {**case, "reference": None})
    with h5py.File(out["external_storage"], "a") as f:
        del f["sinogram"]
        f.create_dataset("sinogram", shape=data.shape, dtype=np.float32,
                         external=[(str(host_file), 0, data.nbytes)])
    other = folder / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("reference", data=case["reference"])
        f.create_dataset("sinogram", data=data)
    out["external_link"] = write_raw(folder / "external_link.h5", {**case, "reference": None})
    with h5py.File(out["external_link"], "a") as f:
        f["reference"] = h5py.ExternalLink(str(other), "/reference")
    out["virtual"] = write_raw(folder / "virtual.h5", {**case, "reference": None})
    with h5py.File(out["virtual"], "a") as f:
        del f["sinogram"]
        layout = h5py.VirtualLayout(shape=data.shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(other), "sinogram", shape=data.shape)
        f.create_virtual_dataset("sinogram", layout)
    return out


@pytest.mark.parametrize("kind, field, words", [("external_storage", "/sinogram", "external raw storage"),
                                                ("external_link", "/reference", "external link"),
                                                ("virtual", "/sinogram", "virtual dataset source")])
def test_hdf5_reaching_other_files_is_refused(tmp_path, clean_case, kind, field, words):
    path = _external_variants(clean_case, tmp_path)[kind]
    out = tmp_path / "o.h5"
    code, _, err = cli(["run", pipeline(tmp_path / "p.yaml", path), "-o", out], tmp_path)
    line = one_line_error(err)
    assert code == 2 and str(path) in line and field in line and words in line
    assert "RECON_ALLOW_EXTERNAL_HDF5" in line and not out.exists()
    code, out_text, err = cli(["info", path], tmp_path)
    assert code == 2 and words in one_line_error(err)


def test_trusted_external_hdf5_is_read_and_hashed_with_what_it_read(tmp_path, clean_case):
    from recon_cli.provenance import file_sha256

    path = _external_variants(clean_case, tmp_path)["external_storage"]
    out = tmp_path / "o.h5"
    env = {"RECON_ALLOW_EXTERNAL_HDF5": "1"}
    code, _, err = cli(["-q", "run", pipeline(tmp_path / "p.yaml", path), "-o", out], tmp_path, env=env)
    assert code == 0, err
    with h5py.File(out, "r") as f:
        recorded = f["provenance"].attrs["input_sha256"]
    assert recorded != file_sha256(path)
    (tmp_path / "host_file.bin").write_bytes(b"\0" * (tmp_path / "host_file.bin").stat().st_size)
    from recon_cli.io.formats import input_digest

    os.environ["RECON_ALLOW_EXTERNAL_HDF5"] = "1"
    try:
        assert input_digest(path) != recorded  # the hash follows the external bytes
    finally:
        del os.environ["RECON_ALLOW_EXTERNAL_HDF5"]


def test_log_file_equal_to_the_input_is_refused_and_the_input_unchanged(tmp_path, clean_case):
    case = tmp_path / "case.h5"
    case.write_bytes(clean_case.read_bytes())
    before = case.read_bytes()
    pipe = pipeline(tmp_path / "p.yaml", case)
    for args in (["--log-file", case, "run", pipe, "-o", tmp_path / "o.h5"],
                 ["--log-file", case, "info", case],
                 ["--log-file", tmp_path / "o.h5", "run", pipe, "-o", tmp_path / "o.h5"]):
        code, _, err = cli(args, tmp_path)
        assert code == 2 and "--log-file" in err and "Traceback" not in err
    # the input named only in the pipeline (not on the command line)
    code, _, err = cli(["--log-file", case, "run", pipe, "-o", tmp_path / "o.h5"], tmp_path)
    assert code == 2
    code, _, err = cli(["--log-file", "./case.h5", "run", pipe, "-o", tmp_path / "o.h5"], tmp_path)
    assert code == 2 and "log" in err
    assert case.read_bytes() == before and not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("name, words", [("../../escaped", "not a path"), ("/tmp/abs", "not a path"),
                                         ("evil\nname", "control characters"),
                                         ("esc\x1b[31mred", "control characters"), ("..", "start with")])
def test_pipeline_name_cannot_leave_the_output_folder_or_carry_control_characters(tmp_path, clean_case, name,
                                                                                  words):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": name, "input": {"path": str(clean_case)}, "solver": {"name": "fbp"},
                                    "output": {"formats": ["hdf5", "dicom"]}}))
    code, _, err = cli(["run", pipe], tmp_path)
    line = one_line_error(err)
    assert code == 2 and "name" in line and words in line
    assert "\x1b" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escaped.h5").exists()


@pytest.mark.parametrize("output", ["../escaped", "ABSOLUTE", "sub/../../escaped"])
def test_manifest_outputs_stay_inside_the_batch_folder(tmp_path, clean_case, output):
    output = str(tmp_path / "escaped") if output == "ABSOLUTE" else output
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,output\n{clean_case},{output}\n")
    out = tmp_path / "out"
    code, _, err = cli(["-q", "batch", pipeline(tmp_path / "p.yaml", clean_case), manifest, "-o", out],
                       tmp_path)
    assert code == 1
    item = json.loads((out / "batch_summary.json").read_text())["items"][0]
    assert item["status"] == "failed" and "OUTDIR" in item["error"]
    assert not (tmp_path / "escaped.h5").exists() and not (tmp_path / "escaped").exists()


def test_dicom_text_values_are_sanitised(tmp_path):
    from recon_cli.io.dicom_writer import dicom_text

    assert dicom_text("evil\nname\x1b[31m", 64) == "evil name [31m"
    assert len(dicom_text("x" * 100, 64)) == 64


# ----------------------------------------------------------------------------- 4. PHI


def _series(tmp_path: Path, identity: dict, **write) -> list[Path]:
    from recon_cli.io.dicom_writer import write_series_hu

    z, y, x = np.meshgrid(np.arange(4), np.arange(48), np.arange(48), indexing="ij")
    hu = (-1000.0 + 900.0 * (((y - 24) ** 2 + (x - 24) ** 2) < 300) + z).astype(np.float32)
    return write_series_hu(tmp_path / "series", hu, (2.0, 1.0, 1.0), identity=identity, **write)


def _edit(path: Path, **changes) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


IDENTITY_A = {"PatientName": "Doe^Jane", "PatientID": "MRN-314159", "PatientBirthDate": "19700101"}


def test_series_mixing_two_patients_is_refused_without_naming_them(tmp_path):
    files = _series(tmp_path, IDENTITY_A)
    _edit(files[2], PatientName="Roe^Richard", PatientID="MRN-271828")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": "mixed", "input": {"path": str(tmp_path / "series")},
                                    "solver": {"name": "fbp"}, "output": {"formats": ["hdf5", "dicom"]}}))
    code, out, err = cli(["run", pipe, "-o", tmp_path / "o.h5"], tmp_path)
    line = one_line_error(err)
    assert code == 2 and "mixes patients" in line and "PatientID" in line
    for secret in ("Doe", "Jane", "Roe", "Richard", "314159", "271828"):
        assert secret not in err and secret not in out
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o_dicom").exists()
    code, out, err = cli(["info", tmp_path / "series", "--json"], tmp_path)
    assert "mixes patients" in out
    for secret in ("Doe", "Jane", "Roe", "Richard", "314159", "271828"):
        assert secret not in out


def test_info_redacts_identifiers_inside_free_text_descriptions(tmp_path):
    files = _series(tmp_path, {**IDENTITY_A, "StudyDescription": "CT head Jane Doe MRN 8675309"},
                    series_description="follow-up DOE^JANE record 5550123")
    code, out, _ = cli(["info", tmp_path / "series", "--json"], tmp_path)
    assert code == 0
    # random UIDs (digits and dots, shown on purpose) may contain a numeric secret by chance
    text = re.sub(r'"[0-9]+(\.[0-9]+){3,}"', '"<uid>"', out)
    for secret in ("Jane", "JANE", "Doe", "DOE", "8675309", "5550123", "314159", "1970"):
        assert secret not in text, secret
    assert "CT head" in out and "follow-up" in out
    code, out, _ = cli(["info", tmp_path / "series", "--json", "--show-phi"], tmp_path)
    assert "8675309" in out and "Doe^Jane" in out


def test_absurd_dicom_image_size_is_refused_before_allocating(tmp_path):
    files = _series(tmp_path, IDENTITY_A)
    for f in files:
        _edit(f, Rows=65535, Columns=65535)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": "big", "input": {"path": str(tmp_path / "series")},
                                    "solver": {"name": "fbp"}}))

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a 48 GiB allocation would fail hard

    code, _, err = cli(["run", pipe, "-o", tmp_path / "o.h5"], tmp_path, preexec_fn=limit_memory)
    line = one_line_error(err)
    assert code == 2 and "Rows" in line and "65535" in line


# ----------------------------------------------------------------------------- 5. crashes and tracebacks


def _file_size_limit(limit: int):
    """preexec_fn: files cannot grow past ``limit`` bytes (writes fail with EFBIG, like a full disk)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("formats", [["hdf5"], ["dicom"], ["hdf5", "png", "dicom"], ["tiff"]])
def test_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path, clean_case, formats):
    out = tmp_path / "out"
    out.mkdir()
    pipe = pipeline(tmp_path / "p.yaml", clean_case, formats=formats)
    code, _, err = cli(["run", pipe, "-o", out / "o.h5"], tmp_path, preexec_fn=_file_size_limit(2048))
    line = one_line_error(err)
    assert code == 1, err
    assert "disk full" in line or "free" in line
    assert list(out.iterdir()) == []


def test_full_disk_under_log_file_is_one_line_and_exit_1(tmp_path, clean_case):
    log = tmp_path / "run.log"
    log.write_text("x" * 16384)  # at the limit: every log write fails
    pipe = pipeline(tmp_path / "p.yaml", clean_case, formats=["png"])
    code, _, err = cli(["--log-file", log, "run", pipe, "-o", tmp_path / "o.h5"], tmp_path,
                       preexec_fn=_file_size_limit(16384))
    assert code == 1, err
    assert "Traceback" not in err and "Logging error" not in err
    lines = [l for l in err.splitlines() if "log file" in l]
    assert len(lines) == 1 and str(log) in lines[0]


def test_output_names_up_to_the_file_system_limit_work(tmp_path, clean_case):
    """Names of 235-252 characters used to fail after computing (the temporary name passed 255)."""
    out = tmp_path / ("n" * 249 + ".h5")
    pipe = pipeline(tmp_path / "p.yaml", clean_case, formats=["hdf5", "png"])
    code, _, err = cli(["-q", "run", pipe, "-o", out], tmp_path)
    assert code == 0, err
    assert out.is_file() and out.with_suffix(".png").is_file() and leftovers(tmp_path) == []
    too_long = tmp_path / ("n" * 250 + ".h5")
    code, _, err = cli(["run", pipeline(tmp_path / "p2.yaml", clean_case, formats=["hdf5", "nifti"]),
                        "-o", too_long], tmp_path)
    line = one_line_error(err)
    assert code == 2 and "255" in line and not too_long.exists()


def test_stale_temporary_files_of_a_killed_run_are_cleaned_on_the_next_run(tmp_path, clean_case):
    out = tmp_path / "o.h5"
    dead_pid = 4_000_000  # above pid_max: never a live process
    from recon_cli.io.atomic import _host_tag

    stale = [tmp_path / f".o.h5.{_host_tag()}-{dead_pid}-0123abcd.tmp", tmp_path / ".o.png.0123456789ab.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    os.utime(stale[1], (0, 0))  # an old-style temporary from long ago
    live = tmp_path / f".o.h5.{_host_tag()}-{os.getpid()}-0123abcd.tmp"  # a running writer's: kept
    live.write_bytes(b"in progress")
    code, _, err = cli(["-q", "run", pipeline(tmp_path / "p.yaml", clean_case, formats=["hdf5", "png"]),
                        "-o", out], tmp_path)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and live.exists()


def test_sigkill_while_writing_leaves_no_partial_set_after_the_next_run(tmp_path, clean_case):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent('''
        import os, signal
        import recon_cli.io.png as png
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        png.write_png = killed
    '''))
    pipe = pipeline(tmp_path / "p.yaml", clean_case, formats=["hdf5", "dicom", "png"])
    out = tmp_path / "o.h5"
    code, _, _ = cli(["run", pipe, "-o", out], tmp_path, env={"PYTHONPATH": str(site)})
    assert code == -signal.SIGKILL
    assert out.is_file() and (tmp_path / "o_dicom").is_dir() and not (tmp_path / "o.png").exists()
    code, _, err = cli(["run", pipe, "-o", out], tmp_path)  # no --overwrite needed: the partial set goes
    assert code == 0, err
    assert "removed the partial outputs" in err
    assert leftovers(tmp_path) == [] and out.is_file() and (tmp_path / "o_dicom").is_dir()
    assert (tmp_path / "o.png").is_file()


@pytest.mark.parametrize("args, option", [(["--I0", "1e30"], "I0"), (["--seed", "-1"], "seed"),
                                          (["--upsample", "1000"], "upsample"), (["--arc", "1e20"], "arc"),
                                          (["--voxel-size", "1e30"], "voxel-size"),
                                          (["--detector-spacing", "1e-30"], "detector-spacing")])
def test_simulate_bad_parameters_are_one_line(tmp_path, args, option):
    code, _, err = cli(["simulate", tmp_path / "s.h5", "--size", "32", *args], tmp_path, timeout=60)
    line = one_line_error(err)
    assert code == 2 and option in line, err
    assert not (tmp_path / "s.h5").exists()


def test_batch_into_a_read_only_folder_is_one_line(tmp_path, clean_case):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, _, err = cli(["batch", pipeline(tmp_path / "p.yaml", clean_case), clean_case, "-o", out], tmp_path)
    finally:
        out.chmod(0o755)
    line = one_line_error(err)
    assert code == 2 and str(out) in line and "writable" in line


def test_large_yaml_is_refused_quickly(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\nlist:\n" + "  - 1\n" * 2_000_000)
    code, _, err = cli(["validate", big], tmp_path, timeout=30)
    line = one_line_error(err)
    assert code == 2 and "larger than" in line


def test_alias_bomb_is_refused_quickly(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb.write_text("\n".join(lines) + "\nname: x\n")
    code, _, err = cli(["validate", bomb], tmp_path, timeout=30)
    assert code == 2 and "values" in one_line_error(err)


@pytest.mark.parametrize("state, words", [({"iteration": 10**9}, "iteration"),
                                          ({"iteration": 3, "x": np.zeros((10, 10), np.float32)}, "solver image"),
                                          ({"iteration": -4}, "iteration")])
def test_bad_checkpoint_is_one_line_before_computing(tmp_path, clean_case, state, words):
    from recon_cli.checkpoint import Checkpoint, checkpoint_path, run_key, save_checkpoint
    from recon_cli.config import load_config
    from recon_cli.io.formats import input_digest

    out = tmp_path / "o.h5"
    pipe = pipeline(tmp_path / "p.yaml", clean_case, solver="sirt", output=out)
    pipe.write_text(pipe.read_text().replace("name: sirt", "name: sirt\n  params: {iterations: 20}"))
    cfg = load_config(pipe)
    state = {"x": np.zeros((N, N), np.float32), "history": {"residual": [1.0] * 3}, **state}
    path = checkpoint_path(cfg, out)
    save_checkpoint(path, Checkpoint(key=run_key(cfg, input_digest(clean_case), "cpu"), chunks=[(0, 1)],
                                     state=state))
    code, _, err = cli(["run", pipe, "--resume"], tmp_path)
    line = one_line_error(err)
    assert code == 2 and str(path) in line and words in line, err
    assert not out.exists()


def test_batch_into_an_unwritable_folder_is_one_line(tmp_path, clean_case, monkeypatch, capsys):
    """(In-process: the test may run as root, for whom every folder is writable.)"""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    out = read_only / "batch"
    real_access, real_mkdir = os.access, Path.mkdir

    def mkdir(self, *args, **kwargs):
        if read_only in (self, *self.parents):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == read_only
                        else real_access(p, mode, **kw))
    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, _, err = recon(capsys, "batch", pipeline(tmp_path / "p.yaml", clean_case), clean_case, "-o", out)
    line = one_line_error(err)
    assert code == 2 and str(out) in line and "not writable" in line and "PermissionError" not in line


def test_matrix_cache_entry_with_valid_structure_but_damaged_values_is_rebuilt(cache_dir, caplog):
    import logging

    from recon_cli.projectors.astra_matrix import AstraMatrixProjector

    geometry, grid = parallel_beam_geometry(30, 32, 1.0), VolumeGrid((32, 32), 1.0)
    first = AstraMatrixProjector(geometry, grid)
    (folder,) = [p for p in (cache_dir / "matrices").iterdir() if p.is_dir()]
    target = folder / "M.data.npy"
    good = target.read_bytes()
    data = np.load(target)
    data[::7] *= 0.5  # still a float32 CSR of the right shape: only a checksum can tell
    np.save(target, data)
    with caplog.at_level(logging.WARNING, logger="recon_cli.projectors.astra_matrix"):
        second = AstraMatrixProjector(geometry, grid)
    assert "checksum of M.data.npy differs" in caplog.text
    assert (second.matrix != first.matrix).nnz == 0
    assert target.read_bytes() == good


def _dxchange(path: Path, theta, *, units: str | None = None, brighter: bool = False) -> Path:
    """A small DXchange scan (2 rows x 32 columns) of a disk; ``brighter``: projections above the flat."""
    n_det = 32
    u = np.arange(n_det) - (n_det - 1) / 2
    chord = 2 * np.sqrt(np.clip(10.0**2 - u**2, 0, None)) * 0.02  # line integrals of a disk
    frames = 1000.0 * np.exp(-chord)[None, None, :] * np.ones((len(theta), 2, 1))
    flat = np.full((3, 2, n_det), 1000.0 if not brighter else 500.0)
    with h5py.File(path, "w") as f:
        f.create_dataset("exchange/data", data=frames.astype(np.float32))
        f.create_dataset("exchange/data_white", data=flat.astype(np.float32))
        f.create_dataset("exchange/data_dark", data=np.zeros((1, 2, n_det), np.float32))
        ds = f.create_dataset("exchange/theta", data=np.asarray(theta, np.float64))
        if units:
            ds.attrs["units"] = units
        f.create_dataset("measurement/instrument/detector/actual_pixel_size_x", data=1000.0).attrs["units"] = "um"
    return path


@pytest.mark.parametrize("theta, units, words", [
    (np.linspace(0, 180, 45, endpoint=False), "rad", "degrees"),  # degrees labelled as radians
    (np.r_[np.linspace(0, np.pi, 44, endpoint=False), 1e8], "rad", "out of range"),
    (np.r_[np.linspace(0, 180, 44, endpoint=False), 6e9], None, "out of range"),
])
def test_dxchange_theta_in_the_wrong_unit_is_refused_quickly(tmp_path, theta, units, words):
    path = _dxchange(tmp_path / "scan.h5", theta, units=units)
    pipe = pipeline(tmp_path / "p.yaml", path, input={"path": str(path), "rows": 0})
    code, _, err = cli(["run", pipe, "-o", tmp_path / "o.h5"], tmp_path, timeout=60)
    line = one_line_error(err)
    assert code == 2 and words in line and str(path) in line, err


def test_dxchange_brighter_than_flat_field_is_refused(tmp_path):
    path = _dxchange(tmp_path / "scan.h5", np.linspace(0, 180, 45, endpoint=False), brighter=True)
    pipe = pipeline(tmp_path / "p.yaml", path, input={"path": str(path), "rows": 0})
    code, _, err = cli(["run", pipe, "-o", tmp_path / "o.h5"], tmp_path, timeout=60)
    line = one_line_error(err)
    assert code == 2 and "brighter than the flat field" in line and str(path) in line
