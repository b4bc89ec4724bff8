"""Every likelihood's value and its analytic gradient, in one pass, on an array namespace.

The functions here are written against ``xp`` (``numpy`` or ``cupy``) and a
special-function namespace ``sp`` (``scipy.special`` or ``cupyx.scipy.special``), so
the same code runs on the CPU (where the tests check it against the float64
reference and finite differences) and on the GPU (where it serves the likelihoods
that have no fused kernel in :mod:`.kernels`).  The fused kernels mirror these
formulas line by line; a change here must be made there too.

Conventions (SPEC.md, docs/likelihoods.md): ``x`` is an integer array ``(B, C, H, W)``
of levels ``0 .. L-1``; ``raw`` the decoder output laid out as :mod:`vaecli.registry`
says; values are nats summed over the ``D = C*H*W`` dimensions, shape ``(B,)``.

Gradients
---------
:func:`evaluate` returns ``grad_raw = d(sum_b u_b value_b)/d raw`` for an upstream
weight vector ``u`` of shape ``(B,)`` (all ones by default), so a caller that gets
an upstream gradient from autograd passes it in.  Every likelihood except ``sigma``
with a batch sigma is separable by image (``raw[b]`` only enters ``value[b]``), so
its unweighted gradient times ``u_b`` is the weighted one; the batch sigma of
``sigma`` couples the images, so there the weights enter the computation.  The
gradient with respect to the scalar ``log_sigma`` of ``sigma-learned`` is returned
per image, ``u_b * d value_b / d log_sigma``, so a caller can weight it later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ... import registry
from ...constants import (
    DEFAULT_FIXED_SIGMA,
    SIMPSON_MAX_WIDTH,
    STUDENT_T_MIN_DF,
    STUDENT_T_BGRAT_D,
    STUDENT_T_BGRAT_MIN_HALF_DF,
    STUDENT_T_SERIES_MIN_HALF_DF,
    TINY_BIN_WIDTH,
)
from ...errors import VaeError

LN2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT_HALF = math.sqrt(0.5)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # 2 phi(0) = 2/sqrt(2 pi)

# log_ndtr switches from the log1p(-erfc/2) form to the scaled erfcx form below this:
# for t >= -1, Phi(t) >= 0.16 so log1p(-erfc(t/sqrt2)/2) loses nothing, and below it
# erfcx(-t/sqrt2) = e^(t^2/2) erfc(-t/sqrt2) stays in range where erfc underflows.
LOG_NDTR_SWITCH = -1.0

# normal_bin's gradient: a bin whose log-CDF step d = log Phi(q) - log Phi(p) is below
# this is "narrow" (phi(p)/M and phi(q)/M nearly cancel, so their difference is taken
# in closed form); at or above it the two terms differ by a factor e or more.
NORMAL_BIN_NARROW = 1.0

# Below log F = -700 (exp(-700) ~ 1e-304, just above the smallest normal double)
# the incomplete beta underflows; there the tail series of DLMF 8.17.8 takes over.
STUDENT_T_LOGCDF_TAIL = -700.0
# Terms of the hypergeometric series 2F1(a+1/2, 1; a+1; u) in the far tail; the
# ratio of successive terms is below u, so with u < 1/2 the rest is below 2^-60 ~ 1e-18.
# (u >= 1/2 with log F < -700 needs df > 2000, where the large-df expansion serves.)
STUDENT_T_TAIL_TERMS = 60
STUDENT_T_SERIES_MAX_U = 0.5

# softclip_inv_scale takes 1/s above the floor as e^-floor e^-(t - floor) (one
# exponential) for floors at or above this: e^-(t - floor) then underflows in float32
# only where 1/s < e^-57 (a scale above 1e24).  Below it, as e^-t (two exponentials):
# a low floor would make e^-(t - floor) underflow, or e^-floor overflow, at ordinary t.
SOFTCLIP_PRODUCT_FLOOR = -30.0

KINDS = ("log_prob", "log_pmf")
GAUSSIAN_FAMILY = ("gaussian", "gaussian-pixel", "sigma-learned", "sigma", "sigma-image")


# ------------------------------------------------------------------ namespaces


@dataclass(frozen=True)
class Namespace:
    """An array namespace and its special functions (log_ndtr is ours, see below)."""

    xp: object  # numpy or cupy
    sp: object  # scipy.special or cupyx.scipy.special
    name: str


def numpy_namespace() -> Namespace:
    import numpy
    import scipy.special

    return Namespace(numpy, scipy.special, "numpy")


def cupy_namespace() -> Namespace:
    import cupy
    import cupyx.scipy.special

    return Namespace(cupy, cupyx.scipy.special, "cupy")


def namespace_of(array) -> Namespace:
    """numpy for NumPy arrays, cupy for CuPy arrays (cupy is imported only then)."""
    module = type(array).__module__.split(".")[0]
    if module == "cupy":
        return cupy_namespace()
    if module == "numpy":
        return numpy_namespace()
    raise VaeError(f"expected a NumPy or CuPy array, got {type(array).__name__}")


# --------------------------------------------------------------------- options

Options = registry.Options  # the validated options of one call


def parse_options(name: str, opts: dict) -> Options:
    """The option keywords of the backend interface, validated by the parser every
    backend shares (:func:`vaecli.registry.parse_options`).  A 0-d NumPy log_sigma is
    checked there; a CuPy one is left unread (reading it would stall the stream)."""
    return registry.parse_options(name, opts)


def is_discrete(name: str, kind: str) -> bool:
    """Whether ``kind`` of ``name`` is computed as the PMF over the L levels (bin
    masses); bernoulli is ``y*l - softplus(l)`` for both kinds."""
    if kind not in KINDS:
        raise VaeError(f"{name}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if name == "bernoulli":
        return False
    return kind == "log_pmf" or not registry.info(name).continuous


# ----------------------------------------------------------- stable small helpers
# Elementwise; each returns arrays of its input's dtype.


def softplus(xp, t):
    """log(1 + e^t) = max(t, 0) + log1p(e^-|t|), no overflow."""
    return xp.maximum(t, 0) + xp.log1p(xp.exp(-xp.abs(t)))


def sigmoid(xp, t):
    """1/(1 + e^-t), from e^-|t| so neither branch overflows."""
    e = xp.exp(-xp.abs(t))
    return xp.where(t >= 0, 1 / (1 + e), e / (1 + e))


def softclip(xp, t, floor):
    """(floor + softplus(t - floor), its derivative sigma(t - floor)); identity if no floor."""
    if floor is None:
        return t, xp.ones_like(t)
    return floor + softplus(xp, t - floor), sigmoid(xp, t - floor)


def softclip_exp_neg_floor(floor) -> float:
    """e^-floor for :func:`softclip_inv_scale`'s one-exponential form, or 0.0 where the
    floor is below SOFTCLIP_PRODUCT_FLOOR (or absent) and that form is not used."""
    return 0.0 if floor is None or floor < SOFTCLIP_PRODUCT_FLOOR else math.exp(-floor)


def softclip_inv_scale(xp, t, floor):
    """(e^-softclip(t), the derivative of softclip): 1/s for log s = softclip(t) without
    computing log s.  With u = t - floor, e^-softplus(u) = sigma(-u), so 1/s =
    e^-floor sigma(-u), and both sigmoids come from one e^-|u|; e^-t, 1 if no floor.
    For a floor below SOFTCLIP_PRODUCT_FLOOR, 1/s = e^-t sigma(u) above the floor."""
    if floor is None:
        return xp.exp(-t), xp.ones_like(t)
    u = t - floor
    e = xp.exp(-xp.abs(u))
    big = 1 / (1 + e)  # the larger of sigma(u), sigma(-u)
    small = e * big
    nonneg = u >= 0
    deriv = xp.where(nonneg, big, small)
    exp_neg_floor = softclip_exp_neg_floor(floor)
    if exp_neg_floor > 0:
        return exp_neg_floor * xp.where(nonneg, small, big), deriv
    below = xp.exp(xp.asarray(-floor, dtype=t.dtype)) * big  # overflows only where 1/s does
    return xp.where(nonneg, xp.exp(-t) * big, below), deriv


def log1mexp(xp, d):
    """log(1 - e^-d) for d >= 0 (Maechler 2012): log(-expm1(-d)) below ln 2, where
    e^-d is close to 1, else log1p(-e^-d).  -inf at d = 0, 0 at d = inf."""
    return xp.where(d < LN2, xp.log(-xp.expm1(-d)), xp.log1p(-xp.exp(-d)))


def exprel(xp, v):
    """expm1(v)/v, 1 at v = 0 (and, in effect, where v is subnormal)."""
    nonzero = v != 0
    return xp.where(nonzero, xp.expm1(v) / xp.where(nonzero, v, 1.0), 1.0)


def log_ndtr(ns: Namespace, t):
    """log Phi(t): log(erfcx(-t/sqrt2)/2) - t^2/2 in the lower tail, where
    Phi(t) = erfc(-t/sqrt2)/2 = erfcx(-t/sqrt2) e^(-t^2/2)/2; log1p(-erfc(t/sqrt2)/2) above."""
    xp, sp = ns.xp, ns.sp
    lower = t < LOG_NDTR_SWITCH
    t_lo = xp.minimum(t, LOG_NDTR_SWITCH)  # keep each branch in its own range
    t_hi = xp.maximum(t, LOG_NDTR_SWITCH)
    tail = xp.log(0.5 * sp.erfcx(-t_lo * SQRT_HALF)) - 0.5 * t_lo * t_lo
    body = xp.log1p(-0.5 * sp.erfc(t_hi * SQRT_HALF))
    return xp.where(lower, tail, body)


def normal_hazard(ns: Namespace, t):
    """d/dt log Phi(t) = phi(t)/Phi(t) = sqrt(2/pi)/erfcx(-t/sqrt2) (0 where erfcx
    overflows, t >~ 13 in float32 and 38 in float64, which is the limit)."""
    return SQRT_2_OVER_PI / ns.sp.erfcx(-t * SQRT_HALF)


def bin_log_mass(ns: Namespace, x, lower, upper, log_width, levels, log_cdf, log_pdf):
    """log(F(upper) - F(lower)) of a CDF F symmetric about 0, with density f, over x's
    bin (value only; the Student-t log_pmf); ``log_width`` is log(upper - lower), taken
    from the log-scale (the width itself underflows at a huge scale).

    The first bin (x == 0) is F(upper) and the last (x == L-1) is 1 - F(lower) =
    F(-lower), found by integer equality.  Inside, the bin is moved to the smaller
    tail: (p, q) = (lower, upper), or (-upper, -lower) when its centre is above 0, since
    F(upper) - F(lower) = F(-lower) - F(-upper); then with d = log F(q) - log F(p) >= 0,
    log mass = log F(q) + log1mexp(d), and no difference of CDFs is ever formed.  A bin
    narrow against the scale (width (1 + |centre|) below SIMPSON_MAX_WIDTH) would lose
    digits in d: there the mass is Simpson's rule, (width/6)(f(p) + 4 f(centre) + f(q)),
    in logs: log_width - log 6 + log sum of the three densities."""
    xp = ns.xp
    first = x == 0
    last = x == levels - 1
    edge = first | last
    flip = xp.where(first, False, xp.where(last, True, lower + upper > 0))
    p = xp.where(flip, -upper, lower)
    q = xp.where(flip, -lower, upper)
    width = upper - lower
    mid = 0.5 * (p + q)
    narrow = ~edge & (width * (1.0 + xp.abs(mid)) < SIMPSON_MAX_WIDTH[width.dtype.name])
    log_q = log_cdf(q)
    d = xp.where(edge | narrow, xp.inf, log_q - log_cdf(p))
    log_f = xp.stack((log_pdf(p), log_pdf(mid) + math.log(4.0), log_pdf(q)))
    top = xp.max(log_f, axis=0)
    by_simpson = (log_width - math.log(6.0)) + top + xp.log(xp.sum(xp.exp(log_f - top), axis=0))
    return xp.where(narrow, by_simpson, log_q + log1mexp(xp, d))


def normal_bin(ns: Namespace, x, y, mu, log_sigma, levels, need_grad):
    """log N(mu, sigma^2) mass of x's bin, and its derivatives with respect to mu and
    log sigma (None, None if not need_grad).

    Standardized centre c = (y - mu)/sigma and half-width w = h/sigma, h = 1/(2(L-1)).
    The bin is moved to the lower side (centre cc = -|c|, flipped where c > 0; the
    first bin unflipped, the last flipped, by integer equality), p = cc - w, q = cc + w:
        log mass = log Phi(q) + log1mexp(d),  d = log Phi(q) - log Phi(p)   (edge: log Phi(q)).
    A bin narrow against sigma (inside, 2w (1 + |cc|) below SIMPSON_MAX_WIDTH) would
    lose digits in d, so its mass is Simpson's rule on the density instead:
        M = (2w/6)(phi(p) + 4 phi(cc) + phi(q)) = (w/3) phi(cc) S,  S = 4 + e^(w cc - w^2/2) + e^(-w cc - w^2/2),
    with log(w/3 S) = log(h/3 S) - log sigma: w = h/sigma is subnormal or zero at a huge
    sigma (float32 from log sigma ~ 81), where the mass is still finite.
    Derivatives, with the hazard hz = phi/Phi, A = phi(p)/M = hz(p)/expm1(d) and
    B = phi(q)/M = hz(q)/(1 - e^-d):
        G := (phi(p) - phi(q))/M = A - B where the bin is wide (d >= NORMAL_BIN_NARROW:
        A < B/e, no cancellation), and for a narrow bin, where A and B are large and
        nearly equal, G = -hz(p) R with R = expm1(-k)/expm1(d) = e^(-k-d) expm1(k)/expm1(-d),
        k = (q^2 - p^2)/2 = 2 w cc <= 0 (phi(q)/phi(p) = e^-k; -k-d is small there);
        by Simpson's rule, w A = 3 e^(w cc - w^2/2)/S (A itself, about 1/(2w), would
        overflow at a huge sigma) and G = -A expm1(-k) = 2 cc (w A) exprel(-k),
        exprel(v) = expm1(v)/v;
        (p phi(p) - q phi(q))/M = p A - q B = -2 w A + q G;
        edge bins: G = -hz(q), and -q hz(q).
    d/dmu = +-G/sigma (- where flipped), d/dlog sigma = (p phi(p) - q phi(q))/M."""
    xp = ns.xp
    half_bin = 0.5 / (levels - 1)
    inv_sigma = xp.exp(-log_sigma)
    c = (y - mu) * inv_sigma
    w = half_bin * inv_sigma
    first = x == 0
    last = x == levels - 1
    edge = first | last
    flip = xp.where(first, False, xp.where(last, True, c > 0))
    cc = xp.where(flip, -c, c)
    p = cc - w
    q = cc + w
    simpson = ~edge & (2.0 * w * (1.0 + xp.abs(cc)) < SIMPSON_MAX_WIDTH[y.dtype.name])
    w_s = xp.where(simpson, w, 0.0)  # Simpson's terms where they apply, harmless elsewhere
    wc_s = w_s * xp.where(simpson, cc, 0.0)
    w2_s = 0.5 * w_s * w_s
    e_p = xp.exp(wc_s - w2_s)  # phi(p)/phi(cc)
    s_sum = 4.0 + e_p + xp.exp(-wc_s - w2_s)  # S
    log_simpson = xp.log(half_bin / 3.0 * s_sum) - log_sigma - 0.5 * cc * cc - HALF_LOG_2PI
    log_q = log_ndtr(ns, q)
    d = xp.where(edge | simpson, xp.inf, log_q - log_ndtr(ns, p))
    log_mass = xp.where(simpson, log_simpson, log_q + log1mexp(xp, d))
    if not need_grad:
        return log_mass, None, None
    hz_p = normal_hazard(ns, p)
    hz_q = normal_hazard(ns, q)
    a_term = hz_p / xp.expm1(d)  # phi(p)/M, where the bin is not Simpson's
    w_a = xp.where(simpson, 3.0 * e_p / s_sum, w * a_term)  # w phi(p)/M
    b_term = hz_q / -xp.expm1(-d)  # phi(q)/M
    k = 2.0 * w * cc
    narrow = d < NORMAL_BIN_NARROW
    ratio = xp.exp(-k - d) * xp.expm1(k) / xp.expm1(-xp.where(narrow, d, 1.0))
    g_simpson = 2.0 * cc * w_a * exprel(xp, -2.0 * wc_s)
    g_inside = xp.where(simpson, g_simpson, xp.where(narrow, -hz_p * ratio, a_term - b_term))
    g_centre = xp.where(edge, -hz_q, g_inside)
    g_log_sigma = xp.where(edge, -q * hz_q, -2.0 * w_a + q * g_centre)
    g_mu = xp.where(flip, -g_centre, g_centre) * inv_sigma
    return log_mass, g_mu, g_log_sigma


def logistic_bin(ns: Namespace, x, y, mu, inv_scale, log_scale, levels, need_grad):
    """log mass of x's bin under the logistic (mu, s), given 1/s (and log s, used only
    where the bin is tiny against s), and its derivatives with respect to mu and log s
    (None, None if not need_grad).

    With a, b = (y -+ h - mu)/s = c -+ w: sigma(b) - sigma(a) = sigma(b) sigma(-a) (1 - e^(a-b)),
    no cancellation anywhere.  With e_a = e^-|a|, e_b = e^-|b|, sigma(b) sigma(-a) =
    e^-(max(a, 0) + max(-b, 0)) / P, P = (1 + e_a)(1 + e_b), so with d = 2w
        log mass = log((1 - e^-d)/P) - max(a, 0) - max(-b, 0):
    one log per bin, taken as log(m/P) with m = -expm1(-d) below d = ln 2 (m < 1/2) and
    as log1p(-(e^-d + P - 1)/P) above (the argument is at least -7/8: no cancellation);
    1/P gives both sigmoids, 1/(1 + e_a) = (1 + e_b)/P and 1/(1 + e_b) = (1 + e_a)/P.
    Below d = TINY_BIN_WIDTH, m = d to within d/2 and d = 2h/s may be subnormal or zero
    (a huge s): there log m = log(2h) - log s, taken from the log-scale.
    First bin (x == 0): -max(-b, 0) - log1p(e_b); last (x == L-1): the same in a.
    Derivatives:
        d/dmu = (sigma(a) - sigma(-b))/s,
        d/dlog s = a sigma(a) - b sigma(-b) - d/expm1(d),  d/expm1(d) = d (1 - m)/m = d e^-d/(1 - e^-d)
        (1 below TINY_BIN_WIDTH),
    dropping the a-terms in the first bin, the b-terms in the last, the width term in both."""
    xp = ns.xp
    half_bin = 0.5 / (levels - 1)
    c = (y - mu) * inv_scale
    w = half_bin * inv_scale
    a = c - w
    b = c + w
    first = x == 0
    last = x == levels - 1
    edge = first | last
    e_a = xp.where(first, 0.0, xp.exp(-xp.abs(a)))
    e_b = xp.where(last, 0.0, xp.exp(-xp.abs(b)))
    linear = xp.where(first, 0.0, xp.maximum(a, 0)) - xp.where(last, 0.0, xp.minimum(b, 0))
    inv_p = 1 / ((1 + e_a) * (1 + e_b))
    total = e_a + e_b + e_a * e_b  # P - 1
    d = 2.0 * w
    small = d < LN2
    tiny = d < TINY_BIN_WIDTH
    m = -xp.expm1(-d)  # the small-d branch's
    e = xp.exp(-d)  # the large-d branch's
    by_m = xp.where(tiny, xp.log(2.0 * half_bin * inv_p) - log_scale, xp.log(m * inv_p))
    interior = xp.where(small, by_m, xp.log1p(-(e + total) * inv_p)) - linear
    log_mass = xp.where(edge, -(linear + xp.log1p(total)), interior)
    if not need_grad:
        return log_mass, None, None
    big_a, big_b = (1 + e_b) * inv_p, (1 + e_a) * inv_p
    s_a = xp.where(first, 0.0, xp.where(a >= 0, big_a, e_a * big_a))
    s_nb = xp.where(last, 0.0, xp.where(b <= 0, big_b, e_b * big_b))
    m_safe = xp.where(tiny, 1.0, m)
    width = xp.where(edge, 0.0, xp.where(small, xp.where(tiny, 1.0, d * (1 - m_safe) / m_safe), d * e / (1 - e)))
    g_mu = (s_a - s_nb) * inv_scale
    g_log_scale = a * s_a - b * s_nb - width
    return log_mass, g_mu, g_log_scale


def logsumexp(xp, t, axis):
    """log sum exp along ``axis`` (kept as a size-1 axis), shifted by the maximum."""
    m = xp.max(t, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    return m + xp.log(xp.sum(xp.exp(t - m), axis=axis, keepdims=True))


# ---------------------------------------------------------------- Student-t CDF


def _student_t_log_tail_series(ns, log_u, log_1mu, a, log_beta):
    """log I_u(a, 1/2) by DLMF 8.17.8 for small u, given log B(a, 1/2):
    I_u(a, b) = u^a (1-u)^b / (a B(a, b)) * 2F1(a+b, 1; a+1; u), the series summed
    term by term (term_{n+1}/term_n = (a+b+n) u / (a+1+n))."""
    xp = ns.xp
    u = xp.exp(log_u)
    term = xp.ones_like(u)
    total = xp.ones_like(u)
    for n in range(STUDENT_T_TAIL_TERMS):
        term = term * (a + 0.5 + n) * u / (a + 1.0 + n)
        total = total + term
    return a * log_u + 0.5 * log_1mu - xp.log(a) - log_beta + xp.log(total)


def student_t_log_norm(ns: Namespace, df):
    """(lgamma((df+1)/2) - lgamma(df/2) - 0.5 log(df pi), its derivative in df).  With
    a = df/2 it is c(a) - 0.5 log(2 pi), c(a) = lgamma(a + 1/2) - lgamma(a) - 0.5 log a, and
    d/ddf = c'(a)/2, c'(a) = digamma(a + 1/2) - digamma(a) - 1/(2a); for large a by their
    asymptotic series (STUDENT_T_SERIES_MIN_HALF_DF), where the terms would cancel:
        c(a) = -1/(8a) + 1/(192a^3) - 1/(640a^5) + 17/(14336a^7),
        c'(a) = 1/(8a^2) - 1/(64a^4) + 1/(128a^6) - 119/(14336a^8)."""
    xp, sp = ns.xp, ns.sp
    a = 0.5 * df
    big = a >= STUDENT_T_SERIES_MIN_HALF_DF[df.dtype.name]
    a_small = xp.where(big, 1.0, a)  # each branch on inputs of its own range
    inv = 1.0 / xp.where(big, a, 1.0)
    inv2 = inv * inv
    series = inv * (-1.0 / 8.0 + inv2 * (1.0 / 192.0 + inv2 * (-1.0 / 640.0 + inv2 * (17.0 / 14336.0))))
    d_series = inv2 * (1.0 / 8.0 + inv2 * (-1.0 / 64.0 + inv2 * (1.0 / 128.0 + inv2 * (-119.0 / 14336.0))))
    direct = sp.gammaln(a_small + 0.5) - sp.gammaln(a_small) - 0.5 * xp.log(a_small)
    d_direct = sp.digamma(a_small + 0.5) - sp.digamma(a_small) - 0.5 / a_small
    return xp.where(big, series, direct) - HALF_LOG_2PI, 0.5 * xp.where(big, d_series, d_direct)


