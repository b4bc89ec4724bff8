"""Bin masses at huge scales and the Student-t at huge degrees of freedom, against
50-digit quadrature (mpmath), for every implementation: the float64 reference, the
torch backend, the CuPy formulas on NumPy and the CUDA kernels compiled for the host.

The link functions do not bound a scale (log s = softclip(raw), df = 2 + softplus(raw)),
so every finite raw output has a finite log-likelihood, and float32 must give it: it
stays finite and within 1e-4 relative of float64 (on the same float32-rounded inputs)
for raw log-scales up to 3e38, and its gradients stay finite.  float32 used to return
-inf once a raw log-scale passed about 90 (the standardized bin width 1/((L-1) s)
underflowed) and then the mixture silently took another component; the Student-t
log_pmf was wrong from df ~ 1e5 (torch) and infinite from 1e20 (torch float64).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from vaecli import reference, registry
from vaecli.backends.cupy_backend import formulas, kernels

torch = pytest.importorskip("torch")
mp = pytest.importorskip("mpmath")

from vaecli.backends import torch_backend  # noqa: E402

NUMPY = formulas.numpy_namespace()
FLOOR = -6.0  # the default log_sigma_min
DPS = 50
LOG_SCALES = [0.0, 10.0, 50.0, 88.0, 89.0, 100.0, 1e3, 1e4, 1e30, 3e38]
LEVELS = [0, 1, 128, 254, 255]
F64_RTOL = 1e-12  # float64 against 50 digits
F32_RTOL = 1e-4  # float32 against float64, on the same inputs


# ------------------------------------------------------------------ 50-digit oracle


def _softplus(t):
    return t + mp.log1p(mp.exp(-t)) if t > 0 else mp.log1p(mp.exp(t))


def _softclip(t):
    return FLOOR + _softplus(t - FLOOR)


def _sigmoid(t):
    return 1 / (1 + mp.exp(-t))


def _normal_log_pdf(z):
    return -z * z / 2 - mp.log(2 * mp.pi) / 2


def _logistic_log_pdf(z):
    return -abs(z) - 2 * mp.log1p(mp.exp(-abs(z)))


def _student_t_log_pdf(df):
    with mp.workdps(DPS + 2 * int(mp.log10(df + 10)) + 10):  # the log-gammas cancel at large df
        norm = mp.loggamma((df + 1) / 2) - mp.loggamma(df / 2) - mp.log(df * mp.pi) / 2
    return lambda z: norm - (df + 1) / 2 * mp.log1p(z * z / df)


def _log_integral(log_pdf, lo, hi):
    """log of the integral of exp(log_pdf) over [lo, hi] (either end may be infinite) for
    a density symmetric and unimodal about 0, by tanh-sinh quadrature of the density
    divided by its largest value on the interval."""
    if lo == -mp.inf:
        if hi > 0:  # F(hi) = 1 - F(-hi)
            return mp.log1p(-mp.exp(_log_integral(log_pdf, hi, mp.inf)))
        lo, hi = -hi, mp.inf
    if hi == mp.inf:
        if lo < 0:
            return mp.log1p(-mp.exp(_log_integral(log_pdf, -lo, mp.inf)))
        top = log_pdf(lo)
        step = 1 / max(mp.mpf(1), lo)  # the tail's decay length, about 1/lo
        points = [mp.mpf(0)] + [step * k for k in (mp.mpf(1) / 8, 1, 8, 64)] + [mp.inf]
        return top + mp.log(mp.quad(lambda v: mp.exp(log_pdf(lo + v) - top), points))
    peak = mp.mpf(0) if lo <= 0 <= hi else (lo if lo > 0 else hi)
    top = log_pdf(peak)
    width = hi - lo
    points = [mp.mpf(0), -lo / width, mp.mpf(1)] if lo < 0 < hi else [mp.mpf(0), mp.mpf(1)]
    return top + mp.log(width * mp.quad(lambda s: mp.exp(log_pdf(lo + width * s) - top), points))


def _log_bin_mass(log_pdf, level, loc, log_scale, levels=256):
    inv = mp.exp(-log_scale)
    half = mp.mpf(1) / (2 * (levels - 1))
    y = mp.mpf(level) / (levels - 1)
    lo = -mp.inf if level == 0 else (y - half - loc) * inv
    hi = mp.inf if level == levels - 1 else (y + half - loc) * inv
    return _log_integral(log_pdf, lo, hi)


@functools.lru_cache(maxsize=None)
def exact(name, kind, level, raw):
    """log p of one pixel (C = 1) under ``name`` with raw decoder outputs ``raw``."""
    with mp.workdps(DPS):
        r = [mp.mpf(v) for v in raw]
        y = mp.mpf(level) / 255
        if name == "gaussian-pixel":
            mu, log_s = _sigmoid(r[0]), _softclip(r[1])
            if kind == "log_prob":
                return float(_normal_log_pdf((y - mu) / mp.exp(log_s)) - log_s)
            return float(_log_bin_mass(_normal_log_pdf, level, mu, log_s))
        if name == "student-t":
            mu, log_s, df = _sigmoid(r[0]), _softclip(r[1]), 2 + _softplus(r[2])
            log_pdf = _student_t_log_pdf(df)
            if kind == "log_prob":
                return float(log_pdf((y - mu) / mp.exp(log_s)) - log_s)
            return float(_log_bin_mass(log_pdf, level, mu, log_s))
        if name == "logistic":
            return float(_log_bin_mass(_logistic_log_pdf, level, r[0], _softclip(r[1])))
        if name == "logistic-mixture":  # K components, one channel
            k = len(r) // 3
            logits, means, scales = r[:k], r[k : 2 * k], r[2 * k :]
            norm = mp.log(mp.fsum(mp.exp(v) for v in logits))
            terms = [logits[j] - norm + _log_bin_mass(_logistic_log_pdf, level, means[j], _softclip(scales[j]))
                     for j in range(k)]
            top = max(terms)
            return float(top + mp.log(mp.fsum(mp.exp(t - top) for t in terms)))
    raise AssertionError(name)


# ------------------------------------------------------------------ implementations


@pytest.fixture(scope="module")
def host_launch(tmp_path_factory):
    from vaecli.backends.cupy_backend import host

    if not host.available():
        return None
    return host.launcher(tmp_path_factory.mktemp("extreme_kernels"))


def _has_grad(name, kind):
    return not (name == "student-t" and kind == "log_pmf")  # CuPy: an evaluation metric only


def evaluate(name, kind, x, raw, dtype, host_launch, opts):
    """{implementation: (value (B,) float64, gradient of the batch sum like raw or None)}
    for raw cast to ``dtype``."""
    raw = raw.astype(dtype)
    out = {}
    if dtype == np.float64:
        out["reference"] = (getattr(reference, kind)(name, x, raw, **opts), None)
    raw_t = torch.tensor(raw, requires_grad=True)
    value = getattr(torch_backend, kind)(name, torch.from_numpy(x), raw_t, **opts)
    value.sum().backward()
    out["torch"] = (value.detach().double().numpy(), raw_t.grad.double().numpy())
    need_grad = _has_grad(name, kind)
    ev = formulas.evaluate(name, x, raw, kind, ns=NUMPY, need_grad=need_grad, **opts)
    out["cupy-formulas"] = (ev.value.astype(np.float64), None if ev.grad_raw is None else ev.grad_raw.astype(np.float64))
    if host_launch is not None and kernels.supports(name):
        ev = kernels.evaluate(name, x, raw, kind, ns=NUMPY, launch=host_launch, **opts)
        out["cupy-kernels"] = (ev.value.astype(np.float64), ev.grad_raw.astype(np.float64))
    for impl, (v, _) in out.items():
        assert v.dtype == np.float64, impl
    return out


def check(name, kind, x, raw, host_launch, opts=None, *, f64_rtol=F64_RTOL):
    """Every implementation in float64 against the 50-digit values; in float32 finite
    and within F32_RTOL of float64 on the same rounded inputs, with finite gradients
    close to float64's."""
    opts = opts or {}
    levels = x.reshape(-1)
    want = np.array([exact(name, kind, int(level), tuple(float(v) for v in r))
                     for level, r in zip(levels, raw.reshape(raw.shape[0], -1))])
    got64 = evaluate(name, kind, x, raw, np.float64, host_launch, opts)
    for impl, (value, grad) in got64.items():
        np.testing.assert_allclose(value, want, rtol=f64_rtol, atol=0, err_msg=f"{impl} float64")
        assert grad is None or np.all(np.isfinite(grad)), f"{impl} float64 gradient"
    raw32 = raw.astype(np.float32)
    on32 = evaluate(name, kind, x, raw32.astype(np.float64), np.float64, host_launch, opts)
    for impl, (value, grad) in evaluate(name, kind, x, raw32, np.float32, host_launch, opts).items():
        want32, grad64 = on32[impl]
        assert np.all(np.isfinite(value)), f"{impl} float32: {value}"
        np.testing.assert_allclose(value, want32, rtol=F32_RTOL, atol=0, err_msg=f"{impl} float32")
        if grad is not None:
            assert np.all(np.isfinite(grad)), f"{impl} float32 gradient"
            scale = max(1.0, float(np.abs(grad64).max()))
            np.testing.assert_allclose(grad, grad64, rtol=1e-3, atol=1e-3 * scale, err_msg=f"{impl} float32 gradient")
    gradients = [g for impl, (_, g) in got64.items() if g is not None]
    for g in gradients[1:]:  # torch autograd against the analytic gradients
        np.testing.assert_allclose(g, gradients[0], rtol=1e-8, atol=1e-10 * max(1.0, float(np.abs(g).max())))


