"""Fused CUDA kernels for the heavy likelihoods: value and gradient in one pass.

Each kernel takes one thread per element (per pixel and component for the mixture),
reads that element's raw decoder outputs (the categorical logits a second time, from
cache) and writes the log-likelihood term and the gradient of the upstream-weighted sum
with respect to every raw channel of the element in the same pass; a per-image sum
follows.  The maths mirrors :mod:`.formulas` branch for branch (same helpers, same
branch points, same order of operations where it matters); the mixture's passes
arrange its sums differently (see the source) and are checked against it all the same.

Tests: tests/test_cupy_formulas_cpu.py compiles this very source for the host (a
short prelude maps the CUDA built-ins) and runs :func:`evaluate` on NumPy arrays
through it, against formulas.py, checking every launch argument's type against the
kernel's C signature; it also compiles the source with nvcc for sm_90 when nvcc is
there.  tests/test_cupy_gpu.py runs it on a GPU.

Kernels (``real`` is float or double; the source is compiled lazily, once per dtype,
by NVRTC through :class:`cupy.RawModule`):

* ``gaussian_family``: gaussian, gaussian-pixel, sigma-learned, sigma, sigma-image,
  density or bin mass, one thread per element.  A per-image log sigma comes in as
  an array (fixed, learned, or the analytic sqrt(MSE) of the batch/image), and the
  kernel also writes d value / d log sigma per element, which the host sums.
* ``squared_error`` and ``add_sigma_coupling``: the first and last pass of the
  analytic sigma (the batch/image MSE must be known before the values; the gradient
  through sigma(MSE) is added once d/dlog sigma has been summed).
* ``categorical``: one thread per element, online logsumexp over the L logits,
  then the softmax gradient.
* ``logistic``: discretized logistic, one thread per element.
* ``logistic_mixture_components``, ``logistic_mixture_lse``, ``logistic_mixture_scale``,
  ``logistic_mixture_grad``: the mixture in passes with one thread per pixel and
  component (RGB coupling for C == 3): each component's log mass (and, to keep the
  gradient, its unscaled parameter gradients), then per pixel the logsumexp over
  components with the logits' softmax (the value), then the gradient: the kept one
  scaled by responsibility and upstream weight, or each component recomputed with its
  derivatives and scaled.  What the value passes leave is the result's ``state``
  (:class:`MixtureState`), which the torch bridge hands from forward to backward.

The discretized logistic bin (``logistic_bin``, shared by ``logistic`` and the mixture)
takes 1/s straight from the soft-clipped raw log-scale and needs one log, three
exponentials (one an expm1) and two divisions, besides the softclip's exponential and
division: the arithmetic, not memory, is what the mixture's time follows on a GPU.

Indexing: ``x`` is int32 ``(B, C, H*W)``; ``raw`` and ``grad`` are C-contiguous
``(B, out_channels, H*W)``; parameter ``p`` of image channel ``c`` is channel
``p*C + c`` (registry layout).  Offsets are 64-bit.  Out-of-range levels give NaN
values in the categorical kernel instead of reading out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import formulas

FUSED = (
    "gaussian",
    "gaussian-pixel",
    "sigma-learned",
    "sigma",
    "sigma-image",
    "categorical",
    "logistic",
    "logistic-mixture",
)

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 1 << 16  # grid-stride loops cover the rest

SOURCE = r"""
// ``real`` is defined by a one-line preamble: typedef float real; / typedef double real;
#define K_INLINE __device__ __forceinline__

#define K_LN2 0.69314718055994530942
#define K_HALF_LOG_2PI 0.91893853320467274178
#define K_SQRT_HALF 0.70710678118654752440
#define K_SQRT_2_OVER_PI 0.79788456080286535588
#define K_LOG_NDTR_SWITCH (-1.0)
#define K_NORMAL_BIN_NARROW 1.0
#define K_SIMPSON_MAX_WIDTH_FLOAT32 0.2
#define K_SIMPSON_MAX_WIDTH_FLOAT64 0.003
#define K_TINY_BIN_WIDTH 8.673617379884035472e-19

// ---------------------------------------------------- float/double overloads
K_INLINE float  k_exp(float v)    { return expf(v); }
K_INLINE double k_exp(double v)   { return exp(v); }
K_INLINE float  k_log(float v)    { return logf(v); }
K_INLINE double k_log(double v)   { return log(v); }
K_INLINE float  k_log1p(float v)  { return log1pf(v); }
K_INLINE double k_log1p(double v) { return log1p(v); }
K_INLINE float  k_expm1(float v)  { return expm1f(v); }
K_INLINE double k_expm1(double v) { return expm1(v); }
K_INLINE float  k_erfc(float v)   { return erfcf(v); }
K_INLINE double k_erfc(double v)  { return erfc(v); }
K_INLINE float  k_erfcx(float v)  { return erfcxf(v); }
K_INLINE double k_erfcx(double v) { return erfcx(v); }
K_INLINE float  k_tanh(float v)   { return tanhf(v); }
K_INLINE double k_tanh(double v)  { return tanh(v); }
K_INLINE float  k_abs(float v)    { return fabsf(v); }
K_INLINE double k_abs(double v)   { return fabs(v); }
K_INLINE float  k_nan(float)      { return __int_as_float(0x7fffffff); }
K_INLINE double k_nan(double)     { return __longlong_as_double(0x7fffffffffffffffLL); }
K_INLINE float  k_neg_inf(float)  { return __int_as_float((int)0xff800000u); }
K_INLINE double k_neg_inf(double) { return __longlong_as_double((long long)0xfff0000000000000ULL); }

