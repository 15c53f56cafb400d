"""Read a CT image series (a folder or a list of files) as a volume in Hounsfield units.

Supports classic single-frame CT Image Storage and (Legacy Converted) Enhanced CT multi-frame
files, compressed transfer syntaxes through pydicom's pixel-data plugins (RLE; JPEG lossless and
JPEG 2000 with pylibjpeg-libjpeg / pylibjpeg-openjpeg).

Slices are ordered by ImagePositionPatient projected on the slice normal
n = row direction x column direction (from ImageOrientationPatient), ascending; file names do
not matter. Pixel rows and columns are kept as stored: with the standard axial orientation
ImageOrientationPatient = [1,0,0, 0,1,0] (row direction +x = patient left, column direction
+y = posterior, LPS) stored row 0 is the anterior edge, which is image row 0 = +y of recon-cli's
images (x_ours = x_patient, y_ours = -y_patient, z_ours = z_patient). ``dicom_writer`` writes the
same mapping, so a write -> read round trip returns the same array, spacing and positions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recon_cli.errors import InputError

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
#: SOP classes read here -> short name.
CT_SOP_CLASSES = {CT_IMAGE_STORAGE: "CT Image", ENHANCED_CT_IMAGE_STORAGE: "Enhanced CT Image",
                  LEGACY_ENHANCED_CT_IMAGE_STORAGE: "Legacy Converted Enhanced CT Image"}

#: Patient, study and frame-of-reference attributes a derived series copies from its source.
IDENTITY_TAGS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "PatientPosition", "BodyPartExamined",
)
#: Attributes hidden by describe_series unless show_phi (names, identifiers, dates, places).
PHI_TAGS = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "InstitutionName",
    "InstitutionAddress", "StationName", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime",
    "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime", "StudyID", "DeviceSerialNumber",
})
#: Acquisition and dose-relevant attributes reported by describe_series (and kept in DicomSeries.info).
ACQUISITION_TAGS = (
    "Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName", "SeriesDescription",
    "BodyPartExamined", "KVP", "XRayTubeCurrent", "ExposureTime", "Exposure", "CTDIvol", "SpiralPitchFactor",
    "ConvolutionKernel", "ReconstructionDiameter", "SliceThickness", "DistanceSourceToDetector",
    "DistanceSourceToPatient", "GantryDetectorTilt", "SeriesDate", "SeriesTime",
)

#: Relative tolerances for "the same" spacing / orientation, and for uniform slice steps.
_ORIENTATION_TOL = 1e-4
_SPACING_RTOL = 1e-3
_STEP_RTOL = 1e-2

_SKIP_NAMES = {"DICOMDIR"}


@dataclass
class DicomSeries:
    """A CT series as a volume.

    volume: (nz, ny, nx) float32 HU, slices ascending along the slice normal.
    spacing: (dz, dy, dx) mm (dz: distance between slice positions; dy, dx: PixelSpacing).
    origin: ImagePositionPatient of the first slice's first pixel (patient LPS, mm).
    orientation: ImageOrientationPatient (row direction, column direction cosines).
    files: the file of each slice, in slice order (repeated for multi-frame files).
    identity: patient / study / frame-of-reference attributes (strings), for a derived series.
    info: acquisition and dose-relevant attributes of the first slice (strings or numbers).
    """

    volume: np.ndarray = field(repr=False)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    orientation: tuple[float, ...]
    files: list[str]
    identity: dict[str, str]
    series_uid: str
    sop_class_uid: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)  # type: ignore[return-value]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row direction x column direction)."""
        o = np.asarray(self.orientation, float)
        return np.cross(o[:3], o[3:])

    def voxel_size(self) -> float:
        """The in-plane pixel size (mm); InputError when pixels are not square."""
        dz, dy, dx = self.spacing
        if abs(dy - dx) > _SPACING_RTOL * max(dy, dx):
            raise InputError(f"non-square pixels {[dy, dx]} mm are not supported", file=self.files[0],
                             field="PixelSpacing")
        return float(dx)


@dataclass
class _Slice:
    """One frame of one file: where it is and how to turn its stored values into HU."""

    file: str
    frame: int | None  # None: single-frame file
    position: np.ndarray  # ImagePositionPatient (3,)
    orientation: np.ndarray  # (6,)
    pixel_spacing: tuple[float, float]  # (row spacing dy, column spacing dx)
    slope: float
    intercept: float
    thickness: float | None
    rows: int
    columns: int


