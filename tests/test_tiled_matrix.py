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


@pytest.mark.parametrize("ptype", ["line_fanflat", "strip_fanflat"])
def test_tiles_reassemble_the_whole_image_matrix(ptype):
    geometry, grid = fan_beam_geometry(12, 40, 1.1), VolumeGrid((24, 24), 1.0)
    whole = AstraCPUProjector(geometry, grid, ptype).sparse_matrix()
    for tile in (32, 7):  # one tile; uneven tiles
        tiles = tiled_matrix_transpose(geometry.to_astra(), ptype, grid.slice_shape, grid.voxel_size, tile=tile).T
        assert tiles.shape == whole.shape
        # the same weights up to ASTRA's float32 drift, which moves single weights by up to 1e-3
        # (a row split between two pixels differently) but not the chord length of any ray
        assert float(abs(whole - tiles).power(2).sum()) ** 0.5 < 1e-4 * float(whole.power(2).sum()) ** 0.5
        assert rel(np.asarray(tiles.sum(axis=1)), np.asarray(whole.sum(axis=1))) < 3e-5


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
    rng = np.random.default_rng(1)
    x = rng.random(op.domain_shape, dtype=np.float32)
    y = rng.random(op.range_shape, dtype=np.float32)
    assert rel(op.forward(x), (tiled @ x.ravel()).reshape(op.range_shape)) < SAME_TOL
    assert rel(op.adjoint(y), (tiled.T @ y.ravel()).reshape(op.domain_shape)) < SAME_TOL
    # against ASTRA's whole-image matrix (RECON_MATRIX_SYMMETRY=off) the difference is ASTRA's own
    # float32 drift, which the tiles remove (test_tiled_matrix_is_closer_to_the_exact_weights)
    monkeypatch.setenv("RECON_MATRIX_SYMMETRY", "off")
    whole = AstraMatrixProjector(geometry, grid, ptype, use_cache=False, threads=1)
    assert whole.symmetry.is_trivial
    assert rel(op.adjoint(y), whole.adjoint(y)) > 2 * rel(op.adjoint(y), (tiled.T @ y.ravel()).reshape(op.domain_shape))
