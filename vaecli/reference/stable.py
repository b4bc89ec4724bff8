"""Small numerically stable helpers of the float64 reference, each with its derivation.

All functions take and return float64 NumPy arrays (or scalars) elementwise unless
their docstring says otherwise.  Logs are natural logs (nats).
"""

from __future__ import annotations

import numpy as np
from scipy import integrate, special, stats

from ..constants import STUDENT_T_SERIES_MIN_HALF_DF
from ..units import LN2

# 0.5 * log(2 pi): the normalizer of the standard normal density.
HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)

# Below this, scipy's t.logcdf is log of a subnormal (or zero) cdf and loses digits,
# so the Student-t log-CDF switches to the exact incomplete-beta form (DLMF 8.17.8).
# exp(-700) ~ 1e-304 is just above the smallest normal double (2.2e-308).
STUDENT_T_LOGCDF_TAIL = -700.0

# Standardized bin widths below this have their mass integrated by Simpson's rule
# instead of subtracting two log-CDFs (log_interval_mass): the subtraction loses digits
# as the width shrinks (a wide sigma), while Simpson's relative error, ~width^4/2880,
# is below float64 resolution here.
NARROW_INTERVAL = 1e-3


def softplus(t):
    """log(1 + e^t) without overflow: logaddexp(0, t)."""
    return np.logaddexp(0.0, t)


def sigmoid(t):
    """1 / (1 + e^-t), exact to the last bit at +-100 (scipy's expit)."""
    return special.expit(t)


def log_sigmoid(t):
    """log sigma(t) = -log(1 + e^-t) = -softplus(-t); log(1 - sigma(t)) = log_sigmoid(-t)."""
    return -softplus(-np.asarray(t, dtype=np.float64))


def softclip(t, floor):
    """Smooth lower bound: floor + softplus(t - floor) > floor, ~ t when t >> floor.

    ``floor=None`` disables the bound and returns ``t`` unchanged.
    """
    t = np.asarray(t, dtype=np.float64)
    if floor is None:
        return t
    return floor + softplus(t - floor)


def log1mexp(a):
    """log(1 - e^a) for a <= 0 (Maechler 2012): log(-expm1(a)) for a > -ln 2, where
    e^a is close to 1, and log1p(-e^a) in the tail, where e^a is small.  -inf at a = 0."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore"):
        near_zero = np.log(-np.expm1(np.minimum(a, 0.0)))
        tail = np.log1p(-np.exp(np.minimum(a, -LN2)))
    return np.where(a > -LN2, near_zero, tail)


def log_softmax(t, axis):
    """log softmax along ``axis``: t - logsumexp(t)."""
    return t - special.logsumexp(t, axis=axis, keepdims=True)


def log_interval_mass(log_cdf, log_pdf, lo, hi, log_width):
    """log(F(hi) - F(lo)) for finite lo < hi, F the CDF of a distribution symmetric
    about 0 with density f; ``log_cdf`` must be accurate in the lower tail, and
    ``log_width`` is log(hi - lo), taken by the caller from the log-scale (hi - lo
    itself underflows at a huge scale, where the mass is still finite).

    By symmetry F(hi) - F(lo) = F(-lo) - F(-hi), so the interval is first moved to the
    side of 0 where F is the smaller tail; then
    log(F(hi) - F(lo)) = log F(hi) + log1mexp(d), d = log F(lo) - log F(hi) <= 0.
    For a narrow interval the difference of two logs would lose digits, so there the
    mass is the width times the mean density by Simpson's rule (error O(width^5)):
    log mass = log_width + log((f(lo) + 4 f(mid) + f(hi)) / 6).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    flip = lo + hi > 0.0
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    log_hi = log_cdf(hi)
    narrow = hi - lo < NARROW_INTERVAL
    log_f = np.stack([log_pdf(lo), np.log(4.0) + log_pdf(0.5 * (lo + hi)), log_pdf(hi)])
    by_simpson = log_width + special.logsumexp(log_f, axis=0) - np.log(6.0)
    d = np.where(narrow, -1.0, log_cdf(lo) - log_hi)
    return np.where(narrow, by_simpson, log_hi + log1mexp(np.minimum(d, 0.0)))


def log1mexp_from_log(log_d):
    """log(1 - e^-d) for d = e^log_d > 0, given log d: below ln 2 it is
    log d + log((1 - e^-d)/d), the ratio -expm1(-d)/d taken as 1 where d underflows
    (a bin narrow against a huge scale, whose mass is then d times the density), so
    no digit of log d is lost; above, log1mexp(-d)."""
    log_d = np.asarray(log_d, dtype=np.float64)
    d = np.exp(log_d)
    safe = np.where(d > 0.0, d, 1.0)
    ratio = np.where(d > 0.0, -np.expm1(-safe) / safe, 1.0)
    return np.where(d < LN2, log_d + np.log(ratio), log1mexp(-d))


def normal_log_cdf(z):
    """log Phi(z) of the standard normal, accurate in the lower tail (scipy log_ndtr)."""
    return special.log_ndtr(z)


def normal_log_pdf(z):
    """log phi(z) of the standard normal: -0.5 z^2 - 0.5 log(2 pi)."""
    return -0.5 * z * z - HALF_LOG_2PI