def pixels(rows, levels):
    """x (B, 1, 1, 1) and raw (B, P, 1, 1) for one pixel an image: each raw row with
    each level."""
    x = np.array([lv for _ in rows for lv in levels], np.uint8).reshape(-1, 1, 1, 1)
    raw = np.array([r for r in rows for _ in levels], np.float64)
    return x, raw.reshape(raw.shape[0], -1, 1, 1)


# ------------------------------------------------------------------ the reported cases

REPORTED = [  # (likelihood, kind, level, raw, float64 value, options)
    ("gaussian-pixel", "log_pmf", 128, [0.0, 100.0], -106.46020207836311, {}),
    ("logistic", "log_pmf", 128, [0.5, 100.0], -106.92755790627832, {}),
    ("logistic", "log_prob", 128, [0.5, 100.0], -106.92755790627832, {}),
    ("logistic-mixture", "log_pmf", 240, [-0.35, -100.0, 30.0, 100.0, 0.108, -0.469, -3.20, 1.06, 100.0],
     -106.92755790627832, {"mixtures": 3}),
    ("student-t", "log_pmf", 0, [0.2, -4.0, 1e9], -351.2781155, {}),
]


@pytest.mark.parametrize("name, kind, level, raw, value, opts",
                         [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in REPORTED])
