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

from . import registry
from .backends import torch_backend
from .constants import (PMF_CALIBRATION_IMAGES, PMF_CALIBRATION_MIN, PMF_CALIBRATION_VALUES,
                         PMF_SIGMA_GRID, PMF_SIGMA_MAX, PMF_SIGMA_XTOL)
from .errors import VaeError
from .models.protocol import draw_noise, target_of
from .units import bits_per_dim

_BATCH = 500


def needs_calibration(likelihood: str) -> bool:
    """Whether the likelihood is evaluated with sigmas fixed from training data: one
    whose log_prob couples the images of a batch (the sigma-VAE's batch sigma*) cannot
    score a test image on its own, so evaluation fixes its sigma from training."""
    return registry.info(likelihood).separable == "batch"


def softclipped_sigma(mse: float, floor) -> float:
    """exp(softclip(0.5 log mse, floor)): the analytic sigma* of a given MSE."""
    t = 0.5 * math.log(max(mse, 1e-300))
    if floor is not None:
        t = floor + math.log1p(math.exp(t - floor)) if t - floor < 30 else t
    return math.exp(t)


def epoch_sigma(lik, train_mse: float, log_sigma_min):
    """The decoder sigma to log after an epoch: sqrt(MSE) of the epoch's training batches
    for the analytic sigmas, the current one for fixed and learned sigmas, None where
    there is no one sigma (per-pixel sigma, non-Gaussian decoders) or no finite step yet."""
    info = lik.info
    if not info.gaussian_family or "log_sigma" in info.params:  # no sigma, or one per pixel
        return None
    if info.separable in ("batch", "image"):  # sigma* = sqrt(MSE), of the batch or of each image
        return softclipped_sigma(train_mse, log_sigma_min) if train_mse > 0 else None
    return lik.current_sigma()


def calibrate(model, train_images, *, train_mse: float, epoch: int, seed: int, n_bits: int,
              log_sigma_min) -> dict:
    """The evaluation sigmas of a likelihood that needs them (else {}): the density's
    sigma* = sqrt(MSE) of the last epoch's training batches, and the PMF's
    maximum-likelihood sigma (:func:`pmf_sigma`)."""
    if not needs_calibration(model.likelihood.name) or not train_mse > 0:
        return {}
    values = {
        "eval_sigma": softclipped_sigma(train_mse, log_sigma_min), "mse": train_mse, "epoch": epoch,
        "method": "sqrt of the mean squared error over all training batches of the last "
                  "epoch (running average while the model trained), softclipped at "
                  f"log_sigma_min={log_sigma_min}",
    }
    values.update(pmf_sigma(model, train_images, seed=seed, n_bits=n_bits, log_sigma_min=log_sigma_min))
    return values


def apply(model, calibration: dict, path: str):
    """Set the stored evaluation sigmas on the model's likelihood (where it needs them)."""
    if not needs_calibration(model.likelihood.name):
        return
    if calibration.get("eval_sigma") is None:
        raise VaeError(f"{path}: no evaluation sigma stored yet (train for at least one epoch)")
    model.likelihood.sigma = float(calibration["eval_sigma"])
    if calibration.get("pmf_sigma") is not None:  # files before it fall back to eval_sigma
        model.likelihood.pmf_sigma = float(calibration["pmf_sigma"])


@torch.no_grad()
def pmf_sigma(model, images: torch.Tensor, *, seed: int, n_bits: int, log_sigma_min: float,
              n_images: int = PMF_CALIBRATION_IMAGES) -> dict:
    """The maximum-likelihood sigma of the discretized Gaussian PMF on (a fixed subset
    of) the uint8 training ``images``, one posterior sample each: ``n_images`` of them,
    fewer where they hold more than PMF_CALIBRATION_VALUES values (videos), but at least
    PMF_CALIBRATION_MIN.  Returns a dict with
    ``pmf_sigma``, ``pmf_images``, ``pmf_train_bits`` (the PMF term in bits/dim at
    that sigma, without the KL) and ``pmf_method``."""
    from scipy.optimize import minimize_scalar

    was_training = model.training
    model.eval()
    n = images.shape[0]
    per_example = math.prod(images.shape[1:])
    n_images = min(n_images, max(PMF_CALIBRATION_MIN, PMF_CALIBRATION_VALUES // per_example))
    keep = np.sort(np.random.default_rng(seed).permutation(n)[: min(n, n_images)])
    x_all = images[torch.from_numpy(keep).to(images.device)]
    gen = torch.Generator(device=images.device).manual_seed(seed)
    raws, targets = [], []  # the images scored (a sequence model's predicted frames) and their raw outputs
    for start in range(0, x_all.shape[0], _BATCH):
        x = x_all[start : start + _BATCH]
        out = model.posterior(model.encode(x), draw_noise(model, x.shape[0], gen))
        raws.append(out.raw.double())
        targets.append(target_of(x, out))
    model.train(was_training)
    total = sum(t.numel() for t in targets)

    def nats_per_dim(log_sigma):
        s = sum(float(torch_backend.log_pmf("sigma", target, raw, n_bits=n_bits, sigma=math.exp(log_sigma),
                                            log_sigma_min=log_sigma_min).sum())
                for target, raw in zip(targets, raws))
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
