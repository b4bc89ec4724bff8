"""Evaluation metrics of a trained VAE (SPEC.md, "Objective and metrics").

All per-image quantities are nats unless named ``*_bpd``.  Posterior samples are
drawn with a generator seeded from ``seed`` so that an evaluation is repeatable.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import registry
from .constants import ACTIVE_UNIT_THRESHOLD
from .models.protocol import (draw_noise, group_names, group_sizes, kl_per_group, log_likelihood, log_weight,
                              posterior_means, target_of, target_shape,
                              repeat_features)
from .calibration import needs_calibration
from .units import bits_per_dim, equivalent_beta

METRICS = ("elbo", "bpd", "nll", "kl", "mse", "active-units")
DEFAULT_IW_SAMPLES = 100
DEFAULT_ELBO_SAMPLES = 1
# Data values (rows x dims) per decoder call when drawing importance samples.  On a
# GPU: ~2.6k MNIST images, enough to keep it busy; the widest decoder activation (32
# channels at full size) then takes ~270 MB.  On a CPU: ~170 MNIST images, since the
# decoder runs 1.3-1.9x more rows/s at 64-256 rows a call than at >= 1024 (its
# activations stay in cache; measured on a 2-core x86 machine, docs/performance.md).
IW_DECODE_VALUES = {"cuda": 2**21, "cpu": 2**17}


def applicability(likelihood: str, metric: str, binarized: bool = False):
    """(True, "") if ``metric`` is defined for the likelihood, else (False, why)."""
    info = registry.info(likelihood)
    if metric in ("elbo", "bpd", "nll") and info.training_only:
        return False, f"{likelihood}: {info.pmf_note}"
    if metric in ("bpd", "nll") and likelihood == "bernoulli" and not binarized:
        return False, "bernoulli on non-binary data is not a normalized likelihood (train with --binarize)"
    if metric == "elbo" and likelihood == "bernoulli" and not binarized:
        return False, "bernoulli on non-binary data is a cross-entropy, not a likelihood (train with --binarize)"
    return True, ""


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of one evaluation batch's noise: a batch draws the same numbers on
    whichever process evaluates it, so a sharded evaluation equals a single one."""
    return (seed * 1_000_003 + batch_index) % 2**63  # any int --seed: torch takes seeds below 2^64


def _batches(images, batch_size, device, rank=0, world=1):
    """(index, batch) for the batches this rank evaluates (every world-th)."""
    for index, start in enumerate(range(0, images.shape[0], batch_size)):
        if index % world == rank:
            yield index, images[start : start + batch_size].to(device)


def gather_rows(rows: dict, world: int) -> dict:
    """Per-batch result lists {key: [(batch_index, tensor), ...]} from every rank,
    merged in batch order (identity when world == 1)."""
    if world > 1:
        import torch.distributed as dist

        local = {k: [(i, t.cpu()) for i, t in v] for k, v in rows.items()}
        everyone = [None] * world
        dist.all_gather_object(everyone, local)
        rows = {k: [item for part in everyone for item in part[k]] for k in rows}
    return {k: [t for _, t in sorted(v, key=lambda it: it[0])] for k, v in rows.items()}


@torch.no_grad()
def evaluate(model, images: torch.Tensor, metrics, *, batch_size=256, elbo_samples=DEFAULT_ELBO_SAMPLES,
             iw_samples=DEFAULT_IW_SAMPLES, seed=0, binarized=False, progress=None, rank=0, world=1):
    """Evaluate ``metrics`` on uint8 ``images`` (N, C, H, W).  Returns metric -> dict
    with ``value`` (mean over images), ``stderr``, ``unit``, ``n`` and extras; metrics
    not defined for the likelihood get ``applicable: False`` and ``reason``.  With
    ``world`` > 1 (torch.distributed initialised) each rank evaluates every world-th
    batch and the per-image values are gathered: the result is the single-process one."""
    model.eval()
    lik = model.likelihood
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    want = {m for m in metrics if applicability(lik.name, m, binarized)[0]}
    rows = {k: [] for k in ("elbo", "elbo_pmf", "kl", "kl_groups", "mse", "iw", "iw_pmf", "post_means",
                            "group_dims")}
    for index, x in _batches(images, batch_size, device, rank, world):
        gen.manual_seed(batch_seed(seed, index))
        features = model.encode(x)
        if "active-units" in want:
            rows["post_means"].append((index, posterior_means(model, features).double()))
            if not rows["group_dims"]:
                eps = torch.zeros(1, model.latent_size, device=device, dtype=next(model.parameters()).dtype)
                first = features if isinstance(features, torch.Tensor) else type(features)(f[:1] for f in features)
                rows["group_dims"].append((index, torch.tensor(group_sizes(model.posterior(first, eps).groups))))
        # the KL is that of the ELBO's posterior samples (analytic per group, averaged over the samples)
        if want & {"elbo", "bpd", "mse", "kl"}:
            for key, values in _elbo_rows(model, x, features, want, elbo_samples, gen).items():
                rows[key].append((index, values))
        if "nll" in want:
            for key, values in _importance_rows(model, x, features, iw_samples, gen).items():
                rows[key].append((index, values))
        if progress:
            progress(x.shape[0])
    rows = gather_rows(rows, world)
    # bits/dim over the dimensions scored: an image's, or a sequence model's predicted frames'
    scored = (images.shape[0], *target_shape(model))
    results = _summaries(lik, rows, metrics, binarized, scored, elbo_samples, iw_samples)
    _per_group(model, rows, results)
    return _with_sigmas(lik, results)


