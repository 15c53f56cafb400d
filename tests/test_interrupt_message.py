"""An interrupted run names the checkpoint it kept and the exact command that continues from it."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import h5py
import pytest
import yaml

from interrupt import sigterm_after_first_checkpoint
from recon_cli.cli.main import main
from recon_cli.geometry import VolumeGrid, parallel_beam_geometry
from recon_cli.io.hdf5 import write_sinogram
from recon_cli.phantoms import shepp_logan
from recon_cli.simulate import simulate_sinogram


def test_sigterm_message_names_checkpoint_and_resume_command(tmp_path, capsys):
    data = tmp_path / "tiny.h5"
    write_sinogram(data, simulate_sinogram(shepp_logan(48), 1.0, parallel_beam_geometry(30, 72, 1.0),
                                           VolumeGrid((48, 48), 1.0), I0=1e5, seed=1))
    pipe = tmp_path / "p.yaml"
    pipe.write_text(yaml.safe_dump({
        "name": "interrupt-message", "input": {"path": str(data)}, "device": "cpu",
        "solver": {"name": "sirt", "params": {"iterations": 4000}},
        "output": {"path": str(tmp_path / "out" / "x.h5")}, "checkpoint": {"every": 20}}))
    ckpt = tmp_path / "out" / ".recon-checkpoints" / "x.h5.ckpt.npz"
    returncode, err = sigterm_after_first_checkpoint(pipe, ckpt)
    assert returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("Interrupted (SIGTERM)")
    assert f"Checkpoint kept: {ckpt};" in line
    match = re.search(r"continue with: (.+)$", line)
    assert match, line
    command = shlex.split(match.group(1))
    assert command[0] == "recon" and "--resume" in command and str(pipe) in command

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # the printed command, run as it is, continues the run
        main(command[1:])
    assert exc.value.code == 0, capsys.readouterr().err
    with h5py.File(tmp_path / "out" / "x.h5") as f:
        assert int(f["info"].attrs["resumed_from"]) > 0
    assert not Path(ckpt).exists()
