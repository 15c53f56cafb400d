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
kind, seed, I0 = [("coule", 5000, 1e5), ("anat", 5100, 1e5)][int(sys.argv[1])]
rng = np.random.default_rng(seed)
img = (coule_phantom(256, rng) if kind == "coule" else anatomy_phantom(256, rng)).astype(np.float32)
s = simulate_sinogram(img, grid.voxel_size, geom, grid, I0=I0, seed=seed + 17)
ref = s.reference
ps = lambda x: compute_metrics(np.asarray(x), ref, names=["psnr"])["psnr"]
cfgs = [("true", 0, 0.01), ("true", 0, 0.05), ("true", 1, 0.05), ("fbp", 1, 0.05), ("sirt", 1, 0.05), ("sirt", 0, 0.05)]
for pre, sm, eta in cfgs:
    prm = {"p": 0.5, "eta": eta, "smoothing": sm}
    def run(lam):
        q = {**prm, "lam": lam}
        if pre == "true":
            return solve_with_pre_estimate(op, s, SVTVParams.model_validate(q), ref)
        return run_solver("svtv", op, s, {**q, "pre_estimate": {"name": pre}})
    a = run("auto"); la = a.info["lam"]
    out = [f"auto {la:.3g}: {ps(a.volume):.2f}"]
    for f in (0.35, 0.5, 0.7, 1.4):
        out.append(f"x{f}: {ps(run(la * f).volume):.2f}")
    print(f"{kind}{seed} {pre} sm{sm} eta{eta}: " + "  ".join(out), flush=True)