def student_t_log_cdf(ns: Namespace, t, df):
    """log F(t) of the standard Student-t (float64 in, float64 out).

    F(-|t|) (the smaller tail) is I_u(df/2, 1/2)/2 with u = df/(df + t^2): by betainc
    for df/2 below STUDENT_T_BGRAT_MIN_HALF_DF (:func:`_student_t_log_tail_betainc`), by
    an asymptotic expansion above (:func:`_student_t_log_tail_large_df`).  Then
    log F(t) = log F(-|t|) for t <= 0 and log1p(-F(-|t|)) for t > 0."""
    xp = ns.xp
    large = 0.5 * df >= STUDENT_T_BGRAT_MIN_HALF_DF
    with _quiet(xp):
        by_betainc = _student_t_log_tail_betainc(ns, xp.where(large, 0.0, t), xp.where(large, 3.0, df))
        by_expansion = _student_t_log_tail_large_df(ns, xp.where(large, t, 0.0), xp.where(large, df, 1e3))
        log_tail = xp.where(large, by_expansion, by_betainc)
        return xp.where(t > 0, xp.log1p(-xp.exp(log_tail)), log_tail)


def _student_t_log_tail_betainc(ns: Namespace, t, df):
    """log F(-|t|) = log I_u(df/2, 1/2) - log 2, u = df/(df + t^2).  Where that
    incomplete beta is above 1/2 it is 1 - I_{1-u}(1/2, df/2), taken in that form so
    that u close to 1 loses no digits; in the far tail, where I_u underflows, the
    series of DLMF 8.17.8."""
    xp, sp = ns.xp, ns.sp
    a = 0.5 * df
    t2 = t * t
    u = df / (df + t2)
    one_minus_u = t2 / (df + t2)
    i_u = sp.betainc(a, 0.5, u)
    complement = sp.betainc(0.5, a, one_minus_u)  # = 1 - i_u
    log_tail = xp.where(
        i_u > 0.5, xp.log1p(-complement), xp.log(xp.where(i_u > 0, i_u, 1.0))
    ) - LN2
    log_tail = xp.where(i_u > 0, log_tail, -xp.inf)
    far = (log_tail < STUDENT_T_LOGCDF_TAIL) & (u < STUDENT_T_SERIES_MAX_U)
    if bool(xp.any(far)):
        log_u = xp.log(df) - xp.log(df + t2)
        log_1mu = xp.log(xp.where(t2 > 0, t2, 1.0)) - xp.log(df + t2)
        series = _student_t_log_tail_series(ns, log_u, log_1mu, a, sp.betaln(a, 0.5)) - LN2
        log_tail = xp.where(far, series, log_tail)
    return log_tail


