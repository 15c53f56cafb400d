"""Projectors: adjointness, matrix == direct projector, the matrix cache, norms, the factory, GPU paths."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from recon_cli.backend import Device, gpu_available, select_device
from recon_cli.errors import ConfigError, DeviceError
from recon_cli.geometry import Cone3D, Parallel3D, VolumeGrid, fan_beam_geometry, parallel_beam_geometry
from recon_cli.ops.finite_differences import Gradient
from recon_cli.ops.operator import adjoint_mismatch
from recon_cli.projectors import astra_matrix, make_projector
from recon_cli.projectors.astra_cpu import AstraCPUProjector
from recon_cli.projectors.astra_matrix import AstraMatrixProjector, CSRProduct, row_chunks

CPU_ADJOINT_TOL = 1e-5
#: ASTRA's GPU back projectors are only approximately the transpose of its forward projectors.
GPU_ADJOINT_TOL = 2e-2
GPU_CONE_ADJOINT_TOL = 1e-1

CASES = [("parallel", t) for t in ("linear", "strip", "line")] + \
        [("fanflat", t) for t in ("line_fanflat", "strip_fanflat")]


def make_geometry(kind: str, n_angles: int = 24):
    """Small geometries with non-unit spacings, so that unit mistakes show."""
    if kind == "parallel":
        return parallel_beam_geometry(n_angles=n_angles, detector_count=40, detector_spacing=0.9)
    return fan_beam_geometry(n_angles=n_angles, detector_count=48, detector_spacing=1.1,
                             source_origin=60.0, origin_detector=40.0)


def make_grid(stack: bool) -> VolumeGrid:
    """Non-square slices (28 x 32) of 0.8 mm pixels; a stack has 3 slices."""
    return VolumeGrid((3, 28, 32) if stack else (28, 32), 0.8)


def blobs(shape, voxel_size: float = 0.8) -> np.ndarray:
    """Smooth, asymmetric test image (off-centre Gaussian blobs), float32, 1/mm."""
    ny, nx = shape[-2:]
    y, x = np.mgrid[:ny, :nx].astype(np.float64)
    img = (np.exp(-((x - 0.3 * nx) ** 2 + (y - 0.35 * ny) ** 2) / (2 * (0.08 * nx) ** 2))
           + 0.5 * np.exp(-((x - 0.65 * nx) ** 2 + (y - 0.6 * ny) ** 2) / (2 * (0.12 * nx) ** 2)))
    img = (0.02 * img).astype(np.float32)
    if len(shape) == 3:
        img = np.stack([img * (1.0 + 0.5 * k) for k in range(shape[0])])
    return img


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------- CPU projectors

@pytest.mark.parametrize("stack", [False, True], ids=["slice", "stack"])
@pytest.mark.parametrize("kind,ptype", CASES)
def test_cpu_projectors_are_adjoint(kind, ptype, stack):
    geometry, grid = make_geometry(kind), make_grid(stack)
    for op in (AstraCPUProjector(geometry, grid, ptype), AstraMatrixProjector(geometry, grid, ptype)):
        y = op.forward(np.ones(grid.shape, np.float32))
        assert y.shape == geometry.sinogram_shape(grid.n_slices) == op.range_shape
        assert y.dtype == np.float32 and y.max() > 0
        assert op.adjoint(y).shape == grid.shape
        assert adjoint_mismatch(op, seed=1) < CPU_ADJOINT_TOL, type(op).__name__


@pytest.mark.parametrize("kind,ptype", CASES)
def test_matrix_equals_direct_projector(kind, ptype):
    geometry, grid = make_geometry(kind), make_grid(True)
    direct = AstraCPUProjector(geometry, grid, ptype)
    matrix = AstraMatrixProjector(geometry, grid, ptype)
    rng = np.random.default_rng(3)
    x = rng.random(grid.shape, dtype=np.float32)
    y = rng.random(direct.range_shape, dtype=np.float32)
    assert rel_err(matrix.forward(x), direct.forward(x)) < 1e-5
    assert rel_err(matrix.adjoint(y), direct.adjoint(y)) < 1e-5
    # the single-slice operator gives the stack's first slice
    single = AstraMatrixProjector(geometry, grid.slice_grid(), ptype)
    assert rel_err(single.forward(x[0]), direct.forward(x)[0]) < 1e-5


def test_line_integral_units():
    """A uniform disk of mu = 0.02/mm, radius 10 mm: the central ray's integral is 2 * 10 * 0.02 = 0.4."""
    geometry = parallel_beam_geometry(n_angles=4, detector_count=129, detector_spacing=0.25)
    grid = VolumeGrid((160, 160), 0.25)
    yy, xx = (np.mgrid[:160, :160] - 79.5) * 0.25
    disk = (0.02 * (xx ** 2 + yy ** 2 <= 10.0 ** 2)).astype(np.float32)
    sino = AstraMatrixProjector(geometry, grid, "strip").forward(disk)
    assert np.allclose(sino[:, 64], 0.4, rtol=0.02)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_threaded_products_match_scipy(threads):
    rng = np.random.default_rng(0)
    m = sp.random(500, 300, density=0.05, format="csr", dtype=np.float32, random_state=1)
    prod = CSRProduct(m, threads)
    prod.min_work = 0  # thread even this small product
    v, block = rng.random(300, dtype=np.float32), rng.random((300, 4), dtype=np.float32)
    assert np.allclose(prod(v), m @ v, rtol=1e-5, atol=1e-6)
    assert np.allclose(prod(block), m @ block, rtol=1e-5, atol=1e-6)
    assert prod(v).dtype == np.float32
    if threads > 1:
        chunks = row_chunks(m, threads)
        assert [c[0] for c in chunks][0] == 0 and chunks[-1][1] == m.shape[0]
        assert sum(c[2].nnz for c in chunks) == m.nnz
        assert all(np.shares_memory(c[2].data, m.data) for c in chunks)  # views, no copies


