"""The eleven decoder likelihoods in float64 NumPy: the oracle every backend is tested
against (SPEC.md, docs/likelihoods.md; raw layouts in :mod:`vaecli.registry`).

Conventions of every function here:

* ``x`` is an integer array ``(B, C, H, W)`` of levels ``0 .. L-1``, ``L = 2**n_bits``;
  continuous decoders see ``y = x / (L-1)`` in ``[0, 1]``.
* ``raw`` is the unconstrained decoder output ``(B, out_channels(C), H, W)``, converted
  to float64.
* ``log_*`` values are nats.  Per-dimension terms are ``(B, C, H, W)``, per-pixel terms
  ``(B, H, W)`` (summed over channels), per-image values ``(B,)``.
* Bin ``k`` of the discretization is ``[k/(L-1) - h, k/(L-1) + h]`` with
  ``h = 1/(2(L-1))``; the bins of levels 0 and L-1 reach to -inf and +inf, and are
  found by integer equality on ``x``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .. import registry
from ..constants import DEFAULT_FIXED_SIGMA, STUDENT_T_MIN_DF
from ..errors import VaeError
from .stable import (
    log1mexp_from_log,
    log_interval_mass,
    log_sigmoid,
    log_softmax,
    normal_log_cdf,
    normal_log_density,
    normal_log_pdf,
    sigmoid,
    softclip,
    softplus,
    student_t_log_cdf,
    student_t_log_density,
)

# Likelihoods whose sigma is a Gaussian standard deviation (mean = sigmoid(raw)).
_GAUSSIAN = ("gaussian", "gaussian-pixel", "sigma-learned", "sigma", "sigma-image")


# ----------------------------------------------------------------------------- options

Options = registry.Options  # the validated options of one call


def parse_options(name, opts) -> registry.Options:
    """The keyword options of a call for likelihood ``name``, validated by the one
    parser every backend calls (:func:`vaecli.registry.parse_options`)."""
    return registry.parse_options(name, opts)


# ----------------------------------------------------------------------------- inputs


def as_raw(name, raw) -> np.ndarray:
    """``raw`` as a float64 array; a VaeError unless it is a real numeric array."""
    arr = np.asarray(raw)
    if arr.dtype.kind not in "fiu":
        raise VaeError(f"{name}: raw decoder output must be a real array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def as_inputs(name, x, raw, o: Options):
    """Validated ``(x, raw)``: x int64 levels ``(B, C, H, W)``, raw float64 of the
    registry's shape.  A VaeError names the likelihood and what is wrong."""
    registry.info(name)
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise VaeError(
            f"{name}: x must be an integer array of levels 0..{o.levels - 1} "
            f"(n_bits={o.n_bits}), got dtype {x.dtype}; data is integers, not intensities"
        )
    raw = as_raw(name, raw)
    registry.check_shapes(name, x.shape, raw.shape, o.n_bits, o.mixtures)
    if x.size:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > o.levels - 1:
            raise VaeError(
                f"{name}: x must hold levels 0..{o.levels - 1} (n_bits={o.n_bits}); "
                f"got min {lo}, max {hi}"
            )
    return x.astype(np.int64), raw


def image_channels(name, raw, o: Options) -> int:
    """C of a raw output ``(B, K, H, W)`` (for mean and sample, which have no x)."""
    if raw.ndim != 4:
        raise VaeError(f"{name}: raw must have shape (B, K, H, W), got {raw.shape}")
    return registry.image_channels_of(name, raw.shape[1], o.n_bits, o.mixtures)


def split_params(raw, num_params, channels):
    """The parameter-major layout: parameter p of channel c is raw[:, p*C + c].
    Returns a list of ``num_params`` arrays ``(B, C, H, W)``."""
    b, _, h, w = raw.shape
    per = raw.reshape(b, num_params, channels, h, w)  # (B, P, C, H, W)
    return [per[:, p] for p in range(num_params)]


def bin_edges(x, levels):
    """Lower and upper edges of x's bin on the [0, 1] scale, ``(x -+ 0.5)/(L-1)``
    (the edge bins' infinite ends are handled by the callers by integer equality)."""
    return (x - 0.5) / (levels - 1), (x + 0.5) / (levels - 1)


def log_standard_width(log_scale, levels):
    """log of a bin's width on the standardized scale, log(1/(L-1)) - log s, taken from
    the log-scale: the width 1/((L-1) s) itself underflows to 0 above log s ~ 740."""
    return -np.log(levels - 1.0) - log_scale


