"""ASTRA's CUDA projectors on CuPy arrays (GPU only).

Importing this module is safe anywhere (CuPy is imported lazily); constructing the
projector without a usable GPU raises DeviceError before any CUDA call, because
ASTRA's CUDA functions kill the process (SIGFPE) when there is no GPU.

Inputs and outputs are float32 CuPy arrays that stay on the GPU: ASTRA 2.5 links
them through DLPack (``astra.experimental.direct_FP3D/BP3D`` and ``direct_FP2D/BP2D``).

How each geometry is run, and why:

* ``parallel3d``, ``cone``: one 3D call on the whole volume (nz, ny, nx) -> projections
  in ASTRA's layout (det_rows, n_angles, det_cols).
* ``parallel`` (one slice or a stack): one 3D call with an equivalent ``parallel3d_vec``
  geometry: detector row k at the height of slice k (row spacing = voxel size) and
  rays in the slice planes. Every ray stays in its slice plane exactly at the slice
  centre, so the 3D kernels' interpolation along z has weight 0 on the neighbours and
  the result is the 2D projection of each slice; the (nz, n_angles, n_det) sinogram
  stack *is* ASTRA's 3D layout, so no copies are needed.
* ``fanflat`` (one slice or a stack): ASTRA's 2D CUDA projector slice by slice. A stack
  is **not** a ``cone`` geometry with one row per slice: a cone has one source point,
  so rays to the other rows leave the slice planes. (A ``cone_vec`` with one 1-row
  projection per slice and angle would be exact for the forward projection, but its
  voxel-driven back projection visits every slice for every projection: nz times the
  work.) ASTRA 2.5's 2D CUDA algorithms accept GPU arrays (a device-to-device copy
  inside ASTRA), so there is no host transfer.

Orientation: ASTRA's 2D volumes put row 0 at +y, its 3D volumes put index 0 of the
y axis at -y. To keep the project's convention (row 0 = +y) for every geometry, the
3D vector geometries are mirrored (y -> -y in every source/ray, detector and u/v
vector). The sinograms are unchanged by this: they are ASTRA's for the object the
image shows. (Read from ASTRA 2.5's kernels, cuda/2d/fan_fp.cu against
cuda/3d/par3d_fp.cu; the GPU tests check it against the CPU projectors.)

Adjointness: ASTRA's GPU back projectors are approximately, not exactly, the
transpose of its forward projectors (a ray-driven forward and a voxel-driven back
projection). The tests allow 2e-2 (1e-1 for cone beam) in the dot-product test and
print the value found; it was not measured when this was written (no GPU).
"""
from __future__ import annotations

import numpy as np

from recon_cli.backend import gpu_status
from recon_cli.errors import ConfigError, DeviceError
from recon_cli.geometry import Geometry, VolumeGrid
from recon_cli.ops.operator import Operator

#: Multiplies the (x, y, z) components of ASTRA vector geometries: y -> -y (see module docstring).
_MIRROR_Y = np.array([1.0, -1.0, 1.0])