def test_default_threads_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECON_NUM_THREADS", "3")
    assert astra_matrix.default_threads() == 3
    assert AstraMatrixProjector(make_geometry("parallel"), make_grid(False)).threads == 3
    monkeypatch.setenv("RECON_NUM_THREADS", "many")
    assert astra_matrix.default_threads() >= 1


def test_matrix_projector_thread_counts_agree():
    geometry, grid = make_geometry("fanflat"), make_grid(True)
    x = np.random.default_rng(0).random(grid.shape, dtype=np.float32)
    one = AstraMatrixProjector(geometry, grid, threads=1)
    three = AstraMatrixProjector(geometry, grid, threads=3)
    three._fwd.min_work = three._adj.min_work = 0
    assert three.with_threads(1).threads == 1 and three.with_threads(1).stored is three.stored
    assert np.array_equal(one.forward(x), three.forward(x))
    y = one.forward(x)
    assert np.array_equal(one.adjoint(y), three.adjoint(y))


def test_matrix_products_stay_float32():
    geometry, grid = make_geometry("parallel"), make_grid(True)
    op = AstraMatrixProjector(geometry, grid)
    x = np.ones(grid.shape, np.float64)  # promoted inputs are brought back to float32
    assert op.forward(x).dtype == np.float32
    assert op.adjoint(op.forward(x)).dtype == np.float32
    assert op.matrix.dtype == op.matrix_t.dtype == op.stored.dtype == np.float32


# ---------------------------------------------------------------- gradient

@pytest.mark.parametrize("shape,mode,weight", [((17, 23), "slicewise", 1.0),
                                               ((4, 17, 23), "slicewise", 1.0),
                                               ((4, 17, 23), "3d", 0.5)])
def test_gradient_is_adjoint(shape, mode, weight):
    op = Gradient(shape, mode=mode, slice_weight=weight)
    assert adjoint_mismatch(op, seed=2) < CPU_ADJOINT_TOL


@pytest.mark.parametrize("shape,mode,weight", [((17, 23), "slicewise", 1.0),
                                               ((4, 17, 23), "slicewise", 1.0),
                                               ((4, 17, 23), "3d", 0.5)])