def _student_t_log_tail_large_df(ns: Namespace, t, df):
    """log F(-|t|) = log I_u(a, 1/2) - log 2 for a = df/2 >= STUDENT_T_BGRAT_MIN_HALF_DF,
    u = df/(df + t^2), with q = t^2/df kept apart from u (u = 1/(1 + q) rounds q away):

    * q <= 1 (u >= 1/2): TOMS 708's BGRAT (constants.STUDENT_T_BGRAT_D), with
      z = (a - 1/4) log1p(q) and sqrt z = |t| sqrt((a - 1/4) log1p(q)/q / df):
      log I = c(a) - log1p(-1/(4a))/2 - z + log(erfcx(sqrt z) + sum_n d_n K_n),
      c(a) = lgamma(a + 1/2) - lgamma(a) - log(a)/2 (student_t_log_norm);
    * q > 1 (u < 1/2): the series of DLMF 8.17.8, with
      log B(a, 1/2) = log(pi)/2 - c(a) - log(a)/2 (the log-gammas cancel at large a)."""
    xp, sp = ns.xp, ns.sp
    a = 0.5 * df
    c_a = student_t_log_norm(ns, df)[0] + HALF_LOG_2PI
    q = t * t / df
    near = q <= 1.0
    q_n = xp.where(near, q, 0.5)  # BGRAT, on inputs of its own range
    log1p_q = xp.log1p(q_n)
    ratio = xp.where(q_n > 0, log1p_q / xp.where(q_n > 0, q_n, 1.0), 1.0)  # log1p(q)/q -> 1
    nu = a - 0.25
    root_z = xp.abs(xp.where(near, t, 0.0)) * xp.sqrt(nu * ratio / df)
    z = nu * log1p_q
    t_sq, v = 0.25 * log1p_q * log1p_q, 0.25 / (nu * nu)
    k = sp.erfcx(root_z)
    total, power, root_z_pi = k, xp.ones_like(z), root_z / math.sqrt(math.pi)
    for n, d_n in enumerate(STUDENT_T_BGRAT_D, start=1):
        b_n = 0.5 + 2.0 * (n - 1)
        k = (b_n * (b_n + 1.0) * k + (z + b_n + 1.0) * power * root_z_pi) * v
        power = power * t_sq
        total = total + d_n * k
    by_bgrat = c_a - 0.5 * xp.log1p(-0.25 / a) - z + xp.log(total) - LN2
    q_f = xp.where(near, 2.0, q)  # the series, on inputs of its own range
    log_beta = 0.5 * math.log(math.pi) - c_a - 0.5 * xp.log(a)
    by_series = _student_t_log_tail_series(ns, -xp.log1p(q_f), -xp.log1p(1.0 / q_f), a, log_beta) - LN2
    return xp.where(near, by_bgrat, by_series)