# ----------------------------------------------------------------------------- parameters


def gaussian_mu_log_sigma(name, x, raw, o: Options, *, need_sigma=True):
    """``(mu, log_sigma)`` of a Gaussian-family decoder; mu ``(B, C, H, W)`` in [0, 1],
    log_sigma broadcastable to it.  ``x`` (levels) is needed only by ``sigma`` and
    ``sigma-image`` without a fixed sigma (their sigma comes from the MSE)."""
    c = registry.image_channels_of(name, raw.shape[1], o.n_bits, o.mixtures)
    if name == "gaussian-pixel":
        raw_mu, raw_log_sigma = split_params(raw, 2, c)
        return sigmoid(raw_mu), softclip(raw_log_sigma, o.log_sigma_min)
    (raw_mu,) = split_params(raw, 1, c)
    mu = sigmoid(raw_mu)  # (B, C, H, W)
    if name == "gaussian":
        sigma = DEFAULT_FIXED_SIGMA if o.sigma is None else o.sigma
        return mu, np.full((1, 1, 1, 1), np.log(sigma))
    if name == "sigma-learned":
        if o.log_sigma is None and not need_sigma:
            return mu, None
        log_sigma = float(np.asarray(registry.need_log_sigma(name, o), dtype=np.float64))
        return mu, np.full((1, 1, 1, 1), softclip(log_sigma, o.log_sigma_min))
    # sigma, sigma-image
    if o.sigma is not None:
        return mu, np.full((1, 1, 1, 1), np.log(o.sigma))
    if x is None:
        if not need_sigma:
            return mu, None
        raise VaeError(
            f"{name}: sigma comes from the data's MSE; pass the option sigma "
            "(e.g. the sigma stored with the checkpoint) to sample"
        )
    y = x / (o.levels - 1)  # (B, C, H, W)
    axes = (0, 1, 2, 3) if name == "sigma" else (1, 2, 3)
    mse = np.mean((y - mu) ** 2, axis=axes, keepdims=True)  # (1,1,1,1) or (B,1,1,1)
    with np.errstate(divide="ignore"):
        log_sigma = softclip(0.5 * np.log(mse), o.log_sigma_min)  # 0.5*log, not log(sqrt)
    return mu, log_sigma


def student_t_params(raw, o: Options):
    """``(mu, log_scale, df)`` each ``(B, C, H, W)``: mu = sigmoid, log s softclipped,
    df = STUDENT_T_MIN_DF + softplus(raw)."""
    c = raw.shape[1] // 3
    raw_mu, raw_log_scale, raw_df = split_params(raw, 3, c)
    return (
        sigmoid(raw_mu),
        softclip(raw_log_scale, o.log_sigma_min),
        STUDENT_T_MIN_DF + softplus(raw_df),
    )


def logistic_params(raw, o: Options):
    """``(mu, log_scale)`` each ``(B, C, H, W)``: mu is raw on the [0, 1] scale."""
    c = raw.shape[1] // 2
    raw_mu, raw_log_scale = split_params(raw, 2, c)
    return raw_mu, softclip(raw_log_scale, o.log_sigma_min)


def mixture_params(raw, channels, o: Options):
    """Unpack the logistic-mixture layout of :mod:`vaecli.registry`.

    Returns ``(logit_pi, mu, log_scale, coeff)``: logit_pi ``(B, K, H, W)``; mu and
    log_scale ``(B, K, C, H, W)`` (mu uncoupled, on the [0, 1] scale; log-scale
    softclipped); coeff ``(B, K, 3, H, W)`` = tanh(raw) = (a, b, c) for C == 3, else None.
    """
    b, _, h, w = raw.shape
    k, c = o.mixtures, channels
    logit_pi = raw[:, :k]  # (B, K, H, W)
    mu = raw[:, k : k + k * c].reshape(b, k, c, h, w)  # (B, K, C, H, W)
    log_scale = softclip(raw[:, k + k * c : k + 2 * k * c].reshape(b, k, c, h, w), o.log_sigma_min)
    coeff = None
    if c == 3:
        start = k + 2 * k * c
        coeff = np.tanh(raw[:, start : start + 3 * k].reshape(b, k, 3, h, w))  # (B, K, 3, H, W)
    return logit_pi, mu, log_scale, coeff


