"""Progress without a terminal: INFO lines per stage and about every 10% (or 30 s) with iteration,
objective/residual and ETA; the same numbers as keys of JSON log lines; SV-TV's pre-estimate reports too."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recon_cli.progress import ProgressLog
from recon_cli.solvers.registry import IterationState

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "shepp_logan_fan60.h5"


def run_piped(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``recon ARGS`` with stdout and stderr as pipes (not terminals)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "recon_cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


@pytest.fixture(scope="module")
def svtv_json_log(tmp_path_factory) -> list[dict]:
    if not SAMPLE.is_file():
        pytest.skip("sample_data not generated")
    tmp_path = tmp_path_factory.mktemp("progress")
    proc = run_piped(tmp_path, "--log-format", "json", "run", str(REPO / "pipelines" / "svtv.yaml"),
                     "-o", "out/x.h5", "--set", "solver.params.iterations=40",
                     "--set", "solver.params.pre_estimate.params.iterations=20")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stderr.splitlines()]


def test_one_line_per_stage_in_order(svtv_json_log):
    stages = [e["stage"] for e in svtv_json_log if e["logger"] == "recon_cli.progress" and "iteration" not in e]
    assert stages == ["read", "solve", "pre-estimate", "write"]
    pre = next(e for e in svtv_json_log if e.get("stage") == "pre-estimate" and "iteration" not in e)
    assert pre["solver"] == "tv" and pre["total"] == 20 and pre["message"] == "pre-estimate: tv (20 iterations)"


@pytest.mark.parametrize("stage, solver, total", [("pre-estimate", "tv", 20), ("solve", "svtv", 40)])
def test_iteration_lines_every_tenth_with_objective_residual_and_eta(svtv_json_log, stage, solver, total):
    lines = [e for e in svtv_json_log if e.get("stage") == stage and "iteration" in e]
    assert [e["iteration"] for e in lines] == list(range(total // 10, total + 1, total // 10))
    for e in lines:
        assert e["level"] == "INFO" and e["solver"] == solver and e["total"] == total
        assert e["percent"] == pytest.approx(100 * e["iteration"] / total)
        assert e["objective"] > 0 and 0 < e["residual"] < 1 and e["eta_s"] >= 0 and e["elapsed_s"] >= 0
        assert f"iteration {e['iteration']}/{total}" in e["message"] and "ETA" in e["message"]
    assert lines[-1]["eta_s"] == 0


def test_text_log_when_piped(tmp_path):
    if not SAMPLE.is_file():
        pytest.skip("sample_data not generated")
    proc = run_piped(tmp_path, "run", str(REPO / "pipelines" / "sirt.yaml"), "-o", "out/x.h5",
                     "--set", "solver.params.iterations=20")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("INFO recon_cli.progress: solve sirt:")]
    assert len(lines) == 10, proc.stderr
    assert lines[0].startswith("INFO recon_cli.progress: solve sirt: iteration 2/20 (10%), ")
    assert "residual" in lines[0] and "ETA" in lines[0]


def test_every_30_seconds_without_an_iteration_budget(caplog):
    now = [0.0]
    progress = ProgressLog("cgls", None, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="recon_cli.progress"):
        for i in range(1, 101):
            now[0] = i * 1.0  # one iteration a second
            progress(IterationState(i, None, residual=1.0 / i))
    iterations = [r.progress["iteration"] for r in caplog.records]
    assert iterations == [30, 60, 90]
    assert all("eta_s" not in r.progress for r in caplog.records)
