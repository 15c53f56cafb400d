"""Tuning run (see benchmarks/tuning/README.md)."""
from pathlib import Path
REPO = Path(__file__).resolve().parents[2]
import numpy as np
from recon_cli.backend import Device
from recon_cli.geometry import reference_geometry
from recon_cli.io.hdf5 import read_sinogram
from recon_cli.phantoms import coule_phantom
from recon_cli.learn.anatomy import anatomy_phantom
from recon_cli.projectors import make_projector
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.regularisation_parameter import noise_norm
geom, grid = reference_geometry()
op = make_projector(geom, grid, Device("cpu"))
cases = []
for seed in (5000, 5001, 1000, 1001):
    for I0 in (1e5, 2e4):
        img = coule_phantom(256, np.random.default_rng(seed))
        cases.append((f"coule{seed}_{I0:.0e}", simulate_sinogram(img, grid.voxel_size, geom, grid, I0=I0, seed=seed + 17)))
for I0 in (1e5, 2e4):
    img = anatomy_phantom(256, np.random.default_rng(5100)).astype(np.float32)
    cases.append((f"anat5100_{I0:.0e}", simulate_sinogram(img, grid.voxel_size, geom, grid, I0=I0, seed=5117)))
for f in ("shepp_logan_fan60", "head_fan60"):
    cases.append((f, read_sinogram(str(REPO / "sample_data" / f"{f}.h5"))))
mag = geom.source_origin / (geom.source_origin + geom.origin_detector)
for name, s in cases:
    y = s.data.astype(np.float64)
    e, _ = noise_norm(y, s.metadata)
    m = np.linalg.norm(op.forward(s.reference.astype(np.float32)) - y)
    F = np.fft.rfft(y, axis=-1)
    f = np.fft.rfftfreq(y.shape[-1])
    out = []
    for fc in (0.5 * geom.detector_spacing * mag / grid.voxel_size, 0.4, 0.45):
        band = f > fc
        wgt = np.where((f == 0) | (f == 0.5), 1, 2)
        Eb = float(np.sum(wgt[band] * np.abs(F[..., band]) ** 2) / y.shape[-1])
        frac = float(np.sum(wgt[band])) / y.shape[-1]
        out.append(f"fc={fc:.3f}: band/noise={Eb / (e**2 * frac):.3f}")
    print(f"{name:20s} true misfit/e={m/e:.3f}  " + "  ".join(out), flush=True)
