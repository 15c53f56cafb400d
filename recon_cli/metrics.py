"""Image-quality metrics against a reference, and their table.

Images in 1/mm, (ny, nx) or (nz, ny, nx). PSNR and SSIM follow scikit-image's
definitions with an explicit ``data_range`` (default: reference max - min). SSIM is
scikit-image's ``structural_similarity`` with its defaults (7x7 uniform window with
reflected borders, sample covariance, K1 = 0.01, K2 = 0.03), computed here with numpy
alone (the same formulas; equal to scikit-image's map to rounding, tests/test_metrics.py):
importing scikit-image's version pulls in scipy.ndimage, 0.15-0.2 s of every run. Stacks
are slice-averaged. With a boolean ``mask`` PSNR, RMSE, HU-RMSE and rel_err are taken
over the masked voxels and SSIM is the SSIM map averaged over the masked voxels
(away from the image border, as scikit-image's unmasked mean).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from recon_cli.backend import to_numpy
from recon_cli.errors import ConfigError, InputError

from recon_cli.constants import MU_WATER  # 1/mm
#: Every metric name, in table order.
METRIC_NAMES = ("psnr", "ssim", "rel_err", "rmse", "hu_rmse", "residual", "wall_time")
_NEED_REFERENCE = {"psnr", "ssim", "rel_err", "rmse", "hu_rmse"}
#: name -> (label, unit, format)
_DISPLAY = {
    "psnr": ("peak signal-to-noise ratio", "dB", "{:.2f}"), "ssim": ("structural similarity", "", "{:.4f}"), "rel_err": ("||x - ref|| / ||ref||", "", "{:.4f}"),
    "rmse": ("root mean square error", "1/mm", "{:.3e}"), "hu_rmse": ("RMSE in Hounsfield units", "HU", "{:.1f}"),
    "residual": ("||Ax - y|| / ||y||", "", "{:.4e}"), "wall_time": ("wall-clock time", "s", "{:.2f}"),
}


def to_hu(mu, mu_water: float = MU_WATER):
    """Attenuation (1/mm) -> Hounsfield units: 1000 (mu - mu_water) / mu_water."""
    return 1000.0 * (mu - mu_water) / mu_water


def box_mean(image: np.ndarray, win: int) -> np.ndarray:
    """Mean over the win x win window centred on each pixel of a 2-D float64 image, borders reflected
    about the edge (d c b a | a b c d): scipy.ndimage.uniform_filter(image, win) for odd ``win``."""
    pad = (win - 1) // 2
    padded = np.pad(image, pad, mode="symmetric")
    ny, nx = image.shape
    rows = padded[0:ny].copy()
    for k in range(1, win):
        rows += padded[k:k + ny]
    rows /= win
    out = rows[:, 0:nx].copy()
    for k in range(1, win):
        out += rows[:, k:k + nx]
    out /= win
    return out


def ssim_map(reference: np.ndarray, recon: np.ndarray, data_range: float, win: int = 7) -> np.ndarray:
    """SSIM map of two 2-D float64 images (ny, nx) with a win x win uniform window and sample covariance:
    scikit-image's ``structural_similarity(reference, recon, data_range=..., win_size=win, full=True)[1]``."""
    n_window = win * win
    cov_norm = n_window / (n_window - 1)
    ux, uy = box_mean(reference, win), box_mean(recon, win)
    uxx = box_mean(reference * reference, win)
    uyy = box_mean(recon * recon, win)
    uxy = box_mean(reference * recon, win)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
    b1, b2 = ux ** 2 + uy ** 2 + c1, vx + vy + c2
    return (a1 * a2) / (b1 * b2)