def test_gradient_normal_is_the_adjoint_of_the_forward(shape, mode, weight):
    """D^T D x in one pass (used by tikhonov's Gram matrix and deflation) equals adjoint(forward(x)), also
    when written into a given array."""
    op = Gradient(shape, mode=mode, slice_weight=weight)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    ref = op.adjoint(op.forward(x))
    out = np.full(shape, 7.0, np.float32)
    assert op.normal(x, out=out) is out
    for got in (op.normal(x), out):
        assert got.shape == tuple(shape) and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()


# ---------------------------------------------------------------- matrix cache

def _no_build(*args, **kwargs):
    raise AssertionError("the matrix was rebuilt instead of being loaded from the cache")


def _cached_folders(cache_dir):
    return sorted(p for p in (cache_dir / "matrices").iterdir() if p.is_dir())


def test_matrix_cache_is_reused(cache_dir, monkeypatch):
    geometry, grid = make_geometry("fanflat"), make_grid(False)
    first = AstraMatrixProjector(geometry, grid)
    uncached = AstraMatrixProjector(geometry, make_grid(True), use_cache=False)
    (folder,) = _cached_folders(cache_dir)
    assert first.projector_type in folder.name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"M.{part}.npy" for part in ("data", "indices", "indptr")] + ["meta.json"])
    monkeypatch.setattr(astra_matrix, "tiled_matrix_transpose", _no_build)
    monkeypatch.setattr(astra_matrix, "AstraCPUProjector", _no_build)
    second = AstraMatrixProjector(geometry, make_grid(True))  # a stack reuses the slice matrix
    assert (second.matrix != first.matrix).nnz == 0 and (second.matrix_t != first.matrix_t).nnz == 0
    assert isinstance(second.stored.data, np.memmap)  # loaded lazily, shared between processes
    assert second.stored.dtype == np.float32 and second.stored.indices.dtype == np.int32
    x = np.random.default_rng(0).random(second.domain_shape, dtype=np.float32)
    assert np.array_equal(second.forward(x), uncached.forward(x))
    assert np.array_equal(second.adjoint(second.forward(x)), uncached.adjoint(uncached.forward(x)))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "bad index", "changed value"])
