"""The CuPy backend's formulas (vaecli/backends/cupy_backend/formulas.py) run on the
CPU with xp = numpy: values against the float64 reference, analytic gradients against
central finite differences of the reference's value (and against torch autograd when
the torch backend is there), float64 and float32, every likelihood, both kinds.

The fused CUDA kernels mirror these formulas; here they are compiled as host C++
(vaecli.backends.cupy_backend.host) and run through kernels.evaluate against them, and
compile-checked with nvcc when it is on PATH.  tests/test_cupy_gpu.py runs them on a GPU.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from vaecli import registry
from vaecli.backends.cupy_backend import formulas
from vaecli.errors import VaeError

NAMES = registry.NAMES
KINDS = ("log_prob", "log_pmf")
SEEDS = (0, 1)
LEVELS = 256
B, H, W = 3, 5, 5
MIXTURES = 3  # small K keeps the test fast; the default K = 10 has its own test
LOG_SIGMA = 0.3  # raw log_sigma option of sigma-learned

# Tolerances tied to the dtype of the computation.
VALUE_RTOL = {np.float64: 1e-10, np.float32: 2e-5}
GRAD_RTOL = {np.float64: 1e-8, np.float32: 2e-3}
FD_EPS = 1e-6  # central-difference step (float64)
FD_RTOL = 1e-5  # relative to sum |grad * direction|


def _ref():
    return importlib.import_module("vaecli.reference")


def _numpy():
    return formulas.numpy_namespace()


def _opts(name, **extra):
    opts = {"mixtures": MIXTURES}
    if name == "sigma-learned":
        opts["log_sigma"] = LOG_SIGMA
    opts.update(extra)
    return opts


def make_inputs(name, channels, seed, mixtures=MIXTURES):
    """Seeded x (B, C, H, W) uint8 with edge pixels 0 and 255 (and 1, 254) in every
    image and channel, and raw of the registry's shape with extreme parameters at
    fixed pixels: logits +-100, log-scale raw -100 (the softclip floor is active),
    df raw +-100, coupling raw +-100."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, LEVELS, size=(B, channels, H, W)).astype(np.uint8)
    x[:, :, 0, 0] = 0
    x[:, :, 0, 1] = LEVELS - 1
    x[:, :, 0, 2] = 1
    x[:, :, 0, 3] = LEVELS - 2
    out = registry.out_channels(name, channels, mixtures=mixtures)
    raw = rng.normal(0.0, 1.5, size=(B, out, H, W))
    if name == "logistic-mixture":
        k, c = mixtures, channels
        raw[:, k : k + k * c] = rng.uniform(-0.2, 1.2, size=(B, k * c, H, W))  # means
        raw[:, :k, 1, 0] = 100.0  # mixture logits
        raw[:, :k, 1, 1] = -100.0
        raw[:, 0, 1, 2] = 100.0
        raw[:, k + k * c : k + 2 * k * c, 2, :] = -100.0  # log-scales at the floor
        raw[:, k : k + k * c, 2, 1] = 100.0  # a mean far away, at the floor
        if c == 3:
            raw[:, k + 2 * k * c :, 3, 0] = 100.0  # coupling tanh -> 1
            raw[:, k + 2 * k * c :, 3, 1] = -100.0
        return x, raw
    per = registry.params_per_channel(name)
    params = registry.info(name).params
    view = raw.reshape(B, per, channels, H, W)
    if name in ("categorical", "bitwise"):
        view[:, :, :, 1, 0] = 100.0
        view[:, :, :, 1, 1] = -100.0
        view[:, ::2, :, 1, 2] = 100.0
        view[:, 1::2, :, 1, 2] = -100.0
        view[:, 0, :, 1, 3] = 100.0
        return x, raw
    for p, param in enumerate(params):
        if param == "mu" and name == "logistic":
            view[:, p] = rng.uniform(-0.2, 1.2, size=(B, channels, H, W))
            view[:, p, :, 1, 0] = 100.0
            view[:, p, :, 1, 1] = -100.0
        elif param in ("mu", "logit"):
            view[:, p, :, 1, 0] = 100.0
            view[:, p, :, 1, 1] = -100.0
        elif param in ("log_sigma", "log_scale"):
            view[:, p, :, 2, :] = -100.0
        elif param == "df":
            view[:, p, :, 3, 0] = 100.0
            view[:, p, :, 3, 1] = -100.0
    return x, raw


def _ref_value(name, kind, x, raw, **opts):
    return getattr(_ref(), kind)(name, x, raw, **opts)


def _has_grad(name, kind):
    return not (name == "student-t" and kind == "log_pmf")


CASES = [
    pytest.param(name, kind, c, seed, id=f"{name}-{kind}-C{c}-seed{seed}")
    for name in NAMES
    for kind in KINDS
    for c in (1, 3)
    for seed in SEEDS
]


# ------------------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name, kind, channels, seed", CASES)
def test_value_matches_reference(name, kind, channels, seed, dtype):
    x, raw = make_inputs(name, channels, seed)
    opts = _opts(name)
    want = _ref_value(name, kind, x, raw, **opts)
    got = formulas.value(name, x, raw.astype(dtype), kind, ns=_numpy(), **opts)
    assert got.dtype == dtype and got.shape == (B,)
    assert np.all(np.isfinite(got))
    if dtype == np.float32:
        # float32 inputs are rounded parameters: compare with the reference at those.
        want = _ref_value(name, kind, x, raw.astype(np.float32).astype(np.float64), **opts)
    np.testing.assert_allclose(got, want, rtol=VALUE_RTOL[dtype], atol=VALUE_RTOL[dtype] * 10)


# ---------------------------------------------------------------------- gradients


def _ref_terms(name, kind, x, raw, **opts):
    """The reference's per-pixel terms (B, H, W) where the likelihood is pixel-
    separable, else its values (B,): finite differences subtract these elementwise
    before summing, so pixels a step does not touch cancel exactly."""
    if registry.info(name).separable == "pixel":
        return getattr(_ref(), f"{kind}_terms")(name, x, raw, **opts)
    return _ref_value(name, kind, x, raw, **opts)


