"""PNG previews: 8-bit grayscale, row 0 (+y) at the top, written atomically."""
from __future__ import annotations

import numpy as np

from recon_cli.backend import to_numpy
from recon_cli.errors import InputError
from recon_cli.io.atomic import atomic_path
from recon_cli.metrics import MU_WATER, to_hu


def to_uint8(image2d: np.ndarray, window: tuple[float, float] | None = None,
             mu_water: float = MU_WATER) -> np.ndarray:
    """(ny, nx) image in 1/mm -> uint8 gray levels.

    ``window=(center_HU, width_HU)``: HU in [center - width/2, center + width/2] maps to
    0..255 (clipped). Without a window: min-max scaling (a constant image gives 0).
    NaN maps to 0.
    """
    img = np.asarray(image2d, dtype=np.float64)
    if window is not None:
        center, width = float(window[0]), float(window[1])
        if not width > 0:
            raise InputError(f"window width must be positive, got {width}", field="window")
        scaled = (to_hu(img, mu_water) - (center - width / 2)) / width
    else:
        finite = img[np.isfinite(img)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(path, image2d, window: tuple[float, float] | None = None, mu_water: float = MU_WATER,
              *, overwrite: bool = False) -> None:
    """Write an image (ny, nx) in 1/mm, or the middle slice of a stack (nz, ny, nx), as an 8-bit PNG."""
    from PIL import Image

    img = to_numpy(image2d)
    if img.ndim == 3:
        img = img[img.shape[0] // 2]
    if img.ndim != 2:
        raise InputError(f"PNG needs a 2-D image or a 3-D stack, got shape {list(img.shape)}", file=str(path))
    gray = to_uint8(img, window, mu_water)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(gray).save(tmp, format="PNG")


def write_contact_sheet(path, tiles, *, column_labels, row_labels, tile_size: int = 160) -> None:
    """A grid of images as one 8-bit PNG: ``tiles[row][col]`` (ny, nx) arrays in 1/mm or None (left blank),
    each scaled to ``tile_size`` pixels, one grey scale (min..max) per row so values compare along it.
    Each row is headed by ``row_labels[row]``, each tile captioned with ``column_labels[col]`` (one line per
    comma-separated part). Written atomically (replaced)."""
    from PIL import Image, ImageDraw

    line, gap = 12, 4
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    caption = line * max(1, max(len(str(c).split(",")) for c in column_labels))
    row_height = line + caption + tile_size + gap
    sheet = Image.new("L", (n_cols * (tile_size + gap) + gap, n_rows * row_height + gap), 32)
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(tiles):
        top = gap + i * row_height
        draw.text((gap, top), str(row_labels[i]), fill=255)
        present = [np.asarray(to_numpy(t), np.float64) for t in row if t is not None]
        finite = np.concatenate([t[np.isfinite(t)].ravel() for t in present]) if present else np.zeros(0)
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        for j, tile in enumerate(row):
            x, y = gap + j * (tile_size + gap), top + line
            label = str(column_labels[j]) if j < len(column_labels) else ""
            for k, part in enumerate(label.split(",")):
                draw.text((x + 1, y + k * line), part, fill=200)
            if tile is None:
                continue
            img = np.asarray(to_numpy(tile), np.float64)
            scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            gray = np.rint(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255.0).astype(np.uint8)
            picture = Image.fromarray(gray).resize((tile_size, tile_size), Image.Resampling.BILINEAR)
            sheet.paste(picture, (x, y + caption))
    with atomic_path(path, overwrite=True) as tmp:
        sheet.save(tmp, format="PNG")
