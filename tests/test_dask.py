"""Executors: Dask (a LocalCluster of 2 worker processes) and local processes give the same outputs as a
local run, bit for bit; a killed worker's unit is retried; failed units are reported; worker caches."""
from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from recon_cli import stack_units, worker_cache
from recon_cli.cli.main import main
from recon_cli.config import config_from_dict
from recon_cli.errors import ConfigError, RunError
from recon_cli.executors import ExecutorSpec
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.runner import run_pipeline
from recon_cli.simulate import simulate_sinogram
from unit_hooks import always_fails, crash_once

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "sample_data").glob("*.h5"))


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster: 2 worker processes of 1 thread; a dead worker's task is retried twice."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", env={"RECON_NUM_THREADS": "1"})
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """16 slices of 64 x 64 (parallel beam, 48 views, 96 detectors), each a scaled Shepp-Logan."""
    path = tmp_path_factory.mktemp("data") / "stack16.h5"
    images = np.stack([shepp_logan(64) * (0.8 + 0.025 * k) for k in range(16)]).astype(np.float32)
    sino = simulate_sinogram(images, 1.0, parallel_beam_geometry(48, 96, 1.0), VolumeGrid((16, 64, 64), 1.0),
                             I0=1e5, seed=3)
    write_sinogram(path, sino)
    return path


def pipeline(data: Path, out: Path, solver: str, params: dict | None = None):
    return config_from_dict({"name": f"dask-{solver}", "input": {"path": str(data)}, "device": "cpu",
                             "solver": {"name": solver, "params": params or {}},
                             "output": {"path": str(out)}, "checkpoint": {"every": 0}})


def recon_volume(path: Path) -> np.ndarray:
    with h5py.File(path) as f:
        return f["reconstruction"][()]


# ----------------------------------------------------------------------------- stacks


@pytest.mark.parametrize("solver, params", [("fbp", {}), ("sirt", {"iterations": 5})])
def test_stack_on_dask_equals_local(tmp_path, stack, scheduler, solver, params):
    local = run_pipeline(pipeline(stack, tmp_path / "local.h5", solver, params), progress=False)
    spec = ExecutorSpec("dask", scheduler=scheduler, unit_slices=2)
    dask_run = run_pipeline(pipeline(stack, tmp_path / "dask.h5", solver, params), progress=False, executor=spec)
    assert np.array_equal(recon_volume(tmp_path / "local.h5"), recon_volume(tmp_path / "dask.h5"))
    assert recon_volume(tmp_path / "dask.h5").shape == (16, 64, 64)
    assert dask_run.metrics["psnr"] == pytest.approx(local.metrics["psnr"], rel=1e-6)
    assert dask_run.metrics["residual"] == pytest.approx(local.metrics["residual"], rel=1e-5)
    info = dask_run.info
    assert info["units"] == 8 and info["worker_processes"] == 2
    assert info["projector_builds"] <= 2  # once per worker, not once per unit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask.h5", "local.h5"]  # no parts left


