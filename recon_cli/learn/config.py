"""The training YAML schema (pydantic) and its loader with ``FILE:LINE`` errors and ``--set``.

A training config says what to learn (input solver -> target), for which acquisition
(geometry, grid, noise), from which images, with which network and optimiser. No torch
here: ``recon validate``-style checks and the data generator need none.

Example (see training/*.yaml)::

    name: postproc_fan60
    geometry: {type: fanflat, n_angles: 60, detector_count: 512, detector_spacing: 1.2,
               source_origin: 595, origin_detector: 490}
    grid: {shape: [256, 256], voxel_size: 1.0}
    noise: {I0: 1.0e5}
    data: {sources: [{kind: anatomy}, {kind: coule}], train: 320, val: 32, test: 32, workers: 2}
    input: {name: fbp, params: {filter: hann}}
    target: ground_truth              # or {converged: {name: sgp_tv, params: {iterations: 200}}}
    model: {depth: 3, base_channels: 16}
    training: {epochs: 20, batch_size: 8, patch: 128, lr: 1.0e-3, loss: {kind: l1}}
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recon_cli.errors import ConfigError, ConfigErrors, InputError
from recon_cli.geometry import FanFlat2D, Geometry, Parallel2D, VolumeGrid
from recon_cli.phantoms import MU_WATER
from recon_cli.solvers.registry import SolverRef


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeometrySpec(Strict):
    """A 2D acquisition: equally spaced views over ``arc`` starting at ``start``, or ``from_file``."""

    type: Literal["parallel", "fanflat"] = "fanflat"
    n_angles: int = Field(60, ge=1)
    detector_count: int = Field(512, ge=1)
    detector_spacing: float = Field(1.2, gt=0, description="mm")
    source_origin: Optional[float] = Field(595.0, gt=0, description="mm (fanflat)")
    origin_detector: Optional[float] = Field(490.0, gt=0, description="mm (fanflat)")
    arc: Optional[float] = Field(None, gt=0, description="radians; default 2 pi (fanflat), pi (parallel)")
    start: float = Field(0.0, description="first angle, radians")
    from_file: Optional[str] = Field(None, description="take the geometry from this sinogram HDF5 instead")

    def build(self) -> Geometry:
        if self.from_file:
            from recon_cli.io.hdf5 import read_sinogram

            return read_sinogram(self.from_file).geometry
        import numpy as np

        arc = self.arc if self.arc is not None else (2 * math.pi if self.type == "fanflat" else math.pi)
        angles = self.start + np.linspace(0.0, arc, self.n_angles, endpoint=False)
        if self.type == "parallel":
            return Parallel2D(angles=angles, detector_spacing=self.detector_spacing,
                              detector_count=self.detector_count)
        return FanFlat2D(angles=angles, detector_spacing=self.detector_spacing, detector_count=self.detector_count,
                         source_origin=self.source_origin, origin_detector=self.origin_detector)


class GridSpec(Strict):
    shape: tuple[int, int] = (256, 256)
    voxel_size: float = Field(1.0, gt=0, description="mm")

    @field_validator("shape")
    @classmethod
    def _positive(cls, v):
        if min(v) < 4:
            raise ValueError(f"grid must be at least 4x4, got {list(v)}")
        return v

    def build(self) -> VolumeGrid:
        return VolumeGrid(tuple(self.shape), self.voxel_size)


class NoiseSpec(Strict):
    """Noise added by recon_cli.simulate: Poisson with ``I0`` counts, and/or Gaussian ``gaussian_rel``."""

    I0: Optional[float] = Field(None, gt=0)
    gaussian_rel: Optional[float] = Field(None, ge=0)


#: Files reserved for acceptance tests: never a training, tuning or benchmark source. The patterns
#: are kept as SHA-256 digests so that no file of the project spells the reserved names out:
#: ("prefix", d): a file name whose part up to and including its first "_" hashes to d (lower case);
#: ("name", d): a whole file name hashing to d (lower case).
RESERVED_IMAGE_PATTERNS = (
    ("prefix", "f0706132c895b93bf52e06f3dad58cfef7bc29495db0d1a166abc4bca32619f9"),
    ("name", "185268700339f17f9480013d2b2eabedf2abe5f74c44ae3627d4431caddabff2"),
)
#: SHA-256 of the contents of the reserved files that pydicom and pydicom-data ship, so that a renamed
#: copy is refused as well.
RESERVED_CONTENT_DIGESTS = frozenset({
    "c392d8bd1f952ed2d9387d5143d34c5a29ac9d74566688169731a50ac6a82aa2",
    "42d6c33d6666bf569a53951211be6fca2ab04956db43c3f75a9720d976ab128c",
    "cc4cdd599231922ecf63de2ddacf03d51c4588805c9154c2eef1ff49c23b32be",
    "0a4c3aa02d1b0b4826daa5ffe85ef13be83c1433842a9a98b901e075136dd86f",
    "8d5d503fd46b9a59c628762d71d7391ea1a2a5fd8d339ac82ef9e281a15ef65f",
})

#: Larger than any reserved file (the largest is 1.05 MB): such a file is not one of them.
RESERVED_MAX_BYTES = 4 << 20


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reserved_name(path: str) -> str | None:
    """Why ``path``'s file name is reserved for acceptance tests ('name' or 'prefix' pattern), or None."""
    name = Path(str(path)).name.lower()
    head = name[: name.index("_") + 1] if "_" in name else None
    for kind, digest in RESERVED_IMAGE_PATTERNS:
        if (kind == "name" and _sha256(name) == digest) or (kind == "prefix" and head and _sha256(head) == digest):
            return f"{kind} pattern"
    return None


