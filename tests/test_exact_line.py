"""Exact float64 line weights (recon_cli.projectors.exact_line): lengths, ASTRA's kernel, equivariance,
and the symmetric projector equal to the full matrix."""
from __future__ import annotations

import numpy as np
import pytest

from recon_cli.geometry import FanFlat2D, VolumeGrid, fan_beam_geometry
from recon_cli.projectors.astra_cpu import AstraCPUProjector
from recon_cli.projectors.astra_matrix import AstraMatrixProjector
from recon_cli.projectors.exact_line import exact_line_matrix_transpose, rays_span_image
from recon_cli.projectors.tiled_matrix import _vectors, chord_lengths, tiled_matrix_transpose, uses_exact_weights


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fan_geometry(n: int, n_angles: int = 60) -> tuple[FanFlat2D, VolumeGrid]:
    voxel = 256.0 / n
    return fan_beam_geometry(n_angles=n_angles, detector_count=2 * n, detector_spacing=1.2 * voxel), \
        VolumeGrid((n, n), voxel)


def exact_a(geometry, grid, ptype="line_fanflat"):
    vectors, vec_type, n_det = _vectors(geometry.to_astra(), ptype)
    return exact_line_matrix_transpose(vectors, vec_type, n_det, grid.slice_shape, grid.voxel_size).T.tocsr()


def test_every_ray_has_its_exact_chord_length():
    geometry, grid = fan_geometry(48)
    vectors, vec_type, n_det = _vectors(geometry.to_astra(), "line_fanflat")
    a = exact_a(geometry, grid)
    n, h = grid.slice_shape[0], grid.voxel_size
    chords = chord_lengths(vectors, vec_type, n_det, (-n * h / 2, n * h / 2, -n * h / 2, n * h / 2))
    sums = np.asarray(a.astype(np.float64).sum(axis=1)).ravel()
    assert chords.max() > 0 and np.abs(sums - chords).max() < 1e-5 * chords.max()
    assert a.dtype == np.float32 and a.data.min() > 0


def test_close_to_astras_float32_kernel():
    geometry, grid = fan_geometry(32)
    astra_a = AstraCPUProjector(geometry, grid, "line_fanflat").sparse_matrix()
    assert rel(exact_a(geometry, grid).toarray(), astra_a.toarray()) < 1e-4  # ASTRA's float32 drift, 32^2


def test_a_pixel_crossed_diagonally_and_a_ray_on_a_grid_line():
    h = 2.0
    # parallel rays at 45 degrees through a 2x2 grid: the central ray crosses pixels (0,0) and (1,1)
    diag = np.array([[np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5) * h, -np.sqrt(0.5) * h]])
    a = exact_line_matrix_transpose(diag, "parallel_vec", 1, (2, 2), h).T.toarray()
    assert np.allclose(a[0], [0, h * np.sqrt(2), h * np.sqrt(2), 0], rtol=1e-6)  # y = x: top right, bottom left
    # a vertical ray on the grid line x = 0: half of each pixel column pair
    vertical = np.array([[0.0, 1.0, 0.0, 0.0, h, 0.0]])
    a = exact_line_matrix_transpose(vertical, "parallel_vec", 1, (2, 2), h).T.toarray()
    assert np.allclose(a[0], [h / 2] * 4, rtol=1e-6)


def test_quarter_turn_permutes_the_weights():
    geometry, grid = fan_geometry(40, n_angles=8)  # views every 45 degrees: view 2 is view 0 turned
    a = exact_a(geometry, grid).toarray().reshape(8, geometry.detector_count, 40, 40)
    # P_theta(rot90(x, r)) = P_(theta - r pi/2)(x) (symmetry.py), so W_(theta + pi/2) = rot90(W_theta, 1)
    turned = np.rot90(a[0], 1, axes=(1, 2))
    assert np.abs(a[2] - turned).max() < 1e-5 * a.max()


@pytest.mark.parametrize("n", [64, 96])
def test_symmetric_projector_equals_the_full_matrix(n, cache_dir):
    geometry, grid = fan_geometry(n)
    op = AstraMatrixProjector(geometry, grid, "line_fanflat", threads=1)
    assert op.symmetry.order == 7.5
    full = tiled_matrix_transpose(geometry.to_astra(), "line_fanflat", grid.slice_shape, grid.voxel_size)
    rng = np.random.default_rng(0)
    x = rng.random(grid.shape, dtype=np.float32)
    y = rng.random(op.range_shape, dtype=np.float32)
    assert rel(op.forward(x), full.T @ x.ravel()) < 1e-6  # float32 rounding (was 2e-6 / 6e-6 with ASTRA tiles)
    assert rel(op.adjoint(y), full @ y.ravel()) < 1e-6


def test_only_line_kernels_with_rays_outside_the_image_are_exact():
    geometry, grid = fan_geometry(32)
    g = geometry.to_astra()
    assert uses_exact_weights(g, "line_fanflat", grid.slice_shape, grid.voxel_size)
    assert not uses_exact_weights(g, "strip_fanflat", grid.slice_shape, grid.voxel_size)
    vectors, vec_type, _ = _vectors(g, "line_fanflat")
    assert rays_span_image(vectors, vec_type, grid.slice_shape, grid.voxel_size)
    inside = vectors.copy()
    inside[:, 0:2] *= 1e-3  # the source inside the image
    assert not rays_span_image(inside, vec_type, grid.slice_shape, grid.voxel_size)
