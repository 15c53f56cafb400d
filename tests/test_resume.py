"""Safe outputs: SIGTERM mid-iteration leaves nothing partial; --resume finishes with the same result.

Equality is exact (np.array_equal): SIRT and CGLS on the CPU are deterministic (the CSR products
sum every row in the same order whatever the thread count), the checkpoint stores the solver's
full state bit for bit (float32 arrays, float64 histories), and what a resumed solver recomputes
(SIRT's A x) is the same product of the same x as in the uninterrupted loop.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from interrupt import leftovers, sigterm_after_first_checkpoint
from recon_cli.checkpoint import Checkpoint, CheckpointWriter, load_checkpoint, save_checkpoint
from recon_cli.cli.main import main
from recon_cli.config import config_from_dict
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.runner import run_pipeline
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.registry import run_solver

ITERATIONS = 4000  # ~2 s uninterrupted: time to kill the run after its first checkpoint
EVERY = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 48 x 48 parallel-beam sinogram (30 views) with its reference."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    sino = simulate_sinogram(shepp_logan(48), 1.0, parallel_beam_geometry(30, 72, 1.0), VolumeGrid((48, 48), 1.0),
                             I0=1e5, seed=1)
    write_sinogram(path, sino)
    return path


def pipeline(tmp_path: Path, data: Path, solver: str = "sirt", iterations: int = ITERATIONS,
             every: int = EVERY) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "name": "resume-test", "input": {"path": str(data)}, "device": "cpu",
        "solver": {"name": solver, "params": {"iterations": iterations}},
        "output": {"path": str(tmp_path / "out" / "x.h5"), "formats": ["hdf5", "png"]},
        "checkpoint": {"every": every}}))
    return path




# ----------------------------------------------------------------------------- the whole story, end to end


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, tiny, capsys):
    pipe = pipeline(tmp_path, tiny)
    out = tmp_path / "out" / "x.h5"
    ckpt = tmp_path / "out" / ".recon-checkpoints" / "x.h5.ckpt.npz"
    returncode, err = sigterm_after_first_checkpoint(pipe, ckpt)
    assert returncode == 143, err
    assert "Interrupted (SIGTERM)" in err
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert leftovers(tmp_path) == []
    saved = load_checkpoint(ckpt)
    assert 0 < saved.iteration < ITERATIONS and saved.iteration % EVERY == 0

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), "--resume"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert not ckpt.exists() and not ckpt.parent.exists()  # removed once the outputs are written
    with h5py.File(out) as f:
        resumed = f["reconstruction"][()]
        assert int(f["info"].attrs["resumed_from"]) == saved.iteration
        assert int(f["info"].attrs["iterations"]) == ITERATIONS
        assert f["history/residual"].shape == (ITERATIONS,)

    cfg = config_from_dict(yaml.safe_load(pipe.read_text()), overrides=["checkpoint.every=0"])
    straight = run_pipeline(cfg, output_override=str(tmp_path / "straight.h5"), progress=False)
    assert np.array_equal(resumed, straight.volume)
    with h5py.File(tmp_path / "straight.h5") as f:
        assert np.array_equal(f["history/residual"][()], h5py.File(out)["history/residual"][()])


def test_resume_refused_when_pipeline_or_input_changed(tmp_path, tiny, capsys):
    pipe = pipeline(tmp_path, tiny, iterations=60)
    cfg = config_from_dict(yaml.safe_load(pipe.read_text()))
    ckpt_path = tmp_path / "out" / ".recon-checkpoints" / "x.h5.ckpt.npz"
    # a checkpoint left by an interrupted run: the real key, iteration 20
    from recon_cli.checkpoint import run_key
    from recon_cli.io.formats import input_digest

    key = run_key(cfg, input_digest(tiny), "cpu")
    save_checkpoint(ckpt_path, Checkpoint(key=key, chunks=[(0, 1)],
                                          state={"iteration": 20, "x": np.zeros((48, 48), np.float32),
                                                 "history": {"residual": [1.0] * 20}}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), "--resume", "--set", "solver.params.relaxation=1.5"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "cannot resume: the resolved pipeline changed" in err and str(ckpt_path) in err
    assert not (tmp_path / "out" / "x.h5").exists()

    other = tmp_path / "other.h5"
    other.write_bytes(tiny.read_bytes())
    with h5py.File(other, "a") as f:
        f["sinogram"][0, 0] += 1.0
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), "--resume", "-i", str(other)])
    assert exc.value.code == 2
    assert "the resolved pipeline changed" in capsys.readouterr().err  # input.path is part of the pipeline
    key_other = run_key(config_from_dict(yaml.safe_load(pipe.read_text())), input_digest(other), "cpu")
    assert key_other["input_sha256"] != key["input_sha256"]

    # a changed checkpoint interval is not a changed pipeline: resumes from iteration 20
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), "--resume", "--set", "checkpoint.every=7"])
    assert exc.value.code == 0, capsys.readouterr().err
    with h5py.File(tmp_path / "out" / "x.h5") as f:
        assert int(f["info"].attrs["resumed_from"]) == 20


def test_resume_refused_for_changed_input_bytes(tmp_path, tiny, capsys):
    data = tmp_path / "data.h5"
    data.write_bytes(tiny.read_bytes())
    pipe = pipeline(tmp_path, data, iterations=60)
    cfg = config_from_dict(yaml.safe_load(pipe.read_text()))
    from recon_cli.checkpoint import run_key
    from recon_cli.io.formats import input_digest

    ckpt_path = tmp_path / "out" / ".recon-checkpoints" / "x.h5.ckpt.npz"
    save_checkpoint(ckpt_path, Checkpoint(key=run_key(cfg, input_digest(data), "cpu"), chunks=[(0, 1)]))
    with h5py.File(data, "a") as f:  # same path, different content
        f["sinogram"][0, 0] += 1.0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), "--resume"])
    assert exc.value.code == 2
    assert "cannot resume: the input file changed" in capsys.readouterr().err


def test_resume_without_checkpoint_starts_over(tmp_path, tiny, capsys):
    pipe = pipeline(tmp_path, tiny, iterations=30)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), "--resume"])
    assert exc.value.code == 0
    assert (tmp_path / "out" / "x.h5").exists()
    assert leftovers(tmp_path) == []


def test_explicit_checkpoints_for_a_solver_that_cannot_resume(tmp_path, tiny, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": "fbp", "input": {"path": str(tiny)}, "solver": {"name": "fbp"},
                                    "output": {"path": str(tmp_path / "o.h5")}, "checkpoint": {"every": 5}}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe)])
    assert exc.value.code == 2
    assert "checkpoint.every" in capsys.readouterr().err


# ----------------------------------------------------------------------------- solver restarts (in process)


@pytest.mark.parametrize("solver", ["sirt", "cgls", "sgp_tv"])
def test_solver_restart_from_its_state_is_bit_exact(tiny, solver):
    from recon_cli.io.hdf5 import read_sinogram

    sino = read_sinogram(tiny)
    op = AstraMatrixProjector(sino.geometry, sino.grid)
    full = run_solver(solver, op, sino, {"iterations": 25})
    kept = {}

    def stop_at_10(state):
        if state.iteration == 10:
            kept.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.extra["state"].items()})
            kept["history"] = {k: list(v) for k, v in state.extra["state"]["history"].items()}
            return True
        return False

    run_solver(solver, op, sino, {"iterations": 25}, callback=stop_at_10)
    resumed = run_solver(solver, op, sino, {"iterations": 25}, resume_state=kept)
    assert resumed.info["iterations"] == 25 and resumed.info["resumed_from"] == 10
    assert np.array_equal(resumed.volume, full.volume)
    assert resumed.info["history"] == full.info["history"]


def test_checkpoint_round_trip_keeps_types(tmp_path):
    state = {"iteration": 7, "x": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.float32(0.1),
             "alpha": 0.30000000000000004, "gamma": np.ones((2, 1, 1), np.float32),
             "history": {"residual": [0.5, 1 / 3], "gap_iteration": [10, 20], "note": "x"}}
    path = tmp_path / "c.npz"
    save_checkpoint(path, Checkpoint(key={"pipeline_sha256": "a"}, chunks=[(0, 2), (2, 4)], chunk=1,
                                     done_volume=np.ones((2, 2, 3), np.float32), state=state,
                                     done_info=[{"iterations": 5, "history": {"residual": [0.25]}}]))
    back = load_checkpoint(path)
    assert back.iteration == 7 and back.chunk == 1 and back.chunks == [(0, 2), (2, 4)]
    assert np.array_equal(back.state["x"], state["x"]) and back.state["x"].dtype == np.float32
    assert back.state["step"] == np.float32(0.1) and back.state["step"].dtype == np.float32
    assert back.state["alpha"] == 0.30000000000000004
    assert back.state["history"] == {"residual": [0.5, 1 / 3], "gap_iteration": [10, 20], "note": "x"}
    assert isinstance(back.state["history"]["gap_iteration"][0], int)
    assert back.done_info == [{"iterations": 5, "history": {"residual": [0.25]}}]
    assert np.array_equal(back.done_volume, np.ones((2, 2, 3), np.float32))
    assert leftovers(tmp_path) == []


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.ckpt.npz"
    path.write_bytes(b"not a zip")
    from recon_cli.errors import InputError

    with pytest.raises(InputError, match="not a readable checkpoint") as exc:
        load_checkpoint(path)
    assert str(path) in exc.value.one_line()


def test_writer_saves_only_every_n_iterations(tmp_path):
    from recon_cli.solvers.registry import IterationState

    writer = CheckpointWriter(tmp_path / "c.npz", Checkpoint(key={}), every=3)
    for k in range(1, 8):
        writer.callback(IterationState(k, None, extra={"state": {"iteration": k, "x": np.zeros(2, np.float32)}}))
    assert writer.saved == 2
    assert load_checkpoint(tmp_path / "c.npz").iteration == 6


def test_unwritable_checkpoint_folder_only_warns(tmp_path, tiny, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    raw = yaml.safe_load(pipeline(tmp_path, tiny, iterations=30, every=10).read_text())
    raw["checkpoint"]["dir"] = str(blocker / "ckpt")
    cfg = config_from_dict(raw)
    with caplog.at_level("WARNING", logger="recon_cli.checkpoint"):
        result = run_pipeline(cfg, progress=False)
    assert result.info["iterations"] == 30 and (tmp_path / "out" / "x.h5").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name == "recon_cli.checkpoint"]
    assert len(warnings) == 1 and "continuing without checkpoints" in warnings[0]
