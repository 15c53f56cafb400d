"""DICOM-CT-PD projection data (Mayo Clinic / TCIA "LDCT-and-Projection-data"): reader and writer.

One DICOM file per view in a folder. Geometry lives in private tags (DICOM-CT-PD User Manual;
Chen et al., Med. Phys. 42(12), 2015). Tags, VRs and meanings used here:

    (7029,1010) US NumberofDetectorRows           (7029,1011) US NumberofDetectorColumns
    (7029,1002) FL DetectorElementTransverseSpacing (mm, measured at the detector)
    (7029,1006) FL DetectorElementAxialSpacing      (mm, measured at the detector)
    (7029,100B) CS DetectorShape                    CYLINDRICAL | FLAT (SPHERICAL refused)
    (7031,1001) FL DetectorFocalCenterAngularPosition  phi0 (rad)
    (7031,1002) FL DetectorFocalCenterAxialPosition    z0 (mm)
    (7031,1003) FL DetectorFocalCenterRadialDistance   rho0: focal centre to isocentre (mm)
    (7031,1031) FL ConstantRadialDistance              d0: focal centre to detector (mm)
    (7031,1033) FL DetectorCentralElement (column, row), 1-based, the element on the ray through
                   the focal centre and the isocentre (may be fractional: quarter offset)
    (7033,100B/C/D) FL SourceAngularPositionShift / SourceAxialPositionShift / SourceRadialDistanceShift
    (7033,100E) CS FlyingFocalSpotMode  FFSNONE | FFSZ | FFSXY | FFSXYZ
    (7033,1013) US NumberofSourceAngularSteps (views per rotation)
    (7037,1009) CS TypeofProjectionData AXIAL | HELICAL   (7037,100A) CS TypeofProjectionGeometry
    (7041,1001) DS WaterAttenuationCoefficient (1/mm)
    Pixel data: uint16, line integrals = stored * RescaleSlope + RescaleIntercept (dimensionless);
    image Rows = detector columns (channels), image Columns = detector rows (the TCIA layout; the
    transposed layout Rows = detector rows is also read).

Private creator elements (7029,0010) ... (7041,0010) are written with the manual's module names;
the reader looks tags up by number and also decodes values stored as raw bytes (implicit VR files
read without a private dictionary).

Conventions (ours, stated because the manual's figures are not reproduced here): the focal
centre of a view sits at rho0 (cos phi0, sin phi0) in the image plane, x to the right and y up
(recon-cli's image axes, row 0 = +y); detector column index grows in the direction of increasing
phi (counter-clockwise). In ASTRA's fan-beam convention (source at SO (sin b, -cos b)) this is
the view angle b = phi0 + pi / 2 and ASTRA's detector u direction, so no mirroring is needed.
Real scanner data may use the opposite channel direction; check a known image before trusting
left-right orientation on real data.

Reading (axial scans only): one detector row (default: the row nearest the central element)
becomes a fan-beam sinogram; a cylindrical detector is rebinned to a centred flat detector at the
same distance d0 (linear interpolation in the fan angle; :func:`recon_cli.preprocess.arc_to_flat`)
so that ASTRA ``fanflat`` applies; rows off the central plane get the path-length weight
d0 / sqrt(d0^2 + v^2) (single-slice approximation). Helical scans (z0 varying) and any flying
focal spot (non-zero shifts or a mode other than FFSNONE) are refused with a clear message.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recon_cli.errors import InputError
from recon_cli.geometry import FanFlat2D, VolumeGrid
from recon_cli.io.atomic import atomic_path
from recon_cli.preprocess import arc_to_flat, flat_detector_for_arc
from recon_cli.sinogram import Sinogram

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: group -> private creator written in (gggg,0010).
PRIVATE_CREATORS = {
    0x7029: "DetectorSystemArrangementModule",
    0x7031: "DetectorDynamicsModule",
    0x7033: "SourceDynamicsModule",
    0x7037: "ProjectionDataDefinitions",
    0x7041: "WaterAttenuationModule",
}
#: keyword -> (group, element, VR, VM) of the private tags (element includes the 0x10 block).
TAGS = {
    "NumberofDetectorRows": (0x7029, 0x1010, "US", 1),
    "NumberofDetectorColumns": (0x7029, 0x1011, "US", 1),
    "DetectorElementTransverseSpacing": (0x7029, 0x1002, "FL", 1),
    "DetectorElementAxialSpacing": (0x7029, 0x1006, "FL", 1),
    "DetectorShape": (0x7029, 0x100B, "CS", 1),
    "DetectorFocalCenterAngularPosition": (0x7031, 0x1001, "FL", 1),
    "DetectorFocalCenterAxialPosition": (0x7031, 0x1002, "FL", 1),
    "DetectorFocalCenterRadialDistance": (0x7031, 0x1003, "FL", 1),
    "ConstantRadialDistance": (0x7031, 0x1031, "FL", 1),
    "DetectorCentralElement": (0x7031, 0x1033, "FL", 2),
    "SourceAngularPositionShift": (0x7033, 0x100B, "FL", 1),
    "SourceAxialPositionShift": (0x7033, 0x100C, "FL", 1),
    "SourceRadialDistanceShift": (0x7033, 0x100D, "FL", 1),
    "FlyingFocalSpotMode": (0x7033, 0x100E, "CS", 1),
    "NumberofSourceAngularSteps": (0x7033, 0x1013, "US", 1),
    "TypeofProjectionData": (0x7037, 0x1009, "CS", 1),
    "TypeofProjectionGeometry": (0x7037, 0x100A, "CS", 1),
    "WaterAttenuationCoefficient": (0x7041, 0x1001, "DS", 1),
}
_FFS_TAGS = ("SourceAngularPositionShift", "SourceAxialPositionShift", "SourceRadialDistanceShift")
_REQUIRED = ("NumberofDetectorRows", "NumberofDetectorColumns", "DetectorElementTransverseSpacing",
             "DetectorElementAxialSpacing", "DetectorFocalCenterAngularPosition", "DetectorFocalCenterAxialPosition",
             "DetectorFocalCenterRadialDistance", "ConstantRadialDistance", "DetectorCentralElement")
#: Tolerances: axial positions (mm) within which a scan is axial; radial distances (mm) that must agree.
AXIAL_TOL_MM = 1e-3
RADIAL_TOL_MM = 1e-3
#: Patient identifiers hidden by describe_ctpd unless show_phi (H10's list when available).
try:
    from recon_cli.io.dicom_series import ACQUISITION_TAGS, PHI_TAGS
except ImportError:  # pragma: no cover - dicom_series is part of the package
    PHI_TAGS = frozenset({"PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
                          "InstitutionName", "ReferringPhysicianName", "StudyDate", "StudyID"})
    ACQUISITION_TAGS = ("Manufacturer", "ManufacturerModelName", "KVP", "XRayTubeCurrent", "ExposureTime",
                        "Exposure", "CTDIvol")


@dataclass
class CTPDScan:
    """A DICOM-CT-PD acquisition held in memory.

    ``data``: (n_views, n_rows, n_cols) float32 line integrals (dimensionless); per view
    ``phi`` (rad), ``z`` (mm), ``rho`` (mm, focal centre to isocentre), ``ffs`` (n_views, 3) shifts
    (d_phi rad, d_z mm, d_rho mm). Detector: ``col_spacing``/``row_spacing`` mm at the detector,
    ``source_detector`` d0 mm, ``central_element`` (column, row) 1-based, ``shape`` CYLINDRICAL|FLAT.
    """

    data: np.ndarray
    phi: np.ndarray
    z: np.ndarray
    rho: np.ndarray
    col_spacing: float
    row_spacing: float
    source_detector: float
    central_element: tuple[float, float]
    shape: str = "CYLINDRICAL"
    ffs: np.ndarray | None = None
    ffs_mode: str = "FFSNONE"
    mu_water: float = 0.0192
    views_per_rotation: int | None = None
    scan_type: str = "AXIAL"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_views(self) -> int:
        return int(self.data.shape[0])

    @property
    def col_step(self) -> float:
        """Column pitch: radians of fan angle (cylindrical) or mm at the detector (flat)."""
        return self.col_spacing / self.source_detector if self.shape == "CYLINDRICAL" else self.col_spacing


# ----------------------------------------------------------------------------- writer


def _ds_text(value: float) -> str:
    """A float as a DICOM DS string (<= 16 characters) whose float() is used for the pixel values."""
    text = f"{value:.8e}" if value != 0 else "0"
    return text


def _quantise(view: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(uint16 pixels, slope, intercept) with pixels * slope + intercept ~ view (error <= slope / 2)."""
    lo, hi = float(view.min()), float(view.max())
    intercept = float(_ds_text(lo))
    slope = float(_ds_text((hi - intercept) / 65535.0)) if hi > intercept else 1.0
    while slope > 0 and (hi - intercept) / slope > 65535.0:  # the rounded slope may be a hair too small
        slope = float(_ds_text(slope * (1 + 1e-7)))
    pixels = np.rint((view.astype(np.float64) - intercept) / slope)
    return np.clip(pixels, 0, 65535).astype(np.uint16), slope, intercept