def reserved_content(path: str | Path) -> bool:
    """Whether the file at ``path`` is, byte for byte, one of the reserved files (a renamed copy)."""
    import hashlib

    p = Path(path)
    if not p.is_file() or p.stat().st_size > RESERVED_MAX_BYTES:  # large training files are not hashed
        return False
    digest = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() in RESERVED_CONTENT_DIGESTS


#: Real CT slices a training run may use by name (pydicom / pydicom-data test files): neck, abdomen, head.
REAL_SLICES = ("bad_sequence.dcm", "explicit_VR-UN.dcm", "CT_small.dcm")


class Augment(Strict):
    """Random augmentation of real slices (each pair draws its own): geometry, then intensities."""

    rotate: bool = Field(True, description="rotation by a uniform angle in [0, 360) degrees")
    flip: bool = Field(True, description="left-right and up-down flips, each with probability 1/2")
    scale: tuple[float, float] = Field((0.8, 1.25), description="zoom factor range (1: the file's pixel size)")
    crop: bool = Field(True, description="random offset of the field of view (up to 15% of it)")
    intensity: float = Field(0.05, ge=0, description="tissue contrast scaled by 1 +- this (water stays water)")
    window: float = Field(0.1, ge=0, description="random soft clipping of the densest values (bone) by up to this "
                                                  "fraction of their range")
    elastic: float = Field(4.0, ge=0, description="elastic deformation amplitude, mm (0: none)")
    elastic_scale: float = Field(30.0, gt=0, description="smoothness of the deformation field, mm")
    fill: float = Field(0.0, ge=0, le=1, description="probability that a square region of the slice at about its "
                                                     "own scale (zoom from scale, at least field / slice side, at "
                                                     "most 2) fills the field of view, tissue up to its edges as "
                                                     "a crop or a small reconstruction circle shows it, instead "
                                                     "of the whole slice shrunk into it")