// ------------------------------------------------- stable helpers (formulas.py)
// log(1 + e^t) = max(t, 0) + log1p(e^-|t|)
K_INLINE real softplus(real t) {
    return (t > (real)0 ? t : (real)0) + k_log1p(k_exp(-k_abs(t)));
}

// 1/(1 + e^-t) from e^-|t|
K_INLINE real sigmoid(real t) {
    const real e = k_exp(-k_abs(t));
    return t >= (real)0 ? (real)1 / ((real)1 + e) : e / ((real)1 + e);
}

// floor + softplus(t - floor) and its derivative sigmoid(t - floor); identity without floor
K_INLINE real softclip(real t, real floor, int use_floor, real* deriv) {
    if (!use_floor) { *deriv = (real)1; return t; }
    *deriv = sigmoid(t - floor);
    return floor + softplus(t - floor);
}

// 1/s for log s = softclip(t) and d log s / dt = sigmoid(t - floor), from one e^-|u|,
// u = t - floor: e^-softplus(u) = sigmoid(-u), so 1/s = e^-floor sigmoid(-u); e^-t and 1
// without a floor.  exp_neg_floor is e^-floor, or 0 for a floor so low that e^-floor
// e^-u would underflow in e^-u where e^-t does not: then 1/s = e^-t sigmoid(u) above the
// floor, one more exponential.  formulas.softclip_inv_scale.
K_INLINE real softclip_inv_scale(real t, real floor, real exp_neg_floor, int use_floor, real* deriv) {
    if (!use_floor) { *deriv = (real)1; return k_exp(-t); }
    const real u = t - floor;
    const real e = k_exp(-k_abs(u));
    const real big = (real)1 / ((real)1 + e);  // the larger of sigmoid(u), sigmoid(-u)
    const real small = e * big;
    *deriv = u >= (real)0 ? big : small;
    if (exp_neg_floor > (real)0) return exp_neg_floor * (u >= (real)0 ? small : big);
    return u >= (real)0 ? k_exp(-t) * big : k_exp(-floor) * big;
}

// expm1(v)/v, 1 at v = 0 (and where -ftz flushes a subnormal v to 0)
K_INLINE real exprel(real v) {
    return v != (real)0 ? k_expm1(v) / v : (real)1;
}

// log(1 - e^-d), d >= 0: log(-expm1(-d)) below ln 2, log1p(-e^-d) above
K_INLINE real log1mexp(real d) {
    return d < (real)K_LN2 ? k_log(-k_expm1(-d)) : k_log1p(-k_exp(-d));
}

// log Phi(t): log(erfcx(-t/sqrt2)/2) - t^2/2 below the switch, log1p(-erfc(t/sqrt2)/2) above
K_INLINE real log_ndtr(real t) {
    if (t < (real)K_LOG_NDTR_SWITCH) {
        return k_log((real)0.5 * k_erfcx(-t * (real)K_SQRT_HALF)) - (real)0.5 * t * t;
    }
    return k_log1p((real)-0.5 * k_erfc(t * (real)K_SQRT_HALF));
}

// d/dt log Phi(t) = phi(t)/Phi(t) = sqrt(2/pi)/erfcx(-t/sqrt2)
K_INLINE real normal_hazard(real t) {
    return (real)K_SQRT_2_OVER_PI / k_erfcx(-t * (real)K_SQRT_HALF);
}

// log N(mu, sigma^2) mass of the bin of level xv (y = xv/(L-1)) and its derivatives
// with respect to mu and log sigma: formulas.normal_bin, branch for branch.
K_INLINE real normal_bin(int xv, int last, real y, real mu, real log_sigma, real half_bin,
                         real* g_mu, real* g_log_sigma) {
    const real inv_sigma = k_exp(-log_sigma);
    const real c = (y - mu) * inv_sigma;   // standardized centre
    const real w = half_bin * inv_sigma;   // standardized half-width
    const bool first = xv == 0;
    const bool final_bin = xv == last;
    const bool flip = first ? false : (final_bin ? true : c > (real)0);
    const real cc = flip ? -c : c;         // the bin moved to the lower side
    const real p = cc - w;
    const real q = cc + w;
    const real simpson_max = sizeof(real) == sizeof(float) ? (real)K_SIMPSON_MAX_WIDTH_FLOAT32
                                                           : (real)K_SIMPSON_MAX_WIDTH_FLOAT64;
    real log_mass, g_centre;
    if (!first && !final_bin && (real)2 * w * ((real)1 + k_abs(cc)) < simpson_max) {
        // narrow against sigma: Simpson's rule on the density, M = (w/3) phi(cc) S, its log
        // as log(h/3 S) - log sigma (w is subnormal or 0 at a huge sigma), and w phi(p)/M
        // = 3 e^(wc - w^2/2)/S in closed form (phi(p)/M ~ 1/(2w) would overflow there)
        const real wc = w * cc;
        const real w2 = (real)0.5 * w * w;
        const real e_p = k_exp(wc - w2);
        const real s_sum = (real)4 + e_p + k_exp(-wc - w2);
        log_mass = k_log(half_bin / (real)3 * s_sum) - log_sigma - (real)0.5 * cc * cc - (real)K_HALF_LOG_2PI;
        const real w_a = (real)3 * e_p / s_sum;  // w phi(p)/M
        g_centre = (real)2 * cc * w_a * exprel((real)-2 * wc);
        *g_log_sigma = (real)-2 * w_a + q * g_centre;
    } else {
        const real log_q = log_ndtr(q);
        const real hz_q = normal_hazard(q);
        if (first || final_bin) {
            log_mass = log_q;
            g_centre = -hz_q;
            *g_log_sigma = -q * hz_q;
        } else {
            const real d = log_q - log_ndtr(p);
            log_mass = log_q + log1mexp(d);
            const real hz_p = normal_hazard(p);
            const real a_term = hz_p / k_expm1(d);   // phi(p)/M
            if (d < (real)K_NORMAL_BIN_NARROW) {
                const real k = (real)2 * w * cc;    // (q^2 - p^2)/2 <= 0
                g_centre = -hz_p * (k_exp(-k - d) * k_expm1(k) / k_expm1(-d));
            } else {
                g_centre = a_term - hz_q / (-k_expm1(-d));
            }
            *g_log_sigma = (real)-2 * w * a_term + q * g_centre;
        }
    }
    *g_mu = (flip ? -g_centre : g_centre) * inv_sigma;
    return log_mass;
}