def normal_log_density(y, mu, log_sigma):
    """log N(y; mu, sigma^2) = -0.5 ((y - mu)/sigma)^2 - log sigma - 0.5 log(2 pi)."""
    z = (y - mu) * np.exp(-log_sigma)
    return -0.5 * z * z - log_sigma - HALF_LOG_2PI


def student_t_log_norm(df):
    """lgamma((df+1)/2) - lgamma(df/2) - 0.5 log(df pi), the log of the Student-t
    density's normalizer: with a = df/2 it is c(a) - 0.5 log(2 pi), c(a) = lgamma(a + 1/2)
    - lgamma(a) - 0.5 log a, by its asymptotic series for large a, where the two
    log-gammas would cancel (STUDENT_T_SERIES_MIN_HALF_DF)."""
    a = 0.5 * np.asarray(df, dtype=np.float64)
    big = a >= STUDENT_T_SERIES_MIN_HALF_DF["float64"]
    a_small = np.where(big, 1.0, a)
    inv = 1.0 / np.where(big, a, 1.0)
    series = -inv / 8.0 + inv**3 / 192.0 - inv**5 / 640.0 + 17.0 * inv**7 / 14336.0
    direct = special.gammaln(a_small + 0.5) - special.gammaln(a_small) - 0.5 * np.log(a_small)
    return np.where(big, series, direct) - HALF_LOG_2PI


def student_t_log_density(y, mu, log_scale, df):
    """log of the Student-t density with location mu, scale s = exp(log_scale), df:
    lgamma((df+1)/2) - lgamma(df/2) - 0.5 log(df pi) - log s - (df+1)/2 log1p(z^2/df)."""
    z = (y - mu) * np.exp(-log_scale)
    return student_t_log_norm(df) - log_scale - 0.5 * (df + 1.0) * np.log1p(z * z / df)


def student_t_log_cdf_tail(t, df):
    """log F(t) of the standard Student-t for t < 0, exactly, from
    F(t) = 0.5 I_u(df/2, 1/2) with u = df/(df + t^2) and (DLMF 8.17.8)
    I_u(a, b) = u^a (1-u)^b 2F1(a+b, 1; a+1; u) / (a B(a, b)).
    Meant for the far tail, where u is tiny and the series converges at once."""
    t = np.asarray(t, dtype=np.float64)
    df = np.asarray(df, dtype=np.float64)
    a, b = 0.5 * df, 0.5
    log_t2 = 2.0 * np.log(np.abs(t))
    # log u = log df - log(df + t^2);  log(1 - u) = log t^2 - log(df + t^2)
    log_df_plus_t2 = np.logaddexp(np.log(df), log_t2)
    log_u = np.log(df) - log_df_plus_t2
    log_1mu = log_t2 - log_df_plus_t2
    return (
        -LN2
        + a * log_u
        + b * log_1mu
        - np.log(a)
        - special.betaln(a, b)
        + np.log(special.hyp2f1(a + b, 1.0, a + 1.0, np.exp(log_u)))
    )


def student_t_log_cdf_by_quadrature(t, df):
    """log F(t) of the standard Student-t for t < 0, by quadrature of the density's
    decay from t: log F(t) = log f(t) + log integral_0^inf f(t - v)/f(t) dv, with
    f(t - v)/f(t) = (1 + (v^2 - 2 t v)/(df + t^2))^(-(df+1)/2), v measured in the
    decay length (df + t^2)/((df + 1)|t|) (scipy.integrate.quad, one value at a time).
    For the far tail at large df (u = df/(df + t^2) >= 1/2), where the hypergeometric
    series of student_t_log_cdf_tail converges too slowly (scipy's hyp2f1 gives NaN)."""
    t = np.asarray(t, dtype=np.float64)
    df = np.asarray(df, dtype=np.float64)
    out = np.empty(t.shape)
    for i, (ti, di) in enumerate(zip(t.ravel(), df.ravel())):
        length = (di + ti * ti) / ((di + 1.0) * abs(ti))

        def ratio(s, ti=ti, di=di, length=length):
            v = s * length
            return np.exp(-0.5 * (di + 1.0) * np.log1p((v * v - 2.0 * ti * v) / (di + ti * ti)))

        # the integral is about 1, so 1e-12 of it is 1e-12 nats of a log F below -700
        integral, _ = integrate.quad(ratio, 0.0, np.inf, epsabs=0.0, epsrel=1e-12, limit=200)
        out.flat[i] = student_t_log_density(ti, 0.0, 0.0, di) + np.log(integral * length)
    return out


def student_t_log_cdf(t, df):
    """log F(t) of the standard Student-t with ``df`` degrees of freedom, accurate in
    the lower tail: scipy's t.logcdf, and where that underflows the exact tail form
    (u = df/(df + t^2) < 1/2) or quadrature (u >= 1/2, which needs df > 1400 there)."""
    t, df = np.broadcast_arrays(np.asarray(t, np.float64), np.asarray(df, np.float64))
    with np.errstate(divide="ignore"):
        log_f = np.asarray(stats.t.logcdf(t, df), dtype=np.float64)
    far = (log_f < STUDENT_T_LOGCDF_TAIL) & np.isfinite(t) & (t < 0.0)
    if np.any(far):
        log_f = log_f.copy()
        series = far & (t * t > df)
        log_f[series] = student_t_log_cdf_tail(t[series], df[series])
        log_f[far & ~series] = student_t_log_cdf_by_quadrature(t[far & ~series], df[far & ~series])
    return log_f
