"""The matrix built on image tiles: closer to the exact weights than ASTRA's whole-image matrix, and the
symmetry-compressed projector agrees with it (all views, no symmetry) within SAME_TOL on products.

Measured at 256^2 and 512^2 in benchmarks/results/symmetry_accuracy.md (benchmarks/symmetry_accuracy.py,
which also holds the float64 reference weights used here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from recon_cli.geometry import VolumeGrid, fan_beam_geometry, parallel_beam_geometry
from recon_cli.projectors.astra_cpu import AstraCPUProjector
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.projectors.tiled_matrix import tiled_matrix_transpose

SAME_TOL = 1e-5

_spec = importlib.util.spec_from_file_location(
    "symmetry_accuracy", Path(__file__).resolve().parents[1] / "benchmarks" / "symmetry_accuracy.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = {
    "fan60-128": (fan_beam_geometry(60, 256, 1.2 * 2.0), VolumeGrid((128, 128), 2.0), "line_fanflat"),
    "parallel180-96": (parallel_beam_geometry(180, 144, 256 / 96), VolumeGrid((96, 96), 256 / 96), "linear"),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    geometry, grid, ptype = CASES[request.param]
    tiled = tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape, grid.voxel_size).T.tocsr()
    return geometry, grid, ptype, tiled


def test_tiles_reassemble_the_whole_image_matrix_on_one_tile():
    geometry, grid, ptype = fan_beam_geometry(12, 40, 1.1), VolumeGrid((24, 24), 1.0), "line_fanflat"
    whole = AstraCPUProjector(geometry, grid, ptype).sparse_matrix()
    one_tile = tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape, grid.voxel_size, tile=32).T
    tiles = tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape, grid.voxel_size, tile=7).T
    assert abs(whole - one_tile).max() == 0  # a single tile is ASTRA's matrix
    # uneven tiles: the same weights up to ASTRA's float32 drift (which splits a row between two
    # pixels differently, so single weights move by up to 1e-3; chord lengths per ray do not)
    assert tiles.shape == whole.shape
    assert float(abs(whole - tiles).power(2).sum()) ** 0.5 < 1e-4 * float(whole.power(2).sum()) ** 0.5
    assert rel(np.asarray(tiles.sum(axis=1)), np.asarray(whole.sum(axis=1))) < 1e-5


def test_tiled_matrix_is_closer_to_the_exact_weights(case):
    geometry, grid, ptype, tiled = case
    exact = reference.exact_matrix(geometry, grid, ptype)
    whole = AstraCPUProjector(geometry, grid, ptype).sparse_matrix().astype(np.float64)
    err_tiled, err_whole = reference.rel(tiled.astype(np.float64), exact), reference.rel(whole, exact)
    assert err_tiled < 1e-4
    assert err_tiled < err_whole / 4


def test_symmetric_projector_equals_the_tiled_full_matrix(case, tmp_path, monkeypatch):
    geometry, grid, ptype, tiled = case
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    op = AstraMatrixProjector(geometry, grid, ptype, use_cache=False, threads=1)
    assert op.symmetry.order >= 3.9
    monkeypatch.setenv("RECON_MATRIX_SYMMETRY", "off")
    full = AstraMatrixProjector(geometry, grid, ptype, use_cache=False, threads=1)
    assert full.symmetry.is_trivial and (full.matrix != tiled).nnz == 0
    rng = np.random.default_rng(1)
    x = rng.random(op.domain_shape, dtype=np.float32)
    y = rng.random(op.range_shape, dtype=np.float32)
    assert rel(op.forward(x), full.forward(x)) < SAME_TOL
    assert rel(op.adjoint(y), full.adjoint(y)) < SAME_TOL