class _quiet:
    """numpy.errstate(all='ignore') for numpy; nothing for cupy (which never warns)."""

    def __init__(self, xp):
        self._ctx = xp.errstate(all="ignore") if hasattr(xp, "errstate") else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False


# ------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """value (B,); grad_raw like raw (d sum_b u_b value_b / d raw) or None;
    grad_log_sigma (B,) = u_b d value_b / d log_sigma for sigma-learned, else None;
    state: what a fused kernel keeps for a later gradient call (kernels.evaluate)."""

    value: object
    grad_raw: object
    grad_log_sigma: object
    state: object = None


def check_inputs(ns: Namespace, name, x, raw, o: Options, check_range=None):
    """Shapes, dtypes and (on numpy, or when asked) the range of x, as VaeErrors."""
    registry.info(name)
    if str(raw.dtype) not in ("float32", "float64"):
        raise VaeError(
            f"{name}: likelihoods compute in float32 or float64, got raw of dtype "
            f"{raw.dtype} (cast it with raw.astype('float32'))"
        )
    if x is None:
        return
    if getattr(getattr(x, "dtype", None), "kind", "") not in ("i", "u"):
        raise VaeError(f"{name}: x must be an integer array of levels, got dtype {x.dtype}")
    registry.check_shapes(name, x.shape, raw.shape, o.n_bits, o.mixtures)
    if check_range is None:
        check_range = ns.name == "numpy"
    if check_range and x.size:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= o.levels:
            raise VaeError(
                f"{name}: x must hold levels 0..{o.levels - 1} (n_bits={o.n_bits}), "
                f"got values from {lo} to {hi}"
            )


def _split(raw, params):  # (B, P*C, H, W) -> (B, P, C, H, W)
    b, pc, h, w = raw.shape
    return raw.reshape(b, params, pc // params, h, w)


def _per_image(xp, t):  # (B, ...) -> (B,)
    return t.reshape(t.shape[0], -1).sum(axis=1)


def _weights(xp, upstream, batch, dtype):
    if upstream is None:
        return xp.ones(batch, dtype=dtype)
    u = xp.asarray(upstream, dtype=dtype).reshape(-1)
    if u.shape[0] != batch:
        raise VaeError(f"upstream must have shape ({batch},), got {tuple(upstream.shape)}")
    return u


def _bcast(u, ndim):  # (B,) -> (B, 1, ..., 1)
    return u.reshape((-1,) + (1,) * (ndim - 1))


def evaluate(
    name,
    x,
    raw,
    kind="log_prob",
    *,
    ns: Namespace | None = None,
    upstream=None,
    need_grad=True,
    check_range=None,
    state=None,
    keep_gradient=False,
    **opts,
) -> Evaluation:
    """Value (B,) of ``kind`` of likelihood ``name`` and, if need_grad, its gradient
    (see the module docstring).  Computes in raw's dtype, except the Student-t CDF,
    which is float64 throughout (its incomplete beta underflows in float32).
    ``state`` and ``keep_gradient`` are the fused kernels' (kernels.evaluate): here
    every call computes from x and raw, and the result keeps no state."""
    del state, keep_gradient
    ns = ns or namespace_of(raw)
    xp = ns.xp
    o = parse_options(name, opts)
    check_inputs(ns, name, x, raw, o, check_range)
    discrete = is_discrete(name, kind)
    u = _weights(xp, upstream, raw.shape[0], raw.dtype) if need_grad else None
    with _quiet(xp):
        if name in GAUSSIAN_FAMILY:
            ev = _gaussian_family(ns, name, x, raw, o, discrete, u, need_grad)
        elif name == "student-t":
            ev = _student_t(ns, x, raw, o, discrete, u, need_grad)
        elif name == "bernoulli":
            ev = _bernoulli(ns, x, raw, o, u, need_grad)
        elif name == "categorical":
            ev = _categorical(ns, x, raw, o, u, need_grad)
        elif name == "bitwise":
            ev = _bitwise(ns, x, raw, o, u, need_grad)
        elif name == "logistic":
            ev = _logistic(ns, x, raw, o, u, need_grad)
        elif name == "logistic-mixture":
            ev = _mixture(ns, x, raw, o, u, need_grad)
        else:  # pragma: no cover - registry.info has rejected unknown names
            raise AssertionError(name)
    dtype = raw.dtype
    ev.value = ev.value.astype(dtype, copy=False)
    if ev.grad_raw is not None:
        ev.grad_raw = ev.grad_raw.astype(dtype, copy=False)
    if ev.grad_log_sigma is not None:
        ev.grad_log_sigma = ev.grad_log_sigma.astype(dtype, copy=False)
    return ev


def value_and_grad(name, x, raw, kind="log_prob", *, ns=None, upstream=None, **opts):
    """(value (B,), d(sum_b u_b value_b)/d raw, d(sum_b u_b value_b)/d log_sigma as a
    0-d array for sigma-learned, else None); ``u = upstream`` or ones."""
    ev = evaluate(name, x, raw, kind, ns=ns, upstream=upstream, need_grad=True, **opts)
    g_ls = None if ev.grad_log_sigma is None else ev.grad_log_sigma.sum()
    return ev.value, ev.grad_raw, g_ls


def value(name, x, raw, kind="log_prob", *, ns=None, **opts):
    """The value (B,) alone."""
    return evaluate(name, x, raw, kind, ns=ns, need_grad=False, **opts).value


# --------------------------------------------------------------- the likelihoods


def _levels_to_unit(x, levels, dtype):
    """y = x/(L-1) on the [0, 1] scale."""
    return x.astype(dtype) / (levels - 1)


def fixed_log_sigma(name, o: Options):
    """log of the fixed sigma of gaussian (default 1) or of sigma/sigma-image given the
    sigma option; None where sigma comes from the batch."""
    if name == "gaussian":
        return math.log(DEFAULT_FIXED_SIGMA if o.sigma is None else o.sigma)
    if name in ("sigma", "sigma-image") and o.sigma is not None:
        return math.log(o.sigma)
    return None


def learned_log_sigma(xp, name, o: Options, dtype):
    """(softclip(log_sigma), its derivative) for sigma-learned, as 0-d arrays."""
    t = xp.asarray(registry.need_log_sigma(name, o), dtype=dtype).reshape(())
    return softclip(xp, t, o.log_sigma_min)


def _gaussian_family(ns, name, x, raw, o, discrete, u, need_grad):
    xp = ns.xp
    levels, dtype = o.levels, raw.dtype
    if name == "gaussian-pixel":
        parts = _split(raw, 2)
        r_mu, r_ls = parts[:, 0], parts[:, 1]
    else:
        r_mu, r_ls = raw, None
    y = _levels_to_unit(x, levels, dtype)  # (B, C, H, W)
    mu = sigmoid(xp, r_mu)
    dmu = mu * sigmoid(xp, -r_mu)  # sigma'(r) = sigma(r) sigma(-r)
    diff = y - mu
    analytic = False
    if name == "gaussian-pixel":
        log_sigma, d_ls = softclip(xp, r_ls, o.log_sigma_min)
    elif name == "sigma-learned":
        log_sigma, d_ls = learned_log_sigma(xp, name, o, dtype)
    elif fixed_log_sigma(name, o) is not None:
        log_sigma, d_ls = xp.asarray(fixed_log_sigma(name, o), dtype=dtype), None
    else:
        # sigma* = sqrt(MSE): log sigma = softclip(0.5 log MSE), MSE over the batch
        # (sigma) or per image (sigma-image), gradients flowing through it.
        analytic = True
        sse = _per_image(xp, diff * diff)  # (B,)
        count = diff[0].size
        if name == "sigma":
            count = count * diff.shape[0]
            mse = xp.broadcast_to(xp.sum(sse) / count, sse.shape)
        else:
            mse = sse / count
        log_sigma_b, d_ls_b = softclip(xp, 0.5 * xp.log(mse), o.log_sigma_min)
        log_sigma = _bcast(log_sigma_b, 4)
    if discrete:
        elem, g_mu, g_ls = normal_bin(ns, x, y, mu, log_sigma, levels, need_grad)
    else:
        inv_sigma = xp.exp(-log_sigma)
        z = diff * inv_sigma
        elem = -0.5 * z * z - log_sigma - HALF_LOG_2PI
        if need_grad:
            g_mu = z * inv_sigma  # d/dmu
            g_ls = z * z - 1.0  # d/dlog sigma
    value = _per_image(xp, elem + xp.zeros_like(y))
    if not need_grad:
        return Evaluation(value, None, None)
    ub = _bcast(u, 4)
    grad_mu = ub * g_mu * dmu
    grad_ls_img = None
    if name == "gaussian-pixel":
        grad = xp.stack([grad_mu, ub * g_ls * d_ls], axis=1).reshape(raw.shape)
        return Evaluation(value, grad, None)
    if name == "sigma-learned":
        grad_ls_img = u * _per_image(xp, g_ls + xp.zeros_like(y)) * d_ls
    elif analytic:
        # d log sigma / d mu_i = d_ls * (0.5/MSE) * (-2 diff_i / count)
        g_img = u * _per_image(xp, g_ls + xp.zeros_like(y))  # (B,) d/dlog sigma_b
        if name == "sigma":
            g_img = xp.broadcast_to(xp.sum(g_img), g_img.shape)
        safe = xp.where(mse > 0, mse, 1.0)
        coef = xp.where(mse > 0, -g_img * d_ls_b / (safe * count), 0.0)  # (B,)
        grad_mu = grad_mu + _bcast(coef, 4) * diff * dmu
    return Evaluation(value, grad_mu.reshape(raw.shape), grad_ls_img)


def _student_t(ns, x, raw, o, discrete, u, need_grad):
    xp = ns.xp
    levels, dtype = o.levels, raw.dtype
    parts = _split(raw, 3)
    r_mu, r_ls, r_df = parts[:, 0], parts[:, 1], parts[:, 2]
    mu = sigmoid(xp, r_mu)
    log_scale, d_ls = softclip(xp, r_ls, o.log_sigma_min)
    df = STUDENT_T_MIN_DF + softplus(xp, r_df)
    if discrete:
        if need_grad:
            raise VaeError(
                "student-t: the gradient of log_pmf is not available on the cupy backend "
                "(its log_pmf is an evaluation metric only on cupy); use the torch backend"
            )
        f64 = xp.float64
        y = _levels_to_unit(x, levels, f64)
        half_bin = 0.5 / (levels - 1)
        inv_scale = xp.exp(-log_scale.astype(f64))
        mu64, df64 = mu.astype(f64), df.astype(f64)
        lower = (y - half_bin - mu64) * inv_scale
        upper = (y + half_bin - mu64) * inv_scale

        def log_cdf(t):
            return student_t_log_cdf(ns, t, df64)

        log_norm64 = student_t_log_norm(ns, df64)[0]

        def log_pdf(t):  # the standard Student-t density
            return log_norm64 - 0.5 * (df64 + 1.0) * xp.log1p(t * t / df64)

        log_width = math.log(2.0 * half_bin) - log_scale.astype(f64)
        elem = bin_log_mass(ns, x, lower, upper, log_width, levels, log_cdf, log_pdf)
        return Evaluation(_per_image(xp, elem), None, None)
    y = _levels_to_unit(x, levels, dtype)
    inv_scale = xp.exp(-log_scale)
    z = (y - mu) * inv_scale
    z2 = z * z
    log_norm, d_log_norm = student_t_log_norm(ns, df)
    elem = log_norm - log_scale - 0.5 * (df + 1.0) * xp.log1p(z2 / df)
    value = _per_image(xp, elem)
    if not need_grad:
        return Evaluation(value, None, None)
    ub = _bcast(u, 4)
    denom = df + z2
    g_mu = (df + 1.0) * z / denom * inv_scale  # d/dmu of -(df+1)/2 log1p(z^2/df)
    g_ls = -1.0 + (df + 1.0) * z2 / denom  # d/dlog s
    g_df = d_log_norm + 0.5 * (-xp.log1p(z2 / df) + (df + 1.0) * z2 / (df * denom))
    grad = xp.stack(
        [
            ub * g_mu * mu * sigmoid(xp, -r_mu),
            ub * g_ls * d_ls,
            ub * g_df * sigmoid(xp, r_df),  # d softplus / dr = sigma(r)
        ],
        axis=1,
    )
    return Evaluation(value, grad.reshape(raw.shape).astype(dtype, copy=False), None)


def _bernoulli(ns, x, raw, o, u, need_grad):
    xp = ns.xp
    y = _levels_to_unit(x, o.levels, raw.dtype)
    value = _per_image(xp, y * raw - softplus(xp, raw))  # log sigma(l)^y (1-sigma(l))^(1-y)
    if not need_grad:
        return Evaluation(value, None, None)
    return Evaluation(value, _bcast(u, 4) * (y - sigmoid(xp, raw)), None)


def _categorical(ns, x, raw, o, u, need_grad):
    xp = ns.xp
    levels = o.levels
    logits = _split(raw, levels)  # (B, L, C, H, W)
    lse = logsumexp(xp, logits, axis=1)  # (B, 1, C, H, W)
    index = x.astype(xp.int64)[:, None]
    picked = xp.take_along_axis(logits, index, axis=1)
    value = _per_image(xp, picked - lse)  # logits[x] - logsumexp(logits)
    if not need_grad:
        return Evaluation(value, None, None)
    onehot = xp.arange(levels).reshape(1, levels, 1, 1, 1) == index
    grad = _bcast(u, 5) * (onehot.astype(raw.dtype) - xp.exp(logits - lse))
    return Evaluation(value, grad.reshape(raw.shape), None)


def _bits(xp, x, n_bits, dtype):  # (B, C, H, W) -> (B, n_bits, C, H, W), MSB first
    shifts = xp.arange(n_bits - 1, -1, -1).reshape(1, -1, 1, 1, 1)
    return ((x.astype(xp.int64)[:, None] >> shifts) & 1).astype(dtype)


def _bitwise(ns, x, raw, o, u, need_grad):
    xp = ns.xp
    logits = _split(raw, o.n_bits)
    bits = _bits(xp, x, o.n_bits, raw.dtype)
    value = _per_image(xp, bits * logits - softplus(xp, logits))
    if not need_grad:
        return Evaluation(value, None, None)
    grad = _bcast(u, 5) * (bits - sigmoid(xp, logits))
    return Evaluation(value, grad.reshape(raw.shape), None)


def _logistic(ns, x, raw, o, u, need_grad):
    xp = ns.xp
    parts = _split(raw, 2)
    mu, r_ls = parts[:, 0], parts[:, 1]
    inv_scale, d_ls = softclip_inv_scale(xp, r_ls, o.log_sigma_min)
    log_scale, _ = softclip(xp, r_ls, o.log_sigma_min)
    y = _levels_to_unit(x, o.levels, raw.dtype)
    elem, g_mu, g_ls = logistic_bin(ns, x, y, mu, inv_scale, log_scale, o.levels, need_grad)
    value = _per_image(xp, elem)
    if not need_grad:
        return Evaluation(value, None, None)
    ub = _bcast(u, 4)
    grad = xp.stack([ub * g_mu, ub * g_ls * d_ls], axis=1)
    return Evaluation(value, grad.reshape(raw.shape), None)


def mixture_parts(raw, o: Options):
    """Views of the mixture's raw output: logits (B, K, H, W), means and raw
    log-scales (B, K, C, H, W), raw coupling coefficients (B, K, 3, H, W) or None."""
    k = o.mixtures
    b, _, h, w = raw.shape
    c = registry.image_channels_of("logistic-mixture", raw.shape[1], o.n_bits, k)
    logits = raw[:, :k]
    means = raw[:, k : k + k * c].reshape(b, k, c, h, w)
    r_ls = raw[:, k + k * c : k + 2 * k * c].reshape(b, k, c, h, w)
    coef = None
    if c == 3:
        coef = raw[:, k + 2 * k * c : k + 2 * k * c + 3 * k].reshape(b, k, 3, h, w)
    return logits, means, r_ls, coef


def _mixture(ns, x, raw, o, u, need_grad):
    """logsumexp_k (log softmax(pi)_k + M_k), M_k = sum_c log mass_kc, and its gradient:
    with responsibilities r_k = softmax_k(component log-probs) and weights w_k,
    d/dpi_k = r_k - w_k and d/dtheta_kc = r_k d log mass_kc / dtheta_kc."""
    xp = ns.xp
    levels, dtype = o.levels, raw.dtype
    logits, means, r_ls, coef = mixture_parts(raw, o)
    log_w = logits - logsumexp(xp, logits, axis=1)  # (B, K, H, W)
    inv_scale, d_ls = softclip_inv_scale(xp, r_ls, o.log_sigma_min)
    log_scale, _ = softclip(xp, r_ls, o.log_sigma_min)
    y = _levels_to_unit(x, levels, dtype)[:, None]  # (B, 1, C, H, W)
    xk = x[:, None]
    if coef is not None:
        t = xp.tanh(coef)  # (B, K, 3, H, W): a, b, c
        y_r, y_g = y[:, :, 0], y[:, :, 1]
        loc = xp.stack(
            [
                means[:, :, 0],
                means[:, :, 1] + t[:, :, 0] * y_r,
                means[:, :, 2] + t[:, :, 1] * y_r + t[:, :, 2] * y_g,
            ],
            axis=2,
        )
    else:
        loc = means
    log_mass, g_loc, g_ls = logistic_bin(ns, xk, y, loc, inv_scale, log_scale, levels, need_grad)
    # the component log masses M_k stay apart from the log-weights: shifted by their
    # maximum m first, a large common part of them cancels exactly instead of rounding
    # the log-weights away in float32 (as in the kernels)
    mass = log_mass.sum(axis=2)  # (B, K, H, W)
    m = xp.max(mass, axis=1, keepdims=True)
    m = xp.where(m == -xp.inf, 0.0, m)  # no component can give x: the value is -inf
    shifted = log_w + (mass - m)
    lse_shifted = logsumexp(xp, shifted, axis=1)  # (B, 1, H, W)
    value = _per_image(xp, m + lse_shifted)
    if not need_grad:
        return Evaluation(value, None, None)
    ub = _bcast(u, 4)
    resp = xp.exp(shifted - lse_shifted)  # (B, K, H, W)
    rk = (ub * resp)[:, :, None]  # (B, K, 1, H, W)
    grad_logits = ub * (resp - xp.exp(log_w))
    grad_means = rk * g_loc
    grad_ls = rk * g_ls * d_ls
    b, _, h, w = raw.shape
    pieces = [grad_logits, grad_means.reshape(b, -1, h, w), grad_ls.reshape(b, -1, h, w)]
    if coef is not None:
        dt = 1.0 - t * t  # tanh' = 1 - tanh^2
        grad_coef = xp.stack(
            [
                grad_means[:, :, 1] * y_r * dt[:, :, 0],
                grad_means[:, :, 2] * y_r * dt[:, :, 1],
                grad_means[:, :, 2] * y_g * dt[:, :, 2],
            ],
            axis=2,
        )
        pieces.append(grad_coef.reshape(b, -1, h, w))
    return Evaluation(value, xp.concatenate(pieces, axis=1), None)


# ------------------------------------------------------------- mean and sample


def mean(name, raw, *, ns=None, **opts):
    """The decoder's mean picture in [0, 1], (B, C, H, W) (docs/likelihoods.md)."""
    ns = ns or namespace_of(raw)
    xp = ns.xp
    o = parse_options(name, opts)
    check_inputs(ns, name, None, raw, o)
    levels = o.levels
    if name in GAUSSIAN_FAMILY or name == "student-t":
        params = registry.params_per_channel(name, o.n_bits)
        return sigmoid(xp, _split(raw, params)[:, 0])
    if name == "bernoulli":
        return sigmoid(xp, raw)
    if name == "categorical":
        logits = _split(raw, levels)
        probs = xp.exp(logits - logsumexp(xp, logits, axis=1))
        level = xp.arange(levels, dtype=raw.dtype).reshape(1, -1, 1, 1, 1)
        return (probs * level).sum(axis=1) / (levels - 1)
    if name == "bitwise":
        probs = sigmoid(xp, _split(raw, o.n_bits))
        weight = (2.0 ** xp.arange(o.n_bits - 1, -1, -1)).astype(raw.dtype)
        return (probs * weight.reshape(1, -1, 1, 1, 1)).sum(axis=1) / (levels - 1)
    if name == "logistic":
        return xp.clip(_split(raw, 2)[:, 0], 0.0, 1.0)
    if name == "logistic-mixture":
        logits, means, _, coef = mixture_parts(raw, o)
        w = xp.exp(logits - logsumexp(xp, logits, axis=1))[:, :, None]
        if coef is not None:
            t = xp.tanh(coef)
            m_r = means[:, :, 0]
            m_g = means[:, :, 1] + t[:, :, 0] * m_r
            m_b = means[:, :, 2] + t[:, :, 1] * m_r + t[:, :, 2] * m_g
            means = xp.stack([m_r, m_g, m_b], axis=2)
        return xp.clip((w * means).sum(axis=1), 0.0, 1.0).astype(raw.dtype, copy=False)
    raise AssertionError(name)  # pragma: no cover