def _per_group(model, rows, results):
    """KL and active units of each latent group, as JSON {group name: value} (models with
    several groups report the rate each group carries)."""
    import json

    if results.get("kl", {}).get("applicable") and rows["kl_groups"]:
        per_image = torch.cat(rows["kl_groups"]).cpu().numpy()  # (N, G)
        names = group_names(model, per_image.shape[1])
        results["kl"]["per_group"] = json.dumps({n: float(v) for n, v in zip(names, per_image.mean(0))})
    if results.get("active-units", {}).get("applicable") and rows["group_dims"]:
        sizes = rows["group_dims"][0].tolist()
        active = torch.cat(rows["post_means"]).var(0).cpu().numpy() > ACTIVE_UNIT_THRESHOLD
        names, start, counts = group_names(model, len(sizes)), 0, {}
        for name, size in zip(names, sizes):
            counts[name] = f"{int(active[start:start + size].sum())} of {size}"
            start += size
        results["active-units"]["per_group"] = json.dumps(counts)


def _elbo_rows(model, x, features, want, samples, gen) -> dict:
    """Per-image ELBO (density and PMF), KL and MSE of one batch, averaged over ``samples``
    posterior samples, float64."""
    lik = model.likelihood
    same_pmf = not lik.info.continuous  # log_prob is the PMF itself
    rec = kl = rec_pmf = sq = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    kl_groups = 0.0
    for _ in range(samples):
        out = model.posterior(features, draw_noise(model, x.shape[0], gen))
        parts = kl_per_group(out.groups)
        total = parts[0]
        for part in parts[1:]:
            total = total + part  # the sum in group order, as training's total_kl
        kl = kl + total.double()
        kl_groups = kl_groups + torch.stack(parts, 1).double()  # (B, G)
        log_px = None
        if "elbo" in want:
            log_px = log_likelihood(lik, x, out).double()
            rec = rec + log_px
        if "bpd" in want:
            rec_pmf = rec_pmf + (log_px if same_pmf and log_px is not None
                                 else log_likelihood(lik, x, out, pmf=True).double())
        if "mse" in want:  # over the pixels scored: the image, or a sequence model's predicted frames
            y = target_of(x, out).double() / (2**lik.n_bits - 1)
            per_frame = ((lik.mean(out.raw).double() - y) ** 2).mean(dim=(1, 2, 3))
            sq = sq + per_frame.view(x.shape[0], -1).mean(1)
    kl = kl / samples
    return {"kl": kl, "kl_groups": kl_groups / samples, "elbo": rec / samples - kl,
            "elbo_pmf": rec_pmf / samples - kl, "mse": sq / samples}


