"""Where a model file is: a path, its .onnx sibling, or a model shipped with the package (no numpy:
``recon validate`` checks model names with it)."""
from __future__ import annotations

import os
from pathlib import Path

from recon_cli.errors import InputError

#: Folder of the models shipped with the package (found by bare name).
PACKAGED_MODELS = Path(__file__).resolve().parent / "models"


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The .onnx file for ``path``: itself, its .onnx sibling (for .pt/.json), or a packaged model by name."""
    p = Path(path)
    candidates = [p] if p.suffix == ".onnx" else [p.with_suffix(".onnx"), Path(str(p) + ".onnx")]
    if p.parent == Path(".") and p.suffix in ("", ".onnx", ".pt", ".json"):
        candidates.append(PACKAGED_MODELS / (p.stem + ".onnx"))
    candidates = list(dict.fromkeys(candidates))
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"model file not found (looked for {', '.join(str(c) for c in candidates)})",
                     file=str(path), field="model")
