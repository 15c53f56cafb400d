"""Registries of the extension points other than solvers: input formats, output formats, projector kinds
and preprocessing steps (solvers: recon_cli.solvers.registry).

Each registry is the one list of its names: the pipeline schema's choices (recon_cli.config), the
runner's dispatch and ``recon info`` read it. An entry names its implementation as
``"module:attribute"`` and the module is imported only when the entry is used, so ``recon validate``
and ``recon --version`` import no reader, writer or projector (nor h5py, pydicom, astra). Adding a
format = its own module + one ``add`` line here (or a call to ``add`` from anywhere, e.g. a test).

Entries carry facts the light side needs without importing the implementation:

- input formats (:data:`INPUT_FORMATS`): ``options`` (the input.* keys the reader takes), ``hu``
  (the file holds HU: the reader takes ``mu_water`` in 1/mm), ``describe`` (``"module:function"``
  of ``recon info``: ``describe(path, show_phi) -> dict``); a reader of None marks a format that
  ``recon info`` knows but that is no projection data (tiff, nifti).
  ``reader(path, **options) -> Sinogram``.
- output formats (:data:`OUTPUT_FORMATS`): ``suffix`` (added to the output stem), ``folder`` (a
  folder of one file per slice), ``description``. ``writer(path, volume, voxel_size, facts,
  overwrite=...)``, ``facts`` a recon_cli.io.writers.OutputFacts.
- projector kinds (:data:`PROJECTOR_KINDS`): ``gpu`` (needs a GPU). The target is the Operator class,
  ``cls(geometry, grid, projector_type)``.
- preprocessing steps (:data:`PREPROCESS_STEPS`, filled by recon_cli.config next to each step's
  parameter model): ``model`` (the pydantic model of the step). ``apply(sinogram, step) -> Sinogram``.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from recon_cli.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One registered implementation: ``target`` is ``"module:attribute"`` (imported by :meth:`load`)
    or the object itself; ``facts`` what the registry records about it."""

    name: str
    target: Union[str, Callable[..., Any], None]
    facts: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """The implementation (its module imported on first use)."""
        return resolve(self.target)

    def __getitem__(self, key: str) -> Any:
        return self.facts[key]


def resolve(target: Union[str, Callable[..., Any], None]) -> Any:
    """``"module:attribute"`` -> that attribute (the module imported); other values as they are."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Registry:
    """Names -> entries, in registration order; ``what`` names the kind in messages, ``field`` the
    pipeline key an unknown name is reported at."""

    def __init__(self, what: str, field: str):
        self.what, self.field = what, field
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: Union[str, Callable[..., Any], None], *, replace: bool = False,
            **facts: Any) -> Entry:
        """Register ``target`` under ``name`` (RuntimeError when taken, unless ``replace``)."""
        if name in self._entries and not replace:
            raise RuntimeError(f"{self.what} {name!r} registered twice")
        entry = Entry(name, target, dict(facts))
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (a test's own entry)."""
        self._entries.pop(name, None)

    def names(self, **facts: Any) -> list[str]:
        """Every name (registration order); with ``facts``, those whose facts have these values."""
        return [n for n, e in self._entries.items() if all(e.facts.get(k) == v for k, v in facts.items())]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        """The entry, or ConfigError (at :attr:`field`) naming the closest registered name."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.what} {name!r}{suggestion(str(name), self.names())}", field=self.field)
        return self._entries[name]

    def choice(self, name: str, extra: tuple[str, ...] = (), **facts: Any) -> str:
        """``name`` if registered (among those with ``facts``) or in ``extra``; else ValueError in the
        schema's words ("unknown value 'x'; did you mean 'y'?"), for a pydantic validator."""
        return check_choice(name, [*extra, *self.names(**facts)])


def check_choice(name: str, valid: list[str]) -> str:
    """``name`` if in ``valid``, else ValueError "unknown value 'x'; did you mean 'y'?" (or the valid values)."""
    if name not in valid:
        raise ValueError(f"unknown value '{name}'{suggestion(str(name), valid, 'values')}")
    return name


