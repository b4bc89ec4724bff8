"""The evaluation sigmas of the sigma-VAE, computed from training data (SPEC.md).

The sigma-VAE sets its decoder sigma to the maximum-likelihood value given the decoder
means.  For the continuous density that is sigma* = sqrt(MSE), closed form; it is what
training uses and what the continuous metrics (ELBO and NLL in nats) are evaluated with.

The discrete metrics (bits/dim, NLL in bits) score the 256-level discretized Gaussian
instead, and its maximum-likelihood sigma is not sqrt(MSE): the edge bins reach to
infinity, and squared errors are not what a bin mass measures.  On near-binary data
such as MNIST the two differ by a factor of about two (docs/likelihoods.md).  So the
PMF gets its own sigma, by the same rule applied to its own likelihood: the maximiser
over sigma of the PMF's log-likelihood of training images, found by a 1-D search.
Neither sigma ever looks at the evaluated data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .backends import torch_backend
from .constants import (PMF_CALIBRATION_IMAGES, PMF_SIGMA_GRID, PMF_SIGMA_MAX,
                        PMF_SIGMA_XTOL)
from .units import bits_per_dim

_BATCH = 500


@torch.no_grad()
def pmf_sigma(model, images: torch.Tensor, *, seed: int, n_bits: int, log_sigma_min: float,
              n_images: int = PMF_CALIBRATION_IMAGES) -> dict:
    """The maximum-likelihood sigma of the discretized Gaussian PMF on (a fixed subset
    of) the uint8 training ``images``, one posterior sample each.  Returns a dict with
    ``pmf_sigma``, ``pmf_images``, ``pmf_train_bits`` (the PMF term in bits/dim at
    that sigma, without the KL) and ``pmf_method``."""
    from scipy.optimize import minimize_scalar

    was_training = model.training
    model.eval()
    n = images.shape[0]
    keep = np.sort(np.random.default_rng(seed).permutation(n)[: min(n, n_images)])
    x_all = images[torch.from_numpy(keep).to(images.device)]
    gen = torch.Generator(device=images.device).manual_seed(seed)
    raws = []
    for start in range(0, x_all.shape[0], _BATCH):
        mu, logvar = model.encode(x_all[start : start + _BATCH])
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        raws.append(model.decode(z).double())
    model.train(was_training)
    dims = int(np.prod(x_all.shape[1:]))
    total = x_all.shape[0] * dims

    def nats_per_dim(log_sigma):
        s = sum(float(torch_backend.log_pmf("sigma", x_all[i * _BATCH : (i + 1) * _BATCH], raw, n_bits=n_bits,
                                            sigma=math.exp(log_sigma), log_sigma_min=log_sigma_min).sum())
                for i, raw in enumerate(raws))
        return -s / total

    lo = log_sigma_min if log_sigma_min is not None else math.log(1e-4)
    hi = math.log(PMF_SIGMA_MAX)
    grid = np.linspace(lo, hi, PMF_SIGMA_GRID)
    values = [nats_per_dim(t) for t in grid]
    best = int(np.argmin(values))
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = minimize_scalar(nats_per_dim, bounds=(left, right), method="bounded",
                            options={"xatol": PMF_SIGMA_XTOL})
    log_sigma, value = (found.x, found.fun) if found.fun <= values[best] else (grid[best], values[best])
    return {
        "pmf_sigma": math.exp(log_sigma),
        "pmf_images": int(x_all.shape[0]),
        "pmf_train_bits": bits_per_dim(-value, 1),  # value: nats per dimension
        "pmf_method": (
            f"maximum-likelihood sigma of the {2**n_bits}-level discretized Gaussian on {x_all.shape[0]} "
            f"training images (fixed subset, one posterior sample each, seed {seed}): grid of "
            f"{PMF_SIGMA_GRID} log sigma values in [{lo:g}, log {PMF_SIGMA_MAX:g}], then Brent's "
            f"bounded method to {PMF_SIGMA_XTOL:g} in log sigma"
        ),
    }
