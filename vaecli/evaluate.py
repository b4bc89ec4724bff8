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
from .models.protocol import (LatentGroup, draw_noise, flat, group_kl, group_names, group_sizes, kl_per_group,
                              log_likelihood, log_weight, target_of, target_shape, repeat_features)
from .calibration import needs_calibration
from .units import bits_per_dim, equivalent_beta

METRICS = ("elbo", "bpd", "nll", "kl", "mse", "active-units", "aggregate-kl")
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
                            "group_dims", "agg_mean", "agg_logvar", "agg_kl", "agg_prior")}
    unconditional = _unconditional_groups(model, images, device) if "aggregate-kl" in want else []
    for index, x in _batches(images, batch_size, device, rank, world):
        gen.manual_seed(batch_seed(seed, index))
        features = model.encode(x)
        if want & {"active-units", "aggregate-kl"}:  # the posteriors on the mean path (eps = 0)
            groups = model.posterior(features, torch.zeros(x.shape[0], model.latent_size, device=device,
                                                           dtype=next(model.parameters()).dtype)).groups
            if not rows["group_dims"]:
                rows["group_dims"].append((index, torch.tensor(group_sizes(groups))))
            if "active-units" in want:
                rows["post_means"].append((index, torch.cat([flat(g.mean) for g in groups], 1).double()))
            if unconditional:
                for key, values in _aggregate_rows([groups[i] for i in unconditional]).items():
                    rows[key].append((index, values))
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
    if "aggregate-kl" in metrics:
        results["aggregate-kl"] = _aggregate_kl(model, rows, unconditional, seed)
    return _with_sigmas(lik, results)


PRIOR_PROBE = 8  # images whose priors are compared to find the groups with one prior for every image


def _unconditional_groups(model, images, device) -> list:
    """Indices of the latent groups whose prior is the same for every image: the standard
    normal, or a learned prior that does not depend on the image (an hvae's top group).
    Read off the first PRIOR_PROBE images (all ranks compute the same); evaluation checks
    that every batch's prior agrees (:func:`_aggregate_kl`)."""
    x = images[:PRIOR_PROBE].to(device)
    eps = torch.zeros(x.shape[0], model.latent_size, device=device, dtype=next(model.parameters()).dtype)
    groups = model.posterior(model.encode(x), eps).groups
    return [i for i, g in enumerate(groups) if g.prior_mean is None
            or (x.shape[0] > 1 and _same_rows(flat(g.prior_mean)) and _same_rows(flat(g.prior_logvar)))]


def _same_rows(t: torch.Tensor) -> bool:
    return bool(torch.allclose(t.double(), t[:1].double().expand_as(t), rtol=1e-5, atol=1e-6))


def _aggregate_rows(groups) -> dict:
    """The groups' posteriors in the coordinates where their prior is N(0, I) (the KL is
    unchanged by that affine map): means and log-variances (B, Z), the KL per image, and
    the prior's parameters of the batch's first image (2Z,), all float64."""
    means, logvars, priors, kl = [], [], [], 0.0
    for g in groups:
        mean, logvar = flat(g.mean).double(), flat(g.logvar).double()
        if g.prior_mean is None:
            p_mean, p_logvar = torch.zeros_like(mean), torch.zeros_like(logvar)
        else:
            p_mean, p_logvar = flat(g.prior_mean).double(), flat(g.prior_logvar).double()
        means.append((mean - p_mean) * torch.exp(-0.5 * p_logvar))
        logvars.append(logvar - p_logvar)
        priors += [p_mean[0], p_logvar[0]]
        kl = kl + group_kl(LatentGroup(mean, mean, logvar, None if g.prior_mean is None else p_mean,
                                       None if g.prior_mean is None else p_logvar))
    return {"agg_mean": torch.cat(means, 1), "agg_logvar": torch.cat(logvars, 1), "agg_kl": kl,
            "agg_prior": torch.cat(priors)[None]}


def _aggregate_kl(model, rows, unconditional, seed) -> dict:
    """KL(q(z) || p(z)) of the evaluated images' aggregate posterior over the groups with
    one prior for every image (vaecli.aggregate), with one posterior sample per image
    drawn from a generator seeded with ``seed``; the mutual information I(x; z) is the
    rate of those groups minus it."""
    import json

    from . import aggregate

    names = group_names(model, len(rows["group_dims"][0])) if rows["group_dims"] else ()
    n = sum(int(t.shape[0]) for t in rows["agg_mean"])
    if not unconditional:
        return {"applicable": False, "n": n, "reason": "every latent group's prior depends on the data "
                f"(groups: {', '.join(names) or 'none'}), so there is no one prior to compare the aggregate "
                "posterior with"}
    used = [names[i] for i in unconditional] if names else []
    priors = torch.cat(rows["agg_prior"])
    if not _same_rows(priors):
        return {"applicable": False, "n": n, "reason": f"the prior of group(s) {', '.join(used)} differs between "
                "batches: it depends on the data"}
    mean, logvar, rate = (torch.cat(rows[k]) for k in ("agg_mean", "agg_logvar", "agg_kl"))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = mean + torch.exp(0.5 * logvar) * eps.to(mean.device)
    terms = aggregate.aggregate_kl_terms(mean, logvar, z).cpu().numpy()
    value, rate = float(terms.mean()), float(rate.mean())
    return {"value": value, "stderr": float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0, "unit": "nats",
            "n": n, "applicable": True, "gaussian_fit_kl": aggregate.gaussian_fit_kl(mean, logvar),
            "rate": rate, "mutual_information": rate - value, "mutual_information_bound": math.log(n),
            "latent_dims": int(mean.shape[1]), "groups": json.dumps(used)}


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
