"""Send DICOM files to a PACS with C-STORE (pynetdicom), with retries, and a record of what was stored.

The record (a JSON-friendly dict) lists every instance with its DIMSE status; it is what the
runner keeps next to its outputs and what ``recon send`` prints.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from recon_cli.errors import InputError, RunError

log = logging.getLogger(__name__)

_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR little endian
_MAX_CONTEXTS = 128


class PacsError(RunError):
    """The peer refused the association or did not store every instance (exit code 1).

    ``record`` holds what was stored before the failure (see :func:`send_series`).
    """

    def __init__(self, message: str, *, record: dict | None = None, **kwargs):
        self.record = record
        super().__init__(message, **kwargs)


def _instances(files: Iterable) -> list[dict[str, str]]:
    """SOP class / instance / transfer syntax of every file (headers only)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for f in files:
        path = Path(f)
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except InvalidDicomError:
            raise InputError("not a DICOM file (no DICM preamble)", file=str(path)) from None
        except OSError as exc:
            raise InputError(f"cannot read ({exc})", file=str(path)) from None
        meta = getattr(ds, "file_meta", None) or {}
        entry = {"file": str(path), "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
                 "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
                 "transfer_syntax_uid": str(meta.get("TransferSyntaxUID", "") or "") if meta else ""}
        for key, tag in (("sop_class_uid", "SOPClassUID"), ("sop_instance_uid", "SOPInstanceUID"),
                         ("transfer_syntax_uid", "TransferSyntaxUID")):
            if not entry[key]:
                raise InputError("missing DICOM tag", file=str(path), field=tag)
        out.append(entry)
    if not out:
        raise InputError("no DICOM files to send")
    return out


def _contexts(instances: list[dict[str, str]]) -> list[tuple[str, list[str]]]:
    """(abstract syntax, transfer syntaxes) to propose: each file's own syntax, plus both uncompressed
    little-endian syntaxes for uncompressed files (pynetdicom converts between those)."""
    wanted: dict[str, list[str]] = {}
    for inst in instances:
        syntaxes = wanted.setdefault(inst["sop_class_uid"], [])
        extra = _UNCOMPRESSED if inst["transfer_syntax_uid"] in _UNCOMPRESSED else ()
        for ts in (inst["transfer_syntax_uid"], *extra):
            if ts not in syntaxes:
                syntaxes.append(ts)
    pairs = []
    for sop, syntaxes in wanted.items():
        compressed = [ts for ts in syntaxes if ts not in _UNCOMPRESSED]
        plain = [ts for ts in syntaxes if ts in _UNCOMPRESSED]
        # pynetdicom allows one context per (abstract syntax, transfer syntax list); keep compressed ones apart
        for ts in compressed:
            pairs.append((sop, [ts]))
        if plain:
            pairs.append((sop, plain))
    if len(pairs) > _MAX_CONTEXTS:
        raise InputError(f"{len(pairs)} SOP class / transfer syntax combinations; at most {_MAX_CONTEXTS} fit in "
                         "one association")
    return pairs


def _status_text(code: int | None) -> tuple[str, str]:
    """(category, description) of a C-STORE status code; None = no response."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    if code is None:
        return "Failure", "no response from the peer (connection lost or timed out)"
    category = code_to_category(code)
    description = STORAGE_SERVICE_CLASS_STATUS.get(code, (category, category))[1]
    return category, description


def _rejection(assoc) -> tuple[bool, str]:
    """(permanent, text) of an A-ASSOCIATE-RJ."""
    rsp = getattr(assoc.acceptor, "primitive", None)
    if rsp is None or rsp.result is None:
        return False, "association rejected"
    return rsp.result == 1, (f"association rejected ({rsp.result_str.lower()}) by the "
                             f"{rsp.source_str}: {rsp.reason_str}")


def _quiet_pynetdicom():
    """pynetdicom's own log lines only with --verbose (our errors say the same thing in one line)."""
    logger = logging.getLogger("pynetdicom")
    if not log.isEnabledFor(logging.DEBUG) and logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