def couple_means(mu, coeff, y):
    """RGB coupling of the mixture: mu_G += a*y_R, mu_B += b*y_R + c*y_G.

    ``mu`` ``(B, K, 3, H, W)``, ``coeff`` ``(B, K, 3, H, W)``, ``y`` ``(B, 3, H, W)`` on
    the [0, 1] scale (the data, or the already drawn levels, or the means).  Returns a
    new array; no-op when ``coeff`` is None.
    """
    if coeff is None:
        return mu
    a, b, c = coeff[:, :, 0], coeff[:, :, 1], coeff[:, :, 2]  # (B, K, H, W)
    y_r, y_g = y[:, None, 0], y[:, None, 1]  # (B, 1, H, W)
    out = mu.copy()
    out[:, :, 1] = mu[:, :, 1] + a * y_r
    out[:, :, 2] = mu[:, :, 2] + b * y_r + c * y_g
    return out


# ----------------------------------------------------------------------------- bin masses


def gaussian_log_mass(x, mu, log_sigma, levels):
    """log of the N(mu, sigma^2) mass of x's bin, ``(B, C, H, W)`` nats.

    Standardized edges z = (edge - mu)/sigma; the first bin is Phi(z_hi), the last
    1 - Phi(z_lo) = Phi(-z_lo), interior bins Phi(z_hi) - Phi(z_lo) on the smaller tail.
    """
    lo, hi = bin_edges(x, levels)
    inv_sigma = np.exp(-log_sigma)
    z_lo, z_hi = (lo - mu) * inv_sigma, (hi - mu) * inv_sigma
    log_width = log_standard_width(log_sigma, levels)
    interior = log_interval_mass(normal_log_cdf, normal_log_pdf, z_lo, z_hi, log_width)
    return np.where(
        x == 0, normal_log_cdf(z_hi), np.where(x == levels - 1, normal_log_cdf(-z_lo), interior)
    )


def student_t_log_mass(x, mu, log_scale, df, levels):
    """log of the Student-t(mu, s, df) mass of x's bin, ``(B, C, H, W)`` nats (as
    :func:`gaussian_log_mass`, with the t log-CDF)."""
    lo, hi = bin_edges(x, levels)
    inv_scale = np.exp(-log_scale)
    z_lo, z_hi = (lo - mu) * inv_scale, (hi - mu) * inv_scale

    def log_cdf(z):
        return student_t_log_cdf(z, df)

    def log_pdf(z):
        return student_t_log_density(z, 0.0, 0.0, df)

    interior = log_interval_mass(log_cdf, log_pdf, z_lo, z_hi, log_standard_width(log_scale, levels))
    return np.where(x == 0, log_cdf(z_hi), np.where(x == levels - 1, log_cdf(-z_lo), interior))


def logistic_log_mass(x, mu, log_scale, levels):
    """log of the logistic(mu, s) mass of x's bin, ``(..., C, H, W)`` nats.

    With a = (lo - mu)/s, b = (hi - mu)/s the interior mass is exactly
    sigma(b) - sigma(a) = sigma(b) sigma(-a) (1 - e^(a - b)), so
    log mass = log sigma(b) + log sigma(-a) + log(1 - e^-d), d = (hi - lo)/s: no
    cancellation anywhere, and log(1 - e^-d) from log d (d underflows at a huge scale).
    First bin: sigma(b); last bin: 1 - sigma(a) = sigma(-a).
    """
    lo, hi = bin_edges(x, levels)
    inv_scale = np.exp(-log_scale)
    a, b = (lo - mu) * inv_scale, (hi - mu) * inv_scale
    log_width = log_standard_width(log_scale, levels)
    interior = log_sigmoid(b) + log_sigmoid(-a) + log1mexp_from_log(log_width)
    return np.where(x == 0, log_sigmoid(b), np.where(x == levels - 1, log_sigmoid(-a), interior))


# ----------------------------------------------------------------------------- terms


