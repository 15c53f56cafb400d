"""Solvers that need an exact adjoint (tikhonov's CGLS) refuse a projector without one (ASTRA's CUDA
projector: benchmarks/results/gpu.md), and ``device: auto`` then takes the CPU."""
from __future__ import annotations

import pytest

from recon_cli.backend import Device
from recon_cli.errors import DeviceError
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.phantoms import shepp_logan
from recon_cli.projectors import make_projector
from recon_cli.projectors.astra_cuda import AstraCUDAProjector
from recon_cli.runner import device_for_solver
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.registry import get_solver, run_solver


class InexactAdjoint:
    """``op`` declaring that its adjoint is not the exact transpose (as the CUDA projector does)."""

    exact_adjoint = False

    def __init__(self, op):
        self.op = op

    def __getattr__(self, name):
        return getattr(self.op, name)


@pytest.fixture(scope="module")
def case():
    grid = VolumeGrid((32, 32), 1.0)
    sino = simulate_sinogram(shepp_logan(64), 0.5, parallel_beam_geometry(20, 48, 1.0), grid, I0=1e5, seed=0)
    return sino, make_projector(sino.geometry, sino.grid, Device("cpu"))


def test_the_cuda_projector_declares_an_inexact_adjoint_and_the_cpu_ones_exact(case):
    _, op = case
    assert AstraCUDAProjector.exact_adjoint is False and op.exact_adjoint is True


def test_tikhonov_refuses_an_inexact_adjoint_with_a_device_error(case):
    sino, op = case
    assert run_solver("tikhonov", op, sino, {"lam": 0.05}).volume.shape == (32, 32)
    with pytest.raises(DeviceError) as err:
        run_solver("tikhonov", InexactAdjoint(op), sino, {"lam": 0.05})
    assert err.value.field == "device" and "--device cpu" in str(err.value)
    # a PDHG solver tolerates it
    assert run_solver("tv", InexactAdjoint(op), sino, {"lam": 1.0, "iterations": 5}).volume.shape == (32, 32)


def test_device_auto_takes_the_cpu_for_a_solver_that_needs_an_exact_adjoint():
    gpu = Device("gpu")
    assert get_solver("tikhonov").params_model.needs_exact_adjoint
    assert not get_solver("tv").params_model.needs_exact_adjoint
    assert device_for_solver(gpu, "auto", "tikhonov").name == "cpu"
    assert device_for_solver(gpu, None, "tikhonov").name == "cpu"
    assert device_for_solver(gpu, "gpu", "tikhonov").name == "gpu"  # asked for: the solver then refuses it
    assert device_for_solver(gpu, "auto", "tv").name == "gpu"
    assert device_for_solver(Device("cpu"), "auto", "tikhonov").name == "cpu"
