"""Fréchet distance (FID) and KID on CuPy arrays, float64, on the GPU.

The same four functions as the float64 reference :mod:`vaecli.reference.fid` (the
tests' oracle, which this module does not import).  Features are an ``(N, d)``
CuPy array (NumPy arrays are copied to the device) of real numbers, converted to
float64; nothing comes back to the host except the final scalars and one
"all finite?" flag per call.  ``cupy`` is imported inside the functions only, so
importing this module never fails without it; :func:`available` says whether it
can run here.

``feature_statistics(features) -> (mu (d,), sigma (d, d))``
    mean and unbiased (ddof=1) covariance, float64 CuPy arrays.
``frechet_distance(mu1, sigma1, mu2, sigma2) -> float``
    ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (SPEC.md, FID).
``kid(features1, features2, subset_size=1000, subsets=100, seed=0) -> (mean, std)``
    the unbiased MMD^2 with the cubic polynomial kernel over random subsets, drawn
    with NumPy exactly as the reference draws them.
"""

from __future__ import annotations

import numpy as np

from ...errors import VaeError
from ..kid_draws import kid_subsets
from ...constants import KID_COEF0, KID_DEGREE, KID_SUBSET_SIZE, KID_SUBSETS

__all__ = ["available", "feature_statistics", "frechet_distance", "kid"]


def available():
    """``(True, "")`` when cupy imports and sees a CUDA device, else ``(False, why)``."""
    from . import available as backend_available

    return backend_available()


def _cupy():
    """The cupy module, or a VaeError saying why it cannot run here."""
    ok, why = available()
    if not ok:
        raise VaeError(f"the cupy FID cannot run here: {why}")
    import cupy

    return cupy


def _as_float64(cp, a):
    """``a`` as a float64 CuPy array (NumPy input is copied to the device)."""
    kind = a.dtype.kind if hasattr(a, "dtype") else np.asarray(a).dtype.kind
    if kind not in "biuf":
        shape = getattr(a, "shape", np.shape(a))
        raise VaeError(
            f"features must be real numbers, got dtype kind {kind!r} of shape {shape}"
        )
    return cp.asarray(a, dtype=cp.float64)


def _features(cp, a, what):
    """``a`` as an ``(N, d)`` float64 CuPy array of finite numbers, else a VaeError."""
    x = _as_float64(cp, a)
    if x.ndim != 2 or x.shape[1] < 1:
        raise VaeError(
            f"{what} must be a 2-D array (N, d) with d >= 1, got shape {x.shape}"
        )
    if not bool(cp.isfinite(x).all()):  # one flag to the host
        raise VaeError(f"{what} of shape {x.shape} contain NaN or infinite values")
    return x


def feature_statistics(features):
    """Mean ``(d,)`` and unbiased covariance ``(d, d)``, float64 CuPy arrays, of
    ``(N, d)`` features.  Needs N >= 2."""
    cp = _cupy()
    x = _features(cp, features, "features")  # (N, d)
    n = x.shape[0]
    if n < 2:
        raise VaeError(
            f"feature statistics need at least 2 feature vectors, got shape {x.shape}"
        )
    mu = x.mean(axis=0)  # (d,)
    centred = x - mu  # (N, d)
    sigma = centred.T @ centred / (n - 1)  # (d, d)
    return mu, sigma


def _trace_sqrt_product(cp, sigma1, sigma2):
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, as a 0-d array (no sqrtm).

    With R = S1^(1/2), S1 S2 = R (R S2) has the eigenvalues of (R S2) R = R S2 R,
    which is symmetric PSD, so tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(R S2 R)).
    """
    w, v = cp.linalg.eigh((sigma1 + sigma1.T) / 2)
    # Zero eigenvalues of a PSD matrix come out as +-eps*|S1| from rounding (N < d
    # features give a rank-deficient covariance): they are 0.
    root1 = (v * cp.sqrt(cp.maximum(w, 0.0))) @ v.T  # R = V diag(sqrt(w)) V^T
    a = root1 @ sigma2 @ root1
    a = (a + a.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle only
    lam = cp.linalg.eigvalsh(a)
    # R S2 R is PSD: negative eigenvalues are rounding of zeros, clipped to 0 so that
    # sqrt gives no NaN.
    return cp.sqrt(cp.maximum(lam, 0.0)).sum()


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), a Python float,
    in float64 on the GPU (0 for equal statistics up to rounding)."""
    cp = _cupy()
    mu1, sigma1, mu2, sigma2 = (_as_float64(cp, a) for a in (mu1, sigma1, mu2, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else None
    if (
        d is None
        or mu2.shape != (d,)
        or sigma1.shape != (d, d)
        or sigma2.shape != (d, d)
    ):
        raise VaeError(
            "Fréchet distance needs mu1 (d,), sigma1 (d, d), mu2 (d,), sigma2 (d, d) with "
            f"one d; got {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    finite = cp.stack([cp.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)])
    finite = cp.asnumpy(finite)  # one copy of four flags to the host
    if not finite.all():
        names = [
            n for n, ok in zip(("mu1", "sigma1", "mu2", "sigma2"), finite) if not ok
        ]
        raise VaeError(
            f"Fréchet distance: {', '.join(names)} contain NaN or infinite values"
        )
    diff = mu1 - mu2
    value = (
        diff @ diff
        + cp.trace(sigma1)
        + cp.trace(sigma2)
        - 2.0 * _trace_sqrt_product(cp, sigma1, sigma2)
    )
    return float(value)


def _kernel(x, y):
    """Polynomial kernel matrix ``(m, m)`` of the rows of x and y, each ``(m, d)``."""
    return (x @ y.T / x.shape[1] + KID_COEF0) ** KID_DEGREE


def _mmd2_unbiased(cp, x, y):
    """Unbiased MMD^2 (0-d array) of two samples ``(m, d)``: off-diagonal means of
    K_xx and K_yy (a U-statistic leaves out k(x_i, x_i)) minus twice the mean of K_xy."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    off_xx = k_xx.sum() - cp.trace(k_xx)
    off_yy = k_yy.sum() - cp.trace(k_yy)
    return (off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.mean()


def kid(features1, features2, subset_size=KID_SUBSET_SIZE, subsets=KID_SUBSETS, seed=0):
    """Kernel inception distance: ``(mean, std)`` (Python floats) over ``subsets``
    unbiased MMD^2 estimates, on the GPU.

    Each estimate uses m = min(subset_size, N1, N2) rows of each set drawn without
    replacement by ``numpy.random.default_rng(seed)``: per subset, first the rows of
    set 1 (``rng.choice(N1, m, replace=False)``), then those of set 2, as the
    reference draws them.  ``std`` is the population standard deviation (ddof=0).
    """
    cp = _cupy()
    x = _features(cp, features1, "features1")  # (N1, d)
    y = _features(cp, features2, "features2")  # (N2, d)
    m, rows1, rows2 = kid_subsets(x.shape, y.shape, subset_size, subsets, seed)
    # All indices go to the device in one copy: (subsets, m) each.
    rows_x = cp.asarray(rows1)
    rows_y = cp.asarray(rows2)
    mmd2 = cp.stack([_mmd2_unbiased(cp, x[rows_x[s]], y[rows_y[s]]) for s in range(len(rows1))])
    mean, std = cp.asnumpy(cp.stack([mmd2.mean(), mmd2.std()]))
    return float(mean), float(std)