class ImageSource(Strict):
    """Where training images come from. ``hdf5``: every slice of ``paths`` (read_image layout);
    ``dicom``: real CT slices (``paths``, or ``names`` of pydicom test files, default the neck,
    abdomen and head slices of :data:`REAL_SLICES`), augmented per pair by ``augment``."""

    kind: Literal["coule", "anatomy", "hdf5", "dicom"]
    paths: list[str] = Field(default_factory=list)
    names: list[str] = Field(default_factory=list, description="dicom: pydicom test files by name")
    augment: Augment = Field(default_factory=Augment)
    weight: float = Field(1.0, gt=0, description="relative frequency among procedural and augmented sources")

    @model_validator(mode="after")
    def _paths(self):
        if self.kind == "hdf5" and not self.paths:
            raise ValueError("an hdf5 source needs 'paths'")
        if self.kind in ("coule", "anatomy") and (self.paths or self.names):
            raise ValueError(f"a {self.kind} source takes no 'paths' or 'names'")
        if self.kind != "dicom" and self.names:
            raise ValueError("'names' is for dicom sources only")
        if self.kind == "dicom" and not self.paths and not self.names:
            self.names = list(REAL_SLICES)
        for item in [*self.paths, *self.names]:
            pattern = reserved_name(item) or ("its contents" if reserved_content(item) else None)
            if pattern is not None:
                raise ValueError(f"{Path(item).name} is reserved for acceptance tests ({pattern}) and may never "
                                 "be used for training")
        return self


class DataSpec(Strict):
    sources: list[ImageSource] = Field(default_factory=lambda: [ImageSource(kind="coule")], min_length=1)
    train: int = Field(256, ge=1)
    val: int = Field(32, ge=1)
    test: int = Field(0, ge=0)
    seed: int = 0
    upsample: int = Field(2, ge=1, description="simulation on a grid this many times finer (no inverse crime)")
    workers: int = Field(1, ge=1, description="processes computing training pairs")
    cache_dir: Optional[str] = Field(None, description="default: <recon-cli cache>/training")

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = {s.kind == "hdf5" for s in self.sources}
        if len(kinds) > 1:
            raise ValueError("mix either procedural and dicom sources (coule, anatomy, dicom) or hdf5 sources, "
                             "not both")
        return self


class EnvelopeSpec(Strict):
    """Train across an envelope: each pair draws its own geometry, view count, pixel size and dose.

    The field of view is the ``grid`` (its shape at its voxel size, which is the canonical pixel
    size): a pair's image is simulated on a 2x finer grid of the drawn pixel size covering that
    field of view, reconstructed there by the input solver, and resampled to the canonical grid
    (as recon_cli.networks.Model.apply does at inference). ``geometry`` and ``noise`` are then
    ignored (their types and levels come from here).
    """

    geometry_types: list[Literal["parallel", "fanflat"]] = Field(default_factory=lambda: ["parallel", "fanflat"],
                                                                 min_length=1)
    n_views: tuple[int, int] = Field((30, 360), description="range of the view count (log-uniform)")
    pixel_size_mm: tuple[float, float] = Field((0.3, 1.5), description="range of the pixel size, mm (log-uniform)")
    grid: tuple[int, int] = Field((128, 1024), description="grid sides (pixels) the model is stated to serve")
    I0: Optional[tuple[float, float]] = Field((1.0e4, 1.0e6), description="Poisson dose range (log-uniform)")
    gaussian_rel: Optional[tuple[float, float]] = Field(None, description="relative Gaussian noise range "
                                                                          "(||e|| / ||y||, log-uniform)")
    gaussian_fraction: float = Field(0.0, ge=0, le=1, description="share of pairs with Gaussian noise instead "
                                                                  "of Poisson")
    normalization: Literal["fixed", "per_image"] = Field("per_image", description="per_image: each input divided "
                                                                                  "by its intensity scale")
    extra_channels: list[Literal["noise_level", "n_views"]] = Field(
        default_factory=list, description="constant input planes telling the network the noise level / view count")
    max_train_n: Optional[int] = Field(
        None, ge=8, description="cap on the reconstruction grid side of a training pair: a finer drawn pixel size "
                                "is simulated at field / max_train_n (the network sees the canonical grid anyway; "
                                "the model still states pixel_size_mm)")

    native_grid: bool = Field(
        False, description="pairs stay at their drawn pixel size on the grid's shape (the field of view varies: "
                           "shape x pixel size) and are not resampled; the model states no canonical pixel size and "
                           "runs on the data's own grid (RISING: its k-iteration inputs depend on the pixel grid)")

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("n_views", "pixel_size_mm", "grid", "I0", "gaussian_rel"):
            rng = getattr(self, name)
            if rng is not None and not 0 < rng[0] <= rng[1]:
                raise ValueError(f"{name}: need 0 < low <= high, got {list(rng)}")
        if self.gaussian_fraction > 0 and self.gaussian_rel is None:
            raise ValueError("gaussian_fraction: > 0 needs a gaussian_rel range")
        if self.gaussian_fraction < 1 and self.I0 is None:
            raise ValueError("I0: Poisson pairs (gaussian_fraction < 1) need an I0 range")
        return self


