"""Training losses on ``(batch, 1, H, W)`` tensors: MSE, L1 and the elastic image+gradient loss.

Elastic loss (SV-TV paper, METHODS.md section 1):
  alpha * ||f(x) - x_gt||_p + (1 - alpha) * || |D f(x)| - |D x_gt| ||_p
with D forward differences (zero across the last row/column, as in recon_cli.ops) and
|.| the isotropic gradient magnitude; ``norm`` "l1" (mean absolute) or "l2" (mean square).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from recon_cli.learn.config import LossConfig

#: Added under the square root of the gradient magnitude so its derivative stays finite at 0.
GRAD_EPS = 1e-8


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Isotropic forward-difference gradient magnitude, same shape as ``x`` (B, C, H, W)."""
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return torch.sqrt(dx * dx + dy * dy + GRAD_EPS)


def _dist(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    return F.l1_loss(a, b) if norm == "l1" else F.mse_loss(a, b)


def elastic_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, norm: str = "l1") -> torch.Tensor:
    """alpha * d(pred, target) + (1 - alpha) * d(|D pred|, |D target|), d the mean l1 or l2 distance."""
    image_term = _dist(pred, target, norm)
    grad_term = _dist(gradient_magnitude(pred), gradient_magnitude(target), norm)
    return alpha * image_term + (1.0 - alpha) * grad_term


def _base_loss(cfg: LossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if cfg.kind == "mse":
        return F.mse_loss
    if cfg.kind == "l1":
        return F.l1_loss
    alpha, norm = float(cfg.alpha), cfg.norm

    def loss(pred, target):
        return elastic_loss(pred, target, alpha, norm)

    return loss


def relative_loss(base: Callable, pred: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor,
                  floor: float) -> torch.Tensor:
    """Mean over the batch of base(pred_i, target_i) / (base(input_i, target_i) + floor x its batch mean):
    each pair weighted by its input's own error, so the loss measures the relative improvement per pair."""
    own = torch.stack([base(p[None], t[None]) for p, t in zip(pred, target)])
    with torch.no_grad():
        ref = torch.stack([base(x[None], t[None]) for x, t in zip(inputs, target)])
        ref = ref + floor * ref.mean() + torch.finfo(ref.dtype).tiny
    return (own / ref).mean()


def make_loss(cfg: LossConfig) -> Callable[..., torch.Tensor]:
    """The loss function ``loss(pred, target, inputs=None) -> scalar`` described by ``cfg``; ``inputs``
    (the network's image input, same shape as ``target``) is needed by ``per_pair: relative``."""
    base = _base_loss(cfg)
    if cfg.per_pair == "absolute":
        return lambda pred, target, inputs=None: base(pred, target)
    floor = float(cfg.relative_floor)

    def loss(pred, target, inputs=None):
        if inputs is None:
            raise ValueError("per_pair 'relative' needs the network inputs")
        return relative_loss(base, pred, target, inputs, floor)

    return loss

