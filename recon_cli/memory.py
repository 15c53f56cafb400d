"""Peak-memory estimate of a pipeline, the memory limit, and the split of slice stacks into chunks.

Before the projector is built, the runner estimates the arrays the run will hold at its peak:

* ``data`` (host): the input sinogram (twice while a preprocessing step makes its copy), the
  reference and mask images, the output volume, and metric temporaries (two volumes);
* ``operator``: the stored rows of ASTRA's projection matrix as one CSR (8 bytes per non-zero
  of the stored views: a float32 value and an int32 index; see projectors/astra_matrix.py),
  shared by every slice; about 3.3 times that while the matrix is built (not yet in the disk cache);
  plus the transformed image/sinogram copies of one product block (at most 32 columns); A cached matrix is memory-mapped
  (file pages, shared between processes) but still counted, to stay on the safe side;
* ``solver``: per slice, the image- and sinogram-sized float32 arrays the solver keeps
  (its ``state_arrays`` registry hint, default (4, 2)) plus one of each as projector workspace
  (the transposed copies a CSR product on a stack makes, or ASTRA's internal buffers); on a GPU
  also the sinogram copied to the device.

The estimate covers arrays only, not the interpreter and libraries (~200 MB of RSS). Measured
against the growth of the peak RSS (VmHWM) of a run, imports excluded: 1.05-2.1 x the real peak
for fbp, sirt, cgls, tv, svtv, sgp_tv on a 64 x 128^2 stack and on 256^2 slices (the non-zero
count estimate is itself 1.45 x the real one for these fan-beam geometries). It is
compared with ``--max-memory`` (default: 80 % of the memory available now: MemAvailable, or
the container's cgroup limit minus its usage when lower; on a GPU, 80 % of the free GPU memory,
divided by the number of parallel jobs). A 2D slice stack whose solver treats slices
independently (registry flag ``slice_independent``) is split into the fewest equal chunks that
fit; a job that cannot fit even one slice, or whose solver couples the slices (3D TV, a 3D
geometry), is refused before anything is computed, with the numbers. With ``projector.kind:
auto`` on the CPU, a matrix that does not fit falls back to ASTRA's direct projector (no matrix).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from recon_cli.errors import ConfigError
from recon_cli.host_memory import available_host_memory, format_size, parse_size  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

#: Share of the available memory used when --max-memory is not given.
DEFAULT_FRACTION = 0.8
#: (image-sized, sinogram-sized) arrays of a solver that registered no hint.
DEFAULT_STATE_ARRAYS = (4, 2)
#: Projector workspace per slice: one image- and one sinogram-sized array.
WORKSPACE_ARRAYS = (1, 1)
FLOAT32 = 4

class InsufficientMemoryError(ConfigError):
    """The job cannot fit in the memory limit (exit code 2, before anything runs)."""


def available_gpu_memory() -> int:
    """Free bytes on the current CUDA device (call only when the device is a usable GPU)."""
    import cupy

    free, _total = cupy.cuda.runtime.memGetInfo()
    return int(free) + int(cupy.get_default_memory_pool().free_bytes())


def default_limit(device_name: str = "cpu", jobs: int = 1, fraction: float = DEFAULT_FRACTION) -> int:
    """``fraction`` of the memory available on ``device_name`` ('cpu' or 'gpu'), shared by ``jobs``."""
    available = available_gpu_memory() if device_name == "gpu" else available_host_memory()
    return max(1, int(available * fraction) // max(1, int(jobs)))


# ----------------------------------------------------------------------------- the estimate


@dataclass
class MemoryEstimate:
    """Bytes at the peak of a run. ``per_slice``: the part that scales with the slices in one chunk.

    On the CPU all parts share one memory; on a GPU, ``data`` is host memory and
    ``operator`` + ``per_slice`` * slices GPU memory.
    """

    device: str
    n_slices: int
    stack_2d: bool
    slice_independent: bool
    solver: str
    state_arrays: tuple[int, int]
    projector_kind: str
    data: int
    operator: int
    per_slice: int

    def device_peak(self, slices: int) -> int:
        """Bytes on the solver's device for a chunk of ``slices`` (CPU: everything)."""
        own = self.operator + self.per_slice * slices
        return own + (0 if self.device == "gpu" else self.data)

    def host_peak(self, slices: int) -> int:
        return self.data if self.device == "gpu" else self.device_peak(slices)

    def describe(self, slices: int | None = None) -> str:
        slices = self.n_slices if slices is None else slices
        what = f"{slices} slice{'s' if slices != 1 else ''}" if self.stack_2d else "the volume"
        parts = [f"data {format_size(self.data)}", f"projector {format_size(self.operator)} ({self.projector_kind})",
                 f"solver {self.solver} {format_size(self.per_slice * slices)} for {what}"]
        where = " on the GPU" if self.device == "gpu" else ""
        return f"about {format_size(self.device_peak(slices))}{where} ({', '.join(parts)})"


