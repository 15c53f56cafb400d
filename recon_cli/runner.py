"""Execute one pipeline on one input: read -> preprocess -> operator -> solver -> metrics -> outputs.

Every output path is checked before any computing, so a run that would overwrite a
file refuses at once and leaves nothing behind; outputs are written atomically, and
if a later output fails the earlier ones of the same run are removed.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon_cli.backend import Device, select_device, to_numpy
from recon_cli.config import REFERENCE_METRICS, LogTransformStep, PipelineConfig, config_hash, resolved_yaml, \
    with_overrides
from recon_cli.errors import ConfigError, InputError
from recon_cli.sinogram import Sinogram

log = logging.getLogger(__name__)

#: Projector class name -> the ``projector.kind`` it implements.
_PROJECTOR_KINDS = {"AstraMatrixProjector": "matrix", "AstraCPUProjector": "astra", "AstraCUDAProjector": "cuda"}


@dataclass
class RunResult:
    """``output_paths``: format -> file written; ``metrics``: name -> float; ``info``: solver and run facts."""

    output_paths: dict[str, Path]
    metrics: dict[str, float]
    info: dict[str, Any]
    config: PipelineConfig | None = None
    volume: np.ndarray | None = field(default=None, repr=False)


def run_pipeline(cfg: PipelineConfig, *, input_override: str | None = None, output_override: str | None = None,
                 device_override: str | None = None, overwrite: bool = False, command_line: str | None = None,
                 progress: bool = True) -> RunResult:
    """Run ``cfg`` (overrides replace input.path, output.path, device) and write its outputs."""
    cfg = with_overrides(cfg, {"input.path": input_override, "output.path": output_override,
                               "device": device_override})
    outputs = cfg.output_paths()
    input_path = Path(cfg.input.path)
    check_files(cfg, from_command_line={"input": input_override is not None})
    check_outputs(outputs, input_path, overwrite)
    device = select_device(cfg.device)
    log.info("device: %s", device.name)

    sino = read_input(cfg)
    sino = apply_preprocess(sino, cfg.preprocess)
    reference = load_reference(cfg, sino)
    metric_names = select_metrics(cfg, reference is not None)
    mask = load_mask(cfg, sino)

    t_setup = time.perf_counter()
    from recon_cli.projectors import make_projector

    op = make_projector(sino.geometry, sino.grid, device, cfg.projector.kind,
                        None if cfg.projector.type == "auto" else cfg.projector.type)
    projector = {"kind": _PROJECTOR_KINDS.get(type(op).__name__, type(op).__name__),
                 "type": getattr(op, "projector_type", None)}
    time_setup = time.perf_counter() - t_setup
    sino_dev = to_device(sino, device)

    from recon_cli.progress import iteration_budget, solver_progress
    from recon_cli.solvers.registry import run_ref

    t0 = time.perf_counter()
    with solver_progress(cfg.solver.name, iteration_budget(cfg.solver.params), enabled=progress) as callback:
        rec = run_ref(cfg.solver, op, sino_dev, callback=callback)
    wall_time = time.perf_counter() - t0
    if tuple(rec.volume.shape) != tuple(sino.grid.shape):
        raise RuntimeError(f"solver {cfg.solver.name!r} returned shape {list(rec.volume.shape)}, "
                           f"expected {list(sino.grid.shape)}")

    from recon_cli.metrics import compute_metrics, data_residual

    residual = data_residual(op, rec.volume, sino_dev.data) if "residual" in metric_names else None
    volume = np.ascontiguousarray(to_numpy(rec.volume), dtype=np.float32)
    metrics = compute_metrics(volume, reference, residual=residual, wall_time=wall_time, names=metric_names,
                              mask=mask, mu_water=cfg.metrics.mu_water)

    info = _scalar_info(rec.info)
    info.update(solver=cfg.solver.name, device=device.name, projector_kind=projector["kind"],
                projector_type=projector["type"], time_setup=time_setup, wall_time=wall_time)
    history = {k: v for k, v in (rec.info.get("history") or {}).items() if v is not None and len(v) > 0}

    from recon_cli.provenance import build_provenance, file_sha256

    provenance = build_provenance(
        pipeline_yaml=resolved_yaml(cfg), pipeline_hash=config_hash(cfg), command_line=command_line,
        device=device.name, projector=projector, input_path=input_path, input_sha256=file_sha256(input_path),
        extra={"pipeline_name": cfg.name, "solver": cfg.solver.name,
               "reference": _reference_source(cfg, reference)})
    write_outputs(cfg, outputs, volume, sino.grid.voxel_size, metrics=metrics, provenance=provenance,
                  history=history, info=info, overwrite=overwrite)
    return RunResult(output_paths=outputs, metrics=metrics, info=info, config=cfg, volume=volume)


# ----------------------------------------------------------------------------- checks before running


def check_files(cfg: PipelineConfig, from_command_line: dict[str, bool] | None = None) -> None:
    """Input, reference and mask files exist; ConfigError pointing at the YAML line otherwise."""
    from_cli = from_command_line or {}
    files = ((("input", "path"), cfg.input.path), (("metrics", "reference"), cfg.metrics.reference),
             (("metrics", "mask"), cfg.metrics.mask))
    for key_path, value in files:
        if value is None or Path(value).is_file():
            continue
        what = "not found" if not Path(value).exists() else "is not a file"
        if from_cli.get(key_path[0]):
            raise InputError(what, file=str(value))
        raise ConfigError(f"{value}: {what}", file=cfg.where(*key_path), field=".".join(key_path))


def check_outputs(outputs: dict[str, Path], input_path: Path, overwrite: bool) -> None:
    """Refuse before computing anything: an existing output without ``overwrite``, or an output on the input."""
    for path in outputs.values():
        if path.exists() and input_path.exists() and path.resolve() == input_path.resolve():
            raise InputError("output would replace the input file; choose another output path", file=str(path))
        if path.is_dir():
            raise InputError("exists and is a folder", file=str(path))
        if path.exists() and not overwrite:
            raise InputError("exists; use --overwrite", file=str(path))


def read_input(cfg: PipelineConfig) -> Sinogram:
    """The input sinogram (format auto detects HDF5 by its signature)."""
    path = Path(cfg.input.path)
    import h5py

    if cfg.input.format in ("auto", "hdf5") and not h5py.is_hdf5(path):
        raise InputError("not an HDF5 file (supported input formats: hdf5)", file=str(path), field="input.format")
    from recon_cli.io.hdf5 import read_sinogram

    return read_sinogram(path)


def load_reference(cfg: PipelineConfig, sino: Sinogram) -> np.ndarray | None:
    """metrics.reference file, else the input's /reference, else None; shape checked against the grid."""
    if cfg.metrics.reference is None:
        return sino.reference
    from recon_cli.io.hdf5 import read_image

    image, voxel_size = read_image(cfg.metrics.reference)
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
    from recon_cli.io.hdf5 import read_image

    image, _ = read_image(cfg.metrics.mask)
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
    """Apply the pipeline's preprocessing steps in order (host arrays)."""
    for step in steps:
        if isinstance(step, LogTransformStep):
            sino = log_transform(sino, step.I0)
        else:  # pragma: no cover - the schema admits only known steps
            raise ConfigError(f"preprocess step {step!r} not implemented", field="preprocess")
    return sino