// log mass of the bin of level xv under the logistic (mu, s), given 1/s, and its
// derivatives with respect to mu and log s: formulas.logistic_bin, which derives it.
// With a, b = c -+ w, e_a = e^-|a|, e_b = e^-|b|, P = (1 + e_a)(1 + e_b) and d = 2w:
// mass = e^-(max(a, 0) + max(-b, 0)) (1 - e^-d)/P; the first bin drops the a-terms, the
// last the b-terms and the width term.  One log per bin, one reciprocal for both sigmoids.
// Below d = TINY_BIN_WIDTH (a huge s: d may be subnormal or 0), 1 - e^-d = d = 2h/s is
// taken as log(2h) - log s, log s = softclip(raw_log_scale) recomputed there only.
// With g_mu null (the value alone) neither derivative is formed.
K_INLINE real logistic_bin(int xv, int last, real y, real mu, real inv_scale, real raw_log_scale,
                           real floor, int use_floor, real half_bin, real* g_mu, real* g_log_scale) {
    const real c = (y - mu) * inv_scale;
    const real w = half_bin * inv_scale;
    const real a = c - w;
    const real b = c + w;
    const bool first = xv == 0;
    const bool final_bin = xv == last;
    real e_a = (real)0, e_b = (real)0, linear = (real)0;
    if (!first) {
        e_a = k_exp(-k_abs(a));
        linear += a > (real)0 ? a : (real)0;
    }
    if (!final_bin) {
        e_b = k_exp(-k_abs(b));
        linear -= b < (real)0 ? b : (real)0;
    }
    const real inv_p = (real)1 / (((real)1 + e_a) * ((real)1 + e_b));
    const real sum = e_a + e_b + e_a * e_b;  // P - 1
    const real d = (real)2 * w;
    const bool small = d < (real)K_LN2;
    const bool tiny = d < (real)K_TINY_BIN_WIDTH;
    real log_mass, m = (real)0, e = (real)0;
    if (first || final_bin) {
        log_mass = -(linear + k_log1p(sum));
    } else if (tiny) {   // 1 - e^-d = d = 2h/s, from the log-scale
        real unused;
        log_mass = k_log((real)2 * half_bin * inv_p) - softclip(raw_log_scale, floor, use_floor, &unused) - linear;
    } else if (small) {  // 1 - e^-d = m, from expm1 (log1mexp's branches)
        m = -k_expm1(-d);
        log_mass = k_log(m * inv_p) - linear;
    } else {             // (1 - e^-d)/P = 1 - (e^-d + P - 1)/P
        e = k_exp(-d);
        log_mass = k_log1p(-(e + sum) * inv_p) - linear;
    }
    if (!g_mu) return log_mass;  // the value alone
    real width = (real)0;
    if (!first && !final_bin) width = tiny ? (real)1 : (small ? d * ((real)1 - m) / m : d * e / ((real)1 - e));
    const real big_a = ((real)1 + e_b) * inv_p;  // 1/(1 + e_a)
    const real big_b = ((real)1 + e_a) * inv_p;  // 1/(1 + e_b)
    const real s_a = first ? (real)0 : (a >= (real)0 ? big_a : e_a * big_a);       // sigma(a)
    const real s_nb = final_bin ? (real)0 : (b <= (real)0 ? big_b : e_b * big_b);  // sigma(-b)
    *g_mu = (s_a - s_nb) * inv_scale;
    *g_log_scale = a * s_a - b * s_nb - width;
    return log_mass;
}

// one term u into an online logsumexp: log sum e^v = m + log s so far
K_INLINE void online_logsumexp_add(const real u, real* m, real* s) {
    if (u > *m) {
        *s = *s * k_exp(*m - u) + (real)1;
        *m = u;
    } else if (u != k_neg_inf(u)) {  // e^-inf adds nothing, and -inf - -inf is NaN
        *s += k_exp(u - *m);
    }
}

// online logsumexp of v[k * stride] over k < K, in order
K_INLINE real online_logsumexp(const real* v, const long long stride, const int K) {
    real m = v[0];
    real s = (real)1;
    for (int k = 1; k < K; ++k) online_logsumexp_add(v[(long long)k * stride], &m, &s);
    return m + k_log(s);
}

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// ------------------------------------------------------------------- kernels

