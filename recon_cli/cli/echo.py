"""``recon echo --host H --port P --ae-title AET``: test a PACS connection with C-ECHO before a batch."""
from __future__ import annotations

import click


@click.command("echo")
@click.option("--host", required=True, help="PACS host name or address.")
@click.option("--port", required=True, type=click.IntRange(1, 65535), help="PACS DICOM port.")
@click.option("--ae-title", required=True, help="The PACS's AE title (called AE).")
@click.option("--calling-ae-title", default="RECON_CLI", show_default=True, help="Our AE title (calling AE).")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the connection, the association and the response.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def echo(host: str, port: int, ae_title: str, calling_ae_title: str, timeout: float, as_json: bool) -> None:
    """Check that the PACS answers (DICOM C-ECHO) and accepts our AE title. Prints one line: success with the
    round-trip time, or why not (connection refused, timed out, association rejected). Exit 0 on success,
    1 when the PACS cannot be reached or refuses, 2 on bad arguments."""
    from recon_cli.io.pacs import echo as c_echo

    result = c_echo(host, port, ae_title, calling_ae_title=calling_ae_title, timeout=timeout)
    if as_json:
        import json

        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"C-ECHO {ae_title}@{host}:{port}: success, round trip {result['echo_ms']:.1f} ms "
                   f"(association {result['associate_ms']:.1f} ms, calling AE {calling_ae_title})")
