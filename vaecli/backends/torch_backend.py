"""The torch backend: every likelihood with autograd, on CPU or CUDA, float32 or float64.

Implements the interface written in :mod:`vaecli.backends`.  ``x`` is an integer
tensor ``(B, C, H, W)`` of levels ``0 .. L-1``; ``raw`` the decoder output laid out as
:mod:`vaecli.registry` says.  All values are nats; results have ``raw``'s dtype.
"""

from __future__ import annotations

import math
import warnings
import torch
import torch.nn.functional as F

from .. import registry
from ..constants import DEFAULT_FIXED_SIGMA
from ..constants import SIMPSON_MAX_WIDTH, STUDENT_T_MIN_DF, STUDENT_T_SERIES_MIN_HALF_DF, TINY_BIN_WIDTH
from ..constants import STUDENT_T_BGRAT_D, STUDENT_T_BGRAT_MIN_HALF_DF
from ..errors import VaeError

NAME = "torch"
LN2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
SQRT_HALF = math.sqrt(0.5)
_FLOAT_DTYPES = (torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Continued fraction of the regularized incomplete beta function (student-t CDF):
# iterations are run in blocks, and stop once every element has converged.
_BETACF_BLOCK = 8
_BETACF_MAX_ITERATIONS = 400
_BETACF_TINY = 1e-30  # Lentz's guard against division by zero
# Terms of the DLMF 8.17.8 series of the Student-t tail where u = df/(df + t^2) < 1/2:
# the ratio of successive terms is below u, so the rest is below 2^-60.
_STUDENT_T_TAIL_TERMS = 60

# Bins narrow against the scale: Simpson's rule (constants.SIMPSON_MAX_WIDTH)
_SIMPSON_MAX_WIDTH = {torch.float32: SIMPSON_MAX_WIDTH["float32"], torch.float64: SIMPSON_MAX_WIDTH["float64"]}
_STUDENT_T_SERIES_MIN_HALF_DF = {torch.float32: STUDENT_T_SERIES_MIN_HALF_DF["float32"],
                                 torch.float64: STUDENT_T_SERIES_MIN_HALF_DF["float64"]}


def available():
    return True, ""


# --------------------------------------------------------------------------- options

# The torch backend's own option: a differentiable all-reduce (sum) that makes the sigma
# likelihood's batch MSE the global one under data-parallel training.
_EXTRA_OPTIONS = ("batch_reduce",)


def _read_scalar(value):
    """A 0-d log_sigma read on the host to check that it is finite, where that is free:
    a tensor only when it is on the CPU and not traced (see _host_checkable); on a
    device the parameter is the trainer's, checked where it is made."""
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if _host_checkable(value) else None
    return float(value) if type(value).__module__.split(".")[0] == "numpy" else None


def _options(name, opts) -> registry.Options:
    """The options of one call, by the parser every backend shares."""
    return registry.parse_options(name, opts, extra=_EXTRA_OPTIONS, read_scalar=_read_scalar)


def _check_raw(name, raw):
    if not isinstance(raw, torch.Tensor):
        raise VaeError(f"{name}: raw must be a torch tensor, got {type(raw).__name__}")
    if raw.dtype not in _FLOAT_DTYPES:
        raise VaeError(
            f"{name}: likelihoods compute in float32 or float64, got raw of dtype "
            f"{raw.dtype} (cast it with raw.float())"
        )


def _host_checkable(x) -> bool:
    """Whether x's values may be read on the host to check them.  A range check needs
    them there: on CUDA it would stall the stream, under torch.compile break the graph,
    and under torch.func transforms (vmap, grad) it cannot be done, so there the caller
    validates the data once (the trainer does, when it loads the data)."""
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return (x.device.type == "cpu" and x.numel() > 0 and not torch.compiler.is_compiling()
            and not (wrapped is not None and wrapped(x)))


def _check_x(name, x, raw, o: registry.Options, continuous_ok=False):
    if continuous_ok and isinstance(x, torch.Tensor) and x.dtype in _FLOAT_DTYPES:
        # dequantized data: continuous levels in [-1/2, L - 1/2] (density only)
        registry.check_shapes(name, x.shape, raw.shape, o.n_bits, o.mixtures)
        if x.device != raw.device:
            raise VaeError(f"{name}: x is on {x.device} but raw is on {raw.device}")
        if _host_checkable(x):
            lo, hi = float(x.min()), float(x.max())
            if not (-0.5 <= lo and hi <= o.levels - 0.5):  # NaN fails too
                raise VaeError(
                    f"{name}: floating x must hold dequantized levels in [-0.5, {o.levels - 0.5}] "
                    f"(n_bits={o.n_bits}; not data scaled to [0, 1]), got values from {lo:g} to {hi:g}"
                )
            if hi <= 1.0 and o.levels > 2:
                warnings.warn(f"{name}: floating x is within [{lo:g}, {hi:g}]: x holds dequantized levels in "
                              f"[-0.5, {o.levels - 0.5}], not data scaled to [0, 1]", stacklevel=4)
        return
    if not isinstance(x, torch.Tensor) or x.dtype not in _INT_DTYPES:
        dtype = getattr(x, "dtype", type(x).__name__)
        kinds = "uint8, int8, int16, int32 or int64" + (", or floating dequantized levels" if continuous_ok else "")
        raise VaeError(f"{name}: x must be an integer tensor of levels ({kinds}), got {dtype}")
    registry.check_shapes(name, x.shape, raw.shape, o.n_bits, o.mixtures)
    if x.device != raw.device:
        raise VaeError(f"{name}: x is on {x.device} but raw is on {raw.device}")
    if _host_checkable(x):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= o.levels:
            raise VaeError(
                f"{name}: x must hold levels 0..{o.levels - 1} (n_bits={o.n_bits}), "
                f"got values from {lo} to {hi}"
            )


def check_options(name, **opts):
    """Raise the VaeError that a call with these options would raise, now (for a
    Likelihood module at construction, rather than at its first use): the shared
    parser, registry.parse_options, with this backend's own options."""
    _options(name, opts)


def _check_raw_shape(name, raw, o: registry.Options):
    """raw alone (mean and sample): (B, K, H, W) with K channels that describe an image."""
    if raw.dim() != 4:
        raise VaeError(f"{name}: raw must have shape (B, K, H, W), got {tuple(raw.shape)}")
    registry.image_channels_of(name, raw.shape[1], o.n_bits, o.mixtures)


def _split(raw, params):  # (B, P*C, H, W) -> P tensors (B, C, H, W)
    b, pc, h, w = raw.shape
    return raw.view(b, params, pc // params, h, w).unbind(1)


# --------------------------------------------------------------- stable small helpers


def _softplus(t):
    """log(1 + exp(t)), exact to the dtype's rounding: torch's softplus returns t itself
    above its threshold (20 by default), which drops exp(-20) = 2e-9, below float32's
    resolution there but not float64's; from 40 on, exp(-t) is under half an ulp of t
    in float64 too."""
    return F.softplus(t, threshold=40.0 if t.dtype == torch.float64 else 20.0)


def _softclip(t, floor):
    """Smooth lower bound: floor + softplus(t - floor) (identity when floor is None)."""
    return t if floor is None else floor + _softplus(t - floor)


def _log1mexp(d):
    """log(1 - exp(-d)) for d >= 0 (Maechler 2012): expm1 form below ln 2, log1p above.

    Each branch gets an input clamped to its own range so that the unused branch
    never produces an infinite gradient."""
    small = torch.clamp(d, max=LN2)
    large = torch.clamp(d, min=LN2)
    return torch.where(d < LN2, torch.log(-torch.expm1(-small)), torch.log1p(-torch.exp(-large)))


def _log_sigmoid(t):
    # log sigma(t) = t - softplus(t) = -softplus(-t)
    return -_softplus(-t)


def _log_interval_mass(log_cdf, log_pdf, lower, upper, width, log_width, first, last):
    """log(F(upper) - F(lower)) for a distribution symmetric about 0 (F(-t) = 1 - F(t))
    with density f, where F(lower) = 0 where ``first`` and F(upper) = 1 where ``last``
    (edge bins); ``width`` = upper - lower, computed without the subtraction, and
    ``log_width`` its log from the log-scale (the width underflows at a huge scale).

    Cancellation is avoided by working in whichever tail is smaller: with hi >= lo in
    that tail, log(F(hi) - F(lo)) = log F(hi) + log1mexp(log F(hi) - log F(lo)); in the
    upper tail F(u) - F(l) = F(-l) - F(-u).  When the bin is narrow against the scale
    the two log-CDFs are too close to subtract, and Simpson's rule on the density,
    (w/6)(f(l) + 4 f(m) + f(u)), is used instead (see constants.SIMPSON_MAX_WIDTH), in
    logs: log w - log 6 + logsumexp of the three log densities."""
    use_upper = torch.where(first, False, torch.where(last, True, lower + upper > 0))
    hi = torch.where(use_upper, -lower, upper)
    lo = torch.where(use_upper, -upper, lower)
    log_hi = log_cdf(hi)
    edge = first | last
    mid = 0.5 * (lower + upper)
    narrow = ~edge & (width * (1 + mid.abs()) < _SIMPSON_MAX_WIDTH[lower.dtype])
    log_lo = torch.where(edge, -math.inf, log_cdf(torch.where(edge, 0.0, lo)))
    gap = torch.where(narrow, 1.0, log_hi - log_lo)  # keep d = 0 out of the narrow bins' graph
    by_cdf = log_hi + _log1mexp(gap)
    log_f = torch.stack((log_pdf(lower), log_pdf(mid) + math.log(4.0), log_pdf(upper)))
    by_simpson = (log_width - math.log(6.0)) + torch.logsumexp(log_f, dim=0)
    return torch.where(narrow, by_simpson, by_cdf)


def _log_logistic_mass(lower, upper, width, log_width, first, last):
    """log(sigma(u) - sigma(l)) of the standard logistic, exactly and without
    cancellation: sigma(u) - sigma(l) = sigma(u) sigma(-l) (1 - exp(-(u - l))).
    Edge bins: log sigma(u) (first) and log sigma(-l) (last).  A width below
    TINY_BIN_WIDTH takes log(1 - e^-w) = log w from ``log_width`` (w underflows)."""
    log_upper = _log_sigmoid(upper)  # log F(u)
    log_above_lower = _log_sigmoid(-lower)  # log (1 - F(l))
    tiny = width < TINY_BIN_WIDTH
    log_gap = torch.where(tiny, log_width, _log1mexp(torch.where(tiny, 1.0, width)))
    interior = log_upper + log_above_lower + log_gap
    return torch.where(first, log_upper, torch.where(last, log_above_lower, interior))


def _bin_edges(x, loc, log_scale, levels):
    """Standardized lower and upper edges of x's bin, the standardized bin width and
    its log (from the log-scale: the width 1/((L-1) s) turns subnormal, then zero, at a
    huge scale, where the bin's mass is still finite), and the edge-bin masks (found by
    integer equality)."""
    step = 1.0 / (levels - 1)  # distance between bin centres on the [0, 1] scale
    inv_scale = torch.exp(-log_scale)
    centre = x.to(loc.dtype) * step
    lower = (centre - 0.5 * step - loc) * inv_scale
    upper = (centre + 0.5 * step - loc) * inv_scale
    return lower, upper, step * inv_scale, math.log(step) - log_scale, x == 0, x == levels - 1


def _log_normal_pdf(t):
    return -0.5 * t * t - HALF_LOG_2PI


class _LogNdtr(torch.autograd.Function):
    """log Phi(t) with an accurate derivative everywhere.

    Autograd of torch.special.log_ndtr forms phi(t)/Phi(t) from two large logs
    (-t^2/2 and log Phi(t)), which in float32 loses about t^2/2 * eps relative deep
    in the lower tail.  With Phi(t) = erfcx(-t/sqrt 2) exp(-t^2/2) / 2 the ratio is
    exactly sqrt(2/pi) / erfcx(-t/sqrt 2), which has no such cancellation."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return torch.special.log_ndtr(t)

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return grad * (SQRT_2_OVER_PI / torch.special.erfcx(-t * SQRT_HALF))


def _log_ndtr(t):
    return _LogNdtr.apply(t)


# ---------------------------------------------------- regularized incomplete beta


def _log_betainc(a, b, x, one_minus_x):
    """log I_x(a, b) for 0 <= x <= 1, by the continued fraction (Numerical Recipes'
    betacf, modified Lentz) where it converges fast, x < (a+1)/(a+b+2), and by
    I_x(a, b) = 1 - I_{1-x}(b, a) elsewhere.  ``one_minus_x`` is passed separately
    so that it keeps its precision when x is close to 1.  Differentiable in a, b, x."""
    swap = x >= (a + 1) / (a + b + 2)
    aa = torch.where(swap, b, a)
    bb = torch.where(swap, a, b)
    xx = torch.where(swap, one_minus_x, x)
    yy = torch.where(swap, x, one_minus_x)
    zero = xx == 0  # I_0 = 0; keep log(0) and its infinite gradient out of the graph
    xx = torch.where(zero, 0.5, xx)
    # log of the prefactor x^a (1-x)^b / (a B(a, b))
    log_front = (
        aa * torch.log(xx)
        + bb * torch.log(yy)
        - torch.lgamma(aa)
        - torch.lgamma(bb)
        + torch.lgamma(aa + bb)
        - torch.log(aa)
    )
    log_cf = torch.log(_betacf(aa, bb, xx))
    log_part = torch.where(zero, -math.inf, log_front + log_cf)  # log I_xx(aa, bb)
    swapped = torch.log1p(-torch.exp(log_part))  # I_x(a, b) = 1 - I_{1-x}(b, a)
    return torch.where(swap, swapped, log_part)


def _betacf(a, b, x):
    def guard(t):
        return torch.where(t.abs() < _BETACF_TINY, torch.full_like(t, _BETACF_TINY), t)

    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = torch.ones_like(x)
    d = 1.0 / guard(1.0 - qab * x / qap)
    h = d
    tol = 4 * torch.finfo(x.dtype).eps
    m = 0
    while m < _BETACF_MAX_ITERATIONS:
        for _ in range(_BETACF_BLOCK):
            m += 1
            m2 = 2 * m
            coef = m * (b - m) * x / ((qam + m2) * (a + m2))
            d = 1.0 / guard(1.0 + coef * d)
            c = guard(1.0 + coef / c)
            h = h * d * c
            coef = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
            d = 1.0 / guard(1.0 + coef * d)
            c = guard(1.0 + coef / c)
            delta = d * c
            h = h * delta
        if x.numel() == 0 or bool(((delta - 1.0).abs() <= tol).all()):
            break
    return h


def _student_t_log_norm(df):
    """lgamma((df+1)/2) - lgamma(df/2) - 0.5 log(df pi) = c(a) - 0.5 log(2 pi), a = df/2,
    c(a) = lgamma(a + 1/2) - lgamma(a) - 0.5 log a: by its asymptotic series where the
    two log-gammas would cancel (constants.STUDENT_T_SERIES_MIN_HALF_DF)."""
    a = 0.5 * df
    big = a >= _STUDENT_T_SERIES_MIN_HALF_DF[df.dtype]
    a_small = torch.where(big, 1.0, a)  # each branch on inputs of its own range
    inv = 1.0 / torch.where(big, a, 1.0)
    inv2 = inv * inv
    series = inv * (-1.0 / 8.0 + inv2 * (1.0 / 192.0 + inv2 * (-1.0 / 640.0 + inv2 * (17.0 / 14336.0))))
    direct = torch.lgamma(a_small + 0.5) - torch.lgamma(a_small) - 0.5 * torch.log(a_small)
    return torch.where(big, series, direct) - HALF_LOG_2PI


def _student_t_log_pdf(t, df):
    """log density of the standard Student-t with ``df`` degrees of freedom."""
    return _student_t_log_norm(df) - 0.5 * (df + 1) * torch.log1p(t * t / df)


def _student_t_log_cdf(t, df):
    """log F(t) of the standard Student-t with ``df`` degrees of freedom:
    F(t) = I_{df/(df+t^2)}(df/2, 1/2) / 2 for t <= 0 and 1 - that for t > 0.  The
    incomplete beta by its continued fraction for df/2 below
    STUDENT_T_BGRAT_MIN_HALF_DF, by :func:`_student_t_log_tail_large_df` above."""
    large = 0.5 * df >= STUDENT_T_BGRAT_MIN_HALF_DF
    t_small, df_small = torch.where(large, 0.0, t), torch.where(large, 3.0, df)  # each branch
    t_large, df_large = torch.where(large, t, 0.0), torch.where(large, df, 1e3)  # in its range
    t2 = t_small * t_small
    x = df_small / (df_small + t2)
    one_minus_x = t2 / (df_small + t2)
    by_betainc = _log_betainc(0.5 * df_small, torch.full_like(df_small, 0.5), x, one_minus_x) - LN2
    log_tail = torch.where(large, _student_t_log_tail_large_df(t_large, df_large), by_betainc)
    upper_side = torch.log1p(-torch.exp(log_tail))
    return torch.where(t > 0, upper_side, log_tail)


def _student_t_log_tail_large_df(t, df):
    """log F(-|t|) = log I_u(a, 1/2) - log 2, a = df/2 >= STUDENT_T_BGRAT_MIN_HALF_DF,
    u = df/(df + t^2), with q = t^2/df kept apart from u (u = 1/(1 + q) rounds q away):

    * q <= 1 (u >= 1/2): TOMS 708's BGRAT (constants.STUDENT_T_BGRAT_D), with
      z = (a - 1/4) log1p(q) and sqrt z = |t| sqrt((a - 1/4) log1p(q)/q / df):
      log I = c(a) - log1p(-1/(4a))/2 - z + log(erfcx(sqrt z) + sum_n d_n K_n),
      c(a) = lgamma(a + 1/2) - lgamma(a) - log(a)/2;
    * q > 1 (u < 1/2): DLMF 8.17.8, I_u(a, b) = u^a (1-u)^b 2F1(a+b, 1; a+1; u)/(a B(a, b)),
      log B(a, 1/2) = log(pi)/2 - c(a) - log(a)/2, the series' terms falling like u^n."""
    a = 0.5 * df
    c_a = _student_t_log_norm(df) + HALF_LOG_2PI
    q = t * t / df
    near = q <= 1.0
    # BGRAT, on inputs of its own range
    q_n = torch.where(near, q, 0.5)
    log1p_q = torch.log1p(q_n)
    ratio = torch.where(q_n > 0, log1p_q / torch.where(q_n > 0, q_n, 1.0), 1.0)  # log1p(q)/q -> 1
    nu = a - 0.25
    root_z = torch.where(near, t, 0.0).abs() * torch.sqrt(nu * ratio / df)
    z = nu * log1p_q
    t_sq, v = 0.25 * log1p_q * log1p_q, 0.25 / (nu * nu)
    k = torch.special.erfcx(root_z)
    total, power, root_z_pi = k, torch.ones_like(z), root_z / math.sqrt(math.pi)
    for n, d_n in enumerate(STUDENT_T_BGRAT_D, start=1):
        b_n = 0.5 + 2.0 * (n - 1)
        k = (b_n * (b_n + 1.0) * k + (z + b_n + 1.0) * power * root_z_pi) * v
        power = power * t_sq
        total = total + d_n * k
    by_bgrat = c_a - 0.5 * torch.log1p(-0.25 / a) - z + torch.log(total) - LN2
    # DLMF 8.17.8, on inputs of its own range
    q_f = torch.where(near, 2.0, q)
    log_u, log_1mu = -torch.log1p(q_f), -torch.log1p(1.0 / q_f)
    u = torch.exp(log_u)
    term = torch.ones_like(u)
    series = torch.ones_like(u)
    for n in range(_STUDENT_T_TAIL_TERMS):
        term = term * (a + 0.5 + n) * u / (a + 1.0 + n)
        series = series + term
    log_beta = 0.5 * math.log(math.pi) - c_a - 0.5 * torch.log(a)
    by_series = a * log_u + 0.5 * log_1mu - torch.log(a) - log_beta + torch.log(series) - LN2
    return torch.where(near, by_bgrat, by_series)


# ------------------------------------------------------------------ the likelihoods
# Each returns the parameters of its distribution as a small dict; log_prob, log_pmf,
# mean and sample are then written once per distribution family.


def _gaussian_params(name, x, raw, o: registry.Options):
    """mu (B, C, H, W) and log sigma (broadcastable) of the Gaussian family."""
    if name == "gaussian-pixel":
        mu_raw, log_sigma_raw = _split(raw, 2)
        return torch.sigmoid(mu_raw), _softclip(log_sigma_raw, o.log_sigma_min)
    mu = torch.sigmoid(raw)
    if name == "gaussian":
        sigma = DEFAULT_FIXED_SIGMA if o.sigma is None else o.sigma
        return mu, torch.full((), math.log(sigma), dtype=raw.dtype, device=raw.device)
    if name == "sigma-learned":
        log_sigma = torch.as_tensor(registry.need_log_sigma(name, o), dtype=raw.dtype, device=raw.device)
        return mu, _softclip(log_sigma, o.log_sigma_min)
    # sigma, sigma-image: fixed evaluation sigma, or sigma* = sqrt(MSE) of this batch/image
    if o.sigma is not None:
        return mu, torch.full((), math.log(o.sigma), dtype=raw.dtype, device=raw.device)
    if x is None:
        raise VaeError(
            f"{name}: sigma comes from the data; pass the evaluation sigma (option sigma) "
            "to draw samples"
        )
    y = x.to(raw.dtype) / (o.levels - 1)
    sq = (y - mu) ** 2
    batch_reduce = o.extra.get("batch_reduce")
    if name == "sigma" and batch_reduce is not None:  # data-parallel: the global batch's MSE
        totals = batch_reduce(torch.stack((sq.sum(), sq.new_tensor(float(sq.numel())))))
        mse = totals[0] / totals[1]
    elif name == "sigma":
        mse = sq.mean()
    else:
        mse = sq.mean(dim=(1, 2, 3), keepdim=True)
    return mu, _softclip(0.5 * torch.log(mse), o.log_sigma_min)


def _student_t_params(raw, o: registry.Options):
    mu_raw, log_scale_raw, df_raw = _split(raw, 3)
    return (
        torch.sigmoid(mu_raw),
        _softclip(log_scale_raw, o.log_sigma_min),
        STUDENT_T_MIN_DF + _softplus(df_raw),
    )


def _logistic_params(raw, o: registry.Options):
    mu, log_scale_raw = _split(raw, 2)
    return mu, _softclip(log_scale_raw, o.log_sigma_min)


def _mixture_params(raw, o: registry.Options):
    """Mixture log-weights (B, K, H, W), means, log-scales (B, K, C, H, W) and the
    coupling coefficients (B, K, 3, H, W) or None."""
    k = o.mixtures
    b, _, h, w = raw.shape
    c = registry.image_channels_of("logistic-mixture", raw.shape[1], o.n_bits, k)
    log_weights = torch.log_softmax(raw[:, :k], dim=1)
    mu = raw[:, k : k + k * c].reshape(b, k, c, h, w)
    log_scale = _softclip(raw[:, k + k * c : k + 2 * k * c].reshape(b, k, c, h, w), o.log_sigma_min)
    coeff = None
    if c == 3:
        coeff = torch.tanh(raw[:, k + 2 * k * c : k + 2 * k * c + 3 * k].reshape(b, k, 3, h, w))
    return log_weights, mu, log_scale, coeff


def _couple(mu, coeff, y_r, y_g):
    """RGB coupling: mu_G += a y_R, mu_B += b y_R + c y_G (y on the [0, 1] scale)."""
    mu_r, mu_g, mu_b = mu.unbind(2)
    a, b, c = coeff.unbind(2)
    return torch.stack((mu_r, mu_g + a * y_r, mu_b + b * y_r + c * y_g), dim=2)


def _sum_dims(t):  # (B, ...) -> (B,); an empty batch gives (0,)
    return t.flatten(1).sum(1)


def _log_prob(name, x, raw, o: registry.Options, discrete: bool):
    levels = o.levels
    if name in ("gaussian", "gaussian-pixel", "sigma-learned", "sigma", "sigma-image"):
        mu, log_sigma = _gaussian_params(name, x, raw, o)
        if discrete:
            edges = _bin_edges(x, mu, log_sigma, levels)
            return _sum_dims(_log_interval_mass(_log_ndtr, _log_normal_pdf, *edges))
        z = (x.to(raw.dtype) / (levels - 1) - mu) * torch.exp(-log_sigma)
        return _sum_dims(-0.5 * z * z - log_sigma - HALF_LOG_2PI)
    if name == "student-t":
        mu, log_scale, df = _student_t_params(raw, o)
        if discrete:
            # float64 whatever raw's dtype (as the CuPy formulas): the incomplete beta
            # and its large-df expansion need the range and the digits
            df64 = df.double()
            edges = _bin_edges(x, mu.double(), log_scale.double(), levels)

            def log_cdf(t):
                return _student_t_log_cdf(t, df64)

            def log_pdf(t):
                return _student_t_log_pdf(t, df64)

            return _sum_dims(_log_interval_mass(log_cdf, log_pdf, *edges)).to(raw.dtype)
        z = (x.to(raw.dtype) / (levels - 1) - mu) * torch.exp(-log_scale)
        return _sum_dims(_student_t_log_pdf(z, df) - log_scale)
    if name == "bernoulli":
        y = x.to(raw.dtype) / (levels - 1)
        return _sum_dims(y * raw - _softplus(raw))  # log sigma(l)^y (1-sigma(l))^(1-y)
    if name == "categorical":
        b, _, h, w = raw.shape
        logits = raw.view(b, levels, raw.shape[1] // levels, h, w)  # (B, L, C, H, W)
        log_p = torch.log_softmax(logits, dim=1)  # logits - logsumexp
        return _sum_dims(log_p.gather(1, x.long().unsqueeze(1)))
    if name == "bitwise":
        b, _, h, w = raw.shape
        logits = raw.view(b, o.n_bits, raw.shape[1] // o.n_bits, h, w)  # (B, n_bits, C, H, W), MSB first
        shifts = torch.arange(o.n_bits - 1, -1, -1, device=raw.device).view(1, -1, 1, 1, 1)
        bits = ((x.long().unsqueeze(1) >> shifts) & 1).to(raw.dtype)
        return _sum_dims(bits * logits - _softplus(logits))
    if name == "logistic":
        mu, log_scale = _logistic_params(raw, o)
        return _sum_dims(_log_logistic_mass(*_bin_edges(x, mu, log_scale, levels)))
    if name == "logistic-mixture":
        log_weights, mu, log_scale, coeff = _mixture_params(raw, o)
        xk = x.unsqueeze(1)  # (B, 1, C, H, W)
        if coeff is not None:
            y = x.to(raw.dtype) / (levels - 1)
            mu = _couple(mu, coeff, y[:, None, 0], y[:, None, 1])
        log_mass = _log_logistic_mass(*_bin_edges(xk, mu, log_scale, levels))
        mass = log_mass.sum(2)  # (B, K, H, W): each component's log mass
        # shifted by their largest (a constant: the value's derivative in it is 0) before
        # the log-weights join them, so that a large common part (a huge scale, a pixel far
        # from every mean) cancels exactly instead of absorbing the log-weights, which made
        # every responsibility 1 (as in the CuPy formulas and kernels)
        top = mass.detach().amax(dim=1, keepdim=True)
        top = torch.where(top == -math.inf, 0.0, top)  # no component can give x: -inf
        return _sum_dims(top.squeeze(1) + torch.logsumexp(log_weights + (mass - top), dim=1))
    raise AssertionError(name)  # registry.info has rejected unknown names


def _prepare(name, x, raw, opts, continuous_ok=False):
    registry.info(name)
    o = _options(name, opts)
    _check_raw(name, raw)
    _check_x(name, x, raw, o, continuous_ok)
    return o


def log_prob(name, x, raw, **opts):
    """log p(x | raw) in nats per image, (B,): the density of y = x/(L-1) for the
    continuous decoders, the PMF for the discrete ones.  Continuous decoders also
    take floating x (dequantized levels, e.g. x + U(-1/2, 1/2))."""
    o = _prepare(name, x, raw, opts, continuous_ok=registry.info(name).continuous)
    return _log_prob(name, x, raw, o, discrete=not registry.info(name).continuous)


def log_pmf(name, x, raw, **opts):
    """The discretized PMF of x over the L levels, log in nats per image, (B,)."""
    o = _prepare(name, x, raw, opts)
    return _log_prob(name, x, raw, o, discrete=name != "bernoulli")


def gaussian_log_sigma(name, x, raw, **opts):
    """log sigma of a Gaussian-family decoder as used by log_prob (a scalar, or
    per image for sigma-image, per dimension for gaussian-pixel).  Not part of the
    backend interface: the trainer uses it to log sigma and the equivalent beta."""
    if not registry.info(name).gaussian_family:
        raise VaeError(f"{name} is not a Gaussian decoder; it has no sigma")
    o = _options(name, opts)
    if raw is not None:
        _check_raw(name, raw)
    if x is not None:
        _check_x(name, x, raw, o)
    elif raw is None:
        raw = torch.zeros(1, 2 if name == "gaussian-pixel" else 1, 1, 1)
    return _gaussian_params(name, x, raw, o)[1]


# ------------------------------------------------------------------- mean and sample


def mean(name, raw, **opts):
    """The decoder's mean as a picture in [0, 1], (B, C, H, W) (docs/likelihoods.md)."""
    registry.info(name)
    o = _options(name, opts)
    _check_raw(name, raw)
    _check_raw_shape(name, raw, o)
    levels = o.levels
    if name in ("gaussian", "gaussian-pixel", "sigma-learned", "sigma", "sigma-image", "student-t"):
        params = registry.params_per_channel(name, o.n_bits)
        return torch.sigmoid(_split(raw, params)[0])
    if name == "bernoulli":
        return torch.sigmoid(raw)
    if name == "categorical":
        b, _, h, w = raw.shape
        probs = torch.softmax(raw.view(b, levels, raw.shape[1] // levels, h, w), dim=1)
        level = torch.arange(levels, dtype=raw.dtype, device=raw.device).view(1, -1, 1, 1, 1)
        return (probs * level).sum(1) / (levels - 1)
    if name == "bitwise":
        b, _, h, w = raw.shape
        probs = torch.sigmoid(raw.view(b, o.n_bits, raw.shape[1] // o.n_bits, h, w))
        weight = 2.0 ** torch.arange(o.n_bits - 1, -1, -1, dtype=raw.dtype, device=raw.device)
        return (probs * weight.view(1, -1, 1, 1, 1)).sum(1) / (levels - 1)
    if name == "logistic":
        return _split(raw, 2)[0].clamp(0.0, 1.0)
    if name == "logistic-mixture":
        log_weights, mu, _, coeff = _mixture_params(raw, o)
        if coeff is not None:
            m_r = mu[:, :, 0]
            m_g = mu[:, :, 1] + coeff[:, :, 0] * m_r
            m_b = mu[:, :, 2] + coeff[:, :, 1] * m_r + coeff[:, :, 2] * m_g
            mu = torch.stack((m_r, m_g, m_b), dim=2)
        return (log_weights.exp().unsqueeze(2) * mu).sum(1).clamp(0.0, 1.0)
    raise AssertionError(name)


def _to_levels(y, levels):
    """Continuous draws on the [0, 1] scale -> integer levels (edge bins reach to ±inf)."""
    level = torch.round(y * (levels - 1)).clamp(0, levels - 1)
    return level.to(torch.uint8 if levels <= 256 else torch.int32)


def _uniform(shape, like, generator):
    # in (0, 1): the open interval keeps logit(u) finite
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return u.clamp(tiny, 1.0 - torch.finfo(like.dtype).eps)


def _logistic_noise(shape, like, generator):
    u = _uniform(shape, like, generator)
    return torch.log(u) - torch.log1p(-u)  # inverse logistic CDF


def _gumbel_argmax(logits, dim, generator):
    u = _uniform(logits.shape, logits, generator)
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=dim)


def _student_t_noise(df, generator):
    """Standard Student-t draws by Bailey's polar method (uniforms only, so the
    generator is honoured): U, V ~ U(-1, 1) with W = U^2 + V^2 < 1, then
    T = U sqrt(df (W^(-2/df) - 1) / W)."""
    out = torch.empty_like(df)
    todo = torch.ones_like(df, dtype=torch.bool)
    while bool(todo.any()):
        u = 2 * torch.rand(df.shape, dtype=df.dtype, device=df.device, generator=generator) - 1
        v = 2 * torch.rand(df.shape, dtype=df.dtype, device=df.device, generator=generator) - 1
        w = u * u + v * v
        ok = todo & (w < 1) & (w > 0)
        w_safe = torch.where(ok, w, torch.full_like(w, 0.5))
        t = u * torch.sqrt(df * (w_safe ** (-2.0 / df) - 1) / w_safe)
        out = torch.where(ok, t, out)
        todo = todo & ~ok
    return out


@torch.no_grad()
def sample(name, raw, *, generator=None, **opts):
    """Integer levels (B, C, H, W) drawn from the discretized decoder distribution."""
    registry.info(name)
    o = _options(name, opts)
    _check_raw(name, raw)
    _check_raw_shape(name, raw, o)
    levels = o.levels
    if name in ("gaussian", "gaussian-pixel", "sigma-learned", "sigma", "sigma-image"):
        mu, log_sigma = _gaussian_params(name, None, raw, o)
        noise = torch.randn(mu.shape, dtype=raw.dtype, device=raw.device, generator=generator)
        return _to_levels(mu + torch.exp(log_sigma) * noise, levels)
    if name == "student-t":
        mu, log_scale, df = _student_t_params(raw, o)
        return _to_levels(mu + torch.exp(log_scale) * _student_t_noise(df, generator), levels)
    if name == "bernoulli":
        bits = _uniform(raw.shape, raw, generator) < torch.sigmoid(raw)
        return bits.to(torch.uint8 if levels <= 256 else torch.int32) * (levels - 1)
    if name == "categorical":
        b, _, h, w = raw.shape
        level = _gumbel_argmax(raw.view(b, levels, raw.shape[1] // levels, h, w), 1, generator)
        return level.to(torch.uint8 if levels <= 256 else torch.int32)
    if name == "bitwise":
        b, _, h, w = raw.shape
        logits = raw.view(b, o.n_bits, raw.shape[1] // o.n_bits, h, w)
        bits = (_uniform(logits.shape, raw, generator) < torch.sigmoid(logits)).long()
        shifts = torch.arange(o.n_bits - 1, -1, -1, device=raw.device).view(1, -1, 1, 1, 1)
        level = (bits << shifts).sum(1)
        return level.to(torch.uint8 if levels <= 256 else torch.int32)
    if name == "logistic":
        mu, log_scale = _logistic_params(raw, o)
        return _to_levels(mu + torch.exp(log_scale) * _logistic_noise(mu.shape, raw, generator), levels)
    if name == "logistic-mixture":
        log_weights, mu, log_scale, coeff = _mixture_params(raw, o)
        comp = _gumbel_argmax(log_weights, 1, generator)  # (B, H, W)

        def pick(t):  # (B, K, C', H, W) -> (B, C', H, W) at the drawn component
            index = comp[:, None, None].expand(-1, 1, t.shape[2], -1, -1)
            return t.gather(1, index).squeeze(1)

        mu, scale = pick(mu), torch.exp(pick(log_scale))
        noise = _logistic_noise(mu.shape, raw, generator)
        if coeff is None:
            return _to_levels(mu + scale * noise, levels)
        a, b, c = pick(coeff).unbind(1)
        y_r = _to_levels(mu[:, 0] + scale[:, 0] * noise[:, 0], levels)
        y_r_unit = y_r.to(raw.dtype) / (levels - 1)
        y_g = _to_levels(mu[:, 1] + a * y_r_unit + scale[:, 1] * noise[:, 1], levels)
        y_g_unit = y_g.to(raw.dtype) / (levels - 1)
        y_b = _to_levels(mu[:, 2] + b * y_r_unit + c * y_g_unit + scale[:, 2] * noise[:, 2], levels)
        return torch.stack((y_r, y_g, y_b), dim=1)
    raise AssertionError(name)


# ------------------------------------------------------------- latent terms and IW


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over latent dims: (B,)."""
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).flatten(1).sum(1)


def log_mean_exp(a, axis=0):
    """log mean_k exp(a_k) along ``axis`` = logsumexp - log K."""
    return torch.logsumexp(a, dim=axis) - math.log(a.shape[axis])
