"""The NumPy/SciPy float64 reference backend: the oracle of every other backend.

It implements the backend interface of :mod:`vaecli.backends` for all eleven
likelihoods of :mod:`vaecli.registry`, written the obvious way in float64, and shares
no formula code with the backends (it imports only constants, registry, errors, units).

``x`` is an integer array ``(B, C, H, W)`` of levels ``0 .. L-1`` (``L = 2**n_bits``;
floats are refused, the data is integers); ``raw`` is the decoder output
``(B, out_channels(C), H, W)`` laid out as the registry says, converted to float64.
Every ``log_*`` value is in nats.  Options (keyword arguments, as in
:mod:`vaecli.backends`): ``n_bits``, ``sigma``, ``log_sigma``, ``mixtures``,
``log_sigma_min``; unknown names raise a VaeError.

Besides the interface, :func:`log_prob_terms` and :func:`log_pmf_terms` give the
per-pixel terms ``(B, H, W)`` of the pixel-separable likelihoods, from which tests
compute reference gradients by central finite differences.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .. import registry
from ..errors import VaeError
from .likelihoods import (
    as_inputs,
    as_raw,
    log_pixel_terms,
    mean_picture,
    parse_options,
    sample_levels,
)

__all__ = [
    "aggregate_kl_terms",
    "available",
    "gaussian_fit_kl",
    "gaussian_kl",
    "log_mean_exp",
    "log_pmf",
    "log_pmf_terms",
    "log_prob",
    "log_prob_terms",
    "mean",
    "sample",
]


def available():
    """The reference runs wherever NumPy and SciPy import: ``(True, "")``."""
    return True, ""


def log_prob(name, x, raw, **opts):
    """log p(x | raw) in nats per image, ``(B,)`` float64.

    ``x``: integer levels ``(B, C, H, W)`` in ``0 .. L-1``; ``raw``: decoder output
    ``(B, out_channels(C), H, W)``.  The density of ``y = x/(L-1)`` for the continuous
    decoders, the PMF for the discrete ones, ``y*l - softplus(l)`` for bernoulli;
    summed over the D = C*H*W dimensions.
    """
    o = parse_options(name, opts)
    x, raw = as_inputs(name, x, raw, o)
    return log_pixel_terms(name, x, raw, o, discrete=False).sum(axis=(1, 2))  # (B,)


def log_pmf(name, x, raw, **opts):
    """log of the discretized PMF of x over the L levels, nats per image ``(B,)``.

    Continuous decoders: the mass of x's bin ``[k/(L-1) - h, k/(L-1) + h]``,
    ``h = 1/(2(L-1))``, the first and last bins reaching to -inf and +inf.  Discrete
    decoders: equal to :func:`log_prob`.
    """
    o = parse_options(name, opts)
    x, raw = as_inputs(name, x, raw, o)
    return log_pixel_terms(name, x, raw, o, discrete=True).sum(axis=(1, 2))  # (B,)


def _pixel_terms(name, x, raw, opts, discrete):
    o = parse_options(name, opts)
    separable = registry.info(name).separable
    if separable != "pixel":
        raise VaeError(
            f"{name}: per-pixel terms exist only for pixel-separable likelihoods; "
            f"{name} couples the pixels of one {separable} through its sigma"
        )
    x, raw = as_inputs(name, x, raw, o)
    return log_pixel_terms(name, x, raw, o, discrete=discrete)  # (B, H, W)


def log_prob_terms(name, x, raw, **opts):
    """Per-pixel terms of :func:`log_prob`, ``(B, H, W)`` nats, summed over channels
    (the mixture: the per-pixel log-mixture).  The term at ``(b, h, w)`` depends only on
    ``x[b, :, h, w]`` and ``raw[b, :, h, w]`` (and the scalar ``log_sigma`` option).
    Only for likelihoods whose registry ``separable`` is ``"pixel"``; VaeError otherwise.
    ``log_prob == log_prob_terms(...).sum((1, 2))``.
    """
    return _pixel_terms(name, x, raw, opts, discrete=False)


def log_pmf_terms(name, x, raw, **opts):
    """Per-pixel terms of :func:`log_pmf`, ``(B, H, W)`` nats (as :func:`log_prob_terms`)."""
    return _pixel_terms(name, x, raw, opts, discrete=True)


def mean(name, raw, **opts):
    """The decoder's mean picture ``(B, C, H, W)`` float64 in [0, 1] (docs/likelihoods.md)."""
    registry.info(name)
    o = parse_options(name, opts)
    return mean_picture(name, as_raw(name, raw), o)


