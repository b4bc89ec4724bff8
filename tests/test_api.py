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
    with pytest.raises(VaeError, match=r"integer tensor of levels \(uint8, int8, int16, int32 or int64\), got "
                                       "torch.float32"):
        lik.log_prob(_batch().float(), torch.zeros(4, 256, 6, 6))
    with pytest.raises(VaeError, match="levels 0..15"):
        vaecli.likelihood("categorical", n_bits=4).log_prob(_batch(), torch.zeros(4, 16, 6, 6))
    with pytest.raises(VaeError, match="unknown likelihood 'gauss'"):
        vaecli.likelihood("gauss")


def test_floating_x_must_be_dequantized_levels():
    """Continuous decoders take floating x: dequantized levels in [-1/2, L - 1/2].  Data
    out of that range (or NaN) is an error, and data within [0, 1], the usual mistake of
    passing x/255, is warned about."""
    lik = vaecli.likelihood("gaussian")
    raw = torch.zeros(4, 1, 6, 6)
    for bad in (300.0, -0.6, float("nan")):
        with pytest.raises(VaeError, match=r"floating x must hold dequantized levels in \[-0.5, 255.5\]"):
            lik.log_prob(torch.full((4, 1, 6, 6), bad), raw)
    with pytest.warns(UserWarning, match=r"not data scaled to \[0, 1\]"):
        lik.log_prob(_batch().float() / 255, raw)
    dequantized = _batch().double() + torch.rand(4, 1, 6, 6, dtype=torch.float64) - 0.5
    assert torch.isfinite(lik.log_prob(dequantized, raw.double())).all()


def test_mean_and_sample_check_raw():
    with pytest.raises(VaeError, match="categorical needs 256 decoder channels per image channel; got 300"):
        vaecli.likelihood("categorical").mean(torch.zeros(2, 300, 4, 4))
    with pytest.raises(VaeError, match=r"raw must have shape \(B, K, H, W\), got \(1, 4, 4\)"):
        vaecli.likelihood("gaussian").mean(torch.zeros(1, 4, 4))
    with pytest.raises(VaeError, match="bitwise needs 8 decoder channels"):
        vaecli.likelihood("bitwise").sample(torch.zeros(2, 7, 4, 4))


def test_options_are_checked_when_the_module_is_made():
    for kwargs, message in [({"name": "gaussian", "sigma": 0.0}, "sigma must be positive"),
                            ({"name": "logistic", "sigma": 0.1}, "logistic: takes no fixed sigma"),
                            ({"name": "sigma-learned", "sigma": 0.1}, "sigma-learned: takes no fixed sigma"),
                            ({"name": "logistic-mixture", "mixtures": 0}, "mixtures must be a positive integer"),
                            ({"name": "gaussian", "n_bits": True}, "n_bits must be an integer"),
                            ({"name": "gaussian", "log_sigma_min": float("nan")}, "log_sigma_min must be a finite number or None")]:
        with pytest.raises(VaeError, match=message):
            vaecli.likelihood(**kwargs)


def test_an_empty_batch_gives_an_empty_result():
    for name in vaecli.NAMES:
        lik = vaecli.likelihood(name, mixtures=2)
        raw = torch.zeros(0, lik.out_channels(1), 4, 4)
        assert lik.log_prob(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), raw).shape == (0,)
        assert lik.mean(raw).shape == (0, 1, 4, 4)


def test_per_sample_gradients_with_torch_func():
    """vmap(grad(...)): the CPU range check, which reads values on the host, is left to
    the caller there, as under torch.compile."""
    from torch.func import grad, vmap

    lik = vaecli.likelihood("logistic")
    x, raw = _batch(), torch.randn(4, 2, 6, 6)

    def one(xi, ri):
        return lik.log_prob(xi[None], ri[None])[0]

    per_sample = vmap(grad(one, argnums=1))(x, raw)
    whole = raw.clone().requires_grad_(True)
    lik.log_prob(x, whole).sum().backward()
    torch.testing.assert_close(per_sample, whole.grad)


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