def log_dim_terms(name, x, raw, o: Options, *, discrete: bool):
    """Per-dimension log-likelihood terms ``(B, C, H, W)`` in nats for the per-channel
    likelihoods (everything but the mixture).  ``discrete``: the bin mass (log_pmf)
    instead of the density of the continuous decoders."""
    y = x / (o.levels - 1)  # (B, C, H, W) in [0, 1]
    if name in _GAUSSIAN:
        mu, log_sigma = gaussian_mu_log_sigma(name, x, raw, o)
        if discrete:
            return gaussian_log_mass(x, mu, log_sigma, o.levels)
        return normal_log_density(y, mu, log_sigma)
    if name == "student-t":
        mu, log_scale, df = student_t_params(raw, o)
        if discrete:
            return student_t_log_mass(x, mu, log_scale, df, o.levels)
        return student_t_log_density(y, mu, log_scale, df)
    if name == "bernoulli":
        # y*l - softplus(l) = y log sigma(l) + (1 - y) log(1 - sigma(l)), written the
        # second way so that neither term cancels at large |l|.
        (logit,) = split_params(raw, 1, x.shape[1])
        return y * log_sigmoid(logit) + (1.0 - y) * log_sigmoid(-logit)
    if name == "categorical":
        logits = raw.reshape(x.shape[0], o.levels, *x.shape[1:])  # (B, L, C, H, W)
        log_p = log_softmax(logits, axis=1)  # logits - logsumexp
        return np.take_along_axis(log_p, x[:, None], axis=1)[:, 0]
    if name == "bitwise":
        logits = raw.reshape(x.shape[0], o.n_bits, *x.shape[1:])  # (B, n_bits, C, H, W)
        shifts = np.arange(o.n_bits - 1, -1, -1).reshape(1, -1, 1, 1, 1)  # MSB first
        bits = (x[:, None] >> shifts) & 1  # (B, n_bits, C, H, W)
        # bit*l - softplus(l) = log sigma(l) for a 1, log sigma(-l) for a 0
        return np.where(bits == 1, log_sigmoid(logits), log_sigmoid(-logits)).sum(axis=1)
    if name == "logistic":
        mu, log_scale = logistic_params(raw, o)
        return logistic_log_mass(x, mu, log_scale, o.levels)
    raise AssertionError(f"no per-channel terms for {name}")  # pragma: no cover


def mixture_log_pixel_terms(x, raw, o: Options):
    """Per-pixel log-mixture ``(B, H, W)`` nats of the logistic mixture:
    logsumexp_k (log_softmax(pi)_k + sum_c log mass_{c,k}), with the RGB coupling on the
    data's own values y = x/(L-1)."""
    channels = x.shape[1]
    logit_pi, mu, log_scale, coeff = mixture_params(raw, channels, o)
    y = x / (o.levels - 1)  # (B, C, H, W)
    mu = couple_means(mu, coeff, y)  # (B, K, C, H, W)
    log_mass = logistic_log_mass(x[:, None], mu, log_scale, o.levels)  # (B, K, C, H, W)
    log_joint = log_softmax(logit_pi, axis=1) + log_mass.sum(axis=2)  # (B, K, H, W)
    return special.logsumexp(log_joint, axis=1)  # (B, H, W)


def log_pixel_terms(name, x, raw, o: Options, *, discrete: bool):
    """Per-pixel terms ``(B, H, W)`` nats: the per-dimension terms summed over channels
    (the mixture's per-pixel log-mixture)."""
    if name == "logistic-mixture":
        return mixture_log_pixel_terms(x, raw, o)
    return log_dim_terms(name, x, raw, o, discrete=discrete).sum(axis=1)


# ----------------------------------------------------------------------------- mean, sample


def mean_picture(name, raw, o: Options):
    """The decoder's mean picture ``(B, C, H, W)`` in [0, 1] (docs/likelihoods.md)."""
    c = image_channels(name, raw, o)
    if name in _GAUSSIAN:
        mu, _ = gaussian_mu_log_sigma(name, None, raw, o, need_sigma=False)
        return mu
    if name == "student-t":
        return student_t_params(raw, o)[0]
    if name == "bernoulli":
        return sigmoid(split_params(raw, 1, c)[0])
    if name == "categorical":
        b, _, h, w = raw.shape
        probs = special.softmax(raw.reshape(b, o.levels, c, h, w), axis=1)
        level = np.arange(o.levels, dtype=np.float64).reshape(1, -1, 1, 1, 1)
        return (probs * level).sum(axis=1) / (o.levels - 1)  # expected level
    if name == "bitwise":
        b, _, h, w = raw.shape
        p_one = sigmoid(raw.reshape(b, o.n_bits, c, h, w))
        weight = 2.0 ** np.arange(o.n_bits - 1, -1, -1).reshape(1, -1, 1, 1, 1)
        return (weight * p_one).sum(axis=1) / (o.levels - 1)  # expected level, bits independent
    if name == "logistic":
        return np.clip(logistic_params(raw, o)[0], 0.0, 1.0)
    if name == "logistic-mixture":
        logit_pi, mu, _, coeff = mixture_params(raw, c, o)
        if coeff is not None:
            # m_R = mu_R, m_G = mu_G + a m_R, m_B = mu_B + b m_R + c m_G, per component
            a, b_, c_ = coeff[:, :, 0], coeff[:, :, 1], coeff[:, :, 2]
            m_r = mu[:, :, 0]
            m_g = mu[:, :, 1] + a * m_r
            m_b = mu[:, :, 2] + b_ * m_r + c_ * m_g
            mu = np.stack([m_r, m_g, m_b], axis=2)  # (B, K, 3, H, W)
        weights = special.softmax(logit_pi, axis=1)[:, :, None]  # (B, K, 1, H, W)
        return np.clip((weights * mu).sum(axis=1), 0.0, 1.0)
    raise AssertionError(f"no mean for {name}")  # pragma: no cover


