"""Execute one pipeline on one input: read -> preprocess -> operator -> solver -> metrics -> outputs.

Every output path is checked before any computing, so a run that would overwrite a
file refuses at once and leaves nothing behind; outputs are written atomically, and
if a later output fails the earlier ones of the same run are removed. With
``output.pacs`` the DICOM output is then sent to the PACS and the record of what was
stored is written next to the outputs (``<stem>.pacs.json``, also when sending fails).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon_cli.backend import Device, select_device
from recon_cli.config import REFERENCE_METRICS, PipelineConfig, config_hash, resolved_yaml, with_overrides
from recon_cli.errors import ConfigError, InputError
from recon_cli.pipeline_checks import check_files
from recon_cli.registries import OUTPUT_FORMATS, PREPROCESS_STEPS, folder_formats
from recon_cli.sinogram import Sinogram
from recon_cli.solving import (Solved, build_projector, finish_part, merge_part_info, relative_residual,
                               residual_sums, sub_stack, to_device)

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    """``output_paths``: format -> file written; ``metrics``: name -> float; ``info``: solver and run facts."""

    output_paths: dict[str, Path]
    metrics: dict[str, float]
    info: dict[str, Any]
    config: PipelineConfig | None = None
    volume: np.ndarray | None = field(default=None, repr=False)


def device_for_solver(device: Device, request: str | None, solver: str) -> Device:
    """``device``, except that ``device: auto`` takes the CPU for a solver that needs an exact adjoint
    (SolverParams.needs_exact_adjoint), which the GPU projector does not give."""
    from recon_cli.solvers.registry import get_solver

    if device.is_gpu and (request or "auto").lower() == "auto" and get_solver(solver).params_model.needs_exact_adjoint:
        log.info("device auto: %s needs a projector with an exact adjoint; using the CPU", solver)
        return Device("cpu")
    return device


def run_pipeline(cfg: PipelineConfig, *, input_override: str | None = None, output_override: str | None = None,
                 device_override: str | None = None, overwrite: bool = False, command_line: str | None = None,
                 progress: bool = True, max_memory: int | str | None = None, resume: bool | str = False,
                 jobs: int = 1, executor=None) -> RunResult:
    """Run ``cfg`` (overrides replace input.path, output.path, device) and write its outputs.

    ``max_memory``: bytes or '2G' (default: a share of the available memory, divided by ``jobs``);
    stacks are split into chunks that fit, jobs that cannot fit are refused before running
    (recon_cli.memory). ``resume``: True continues from this run's checkpoint (refused when it
    belongs to another pipeline or input), 'auto' uses a matching one if present (recon_cli.checkpoint).
    ``executor``: a recon_cli.executors.ExecutorSpec to solve a slice stack in units on it
    (recon_cli.stack_units; no checkpoints); None solves here.
    """
    cfg = with_overrides(cfg, {"input.path": input_override, "output.path": output_override,
                               "device": device_override})
    outputs = cfg.output_paths()
    input_path = Path(cfg.input.path)
    check_files(cfg, from_command_line={"input": input_override is not None})
    pacs_record = cfg.pacs_record_path()
    check_outputs({**outputs, **({"pacs": pacs_record} if pacs_record else {})}, input_path, overwrite)
    check_log_file_apart(cfg, outputs)
    device = device_for_solver(select_device(cfg.device), cfg.device, cfg.solver.name)
    log.info("device: %s", device.name)

    from recon_cli.progress import iteration_budget, log_stage

    log_stage("read", str(input_path), path=str(input_path))
    sino = read_input(cfg)
    sino = apply_preprocess(sino, cfg.preprocess)
    from recon_cli.health import check_finite_output, check_sinogram

    check_sinogram(sino.data, file=str(input_path), field=_data_field(cfg, sino))
    reference = load_reference(cfg, sino)
    metric_names = select_metrics(cfg, reference is not None)
    mask = load_mask(cfg, sino)

    from recon_cli.io.formats import input_digest
    from recon_cli.memory import plan_memory

    plan = plan_memory(cfg, sino, device.name, max_memory, jobs=jobs)
    digest = input_digest(input_path)
    writer = prepare_checkpoint(cfg, outputs, digest, device, plan, resume, grid_shape=sino.grid.shape)
    budget = iteration_budget(cfg.solver.parsed())
    log_stage("solve", cfg.solver.name + (f" ({budget} iterations)" if budget else "") +
              (f", {len(plan.chunks)} chunks" if len(plan.chunks) > 1 else ""), solver=cfg.solver.name, total=budget)
    if executor is not None:
        from recon_cli.stack_units import solve_on_executor

        solved = solve_on_executor(cfg, sino, device, plan, executor, next(iter(outputs.values())),
                                   want_residual="residual" in metric_names)
    else:
        with checkpoint_named_on_interrupt(writer.path, command_line):
            solved = solve_in_chunks(cfg, sino, device, plan, writer, progress=progress,
                                     want_residual="residual" in metric_names)
    volume, wall_time, projector = solved.volume, solved.wall_time, solved.projector
    check_finite_output(volume, f"solver {cfg.solver.name}")

    from recon_cli.metrics import compute_metrics

    metrics = compute_metrics(volume, reference, residual=solved.residual, wall_time=wall_time,
                              names=metric_names, mask=mask, mu_water=cfg.metrics.mu_water)
    info = solved.info
    # the learned solvers' out-of-distribution guard (recon_cli.solvers.learned_guard): residuals and decision
    # (numbers only: /metrics holds numbers; the decision's name stays in /info as guard_decision)
    metrics.update({k: float(v) for k, v in info.items() if k.startswith("guard_") and isinstance(v, (int, float))})
    info.update(solver=cfg.solver.name, device=device.name, projector_kind=projector["kind"],
                projector_type=projector["type"], time_setup=solved.time_setup, wall_time=wall_time)
    info.update(input_facts(sino))
    history = solved.history

    from recon_cli.provenance import build_provenance

    provenance = build_provenance(
        pipeline_yaml=resolved_yaml(cfg), pipeline_hash=config_hash(cfg), command_line=command_line,
        device=device.name, projector=projector, input_path=input_path, input_sha256=digest,
        extra={"pipeline_name": cfg.name, "solver": cfg.solver.name,
               "reference": _reference_source(cfg, reference), **input_facts(sino)})
    log_stage("write", ", ".join(str(p) for p in outputs.values()), paths=[str(p) for p in outputs.values()])
    write_outputs(cfg, outputs, volume, sino.grid.voxel_size, metrics=metrics, provenance=provenance,
                  history=history, info=info, overwrite=overwrite,
                  dicom_source=sino.metadata.get("dicom"), recon_facts=recon_facts(cfg, sino))
    writer.remove()
    if pacs_record is not None:
        send_to_pacs(cfg, outputs["dicom"], pacs_record, overwrite)
        outputs = {**outputs, "pacs_record": pacs_record}
    return RunResult(output_paths=outputs, metrics=metrics, info=info, config=cfg, volume=volume)


@contextmanager
def checkpoint_named_on_interrupt(checkpoint: Path, command_line: str | None):
    """On SIGINT/SIGTERM (recon_cli.signals.Interrupted), record on the exception the checkpoint kept on
    disk (``checkpoint``) and the command that continues from it (``command_line`` with ``--resume``)."""
    from recon_cli.signals import Interrupted

    try:
        yield
    except Interrupted as exc:
        if checkpoint.is_file():
            exc.checkpoint = str(checkpoint)
            exc.resume_command = resume_command(command_line) if command_line else None
        raise


def resume_command(command_line: str) -> str:
    """``command_line`` (as rebuilt by the CLI, shell-quoted) with ``--resume`` added once."""
    import shlex

    parts = shlex.split(command_line)
    return command_line if "--resume" in parts else shlex.join([*parts, "--resume"])


# ----------------------------------------------------------------------------- checks before running


def check_log_file_apart(cfg: PipelineConfig, outputs: dict[str, Path]) -> None:
    """Refuse a --log-file that is the input, the reference, the mask or an output (InputError)."""
    from recon_cli.logging_setup import check_not_log_file

    try:
        check_not_log_file([cfg.input.path, cfg.metrics.reference, cfg.metrics.mask, *outputs.values()])
    except ValueError as exc:
        raise InputError(str(exc), field="--log-file") from None


def _data_field(cfg: PipelineConfig, sino: Sinogram) -> str:
    """How to name the sinogram in messages: its dataset, or the step that made it."""
    if cfg.preprocess:
        return "sinogram after preprocess"
    return str(sino.metadata.get("data_field") or "/sinogram")


def check_outputs(outputs: dict[str, Path], input_path: Path, overwrite: bool) -> None:
    """Refuse before computing anything: an existing output without ``overwrite``, or an output on the input.

    The ``dicom`` output is a folder: with ``overwrite`` only a folder of .dcm files is replaced.
    """
    from recon_cli.io.atomic import check_name_length, check_writable, remove_partial_outputs

    for path in outputs.values():
        check_name_length(path)
    removed = remove_partial_outputs(list(outputs.values()))
    if removed:
        log.warning("removed the partial outputs of an earlier run that was killed while writing: %s",
                    ", ".join(str(p) for p in removed))
    for fmt, path in outputs.items():
        if path.exists() and input_path.exists() and path.resolve() == input_path.resolve():
            raise InputError("output would replace the input file; choose another output path", file=str(path))
        if fmt == "dicom" and input_path.exists() and path.resolve() in input_path.resolve().parents:
            raise InputError("the DICOM output folder would hold the input; choose another output path",
                             file=str(path))
        if path.is_dir() and fmt not in folder_formats():
            raise InputError("exists and is a folder", file=str(path))
        if path.exists() and not overwrite:
            raise InputError("exists; use --overwrite", file=str(path))
        check_writable(path, overwrite)  # an unwritable folder is refused before the solve, not after
        if fmt == "dicom" and path.exists():
            from recon_cli.io.dicom_writer import check_safe_to_replace

            check_safe_to_replace(path)


def read_input(cfg: PipelineConfig) -> Sinogram:
    """The input sinogram (format and reader options from cfg.input; see recon_cli.io.formats).

    A DICOM image series (HU, converted with metrics.mu_water) gives the sinogram simulated from it.
    """
    from recon_cli.io.formats import read_input as read_any

    return read_any(cfg.input.path, cfg.input.format, mu_water=cfg.metrics.mu_water, **cfg.input.reader_options())


def load_reference(cfg: PipelineConfig, sino: Sinogram) -> np.ndarray | None:
    """metrics.reference file, else the input's /reference, else None; shape checked against the grid."""
    from recon_cli.health import check_reference

    if cfg.metrics.reference is None:
        if sino.reference is not None:
            check_reference(sino.reference, file=str(cfg.input.path), field="/reference")
        return sino.reference
    from recon_cli.io.images import fit_shape, read_any_image

    image, voxel_size = read_any_image(cfg.metrics.reference, cfg.metrics.mu_water)
    image = fit_shape(image, tuple(sino.grid.shape)) if fit_shape(image, tuple(sino.grid.shape)) is not None \
        else image
    check_reference(image, file=cfg.metrics.reference, field="metrics.reference")
    if tuple(image.shape) != tuple(sino.grid.shape):
        raise InputError(f"reference shape {list(image.shape)} differs from the reconstruction grid "
                         f"{list(sino.grid.shape)}", file=cfg.metrics.reference, field="metrics.reference")
    if not math.isclose(voxel_size, sino.grid.voxel_size, rel_tol=1e-6):
        log.warning("reference voxel size %.4g mm differs from the grid's %.4g mm", voxel_size, sino.grid.voxel_size)
    return image