// Gaussian family, one thread per element i = (b, e), e in [0, C*H*W).
// params == 2 (gaussian-pixel): log sigma = softclip(raw[b, C + c]); params == 1:
// log sigma = log_sigma_img[b], and grad_log_sigma[i] = w_b d value_i / d log sigma.
extern "C" __global__ void gaussian_family(
    const int* __restrict__ x, const real* __restrict__ raw,
    const real* __restrict__ log_sigma_img, const real* __restrict__ weight,
    real* __restrict__ value, real* __restrict__ grad, real* __restrict__ grad_log_sigma,
    const long long n, const long long chw, const int params, const int last,
    const real half_bin, const int discrete, const real floor, const int use_floor,
    const int need_grad)
{
    GRID_STRIDE_LOOP(i, n) {
        const long long b = i / chw;
        const long long e = i - b * chw;
        const long long i_mu = b * params * chw + e;
        const int xv = x[i];
        const real y = (real)xv / (real)last;
        const real r = raw[i_mu];
        const real mu = sigmoid(r);
        const real dmu = mu * sigmoid(-r);
        real dls = (real)1;
        const real ls = params == 2 ? softclip(raw[i_mu + chw], floor, use_floor, &dls)
                                    : log_sigma_img[b];
        real val, g_mu, g_ls;
        if (discrete) {
            val = normal_bin(xv, last, y, mu, ls, half_bin, &g_mu, &g_ls);
        } else {
            const real inv_sigma = k_exp(-ls);
            const real z = (y - mu) * inv_sigma;
            val = (real)-0.5 * z * z - ls - (real)K_HALF_LOG_2PI;
            g_mu = z * inv_sigma;
            g_ls = z * z - (real)1;
        }
        value[i] = val;
        if (need_grad) {
            const real w = weight[b];
            grad[i_mu] = w * g_mu * dmu;
            if (params == 2) {
                grad[i_mu + chw] = w * g_ls * dls;
            } else {
                grad_log_sigma[i] = w * g_ls;
            }
        }
    }
}

// (y - sigmoid(raw))^2 per element, for the analytic sigma (one parameter per channel).
extern "C" __global__ void squared_error(
    const int* __restrict__ x, const real* __restrict__ raw, real* __restrict__ out,
    const long long n, const int last)
{
    GRID_STRIDE_LOOP(i, n) {
        const real diff = (real)x[i] / (real)last - sigmoid(raw[i]);
        out[i] = diff * diff;
    }
}

// grad += coef_b (y - mu) sigmoid'(raw): the gradient through log sigma(MSE).
extern "C" __global__ void add_sigma_coupling(
    const int* __restrict__ x, const real* __restrict__ raw, const real* __restrict__ coef,
    real* __restrict__ grad, const long long n, const long long chw, const int last)
{
    GRID_STRIDE_LOOP(i, n) {
        const long long b = i / chw;
        const real r = raw[i];
        const real mu = sigmoid(r);
        const real dmu = mu * sigmoid(-r);
        const real diff = (real)x[i] / (real)last - mu;
        grad[i] += coef[b] * diff * dmu;
    }
}

// Categorical over L levels, one thread per element; level k of element (b, e) is
// raw[(b*L + k)*C*H*W + e].
extern "C" __global__ void categorical(
    const int* __restrict__ x, const real* __restrict__ raw, const real* __restrict__ weight,
    real* __restrict__ value, real* __restrict__ grad,
    const long long n, const long long chw, const int levels, const int need_grad)
{
    GRID_STRIDE_LOOP(i, n) {
        const long long b = i / chw;
        const long long e = i - b * chw;
        const long long base = b * levels * chw + e;
        const real* logits = raw + base;
        const int xv = x[i];
        const real lse = online_logsumexp(logits, chw, levels);
        const bool in_range = xv >= 0 && xv < levels;
        value[i] = in_range ? logits[(long long)xv * chw] - lse : k_nan(lse);
        if (need_grad) {
            const real w = weight[b];
            real* g = grad + base;
            for (int k = 0; k < levels; ++k) {
                const real p = k_exp(logits[(long long)k * chw] - lse);
                g[(long long)k * chw] = w * ((k == xv ? (real)1 : (real)0) - p);
            }
        }
    }
}

// Discretized logistic, one thread per element: mu = raw[b, c], log s = softclip(raw[b, C + c]).
extern "C" __global__ void logistic(
    const int* __restrict__ x, const real* __restrict__ raw, const real* __restrict__ weight,
    real* __restrict__ value, real* __restrict__ grad,
    const long long n, const long long chw, const int last, const real half_bin,
    const real floor, const real exp_neg_floor, const int use_floor, const int need_grad)
{
    GRID_STRIDE_LOOP(i, n) {
        const long long b = i / chw;
        const long long e = i - b * chw;
        const long long i_mu = b * 2 * chw + e;
        const long long i_ls = i_mu + chw;
        const int xv = x[i];
        const real y = (real)xv / (real)last;
        real dls;
        const real inv_scale = softclip_inv_scale(raw[i_ls], floor, exp_neg_floor, use_floor, &dls);
        real g_mu, g_ls;
        value[i] = logistic_bin(xv, last, y, raw[i_mu], inv_scale, raw[i_ls], floor, use_floor, half_bin,
                                need_grad ? &g_mu : (real*)0, &g_ls);
        if (need_grad) {
            const real w = weight[b];
            grad[i_mu] = w * g_mu;
            grad[i_ls] = w * g_ls * dls;
        }
    }
}