def test_corrupt_matrix_cache_is_rebuilt(cache_dir, caplog, damage):
    geometry, grid = make_geometry("parallel"), make_grid(False)
    first = AstraMatrixProjector(geometry, grid)
    (folder,) = _cached_folders(cache_dir)
    target = folder / ("M.indices.npy" if damage == "bad index" else "M.data.npy")
    good = target.read_bytes()
    if damage == "garbage":
        target.write_bytes(b"not a matrix")
    elif damage == "truncated":
        target.write_bytes(good[: len(good) // 2])
    elif damage == "missing":
        target.unlink()
    elif damage == "bad index":  # a column index past the end must not reach SciPy's products
        indices = np.load(target)
        indices[len(indices) // 2] = 10**6
        np.save(target, indices)
    else:  # same shape and dtype, one value changed: only the checksum sees it
        data = np.load(target)
        data[len(data) // 2] += 1.0
        np.save(target, data)
    with caplog.at_level(logging.WARNING, logger="recon_cli.projectors.astra_matrix"):
        second = AstraMatrixProjector(geometry, grid)
    assert "unreadable matrix cache" in caplog.text
    assert (second.matrix != first.matrix).nnz == 0 and (second.matrix_t != first.matrix_t).nnz == 0
    assert target.read_bytes() == good  # the cache was written again
    assert not list(folder.glob("*.tmp*"))


def test_matrix_cache_keys_and_opt_out(cache_dir):
    geometry, grid = make_geometry("parallel"), make_grid(False)
    AstraMatrixProjector(geometry, grid, use_cache=False)
    assert not (cache_dir / "matrices").exists()
    AstraMatrixProjector(geometry, grid, "linear")
    AstraMatrixProjector(geometry, grid, "strip")
    AstraMatrixProjector(make_geometry("parallel", n_angles=12), grid, "strip")
    assert len(_cached_folders(cache_dir)) == 3


# ---------------------------------------------------------------- norms

@pytest.mark.parametrize("kind", ["parallel", "fanflat"])
def test_norm_matches_largest_singular_value(kind):
    geometry, grid = make_geometry(kind, n_angles=16), VolumeGrid((20, 20), 0.8)
    op = AstraMatrixProjector(geometry, grid)
    sigma = svds(op.matrix.astype(np.float64), k=1, return_singular_vectors=False)[0]
    assert op.norm() == pytest.approx(sigma, rel=1e-3)
    assert isinstance(op.norm(), float)
    assert AstraCPUProjector(geometry, grid).norm() == pytest.approx(sigma, rel=1e-3)


# ---------------------------------------------------------------- factory and devices

def test_make_projector_auto_on_cpu_is_the_matrix_projector():
    geometry, grid = make_geometry("fanflat"), make_grid(True)
    op = make_projector(geometry, grid, Device("cpu"))
    assert isinstance(op, AstraMatrixProjector) and op.xp is np
    assert isinstance(make_projector(geometry, grid, Device("cpu"), kind="astra"), AstraCPUProjector)


def test_make_projector_auto_falls_back_when_the_matrix_is_too_big(monkeypatch):
    import recon_cli.projectors as projectors

    monkeypatch.setattr(projectors, "MATRIX_BYTES_LIMIT", 0)
    op = make_projector(make_geometry("parallel"), make_grid(False), Device("cpu"), projector_type="strip")
    assert isinstance(op, AstraCPUProjector) and op.projector_type == "strip"


@pytest.mark.parametrize("geometry", [
    Parallel3D(angles=np.linspace(0, np.pi, 8), detector_spacing=1.0, detector_count=16,
               detector_rows=4, detector_row_spacing=1.0),
    Cone3D(angles=np.linspace(0, 2 * np.pi, 8), detector_spacing=1.0, detector_count=16,
           detector_rows=4, detector_row_spacing=1.0, source_origin=100.0, origin_detector=50.0),
], ids=["parallel3d", "cone"])
def test_3d_geometry_on_cpu_is_a_device_error(geometry):
    with pytest.raises(DeviceError, match="needs a GPU"):
        make_projector(geometry, VolumeGrid((4, 16, 16)), Device("cpu"))


def test_factory_rejects_bad_choices():
    geometry, grid = make_geometry("parallel"), make_grid(False)
    with pytest.raises(ConfigError, match="unknown projector kind"):
        make_projector(geometry, grid, Device("cpu"), kind="fast")
    with pytest.raises(ConfigError, match="does not fit geometry"):
        make_projector(geometry, grid, Device("cpu"), projector_type="line_fanflat")
    with pytest.raises(DeviceError, match="needs device gpu"):
        make_projector(geometry, grid, Device("cpu"), kind="cuda")


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_gpu_requests_without_a_gpu_are_device_errors():
    from recon_cli.projectors.astra_cuda import AstraCUDAProjector

    with pytest.raises(DeviceError, match="--device gpu"):
        select_device("gpu")
    assert select_device("auto").name == "cpu"
    with pytest.raises(DeviceError, match="needs a GPU"):  # checked before any CUDA call
        AstraCUDAProjector(make_geometry("parallel"), make_grid(False))


# ---------------------------------------------------------------- GPU geometry conversion (no CUDA)

def test_mirrored_vector_geometry_reproduces_the_2d_projection():
    """y -> -y on the geometry vectors and a flipped image give the same sinogram (checked on the CPU)."""
    import astra

    from recon_cli.projectors.astra_cuda import mirror_y

    geometry, grid = make_geometry("parallel"), make_grid(False)
    vec = astra.functions.geom_2vec(geometry.to_astra())
    mirrored = astra.create_proj_geom("parallel_vec", geometry.detector_count, mirror_y(vec["Vectors"]))
    image = blobs(grid.shape)

    def project(proj_geom, img):
        pid = astra.create_projector("line", proj_geom, grid.to_astra())
        try:
            sid, sino = astra.create_sino(img, pid)
            astra.data2d.delete(sid)
            return sino
        finally:
            astra.projector.delete(pid)

    reference = project(geometry.to_astra(), image)
    assert rel_err(project(mirrored, np.ascontiguousarray(image[::-1])), reference) < 1e-4
    assert rel_err(project(mirrored, image), reference) > 0.1  # the test can tell the two apart


def test_vector_geometry_3d_for_a_parallel_stack():
    from recon_cli.projectors.astra_cuda import vector_geometry_3d

    geometry, grid = make_geometry("parallel"), make_grid(True)
    proj_geom, vol_geom, vol_shape, proj_shape = vector_geometry_3d(geometry, grid)
    assert proj_geom["type"] == "parallel3d_vec"
    assert vol_shape == (3, 28, 32) and proj_shape == (3, 24, 40) == geometry.sinogram_shape(3)
    assert proj_geom["DetectorRowCount"] == 3 and proj_geom["DetectorColCount"] == 40
    assert (vol_geom["GridSliceCount"], vol_geom["GridRowCount"], vol_geom["GridColCount"]) == vol_shape
    assert vol_geom["option"]["WindowMaxZ"] == pytest.approx(1.2)
    v = proj_geom["Vectors"]
    theta = geometry.angles
    assert np.allclose(v[:, 0:3], np.c_[np.sin(theta), np.cos(theta), 0 * theta])  # mirrored ray
    assert np.allclose(v[:, 6:9], 0.9 * np.c_[np.cos(theta), -np.sin(theta), 0 * theta])
    assert np.allclose(v[:, 9:12], [0.0, 0.0, 0.8])  # one detector row per slice


@pytest.mark.parametrize("stack", [False, True], ids=["slice", "stack"])
def test_cuda_projector_plumbing_with_cpu_kernels(monkeypatch, stack):
    """The fanflat path's per-slice calls, run through ASTRA's direct 2D API with CPU kernels and NumPy
    standing in for CuPy: shapes, argument order and the adjoint are checked without a GPU."""
    import sys
    import types

    import astra

    import recon_cli.projectors.astra_cuda as astra_cuda

    fake_cupy = types.ModuleType("cupy")
    fake_cupy.__dict__.update({k: getattr(np, k) for k in ("ascontiguousarray", "zeros", "float32", "asarray", "vdot", "linalg")})
    fake_cupy.cuda = types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(id=0),
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(astra_cuda, "gpu_status", lambda: (True, "stand-in"))
    create = astra.create_projector
    monkeypatch.setattr(astra, "create_projector",
                        lambda kind, pg, vg, options=None: create("line_fanflat" if kind == "cuda" else kind, pg, vg))
    geometry, grid = make_geometry("fanflat"), make_grid(stack)
    op, cpu = astra_cuda.AstraCUDAProjector(geometry, grid), AstraCPUProjector(geometry, grid, "line_fanflat")
    rng = np.random.default_rng(0)
    x, y = rng.random(grid.shape, dtype=np.float32), rng.random(cpu.range_shape, dtype=np.float32)
    assert np.array_equal(op.forward(x), cpu.forward(x))
    assert np.array_equal(op.adjoint(y), cpu.adjoint(y))
    assert adjoint_mismatch(op) < CPU_ADJOINT_TOL


# ---------------------------------------------------------------- GPU (skipped without one)

def _gpu_3d_geometry(kind: str):
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    if kind == "parallel3d":
        return Parallel3D(angles=angles, detector_spacing=0.9, detector_count=40,
                          detector_rows=12, detector_row_spacing=0.9)
    return Cone3D(angles=angles, detector_spacing=1.5, detector_count=48, detector_rows=16,
                  detector_row_spacing=1.5, source_origin=100.0, origin_detector=50.0)


@pytest.mark.gpu
@pytest.mark.parametrize("stack", [False, True], ids=["slice", "stack"])
@pytest.mark.parametrize("kind", ["parallel", "fanflat"])
def test_cuda_2d_is_adjoint(kind, stack):
    import cupy

    from recon_cli.projectors.astra_cuda import AstraCUDAProjector

    geometry, grid = make_geometry(kind), make_grid(stack)
    op = AstraCUDAProjector(geometry, grid)
    assert op.xp is cupy
    y = op.forward(cupy.ones(grid.shape, cupy.float32))
    assert isinstance(y, cupy.ndarray) and y.dtype == cupy.float32
    assert y.shape == geometry.sinogram_shape(grid.n_slices) and float(y.max()) > 0
    assert op.adjoint(y).shape == grid.shape
    mismatch = adjoint_mismatch(op, seed=1)
    print(f"CUDA {kind} {'stack' if stack else 'slice'} adjoint mismatch {mismatch:.2e}")
    assert mismatch < GPU_ADJOINT_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["parallel3d", "cone"])
def test_cuda_3d_is_adjoint(kind):
    import cupy

    from recon_cli.projectors.astra_cuda import AstraCUDAProjector

    geometry, grid = _gpu_3d_geometry(kind), VolumeGrid((8, 28, 32), 0.8)
    op = AstraCUDAProjector(geometry, grid)
    y = op.forward(cupy.asarray(blobs(grid.shape)))
    assert y.shape == (geometry.detector_rows, geometry.n_angles, geometry.detector_count)
    assert float(y.max()) > 0
    mismatch = adjoint_mismatch(op, seed=1)
    print(f"CUDA {kind} adjoint mismatch {mismatch:.2e}")
    assert mismatch < (GPU_CONE_ADJOINT_TOL if kind == "cone" else GPU_ADJOINT_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("stack", [False, True], ids=["slice", "stack"])
@pytest.mark.parametrize("kind,cpu_type", [("parallel", "linear"), ("fanflat", "line_fanflat")])
def test_cuda_matches_cpu_2d(kind, cpu_type, stack):
    """Same line integrals, same orientation (the test image is asymmetric) as ASTRA's CPU projectors."""
    import cupy

    from recon_cli.projectors.astra_cuda import AstraCUDAProjector

    geometry, grid = make_geometry(kind), make_grid(stack)
    cpu, gpu = AstraCPUProjector(geometry, grid, cpu_type), AstraCUDAProjector(geometry, grid)
    image = blobs(grid.shape)
    sino = cpu.forward(image)
    err_fp = rel_err(gpu.forward(cupy.asarray(image)).get(), sino)
    err_bp = rel_err(gpu.adjoint(cupy.asarray(sino)).get(), cpu.adjoint(sino))
    print(f"CUDA vs CPU {kind}: forward {err_fp:.2e}, adjoint {err_bp:.2e}")
    assert err_fp < 0.03 and err_bp < 0.05


@pytest.mark.gpu
def test_cuda_parallel3d_matches_the_2d_stack():
    """A parallel3d geometry with one row per slice is the 2D parallel stack (same y orientation)."""
    import cupy

    from recon_cli.projectors.astra_cuda import AstraCUDAProjector

    grid = make_grid(True)
    geometry2d = make_geometry("parallel")
    geometry3d = Parallel3D(angles=geometry2d.angles, detector_spacing=0.9, detector_count=40,
                            detector_rows=3, detector_row_spacing=grid.voxel_size)
    image = blobs(grid.shape)
    sino3d = AstraCUDAProjector(geometry3d, grid).forward(cupy.asarray(image)).get()
    sino2d = AstraCUDAProjector(geometry2d, grid).forward(cupy.asarray(image)).get()
    assert rel_err(sino3d, sino2d) < 1e-5
    assert rel_err(sino3d, AstraCPUProjector(geometry2d, grid, "linear").forward(image)) < 0.03


@pytest.mark.gpu
def test_make_projector_on_gpu_and_norm():
    from recon_cli.projectors.astra_cuda import AstraCUDAProjector

    geometry, grid = make_geometry("fanflat"), make_grid(True)
    device = select_device("gpu")
    assert device.is_gpu and select_device("auto").is_gpu
    op = make_projector(geometry, grid, device)
    assert isinstance(op, AstraCUDAProjector)
    cpu_norm = AstraMatrixProjector(geometry, grid).norm()
    assert op.norm() == pytest.approx(cpu_norm, rel=0.03)
    with pytest.raises(DeviceError):  # 3D stays GPU-only, and works there
        make_projector(_gpu_3d_geometry("cone"), VolumeGrid((8, 28, 32), 0.8), Device("cpu"))
    assert isinstance(make_projector(_gpu_3d_geometry("cone"), VolumeGrid((8, 28, 32), 0.8), device),
                      AstraCUDAProjector)