def load_mask(cfg: PipelineConfig, sino: Sinogram) -> np.ndarray | None:
    """metrics.mask as booleans (non-zero = inside), or None."""
    if cfg.metrics.mask is None:
        return None
    from recon_cli.io.images import read_any_image

    image, _ = read_any_image(cfg.metrics.mask, cfg.metrics.mu_water)
    shape = tuple(sino.grid.shape)
    if tuple(image.shape) not in (shape, shape[-2:]):
        raise InputError(f"mask shape {list(image.shape)} differs from the grid {list(shape)}",
                         file=cfg.metrics.mask, field="metrics.mask")
    return image != 0


def select_metrics(cfg: PipelineConfig, have_reference: bool) -> list[str]:
    """Requested metrics; without a reference those needing one are skipped (a warning if listed explicitly)."""
    names = list(cfg.metrics.list)
    needs = [n for n in names if n in REFERENCE_METRICS]
    if have_reference or not needs:
        return names
    explicit = "list" in cfg.metrics.model_fields_set
    log.log(logging.WARNING if explicit else logging.INFO,
            "no reference image (the input has no /reference and metrics.reference is not set): skipping %s",
            ", ".join(needs))
    return [n for n in names if n not in REFERENCE_METRICS]


# ----------------------------------------------------------------------------- data preparation


