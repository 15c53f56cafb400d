"""Read an image (a reconstruction, a reference or a mask) from any readable image file, in 1/mm.

:func:`read_any_image` takes what `recon` reads and writes as images: HDF5 (``/reconstruction``,
``/reference`` or ``/image``, recon_cli.io.hdf5.read_image), a DICOM CT series (a folder or one
file; HU converted to 1/mm with ``mu_water``, as a DICOM pipeline input), TIFF and NIfTI
(recon_cli.io.tiff_nifti). The format is found by content (recon_cli.io.formats.detect_format).
"""
from __future__ import annotations

import math

import numpy as np

from recon_cli.errors import InputError

#: What :func:`read_any_image` reads, for messages.
IMAGE_FORMATS = "HDF5 (/reconstruction, /reference or /image), a DICOM CT series (folder or file), TIFF, NIfTI"


def read_any_image(path, mu_water: float = 0.0192) -> tuple[np.ndarray, float]:
    """(image float32 (ny, nx) or (nz, ny, nx) in 1/mm, voxel size mm) of the image at ``path``.

    A DICOM series (HU) becomes 1/mm as ``mu_water * (1 + HU / 1000)`` clipped at 0; a stack of one
    slice (DICOM, TIFF, NIfTI) is returned as a 2-D image. InputError for projections or other files.
    """
    from recon_cli.io.formats import detect_format

    path = str(path)
    kind = detect_format(path)
    if kind in ("hdf5", "nxtomo", "dxchange"):
        from recon_cli.io.hdf5 import read_image

        image, voxel = read_image(path)
    elif kind == "dicom":
        from recon_cli.io.dicom_series import read_series_mu

        image, series = read_series_mu(path, mu_water=mu_water)
        voxel = series.voxel_size()
    elif kind == "tiff":
        from recon_cli.io.tiff_nifti import read_tiff

        image, voxel = read_tiff(path)
    elif kind == "nifti":
        from recon_cli.io.tiff_nifti import read_nifti

        image, voxel = read_nifti(path)
    else:
        raise InputError(f"holds {kind} projections, not an image; expected {IMAGE_FORMATS}", file=path)
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim not in (2, 3):
        raise InputError(f"must be an image (ny, nx) or a stack (nz, ny, nx), got shape {list(image.shape)}",
                         file=path)
    if not np.isfinite(image).all():
        raise InputError("holds values that are not finite (NaN or infinite)", file=path)
    if not (math.isfinite(voxel) and voxel > 0):
        raise InputError(f"voxel size must be a positive number of mm, got {voxel}", file=path)
    return image, float(voxel)


def fit_shape(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``image`` with the shape ``shape`` when they differ only by axes of length 1, else None."""
    if tuple(image.shape) == tuple(shape):
        return image
    squeeze = lambda s: tuple(n for n in s if n != 1)  # noqa: E731
    return image.reshape(shape) if squeeze(image.shape) == squeeze(shape) else None


__all__ = ["read_any_image", "fit_shape", "IMAGE_FORMATS"]
