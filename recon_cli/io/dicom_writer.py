"""Write a reconstruction as a CT Image Storage series: one file per slice, int16 HU.

Patient coordinates (LPS, mm): ImageOrientationPatient = [1,0,0, 0,1,0], so along a stored row
the patient x grows (column j -> x), down the rows the patient y grows (row i -> y = posterior),
and slices k go along +z (slice normal). recon-cli's image row 0 is +y (anterior, the top of the
displayed image), so x_patient = x_ours, y_patient = -y_ours, z_patient = z_ours and no array is
flipped: stored pixel [k, i, j] = volume[k, i, j]. By default the volume is centred on the patient
origin: ImagePositionPatient of slice k = (-(nx-1)/2*dx, -(ny-1)/2*dy, (k-(nz-1)/2)*dz).
``dicom_series.read_series`` reads this mapping back exactly.

HU = 1000 * (mu - mu_water) / mu_water; stored = round((HU - intercept) / slope) clipped to int16.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recon_cli.errors import InputError

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
INT16_MIN, INT16_MAX = -32768, 32767

#: Identity written when the input is not DICOM: clearly anonymous placeholders.
ANONYMOUS_IDENTITY = {
    "PatientName": "ANONYMOUS^RECON-CLI",
    "PatientID": "ANONYMOUS",
    "PatientBirthDate": "",
    "PatientSex": "O",
    "StudyID": "RECON",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "StudyDescription": "recon-cli reconstruction, anonymous (no DICOM source)",
}
#: Identity attributes copied from a DICOM source (see dicom_series.IDENTITY_TAGS) when given.
_COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
           "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
           "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "PositionReferenceIndicator",
           "PatientPosition", "BodyPartExamined")

_MAX_LEN = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "CS": 16}


def dicom_text(text: str, max_len: int) -> str:
    """``text`` as a valid DICOM text value: control characters (newlines, escape codes, which DICOM
    string VRs do not allow and terminals would obey) become spaces, backslashes (value separators)
    slashes; cut to ``max_len`` characters."""
    text = "".join(" " if (ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xA0) else c for c in str(text))
    return text.replace("\\", "/")[:max_len]


def _fit(text: str, vr: str) -> str:
    """Text made valid for the VR and cut to its maximum length (see :func:`dicom_text`)."""
    return dicom_text(text, _MAX_LEN[vr])


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters that reads back as (nearly) ``value``."""
    from pydicom.valuerep import format_number_as_ds

    text = f"{float(value):.12g}"
    return text if len(text) <= 16 else format_number_as_ds(float(value))


def mu_to_hu(mu, mu_water: float) -> np.ndarray:
    """HU = 1000 * (mu - mu_water) / mu_water (float32)."""
    if not mu_water > 0:
        raise InputError(f"must be positive, got {mu_water}", field="mu_water")
    mu = np.asarray(mu, np.float32)
    return (np.float32(1000.0 / mu_water) * (mu - np.float32(mu_water))).astype(np.float32)


def choose_rescale(hu: np.ndarray, slope: float | None = 1.0) -> tuple[float, float]:
    """(slope, intercept) for int16 storage. ``slope=None``: the finest slope (6 significant digits) that
    fits the image's range in int16, intercept at the middle of the range; else intercept 0."""
    if slope is not None:
        if not slope > 0:
            raise InputError(f"must be positive, got {slope}", field="rescale_slope")
        return float(_ds(slope)), 0.0
    lo, hi = float(np.min(hu)), float(np.max(hu))
    intercept = float(round((lo + hi) / 2.0))
    half = max(hi - intercept, intercept - lo, 1e-3)
    raw = half / (INT16_MAX - 1)
    exponent = int(np.floor(np.log10(raw))) - 5
    fine = float(np.ceil(raw / 10.0 ** exponent) * 10.0 ** exponent)
    return float(_ds(fine)), intercept