def apply_preprocess(sino: Sinogram, steps: list) -> Sinogram:
    """Apply the pipeline's preprocessing steps in order (host arrays; recon_cli.registries.PREPROCESS_STEPS)."""
    for step in steps:
        sino = PREPROCESS_STEPS.get(step.step).load()(sino, step)
    return sino


def input_facts(sino: Sinogram) -> dict[str, Any]:
    """Facts about the input worth keeping with the output (provenance and /info): the centre-of-rotation
    offset (pixels) of a parallel-beam synchrotron input, and whether it was estimated."""
    facts: dict[str, Any] = {}
    if "cor_offset" in sino.metadata:
        facts["cor_offset_px"] = float(sino.metadata["cor_offset"])
        facts["cor_offset_estimated"] = bool(sino.metadata.get("cor_offset_estimated", False))
    return facts


# ----------------------------------------------------------------------------- outputs


def _reference_source(cfg: PipelineConfig, reference) -> str | None:
    if reference is None:
        return None
    return cfg.metrics.reference or f"{cfg.input.path}:/reference"


def recon_facts(cfg: PipelineConfig, sino: Sinogram) -> dict[str, Any]:
    """Reconstruction parameters for the DICOM output (ConvolutionKernel, distances, ImageComments)."""
    params = cfg.solver.params
    return {"pipeline": cfg.name, "solver": cfg.solver.name,
            "params": params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params or {}),
            "geometry": sino.geometry.attrs(), "n_angles": int(sino.geometry.n_angles)}


