"""One CT image slice from a DICOM file, in Hounsfield units or (:func:`read_ct_slice_mu`) in 1/mm.

HU <-> 1/mm: recon_cli.hounsfield (hu_to_mu and mu_to_hu are re-exported here).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon_cli.constants import MU_WATER  # 1/mm
from recon_cli.errors import InputError
from recon_cli.hounsfield import hu_to_mu, mu_to_hu  # noqa: F401  (re-exported)

#: Hounsfield value given to pixels equal to the file's PixelPaddingValue (outside the scan circle).
HU_AIR = -1000.0


def _required(ds, name: str, file: str):
    value = ds.get(name)
    if value is None or value == "":
        raise InputError("missing DICOM tag", file=file, field=name)
    return value


def read_ct_slice(path) -> tuple[np.ndarray, float]:
    """Read a single-frame CT slice: (hu (rows, cols) float32, pixel spacing in mm).

    HU = stored value * RescaleSlope + RescaleIntercept; pixels equal to PixelPaddingValue
    become air (-1000 HU). Row 0 is the first stored row (the top of the displayed image).
    Raises InputError for unreadable files, non-CT modalities, missing or non-square
    PixelSpacing, multi-frame or colour images.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    file = str(path)
    if not Path(file).is_file():
        raise InputError("no such file", file=file)
    try:
        ds = pydicom.dcmread(file)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(f"not a readable DICOM file ({exc})", file=file) from None
    from recon_cli.logging_setup import register_dicom_phi

    register_dicom_phi(ds)  # patient identifiers never reach the logs
    from recon_cli.io.dicom_series import check_header_values

    check_header_values(file, ds)
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        raise InputError(f"expected a CT image, found modality {modality or 'none'!r}", file=file, field="Modality")
    if "PixelData" not in ds:
        raise InputError("no pixel data", file=file, field="PixelData")
    if _single_number(ds.get("NumberOfFrames") or 1, file, "NumberOfFrames") != 1:
        raise InputError("multi-frame images are not supported; give one slice", file=file, field="NumberOfFrames")
    if _single_number(ds.get("SamplesPerPixel", 1), file, "SamplesPerPixel") != 1:
        raise InputError("expected a greyscale image", file=file, field="SamplesPerPixel")
    from recon_cli.io.dicom_series import check_image_size

    check_image_size(file, int(_single_number(_required(ds, "Rows", file), file, "Rows")),
                     int(_single_number(_required(ds, "Columns", file), file, "Columns")))
    spacing = _required(ds, "PixelSpacing", file)
    try:
        dy, dx = (float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(f"expected two numbers, got {spacing!r}", file=file, field="PixelSpacing") from None
    if not (dx > 0 and dy > 0):
        raise InputError(f"must be positive, got {[dy, dx]}", file=file, field="PixelSpacing")
    if abs(dx - dy) > 1e-3 * max(dx, dy):
        raise InputError(f"non-square pixels {[dy, dx]} mm are not supported", file=file, field="PixelSpacing")
    slope = _single_number(_required(ds, "RescaleSlope", file), file, "RescaleSlope")
    intercept = _single_number(_required(ds, "RescaleIntercept", file), file, "RescaleIntercept")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # missing decoder, truncated data, ...
        raise InputError(f"cannot decode pixel data ({exc})", file=file, field="PixelData") from None
    if stored.ndim != 2:
        raise InputError(f"expected a 2D slice, got shape {stored.shape}", file=file, field="PixelData")
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        hu[stored == _single_number(padding, file, "PixelPaddingValue")] = HU_AIR
    return hu, float(dx)


def _single_number(value, file: str, name: str) -> float:
    """One finite number from a DICOM value (a number or numeric text); InputError naming the tag otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"expected one number, got {value!r}", file=file, field=name) from None
    if not np.isfinite(number):
        raise InputError(f"expected a finite number, got {value!r}", file=file, field=name)
    return number


def read_ct_slice_mu(path, mu_water: float = MU_WATER) -> tuple[np.ndarray, float]:
    """A CT slice as linear attenuation: (mu (rows, cols) float32 in 1/mm, clipped at 0, pixel spacing mm)."""
    hu, spacing = read_ct_slice(path)
    return np.clip(hu_to_mu(hu, mu_water), 0.0, None).astype(np.float32), spacing