def _check_scan(scan: CTPDScan) -> None:
    data = np.asarray(scan.data)
    if data.ndim != 3 or min(data.shape) < 1:
        raise InputError(f"projections must be (n_views, n_rows, n_cols), got shape {list(data.shape)}")
    if not np.all(np.isfinite(data)):
        raise InputError("projections contain NaN or Inf")
    n = data.shape[0]
    for name in ("phi", "z", "rho"):
        if np.asarray(getattr(scan, name)).shape != (n,):
            raise InputError(f"{name} must have one value per view ({n})")
    if scan.ffs is not None and np.asarray(scan.ffs).shape != (n, 3):
        raise InputError(f"ffs shifts must be (n_views, 3), got {list(np.asarray(scan.ffs).shape)}")
    if scan.shape not in ("CYLINDRICAL", "FLAT"):
        raise InputError(f"detector shape must be CYLINDRICAL or FLAT, got {scan.shape!r}")
    if max(data.shape[1:]) > 65535:
        raise InputError("detector larger than 65535 elements")


def _private(ds, keyword: str, value) -> None:
    group, element, vr, _ = TAGS[keyword]
    block = ds.private_block(group, PRIVATE_CREATORS[group], create=True)
    block.add_new(element & 0xFF, vr, value)


def _dataset_for_view(scan: CTPDScan, i: int, uids: dict[str, str], description: str):
    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    sop_uid = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "recon-cli"
    ds.SeriesDescription = description
    ds.PatientName = "ANONYMOUS^SIMULATED"
    ds.PatientID = "SIMULATED"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = uids["date"]
    ds.StudyTime = uids["time"]
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = i + 1
    view = np.asarray(scan.data[i], dtype=np.float32)  # (n_rows, n_cols)
    pixels, slope, intercept = _quantise(view)
    stored = np.ascontiguousarray(pixels.T)  # image Rows = detector columns
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = _ds_text(slope)
    ds.RescaleIntercept = _ds_text(intercept)
    ds.RescaleType = "US"
    ds.PixelData = stored.astype("<u2").tobytes()
    n_views, n_rows, n_cols = scan.data.shape
    ffs = np.zeros(3) if scan.ffs is None else np.asarray(scan.ffs, dtype=np.float64)[i]
    _private(ds, "NumberofDetectorRows", int(n_rows))
    _private(ds, "NumberofDetectorColumns", int(n_cols))
    _private(ds, "DetectorElementTransverseSpacing", float(scan.col_spacing))
    _private(ds, "DetectorElementAxialSpacing", float(scan.row_spacing))
    _private(ds, "DetectorShape", scan.shape)
    _private(ds, "DetectorFocalCenterAngularPosition", float(scan.phi[i]))
    _private(ds, "DetectorFocalCenterAxialPosition", float(scan.z[i]))
    _private(ds, "DetectorFocalCenterRadialDistance", float(scan.rho[i]))
    _private(ds, "ConstantRadialDistance", float(scan.source_detector))
    _private(ds, "DetectorCentralElement", [float(scan.central_element[0]), float(scan.central_element[1])])
    _private(ds, "SourceAngularPositionShift", float(ffs[0]))
    _private(ds, "SourceAxialPositionShift", float(ffs[1]))
    _private(ds, "SourceRadialDistanceShift", float(ffs[2]))
    _private(ds, "FlyingFocalSpotMode", scan.ffs_mode)
    _private(ds, "NumberofSourceAngularSteps", int(scan.views_per_rotation or n_views))
    _private(ds, "TypeofProjectionData", scan.scan_type)
    _private(ds, "TypeofProjectionGeometry", "FANBEAM")
    _private(ds, "WaterAttenuationCoefficient", _ds_text(float(scan.mu_water)))
    return ds