def send_to_pacs(cfg: PipelineConfig, dicom_dir: Path, record_path: Path, overwrite: bool) -> dict:
    """C-STORE the DICOM output to output.pacs and write the record to ``record_path``.

    On failure the partial record is written too and PacsError (exit 1) says so; the outputs stay
    (send them again with ``recon send``).
    """
    from recon_cli.io.pacs import PacsError, save_record, send_series

    pacs = cfg.output.pacs
    try:
        record = send_series(sorted(dicom_dir.glob("*.dcm")), pacs.host, pacs.port, pacs.ae_title,
                             calling_ae_title=pacs.calling_ae_title, retries=pacs.retries, timeout=pacs.timeout)
    except PacsError as exc:
        if exc.record is not None:
            save_record(exc.record, record_path, overwrite=overwrite)
        raise PacsError(f"{exc.message}; outputs kept, record in {record_path}", record=exc.record,
                        file=exc.file, field=exc.field or "output.pacs") from None
    save_record(record, record_path, overwrite=overwrite)
    log.info("sent %d instances to %s@%s:%d; record %s", record["stored"], pacs.ae_title, pacs.host, pacs.port,
             record_path)
    return record


def write_outputs(cfg: PipelineConfig, outputs: dict[str, Path], volume: np.ndarray, voxel_size: float, *,
                  metrics: dict, provenance: dict, history: dict, info: dict, overwrite: bool,
                  dicom_source: dict | None = None, recon_facts: dict | None = None) -> None:
    """Write every requested format; on failure remove the files (and folders) this call already wrote.

    ``dicom_source``: Sinogram.metadata["dicom"] of a DICOM input; ``recon_facts``: see :func:`recon_facts`.
    """
    from recon_cli.io.atomic import output_set
    from recon_cli.io.writers import OutputFacts

    facts = OutputFacts(metrics=metrics, provenance=provenance, history=history, info=info,
                        window=tuple(cfg.output.png_window) if cfg.output.png_window else None,
                        mu_water=cfg.metrics.mu_water, name=cfg.name, dicom_source=dicom_source,
                        recon=recon_facts or {})
    written: list[Path] = []
    with output_set(list(outputs.values())):
        _write_each(outputs, volume, voxel_size, facts, written, overwrite=overwrite)


