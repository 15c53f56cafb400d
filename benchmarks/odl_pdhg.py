"""The ODL side of the solver benchmark: TV by ODL's ``pdhg`` with its ASTRA CPU ray transform.

Run in its own process (importing odl sets SCIPY_ARRAY_API=1 for the whole process):

    .venv/bin/python benchmarks/odl_pdhg.py problem.npz result.npz

``problem.npz`` (written by benchmarks/solvers.py): ``y`` (n_angles, n_det) line integrals,
``angles`` (rad, equally spaced), ``detector_spacing``, ``detector_count``, ``source_origin``,
``origin_detector`` (mm), ``shape`` (ny, nx), ``voxel_size`` (mm), ``lam`` (absolute, mm),
``iterations``, ``tau``, ``sigma``, ``block_scale`` c, and ``check_image`` / ``check_sino``
(an image and our projector's forward projection of it, to verify that both sides see the
same geometry).

The problem is ours exactly, written in ODL's terms:

    min_{x >= 0} 1/2 ||R x - y||^2 + lam * sum_i |(D x)_i|_2

with f = IndicatorNonnegativity, L = [R; c D], g = (0.5 * L2NormSquared(.) translated by y,
(lam / c) * GroupL1Norm) -- ODL's squared L2 norm has no 1/2. ``h * odl.Gradient`` with forward
differences and ``pad_mode='symmetric'`` (h the pixel size; ODL divides by it) is exactly our
Neumann forward-difference gradient in pixel units. With ODL's single sigma, scaling the gradient
block by c = sqrt(sigma_B / sigma) gives the regulariser dual the step sigma c^2: the same
iteration as ours (recon_cli/solvers/pdhg.py) with the same tau, sigma and sigma_B. ODL's spaces
may carry a constant weight (the cell volume) in their inner products, adjoints and norms; ``main``
rescales the steps, c and the functionals so that iteration and objective stay exactly ours.

Orientation: ODL's image axis 0 is x and axis 1 is y, ASTRA's row 0 is +y. Feeding ODL our
array unchanged therefore shows it the object rotated by 90 degrees, which equals a scan whose
angles are shifted by +pi/2; we shift ODL's angle partition accordingly (cell midpoints =
our angles + pi/2) and check the forward projections agree (``check_rel_diff``).

``result.npz``: ``x`` (ny, nx) in our orientation, ``time_total`` (s, the pdhg call; ``time_total_cpu``:
its CPU time, all threads),
``time_forward`` / ``time_adjoint`` (s, one ODL ray-transform call, best of 5),
``objective_odl`` (g(Lx) + f(x) as ODL evaluates it), ``check_rel_diff``, ``odl_version``.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from common import best_time  # benchmarks/common.py (this script runs from benchmarks/)


def _arr(element) -> np.ndarray:
    return np.asarray(element.asarray() if hasattr(element, "asarray") else element.data)


def build(problem: dict):
    import odl
    from odl.applications import tomo

    angles = np.asarray(problem["angles"], np.float64)
    n = angles.size
    da = float(angles[1] - angles[0]) if n > 1 else 2 * np.pi
    if n > 1 and np.max(np.abs(np.diff(angles) - da)) > 1e-9:
        raise ValueError("odl_pdhg.py handles equally spaced angles only")
    start = float(angles[0]) + np.pi / 2  # see the module docstring (orientation)
    apart = odl.uniform_partition(start - da / 2, start + n * da - da / 2, n)
    nd, s = int(problem["detector_count"]), float(problem["detector_spacing"])
    dpart = odl.uniform_partition(-nd * s / 2, nd * s / 2, nd)
    ny, nx = (int(v) for v in problem["shape"])
    h = float(problem["voxel_size"])
    # axis 0 <-> our rows, axis 1 <-> our columns (the rotation is absorbed by the angles)
    space = odl.uniform_discr([-ny * h / 2, -nx * h / 2], [ny * h / 2, nx * h / 2], (ny, nx), dtype="float32")
    geometry = tomo.FanBeamGeometry(apart, dpart, float(problem["source_origin"]),
                                    float(problem["origin_detector"]))
    ray = tomo.RayTransform(space, geometry, impl="astra_cpu")
    grad = odl.Gradient(space, method="forward", pad_mode="symmetric")
    return odl, space, ray, grad


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0])
        print("usage: odl_pdhg.py problem.npz result.npz")
        return 2
    with np.load(argv[0]) as f:
        problem = {k: f[k] for k in f.files}
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*astra_cpu.*")
    odl, space, ray, grad = build(problem)
    import odl.functionals as F

    # geometry check against our projector
    check = _arr(ray(space.element(problem["check_image"].astype(np.float32))))
    ref = problem["check_sino"]
    check_rel_diff = float(np.linalg.norm(check - ref) / np.linalg.norm(ref))

    y = ray.range.element(problem["y"].astype(np.float32))
    lam, c0 = float(problem["lam"]), float(problem["block_scale"])
    tau0, sigma0, niter = float(problem["tau"]), float(problem["sigma"]), int(problem["iterations"])
    # ODL's spaces may carry constant weights (inner products and norms are w * sum); its adjoints
    # and functionals follow them. With w_x (image) and w_y (sinogram), ODL's pdhg with
    #   tau = tau0 w_x, sigma = sigma0 / w_y, L = [R; a D], a = c0 sqrt(w_y / w_x),
    #   g = ((0.5 / w_y) ||. - y||^2_{w_y}, mu ||.||_{1, w_x}), mu = lam / (a w_x)
    # is our iteration (steps tau0, sigma0, sigma_B = sigma0 c0^2) in the variables
    # q' = w_y q, s' = w_x a s, and its objective is exactly 1/2||Rx - y||^2 + lam sum_i |Dx|_i.
    w_x, w_y = float(space.weighting.const), float(ray.range.weighting.const)
    h = float(problem["voxel_size"])  # odl.Gradient divides by h; ours is in pixel units: D = h * odl.Gradient
    a = c0 * (w_y / w_x) ** 0.5
    mu = lam / (a * w_x)
    tau, sigma = tau0 * w_x, sigma0 / w_y
    L = odl.BroadcastOperator(ray, (a * h) * grad)
    f = F.IndicatorNonnegativity(space)
    g = F.SeparableSum((0.5 / w_y) * F.L2NormSquared(ray.range).translated(y),
                       mu * F.GroupL1Norm(grad.range, exponent=2))
    x = space.zero()
    t0, c0 = time.perf_counter(), time.process_time()
    odl.solvers.pdhg(x, f, g, L, niter=niter, tau=tau, sigma=sigma)
    time_total = time.perf_counter() - t0
    time_total_cpu = time.process_time() - c0  # all threads of this process (load-independent)
    objective = float(g(L(x)) + f(x))

    time_forward = best_time(lambda: ray(x))
    time_adjoint = best_time(lambda: ray.adjoint(y))
    np.savez(argv[1], x=_arr(x).astype(np.float32), time_total=time_total, time_total_cpu=time_total_cpu,
             time_forward=time_forward,
             time_adjoint=time_adjoint, objective_odl=objective, check_rel_diff=check_rel_diff,
             iterations=niter, odl_version=str(odl.__version__))
    print(f"odl {odl.__version__}: {niter} pdhg iterations in {time_total:.2f} s, objective {objective:.6g}, "
          f"geometry check {check_rel_diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