def write_ctpd(folder, scan: CTPDScan, *, overwrite: bool = False, implicit_vr: bool = False,
               description: str = "recon-cli simulated projections") -> list[Path]:
    """Write ``scan`` as a DICOM-CT-PD folder, one file per view (``000001.dcm`` ...), atomically.

    Explicit VR little endian by default (``implicit_vr``: implicit VR little endian, as some
    archives store it). Identity tags are anonymous placeholders. Returns the file paths.
    """
    import pydicom.uid

    _check_scan(scan)
    now = _dt.datetime.now()
    uids = {"study": pydicom.uid.generate_uid(), "series": pydicom.uid.generate_uid(),
            "frame": pydicom.uid.generate_uid(), "date": now.strftime("%Y%m%d"), "time": now.strftime("%H%M%S")}
    syntax = pydicom.uid.ImplicitVRLittleEndian if implicit_vr else pydicom.uid.ExplicitVRLittleEndian
    folder = Path(folder)
    names = [f"{i + 1:06d}.dcm" for i in range(scan.n_views)]
    with atomic_path(folder, overwrite=overwrite) as tmp:
        tmp.mkdir()
        for i, name in enumerate(names):
            ds = _dataset_for_view(scan, i, uids, description)
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(tmp / name, enforce_file_format=True)
    return [folder / name for name in names]