def solver_state_arrays(spec) -> tuple[int, int]:
    """(image-sized, sinogram-sized) arrays a solver holds: its registry hint, else DEFAULT_STATE_ARRAYS."""
    hint = getattr(spec, "state_arrays", None)
    if hint is not None:
        return (int(hint[0]), int(hint[1]))
    return DEFAULT_STATE_ARRAYS


def _matrix_bytes(geometry, grid, projector_type: str | None = None, building: bool | None = False) -> int:
    """The stored projection matrix (8 bytes per non-zero of the stored views, one copy); while it is
    being built (not in the disk cache; ``building=None``: look) ASTRA's copy and SciPy's transpose add more."""
    from recon_cli.projectors.astra_matrix import estimated_matrix_bytes

    if building is None:
        building = not _matrix_cached(geometry, grid, projector_type)
    return estimated_matrix_bytes(geometry, grid, building=building, projector_type=projector_type)


def _matrix_cached(geometry, grid, projector_type: str | None) -> bool:
    """Whether the projection matrix is in the disk cache (then it is memory-mapped, not built)."""
    try:
        from recon_cli.projectors.astra_matrix import matrix_cache_path

        return matrix_cache_path(geometry, grid, projector_type).is_dir()
    except Exception:  # any doubt: assume it must be built
        return False


def resolve_projector_kind(kind: str, geometry, grid, device_name: str, products: int | None = None) -> str:
    """The projector kind a run will use: 'auto' -> cuda on a GPU; on the CPU astra when the matrix
    is above the projectors' size limit (recon_cli.projectors.MATRIX_BYTES_LIMIT), else, given the
    operator ``products`` per slice the run makes, whichever the cost model
    (recon_cli.projectors.cost_model) finds cheaper; without ``products``: the matrix."""
    if kind != "auto":
        return kind
    if device_name == "gpu":
        return "cuda"
    from recon_cli.projectors import MATRIX_BYTES_LIMIT

    if _matrix_bytes(geometry, grid) > MATRIX_BYTES_LIMIT:
        log.info("projector: astra (the matrix would exceed %s)", format_size(MATRIX_BYTES_LIMIT))
        return "astra"
    if products is None:
        return "matrix"
    from recon_cli.projectors.astra_matrix import estimated_nnz, view_symmetry
    from recon_cli.projectors.cost_model import choose_cpu_projector

    nnz = estimated_nnz(geometry, grid)
    stored = len(view_symmetry(geometry, grid).stored) / max(1, geometry.n_angles)
    choice = choose_cpu_projector(nnz, int(nnz * stored), products, grid.n_slices or 1,
                                  _matrix_cached(geometry, grid, None))
    log.info("projector: %s (%s; set projector.kind to override)", choice.kind, choice.reason)
    return choice.kind


def run_products(cfg) -> int:
    """Operator applications per slice the pipeline's solver makes (for the projector cost model)."""
    from recon_cli.progress import iteration_budget
    from recon_cli.projectors.cost_model import estimated_products
    from recon_cli.solvers.registry import get_solver

    spec = get_solver(cfg.solver.name)
    return estimated_products(spec.iterative, iteration_budget(cfg.solver.parsed()))


def estimate_memory(cfg, sino, device_name: str, projector_kind: str | None = None) -> MemoryEstimate:
    """The peak-memory estimate of running ``cfg`` on ``sino`` (a Sinogram already read and preprocessed)."""
    from recon_cli.solvers.registry import get_solver

    geometry, grid = sino.geometry, sino.grid
    spec = get_solver(cfg.solver.name)
    params = cfg.solver.parsed()
    stack_2d = (not geometry.is_3d) and grid.n_slices is not None
    n_slices = grid.n_slices if stack_2d else 1
    image = math.prod(grid.shape) * FLOAT32 // n_slices
    sinogram = int(getattr(sino.data, "size", math.prod(sino.data.shape))) * FLOAT32 // n_slices
    if projector_kind is None:
        products = run_products(cfg) if cfg.projector.kind == "auto" and device_name != "gpu" else None
        projector_kind = resolve_projector_kind(cfg.projector.kind, geometry, grid, device_name, products)
    kind = projector_kind

    copies = 2 if cfg.preprocess else 1
    has_reference = sino.reference is not None or cfg.metrics.reference is not None
    data = n_slices * (sinogram * copies + image * (1 + 2 + int(has_reference) + int(cfg.metrics.mask is not None)))
    ptype = None if cfg.projector.type == "auto" else cfg.projector.type
    operator = 0
    if kind == "matrix":
        from recon_cli.projectors.astra_matrix import product_workspace_bytes

        operator = _matrix_bytes(geometry, grid, ptype, building=None) + product_workspace_bytes(geometry, grid, ptype)
    n_image, n_sino = solver_state_arrays(spec)
    per_slice = (n_image + WORKSPACE_ARRAYS[0]) * image + (n_sino + WORKSPACE_ARRAYS[1]) * sinogram
    if device_name == "gpu":
        per_slice += sinogram + image  # the data copied to the device, the result copied back
    return MemoryEstimate(device=device_name, n_slices=n_slices, stack_2d=stack_2d,
                          slice_independent=spec.is_slice_independent(params), solver=spec.name,
                          state_arrays=(n_image, n_sino), projector_kind=kind, data=int(data),
                          operator=int(operator), per_slice=int(per_slice))