def test_the_reported_inputs(name, kind, level, raw, value, opts, host_launch):
    """float32 was -inf for the first four (and the mixture -138.01: another component)
    and -6.57 for the Student-t; float64 is the value the report gives."""
    x, raw = pixels([raw], [level])
    assert exact(name, kind, level, tuple(raw.reshape(-1))) == pytest.approx(value, rel=1e-9)
    check(name, kind, x, raw, host_launch, opts)


# ------------------------------------------------------------------ grids of scales


@pytest.mark.parametrize("kind", ["log_prob", "log_pmf"])
@pytest.mark.parametrize("name, loc", [("gaussian-pixel", 0.3), ("logistic", 0.4), ("logistic", 40.0)])
def test_huge_scales(name, loc, kind, host_launch):
    x, raw = pixels([[loc, ls] for ls in LOG_SCALES], LEVELS)
    check(name, kind, x, raw, host_launch)


@pytest.mark.parametrize("kind", ["log_prob", "log_pmf"])
@pytest.mark.parametrize("raw_df", [1.0, 1e3, 1e9, 3e38])
def test_student_t_huge_scales(raw_df, kind, host_launch):
    x, raw = pixels([[0.3, ls, raw_df] for ls in LOG_SCALES], LEVELS)
    check("student-t", kind, x, raw, host_launch)


def test_mixture_keeps_the_component_with_the_huge_scale(host_launch):
    """Three components, one of them (the likeliest) with a huge scale: the mixture's
    value is that component's, never the next one's."""
    rows = [[-0.35, -100.0, 30.0, 100.0, 0.108, -0.469, -3.2, 1.06, ls] for ls in LOG_SCALES]
    rows += [[0.0, 0.0, 0.0, 0.2, 0.5, 0.8, ls, ls, ls] for ls in (89.0, 1e4, 3e38)]
    x, raw = pixels(rows, [0, 1, 240, 255])
    check("logistic-mixture", "log_pmf", x, raw, host_launch, {"mixtures": 3})


def test_rgb_mixture_with_huge_scales_stays_finite(host_launch):
    """The coupled RGB mixture: finite in float32 and equal to float64, huge scales in
    some channels of some components."""
    rng = np.random.default_rng(7)
    k = 2
    x = rng.integers(0, 256, size=(6, 3, 2, 2)).astype(np.uint8)
    x[0, :, 0, 0], x[1, :, 1, 1] = 0, 255
    raw = rng.normal(0.0, 1.0, size=(6, registry.out_channels("logistic-mixture", 3, mixtures=k), 2, 2))
    scales = raw[:, k + 3 * k : k + 6 * k]
    scales[0::2, 0] = 95.0
    scales[1::2, 2] = 1e4
    scales[2, :] = 1e30
    for impl, (value, grad) in evaluate("logistic-mixture", "log_pmf", x, raw.astype(np.float32), np.float32,
                                        host_launch, {"mixtures": k}).items():
        want = reference.log_pmf("logistic-mixture", x, raw.astype(np.float32).astype(np.float64), mixtures=k)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), impl
        np.testing.assert_allclose(value, want, rtol=F32_RTOL, err_msg=impl)


# ------------------------------------------------------------------ Student-t at large df


