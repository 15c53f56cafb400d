"""Logging for the CLI: text or JSON lines on stderr, an optional log file, and no patient identifiers.

``configure_logging(level, fmt, log_file)`` sets up the root logger:

* ``fmt="text"``: ``LEVEL logger: message`` on stderr; the log file adds an ISO time in front.
* ``fmt="json"``: one JSON object per line, ``{"time", "level", "logger", "message"}`` (plus
  ``"exception"`` when a traceback is attached, and the fields of progress lines: ``stage``,
  ``solver``, ``iteration``, ``total``, ``percent``, ``objective``, ``residual``, ``elapsed_s``,
  ``eta_s``; recon_cli.progress), on stderr and in the file alike.

Patient identifiers: readers call :func:`register_phi` (or :func:`register_dicom_phi` with a
pydicom dataset) with every identifying value they meet (PatientName, PatientID,
PatientBirthDate, ...). Every handler installed here carries :class:`RedactPHIFilter` and a
redacting formatter, so a registered value is replaced by ``[REDACTED]`` in every message,
argument and traceback before it is written, whatever logger emitted it. Matching is
case-insensitive; a person name also matches with ``^`` read as a space and in its
"Given Family" order, a date (YYYYMMDD) also as YYYY-MM-DD and YYYY/MM/DD. Values of
3 characters or fewer are matched only as whole words (a PatientID "7" must not blank every 7).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import sys
import threading
from pathlib import Path
from collections.abc import Set as AbstractSet, Sequence
from typing import Any, Iterable, TextIO

#: What a registered identifier is replaced by.
REDACTED = "[REDACTED]"

#: DICOM keywords whose values identify the patient (read by :func:`register_dicom_phi`).
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
                "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
                "MedicalRecordLocator", "AccessionNumber")

LOG_FORMATS = ("text", "json")

_lock = threading.Lock()
_phi: set[str] = set()
_pattern: re.Pattern | None = None


# ----------------------------------------------------------------------------- PHI registry


def _variants(value: str) -> set[str]:
    """The spellings under which one identifier may appear in a message."""
    value = value.strip()
    out = {value}
    if "^" in value:  # DICOM person name: Family^Given^Middle^Prefix^Suffix
        parts = [p.strip() for p in value.split("^") if p.strip()]
        out.add(" ".join(parts))
        out.add(", ".join(parts[:2]))
        if len(parts) >= 2:
            out.add(f"{parts[1]} {parts[0]}")
    if re.fullmatch(r"\d{8}", value):  # DICOM date
        out.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        out.add(f"{value[:4]}/{value[4:6]}/{value[6:]}")
    return {v for v in out if v}


def _flatten(values: Any) -> list:
    if values is None:
        return []
    if isinstance(values, (Sequence, AbstractSet)) and not isinstance(values, (str, bytes)):
        return [v for item in values for v in _flatten(item)]  # lists, tuples, pydicom MultiValue
    return [values]


def register_phi(values: Iterable[Any] | str | None) -> int:
    """Add identifying values (strings, numbers, pydicom PersonName, or lists of them) to redact.

    Returns how many new spellings were added. Empty values are ignored.
    """
    global _pattern
    new: set[str] = set()
    for value in _flatten(values):
        if isinstance(value, bytes):
            value = value.decode("latin-1", "replace")
        text = str(value).strip()
        if text:
            new |= _variants(text)
    with _lock:
        added = new - _phi
        if added:
            _phi.update(added)
            _pattern = _compile(_phi)
    return len(added)


def register_dicom_phi(dataset) -> int:
    """Register the patient-identifying values of a pydicom Dataset (keywords in PHI_KEYWORDS)."""
    values = []
    for keyword in PHI_KEYWORDS:
        try:
            value = dataset.get(keyword)
        except Exception:  # a value pydicom cannot decode (wrong VR or length): redact its raw bytes
            raw = dataset.get_item(keyword)
            value = getattr(raw, "value", None)
        if value not in (None, "", b""):
            values.append(value)
    return register_phi(values)


def clear_phi() -> None:
    """Forget every registered value (for tests)."""
    global _pattern
    with _lock:
        _phi.clear()
        _pattern = None


def _compile(values: set[str]) -> re.Pattern | None:
    if not values:
        return None
    alternatives = []
    for v in sorted(values, key=len, reverse=True):  # longest first: "DOE JOHN" before "DOE"
        escaped = re.escape(v)
        alternatives.append(escaped if len(v) > 3 else rf"(?<!\w){escaped}(?!\w)")
    return re.compile("|".join(alternatives), re.IGNORECASE)


def redact(text: Any) -> str:
    """``text`` with every registered identifier replaced by REDACTED."""
    text = text if isinstance(text, str) else str(text)
    pattern = _pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


#: In free text (descriptions, comments): a record number (5 or more digits, letters allowed in front,
#: as in MRN0012345) or a labelled identifier ("MRN: X", "patient: Jane Doe", "name=Doe^Jane").
_FREE_TEXT_ID = re.compile(
    r"(?i)\b(?:mrn|record|patient(?:\s*(?:id|name))?|name|dob|born|id)\b\s*[:#=]?\s*"
    r"[A-Za-z0-9^',.-]+(?:[ ^][A-Z][A-Za-z'-]+)?"
    r"|\b[A-Za-z]{0,4}\d{5,}\b")


def redact_free_text(text: Any) -> str:
    """Free text (a StudyDescription, ImageComments) with registered identifiers redacted, and with
    anything that looks like one: record numbers, and values labelled MRN / patient / name / DOB / ID."""
    return _FREE_TEXT_ID.sub(REDACTED, redact(text))


class RedactPHIFilter(logging.Filter):
    """Rewrites a record's message (with its arguments merged in) with identifiers redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the formatter's own error path
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


