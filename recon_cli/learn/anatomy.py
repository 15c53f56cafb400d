"""Anatomy-like random phantoms for training: body outline, fat layer, soft tissue with fat
blobs and a smooth plus a fine-grained texture, organs, optional lungs, bone rings (cortex +
marrow) and small low-contrast lesions.

Statistics against the real slices the project may train on (benchmarks/anatomy_stats.py,
results/anatomy_stats.md): the fine texture, fat blobs and 35-65 HU soft tissue brought the
body's median gradient magnitude from 1.9 to 12.7 HU/mm (real slices 13.4) and the median HU
from 11 to 33 (real 40); HU-histogram distance 75 -> 58 HU, gradient-histogram distance 21 -> 10 HU/mm.

Values in 1/mm (water 0.0192). Shapes are drawn on the square [-1, 1]^2 covered by the
image (row 0 = +y) with 2x2 supersampling, so any size works; texture and edge softness
scale with the image, not with the pixel count.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from recon_cli.phantoms import MU_WATER

SUPERSAMPLE = 2
#: Standard deviation (HU) of the fine-grained tissue texture.
FINE_TEXTURE_HU = 20.0


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    m = n * SUPERSAMPLE
    c = (np.arange(m) + 0.5) / m * 2.0 - 1.0
    return c[None, :], -c[:, None]  # x grows with column, y grows upwards (row 0 = +y)


def _ellipse(x, y, x0, y0, a, b, phi) -> np.ndarray:
    c, s = np.cos(phi), np.sin(phi)
    u = (x - x0) * c + (y - y0) * s
    v = -(x - x0) * s + (y - y0) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _texture(shape, rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """Smooth zero-mean unit-std random field."""
    t = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return (t - t.mean()) / (t.std() + 1e-12)


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    n = img.shape[0] // f
    return img.reshape(n, f, n, f).mean(axis=(1, 3))


def anatomy_phantom(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n) float32 image in 1/mm of a random body-like cross-section."""
    x, y = _grid(n)
    m = n * SUPERSAMPLE
    w = MU_WATER
    img = np.zeros((m, m), np.float64)

    # body outline with a subcutaneous fat layer
    a, b = rng.uniform(0.72, 0.9), rng.uniform(0.5, 0.75)
    phi = rng.uniform(-0.15, 0.15)
    body = _ellipse(x, y, 0, 0, a, b, phi)
    fat = rng.uniform(0.06, 0.14)
    inner = _ellipse(x, y, 0, 0, a * (1 - fat), b * (1 - fat), phi)
    fat_mu = w * rng.uniform(0.88, 0.93)
    img[body] = fat_mu
    tissue = w * rng.uniform(1.035, 1.065)  # muscle-like soft tissue, 35-65 HU (real slices: median ~40 HU)
    img[inner] = tissue

    def point_inside(margin: float) -> tuple[float, float]:
        r, t = np.sqrt(rng.uniform(0, 1)) * (1 - fat - margin), rng.uniform(0, 2 * np.pi)
        u, v = r * a * np.cos(t), r * b * np.sin(t)
        return u * np.cos(phi) - v * np.sin(phi), u * np.sin(phi) + v * np.cos(phi)

    # fat between muscles and around organs: irregular blobs (a smooth random field above a threshold)
    blobs = _texture((m, m), rng, sigma_px=m / rng.uniform(25, 45)) > rng.uniform(0.9, 1.6)
    img[blobs & inner] = fat_mu

    # organs
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = point_inside(0.35)
        organ = _ellipse(x, y, x0, y0, rng.uniform(0.08, 0.3) * a, rng.uniform(0.08, 0.3) * b, rng.uniform(0, np.pi))
        img[organ & inner] = w * rng.uniform(1.02, 1.09)

    # lungs (sometimes): two dark lobes
    if rng.uniform() < 0.3:
        for side in (-1, 1):
            lung = _ellipse(x, y, side * a * rng.uniform(0.4, 0.5), b * rng.uniform(-0.1, 0.15),
                            a * rng.uniform(0.2, 0.27), b * rng.uniform(0.4, 0.55), side * rng.uniform(0, 0.3))
            img[lung & inner] = w * rng.uniform(0.2, 0.3)

    # texture on everything that is tissue (not air, not lung): a smooth field and a fine-grained one
    # (about 1 mm at a 256 mm field; real slices' gradients are dominated by such fine structure)
    soft = (img > 0.5 * w) & inner
    img[soft] += 0.015 * w * rng.uniform(0.5, 1.5) * _texture((m, m), rng, sigma_px=m / rng.uniform(30, 60))[soft]
    fine = _texture((m, m), rng, sigma_px=max(m / 256.0, 0.5))
    img[body] += FINE_TEXTURE_HU / 1000.0 * w * rng.uniform(0.6, 1.4) * fine[body]

    # bone rings: cortex and marrow; one spine-like ring posterior on the midline
    spine = (0.0, -b * (1 - fat) * rng.uniform(0.55, 0.7))
    rings = [spine] + [point_inside(0.3) for _ in range(int(rng.integers(0, 4)))]
    for x0, y0 in rings:
        r = rng.uniform(0.04, 0.1)
        ecc = rng.uniform(0.75, 1.0)
        ang = rng.uniform(0, np.pi)
        outer = _ellipse(x, y, x0, y0, r, r * ecc, ang)
        thick = rng.uniform(0.25, 0.45)
        marrow = _ellipse(x, y, x0, y0, r * (1 - thick), r * ecc * (1 - thick), ang)
        img[outer & inner] = w * rng.uniform(1.6, 2.2)
        img[marrow & inner] = w * rng.uniform(1.05, 1.2)

    # small low-contrast lesions with soft edges, in soft tissue
    lesions = np.zeros_like(img)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = point_inside(0.25)
        r = max(rng.uniform(0.012, 0.04), 3.0 / n)
        disc = _ellipse(x, y, x0, y0, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi))
        lesions[disc] += w * rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 0.05)
    lesions = gaussian_filter(lesions, sigma=max(m / 256.0, 0.5))
    img += lesions * soft

    return np.clip(_block_mean(img, SUPERSAMPLE), 0.0, None).astype(np.float32)
