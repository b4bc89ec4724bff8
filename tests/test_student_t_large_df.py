"""The Student-t decoder at large degrees of freedom (near its Gaussian limit): its
density's normalizer lgamma((df+1)/2) - lgamma(df/2) - log(df pi)/2 is a difference of
two log-gammas that grow like df log df, which lost 0.003 nats a pixel in float32 at
df = 1e5 and went wrong in float64 near 1e15.  Each
implementation is checked against 50-digit arithmetic."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mp = pytest.importorskip("mpmath")

from vaecli import reference  # noqa: E402
from vaecli.backends import torch_backend  # noqa: E402
from vaecli.backends.cupy_backend import formulas  # noqa: E402

RAW_DF = [1.0, 30.0, 1e3, 1e5, 1e7, 1e10, 1e20]  # df = 2 + softplus(raw)
LEVELS = [0, 37, 100, 200, 255]


def _exact(level, r_mu, r_ls, r_df):
    """log density of y = level/255 under the Student-t decoder, 50 digits."""
    mp.mp.dps = 50
    return float(_exact_mp(level, r_mu, r_ls, mp.mpf(r_df)))


def _exact_mp(level, r_mu, r_ls, r_df):
    def softplus(t):
        t = mp.mpf(t)
        return t + mp.log1p(mp.exp(-t)) if t > 0 else mp.log1p(mp.exp(t))

    mu = 1 / (1 + mp.exp(-mp.mpf(r_mu)))
    log_scale = -6 + softplus(mp.mpf(r_ls) + 6)
    df = 2 + softplus(r_df)
    z = (mp.mpf(level) / 255 - mu) / mp.exp(log_scale)
    return (mp.loggamma((df + 1) / 2) - mp.loggamma(df / 2) - mp.log(df * mp.pi) / 2 - log_scale
            - (df + 1) / 2 * mp.log1p(z * z / df))


def _inputs():
    x = np.array(LEVELS * len(RAW_DF), np.uint8).reshape(-1, 1, 1, 1)
    raw = np.array([[0.3, -2.0, r] for r in RAW_DF for _ in LEVELS]).reshape(-1, 3, 1, 1)
    want = np.array([_exact(level, 0.3, -2.0, r) for r in RAW_DF for level in LEVELS])
    return x, raw, want


def test_every_implementation_matches_50_digits():
    x, raw, want = _inputs()
    np.testing.assert_allclose(reference.log_prob("student-t", x, raw), want, rtol=1e-13)
    numpy = formulas.numpy_namespace()
    # float32: the rounding of terms of a few nats, about 1e-6 (it was 3e-3 to 50 nats)
    for dtype, rtol, atol in ((np.float64, 1e-13, 0.0), (np.float32, 2e-6, 1e-6)):
        got_torch = torch_backend.log_prob("student-t", torch.from_numpy(x), torch.from_numpy(raw.astype(dtype)))
        np.testing.assert_allclose(got_torch.double().numpy(), want, rtol=rtol, atol=atol, err_msg=f"torch {dtype}")
        got_cupy = formulas.value("student-t", x, raw.astype(dtype), "log_prob", ns=numpy)
        np.testing.assert_allclose(got_cupy.astype(np.float64), want, rtol=rtol, atol=atol,
                                   err_msg=f"cupy formulas {dtype}")


def test_the_df_gradient_is_finite_and_agrees():
    """The CuPy formulas' analytic gradient (its df part by the series' derivative)
    against torch autograd, in float64; float32 against float64."""
    x, raw, _ = _inputs()
    raw_t = torch.from_numpy(raw).requires_grad_(True)
    torch_backend.log_prob("student-t", torch.from_numpy(x), raw_t).sum().backward()
    u = np.ones(x.shape[0])
    got = formulas.evaluate("student-t", x, raw, "log_prob", ns=formulas.numpy_namespace(), upstream=u)
    assert np.isfinite(got.grad_raw).all()
    np.testing.assert_allclose(got.grad_raw, raw_t.grad.numpy(), rtol=1e-10, atol=1e-14)
    raw32 = torch.from_numpy(raw.astype(np.float32)).requires_grad_(True)
    torch_backend.log_prob("student-t", torch.from_numpy(x), raw32).sum().backward()
    np.testing.assert_allclose(raw32.grad.double().numpy(), raw_t.grad.numpy(), rtol=2e-3, atol=1e-6)


def test_the_df_gradient_matches_50_digits():
    """d log p / d raw_df, which is about 1/df^2: float64 to 1e-4 relative up to df 1e10,
    float32 to 1e-5 relative and 1e-8 absolute (it was 0 from df 1e3 on, and float64 had the wrong sign at 1e10)."""
    x, raw, _ = _inputs()
    mp.mp.dps = 50
    want = np.array([float(mp.diff(lambda t: _exact_mp(level, 0.3, -2.0, t), mp.mpf(r)))
                     for r in RAW_DF for level in LEVELS])
    grads = {}
    for dtype in (torch.float64, torch.float32):
        raw_t = torch.from_numpy(raw).to(dtype).requires_grad_(True)
        torch_backend.log_prob("student-t", torch.from_numpy(x), raw_t).sum().backward()
        grads[dtype] = raw_t.grad[:, 2, 0, 0].double().numpy()
    moderate = np.repeat(np.array(RAW_DF) <= 1e10, len(LEVELS))
    np.testing.assert_allclose(grads[torch.float64][moderate], want[moderate], rtol=1e-4, atol=0)
    np.testing.assert_allclose(grads[torch.float64][~moderate], want[~moderate], rtol=0, atol=1e-30)
    np.testing.assert_allclose(grads[torch.float32], want, rtol=1e-5, atol=1e-8)