# ----------------------------------------------------------------------------- finding and grouping files


def list_dicom_files(source) -> list[Path]:
    """The candidate files of ``source``: every file under a folder (recursively, sorted; hidden files
    and DICOMDIR skipped), a single file, or a list of files as given."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.name not in _SKIP_NAMES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise InputError("folder holds no files", file=str(path))
            return files
        if not path.exists():
            raise InputError("no such file or folder", file=str(path))
        return [path]
    files = [Path(p) for p in source]
    if not files:
        raise InputError("no DICOM files given")
    for p in files:
        if not p.is_file():
            raise InputError("no such file", file=str(p))
    return files


def _read(file: Path, headers_only: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(file), stop_before_pixels=headers_only)
    except InvalidDicomError:
        raise InputError("not a DICOM file (no DICM preamble)", file=str(file)) from None
    except Exception as exc:  # truncated or corrupt files
        raise InputError(f"not a readable DICOM file ({type(exc).__name__}: {exc})", file=str(file)) from None
    from recon_cli.logging_setup import register_dicom_phi

    register_dicom_phi(ds)  # patient identifiers never reach the logs
    check_header_values(file, ds)
    return ds


#: Header attributes the CT readers use; each must be decodable (see check_header_values).
HEADER_TAGS = ("SOPClassUID", "Modality", "SeriesInstanceUID", "SeriesDescription", "NumberOfFrames", "Rows",
               "Columns", "SamplesPerPixel", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
               "RescaleSlope", "RescaleIntercept", "SliceThickness", "PixelPaddingValue", "PixelPaddingRangeLimit",
               "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")


def check_header_values(file, ds, names=None) -> None:
    """Decode the attributes the readers use (``names``, default HEADER_TAGS + IDENTITY_TAGS +
    ACQUISITION_TAGS) now: pydicom converts values lazily, so a value with the wrong VR or length
    would otherwise raise a bare ValueError later. InputError naming the file and the tag."""
    for name in names or (*HEADER_TAGS, *IDENTITY_TAGS, *ACQUISITION_TAGS):
        try:
            ds.get(name)
        except Exception as exc:  # BytesLengthException, ValueError, ...: a malformed element
            raise InputError(f"cannot decode the value ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
                             file=str(file), field=name) from None


def _group_by_series(headers: list[tuple[Path, Any]]) -> dict[str, list[tuple[Path, Any]]]:
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for file, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise InputError("missing DICOM tag", file=str(file), field="SeriesInstanceUID")
        groups.setdefault(uid, []).append((file, ds))
    return groups


def _series_line(uid: str, members: list[tuple[Path, Any]]) -> str:
    ds = members[0][1]
    what = ", ".join(str(v) for v in (ds.get("Modality", ""), ds.get("SeriesDescription", "")) if v)
    return f"{uid} ({len(members)} files{', ' + what if what else ''})"


def _select_series(groups: dict[str, list], series_uid: str | None, where: str) -> tuple[str, list]:
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(f"no series with SeriesInstanceUID {series_uid}; found: "
                             + "; ".join(_series_line(u, m) for u, m in groups.items()),
                             file=where, field="SeriesInstanceUID")
        return series_uid, groups[series_uid]
    if len(groups) > 1:
        raise InputError(f"{len(groups)} series found (several SeriesInstanceUIDs); choose one with the series "
                         "UID option (input.series_uid / --series-uid): "
                         + "; ".join(_series_line(u, m) for u, m in groups.items()),
                         file=where, field="SeriesInstanceUID")
    uid = next(iter(groups))
    return uid, groups[uid]


# ----------------------------------------------------------------------------- per-slice geometry


def _text(ds, name: str) -> str:
    value = ds.get(name)
    return "" if value is None else str(value)


def _check_ct(file: Path, ds) -> str:
    sop = _text(ds, "SOPClassUID")
    if not sop:
        raise InputError("missing DICOM tag", file=str(file), field="SOPClassUID")
    modality = _text(ds, "Modality")
    if modality != "CT":
        raise InputError(f"expected a CT image, found modality {modality or 'none'!r}", file=str(file),
                         field="Modality")
    if sop not in CT_SOP_CLASSES:
        import pydicom.uid

        name = pydicom.uid.UID(sop).name
        raise InputError(f"SOP class {sop} ({name}) is not a CT image storage class (supported: "
                         f"{', '.join(CT_SOP_CLASSES.values())})", file=str(file), field="SOPClassUID")
    return sop


def _numbers(value, count: int, file: Path, name: str) -> np.ndarray:
    if value is None or value == "":
        raise InputError("missing DICOM tag", file=str(file), field=name)
    try:
        values = np.array([float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str)
                                              else [value])], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"expected {count} number(s), got {value!r}", file=str(file), field=name) from None
    if values.size != count or not np.all(np.isfinite(values)):
        raise InputError(f"expected {count} finite number(s), got {value!r}", file=str(file), field=name)
    return values


def _optional_float(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _classic_slice(file: Path, ds) -> _Slice:
    spacing = _numbers(ds.get("PixelSpacing"), 2, file, "PixelSpacing")
    return _Slice(
        file=str(file), frame=None,
        position=_numbers(ds.get("ImagePositionPatient"), 3, file, "ImagePositionPatient"),
        orientation=_numbers(ds.get("ImageOrientationPatient"), 6, file, "ImageOrientationPatient"),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slope=float(_numbers(ds.get("RescaleSlope"), 1, file, "RescaleSlope")[0]),
        intercept=float(_numbers(ds.get("RescaleIntercept"), 1, file, "RescaleIntercept")[0]),
        thickness=_optional_float(ds.get("SliceThickness")),
        rows=int(_numbers(ds.get("Rows"), 1, file, "Rows")[0]),
        columns=int(_numbers(ds.get("Columns"), 1, file, "Columns")[0]),
    )


def _group_item(ds, frame: int, sequence: str):
    """The item of functional-group ``sequence`` for ``frame``: per-frame first, then shared (or None)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        seq = per_frame[frame].get(sequence)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(sequence)
        if seq:
            return seq[0]
    return None


