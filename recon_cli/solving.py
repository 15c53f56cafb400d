"""Solving one part of a run (the whole grid, a chunk or an executor's unit of slices): the steps both the
runner's chunk loop (recon_cli.runner.solve_in_chunks) and the executor units (recon_cli.stack_units) take.

Build the projector (timed), move the part's sinogram to the device, run the solver (timed), check the
volume's shape, add the residual sums ||Ax - y||^2 and ||y||^2, bring the volume back to the host as
float32, and merge what the parts report into one info and history (:class:`Solved`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recon_cli.backend import Device, to_numpy
from recon_cli.sinogram import Sinogram


@dataclass
class Solved:
    """The solver's result over the whole grid (host float32) and what the outputs record about it."""

    volume: np.ndarray
    info: dict[str, Any]
    history: dict[str, Any]
    residual: float | None
    wall_time: float
    time_setup: float
    projector: dict[str, Any]


@dataclass
class Part:
    """One solved part: ``volume`` host float32 of the part's grid shape, the solver's scalar ``info``
    and non-empty ``history``, the residual sums (0 when not wanted)."""

    volume: np.ndarray
    info: dict[str, Any]
    history: dict[str, Any]
    res_sq: float = 0.0
    y_sq: float = 0.0


def to_device(sino: Sinogram, device: Device) -> Sinogram:
    """The sinogram with ``data`` as a float32 array of the device's array module."""
    data = device.xp.asarray(sino.data, dtype=np.float32)
    return dataclasses.replace(sino, data=data)


def sub_stack(sino: Sinogram, start: int, stop: int) -> Sinogram:
    """Slices [start, stop) of a 2D slice stack, as a Sinogram of its own (no copy of the data)."""
    from recon_cli.geometry import VolumeGrid

    ny, nx = sino.grid.slice_shape
    grid = VolumeGrid((stop - start, ny, nx), sino.grid.voxel_size)
    reference = sino.reference[start:stop] if sino.reference is not None else None
    return dataclasses.replace(sino, data=sino.data[start:stop], grid=grid, reference=reference)


def build_projector(cfg, part: Sinogram, device: Device, kind: str) -> tuple[Any, float, dict[str, Any]]:
    """(operator for ``part``, seconds it took, {'kind', 'type'} for the outputs); served from the worker's
    cache in executor workers (recon_cli.worker_cache)."""
    from recon_cli.registries import projector_kind_of
    from recon_cli.worker_cache import make_projector

    ptype = None if cfg.projector.type == "auto" else cfg.projector.type
    t0 = time.perf_counter()
    op = make_projector(part.geometry, part.grid, device, kind, ptype)
    seconds = time.perf_counter() - t0
    return op, seconds, {"kind": projector_kind_of(op), "type": getattr(op, "projector_type", None)}


def finish_part(cfg, op, rec, part_dev: Sinogram, *, want_residual: bool) -> Part:
    """The solver's Reconstruction ``rec`` of ``part_dev`` as a :class:`Part` (RuntimeError for a wrong shape)."""
    shape = tuple(part_dev.grid.shape)
    if tuple(rec.volume.shape) != shape:
        raise RuntimeError(f"solver {cfg.solver.name!r} returned shape {list(rec.volume.shape)}, "
                           f"expected {list(shape)}")
    res_sq, y_sq = residual_sums(op, rec.volume, part_dev.data) if want_residual else (0.0, 0.0)
    host = np.ascontiguousarray(to_numpy(rec.volume), dtype=np.float32)
    history = {k: v for k, v in (rec.info.get("history") or {}).items() if v is not None and len(v) > 0}
    return Part(volume=host, info=scalar_info(rec.info), history=history, res_sq=res_sq, y_sq=y_sq)


def residual_sums(op, x, y) -> tuple[float, float]:
    """(||Ax - y||^2, ||y||^2) as Python floats."""
    xp = op.xp
    r = op.forward(x) - y
    return float(xp.vdot(r.ravel(), r.ravel())), float(xp.vdot(y.ravel(), y.ravel()))


def relative_residual(res_sq: float, y_sq: float) -> float:
    """||Ax - y|| / ||y|| from the sums over parts (the absolute residual when y is 0)."""
    return math.sqrt(res_sq / y_sq) if y_sq > 0 else math.sqrt(res_sq)


def scalar_info(info: dict) -> dict[str, Any]:
    """The scalar entries of a solver's info (history and arrays left out)."""
    out = {}
    for key, value in (info or {}).items():
        if key == "history":
            continue
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif isinstance(value, np.generic):
            out[key] = value.item()
    return out


def merge_part_info(infos: list[dict], histories: list[dict], chunks: list) -> tuple[dict, dict]:
    """One part: its info and history. Several: the first part's info with summed times, the
    largest iteration count, ``chunks`` and ``chunk_slices``; histories as ``<name>_chunk<i>``."""
    if len(chunks) == 1:
        return dict(infos[0]), dict(histories[0])
    info = dict(infos[0])
    for key in ("time_total", "time_projector"):
        values = [i.get(key) for i in infos if isinstance(i.get(key), (int, float))]
        if values:
            info[key] = float(sum(values))
    iterations = [i.get("iterations") for i in infos if isinstance(i.get("iterations"), int)]
    if iterations:
        info["iterations"] = max(iterations)
    info.update(chunks=len(chunks), chunk_slices=max(b - a for a, b in chunks))
    history = {f"{name}_chunk{i}": values for i, h in enumerate(histories) for name, values in h.items()}
    return info, history