def log_transform(sino: Sinogram, I0: float | None = None) -> Sinogram:
    """Intensities -> line integrals -log(I / I0); I0 defaults to metadata I0, else the largest value."""
    data = np.asarray(sino.data, dtype=np.float32)
    if I0 is None:
        I0 = float(sino.metadata.get("I0") or data.max())
    if not I0 > 0:
        raise InputError(f"log_transform needs positive intensities (I0 = {I0})", field="preprocess.log_transform")
    tiny = np.float32(np.finfo(np.float32).tiny)
    line_integrals = -np.log(np.maximum(data, tiny) / np.float32(I0))
    return dataclasses.replace(sino, data=line_integrals.astype(np.float32),
                               metadata={**sino.metadata, "log_transform_I0": float(I0)})


def to_device(sino: Sinogram, device: Device) -> Sinogram:
    """The sinogram with ``data`` as a float32 array of the device's array module."""
    data = device.xp.asarray(sino.data, dtype=np.float32)
    return dataclasses.replace(sino, data=data)


# ----------------------------------------------------------------------------- outputs


def _scalar_info(info: dict) -> dict[str, Any]:
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


def _reference_source(cfg: PipelineConfig, reference) -> str | None:
    if reference is None:
        return None
    return cfg.metrics.reference or f"{cfg.input.path}:/reference"


def write_outputs(cfg: PipelineConfig, outputs: dict[str, Path], volume: np.ndarray, voxel_size: float, *,
                  metrics: dict, provenance: dict, history: dict, info: dict, overwrite: bool) -> None:
    """Write every requested format; on failure remove the files this call already wrote."""
    written: list[Path] = []
    try:
        for fmt, path in outputs.items():
            if fmt == "hdf5":
                from recon_cli.io.hdf5 import write_reconstruction

                write_reconstruction(path, volume, voxel_size, metrics=metrics, provenance=provenance,
                                     history=history, info=info, overwrite=overwrite)
            elif fmt == "png":
                from recon_cli.io.png import write_png

                window = tuple(cfg.output.png_window) if cfg.output.png_window else None
                write_png(path, volume, window, cfg.metrics.mu_water, overwrite=overwrite)
            else:  # pragma: no cover - the schema admits only known formats
                raise ConfigError(f"output format {fmt!r} not implemented", field="output.formats")
            written.append(path)
            log.info("wrote %s", path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
