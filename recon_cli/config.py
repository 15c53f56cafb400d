"""The pipeline schema (pydantic), YAML loading with ``FILE:LINE`` errors, ``--set`` overrides.

A pipeline YAML is composed once to map every key path to its line, then validated;
each validation error becomes one :class:`~recon_cli.errors.ConfigError` line such as
``pipelines/x.yaml:12: solver.params.iteratons: unknown key 'iteratons'; did you mean
'iterations'?``. Overrides (``--set solver.params.lam=1e-3``) are parsed with YAML
rules and set into the raw mapping before validation, so they are checked the same way
and reported as ``--set solver.params.lam: ...``.

Relative paths written in a pipeline file (input.path, output.path, metrics.reference,
metrics.mask, checkpoint.dir, and model files named by a path) are relative to the folder
of that file, so ``recon run /somewhere/pipelines/x.yaml`` works from any folder; they are
rewritten on loading (:func:`resolve_relative_paths`). Paths given on the command line
(``-i``, ``-o``, ``--set``) and the default output ``out/<name>.h5`` are relative to the
current folder. A model given by a bare name (``model: postproc_fan60``) is a shipped model
(recon_cli/models) unless a file of that name lies next to the pipeline.
"""
from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Sequence, Union

import re

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, \
    model_serializer, model_validator

from recon_cli.constants import (MU_WATER, REFERENCE_DETECTOR_COUNT, REFERENCE_DETECTOR_SPACING, REFERENCE_N_ANGLES,
                                 REFERENCE_ORIGIN_DETECTOR, REFERENCE_SOURCE_ORIGIN)
from recon_cli.errors import ConfigError, ConfigErrors
from recon_cli.registries import OUTPUT_FORMATS, PREPROCESS_STEPS, PROJECTOR_KINDS, check_choice, reader_formats, \
    suggestion
from recon_cli.solvers.registry import SolverRef, solver_info

#: Metric names a pipeline may ask for (see recon_cli.metrics.compute_metrics).
METRIC_NAMES = ("psnr", "ssim", "rel_err", "rmse", "hu_rmse", "residual", "wall_time")
#: Metrics that need a reference image.
REFERENCE_METRICS = ("psnr", "ssim", "rel_err", "rmse", "hu_rmse")
MetricName = Literal["psnr", "ssim", "rel_err", "rmse", "hu_rmse", "residual", "wall_time"]
MetricList = list[MetricName]  # alias: MetricsSpec has a field named 'list'

Path_ = Annotated[str, Field(min_length=1)]
#: Names whose choices are a registry's (recon_cli.registries), checked when a pipeline is validated, so a
#: format registered at run time (a plug-in, a test) is accepted and an unknown one names the registered ones.
InputFormat = Annotated[str, AfterValidator(lambda v: check_choice(v, ["auto", *reader_formats()]))]
OutputFormat = Annotated[str, AfterValidator(lambda v: OUTPUT_FORMATS.choice(v))]
ProjectorKind = Annotated[str, AfterValidator(lambda v: PROJECTOR_KINDS.choice(v, ("auto",)))]