# ----------------------------------------------------------------------------- reading tags


def _raw_value(ds, keyword: str, file: str, required: bool = True):
    """A private tag's value decoded by its manual VR (also from raw bytes), or None if absent and optional."""
    from pydicom.multival import MultiValue

    group, element, vr, vm = TAGS[keyword]
    elem = ds.get((group, element))
    if elem is None or elem.value in (None, b"", ""):
        if required:
            raise InputError(f"missing private tag ({group:04X},{element:04X}) {keyword}", file=file,
                             field=f"({group:04X},{element:04X})")
        return None
    value = elem.value
    try:
        if isinstance(value, (bytes, bytearray)):
            if vr == "FL":
                values = np.frombuffer(bytes(value), dtype="<f4").astype(np.float64).tolist()
            elif vr == "US":
                values = np.frombuffer(bytes(value), dtype="<u2").astype(np.int64).tolist()
            else:
                values = bytes(value).decode("ascii", "replace").strip("\x00 ").split("\\")
        elif isinstance(value, (list, tuple, MultiValue)):
            values = list(value)
        else:
            values = [value]
        if vr in ("FL", "DS"):
            values = [float(v) for v in values]
        elif vr == "US":
            values = [int(v) for v in values]
        else:
            values = [str(v).strip() for v in values]
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot decode {keyword} ({exc})", file=file, field=f"({group:04X},{element:04X})") from None
    if len(values) < vm or (vr in ("FL", "DS") and not all(math.isfinite(v) for v in values)):
        raise InputError(f"{keyword} must hold {vm} finite value(s), got {values}", file=file,
                         field=f"({group:04X},{element:04X})")
    return values[0] if vm == 1 else values[:vm]


def has_ctpd_tags(ds) -> bool:
    """True when a pydicom dataset carries (7029,1010) NumberofDetectorRows and (7031,1001) angular position."""
    return ds.get((0x7029, 0x1010)) is not None and ds.get((0x7031, 0x1001)) is not None