def suggestion(word: str, valid: list[str], what: str = "") -> str:
    """"; did you mean 'x'?" for a close name, else "; valid <what>: a, b" (or "; available: a, b")."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if not valid:
        return ""
    return f"; valid {what}: {', '.join(valid)}" if what else f"; available: {', '.join(valid)}"


# ----------------------------------------------------------------------------- input formats

#: input.* options of the synchrotron readers, and of every reader that builds its own grid.
_GRID = ("grid_shape", "voxel_size")
_SYNCHROTRON = ("rows", "cor_offset", "pixel_size", "clamp", *_GRID)

INPUT_FORMATS = Registry("input format", "input.format")
INPUT_FORMATS.add("hdf5", "recon_cli.io.hdf5:read_sinogram", options=(), hu=False,
                  describe="recon_cli.io.formats:describe_hdf5")
INPUT_FORMATS.add("nxtomo", "recon_cli.io.nexus:read_nxtomo", options=_SYNCHROTRON, hu=False,
                  describe="recon_cli.io.formats:describe_nexus")
INPUT_FORMATS.add("dxchange", "recon_cli.io.nexus:read_dxchange", options=_SYNCHROTRON, hu=False,
                  describe="recon_cli.io.formats:describe_nexus")
INPUT_FORMATS.add("dicom-ctpd", "recon_cli.io.dicom_ctpd:read_ctpd", options=("detector_row", *_GRID), hu=False,
                  describe="recon_cli.io.formats:describe_ctpd")
INPUT_FORMATS.add("dicom", "recon_cli.simulate_dicom:read_dicom_image_input", options=("series_uid", "simulate"),
                  hu=True, describe="recon_cli.io.formats:describe_dicom")
INPUT_FORMATS.add("tiff", None, describe="recon_cli.io.formats:describe_image")
INPUT_FORMATS.add("nifti", None, describe="recon_cli.io.formats:describe_image")


def reader_formats() -> list[str]:
    """The input formats a pipeline can read (those with a reader)."""
    return [n for n in INPUT_FORMATS.names() if INPUT_FORMATS.get(n).target is not None]


# ----------------------------------------------------------------------------- output formats

OUTPUT_FORMATS = Registry("output format", "output.formats")
OUTPUT_FORMATS.add("hdf5", "recon_cli.io.writers:write_hdf5", suffix=".h5", folder=False,
                   description="hdf5 (.h5)")
OUTPUT_FORMATS.add("png", "recon_cli.io.writers:write_png", suffix=".png", folder=False, description="png (.png)")
OUTPUT_FORMATS.add("tiff", "recon_cli.io.writers:write_tiff", suffix=".tif", folder=False,
                   description="tiff (.tif)")
OUTPUT_FORMATS.add("nifti", "recon_cli.io.writers:write_nifti", suffix=".nii.gz", folder=False,
                   description="nifti (.nii.gz)")
OUTPUT_FORMATS.add("dicom", "recon_cli.io.writers:write_dicom", suffix="_dicom", folder=True,
                   description="dicom (a folder <stem>_dicom/)")
OUTPUT_FORMATS.add("tiff_slices", "recon_cli.io.writers:write_tiff_slices", suffix="_tiff", folder=True,
                   description="tiff_slices (a folder <stem>_tiff/ of one float32 TIFF per slice)")


def folder_formats() -> list[str]:
    """Output formats written as a folder of files (one per slice)."""
    return OUTPUT_FORMATS.names(folder=True)


# ----------------------------------------------------------------------------- projector kinds

PROJECTOR_KINDS = Registry("projector kind", "projector.kind")
PROJECTOR_KINDS.add("astra", "recon_cli.projectors.astra_cpu:AstraCPUProjector", gpu=False)
PROJECTOR_KINDS.add("matrix", "recon_cli.projectors.astra_matrix:AstraMatrixProjector", gpu=False)
PROJECTOR_KINDS.add("cuda", "recon_cli.projectors.astra_cuda:AstraCUDAProjector", gpu=True)


def projector_kind_of(op: Any) -> str:
    """The registered kind of projector ``op`` (by its class), else its class name."""
    cls = type(op)
    target = f"{cls.__module__}:{cls.__qualname__}"
    for name in PROJECTOR_KINDS.names():
        entry = PROJECTOR_KINDS.get(name)
        if entry.target == target or entry.target is cls:
            return name
    return cls.__name__


# ----------------------------------------------------------------------------- preprocessing steps

PREPROCESS_STEPS = Registry("preprocess step", "preprocess")