class Strict(BaseModel):
    """Base of every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class SimulateSpec(Strict):
    """The acquisition simulated from an image input (input.format dicom, recon_cli.simulate_dicom); defaults:
    the reference geometry (recon_cli.constants)."""

    geometry: Literal["fanflat", "parallel"] = Field(
        "fanflat", description="fanflat: flat-detector fan beam, views over 2*pi; parallel: views over pi")
    angles: int = Field(REFERENCE_N_ANGLES, ge=1, description="number of equally spaced views")
    detector_count: int = Field(REFERENCE_DETECTOR_COUNT, ge=1, description="detector elements")
    detector_spacing: float = Field(REFERENCE_DETECTOR_SPACING, gt=0, description="detector pitch, mm")
    source_origin: float = Field(REFERENCE_SOURCE_ORIGIN, gt=0,
                                 description="fanflat: source to rotation axis, mm")
    origin_detector: float = Field(REFERENCE_ORIGIN_DETECTOR, gt=0,
                                   description="fanflat: rotation axis to detector, mm")
    I0: Optional[float] = Field(None, gt=0, description="Poisson noise: incident photons per detector element; "
                                                          "default: no noise")
    seed: int = Field(0, ge=0, description="seed of the noise")


class InputSpec(Strict):
    path: Path_ = Field(description="input file, or folder for dicom and dicom-ctpd (relative to the current "
                                    "directory)")
    format: InputFormat = Field(
        "auto", description="file format; auto detects it by content (recon_cli.io.formats)")
    rows: Optional[Union[int, str, list[int]]] = Field(
        None, description="nxtomo/dxchange: detector rows (slices): an int (one slice), 'start:stop[:step]' "
                          "or a list; default all")
    cor_offset: Optional[Union[float, Literal["auto"]]] = Field(
        None, description="nxtomo/dxchange: rotation axis position minus the detector centre, pixels; auto: "
                          "estimated from views 180 degrees apart (recon_cli.centre_of_rotation)")
    pixel_size: Optional[float] = Field(None, gt=0, description="nxtomo/dxchange: detector pixel size in mm; "
                                                                "default: from the file")
    clamp: Optional[float] = Field(None, gt=0, description="nxtomo/dxchange: smallest transmission allowed "
                                                           "before the log; default: values <= 0 are an error")
    detector_row: Optional[int] = Field(None, ge=0, description="dicom-ctpd: 0-based detector row to "
                                                                "reconstruct; default: the central row")
    grid_shape: Optional[tuple[int, int]] = Field(None, description="nxtomo/dxchange/dicom-ctpd: reconstruction "
                                                                    "grid [ny, nx]; default from the detector")
    voxel_size: Optional[float] = Field(None, gt=0, description="nxtomo/dxchange/dicom-ctpd: voxel size in mm; "
                                                                "default from the detector")
    series_uid: Optional[str] = Field(None, min_length=1, description="dicom: the SeriesInstanceUID to read when "
                                                                      "the folder holds several series")
    simulate: Optional[SimulateSpec] = Field(None, description="dicom: the acquisition simulated from the image "
                                                               "series; default: the reference geometry, no noise")

    READER_OPTIONS: ClassVar[tuple[str, ...]] = ("rows", "cor_offset", "pixel_size", "clamp", "detector_row",
                                                 "grid_shape", "voxel_size", "series_uid", "simulate")

    def reader_options(self) -> dict[str, Any]:
        """The format options that are set (for recon_cli.io.formats.read_input; sections as dicts)."""
        options = {name: getattr(self, name) for name in self.READER_OPTIONS if getattr(self, name) is not None}
        return {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in options.items()}

    @model_serializer(mode="wrap")
    def _drop_unset_options(self, handler):
        """Reader options left unset are omitted, so the resolved pipeline (and its hash) only shows those used."""
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in self.READER_OPTIONS and v is None)}


class ProjectorSpec(Strict):
    kind: ProjectorKind = Field(
        "auto", description="auto: cuda on a GPU, else the cached matrix when it pays for the run's iterations x "
                            "slices and fits in memory (docs/cache.md), else astra")
    type: str = Field("auto", description="ASTRA projector type (e.g. line_fanflat, strip, linear) or auto")


class LogTransformStep(Strict):
    """Raw intensities -> line integrals: y = -log(I / I0)."""

    step: Literal["log_transform"]
    I0: Optional[float] = Field(None, gt=0, description="incident intensity; default: the input's I0 "
                                                          "attribute, else the largest value")
    clamp: Optional[float] = Field(None, gt=0, description="counts below this are raised to it before the log; "
                                                             "default: counts <= 0 are an error")


class RemoveStripesStep(Strict):
    """Stripes in the sinogram (rings in the image) removed from line integrals (recon_cli.stripes)."""

    step: Literal["remove_stripes"]
    method: Literal["sorting"] = Field("sorting", description="sorting: each detector column sorted along the "
                                                              "angles, median-filtered across columns, unsorted")
    size: int = Field(11, ge=3, le=201, description="median filter width across detector columns (odd numbers "
                                                    "are usual); wider removes wider stripes")


PREPROCESS_STEPS.add("log_transform", "recon_cli.preprocess:log_transform_step", model=LogTransformStep)
PREPROCESS_STEPS.add("remove_stripes", "recon_cli.stripes:remove_stripes_step", model=RemoveStripesStep)
#: One preprocessing step, chosen by its ``step`` key: the models registered above (a new step: its model
#: here, its ``apply(sinogram, step)`` in its own module, one registration line).
_STEP_MODELS = tuple(PREPROCESS_STEPS.get(name).facts["model"] for name in PREPROCESS_STEPS.names())
PreprocessStep = Annotated[Union[_STEP_MODELS], Field(discriminator="step")]


class PacsSpec(Strict):
    """Send the DICOM output to a PACS with C-STORE (recon_cli.io.pacs.send_series)."""

    host: str = Field(min_length=1, description="PACS host name or address")
    port: int = Field(ge=1, le=65535, description="PACS DICOM port")
    ae_title: str = Field(min_length=1, max_length=16, description="the PACS's AE title (called AE)")
    calling_ae_title: str = Field("RECON_CLI", min_length=1, max_length=16, description="our AE title")
    retries: int = Field(3, ge=0, le=20, description="further associations tried after a failure")
    timeout: float = Field(30.0, gt=0, description="seconds to wait for the connection and each response")


class OutputSpec(Strict):
    path: Optional[Path_] = Field(None, description="HDF5 output; other formats change its suffix. "
                                                    "Default: out/<name>.h5")
    formats: list[OutputFormat] = Field(
        default_factory=lambda: ["hdf5"], min_length=1,
        description=", ".join(OUTPUT_FORMATS.get(n)["description"] for n in OUTPUT_FORMATS.names()))
    png_window: Optional[tuple[float, float]] = Field(
        None, description="[center, width] in HU mapped to black..white (e.g. [40, 400]); "
                          "default: the image's min..max")
    pacs: Optional[PacsSpec] = Field(None, description="send the DICOM output to a PACS; the record of what was "
                                                       "stored goes to <stem>.pacs.json")

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _pacs_needs_dicom(self):
        if self.pacs is not None and "dicom" not in self.formats:
            raise ValueError("pacs sends the DICOM output: add dicom to output.formats")
        return self

    @model_serializer(mode="wrap")
    def _drop_unset_pacs(self, handler):
        """``pacs`` left unset is omitted, so pipelines without it keep their resolved form (and hash)."""
        data = handler(self)
        if data.get("pacs") is None:
            data.pop("pacs", None)
        return data

    @field_validator("png_window")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not v[1] > 0:
            raise ValueError(f"window width (HU) must be positive, got {v[1]}")
        return v


class MetricsSpec(Strict):
    reference: Optional[Path_] = Field(None, description="reference image: HDF5, a DICOM CT series (folder), TIFF "
                                                        "or NIfTI (recon_cli.io.images); default: the input's "
                                                        "/reference")
    list: MetricList = Field(default_factory=lambda: [*METRIC_NAMES], description="metrics to compute")
    mu_water: float = Field(MU_WATER, gt=0, description="attenuation of water in 1/mm, for HU")
    mask: Optional[Path_] = Field(None, description="image (as reference); metrics only where it is non-zero")


class CheckpointSpec(Strict):
    """Checkpoints of iterative runs, for ``recon run --resume`` (see recon_cli.checkpoint)."""

    every: Optional[int] = Field(None, ge=0, description="iterations between checkpoints; 0: never; default: "
                                 "every 50 iterations for iterative solvers that can resume, never otherwise")
    dir: Optional[Path_] = Field(None, description="folder for checkpoint files; default: .recon-checkpoints "
                                                   "next to the output (removed when the run finishes)")


class PipelineConfig(Strict):
    """One pipeline: input -> preprocess -> projector -> solver -> outputs + metrics."""

    name: str = Field(min_length=1)
    input: InputSpec
    device: Literal["auto", "cpu", "gpu"] = "auto"
    projector: ProjectorSpec = Field(default_factory=ProjectorSpec)
    preprocess: list[PreprocessStep] = Field(default_factory=list)
    solver: SolverRef
    output: OutputSpec = Field(default_factory=OutputSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)

    _source: Optional[str] = PrivateAttr(default=None)
    _lines: dict = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        """The name makes the default output path and the DICOM SeriesDescription: one file name, printable."""
        return check_safe_name(value)

    @model_validator(mode="after")
    def _default_output(self):
        if self.output.path is None:
            self.output.path = f"out/{self.name}.h5"
        return self

    # -- where things came from (for error messages after validation) --
    @property
    def source(self) -> str | None:
        """The YAML file this came from, if any."""
        return self._source

    def where(self, *path: str | int) -> str | None:
        """``FILE:LINE`` of a key path, or of its nearest ancestor present in the file."""
        if self._source is None:
            return None
        return f"{self._source}:{_nearest_line(self._lines, tuple(path))}"

    def output_paths(self) -> dict[str, Path]:
        """Format -> path for every requested output (relative to the current directory)."""
        path = Path(self.output.path)
        known = path.suffix.lower() in (".h5", ".hdf5", ".nxs")
        stem = path.with_suffix("") if known else path
        suffix = {fmt: OUTPUT_FORMATS.get(fmt)["suffix"] for fmt in self.output.formats}  # recon_cli.registries
        if known and "hdf5" in suffix:
            suffix["hdf5"] = path.suffix
        return {fmt: stem.with_name(stem.name + suffix[fmt]) for fmt in self.output.formats}

    def pacs_record_path(self) -> Path | None:
        """Where the record of what was sent to the PACS goes (``<stem>.pacs.json``); None without output.pacs."""
        if self.output.pacs is None:
            return None
        path = Path(self.output.path)
        stem = path.with_suffix("") if path.suffix.lower() in (".h5", ".hdf5", ".nxs") else path
        return stem.with_name(stem.name + ".pacs.json")


#: Longest pipeline name (bytes, UTF-8): leaves room for suffixes and temporary names within 255.
MAX_NAME_BYTES = 200


def check_safe_name(value: str) -> str:
    """``value`` if it is usable as one file name and a DICOM text value; ValueError otherwise
    (path separators, '..', a leading dot, control characters such as newlines or escape codes)."""
    bad = [c for c in value if ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xA0]
    if bad:
        raise ValueError(f"must not contain control characters (found {ascii(bad[0])})")
    if "/" in value or "\\" in value:
        raise ValueError("must be a name, not a path (no '/' or '\\')")
    if value.strip() in ("", ".", "..") or value.startswith("."):
        raise ValueError(f"must not start with '.' (got {value!r})")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"must be at most {MAX_NAME_BYTES} bytes long (got {len(value.encode('utf-8'))})")
    return value


# ----------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot (1e-3, 2E5) as numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))

# YAML 1.1 reads 10:20 as the base-60 integer 620; YAML 1.2 has no such numbers, and a detector row
# range "10:20" must stay a string. Drop the base-60 resolvers and read integers the YAML 1.2 way.
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _resolvers[:] = [(tag, rx) for tag, rx in _resolvers if not (rx.match("1:30") or rx.match("1:30.5"))]
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))


#: Limits of a YAML document (a pipeline holds a few dozen values): nesting depth, and values once
#: aliases are expanded. They refuse recursive aliases, alias bombs and runaway nesting up front.
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000
#: Largest pipeline file (bytes): pipelines are a few hundred bytes; a multi-megabyte document would
#: take minutes to parse before the other limits could refuse it.
MAX_YAML_BYTES = 1 << 20


def _yaml_refusal(problem: str, where) -> yaml.MarkedYAMLError:
    """A YAML error at the start of ``where`` (a node or an event)."""
    return yaml.constructor.ConstructorError(None, None, problem, where.start_mark)


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_YAML_DEPTH from the parser's events (iterative, before the
    recursive composer could take seconds to exhaust the stack)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise _yaml_refusal(f"nested more than {MAX_YAML_DEPTH} levels deep", event)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _expanded_size(node: yaml.Node, depth: int, on_path: set, sizes: dict) -> int:
    """Values under ``node`` with aliases expanded; MarkedYAMLError beyond the limits or on a cycle."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in on_path:
        raise _yaml_refusal("recursive alias (an anchor used inside itself)", node)
    if depth > MAX_YAML_DEPTH:
        raise _yaml_refusal(f"nested more than {MAX_YAML_DEPTH} levels deep", node)
    on_path.add(key)
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    total = 1 + sum(_expanded_size(child, depth + 1, on_path, sizes) for child in children)
    on_path.discard(key)
    if total > MAX_YAML_VALUES:
        raise _yaml_refusal(f"expands to more than {MAX_YAML_VALUES} values (aliases nested in aliases?)", node)
    sizes[key] = total
    return total