def list_ctpd_files(folder) -> list[Path]:
    """The DICOM files of a DICOM-CT-PD folder (sorted by name; hidden and non-DICOM files skipped)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError("no such folder", file=str(folder))
    if not folder.is_dir():
        raise InputError("DICOM-CT-PD data is a folder of one file per view; this is a file", file=str(folder))
    files = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and _has_dicm(p):
            files.append(p)
    if not files:
        raise InputError("folder holds no DICOM files", file=str(folder))
    return files


def _has_dicm(path: Path) -> bool:
    from recon_cli.io.dicom_series import is_dicom_file

    return is_dicom_file(path)


def is_ctpd_folder(path) -> bool:
    """True when ``path`` is a folder whose first DICOM file carries the DICOM-CT-PD geometry tags."""
    import pydicom

    p = Path(path)
    if not p.is_dir():
        return False
    for f in sorted(p.iterdir()):
        if f.is_file() and not f.name.startswith(".") and _has_dicm(f):
            try:
                return has_ctpd_tags(pydicom.dcmread(f, stop_before_pixels=True))
            except Exception:
                return False
    return False


def _read(file: Path, headers_only: bool = False):
    import pydicom

    try:
        ds = pydicom.dcmread(file, stop_before_pixels=headers_only)
    except Exception as exc:
        raise InputError(f"cannot read DICOM ({type(exc).__name__}: {exc})", file=str(file)) from None
    from recon_cli.logging_setup import register_dicom_phi

    register_dicom_phi(ds)  # patient identifiers never reach the logs
    return ds


def _view_pixels(ds, file: str, n_rows: int, n_cols: int) -> np.ndarray:
    """(n_rows, n_cols) float32 line integrals of one view."""
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise InputError(f"cannot decode pixel data ({type(exc).__name__}: {exc})", file=file,
                         field="PixelData") from None
    if stored.shape == (n_cols, n_rows):
        view = stored.T
    elif stored.shape == (n_rows, n_cols):
        view = stored
    else:
        raise InputError(f"pixel data {list(stored.shape)} matches neither (columns {n_cols}, rows {n_rows}) "
                         "nor its transpose", file=file, field="PixelData")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (view.astype(np.float64) * slope + intercept).astype(np.float32)


def read_ctpd_scan(folder, rows: Sequence[int] | None = None) -> CTPDScan:
    """Read a DICOM-CT-PD folder (views ordered by InstanceNumber, else file name).

    ``rows``: 0-based detector rows to keep (default all); ``data`` is (n_views, len(rows), n_cols).
    Detector parameters must agree in every file (InputError naming the file otherwise).
    """
    files = list_ctpd_files(folder)
    first_file = str(files[0])
    first = _read(files[0], headers_only=True)
    if not has_ctpd_tags(first):
        raise InputError("not DICOM-CT-PD: missing private tags (7029,1010) NumberofDetectorRows / "
                         "(7031,1001) DetectorFocalCenterAngularPosition", file=first_file)
    fixed = {k: _raw_value(first, k, first_file) for k in ("NumberofDetectorRows", "NumberofDetectorColumns",
                                                           "DetectorElementTransverseSpacing",
                                                           "DetectorElementAxialSpacing", "ConstantRadialDistance",
                                                           "DetectorCentralElement")}
    n_rows, n_cols = int(fixed["NumberofDetectorRows"]), int(fixed["NumberofDetectorColumns"])
    keep = list(range(n_rows)) if rows is None else [int(r) for r in rows]
    for r in keep:
        if not 0 <= r < n_rows:
            raise InputError(f"detector row {r} is outside the {n_rows} rows (0-based)", field="detector_row")
    shape = (_raw_value(first, "DetectorShape", first_file, required=False) or "CYLINDRICAL").upper()
    n = len(files)
    data = np.empty((n, len(keep), n_cols), np.float32)
    phi, z, rho = np.empty(n), np.empty(n), np.empty(n)
    ffs = np.zeros((n, 3))
    numbers: list = []
    modes = set()
    ds0 = None
    for i, file in enumerate(files):
        name = str(file)
        ds = _read(file)
        ds0 = ds if ds0 is None else ds0
        for key, expected in fixed.items():
            value = _raw_value(ds, key, name)
            if not np.allclose(np.asarray(value, float), np.asarray(expected, float), rtol=1e-6, atol=1e-6):
                raise InputError(f"{key} is {value} here but {expected} in {first_file}; one scan must keep "
                                 "its detector", file=name, field=f"({TAGS[key][0]:04X},{TAGS[key][1]:04X})")
        phi[i] = _raw_value(ds, "DetectorFocalCenterAngularPosition", name)
        z[i] = _raw_value(ds, "DetectorFocalCenterAxialPosition", name)
        rho[i] = _raw_value(ds, "DetectorFocalCenterRadialDistance", name)
        for j, key in enumerate(_FFS_TAGS):
            value = _raw_value(ds, key, name, required=False)
            ffs[i, j] = 0.0 if value is None else value
        modes.add((_raw_value(ds, "FlyingFocalSpotMode", name, required=False) or "FFSNONE").upper())
        data[i] = _view_pixels(ds, name, n_rows, n_cols)[keep]
        numbers.append(ds.get("InstanceNumber"))
    if all(v is not None for v in numbers) and len({int(v) for v in numbers}) == n:
        order = np.argsort([int(v) for v in numbers], kind="stable")
        data, phi, z, rho, ffs = data[order], phi[order], z[order], rho[order], ffs[order]
    mu_water = _raw_value(ds0, "WaterAttenuationCoefficient", first_file, required=False)
    steps = _raw_value(ds0, "NumberofSourceAngularSteps", first_file, required=False)
    scan_type = (_raw_value(ds0, "TypeofProjectionData", first_file, required=False) or "").upper()
    info = {"files": len(files), "rows_kept": keep, "n_detector_rows": n_rows, "first_file": first_file,
            "manufacturer": str(ds0.get("Manufacturer", "")), "identity": _identity(ds0, first_file),
            "series_uid": str(ds0.get("SeriesInstanceUID", "") or "")}
    return CTPDScan(data=data, phi=phi, z=z, rho=rho, col_spacing=float(fixed["DetectorElementTransverseSpacing"]),
                    row_spacing=float(fixed["DetectorElementAxialSpacing"]),
                    source_detector=float(fixed["ConstantRadialDistance"]),
                    central_element=(float(fixed["DetectorCentralElement"][0]),
                                     float(fixed["DetectorCentralElement"][1])),
                    shape=shape, ffs=ffs, ffs_mode="/".join(sorted(modes)),
                    mu_water=float(mu_water) if mu_water is not None else float("nan"),
                    views_per_rotation=int(steps) if steps is not None else None, scan_type=scan_type, info=info)


def _identity(ds, file: str) -> dict[str, str]:
    """Patient / study attributes of a projection file (dicom_series.IDENTITY_TAGS that are present and
    not empty), so that a reconstruction joins the patient's study. FrameOfReferenceUID is left out: the
    reconstruction's patient coordinates are not those of the projections."""
    from recon_cli.io.dicom_series import IDENTITY_TAGS

    out = {}
    for name in IDENTITY_TAGS:
        if name == "FrameOfReferenceUID":
            continue
        try:
            value = ds.get(name)
        except Exception:  # a malformed element: that attribute is not copied
            log.warning("%s: cannot decode %s; not copied to the DICOM output", file, name)
            continue
        if value is not None and str(value) != "":
            out[name] = str(value)
    return out


