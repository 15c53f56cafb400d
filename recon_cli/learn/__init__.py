"""Training of learned components (needs PyTorch: ``pip install 'recon-ct-cli[train]'``).

Sits above the solvers: it runs registered solvers to make training inputs and
targets. Nothing below (solvers, networks.py) imports this package; trained models
are used at inference through :mod:`recon_cli.networks` (ONNX Runtime, no torch).

Modules: ``config`` (training YAML schema), ``anatomy`` (anatomy-like phantoms),
``datasets`` (cached training pairs), ``unet``, ``losses``, ``train`` (loop, checkpoints,
export). Only ``unet``, ``losses`` and ``train`` import torch.
"""
from __future__ import annotations

from recon_cli.errors import ConfigError


def require_torch() -> None:
    """Raise ConfigError with the install hint when PyTorch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ConfigError("training needs PyTorch, which is not installed; "
                          "pip install 'recon-ct-cli[train]' (CPU build: see README)", field="train") from None