def _group_value(ds, frame: int, sequence: str, name: str, count: int, file: Path, required: bool = True):
    try:
        item = _group_item(ds, frame, sequence)
        value = None if item is None else item.get(name)
    except Exception as exc:  # a malformed element inside the functional groups (decoded lazily)
        raise InputError(f"cannot decode the value (frame {frame + 1}: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})", file=str(file), field=f"{sequence}.{name}") from None
    if value is None or value == "":
        if not required:
            return None
        raise InputError(f"missing DICOM tag (frame {frame + 1}, per-frame or shared functional groups)",
                         file=str(file), field=f"{sequence}.{name}")
    return _numbers(value, count, file, f"{sequence}.{name} (frame {frame + 1})")


def _enhanced_slices(file: Path, ds) -> list[_Slice]:
    n_frames = int(_numbers(ds.get("NumberOfFrames"), 1, file, "NumberOfFrames")[0])
    if n_frames < 1:
        raise InputError(f"must be at least 1, got {n_frames}", file=str(file), field="NumberOfFrames")
    rows = int(_numbers(ds.get("Rows"), 1, file, "Rows")[0])
    columns = int(_numbers(ds.get("Columns"), 1, file, "Columns")[0])
    slices = []
    for k in range(n_frames):
        spacing = _group_value(ds, k, "PixelMeasuresSequence", "PixelSpacing", 2, file)
        thickness = _group_value(ds, k, "PixelMeasuresSequence", "SliceThickness", 1, file, required=False)
        slices.append(_Slice(
            file=str(file), frame=k,
            position=_group_value(ds, k, "PlanePositionSequence", "ImagePositionPatient", 3, file),
            orientation=_group_value(ds, k, "PlaneOrientationSequence", "ImageOrientationPatient", 6, file),
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            slope=float(_group_value(ds, k, "PixelValueTransformationSequence", "RescaleSlope", 1, file)[0]),
            intercept=float(_group_value(ds, k, "PixelValueTransformationSequence", "RescaleIntercept", 1,
                                         file)[0]),
            thickness=None if thickness is None else float(thickness[0]), rows=rows, columns=columns,
        ))
    return slices


def _slices_of(file: Path, ds, sop: str) -> list[_Slice]:
    if sop == CT_IMAGE_STORAGE:
        if int(_numbers(ds.get("NumberOfFrames") or 1, 1, file, "NumberOfFrames")[0]) != 1:
            raise InputError("a CT Image Storage file with several frames", file=str(file), field="NumberOfFrames")
        return [_classic_slice(file, ds)]
    return _enhanced_slices(file, ds)


# ----------------------------------------------------------------------------- consistency and order


