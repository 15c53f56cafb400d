"""The one iteration driver (recon_cli.solvers.algorithm) and a solver added from outside the package.

``landweber_example`` below is a complete solver written against the public pieces only (an
Algorithm subclass, ``run``, ``TimedOperator``, ``register``): registered from this file, it runs
through ``recon run`` like a built-in one, writes its checkpoints and resumes bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from recon_cli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.simulate import simulate_sinogram
from recon_cli.sinogram import Reconstruction
from recon_cli.solvers import registry
from recon_cli.solvers.algorithm import Algorithm, Halt, TimedOperator, advance, run
from recon_cli.solvers.registry import IterationState, SolverParams, register, run_solver, unit

from cli_helpers import recon_quiet


# ----------------------------------------------------------------------------- an example solver, from outside


class LandweberParams(SolverParams):
    iterations: int = unit("1", "number of Landweber iterations", default=40, ge=1)
    tol: float = unit("1", "stop when ||x_k+1 - x_k|| / ||x_k+1|| < tol (0: off)", default=0.0, ge=0.0)


class Landweber(Algorithm):
    """x <- max(0, x + A^T (y - A x) / ||A||^2); state {iteration, x, history}."""

    def __init__(self, op, y, params: LandweberParams, state: dict | None = None):
        self.op, self.y, self.xp = op, y, op.xp
        self.max_iterations, self.tol = params.iterations, params.tol
        self.step_size = 1.0 / float(op.norm()) ** 2
        self.x = np.zeros(op.domain_shape, dtype=np.float32)
        self.history: dict[str, list[float]] = {"residual": [], "rel_change": []}
        if state is not None:
            self.resume(state)

    def load_state(self, state: dict) -> None:
        self.x = np.array(state["x"], dtype=np.float32, copy=True)
        self.history = {k: list(v) for k, v in state["history"].items()}

    def step(self, k: int):
        r = self.y - self.op.forward(self.x)
        self.history["residual"].append(float(np.linalg.norm(r)) / float(np.linalg.norm(self.y)))
        change = np.float32(self.step_size) * self.op.adjoint(r)
        new = np.maximum(self.x + change, 0.0)
        self.history["rel_change"].append(float(np.linalg.norm(new - self.x) / max(np.linalg.norm(new), 1e-30)))
        self.x = new
        return None

    def converged(self):
        return "tol" if self.tol > 0 and self.history["rel_change"][-1] < self.tol else None

    def report(self) -> IterationState:
        return IterationState(self.iteration, self.x, residual=self.history["residual"][-1])

    def state(self) -> dict:
        return {"iteration": self.iteration, "x": self.x, "history": self.history}


def solve_landweber(op, sino, params: LandweberParams, callback=None, *, resume_state=None) -> Reconstruction:
    timed = TimedOperator(op)
    alg = Landweber(timed, np.asarray(sino.data, dtype=np.float32), params, state=resume_state)
    record = run(alg, callback)
    info = {"iterations": record.iterations, "stopped": record.stopped, "history": alg.history,
            "time_projector": timed.seconds, "time_total": record.time_total}
    if record.resumed_from is not None:
        info["resumed_from"] = record.resumed_from
    return Reconstruction(alg.x, info)


@pytest.fixture
def landweber():
    """Register ``landweber_example`` for one test, and remove it afterwards."""
    register("landweber_example", LandweberParams, "Landweber iteration with x >= 0 (test example)",
             iterative=True)(solve_landweber)
    yield registry.REGISTRY["landweber_example"]
    registry.REGISTRY.pop("landweber_example")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    sino = simulate_sinogram(shepp_logan(32), 1.0, parallel_beam_geometry(24, 48, 1.0), VolumeGrid((32, 32), 1.0),
                             I0=1e5, seed=3)
    write_sinogram(path, sino)
    return path


def test_example_solver_is_registered_as_resumable(landweber):
    assert landweber.resumable and landweber.iterative
    assert "landweber_example" in registry.solver_names()


def test_example_solver_runs_through_the_cli(tmp_path, tiny, capsys, landweber):
    out = tmp_path / "out" / "lw.h5"
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": "lw", "input": {"path": str(tiny)}, "device": "cpu",
                                    "solver": {"name": "landweber_example", "params": {"iterations": 30}},
                                    "output": {"path": str(out), "formats": ["hdf5"]}}))
    code, _, err = recon_quiet(capsys, "run", str(pipe))
    assert code == 0, err
    with h5py.File(out) as f:
        volume = f["reconstruction"][()]
    from recon_cli.io.hdf5 import read_sinogram

    sino = read_sinogram(tiny)
    direct = run_solver("landweber_example", AstraMatrixProjector(sino.geometry, sino.grid), sino,
                        {"iterations": 30})
    assert np.array_equal(volume, direct.volume)
    residual = direct.info["history"]["residual"]
    assert len(residual) == 30 and residual[-1] < 0.5 * residual[0]
    assert direct.info["time_projector"] > 0


def test_example_solver_resumes_bit_for_bit(tmp_path, tiny, landweber):
    from recon_cli.io.hdf5 import read_sinogram

    sino = read_sinogram(tiny)
    op = AstraMatrixProjector(sino.geometry, sino.grid)
    full = run_solver("landweber_example", op, sino, {"iterations": 25})
    path = tmp_path / "s.ckpt.npz"

    def stop_at_9(state):
        if state.iteration == 9:
            save_checkpoint(path, Checkpoint(key={}, state=state.extra["state"]))
            return True
        return False

    assert run_solver("landweber_example", op, sino, {"iterations": 25}, callback=stop_at_9).info["stopped"] \
        == "callback"
    resumed = run_solver("landweber_example", op, sino, {"iterations": 25}, resume_state=load_checkpoint(path).state)
    assert resumed.info["resumed_from"] == 9 and resumed.info["iterations"] == 25
    assert np.array_equal(resumed.volume, full.volume)
    assert resumed.info["history"] == full.info["history"]


# ----------------------------------------------------------------------------- the driver's rules


class Counter(Algorithm):
    """Counts; halts at ``halt_at`` (a Halt, counted or not), converges at ``converge_at``."""

    def __init__(self, budget=10, halt_at=None, completed=False, converge_at=None):
        self.max_iterations, self.halt_at, self.completed, self.converge_at = budget, halt_at, completed, converge_at
        self.steps: list[int] = []
        self.finished = 0

    def step(self, k):
        if k == self.halt_at:
            return Halt("halted", completed=self.completed)
        self.steps.append(k)
        return None

    def converged(self):
        return "tol" if self.converge_at is not None and self.iteration >= self.converge_at else None

    def state(self):
        return {"iteration": self.iteration, "steps": list(self.steps)}

    def load_state(self, state):
        self.steps = list(state["steps"])

    def finish(self):
        self.finished += 1


def test_budget_and_finish():
    alg = Counter(budget=7)
    record = run(alg)
    assert (record.iterations, record.stopped, alg.steps, alg.finished) == (7, "iterations", list(range(1, 8)), 1)
    assert record.resumed_from is None and record.time_total >= 0


@pytest.mark.parametrize("completed,expected", [(False, 3), (True, 4)])
def test_a_halt_counts_the_iteration_only_when_completed(completed, expected):
    record = run(Counter(halt_at=4, completed=completed))
    assert (record.iterations, record.stopped) == (expected, "halted")


def test_callback_sees_the_state_and_the_pending_stop_before_the_tolerance_stops():
    seen = []

    def callback(state):
        seen.append((state.iteration, state.extra["state"]["pending_stop"], state.extra["state"]["lam"]))

    record = run(Counter(converge_at=3), callback, context={"lam": 0.5})
    assert (record.iterations, record.stopped) == (3, "tol")
    assert seen == [(1, None, 0.5), (2, None, 0.5), (3, "tol", 0.5)]


def test_a_truthy_callback_stops_before_a_met_tolerance():
    record = run(Counter(converge_at=3), lambda state: state.iteration == 3)
    assert (record.iterations, record.stopped) == (3, "callback")


def test_resuming_at_a_stop_of_the_uninterrupted_run_stops_there():
    kept = {}
    run(Counter(converge_at=3), lambda state: kept.update(state.extra["state"]))
    assert kept["pending_stop"] == "tol" and kept["iteration"] == 3
    alg = Counter(converge_at=100).resume(kept)
    record = run(alg)
    assert (record.iterations, record.stopped, record.resumed_from, alg.steps) == (3, "tol", 3, [1, 2, 3])


def test_resume_continues_after_the_saved_iteration():
    kept = {}
    run(Counter(budget=10), lambda state: state.iteration == 4 and not kept.update(state.extra["state"]))
    alg = Counter(budget=10).resume(kept)
    assert run(alg).iterations == 10 and alg.steps == list(range(1, 11)) and alg.resumed_from == 4


def test_advance_does_one_iteration_with_its_bookkeeping():
    alg = Counter(converge_at=2)
    assert advance(alg) is None and (alg.iteration, alg.pending_stop) == (1, None)
    assert advance(alg) is None and (alg.iteration, alg.pending_stop) == (2, "tol")


def test_timed_operator_counts_projector_seconds_and_changes_nothing():
    geometry, grid = parallel_beam_geometry(20, 40, 1.0), VolumeGrid((32, 32), 1.0)
    op = AstraMatrixProjector(geometry, grid, use_cache=False)
    timed = TimedOperator(op)
    x = shepp_logan(32)
    assert timed.seconds == 0.0
    y = timed.forward(x)
    after_forward = timed.seconds
    assert np.array_equal(y, op.forward(x)) and after_forward > 0
    assert np.array_equal(timed.adjoint(y), op.adjoint(y)) and timed.seconds > after_forward
    assert timed.domain_shape == op.domain_shape and timed.range_shape == op.range_shape