def yaml_compose(text: str) -> yaml.Node | None:
    """The node graph of YAML text, checked against MAX_YAML_BYTES / MAX_YAML_DEPTH / MAX_YAML_VALUES;
    yaml.YAMLError otherwise."""
    if len(text) > MAX_YAML_BYTES:
        raise yaml.YAMLError(f"document of {len(text)} characters is larger than the {MAX_YAML_BYTES} allowed")
    _check_depth(text)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise yaml.YAMLError(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)") from None
    if node is not None:
        _expanded_size(node, 0, set(), {})
    return node


def yaml_load(text: str) -> Any:
    """YAML text -> Python values (safe; 1e-3 is a float). Every problem is a yaml.YAMLError."""
    yaml_compose(text)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a 5000-digit integer, a bad date
        raise yaml.YAMLError(f"cannot read a value ({' '.join(str(exc).split())[:200]})") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read, override and validate a pipeline YAML; every problem is one ConfigError line."""
    path = Path(path)
    source = str(path)
    try:
        import stat

        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("is not a regular file (a folder, FIFO or device)", file=source)
        if info.st_size > MAX_YAML_BYTES:
            raise ConfigError(f"pipeline file of {info.st_size} bytes is larger than the {MAX_YAML_BYTES} "
                              "allowed", file=source)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("pipeline file not found", file=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file ({exc})", file=source) from None
    return config_from_text(text, source=source, overrides=overrides, base_dir=path.parent)


def config_from_text(text: str, *, source: str = "<string>", overrides: Sequence[str] = (),
                     base_dir: str | Path | None = None) -> PipelineConfig:
    """Validate YAML text (see :func:`load_config`); relative paths in it are relative to ``base_dir``
    (None: the current folder)."""
    raw, lines = parse_yaml(text, source)
    return config_from_dict(raw, source=source, lines=lines, overrides=overrides, base_dir=base_dir)


def config_from_dict(raw: Any, *, source: str | None = None, lines: dict | None = None,
                     overrides: Sequence[str] = (), base_dir: str | Path | None = None) -> PipelineConfig:
    """Validate a raw mapping; ``lines`` maps key paths to line numbers for messages; relative paths
    in ``raw`` are relative to ``base_dir`` (None: the current folder), those in ``overrides`` to the
    current folder."""
    lines = lines or {}
    if raw is None:
        raise ConfigError("empty pipeline", file=f"{source}:1" if source else None)
    if not isinstance(raw, dict):
        raise ConfigError(f"a pipeline must be a mapping of keys, got {type(raw).__name__}",
                          file=f"{source}:1" if source else None)
    raw = _drop_empty_sections(_deep_copy(raw))
    if base_dir is not None:
        resolve_relative_paths(raw, Path(base_dir))
    set_paths = []
    for item in overrides:
        key_path, value = parse_override(item)
        set_path(raw, key_path, value, item)
        set_paths.append(key_path)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise _all_errors(exc, raw, source, lines, set_paths) from None
    cfg._source = source
    cfg._lines = lines
    return cfg


def with_overrides(cfg: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """A copy of ``cfg`` with dotted keys set (None values skipped), validated again."""
    raw = resolved_config(cfg)
    set_paths = []
    for dotted, value in values.items():
        if value is None:
            continue
        key_path = _split_key(dotted, dotted)
        set_path(raw, key_path, value, dotted)
        set_paths.append(key_path)
    if not any(path[0] == "solver" for path in set_paths):
        raw["solver"] = cfg.solver  # validated already: its typed parameters are kept, not validated again
    try:
        new = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise _all_errors(exc, raw, None, {}, set_paths) from None
    new._source, new._lines = cfg._source, cfg._lines
    return new


def parse_yaml(text: str, source: str) -> tuple[Any, dict]:
    """(data, {key path: line}) of YAML text; syntax errors and duplicate keys -> ConfigError."""
    try:
        node = yaml_compose(text)
        data = yaml_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        line = max(1, min(line, text.count("\n") + (0 if text.endswith("\n") else 1)))
        what = " ".join(s for s in (exc.context, exc.problem) if s)
        raise ConfigError(f"YAML syntax error: {what}", file=f"{source}:{line}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {exc}", file=source) from None
    lines: dict[tuple, int] = {}
    if node is not None:
        _map_lines(node, (), lines, source)
    return data, lines


def _map_lines(node: yaml.Node, path: tuple, lines: dict, source: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise ConfigError(f"duplicate key '{key}' (first on line {seen[key]})",
                                  file=f"{source}:{line}", field=_dotted(path + (key,)))
            seen[key] = line
            lines[path + (key,)] = line
            _map_lines(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _map_lines(item, path + (i,), lines, source)


def _nearest_line(lines: dict, path: tuple) -> int:
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


# ----------------------------------------------------------------------------- --set


def parse_override(item: str) -> tuple[tuple, Any]:
    """``'solver.params.lam=1e-3'`` -> (('solver', 'params', 'lam'), 0.001); values parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"expected KEY.PATH=VALUE, got {item!r}", field="--set")
    key, _, text = item.partition("=")
    key_path = _split_key(key.strip(), item)
    try:
        value = yaml_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {text!r} ({str(exc).splitlines()[0]})", field=f"--set {key}") from None
    return key_path, value


