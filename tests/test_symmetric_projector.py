"""Symmetry-compressed matrix projector: same results as ASTRA's full matrix, adjointness, cache."""
from __future__ import annotations

import numpy as np
import pytest

from recon_cli.geometry import FanFlat2D, VolumeGrid, fan_beam_geometry, parallel_beam_geometry
from recon_cli.ops.operator import adjoint_mismatch
from recon_cli.projectors import astra_matrix
from recon_cli.projectors.astra_cpu import AstraCPUProjector
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.projectors.symmetry import find_view_symmetry, inverse_transform_image, transform_image, TRANSFORMS

SAME_TOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fan(n_angles: int, offset: float = 0.0) -> FanFlat2D:
    angles = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False) + offset
    return FanFlat2D(angles=angles, detector_spacing=1.1, detector_count=48, source_origin=60.0, origin_detector=40.0)


# geometry, grid, projector type, expected symmetry order (views / stored views)
CASES = {
    "fan60-square": (fan(60), VolumeGrid((32, 32), 0.8), "line_fanflat", 7.5),
    "fan64-stack": (fan(64), VolumeGrid((3, 32, 32), 0.8), "line_fanflat", 64 / 9),
    "fan60-offset": (fan(60, 0.1), VolumeGrid((32, 32), 0.8), "line_fanflat", 4.0),
    "fan60-nonsquare": (fan(60), VolumeGrid((2, 28, 32), 0.8), "line_fanflat", 2.0),
    "parallel180-pi": (parallel_beam_geometry(180, 40, 0.9), VolumeGrid((32, 32), 0.8), "linear", 180 / 46),
    "parallel60-2pi-strip": (parallel_beam_geometry(60, 40, 0.9, arc=2 * np.pi), VolumeGrid((2, 32, 32), 0.8),
                             "strip", 7.5),
    "parallel120-line": (parallel_beam_geometry(120, 40, 0.9), VolumeGrid((32, 32), 0.8), "line", 120 / 31),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RECON_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    geometry, grid, ptype, order = CASES[request.param]
    op = AstraMatrixProjector(geometry, grid, ptype, threads=1)
    full = AstraCPUProjector(geometry, grid, ptype).sparse_matrix()
    yield op, full, order
    mp.undo()


def _apply(m, a, n_in):
    return (m @ a.reshape(-1, n_in).T).T


def test_symmetry_order(case):
    op, _, order = case
    assert op.symmetry.order == pytest.approx(order)
    assert op.stored.shape[1] == len(op.symmetry.stored) * op.geometry.detector_count


def test_results_equal_the_full_matrix(case):
    op, full, _ = case
    rng = np.random.default_rng(0)
    x = rng.random(op.domain_shape, dtype=np.float32)
    y = rng.random(op.range_shape, dtype=np.float32)
    assert rel_err(op.forward(x), _apply(full, x, full.shape[1]).reshape(op.range_shape)) < SAME_TOL
    assert rel_err(op.adjoint(y), _apply(full.T, y, full.shape[0]).reshape(op.domain_shape)) < SAME_TOL


def test_adjoint(case):
    op, _, _ = case
    assert adjoint_mismatch(op, seed=3) < 1e-6


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_products_equal_one_thread(case, threads):
    op, _, _ = case
    many = op.with_threads(threads)
    many._fwd.min_work = many._adj.min_work = 0
    rng = np.random.default_rng(1)
    x = rng.random(op.domain_shape, dtype=np.float32)
    y = rng.random(op.range_shape, dtype=np.float32)
    assert np.allclose(many.forward(x), op.forward(x), rtol=1e-5, atol=1e-6)
    assert np.allclose(many.adjoint(y), op.adjoint(y), rtol=1e-5, atol=1e-6)
    assert adjoint_mismatch(many) < 1e-6


def test_expanded_matrix_is_the_operator(case):
    op, full, _ = case
    a = op.matrix
    assert a.shape == full.shape and a.dtype == np.float32
    x = np.random.default_rng(2).random(op.grid.slice_shape, dtype=np.float32)
    one = op if op.grid.n_slices is None else AstraMatrixProjector(op.geometry, op.grid.slice_grid(),
                                                                   op.projector_type, threads=1)
    assert np.allclose(a @ x.ravel(), one.forward(x).ravel(), rtol=1e-5, atol=1e-5)


def test_memory_falls_by_the_order(case):
    op, full, order = case
    full_bytes = full.data.nbytes + full.indices.astype(np.int32).nbytes + full.indptr.astype(np.int32).nbytes
    assert op.nbytes <= full_bytes / order * 1.15


def test_transforms_are_permutations_with_inverses():
    x = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    seen = set()
    for g in TRANSFORMS:
        t = transform_image(x, g)
        assert np.array_equal(inverse_transform_image(t, g), x)
        assert sorted(t.ravel()) == sorted(x.ravel())
        seen.add(t.tobytes())
    assert len(seen) == 8  # the 8 symmetries of the square are distinct


def test_no_symmetry_stores_every_view():
    rng = np.random.default_rng(0)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 17))
    sym = find_view_symmetry(angles, "fanflat", (16, 16))
    assert sym.is_trivial and sym.transforms == ((False, 0),)
    assert sorted(sym.entries[:, 2]) == list(range(17))


def test_strip_fanflat_and_the_switch_store_every_view(cache_dir, monkeypatch):
    geometry, grid = fan(60), VolumeGrid((16, 16), 1.0)
    assert AstraMatrixProjector(geometry, grid, "strip_fanflat").symmetry.is_trivial
    monkeypatch.setenv("RECON_MATRIX_SYMMETRY", "off")
    op = AstraMatrixProjector(geometry, grid, "line_fanflat")
    assert op.symmetry.is_trivial
    full = AstraCPUProjector(geometry, grid, "line_fanflat").sparse_matrix()
    x = np.random.default_rng(0).random(grid.shape, dtype=np.float32)
    assert np.array_equal(op.forward(x).ravel(), full @ x.ravel()) or \
        rel_err(op.forward(x).ravel(), full @ x.ravel()) < 1e-6


def test_norm_is_cached_beside_the_matrix(cache_dir, monkeypatch):
    geometry, grid = fan(60), VolumeGrid((24, 24), 1.0)
    first = AstraMatrixProjector(geometry, grid)
    value = first.norm()
    calls = []
    monkeypatch.setattr(astra_matrix, "power_norm", lambda *a, **k: calls.append(1) or 0.0)
    second = AstraMatrixProjector(geometry, VolumeGrid((2, 24, 24), 1.0))
    assert second.norm() == value and not calls  # read from meta.json, no power iteration
    assert AstraMatrixProjector(geometry, grid, use_cache=False).norm() == 0.0 and calls


def test_stack_in_blocks_equals_one_product(cache_dir):
    geometry, grid = fan(60), VolumeGrid((5, 24, 24), 1.0)
    whole = AstraMatrixProjector(geometry, grid, threads=1)
    whole.max_columns = 1000  # all 5 slices x 8 transforms in one product
    blocked = AstraMatrixProjector(geometry, grid, threads=1)
    blocked.max_columns = 16  # 2 slices per product: blocks of 2, 2, 1
    assert blocked._blocks(5) == [(0, 2), (2, 4), (4, 5)]
    rng = np.random.default_rng(4)
    x = rng.random(grid.shape, dtype=np.float32)
    y = rng.random(whole.range_shape, dtype=np.float32)
    assert np.array_equal(blocked.forward(x), whole.forward(x))
    assert np.array_equal(blocked.adjoint(y), whole.adjoint(y))
    assert adjoint_mismatch(blocked) < 1e-6