# ----------------------------------------------------------------------------- checks and the fan-beam sinogram


def check_axial_no_ffs(scan: CTPDScan, source: str) -> None:
    """Refuse helical scans, flying focal spots, varying radial distances and unknown detector shapes."""
    if scan.shape not in ("CYLINDRICAL", "FLAT"):
        raise InputError(f"detector shape {scan.shape!r} is not supported (CYLINDRICAL or FLAT)", file=source,
                         field="(7029,100B) DetectorShape")
    z_span = float(np.ptp(scan.z)) if scan.z.size else 0.0
    if scan.scan_type == "HELICAL" or z_span > AXIAL_TOL_MM:
        raise InputError(f"helical scan (axial position {float(scan.z.min()):.2f} .. {float(scan.z.max()):.2f} mm over "
                         f"{scan.n_views} views): only axial scans are read; rebin helical data to fan-beam "
                         "sinograms first (e.g. single-slice rebinning)", file=source,
                         field="(7031,1002) DetectorFocalCenterAxialPosition")
    shifts = np.abs(scan.ffs) if scan.ffs is not None else np.zeros((1, 3))
    modes = {m for m in scan.ffs_mode.split("/") if m}
    if np.any(shifts > 0) or not modes <= {"FFSNONE", "NONE"}:
        raise InputError(f"flying focal spot (mode {scan.ffs_mode}, largest shifts: "
                         f"{float(shifts[:, 0].max()):.3g} rad, {float(shifts[:, 1].max()):.3g} mm axial, "
                         f"{float(shifts[:, 2].max()):.3g} mm radial) is not supported: a fan-beam sinogram needs "
                         "one source position on the detector's focal centre per view", file=source,
                         field="(7033,100E) FlyingFocalSpotMode")
    if float(np.ptp(scan.rho)) > RADIAL_TOL_MM:
        raise InputError(f"the focal centre's radial distance varies ({float(scan.rho.min()):.3f} .. "
                         f"{float(scan.rho.max()):.3f} mm); a circular orbit is needed", file=source,
                         field="(7031,1003) DetectorFocalCenterRadialDistance")
    if not float(scan.rho[0]) < scan.source_detector:
        raise InputError(f"focal centre to detector ({scan.source_detector} mm) must exceed focal centre to "
                         f"isocentre ({float(scan.rho[0])} mm)", file=source,
                         field="(7031,1031) ConstantRadialDistance")