// Mixture of K discretized logistics in passes, so that every thread has a small,
// independent piece of work (one thread per pixel and component, K times the threads of
// one per pixel):
//   logistic_mixture_components: mass[k*n + i] = M_k = sum_c log mass_kc; with keep, also
//                                the component's unscaled parameter gradients in grad
//   logistic_mixture_lse:        per pixel, the four rows of stats (STATS_* below): the
//                                log-softmax normaliser N of the logits pi, m = max_k M_k,
//                                L = logsumexp_k t_k with t_k = (pi_k - N) + (M_k - m),
//                                and the pixel's log-prob m + L
//   logistic_mixture_scale:      out = the kept gradients times w_b r_k (responsibility
//                                r_k = exp(t_k - L)), logits w_b (r_k - softmax(pi)_k)
//   logistic_mixture_grad:       the same gradient without anything kept: component k
//                                recomputed with its derivatives, then scaled
// The mass sums stay apart from the logits so that a large common part of them (a pixel
// many scales from every component's mean) cancels exactly in M_k - m instead of
// rounding away the logits in float32.
// Pixel i = (b, p), p in [0, H*W); n = B*H*W; work item t = k*n + i (component-major:
// a warp reads 32 neighbouring pixels of one channel).  Channels of raw (per pixel):
// logits k; means K + k*C + c; raw log-scales K + K*C + k*C + c; for C == 3 coupling
// coefficients K + 2*K*C + 3*k + j.

// Component k's log mass at one pixel, M_k = sum_c log mass_kc.
// With g (the pixel's gradient, channel j at g[j * hw]) it also writes the component's
// unscaled parameter gradients there, d M_k / d theta, for the caller to scale.
K_INLINE real mixture_component(const real* r, const int* xs, real* g, const long long hw,
                                const int K, const int C, const long long k, const int last,
                                const real half_bin, const real floor, const real exp_neg_floor,
                                const int use_floor) {
    const int coupled = C == 3;
    const long long mean0 = K;
    const long long scale0 = (long long)K + (long long)K * C;
    const long long coef0 = (long long)K + 2LL * K * C;
    real y_r = (real)0, y_g = (real)0;
    if (coupled) {
        y_r = (real)xs[0] / (real)last;
        y_g = (real)xs[hw] / (real)last;
    }
    real mass = (real)0;
    for (int c = 0; c < C; ++c) {
        const int xv = xs[(long long)c * hw];
        const real y = (real)xv / (real)last;
        const long long j_mu = mean0 + k * C + c;
        const long long j_ls = scale0 + k * C + c;
        const long long j_cf = coef0 + 3LL * k;
        real loc = r[j_mu * hw];
        real t_a = (real)0, t_b = (real)0, t_c = (real)0;
        if (coupled && c == 1) {
            t_a = k_tanh(r[j_cf * hw]);
            loc += t_a * y_r;
        } else if (coupled && c == 2) {
            t_b = k_tanh(r[(j_cf + 1) * hw]);
            t_c = k_tanh(r[(j_cf + 2) * hw]);
            loc += t_b * y_r + t_c * y_g;
        }
        real dls;
        const real r_ls = r[j_ls * hw];
        const real inv_scale = softclip_inv_scale(r_ls, floor, exp_neg_floor, use_floor, &dls);
        real g_loc, g_ls;
        mass += logistic_bin(xv, last, y, loc, inv_scale, r_ls, floor, use_floor, half_bin, g ? &g_loc : (real*)0,
                             &g_ls);
        if (g) {
            g[j_mu * hw] = g_loc;
            g[j_ls * hw] = g_ls * dls;
            if (coupled && c == 1) {
                g[j_cf * hw] = g_loc * y_r * ((real)1 - t_a * t_a);
            } else if (coupled && c == 2) {
                g[(j_cf + 1) * hw] = g_loc * y_r * ((real)1 - t_b * t_b);
                g[(j_cf + 2) * hw] = g_loc * y_g * ((real)1 - t_c * t_c);
            }
        }
    }
    return mass;
}

// channels of raw per pixel: K logits, K*C means, K*C log-scales, 3*K couplings if C == 3
K_INLINE long long mixture_per_pixel(const int K, const int C) {
    return (long long)K * (1 + 2 * C + (C == 3 ? 3 : 0));
}

// o = g * scale over component k's parameter channels (means, log-scales, couplings);
// o may be g
K_INLINE void mixture_scale_params(const real* g, real* o, const long long hw, const int K,
                                   const int C, const long long k, const real scale) {
    const long long mean0 = K;
    const long long scale0 = (long long)K + (long long)K * C;
    const long long coef0 = (long long)K + 2LL * K * C;
    for (int c = 0; c < C; ++c) {
        o[(mean0 + k * C + c) * hw] = g[(mean0 + k * C + c) * hw] * scale;
        o[(scale0 + k * C + c) * hw] = g[(scale0 + k * C + c) * hw] * scale;
    }
    if (C == 3) {
        for (int j = 0; j < 3; ++j) o[(coef0 + 3 * k + j) * hw] = g[(coef0 + 3 * k + j) * hw] * scale;
    }
}

// rows of the mixture's per-pixel stats (4, n)
#define STATS_LOG_PROB 0
#define STATS_LOG_NORM 1
#define STATS_MASS_MAX 2
#define STATS_LSE 3

