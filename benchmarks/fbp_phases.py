"""Wall and CPU time per phase of one ``recon run`` of an FBP pipeline (issue 17): in-process wrappers
around the runner's phases; a library imported on first use lands in the phase that needs it.

    RECON_CACHE_DIR=$(mktemp -d) python benchmarks/fbp_phases.py PIPELINE.yaml
"""
import sys, time
T0, C0 = time.perf_counter(), time.process_time()
import functools
marks = []
from recon_cli.cli.main import main
import recon_cli.runner as R
import recon_cli.cli.run  # noqa
t_imp, c_imp = time.perf_counter() - T0, time.process_time() - C0
def wrap(mod, name, label):
    f = getattr(mod, name)
    @functools.wraps(f)
    def g(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return f(*a, **k)
        finally:
            marks.append((label, time.perf_counter() - t, time.process_time() - c))
    setattr(mod, name, g)
for name, label in [("read_input", "read input (h5py)"), ("load_reference", "load reference"), ("solve_in_chunks", "projector + FBP + residual"),
                    ("write_outputs", "write outputs"), ("build_provenance", "provenance")]:
    if hasattr(R, name):
        wrap(R, name, label)
import recon_cli.memory as M; wrap(M, "plan_memory", "memory plan / projector choice")
import recon_cli.metrics as ME; wrap(ME, "compute_metrics", "metrics (PSNR, SSIM, ...)")
import recon_cli.solvers.fbp as F; wrap(F, "backproject", "  FBP backprojection")
import recon_cli.projectors.astra_cpu as AC; wrap(AC.AstraCPUProjector, "forward", "  residual forward projection (ASTRA)")
sys.argv = ["recon", "-q", "run", sys.argv[1], "--overwrite"]
try:
    main()
except SystemExit:
    pass
total, cpu = time.perf_counter() - T0, time.process_time() - C0
print(f"imports before the run: {t_imp:.3f} s (CPU {c_imp:.3f} s)")
for label, t, c in marks:
    print(f"{label}: {t:.3f} s (CPU {c:.3f} s)")
print(f"total in process: {total:.3f} s (CPU {cpu:.3f} s)")