def central_row(central_element_row: float, n_rows: int) -> int:
    """0-based detector row nearest to the central element's (1-based, fractional) row; halves round up."""
    return int(min(max(math.floor(central_element_row - 1 + 0.5), 0), n_rows - 1))


def scan_to_sinogram(scan: CTPDScan, source: str, *, row_index: int = 0, detector_row: int | None = None,
                     grid_shape: Sequence[int] | None = None, voxel_size: float | None = None) -> Sinogram:
    """Fan-beam Sinogram (n_views, n_flat) of one detector row of an axial scan.

    ``row_index`` picks the row in ``scan.data``; ``detector_row`` is its 0-based number on the
    detector (for the off-plane weight; default ``row_index``). Views are returned in increasing
    ASTRA angle b = unwrap(phi) + pi / 2. Default grid: square, voxel = flat spacing at the isocentre,
    covering the scan field of view (radius rho0 sin(half fan angle)).
    """
    check_axial_no_ffs(scan, source)
    detector_row = row_index if detector_row is None else detector_row
    rho0 = float(np.mean(scan.rho))
    d0 = float(scan.source_detector)
    n_cols = scan.data.shape[2]
    central_col = scan.central_element[0] - 1.0
    cylindrical = scan.shape == "CYLINDRICAL"
    rows = np.asarray(scan.data[:, row_index, :], dtype=np.float32)
    flat_count, flat_spacing = flat_detector_for_arc(n_cols, central_col, scan.col_step, d0, cylindrical=cylindrical)
    flat = arc_to_flat(rows, central_col=central_col, col_step=scan.col_step, source_detector=d0,
                       flat_count=flat_count, flat_spacing=flat_spacing, cylindrical=cylindrical)
    v = (detector_row - (scan.central_element[1] - 1.0)) * scan.row_spacing  # axial offset at the detector, mm
    if v != 0.0:
        s = (np.arange(flat_count) - (flat_count - 1) / 2.0) * flat_spacing
        in_plane = np.sqrt(d0 ** 2 + s ** 2)
        flat = flat * (in_plane / np.sqrt(in_plane ** 2 + v ** 2)).astype(np.float32)[None, :]
    angles = np.unwrap(scan.phi) + math.pi / 2
    if angles.size > 1 and angles[-1] < angles[0]:
        angles, flat = angles[::-1], flat[::-1]
    order = np.argsort(angles, kind="stable")
    angles, flat = angles[order], np.ascontiguousarray(flat[order])
    geometry = FanFlat2D(angles=angles, detector_spacing=flat_spacing, detector_count=flat_count,
                         source_origin=rho0, origin_detector=d0 - rho0)
    iso_spacing = flat_spacing * rho0 / d0
    if voxel_size is None:
        voxel_size = iso_spacing
    if grid_shape is None:
        reach = max(central_col + 0.5, n_cols - 0.5 - central_col)
        half_fan = reach * scan.col_step if cylindrical else math.atan(reach * scan.col_step / d0)
        radius = rho0 * math.sin(half_fan)
        n = int(math.ceil(2 * radius / float(voxel_size)))
        grid_shape = (n, n)
    grid = VolumeGrid((int(grid_shape[0]), int(grid_shape[1])), float(voxel_size))
    metadata = {"source": source, "format": "dicom-ctpd", "detector_row": int(detector_row),
                "detector_shape": scan.shape, "rebinned_to_flat": bool(cylindrical),
                "axial_position_mm": float(np.mean(scan.z)), "views": int(scan.n_views)}
    if math.isfinite(scan.mu_water):
        metadata["mu_water"] = float(scan.mu_water)
    if scan.info.get("manufacturer"):
        metadata["manufacturer"] = scan.info["manufacturer"]
    if scan.info.get("identity"):  # the DICOM output keeps the patient and study (recon_cli.runner)
        metadata["dicom"] = {"series_uid": scan.info.get("series_uid") or None,
                             "identity": dict(scan.info["identity"]), "spacing": None, "origin": None}
    return Sinogram(data=flat, geometry=geometry, grid=grid, metadata=metadata)


