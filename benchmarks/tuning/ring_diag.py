"""Tuning run (see benchmarks/tuning/README.md)."""
import sys, numpy as np

from recon_cli.backend import Device
from recon_cli.geometry import reference_geometry
from recon_cli.metrics import compute_metrics
from recon_cli.phantoms import coule_phantom
from recon_cli.projectors import make_projector
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.registry import run_solver
from recon_cli.solvers.regularisation_parameter import data_misfit_norm, noise_norm
geom, grid = reference_geometry()
op = make_projector(geom, grid, Device("cpu"))
def ring(n, rng):
    yy, xx = np.mgrid[0:n, 0:n] / n * 2 - 1
    a, b = rng.uniform(0.75, 0.9), rng.uniform(0.8, 0.95)
    t = rng.uniform(0.03, 0.06)
    r = (xx / a) ** 2 + (yy / b) ** 2
    r2 = (xx / (a - t)) ** 2 + (yy / (b - t)) ** 2
    return ((r <= 1) & (r2 > 1)).astype(np.float32)
for seed, I0 in ((5200, 1e5), (5201, 2e4), (5202, 1e5)):
    rng = np.random.default_rng(seed)
    img = (coule_phantom(512, rng) * 0.3 + ring(512, rng) * float(rng.uniform(1.0, 2.0)) * 0.0384).astype(np.float32)
    s = simulate_sinogram(img, 0.5, geom, grid, I0=I0, seed=seed + 17)
    e, _ = noise_norm(s.data, s.metadata)
    mis, info = data_misfit_norm(s.data, s.metadata, geom, 1.0)
    true = float(np.linalg.norm(op.forward(s.reference.astype(np.float32)) - s.data))
    name = f"ring{seed}_{I0:.0e}"
    print(f"{name}: e={e:.3f} ||Kxtrue-y||/e={true/e:.3f} b={info['unresolved_energy_ratio']:.3f} misfit/e={mis/e:.3f}", flush=True)
    for lam in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48):
        x = np.asarray(run_solver("tv", op, s, {"lam": lam}).volume)
        p = compute_metrics(x, s.reference, names=["psnr"])["psnr"]
        r = float(np.linalg.norm(op.forward(x) - s.data)) / e
        print(f"   lam {lam:5g} psnr {p:6.2f} ratio {r:.3f}", flush=True)