def _split_key(key: str, item: str) -> tuple:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"bad key path in {item!r}", field="--set")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def set_path(raw: dict, key_path: tuple, value: Any, item: str) -> None:
    """Set ``value`` at ``key_path`` in the raw mapping (sections made as needed; ``item`` names the override)."""
    node: Any = raw
    for i, key in enumerate(key_path[:-1]):
        here = _dotted(key_path[: i + 1])
        if isinstance(node, dict):
            if isinstance(key_path[i + 1], int) and not isinstance(node.get(key), list):
                raise ConfigError(f"'{here}' is not a list", field=f"--set {_dotted(key_path)}")
            if not isinstance(node.get(key), (dict, list)):
                if key in node and node[key] is not None:
                    raise ConfigError(f"'{here}' is a value, not a section", field=f"--set {_dotted(key_path)}")
                node[key] = {}
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int):
            if key >= len(node):
                raise ConfigError(f"'{_dotted(key_path[:i])}' has {len(node)} entries, no index {key}",
                                  field=f"--set {_dotted(key_path)}")
            node = node[key]
        else:
            raise ConfigError(f"'{_dotted(key_path[:i])}' is not a section", field=f"--set {_dotted(key_path)}")
    last = key_path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(f"'{_dotted(key_path[:-1])}' is a list; use an index below {len(node)}",
                              field=f"--set {_dotted(key_path)}")
        node[last] = value
    else:
        node[last] = value


