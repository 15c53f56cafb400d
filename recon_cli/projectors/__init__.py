"""Projectors behind one Operator interface, and the factory that picks one for a device.

Kinds: ``astra`` (ASTRA's direct CPU 2D projectors), ``matrix`` (ASTRA's matrix as a
cached CSR of the symmetry-stored views, default here on the CPU when it fits in memory; the
runner decides by recon_cli.projectors.cost_model), ``cuda`` (ASTRA CUDA with CuPy
arrays, GPU only).
"""
from __future__ import annotations

import logging

from recon_cli.backend import Device
from recon_cli.errors import ConfigError, DeviceError
from recon_cli.geometry import Geometry, VolumeGrid
from recon_cli.ops.operator import Operator
from recon_cli.registries import PROJECTOR_KINDS

log = logging.getLogger(__name__)

#: Above this many bytes (the stored matrix), 'auto' on the CPU uses ASTRA's direct projector.
MATRIX_BYTES_LIMIT = 4 * 1024**3


def make_projector(geometry: Geometry, grid: VolumeGrid, device: Device, kind: str = "auto",
                   projector_type: str | None = None) -> Operator:
    """Operator K for ``geometry`` on ``grid``; x of shape grid.shape, y of shape geometry.sinogram_shape().

    ``kind``: 'auto' or a kind of recon_cli.registries.PROJECTOR_KINDS (its class built as
    ``cls(geometry, grid, projector_type)``).
    """
    if kind != "auto" and kind not in PROJECTOR_KINDS:
        raise ConfigError(f"unknown projector kind {kind!r}; choose one of {['auto', *PROJECTOR_KINDS.names()]}",
                          field="projector")
    if geometry.is_3d and not device.is_gpu:
        raise DeviceError(f"geometry {geometry.type!r} is 3D and needs a GPU (ASTRA has no 3D CPU projector)",
                          field="geometry/type")
    if device.is_gpu and kind in ("auto", "cuda"):
        kind = "cuda"
    elif kind != "auto" and PROJECTOR_KINDS.get(kind).facts.get("gpu"):
        raise DeviceError(f"projector {kind!r} needs device gpu", field="projector")
    if kind == "auto":
        from recon_cli.projectors.astra_matrix import estimated_matrix_bytes

        kind = "matrix" if estimated_matrix_bytes(geometry, grid, projector_type=projector_type) <= MATRIX_BYTES_LIMIT \
            else "astra"
        log.debug("projector auto -> %s", kind)
    return PROJECTOR_KINDS.get(kind).load()(geometry, grid, projector_type)