def sample(name, raw, *, generator=None, **opts):
    """Integer levels ``(B, C, H, W)`` in ``0 .. L-1`` drawn from the discretized
    distribution (uint8 for n_bits <= 8, else uint16).

    ``generator`` is a ``numpy.random.Generator`` (None: a fresh ``default_rng()``).
    ``sigma`` and ``sigma-image`` need the ``sigma`` option, ``sigma-learned`` its
    ``log_sigma``.
    """
    registry.info(name)
    o = parse_options(name, opts)
    if generator is None:
        generator = np.random.default_rng()
    if not isinstance(generator, np.random.Generator):
        raise VaeError(
            f"{name}: the reference backend samples with a numpy.random.Generator, "
            f"got {type(generator).__name__}"
        )
    return sample_levels(name, as_raw(name, raw), generator, o)


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats per row, ``(B,)`` float64.

    ``mu``, ``logvar``: ``(B, Z)`` (or ``(B, ...)``), summed over all axes but the first.
    Per dimension 0.5 (mu^2 + e^logvar - 1 - logvar), with e^v - 1 as expm1(v) so that
    a posterior close to the prior keeps its digits.
    """
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    if mu.shape != logvar.shape or mu.ndim < 1:
        raise VaeError(
            f"gaussian_kl: mu and logvar must have the same shape (B, Z), "
            f"got {mu.shape} and {logvar.shape}"
        )
    per_dim = 0.5 * (mu * mu + np.expm1(logvar) - logvar)  # (B, Z)
    return per_dim.reshape(mu.shape[0], -1).sum(axis=1)  # (B,)


def log_mean_exp(a, axis=0):
    """log(mean(exp(a))) along ``axis``, via logsumexp(a) - log(n); float64."""
    a = np.asarray(a, dtype=np.float64)
    return special.logsumexp(a, axis=axis) - np.log(a.shape[axis])


def aggregate_kl_terms(mu, logvar, z):
    """log q(z_m) - log p(z_m) per sample ``z`` ``(M, Z)``, where q is the equal-weight
    mixture of the ``N`` Gaussians N(mu_n, exp(logvar_n)) (``(N, Z)`` each) and p is
    N(0, I); ``(M,)`` float64.  Written pair by pair: every log N(z_m; mu_n, var_n)."""
    mu, logvar, z = (np.asarray(a, dtype=np.float64) for a in (mu, logvar, z))
    if mu.shape != logvar.shape or mu.ndim != 2 or z.ndim != 2 or z.shape[1] != mu.shape[1]:
        raise VaeError(f"aggregate_kl_terms: mu, logvar (N, Z) and z (M, Z), got {mu.shape}, {logvar.shape}, {z.shape}")
    diff = z[:, None, :] - mu[None, :, :]  # (M, N, Z)
    log_components = -0.5 * (diff**2 / np.exp(logvar)[None] + logvar[None] + np.log(2 * np.pi)).sum(axis=2)
    log_q = log_mean_exp(log_components, axis=1)
    log_p = -0.5 * (z**2 + np.log(2 * np.pi)).sum(axis=1)
    return log_q - log_p


def gaussian_fit_kl(mu, logvar):
    """KL(N(m, S) || N(0, I)) for the mean m and covariance S of the mixture of the
    Gaussians N(mu_n, exp(logvar_n)): S = Cov_n(mu_n) (population) + diag(mean_n var_n)."""
    mu, logvar = np.asarray(mu, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
    m = mu.mean(axis=0)
    cov = np.cov(mu, rowvar=False, ddof=0).reshape(mu.shape[1], mu.shape[1]) + np.diag(np.exp(logvar).mean(axis=0))
    _, logdet = np.linalg.slogdet(cov)
    return 0.5 * (np.trace(cov) + m @ m - mu.shape[1] - logdet)
