"""Logs: text and JSON lines, the log file, --quiet, and no patient identifier ever written."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from recon_cli.logging_setup import (REDACTED, RedactPHIFilter, clear_phi, configure_logging, redact,
                                     register_dicom_phi, register_phi)

REPO = Path(__file__).resolve().parents[1]
CT_SMALL = get_testdata_file("CT_small.dcm")  # PatientName CompressedSamples^CT1, PatientID 1CT1


@pytest.fixture(autouse=True)
def clean_logging():
    """Each test starts without registered identifiers and leaves the root logger as it found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    clear_phi()
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    clear_phi()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- formats


def test_json_lines_have_time_level_logger_message():
    stream = io.StringIO()
    configure_logging(logging.INFO, "json", stream=stream, force_console=True)
    logging.getLogger("recon_cli.test").info("reconstructed %d slices", 4)
    logging.getLogger("other").debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("recon_cli.test").exception("failed")
    entries = json_lines(stream.getvalue())
    assert len(entries) == 2
    first = entries[0]
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "recon_cli.test"
    assert first["message"] == "reconstructed 4 slices"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert entries[1]["level"] == "ERROR" and "ValueError: boom" in entries[1]["exception"]


def test_text_format_and_log_file(tmp_path):
    stream = io.StringIO()
    log_file = tmp_path / "logs" / "run.log"
    configure_logging(logging.WARNING, "text", log_file, stream=stream, force_console=True)
    log = logging.getLogger("recon_cli.test")
    log.info("only in the file")
    log.warning("in both")
    assert stream.getvalue() == "WARNING recon_cli.test: in both\n"  # --quiet quiets the console only
    lines = log_file.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO recon_cli.test: only in the file") and lines[0][:4].isdigit()
    assert lines[1].endswith("WARNING recon_cli.test: in both")


def test_reconfiguring_replaces_our_handlers(tmp_path):
    stream = io.StringIO()
    configure_logging(logging.INFO, "text", stream=stream, force_console=True)
    configure_logging(logging.INFO, "text", stream=stream, force_console=True)
    logging.getLogger("x").info("once")
    assert stream.getvalue().count("once") == 1


def test_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="log format"):
        configure_logging(logging.INFO, "xml", stream=io.StringIO(), force_console=True)


# ----------------------------------------------------------------------------- patient identifiers


def test_dicom_patient_name_never_reaches_the_log(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    name, pid = str(ds.PatientName), str(ds.PatientID)
    assert register_dicom_phi(ds) > 0
    stream = io.StringIO()
    log_file = tmp_path / "run.log"
    configure_logging(logging.DEBUG, "json", log_file, stream=stream, force_console=True)
    log = logging.getLogger("recon_cli.io.dicom_series")
    log.info("reading series of %s (id %s)", ds.PatientName, pid)  # as an argument
    log.warning(f"patient {name} has no slice thickness")  # inside the message
    log.info("plain spelling: CompressedSamples CT1, lower case: compressedsamples^ct1")
    try:
        raise RuntimeError(f"bad pixel data for {name}")
    except RuntimeError:
        log.exception("read failed")
    for text in (stream.getvalue(), log_file.read_text()):
        assert name not in text and "CompressedSamples" not in text and "compressedsamples" not in text
        assert pid not in text
        assert text.count(REDACTED) >= 6
    messages = [e["message"] for e in json_lines(stream.getvalue())]
    assert messages[0] == f"reading series of {REDACTED} (id {REDACTED})"


def test_redaction_rules():
    register_phi(["DOE^JOHN^Q", "19700131", "7", None, ""])
    assert redact("John Doe born 1970-01-31") == f"{REDACTED} born {REDACTED}"
    assert redact("DOE JOHN Q, 19700131") == f"{REDACTED}, {REDACTED}"
    # short values only as whole words: the ID '7' must not blank every digit 7
    assert redact("id 7 of 17 slices at 0.7 mm") == f"id {REDACTED} of 17 slices at 0.{REDACTED} mm"
    assert redact("nothing here") == "nothing here"


def test_filter_works_on_other_handlers_too():
    register_phi(["SECRET^PERSON"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactPHIFilter())
    log = logging.getLogger("recon_cli.test.filter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.error("for %s", "Secret Person")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert stream.getvalue() == f"for {REDACTED}\n"


# ----------------------------------------------------------------------------- the CLI


def test_cli_log_format_json_and_log_file(tmp_path):
    log_file = tmp_path / "recon.log"
    out = tmp_path / "x.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "recon_cli", "--log-format", "json", "--log-file", str(log_file), "run",
         "pipelines/fbp.yaml", "-o", str(out), "--json"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)  # --json: nothing else on stdout
    entries = json_lines(proc.stderr)
    assert entries and all(set(e) >= {"time", "level", "logger", "message"} for e in entries)
    assert any(e["message"].startswith("wrote ") for e in entries)
    assert json_lines(log_file.read_text()) == entries
    assert "\x1b[" not in proc.stderr  # no progress bar when not on a terminal


def test_cli_error_line_is_redacted(tmp_path, capsys, monkeypatch):
    from recon_cli.cli.main import main

    monkeypatch.chdir(REPO)

    register_phi(["DOE^JANE"])
    missing = tmp_path / "DOE_JANE" / "Doe Jane.h5"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "run", "pipelines/fbp.yaml", "-i", str(missing), "-o", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "Doe Jane" not in err and REDACTED in err
