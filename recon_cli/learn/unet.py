"""A configurable 2D U-Net for image-to-image CT post-processing (torch).

Input and output: ``(batch, 1, H, W)`` float32 on the normalised scale (image in 1/mm
divided by the model's ``input_scale``); H and W must be multiples of ``2**depth``
(:func:`recon_cli.networks.pad_to_multiple` pads, both in training and inference).
Defaults (depth 3, base 16, two 3x3 convolutions per level) give ~0.47 M parameters.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from recon_cli.learn.config import UNetConfig


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with norm and ReLU; optionally a residual block with a 1x1 skip."""

    def __init__(self, c_in: int, c_out: int, norm: str, residual: bool):
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias), _norm(norm, c_out),
        )
        self.residual = residual
        if residual:
            self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.residual:
            y = y + self.skip(x)
        return F.relu(y)


class UNet(nn.Module):
    """U-Net with ``depth`` levels of 2x pooling, transposed-convolution up-sampling and skips."""

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or UNetConfig(**kwargs)
        self.config = cfg
        chans = [cfg.base_channels * 2**i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        c_prev = cfg.in_channels
        for c in chans[:-1]:
            self.down.append(ConvBlock(c_prev, c, cfg.norm, cfg.residual_blocks))
            c_prev = c
        self.bottom = ConvBlock(chans[-2], chans[-1], cfg.norm, cfg.residual_blocks)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(cfg.depth)):
            self.up.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            self.dec.append(ConvBlock(2 * chans[i], chans[i], cfg.norm, cfg.residual_blocks))
        self.head = nn.Conv2d(chans[0], 1, 1)
        if cfg.global_skip:  # start as the identity map: the net learns a correction
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def pad_multiple(self) -> int:
        return 2**self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottom(h)
        for up, dec in zip(self.up, self.dec):
            h = up(h)
            h = dec(torch.cat([h, skips.pop()], dim=1))
        out = self.head(h)
        if self.config.global_skip:
            out = out + x[:, :1]
        if self.config.nonneg == "relu":
            out = F.relu(out)
        elif self.config.nonneg == "softplus":
            out = F.softplus(out, beta=self.config.softplus_beta)
        return out


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