def _check_orientation(s: _Slice) -> None:
    row, col = s.orientation[:3], s.orientation[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(float(row @ col)) > 1e-3):
        raise InputError(f"row and column directions must be orthogonal unit vectors, got {s.orientation.tolist()}",
                         file=s.file, field="ImageOrientationPatient")


def _sort_and_check(slices: list[_Slice]) -> tuple[list[_Slice], float]:
    """Slices sorted along the normal, after checking they form one regular stack; returns (slices, dz)."""
    first = slices[0]
    _check_orientation(first)
    for s in slices[1:]:
        if np.max(np.abs(s.orientation - first.orientation)) > _ORIENTATION_TOL:
            raise InputError(f"inconsistent orientation in one series: {s.orientation.tolist()} vs "
                             f"{first.orientation.tolist()} in {first.file}", file=s.file,
                             field="ImageOrientationPatient")
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise InputError(f"inconsistent image size in one series: {s.rows} x {s.columns} vs "
                             f"{first.rows} x {first.columns} in {first.file}", file=s.file, field="Rows/Columns")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=_SPACING_RTOL, atol=0):
            raise InputError(f"inconsistent pixel spacing in one series: {list(s.pixel_spacing)} vs "
                             f"{list(first.pixel_spacing)} in {first.file}", file=s.file, field="PixelSpacing")
    if min(first.pixel_spacing) <= 0:
        raise InputError(f"must be positive, got {list(first.pixel_spacing)}", file=first.file, field="PixelSpacing")
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    if len(slices) == 1:
        s = slices[0]
        dz = s.thickness if s.thickness and s.thickness > 0 else float(min(s.pixel_spacing))
        return slices, float(dz)
    depth = np.array([float(s.position @ normal) for s in slices])
    steps = np.diff(depth)
    pixel = float(min(first.pixel_spacing))
    for k, step in enumerate(steps):
        if step <= 1e-3 * pixel:
            raise InputError(f"two slices at the same position along the slice normal ({depth[k]:.4g} mm), "
                             f"the other in {slices[k].file}", file=slices[k + 1].file, field="ImagePositionPatient")
    dz = float(np.mean(steps))
    bad = np.flatnonzero(np.abs(steps - dz) > _STEP_RTOL * dz)
    if bad.size:
        k = int(bad[0])
        raise InputError(f"non-uniform slice spacing: {steps[k]:.4g} mm between this slice and {slices[k].file}, "
                         f"mean {dz:.4g} mm (missing or extra slice?)", file=slices[k + 1].file,
                         field="ImagePositionPatient")
    in_plane = np.array([s.position - (s.position @ normal) * normal for s in slices])
    drift = np.linalg.norm(in_plane - in_plane[0], axis=1)
    if drift.max() > 1e-2 + 1e-2 * pixel:
        k = int(np.argmax(drift))
        raise InputError(f"slice positions are sheared by {drift[k]:.3g} mm in plane (gantry tilt?); "
                         "only stacks along the slice normal are supported", file=slices[k].file,
                         field="ImagePositionPatient")
    return slices, dz


# ----------------------------------------------------------------------------- pixels


def _decode(file: str, ds) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # missing decoder plugin, truncated data, ...
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f" (transfer syntax {ts} {getattr(ts, 'name', '')})" if ts is not None else ""
        raise InputError(f"cannot decode pixel data{name}: {exc}", file=file, field="PixelData") from None


def _to_hu(stored: np.ndarray, s: _Slice, ds) -> np.ndarray:
    hu = stored.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        padding = float(_numbers(padding, 1, Path(s.file), "PixelPaddingValue")[0])
        limit = ds.get("PixelPaddingRangeLimit")
        if limit is None:
            hu[stored == padding] = -1000.0
        else:
            limit = float(_numbers(limit, 1, Path(s.file), "PixelPaddingRangeLimit")[0])
            lo, hi = sorted((padding, limit))
            hu[(stored >= lo) & (stored <= hi)] = -1000.0
    return hu


def _load_pixels(ordered: list[_Slice], datasets: dict[str, Any]) -> np.ndarray:
    first = ordered[0]
    volume = np.empty((len(ordered), first.rows, first.columns), np.float32)
    decoded: dict[str, np.ndarray] = {}
    for k, s in enumerate(ordered):
        ds = datasets[s.file]
        if s.file not in decoded:
            decoded[s.file] = _decode(s.file, ds)
        arr = decoded[s.file]
        frame = arr if s.frame is None or arr.ndim == 2 else arr[s.frame]
        if s.frame is not None and arr.ndim == 2 and s.frame != 0:
            raise InputError(f"frame {s.frame + 1} missing from the pixel data", file=s.file, field="PixelData")
        if frame.shape != (s.rows, s.columns):
            raise InputError(f"pixel data of shape {list(frame.shape)}, expected {[s.rows, s.columns]} "
                             "(colour or multi-sample images are not supported)", file=s.file, field="PixelData")
        volume[k] = _to_hu(frame, s, ds)
    return volume