def test_load_run_gives_the_model_vae_eval_evaluates(tmp_path):
    from fakes import FakeData
    from vaecli.config import TrainConfig
    from vaecli.training import train

    rng = np.random.default_rng(0)
    data = (FakeData(rng.integers(0, 256, (40, 1, 8, 8)).astype(np.uint8)),
            FakeData(rng.integers(0, 256, (10, 1, 8, 8)).astype(np.uint8), split="test", checksum="1" * 64))
    run = train(TrainConfig(epochs=1, batch_size=16, model_options=dict(latent_dim=2, width=2)), tmp_path / "r.h5", data=data,
                progress=False, log=lambda s: None)
    model = vaecli.load_run(tmp_path / "r.h5", "cpu")
    assert not model.training
    assert model.likelihood.sigma == pytest.approx(run.calibration["eval_sigma"])
    assert model.likelihood.pmf_sigma == pytest.approx(run.calibration["pmf_sigma"])
    x = torch.from_numpy(data[1].images)
    with torch.no_grad():
        mu, _ = model.encode(x)
        assert model.likelihood.log_prob(x, model.decode(mu)).shape == (10,)


def test_dir_lists_the_lazy_entry_points_without_importing_them():
    import subprocess
    import sys

    code = ("import sys, vaecli; names = dir(vaecli); "
            "print(all(n in names for n in ('likelihood', 'gaussian_kl', 'Likelihood', 'get_backend', "
            "'load_run')), names == sorted(names), 'torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "False", "False"]


def test_bernoulli_warns_once_on_non_binary_data():
    import warnings

    x8 = _batch()  # 8-bit levels
    raw = torch.zeros(4, 1, 6, 6)
    lik = vaecli.likelihood("bernoulli")
    with pytest.warns(UserWarning, match="bernoulli: x holds levels other than 0 and 255.*cross-entropy, "
                                         "not a normalized likelihood.*binarize"):
        lik.log_prob(x8, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lik.log_prob(x8, raw)  # once per module
        lik.log_pmf(x8, raw)
        binary = (x8 >= 128).to(torch.uint8) * 255
        fresh = vaecli.likelihood("bernoulli")
        fresh.log_prob(binary, raw)
        fresh.log_pmf(binary, raw)
        vaecli.likelihood("bernoulli", n_bits=4).log_prob(binary // 17, raw)  # levels 0 and 15
        vaecli.likelihood("logistic").log_prob(x8, torch.zeros(4, 2, 6, 6))  # only bernoulli warns
    with pytest.warns(UserWarning, match="levels other than 0 and 255"):
        fresh.log_pmf(x8, raw)  # binary batches do not stop the check
    with pytest.warns(UserWarning, match="levels other than 0 and 255"):
        vaecli.likelihood("bernoulli")(x8, raw)  # forward is log_prob


def test_bernoulli_check_is_left_out_under_torch_func():
    import warnings

    from torch.func import grad, vmap

    lik = vaecli.likelihood("bernoulli")
    x, raw = _batch(), torch.randn(4, 1, 6, 6)

    def one(xi, ri):
        return lik.log_prob(xi[None], ri[None])[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vmap(grad(one, argnums=1))(x, raw)


def test_raw_layout_of_the_rgb_mixture_as_documented():
    """docs/likelihoods.md, "Raw decoder outputs": RGB with K = 10 components, component
    k's logit is raw channel k, its R, G, B means 10 + 3k + c, its raw log-scales
    40 + 3k + c and its coupling coefficients a, b, c 70 + 3k + j."""
    lik = vaecli.likelihood("logistic-mixture", mixtures=10)
    assert lik.out_channels(3) == 100 and lik.out_channels(1) == 30
    k = 4
    raw = torch.zeros(1, 100, 1, 1, dtype=torch.float64)
    raw[0, k] = 100.0  # component 4 takes all the weight
    raw[0, 22:25, 0, 0] = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    assert lik.mean(raw).flatten().tolist() == pytest.approx([0.2, 0.3, 0.4])
    raw[0, 82:85, 0, 0] = torch.atanh(torch.tensor([0.5, 0.25, -0.5], dtype=torch.float64))
    m_g = 0.3 + 0.5 * 0.2
    assert lik.mean(raw).flatten().tolist() == pytest.approx([0.2, m_g, 0.4 + 0.25 * 0.2 - 0.5 * m_g])
    # the log-scales: raising channel 52 + c lowers only channel c's mass at its mean
    x = torch.tensor([51, 102, 64], dtype=torch.uint8).view(1, 3, 1, 1)  # near the coupled means
    raw[0, 82:85] = 0.0
    raw[0, 22:25, 0, 0] = x.flatten().double() / 255
    raw[0, 40:70] = -5.0  # narrow logistics: most of the mass in x's bin
    base = float(lik.log_prob(x, raw))
    for c in range(3):
        wider = raw.clone()
        wider[0, 52 + c] = 0.0
        other = raw.clone()
        other[0, 49 + c] = 0.0  # component 3's log-scale: no weight, no effect
        assert float(lik.log_prob(x, wider)) < base - 1 and float(lik.log_prob(x, other)) == pytest.approx(base)
