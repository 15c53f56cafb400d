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


class InputError(ReconError):
    """Bad input data (missing dataset, wrong shape, NaN, ...). Exit code 2."""

    exit_code = 2


class ConfigError(ReconError):
    """Bad pipeline configuration or bad command-line usage. Exit code 2."""

    exit_code = 2


class DeviceError(ReconError):
    """A requested device (GPU) is not available. Exit code 2."""

    exit_code = 2


class RunError(ReconError):
    """A failure while running (solver diverged, out of memory, ...). Exit code 1."""

    exit_code = 1
