"""What is wrong with a block of vectors: the one check the fleet (on every answer), the
consolidator (on every row it copies) and ``verify`` (on every row of the output) apply."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class VectorFaults:
    nonfinite_rows: int  # rows holding NaN or infinity
    off_norm_rows: int  # finite rows whose length is off 1 by more than the tolerance
    worst_norm_error: float  # the largest such error over the finite rows


def vector_faults(vectors: np.ndarray, *, normalized: bool, tolerance: float = 0.0) -> VectorFaults:
    """Count the rows of ``vectors`` (one vector a row) that are not finite, and, where vectors
    should be unit length (``normalized``), the finite ones that are not."""
    finite = np.isfinite(vectors).all(axis=1)
    nonfinite = int(len(finite) - np.count_nonzero(finite))
    if not normalized or not len(vectors):
        return VectorFaults(nonfinite, 0, 0.0)
    errors = np.abs(np.linalg.norm(vectors[finite] if nonfinite else vectors, axis=1) - 1.0)
    worst = float(errors.max()) if errors.size else 0.0
    return VectorFaults(nonfinite, int(np.count_nonzero(errors > tolerance)), worst)
