"""The realistic evaluation suite (issue 13): cases, their simulated data, and a cache.

A case is one (image, crop/resampling, geometry, grid, dose). Images are real CT slices that the
project may use (pydicom-data's neck ``bad_sequence.dcm`` and abdomen ``explicit_VR-UN.dcm``,
pydicom's ``CT_small.dcm``) and procedural anatomy-like and COULE-like phantoms. Geometries are
parallel beam (30, 45, 90 and 180 views over 180 degrees) and flat fan beam (30, 36, 60, 120 views over 360
degrees, two source/detector distance pairs); grids 256^2 and 512^2 with pixels of 0.4-1.0 mm;
detector elements match the pixel magnified onto the detector and cover the image's circumcircle.
Doses: Poisson I0 = 1e4, 2e4, 1e5, 1e6 and one Gaussian case. Data are always simulated on a 2x
finer grid and detector (``recon_cli.simulate``: no inverse crime).

Each case keeps the noise-free line integrals too, so the true noise e = y - p is known exactly.

**Held out, never used here:** the pydicom-data files reserved for acceptance tests
(``recon_cli.learn.config.RESERVED_IMAGE_PATTERNS``; :func:`_dicom_path` refuses them).

Split: ``tune`` cases choose parameters (``discrepancy_tau``, the noise estimator's constants);
``test`` cases only report. The real neck and abdomen slices are in both parts but with different
crops, geometries and doses.

    from suite_cases import suite, load_case
    for spec in suite(): case = load_case(spec)   # cached in ~/.cache/recon-cli-suite (or $RECON_SUITE_CACHE)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recon_cli.geometry import FanFlat2D, Parallel2D, VolumeGrid
from recon_cli.simulate import add_noise, block_mean, refine_geometry, resample_image, _project_2d

#: Source/origin and origin/detector distances (mm) of the two fan-beam scanners.
FAN_DISTANCES = {"A": (595.0, 490.0), "B": (1000.0, 300.0)}

CACHE_VERSION = 2  # 2: anatomy phantom of learn/anatomy.py after its texture update


@dataclass(frozen=True)
class CaseSpec:
    """One suite case. ``crop``: (centre x, centre y, width) in mm of the source image that fills
    the grid's field of view, or None for the whole image scaled to fill it."""
    name: str
    image: str                 # "neck" | "abdomen" | "ct_small" | "anatomy:<seed>" | "coule:<seed>"
    geometry: str              # "par90" | "par180" | "fan30A" | "fan60B" | ...
    n: int                     # grid n x n
    pixel_mm: float
    dose: str                  # "1e4" | "2e4" | "1e5" | "1e6" | "gauss0.5"
    split: str                 # "tune" | "test"
    crop: tuple | None = None
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps([CACHE_VERSION, asdict(self)], sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- images
def _dicom_path(name: str) -> str:
    """The real slice ``name`` (neck, abdomen, ct_small) from pydicom / pydicom-data, never a reserved file."""
    from pydicom.data import get_testdata_file

    from recon_cli.learn.config import reserved_content, reserved_name

    files = {"neck": "bad_sequence.dcm", "abdomen": "explicit_VR-UN.dcm", "ct_small": "CT_small.dcm"}
    path = get_testdata_file(files[name], download=False)
    if path is None:
        raise FileNotFoundError(f"{files[name]} not found: install pydicom-data (pip install pydicom-data)")
    if reserved_name(files[name]) or reserved_content(path):
        raise ValueError(f"{files[name]} is reserved for acceptance tests")
    return str(path)


def source_image(spec: CaseSpec) -> tuple[np.ndarray, float]:
    """(mu image in 1/mm, pixel size in mm) of the case's image before crop/resampling."""
    kind, _, arg = spec.image.partition(":")
    if kind in ("neck", "abdomen", "ct_small"):
        from recon_cli.io.dicom_image import read_ct_slice_mu

        return read_ct_slice_mu(_dicom_path(kind))
    n_src = 2 * spec.n  # drawn on the 2x fine grid: the reference is its exact area average
    fov = spec.n * spec.pixel_mm
    rng = np.random.default_rng(int(arg))
    if kind == "anatomy":
        from recon_cli.learn.anatomy import anatomy_phantom

        return anatomy_phantom(n_src, rng), fov / n_src
    if kind == "coule":
        from recon_cli.phantoms import coule_phantom

        return coule_phantom(n_src, rng), fov / n_src
    raise ValueError(f"unknown image {spec.image!r}")


def case_image(spec: CaseSpec) -> tuple[np.ndarray, float]:
    """The image that fills the grid's field of view (crop applied), with its pixel size (mm)."""
    image, pixel = source_image(spec)
    fov = spec.n * spec.pixel_mm
    if spec.crop is None:
        # whole image scaled so that its larger side fills the field of view (scanner-like magnification)
        return image, fov / max(image.shape)
    cx, cy, width = spec.crop
    ny, nx = image.shape
    half = width / 2
    # columns/rows of the source covering [c - half, c + half] mm (image centred at 0, row 0 is +y)
    x = (np.arange(nx) + 0.5 - nx / 2) * pixel
    y = (ny / 2 - np.arange(ny) - 0.5) * pixel
    cols = np.nonzero(np.abs(x - cx) <= half)[0]
    rows = np.nonzero(np.abs(y - cy) <= half)[0]
    sub = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    side = max(sub.shape)
    pad = np.zeros((side, side), np.float32)
    pad[(side - sub.shape[0]) // 2:(side - sub.shape[0]) // 2 + sub.shape[0],
        (side - sub.shape[1]) // 2:(side - sub.shape[1]) // 2 + sub.shape[1]] = sub
    return pad, fov / side


# ----------------------------------------------------------------------------- geometry
def case_geometry(spec: CaseSpec):
    """(geometry, grid) of a case: detector element = pixel magnified onto the detector, enough
    elements to cover the grid's circumcircle."""
    grid = VolumeGrid((spec.n, spec.n), spec.pixel_mm)
    radius = spec.n * spec.pixel_mm / math.sqrt(2.0)
    g = spec.geometry
    if g.startswith("par"):
        views = int(g[3:])
        angles = np.linspace(0.0, np.pi, views, endpoint=False)
        spacing = spec.pixel_mm
        count = int(math.ceil(2 * radius / spacing)) + 2
        return Parallel2D(angles=angles, detector_spacing=spacing, detector_count=count), grid
    if g.startswith("fan"):
        views, scanner = int(g[3:-1]), g[-1]
        so, od = FAN_DISTANCES[scanner]
        magnification = (so + od) / so
        spacing = spec.pixel_mm * magnification
        half_width = (so + od) * math.tan(math.asin(min(radius / so, 0.99)))
        count = int(math.ceil(2 * half_width / spacing)) + 2
        angles = np.linspace(0.0, 2 * np.pi, views, endpoint=False)
        return FanFlat2D(angles=angles, detector_spacing=spacing, detector_count=count,
                         source_origin=so, origin_detector=od), grid
    raise ValueError(f"unknown geometry {g!r}")


# ----------------------------------------------------------------------------- data
@dataclass
class Case:
    spec: CaseSpec
    geometry: object
    grid: VolumeGrid
    clean: np.ndarray          # noise-free line integrals (n_angles, n_det), float64
    data: np.ndarray           # noisy line integrals, float32
    reference: np.ndarray      # (n, n) float32, 1/mm
    I0: float | None
    gaussian_sigma: float | None

    @property
    def true_noise_std(self) -> float:
        """RMS of the realised noise of one line integral (float32 rounding of y included)."""
        e = self.data.astype(np.float64) - self.clean
        return float(np.sqrt(np.mean(e * e)))

    def metadata(self, with_dose: bool) -> dict:
        """Sinogram metadata as a file would carry it; ``with_dose`` False: no I0 / sigma."""
        meta = {"upsample": 2, "simulated_from": self.spec.image}
        if with_dose:
            if self.I0 is not None:
                meta["I0"] = self.I0
            if self.gaussian_sigma is not None:
                meta["sigma"] = self.gaussian_sigma
        return meta

    def body_mask(self) -> np.ndarray:
        """Pixels inside the body: reference above 10% of water, closed and hole-filled."""
        from scipy import ndimage

        from recon_cli.metrics import MU_WATER

        mask = self.reference > 0.1 * MU_WATER
        mask = ndimage.binary_closing(mask, iterations=3)
        return ndimage.binary_fill_holes(mask)


def _dose(spec: CaseSpec) -> tuple[float | None, float | None]:
    if spec.dose.startswith("gauss"):
        return None, float(spec.dose[5:]) / 100.0   # percent of ||y|| -> relative
    return float(spec.dose), None


def cache_dir() -> Path:
    root = os.environ.get("RECON_SUITE_CACHE") or Path.home() / ".cache" / "recon-cli-suite"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_case(spec: CaseSpec) -> Case:
    """Simulate a case (or read it from the cache)."""
    geometry, grid = case_geometry(spec)
    I0, gaussian_rel = _dose(spec)
    path = cache_dir() / f"{spec.name}-{spec.key()}.npz"
    if path.exists():
        z = np.load(path)
        sigma = float(z["gaussian_sigma"]) if z["gaussian_sigma"] > 0 else None
        return Case(spec, geometry, grid, z["clean"], z["data"], z["reference"], I0, sigma)
    image, pixel = case_image(spec)
    u = 2
    fine_grid = VolumeGrid((spec.n * u, spec.n * u), spec.pixel_mm / u)
    fine = resample_image(image, pixel, fine_grid.shape, fine_grid.voxel_size)
    reference = block_mean(fine, u, (0, 1)).astype(np.float32)
    clean = block_mean(_project_2d(fine, refine_geometry(geometry, u), fine_grid), u, (1,)).astype(np.float64)
    rng = np.random.default_rng(spec.seed + 7919)
    noisy, _ = add_noise(clean, I0=I0, gaussian_rel=None, rng=rng)
    sigma = None
    if gaussian_rel is not None:
        sigma = gaussian_rel * float(np.sqrt(np.mean(clean * clean)))  # std of one line integral
        noisy = clean + sigma * rng.standard_normal(clean.shape)
    data = noisy.astype(np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, clean=clean, data=data, reference=reference, gaussian_sigma=sigma or 0.0)
    os.replace(tmp, path)
    return Case(spec, geometry, grid, clean, data, reference, I0, sigma)


# ----------------------------------------------------------------------------- the suite
def suite() -> list[CaseSpec]:
    """Every suite case: each image, geometry, grid, dose and a range of pixel sizes at least once
    (16 cases, 9 of them tuning; a 512^2 oracle search costs ~5x a 256^2 one, hence one 512^2 case)."""
    C = CaseSpec
    return [
        # ---------------------------------------------------------------- tuning part
        C("t01_anat_fan60A_1e5", "anatomy:5300", "fan60A", 256, 1.0, "1e5", "tune", seed=1),
        C("t02_coule_par180_2e4", "coule:5301", "par180", 256, 0.8, "2e4", "tune", seed=2),
        C("t03_ctsmall_fan30B_1e6", "ct_small", "fan30B", 256, 0.4, "1e6", "tune", seed=3),
        C("t04_neck_par90_1e4", "neck", "par90", 256, 0.5, "1e4", "tune", crop=(0.0, 0.0, 128.0), seed=4),
        # few-view tuning cases t05, t06, t08, t09 (30-45 views): the basis of sgp_tv's few-view lam rule
        C("t05_anat_fan30A_2e4", "anatomy:5305", "fan30A", 256, 0.8, "2e4", "tune", seed=5),
        C("t06_coule_par45_1e4", "coule:5306", "par45", 256, 0.8, "1e4", "tune", seed=6),
        C("t07_anat_par180_gauss", "anatomy:5302", "par180", 256, 0.7, "gauss0.5", "tune", seed=7),
        C("t08_neck_fan36A_1e5", "neck", "fan36A", 256, 0.6, "1e5", "tune", crop=(20.0, 10.0, 140.0), seed=8),
        C("t09_ctsmall_par30_2e4", "ct_small", "par30", 256, 0.4, "2e4", "tune", seed=9),
        # ---------------------------------------------------------------- reported part
        C("s01_neck_fan60A_1e5", "neck", "fan60A", 256, 0.5, "1e5", "test", seed=11),
        C("s02_neck_fan30B_2e4", "neck", "fan30B", 256, 0.4, "2e4", "test", crop=(0.0, 0.0, 102.4), seed=12),
        C("s03_abd_par180_1e5", "abdomen", "par180", 256, 1.0, "1e5", "test", crop=(0.0, 0.0, 256.0), seed=13),
        C("s04_abd_fan60A_1e4", "abdomen", "fan60A", 512, 0.8, "1e4", "test", seed=14),
        C("s05_abd_fan120B_1e6", "abdomen", "fan120B", 256, 0.5, "1e6", "test", crop=(40.0, -20.0, 128.0), seed=15),
        C("s07_ctsmall_fan120A_gauss", "ct_small", "fan120A", 256, 0.4, "gauss1", "test", seed=17),
        C("s10_coule_fan60B_1e5", "coule:5312", "fan60B", 256, 0.8, "1e5", "test", seed=20),
    ]


def by_name(names: list[str] | None) -> list[CaseSpec]:
    cases = suite()
    if not names:
        return cases
    out = [c for c in cases if any(c.name.startswith(n) for n in names)]
    if not out:
        raise SystemExit(f"no suite case matches {names}")
    return out
