"""Acquisition geometries and reconstruction grids, converted to ASTRA's dicts.

Conventions (ASTRA's): all lengths in mm, angles in radians. Image row 0 is +y.
Sinogram shapes: 2D geometries ``(n_angles, n_det)`` per slice, ``(n_slices,
n_angles, n_det)`` for a stack of slices; 3D geometries ASTRA's ``(det_rows,
n_angles, det_cols)``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from recon_cli.constants import (REFERENCE_DETECTOR_COUNT, REFERENCE_DETECTOR_SPACING, REFERENCE_GRID_SHAPE,
                                 REFERENCE_N_ANGLES, REFERENCE_ORIGIN_DETECTOR, REFERENCE_SOURCE_ORIGIN,
                                 REFERENCE_VOXEL_SIZE)
from recon_cli.errors import InputError


#: Largest |angle| accepted (radians, about 1600 turns). ASTRA's geometry check loops forever
#: (ignoring SIGTERM) on angles of ~1e8 rad; nothing real comes near this bound.
MAX_ABS_ANGLE = 1.0e4
#: Largest range of the angles (radians): two full turns. 0..180 or 0..360 "radians" are degrees.
MAX_ANGLE_SPAN = 4 * np.pi + 1e-6
#: Lengths (detector spacing, distances, voxel size) accepted, in mm: 1 nm to 100 m. Outside this range
#: ASTRA fails with messages naming no field, or the projector's numbers overflow / vanish.
MIN_LENGTH_MM, MAX_LENGTH_MM = 1.0e-6, 1.0e5
#: Most detector columns / rows per geometry.
MAX_DETECTOR_COUNT = 1 << 20


def _angles(a) -> np.ndarray:
    """Angles (radians) as float64: finite, |angle| <= MAX_ABS_ANGLE, not all equal (InputError otherwise)."""
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float64).ravel())
    if arr.size == 0:
        raise InputError("angles must not be empty", field="geometry/angles")
    if not np.all(np.isfinite(arr)):
        raise InputError("angles contain NaN or Inf", field="geometry/angles")
    worst = float(np.max(np.abs(arr)))
    if worst > MAX_ABS_ANGLE:
        raise InputError(f"an angle of {worst:.3g} rad is out of range (|angle| <= {MAX_ABS_ANGLE:g} rad); "
                         "angles are radians, not degrees or encoder counts", field="geometry/angles")
    span = float(np.ptp(arr))
    if span > MAX_ANGLE_SPAN:
        raise InputError(f"the angles span {span:.4g} rad ({span / (2 * np.pi):.1f} turns): are they degrees? "
                         "give radians (at most two turns)", field="geometry/angles")
    if arr.size > 1 and span == 0.0:
        raise InputError(f"all {arr.size} angles are equal ({arr[0]:.6g} rad): the views carry no "
                         "tomographic information", field="geometry/angles")
    return arr


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"must be a positive number of mm, got {value}", field=f"geometry/{name}")
    if not MIN_LENGTH_MM <= value <= MAX_LENGTH_MM:
        raise InputError(f"{value:.3g} mm is out of the supported range [{MIN_LENGTH_MM:g}, {MAX_LENGTH_MM:g}] mm",
                         field=f"geometry/{name}")
    return value


def _count(name: str, value) -> int:
    """A positive detector count <= MAX_DETECTOR_COUNT."""
    value = int(value)
    if value <= 0:
        raise InputError("must be positive", field=f"geometry/{name}")
    if value > MAX_DETECTOR_COUNT:
        raise InputError(f"{value} is more than the {MAX_DETECTOR_COUNT} supported", field=f"geometry/{name}")
    return value


@dataclass(frozen=True, eq=False)
class Parallel2D:
    """Parallel beam, one detector row. ``detector_spacing`` in mm."""

    angles: np.ndarray
    detector_spacing: float
    detector_count: int
    type: str = field(default="parallel", init=False)
    is_3d = False

    def __post_init__(self):
        object.__setattr__(self, "angles", _angles(self.angles))
        object.__setattr__(self, "detector_spacing", _positive("detector_spacing", self.detector_spacing))
        object.__setattr__(self, "detector_count", _count("detector_count", self.detector_count))

    @property
    def n_angles(self) -> int:
        return int(self.angles.size)

    def to_astra(self) -> dict:
        import astra

        return astra.create_proj_geom("parallel", self.detector_spacing, self.detector_count, self.angles)

    def sinogram_shape(self, n_slices: int | None = None) -> tuple[int, ...]:
        base = (self.n_angles, self.detector_count)
        return base if n_slices is None else (n_slices, *base)

    def attrs(self) -> dict:
        """Scalar attributes as stored in ``/geometry`` of layout v1."""
        return {"type": self.type, "detector_spacing": self.detector_spacing, "detector_count": self.detector_count}


@dataclass(frozen=True, eq=False)
class FanFlat2D(Parallel2D):
    """Fan beam with a flat detector. Distances in mm from the rotation axis."""

    source_origin: float = 0.0
    origin_detector: float = 0.0
    type: str = field(default="fanflat", init=False)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "source_origin", _positive("source_origin", self.source_origin))
        object.__setattr__(self, "origin_detector", _positive("origin_detector", self.origin_detector))

    @property
    def magnification(self) -> float:
        return (self.source_origin + self.origin_detector) / self.source_origin

    def to_astra(self) -> dict:
        import astra

        return astra.create_proj_geom(
            "fanflat", self.detector_spacing, self.detector_count, self.angles,
            self.source_origin, self.origin_detector,
        )

    def attrs(self) -> dict:
        return {**super().attrs(), "source_origin": self.source_origin, "origin_detector": self.origin_detector}


@dataclass(frozen=True, eq=False)
class Parallel3D(Parallel2D):
    """3D parallel beam (GPU only). ``detector_spacing`` is the column spacing."""

    detector_rows: int = 1
    detector_row_spacing: float = 1.0
    type: str = field(default="parallel3d", init=False)
    is_3d = True

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "detector_rows", _count("detector_rows", self.detector_rows))
        object.__setattr__(self, "detector_row_spacing", _positive("detector_row_spacing", self.detector_row_spacing))

    def to_astra(self) -> dict:
        import astra

        return astra.create_proj_geom(
            "parallel3d", self.detector_spacing, self.detector_row_spacing,
            self.detector_rows, self.detector_count, self.angles,
        )

    def sinogram_shape(self, n_slices: int | None = None) -> tuple[int, ...]:
        return (self.detector_rows, self.n_angles, self.detector_count)

    def attrs(self) -> dict:
        return {**super().attrs(), "detector_rows": self.detector_rows,
                "detector_row_spacing": self.detector_row_spacing}


@dataclass(frozen=True, eq=False)
class Cone3D(Parallel3D):
    """Cone beam with a flat detector (GPU only). Distances in mm."""

    source_origin: float = 0.0
    origin_detector: float = 0.0
    type: str = field(default="cone", init=False)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "source_origin", _positive("source_origin", self.source_origin))
        object.__setattr__(self, "origin_detector", _positive("origin_detector", self.origin_detector))

    def to_astra(self) -> dict:
        import astra

        return astra.create_proj_geom(
            "cone", self.detector_spacing, self.detector_row_spacing, self.detector_rows,
            self.detector_count, self.angles, self.source_origin, self.origin_detector,
        )

    def attrs(self) -> dict:
        return {**super().attrs(), "source_origin": self.source_origin, "origin_detector": self.origin_detector}


Geometry = Union[Parallel2D, FanFlat2D, Parallel3D, Cone3D]
GEOMETRY_TYPES: dict[str, type] = {"parallel": Parallel2D, "fanflat": FanFlat2D,
                                   "parallel3d": Parallel3D, "cone": Cone3D}


def geometry_from_attrs(attrs: dict, angles) -> Geometry:
    """Build a geometry from layout-v1 attributes; raises InputError naming the field."""
    gtype = str(attrs.get("type", ""))
    if gtype not in GEOMETRY_TYPES:
        raise InputError(f"unknown geometry type {gtype!r}; expected one of {sorted(GEOMETRY_TYPES)}",
                         field="geometry/type")
    cls = GEOMETRY_TYPES[gtype]
    needed = {"parallel": ["detector_spacing", "detector_count"],
              "fanflat": ["detector_spacing", "detector_count", "source_origin", "origin_detector"],
              "parallel3d": ["detector_spacing", "detector_count", "detector_rows", "detector_row_spacing"],
              "cone": ["detector_spacing", "detector_count", "detector_rows", "detector_row_spacing",
                       "source_origin", "origin_detector"]}[gtype]
    kwargs = {}
    for key in needed:
        if key not in attrs:
            raise InputError("missing attribute", field=f"geometry/{key}")
        kwargs[key] = attrs[key]
    return cls(angles=angles, **kwargs)


@dataclass(frozen=True, eq=False)
class VolumeGrid:
    """Reconstruction grid centred on the rotation axis.

    ``shape`` is ``(ny, nx)`` or ``(nz, ny, nx)``; ``voxel_size`` in mm (isotropic).
    """

    shape: tuple[int, ...]
    voxel_size: float = 1.0

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) not in (2, 3) or min(shape) <= 0:
            raise InputError(f"must be [ny, nx] or [nz, ny, nx] with positive sizes, got {list(shape)}",
                             field="volume/shape")
        object.__setattr__(self, "shape", shape)
        try:
            object.__setattr__(self, "voxel_size", _positive("voxel_size", self.voxel_size))
        except InputError as exc:
            raise InputError(exc.message, field="volume/voxel_size") from None

    @property
    def slice_shape(self) -> tuple[int, int]:
        return self.shape[-2:]

    @property
    def n_slices(self) -> int | None:
        return self.shape[0] if len(self.shape) == 3 else None

    def to_astra(self) -> dict:
        """ASTRA volume geometry with extents in mm (2D for one slice, 3D for a volume)."""
        import astra

        ny, nx = self.slice_shape
        hx, hy = nx * self.voxel_size / 2, ny * self.voxel_size / 2
        if len(self.shape) == 2:
            return astra.create_vol_geom(ny, nx, -hx, hx, -hy, hy)
        nz = self.shape[0]
        hz = nz * self.voxel_size / 2
        return astra.create_vol_geom(ny, nx, nz, -hx, hx, -hy, hy, -hz, hz)

    def slice_grid(self) -> "VolumeGrid":
        return VolumeGrid(self.slice_shape, self.voxel_size)


def fan_beam_geometry(n_angles: int = REFERENCE_N_ANGLES, detector_count: int = REFERENCE_DETECTOR_COUNT,
                      detector_spacing: float = REFERENCE_DETECTOR_SPACING,
                      source_origin: float = REFERENCE_SOURCE_ORIGIN, origin_detector: float = REFERENCE_ORIGIN_DETECTOR,
                      arc: float = 2 * np.pi) -> FanFlat2D:
    """Fan-flat geometry with ``n_angles`` equally spaced views over ``arc`` radians."""
    angles = np.linspace(0.0, arc, n_angles, endpoint=False)
    return FanFlat2D(angles=angles, detector_spacing=detector_spacing, detector_count=detector_count,
                     source_origin=source_origin, origin_detector=origin_detector)


def parallel_beam_geometry(n_angles: int = 180, detector_count: int = 256, detector_spacing: float = 1.0,
                           arc: float = np.pi) -> Parallel2D:
    """Parallel geometry with ``n_angles`` equally spaced views over ``arc`` radians."""
    angles = np.linspace(0.0, arc, n_angles, endpoint=False)
    return Parallel2D(angles=angles, detector_spacing=detector_spacing, detector_count=detector_count)


def reference_geometry() -> tuple[FanFlat2D, VolumeGrid]:
    """The project's reference case: 60-view fan beam on a 256x256 grid of 1 mm pixels."""
    return fan_beam_geometry(), VolumeGrid(REFERENCE_GRID_SHAPE, REFERENCE_VOXEL_SIZE)


def fingerprint(geometry: Geometry, grid: VolumeGrid, extra: str = "") -> str:
    """Stable SHA-256 (hex, 16 chars) of a geometry and slice grid, for caches and model checks."""
    payload = {"geometry": {k: (v if not isinstance(v, float) else round(v, 9)) for k, v in geometry.attrs().items()},
               "angles": np.round(geometry.angles, 12).tolist(),
               "grid": [list(grid.slice_shape), round(grid.voxel_size, 9)], "extra": extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
