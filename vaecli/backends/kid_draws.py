"""The random subsets KID averages over, shared by the torch and CuPy backends (the
reference draws its own, the same way, so that all three agree exactly)."""

from __future__ import annotations

import numpy as np

from ..errors import VaeError


def kid_subsets(shape1, shape2, subset_size, subsets, seed):
    """Check the feature shapes and draw the subsets: ``(m, rows1, rows2)`` with
    ``rows*`` int arrays (subsets, m).  Per subset, the rows of set 1 are drawn first
    (``rng.choice(N1, m, replace=False)``), then those of set 2, from
    ``numpy.random.default_rng(seed)``."""
    shape1, shape2 = tuple(shape1), tuple(shape2)
    if shape1[1] != shape2[1]:
        raise VaeError(f"KID needs features of one width d, got shapes {shape1} and {shape2}")
    if int(subsets) < 1:
        raise VaeError(f"KID needs at least one subset, got subsets={subsets}")
    m = min(int(subset_size), shape1[0], shape2[0])
    if m < 2:
        raise VaeError(
            f"KID needs subsets of at least 2 features; subset_size={subset_size} with "
            f"shapes {shape1} and {shape2} gives {m}"
        )
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(shape1[0], m, replace=False), rng.choice(shape2[0], m, replace=False))
             for _ in range(int(subsets))]
    return m, np.stack([i for i, _ in draws]), np.stack([j for _, j in draws])
