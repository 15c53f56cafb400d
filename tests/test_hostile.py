"""Hostile and unlucky inputs (issue 15): no hang, no silent NaN or wrong image, no host file read,
no PHI leak, no crash on a full disk. Each case runs the CLI as a user would; every case that could
hang runs in a subprocess with a timeout, so a regression fails the test instead of freezing it."""
from __future__ import annotations

import json
import os
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
import recon_cli.io.formats as formats

_read = formats.READERS["hdf5"]

def _hanging_reader(path, **options):
    if "hang" in os.path.basename(path):
        # what ASTRA's geometry check did on angles of 1e8 rad: loop forever, deaf to SIGTERM
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        while True:
            time.sleep(1)
    return _read[0](path, **options)

formats.READERS["hdf5"] = (_hanging_reader, _read[1])
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
    proc = subprocess.run(["timeout", "20", sys.executable, "-m", "recon_cli", "-q", "batch", str(pipe),
                           *map(str, inputs), "-o", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 124, proc.stderr  # timeout's code; recon itself ended (no SIGKILL: 137)
    assert "Interrupted (SIGTERM)" in proc.stderr
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["exit_code"] == 143
    status = {Path(i["input"]).name: i["status"] for i in summary["items"]}
    assert status == {"a.h5": "ok", "hang.h5": "interrupted", "b.h5": "interrupted"}
    assert leftovers(out) == []