def plan_chunks(est: MemoryEstimate, limit: int, *, host_limit: int | None = None,
                limit_source: str = "--max-memory") -> list[tuple[int, int]]:
    """[start, stop) slice ranges, the fewest equal chunks whose peak fits ``limit``.

    ``host_limit``: on a GPU, the host memory for the data. Raises InsufficientMemoryError
    (exit 2) with the estimate when nothing fits or the solver cannot be split.
    """
    n = est.n_slices
    limit_text = f"the limit of {format_size(limit)} ({limit_source})"
    if est.device == "gpu" and host_limit is not None and est.host_peak(n) > host_limit:
        raise InsufficientMemoryError(f"the data need {format_size(est.host_peak(n))} of host memory, more than "
                                      f"{format_size(host_limit)} available", field="--max-memory")
    if est.device_peak(n) <= limit:
        return [(0, n)]
    needs = f"this job needs {est.describe(n)}, more than {limit_text}"
    if est.device_peak(1) > limit:
        one = f"; even one slice needs {format_size(est.device_peak(1))}" if est.stack_2d and n > 1 else ""
        raise InsufficientMemoryError(f"{needs}{one}; nothing was run", field="--max-memory")
    if not est.slice_independent:
        raise InsufficientMemoryError(f"{needs}; solver {est.solver} couples the slices with these parameters, "
                                      f"so the stack cannot be split into chunks; nothing was run",
                                      field="--max-memory")
    fits = max(1, (limit - est.device_peak(0)) // max(1, est.per_slice))
    n_chunks = math.ceil(n / fits)
    size = math.ceil(n / n_chunks)
    chunks = [(a, min(a + size, n)) for a in range(0, n, size)]
    log.info("memory: %s exceeds %s; processing %d slices in %d chunks of up to %d (%s each)",
             format_size(est.device_peak(n)), limit_text, n, len(chunks), size,
             format_size(est.device_peak(size)))
    return chunks


@dataclass
class MemoryPlan:
    """What the runner does: ``chunks`` of slices, with ``projector_kind`` ('auto' resolved)."""

    estimate: MemoryEstimate
    chunks: list[tuple[int, int]]
    limit: int
    projector_kind: str


def plan_memory(cfg, sino, device_name: str, max_memory: int | str | None = None, *,
                jobs: int = 1) -> MemoryPlan:
    """Estimate, then split into chunks that fit ``max_memory`` (default: :func:`default_limit`).

    With ``projector.kind: auto`` on the CPU, a projection matrix that leaves no room even for
    chunks is replaced by ASTRA's direct projector before giving up.
    """
    given = max_memory is not None
    limit = parse_size(max_memory) if given else default_limit(device_name, jobs)
    source = "--max-memory" if given else f"{int(DEFAULT_FRACTION * 100)}% of the available " + \
        ("GPU memory" if device_name == "gpu" else "memory")
    host_limit = default_limit("cpu", jobs) if device_name == "gpu" else None
    products = run_products(cfg) if cfg.projector.kind == "auto" and device_name != "gpu" else None
    kind = resolve_projector_kind(cfg.projector.kind, sino.geometry, sino.grid, device_name, products)
    est = estimate_memory(cfg, sino, device_name, kind)
    try:
        chunks = plan_chunks(est, limit, host_limit=host_limit, limit_source=source)
    except InsufficientMemoryError:
        if not (cfg.projector.kind == "auto" and kind == "matrix"):
            raise
        fallback = estimate_memory(cfg, sino, device_name, "astra")
        chunks = plan_chunks(fallback, limit, host_limit=host_limit, limit_source=source)
        log.info("memory: the projection matrix (%s) does not fit; using ASTRA's direct projector",
                 format_size(est.operator))
        est, kind = fallback, "astra"
    log.debug("memory estimate: %s; limit %s (%s)", est.describe(), format_size(limit), source)
    return MemoryPlan(estimate=est, chunks=chunks, limit=limit, projector_kind=kind)
