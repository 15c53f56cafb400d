"""Exceptions with the exit codes the CLI maps them to.

Every message is one line naming the file and the field where one is known.
"""
from __future__ import annotations


class ReconError(Exception):
    """Base class. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.message = message
        self.file = file
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.file and self.field:
            where = f"{self.file}: {self.field}: "
        elif self.file:
            where = f"{self.file}: "
        elif self.field:
            where = f"{self.field}: "
        return (where + self.message).replace("\n", " ")

    def lines(self) -> list[str]:
        """The error as printed by the CLI, one line per problem (one, except for ConfigErrors)."""
        return [self.one_line()]


class InputError(ReconError):
    """Bad input data (missing dataset, wrong shape, NaN, ...). Exit code 2."""

    exit_code = 2


class ConfigError(ReconError):
    """Bad pipeline configuration or bad command-line usage. Exit code 2."""

    exit_code = 2


class ConfigErrors(ConfigError):
    """Several configuration errors found at once, each a ConfigError (``FILE:LINE: field: message``).

    Attributes ``message``/``file``/``field`` are the first error's; :meth:`lines` gives them all.
    """

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.message, file=first.file, field=first.field)

    def one_line(self) -> str:
        return "; ".join(e.one_line() for e in getattr(self, "errors", [])) or super().one_line()

    def lines(self) -> list[str]:
        return [e.one_line() for e in self.errors]


class DeviceError(ReconError):
    """A requested device (GPU) is not available. Exit code 2."""

    exit_code = 2


class RunError(ReconError):
    """A failure while running (solver diverged, out of memory, ...). Exit code 1."""

    exit_code = 1