// t_k = log softmax(pi)_k + (M_k - m) (see above); *log_w = log softmax(pi)_k
K_INLINE real mixture_shifted(const real mass, const real logit, const real log_norm, const real mass_max,
                              real* log_w) {
    *log_w = logit - log_norm;
    return *log_w + (mass - mass_max);
}

// w_b (r_k - softmax(pi)_k), the gradient of component k's logit at pixel i, whose log
// mass is mass; *resp = r_k = exp(t_k - L)
K_INLINE real mixture_logit_grad(const real mass, const real logit, const real* stats, const long long n,
                                 const long long i, const real w, real* resp) {
    real log_w;
    const real t = mixture_shifted(mass, logit, stats[STATS_LOG_NORM * n + i], stats[STATS_MASS_MAX * n + i],
                                   &log_w);
    *resp = k_exp(t - stats[STATS_LSE * n + i]);
    return w * (*resp - k_exp(log_w));
}

#define MIXTURE_ITEM(t, n, hw, per_pixel, C)                                   \
    const long long k_ = (t) / (n);                                           \
    const long long i_ = (t) - k_ * (n);                                      \
    const long long b_ = i_ / (hw);                                           \
    const long long p_ = i_ - b_ * (hw);                                      \
    const real* r = raw + b_ * (per_pixel) * (hw) + p_;  /* channel j at r[j * hw] */ \
    const int* xs = x + b_ * (C) * (hw) + p_;            /* image channel c at xs[c * hw] */

extern "C" __global__ void logistic_mixture_components(
    const int* __restrict__ x, const real* __restrict__ raw, real* __restrict__ mass,
    real* __restrict__ grad, const long long n, const long long hw, const int channels,
    const int mixtures, const int last, const real half_bin, const real floor,
    const real exp_neg_floor, const int use_floor, const int keep)
{
    const int K = mixtures;
    const int C = channels;
    const long long per_pixel = mixture_per_pixel(K, C);
    GRID_STRIDE_LOOP(t, n * K) {
        MIXTURE_ITEM(t, n, hw, per_pixel, C)
        real* g = keep ? grad + b_ * per_pixel * hw + p_ : (real*)0;
        mass[t] = mixture_component(r, xs, g, hw, K, C, k_, last, half_bin, floor, exp_neg_floor,
                                    use_floor);
    }
}

// per pixel: the stats rows (see above); online logsumexps in component order
extern "C" __global__ void logistic_mixture_lse(
    const real* __restrict__ raw, const real* __restrict__ mass, real* __restrict__ stats,
    const long long n, const long long hw, const int channels, const int mixtures)
{
    const long long per_pixel = mixture_per_pixel(mixtures, channels);
    GRID_STRIDE_LOOP(i, n) {
        const long long b = i / hw;
        const real* logits = raw + b * per_pixel * hw + (i - b * hw);
        const real norm = online_logsumexp(logits, hw, mixtures);
        real m = mass[i];
        for (int k = 1; k < mixtures; ++k) {
            const real v = mass[(long long)k * n + i];
            m = v > m ? v : m;
        }
        if (m == k_neg_inf(m)) m = (real)0;  // no component can give x: every t_k is -inf
        real log_w;
        real top = mixture_shifted(mass[i], logits[0], norm, m, &log_w);
        real sum = (real)1;
        for (int k = 1; k < mixtures; ++k) {
            online_logsumexp_add(
                mixture_shifted(mass[(long long)k * n + i], logits[(long long)k * hw], norm, m, &log_w), &top, &sum);
        }
        const real lse = top + k_log(sum);
        stats[STATS_LOG_NORM * n + i] = norm;
        stats[STATS_MASS_MAX * n + i] = m;
        stats[STATS_LSE * n + i] = lse;
        stats[STATS_LOG_PROB * n + i] = m + lse;
    }
}

// out = the kept unscaled gradient of component k at pixel i, scaled (see above);
// out-of-place, so that the kept one serves a second backward too
extern "C" __global__ void logistic_mixture_scale(
    const real* __restrict__ raw, const real* __restrict__ mass, const real* __restrict__ stats,
    const real* __restrict__ weight, const real* __restrict__ grad, real* __restrict__ out,
    const long long n, const long long hw, const int channels, const int mixtures)
{
    const int K = mixtures;
    const int C = channels;
    const long long per_pixel = mixture_per_pixel(K, C);
    GRID_STRIDE_LOOP(t, n * K) {
        const long long k = t / n;
        const long long i = t - k * n;
        const long long b = i / hw;
        const long long offset = b * per_pixel * hw + (i - b * hw);
        const real w = weight[b];
        real resp;
        out[offset + k * hw] = mixture_logit_grad(mass[t], raw[offset + k * hw], stats, n, i, w, &resp);
        mixture_scale_params(grad + offset, out + offset, hw, K, C, k, w * resp);
    }
}

