"""Which CPU projector pays: ASTRA's direct projector, or building (or loading) the matrix.

A run makes about ``products`` operator applications (forward or adjoint) per slice. ASTRA's
direct CPU projector costs ``DIRECT_S_PER_NNZ`` seconds per non-zero of the full matrix per
application; the matrix projector costs ``BUILD_S_PER_NNZ`` per stored non-zero once (nothing
when the matrix is in the disk cache) and ``MATRIX_S_PER_NNZ`` per full non-zero per
application. Constants measured on the project's 2-core benchmark machine with the reference fan
geometry at 256^2 and 512^2 (benchmarks/results/projectors.md, benchmarks/results/speed.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: ASTRA's direct CPU projector: seconds per non-zero per application (fwd or adjoint, one slice).
DIRECT_S_PER_NNZ = 1.7e-8
#: Building the matrix with ASTRA, transposing and saving it: seconds per stored non-zero.
BUILD_S_PER_NNZ = 9e-7
#: A stored-matrix product: seconds per (full) non-zero per application and slice.
MATRIX_S_PER_NNZ = 1.5e-9

#: Applications of a non-iterative solver (FBP: only the data-residual metric's forward product).
NON_ITERATIVE_PRODUCTS = 1
#: Applications an iterative solver adds besides its iterations (operator norm, residual).
ITERATIVE_OVERHEAD_PRODUCTS = 62


@dataclass(frozen=True)
class ProjectorChoice:
    kind: str  # 'matrix' or 'astra'
    reason: str
    direct_s: float
    matrix_s: float


def estimated_products(iterative: bool, iterations: int | None) -> int:
    """Operator applications per slice: 2 per iteration plus the norm estimate and residual."""
    if not iterative:
        return NON_ITERATIVE_PRODUCTS
    return 2 * int(iterations or 100) + ITERATIVE_OVERHEAD_PRODUCTS


def choose_cpu_projector(nnz_full: int, nnz_stored: int, products: int, slices: int, cached: bool) -> ProjectorChoice:
    """'matrix' when building (or loading) it and its products cost less than ASTRA's direct projector."""
    work = max(1, products) * max(1, slices)
    direct = DIRECT_S_PER_NNZ * nnz_full * work
    build = 0.0 if cached else BUILD_S_PER_NNZ * nnz_stored
    matrix = build + MATRIX_S_PER_NNZ * nnz_full * work
    kind = "matrix" if matrix < direct else "astra"
    what = "cached matrix" if cached else f"building the matrix (~{build:.1f} s)"
    reason = (f"{products} products x {slices} slices: {what} + products = ~{matrix:.1f} s vs "
              f"ASTRA direct ~{direct:.1f} s")
    return ProjectorChoice(kind, reason, direct, matrix)
