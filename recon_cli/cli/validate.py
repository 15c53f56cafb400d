"""``recon validate PIPELINE.yaml``: check a pipeline without running it."""
from __future__ import annotations

import click

from recon_cli.config import load_config, resolved_yaml


@click.command("validate")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a value (repeatable).")
@click.option("--no-files", is_flag=True, help="Do not check that the input, reference and mask files exist.")
@click.option("--resolved", is_flag=True, help="Also print the pipeline with every default filled in.")
def validate(pipeline: str, overrides: tuple[str, ...], no_files: bool, resolved: bool) -> None:
    """Check PIPELINE.yaml: schema, solver parameters, and that its input files exist. Exit 2 on error."""
    from recon_cli.pipeline_checks import check_files

    cfg = load_config(pipeline, overrides)
    if not no_files:
        check_files(cfg)
    click.echo(f"OK: {cfg.name} (solver {cfg.solver.name})")
    if resolved:
        click.echo(resolved_yaml(cfg), nl=False)
