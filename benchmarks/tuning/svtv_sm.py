"""Tuning run (see benchmarks/tuning/README.md)."""
import sys, numpy as np
from recon_cli.backend import Device
from recon_cli.geometry import reference_geometry
from recon_cli.metrics import compute_metrics
from recon_cli.phantoms import coule_phantom
from recon_cli.learn.anatomy import anatomy_phantom
from recon_cli.projectors import make_projector
from recon_cli.simulate import simulate_sinogram
from recon_cli.solvers.registry import run_solver
from recon_cli.solvers.svtv import SVTVParams, solve_with_pre_estimate
geom, grid = reference_geometry()
op = make_projector(geom, grid, Device("cpu"))
spec = [("coule", 5000, 1e5), ("anat", 5100, 1e5)]
grid_cfg = [(pre, sm, eta) for pre in ("fbp", "sirt", "true") for sm in (0, 1, 2) for eta in (0.05, 0.1, 0.2)]
if len(sys.argv) > 1:
    spec = [spec[int(sys.argv[1])]]
for kind, seed, I0 in spec:
    rng = np.random.default_rng(seed)
    img = (coule_phantom(256, rng) if kind == "coule" else anatomy_phantom(256, rng)).astype(np.float32)
    s = simulate_sinogram(img, grid.voxel_size, geom, grid, I0=I0, seed=seed + 17)
    ref = s.reference
    name = f"{kind}{seed}_{I0:.0e}"
    ps = lambda x: compute_metrics(np.asarray(x), ref, names=["psnr", "ssim"])
    t = run_solver("tv", op, s, {"lam": "auto"})
    mt = ps(t.volume)
    print(f"{name} tv auto lam {t.info['lam']:.3g} psnr {mt['psnr']:.2f} ssim {mt['ssim']:.4f}", flush=True)
    for pre, sm, eta in grid_cfg:
        prm = {"p": 0.5, "eta": eta, "smoothing": sm}
        if pre == "true":
            rec = solve_with_pre_estimate(op, s, SVTVParams.model_validate(prm), ref)
        else:
            rec = run_solver("svtv", op, s, {**prm, "pre_estimate": {"name": pre}})
        m = ps(rec.volume)
        print(f"{name} svtv {pre:4s} sm {sm} eta {eta:<5g} lam {rec.info['lam']:8.3g} wmean {rec.info['weight_mean']:.3f} psnr {m['psnr']:.2f} ({m['psnr']-mt['psnr']:+.2f}) ssim {m['ssim']:.4f} ({m['ssim']-mt['ssim']:+.4f})", flush=True)
