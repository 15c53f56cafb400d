"""Memory: the estimate, refusal before running, and slice stacks in chunks (bit-exact for fbp/sirt/cgls)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from recon_cli.cli.main import main
from recon_cli.config import config_from_dict
from recon_cli.errors import ConfigError
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import read_sinogram, write_sinogram
from recon_cli.memory import (InsufficientMemoryError, MemoryEstimate, available_host_memory, default_limit,
                              estimate_memory, format_size, parse_size, plan_chunks)
from recon_cli.phantoms import shepp_logan
from recon_cli.simulate import simulate_sinogram
from recon_cli.signals import Interrupted

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "shepp_logan_fan60.h5"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    """4 slices of 32 x 32 (parallel beam, 24 views, 48 detectors)."""
    path = tmp_path_factory.mktemp("data") / "stack.h5"
    images = np.stack([shepp_logan(32) * f for f in (1.0, 0.9, 1.1, 0.8)]).astype(np.float32)
    sino = simulate_sinogram(images, 1.0, parallel_beam_geometry(24, 48, 1.0), VolumeGrid((4, 32, 32), 1.0),
                             I0=1e5, seed=2)
    write_sinogram(path, sino)
    return path


def raw_pipeline(data: Path, out: Path, solver: str, params: dict | None = None) -> dict:
    return {"name": f"mem-{solver}", "input": {"path": str(data)}, "device": "cpu",
            "solver": {"name": solver, "params": params or {}},
            "output": {"path": str(out)}, "checkpoint": {"every": 0}}


def write_pipeline(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def recon(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
    return exc.value.code, capsys.readouterr().err


def estimate_for(raw: dict) -> MemoryEstimate:
    cfg = config_from_dict(raw)
    return estimate_memory(cfg, read_sinogram(cfg.input.path), "cpu")


# ----------------------------------------------------------------------------- sizes and limits


@pytest.mark.parametrize("text, expected", [("2G", 2 * 1024**3), ("500M", 500 * 1024**2), ("1.5GiB", 1536 * 1024**2),
                                            ("64k", 65536), ("1000000", 1000000), (" 3 MB ", 3 * 1024**2),
                                            (4096, 4096)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "2X", "-1G", "0", "G", "1.2.3M"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="--max-memory"):
        parse_size(text)


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 * 1024**3) == "3.0 GiB"


def test_available_memory_and_default_limit():
    avail = available_host_memory()
    assert avail > 0
    assert default_limit("cpu", jobs=4) <= 0.8 * avail / 4 * 1.01  # measured a moment later: allow drift


# ----------------------------------------------------------------------------- the estimate


def test_estimate_counts_data_matrix_and_solver_state(tmp_path, stack):
    est = estimate_for(raw_pipeline(stack, tmp_path / "o.h5", "sirt"))
    image, sino = 32 * 32 * 4, 24 * 48 * 4
    assert est.n_slices == 4 and est.stack_2d and est.slice_independent
    assert est.state_arrays == (4, 5)
    assert est.per_slice == (4 + 1) * image + (5 + 1) * sino  # state + projector workspace
    # input sinogram + output, two metric temporaries, reference (from the file's /reference)
    assert est.data == 4 * (sino + 4 * image)
    assert est.projector_kind == "matrix" and est.operator > 0
    assert est.device_peak(4) == est.data + est.operator + 4 * est.per_slice
    assert "sirt" in est.describe() and "KiB (matrix)" in est.describe()  # the stored-view matrix: < 1 MiB here
    # a solver without a hint gets the default; coupled solvers are flagged
    coupled = estimate_for(raw_pipeline(stack, tmp_path / "o.h5", "sgp_tv"))
    assert not coupled.slice_independent and coupled.per_slice > est.per_slice


def test_plan_chunks_fewest_equal_chunks():
    est = MemoryEstimate(device="cpu", n_slices=10, stack_2d=True, slice_independent=True, solver="sirt",
                         state_arrays=(4, 5), projector_kind="matrix", data=100, operator=1000, per_slice=50)
    assert plan_chunks(est, 10**6) == [(0, 10)]
    assert plan_chunks(est, est.device_peak(4)) == [(0, 4), (4, 8), (8, 10)]
    assert plan_chunks(est, est.device_peak(5) + 49) == [(0, 5), (5, 10)]
    with pytest.raises(InsufficientMemoryError, match="even one slice needs"):
        plan_chunks(est, est.device_peak(1) - 1)
    est.slice_independent = False
    with pytest.raises(InsufficientMemoryError, match="couples the slices"):
        plan_chunks(est, est.device_peak(5))


# ----------------------------------------------------------------------------- refusing before running


def test_job_that_cannot_fit_is_refused_up_front(tmp_path, capsys):
    """The 256 x 256 sample slice: even without a projection matrix it needs ~3 MiB."""
    out = tmp_path / "out" / "x.h5"
    code, err = recon(capsys, "run", str(REPO / "pipelines" / "sirt.yaml"), "-i", str(SAMPLE), "-o", str(out),
                      "--max-memory", "1M")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --max-memory: this job needs about ")
    needed = float(lines[0].split("needs about ")[1].split()[0])
    assert needed > 1.0 and "MiB" in lines[0]
    assert "projector" in lines[0] and "solver sirt" in lines[0] and "limit of 1.0 MiB" in lines[0]
    assert "nothing was run" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_max_memory_value(tmp_path, stack, capsys):
    pipe = write_pipeline(tmp_path, raw_pipeline(stack, tmp_path / "x.h5", "fbp"))
    code, err = recon(capsys, "run", str(pipe), "--max-memory", "lots")
    assert code == 2 and "cannot read memory size 'lots'" in err


def test_coupled_solver_refused_when_the_stack_does_not_fit(tmp_path, stack, capsys):
    raw = raw_pipeline(stack, tmp_path / "x.h5", "sgp_tv", {"iterations": 3})
    raw["projector"] = {"kind": "matrix"}  # no fallback to the direct projector
    est = estimate_for(raw)
    code, err = recon(capsys, "run", str(write_pipeline(tmp_path, raw)), "--max-memory", str(est.device_peak(2)))
    assert code == 2 and "couples the slices" in err
    assert not (tmp_path / "x.h5").exists()


# ----------------------------------------------------------------------------- chunks


@pytest.mark.parametrize("solver, params", [("fbp", {}), ("sirt", {"iterations": 20}), ("cgls", {"iterations": 10})])
def test_stack_in_two_chunks_equals_one_go(tmp_path, stack, capsys, solver, params):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    raw = raw_pipeline(stack, one, solver, params)
    pipe = write_pipeline(tmp_path, raw)
    assert recon(capsys, "run", str(pipe))[0] == 0
    est = estimate_for(raw)  # after the first run: the matrix is in the cache for both estimates
    limit = est.device_peak(2) + est.per_slice // 2  # room for 2 slices, not 3
    code, err = recon(capsys, "run", str(pipe), "-o", str(two), "--max-memory", str(limit))
    assert code == 0, err
    with h5py.File(one) as a, h5py.File(two) as b:
        assert "chunks" not in a["info"].attrs
        assert int(b["info"].attrs["chunks"]) == 2 and int(b["info"].attrs["chunk_slices"]) == 2
        assert np.array_equal(a["reconstruction"][()], b["reconstruction"][()])
        assert b["reconstruction"].shape == (4, 32, 32)
        for name in ("psnr", "rmse"):
            assert a["metrics"].attrs[name] == pytest.approx(b["metrics"].attrs[name], rel=1e-6)
        assert a["metrics"].attrs["residual"] == pytest.approx(b["metrics"].attrs["residual"], rel=1e-5)


def test_auto_projector_falls_back_to_astra_when_the_matrix_does_not_fit(tmp_path, stack, capsys):
    raw = raw_pipeline(stack, tmp_path / "x.h5", "sirt", {"iterations": 3})
    est = estimate_for(raw)
    limit = est.data + 4 * est.per_slice + 1024  # everything but the matrix
    assert limit < est.device_peak(1)
    code, err = recon(capsys, "run", str(write_pipeline(tmp_path, raw)), "--max-memory", str(limit))
    assert code == 0, err
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["info"].attrs["projector_kind"] == "astra"


def test_chunked_run_resumes_after_the_first_chunk(tmp_path, stack, capsys, monkeypatch):
    from recon_cli.checkpoint import CheckpointWriter

    raw = raw_pipeline(stack, tmp_path / "x.h5", "sirt", {"iterations": 20})
    raw["checkpoint"] = {"every": 5}
    est = estimate_for(raw)
    limit = str(est.device_peak(2) + est.per_slice // 2)
    pipe = write_pipeline(tmp_path, raw)
    original = CheckpointWriter.chunk_done

    def then_killed(self, index, done, info):
        original(self, index, done, info)
        raise Interrupted(15)

    monkeypatch.setattr(CheckpointWriter, "chunk_done", then_killed)
    code, err = recon(capsys, "run", str(pipe), "--max-memory", limit)
    assert code == 143 and not (tmp_path / "x.h5").exists()
    monkeypatch.setattr(CheckpointWriter, "chunk_done", original)
    code, err = recon(capsys, "run", str(pipe), "--max-memory", "4G", "--resume")  # keeps the saved chunks
    assert code == 0, err
    code, err = recon(capsys, "run", str(pipe), "-o", str(tmp_path / "y.h5"))
    assert code == 0, err
    with h5py.File(tmp_path / "x.h5") as a, h5py.File(tmp_path / "y.h5") as b:
        assert int(a["info"].attrs["chunks"]) == 2
        assert np.array_equal(a["reconstruction"][()], b["reconstruction"][()])
        assert a["history/residual_chunk0"].shape == (20,)
