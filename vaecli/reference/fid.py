"""Fréchet distance (FID) and kernel inception distance (KID), float64 NumPy: the oracle.

Written the obvious way, sharing no code with the torch and CuPy versions
(:mod:`vaecli.backends.torch_fid`, :mod:`vaecli.backends.cupy_backend.fid`), which
the tests check against it.  Features are an ``(N, d)`` array of real numbers (any
real dtype; the maths is float64).  Everything here is unit-free: the distances are
in squared feature units.

``feature_statistics(features) -> (mu (d,), sigma (d, d))``
    mean and unbiased (ddof=1) covariance.
``frechet_distance(mu1, sigma1, mu2, sigma2) -> float``
    ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (SPEC.md, FID).
``kid(features1, features2, subset_size=1000, subsets=100, seed=0) -> (mean, std)``
    the unbiased MMD^2 with the cubic polynomial kernel over random subsets.
"""

from __future__ import annotations

import numpy as np

from ..errors import VaeError
from ..constants import KID_COEF0, KID_DEGREE, KID_SUBSET_SIZE, KID_SUBSETS

__all__ = ["available", "feature_statistics", "frechet_distance", "kid"]



def available():
    """The reference runs wherever NumPy imports: ``(True, "")``."""
    return True, ""


def _features(a, what):
    """``a`` as an ``(N, d)`` float64 array of finite numbers, else a VaeError."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise VaeError(
            f"{what} must be real numbers, got dtype {a.dtype} of shape {a.shape}"
        )
    if a.ndim != 2 or a.shape[1] < 1:
        raise VaeError(
            f"{what} must be a 2-D array (N, d) with d >= 1, got shape {a.shape}"
        )
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise VaeError(f"{what} of shape {a.shape} contain NaN or infinite values")
    return a


def feature_statistics(features):
    """Mean ``(d,)`` and unbiased covariance ``(d, d)``, float64, of ``(N, d)`` features.

    Needs N >= 2 (the covariance divides by N - 1).
    """
    x = _features(features, "features")  # (N, d)
    n = x.shape[0]
    if n < 2:
        raise VaeError(
            f"feature statistics need at least 2 feature vectors, got shape {x.shape}"
        )
    mu = x.mean(axis=0)  # (d,)
    centred = x - mu  # (N, d)
    sigma = centred.T @ centred / (n - 1)  # (d, d)
    return mu, sigma


def _statistics_shapes(mu1, sigma1, mu2, sigma2):
    """The four statistics as float64 arrays after checking their shapes agree."""
    mu1, sigma1, mu2, sigma2 = (
        np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2)
    )
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
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise VaeError(f"{name} of shape {a.shape} contains NaN or infinite values")
    return mu1, sigma1, mu2, sigma2


def _trace_sqrt_product(sigma1, sigma2):
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, from eigenvalues (no sqrtm).

    With R = S1^(1/2), S1 S2 = R (R S2) has the eigenvalues of (R S2) R = R S2 R,
    which is symmetric PSD, so tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(R S2 R)).
    """
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    # A PSD matrix's zero eigenvalues come out as +-eps*|S1| from rounding (and are
    # common: N < d features give a rank-deficient covariance); they are 0.
    root1 = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T  # R = V diag(sqrt(w)) V^T
    a = root1 @ sigma2 @ root1
    a = (a + a.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle only
    lam = np.linalg.eigvalsh(a)
    # R S2 R is PSD, so negative eigenvalues are rounding of zeros: clip them to 0
    # rather than let sqrt make NaNs.
    return float(np.sqrt(np.maximum(lam, 0.0)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), a Python float.

    ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` in float64.  It is 0 for
    equal statistics up to rounding (so it can come out at -1e-12, say).
    """
    mu1, sigma1, mu2, sigma2 = _statistics_shapes(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    return float(
        diff @ diff
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2.0 * _trace_sqrt_product(sigma1, sigma2)
    )


def _kernel(x, y):
    """Polynomial kernel matrix ``(m, m)`` of the rows of x and y, each ``(m, d)``."""
    return (x @ y.T / x.shape[1] + KID_COEF0) ** KID_DEGREE


def _mmd2_unbiased(x, y):
    """Unbiased MMD^2 of two samples ``(m, d)``: the off-diagonal means of K_xx and
    K_yy (a U-statistic leaves out k(x_i, x_i)) minus twice the mean of K_xy."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    off_xx = k_xx.sum() - np.trace(k_xx)
    off_yy = k_yy.sum() - np.trace(k_yy)
    return (off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.mean()


def kid(features1, features2, subset_size=KID_SUBSET_SIZE, subsets=KID_SUBSETS, seed=0):
    """Kernel inception distance: ``(mean, std)`` over ``subsets`` unbiased MMD^2 estimates.

    Each estimate uses m = min(subset_size, N1, N2) rows of each set drawn without
    replacement by ``numpy.random.default_rng(seed)``: per subset, first the rows of
    set 1 (``rng.choice(N1, m, replace=False)``), then those of set 2.  ``std`` is
    the population standard deviation (ddof=0) over the subsets, as torch-fidelity.
    """
    x = _features(features1, "features1")  # (N1, d)
    y = _features(features2, "features2")  # (N2, d)
    if x.shape[1] != y.shape[1]:
        raise VaeError(
            f"KID needs features of one width d, got shapes {x.shape} and {y.shape}"
        )
    if int(subsets) < 1:
        raise VaeError(f"KID needs at least one subset, got subsets={subsets}")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    if m < 2:
        raise VaeError(
            f"KID needs subsets of at least 2 features; subset_size={subset_size} with "
            f"shapes {x.shape} and {y.shape} gives {m}"
        )
    rng = np.random.default_rng(seed)
    mmd2 = np.empty(int(subsets))
    for s in range(int(subsets)):
        i = rng.choice(x.shape[0], m, replace=False)
        j = rng.choice(y.shape[0], m, replace=False)
        mmd2[s] = _mmd2_unbiased(x[i], y[j])
    return float(mmd2.mean()), float(mmd2.std())
