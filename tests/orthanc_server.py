"""A throw-away Orthanc PACS for the tests: its own temporary storage, free loopback ports.

Started as a subprocess (``Orthanc CONFIG.json``), never the system service. The REST API refuses
remote clients (RemoteAccessAllowed false) and needs no password; the DICOM server accepts any
calling AE title and stores anything. Orthanc 1.10 cannot bind its DICOM port to one interface,
so a Lua filter refuses instances that do not come from 127.0.0.1.

Debian/Ubuntu: ``apt-get install -y orthanc`` (the binary is /usr/sbin/Orthanc; the packaged
service need not run).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

AET = "ORTHANC"

_LUA_LOOPBACK_ONLY = """
function ReceivedInstanceFilter(dicom, origin, info)
  if origin["RequestOrigin"] == "DicomProtocol" and origin["RemoteIp"] ~= "127.0.0.1" then
    return false
  end
  return true
end
"""


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None."""
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                            if os.access(p, os.X_OK)), None)


def skip_reason() -> str | None:
    """Why the Orthanc tests may be skipped here (None: they must run). In CI they always run."""
    if orthanc_binary() is None and not os.environ.get("CI"):
        return "Orthanc not installed (apt-get install -y orthanc); required when CI is set"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running server: DICOM at 127.0.0.1:dicom_port (AE ``aet``), REST at ``url``."""

    dicom_port: int
    http_port: int
    aet: str
    log_path: Path

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, raw: bool = False):
        """GET a REST resource: parsed JSON, or bytes with ``raw``."""
        with urllib.request.urlopen(self.url + path, timeout=30) as rsp:
            body = rsp.read()
        return body if raw else json.loads(body)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _config(root: Path, dicom_port: int, http_port: int, aet: str) -> dict:
    lua = root / "loopback_only.lua"
    lua.write_text(_LUA_LOOPBACK_ONLY)
    return {
        "Name": "recon-cli-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "StorageCompression": False,
        "Plugins": [],
        "LuaScripts": [str(lua)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {},
        "DicomThreadsCount": 2,
        "HttpThreadsCount": 4,
        "DicomAssociationCloseDelay": 0,
        "SaveJobs": False,
        "OverwriteInstances": True,
        "ExecuteLuaEnabled": False,
    }


@contextmanager
def running_orthanc(root, aet: str = AET, start_timeout: float = 60.0) -> Iterator[Orthanc]:
    """Start Orthanc with its storage under ``root`` (a folder), wait until its REST API answers,
    yield an :class:`Orthanc`, and stop it (SIGTERM, then SIGKILL) afterwards."""
    binary = orthanc_binary()
    if binary is None:
        raise RuntimeError("Orthanc is not installed: apt-get install -y orthanc")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(_config(root, dicom_port, http_port, aet), indent=2))
    server = Orthanc(dicom_port=dicom_port, http_port=http_port, aet=aet, log_path=root / "orthanc.log")
    with open(server.log_path, "wb") as log:
        proc = subprocess.Popen([binary, "--no-jobs", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=root)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {proc.returncode}:\n{server.log_tail()}")
            try:
                server.get("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer within {start_timeout} s:\n{server.log_tail()}")
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
