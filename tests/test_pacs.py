"""Sending a reconstruction to a PACS: a real Orthanc on loopback (read back through its REST API), and
pynetdicom peers that reject the association or refuse to store."""
from __future__ import annotations

import json
import threading

import numpy as np
import pydicom
import pytest

from orthanc_server import running_orthanc, skip_reason
from recon_cli.cli.main import main
from recon_cli.io.dicom_writer import write_series
from recon_cli.io.pacs import PacsError, send_series
from recon_cli.phantoms import shepp_logan

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"




@pytest.fixture
def reconstruction(tmp_path):
    """A 3-slice reconstruction (1/mm) written as a DICOM series; (volume, files)."""
    image = shepp_logan(64)
    volume = np.stack([image, 0.9 * image, 1.1 * image]).astype(np.float32)
    files = write_series(tmp_path / "recon_dicom", volume, 0.5, series_description="test-send",
                         recon={"solver": "sirt", "params": {"iterations": 50}})
    return volume, files


def _instances_of_series(orthanc, series_uid: str) -> list[str]:
    ids = []
    for orthanc_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        if tags.get("SeriesInstanceUID") == series_uid:
            ids.append(orthanc_id)
    return ids


def test_send_to_orthanc_and_read_back(orthanc, reconstruction):
    volume, files = reconstruction
    record = send_series(files, orthanc.host, orthanc.dicom_port, orthanc.aet, calling_ae_title="RECON_TEST")
    assert record["stored"] == 3 and record["failed"] == 0 and record["attempts"] == 1
    assert [i["status"] for i in record["instances"]] == ["0x0000"] * 3
    local = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    assert {i["sop_instance_uid"] for i in record["instances"]} == set(local)
    series_uid = next(iter(local.values())).SeriesInstanceUID
    ids = _instances_of_series(orthanc, series_uid)
    assert len(ids) == 3
    mu_water = 0.0192
    for orthanc_id in ids:
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        mine = local[tags["SOPInstanceUID"]]
        assert tags["Modality"] == "CT" and tags["SOPClassUID"] == CT_IMAGE_STORAGE
        assert tags["SeriesDescription"] == "test-send" and tags["ConvolutionKernel"] == "sirt"
        assert tags["PatientName"] == "ANONYMOUS^RECON-CLI" and tags["ImageType"] == "DERIVED\\SECONDARY\\AXIAL"
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.get(f"/instances/{orthanc_id}/file",
                                                                           raw=True)))
        np.testing.assert_array_equal(stored.pixel_array, mine.pixel_array)
        k = int(stored.InstanceNumber) - 1
        hu = stored.pixel_array * float(stored.RescaleSlope) + float(stored.RescaleIntercept)
        expected = 1000.0 * (volume[k] - mu_water) / mu_water
        assert np.abs(hu - expected).max() <= 0.5 + 1e-3
        assert [float(v) for v in stored.ImagePositionPatient] == [float(v) for v in mine.ImagePositionPatient]


def test_recon_send_command_writes_a_record(orthanc, reconstruction, tmp_path, capsys):
    _, files = reconstruction
    record_path = tmp_path / "sent.json"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "send", str(files[0].parent), "--host", orthanc.host, "--port", str(orthanc.dicom_port),
              "--ae-title", orthanc.aet, "--record", str(record_path)])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    assert "stored 3 of 3 instances" in out
    record = json.loads(record_path.read_text())
    assert record["stored"] == 3 and record["ae_title"] == orthanc.aet
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert len(_instances_of_series(orthanc, series_uid)) == 3


def test_nobody_listening_fails_after_retries(reconstruction):
    from orthanc_server import free_port

    _, files = reconstruction
    port = free_port()
    with pytest.raises(PacsError) as exc:
        send_series(files, "127.0.0.1", port, "NOBODY", retries=2, timeout=2, retry_wait=0.01)
    assert exc.value.record["attempts"] == 3 and exc.value.record["stored"] == 0
    assert "3 of 3 instances not stored" in exc.value.message and "could not associate" in exc.value.message


# ----------------------------------------------------------------------------- pynetdicom peers


@pytest.fixture
def scp():
    """Start a pynetdicom storage SCP on a free loopback port; the test gives its behaviour."""
    from pynetdicom import AE, evt

    servers = []

    def start(*, status_codes=None, require_called_aet=False):
        codes = list(status_codes or [])
        received = []
        lock = threading.Lock()

        def on_store(event):
            with lock:
                received.append(event.request.AffectedSOPInstanceUID)
                return codes.pop(0) if codes else 0x0000

        ae = AE(ae_title="STRICT")
        ae.require_called_aet = require_called_aet
        ae.add_supported_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        servers.append(server)
        return server.server_address[1], received

    yield start
    for server in servers:
        server.shutdown()


def test_rejected_association_is_a_clear_error_and_not_retried(scp, reconstruction):
    _, files = reconstruction
    port, received = scp(require_called_aet=True)
    with pytest.raises(PacsError) as exc:
        send_series(files, "127.0.0.1", port, "WRONG_AET", retries=3, retry_wait=0.01)
    assert "association rejected (rejected permanent)" in exc.value.message
    assert "Called AE title not recognised" in exc.value.message
    assert exc.value.record["attempts"] == 1 and received == []


def test_store_failure_names_the_status_and_out_of_resources_is_retried(scp, reconstruction):
    _, files = reconstruction
    port, received = scp(status_codes=[0x0000, 0xA700, 0xC000])
    with pytest.raises(PacsError) as exc:
        send_series(files, "127.0.0.1", port, "STRICT", retries=2, retry_wait=0.01)
    record = exc.value.record
    assert [i["status"] for i in record["instances"]] == ["0x0000", "0x0000", "0xC000"]
    assert record["stored"] == 2 and record["failed"] == 1 and record["attempts"] == 2
    assert len(received) == 4  # the 0xA700 instance was sent again on a second association
    assert "status 0xC000" in exc.value.message and "Cannot Understand" in exc.value.message
    assert str(files[2]) in exc.value.message


def test_warning_status_counts_as_stored(scp, reconstruction):
    _, files = reconstruction
    port, _ = scp(status_codes=[0xB000])
    record = send_series(files, "127.0.0.1", port, "STRICT")
    assert record["stored"] == 3 and record["instances"][0]["category"] == "Warning"


def test_bad_arguments(reconstruction, tmp_path):
    from recon_cli.errors import InputError

    _, files = reconstruction
    with pytest.raises(InputError, match="AE title"):
        send_series(files, "127.0.0.1", 104, "A" * 17)
    not_dicom = tmp_path / "x.txt"
    not_dicom.write_text("hello")
    with pytest.raises(InputError) as exc:
        send_series([not_dicom], "127.0.0.1", 104, "PACS")
    assert exc.value.file == str(not_dicom)
