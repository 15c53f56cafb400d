"""``recon info FILE``: what a file or folder holds, for every supported format (recon_cli.io.formats)."""
from __future__ import annotations

import json
from typing import Any

import click

#: Long text values (e.g. the stored pipeline) shown only with --full.
_LONG = 400


def _text(value: Any, full: bool):
    """A table cell (rich Text, so brackets in values are not read as markup)."""
    from rich.text import Text

    return Text(_plain(value, full))


def _plain(value: Any, full: bool) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=str)
    text = str(value)
    if not full and len(text) > _LONG:
        text = text[:_LONG] + f" ... ({len(text)} characters; --full shows all)"
    return text


def _print_summary(summary: dict, full: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = Table(show_header=False, title=summary.get("file"))
    head.add_column(style="bold")
    head.add_column()
    sections = []
    for key, value in summary.items():
        if key == "file":
            continue
        if isinstance(value, dict) and value and all(not isinstance(v, dict) or key == "datasets"
                                                    for v in value.values()):
            sections.append((key, value))
        elif isinstance(value, dict) and not value:
            continue
        else:
            head.add_row(key, _text(value, full))
    console.print(head)
    for key, value in sections:
        table = Table(show_header=False, title=key, title_justify="left")
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for k, v in value.items():
            table.add_row(str(k), _text(v, full))
        console.print(table)


@click.command("info")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--full", is_flag=True, help="Show long values (stored pipeline, versions) in full.")
@click.option("--show-phi", is_flag=True, help="Show patient identifiers (hidden by default).")
def info(file: str, as_json: bool, full: bool, show_phi: bool) -> None:
    """Summarise FILE (HDF5, NXtomo, DXchange, DICOM, DICOM-CT-PD folder, TIFF, NIfTI): format, shapes,
    geometry, dose-relevant tags; for a reconstruction its metrics and provenance."""
    from recon_cli.io.formats import describe

    summary = describe(file, show_phi=show_phi)
    if as_json:
        from recon_cli.cli.json_output import json_text

        click.echo(json_text(summary))
    else:
        _print_summary(summary, full)
