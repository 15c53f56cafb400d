"""``recon send DIR``: store a DICOM series (e.g. a reconstruction written as DICOM) in a PACS (C-STORE)."""
from __future__ import annotations

import click


@click.command("send")
@click.argument("folder", type=click.Path(exists=True))
@click.option("--host", required=True, help="PACS host name or address.")
@click.option("--port", required=True, type=click.IntRange(1, 65535), help="PACS DICOM port.")
@click.option("--ae-title", required=True, help="The PACS's AE title (called AE).")
@click.option("--calling-ae-title", default="RECON_CLI", show_default=True, help="Our AE title (calling AE).")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0, 20),
              help="Further associations to try after a failure.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the connection, the association and each response.")
@click.option("--record", "record_path", type=click.Path(dir_okay=False), default=None,
              help="Write the record of what was stored (JSON) to this file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --record file.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def send(folder: str, host: str, port: int, ae_title: str, calling_ae_title: str, retries: int, timeout: float,
         record_path: str | None, overwrite: bool, as_json: bool) -> None:
    """Send every DICOM file in FOLDER (or the file FOLDER) to a PACS with C-STORE."""
    from pathlib import Path

    from recon_cli.io.dicom_series import list_dicom_files
    from recon_cli.io.pacs import PacsError, save_record, send_series

    if record_path and Path(record_path).exists() and not overwrite:
        from recon_cli.errors import InputError

        raise InputError("exists; use --overwrite", file=record_path)
    files = list_dicom_files(folder)
    try:
        record = send_series(files, host, port, ae_title, calling_ae_title=calling_ae_title, retries=retries,
                             timeout=timeout)
    except PacsError as exc:
        if record_path and exc.record is not None:
            save_record(exc.record, record_path, overwrite=overwrite)
        raise
    if record_path:
        save_record(record, record_path, overwrite=overwrite)
    if as_json:
        import json

        click.echo(json.dumps(record, indent=2))
    else:
        click.echo(f"stored {record['stored']} of {len(record['instances'])} instances at "
                   f"{ae_title}@{host}:{port} ({record['attempts']} association(s))")
