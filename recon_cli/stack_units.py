"""A 2D slice stack solved as independent units of slices on an executor (recon_cli.executors).

Units: one per worker (fewer, larger units are faster with a matrix projector, which reads its matrix
once per product for all the slices of a unit), smaller when memory requires, or ExecutorSpec.unit_slices.
The driver writes the preprocessed sinogram once to ``<output folder>/.<stem>.units-<id>/sinogram.npy``;
each unit memory-maps its own slice range from it, solves it with a projector from the worker's
cache (recon_cli.worker_cache) and writes its part, ``part_<start>_<stop>.npy`` (atomically), next
to it. Units return only small facts (info, history, residual sums, timings). The driver then
assembles the volume from the parts; runner.write_outputs writes the outputs atomically as for a
local run, and the temporary folder is removed in every case (also when a unit fails or the run is
stopped). Slices are solved independently (fbp, sirt, cgls, ...): the result equals a local run bit
for bit. Checkpoints are not written (a failed unit is simply run again).
"""
from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon_cli.errors import ConfigError, RunError
from recon_cli.solving import Solved, build_projector, finish_part, merge_part_info, relative_residual, to_device


@dataclass
class StackTask:
    """One unit: slices [start, stop) of the staged sinogram ``sino_path``; its part goes to ``part_path``."""

    cfg: Any  # PipelineConfig
    device: str
    geometry: Any
    voxel_size: float
    slice_shape: tuple[int, int]
    sino_path: str
    start: int
    stop: int
    part_path: str
    projector_kind: str
    want_residual: bool


def stack_unit(task: StackTask) -> dict[str, Any]:
    """Solve one slice range and write its part; returns small facts (never the volume)."""
    from recon_cli import worker_cache
    from recon_cli.backend import select_device
    from recon_cli.geometry import VolumeGrid
    from recon_cli.sinogram import Sinogram
    from recon_cli.solvers.registry import run_ref

    cfg = task.cfg
    device = select_device(task.device)
    data = np.load(task.sino_path, mmap_mode="r")
    part = Sinogram(data=np.ascontiguousarray(data[task.start:task.stop], dtype=np.float32), geometry=task.geometry,
                    grid=VolumeGrid((task.stop - task.start, *task.slice_shape), task.voxel_size))
    del data
    op, time_setup, projector = build_projector(cfg, part, device, task.projector_kind)
    part_dev = to_device(part, device)
    t0 = time.perf_counter()
    rec = run_ref(cfg.solver, op, part_dev)
    wall_time = time.perf_counter() - t0
    done = finish_part(cfg, op, rec, part_dev, want_residual=task.want_residual)
    tmp = Path(task.part_path).with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, done.volume)
    os.replace(tmp, task.part_path)
    history = {k: np.asarray(v).tolist() for k, v in done.history.items()}
    return {"start": task.start, "stop": task.stop, "part": task.part_path, "info": done.info,
            "history": history, "res_sq": done.res_sq, "y_sq": done.y_sq, "time_setup": time_setup,
            "wall_time": wall_time, "cache": worker_cache.stats(), "projector": projector}


#: The function run for each unit (tests replace it to kill a worker once).
UNIT_FUNCTION = stack_unit


def unit_ranges(n_slices: int, max_slices: int, workers: int,
                unit_slices: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) ranges of equal size: ``unit_slices`` each if given, else one per worker; never more
    than ``max_slices`` (what fits in memory)."""
    per_unit = int(unit_slices) if unit_slices else math.ceil(n_slices / max(1, workers))
    per_unit = max(1, min(int(max_slices), per_unit))
    n_units = math.ceil(n_slices / per_unit)
    size = math.ceil(n_slices / n_units)
    return [(a, min(a + size, n_slices)) for a in range(0, n_slices, size)]


def solve_on_executor(cfg, sino, device, plan, spec, output: Path, *, want_residual: bool = True):
    """recon_cli.solving.Solved for ``sino`` (a 2D slice stack) solved in units on ``spec``'s executor.

    ConfigError for a 3D geometry or a solver that couples slices; RunError naming the failed units.
    """
    from recon_cli.executors import count_workers, run_units

    est = plan.estimate
    if sino.geometry.is_3d or np.asarray(sino.data).ndim != 3:
        raise ConfigError(f"--executor {spec.kind} splits 2D slice stacks; this input is "
                          f"{'a 3D geometry' if sino.geometry.is_3d else 'a single slice'}", field="--executor")
    if not est.slice_independent:
        raise ConfigError(f"--executor {spec.kind}: solver {cfg.solver.name} couples the slices with these "
                          f"parameters, so the stack cannot be split", field="--executor")
    n = int(sino.grid.shape[0])
    max_slices = max(b - a for a, b in plan.chunks)
    ranges = unit_ranges(n, max_slices, count_workers(spec), spec.unit_slices)
    workdir = output.parent / f".{output.stem}.units-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    try:
        sino_path = workdir / "sinogram.npy"
        np.save(sino_path, np.ascontiguousarray(sino.data, dtype=np.float32))
        tasks = [StackTask(cfg=cfg, device=device.name, geometry=sino.geometry, voxel_size=float(sino.grid.voxel_size),
                           slice_shape=tuple(sino.grid.slice_shape), sino_path=str(sino_path), start=a, stop=b,
                           part_path=str(workdir / f"part_{a:06d}_{b:06d}.npy"),
                           projector_kind=plan.projector_kind, want_residual=want_residual) for a, b in ranges]
        t0 = time.perf_counter()
        outcomes = run_units(spec, UNIT_FUNCTION, tasks)
        elapsed = time.perf_counter() - t0
        failed = [o for o in outcomes if not o.ok]
        if failed:
            lines = "; ".join(f"slices {ranges[o.index][0]}-{ranges[o.index][1] - 1}: {o.error} "
                              f"({o.attempts} attempts)" for o in failed)
            raise RunError(f"{len(failed)} of {len(ranges)} units failed: {lines}")
        volume = np.empty(sino.grid.shape, dtype=np.float32)
        for o in outcomes:
            volume[o.value["start"]:o.value["stop"]] = np.load(o.value["part"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    values = [o.value for o in outcomes]
    info, history = merge_part_info([v["info"] for v in values], [v["history"] for v in values], ranges)
    builds = {}
    for v in values:  # the last count each worker process reported
        builds[v["cache"]["pid"]] = max(builds.get(v["cache"]["pid"], 0), v["cache"]["projector_builds"])
    info.update(executor=spec.kind, units=len(ranges), worker_processes=len(builds),
                projector_builds=int(sum(builds.values())))
    res_sq, y_sq = sum(v["res_sq"] for v in values), sum(v["y_sq"] for v in values)
    residual = relative_residual(res_sq, y_sq) if want_residual else None
    return Solved(volume=volume, info=info, history=history, residual=residual, wall_time=elapsed,
                  time_setup=float(sum(v["time_setup"] for v in values)), projector=values[0]["projector"])
