"""Task functions of benchmarks/arrays.py (importable by every worker)."""

import numpy as np


def total(a) -> float:
    """The benchmark's task: the sum of the array it is given."""
    return float(a.sum())


def ends(a) -> float:
    """Touches two elements only: the cost of getting the array, not of reading it."""
    return float(a[0] + a[-1])


def matmul_rows(a, b, c, lo: int, hi: int) -> None:
    """c[lo:hi] = a[lo:hi] @ b, written in place (shared arrays)."""
    np.matmul(a[lo:hi], b, out=c[lo:hi])


def heat_rows(src, dst, lo: int, hi: int, alpha: float) -> None:
    """One Jacobi step of the 2-D heat equation on rows [lo, hi) (interior only)."""
    n = src.shape[0]
    lo, hi = max(lo, 1), min(hi, n - 1)
    if lo >= hi:
        return
    c = src[lo:hi, 1:-1]
    dst[lo:hi, 1:-1] = c + alpha * (src[lo - 1:hi - 1, 1:-1] + src[lo + 1:hi + 1, 1:-1]
                                    + src[lo:hi, :-2] + src[lo:hi, 2:] - 4.0 * c)