def quantise(hu: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    """(int16 stored values, number of clipped voxels)."""
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    clipped = int(np.count_nonzero((stored < INT16_MIN) | (stored > INT16_MAX)))
    return np.clip(stored, INT16_MIN, INT16_MAX).astype(np.int16), clipped


def _spacing3(voxel_size) -> tuple[float, float, float]:
    values = np.atleast_1d(np.asarray(voxel_size, float))
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"voxel size must be a positive number or (dz, dy, dx), got {voxel_size!r}",
                         field="voxel_size")
    return float(values[0]), float(values[1]), float(values[2])


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _recon_attributes(ds, recon: dict[str, Any]) -> None:
    """Reconstruction parameters in the CT Image module's standard attributes where they exist, the rest
    as JSON in ImageComments."""
    solver = recon.get("solver")
    if solver:
        ds.ConvolutionKernel = _fit(solver, "SH")  # "label of the convolution kernel or algorithm"
    geometry = recon.get("geometry") or {}
    so, od = geometry.get("source_origin"), geometry.get("origin_detector")
    if so:
        ds.DistanceSourceToPatient = _ds(so)
        if od:
            ds.DistanceSourceToDetector = _ds(float(so) + float(od))
    comments = dict(recon)
    if comments:
        ds.ImageComments = _fit("recon-cli parameters: " + json.dumps(comments, default=str, sort_keys=True), "LT")


def _base_dataset(identity: dict[str, str] | None, *, study_uid: str, series_uid: str, frame_uid: str,
                  series_description: str, series_number: int, spacing: tuple[float, float, float],
                  shape: tuple[int, int, int], slope: float, intercept: float, window: tuple[float, float] | None,
                  recon: dict[str, Any], source_series_uid: str | None):
    """The attributes shared by every slice of the series."""
    from pydicom.dataset import Dataset

    from recon_cli import __version__

    date, time = _now()
    dz, dy, dx = spacing
    nz, ny, nx = shape
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    # SOP Common
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient + General Study: copied from the DICOM source, else anonymous placeholders
    fields = dict(ANONYMOUS_IDENTITY)
    fields.update(StudyDate=date, StudyTime=time)
    if identity:
        fields.update({k: str(v) for k, v in identity.items() if k in _COPIED})
    for name, value in fields.items():
        if name in ("PatientSize", "PatientWeight") and value in ("", None):
            continue
        setattr(ds, name, value)
    ds.StudyInstanceUID = study_uid
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = _fit(series_description or "recon-cli reconstruction", "LO")
    ds.Laterality = ""  # Type 2C: unknown here; a paired body part has no single laterality in an axial slab
    if "PatientPosition" not in ds or not ds.PatientPosition:
        ds.PatientPosition = "HFS"
    # Frame of Reference
    ds.FrameOfReferenceUID = frame_uid
    if "PositionReferenceIndicator" not in ds:
        ds.PositionReferenceIndicator = ""
    # General Equipment (the equipment that made this derived series)
    ds.Manufacturer = "recon-cli"
    ds.ManufacturerModelName = "recon-cli"
    ds.SoftwareVersions = __version__
    # General Image / CT Image
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionNumber = 1
    ds.KVP = ""
    derivation = f"Reconstructed by recon-cli {__version__}"
    if recon.get("solver"):
        derivation += f" with solver {recon['solver']}"
    if source_series_uid:
        derivation += f" from series {source_series_uid}"
    ds.DerivationDescription = _fit(derivation, "ST")
    ds.BurnedInAnnotation = "NO"
    # Image Plane
    ds.PixelSpacing = [_ds(dy), _ds(dx)]
    ds.ImageOrientationPatient = [_ds(v) for v in AXIAL]
    ds.SliceThickness = _ds(dz)
    if nz > 1:
        ds.SpacingBetweenSlices = _ds(dz)
    ds.ReconstructionDiameter = _ds(max(nx * dx, ny * dy))
    # Image Pixel: int16 greyscale
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
        ds.WindowCenterWidthExplanation = "recon-cli window"
    _recon_attributes(ds, recon)
    return ds


def check_safe_to_replace(target: Path) -> None:
    """With overwrite, only a folder of .dcm files (an earlier output) may be replaced."""
    if target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder; a DICOM series is written as a folder", file=str(target))
    if target.is_dir():
        others = [p for p in target.iterdir() if not (p.is_file() and p.suffix.lower() == ".dcm")]
        if others:
            raise InputError(f"exists and holds other things than .dcm files (e.g. {others[0].name}); "
                             "not replacing it", file=str(target))


