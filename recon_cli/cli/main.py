"""The ``recon`` command group and the error handling every command shares.

Exit codes: 0 success, 2 bad usage / configuration / input, 1 failure while running.
Errors print one line naming the file and the field; ``--verbose`` adds the traceback.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from recon_cli import __version__
from recon_cli.errors import ReconError

#: (module under recon_cli.cli, command attribute). Each module defines one Click command.
COMMANDS = [
    ("run", "run"), ("validate", "validate"), ("info", "info"), ("simulate", "simulate"),
    ("metrics_cmd", "metrics"), ("solvers_cmd", "solvers"), ("train", "train"), ("batch", "batch"),
    ("send", "send"), ("echo", "echo"), ("cache_cmd", "cache"),
]


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or ``--help`` lists them all), so
    ``recon --version`` and the light commands start without the solvers and I/O libraries."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | {attr for _, attr in COMMANDS})

    def get_command(self, ctx, name):
        for module, attr in COMMANDS:
            if attr == name and name not in self.commands:
                try:
                    mod = importlib.import_module(f"recon_cli.cli.{module}")
                except ModuleNotFoundError as exc:  # command not written yet
                    if exc.name == f"recon_cli.cli.{module}":
                        return None
                    raise
                self.add_command(getattr(mod, attr))
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recon-cli")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines as text, or as one JSON object per line (time, level, logger, message).")
@click.option("--log-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Also append the log to PATH (at least INFO level, even with --quiet).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool, log_format: str, log_file: str | None) -> None:
    """recon: CT reconstruction from few-view and low-dose data (SV-TV, RISING, graphLa+Psi)."""
    from recon_cli.logging_setup import configure_logging, level_for
    from recon_cli.signals import install_signal_handlers

    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet, log_format=log_format, log_file=log_file)
    try:
        configure_logging(level_for(verbose, quiet), log_format, log_file)
    except OSError as exc:
        raise click.BadParameter(f"cannot open the log file ({exc})", param_hint="--log-file") from None

    install_signal_handlers()  # SIGINT/SIGTERM -> Interrupted: temporary files are removed on the way out


def _log_file_in_arguments(args: list[str]) -> str | None:
    """--log-file must not be one of the command's files (appending to an input changes it; an output
    would replace the log): the message when another argument, or the value of a KEY=VALUE override,
    names the same file as --log-file; else None."""
    from recon_cli.logging_setup import resolved_path

    log_file, others = None, []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--log-file" and i + 1 < len(args):
            log_file, i = args[i + 1], i + 2
            continue
        if arg.startswith("--log-file="):
            log_file = arg.split("=", 1)[1]
        elif arg:
            others += [arg] + ([arg.split("=", 1)[1]] if "=" in arg else [])
        i += 1
    if not log_file:
        return None
    target = resolved_path(log_file)
    for other in others:
        if resolved_path(other) == target:
            return f"{log_file} is also an input or output of the command; the log must be another file"
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps ReconError to its exit code with a one-line message;
    SIGINT / SIGTERM exit with 130 / 143 after removing temporary files."""
    from recon_cli.signals import preserved_signal_handlers

    # The CLI uses no pydantic plugins; looking for them scans the entry points of every installed
    # distribution when the first model is built (about 10 ms of CPU per command, measured in
    # benchmarks/results/speed.md). A value the user set is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    with preserved_signal_handlers():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    from recon_cli.logging_setup import redact
    from recon_cli.signals import Interrupted

    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    clash = _log_file_in_arguments(list(argv if argv is not None else sys.argv[1:]))
    if clash:
        click.echo(f"Error: Invalid value for '--log-file': {clash}", err=True)
        sys.exit(2)
    try:
        cli.main(args=argv, prog_name="recon", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:  # usage errors: exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except ReconError as exc:
        if verbose:
            traceback.print_exc()
        for line in exc.lines():  # one line, or one per problem of a pipeline that fails validation
            click.echo(f"Error: {redact(line)}", err=True)
        sys.exit(exc.exit_code)
    except Interrupted as exc:  # SIGINT / SIGTERM: temporary files are gone, finished outputs kept
        click.echo(interrupted_message(exc), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # an unexpected failure while running: exit 1
        if verbose:
            traceback.print_exc()
        click.echo(f"Error: {redact(f'{type(exc).__name__}: {exc}')} (run with --verbose for the traceback)",
                   err=True)
        sys.exit(1)
    from recon_cli.logging_setup import log_file_error

    if log_file_error() is not None:  # told on stderr when it happened; the run itself finished
        sys.exit(1)
    sys.exit(0)


def interrupted_message(exc) -> str:
    """One line: the signal, that no partial output was left, and the checkpoint kept with the command
    that continues from it (when the run had written one)."""
    message = f"Interrupted ({exc.signal_name}); no partial output was left."
    checkpoint = getattr(exc, "checkpoint", None)
    if checkpoint:
        command = getattr(exc, "resume_command", None)
        message += f" Checkpoint kept: {checkpoint}; continue with: " + (
            command or "the same command with --resume")
    return message