# ----------------------------------------------------------------------------- formatters


def _iso_time(created: float) -> str:
    return _dt.datetime.fromtimestamp(created, _dt.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``[time] LEVEL logger: message`` with identifiers redacted (tracebacks included)."""

    def __init__(self, with_time: bool = False):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.with_time:
            text = f"{_iso_time(record.created)} {text}"
        return redact(text)


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time (UTC ISO 8601), level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _iso_time(record.created), "level": record.levelname, "logger": record.name,
                 "message": redact(record.getMessage())}
        fields = getattr(record, "progress", None)  # recon_cli.progress: stage, iteration, total, eta_s, ...
        if isinstance(fields, dict):
            entry.update({k: (redact(v) if isinstance(v, str) else v) for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


# ----------------------------------------------------------------------------- set-up


class _OurHandler:
    """Marks handlers installed by configure_logging (so a second call replaces them)."""


class _StreamHandler(logging.StreamHandler, _OurHandler):
    pass


class _FileHandler(logging.FileHandler, _OurHandler):
    """Opens the file at the first record; a failed write (full disk, quota) is remembered and told
    once in one line on stderr, instead of logging's traceback per record (see :func:`log_file_error`)."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if _file_errors.get(self.baseFilename) is None:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            _file_errors[self.baseFilename] = reason
            try:
                sys.stderr.write(f"Error: cannot write the log file {self.baseFilename} ({reason}); "
                                 "the log is incomplete\n")
            except Exception:  # noqa: BLE001 - nowhere left to report
                pass


#: log file -> the first error met writing it.
_file_errors: dict[str, str] = {}


def log_file_error() -> str | None:
    """One line describing the first failed write to a log file in this process, or None."""
    for path, reason in _file_errors.items():
        return f"cannot write the log file {path} ({reason}); the log is incomplete"
    return None


def log_file_paths() -> list[Path]:
    """The files the root logger writes to (installed by configure_logging)."""
    return [Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, _FileHandler)]


def check_log_file(path: str | Path) -> None:
    """Refuse (OSError) a log file that exists and is not a regular file: appending to a FIFO blocks
    until a reader appears, a device or socket is no log."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device or socket"
        raise OSError(f"{path} is {kind}, not a regular file")


def check_not_log_file(paths: Iterable[str | Path], what: str = "an input or output") -> None:
    """Refuse (ValueError) when one of ``paths`` is the log file (appending would change an input,
    or the output would replace the log)."""
    logs = {resolved_path(p) for p in log_file_paths()}
    for path in paths:
        if path is not None and resolved_path(path) in logs:
            raise ValueError(f"{path} is also the --log-file; the log must not be {what}")


def resolved_path(path) -> str:
    """``path`` absolute with links resolved (only made absolute where resolving fails), for comparing paths."""
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return str(Path(path).absolute())


def make_formatter(fmt: str, *, for_file: bool = False) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    return JSONFormatter() if fmt == "json" else TextFormatter(with_time=for_file)


def configure_logging(level: int = logging.INFO, fmt: str = "text", log_file: str | Path | None = None, *,
                      stream: TextIO | None = None, force_console: bool = False) -> None:
    """Set up the root logger (replacing the handlers a previous call installed).

    Console: ``stream`` (default stderr) at ``level``. Like ``logging.basicConfig``, no console
    handler is added when the root logger already has handlers someone else installed (a test
    runner's, an embedding application's), unless ``force_console``. File: ``log_file`` (appended,
    UTF-8, parent folders created) at ``min(level, INFO)``, so ``--quiet`` quiets only the console.
    """
    fmt = fmt or "text"
    _file_errors.clear()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OurHandler):
            root.removeHandler(handler)
            handler.close()
    foreign = bool(root.handlers)
    redactor = RedactPHIFilter()
    root_level = level
    if force_console or not foreign:
        console = _StreamHandler(stream if stream is not None else sys.stderr)
        console.setLevel(level)
        console.setFormatter(make_formatter(fmt))
        console.addFilter(redactor)
        root.addHandler(console)
    if log_file is not None:
        path = Path(log_file)
        check_log_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = _FileHandler(path, mode="a", encoding="utf-8", delay=True)
        if not path.exists():
            path.touch()  # an unwritable place is reported now, not at the first record
        file_level = min(level, logging.INFO)
        file_handler.setLevel(file_level)
        file_handler.setFormatter(make_formatter(fmt, for_file=True))
        file_handler.addFilter(redactor)
        root.addHandler(file_handler)
        root_level = min(root_level, file_level)
    root.setLevel(root_level)
    logging.captureWarnings(True)


def level_for(verbose: bool, quiet: bool) -> int:
    """DEBUG with --verbose, WARNING with --quiet, else INFO."""
    return logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
