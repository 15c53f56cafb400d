"""One registry of solvers, serving the CLI, the YAML schema and ``recon solvers``.

A solver is a pure function ``solve(op, sinogram, params, callback) -> Reconstruction``
registered with a pydantic parameter model. Solvers compose by name through
:class:`SolverRef` (SV-TV's pre-estimate, RISING's iterative solver, graphLa's Psi).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from recon_cli.errors import ConfigError

if TYPE_CHECKING:  # annotations only: the registry itself stays free of numpy and the solvers
    from recon_cli.ops.operator import Operator
    from recon_cli.sinogram import Reconstruction, Sinogram

#: Every solver: name -> the module under recon_cli.solvers that registers it, and the module of the
#: same name under recon_cli.solvers.params that declares it (parameter model, description, iterative;
#: no numpy). The one list of solvers: ``recon solvers``, the pipeline schema and
#: docs/gen_pipelines_doc.py read it through :func:`solver_names`, :func:`solver_info` (imports the
#: declaration only, so ``recon validate`` and ``recon solvers`` need no numpy) and :func:`get_solver`
#: (imports the solver's module, only when that solver is asked for).
SOLVER_MODULES: dict[str, str] = {
    "fbp": "fbp", "sirt": "sirt", "cgls": "cgls", "sgp_tv": "sgp_tv", "unet": "unet", "tv": "tv",
    "svtv": "svtv", "tpv": "tpv", "graphla": "graphla", "tikhonov": "tikhonov", "rising": "rising",
}


@dataclass
class IterationState:
    """What a solver reports after each iteration; ``x`` is the current iterate (not a copy)."""

    iteration: int
    x: Any
    objective: float | None = None
    residual: float | None = None
    gap: float | None = None
    extra: dict | None = None


class Callback(Protocol):
    def __call__(self, state: IterationState) -> bool | None:
        """Called after each iteration; returning True stops the solver early."""


class SolverParams(BaseModel):
    """Base of every solver's parameter model: strict, unknown keys are errors.

    ``renamed``: former parameter names -> current ones. A former name is still accepted for one release,
    with a FutureWarning (logged as a warning by the CLI) naming the new one. Given with its current name,
    the later of the two in the mapping wins (``--set`` with a former name overrides the file's value).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)
    renamed: ClassVar[dict[str, str]] = {}
    #: The solver needs a projector whose adjoint is the exact transpose of its forward (a Krylov method):
    #: it refuses one that is not (Operator.exact_adjoint), and ``device: auto`` then takes the CPU.
    needs_exact_adjoint: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _accept_former_names(cls, data: Any) -> Any:
        if not (cls.renamed and isinstance(data, dict)) or not (set(cls.renamed) & set(data)):
            return data
        current: dict = {}
        for key, value in data.items():  # in order: a later key overrides an earlier one of the same idea
            name = cls.renamed.get(key, key)
            if name != key:
                warnings.warn(f"solver parameter {key!r} is deprecated and will be removed in the next release; "
                              f"use {name!r}", FutureWarning, stacklevel=2)
            current.pop(name, None)
            current[name] = value
        return current

    def __getattr__(self, name: str) -> Any:
        renamed = type(self).renamed
        if name in renamed:  # a former name read in Python: the same warning, then the current value
            warnings.warn(f"solver parameter {name!r} is deprecated and will be removed in the next release; "
                          f"use {renamed[name]!r}", FutureWarning, stacklevel=2)
            return getattr(self, renamed[name])
        return super().__getattr__(name)

    def iteration_budget(self) -> int | None:
        """The iterations the solver plans (progress totals, checkpoint bounds); None: no budget (direct
        solvers). Iterative solvers override this."""
        return None


def unit(u: str, description: str, **kwargs) -> Any:
    """A pydantic Field carrying a unit shown by ``recon solvers``."""
    return Field(description=description, json_schema_extra={"unit": u}, **kwargs)


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver.

    ``state_arrays``: (image-sized, sinogram-sized) float32 arrays the solver holds at its peak,
    for the memory estimate (None: recon_cli.memory's default). ``slice_independent``: a 2D slice
    stack gives exactly the slice-by-slice result, so the runner may split it into chunks (a bool,
    or a function of the parsed params). ``resumable``: ``solve`` takes ``resume_state`` (set from
    its signature): it then reports its full state as ``IterationState.extra['state']`` (a dict
    with ``iteration`` and arrays/JSON values) and continues from such a dict.
    """

    name: str
    params_model: type[SolverParams]
    solve: Callable[..., Reconstruction]
    description: str
    iterative: bool
    state_arrays: Optional[tuple[int, int]] = None
    slice_independent: Union[bool, Callable[[Any], bool]] = False
    resumable: bool = False

    def is_slice_independent(self, params: Any) -> bool:
        flag = self.slice_independent
        return bool(flag(params) if callable(flag) else flag)


@dataclass(frozen=True)
class SolverDeclaration:
    """What validating a pipeline and ``recon solvers`` need of a solver, declared in its numpy-free
    module under recon_cli.solvers.params (:func:`declare`): the solver itself is registered by its
    own module (:func:`register`), imported only to run it."""

    name: str
    params_model: type[SolverParams]
    description: str
    iterative: bool


REGISTRY: dict[str, SolverSpec] = {}
DECLARED: dict[str, SolverDeclaration] = {}


def declare(name: str, params_model: type[SolverParams], description: str, iterative: bool = False) -> None:
    """Declare solver ``name``'s parameter model, description and kind (from a module without numpy)."""
    if name in DECLARED and DECLARED[name].params_model is not params_model:
        raise RuntimeError(f"solver {name!r} declared twice")
    DECLARED[name] = SolverDeclaration(name, params_model, description, iterative)


def register(name: str, params_model: type[SolverParams], description: str | None = None,
             iterative: bool | None = None, *, state_arrays: tuple[int, int] | None = None,
             slice_independent: Union[bool, Callable[[Any], bool]] = False):
    """Decorator registering ``solve(op, sinogram, params, callback=None)`` under ``name``.

    ``description`` and ``iterative`` default to the solver's declaration (:func:`declare`), whose
    parameter model must be ``params_model``. Optional hints (see SolverSpec): ``state_arrays``
    (image-, sinogram-sized arrays held), ``slice_independent``. A ``resume_state`` keyword in
    ``solve`` marks the solver resumable.
    """
    declared = DECLARED.get(name)
    if declared is not None and declared.params_model is not params_model:
        raise RuntimeError(f"solver {name!r} registered with another parameter model than it declares")
    if description is None or iterative is None:
        if declared is None:
            raise RuntimeError(f"solver {name!r}: no declaration; give its description and iterative")
        description = declared.description if description is None else description
        iterative = declared.iterative if iterative is None else iterative

    def deco(fn):
        if name in REGISTRY:
            raise RuntimeError(f"solver {name!r} registered twice")
        resumable = "resume_state" in inspect.signature(fn).parameters
        REGISTRY[name] = SolverSpec(name, params_model, fn, description, iterative,
                                    tuple(state_arrays) if state_arrays is not None else None,
                                    slice_independent, resumable)
        return fn

    return deco


def _load(name: str) -> None:
    """Import the module registering solver ``name`` (nothing when registered already)."""
    if name not in REGISTRY and name in SOLVER_MODULES:
        importlib.import_module(f"recon_cli.solvers.{SOLVER_MODULES[name]}")
        if name not in REGISTRY:
            raise RuntimeError(f"recon_cli.solvers.{SOLVER_MODULES[name]} did not register solver {name!r}")


def _load_all() -> None:
    """Import every solver module (tools that need every implementation, e.g. layout tests)."""
    for name in SOLVER_MODULES:
        _load(name)


def solver_names() -> list[str]:
    """Every solver's name, without importing any solver module."""
    return sorted(set(SOLVER_MODULES) | set(REGISTRY) | set(DECLARED))


def _unknown(name: str) -> ConfigError:
    names = solver_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(names)}"
    return ConfigError(f"unknown solver {name!r}{hint}", field="solver.name")


def solver_info(name: str) -> SolverSpec | SolverDeclaration:
    """Name, ``params_model``, ``description`` and ``iterative`` of solver ``name``: its registration
    when loaded, else its declaration (importing only its numpy-free module under
    recon_cli.solvers.params); ConfigError with the closest valid name for an unknown solver."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name not in DECLARED and name in SOLVER_MODULES:
        importlib.import_module(f"recon_cli.solvers.params.{SOLVER_MODULES[name]}")
        if name not in DECLARED:
            raise RuntimeError(f"recon_cli.solvers.params.{SOLVER_MODULES[name]} did not declare solver {name!r}")
    if name not in DECLARED:
        raise _unknown(name)
    return DECLARED[name]


def default_params(name: str) -> dict:
    """The default parameters of solver ``name`` as JSON values (fields without a default left out)."""
    model = solver_info(name).params_model
    return {k: f.default for k, f in model.model_fields.items() if not f.is_required()
            and isinstance(f.default, (int, float, str, bool, type(None), list, dict))}


def get_solver(name: str) -> SolverSpec:
    """The registered solver (its module imported on first use), or ConfigError with the closest valid name."""
    _load(name)
    if name not in REGISTRY:
        raise _unknown(name)
    return REGISTRY[name]


class SolverRef(BaseModel):
    """A solver named in YAML with its parameters, validated against the registry."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    model: Optional[str] = Field(default=None, description="model file for learned solvers (e.g. unet)")
    #: The parameter model validated once from ``params`` (which keeps its JSON form for provenance).
    _parsed: Optional[SolverParams] = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            solver_info(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return v

    @model_validator(mode="after")
    def _validate_params(self):
        if self._parsed is not None:  # an instance validated before, passed in again (pydantic re-runs this)
            return self
        spec = solver_info(self.name)
        params = dict(self.params)
        if self.model is not None:
            if "model" not in spec.params_model.model_fields:
                raise ValueError(f"solver {self.name!r} takes no model file")
            params["model"] = self.model
        # Validate now so errors point at the YAML; store the fully resolved values.
        resolved = spec.params_model.model_validate(params)
        object.__setattr__(self, "params", resolved.model_dump(mode="json"))
        self._parsed = resolved
        return self

    def parsed(self) -> SolverParams:
        """The typed parameters, validated once when this reference was (``params`` is their JSON form)."""
        if self._parsed is None:
            self._parsed = solver_info(self.name).params_model.model_validate(self.params)
        return self._parsed


def run_solver(name: str, op: Operator, sinogram: Sinogram, params: dict | SolverParams | None = None,
               callback: Callback | None = None, *, resume_state: dict | None = None) -> Reconstruction:
    """Validate ``params`` for solver ``name`` and run it (from ``resume_state`` when given)."""
    spec = get_solver(name)
    if not isinstance(params, SolverParams):
        params = spec.params_model.model_validate(params or {})
    if resume_state is None:
        return spec.solve(op, sinogram, params, callback)
    if not spec.resumable:
        raise ConfigError(f"solver {name!r} cannot resume from a checkpoint", field="--resume")
    return spec.solve(op, sinogram, params, callback, resume_state=resume_state)


def run_ref(ref: SolverRef, op: Operator, sinogram: Sinogram, callback: Callback | None = None, *,
            resume_state: dict | None = None) -> Reconstruction:
    """Run a solver named by a SolverRef (for composed solvers)."""
    return run_solver(ref.name, op, sinogram, ref.parsed(), callback, resume_state=resume_state)


def run_stage(stage: str, ref: SolverRef, op: Operator, sinogram: Sinogram,
              callback: Callback | None = None) -> Reconstruction:
    """Run a solver named by ``ref`` as a stage of another (SV-TV's pre-estimate, graphLa's Psi).

    A callback with ``wants_stages = True`` (a progress report) sees the stage announced by a state
    at iteration 0, then the stage's own iterations; these states carry ``extra = {'stage', 'solver',
    'total'}`` (total: the stage's iteration budget or None) and no solver state, and cannot stop the
    stage. Other callbacks see nothing of it.
    """
    if callback is None or not getattr(callback, "wants_stages", False):
        return run_ref(ref, op, sinogram)
    info = {"stage": stage, "solver": ref.name, "total": ref.parsed().iteration_budget()}
    callback(IterationState(0, None, extra=dict(info)))

    def staged(state: IterationState) -> None:
        callback(IterationState(state.iteration, state.x, state.objective, state.residual, state.gap,
                                extra=dict(info)))
        return None

    return run_ref(ref, op, sinogram, staged)
