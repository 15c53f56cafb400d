"""ASTRA's direct CPU 2D projectors, applied slice by slice to stacks."""
from __future__ import annotations

import numpy as np

from recon_cli.errors import ConfigError
from recon_cli.geometry import Geometry, VolumeGrid
from recon_cli.ops.operator import Operator

#: CPU projector types ASTRA offers per geometry type; the first is the default.
CPU_PROJECTOR_TYPES = {
    "parallel": ("linear", "strip", "line"),
    "fanflat": ("line_fanflat", "strip_fanflat"),
}


def astra_projector_type(geometry: Geometry, requested: str | None) -> str:
    """Validated ASTRA CPU projector type for ``geometry`` (default: first of CPU_PROJECTOR_TYPES)."""
    choices = CPU_PROJECTOR_TYPES.get(geometry.type)
    if choices is None:
        raise ConfigError(f"geometry {geometry.type!r} has no CPU projector in ASTRA; it needs a GPU",
                          field="geometry/type")
    if requested in (None, "auto"):
        return choices[0]
    if requested not in choices:
        raise ConfigError(f"projector {requested!r} does not fit geometry {geometry.type!r}; "
                          f"choose one of {list(choices)}", field="projector")
    return requested


class AstraCPUProjector(Operator):
    """K x for x of shape grid.shape ((ny, nx) or (nz, ny, nx)); slices are projected one by one."""

    def __init__(self, geometry: Geometry, grid: VolumeGrid, projector_type: str | None = None):
        import astra

        self.geometry, self.grid = geometry, grid
        self.projector_type = astra_projector_type(geometry, projector_type)
        self.domain_shape = grid.shape
        self.range_shape = geometry.sinogram_shape(grid.n_slices)
        self._astra = astra
        vol_geom = grid.slice_grid().to_astra()
        proj_geom = geometry.to_astra()
        self._vol = np.zeros(grid.slice_shape, np.float32)
        self._sino = np.zeros(geometry.sinogram_shape(), np.float32)
        self._pid = astra.create_projector(self.projector_type, proj_geom, vol_geom)
        self._vid = astra.data2d.link("-vol", vol_geom, self._vol)
        self._sid = astra.data2d.link("-sino", proj_geom, self._sino)
        fp = astra.astra_dict("FP")
        fp.update(ProjectorId=self._pid, ProjectionDataId=self._sid, VolumeDataId=self._vid)
        bp = astra.astra_dict("BP")
        bp.update(ProjectorId=self._pid, ProjectionDataId=self._sid, ReconstructionDataId=self._vid)
        self._fp = astra.algorithm.create(fp)
        self._bp = astra.algorithm.create(bp)

    @property
    def projector_id(self) -> int:
        return self._pid

    def _apply(self, src, src_buf, dst_buf, alg, out_shape):
        src = np.asarray(src, dtype=np.float32)
        stack = src.reshape((-1, *src_buf.shape))
        out = np.empty((stack.shape[0], *dst_buf.shape), np.float32)
        for i, s in enumerate(stack):
            src_buf[...] = s
            self._astra.algorithm.run(alg)
            out[i] = dst_buf
        return out.reshape(out_shape)

    def forward(self, x):
        return self._apply(x, self._vol, self._sino, self._fp, self.range_shape)

    def adjoint(self, y):
        return self._apply(y, self._sino, self._vol, self._bp, self.domain_shape)

    def sparse_matrix(self):
        """ASTRA's matrix of this projector as a SciPy CSR (float32), shape (n_angles*n_det, ny*nx)."""
        mid = self._astra.projector.matrix(self._pid)
        try:
            return self._astra.matrix.get(mid).tocsr().astype(np.float32)
        finally:
            self._astra.matrix.delete(mid)

    def __del__(self):
        try:
            a = self._astra
            a.algorithm.delete([self._fp, self._bp])
            a.data2d.delete([self._vid, self._sid])
            a.projector.delete(self._pid)
        except Exception:
            pass