def _write_each(outputs: dict[str, Path], volume: np.ndarray, voxel_size: float, facts, written: list[Path], *,
                overwrite: bool) -> None:
    """The body of :func:`write_outputs`: each format's registered writer in turn (recon_cli.registries.
    OUTPUT_FORMATS); on failure the ones written are removed."""
    try:
        for fmt, path in outputs.items():
            OUTPUT_FORMATS.get(fmt).load()(path, volume, voxel_size, facts, overwrite=overwrite)
            written.append(path)
            log.info("wrote %s", path)
    except BaseException:
        for path in written:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- solving: chunks and checkpoints


def prepare_checkpoint(cfg: PipelineConfig, outputs: dict[str, Path], input_sha256: str, device: Device,
                       plan, resume: bool | str = False, grid_shape: tuple[int, ...] | None = None):
    """The CheckpointWriter of this run: a fresh checkpoint, or (``resume``) the one on disk.

    ``resume=True`` refuses a checkpoint of another pipeline, input, solver or device (ConfigError
    saying which); without a checkpoint it starts from the beginning with a warning.
    ``resume='auto'`` uses a matching checkpoint and ignores any other. A resumed stack keeps the
    chunks it was started with (``plan.chunks`` is replaced).
    """
    from recon_cli.checkpoint import (Checkpoint, CheckpointWriter, check_fits_run, check_key, checkpoint_every,
                                      checkpoint_path, load_checkpoint, run_key)
    from recon_cli.progress import iteration_budget
    from recon_cli.solvers.registry import get_solver

    every = checkpoint_every(cfg, get_solver(cfg.solver.name))
    path = checkpoint_path(cfg, outputs.get("hdf5") or next(iter(outputs.values())))
    key = run_key(cfg, input_sha256, device.name)
    if resume and path.is_file():
        try:
            ckpt = load_checkpoint(path)
            check_key(ckpt, key, path)
            if grid_shape is not None:
                check_fits_run(ckpt, grid_shape, iteration_budget(cfg.solver.parsed()), path)
        except (ConfigError, InputError) as exc:
            if resume != "auto":
                raise
            log.info("not resuming (%s)", exc.one_line())
        else:
            if ckpt.chunks is not None and [tuple(c) for c in ckpt.chunks] != [tuple(c) for c in plan.chunks]:
                log.info("resume: keeping the checkpoint's %d chunks", len(ckpt.chunks))
                plan.chunks = [tuple(c) for c in ckpt.chunks]
            log.info("resuming from %s (chunk %d of %d, iteration %d)", path, ckpt.chunk + 1,
                     len(plan.chunks), ckpt.iteration)
            return CheckpointWriter(path, ckpt, every)
    elif resume is True:
        log.warning("--resume: no checkpoint at %s; starting from the beginning", path)
    elif path.is_file():
        log.info("ignoring the checkpoint of an earlier run at %s (use --resume to continue from it)", path)
    return CheckpointWriter(path, Checkpoint(key=key, chunks=[tuple(c) for c in plan.chunks]), every)


