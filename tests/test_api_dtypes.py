"""The Likelihood module's own tensors and sigmas keep the dtype they are made or used in."""

import math

import pytest

torch = pytest.importorskip("torch")

import vaecli  # noqa: E402
from vaecli import VaeError  # noqa: E402


def _softclipped_sigma(t, floor=-6.0):  # exp(softclip(t, floor)) in float64
    return math.exp(floor + math.log1p(math.exp(t - floor)))


def test_sigma_learned_makes_its_parameter_in_the_given_dtype():
    lik = vaecli.likelihood("sigma-learned", init_log_sigma=0.1, dtype=torch.float64, device="cpu")
    assert lik.log_sigma.dtype == torch.float64 and lik.log_sigma.item() == 0.1
    assert lik.double().log_sigma.item() == 0.1
    # without dtype, torch's default dtype, as torch modules do; .double() then converts
    # the float32-rounded value
    made = vaecli.likelihood("sigma-learned", init_log_sigma=0.1)
    assert made.log_sigma.dtype == torch.get_default_dtype() == torch.float32
    assert made.double().log_sigma.item() == float(torch.tensor(0.1, dtype=torch.float32))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert vaecli.likelihood("sigma-learned", init_log_sigma=0.1).log_sigma.item() == 0.1
    finally:
        torch.set_default_dtype(previous)


def test_a_dtype_other_than_float32_or_float64_is_refused():
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        with pytest.raises(VaeError, match="sigma-learned: likelihoods compute in float32 or float64"):
            vaecli.likelihood("sigma-learned", dtype=dtype)


def test_current_sigma_of_a_float64_model_is_not_rounded_to_float32():
    lik = vaecli.likelihood("sigma-learned", init_log_sigma=0.1, dtype=torch.float64)
    assert abs(lik.current_sigma() - _softclipped_sigma(0.1)) < 1e-14
    # a float32 model's sigma is the float32 one it computes with
    lik32 = vaecli.likelihood("sigma-learned", init_log_sigma=0.1)
    assert abs(lik32.current_sigma() - _softclipped_sigma(0.1)) > 1e-9
    # a fixed sigma is a Python float: no float32 detour
    for name in ("gaussian", "sigma", "sigma-image"):
        assert abs(vaecli.likelihood(name, sigma=0.1).current_sigma() - 0.1) < 1e-15
    # with a batch: raw's dtype, as log_prob uses it
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    raw = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert abs(lik.current_sigma(x, raw) - _softclipped_sigma(0.1)) < 1e-14
