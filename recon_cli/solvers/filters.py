"""Ramp filters for filtered backprojection, applied along the detector axis.

The ramp is the FFT of the band-limited spatial Ram-Lak kernel (h[0] = 1/(4 tau^2),
h[n odd] = -1/(pi n tau)^2, 0 otherwise), which keeps the zero-frequency (DC) term
right, unlike sampling |omega| directly. Windows are functions of nu, the frequency
as a fraction of Nyquist, cut off at ``frequency_scaling`` (d): zero above d.
"""
from __future__ import annotations

import numpy as np

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def padded_length(n_det: int, padding: bool) -> int:
    """FFT length: the next power of two >= 2 * n_det with padding, else n_det."""
    if not padding:
        return int(n_det)
    return int(2 ** int(np.ceil(np.log2(max(2 * n_det, 2)))))


def window(name: str, nu: np.ndarray, frequency_scaling: float = 1.0) -> np.ndarray:
    """Apodisation window at ``nu`` (fraction of Nyquist, >= 0), zero above ``frequency_scaling``."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; choose one of {list(FILTERS)}")
    z = np.asarray(nu, dtype=np.float64) / float(frequency_scaling)
    if name == "ram-lak":
        w = np.ones_like(z)
    elif name == "shepp-logan":
        w = np.sinc(z / 2.0)  # sin(pi z / 2) / (pi z / 2)
    elif name == "cosine":
        w = np.cos(np.pi * z / 2.0)
    elif name == "hamming":
        w = 0.54 + 0.46 * np.cos(np.pi * z)
    else:  # hann
        w = 0.5 + 0.5 * np.cos(np.pi * z)
    return np.where(z <= 1.0, w, 0.0)


def ramp_response(n_fft: int, spacing: float, name: str = "ram-lak",
                  frequency_scaling: float = 1.0) -> np.ndarray:
    """Real frequency response (length n_fft // 2 + 1, for rfft) of the windowed ramp.

    Includes the factor ``spacing`` (mm) of the discrete convolution, so filtering
    line integrals (unitless) gives 1/mm; ``spacing`` is the detector spacing at the
    rotation axis.
    """
    n = np.fft.fftfreq(n_fft, d=1.0 / n_fft).round().astype(np.int64)  # 0, 1, ..., -1 (wrapped order)
    kernel = np.zeros(n_fft, dtype=np.float64)
    kernel[0] = 0.25
    odd = (n % 2) != 0
    kernel[odd] = -1.0 / (np.pi * n[odd]) ** 2
    kernel /= spacing**2
    response = np.fft.rfft(kernel).real * spacing
    nu = np.fft.rfftfreq(n_fft) / 0.5
    return response * window(name, nu, frequency_scaling)


def ramp_filter(data, spacing: float, name: str = "ram-lak", frequency_scaling: float = 1.0,
                padding: bool = True, xp=np):
    """Filter ``data`` (..., n_det) along its last axis; returns float32 of the same shape.

    ``xp`` is numpy or cupy (the array module of ``data``).
    """
    n_det = data.shape[-1]
    n_fft = padded_length(n_det, padding)
    response = xp.asarray(ramp_response(n_fft, spacing, name, frequency_scaling).astype(np.float32))
    spectrum = xp.fft.rfft(data.astype(xp.float32, copy=False), n=n_fft, axis=-1)
    filtered = xp.fft.irfft(spectrum * response, n=n_fft, axis=-1)[..., :n_det]
    return xp.ascontiguousarray(filtered.astype(xp.float32, copy=False))
