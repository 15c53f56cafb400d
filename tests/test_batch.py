"""``recon batch``: one output per input, failures isolated, summaries, skipping, --force, --jobs, signals."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from recon_cli.batch import expand_inputs, read_manifest
from recon_cli.cli.main import main
from recon_cli.errors import ConfigError
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.simulate import simulate_sinogram
from cli_helpers import recon_quiet as recon  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = ["shepp_logan_fan60.h5", "head_fan60.h5", "shepp_logan_parallel180.h5", "shepp_logan_stack_fan60.h5"]

pytestmark = pytest.mark.skipif(not all((REPO / "sample_data" / s).is_file() for s in SAMPLES),
                                reason="sample_data not generated")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The sample inputs and one corrupt (truncated) HDF5 file in one folder."""
    folder = tmp_path_factory.mktemp("inputs")
    for name in SAMPLES:
        shutil.copy(REPO / "sample_data" / name, folder / name)
    (folder / "corrupt.h5").write_bytes((REPO / "sample_data" / SAMPLES[1]).read_bytes()[:3000])
    return folder


@pytest.fixture(scope="module")
def fbp_pipeline(tmp_path_factory) -> Path:
    """FBP with ASTRA's direct projector (no matrix to build) and the usual metrics."""
    path = tmp_path_factory.mktemp("pipe") / "fbp.yaml"
    path.write_text(yaml.safe_dump({"name": "batch-fbp", "input": {"path": "unused.h5"}, "device": "cpu",
                                    "projector": {"kind": "astra"}, "solver": {"name": "fbp"},
                                    "output": {"formats": ["hdf5", "png"]},
                                    "metrics": {"list": ["psnr", "ssim", "residual"]}}))
    return path




def read_summary(outdir: Path) -> tuple[list[dict], dict]:
    with open(outdir / "batch_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((outdir / "batch_summary.json").read_text())


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in rows}


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# ----------------------------------------------------------------------------- the main story


