"""The ``recon`` command group and the error handling every command shares.

Exit codes: 0 success, 2 bad usage / configuration / input, 1 failure while running.
Errors print one line naming the file and the field; ``--verbose`` adds the traceback.
"""
from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from recon_cli import __version__
from recon_cli.errors import ReconError

#: (module under recon_cli.cli, command attribute). Each module defines one Click command.
COMMANDS = [
    ("run", "run"), ("validate", "validate"), ("info", "info"), ("simulate", "simulate"),
    ("metrics_cmd", "metrics"), ("solvers_cmd", "solvers"), ("train", "train"), ("batch", "batch"),
    ("send", "send"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recon-cli")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """recon: CT reconstruction from few-view and low-dose data (SV-TV, RISING, graphLa+Psi)."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _add_commands() -> None:
    for module, attr in COMMANDS:
        try:
            mod = importlib.import_module(f"recon_cli.cli.{module}")
        except ModuleNotFoundError as exc:  # command not written yet
            if exc.name == f"recon_cli.cli.{module}":
                continue
            raise
        cli.add_command(getattr(mod, attr))


_add_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps ReconError to its exit code with a one-line message."""
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
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
        click.echo(f"Error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # an unexpected failure while running: exit 1
        if verbose:
            traceback.print_exc()
        click.echo(f"Error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)", err=True)
        sys.exit(1)
    sys.exit(0)