# ----------------------------------------------------------------------------- public API


def read_headers(source) -> list[tuple[Path, Any]]:
    """(file, dataset without pixel data) for every file of ``source``; InputError for a non-DICOM file."""
    return [(f, _read(f, headers_only=True)) for f in list_dicom_files(source)]


def read_series(source, series_uid: str | None = None) -> DicomSeries:
    """Read a CT series from a folder, a file or a list of files.

    ``series_uid`` chooses one series when the files hold several (otherwise an InputError
    lists them). Returns a :class:`DicomSeries` (volume (nz, ny, nx) float32 HU, spacing (dz, dy, dx) mm).
    Raises InputError naming the file and the tag for non-DICOM or non-CT files, missing tags,
    undecodable pixel data, and slices that do not form one regular stack.
    """
    if not isinstance(source, (str, Path)):
        source = list(source)
    where = str(source) if isinstance(source, (str, Path)) else str(source[0] if source else "")
    uid, members = _select_series(_group_by_series(read_headers(source)), series_uid, where)
    _check_one_patient(members)
    datasets: dict[str, Any] = {}
    slices: list[_Slice] = []
    sop_classes = set()
    for file, header in members:
        sop_classes.add(_check_ct(file, header))
        ds = _read(file, headers_only=False)
        if "PixelData" not in ds:
            raise InputError("no pixel data", file=str(file), field="PixelData")
        datasets[str(file)] = ds
        slices.extend(_slices_of(file, ds, _text(ds, "SOPClassUID")))
    ordered, dz = _sort_and_check(slices)
    check_image_size(ordered[0].file, ordered[0].rows, ordered[0].columns, len(ordered))
    volume = _load_pixels(ordered, datasets)
    first_ds = datasets[ordered[0].file]
    identity = {name: _text(first_ds, name) for name in IDENTITY_TAGS if name in first_ds}
    info = {name: _value(first_ds.get(name)) for name in ACQUISITION_TAGS if first_ds.get(name) not in (None, "")}
    info["TransferSyntaxUID"] = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets.values()
                                        if "TransferSyntaxUID" in getattr(ds, "file_meta", {})})
    first = ordered[0]
    log.info("read %d slices of %s (%d files), spacing %s mm", len(ordered), uid, len(members),
             [round(dz, 6), *first.pixel_spacing])
    return DicomSeries(volume=volume, spacing=(dz, first.pixel_spacing[0], first.pixel_spacing[1]),
                       origin=tuple(float(v) for v in first.position),
                       orientation=tuple(float(v) for v in first.orientation),
                       files=[s.file for s in ordered], identity=identity, series_uid=uid,
                       sop_class_uid=sorted(sop_classes)[0], info=info)


def read_series_mu(source, series_uid: str | None = None, mu_water: float = 0.0192) -> tuple[np.ndarray, DicomSeries]:
    """The series as linear attenuation (1/mm, clipped at 0) and its :class:`DicomSeries`."""
    from recon_cli.hounsfield import hu_to_mu

    series = read_series(source, series_uid)
    mu = np.clip(hu_to_mu(series.volume, mu_water), 0.0, None).astype(np.float32)
    return mu, series


