"""Per-process caches for long-lived workers: projectors and ONNX sessions built once per worker.

A Dask worker or a batch worker process runs many units (inputs, chunks of slices) with the same
geometry; building the projector (a sparse matrix read from the disk cache, or ASTRA objects) for
each unit wastes time. :func:`enable` (called by recon_cli.executors in each worker) turns on a small
LRU cache keyed by the geometry fingerprint, the full grid shape, the voxel size, the projector kind
and type, and the device. In the driver process the cache stays off: :func:`make_projector` then
builds a new projector each time, so a single run never holds a projector after it is done.

ONNX Runtime sessions are already cached per process (recon_cli.networks.load_model, keyed by path,
mtime, size and providers); :func:`stats` reports how many were built.
"""
from __future__ import annotations

import os
from collections import OrderedDict

_state = {"enabled": False, "max_entries": 1}
_projectors: "OrderedDict[tuple, object]" = OrderedDict()
_counts = {"projector_builds": 0, "projector_hits": 0}


def enable(max_entries: int = 1) -> None:
    """Cache up to ``max_entries`` projectors in this process (least recently used dropped first)."""
    _state["enabled"], _state["max_entries"] = True, max(1, int(max_entries))


def disable() -> None:
    """Stop caching and drop every cached projector."""
    _state["enabled"] = False
    _projectors.clear()


def enabled() -> bool:
    return bool(_state["enabled"])


def projector_key(geometry, grid, device, kind: str, projector_type: str | None) -> tuple:
    """What identifies a projector: geometry fingerprint, grid shape and voxel size, kind, type, device."""
    from recon_cli.geometry import fingerprint

    return (fingerprint(geometry, grid), tuple(int(n) for n in grid.shape), round(float(grid.voxel_size), 9),
            str(kind), projector_type, getattr(device, "name", str(device)))


def make_projector(geometry, grid, device, kind: str = "auto", projector_type: str | None = None):
    """recon_cli.projectors.make_projector, served from this process's cache when :func:`enable` was called."""
    from recon_cli.projectors import make_projector as build

    if not _state["enabled"]:
        _counts["projector_builds"] += 1
        return build(geometry, grid, device, kind, projector_type)
    key = projector_key(geometry, grid, device, kind, projector_type)
    op = _projectors.get(key)
    if op is not None:
        _projectors.move_to_end(key)
        _counts["projector_hits"] += 1
        return op
    while len(_projectors) >= _state["max_entries"]:
        _projectors.popitem(last=False)  # free the oldest before building (memory)
    op = build(geometry, grid, device, kind, projector_type)
    _counts["projector_builds"] += 1
    _projectors[key] = op
    return op


def stats() -> dict[str, int]:
    """This process's counts: projector builds and cache hits, ONNX sessions built, and its pid."""
    out = dict(_counts)
    out["onnx_sessions"] = 0
    try:
        from recon_cli.networks import load_cached

        out["onnx_sessions"] = int(load_cached.cache_info().misses)
    except Exception:  # noqa: BLE001 - onnxruntime missing or networks changed: report 0
        pass
    out["cached_projectors"] = len(_projectors)
    out["pid"] = os.getpid()
    return out
