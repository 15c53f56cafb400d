"""Checks of a pipeline's files before it runs (``recon validate`` and ``recon run``).

Kept apart from the runner so that ``recon validate`` imports no numpy: these checks only look at
paths and names.
"""
from __future__ import annotations

from pathlib import Path

from recon_cli.config import PipelineConfig
from recon_cli.errors import ConfigError, InputError


def check_files(cfg: PipelineConfig, from_command_line: dict[str, bool] | None = None) -> None:
    """Input, reference and mask files exist; ConfigError pointing at the YAML line otherwise."""
    from_cli = from_command_line or {}
    files = ((("input", "path"), cfg.input.path), (("metrics", "reference"), cfg.metrics.reference),
             (("metrics", "mask"), cfg.metrics.mask))
    for key_path, value in files:
        if value is None or Path(value).is_file() or Path(value).is_dir():  # folders: DICOM series
            continue
        what = "not found" if not Path(value).exists() else "is not a file"
        if from_cli.get(key_path[0]):
            raise InputError(what, file=str(value))
        raise ConfigError(f"{value}: {what}", file=cfg.where(*key_path), field=".".join(key_path))
    check_models(cfg)


def check_models(cfg: PipelineConfig) -> None:
    """Every model the solver names (at any depth: svtv's pre-estimate, graphLa's Psi, ...) is a file or a
    shipped model's name; ConfigError pointing at the YAML line otherwise."""
    from recon_cli.model_files import resolve_model_path

    def walk(node, path: tuple) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "model" and isinstance(value, str):
                    try:
                        resolve_model_path(value)
                    except InputError:
                        raise ConfigError(f"{value}: model not found (neither a file nor a shipped model's "
                                          f"name; shipped: {', '.join(shipped_models())})",
                                          file=cfg.where(*path, key), field=".".join(map(str, (*path, key)))) \
                            from None
                else:
                    walk(value, (*path, key))

    walk({"name": cfg.solver.name, "params": cfg.solver.params, "model": cfg.solver.model}, ("solver",))


def shipped_models() -> list[str]:
    """Names of the models shipped with the package (recon_cli/models/*.onnx)."""
    from recon_cli.model_files import PACKAGED_MODELS

    return sorted(p.stem for p in PACKAGED_MODELS.glob("*.onnx"))
