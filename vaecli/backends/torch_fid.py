"""Fréchet distance (FID) and KID on torch tensors, float64, on the tensors' device.

The same four functions as the float64 reference :mod:`vaecli.reference.fid` (the
tests' oracle, which this module does not import), for features that already live
on a GPU: nothing is copied to the host except the final scalars and one
"all finite?" flag per call.  Features are an ``(N, d)`` tensor (or array) of real
numbers, converted to float64 on their device; the results are Python floats.

``feature_statistics(features) -> (mu (d,), sigma (d, d))``
    mean and unbiased (ddof=1) covariance, float64 tensors on the features' device.
``frechet_distance(mu1, sigma1, mu2, sigma2) -> float``
    ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (SPEC.md, FID), on
    ``mu1``'s device.
``kid(features1, features2, subset_size=1000, subsets=100, seed=0) -> (mean, std)``
    the unbiased MMD^2 with the cubic polynomial kernel over random subsets, drawn
    with NumPy exactly as the reference draws them.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import VaeError
from .kid_draws import kid_subsets
from ..constants import KID_COEF0, KID_DEGREE, KID_SUBSET_SIZE, KID_SUBSETS

__all__ = ["available", "feature_statistics", "frechet_distance", "kid"]



def available():
    """torch is imported with this module, so it runs: ``(True, "")``."""
    return True, ""


def _as_float64(a, device=None):
    """``a`` as a float64 tensor (on ``device``, else where it is; arrays go to the CPU)."""
    if isinstance(a, torch.Tensor):
        if a.is_complex() or a.dtype == torch.bool:
            raise VaeError(
                f"features must be real numbers, got dtype {a.dtype} of shape {tuple(a.shape)}"
            )
        return a.to(
            device=device if device is not None else a.device, dtype=torch.float64
        )
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise VaeError(
            f"features must be real numbers, got dtype {arr.dtype} of shape {arr.shape}"
        )
    return torch.as_tensor(arr, dtype=torch.float64, device=device)


def _features(a, what):
    """``a`` as an ``(N, d)`` float64 tensor of finite numbers, else a VaeError."""
    x = _as_float64(a)
    if x.ndim != 2 or x.shape[1] < 1:
        raise VaeError(
            f"{what} must be a 2-D array (N, d) with d >= 1, got shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):  # one flag to the host
        raise VaeError(
            f"{what} of shape {tuple(x.shape)} contain NaN or infinite values"
        )
    return x


def feature_statistics(features):
    """Mean ``(d,)`` and unbiased covariance ``(d, d)``, float64 tensors on the
    features' device, of ``(N, d)`` features.  Needs N >= 2."""
    x = _features(features, "features")  # (N, d)
    n = x.shape[0]
    if n < 2:
        raise VaeError(
            f"feature statistics need at least 2 feature vectors, got shape {tuple(x.shape)}"
        )
    mu = x.mean(dim=0)  # (d,)
    centred = x - mu  # (N, d)
    sigma = centred.T @ centred / (n - 1)  # (d, d)
    return mu, sigma


def _trace_sqrt_product(sigma1, sigma2):
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, as a 0-d tensor (no sqrtm).

    With R = S1^(1/2), S1 S2 = R (R S2) has the eigenvalues of (R S2) R = R S2 R,
    which is symmetric PSD, so tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(R S2 R)).
    """
    w, v = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    # Zero eigenvalues of a PSD matrix come out as +-eps*|S1| from rounding (N < d
    # features give a rank-deficient covariance): they are 0.
    root1 = (v * torch.sqrt(torch.clamp(w, min=0.0))) @ v.T  # R = V diag(sqrt(w)) V^T
    a = root1 @ sigma2 @ root1
    a = (a + a.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle only
    lam = torch.linalg.eigvalsh(a)
    # R S2 R is PSD: negative eigenvalues are rounding of zeros, clipped to 0 so that
    # sqrt gives no NaN.
    return torch.sqrt(torch.clamp(lam, min=0.0)).sum()


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), a Python float,
    computed in float64 on ``mu1``'s device (0 for equal statistics up to rounding)."""
    mu1 = _as_float64(mu1)
    mu1, sigma1, mu2, sigma2 = (mu1,) + tuple(
        _as_float64(a, mu1.device) for a in (sigma1, mu2, sigma2)
    )
    d = mu1.shape[0] if mu1.ndim == 1 else None
    if (
        d is None
        or tuple(mu2.shape) != (d,)
        or tuple(sigma1.shape) != (d, d)
        or tuple(sigma2.shape) != (d, d)
    ):
        raise VaeError(
            "Fréchet distance needs mu1 (d,), sigma1 (d, d), mu2 (d,), sigma2 (d, d) with "
            f"one d; got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, "
            f"{tuple(sigma2.shape)}"
        )
    finite = torch.stack([torch.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)])
    if not bool(finite.all()):  # one flag to the host
        names = [
            n
            for n, ok in zip(("mu1", "sigma1", "mu2", "sigma2"), finite.tolist())
            if not ok
        ]
        raise VaeError(
            f"Fréchet distance: {', '.join(names)} contain NaN or infinite values"
        )
    diff = mu1 - mu2
    value = (
        diff @ diff
        + torch.trace(sigma1)
        + torch.trace(sigma2)
        - 2.0 * _trace_sqrt_product(sigma1, sigma2)
    )
    return float(value.item())


def _kernel(x, y):
    """Polynomial kernel matrix ``(m, m)`` of the rows of x and y, each ``(m, d)``."""
    return (x @ y.T / x.shape[1] + KID_COEF0) ** KID_DEGREE


def _mmd2_unbiased(x, y):
    """Unbiased MMD^2 (0-d tensor) of two samples ``(m, d)``: off-diagonal means of
    K_xx and K_yy (a U-statistic leaves out k(x_i, x_i)) minus twice the mean of K_xy."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    off_xx = k_xx.sum() - torch.trace(k_xx)
    off_yy = k_yy.sum() - torch.trace(k_yy)
    return (off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.mean()


def kid(features1, features2, subset_size=KID_SUBSET_SIZE, subsets=KID_SUBSETS, seed=0):
    """Kernel inception distance: ``(mean, std)`` (Python floats) over ``subsets``
    unbiased MMD^2 estimates, computed on features1's device.

    Each estimate uses m = min(subset_size, N1, N2) rows of each set drawn without
    replacement by ``numpy.random.default_rng(seed)``: per subset, first the rows of
    set 1 (``rng.choice(N1, m, replace=False)``), then those of set 2, as the
    reference draws them.  ``std`` is the population standard deviation (ddof=0).
    """
    x = _features(features1, "features1")  # (N1, d)
    y = _features(features2, "features2").to(x.device)  # (N2, d)
    m, rows1, rows2 = kid_subsets(x.shape, y.shape, subset_size, subsets, seed)
    # All indices go to the device in one copy: (subsets, m) each.
    rows_x = torch.as_tensor(rows1, device=x.device)
    rows_y = torch.as_tensor(rows2, device=x.device)
    mmd2 = torch.stack([_mmd2_unbiased(x[i], y[j]) for i, j in zip(rows_x, rows_y)])
    mean, std = torch.stack([mmd2.mean(), mmd2.std(correction=0)]).tolist()
    return float(mean), float(std)
