"""Dihedral test-time averaging of a network (recon_cli.networks.dihedral_mean; unet's ``dihedral_average``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon_cli.backend import Device
from recon_cli.io.hdf5 import read_sinogram
from recon_cli.networks import DIHEDRAL, conditions_for, dihedral_mean, load_model
from recon_cli.projectors import make_projector
from recon_cli.solvers.registry import run_solver

REPO = Path(__file__).resolve().parents[1]
ENVELOPE = "postproc_tv_envelope_big"  # trained with training.dihedral: true


def _turn(x, k, mirror):
    t = np.rot90(x, k, axes=(-2, -1))
    return t[..., ::-1] if mirror else t


def test_an_equivariant_map_is_unchanged_and_a_fixed_pattern_is_symmetrised():
    rng = np.random.default_rng(0)
    x = rng.random((2, 6, 9), dtype=np.float32)  # a stack, not square: turns swap the last two axes
    np.testing.assert_allclose(dihedral_mean(lambda v: 3 * v + 1, x), 3 * x + 1, rtol=1e-6)
    # adding a fixed pattern is not equivariant: the mean adds the pattern's average over the 8 symmetries
    pattern = rng.random((6, 6), dtype=np.float32)
    sq = rng.random((6, 6), dtype=np.float32)
    want = sq + np.mean([np.rot90(pattern[..., ::-1] if m else pattern, -k) for k, m in DIHEDRAL], axis=0)
    np.testing.assert_allclose(dihedral_mean(lambda v: v + pattern, sq), want, rtol=1e-6)


def test_averaged_shipped_network_is_equivariant_under_every_symmetry():
    """With the real ONNX network (padding, per-image scaling, extra channels): g = dihedral_mean(net)
    satisfies g(T x) = T g(x) for the 8 symmetries T, which the network alone does not."""
    model = load_model(ENVELOPE)
    rng = np.random.default_rng(1)
    x = (0.02 * rng.random((48, 40))).astype(np.float32)
    cond = {"noise_std": 1e-2 / np.sqrt(10.0), "n_views": 60}

    def net(v):
        return model.apply(v, voxel_size=1.0, conditions=cond)

    g = dihedral_mean(net, x)
    assert g.shape == x.shape and g.dtype == np.float32 and np.all(np.isfinite(g))
    plain_errors = []
    for k, mirror in DIHEDRAL:
        np.testing.assert_allclose(dihedral_mean(net, np.ascontiguousarray(_turn(x, k, mirror))),
                                   _turn(g, k, mirror), rtol=1e-4, atol=1e-6 * float(np.abs(g).max()))
        plain_errors.append(float(np.abs(net(np.ascontiguousarray(_turn(x, k, mirror))) - _turn(net(x), k, mirror)).max()))
    assert max(plain_errors) > 1e-3 * float(np.abs(g).max())  # the network alone is not equivariant


@pytest.fixture(scope="module")
def sample():
    sino = read_sinogram(REPO / "sample_data" / "shepp_logan_fan60.h5")
    return sino, make_projector(sino.geometry, sino.grid, Device("cpu"))


def test_unet_averages_a_dihedrally_trained_model_by_default(sample):
    sino, op = sample
    model = load_model(ENVELOPE)
    assert model.trained_dihedral and not load_model("postproc_fan60").trained_dihedral
    pre = {"name": "tv", "params": {"lam": 8.0, "iterations": 30}}  # a cheap input solver (allow_mismatch)
    base = {"model": ENVELOPE, "pre_estimate": pre, "allow_mismatch": True, "on_implausible": "ignore",
            "correction_weight": 1.0}  # the network alone (the blend is tested in test_unet_correction_weight.py)
    auto = run_solver("unet", op, sino, base)
    off = run_solver("unet", op, sino, {**base, "dihedral_average": False})
    assert auto.info["dihedral_average"] is True and off.info["dihedral_average"] is False
    x = run_solver("tv", op, sino, pre["params"]).volume
    cond = conditions_for(sino)
    want = dihedral_mean(lambda v: model.apply(v, voxel_size=sino.grid.voxel_size, conditions=cond), x)
    np.testing.assert_allclose(auto.volume, want, rtol=1e-5, atol=1e-7)
    assert float(np.abs(auto.volume - off.volume).max()) > 0


def test_unet_leaves_a_model_trained_without_augmentation_alone_unless_asked(sample):
    sino, op = sample
    plain = run_solver("unet", op, sino, {"model": "postproc_fan60"})
    asked = run_solver("unet", op, sino, {"model": "postproc_fan60", "dihedral_average": True})
    assert plain.info["dihedral_average"] is False and asked.info["dihedral_average"] is True
    assert float(np.abs(plain.volume - asked.volume).max()) > 0