def send_series(files, host: str, port: int, ae_title: str, calling_ae_title: str = "RECON_CLI",
                retries: int = 3, timeout: float = 30.0, retry_wait: float = 1.0) -> dict[str, Any]:
    """C-STORE every file in ``files`` to the SCP ``ae_title`` at ``host:port``.

    Up to ``1 + retries`` associations are tried, waiting ``retry_wait * 2**k`` s between them; each
    new attempt sends only the instances not stored yet. A permanent association rejection (wrong AE
    title, ...) is not retried. ``timeout`` (s) bounds connecting, association negotiation and each
    DIMSE response. Returns the record::

        {"host", "port", "ae_title", "calling_ae_title", "time" (ISO 8601), "attempts",
         "stored": n, "failed": n, "instances": [{"file", "sop_class_uid", "sop_instance_uid",
         "status": "0x0000", "category": "Success"|"Warning"|"Failure", "description"}]}

    Raises PacsError (with ``.record``) when the association cannot be made or any instance is not
    stored (a Warning status counts as stored); InputError for unreadable files or bad arguments.
    """
    from pynetdicom import AE

    if not (isinstance(port, int) and 0 < port < 65536):
        raise InputError(f"must be an integer in 1..65535, got {port!r}", field="port")
    for name, aet in (("ae_title", ae_title), ("calling_ae_title", calling_ae_title)):
        if not aet or len(aet) > 16 or "\\" in aet or not aet.isprintable():
            raise InputError(f"an AE title is 1 to 16 printable characters, got {aet!r}", field=name)
    if retries < 0 or timeout <= 0:
        raise InputError("retries must be >= 0 and timeout > 0", field="retries/timeout")
    _quiet_pynetdicom()
    instances = _instances(files)
    record: dict[str, Any] = {
        "host": host, "port": port, "ae_title": ae_title, "calling_ae_title": calling_ae_title,
        "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "attempts": 0,
        "stored": 0, "failed": 0, "instances": [dict(inst, status=None, category=None, description=None)
                                               for inst in instances],
    }
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for sop, syntaxes in _contexts(instances):
        ae.add_requested_context(sop, syntaxes)

    last_problem = ""
    final: set[int] = set()  # indices of instances done with (stored, or failed for good)
    for attempt in range(retries + 1):
        pending = [k for k in range(len(instances)) if k not in final]
        if not pending:
            break
        if attempt:
            time.sleep(retry_wait * 2 ** (attempt - 1))
        record["attempts"] = attempt + 1
        assoc = ae.associate(host, port, ae_title=ae_title)
        if assoc.is_rejected:
            permanent, last_problem = _rejection(assoc)
            log.warning("%s:%d %s (attempt %d)", host, port, last_problem, attempt + 1)
            if permanent:
                break
            continue
        if not assoc.is_established:
            last_problem = f"could not associate with {ae_title} at {host}:{port} (connection refused, " \
                           "aborted or timed out)"
            log.warning("%s (attempt %d)", last_problem, attempt + 1)
            continue
        try:
            for k in pending:
                inst = record["instances"][k]
                try:
                    status = assoc.send_c_store(inst["file"])
                except ValueError as exc:  # no accepted presentation context for this SOP class / syntax
                    inst.update(status=None, category="Failure", description=f"not sent: {exc}")
                    final.add(k)
                    continue
                code = int(status.Status) if status and "Status" in status else None
                category, description = _status_text(code)
                inst.update(status=None if code is None else f"0x{code:04X}", category=category,
                            description=description)
                if code is None:
                    last_problem = description
                    break  # the association is gone; retry the rest on a new one
                if category != "Failure" or not (0xA700 <= code <= 0xA7FF):  # only 'out of resources' is retried
                    final.add(k)
        finally:
            if assoc.is_established:
                assoc.release()
    stored = [i for i in record["instances"] if i["category"] in ("Success", "Warning")]
    record["stored"], record["failed"] = len(stored), len(instances) - len(stored)
    if record["failed"]:
        first = next(i for i in record["instances"] if i["category"] not in ("Success", "Warning"))
        reason = (f"{first['description']} (status {first['status']}, {first['file']})" if first["category"]
                  else last_problem or "not sent")
        raise PacsError(f"{record['failed']} of {len(instances)} instances not stored at {ae_title}@{host}:{port} "
                        f"after {record['attempts']} attempt(s): {reason}", record=record)
    log.info("stored %d instances at %s@%s:%d", len(stored), ae_title, host, port)
    return record


VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def _check_peer_arguments(port, ae_title: str, calling_ae_title: str, timeout: float) -> None:
    if not (isinstance(port, int) and 0 < port < 65536):
        raise InputError(f"must be an integer in 1..65535, got {port!r}", field="port")
    for name, aet in (("ae_title", ae_title), ("calling_ae_title", calling_ae_title)):
        if not aet or len(aet) > 16 or "\\" in aet or not aet.isprintable():
            raise InputError(f"an AE title is 1 to 16 printable characters, got {aet!r}", field=name)
    if not timeout > 0:
        raise InputError(f"must be positive, got {timeout}", field="timeout")


def echo(host: str, port: int, ae_title: str, calling_ae_title: str = "RECON_CLI",
         timeout: float = 10.0) -> dict[str, Any]:
    """C-ECHO (DICOM verification) to the SCP ``ae_title`` at ``host:port``: is the PACS there and does it
    accept us? ``timeout`` (s) bounds the TCP connection, the association and the response.

    Returns ``{"host", "port", "ae_title", "calling_ae_title", "status": "0x0000", "connect_ms",
    "associate_ms", "echo_ms"}`` (echo_ms: the C-ECHO request/response round trip on the open association).
    Raises PacsError (exit 1) with one line saying why not: unknown host, connection refused, no answer
    within the timeout, association rejected (with the peer's reason), aborted, or a non-success status;
    InputError (exit 2) for bad arguments.
    """
    import socket

    from pynetdicom import AE

    _check_peer_arguments(port, ae_title, calling_ae_title, timeout)
    where = f"{ae_title}@{host}:{port}"
    result: dict[str, Any] = {"host": host, "port": port, "ae_title": ae_title, "calling_ae_title": calling_ae_title}
    # the TCP connection first, on its own, so that 'refused', 'unknown host' and 'timed out' are told apart
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        raise PacsError(f"C-ECHO {where}: failed: unknown host {host!r} ({exc.strerror or exc})") from None
    except ConnectionRefusedError:
        raise PacsError(f"C-ECHO {where}: failed: connection refused (nothing listens on {host}:{port})") from None
    except (socket.timeout, TimeoutError):
        raise PacsError(f"C-ECHO {where}: failed: timed out after {timeout:g} s connecting to {host}:{port}") \
            from None
    except OSError as exc:
        raise PacsError(f"C-ECHO {where}: failed: cannot connect ({exc.strerror or exc})") from None
    result["connect_ms"] = round(1000 * (time.perf_counter() - t0), 3)

    _quiet_pynetdicom()
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    t0 = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=ae_title)
    associate_s = time.perf_counter() - t0
    if assoc.is_rejected:
        raise PacsError(f"C-ECHO {where}: failed: {_rejection(assoc)[1]}")
    if not assoc.is_established:
        why = (f"no association response within {timeout:g} s (timed out)" if associate_s >= 0.9 * timeout
               else "the association was aborted by the peer")
        raise PacsError(f"C-ECHO {where}: failed: {why}")
    result["associate_ms"] = round(1000 * associate_s, 3)
    try:
        t0 = time.perf_counter()
        status = assoc.send_c_echo()
        echo_s = time.perf_counter() - t0
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code is None:
        raise PacsError(f"C-ECHO {where}: failed: no C-ECHO response within {timeout:g} s (timed out or aborted)")
    result["status"] = f"0x{code:04X}"
    if code != 0x0000:
        raise PacsError(f"C-ECHO {where}: failed: status {result['status']}")
    result["echo_ms"] = round(1000 * echo_s, 3)
    return result


def save_record(record: dict, path, overwrite: bool = False) -> Path:
    """Write ``record`` as JSON (atomically)."""
    from recon_cli.io.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return Path(path)


__all__ = ["PacsError", "send_series", "save_record", "echo"]