def _level_dtype(xp, levels):
    return xp.uint8 if levels <= 256 else xp.uint16


def _to_levels(xp, y, levels):
    """Continuous draws on the [0, 1] scale -> levels clip(round(y (L-1)), 0, L-1)."""
    return xp.clip(xp.rint(y * (levels - 1)), 0, levels - 1).astype(_level_dtype(xp, levels))


def _uniform(xp, gen, shape, dtype):
    """Uniforms in (0, 1), clamped away from both ends so logit(u) stays finite."""
    finfo = xp.finfo(dtype)
    v = gen.random(shape).astype(dtype)
    return xp.clip(v, finfo.tiny, 1.0 - finfo.eps)


def _logistic_noise(xp, gen, shape, dtype):
    v = _uniform(xp, gen, shape, dtype)
    return xp.log(v) - xp.log1p(-v)  # inverse logistic CDF


def _gumbel_argmax(xp, gen, logits, axis):
    v = _uniform(xp, gen, logits.shape, logits.dtype)
    return xp.argmax(logits - xp.log(-xp.log(v)), axis=axis)


def _student_t_noise(xp, gen, df):
    """Standard Student-t draws by Bailey's polar method (uniforms only):
    U, V ~ U(-1, 1) with 0 < W = U^2 + V^2 < 1, then T = U sqrt(df (W^(-2/df) - 1)/W)."""
    out = xp.zeros_like(df)
    todo = xp.ones(df.shape, dtype=bool)
    while bool(todo.any()):
        a = 2 * gen.random(df.shape).astype(df.dtype) - 1
        b = 2 * gen.random(df.shape).astype(df.dtype) - 1
        w = a * a + b * b
        ok = todo & (w < 1) & (w > 0)
        w_safe = xp.where(ok, w, 0.5)
        t = a * xp.sqrt(df * (w_safe ** (-2.0 / df) - 1) / w_safe)
        out = xp.where(ok, t, out)
        todo = todo & ~ok
    return out