// the gradient of component k at pixel i: recomputed, then scaled by w_b r_k in place
extern "C" __global__ void logistic_mixture_grad(
    const int* __restrict__ x, const real* __restrict__ raw, const real* __restrict__ stats,
    const real* __restrict__ weight, real* __restrict__ grad,
    const long long n, const long long hw, const int channels, const int mixtures,
    const int last, const real half_bin, const real floor, const real exp_neg_floor,
    const int use_floor)
{
    const int K = mixtures;
    const int C = channels;
    const long long per_pixel = mixture_per_pixel(K, C);
    GRID_STRIDE_LOOP(t, n * K) {
        MIXTURE_ITEM(t, n, hw, per_pixel, C)
        real* g = grad + b_ * per_pixel * hw + p_;
        const real mass = mixture_component(r, xs, g, hw, K, C, k_, last, half_bin, floor, exp_neg_floor,
                                            use_floor);
        const real w = weight[b_];
        real resp;
        g[k_ * hw] = mixture_logit_grad(mass, r[k_ * hw], stats, n, i_, w, &resp);
        mixture_scale_params(g, g, hw, K, C, k_, w * resp);
    }
}
"""

KERNEL_NAMES = (
    "gaussian_family",
    "squared_error",
    "add_sigma_coupling",
    "categorical",
    "logistic",
    "logistic_mixture_components",
    "logistic_mixture_lse",
    "logistic_mixture_scale",
    "logistic_mixture_grad",
)

_REAL = {"float32": "float", "float64": "double"}
_modules: dict = {}


def source_for(dtype) -> str:
    """The full CUDA source for ``dtype`` (float32 or float64): preamble + kernels."""
    return f"typedef {_REAL[np.dtype(dtype).name]} real;\n" + SOURCE


def _kernel(name: str, dtype):
    """The compiled kernel ``name`` for ``dtype`` (compiled on first use, then cached)."""
    import cupy

    key = np.dtype(dtype).name
    module = _modules.get(key)
    if module is None:
        module = cupy.RawModule(code=source_for(dtype))
        _modules[key] = module
    return module.get_function(name)


def launch_cuda(name, dtype, n, args):
    """Run kernel ``name`` (of the ``dtype`` variant) over ``n`` work items on the
    current CuPy device and stream; ``args`` are CuPy arrays and NumPy scalars whose
    types match the kernel's parameters exactly (no conversion is done)."""
    if n == 0:
        return
    blocks = min((n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK, MAX_BLOCKS)
    _kernel(name, dtype)((blocks,), (THREADS_PER_BLOCK,), args)


def supports(name: str) -> bool:
    """Whether ``name`` has a fused kernel (both kinds)."""
    return name in FUSED


@dataclass(frozen=True)
class MixtureState:
    """What the mixture's value passes leave for a gradient call on the same x and raw:
    the per-pixel ``stats`` (4, n): log-probability, log-softmax normaliser of the
    logits, largest component log mass and the log-sum-exp of the shifted component
    log-probabilities (the kernel source's STATS_* rows); and, when the gradient was
    kept, the component log masses (K*n,) and the unscaled parameter gradients (raw's
    shape)."""

    stats: object
    mass: object = None
    grad: object = None

    @property
    def log_prob(self):
        """The per-pixel log-probabilities (n,)."""
        return self.stats[0]


def _check_state(state, n, k, raw):
    """A MixtureState that fits n pixels, k components and raw (shape and dtype): the
    kernels index its arrays densely."""
    if not isinstance(state, MixtureState):
        raise ValueError(f"logistic-mixture state must be a MixtureState, got {type(state).__name__}")
    shapes = {"stats": (4, n), "mass": (n * k,), "grad": raw.shape}
    for field_name, shape in shapes.items():
        a = getattr(state, field_name)
        if a is None and field_name != "stats":
            continue
        if a is None or a.shape != shape or a.dtype != raw.dtype or not a.flags.c_contiguous:
            raise ValueError(f"logistic-mixture state: {field_name} is not a contiguous {shape} array "
                             f"of {raw.dtype}")
    if (state.grad is None) != (state.mass is None):
        raise ValueError("logistic-mixture state: mass and grad come together")


def evaluate(
    name, x, raw, kind="log_prob", *, upstream=None, need_grad=True, state=None, keep_gradient=False,
    ns=None, launch=None, **opts
):
    """:func:`formulas.evaluate` for CuPy arrays, by the fused kernels.

    The result's ``state`` is what a later gradient call on the same ``x`` and ``raw``
    can pass back as ``state`` to skip the value passes: for the mixture a
    :class:`MixtureState` (None for the single-pass kernels, which ignore it).  With
    ``keep_gradient`` (and ``need_grad`` False) the mixture's value pass also keeps the
    unscaled gradient in the state, and the gradient call only scales it by the upstream
    weights (one pass over raw in all); without it the gradient call recomputes.

    ``ns`` and ``launch`` default to CuPy and :func:`launch_cuda`; the tests pass NumPy
    and a launcher of the same kernel source compiled for the host, so that this
    orchestration and the kernels' maths are checked on machines without a GPU."""
    ns = ns or formulas.cupy_namespace()
    launch = launch or launch_cuda
    xp = ns.xp
    o = formulas.parse_options(name, opts)
    formulas.check_inputs(ns, name, x, raw, o, check_range=False)
    if name not in FUSED:
        raise ValueError(f"no fused kernel for {name}")
    discrete = formulas.is_discrete(name, kind)
    dtype = raw.dtype
    real = np.float32 if dtype == np.float32 else np.float64
    raw = xp.ascontiguousarray(raw)
    xi = xp.ascontiguousarray(x.astype(xp.int32, copy=False))
    b, c, h, w = x.shape
    hw, chw = h * w, c * h * w
    last = o.levels - 1
    half_bin = real(0.5 / last)
    use_floor = np.int32(o.log_sigma_min is not None)
    floor = real(0.0 if o.log_sigma_min is None else o.log_sigma_min)
    exp_neg_floor = real(formulas.softclip_exp_neg_floor(o.log_sigma_min))
    weight = xp.ascontiguousarray(
        formulas._weights(xp, upstream, b, dtype) if need_grad else xp.ones(b, dtype)
    )
    grad = xp.empty_like(raw) if need_grad else xp.empty(1, dtype)
    flag = np.int32(need_grad)
    grad_log_sigma = None

    if name in formulas.GAUSSIAN_FAMILY:
        n = b * chw
        value = xp.empty(n, dtype)
        params = 2 if name == "gaussian-pixel" else 1
        log_sigma_img = xp.zeros(1, dtype)
        analytic = False
        fixed = formulas.fixed_log_sigma(name, o)
        if name == "sigma-learned":
            ls, d_ls = formulas.learned_log_sigma(xp, name, o, dtype)
            log_sigma_img = xp.ascontiguousarray(xp.broadcast_to(ls, (b,)))
        elif fixed is not None:
            log_sigma_img = xp.full(b, fixed, dtype)
        elif name != "gaussian-pixel":
            analytic = True
            sq = xp.empty(n, dtype)
            launch("squared_error", dtype, n, (xi, raw, sq, np.int64(n), np.int32(last)))
            sse = sq.reshape(b, chw).sum(axis=1)
            count = chw * (b if name == "sigma" else 1)
            mse = xp.broadcast_to(sse.sum() / count, (b,)) if name == "sigma" else sse / count
            ls_b, d_ls_b = formulas.softclip(xp, 0.5 * xp.log(mse), o.log_sigma_min)
            log_sigma_img = xp.ascontiguousarray(ls_b.astype(dtype, copy=False))
        g_ls_elem = xp.empty(n, dtype) if need_grad and params == 1 else xp.empty(1, dtype)
        launch(
            "gaussian_family",
            dtype,
            n,
            (
                xi, raw, log_sigma_img, weight, value, grad, g_ls_elem,
                np.int64(n), np.int64(chw), np.int32(params), np.int32(last), half_bin,
                np.int32(discrete), floor, use_floor, flag,
            ),
        )  # fmt: skip
        value = value.reshape(b, chw).sum(axis=1)
        if need_grad and name == "sigma-learned":
            grad_log_sigma = g_ls_elem.reshape(b, chw).sum(axis=1) * d_ls
        elif need_grad and analytic:
            g_img = g_ls_elem.reshape(b, chw).sum(axis=1)  # (B,) w_b d/dlog sigma_b
            if name == "sigma":
                g_img = xp.broadcast_to(g_img.sum(), (b,))
            safe = xp.where(mse > 0, mse, 1.0)
            coef = xp.where(mse > 0, -g_img * d_ls_b / (safe * count), 0.0)
            coef = xp.ascontiguousarray(coef.astype(dtype, copy=False))
            launch(
                "add_sigma_coupling",
                dtype,
                n,
                (xi, raw, coef, grad, np.int64(n), np.int64(chw), np.int32(last)),
            )
    elif name == "categorical":
        n = b * chw
        value = xp.empty(n, dtype)
        launch(
            "categorical",
            dtype,
            n,
            (xi, raw, weight, value, grad, np.int64(n), np.int64(chw), np.int32(o.levels), flag),
        )
        value = value.reshape(b, chw).sum(axis=1)
    elif name == "logistic":
        n = b * chw
        value = xp.empty(n, dtype)
        launch(
            "logistic",
            dtype,
            n,
            (
                xi, raw, weight, value, grad, np.int64(n), np.int64(chw), np.int32(last),
                half_bin, floor, exp_neg_floor, use_floor, flag,
            ),
        )  # fmt: skip
        value = value.reshape(b, chw).sum(axis=1)
    else:  # logistic-mixture
        n, k = b * hw, o.mixtures
        shape = (np.int64(n), np.int64(hw), np.int32(c), np.int32(k))
        maths = (np.int32(last), half_bin, floor, exp_neg_floor, use_floor)
        if state is None:
            keep = need_grad or keep_gradient
            mass = xp.empty(n * k, dtype)
            kept = xp.empty_like(raw) if keep else xp.empty(1, dtype)
            launch("logistic_mixture_components", dtype, n * k,
                   (xi, raw, mass, kept) + shape + maths + (np.int32(keep),))
            stats = xp.empty((4, n), dtype)
            launch("logistic_mixture_lse", dtype, n, (raw, mass, stats) + shape)
            state = MixtureState(stats, mass, kept) if keep else MixtureState(stats)
        else:
            _check_state(state, n, k, raw)
        if need_grad and state.grad is not None:  # scale the kept gradient
            launch("logistic_mixture_scale", dtype, n * k,
                   (raw, state.mass, state.stats, weight, state.grad, grad) + shape)
        elif need_grad:  # recompute it
            launch("logistic_mixture_grad", dtype, n * k,
                   (xi, raw, state.stats, weight, grad) + shape + maths)
        value = state.log_prob.reshape(b, hw).sum(axis=1)
    if name != "logistic-mixture":
        state = None  # the single-pass kernels keep nothing
    return formulas.Evaluation(
        value.astype(dtype, copy=False),
        grad if need_grad else None,
        None if grad_log_sigma is None else grad_log_sigma.astype(dtype, copy=False),
        state,
    )


def compile_check_sources() -> dict:
    """{dtype name: full CUDA source}, for compile checks without a device (nvcc)."""
    return {name: source_for(name) for name in _REAL}