def _importance_rows(model, x, features, iw_samples, gen) -> dict:
    """Per-image importance-weighted bounds of one batch (density and PMF), float64.  The
    K samples are decoded ``chunk`` at a time for the whole batch: one decoder call of
    chunk*B rows instead of chunk calls of B rows."""
    lik = model.likelihood
    same_pmf = not lik.info.continuous
    b = x.shape[0]
    budget = IW_DECODE_VALUES["cuda" if x.device.type == "cuda" else "cpu"]
    chunk = max(1, min(iw_samples, budget // (b * x[0].numel())))
    log_w, log_w_pmf = [], []
    for start in range(0, iw_samples, chunk):
        c = min(chunk, iw_samples - start)
        eps = draw_noise(model, b, gen, leading=(c,)).reshape(c * b, -1)  # row i*B + b: image b
        out = model.posterior(repeat_features(features, c), eps)
        xs = x.expand(c, *x.shape).reshape(c * b, *x.shape[1:])
        prior_minus_q = log_weight(out.groups).double().view(c, b)
        log_w.append(log_likelihood(lik, xs, out).double().view(c, b) + prior_minus_q)
        # a discrete decoder's log_prob is its PMF: one evaluation serves both bounds
        log_w_pmf.append(log_w[-1] if same_pmf else
                         log_likelihood(lik, xs, out, pmf=True).double().view(c, b) + prior_minus_q)
    k = float(iw_samples)
    return {"iw": torch.logsumexp(torch.cat(log_w), 0) - math.log(k),
            "iw_pmf": torch.logsumexp(torch.cat(log_w_pmf), 0) - math.log(k)}


def _summaries(lik, rows, metrics, binarized, shape, elbo_samples, iw_samples) -> dict:
    """Each metric's mean, standard error, unit and extras from the per-image rows."""
    n, dims = shape[0], int(np.prod(shape[1:]))
    nats = "nats/video" if len(shape) == 5 else "nats/image"  # a sequence model scores (N, T, C, H, W)

    def cat(key):
        return torch.cat(rows[key]).cpu().numpy() if rows[key] else np.zeros(0)

    def summary(values, unit, **extra):
        return {"value": float(values.mean()), "stderr": float(values.std(ddof=1) / math.sqrt(len(values)))
                if len(values) > 1 else 0.0, "unit": unit, "n": int(len(values)), "applicable": True, **extra}

    results = {}
    for metric in metrics:
        ok, why = applicability(lik.name, metric, binarized)
        if not ok:
            results[metric] = {"applicable": False, "reason": why, "n": n}
        elif metric == "elbo":
            kind = "density of y = x/(L-1)" if lik.info.continuous else "PMF"
            results[metric] = summary(cat("elbo"), nats, samples=elbo_samples, log_px=kind)
        elif metric == "bpd":
            results[metric] = summary(bits_per_dim(cat("elbo_pmf"), dims), "bits/dim", samples=elbo_samples)
        elif metric == "nll":
            iw_pmf = cat("iw_pmf")
            results[metric] = summary(-cat("iw"), nats, iw_samples=iw_samples,
                                      bpd=float(bits_per_dim(iw_pmf, dims).mean()),
                                      nats_discrete=float(-iw_pmf.mean()))
        elif metric == "kl":
            results[metric] = summary(cat("kl"), nats)
        elif metric == "mse":
            results[metric] = summary(cat("mse"), "per dimension on [0, 1]", samples=elbo_samples)
        elif metric == "active-units":
            means = cat("post_means")
            active = int((means.var(axis=0) > ACTIVE_UNIT_THRESHOLD).sum())
            results[metric] = {"value": active, "stderr": 0.0, "unit": f"of {means.shape[1]} latent dims",
                               "n": n, "applicable": True, "threshold": ACTIVE_UNIT_THRESHOLD}
    return results


def _with_sigmas(lik, results) -> dict:
    """The decoder sigma (and its equivalent beta) the numbers were computed with, where
    there is one sigma; the PMF sigma of a calibrated likelihood's discrete numbers."""
    info, calibrated = lik.info, needs_calibration(lik.name)
    # one sigma for the whole evaluation: a fixed or learned one, or a calibrated one
    one_sigma = info.gaussian_family and "log_sigma" not in info.params and (
        info.separable == "pixel" or (calibrated and lik.sigma is not None))
    sigma = lik.current_sigma() if one_sigma else None
    if sigma is not None:
        for r in results.values():
            if r.get("applicable"):
                r["decoder_sigma"] = sigma
                r["equivalent_beta"] = equivalent_beta(sigma)
    if calibrated and lik.sigma is not None:  # the sigma the discrete numbers used
        for metric in ("bpd", "nll"):
            if results.get(metric, {}).get("applicable"):
                results[metric]["pmf_sigma"] = lik.pmf_sigma if lik.pmf_sigma is not None else lik.sigma
                if lik.pmf_sigma is None:  # a run file from before the PMF sigma: say so
                    results[metric]["pmf_sigma_source"] = "eval sigma (no PMF sigma stored; vae calibrate stores one)"
    return results
