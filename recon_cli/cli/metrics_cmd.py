"""``recon metrics RECON REFERENCE``: image-quality metrics between two image files."""
from __future__ import annotations

import click

from recon_cli.config import METRIC_NAMES, REFERENCE_METRICS


@click.command("metrics")
@click.argument("recon", type=click.Path())
@click.argument("reference", type=click.Path())
@click.option("--mask", type=click.Path(), help="Image (any format RECON takes); metrics only where it is non-zero.")
@click.option("--mu-water", type=float, default=0.0192, show_default=True, help="Water attenuation (1/mm) for HU.")
@click.option("--only", "names", multiple=True, type=click.Choice(list(REFERENCE_METRICS)),
              help="Compute only these metrics (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def metrics(recon: str, reference: str, mask: str | None, mu_water: float, names: tuple[str, ...],
            as_json: bool) -> None:
    """Metrics of RECON against REFERENCE: each an HDF5 file (/reconstruction, /reference or /image), a DICOM
    CT series (folder or file; HU -> 1/mm with --mu-water), a TIFF or a NIfTI file."""
    import math

    from recon_cli.errors import ConfigError, InputError
    from recon_cli.io.images import fit_shape, read_any_image
    from recon_cli.metrics import compute_metrics, print_metrics

    if not (mu_water > 0 and math.isfinite(mu_water)):
        raise ConfigError(f"must be positive, got {mu_water}", field="--mu-water")
    x, vx = read_any_image(recon, mu_water)
    r, vr = read_any_image(reference, mu_water)
    r = fit_shape(r, x.shape) if fit_shape(r, x.shape) is not None else r
    if x.shape != r.shape:
        raise InputError(f"shape {list(x.shape)} differs from the reference's {list(r.shape)} ({reference})",
                         file=recon)
    if not math.isclose(vx, vr, rel_tol=1e-6):
        click.echo(f"warning: voxel sizes differ ({vx} mm vs {vr} mm)", err=True)
    m = None
    if mask is not None:
        m_img, _ = read_any_image(mask, mu_water)
        if tuple(m_img.shape) not in (x.shape, x.shape[-2:]):
            raise InputError(f"mask shape {list(m_img.shape)} differs from the image's {list(x.shape)}", file=mask)
        m = m_img != 0
    selected = list(names) if names else [n for n in METRIC_NAMES if n in REFERENCE_METRICS]
    values = compute_metrics(x, r, names=selected, mask=m, mu_water=mu_water)
    if as_json:
        from recon_cli.cli.json_output import json_text

        click.echo(json_text(values))
    else:
        print_metrics(values)