def _ssim_maps(recon: np.ndarray, reference: np.ndarray, data_range: float) -> tuple[list[np.ndarray], int]:
    """Per-slice SSIM maps and the window's border width."""
    side = min(reference.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise InputError(f"images of shape {list(reference.shape)} are too small for SSIM (need >= 3x3)",
                         field="reference")
    ref3, rec3 = reference.reshape(-1, *reference.shape[-2:]), recon.reshape(-1, *recon.shape[-2:])
    maps = [ssim_map(np.asarray(r, dtype=np.float64), np.asarray(x, dtype=np.float64), data_range, win)
            for r, x in zip(ref3, rec3)]
    return maps, (win - 1) // 2


def _ssim(recon: np.ndarray, reference: np.ndarray, data_range: float, mask: np.ndarray | None) -> float:
    maps, pad = _ssim_maps(recon, reference, data_range)
    smap = np.stack(maps)  # (nz, ny, nx)
    interior = np.zeros(smap.shape, dtype=bool)
    interior[:, pad:smap.shape[1] - pad, pad:smap.shape[2] - pad] = True
    if mask is not None:
        m3 = mask.reshape(smap.shape)
        region = m3 & interior
        region = region if region.any() else m3
    else:
        region = interior
    return float(smap[region].mean(dtype=np.float64))


def _mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the image's shape (a 2-D mask is applied to every slice of a stack)."""
    m = np.asarray(to_numpy(mask))
    if m.dtype != bool:
        raise InputError(f"mask must be boolean, got dtype {m.dtype}", field="mask")
    if m.shape != shape:
        if len(shape) == 3 and m.shape == shape[1:]:
            m = np.broadcast_to(m, shape)
        else:
            raise InputError(f"mask shape {list(m.shape)} differs from image shape {list(shape)}", field="mask")
    if not m.any():
        raise InputError("mask selects no voxel", field="mask")
    return np.ascontiguousarray(m)


def _names(names: Iterable[str] | None, have_reference: bool, residual, wall_time) -> list[str]:
    if names is None:
        out = [n for n in METRIC_NAMES if have_reference or n not in _NEED_REFERENCE]
        return [n for n in out if not (n == "residual" and residual is None)
                and not (n == "wall_time" and wall_time is None)]
    out = list(names)
    for n in out:
        if n not in METRIC_NAMES:
            raise ConfigError(f"unknown metric {n!r}; choose from {list(METRIC_NAMES)}", field="metrics")
        if n in _NEED_REFERENCE and not have_reference:
            raise ConfigError(f"metric {n!r} needs a reference image", field="metrics")
        if (n == "residual" and residual is None) or (n == "wall_time" and wall_time is None):
            raise ConfigError(f"metric {n!r} was requested but not measured", field="metrics")
    return out


def compute_metrics(recon, reference=None, *, residual: float | None = None, wall_time: float | None = None,
                    names: Iterable[str] | None = None, mask=None, mu_water: float = MU_WATER,
                    data_range: float | None = None) -> dict[str, float]:
    """Metrics of ``recon`` against ``reference`` (same shape, 1/mm) as plain floats.

    Keys (``names`` order, default all computable): psnr (dB), ssim, rel_err
    (||x - r|| / ||r||), rmse (1/mm), hu_rmse (HU), residual and wall_time (s), the
    last two passed in by the caller. Identical images give psnr = inf, ssim = 1.
    """
    selected = _names(names, reference is not None, residual, wall_time)
    out: dict[str, float] = {}
    if reference is not None and any(n in _NEED_REFERENCE for n in selected):
        x = np.asarray(to_numpy(recon), dtype=np.float64)
        r = np.asarray(to_numpy(reference), dtype=np.float64)
        if x.shape != r.shape:
            raise InputError(f"reference shape {list(r.shape)} differs from reconstruction shape {list(x.shape)}",
                             field="reference")
        if x.ndim not in (2, 3):
            raise InputError(f"images must be 2-D or 3-D, got shape {list(x.shape)}", field="reference")
        if any(n in ("psnr", "ssim") for n in selected):
            data_range = float(r.max() - r.min()) if data_range is None else float(data_range)
            if not data_range > 0:
                raise InputError("data range is zero (constant reference); pass data_range", field="reference")
        m = None if mask is None else _mask(mask, x.shape)
        xs, rs = (x, r) if m is None else (x[m], r[m])
        diff = xs - rs
        rmse = math.sqrt(float(np.mean(diff * diff)))
        for n in selected:
            if n == "psnr":  # skimage's definition; its import (scipy.stats) costs 0.3-1 s of start-up
                mse = float(np.mean(diff * diff))
                out[n] = 10.0 * math.log10(data_range ** 2 / mse) if mse > 0 else math.inf
            elif n == "ssim":
                out[n] = _ssim(x, r, data_range, m)
            elif n == "rel_err":
                norm_r = float(np.linalg.norm(rs))
                out[n] = float(np.linalg.norm(diff)) / norm_r if norm_r > 0 else math.inf
            elif n == "rmse":
                out[n] = rmse
            elif n == "hu_rmse":
                out[n] = math.sqrt(float(np.mean((to_hu(xs, mu_water) - to_hu(rs, mu_water)) ** 2)))
    if "residual" in selected:
        out["residual"] = float(residual)
    if "wall_time" in selected:
        out["wall_time"] = float(wall_time)
    return {n: out[n] for n in selected}


def data_residual(op, x, y) -> float:
    """||A x - y|| / ||y|| (plain float; the absolute norm ||A x|| when y is zero)."""
    xp = op.xp
    r = op.forward(x) - y
    num = float(xp.linalg.norm(r.ravel()))
    den = float(xp.linalg.norm(y.ravel()))
    return num / den if den > 0 else num


def format_metric(name: str, value: Any) -> str:
    """Value as shown in the table, with its unit."""
    label, unit, fmt = _DISPLAY.get(name, (name, "", "{:.4g}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = fmt.format(value) if math.isfinite(value) else str(value)
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def metrics_table(metrics: dict[str, Any], title: str | None = "Metrics"):
    """rich Table with one row per metric: name, value with unit, meaning."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning", style="dim")
    for name, value in metrics.items():
        table.add_row(name, format_metric(name, value), _DISPLAY.get(name, ("",))[0])
    return table


def print_metrics(metrics: dict[str, Any], console=None) -> None:
    """Print :func:`metrics_table` to ``console`` (default: stdout)."""
    from rich.console import Console

    (console or Console()).print(metrics_table(metrics))