def write_series_hu(path, hu, voxel_size, *, series_description: str = "recon-cli reconstruction",
                    identity: dict[str, str] | None = None, recon: dict[str, Any] | None = None,
                    origin: Sequence[float] | None = None, rescale_slope: float | None = 1.0,
                    window: tuple[float, float] | None = (40.0, 400.0), series_number: int = 1001,
                    source_series_uid: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``hu`` ((nz, ny, nx) or (ny, nx), HU) as a folder ``path`` of CT Image files CT000001.dcm, ...

    voxel_size: mm, one number or (dz, dy, dx). identity: patient/study attributes from a DICOM source
    (``DicomSeries.identity``); its StudyInstanceUID is kept (the series joins the source's study), else a
    new study with anonymous placeholders. origin: ImagePositionPatient of the first slice (mm); default
    centred on the patient origin; the source's FrameOfReferenceUID is kept only when origin is given.
    recon: reconstruction facts (solver, geometry attrs, parameters) for ConvolutionKernel,
    DistanceSourceToDetector/Patient and ImageComments. rescale_slope: 1 (integer HU) or None (the finest
    slope that fits the range). Written atomically; an existing folder is replaced only with ``overwrite``.
    Returns the final file paths in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    from recon_cli.io.atomic import atomic_path

    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"expected an image (ny, nx) or a volume (nz, ny, nx), got shape {list(hu.shape)}",
                         field="volume")
    if not np.all(np.isfinite(hu)):
        raise InputError("the volume has NaN or infinite values", field="volume")
    spacing = _spacing3(voxel_size)
    dz, dy, dx = spacing
    nz, ny, nx = hu.shape
    slope, intercept = choose_rescale(hu, rescale_slope)
    stored, clipped = quantise(hu, slope, intercept)
    if clipped:
        log.warning("%d voxels outside the int16 range of HU were clipped (slope %g)", clipped, slope)
    identity = dict(identity or {})
    study_uid = identity.get("StudyInstanceUID") or generate_uid()
    frame_uid = identity.get("FrameOfReferenceUID") if origin is not None else None
    frame_uid = frame_uid or generate_uid()
    series_uid = generate_uid()
    row, col = np.array(AXIAL[:3]), np.array(AXIAL[3:])
    normal = np.cross(row, col)
    if origin is None:
        first = -(nx - 1) / 2 * dx * row - (ny - 1) / 2 * dy * col - (nz - 1) / 2 * dz * normal
    else:
        first = np.asarray(origin, float).reshape(3)
    base = _base_dataset(identity, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                         series_description=series_description, series_number=int(series_number),
                         spacing=spacing, shape=(nz, ny, nx), slope=slope, intercept=intercept, window=window,
                         recon=dict(recon or {}), source_series_uid=source_series_uid)
    target = Path(path)
    if overwrite:
        check_safe_to_replace(target)
    names = [f"CT{k + 1:06d}.dcm" for k in range(nz)]
    with atomic_path(target, overwrite=overwrite) as tmp:
        tmp.mkdir()
        for k in range(nz):
            ds = base.copy()
            sop_uid = generate_uid()
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            position = first + k * dz * normal
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.SliceLocation = _ds(float(position @ normal))
            ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = f"RECONCLI_{_version_tag()}"[:16]
            ds.file_meta = meta
            ds.preamble = b"\0" * 128
            pydicom.dcmwrite(tmp / names[k], ds, enforce_file_format=True)
    log.info("wrote DICOM series %s: %d slices, slope %g, intercept %g", target, nz, slope, intercept)
    return [target / name for name in names]


def write_series(path, volume, voxel_size, *, mu_water: float = 0.0192, **kwargs) -> list[Path]:
    """Write a reconstruction in 1/mm ((nz, ny, nx) or (ny, nx)) as HU; see :func:`write_series_hu`."""
    return write_series_hu(path, mu_to_hu(volume, mu_water), voxel_size, **kwargs)


def _version_tag() -> str:
    from recon_cli import __version__

    return __version__.replace(".", "")


__all__ = ["write_series", "write_series_hu", "mu_to_hu", "choose_rescale", "quantise", "ANONYMOUS_IDENTITY"]