# ----------------------------------------------------------------------------- errors


def _all_errors(exc: ValidationError, raw: dict, source: str | None, lines: dict,
                set_paths: list[tuple]) -> ConfigError:
    """Every validation error, each one ``FILE:LINE: field: message`` line (ConfigErrors when several).

    Pydantic reports a value that fits no member of a union once per member, at locations carrying
    the member's internal name (``lam.constrained-float``, ``rows.list[int].0``): those names are
    dropped and the alternatives merged into one message (``Input should be a valid number or 'auto'``).
    """
    groups: dict[tuple, list[tuple[tuple, dict]]] = {}
    for err in exc.errors(include_url=False):
        loc = _repair_loc(tuple(err["loc"]), raw)
        clean, union_at = _drop_internal_loc(loc, raw, err["type"])
        key = union_at if union_at is not None else clean
        groups.setdefault(key, []).append((clean, err))
    described = []
    for key, members in groups.items():
        if len(members) == 1 or any(len(clean) < len(key) for clean, _ in members):
            for clean, err in members:
                described.append(_describe(err, clean, raw, source, lines, set_paths))
            continue
        merged = dict(members[0][1], type="union", msg=_union_message(key, members))
        described.append(_describe(merged, key, raw, source, lines, set_paths))
    unique = list({e.one_line(): e for e in described}.values())
    unique.sort(key=lambda e: (e.file is not None, line_of(e.file)))  # --set errors first, then file order
    return unique[0] if len(unique) == 1 else ConfigErrors(unique)


