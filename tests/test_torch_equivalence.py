"""The torch backend against the float64 NumPy reference: values and gradients,
float32 and float64, on CPU always and on CUDA when a device is present."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vaecli import reference, registry, verify  # noqa: E402
from vaecli.backends import torch_backend  # noqa: E402

SEEDS = (0, 1)
CASES = [
    pytest.param(name, kind, c, seed, id=f"{name}-{kind}-C{c}-seed{seed}")
    for name, kind, c in verify.cases(registry.NAMES)
    for seed in SEEDS
]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
    ),
]


@pytest.fixture(scope="module")
def reference_cache():
    return {}


def _reference(cache, name, kind, c, seed):
    key = (name, kind, c, seed)
    if key not in cache:
        x, raw, options = verify.make_inputs(name, seed, c)
        cache[key] = (x, raw, options, verify.reference_value_and_grad(name, kind, x, raw, options))
    return cache[key]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,kind,c,seed", CASES)
def test_matches_reference(reference_cache, name, kind, c, seed, dtype, device):
    x, raw, options, (value, grad, grad_log_sigma) = _reference(reference_cache, name, kind, c, seed)
    assert (x == 0).any() and (x == registry.num_levels(8) - 1).any()  # edge pixels present
    got_value, got_grad, got_grad_log_sigma = verify._torch_value_and_grad(
        name, kind, x, raw, options, dtype, device
    )
    tol = verify.TOLERANCES[dtype]
    np.testing.assert_allclose(
        got_value, value, rtol=tol["value_rtol"], atol=tol["value_atol_per_dim"] * x[0].size
    )
    scale = max(1.0, np.abs(grad).max())
    np.testing.assert_allclose(got_grad, grad, rtol=tol["grad_rtol"], atol=tol["grad_atol_scale"] * scale)
    if name == "sigma-learned":
        np.testing.assert_allclose(
            got_grad_log_sigma, grad_log_sigma, rtol=tol["grad_rtol"], atol=tol["grad_atol_scale"] * scale
        )


def test_inputs_hold_extremes():
    x, raw, options = verify.make_inputs("logistic-mixture", 0, 3)
    assert raw.max() == verify.EXTREME_LOGIT and raw.min() in (-verify.EXTREME_LOGIT, verify.BELOW_FLOOR)
    assert (raw == verify.BELOW_FLOOR).any()
    x2, raw2, _ = verify.make_inputs("logistic-mixture", 1, 3)
    assert not np.array_equal(raw, raw2)  # fresh inputs per seed


def test_compare_detects_a_wrong_value():
    x, raw, options = verify.make_inputs("gaussian", 0, 1)
    expected = verify.reference_value_and_grad("gaussian", "log_prob", x, raw, options)
    wrong = (expected[0] + 1e-3, expected[1], expected[2])
    value_ok, grad_ok, _ = verify.compare(wrong, expected, "float64", x[0].size)
    assert not value_ok and grad_ok
    wrong_grad = (expected[0], expected[1] * 1.01, expected[2])
    assert not verify.compare(wrong_grad, expected, "float64", x[0].size)[1]


@pytest.mark.parametrize("name, kind", [
    ("bernoulli", "log_prob"), ("bitwise", "log_pmf"), ("logistic", "log_pmf"), ("gaussian-pixel", "log_prob"),
])
def test_float64_softplus_terms_keep_their_tails(name, kind):
    """Beyond torch's softplus threshold (20) log(1 + e^t) is not t: the dropped e^-t is
    about 1e-9 near 21, a relative error of about 1e-10, which float64 resolves.  The
    torch float64 backend matches the reference there to 1e-14."""
    x = np.zeros((1, 1, 2, 2), np.uint8)  # black pixels: bit 0, the first bin
    channels = {"bernoulli": 1, "bitwise": 8, "logistic": 2, "gaussian-pixel": 2}[name]
    raw = np.full((1, channels, 2, 2), 21.0)  # a logit, or 21 above the log-scale floor (-6)
    if name == "logistic":
        # mean 0.5, scale 0.5 / 20.5: the first bin's upper edge is 20.5 scales below the mean
        raw[:, 0] = 0.5
        raw[:, 1] = -6 + np.log(np.expm1(np.log(0.5 / 20.5) + 6))  # softclip inverted
    if name == "gaussian-pixel":
        raw[:, 1] = 15.0
    expected = getattr(reference, kind)(name, x, raw)
    got = getattr(torch_backend, kind)(name, torch.from_numpy(x), torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)