def sample_levels(name, raw, generator, o: Options):
    """Integer levels ``(B, C, H, W)`` drawn from the discretized distribution, as
    uint8 for n_bits <= 8 (uint16 above).  ``generator`` is a numpy Generator."""
    c = image_channels(name, raw, o)
    top = o.levels - 1
    dtype = np.uint8 if o.n_bits <= 8 else np.uint16

    def to_level(y):
        # the bin of y: round(y (L-1)), the edge bins reaching to -inf and +inf
        return np.clip(np.round(y * top), 0, top)

    if name in _GAUSSIAN:
        mu, log_sigma = gaussian_mu_log_sigma(name, None, raw, o)
        level = to_level(mu + np.exp(log_sigma) * generator.standard_normal(mu.shape))
    elif name == "student-t":
        mu, log_scale, df = student_t_params(raw, o)
        level = to_level(mu + np.exp(log_scale) * generator.standard_t(df))
    elif name == "bernoulli":
        (logit,) = split_params(raw, 1, c)
        level = np.where(generator.random(logit.shape) < sigmoid(logit), top, 0)
    elif name == "categorical":
        b, _, h, w = raw.shape
        logits = raw.reshape(b, o.levels, c, h, w)
        level = _gumbel_argmax(logits, generator, axis=1)
    elif name == "bitwise":
        b, _, h, w = raw.shape
        p_one = sigmoid(raw.reshape(b, o.n_bits, c, h, w))
        bits = (generator.random(p_one.shape) < p_one).astype(np.int64)
        shifts = np.arange(o.n_bits - 1, -1, -1).reshape(1, -1, 1, 1, 1)
        level = (bits << shifts).sum(axis=1)
    elif name == "logistic":
        mu, log_scale = logistic_params(raw, o)
        level = to_level(mu + np.exp(log_scale) * generator.logistic(size=mu.shape))
    elif name == "logistic-mixture":
        level = _sample_mixture(raw, c, generator, o, to_level)
    else:  # pragma: no cover
        raise AssertionError(f"no sampler for {name}")
    return level.astype(dtype)


def _gumbel_argmax(logits, generator, axis):
    """A draw from softmax(logits) along ``axis``: argmax(logits + Gumbel noise)."""
    return np.argmax(logits + generator.gumbel(size=logits.shape), axis=axis)


def _sample_mixture(raw, channels, generator, o: Options, to_level):
    """Component per pixel, then the channels in order, each logistic's location
    coupled to the already drawn levels (the conditional the PMF uses)."""
    logit_pi, mu, log_scale, coeff = mixture_params(raw, channels, o)
    k = _gumbel_argmax(logit_pi, generator, axis=1)  # (B, H, W)
    pick = k[:, None, None]  # (B, 1, 1, H, W)
    mu_k = np.take_along_axis(mu, pick, axis=1)[:, 0]  # (B, C, H, W)
    scale_k = np.exp(np.take_along_axis(log_scale, pick, axis=1)[:, 0])  # (B, C, H, W)
    level = np.zeros(mu_k.shape, dtype=np.float64)
    for ch in range(channels):
        loc = mu_k[:, ch]
        if coeff is not None and ch > 0:
            coeff_k = np.take_along_axis(coeff, pick, axis=1)[:, 0]  # (B, 3, H, W)
            y = level / (o.levels - 1)  # drawn values on the [0, 1] scale
            if ch == 1:
                loc = loc + coeff_k[:, 0] * y[:, 0]
            else:
                loc = loc + coeff_k[:, 1] * y[:, 0] + coeff_k[:, 2] * y[:, 1]
        noise = generator.logistic(size=loc.shape)
        level[:, ch] = to_level(loc + scale_k[:, ch] * noise)
    return level