def _weighted_terms(name, kind, x, u, **opts):
    def terms(r):
        t = _ref_terms(name, kind, x, r, **opts)
        return u.reshape((-1,) + (1,) * (t.ndim - 1)) * t

    return terms


def _fd_directional(terms, raw, direction):
    diff = terms(raw + FD_EPS * direction) - terms(raw - FD_EPS * direction)
    return float(np.sum(diff)) / (2 * FD_EPS)


def _check_against_fd(terms, raw, grad, rng, coordinates=6, directions=2):
    """grad . v against central differences of sum(terms) along random directions v and
    along a few single coordinates (largest-gradient ones and random ones)."""
    vs = [rng.normal(size=raw.shape) for _ in range(directions)]
    flat = np.abs(grad).reshape(-1)
    picks = list(np.argsort(flat)[-coordinates // 2 :])
    picks += list(rng.integers(0, flat.size, size=coordinates - len(picks)))
    for i in picks:
        v = np.zeros(raw.size)
        v[i] = 1.0
        vs.append(v.reshape(raw.shape))
    for v in vs:
        fd = _fd_directional(terms, raw, v)
        an = float(np.sum(grad * v))
        scale = float(np.sum(np.abs(grad * v))) + 1.0
        assert abs(fd - an) <= FD_RTOL * scale, (fd, an, scale)


@pytest.mark.parametrize("name, kind, channels, seed", CASES)
def test_grad_matches_finite_differences(name, kind, channels, seed):
    x, raw = make_inputs(name, channels, seed)
    opts = _opts(name)
    if not _has_grad(name, kind):
        with pytest.raises(VaeError, match="evaluation metric only"):
            formulas.value_and_grad(name, x, raw, kind, ns=_numpy(), **opts)
        return
    rng = np.random.default_rng(1000 + seed)
    u = rng.uniform(0.5, 2.0, size=B)  # upstream weights
    value, grad, _ = formulas.value_and_grad(name, x, raw, kind, ns=_numpy(), upstream=u, **opts)
    assert grad.shape == raw.shape and grad.dtype == np.float64
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, _ref_value(name, kind, x, raw, **opts), rtol=1e-10)

    _check_against_fd(_weighted_terms(name, kind, x, u, **opts), raw, grad, rng)


@pytest.mark.parametrize("name", ["sigma", "sigma-image"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_analytic_sigma_upstream_gradient(name, kind, seed):
    """The batch sigma couples images: d(sum_b g_b value_b)/d raw for a general g
    (negative entries too) is not the unweighted gradient scaled per image."""
    x, raw = make_inputs(name, 3, seed)
    rng = np.random.default_rng(2000 + seed)
    g = rng.normal(size=B)
    _, grad, _ = formulas.value_and_grad(name, x, raw, kind, ns=_numpy(), upstream=g)

    terms = _weighted_terms(name, kind, x, g)
    _check_against_fd(terms, raw, grad, rng, coordinates=8, directions=4)
    if name == "sigma":
        _, plain, _ = formulas.value_and_grad(name, x, raw, kind, ns=_numpy())
        assert not np.allclose(grad, plain * g[:, None, None, None])


# The reference's Gaussian bin warns of an overflow at sigma = e^-100 (no floor);
# its values stay right there (the finite differences agree).
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.parametrize("floor", [-6.0, None], ids=["floor", "nofloor"])
def test_sigma_learned_log_sigma_gradient(kind, seed, floor):
    x, raw = make_inputs("sigma-learned", 3, seed)
    rng = np.random.default_rng(3000 + seed)
    u = rng.normal(size=B)
    for log_sigma in (LOG_SIGMA, -100.0, -5.0):
        ev = formulas.evaluate(
            "sigma-learned", x, raw, kind, ns=_numpy(), upstream=u,
            log_sigma=log_sigma, log_sigma_min=floor,
        )  # fmt: skip
        assert ev.grad_log_sigma.shape == (B,)

        def f(ls):
            t = _ref_terms("sigma-learned", kind, x, raw, log_sigma=ls, log_sigma_min=floor)
            return u[:, None, None] * t

        fd = float(np.sum(f(log_sigma + FD_EPS) - f(log_sigma - FD_EPS))) / (2 * FD_EPS)
        an = float(ev.grad_log_sigma.sum())
        assert abs(fd - an) <= FD_RTOL * (abs(an) + float(np.abs(ev.grad_log_sigma).sum()) + 1)
        _, _, g_ls = formulas.value_and_grad(
            "sigma-learned", x, raw, kind, ns=_numpy(), upstream=u,
            log_sigma=log_sigma, log_sigma_min=floor,
        )  # fmt: skip
        assert g_ls.shape == () and float(g_ls) == pytest.approx(an, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(
    "name, kind, channels, seed",
    [c for c in CASES if c.values[3] == 0 and _has_grad(*c.values[:2])],
)
def test_float32_gradient_matches_float64(name, kind, channels, seed):
    x, raw = make_inputs(name, channels, seed)
    raw32 = raw.astype(np.float32)
    opts = _opts(name)
    raw64 = raw32.astype(np.float64)
    v64, g64, _ = formulas.value_and_grad(name, x, raw64, kind, ns=_numpy(), **opts)
    v32, g32, _ = formulas.value_and_grad(name, x, raw32, kind, ns=_numpy(), **opts)
    assert v32.dtype == np.float32 and g32.dtype == np.float32
    assert np.all(np.isfinite(g32))
    atol = GRAD_RTOL[np.float32] * max(1.0, float(np.abs(g64).max())) * 1e-2
    np.testing.assert_allclose(g32, g64, rtol=GRAD_RTOL[np.float32], atol=atol)


def _torch_backend():
    try:
        return importlib.import_module("vaecli.backends.torch_backend")
    except ImportError:
        return None


@pytest.mark.parametrize("name, kind, channels, seed", CASES)
def test_grad_matches_torch_autograd(name, kind, channels, seed):
    tb = _torch_backend()
    if tb is None:
        pytest.skip("torch or vaecli.backends.torch_backend is not importable")
    import torch

    x, raw = make_inputs(name, channels, seed)
    opts = _opts(name)
    rng = np.random.default_rng(4000 + seed)
    u = rng.normal(size=B)
    raw_t = torch.tensor(raw, dtype=torch.float64, requires_grad=True)
    topts = dict(opts)
    ls_t = None
    if name == "sigma-learned":
        ls_t = torch.tensor(LOG_SIGMA, dtype=torch.float64, requires_grad=True)
        topts["log_sigma"] = ls_t
    value_t = getattr(tb, kind)(name, torch.from_numpy(x), raw_t, **topts)
    np.testing.assert_allclose(
        formulas.value(name, x, raw, kind, ns=_numpy(), **opts),
        value_t.detach().numpy(),
        rtol=1e-9,
    )
    if not _has_grad(name, kind):
        return
    (value_t * torch.from_numpy(u)).sum().backward()
    ev = formulas.evaluate(name, x, raw, kind, ns=_numpy(), upstream=u, **opts)
    want = raw_t.grad.numpy()
    atol = 1e-9 * max(1.0, np.abs(want).max())
    np.testing.assert_allclose(ev.grad_raw, want, rtol=1e-7, atol=atol)
    if ls_t is not None:
        assert float(ev.grad_log_sigma.sum()) == pytest.approx(float(ls_t.grad), rel=1e-8)


# ------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", [n for n in NAMES if n != "bernoulli"])
@pytest.mark.parametrize("channels, n_bits", [(1, 8), (3, 3)], ids=["gray-8bit", "rgb-3bit"])
def test_pmf_sums_to_one(name, channels, n_bits):
    """Every PMF sums to 1 over the levels: one pixel, the batch enumerating all
    L^C values of it with the same raw (RGB on 3 bits: 512 colours, which covers the
    mixture's channel coupling).  sigma and sigma-image get a fixed sigma (their batch
    sigma depends on x, so they are not one distribution over x)."""
    levels = 2**n_bits
    rng = np.random.default_rng(7)
    out = registry.out_channels(name, channels, n_bits=n_bits, mixtures=MIXTURES)
    raw1 = rng.normal(0.0, 1.0, size=(1, out, 1, 1))
    if name in ("logistic", "logistic-mixture"):
        k = MIXTURES if name == "logistic-mixture" else 0
        n_mu = channels * (MIXTURES if k else 1)
        raw1[:, k : k + n_mu] = rng.uniform(0.0, 1.0, size=(1, n_mu, 1, 1))
    grid = np.stack(np.meshgrid(*[np.arange(levels)] * channels, indexing="ij"), axis=-1)
    x = grid.reshape(-1, channels, 1, 1).astype(np.uint8)
    raw = np.repeat(raw1, x.shape[0], axis=0)
    extra = {"sigma": 0.1} if name in ("sigma", "sigma-image") else {}
    opts = _opts(name, n_bits=n_bits, **extra)
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        log_p = formulas.value(name, x, raw.astype(dtype), "log_pmf", ns=_numpy(), **opts)
        assert float(np.exp(log_p.astype(np.float64)).sum()) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_one_component_mixture_is_the_logistic(seed):
    x, raw = make_inputs("logistic", 1, seed)
    mix = np.concatenate([np.zeros((B, 1, H, W)), raw], axis=1)  # logit, mu, log-scale
    for kind in KINDS:
        v_log, g_log, _ = formulas.value_and_grad("logistic", x, raw, kind, ns=_numpy())
        v_mix, g_mix, _ = formulas.value_and_grad(
            "logistic-mixture", x, mix, kind, ns=_numpy(), mixtures=1
        )
        np.testing.assert_allclose(v_mix, v_log, rtol=1e-12)
        np.testing.assert_allclose(g_mix[:, 1:], g_log, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g_mix[:, 0], 0.0, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_default_mixture_count(seed):
    x, raw = make_inputs("logistic-mixture", 3, seed, mixtures=10)
    got = formulas.value("logistic-mixture", x, raw, ns=_numpy())
    np.testing.assert_allclose(got, _ref().log_prob("logistic-mixture", x, raw), rtol=1e-10)


@pytest.mark.parametrize("name", [n for n in NAMES if registry.info(n).continuous is False])
def test_discrete_log_pmf_equals_log_prob(name):
    x, raw = make_inputs(name, 3, 0)
    a = formulas.value_and_grad(name, x, raw, "log_prob", ns=_numpy(), **_opts(name))
    b = formulas.value_and_grad(name, x, raw, "log_pmf", ns=_numpy(), **_opts(name))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------- mean and sample


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_mean_matches_reference(name, channels):
    _, raw = make_inputs(name, channels, 5)
    opts = _opts(name)
    for dtype in (np.float64, np.float32):
        got = formulas.mean(name, raw.astype(dtype), ns=_numpy(), **opts)
        assert got.dtype == dtype and got.shape == (B, channels, H, W)
        assert np.all((got >= 0) & (got <= 1))
        want = _ref().mean(name, raw.astype(dtype).astype(np.float64), **opts)
        atol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=VALUE_RTOL[dtype], atol=atol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_sample_levels(name, channels):
    _, raw = make_inputs(name, channels, 6)
    opts = _opts(name, sigma=0.05) if name in ("sigma", "sigma-image") else _opts(name)
    a = formulas.sample(name, raw, generator=np.random.default_rng(0), ns=_numpy(), **opts)
    b = formulas.sample(name, raw, generator=np.random.default_rng(0), ns=_numpy(), **opts)
    assert a.dtype == np.uint8 and a.shape == (B, channels, H, W)
    np.testing.assert_array_equal(a, b)
    if name == "bernoulli":
        assert set(np.unique(a)) <= {0, LEVELS - 1}


@pytest.mark.parametrize(
    "name",
    ["gaussian-pixel", "logistic", "logistic-mixture", "categorical", "bitwise", "student-t"],
)
def test_sample_is_exact_for_a_point_mass(name):
    """Parameters that put (almost) all mass on level k: the sample is k (the
    softclip floor off, so that the scale e^-100 is far below half a bin)."""
    k = 77
    c = 3
    x = np.full((B, c, H, W), k, dtype=np.uint8)
    out = registry.out_channels(name, c, mixtures=MIXTURES)
    raw = np.zeros((B, out, H, W))
    y = k / (LEVELS - 1)
    if name == "gaussian-pixel" or name == "student-t":
        per = raw.reshape(B, -1, c, H, W)
        per[:, 0] = np.log(y / (1 - y))
        per[:, 1] = -100.0
        if name == "student-t":
            per[:, 2] = 100.0
    elif name == "logistic":
        per = raw.reshape(B, 2, c, H, W)
        per[:, 0] = y
        per[:, 1] = -100.0
    elif name == "logistic-mixture":
        m = MIXTURES
        raw[:, m : m + m * c] = y
        raw[:, m + m * c : m + 2 * m * c] = -100.0  # coupling raw 0: tanh 0
    elif name == "categorical":
        per = raw.reshape(B, LEVELS, c, H, W)
        per[:] = -100.0
        per[:, k] = 100.0
    elif name == "bitwise":
        per = raw.reshape(B, 8, c, H, W)
        bits = [(k >> (7 - j)) & 1 for j in range(8)]
        for j, bit in enumerate(bits):
            per[:, j] = 100.0 if bit else -100.0
    got = formulas.sample(
        name, raw, generator=np.random.default_rng(1), ns=_numpy(), mixtures=MIXTURES,
        log_sigma_min=None,
    )  # fmt: skip
    np.testing.assert_array_equal(got, x)


def test_sample_matches_pmf_in_distribution():
    """Draws of one logistic pixel follow its PMF (chi-square-free: total variation)."""
    n = 20000
    raw = np.zeros((n, 2, 1, 1))
    raw[:, 0] = 0.5
    raw[:, 1] = np.log(0.02)
    draws = formulas.sample("logistic", raw, generator=np.random.default_rng(3), ns=_numpy())
    freq = np.bincount(draws.reshape(-1), minlength=LEVELS) / n
    x = np.arange(LEVELS, dtype=np.uint8).reshape(LEVELS, 1, 1, 1)
    pmf = np.exp(formulas.value("logistic", x, raw[:LEVELS], "log_pmf", ns=_numpy()))
    assert 0.5 * np.abs(freq - pmf).sum() < 0.05


def test_latent_terms_match_reference():
    rng = np.random.default_rng(8)
    mu, logvar = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    np.testing.assert_allclose(
        formulas.gaussian_kl(mu, logvar, ns=_numpy()), _ref().gaussian_kl(mu, logvar), rtol=1e-12
    )
    a = rng.normal(scale=50.0, size=(5, 4))
    for axis in (0, 1):
        np.testing.assert_allclose(
            formulas.log_mean_exp(a, axis, ns=_numpy()), _ref().log_mean_exp(a, axis), rtol=1e-12
        )


# ------------------------------------------------------------------------ errors


def test_errors_are_vae_errors():
    x, raw = make_inputs("logistic", 1, 0)
    with pytest.raises(VaeError, match="float32 or float64"):
        formulas.value("logistic", x, raw.astype(np.float16), ns=_numpy())
    with pytest.raises(VaeError, match="needs raw decoder output of shape"):
        formulas.value("logistic", x, raw[:, :1], ns=_numpy())
    with pytest.raises(VaeError, match="integer array"):
        formulas.value("logistic", x.astype(np.float32), raw, ns=_numpy())
    with pytest.raises(VaeError, match="levels 0..255"):
        formulas.value("logistic", x.astype(np.int32) + 1, raw, ns=_numpy())
    with pytest.raises(VaeError, match="unknown option"):
        formulas.value("logistic", x, raw, ns=_numpy(), bogus=1)
    with pytest.raises(VaeError, match="kind must be"):
        formulas.value("logistic", x, raw, "log_density", ns=_numpy())
    with pytest.raises(VaeError, match="log_sigma"):
        formulas.value("sigma-learned", x, raw[:, :1], ns=_numpy())
    with pytest.raises(VaeError, match="option sigma"):
        formulas.sample("sigma", raw[:, :1], ns=_numpy())
    with pytest.raises(VaeError, match="unknown likelihood"):
        formulas.value("poisson", x, raw, ns=_numpy())


# ---------------------------------------------------- the backend without a device


def test_backend_imports_and_reports_unavailable_without_a_device():
    from vaecli.backends import INTERFACE, get_backend

    backend = get_backend("cupy")
    for fn in INTERFACE + ("value_and_grad",):
        assert callable(getattr(backend, fn)), fn
    ok, why = backend.available()
    assert isinstance(ok, bool) and isinstance(why, str)
    if not ok:
        assert why
        x, raw = make_inputs("logistic", 1, 0)
        with pytest.raises(VaeError, match="cannot run here"):
            backend.log_prob("logistic", x, raw)


def test_torch_bridge_imports_without_torch_or_cupy_work():
    bridge = importlib.import_module("vaecli.backends.cupy_backend.torch_bridge")
    assert callable(bridge.log_prob) and callable(bridge.log_pmf)


# ------------------------------------------------------------ the kernel sources


def test_kernel_constants_match_formulas():
    from vaecli.backends.cupy_backend import kernels

    defines = dict(re.findall(r"#define (K_[A-Z0-9_]+) \(?([-0-9.eE+]+)\)?", kernels.SOURCE))
    assert float(defines["K_LN2"]) == pytest.approx(formulas.LN2, rel=1e-15)
    assert float(defines["K_HALF_LOG_2PI"]) == pytest.approx(formulas.HALF_LOG_2PI, rel=1e-15)
    assert float(defines["K_SQRT_HALF"]) == pytest.approx(formulas.SQRT_HALF, rel=1e-15)
    assert float(defines["K_SQRT_2_OVER_PI"]) == pytest.approx(formulas.SQRT_2_OVER_PI, rel=1e-15)
    assert float(defines["K_LOG_NDTR_SWITCH"]) == formulas.LOG_NDTR_SWITCH
    assert float(defines["K_NORMAL_BIN_NARROW"]) == formulas.NORMAL_BIN_NARROW
    assert float(defines["K_SIMPSON_MAX_WIDTH_FLOAT32"]) == formulas.SIMPSON_MAX_WIDTH["float32"]
    assert float(defines["K_SIMPSON_MAX_WIDTH_FLOAT64"]) == formulas.SIMPSON_MAX_WIDTH["float64"]
    assert float(defines["K_TINY_BIN_WIDTH"]) == formulas.TINY_BIN_WIDTH
    for name in kernels.KERNEL_NAMES:
        assert f'extern "C" __global__ void {name}(' in kernels.SOURCE


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_sources_compile_with_nvcc(dtype, tmp_path):
    """What NVRTC will compile on the device, compiled here for sm_90 (H100/H200),
    with every warning an error (CuPy adds -ftz=true; so do we)."""
    from vaecli.backends.cupy_backend import kernels

    src = tmp_path / f"kernels_{dtype}.cu"
    src.write_text(kernels.source_for(dtype))
    result = subprocess.run(
        ["nvcc", "-c", "-arch=sm_90", "-ftz=true", "-Werror", "all-warnings",
         "-o", str(tmp_path / "k.o"), str(src)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# --------------------------------------- the CUDA kernels, compiled for the host
# vaecli.backends.cupy_backend.host turns the kernel source into host C++ (g++) and
# gives kernels.evaluate a launcher of it that checks every argument's C type.


@pytest.fixture(scope="module")
def host_launch(tmp_path_factory):
    from vaecli.backends.cupy_backend import host

    if not host.available():
        pytest.skip("g++ is not on PATH: the kernels cannot be compiled for the host")
    return host.launcher(tmp_path_factory.mktemp("host_kernels"))


def _kernel_eval(launch, name, x, raw, kind, **kw):
    from vaecli.backends.cupy_backend import kernels

    return kernels.evaluate(name, x, raw, kind, ns=_numpy(), launch=launch, **kw)


def _fused_cases():
    from vaecli.backends.cupy_backend import kernels

    return [c for c in CASES if c.values[0] in kernels.FUSED]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name, kind, channels, seed", _fused_cases())
def test_host_compiled_kernels_match_formulas(host_launch, name, kind, channels, seed, dtype):
    x, raw = make_inputs(name, channels, seed)
    raw = raw.astype(dtype)
    opts = _opts(name)
    u = np.random.default_rng(5000 + seed).normal(size=B).astype(dtype)
    host_launch.calls.clear()
    got = _kernel_eval(host_launch, name, x, raw, kind, upstream=u, **opts)
    assert host_launch.calls  # the kernels ran
    want = formulas.evaluate(name, x, raw.astype(np.float64), kind, ns=_numpy(), upstream=u, **opts)
    assert got.value.dtype == dtype and got.grad_raw.dtype == dtype
    assert got.grad_raw.shape == raw.shape
    assert np.all(np.isfinite(got.value)) and np.all(np.isfinite(got.grad_raw))
    vtol = VALUE_RTOL[dtype]
    np.testing.assert_allclose(got.value, want.value, rtol=vtol, atol=vtol * 10)
    rtol = GRAD_RTOL[dtype]
    atol = rtol * max(1.0, float(np.abs(want.grad_raw).max())) * 1e-2
    np.testing.assert_allclose(got.grad_raw, want.grad_raw, rtol=rtol, atol=atol)
    if name == "sigma-learned":
        np.testing.assert_allclose(got.grad_log_sigma, want.grad_log_sigma, rtol=rtol, atol=atol)
    else:
        assert got.grad_log_sigma is None
    value_only = _kernel_eval(host_launch, name, x, raw, kind, need_grad=False, **opts)
    assert value_only.grad_raw is None
    np.testing.assert_array_equal(value_only.value, got.value)


@pytest.mark.parametrize("log_sigma_raw", [0.0, 1.6, 6.4], ids=["sigma-1", "sigma-5", "sigma-600"])
def test_gaussian_bins_narrow_against_sigma_keep_float32_precision(host_launch, log_sigma_raw):
    """A bin narrow against sigma (8-bit data, sigma of 1 and more) has log Phi(q) and
    log Phi(p) equal to most of their digits: their difference lost about eps/d relative
    in float32 (3e-5 at sigma 1, 1e-3 at sigma 600), until Simpson's rule took such bins.
    One pixel an image, so each value is one bin's mass."""
    rng = np.random.default_rng(11)
    n = 256
    x = rng.integers(1, 255, (n, 1, 1, 1)).astype(np.uint8)  # inside bins: the edges are exact anyway
    raw = np.stack([rng.normal(0.0, 2.0, n), np.full(n, log_sigma_raw)], axis=1).reshape(n, 2, 1, 1)
    u = np.ones(n)
    want = _ref_value("gaussian-pixel", "log_pmf", x, raw)
    exact = formulas.evaluate("gaussian-pixel", x, raw, "log_pmf", ns=_numpy(), upstream=u)
    np.testing.assert_allclose(exact.value, want, rtol=1e-13)
    tb = _torch_backend()
    if tb is not None:
        import torch

        raw_t = torch.tensor(raw, requires_grad=True)
        tb.log_pmf("gaussian-pixel", torch.from_numpy(x), raw_t).sum().backward()
        np.testing.assert_allclose(exact.grad_raw, raw_t.grad.numpy(), rtol=1e-9, atol=1e-12)
    raw32 = raw.astype(np.float32)
    for got in (formulas.evaluate("gaussian-pixel", x, raw32, "log_pmf", ns=_numpy(), upstream=u.astype(np.float32)),
                _kernel_eval(host_launch, "gaussian-pixel", x, raw32, "log_pmf", upstream=u.astype(np.float32))):
        np.testing.assert_allclose(got.value, want, rtol=2e-6)
        np.testing.assert_allclose(got.grad_raw, exact.grad_raw, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(exact.grad_raw).max()))


@pytest.mark.parametrize("log_scale_raw", [0.0, 6.4], ids=["scale-1", "scale-600"])
def test_student_t_bins_narrow_against_the_scale_keep_float64_precision(log_scale_raw):
    """The Student-t PMF (float64 inside, whatever the input dtype): a bin narrow against
    the scale takes Simpson's rule, as in the reference; the log-CDF difference lost
    digits there (2.8e-12 relative at scale 600)."""
    rng = np.random.default_rng(12)
    n = 256
    x = rng.integers(1, 255, (n, 1, 1, 1)).astype(np.uint8)
    raw = np.stack([rng.normal(0.0, 2.0, n), np.full(n, log_scale_raw), np.full(n, 1.0)], axis=1).reshape(n, 3, 1, 1)
    want = _ref_value("student-t", "log_pmf", x, raw)
    got = formulas.value("student-t", x, raw, "log_pmf", ns=_numpy())
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize(
    "name", ["sigma", "sigma-image", "gaussian", "gaussian-pixel", "sigma-learned"]
)
@pytest.mark.parametrize("kind", KINDS)
def test_host_compiled_kernels_options(host_launch, name, kind):
    """Fixed evaluation sigma (where the likelihood takes one), no softclip floor, and
    a non-default n_bits."""
    x, raw = make_inputs(name, 3, 4)
    x4 = (x >> 4).astype(np.uint8)  # 4-bit levels, with 0 and 15 present
    fixed_sigma = [{"sigma": 0.05}] if name in registry.FIXED_SIGMA else []
    for opts in (*fixed_sigma, {"log_sigma_min": None}, {"n_bits": 4}):
        opts = _opts(name, **opts)
        xx = x4 if opts.get("n_bits") == 4 else x
        got = _kernel_eval(host_launch, name, xx, raw, kind, **opts)
        want = formulas.evaluate(name, xx, raw, kind, ns=_numpy(), **opts)
        np.testing.assert_allclose(got.value, want.value, rtol=1e-12)
        np.testing.assert_allclose(got.grad_raw, want.grad_raw, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_host_compiled_mixture_default_k_and_channels(host_launch, channels):
    """K = 10 (the default) and a two-channel image (no coupling, 5K channels)."""
    x, raw = make_inputs("logistic-mixture", channels, 9, mixtures=10)
    got = _kernel_eval(host_launch, "logistic-mixture", x, raw, "log_prob", mixtures=10)
    want = formulas.evaluate("logistic-mixture", x, raw, "log_prob", ns=_numpy(), mixtures=10)
    np.testing.assert_allclose(got.value, want.value, rtol=1e-12)
    np.testing.assert_allclose(got.grad_raw, want.grad_raw, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 3])
def test_host_compiled_mixture_state_skips_the_value_passes(host_launch, channels):
    """A value-only call's state, passed to a gradient call, gives the gradient of one
    full call bit for bit and runs only the gradient kernel (recomputing); with
    keep_gradient, only the scaling kernel.  A state that does not fit is refused."""
    from vaecli.backends.cupy_backend.kernels import MixtureState

    x, raw = make_inputs("logistic-mixture", channels, 3)
    raw = raw.astype(np.float32)
    u = np.random.default_rng(11).normal(size=B).astype(np.float32)

    def run(**kw):
        return _kernel_eval(host_launch, "logistic-mixture", x, raw, "log_prob", mixtures=MIXTURES, **kw)

    host_launch.calls.clear()
    full = run(upstream=u)
    assert host_launch.calls == ["logistic_mixture_components", "logistic_mixture_lse", "logistic_mixture_scale"]
    for keep, kernel in ((False, "logistic_mixture_grad"), (True, "logistic_mixture_scale")):
        first = run(need_grad=False, keep_gradient=keep)
        assert first.state.log_prob.shape == (B * H * W,) and first.grad_raw is None
        assert (first.state.grad is not None) == keep
        host_launch.calls.clear()
        again = run(upstream=u, state=first.state)
        assert host_launch.calls == [kernel]
        np.testing.assert_array_equal(again.grad_raw, full.grad_raw)
        np.testing.assert_array_equal(again.value, full.value)
        np.testing.assert_array_equal(first.value, full.value)
        np.testing.assert_allclose(run(upstream=2 * u, state=first.state).grad_raw, 2 * full.grad_raw,
                                   rtol=1e-6, atol=1e-30)  # float32 subnormals round differently
    with pytest.raises(ValueError, match="stats is not a contiguous"):
        run(state=MixtureState(first.state.stats[:, 1:]))
    with pytest.raises(ValueError, match="come together"):
        run(state=MixtureState(first.state.stats, first.state.mass))


@pytest.mark.parametrize("channels", [1, 3])
def test_host_compiled_mixture_far_pixel_keeps_float32_precision(host_launch, channels):
    """At the pixel whose every component sits ~4e4 scales away (means 100, scales at the
    floor), each component's log mass is ~-4e4, where one float32 ulp is 0.004: the
    kernels keep the mass sums apart from the logits, so the responsibilities (and with
    them every gradient there) keep float32's relative precision instead of an error of
    about ulp(4e4) in each component's log-probability.  Folding the logits into the
    sums put 0.2% errors into the mean gradients here."""
    x, raw = make_inputs("logistic-mixture", channels, 0)
    u = np.random.default_rng(5000).normal(size=B)
    got = _kernel_eval(host_launch, "logistic-mixture", x, raw.astype(np.float32), "log_prob",
                       upstream=u.astype(np.float32), mixtures=MIXTURES)
    want = formulas.evaluate("logistic-mixture", x, raw, "log_prob", ns=_numpy(), upstream=u, mixtures=MIXTURES)
    far = np.s_[:, :, 2, 1]
    scale = np.abs(want.grad_raw[far]).max(axis=1, keepdims=True)  # per image
    np.testing.assert_allclose(got.grad_raw[far], want.grad_raw[far], rtol=2e-5, atol=2e-6 * scale.max())


@pytest.mark.parametrize("floor", [-29.0, -31.0, -90.0, -800.0])
@pytest.mark.parametrize("name", ["logistic", "logistic-mixture"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_a_low_softclip_floor_keeps_the_scales(host_launch, name, floor, dtype):
    """1/s above the floor is e^-floor e^-(t - floor) for floors from -30 up and e^-t
    below: e^-floor overflows float32 at -89 and float64 at -710, and e^-(t - floor)
    underflows at ordinary t long before.  Kernels and formulas match the reference."""
    rng = np.random.default_rng(21)
    x, raw = make_inputs(name, 3, 1)
    raw = rng.normal(0.0, 1.5, size=raw.shape)  # no extreme pixels: scales e^-3 .. e^3
    opts = _opts(name, log_sigma_min=floor)
    want = _ref_value(name, "log_prob", x, raw, **opts)
    formula = formulas.evaluate(name, x, raw.astype(dtype), "log_prob", ns=_numpy(), **opts)
    got = _kernel_eval(host_launch, name, x, raw.astype(dtype), "log_prob", **opts)
    tol = VALUE_RTOL[dtype]
    for ev in (formula, got):
        assert np.all(np.isfinite(ev.value)) and np.all(np.isfinite(ev.grad_raw))
        np.testing.assert_allclose(ev.value, want, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(got.grad_raw, formula.grad_raw, rtol=GRAD_RTOL[dtype],
                               atol=GRAD_RTOL[dtype] * 1e-2 * float(np.abs(formula.grad_raw).max()))


def test_host_compiled_mixture_pixel_no_component_can_give_is_minus_inf(host_launch):
    """A pixel whose every component's log mass is beyond float32 (means 3e38 away, so
    the standardized distance overflows: the log mass, about -1e41, is -inf) has
    log-probability -inf, in the kernels as in the formulas, not the NaN of -inf - -inf.
    (A huge scale is no such case: its masses stay finite, see test_extreme_scales.)"""
    x, raw = make_inputs("logistic-mixture", 1, 2, mixtures=2)
    raw = raw.astype(np.float32)
    k, c = 2, 1
    raw[0, k : k + k * c] = 3e38  # every mean of image 0
    x[0] = 100
    with np.errstate(over="ignore"):  # the per-image sum of image 0's -inf and huge terms
        evs = (_kernel_eval(host_launch, "logistic-mixture", x, raw, "log_prob", mixtures=k, need_grad=False),
               formulas.evaluate("logistic-mixture", x, raw, "log_prob", ns=_numpy(), mixtures=k, need_grad=False))
    for ev in evs:
        assert ev.value[0] == -np.inf and np.all(np.isfinite(ev.value[1:]))


def test_host_compiled_categorical_out_of_range_is_nan(host_launch):
    x, raw = make_inputs("categorical", 1, 0)
    x = x.astype(np.int32)
    x[1, 0, 2, 2] = LEVELS  # out of range: NaN for that image, no out-of-bounds read
    got = _kernel_eval(host_launch, "categorical", x, raw, "log_prob")
    assert np.isnan(got.value[1]) and np.all(np.isfinite(got.value[[0, 2]]))


# ------------------------------------- the torch bridge's autograd logic, on the CPU
# torch_bridge runs its autograd.Function through an Engine; on a GPU that is CuPy
# with DLPack on torch's stream.  Here the same Function runs on CPU tensors with a
# NumPy engine (DLPack to NumPy), evaluating by the formulas or by the host-compiled
# kernels, so saving, scaling and recomputing gradients are checked without a GPU.


def _numpy_engine(evaluate):
    import contextlib

    import torch

    from vaecli.backends.cupy_backend import torch_bridge

    return torch_bridge.Engine(
        to_array=lambda t: np.from_dlpack(t.detach()),
        to_torch=torch.from_dlpack,
        stream=lambda device: contextlib.nullcontext(),
        evaluate=evaluate,
    )


def _formulas_engine():
    def evaluate(name, x, raw, kind, **kw):
        return formulas.evaluate(name, x, raw, kind, ns=_numpy(), **kw)

    return _numpy_engine(evaluate)


def _host_kernel_engine(launch):
    from vaecli.backends.cupy_backend import kernels

    def evaluate(name, x, raw, kind, **kw):
        if kernels.supports(name):
            return kernels.evaluate(name, x, raw, kind, ns=_numpy(), launch=launch, **kw)
        return formulas.evaluate(name, x, raw, kind, ns=_numpy(), **kw)

    return _numpy_engine(evaluate)


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        pytest.skip(f"torch is not installed ({exc})")
    return torch


@pytest.mark.parametrize("engine_kind", ["formulas", "host-kernels"])
@pytest.mark.parametrize("name, kind, channels, seed", [c for c in CASES if c.values[3] == 0])
def test_torch_bridge_autograd_on_cpu(name, kind, channels, seed, engine_kind, host_launch):
    torch = _torch()
    from vaecli.backends.cupy_backend import torch_bridge

    engine = _formulas_engine() if engine_kind == "formulas" else _host_kernel_engine(host_launch)
    x, raw = make_inputs(name, channels, seed)
    opts = _opts(name)
    u = np.random.default_rng(7000 + seed).normal(size=B)
    x_t = torch.from_numpy(x)
    has_grad = _has_grad(name, kind)
    raw_t = torch.tensor(raw, requires_grad=has_grad)
    topts = dict(opts)
    ls_t = None
    if name == "sigma-learned":
        ls_t = torch.tensor(LOG_SIGMA, dtype=torch.float64, requires_grad=True)
        topts["log_sigma"] = ls_t
    value = torch_bridge._apply(name, kind, x_t, raw_t, topts, engine)
    want = formulas.evaluate(
        name, x, raw, kind, ns=_numpy(), upstream=u, need_grad=has_grad, **opts
    )
    np.testing.assert_allclose(value.detach().numpy(), want.value, rtol=1e-12)
    if not has_grad:
        assert not value.requires_grad
        with pytest.raises(VaeError, match="evaluation metric only"):
            torch_bridge._apply(name, kind, x_t, raw_t.requires_grad_(True), topts, engine)
        return
    (value * torch.from_numpy(u)).sum().backward()
    np.testing.assert_allclose(raw_t.grad.numpy(), want.grad_raw, rtol=1e-9, atol=1e-10)
    if ls_t is not None:
        assert float(ls_t.grad) == pytest.approx(float(want.grad_log_sigma.sum()), rel=1e-10)


@pytest.mark.parametrize("name, forward_calls, backward_calls", [
    ("logistic-mixture", ["logistic_mixture_components", "logistic_mixture_lse"], ["logistic_mixture_scale"]),
    ("categorical", ["categorical"], ["categorical"]),
    ("logistic", ["logistic"], []),  # value and gradient in forward, scaled in backward
])
def test_torch_bridge_kernels_recompute_in_backward(host_launch, name, forward_calls, backward_calls):
    """Each likelihood's gradient policy (torch_bridge.GRADIENT): the mixture keeps its
    unscaled gradient in forward and scales it in backward, categorical computes the
    value only in forward and the weighted gradient in backward, logistic computes both
    in forward.  All match the formulas, also over a second backward of the same graph."""
    torch = _torch()
    from vaecli.backends.cupy_backend import torch_bridge

    x, raw = make_inputs(name, 3, 0)
    u = np.random.default_rng(12).normal(size=B)
    raw_t = torch.tensor(raw, requires_grad=True)
    host_launch.calls.clear()
    value = torch_bridge._apply(name, "log_prob", torch.from_numpy(x), raw_t, _opts(name),
                                _host_kernel_engine(host_launch))
    assert host_launch.calls == forward_calls
    host_launch.calls.clear()
    total = (value * torch.from_numpy(u)).sum()
    total.backward(retain_graph=True)
    assert host_launch.calls == backward_calls
    want = formulas.evaluate(name, x, raw, "log_prob", ns=_numpy(), upstream=u, **_opts(name))
    np.testing.assert_allclose(value.detach().numpy(), want.value, rtol=1e-12)
    np.testing.assert_allclose(raw_t.grad.numpy(), want.grad_raw, rtol=1e-9, atol=1e-10)
    total.backward()  # the kept state serves a second backward unchanged
    np.testing.assert_allclose(raw_t.grad.numpy(), 2 * want.grad_raw, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["sigma", "sigma-learned", "logistic-mixture", "bitwise"])
def test_torch_bridge_graph_use_on_cpu(name):
    """Two uses of the same raw in one graph (gradients add), float32, only
    log_sigma requiring grad, and no grad at all."""
    torch = _torch()
    from vaecli.backends.cupy_backend import torch_bridge

    engine = _formulas_engine()
    x, raw = make_inputs(name, 3, 1)
    raw = raw.astype(np.float32)
    opts = _opts(name)
    u = np.random.default_rng(8).normal(size=B).astype(np.float32)
    x_t = torch.from_numpy(x)
    raw_t = torch.tensor(raw, requires_grad=True)
    topts = dict(opts)
    if name == "sigma-learned":
        topts["log_sigma"] = torch.tensor(LOG_SIGMA, requires_grad=True)
    a = torch_bridge._apply(name, "log_prob", x_t, raw_t, topts, engine)
    b = torch_bridge._apply(name, "log_pmf", x_t, raw_t, topts, engine)
    assert a.dtype == torch.float32
    ((a + 2 * b) * torch.from_numpy(u)).sum().backward()
    wa = formulas.evaluate(name, x, raw, "log_prob", ns=_numpy(), upstream=u, **opts)
    wb = formulas.evaluate(name, x, raw, "log_pmf", ns=_numpy(), upstream=2 * u, **opts)
    np.testing.assert_allclose(raw_t.grad.numpy(), wa.grad_raw + wb.grad_raw, rtol=1e-5, atol=1e-4)
    if name == "sigma-learned":  # raw without grad, log_sigma with
        ls_t = torch.tensor(LOG_SIGMA, requires_grad=True)
        only_ls = {**opts, "log_sigma": ls_t}
        v = torch_bridge._apply(name, "log_prob", x_t, torch.tensor(raw), only_ls, engine)
        v.sum().backward()
        plain = formulas.evaluate(name, x, raw, "log_prob", ns=_numpy(), **opts)
        assert float(ls_t.grad) == pytest.approx(float(plain.grad_log_sigma.sum()), rel=1e-5)
    with torch.no_grad():
        v = torch_bridge._apply(name, "log_prob", x_t, raw_t, topts, engine)
    assert not v.requires_grad
    np.testing.assert_allclose(v.numpy(), wa.value, rtol=1e-6)


def test_torch_bridge_refuses_cpu_tensors_and_half():
    torch = _torch()
    from vaecli.backends.cupy_backend import torch_bridge

    x, raw = make_inputs("logistic", 1, 0)
    with pytest.raises(VaeError, match="CUDA"):
        torch_bridge.log_prob("logistic", torch.from_numpy(x), torch.from_numpy(raw))
    with pytest.raises(VaeError, match="float32 or float64"):
        torch_bridge._apply(
            "logistic", "log_prob", torch.from_numpy(x), torch.from_numpy(raw).half(), {},
            _formulas_engine(),
        )  # fmt: skip


def test_student_t_log_cdf_against_scipy_far_tail():
    """log F(t) of the Student-t over the body, the centre and the far tail (where
    the incomplete beta underflows and the DLMF 8.17.8 series takes over), against
    scipy where its logcdf is accurate and the reference's tail form beyond."""
    from scipy import stats

    t = np.concatenate([-np.logspace(-8, 5, 60), [0.0], np.logspace(-8, 5, 60)])
    for df in (2.0, 3.5, 10.0, 102.0, 1000.0):
        got = formulas.student_t_log_cdf(_numpy(), t, np.full_like(t, df))
        want = stats.t.logcdf(t, df)
        ok = want > -700  # scipy is accurate here
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=1e-15)
        stable = importlib.import_module("vaecli.reference.stable")
        tail = ~ok
        if tail.any():
            ref = stable.student_t_log_cdf(t[tail], np.full(tail.sum(), df))
            np.testing.assert_allclose(got[tail], ref, rtol=1e-12)
            assert np.all(np.isfinite(got))
