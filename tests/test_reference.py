"""Property tests of the float64 NumPy reference (the oracle of every backend).

No oracle is needed here: PMFs sum to one, a one-component mixture is the single
discretized logistic, values and gradients stay finite at extremes, scipy.stats agrees
where it has the distribution, and the sigma-VAE algebra (sigma*^2 = MSE, beta = 2
sigma^2) holds.  Inputs are seeded (the seed is in the test id), always include the
edge levels 0 and L-1, and extreme parameters (logits +-100, log-scales at the floor,
mu exactly 0 or 1).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from vaecli import reference as ref
from vaecli import registry
from vaecli.backends import INTERFACE
from vaecli.constants import LOG_SIGMA_MIN, STUDENT_T_MIN_DF
from vaecli.errors import VaeError
from vaecli.reference import stable

SEEDS = (0, 1, 2)
NAMES = registry.NAMES
PIXEL_NAMES = tuple(n for n in NAMES if registry.info(n).separable == "pixel")
NOT_PIXEL_NAMES = tuple(n for n in NAMES if registry.info(n).separable != "pixel")
DISCRETE_NAMES = tuple(n for n in NAMES if not registry.info(n).continuous)

# mixture components of the test decoders (few, to keep the tests fast)
MIXTURES = 4
# float64 sums of 256 masses: a few ulps each.
PMF_ATOL = 1e-10
# float64 agreement of two correct formulas
RTOL64 = 1e-10


# ----------------------------------------------------------------------------- helpers


def levels_of(n_bits):
    return 2**n_bits


def base_opts(name, rng=None, *, extreme=False):
    """Options that make every likelihood evaluable: sigma-learned's log_sigma, and a
    fixed sigma for sigma / sigma-image (whose sigma otherwise comes from the batch)."""
    if name == "sigma-learned":
        if extreme:
            return {"log_sigma": -100.0}  # at the floor
        return {"log_sigma": float(rng.normal() - 2.0) if rng is not None else -2.0}
    if name in ("sigma", "sigma-image"):
        return {"sigma": float(np.exp(LOG_SIGMA_MIN)) if extreme else 0.07}
    if name == "logistic-mixture":
        return {"mixtures": MIXTURES}
    return {}


def identity_mean_channels(name, c, mixtures):
    """Raw channels that are means on the [0, 1] scale (identity link)."""
    if name == "logistic":
        return range(0, c)
    if name == "logistic-mixture":
        return range(mixtures, mixtures + mixtures * c)
    return range(0)


def log_scale_channels(name, c, mixtures):
    """Raw channels that are log-scales (softclipped)."""
    if name in ("gaussian-pixel", "student-t", "logistic"):
        return range(c, 2 * c)
    if name == "logistic-mixture":
        return range(mixtures + mixtures * c, mixtures + 2 * mixtures * c)
    return range(0)


def make_raw(name, x_shape, rng, *, extreme=False, n_bits=8, mixtures=None):
    """Raw decoder output for x of ``x_shape``: moderate, or extreme (+-100 everywhere,
    identity means exactly 0 or 1, log-scales mostly at the floor)."""
    b, c, h, w = x_shape
    mixtures = MIXTURES if mixtures is None else mixtures
    k = registry.out_channels(name, c, n_bits, mixtures)
    if extreme:
        raw = rng.choice([-100.0, 100.0], size=(b, k, h, w))
        for ch in identity_mean_channels(name, c, mixtures):
            raw[:, ch] = rng.choice([0.0, 1.0], size=(b, h, w))
        for ch in log_scale_channels(name, c, mixtures):
            raw[:, ch] = rng.choice([-100.0, -100.0, 100.0], size=(b, h, w))
        return raw
    raw = rng.normal(size=(b, k, h, w)) * 2.0
    for ch in identity_mean_channels(name, c, mixtures):
        raw[:, ch] = rng.uniform(-0.1, 1.1, size=(b, h, w))
    for ch in log_scale_channels(name, c, mixtures):
        raw[:, ch] = rng.uniform(-5.0, -1.0, size=(b, h, w))
    return raw


def make_x(shape, rng, n_bits=8):
    """Random levels with the edge levels 0 and L-1 in every image and channel."""
    top = levels_of(n_bits) - 1
    x = rng.integers(0, top + 1, size=shape).astype(np.uint8 if n_bits <= 8 else np.int64)
    x[:, :, 0, 0] = 0
    x[:, :, 0, 1] = top
    return x


def all_levels(n_bits, channels=1):
    """Every joint value of one pixel with ``channels`` channels: ``(L^C, C, 1, 1)``."""
    grids = np.meshgrid(*[np.arange(levels_of(n_bits))] * channels, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)[:, :, None, None]


def pmf_over_levels(name, raw_pixel, n_bits=8, **opts):
    """Probabilities of every level of a 1x1 grayscale image with ``raw_pixel``
    ``(1, K, 1, 1)``, from log_pmf over an enumerated batch: ``(L,)``."""
    x = all_levels(n_bits)
    raw = np.repeat(raw_pixel, x.shape[0], axis=0)
    return np.exp(ref.log_pmf(name, x, raw, n_bits=n_bits, **opts))


# ----------------------------------------------------------------------------- interface


def test_reference_implements_the_interface():
    for fn in INTERFACE:
        assert callable(getattr(ref, fn)), fn
    assert ref.available() == (True, "")


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_float64_of_shape_b(name):
    rng = np.random.default_rng(0)
    x = make_x((3, 3, 2, 4), rng)
    raw = make_raw(name, x.shape, rng).astype(np.float32)
    for fn in (ref.log_prob, ref.log_pmf):
        out = fn(name, x, raw, **base_opts(name, rng))
        assert out.shape == (3,) and out.dtype == np.float64
    m = ref.mean(name, raw, **base_opts(name, rng))
    assert m.shape == x.shape and m.dtype == np.float64
    assert np.all((m >= 0.0) & (m <= 1.0))


@pytest.mark.parametrize("name", DISCRETE_NAMES)
def test_discrete_log_prob_equals_log_pmf(name):
    rng = np.random.default_rng(1)
    x = make_x((2, 3, 3, 3), rng)
    raw = make_raw(name, x.shape, rng)
    opts = base_opts(name)
    np.testing.assert_array_equal(
        ref.log_prob(name, x, raw, **opts), ref.log_pmf(name, x, raw, **opts)
    )


# ----------------------------------------------------------------------------- PMFs sum to 1


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("n_bits", [8, 3])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [n for n in NAMES if n != "bernoulli"])
def test_pmf_sums_to_one_over_levels(name, seed, n_bits, extreme):
    rng = np.random.default_rng(seed)
    raw = make_raw(name, (1, 1, 1, 1), rng, extreme=extreme, n_bits=n_bits)
    p = pmf_over_levels(name, raw, n_bits, **base_opts(name, rng, extreme=extreme))
    assert p.shape == (levels_of(n_bits),)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=0, atol=PMF_ATOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_sigma_vae_with_batch_sigma_is_a_pmf_given_that_sigma(seed):
    # sigma=None: sigma comes from the (enumerated) batch, shared by all its images,
    # so the masses over the L levels still sum to one.
    rng = np.random.default_rng(seed)
    raw = make_raw("sigma", (1, 1, 1, 1), rng)
    np.testing.assert_allclose(pmf_over_levels("sigma", raw).sum(), 1.0, atol=PMF_ATOL)


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("seed", SEEDS)
def test_rgb_mixture_pmf_sums_to_one_over_joint_values(seed, extreme):
    rng = np.random.default_rng(seed)
    n_bits = 3
    x = all_levels(n_bits, channels=3)  # (512, 3, 1, 1)
    raw = make_raw("logistic-mixture", (1, 3, 1, 1), rng, extreme=extreme, n_bits=n_bits)
    raw = np.repeat(raw, x.shape[0], axis=0)
    log_p = ref.log_pmf("logistic-mixture", x, raw, n_bits=n_bits, mixtures=MIXTURES)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, atol=PMF_ATOL)


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("seed", SEEDS)
def test_bernoulli_is_a_pmf_over_zero_and_top(seed, extreme):
    # on binarized data the only levels are 0 and L-1: p(0) + p(L-1) = 1 per dimension
    rng = np.random.default_rng(seed)
    raw = make_raw("bernoulli", (5, 1, 1, 1), rng, extreme=extreme)
    zeros = np.zeros((5, 1, 1, 1), dtype=np.uint8)
    for n_bits in (8, 1):
        top = levels_of(n_bits) - 1
        p0 = np.exp(ref.log_prob("bernoulli", zeros, raw, n_bits=n_bits))
        p1 = np.exp(ref.log_pmf("bernoulli", zeros + top, raw, n_bits=n_bits))
        np.testing.assert_allclose(p0 + p1, 1.0, rtol=0, atol=1e-15)
        np.testing.assert_allclose(p1, special.expit(raw[:, 0, 0, 0]), rtol=1e-15)


# ----------------------------------------------------------------------------- mixtures


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("seed", SEEDS)
def test_one_component_mixture_is_the_discretized_logistic_gray(seed, extreme):
    rng = np.random.default_rng(seed)
    x = make_x((3, 1, 4, 5), rng)
    logistic_raw = make_raw("logistic", x.shape, rng, extreme=extreme)  # mu, log s
    pi = rng.normal(size=(3, 1, 4, 5))  # any logit: log_softmax of one component is 0
    mixture_raw = np.concatenate([pi, logistic_raw], axis=1)  # pi, mu, log s
    np.testing.assert_allclose(
        ref.log_pmf("logistic-mixture", x, mixture_raw, mixtures=1),
        ref.log_pmf("logistic", x, logistic_raw),
        rtol=1e-13,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_one_component_mixture_is_the_discretized_logistic_rgb(seed):
    rng = np.random.default_rng(seed)
    x = make_x((3, 3, 4, 5), rng)
    logistic_raw = make_raw("logistic", x.shape, rng)  # mu (3), log s (3)
    pi = rng.normal(size=(3, 1, 4, 5))
    coeff = np.zeros((3, 3, 4, 5))  # tanh(0) = 0: no coupling
    mixture_raw = np.concatenate([pi, logistic_raw, coeff], axis=1)
    np.testing.assert_allclose(
        ref.log_pmf("logistic-mixture", x, mixture_raw, mixtures=1),
        ref.log_pmf("logistic", x, logistic_raw),
        rtol=1e-13,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_rgb_coupling_shifts_means_by_the_data(seed):
    # one component with coupling = a logistic whose G and B means are shifted by the
    # data's own values, mu_G + a y_R and mu_B + b y_R + c y_G, y = x/(L-1)
    rng = np.random.default_rng(seed)
    x = make_x((2, 3, 3, 4), rng)
    logistic_raw = make_raw("logistic", x.shape, rng)
    raw_coeff = rng.normal(size=(2, 3, 3, 4))
    mixture_raw = np.concatenate([np.zeros((2, 1, 3, 4)), logistic_raw, raw_coeff], axis=1)
    a, b, c = np.tanh(raw_coeff[:, 0]), np.tanh(raw_coeff[:, 1]), np.tanh(raw_coeff[:, 2])
    y = x / 255.0
    shifted = logistic_raw.copy()
    shifted[:, 1] += a * y[:, 0]
    shifted[:, 2] += b * y[:, 0] + c * y[:, 1]
    np.testing.assert_allclose(
        ref.log_pmf("logistic-mixture", x, mixture_raw, mixtures=1),
        ref.log_pmf("logistic", x, shifted),
        rtol=1e-13,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_mixture_matches_a_direct_scipy_sum(seed):
    # p(pixel) = sum_k w_k prod_c (F(hi) - F(lo)) with scipy's logistic CDF, one pixel
    # at a time, on moderate parameters where the direct form is accurate
    rng = np.random.default_rng(seed)
    k_mix = 3
    x = make_x((2, 3, 2, 2), rng)
    raw = make_raw("logistic-mixture", x.shape, rng, mixtures=k_mix)
    raw[:, k_mix + 2 * k_mix * 3 :] = rng.normal(size=(2, 3 * k_mix, 2, 2))  # coupling on
    got = ref.log_prob_terms("logistic-mixture", x, raw, mixtures=k_mix)  # (B, H, W)
    for b in range(2):
        for h in range(2):
            for w in range(2):
                r = raw[b, :, h, w]
                weights = special.softmax(r[:k_mix])
                mu = r[k_mix : k_mix + 3 * k_mix].reshape(k_mix, 3)
                log_s = LOG_SIGMA_MIN + np.logaddexp(
                    0, r[k_mix + 3 * k_mix : k_mix + 6 * k_mix].reshape(k_mix, 3) - LOG_SIGMA_MIN
                )
                coeff = np.tanh(r[k_mix + 6 * k_mix :].reshape(k_mix, 3))
                y = x[b, :, h, w] / 255.0
                total = 0.0
                for k in range(k_mix):
                    loc = mu[k].copy()
                    loc[1] += coeff[k, 0] * y[0]
                    loc[2] += coeff[k, 1] * y[0] + coeff[k, 2] * y[1]
                    prob = weights[k]
                    for ch in range(3):
                        lev = int(x[b, ch, h, w])
                        lo = -np.inf if lev == 0 else (lev - 0.5) / 255.0
                        hi = np.inf if lev == 255 else (lev + 0.5) / 255.0
                        dist = stats.logistic(loc=loc[ch], scale=np.exp(log_s[k, ch]))
                        if lev / 255.0 > loc[ch]:  # the smaller tail: no cancellation
                            prob *= dist.sf(lo) - dist.sf(hi)
                        else:
                            prob *= dist.cdf(hi) - dist.cdf(lo)
                    total += prob
                np.testing.assert_allclose(got[b, h, w], np.log(total), rtol=1e-9)


# ----------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_finite_at_extremes(name, seed):
    rng = np.random.default_rng(seed)
    x = make_x((4, 3, 3, 3), rng)
    raw = make_raw(name, x.shape, rng, extreme=True)
    opts = base_opts(name, rng, extreme=True)
    for fn in (ref.log_prob, ref.log_pmf):
        out = fn(name, x, raw, **opts)
        assert np.all(np.isfinite(out)), (fn.__name__, out)
    assert np.all(np.isfinite(ref.mean(name, raw, **opts)))


@pytest.mark.parametrize("name", ["sigma", "sigma-image"])
def test_batch_sigma_finite_at_floor_when_mse_is_zero(name):
    # mu = sigmoid(+-100) matches the data at levels 0 and 255 to 1e-44: MSE ~ 1e-87,
    # 0.5 log MSE ~ -100, and the softclip puts log sigma exactly on the floor
    x = np.array([0, 255] * 8, dtype=np.uint8).reshape(2, 1, 2, 4)
    raw = np.where(x == 255, 100.0, -100.0)  # mu = 1 exactly, or 3.7e-44
    at_floor = float(np.exp(LOG_SIGMA_MIN))
    for fn in (ref.log_prob, ref.log_pmf):
        out = fn(name, x, raw)
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, fn("gaussian", x, raw, sigma=at_floor), rtol=1e-14)


def central_difference(f, raw, channel, eps):
    """(f(raw + eps e_ch) - f(raw - eps e_ch)) / (2 eps), e_ch = raw channel ``channel``
    at all pixels at once (how the lead computes reference gradients)."""
    up, down = raw.copy(), raw.copy()
    up[:, channel] += eps
    down[:, channel] -= eps
    return (f(up) - f(down)) / (2.0 * eps)


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("name", NAMES)
def test_finite_difference_gradients_are_finite(name, extreme):
    rng = np.random.default_rng(7)
    x = make_x((2, 3, 2, 3), rng)
    raw = make_raw(name, x.shape, rng, extreme=extreme)
    opts = base_opts(name, rng, extreme=extreme)
    # every raw channel (48 random ones of categorical's 768)
    channels = rng.permutation(raw.shape[1])[:48]
    for fn in (ref.log_prob, ref.log_pmf):
        for ch in channels:
            grad = central_difference(lambda r: fn(name, x, r, **opts), raw, ch, 1e-5)
            assert np.all(np.isfinite(grad)), (fn.__name__, ch)


@pytest.mark.parametrize("seed", SEEDS)
def test_finite_differences_of_terms_match_analytic_gradients(seed):
    # perturbing one raw channel at all pixels at once gives, per pixel, the partial
    # derivative of that pixel's term (the terms are pixel-separable)
    rng = np.random.default_rng(seed)
    x = make_x((2, 1, 3, 3), rng)
    y = y_of(x)[:, 0]
    raw = make_raw("gaussian", x.shape, rng)
    mu = special.expit(raw[:, 0])
    sigma = 0.3

    def gaussian_terms(r):
        return ref.log_prob_terms("gaussian", x, r, sigma=sigma)  # (B, H, W)

    grad = central_difference(gaussian_terms, raw, 0, 1e-6)
    # d/draw [-0.5 ((y - mu)/sigma)^2] = (y - mu)/sigma^2 * mu (1 - mu)
    np.testing.assert_allclose(grad, (y - mu) / sigma**2 * mu * (1 - mu), rtol=1e-6, atol=1e-9)

    raw = make_raw("categorical", x.shape, rng)
    probs = special.softmax(raw, axis=1)  # (B, L, H, W) for C = 1
    for level in (0, 17, 255):
        grad = central_difference(
            lambda r: ref.log_pmf_terms("categorical", x, r), raw, level, 1e-6
        )
        # d/dlogit_j (logit_x - logsumexp) = [x == j] - softmax_j
        np.testing.assert_allclose(grad, (x[:, 0] == level) - probs[:, level], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["gaussian-pixel", "student-t", "logistic", "logistic-mixture"])
def test_finite_differences_converge_at_moderate_params(name):
    # smooth in every raw channel: central differences with eps and eps/2 agree
    rng = np.random.default_rng(3)
    x = make_x((2, 3, 2, 3), rng)
    raw = make_raw(name, x.shape, rng)

    def f(r):
        return ref.log_pmf(name, x, r, **base_opts(name))

    for ch in range(raw.shape[1]):
        g1 = central_difference(f, raw, ch, 1e-4)
        g2 = central_difference(f, raw, ch, 5e-5)
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- per-pixel terms


@pytest.mark.parametrize("name", PIXEL_NAMES)
def test_terms_sum_to_log_prob_and_depend_on_their_own_pixel(name):
    rng = np.random.default_rng(11)
    x = make_x((2, 3, 3, 4), rng)
    raw = make_raw(name, x.shape, rng)
    opts = base_opts(name, rng)
    pairs = ((ref.log_prob_terms, ref.log_prob), (ref.log_pmf_terms, ref.log_pmf))
    for terms_fn, total_fn in pairs:
        terms = terms_fn(name, x, raw, **opts)
        assert terms.shape == (2, 3, 4)
        np.testing.assert_allclose(terms.sum((1, 2)), total_fn(name, x, raw, **opts), rtol=1e-14)
        moved = raw.copy()
        moved[1, :, 2, 3] += rng.uniform(0.1, 0.5, size=raw.shape[1])  # (not a softmax shift)
        changed = terms_fn(name, x, moved, **opts) != terms
        assert changed[1, 2, 3]
        changed[1, 2, 3] = False
        assert not changed.any()


@pytest.mark.parametrize("name", NOT_PIXEL_NAMES)
def test_terms_refused_for_non_separable(name):
    rng = np.random.default_rng(0)
    x = make_x((2, 1, 2, 2), rng)
    raw = make_raw(name, x.shape, rng)
    for fn in (ref.log_prob_terms, ref.log_pmf_terms):
        with pytest.raises(VaeError, match=name):
            fn(name, x, raw)


# ----------------------------------------------------------------------------- scipy agreement


def y_of(x):
    return x / 255.0


def softclip(t):
    return LOG_SIGMA_MIN + np.logaddexp(0.0, t - LOG_SIGMA_MIN)


@pytest.mark.parametrize("seed", SEEDS)
def test_gaussian_densities_match_scipy_norm(seed):
    rng = np.random.default_rng(seed)
    x = make_x((3, 3, 4, 4), rng)
    y = y_of(x)
    raw = make_raw("gaussian", x.shape, rng)
    mu = special.expit(raw)
    sum_dims = (1, 2, 3)
    np.testing.assert_allclose(
        ref.log_prob("gaussian", x, raw, sigma=0.3),
        stats.norm.logpdf(y, mu, 0.3).sum(sum_dims),
        rtol=RTOL64,
    )
    np.testing.assert_allclose(
        ref.log_prob("gaussian", x, raw), stats.norm.logpdf(y, mu, 1.0).sum(sum_dims), rtol=RTOL64
    )
    np.testing.assert_allclose(
        ref.log_prob("sigma-learned", x, raw, log_sigma=-1.7),
        stats.norm.logpdf(y, mu, np.exp(softclip(-1.7))).sum(sum_dims),
        rtol=RTOL64,
    )
    sigma_batch = np.exp(softclip(0.5 * np.log(np.mean((y - mu) ** 2))))
    np.testing.assert_allclose(
        ref.log_prob("sigma", x, raw),
        stats.norm.logpdf(y, mu, sigma_batch).sum(sum_dims),
        rtol=RTOL64,
    )
    mse_image = np.mean((y - mu) ** 2, axis=sum_dims, keepdims=True)  # (B, 1, 1, 1)
    sigma_image = np.exp(softclip(0.5 * np.log(mse_image)))
    np.testing.assert_allclose(
        ref.log_prob("sigma-image", x, raw),
        stats.norm.logpdf(y, mu, sigma_image).sum(sum_dims),
        rtol=RTOL64,
    )
    raw2 = make_raw("gaussian-pixel", x.shape, rng)
    mu2, sigma2 = special.expit(raw2[:, :3]), np.exp(softclip(raw2[:, 3:]))
    np.testing.assert_allclose(
        ref.log_prob("gaussian-pixel", x, raw2),
        stats.norm.logpdf(y, mu2, sigma2).sum(sum_dims),
        rtol=RTOL64,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_student_t_density_matches_scipy_t(seed):
    rng = np.random.default_rng(seed)
    x = make_x((3, 3, 4, 4), rng)
    raw = make_raw("student-t", x.shape, rng)
    mu = special.expit(raw[:, :3])
    scale = np.exp(softclip(raw[:, 3:6]))
    df = STUDENT_T_MIN_DF + np.logaddexp(0.0, raw[:, 6:])
    np.testing.assert_allclose(
        ref.log_prob("student-t", x, raw),
        stats.t.logpdf(y_of(x), df, loc=mu, scale=scale).sum((1, 2, 3)),
        rtol=RTOL64,
    )


def scipy_log_bin_mass(dist, x, loc):
    """log of the mass of x's bin (8-bit) under a frozen scipy distribution symmetric
    about ``loc``, as a difference of CDFs on the lower tail or of SFs on the upper one."""
    lo = np.where(x == 0, -np.inf, (x - 0.5) / 255.0)
    hi = np.where(x == 255, np.inf, (x + 0.5) / 255.0)
    upper = x / 255.0 > loc
    mass = np.where(upper, dist.sf(lo) - dist.sf(hi), dist.cdf(hi) - dist.cdf(lo))
    return np.log(mass)


@pytest.mark.parametrize("seed", SEEDS)
def test_bin_masses_match_scipy_cdf_differences(seed):
    # moderate parameters (scales 0.05..0.3, means inside [0, 1]: at most ~19 scales
    # from any level), where a plain difference of CDFs (or SFs) is accurate enough
    rng = np.random.default_rng(seed)
    x = make_x((2, 3, 4, 4), rng)
    shape = x.shape
    mu = rng.uniform(0.05, 0.95, size=shape)
    raw_mu = special.logit(mu)
    raw_log_scale = np.log(rng.uniform(0.05, 0.3, size=shape))
    scale = np.exp(softclip(raw_log_scale))

    logistic_raw = np.concatenate([mu, raw_log_scale], axis=1)
    np.testing.assert_allclose(
        ref.log_pmf("logistic", x, logistic_raw),
        scipy_log_bin_mass(stats.logistic(loc=mu, scale=scale), x, mu).sum((1, 2, 3)),
        rtol=1e-9,
    )
    gaussian_raw = np.concatenate([raw_mu, raw_log_scale], axis=1)
    np.testing.assert_allclose(
        ref.log_pmf("gaussian-pixel", x, gaussian_raw),
        scipy_log_bin_mass(stats.norm(loc=mu, scale=scale), x, mu).sum((1, 2, 3)),
        rtol=1e-9,
    )
    raw_df = rng.normal(size=shape)
    df = STUDENT_T_MIN_DF + np.logaddexp(0.0, raw_df)
    t_raw = np.concatenate([raw_mu, raw_log_scale, raw_df], axis=1)
    np.testing.assert_allclose(
        ref.log_pmf("student-t", x, t_raw),
        scipy_log_bin_mass(stats.t(df, loc=mu, scale=scale), x, mu).sum((1, 2, 3)),
        rtol=1e-9,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_discrete_decoders_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = make_x((2, 3, 3, 3), rng)
    # categorical: softmax probability of the observed level
    raw = make_raw("categorical", x.shape, rng).reshape(2, 256, 3, 3, 3)
    probs = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    want = np.log(np.take_along_axis(probs, x[:, None].astype(np.int64), axis=1)).sum((1, 2, 3, 4))
    np.testing.assert_allclose(
        ref.log_prob("categorical", x, raw.reshape(2, 768, 3, 3)), want, rtol=RTOL64
    )
    # bitwise: independent Bernoulli bits, most significant first
    raw = make_raw("bitwise", x.shape, rng)
    logits = raw.reshape(2, 8, 3, 3, 3)
    bits = np.stack([(x >> (7 - b)) & 1 for b in range(8)], axis=1)
    want = stats.bernoulli.logpmf(bits, special.expit(logits)).sum((1, 2, 3, 4))
    np.testing.assert_allclose(ref.log_prob("bitwise", x, raw), want, rtol=RTOL64)
    # bernoulli on binarized data is the Bernoulli PMF
    binary = (x >= 128).astype(np.uint8) * 255
    raw = make_raw("bernoulli", x.shape, rng)
    want = stats.bernoulli.logpmf(binary // 255, special.expit(raw)).sum((1, 2, 3))
    np.testing.assert_allclose(ref.log_prob("bernoulli", binary, raw), want, rtol=RTOL64)
    # bernoulli on grey data: y*l - softplus(l)
    raw = make_raw("bernoulli", x.shape, rng)
    want = (y_of(x) * raw - np.logaddexp(0.0, raw)).sum((1, 2, 3))
    np.testing.assert_allclose(ref.log_prob("bernoulli", x, raw), want, rtol=RTOL64)


def test_bin_masses_match_high_precision_at_extremes():
    # 200-digit mpmath masses: narrow scales at the floor, wide scales, deep tails
    mp = pytest.importorskip("mpmath")
    from vaecli.reference.likelihoods import (
        gaussian_log_mass,
        logistic_log_mass,
        student_t_log_mass,
    )

    mp.mp.dps = 200
    half = mp.mpf(1) / 510

    def edges(k):
        lo = -mp.inf if k == 0 else mp.mpf(k) / 255 - half
        hi = mp.inf if k == 255 else mp.mpf(k) / 255 + half
        return lo, hi

    def t_cdf(z, df):
        if z == -mp.inf:
            return mp.mpf(0)
        if z == mp.inf:
            return mp.mpf(1)
        tail = mp.betainc(mp.mpf(df) / 2, mp.mpf(1) / 2, 0, df / (df + z * z), regularized=True) / 2
        return tail if z < 0 else 1 - tail

    def logistic_cdf(z):
        return mp.mpf(0) if z == -mp.inf else 1 / (1 + mp.exp(-z))

    def reference_mass(cdf, k, mu, scale):
        lo, hi = edges(k)
        z_lo, z_hi = (lo - mu) / scale, (hi - mu) / scale
        if z_lo + z_hi > 0:  # the smaller tail, so the 200 digits are not needed
            z_lo, z_hi = -z_hi, -z_lo
        return float(mp.log(cdf(z_hi) - cdf(z_lo)))

    for k in (0, 1, 128, 254, 255):
        for mu in (0.0, 1.0, 0.3):
            for log_scale in (LOG_SIGMA_MIN, -2.0, 0.0, 1.37, 1.38, 30.0):
                level = np.array(k)
                m, s = mp.mpf(mu), mp.exp(mp.mpf(log_scale))
                cases = [
                    (gaussian_log_mass(level, mu, log_scale, 256), mp.ncdf),
                    (logistic_log_mass(level, mu, log_scale, 256), logistic_cdf),
                    (
                        student_t_log_mass(level, mu, log_scale, np.array(2.5), 256),
                        lambda z: t_cdf(z, mp.mpf(2.5)),
                    ),
                    (
                        student_t_log_mass(level, mu, log_scale, np.array(102.0), 256),
                        lambda z: t_cdf(z, mp.mpf(102)),
                    ),
                ]
                for got, cdf in cases:
                    np.testing.assert_allclose(got, reference_mass(cdf, k, m, s), rtol=1e-12)


def test_student_t_tail_log_cdf_is_exact_where_scipy_underflows():
    df = np.array([2.0, 2.7, 10.0, 102.0])
    for t in (-3.0, -50.0, -400.0):
        np.testing.assert_allclose(
            stable.student_t_log_cdf_tail(t, df), stats.t.logcdf(t, df), rtol=1e-12
        )
    # scipy's log(cdf) is -inf here; the tail form is finite and decreasing
    far = stable.student_t_log_cdf(np.array([-1e5, -1e20, -1e43]), np.array(102.0))
    assert np.all(np.isfinite(far)) and np.all(np.diff(far) < 0)


# ----------------------------------------------------------------------------- sigma-VAE algebra


@pytest.mark.parametrize("seed", SEEDS)
def test_analytic_sigma_maximizes_shared_sigma_likelihood(seed):
    rng = np.random.default_rng(seed)
    x = make_x((4, 3, 5, 5), rng)
    raw = make_raw("sigma", x.shape, rng)
    mse = np.mean((y_of(x) - special.expit(raw)) ** 2)
    assert mse > 100 * np.exp(2 * LOG_SIGMA_MIN)  # far above the floor's sigma^2
    grid = np.sqrt(mse) * np.exp(np.linspace(-0.5, 0.5, 201))
    on_grid = np.array([ref.log_prob("gaussian", x, raw, sigma=s).sum() for s in grid])
    # without the floor sigma = sqrt(MSE) exactly: the maximum
    analytic = ref.log_prob("sigma", x, raw, log_sigma_min=None).sum()
    assert on_grid.max() <= analytic + 1e-9 * abs(analytic)
    best = grid[np.argmax(on_grid)]
    assert abs(np.log(best / np.sqrt(mse))) <= 0.5 * (1.0 / 200) + 1e-12  # within one grid step
    # the softclip moves sigma up by log1p(exp(-(log sigma* - floor))), negligible here
    floored = ref.log_prob("sigma", x, raw).sum()
    assert floored <= analytic
    np.testing.assert_allclose(floored, analytic, rtol=1e-3)
    # and the fixed sigma equals it: log_prob(sigma, sigma=s) == log_prob(gaussian, s)
    np.testing.assert_allclose(
        ref.log_prob("sigma", x, raw, sigma=np.sqrt(mse)),
        ref.log_prob("gaussian", x, raw, sigma=np.sqrt(mse)),
        rtol=1e-14,
    )


@pytest.mark.parametrize("sigma", [0.02, 0.1, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_sigma_vae_is_beta_vae_with_beta_two_sigma_squared(seed, sigma):
    rng = np.random.default_rng(seed)
    x = make_x((6, 3, 4, 4), rng)
    dims = 3 * 4 * 4
    raw = make_raw("gaussian", x.shape, rng)
    kl = rng.uniform(0.0, 50.0, size=6)
    sse = ((y_of(x) - special.expit(raw)) ** 2).sum((1, 2, 3))
    sigma_vae = -ref.log_prob("gaussian", x, raw, sigma=sigma) + kl
    beta = 2.0 * sigma**2
    beta_vae = sse + beta * kl  # MSE-loss beta-VAE
    const = dims * (np.log(sigma) + 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(sigma_vae, beta_vae / beta + const, rtol=1e-12)
    # so both objectives order any two candidates the same way
    order = np.argsort(sigma_vae)
    np.testing.assert_array_equal(order, np.argsort(beta_vae))


# ----------------------------------------------------------------------------- KL, log-mean-exp


@pytest.mark.parametrize("seed", SEEDS)
def test_gaussian_kl_closed_form_and_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(3, 4))
    logvar = rng.normal(size=(3, 4)) * 0.5
    kl = ref.gaussian_kl(mu, logvar)
    assert kl.shape == (3,) and kl.dtype == np.float64
    # closed form per dimension: log(1/s) + (s^2 + mu^2)/2 - 1/2
    s = np.exp(0.5 * logvar)
    np.testing.assert_allclose(kl, (-np.log(s) + (s**2 + mu**2) / 2 - 0.5).sum(1), rtol=1e-12)
    # Monte Carlo E_q[log q(z) - log p(z)] with 200k samples: SE ~ 0.01
    z = mu + s * rng.standard_normal(size=(200_000, 3, 4))
    log_ratio = stats.norm.logpdf(z, mu, s) - stats.norm.logpdf(z)
    mc = log_ratio.sum(2)
    se = mc.std(0) / np.sqrt(mc.shape[0])
    assert np.all(np.abs(mc.mean(0) - kl) < 5 * se)
    np.testing.assert_allclose(ref.gaussian_kl(np.zeros((2, 5)), np.zeros((2, 5))), 0.0, atol=0)
    tiny = ref.gaussian_kl(np.zeros((1, 1)), np.full((1, 1), 1e-10))
    np.testing.assert_allclose(tiny, 0.25e-20, rtol=1e-6)  # 0.5 (e^v - 1 - v) ~ v^2/4


def test_log_mean_exp():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 3)) * 3
    np.testing.assert_allclose(ref.log_mean_exp(a), np.log(np.mean(np.exp(a), axis=0)), rtol=1e-13)
    np.testing.assert_allclose(
        ref.log_mean_exp(a, axis=1), np.log(np.mean(np.exp(a), axis=1)), rtol=1e-13
    )
    big = np.array([[1000.0, -1000.0], [1000.0, -1000.0]])
    np.testing.assert_allclose(ref.log_mean_exp(big), [1000.0, -1000.0], rtol=1e-15)
    np.testing.assert_allclose(ref.log_mean_exp(np.array([1000.0, -1000.0])), 1000.0 - np.log(2))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_vae_error():
    rng = np.random.default_rng(0)
    x = make_x((2, 1, 2, 2), rng)
    raw = make_raw("logistic", x.shape, rng)
    with pytest.raises(VaeError, match="integer"):
        ref.log_prob("logistic", x.astype(np.float64), raw)
    with pytest.raises(VaeError, match="min 0, max 256"):
        ref.log_prob("logistic", x.astype(np.int64) + (x == 255), raw)
    with pytest.raises(VaeError, match="min -1"):
        ref.log_pmf("logistic", x.astype(np.int64) - (x == 0), raw)
    with pytest.raises(VaeError, match="max 255"):
        ref.log_prob("logistic", x, raw[:, :2], n_bits=3)  # levels 0..7 only
    with pytest.raises(VaeError, match=r"logistic.*\(2, 2, 2, 2\)"):
        ref.log_prob("logistic", x, raw[:, :1])
    with pytest.raises(VaeError, match="unknown likelihood"):
        ref.log_prob("gauss", x, raw)
    with pytest.raises(VaeError, match="unknown likelihood"):
        ref.mean("gauss", raw)
    with pytest.raises(VaeError, match="sigma-learned.*log_sigma"):
        ref.log_prob("sigma-learned", x, raw[:, :1])
    with pytest.raises(VaeError, match="unknown option"):
        ref.log_prob("logistic", x, raw, sigmaa=1.0)
    with pytest.raises(VaeError, match="sigma must be positive"):
        ref.log_prob("gaussian", x, raw[:, :1], sigma=0.0)
    with pytest.raises(VaeError, match="log_sigma"):
        ref.log_prob("sigma-learned", x, raw[:, :1], log_sigma=np.zeros(3))
    with pytest.raises(VaeError, match="n_bits"):
        ref.log_prob("logistic", x, raw, n_bits=0)
    with pytest.raises(VaeError, match="sigma"):
        ref.sample("sigma", raw[:, :1])  # sigma comes from data otherwise
    with pytest.raises(VaeError, match="Generator"):
        ref.sample("logistic", raw, generator=np.random.RandomState(0))


# ----------------------------------------------------------------------------- mean and sample


@pytest.mark.parametrize("name", ["categorical", "bitwise"])
def test_mean_is_the_expected_level(name):
    rng = np.random.default_rng(5)
    raw = make_raw(name, (1, 1, 1, 1), rng)
    p = pmf_over_levels(name, raw)
    expected = (np.arange(256) * p).sum() / 255.0
    np.testing.assert_allclose(ref.mean(name, raw)[0, 0, 0, 0], expected, rtol=1e-12)


def test_mixture_mean_follows_coupled_component_means():
    k_mix = 2
    raw = np.zeros((1, 10 * k_mix, 1, 1))
    raw[0, :k_mix, 0, 0] = [0.0, np.log(3.0)]  # weights 1/4, 3/4
    raw[0, k_mix : k_mix + 6, 0, 0] = [0.2, 0.3, 0.1, 0.4, 0.1, 0.2]  # mu (K, C)
    raw[0, k_mix + 12 :, 0, 0] = np.arctanh([0.5, -0.5, 0.25, 0.0, 0.5, 0.5])  # a, b, c per k
    m_k0 = [0.2, 0.3 + 0.5 * 0.2, 0.1 - 0.5 * 0.2 + 0.25 * (0.3 + 0.5 * 0.2)]
    m_k1 = [0.4, 0.1 + 0.0, 0.2 + 0.5 * 0.4 + 0.5 * 0.1]
    want = 0.25 * np.array(m_k0) + 0.75 * np.array(m_k1)
    np.testing.assert_allclose(
        ref.mean("logistic-mixture", raw, mixtures=k_mix)[0, :, 0, 0], want, rtol=1e-12
    )


@pytest.mark.parametrize("name", NAMES)
def test_sample_levels_in_range_and_uint8(name):
    rng = np.random.default_rng(2)
    for extreme in (False, True):
        raw = make_raw(name, (3, 3, 4, 4), rng, extreme=extreme)
        opts = base_opts(name, rng, extreme=extreme)
        out = ref.sample(name, raw, generator=np.random.default_rng(0), **opts)
        assert out.dtype == np.uint8 and out.shape == (3, 3, 4, 4)
    raw = make_raw(name, (2, 1, 2, 2), rng, n_bits=9)
    gen = np.random.default_rng(0)
    out = ref.sample(name, raw, generator=gen, n_bits=9, **base_opts(name, rng))
    assert out.dtype == np.uint16 and out.max() <= 511
    if name == "bernoulli":
        assert set(np.unique(out)) <= {0, 511}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "name",
    [
        "categorical",
        "logistic",
        "gaussian",
        "gaussian-pixel",
        "student-t",
        "bitwise",
        "logistic-mixture",
        "sigma",
    ],
)
def test_sample_mean_matches_pmf_expected_level(name, seed):
    rng = np.random.default_rng(seed)
    raw = make_raw(name, (1, 1, 1, 1), rng)
    opts = base_opts(name, rng)
    p = pmf_over_levels(name, raw, **opts)
    level = np.arange(256)
    expected = (level * p).sum()
    var = ((level - expected) ** 2 * p).sum()
    n = 20_000
    draws = ref.sample(
        name, np.repeat(raw, n, axis=0), generator=np.random.default_rng(seed), **opts
    )
    # 5 standard errors of the sample mean: a false alarm about once in 1.7 million
    assert abs(draws.mean() - expected) <= 5 * np.sqrt(var / n) + 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_rgb_mixture_sample_histogram_matches_joint_pmf(seed):
    # drawing R, G, B in order with the coupling on the drawn values reproduces the
    # joint PMF over all 8^3 values (n_bits = 3)
    rng = np.random.default_rng(seed)
    x = all_levels(3, channels=3)
    raw = make_raw("logistic-mixture", (1, 3, 1, 1), rng, n_bits=3, mixtures=3)
    raw[:, 3 + 18 :] = rng.normal(size=(1, 9, 1, 1)) * 2  # strong coupling
    raw[:, 3 + 9 : 3 + 18] = rng.uniform(-2.5, -1.0, size=(1, 9, 1, 1))  # scales ~ a bin
    p = np.exp(ref.log_pmf("logistic-mixture", x, np.repeat(raw, 512, 0), n_bits=3, mixtures=3))
    n = 100_000
    draws = ref.sample(
        "logistic-mixture",
        np.repeat(raw, n, 0),
        generator=np.random.default_rng(seed),
        n_bits=3,
        mixtures=3,
    )[:, :, 0, 0].astype(np.int64)
    freq = np.bincount(draws[:, 0] * 64 + draws[:, 1] * 8 + draws[:, 2], minlength=512) / n
    # per cell 5 binomial standard errors (plus one count for empty cells)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1.0 / n)