def read_ctpd(folder, *, detector_row: int | None = None, grid_shape: Sequence[int] | None = None,
              voxel_size: float | None = None) -> Sinogram:
    """DICOM-CT-PD folder (axial scan) -> fan-beam Sinogram on a flat detector (ASTRA ``fanflat``).

    ``detector_row``: 0-based row (default: nearest the central element). See the module docstring.
    """
    folder = str(folder)
    files = list_ctpd_files(folder)
    first = _read(files[0], headers_only=True)
    if not has_ctpd_tags(first):
        raise InputError("not DICOM-CT-PD: missing private tags (7029,1010) / (7031,1001)", file=str(files[0]))
    n_rows = int(_raw_value(first, "NumberofDetectorRows", str(files[0])))
    central = _raw_value(first, "DetectorCentralElement", str(files[0]))
    row = central_row(central[1], n_rows) if detector_row is None else int(detector_row)
    if not 0 <= row < n_rows:
        raise InputError(f"detector row {row} is outside the detector's {n_rows} rows (0-based)",
                         file=folder, field="detector_row")
    scan = read_ctpd_scan(folder, rows=[row])
    return scan_to_sinogram(scan, folder, row_index=0, detector_row=row, grid_shape=grid_shape, voxel_size=voxel_size)


# ----------------------------------------------------------------------------- recon info


def _plain(value) -> Any:
    from pydicom.multival import MultiValue

    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def describe_ctpd(folder, show_phi: bool = False) -> dict[str, Any]:
    """Summary of a DICOM-CT-PD folder (or one view's file) for ``recon info`` from the first and last file's headers
    (geometry, scan type, flying focal spot, dose-relevant tags); patient identifiers hidden unless ``show_phi``."""
    files = [Path(folder)] if Path(folder).is_file() else list_ctpd_files(folder)
    first, last = _read(files[0], headers_only=True), _read(files[-1], headers_only=True)
    name = str(files[0])
    if not has_ctpd_tags(first):
        raise InputError("not DICOM-CT-PD: missing private tags (7029,1010) / (7031,1001)", file=name)
    geometry = {k: _raw_value(first, k, name, required=k in _REQUIRED) for k in TAGS}
    z0 = geometry["DetectorFocalCenterAxialPosition"]
    z1 = _raw_value(last, "DetectorFocalCenterAxialPosition", str(files[-1]))
    geometry["DetectorFocalCenterAxialPosition (last file)"] = z1
    geometry["DetectorFocalCenterAngularPosition (last file)"] = _raw_value(
        last, "DetectorFocalCenterAngularPosition", str(files[-1]))
    kind = (geometry.get("TypeofProjectionData") or ("HELICAL" if abs(z1 - z0) > AXIAL_TOL_MM else "AXIAL")).upper()
    patient = {}
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
                "StudyDate", "AccessionNumber", "InstitutionName"):
        value = _plain(first.get(tag))
        if value in (None, ""):
            continue
        patient[tag] = "(hidden; --show-phi shows it)" if tag in PHI_TAGS and not show_phi else value
    acquisition = {tag: _plain(first.get(tag)) for tag in ACQUISITION_TAGS if first.get(tag) not in (None, "")}
    for tag in acquisition:
        if tag in PHI_TAGS and not show_phi:
            acquisition[tag] = "(hidden; --show-phi shows it)"
    out = {"file": str(folder), "format": "dicom-ctpd", "views": len(files), "scan": kind,
           "projection": {"rows": geometry["NumberofDetectorRows"], "columns": geometry["NumberofDetectorColumns"],
                          "dtype": "uint16 (RescaleSlope/Intercept -> line integrals)"},
           "geometry": geometry, "acquisition": acquisition, "patient_study": patient}
    if not show_phi:
        out["phi"] = "patient identifiers hidden; --show-phi shows them"
    return out