def test_killed_dask_worker_is_retried(tmp_path, stack, scheduler, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setattr(stack_units, "UNIT_FUNCTION", functools.partial(crash_once, marker=str(marker)))
    cfg = pipeline(stack, tmp_path / "out" / "dask.h5", "fbp")
    run_pipeline(cfg, progress=False, executor=ExecutorSpec("dask", scheduler=scheduler))
    assert marker.is_file() and int(marker.read_text()) != os.getpid()  # a worker died ...
    run_pipeline(pipeline(stack, tmp_path / "out" / "local.h5", "fbp"), progress=False)
    assert np.array_equal(recon_volume(tmp_path / "out" / "dask.h5"),  # ... and the run completed
                          recon_volume(tmp_path / "out" / "local.h5"))


def test_local_processes_equal_local_and_retry_a_killed_worker(tmp_path, stack, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setattr(stack_units, "UNIT_FUNCTION", functools.partial(crash_once, marker=str(marker)))
    spec = ExecutorSpec("local", workers=2, retries=1)
    run = run_pipeline(pipeline(stack, tmp_path / "out" / "two.h5", "sirt", {"iterations": 5}), progress=False,
                       executor=spec)
    run_pipeline(pipeline(stack, tmp_path / "out" / "one.h5", "sirt", {"iterations": 5}), progress=False)
    assert marker.is_file() and int(marker.read_text()) != os.getpid()
    assert np.array_equal(recon_volume(tmp_path / "out" / "two.h5"), recon_volume(tmp_path / "out" / "one.h5"))
    assert run.info["units"] == 2  # one per worker


def test_units_failing_every_attempt_are_reported(tmp_path, stack, monkeypatch):
    monkeypatch.setattr(stack_units, "UNIT_FUNCTION", always_fails)
    expected = r"2 of 2 units failed: slices 0-7: ValueError: bad unit 0 \(2 attempts\); slices 8-15"
    with pytest.raises(RunError, match=expected):
        run_pipeline(pipeline(stack, tmp_path / "x.h5", "fbp"), progress=False,
                     executor=ExecutorSpec("local", workers=1, retries=1, unit_slices=8))  # units run here
    assert list(tmp_path.iterdir()) == []  # no output, no temporary parts


def test_coupled_solver_is_refused(tmp_path, stack):
    with pytest.raises(ConfigError, match="couples the slices"):
        run_pipeline(pipeline(stack, tmp_path / "x.h5", "tv", {"iterations": 2, "lam": 0.01, "mode": "3d"}),
                     progress=False, executor=ExecutorSpec("local", workers=2))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- batch


def test_batch_on_dask_equals_local(tmp_path, scheduler, capsys):
    assert SAMPLES, "sample_data not generated"
    pipe = tmp_path / "fbp.yaml"
    raw = yaml.safe_load((REPO / "pipelines" / "fbp.yaml").read_text())
    raw["output"]["formats"] = ["hdf5"]
    raw["projector"] = {"kind": "astra", "type": "auto"}  # no matrix to build: a short test
    pipe.write_text(yaml.safe_dump(raw))
    missing = str(tmp_path / "missing.h5")
    codes = {}
    for name, extra in (("local", []), ("dask", ["--executor", "dask", "--scheduler", scheduler, "--retries", "1"])):
        with pytest.raises(SystemExit) as exc:
            main(["-q", "batch", str(pipe), *map(str, SAMPLES), missing, "-o", str(tmp_path / name), *extra])
        codes[name] = exc.value.code
    assert codes == {"local": 1, "dask": 1}  # the missing input fails, the others do not
    for sample in SAMPLES:
        stem = sample.name[:-3]
        assert np.array_equal(recon_volume(tmp_path / "local" / f"{stem}.h5"),
                              recon_volume(tmp_path / "dask" / f"{stem}.h5"))
    with open(tmp_path / "dask" / "batch_summary.csv") as f:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(f)}
    assert [rows[s.name]["status"] for s in SAMPLES] == ["ok"] * len(SAMPLES)
    assert rows["missing.h5"]["status"] == "failed"
    assert "not found" in rows["missing.h5"]["error"] and "(2 attempts)" in rows["missing.h5"]["error"]
    # a re-run on Dask skips the inputs already done with the same pipeline
    with pytest.raises(SystemExit):
        main(["-q", "batch", str(pipe), *map(str, SAMPLES), "-o", str(tmp_path / "dask"),
              "--executor", "dask", "--scheduler", scheduler])
    with open(tmp_path / "dask" / "batch_summary.csv") as f:
        assert {r["status"] for r in csv.DictReader(f)} == {"skipped"}


# ----------------------------------------------------------------------------- options and caches


@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "needs --scheduler"),
    (["--scheduler", "tcp://127.0.0.1:1"], "only for --executor dask"),
    (["--executor", "dask", "--scheduler", "tcp://h:1", "--workers", "2"], "not used with --executor dask"),
])
def test_bad_executor_options(tmp_path, stack, capsys, args, message):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": "p", "input": {"path": str(stack)}, "solver": {"name": "fbp"},
                                    "output": {"path": str(tmp_path / "o.h5")}}))
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()


def test_worker_cache_builds_once_per_key(monkeypatch):
    from recon_cli.backend import select_device

    built = []
    monkeypatch.setattr("recon_cli.projectors.make_projector", lambda *a: built.append(a) or object())
    device = select_device("cpu")
    geometry = parallel_beam_geometry(8, 16, 1.0)
    try:
        worker_cache.disable()
        worker_cache.make_projector(geometry, VolumeGrid((2, 8, 8), 1.0), device, "matrix")
        worker_cache.make_projector(geometry, VolumeGrid((2, 8, 8), 1.0), device, "matrix")
        assert len(built) == 2  # off (the driver): built every time
        worker_cache.enable(max_entries=2)
        a = worker_cache.make_projector(geometry, VolumeGrid((2, 8, 8), 1.0), device, "matrix")
        b = worker_cache.make_projector(geometry, VolumeGrid((2, 8, 8), 1.0), device, "matrix")
        c = worker_cache.make_projector(geometry, VolumeGrid((3, 8, 8), 1.0), device, "matrix")
        d = worker_cache.make_projector(parallel_beam_geometry(9, 16, 1.0), VolumeGrid((2, 8, 8), 1.0), device,
                                        "matrix")
        assert a is b and c is not a and d is not a and len(built) == 5
        assert worker_cache.stats()["cached_projectors"] == 2  # the oldest was dropped
    finally:
        worker_cache.disable()