def is_dicom_file(path) -> bool:
    """True when ``path`` is a file with the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _value(value) -> Any:
    """A JSON-friendly form of a DICOM element value."""
    from pydicom.multival import MultiValue

    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [_value(v) for v in value]
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else int(value)
    return str(value)


#: Free-text attributes: shown, but with identifiers found in them redacted unless show_phi.
FREE_TEXT_TAGS = frozenset({"StudyDescription", "SeriesDescription", "ImageComments", "ProtocolName",
                            "RequestedProcedureDescription", "PerformedProcedureStepDescription",
                            "AdditionalPatientHistory", "PatientComments"})


def _hidden(name: str, value, show_phi: bool):
    if name in PHI_TAGS and not show_phi and value not in (None, ""):
        return "(hidden; --show-phi shows it)"
    if name in FREE_TEXT_TAGS and not show_phi and isinstance(value, str):
        from recon_cli.logging_setup import redact_free_text

        return redact_free_text(value)
    return value


#: Maximum Rows / Columns of one image: CT images are 512-2048 pixels; a header claiming 65535 x 65535
#: would make the decoder allocate tens of GiB.
MAX_IMAGE_SIDE = 16384


def check_image_size(file, rows: int, columns: int, n_slices: int = 1) -> None:
    """InputError for an image size that is absurd or would not fit in memory, before any pixel is decoded."""
    from recon_cli.io.hdf5 import check_fits_memory

    for name, value in (("Rows", rows), ("Columns", columns)):
        if not 1 <= value <= MAX_IMAGE_SIDE:
            raise InputError(f"{value} is out of the supported range 1..{MAX_IMAGE_SIDE}", file=str(file),
                             field=name)
    check_fits_memory((n_slices, rows, columns), 4 + 8, str(file), "Rows/Columns", "the image volume")


def _check_one_patient(members: list[tuple[Path, Any]]) -> None:
    """InputError when the files of one series belong to different patients (PatientID or PatientName
    differ): the values are not printed, only where they differ."""
    first_file, first = members[0]
    for key in ("PatientID", "PatientName"):
        want = _text(first, key).strip()
        for file, ds in members[1:]:
            if _text(ds, key).strip() != want:
                raise InputError(f"the series mixes patients: {key} differs from that of {first_file} (values "
                                 "withheld); a series must hold one patient's images", file=str(file), field=key)


def describe_series(path, show_phi: bool = False) -> dict:
    """A summary of the DICOM files at ``path`` (folder or file) for ``recon info``: per series the SOP class,
    file and slice counts, shape, spacing, orientation, positions, transfer syntaxes, acquisition and
    dose-relevant tags, patient and study tags (identifiers hidden unless ``show_phi``). Reads headers only.
    """
    headers = read_headers(path)
    groups = _group_by_series(headers)
    out: dict[str, Any] = {"file": str(path), "format": "DICOM", "files": len(headers), "series_count": len(groups)}
    series = []
    for uid, members in groups.items():
        ds = members[0][1]
        entry: dict[str, Any] = {"SeriesInstanceUID": uid, "files": len(members),
                                 "Modality": _text(ds, "Modality"), "SOPClassUID": _text(ds, "SOPClassUID")}
        entry["SOP class"] = CT_SOP_CLASSES.get(entry["SOPClassUID"], _uid_name(entry["SOPClassUID"]))
        entry["TransferSyntaxUID"] = sorted({f"{m[1].file_meta.TransferSyntaxUID} "
                                             f"({_uid_name(m[1].file_meta.TransferSyntaxUID)})"
                                             for m in members if "TransferSyntaxUID" in m[1].file_meta})
        try:
            slices = []
            for file, header in members:
                sop = _check_ct(file, header)
                slices.extend(_slices_of(file, header, sop))
            _check_one_patient(members)
            ordered, dz = _sort_and_check(slices)
            first = ordered[0]
            check_image_size(first.file, first.rows, first.columns, 1)
            entry.update(shape=[len(ordered), first.rows, first.columns],
                         spacing_mm=[round(dz, 6), *first.pixel_spacing],
                         ImageOrientationPatient=first.orientation.tolist(),
                         first_position=first.position.tolist(), last_position=ordered[-1].position.tolist())
        except InputError as exc:
            entry["problem"] = exc.one_line()
        patient = {name: _hidden(name, _value(ds.get(name)), show_phi)
                   for name in (*IDENTITY_TAGS, "InstitutionName") if ds.get(name) not in (None, "")}
        entry["patient_study"] = patient
        entry["acquisition"] = {name: _hidden(name, _value(ds.get(name)), show_phi)
                                for name in ACQUISITION_TAGS if ds.get(name) not in (None, "")}
        series.append(entry)
    out["series"] = series
    if not show_phi:
        out["phi"] = "patient identifiers hidden; --show-phi shows them"
    return out


def _uid_name(uid) -> str:
    import pydicom.uid

    try:
        return pydicom.uid.UID(str(uid)).name
    except Exception:
        return str(uid)


__all__ = ["DicomSeries", "read_series", "read_series_mu", "read_headers", "describe_series", "list_dicom_files",
           "is_dicom_file", "CT_SOP_CLASSES", "IDENTITY_TAGS", "PHI_TAGS"]

