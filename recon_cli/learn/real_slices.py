"""Real CT slices as training images: located by name, guarded, augmented per training pair.

The project may train on three real slices shipped by pydicom and pydicom-data (neck
``bad_sequence.dcm``, abdomen ``explicit_VR-UN.dcm``, head ``CT_small.dcm``); the files reserved for
acceptance tests (recon_cli.learn.config.RESERVED_IMAGE_PATTERNS, kept as digests, and their contents'
digests) are refused here, by name or as renamed copies.

Augmentation (:func:`augment_slice`): one random affine map (rotation, flips, zoom, shift of the
field of view) composed with a smooth random elastic displacement, applied by one linear
interpolation (scipy.ndimage.map_coordinates) onto the training field of view; then contrast
(HU scaled about water) and a soft clipping of the densest values (a window change). Air stays 0.
Slices cut by their own border (neck, head crops) are given an elliptical outline first.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from recon_cli.errors import InputError
from recon_cli.learn.config import Augment, reserved_content, reserved_name
from recon_cli.phantoms import MU_WATER


def refuse_reserved(path: str | Path, field: str = "data.sources") -> None:
    """InputError if ``path`` names a file reserved for acceptance tests, or is a copy of one."""
    pattern = reserved_name(str(path)) or ("its contents" if reserved_content(path) else None)
    if pattern is not None:
        raise InputError(f"reserved for acceptance tests ({pattern}): never a training source",
                         file=str(path), field=field)


def locate(name: str) -> Path:
    """The local file of a pydicom / pydicom-data test file (never downloads)."""
    refuse_reserved(name, "data.sources.names")
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if not found:
        raise InputError("pydicom test file not found locally; install pydicom-data "
                         "(pip install 'recon-ct-cli[train]')", file=name, field="data.sources.names")
    refuse_reserved(found, "data.sources.names")
    return Path(found)


@functools.lru_cache(maxsize=16)
def load_slice(path: str) -> tuple[np.ndarray, float]:
    """(mu (ny, nx) float32 in 1/mm, pixel size mm) of a CT slice file (cached per process)."""
    refuse_reserved(path)
    import warnings

    from recon_cli.io.dicom_image import read_ct_slice_mu

    with warnings.catch_warnings():  # pydicom warns about non-conformant UIDs in these test files
        warnings.simplefilter("ignore", UserWarning)
        mu, spacing = read_ct_slice_mu(path)
    mu.setflags(write=False)
    return mu, float(spacing)


#: fill: largest magnification of a slice to fill the field of view (else the whole slice is placed in it).
FILL_MAX_ZOOM = 2.0
#: A slice whose border is tissue (above half of water) over more than this fraction is truncated.
TRUNCATED_BORDER = 0.05


def close_truncated_body(mu: np.ndarray) -> np.ndarray:
    """``mu`` itself, or for a slice cut by its own border (a field of view smaller than the body):
    ``mu`` inside the inscribed ellipse, fading to air over 3 pixels, so the object has a body outline
    instead of straight cut edges."""
    border = np.concatenate([mu[0], mu[-1], mu[:, 0], mu[:, -1]])
    if np.mean(border > 0.5 * MU_WATER) <= TRUNCATED_BORDER:
        return mu
    ny, nx = mu.shape
    v = (np.arange(ny) + 0.5 - ny / 2) / (ny / 2 - 1)
    u = (np.arange(nx) + 0.5 - nx / 2) / (nx / 2 - 1)
    r = np.sqrt(v[:, None] ** 2 + u[None, :] ** 2)  # 1 on the inscribed ellipse
    edge_px = 3.0
    fade = np.clip((1.0 - r) * min(ny, nx) / 2 / edge_px, 0.0, 1.0)
    return (mu * fade).astype(np.float32)


def augment_slice(mu: np.ndarray, spacing: float, n: int, voxel: float, aug: Augment,
                  rng: np.random.Generator) -> np.ndarray:
    """(n, n) float32 image in 1/mm of pixel ``voxel`` mm: ``mu`` (pixel ``spacing`` mm) randomly transformed.

    A slice larger than the field of view n * voxel is first shrunk to fit it (a smaller patient); a
    slice whose body is cut by its border gets an elliptical outline first (:func:`close_truncated_body`).
    """
    fill = aug.fill > 0 and rng.uniform() < aug.fill  # no draw when off: the same images as before fill existed
    ny, nx = mu.shape
    fov = n * voxel
    side = min(ny, nx) * spacing
    fill = fill and fov <= FILL_MAX_ZOOM * side  # a field much larger than the slice cannot be filled by it
    mu = np.asarray(mu, np.float32) if fill else close_truncated_body(np.asarray(mu, np.float32))
    scale = float(np.exp(rng.uniform(np.log(aug.scale[0]), np.log(aug.scale[1])))) if aug.scale else 1.0
    if fill:  # a square region of the slice at about its own scale fills the field (tissue up to the edges)
        zoom = max(scale, fov / side)
    else:  # the whole slice, shrunk into the field if larger
        zoom = min(1.0, 0.95 * fov / (max(ny, nx) * spacing)) * scale
    theta = rng.uniform(0, 2 * np.pi) if aug.rotate else 0.0
    flip_x = -1.0 if aug.flip and rng.uniform() < 0.5 else 1.0
    flip_y = -1.0 if aug.flip and rng.uniform() < 0.5 else 1.0
    if fill:  # the region's centre anywhere that keeps the turned square inside the slice (field mm)
        room = max(0.0, side / 2 - fov / zoom / np.sqrt(2.0))
        shift = rng.uniform(-room, room, size=2) * zoom
    else:
        shift = rng.uniform(-0.15, 0.15, size=2) * fov if aug.crop else np.zeros(2)
    # output pixel centres in mm (row 0 = +y), centred on the rotation axis
    c = (np.arange(n) + 0.5 - n / 2) * voxel
    yy, xx = np.meshgrid(-c, c, indexing="ij")
    if aug.elastic > 0:
        sigma_px = aug.elastic_scale / voxel
        for grid in (yy, xx):
            field = gaussian_filter(rng.standard_normal((n, n)), sigma_px, mode="wrap")
            field *= aug.elastic / (field.std() + 1e-12)
            grid += field
    # output mm -> object mm: undo the shift, rotation, zoom and flips
    u, v = xx - shift[1], yy - shift[0]
    cos, sin = np.cos(theta), np.sin(theta)
    x_obj = (cos * u + sin * v) / zoom * flip_x
    y_obj = (-sin * u + cos * v) / zoom * flip_y
    rows = (ny / 2 - 0.5) - y_obj / spacing  # row 0 of the file = +y
    cols = (nx / 2 - 0.5) + x_obj / spacing
    ratio = voxel / (spacing * zoom)  # input pixels per output pixel
    src = gaussian_filter(mu, 0.5 * np.sqrt(ratio**2 - 1.0)) if ratio > 1.0 else mu  # against aliasing
    out = np.clip(map_coordinates(src, [rows, cols], order=1, mode="constant", cval=0.0), 0.0, None)
    if aug.intensity > 0:  # contrast about water: HU * (1 + d)
        d = rng.uniform(-aug.intensity, aug.intensity)
        body = out > 0.3 * MU_WATER
        out[body] = MU_WATER + (out[body] - MU_WATER) * (1.0 + d)
    if aug.window > 0:  # soft clipping of the densest values above a random level
        top = float(out.max())
        if top > 1.2 * MU_WATER:
            level = top - rng.uniform(0, aug.window) * (top - MU_WATER)
            above = out > level
            out[above] = level + (out[above] - level) * 0.5
    return np.clip(out, 0.0, None).astype(np.float32)