def line_of(where: str | None) -> int:
    """The line number of a ``FILE:LINE`` location (0 when it has none)."""
    tail = (where or "").rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


#: Locations pydantic adds for union members and validators (never keys of a pipeline).
INTERNAL_LOC = re.compile(r"^(constrained-\w+|literal\[.*\]|function-\w+\[.*\]|tagged-union\[.*\]|"
                           r"\w+\[.*\]|int|float|str|bool|none|list|dict|tuple|json-or-python\[.*\])$")


def _drop_internal_loc(loc: tuple, raw: Any, kind: str) -> tuple[tuple, tuple | None]:
    """(the location without pydantic's internal union/validator names, the location of the union
    where the first one was dropped, or None)."""
    out: list = []
    union_at = None
    node = raw
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
            continue
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
            continue
        internal = isinstance(part, str) and (
            INTERNAL_LOC.match(part) is not None
            or not isinstance(node, (dict, list))  # below a plain value: only validator names remain
            or (isinstance(node, dict) and not last and loc[i + 1] in node))  # a discriminated-union tag
        if internal and not (last and kind in ("missing", "extra_forbidden")):
            if union_at is None:
                union_at = tuple(out)
            continue
        out.append(part)
        node = node.get(part) if isinstance(node, dict) else None
    return tuple(out), union_at


