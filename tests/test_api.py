"""The torch-style API: a Likelihood module in a user's own model."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vaecli  # noqa: E402
import vaecli.constants  # noqa: E402
from vaecli import VaeError, reference  # noqa: E402


def _batch(seed=0, b=4, c=1, size=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, size, size), generator=g, dtype=torch.uint8)


def test_drop_in_decoder_head_trains_sigma_vae():
    torch.manual_seed(0)
    x = _batch()
    lik = vaecli.likelihood("sigma")
    head = torch.nn.Conv2d(4, lik.out_channels(1), 1)
    features = torch.randn(4, 4, 6, 6)
    mu, logvar = torch.randn(4, 2), torch.randn(4, 2)
    loss = -(lik.log_prob(x, head(features)) - vaecli.gaussian_kl(mu, logvar)).mean()
    loss.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    # same number as the reference
    raw = head(features).detach()
    want = reference.log_prob("sigma", x.numpy(), raw.double().numpy())
    np.testing.assert_allclose(lik.log_prob(x, raw).numpy(), want, rtol=1e-5)


def test_sigma_learned_owns_its_parameter():
    lik = vaecli.likelihood("sigma-learned", init_log_sigma=-1.0)
    params = dict(lik.named_parameters())
    assert list(params) == ["log_sigma"]
    x = _batch()
    raw = torch.zeros(4, 1, 6, 6, requires_grad=True)
    lik.log_prob(x, raw).sum().backward()
    assert lik.log_sigma.grad is not None and lik.log_sigma.grad.abs() > 0
    # softclipped: sigma = exp(-6 + softplus(-1 + 6))
    assert lik.current_sigma() == pytest.approx(math.exp(-6 + math.log1p(math.exp(5.0))))


def test_returns_the_dtype_of_raw_and_refuses_half():
    x = _batch()
    lik = vaecli.likelihood("logistic")
    for dtype in (torch.float32, torch.float64):
        assert lik.log_prob(x, torch.zeros(4, 2, 6, 6, dtype=dtype)).dtype == dtype
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(VaeError, match="float32 or float64"):
            lik.log_prob(x, torch.zeros(4, 2, 6, 6, dtype=dtype))


def test_bad_inputs_give_one_clear_error():
    lik = vaecli.likelihood("categorical")
    with pytest.raises(VaeError, match=r"needs raw decoder output of shape \(4, 256, 6, 6\)"):
        lik.log_prob(_batch(), torch.zeros(4, 255, 6, 6))
    with pytest.raises(VaeError, match="integer tensor"):
        lik.log_prob(_batch().float(), torch.zeros(4, 256, 6, 6))
    with pytest.raises(VaeError, match="levels 0..15"):
        vaecli.likelihood("categorical", n_bits=4).log_prob(_batch(), torch.zeros(4, 16, 6, 6))
    with pytest.raises(VaeError, match="unknown likelihood 'gauss'"):
        vaecli.likelihood("gauss")


def test_sigma_image_has_no_pmf():
    with pytest.raises(VaeError, match="training objective only"):
        vaecli.likelihood("sigma-image").log_pmf(_batch(), torch.zeros(4, 1, 6, 6))


def test_sigma_vae_sigma_and_equivalent_beta():
    x = _batch()
    raw = torch.randn(4, 1, 6, 6)
    lik = vaecli.likelihood("sigma")
    y = x.double() / 255
    mse = float(((y - torch.sigmoid(raw.double())) ** 2).mean())
    floor = vaecli.constants.LOG_SIGMA_MIN
    sigma = math.exp(floor + math.log1p(math.exp(0.5 * math.log(mse) - floor)))  # softclipped
    assert abs(sigma - math.sqrt(mse)) < 0.01 * sigma  # the floor barely matters here
    assert lik.current_sigma(x, raw) == pytest.approx(sigma, rel=1e-5)
    assert lik.equivalent_beta(x, raw) == pytest.approx(2 * sigma**2, rel=1e-5)
    fixed = vaecli.likelihood("sigma", sigma=0.1)
    assert fixed.current_sigma() == pytest.approx(0.1)
    assert vaecli.likelihood("categorical").current_sigma() is None


def test_mean_and_sample_shapes_and_ranges():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 30, 5, 5, generator=g)  # 3 components, RGB
    lik = vaecli.likelihood("logistic-mixture", mixtures=3)
    m = lik.mean(raw)
    assert m.shape == (2, 3, 5, 5) and 0 <= m.min() and m.max() <= 1
    s = lik.sample(raw, generator=g)
    assert s.dtype == torch.uint8 and s.shape == (2, 3, 5, 5)


def test_cupy_backend_needs_a_device():
    from vaecli.backends import get_backend

    if get_backend("cupy").available()[0]:
        pytest.skip("a CUDA device is present")
    with pytest.raises(VaeError, match="cupy backend cannot run here"):
        vaecli.likelihood("sigma", backend="cupy")


def test_bits_per_dim_is_the_one_conversion():
    assert vaecli.bits_per_dim(-math.log(256) * 10, 10) == pytest.approx(8.0)