@pytest.mark.parametrize("raw_df", [28.0, 100.0, 1e3, 1e5, 1e6, 1e9, 1e12, 1e20, 3e38])
def test_student_t_large_df(raw_df, host_launch):
    """The Student-t PMF at large df: the backends' incomplete beta lost 1e-9 (df 1e6)
    to 3e-5 (1e9) in torch float64 and was infinite from 1e20, torch float32 was off by
    up to 0.12 relative from df 1e6 (and -inf at some), and CuPy's betainc rounded u
    near 1.  Interior bins wide and narrow, edge bins, and bins far in the tail."""
    rows = [[r_mu, r_ls, raw_df] for r_mu, r_ls in ((0.2, -4.0), (0.9, 0.0), (-3.0, -5.0), (0.0, 2.0), (0.5, -6.0))]
    x, raw = pixels(rows, [0, 1, 37, 100, 128, 254, 255])
    check("student-t", "log_pmf", x, raw, host_launch, f64_rtol=2e-12)


@pytest.mark.parametrize("df", [30.0, 31.0, 100.0, 1e3, 1e6, 1e15, 3e38])
def test_student_t_log_cdf_at_large_df(df):
    """The large-df expansion of the log-CDF itself (torch and the CuPy formulas), over
    the body and both tails, against 50-digit quadrature."""
    t = np.array([-1e4, -800.0, -60.0, -26.3, -np.sqrt(df), -5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 5.0, 60.0, 1e4])
    with mp.workdps(DPS):
        log_pdf = _student_t_log_pdf(mp.mpf(df))
        want = np.array([float(_log_integral(log_pdf, -mp.inf, mp.mpf(v))) for v in t])
    got_torch = torch_backend._student_t_log_cdf(torch.tensor(t), torch.full((t.size,), df, dtype=torch.float64))
    got_cupy = formulas.student_t_log_cdf(NUMPY, t, np.full_like(t, df))
    np.testing.assert_allclose(got_torch.numpy(), want, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got_cupy, want, rtol=1e-12, atol=1e-300)


def test_student_t_large_df_gradients():
    """torch autograd through the large-df expansion and the tail series (float64
    gradcheck), with finite gradients in float32 too."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.integers(0, 256, size=(2, 1, 3, 3)).astype(np.uint8))
    x[0, 0, 0, 0], x[1, 0, 2, 2] = 0, 255
    for raw_df, r_ls in ((40.0, -4.0), (1e4, -4.0), (1e4, 1.0), (1e12, 0.0)):
        raw = torch.tensor(rng.normal(0.0, 1.0, size=(2, 3, 3, 3)))
        raw[:, 1], raw[:, 2] = r_ls, raw_df
        raw.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda r: torch_backend.log_pmf("student-t", x, r), (raw,))
        raw32 = raw.detach().float().requires_grad_(True)
        torch_backend.log_pmf("student-t", x, raw32).sum().backward()
        assert torch.isfinite(raw32.grad).all()


@pytest.mark.parametrize("log_scale", [88.0, 100.0, 1e4, 3e38])
@pytest.mark.parametrize("name", ["gaussian-pixel", "logistic", "student-t"])
def test_gradients_at_huge_scales(name, log_scale):
    """d log p / d raw log-scale is -1 (the mass shrinks like 1/s) and d / d mu is about
    0 at a huge scale, in float32 as in float64, and torch's float64 gradcheck holds."""
    p = registry.params_per_channel(name)
    raw = np.zeros((2, p, 1, 2))
    raw[:, 0] = 0.3
    raw[:, 1] = log_scale
    if name == "student-t":
        raw[:, 2] = 5.0
    x = torch.tensor([[[[3, 128]]], [[[200, 254]]]], dtype=torch.uint8)
    for dtype in (torch.float64, torch.float32):
        raw_t = torch.tensor(raw, dtype=dtype, requires_grad=True)
        torch_backend.log_pmf(name, x, raw_t).sum().backward()
        np.testing.assert_allclose(raw_t.grad[:, 1].double().numpy(), -1.0, rtol=1e-6)
        np.testing.assert_allclose(raw_t.grad[:, 0].double().numpy(), 0.0, atol=1e-6)
    if log_scale <= 1e4:  # finite differences need a step the value can resolve
        raw_t = torch.tensor(raw, requires_grad=True)
        assert torch.autograd.gradcheck(lambda r: torch_backend.log_pmf(name, x, r), (raw_t,))


def test_the_tiny_width_constant_is_where_the_series_is_exact():
    """Below TINY_BIN_WIDTH, log(1 - e^-d) = log d to float64's last bit, and d is still
    a normal float32 (so above it the usual form has its digits)."""
    from vaecli.constants import TINY_BIN_WIDTH

    d = TINY_BIN_WIDTH
    assert math.log(-math.expm1(-d)) == math.log(d)
    assert d > np.finfo(np.float32).tiny
