"""One registry of solvers, serving the CLI, the YAML schema and ``recon solvers``.

A solver is a pure function ``solve(op, sinogram, params, callback) -> Reconstruction``
registered with a pydantic parameter model. Solvers compose by name through
:class:`SolverRef` (SV-TV's pre-estimate, RISING's iterative solver, graphLa's Psi).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recon_cli.errors import ConfigError
from recon_cli.ops.operator import Operator
from recon_cli.sinogram import Reconstruction, Sinogram


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
    """Base of every solver's parameter model: strict, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def unit(u: str, description: str, **kwargs) -> Any:
    """A pydantic Field carrying a unit shown by ``recon solvers``."""
    return Field(description=description, json_schema_extra={"unit": u}, **kwargs)


@dataclass(frozen=True)
class SolverSpec:
    name: str
    params_model: type[SolverParams]
    solve: Callable[..., Reconstruction]
    description: str
    iterative: bool


REGISTRY: dict[str, SolverSpec] = {}


def register(name: str, params_model: type[SolverParams], description: str, iterative: bool = False):
    """Decorator registering ``solve(op, sinogram, params, callback=None)`` under ``name``."""

    def deco(fn):
        if name in REGISTRY:
            raise RuntimeError(f"solver {name!r} registered twice")
        REGISTRY[name] = SolverSpec(name, params_model, fn, description, iterative)
        return fn

    return deco


def _load_all() -> None:
    import recon_cli.solvers  # noqa: F401  (imports every solver module, which registers it)


def solver_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def get_solver(name: str) -> SolverSpec:
    """The registered solver, or ConfigError with the closest valid name."""
    _load_all()
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(sorted(REGISTRY))}"
        raise ConfigError(f"unknown solver {name!r}{hint}", field="solver.name")
    return REGISTRY[name]


class SolverRef(BaseModel):
    """A solver named in YAML with its parameters, validated against the registry."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    model: Optional[str] = Field(default=None, description="model file for learned solvers (e.g. unet)")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            get_solver(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return v

    @model_validator(mode="after")
    def _validate_params(self):
        spec = get_solver(self.name)
        params = dict(self.params)
        if self.model is not None:
            if "model" not in spec.params_model.model_fields:
                raise ValueError(f"solver {self.name!r} takes no model file")
            params["model"] = self.model
        # Validate now so errors point at the YAML; store the fully resolved values.
        resolved = spec.params_model.model_validate(params)
        object.__setattr__(self, "params", resolved.model_dump(mode="json"))
        return self

    def parsed(self) -> SolverParams:
        return get_solver(self.name).params_model.model_validate(self.params)


def run_solver(name: str, op: Operator, sinogram: Sinogram, params: dict | SolverParams | None = None,
               callback: Callback | None = None) -> Reconstruction:
    """Validate ``params`` for solver ``name`` and run it."""
    spec = get_solver(name)
    if not isinstance(params, SolverParams):
        params = spec.params_model.model_validate(params or {})
    return spec.solve(op, sinogram, params, callback)


def run_ref(ref: SolverRef, op: Operator, sinogram: Sinogram, callback: Callback | None = None) -> Reconstruction:
    """Run a solver named by a SolverRef (for composed solvers)."""
    return run_solver(ref.name, op, sinogram, ref.parsed(), callback)
