"""Issue 16, friction 7: a DICOM-CT-PD input keeps the patient and study in the DICOM output (filed with the
patient's study in a real Orthanc), and `recon echo` tests a PACS connection with one clear line."""
from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pydicom
import pytest

from orthanc_server import free_port, running_orthanc, skip_reason
from recon_cli.cli.main import main
from recon_cli.io.dicom_ctpd import CTPDScan, write_ctpd
from cli_helpers import recon_quiet as _recon  # noqa: E402

PATIENT = {"PatientName": "DOE^JANE", "PatientID": "MRN-0042", "PatientBirthDate": "19700101", "PatientSex": "F",
           "AccessionNumber": "ACC123", "StudyID": "S77", "StudyDescription": "CT HEAD"}
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234567890.1"






@pytest.fixture
def ctpd_of_a_patient(tmp_path):
    """A small axial DICOM-CT-PD scan whose files carry a patient and a study (as a scanner's do)."""
    n = 36
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    data = np.zeros((n, 2, 32), np.float32)
    data[:, :, 10:22] = 0.5
    scan = CTPDScan(data=data, phi=phi, z=np.zeros(n), rho=np.full(n, 595.0), col_spacing=1.0, row_spacing=1.0,
                    source_detector=1085.6, central_element=(16.5, 1.5), shape="FLAT")
    folder = tmp_path / "ctpd"
    files = write_ctpd(folder, scan)
    for f in files:
        ds = pydicom.dcmread(f)
        for name, value in PATIENT.items():
            setattr(ds, name, value)
        ds.StudyInstanceUID = STUDY_UID
        ds.save_as(f, enforce_file_format=True)
    source_series = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    return folder, source_series


def _pipeline(tmp_path, folder, extra: str = "") -> tuple:
    pipeline = tmp_path / "pd.yaml"
    out = tmp_path / "out" / "pd.h5"
    pipeline.write_text(f"name: ctpd-fbp\ninput: {{path: {folder}, grid_shape: [32, 32], voxel_size: 8.0}}\n"
                        f"device: cpu\nprojector: {{kind: astra}}\nsolver: {{name: fbp}}\n"
                        f"output: {{path: {out}, formats: [hdf5, dicom]{extra}}}\nmetrics: {{list: [residual]}}\n")
    return pipeline, out


def test_ctpd_input_keeps_patient_and_study_in_the_dicom_output(ctpd_of_a_patient, tmp_path, capsys):
    folder, source_series = ctpd_of_a_patient
    pipeline, out = _pipeline(tmp_path, folder)
    code, _, err = _recon(capsys, "run", str(pipeline))
    assert code == 0, err
    files = sorted((out.parent / "pd_dicom").glob("*.dcm"))
    assert files
    ds = pydicom.dcmread(files[0])
    for name, value in PATIENT.items():
        assert str(ds.get(name)) == value, name
    assert ds.StudyInstanceUID == STUDY_UID
    assert ds.SeriesInstanceUID != source_series and ds.SeriesInstanceUID.startswith("1.")
    assert source_series in ds.DerivationDescription


def test_ctpd_reconstruction_is_filed_with_the_patients_study_in_orthanc(orthanc, ctpd_of_a_patient, tmp_path,
                                                                          capsys):
    folder, source_series = ctpd_of_a_patient
    pacs = f", pacs: {{host: 127.0.0.1, port: {orthanc.dicom_port}, ae_title: {orthanc.aet}, retries: 0}}"
    pipeline, out = _pipeline(tmp_path, folder, pacs)
    code, _, err = _recon(capsys, "run", str(pipeline))
    assert code == 0, err
    series_uid = str(pydicom.dcmread(next((out.parent / "pd_dicom").glob("*.dcm"))).SeriesInstanceUID)
    studies = [orthanc.get(f"/studies/{sid}") for sid in orthanc.get("/studies")]
    ours = [s for s in studies if s["MainDicomTags"].get("StudyInstanceUID") == STUDY_UID]
    assert len(ours) == 1, studies
    study = ours[0]
    assert study["PatientMainDicomTags"]["PatientID"] == PATIENT["PatientID"]
    assert study["PatientMainDicomTags"]["PatientName"] == PATIENT["PatientName"]
    series = [orthanc.get(f"/series/{sid}")["MainDicomTags"]["SeriesInstanceUID"] for sid in study["Series"]]
    assert series_uid in series and source_series not in series


# ----------------------------------------------------------------------------- recon echo


def test_echo_to_orthanc_succeeds_with_the_round_trip_time(orthanc, capsys):
    code, out, err = _recon(capsys, "echo", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port),
                            "--ae-title", orthanc.aet)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"C-ECHO {orthanc.aet}@127.0.0.1:{orthanc.dicom_port}: success")
    assert " ms" in lines[0]
    code, out, _ = _recon(capsys, "echo", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port),
                          "--ae-title", orthanc.aet, "--json")
    result = json.loads(out)
    assert code == 0 and result["status"] == "0x0000" and result["echo_ms"] > 0


def test_echo_nobody_listening_is_connection_refused(capsys):
    port = free_port()
    code, out, err = _recon(capsys, "echo", "--host", "127.0.0.1", "--port", str(port), "--ae-title", "ANY")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"Error: C-ECHO ANY@127.0.0.1:{port}: failed: connection refused "
                                        f"(nothing listens on 127.0.0.1:{port})"]


def test_echo_rejected_association_names_the_reason(capsys):
    from pynetdicom import AE

    ae = AE(ae_title="STRICT")
    ae.require_called_aet = True
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        code, _, err = _recon(capsys, "echo", "--host", "127.0.0.1", "--port", str(port), "--ae-title", "WRONG")
        assert code == 1
        assert len(err.strip().splitlines()) == 1
        assert "failed: association rejected" in err and "Called AE title not recognised" in err
        code, out, err = _recon(capsys, "echo", "--host", "127.0.0.1", "--port", str(port), "--ae-title", "STRICT")
        assert code == 0 and "success" in out, err
    finally:
        server.shutdown()


def test_echo_silent_peer_times_out(capsys):
    """A peer that accepts the TCP connection and never answers the association request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        code, _, err = _recon(capsys, "echo", "--host", "127.0.0.1", "--port", str(port), "--ae-title", "SILENT",
                              "--timeout", "1")
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "timed out" in err


@pytest.mark.parametrize("args, where", [(["--port", "0"], "--port"), (["--port", "104", "--ae-title", "X" * 17],
                                                                        "ae_title")])
def test_echo_bad_arguments_exit_2(capsys, args, where):
    base = {"--host": "127.0.0.1", "--ae-title": "ANY"}
    argv = ["echo"]
    for key, value in base.items():
        if key not in args:
            argv += [key, value]
    code, _, err = _recon(capsys, *argv, *args)
    assert code == 2 and where in err
