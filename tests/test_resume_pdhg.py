"""Restarting tv, svtv and tpv (the Chambolle-Pock core) from a checkpoint gives the uninterrupted result.

Equality is exact (np.array_equal): the state passed out through ``extra['state']`` (x, q, s, the
extrapolations K xbar and B xbar, the step sizes as set by the adaptive step-ratio resets at
iterations 10, 20, 40, ..., the history, the chosen lam, the SV-TV / TpV weights) goes through a
checkpoint file and back bit for bit, and what a resumed run recomputes (K x, B x) is the same
product of the same x as in the uninterrupted loop. Stops are placed before the resets at 20, 40
and 80 so that the resumed part crosses them.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from interrupt import interrupted_checkpoint
from recon_cli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from recon_cli.cli.main import main
from recon_cli.config import config_from_dict
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.runner import run_pipeline
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers import svtv, tv
from recon_cli.solvers.pdhg import REBALANCE_AT
from recon_cli.solvers.registry import get_solver, run_solver





@pytest.fixture(scope="module")
def problem():
    """64 x 64 Shepp-Logan, 45-view parallel beam with Poisson noise (I0 in the metadata), CSR projector."""
    sino = simulate_sinogram(shepp_logan(64), 1.0, parallel_beam_geometry(45, 96, 1.0), VolumeGrid((64, 64), 1.0),
                             I0=1e5, seed=1)
    return AstraMatrixProjector(sino.geometry, sino.grid, use_cache=False), sino


def interrupted_state(tmp_path: Path, op, sino, name: str, params: dict, stop_at: int) -> dict:
    """Run ``name`` until iteration ``stop_at``, write its state to a checkpoint file, read it back."""
    path = tmp_path / "state.ckpt.npz"

    def stop(state):
        if state.iteration == stop_at:
            save_checkpoint(path, Checkpoint(key={}, state=state.extra["state"]))
            return True
        return False

    rec = run_solver(name, op, sino, params, callback=stop)
    assert rec.info["stopped"] == "callback" or name == "tpv"
    saved = load_checkpoint(path)
    assert saved.iteration == stop_at
    return saved.state


def assert_same_run(resumed, full, stop_at: int) -> None:
    assert resumed.info["resumed_from"] == stop_at
    assert resumed.info["iterations"] == full.info["iterations"]
    assert np.array_equal(resumed.volume, full.volume)
    assert resumed.info["history"] == full.info["history"]
    assert resumed.info["lam"] == full.info["lam"]


CASES = [
    ("tv", {"lam": 4.0, "iterations": 90}, 17),
    ("tv", {"lam": 4.0, "iterations": 90, "isotropic": False}, 33),
    ("svtv", {"lam": 8.0, "iterations": 60}, 19),
    ("tpv", {"lam": 4.0, "iterations": 25, "outer_iterations": 3}, 37),   # inside the second outer step
    ("tpv", {"lam": 4.0, "iterations": 25, "outer_iterations": 3}, 25),   # at the end of the first one
    ("tpv", {"lam": 4.0, "iterations": 25, "outer_iterations": 3}, 5),    # in the first one (weights None)
]


@pytest.mark.parametrize("name,params,stop_at", CASES)
def test_restart_is_bit_exact(tmp_path, problem, monkeypatch, name, params, stop_at):
    op, sino = problem
    full = run_solver(name, op, sino, params)
    state = interrupted_state(tmp_path, op, sino, name, params, stop_at)
    if name == "svtv":  # neither the pre-estimate nor the weights are computed again
        monkeypatch.setattr(svtv, "run_stage", lambda *a, **k: pytest.fail("pre-estimate run again"))
        monkeypatch.setattr(svtv, "svtv_weights", lambda *a, **k: pytest.fail("weights recomputed"))
        assert state["weights"].shape == (64, 64) and float(state["weights"].min()) < 0.5
    resumed = run_solver(name, op, sino, params, resume_state=state)
    assert_same_run(resumed, full, stop_at)
    if name != "tpv":
        assert resumed.info["step_ratio"] == full.info["step_ratio"]
        assert len(full.info["history"]["step_ratio"]) == sum(1 for k in REBALANCE_AT if k <= params["iterations"])
    else:
        assert resumed.info["lam_per_outer"] == full.info["lam_per_outer"]


@pytest.mark.parametrize("name", ["tv", "svtv", "tpv"])
def test_restart_with_lam_auto_keeps_the_chosen_lam(tmp_path, problem, monkeypatch, name):
    op, sino = problem
    params = {"lam": "auto", "iterations": 50, "search_iterations": 25}
    if name == "tpv":
        params.update(iterations=20, outer_iterations=2)
    full = run_solver(name, op, sino, params)
    assert full.info["lam_search_evaluations"] >= 2
    # interrupt halfway through the final run at the chosen lam (tpv: in its second step, after that
    # step's own lam search)
    first = full.info["history"]["outer_start"][1] - 1 if name == "tpv" else 0
    stop_at = first + (full.info["iterations"] - first) // 2
    state = interrupted_state(tmp_path, op, sino, name, params, stop_at)
    if name != "tpv":  # the search of the interrupted step is not run again
        monkeypatch.setattr(tv, "choose_lam", lambda *a, **k: pytest.fail("lam searched again"))
    resumed = run_solver(name, op, sino, params, resume_state=state)
    assert_same_run(resumed, full, stop_at)
    assert resumed.info["lam_search_evaluations"] == full.info["lam_search_evaluations"]
    assert resumed.info["discrepancy_target"] == full.info["discrepancy_target"]
    if name == "tpv":
        assert resumed.info["lam_per_outer"] == full.info["lam_per_outer"]


def test_restart_at_a_converged_iteration_stops_there(tmp_path, problem):
    """The uninterrupted run stops on its gap test at iteration k; a checkpoint written at k
    (the callback runs before the stop) must not let the resumed run go on."""
    op, sino = problem
    params = {"lam": 4.0, "iterations": 2000, "tol_gap": 2e-2, "gap_every": 5}
    full = run_solver("tv", op, sino, params)
    assert full.info["stopped"] == "gap" and full.info["iterations"] < 2000
    state = interrupted_state(tmp_path, op, sino, "tv", params, full.info["iterations"])
    resumed = run_solver("tv", op, sino, params, resume_state=state)
    assert resumed.info["stopped"] == "gap"
    assert_same_run(resumed, full, full.info["iterations"])
    assert resumed.info["gap"] == full.info["gap"]


# ----------------------------------------------------------------------------- registry hints


@pytest.mark.parametrize("name", ["tv", "svtv", "tpv"])
def test_registered_hints(name):
    spec = get_solver(name)
    assert spec.resumable and spec.iterative
    assert not spec.is_slice_independent(spec.params_model())
    assert spec.state_arrays is not None


@pytest.mark.parametrize("name,params", [("tv", {"lam": 4.0}), ("tv", {"lam": "auto"}), ("svtv", {"lam": 8.0}),
                                         ("tpv", {"lam": 4.0, "iterations": 30, "outer_iterations": 2}),
                                         ("tikhonov", {"lam": "auto"}), ("tikhonov", {"lam": "gcv"})])
def test_state_arrays_hint_covers_the_measured_peak(problem, name, params):
    """Peak of the arrays allocated by a run (tracemalloc sees numpy's buffers) vs the hint."""
    op, sino = problem
    params = {"iterations": 40, **params}
    op.norm()  # cached before measuring, as in a run after the first solver call
    run_solver(name, op, sino, {**params, "iterations": 2})  # first use imports modules (e.g. scipy.ndimage)
    image, sinogram = 64 * 64 * 4, sino.data.nbytes
    n_image, n_sino = get_solver(name).state_arrays
    hint = n_image * image + n_sino * sinogram
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        rec = run_solver(name, op, sino, params)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak <= hint, (peak / hint, rec.info.get("lam_search_evaluations"))
    assert peak >= 0.4 * hint  # the hint is not wildly above the real use either


def test_memory_has_no_stop_gap_table():
    import recon_cli.memory as memory

    assert not hasattr(memory, "FALLBACK_STATE_ARRAYS")
    assert memory.solver_state_arrays(get_solver("tv")) == get_solver("tv").state_arrays


# ----------------------------------------------------------------------------- end to end


ITERATIONS = 3000
EVERY = 20


def test_sigterm_then_resume_tv_pipeline(tmp_path, capsys):
    data = tmp_path / "tiny.h5"
    write_sinogram(data, simulate_sinogram(shepp_logan(48), 1.0, parallel_beam_geometry(30, 72, 1.0),
                                           VolumeGrid((48, 48), 1.0), I0=1e5, seed=1))
    pipe = tmp_path / "tv.yaml"  # pipelines/tv.yaml on the tiny data
    pipe.write_text(yaml.safe_dump({
        "name": "tv-resume", "input": {"path": str(data)}, "device": "cpu",
        "solver": {"name": "tv", "params": {"lam": 8.0, "iterations": ITERATIONS, "isotropic": True,
                                            "nonnegative": True}},
        "output": {"path": str(tmp_path / "out" / "x.h5"), "formats": ["hdf5", "png"]},
        "metrics": {"list": ["psnr", "ssim", "residual"]},
        "checkpoint": {"every": EVERY}}))
    saved = interrupted_checkpoint(pipe, tmp_path)
    out, ckpt = tmp_path / "out" / "x.h5", tmp_path / "out" / ".recon-checkpoints" / "x.h5.ckpt.npz"
    assert 0 < saved.iteration < ITERATIONS and saved.iteration % EVERY == 0
    assert {"x", "q", "s", "kxbar", "bxbar", "tau", "sigma", "sigma_B", "lam"} <= set(saved.state)

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", str(pipe), "--resume"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert not ckpt.exists()
    with h5py.File(out) as f:
        resumed = f["reconstruction"][()]
        assert int(f["info"].attrs["resumed_from"]) == saved.iteration
        assert int(f["info"].attrs["iterations"]) == ITERATIONS
        history = {name: f[f"history/{name}"][()] for name in ("objective", "gap")}

    cfg = config_from_dict(yaml.safe_load(pipe.read_text()), overrides=["checkpoint.every=0"])
    straight = run_pipeline(cfg, output_override=str(tmp_path / "straight.h5"), progress=False)
    assert np.array_equal(resumed, straight.volume)
    with h5py.File(tmp_path / "straight.h5") as f:
        for name, values in history.items():
            assert np.array_equal(f[f"history/{name}"][()], values)