def test_batch_with_a_corrupt_input_then_rerun_skips_then_force(tmp_path, inputs, fbp_pipeline, capsys):
    outdir = tmp_path / "out"
    code, out, err = recon(capsys, "batch", str(fbp_pipeline), str(inputs / "*.h5"), "-o", str(outdir))
    assert code == 1
    assert err.strip().splitlines()[-1] == f"Error: 1 of 5 inputs failed (see {outdir / 'batch_summary.csv'})"
    rows, data = read_summary(outdir)
    assert len(rows) == 5 and data["counts"] == {"ok": 4, "failed": 1, "skipped": 0, "interrupted": 0}
    assert data["exit_code"] == 1
    rows = by_name(rows)
    bad = rows["corrupt.h5"]
    assert bad["status"] == "failed" and "corrupt.h5" in bad["error"] and "\n" not in bad["error"]
    assert "truncated or corrupt" in bad["error"] or "HDF5" in bad["error"]
    assert not (outdir / "corrupt.h5").exists() and not (outdir / "corrupt.png").exists()
    for name in SAMPLES:
        row = rows[name]
        assert row["status"] == "ok" and row["error"] == ""
        assert float(row["psnr"]) > 15 and float(row["seconds"]) > 0
        stem = name[:-3]
        assert row["output"] == str(outdir / f"{stem}.h5")
        assert (outdir / f"{stem}.png").is_file()
        with h5py.File(outdir / f"{stem}.h5") as f:
            assert f["metrics"].attrs["psnr"] == pytest.approx(float(row["psnr"]))
            assert f["provenance"].attrs["input_path"] == str(inputs / name)
    json_items = {Path(i["input"]).name: i for i in data["items"]}
    assert json_items["head_fan60.h5"]["metrics"]["psnr"] == pytest.approx(float(rows["head_fan60.h5"]["psnr"]))
    assert no_temp_files(outdir)
    stamps = {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.h5")}

    # the same command again: finished inputs are skipped, the corrupt one fails again
    code, out, err = recon(capsys, "batch", str(fbp_pipeline), str(inputs / "*.h5"), "-o", str(outdir))
    assert code == 1
    rows, data = read_summary(outdir)
    assert data["counts"] == {"ok": 0, "failed": 1, "skipped": 4, "interrupted": 0}
    assert by_name(rows)["head_fan60.h5"]["psnr"] != ""  # metrics of skipped inputs come from their files
    assert {p.name: p.stat().st_mtime_ns for p in outdir.glob("*.h5")} == stamps

    # another pipeline: existing outputs are not replaced without --force ...
    code, out, err = recon(capsys, "batch", str(fbp_pipeline), str(inputs / "head_fan60.h5"), "-o", str(outdir),
                           "--set", "solver.params.filter=hann")
    assert code == 1
    row = read_summary(outdir)[0][0]
    assert row["status"] == "failed" and "different pipeline" in row["error"] and "--force" in row["error"]
    assert (outdir / "head_fan60.h5").stat().st_mtime_ns == stamps["head_fan60.h5"]
    # ... and are with it
    code, out, err = recon(capsys, "batch", str(fbp_pipeline), str(inputs / "head_fan60.h5"), "-o", str(outdir),
                           "--set", "solver.params.filter=hann", "--force")
    assert code == 0, err
    assert read_summary(outdir)[0][0]["status"] == "ok"
    with h5py.File(outdir / "head_fan60.h5") as f:
        assert "hann" in f["provenance"].attrs["pipeline"]


def test_parallel_jobs_give_the_same_outputs(tmp_path, inputs, fbp_pipeline, capsys):
    names = [str(inputs / n) for n in ("shepp_logan_fan60.h5", "head_fan60.h5", "corrupt.h5")]
    code, _, err = recon(capsys, "batch", str(fbp_pipeline), *names, "-o", str(tmp_path / "serial"))
    assert code == 1
    code, _, err = recon(capsys, "batch", str(fbp_pipeline), *names, "-o", str(tmp_path / "par"), "--jobs", "2")
    assert code == 1
    serial, par = by_name(read_summary(tmp_path / "serial")[0]), by_name(read_summary(tmp_path / "par")[0])
    assert [r["input"] for r in read_summary(tmp_path / "par")[0]] == names  # input order kept
    assert {k: r["status"] for k, r in par.items()} == {k: r["status"] for k, r in serial.items()}
    for name in ("shepp_logan_fan60", "head_fan60"):
        with h5py.File(tmp_path / "serial" / f"{name}.h5") as a, h5py.File(tmp_path / "par" / f"{name}.h5") as b:
            assert np.array_equal(a["reconstruction"][()], b["reconstruction"][()])


def test_manifest_missing_files_and_empty_globs(tmp_path, inputs, fbp_pipeline, capsys):
    manifest = tmp_path / "list.csv"
    rel = os.path.relpath(inputs / "shepp_logan_fan60.h5", tmp_path)
    manifest.write_text(f"path,output\n{rel},custom/name\n{inputs / 'nope.h5'},\n")
    outdir = tmp_path / "out"
    code, _, err = recon(capsys, "batch", str(fbp_pipeline), str(manifest), str(tmp_path / "*.nothing"),
                         "-o", str(outdir))
    assert code == 1
    rows = read_summary(outdir)[0]
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert rows[0]["output"] == str(outdir / "custom" / "name.h5") and (outdir / "custom" / "name.h5").is_file()
    assert rows[1]["error"].endswith("nope.h5: not found")
    assert rows[2]["error"].endswith("no input matches this pattern")


def test_bad_manifest_and_bad_pipeline_exit_2(tmp_path, inputs, fbp_pipeline, capsys):
    manifest = tmp_path / "list.csv"
    manifest.write_text("file\nx.h5\n")
    code, _, err = recon(capsys, "batch", str(fbp_pipeline), str(manifest), "-o", str(tmp_path / "o"))
    assert code == 2 and "needs a 'path' column" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: {path: a.h5}\nsolver: {name: nosuch}\n")
    code, _, err = recon(capsys, "batch", str(bad), str(inputs / "head_fan60.h5"), "-o", str(tmp_path / "o"))
    assert code == 2 and "bad.yaml:3" in err
    assert not (tmp_path / "o").exists()


def test_output_names_keep_equal_stems_apart(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "scan.h5").write_bytes(b"")
    items = expand_inputs([str(tmp_path / "a" / "scan.h5"), str(tmp_path / "b" / "scan.h5"),
                           str(tmp_path / "a" / "scan.h5")], tmp_path / "out")
    assert [Path(i.output).name for i in items] == ["a_scan.h5", "b_scan.h5"]
    with pytest.raises(ConfigError, match="empty 'path'"):
        (tmp_path / "m.csv").write_text("path,output\n,x\n")
        read_manifest(tmp_path / "m.csv")


# ----------------------------------------------------------------------------- stopping a batch


def tiny_inputs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        sino = simulate_sinogram(shepp_logan(48) * (1 + 0.1 * i), 1.0, parallel_beam_geometry(30, 72, 1.0),
                                 VolumeGrid((48, 48), 1.0), I0=1e5, seed=i)
        paths.append(folder / f"case{i}.h5")
        write_sinogram(paths[-1], sino)
    return paths


def test_sigterm_stops_the_batch_cleanly_and_a_rerun_finishes_it(tmp_path, capsys):
    cases = tiny_inputs(tmp_path / "in", 3)
    pipe = tmp_path / "sirt.yaml"
    pipe.write_text(yaml.safe_dump({"name": "batch-sirt", "input": {"path": "x.h5"}, "device": "cpu",
                                    "solver": {"name": "sirt", "params": {"iterations": 2000}},
                                    "checkpoint": {"every": 20}}))
    outdir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "recon_cli", "-q", "batch", str(pipe), *map(str, cases),
                             "-o", str(outdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second_ckpt = outdir / ".recon-checkpoints" / "case1.h5.ckpt.npz"
    deadline = time.monotonic() + 180
    while not second_ckpt.exists():  # the first input is done, the second under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    rows, data = read_summary(outdir)
    assert [r["status"] for r in rows] == ["ok", "interrupted", "interrupted"]
    assert data["exit_code"] == 143
    assert (outdir / "case0.h5").is_file() and not (outdir / "case1.h5").exists()
    with h5py.File(outdir / "case0.h5") as f:  # the finished output is intact
        assert f["reconstruction"].shape == (48, 48)
    assert no_temp_files(tmp_path)

    code, _, err = recon(capsys, "batch", str(pipe), *map(str, cases), "-o", str(outdir))
    assert code == 0, err
    rows, data = read_summary(outdir)
    assert [r["status"] for r in rows] == ["skipped", "ok", "ok"]
    with h5py.File(outdir / "case1.h5") as f:  # continued from its checkpoint
        assert int(f["info"].attrs["resumed_from"]) > 0
    assert not (outdir / ".recon-checkpoints").exists()
