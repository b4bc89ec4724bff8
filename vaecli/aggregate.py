"""The aggregate posterior against the prior (``vae eval --metric aggregate-kl``).

A VAE's prior samples look like its reconstructions only where the aggregate
posterior q(z) = (1/N) sum_n q(z | x_n) covers the prior p(z) = N(0, I) and puts no mass
where the prior has little ("prior holes"). Its distance from the prior is the marginal
KL of Hoffman and Johnson ("ELBO surgery", 2016):

    E_n KL(q(z | x_n) || p(z)) = I(x; z) + KL(q(z) || p(z)),

the rate split into the mutual information between image and code and the marginal KL.
For the N evaluated images, q(z) is their mixture, whose log-density is an exact sum, so
KL(q || p) = E_{z ~ q} [log q(z) - log p(z)] is estimated with one posterior sample per
image and nothing else approximated. The mixture's mutual information is at most log N
(then its KL is the rate minus log N): compare runs at the same N.

:func:`gaussian_fit_kl` is the KL of the Gaussian with q(z)'s mean and covariance.
Among distributions with those moments the Gaussian has the largest entropy, and
E_q log p(z) depends on the moments alone, so this is a lower bound of KL(q || p) with
no sampling: the part of the mismatch that the first two moments show (a shifted mean,
dimensions whose aggregate variance is not 1, correlated dimensions).

Everything here is float64 on the device of its inputs; the NumPy oracle is
:func:`vaecli.reference.aggregate_kl_terms` and :func:`vaecli.reference.gaussian_fit_kl`.
"""

from __future__ import annotations

import math

import torch

from .errors import VaeError

CHUNK_VALUES = 2**24  # log q(z_m | x_n) values held at once: 128 MB of float64


def _check(mean, logvar):
    if mean.shape != logvar.shape or mean.ndim != 2 or mean.shape[0] < 1:
        raise VaeError(f"aggregate posterior: mean and logvar must both be (N, Z) with N >= 1, got "
                       f"{tuple(mean.shape)} and {tuple(logvar.shape)}")
    return mean.double(), logvar.double()


def aggregate_kl_terms(mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log q(z_m) - log p(z_m) for each sample z_m (M, Z), where q is the mixture of the N
    diagonal Gaussians N(mean_n, exp(logvar_n)) with equal weights and p = N(0, I); (M,)
    float64.  Their mean over z_m ~ q is KL(q || p).

    log N(z_m; mean_n, var_n) is expanded as a quadratic form, so each chunk of samples is
    two matrix products against all N components rather than an (M, N, Z) tensor."""
    mean, logvar = _check(mean, logvar)
    z = z.double()
    if z.ndim != 2 or z.shape[1] != mean.shape[1]:
        raise VaeError(f"aggregate posterior: samples must be (M, {mean.shape[1]}), got {tuple(z.shape)}")
    precision = torch.exp(-logvar)  # (N, Z)
    scaled_mean = mean * precision
    # the terms of log N(z; mean_n, var_n) that do not depend on z
    constant = -0.5 * ((mean * scaled_mean).sum(1) + logvar.sum(1) + mean.shape[1] * math.log(2 * math.pi))
    log_n = math.log(mean.shape[0])
    rows = max(1, CHUNK_VALUES // mean.shape[0])
    out = []
    for start in range(0, z.shape[0], rows):
        zc = z[start : start + rows]
        log_components = constant - 0.5 * (zc * zc) @ precision.T + zc @ scaled_mean.T  # (m, N)
        log_q = torch.logsumexp(log_components, dim=1) - log_n
        log_p = -0.5 * ((zc * zc).sum(1) + zc.shape[1] * math.log(2 * math.pi))
        out.append(log_q - log_p)
    return torch.cat(out)


def gaussian_fit(mean: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, S): the mean and covariance of the mixture of the N posteriors, m = mean over n
    of mean_n, S = the (population) covariance of the means plus the average posterior
    variance on the diagonal."""
    mean, logvar = _check(mean, logvar)
    m = mean.mean(0)
    centred = mean - m
    return m, centred.T @ centred / mean.shape[0] + torch.diag(torch.exp(logvar).mean(0))


def standard_normal_kl(m: torch.Tensor, cov: torch.Tensor) -> float:
    """KL(N(m, cov) || N(0, I)) in nats."""
    _, logdet = torch.linalg.slogdet(cov)
    return float(0.5 * (torch.trace(cov) + m @ m - len(m) - logdet))


def gaussian_fit_kl(mean: torch.Tensor, logvar: torch.Tensor) -> float:
    """KL(N(m, S) || N(0, I)) in nats, with (m, S) = :func:`gaussian_fit`."""
    return standard_normal_kl(*gaussian_fit(mean, logvar))