class ConvergedTarget(Strict):
    converged: SolverRef = Field(description="the solver whose (converged) output is the target (RISING)")


Target = Union[Literal["ground_truth"], ConvergedTarget]


class UNetConfig(Strict):
    """Architecture hyper-parameters (recon_cli.learn.unet.UNet); stored in the model metadata."""

    depth: int = Field(3, ge=1, le=6, description="number of 2x down-samplings")
    base_channels: int = Field(16, ge=1, description="channels at full resolution; doubled per level")
    residual_blocks: bool = Field(False, description="residual blocks (conv-conv + skip) instead of conv-conv")
    norm: Literal["batch", "group", "none"] = "batch"
    global_skip: bool = Field(True, description="output = input + net(input)")
    nonneg: Optional[Literal["relu", "softplus"]] = Field(None, description="non-negative output")
    softplus_beta: float = Field(20.0, gt=0, description="sharpness of softplus on the normalised scale")
    in_channels: int = Field(1, ge=1, description="input planes: the image, then envelope.extra_channels "
                                                  "(set from the envelope)")


class LossConfig(Strict):
    kind: Literal["mse", "l1", "elastic"] = "mse"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="elastic: weight of the image term")
    norm: Literal["l1", "l2"] = Field("l1", description="elastic: norm of both terms")
    per_pair: Literal["absolute", "relative"] = Field(
        "absolute", description="relative: each pair's (patch's) loss divided by the network input's own loss "
                                "against the target (plus relative_floor x the batch mean of those), so that "
                                "every pair counts by how much the network improves on its input - the mean "
                                "PSNR gain - rather than by its absolute error (a RISING input close to its "
                                "target, as on real slices, weighs as much as a far one)")
    relative_floor: float = Field(0.1, gt=0.0, description="relative: floor on a pair's denominator, as a "
                                                          "fraction of the batch mean (air-only patches)")


