"""The CLI through its real entry point: exit codes, one-line errors, outputs and provenance."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from recon_cli.backend import gpu_available
from recon_cli.cli.main import main
from cli_helpers import recon_quiet as recon  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "shepp_logan_fan60.h5"
#: Measured 18.39 dB (ram-lak FBP, 60 fan-beam views, I0 = 1e5) when this test was written.
FBP_PSNR_FLOOR = 18.0

pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason="sample_data not generated")


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)




def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    return lines[0][len("Error: "):]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fbp_run(tmp_path_factory):
    """One `recon run pipelines/fbp.yaml -o .../x.h5` shared by the tests that inspect its output."""
    out = tmp_path_factory.mktemp("run") / "sub" / "x.h5"
    prev = Path.cwd()
    import os

    os.chdir(REPO)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["-q", "run", "pipelines/fbp.yaml", "-o", str(out), "--json"])
    finally:
        os.chdir(prev)
    assert exc.value.code == 0
    return out


# ----------------------------------------------------------------------------- validate


def test_validate_ok(capsys):
    code, out, err = recon(capsys, "validate", "pipelines/fbp.yaml")
    assert code == 0, err
    assert out.strip() == "OK: fbp-shepp-logan (solver fbp)"


def test_validate_misspelt_key_exit_2_with_line_and_suggestion(capsys, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ninput: {path: sample_data/shepp_logan_fan60.h5}\n"
                 "solver:\n  name: sirt\n  params:\n    iteratons: 5\n")
    code, out, err = recon(capsys, "validate", str(p))
    assert code == 2 and out == ""
    assert one_error_line(err) == f"{p}:6: solver.params.iteratons: unknown key 'iteratons'; did you mean 'iterations'?"


@pytest.mark.parametrize("text, expected", [
    ("name: x\ninput: {path: a.h5}\nsolver: {name: sirt, params: {iterations: lots}}\n",
     ":3: solver.params.iterations: Input should be a valid integer"),
    ("name: x\nsolver: {name: fbp}\n", ":1: input: missing required key"),
    ("name: x\ninput: [path: a.h5\nsolver: {name: fbp}\n", ":3: YAML syntax error"),
    ("name: x\ninput: {path: a.h5}\nsolver: {name: fpb}\n", ":3: solver.name: unknown solver 'fpb'; did you mean 'fbp'?"),
])
def test_validate_errors(capsys, tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    code, _, err = recon(capsys, "validate", "--no-files", str(p))
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"{p}{expected}"), line


def test_validate_missing_input_file_points_at_the_line(capsys, tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: x\nsolver: {name: fbp}\ninput:\n  path: nowhere/none.h5\n")
    code, _, err = recon(capsys, "validate", str(p))
    assert code == 2
    # relative to the pipeline file (docs/pipelines.md), and named as resolved
    assert one_error_line(err) == f"{p}:4: input.path: {tmp_path / 'nowhere' / 'none.h5'}: not found"


def test_validate_set_overrides(capsys):
    code, out, _ = recon(capsys, "validate", "pipelines/sirt.yaml", "--set", "solver.params.iterations=7",
                         "--set", "solver.params.relaxation=1.5e0", "--resolved")
    assert code == 0
    resolved = yaml.safe_load(out.split("\n", 1)[1])
    assert resolved["solver"]["params"]["iterations"] == 7
    assert resolved["solver"]["params"]["relaxation"] == 1.5
    code, _, err = recon(capsys, "validate", "pipelines/sirt.yaml", "--set", "solver.params.iteration=7")
    assert code == 2
    assert one_error_line(err) == "--set solver.params.iteration: unknown key 'iteration'; did you mean 'iterations'?"
    code, _, err = recon(capsys, "validate", "pipelines/sirt.yaml", "--set", "solver.params.relaxation=fast")
    assert code == 2
    assert one_error_line(err).startswith("--set solver.params.relaxation: Input should be a valid number")


# ----------------------------------------------------------------------------- run


def test_run_writes_reconstruction_metrics_provenance(fbp_run):
    out = fbp_run
    assert out.is_file() and out.with_suffix(".png").is_file()
    with h5py.File(out, "r") as f:
        rec = f["/reconstruction"][()]
        assert rec.shape == (256, 256) and rec.dtype == np.float32
        assert f["/reconstruction"].attrs["voxel_size"] == 1.0
        metrics = dict(f["/metrics"].attrs)
        prov = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f["/provenance"].attrs.items()}
    assert set(metrics) == {"psnr", "ssim", "rel_err", "rmse", "hu_rmse", "residual", "wall_time"}
    assert metrics["psnr"] >= FBP_PSNR_FLOOR
    assert 0 < metrics["residual"] < 0.1
    pipeline = yaml.safe_load(prov["pipeline"])
    assert pipeline["solver"] == {"name": "fbp", "model": None,
                                  "params": {"filter": "ram-lak", "frequency_scaling": 1.0, "padding": True,
                                             "nonnegative": False}}
    assert pipeline["output"]["path"] == str(out)
    assert prov["command_line"] == f"recon --quiet run pipelines/fbp.yaml --output {out} --json"
    assert prov["input_sha256"] == sha(SAMPLE)
    assert prov["device"] == "cpu" or gpu_available()
    assert json.loads(prov["versions"])["recon-cli"]
    assert json.loads(prov["projector"])["kind"] in ("matrix", "astra", "cuda")
    assert prov["timestamp_utc"].endswith("Z")


def test_second_run_refuses_and_leaves_file_untouched(capsys, fbp_run, monkeypatch):
    _forbid_computing(monkeypatch)
    before = sha(fbp_run)
    code, out, err = recon(capsys, "run", "pipelines/fbp.yaml", "-o", str(fbp_run))
    assert code == 2 and out == ""
    assert one_error_line(err) == f"{fbp_run}: exists; use --overwrite"
    assert sha(fbp_run) == before
    assert not [p for p in fbp_run.parent.iterdir() if p.name.endswith(".tmp")]


def _forbid_computing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed although an output exists")

    monkeypatch.setattr("recon_cli.projectors.make_projector", boom)
    monkeypatch.setattr("recon_cli.solvers.registry.run_ref", boom)


def test_any_existing_output_refuses_before_computing(capsys, tmp_path, monkeypatch):
    _forbid_computing(monkeypatch)
    (tmp_path / "y.png").write_bytes(b"old")
    code, _, err = recon(capsys, "run", "pipelines/fbp.yaml", "-o", str(tmp_path / "y.h5"))
    assert code == 2
    assert "y.png: exists; use --overwrite" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.png"]
    assert (tmp_path / "y.png").read_bytes() == b"old"


def test_overwrite_replaces(capsys, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"old")
    (tmp_path / "o.png").write_bytes(b"old")
    code, stdout, err = recon(capsys, "run", "pipelines/fbp.yaml", "-o", str(out), "--overwrite",
                              "--set", "output.formats=[hdf5]")
    assert code == 0, err
    assert h5py.is_hdf5(out) and (tmp_path / "o.png").read_bytes() == b"old"
    assert "wrote hdf5" in stdout and "psnr" in stdout


def test_run_json_stdout_is_only_json(capsys, tmp_path):
    out = tmp_path / "j.h5"
    code, stdout, err = recon(capsys, "run", "pipelines/fbp.yaml", "-o", str(out), "--json",
                              "--set", "solver.params.filter=hann")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["outputs"] == {"hdf5": str(out), "png": str(out.with_suffix(".png"))}
    assert data["solver"] == "fbp" and data["metrics"]["psnr"] > FBP_PSNR_FLOOR
    with h5py.File(out, "r") as f:
        assert f["/metrics"].attrs["psnr"] == pytest.approx(data["metrics"]["psnr"])


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_device_gpu_without_gpu_exits_2(capsys, tmp_path):
    code, _, err = recon(capsys, "run", "pipelines/fbp.yaml", "-o", str(tmp_path / "g.h5"), "--device", "gpu")
    assert code == 2
    assert one_error_line(err).startswith("device: --device gpu requested but no GPU is usable")
    assert list(tmp_path.iterdir()) == []


def test_run_bad_input_and_bad_set(capsys, tmp_path):
    code, _, err = recon(capsys, "run", "pipelines/fbp.yaml", "-i", str(tmp_path / "none.h5"),
                         "-o", str(tmp_path / "a.h5"))
    assert code == 2 and one_error_line(err) == f"{tmp_path / 'none.h5'}: not found"
    (tmp_path / "text.h5").write_text("not hdf5")
    code, _, err = recon(capsys, "run", "pipelines/fbp.yaml", "-i", str(tmp_path / "text.h5"),
                         "-o", str(tmp_path / "a.h5"))
    assert code == 2 and "not an HDF5 file" in one_error_line(err)
    code, _, err = recon(capsys, "run", "pipelines/fbp.yaml", "-o", str(tmp_path / "a.h5"),
                         "--set", "solver.params.fliter=hann")
    assert code == 2 and "did you mean 'filter'?" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.h5"]


def test_log_transform_of_intensities_matches_line_integrals(tmp_path):
    """Raw counts I0 exp(-y) with a log_transform step reconstruct exactly as the line integrals y."""
    from recon_cli.config import load_config
    from recon_cli.io.hdf5 import read_sinogram, write_sinogram
    from recon_cli.runner import run_pipeline

    sino = read_sinogram(SAMPLE)
    counts = tmp_path / "counts.h5"
    write_sinogram(counts, type(sino)(data=(1e4 * np.exp(-sino.data.astype(np.float64))).astype(np.float32),
                                      geometry=sino.geometry, grid=sino.grid, reference=sino.reference))
    cfg = load_config("pipelines/fbp.yaml", ["output.formats=[hdf5]"])
    direct = run_pipeline(cfg, output_override=str(tmp_path / "a.h5"), progress=False)
    cfg_log = load_config("pipelines/fbp.yaml", ["output.formats=[hdf5]", "preprocess=[{step: log_transform, I0: 1e4}]"])
    logged = run_pipeline(cfg_log, input_override=str(counts), output_override=str(tmp_path / "b.h5"), progress=False)
    np.testing.assert_allclose(logged.volume, direct.volume, atol=2e-5 * float(np.abs(direct.volume).max()))
    assert logged.metrics["psnr"] == pytest.approx(direct.metrics["psnr"], abs=0.05)


def test_progress_callback_reports_and_never_stops(monkeypatch, capsys):
    from recon_cli.progress import iteration_budget, solver_progress
    from recon_cli.solvers.registry import IterationState

    from recon_cli.solvers.fbp import FBPParams
    from recon_cli.solvers.sirt import SIRTParams
    from recon_cli.solvers.tpv import TpVParams

    assert iteration_budget(SIRTParams(iterations=12, relaxation=1.5)) == 12 and iteration_budget(FBPParams()) is None
    assert iteration_budget(TpVParams(iterations=20, outer_iterations=3)) == 60
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with solver_progress("sirt", 3, enabled=True) as cb:
        assert not cb(IterationState(1, None, objective=2.5))
        assert not cb(IterationState(2, None, objective=1.25, residual=0.5))
    with solver_progress("sirt", 3, enabled=False) as cb:
        assert not cb(IterationState(1, None, objective=2.5))


# ----------------------------------------------------------------------------- solvers, metrics, info


def test_solvers_json_lists_registered_solvers_with_params(capsys):
    from recon_cli.solvers.registry import get_solver, solver_names

    code, out, _ = recon(capsys, "solvers", "--json")
    assert code == 0
    listed = {s["name"]: s for s in json.loads(out)}
    assert {"fbp", "sirt", "cgls"} <= set(listed) and set(listed) == set(solver_names())
    for name, s in listed.items():
        assert set(s["params"]) == set(get_solver(name).params_model.model_fields)
        assert s["description"]
    assert listed["sirt"]["iterative"] and not listed["fbp"]["iterative"]
    it = listed["sirt"]["params"]["iterations"]
    assert it["type"] == "integer" and it["range"] == ">= 1" and isinstance(it["default"], int)
    assert listed["fbp"]["params"]["filter"]["type"].startswith("one of ram-lak")
    code, out, _ = recon(capsys, "solvers", "cgls", "--json")
    assert code == 0 and json.loads(out)["name"] == "cgls"
    code, _, err = recon(capsys, "solvers", "cgsl")
    assert code == 2 and "did you mean 'cgls'?" in one_error_line(err)
    code, out, _ = recon(capsys, "solvers")
    assert code == 0 and "sirt" in out and "iterations" in out


def test_metrics_command_matches_run_metrics(capsys, fbp_run, tmp_path):
    code, out, err = recon(capsys, "metrics", str(fbp_run), str(SAMPLE), "--json")
    assert code == 0, err
    values = json.loads(out)
    with h5py.File(fbp_run, "r") as f:
        stored = dict(f["/metrics"].attrs)
    for name in ("psnr", "ssim", "rel_err", "rmse", "hu_rmse"):
        assert values[name] == pytest.approx(stored[name], rel=1e-9)
    code, out, _ = recon(capsys, "metrics", str(SAMPLE), str(SAMPLE), "--only", "rmse", "--only", "rel_err")
    assert code == 0 and "rmse" in out and "psnr" not in out
    from recon_cli.io.hdf5 import write_reconstruction

    small = tmp_path / "small.h5"
    write_reconstruction(small, np.zeros((8, 8), np.float32), 1.0, metrics={}, provenance={})
    code, _, err = recon(capsys, "metrics", str(small), str(SAMPLE))
    assert code == 2 and "differs from the reference" in one_error_line(err)


def test_info_on_sinogram_and_reconstruction(capsys, fbp_run, tmp_path):
    code, out, _ = recon(capsys, "info", str(SAMPLE), "--json")
    assert code == 0
    d = json.loads(out)
    assert d["format"] == "hdf5-v1-sinogram" and d["geometry"]["type"] == "fanflat" and d["has_reference"]
    code, out, _ = recon(capsys, "info", str(fbp_run))
    assert code == 0 and "reconstruction" in out and "command_line" in out and "formats: [hdf5, png]" in out
    code, _, err = recon(capsys, "info", str(tmp_path / "none.h5"))
    assert code == 2 and one_error_line(err) == f"{tmp_path / 'none.h5'}: file not found"


def test_console_script_json_run_keeps_logs_on_stderr(tmp_path):
    """As a user runs it (a new process, INFO logging on): stdout is pure JSON, exit 0; errors exit 2."""
    import subprocess

    out = tmp_path / "s.h5"
    cmd = [sys.executable, "-m", "recon_cli", "run", "pipelines/fbp.yaml", "-o", str(out), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"]["hdf5"] == str(out)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.strip().splitlines()[-1] == f"Error: {out}: exists; use --overwrite"


def test_reference_and_mask_files_and_missing_reference(capsys, tmp_path):
    import dataclasses

    from recon_cli.io.hdf5 import read_sinogram, write_reconstruction, write_sinogram

    sino = read_sinogram(SAMPLE)
    ref_file, mask_file, bare = tmp_path / "ref.h5", tmp_path / "mask.h5", tmp_path / "bare.h5"
    write_reconstruction(ref_file, sino.reference, 1.0, metrics={}, provenance={})
    yy, xx = np.mgrid[:256, :256]
    write_reconstruction(mask_file, ((yy - 128) ** 2 + (xx - 128) ** 2 < 60 ** 2).astype(np.float32), 1.0,
                         metrics={}, provenance={})
    write_sinogram(bare, dataclasses.replace(sino, reference=None))
    base = ["run", "pipelines/fbp.yaml", "--json", "--set", "output.formats=[hdf5]"]

    code, out, err = recon(capsys, *base, "-i", str(bare), "-o", str(tmp_path / "a.h5"),
                           "--set", f"metrics.reference={ref_file}")
    assert code == 0, err
    with_file = json.loads(out)["metrics"]
    code, out, err = recon(capsys, *base, "-o", str(tmp_path / "b.h5"))
    assert with_file["psnr"] == pytest.approx(json.loads(out)["metrics"]["psnr"], rel=1e-6)

    code, out, err = recon(capsys, *base, "-o", str(tmp_path / "c.h5"), "--set", f"metrics.mask={mask_file}")
    assert code == 0, err
    assert json.loads(out)["metrics"]["psnr"] != pytest.approx(with_file["psnr"], abs=0.01)

    code, out, err = recon(capsys, *base, "-i", str(bare), "-o", str(tmp_path / "d.h5"))
    assert code == 0, err
    assert set(json.loads(out)["metrics"]) == {"residual", "wall_time"}