def _union_message(at: tuple, members: list[tuple[tuple, dict]]) -> str:
    """One message for a value that fits none of a union's members."""
    alternatives = []
    for clean, err in members:
        msg = _plain_message(err)
        text = msg.removeprefix("Input should be ").split(", unable to")[0]
        sub = _dotted(clean[len(at):])
        text = f"a list whose item {sub} is {text}" if sub else text
        if text not in alternatives:
            alternatives.append(text)
    return "Input should be " + " or ".join(alternatives)


def _plain_message(err: dict) -> str:
    """Pydantic's message without library internals (class names, 'Value error, ' prefixes)."""
    kind, msg = err["type"], err["msg"]
    if kind in ("value_error", "assertion_error"):
        return msg.split(", ", 1)[1] if ", " in msg else msg
    if kind in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return "expected a mapping of keys (key: value)"
    if kind in ("tuple_type", "list_type"):
        return "Input should be a list ([a, b, ...])"
    return msg


def _describe(err: dict, loc: tuple, raw: dict, source: str | None, lines: dict,
              set_paths: list[tuple]) -> ConfigError:
    kind = err["type"]
    msg = err["msg"] if kind == "union" else _plain_message(err)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        valid = _valid_keys(loc[:-1], raw)
        msg = f"unknown key '{key}'" + _suggest(key, valid)
    elif kind == "missing":
        msg = f"missing list item {loc[-1]} (too few items)" if loc and isinstance(loc[-1], int) \
            else "missing required key"
    elif kind == "union_tag_invalid":
        tag = str(err.get("ctx", {}).get("tag"))
        tags = [t.strip("'\" ") for t in str(err.get("ctx", {}).get("expected_tags", "")).split(",")]
        msg = f"unknown step '{tag}'" + _suggest(tag, tags, "steps")
    elif kind == "union_tag_not_found":
        msg = f"missing key {err.get('ctx', {}).get('discriminator', 'step')}"
    elif kind == "literal_error" and isinstance(err.get("input"), str):
        expected = [t.strip("'\" ") for t in str(err.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")]
        expected = [e for e in expected if e]
        msg = f"unknown value '{err['input']}'" + _suggest(err["input"], expected, "values")
    field = _dotted(loc) or None
    for sp in sorted(set_paths, key=len, reverse=True):
        if loc[: len(sp)] == sp:
            where = f"--set {_dotted(sp)}"
            return ConfigError(msg, field=where if loc == sp else f"{where}: {field}")
    file = f"{source}:{_nearest_line(lines, loc)}" if source else None
    return ConfigError(msg, file=file, field=field)


def _suggest(word: str, valid: Sequence[str], what: str = "keys") -> str:
    return suggestion(word, [str(v) for v in valid], what)


def _repair_loc(loc: tuple, raw: Any) -> tuple:
    """Insert the 'params' that errors raised inside SolverRef's validator lose.

    SolverRef validates its params in a model validator, so pydantic reports
    ``solver.iteratons`` for ``solver.params.iteratons`` (at any depth of nesting).
    """
    out: list = []
    node = raw
    ref_keys = set(SolverRef.model_fields)
    for part in loc:
        if (isinstance(node, dict) and part not in ref_keys and part not in node
                and _is_ref_position(tuple(out), raw)):
            out.append("params")
            node = node.get("params")
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _is_ref_position(path: tuple, raw: Any) -> bool:
    return _model_at(path, raw) is SolverRef


def _valid_keys(path: tuple, raw: Any) -> list[str]:
    model = _model_at(path, raw)
    if model is None:
        return []
    return [name for name in model.model_fields if not name.startswith("_")]


def _model_at(path: tuple, raw: Any) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``path`` (solver params: the registered model)."""
    model: Any = PipelineConfig
    node = raw
    i = 0
    while i < len(path):
        part = path[i]
        if model is SolverRef and part == "params":
            name = node.get("name") if isinstance(node, dict) else None
            try:
                model = solver_info(str(name)).params_model
            except ConfigError:
                return None
        elif isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            model = field.annotation
        else:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        i += 1
        # Unwrap Optional / list / Union (discriminated by 'step') until a model or the next key.
        while True:
            model = _strip_annotated(model)
            origin = typing.get_origin(model)
            if origin in (Union, types.UnionType):
                args = [a for a in typing.get_args(model) if a is not type(None)]
                models = [a for a in (_strip_annotated(a) for a in args)
                          if isinstance(a, type) and issubclass(a, BaseModel)]
                if len(models) == 1:
                    model = models[0]
                elif models and isinstance(node, dict) and "step" in node:
                    model = next((m for m in models if _literal_default(m, "step") == node["step"]), None)
                else:
                    model = models[0] if models else (args[0] if args else None)
                continue
            if origin in (list, tuple) and i < len(path) and isinstance(path[i], int):
                model = typing.get_args(model)[0]
                node = node[path[i]] if isinstance(node, list) and path[i] < len(node) else None
                i += 1
                continue
            break
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _literal_default(model: type[BaseModel], field: str) -> Any:
    ann = model.model_fields[field].annotation
    args = typing.get_args(ann)
    return args[0] if args else None


#: Key paths of the file paths of a pipeline (besides ``model`` keys anywhere under ``solver``).
PATH_KEYS = (("input", "path"), ("output", "path"), ("metrics", "reference"), ("metrics", "mask"),
             ("checkpoint", "dir"))
#: Suffixes of model files (a value without a folder and without one of these may be a shipped model's name).
MODEL_SUFFIXES = (".onnx", ".pt", ".json")


def resolve_relative_paths(raw: dict, base_dir: Path) -> None:
    """Rewrite, in place, the relative file paths of a raw pipeline as seen from the current folder,
    for a pipeline file in ``base_dir``. Model values that are bare names stay names unless a file
    of that name (or with .onnx) lies in ``base_dir``."""
    if str(base_dir) in ("", "."):
        return
    for section, key in PATH_KEYS:
        node = raw.get(section)
        if isinstance(node, dict) and _is_relative_path(node.get(key)):
            node[key] = _join(base_dir, node[key])
    _resolve_models(raw.get("solver"), base_dir)


def _resolve_models(node: Any, base_dir: Path) -> None:
    if isinstance(node, list):
        for item in node:
            _resolve_models(item, base_dir)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "model" and _is_relative_path(value):
            bare = "/" not in value and os.sep not in value
            beside = base_dir / value
            if not bare or beside.is_file() or beside.with_name(beside.name + ".onnx").is_file() or \
                    (beside.suffix in MODEL_SUFFIXES and beside.with_suffix(".onnx").is_file()):
                node[key] = _join(base_dir, value)
        else:
            _resolve_models(value, base_dir)


def _is_relative_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and not os.path.isabs(os.path.expanduser(value))


def _join(base_dir: Path, value: str) -> str:
    return os.path.normpath(os.path.join(str(base_dir), os.path.expanduser(value)))


def _drop_empty_sections(raw: dict) -> dict:
    """``preprocess:`` / ``output:`` / ``solver: {params:}`` left empty in YAML mean 'the defaults'."""
    for key in ("projector", "preprocess", "output", "metrics", "checkpoint"):
        if key in raw and raw[key] is None:
            del raw[key]
    solver = raw.get("solver")
    if isinstance(solver, dict) and "params" in solver and solver["params"] is None:
        solver["params"] = {}
    return raw


def _dotted(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- resolved form


def resolved_config(cfg: PipelineConfig) -> dict:
    """The pipeline with every default filled in (JSON types only)."""
    return cfg.model_dump(mode="json")


def resolved_yaml(cfg: PipelineConfig) -> str:
    """:func:`resolved_config` as YAML text (keys in schema order)."""
    return yaml.safe_dump(resolved_config(cfg), sort_keys=False, default_flow_style=None)


def config_hash(cfg: PipelineConfig | dict) -> str:
    """SHA-256 (hex) of the canonical JSON of the resolved pipeline: equal hashes, equal runs."""
    data = resolved_config(cfg) if isinstance(cfg, PipelineConfig) else cfg
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