def solve_in_chunks(cfg: PipelineConfig, sino: Sinogram, device: Device, plan, writer, *, progress: bool = True,
                    want_residual: bool = True) -> Solved:
    """Run the solver over ``plan.chunks`` of slices (one chunk: the whole grid), with checkpoints.

    Chunks are solved one after the other with one projector at a time (recon_cli.solving); a resumed
    run skips the finished chunks (their slices come from the checkpoint) and continues the chunk in
    progress from the solver state saved in it. The residual metric ||Ax - y|| / ||y|| is summed over chunks.
    """
    from recon_cli.checkpoint import combine
    from recon_cli.progress import iteration_budget, solver_progress
    from recon_cli.solvers.registry import run_ref

    chunks = [tuple(c) for c in plan.chunks]
    split = len(chunks) > 1
    ckpt = writer.ckpt
    first = ckpt.chunk  # chunks before it finished before an interruption (0 for a fresh run)
    volume = np.empty(sino.grid.shape, dtype=np.float32) if split else None
    if split and first > 0:
        volume[:chunks[first - 1][1]] = ckpt.done_volume
    budget = iteration_budget(cfg.solver.parsed())
    writer.final_iteration = budget
    res_sq = y_sq = 0.0
    time_setup = wall_time = 0.0
    infos: list[dict] = [dict(i) for i in ckpt.done_info[:first]]
    histories: list[dict] = [dict(i.pop("history", None) or {}) for i in infos]
    op = op_slices = projector = None
    for index, (start, stop) in enumerate(chunks):
        part = sub_stack(sino, start, stop) if split else sino
        if op is None or op_slices != stop - start:
            op = None  # free the previous projector (and its matrix) first
            op, seconds, projector = build_projector(cfg, part, device, plan.projector_kind)
            time_setup += seconds
            op_slices = stop - start
        part_dev = to_device(part, device)
        if index < first:  # finished before the interruption: only its residual is needed
            if want_residual:
                sums = residual_sums(op, device.xp.asarray(volume[start:stop]), part_dev.data)
                res_sq, y_sq = res_sq + sums[0], y_sq + sums[1]
            continue
        resume_state = ckpt.state if index == ckpt.chunk else None
        label = cfg.solver.name + (f" [{index + 1}/{len(chunks)}]" if split else "")
        t0 = time.perf_counter()
        with solver_progress(label, budget, enabled=progress) as bar:
            callback = combine(bar, writer.callback if writer.enabled else None)
            try:
                rec = run_ref(cfg.solver, op, part_dev, callback=callback, resume_state=resume_state)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                if resume_state is None:
                    raise
                raise InputError(f"the solver state does not fit this run ({type(exc).__name__}: {exc}); delete "
                                 "it to start again", file=str(writer.path)) from None
        wall_time += time.perf_counter() - t0
        done = finish_part(cfg, op, rec, part_dev, want_residual=want_residual)
        res_sq, y_sq = res_sq + done.res_sq, y_sq + done.y_sq
        infos.append(done.info)
        histories.append(done.history)
        if split:
            volume[start:stop] = done.volume
            if index + 1 < len(chunks):
                writer.chunk_done(index, volume[:stop], {**infos[-1], "history": done.history})
        else:
            volume = done.volume
        del rec, part_dev, done
    residual = relative_residual(res_sq, y_sq) if want_residual else None
    info, history = merge_part_info(infos, histories, chunks)
    return Solved(volume=volume, info=info, history=history, residual=residual, wall_time=wall_time,
                  time_setup=time_setup, projector=projector or {"kind": None, "type": None})
