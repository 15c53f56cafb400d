"""Tuning run (see benchmarks/tuning/README.md)."""
from pathlib import Path
REPO = Path(__file__).resolve().parents[2]
import sys, time, numpy as np
sys.path.insert(0, str(REPO / "benchmarks"))
from recon_cli.backend import Device
from recon_cli.geometry import reference_geometry
from recon_cli.io.hdf5 import read_sinogram
from recon_cli.metrics import compute_metrics
from recon_cli.phantoms import coule_phantom
from recon_cli.learn.anatomy import anatomy_phantom
from recon_cli.projectors import make_projector
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.registry import run_solver
from recon_cli.solvers.regularisation_parameter import noise_norm, estimate_noise_norm

geom, grid = reference_geometry()
op = make_projector(geom, grid, Device("cpu"))
cases = []
for seed in (5000, 5001):
    for I0 in (1e5, 2e4):
        img = coule_phantom(256, np.random.default_rng(seed))
        cases.append((f"coule{seed}_{I0:.0e}", simulate_sinogram(img, grid.voxel_size, geom, grid, I0=I0, seed=seed + 17)))
for seed in (5100,):
    for I0 in (1e5, 2e4):
        img = anatomy_phantom(256, np.random.default_rng(seed)).astype(np.float32)
        cases.append((f"anat{seed}_{I0:.0e}", simulate_sinogram(img, grid.voxel_size, geom, grid, I0=I0, seed=seed + 17)))
for f in ("shepp_logan_fan60", "head_fan60"):
    s = read_sinogram(str(REPO / "sample_data" / f"{f}.h5")); cases.append((f, s))
lams = [1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32]
for name, s in cases:
    y = s.data
    e, src = noise_norm(y, s.metadata)
    ee = estimate_noise_norm(y)
    ref = s.reference
    mod = float(np.linalg.norm(op.forward(ref.astype(np.float32)) - y))
    print(f"{name}: e={e:.3f} est={ee:.3f} ||Kxtrue-y||/e={mod/e:.3f}  refmax={ref.max():.4f}", flush=True)
    row = []
    for lam in lams:
        rec = run_solver("tv", op, s, {"lam": lam})
        x = np.asarray(rec.volume)
        r = float(np.linalg.norm(op.forward(x) - y)) / e
        p = compute_metrics(x, ref, names=["psnr"])["psnr"]
        row.append((lam, p, r))
        print(f"   lam {lam:5g} psnr {p:6.2f} ratio {r:.3f}", flush=True)
    b = max(row, key=lambda t: t[1])
    print(f"  BEST {name} lam {b[0]} psnr {b[1]:.2f} ratio {b[2]:.3f}", flush=True)