def mirror_y(vectors: np.ndarray) -> np.ndarray:
    """ASTRA vector rows (2D: 6 columns, 3D: 12 columns) with every y component negated."""
    vectors = np.asarray(vectors, dtype=np.float64)
    dim = 2 if vectors.shape[1] == 6 else 3
    sign = np.tile(_MIRROR_Y[:dim], vectors.shape[1] // dim)
    return vectors * sign


def vector_geometry_3d(geometry: Geometry, grid: VolumeGrid) -> tuple[dict, dict, tuple, tuple]:
    """(proj_geom, vol_geom, volume shape, projection shape) of the 3D call for ``geometry``.

    Pure Python (no CUDA): parallel -> parallel3d_vec with one detector row per slice;
    parallel3d / cone -> their vector form. All mirrored in y (module docstring).
    """
    import astra

    ny, nx = grid.slice_shape
    nz = grid.n_slices or 1
    vol_geom = VolumeGrid((nz, ny, nx), grid.voxel_size).to_astra()
    if geometry.type == "parallel":
        vec2 = astra.functions.geom_2vec(geometry.to_astra())["Vectors"]  # ray, d, u (2D)
        vectors = np.zeros((vec2.shape[0], 12))
        vectors[:, 0:2] = vec2[:, 0:2]
        vectors[:, 3:5] = vec2[:, 2:4]
        vectors[:, 6:8] = vec2[:, 4:6]
        vectors[:, 11] = grid.voxel_size  # detector row k sits at the centre of slice k
        rows, cols, kind = nz, geometry.detector_count, "parallel3d_vec"
    elif geometry.type in ("parallel3d", "cone"):
        vectors = astra.functions.geom_2vec(geometry.to_astra())["Vectors"]
        rows, cols = geometry.detector_rows, geometry.detector_count
        kind = "parallel3d_vec" if geometry.type == "parallel3d" else "cone_vec"
    else:
        raise ConfigError(f"geometry {geometry.type!r} has no 3D CUDA form", field="geometry/type")
    proj_geom = astra.create_proj_geom(kind, rows, cols, mirror_y(vectors))
    return proj_geom, vol_geom, (nz, ny, nx), (rows, geometry.n_angles, cols)


class AstraCUDAProjector(Operator):
    """K on the GPU: x of shape grid.shape (CuPy, float32) -> y of shape geometry.sinogram_shape(n_slices).

    Raises DeviceError when no usable GPU is present (checked before any CUDA call). ``projector_type`` is
    ignored (ASTRA's CUDA projectors choose their own), for the signature every projector kind shares.
    """

    #: ASTRA's CUDA backprojector is not the exact transpose of its forward projector: CGLS (tikhonov)
    #: diverged on it at small lam on an H200 (benchmarks/results/gpu.md); PDHG and SGP tolerate it.
    exact_adjoint = False

    def __init__(self, geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None):
        ok, reason = gpu_status()
        if not ok:
            raise DeviceError(f"the CUDA projector needs a GPU: {reason}", field="device")
        import astra
        import astra.experimental
        import cupy

        self.xp = cupy
        self._astra = astra
        self.geometry, self.grid = geometry, grid
        self.domain_shape = grid.shape
        self.range_shape = geometry.sinogram_shape(grid.n_slices)
        options = {"GPUIndex": int(cupy.cuda.Device().id)}
        self._per_slice = geometry.type == "fanflat"
        if self._per_slice:
            self._pid = astra.create_projector("cuda", geometry.to_astra(), grid.slice_grid().to_astra(), options)
            self._vol_shape = (-1, *grid.slice_shape)
            self._proj_shape = (-1, *geometry.sinogram_shape())
            self._fp, self._bp = astra.experimental.direct_FP2D, astra.experimental.direct_BP2D
        else:
            proj_geom, vol_geom, self._vol_shape, self._proj_shape = vector_geometry_3d(geometry, grid)
            self._pid = astra.create_projector("cuda3d", proj_geom, vol_geom, options)
            self._fp, self._bp = astra.experimental.direct_FP3D, astra.experimental.direct_BP3D

    def _input(self, a, shape):
        a = self.xp.ascontiguousarray(a, dtype=self.xp.float32)
        if a.size != int(np.prod(shape)):
            raise ValueError(f"expected an array of shape {shape}, got {a.shape}")
        return a

    def _run(self, call, src, src_shape, dst_shape, out_shape, forward: bool):
        """One ASTRA call on the whole volume (3D), or one per slice (fanflat)."""
        cupy = self.xp
        src = src.reshape(src_shape)
        if self._per_slice:
            dst_shape = (src.shape[0], *dst_shape[1:])
        # zeros, not empty: ASTRA's direct calls do not report every failure
        dst = cupy.zeros(dst_shape, dtype=cupy.float32)
        cupy.cuda.get_current_stream().synchronize()  # ASTRA runs on its own streams
        for s, d in (zip(src, dst) if self._per_slice else [(src, dst)]):
            vol, proj = (s, d) if forward else (d, s)  # ASTRA's order: (projector, volume, projections)
            call(self._pid, vol, proj)
        return dst.reshape(out_shape)

    def forward(self, x):
        x = self._input(x, self.domain_shape)
        return self._run(self._fp, x, self._vol_shape, self._proj_shape, self.range_shape, True)

    def adjoint(self, y):
        y = self._input(y, self.range_shape)
        return self._run(self._bp, y, self._proj_shape, self._vol_shape, self.domain_shape, False)

    def __del__(self):
        try:
            if self._per_slice:
                self._astra.projector.delete(self._pid)
            else:
                self._astra.projector3d.delete(self._pid)
        except Exception:
            pass