class TrainingSpec(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    patch: Optional[int] = Field(128, ge=8, description="random square crops of this size; null: whole images")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    min_lr: float = Field(1e-5, ge=0, description="cosine: final learning rate")
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step: decay factor")
    early_stopping: Optional[int] = Field(None, ge=1, description="stop after this many epochs without a "
                                                                   "better validation loss")
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="cap on batches per epoch")
    dihedral: bool = Field(False, description="each training patch (input and target together) turned by a "
                                              "random multiple of 90 degrees and mirrored with probability 1/2: "
                                              "the same pair seen in another orientation of the scanner")
    loss: LossConfig = Field(default_factory=LossConfig)
    seed: int = 0
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; default: all cores")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrainConfig(Strict):
    """One training run; ``name`` names the output files ``<out>/<name>.{pt,onnx,json}``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    out: str = Field("out/models", description="output folder (--out replaces it)")
    geometry: GeometrySpec = Field(default_factory=GeometrySpec)
    grid: GridSpec = Field(default_factory=GridSpec)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    envelope: Optional[EnvelopeSpec] = Field(None, description="train across geometries and doses (see "
                                                               "EnvelopeSpec); null: the one geometry above")
    data: DataSpec = Field(default_factory=DataSpec)
    input: SolverRef = Field(default_factory=lambda: SolverRef(name="fbp"))
    target: Target = "ground_truth"
    input_scale: float = Field(2 * MU_WATER, gt=0, description="1/mm mapped to 1 before the network")
    model: UNetConfig = Field(default_factory=UNetConfig)
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @model_validator(mode="after")
    def _sizes(self):
        channels = 1 + (len(self.envelope.extra_channels) if self.envelope is not None else 0)
        if "in_channels" in self.model.model_fields_set and self.model.in_channels != channels:
            raise ValueError(f"model.in_channels: {self.model.in_channels} does not match the image plus "
                             f"envelope.extra_channels ({channels})")
        self.model.in_channels = channels
        m = 2**self.model.depth
        p = self.training.patch
        if p is not None:
            if p % m:
                raise ValueError(f"training.patch: {p} must be a multiple of 2**model.depth = {m}")
            if p > min(self.grid.shape):
                raise ValueError(f"training.patch: {p} is larger than the grid {list(self.grid.shape)}")
        elif self.training.dihedral:
            raise ValueError("training.dihedral: needs square training.patch crops (patch is null)")
        return self

    def target_spec(self) -> dict:
        """JSON description of the target: {"kind": "ground_truth"} or {"kind": "converged", "solver": ...}."""
        if self.target == "ground_truth":
            return {"kind": "ground_truth"}
        return {"kind": "converged", "solver": self.target.converged.model_dump(mode="json", exclude_none=True)}

    def resolved(self) -> dict:
        return self.model_dump(mode="json")

    def hash(self, exclude: Sequence[str] = ("out", "description")) -> str:
        data = {k: v for k, v in self.resolved().items() if k not in exclude}
        data["data"] = {k: v for k, v in data["data"].items() if k not in ("workers", "cache_dir")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a training YAML, apply ``--set KEY.PATH=VALUE`` overrides, validate (ConfigError FILE:LINE)."""
    from recon_cli.config import parse_yaml, set_path, parse_override

    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("training config not found", file=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read training config ({exc})", file=source) from None
    raw, lines = parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError("a training config must be a mapping of keys", file=f"{source}:1")
    set_paths = []
    for item in overrides:
        key_path, value = parse_override(item)
        set_path(raw, key_path, value, item)
        set_paths.append(key_path)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, source, lines, set_paths) from None
    except InputError as exc:  # e.g. geometry.from_file unreadable
        raise ConfigError(exc.message, file=exc.file or source, field=exc.field) from None


def _config_error(exc: ValidationError, source: str, lines: dict, set_paths: list[tuple]) -> ConfigError:
    """Every validation error, one ConfigError line each (ConfigErrors when several), in file order."""
    errors = [_one_error(err, source, lines, set_paths) for err in exc.errors(include_url=False)]
    from recon_cli.config import line_of

    unique = list({e.one_line(): e for e in errors}.values())
    unique.sort(key=lambda e: (e.file is not None, line_of(e.file)))
    return unique[0] if len(unique) == 1 else ConfigErrors(unique)


def _one_error(err: dict, source: str, lines: dict, set_paths: list[tuple]) -> ConfigError:
    from recon_cli.config import INTERNAL_LOC

    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p in ("ConvergedTarget",)
                                                                       or INTERNAL_LOC.match(p))))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key '{loc[-1]}'"
    elif err["type"] == "missing":
        msg = "missing required key"
    elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        msg = "expected a mapping of keys (key: value)"
    elif err["type"] in ("value_error", "assertion_error") and ", " in msg:
        msg = msg.split(", ", 1)[1]
        head, sep, rest = msg.partition(": ")
        if not loc and sep and " " not in head:  # model-level check naming its field "a.b: message"
            loc, msg = tuple(head.split(".")), rest
    field = ".".join(str(p) for p in loc) or None
    for sp in sorted(set_paths, key=len, reverse=True):
        if loc[: len(sp)] == sp:
            return ConfigError(msg, field=f"--set {field}")
    node = loc
    while node and node not in lines:
        node = node[:-1]
    return ConfigError(msg, file=f"{source}:{lines.get(node, 1)}", field=field)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Validate a mapping (tests, programmatic use); errors as ConfigError."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, "<dict>", {}, []) from None