def make_generator(ns: Namespace, generator):
    """A numpy/cupy Generator: the one given, one seeded from an int, or a fresh one."""
    if generator is None or isinstance(generator, int):
        return ns.xp.random.default_rng(generator)
    return generator


def sample(name, raw, *, generator=None, ns=None, **opts):
    """Integer levels (B, C, H, W) drawn from the discretized decoder distribution
    (uint8 for n_bits <= 8, else uint16)."""
    ns = ns or namespace_of(raw)
    xp = ns.xp
    o = parse_options(name, opts)
    check_inputs(ns, name, None, raw, o)
    gen = make_generator(ns, generator)
    levels, dtype = o.levels, raw.dtype
    if name in GAUSSIAN_FAMILY:
        mu_raw = _split(raw, 2)[:, 0] if name == "gaussian-pixel" else raw
        mu = sigmoid(xp, mu_raw)
        if name == "gaussian-pixel":
            log_sigma, _ = softclip(xp, _split(raw, 2)[:, 1], o.log_sigma_min)
        elif name == "sigma-learned":
            log_sigma, _ = learned_log_sigma(xp, name, o, dtype)
        else:
            fixed = fixed_log_sigma(name, o)
            if fixed is None:
                raise VaeError(
                    f"{name}: sigma comes from the data; pass the evaluation sigma "
                    "(option sigma) to draw samples"
                )
            log_sigma = fixed
        noise = gen.standard_normal(mu.shape).astype(dtype)
        return _to_levels(xp, mu + xp.exp(log_sigma) * noise, levels)
    if name == "student-t":
        parts = _split(raw, 3)
        mu = sigmoid(xp, parts[:, 0])
        log_scale, _ = softclip(xp, parts[:, 1], o.log_sigma_min)
        df = STUDENT_T_MIN_DF + softplus(xp, parts[:, 2])
        return _to_levels(xp, mu + xp.exp(log_scale) * _student_t_noise(xp, gen, df), levels)
    if name == "bernoulli":
        bits = _uniform(xp, gen, raw.shape, dtype) < sigmoid(xp, raw)
        return bits.astype(_level_dtype(xp, levels)) * (levels - 1)
    if name == "categorical":
        return _gumbel_argmax(xp, gen, _split(raw, levels), 1).astype(_level_dtype(xp, levels))
    if name == "bitwise":
        logits = _split(raw, o.n_bits)
        bits = (_uniform(xp, gen, logits.shape, dtype) < sigmoid(xp, logits)).astype(xp.int64)
        shifts = xp.arange(o.n_bits - 1, -1, -1).reshape(1, -1, 1, 1, 1)
        return (bits << shifts).sum(axis=1).astype(_level_dtype(xp, levels))
    if name == "logistic":
        parts = _split(raw, 2)
        log_scale, _ = softclip(xp, parts[:, 1], o.log_sigma_min)
        noise = _logistic_noise(xp, gen, parts[:, 0].shape, dtype)
        return _to_levels(xp, parts[:, 0] + xp.exp(log_scale) * noise, levels)
    if name == "logistic-mixture":
        logits, means, r_ls, coef = mixture_parts(raw, o)
        comp = _gumbel_argmax(xp, gen, logits, 1)[:, None, None]  # (B, 1, 1, H, W)

        def pick(t):  # (B, K, C', H, W) -> (B, C', H, W) at the drawn component
            index = xp.broadcast_to(comp, (t.shape[0], 1) + t.shape[2:])
            return xp.take_along_axis(t, index, axis=1)[:, 0]

        mu = pick(means)
        log_scale, _ = softclip(xp, pick(r_ls), o.log_sigma_min)
        scale = xp.exp(log_scale)
        noise = _logistic_noise(xp, gen, mu.shape, dtype)
        if coef is None:
            return _to_levels(xp, mu + scale * noise, levels)
        t = xp.tanh(pick(coef))
        lv_r = _to_levels(xp, mu[:, 0] + scale[:, 0] * noise[:, 0], levels)
        y_r = lv_r.astype(dtype) / (levels - 1)
        lv_g = _to_levels(xp, mu[:, 1] + t[:, 0] * y_r + scale[:, 1] * noise[:, 1], levels)
        y_g = lv_g.astype(dtype) / (levels - 1)
        mu_b = mu[:, 2] + t[:, 1] * y_r + t[:, 2] * y_g
        lv_b = _to_levels(xp, mu_b + scale[:, 2] * noise[:, 2], levels)
        return xp.stack([lv_r, lv_g, lv_b], axis=1)
    raise AssertionError(name)  # pragma: no cover


# -------------------------------------------------------- latent terms and IW


def gaussian_kl(mu, logvar, *, ns=None):
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over latent dims: (B,).
    Per dimension 0.5 (mu^2 + expm1(logvar) - logvar): e^v - 1 as expm1 keeps the
    digits of a posterior close to the prior."""
    ns = ns or namespace_of(mu)
    terms = 0.5 * (mu * mu + ns.xp.expm1(logvar) - logvar)
    return terms.reshape(terms.shape[0], -1).sum(axis=1)


def log_mean_exp(a, axis=0, *, ns=None):
    """log mean_k exp(a_k) along ``axis`` = logsumexp - log K."""
    ns = ns or namespace_of(a)
    xp = ns.xp
    return xp.squeeze(logsumexp(xp, a, axis=axis), axis=axis) - math.log(a.shape[axis])
