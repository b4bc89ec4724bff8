"""One options contract: every backend validates a likelihood's options with the one
parser in vaecli.registry, so the same bad option raises the same VaeError, word for
word, from the float64 reference, the torch backend (and its check_options, which the
Python API calls when a Likelihood is made), the CuPy formulas on NumPy, the CuPy
kernels compiled for the host, and the CuPy torch bridge; and the same good options
give the same values."""

from __future__ import annotations

import math
import numbers
import re
import subprocess
import sys

import numpy as np
import pytest

from vaecli import reference, registry
from vaecli.backends.cupy_backend import formulas
from vaecli.errors import VaeError

torch = pytest.importorskip("torch")

from vaecli.backends import torch_backend  # noqa: E402
from vaecli.backends.cupy_backend import kernels, torch_bridge  # noqa: E402

NUMPY = formulas.numpy_namespace()
FIXED = ", ".join(registry.FIXED_SIGMA)
OPTIONS = ", ".join(registry.OPTION_NAMES)

# (likelihood, options, the exact message every backend raises)
BAD = [
    ("logistic", {"sigma": 0.1}, f"logistic: takes no fixed sigma (only {FIXED} do)"),
    ("gaussian-pixel", {"sigma": 0.1}, f"gaussian-pixel: takes no fixed sigma (only {FIXED} do)"),
    ("sigma-learned", {"sigma": 0.1, "log_sigma": 0.0}, f"sigma-learned: takes no fixed sigma (only {FIXED} do)"),
    ("logistic-mixture", {"sigma": 0.1}, f"logistic-mixture: takes no fixed sigma (only {FIXED} do)"),
    ("logistic-mixture", {"mixtures": 0}, "logistic-mixture: mixtures must be a positive integer, got 0"),
    ("logistic-mixture", {"mixtures": True}, "logistic-mixture: mixtures must be a positive integer, got True"),
    ("logistic-mixture", {"mixtures": 2.5}, "logistic-mixture: mixtures must be a positive integer, got 2.5"),
    ("logistic-mixture", {"mixtures": 2.0}, "logistic-mixture: mixtures must be a positive integer, got 2.0"),
    ("logistic-mixture", {"mixtures": "3"}, "logistic-mixture: mixtures must be a positive integer, got '3'"),
    ("logistic", {"mixtures": -1}, "logistic: mixtures must be a positive integer, got -1"),
    ("gaussian", {"n_bits": 0}, "gaussian: n_bits must be an integer from 1 to 16, got 0"),
    ("gaussian", {"n_bits": 17}, "gaussian: n_bits must be an integer from 1 to 16, got 17"),
    ("gaussian", {"n_bits": 8.0}, "gaussian: n_bits must be an integer from 1 to 16, got 8.0"),
    ("gaussian", {"n_bits": True}, "gaussian: n_bits must be an integer from 1 to 16, got True"),
    ("gaussian", {"sigma": -1}, "gaussian: sigma must be positive and finite, got -1"),
    ("gaussian", {"sigma": 0.0}, "gaussian: sigma must be positive and finite, got 0.0"),
    ("gaussian", {"sigma": math.nan}, "gaussian: sigma must be positive and finite, got nan"),
    ("sigma", {"sigma": math.inf}, "sigma: sigma must be positive and finite, got inf"),
    ("sigma-image", {"sigma": "0.1"}, "sigma-image: sigma must be a real number, got '0.1'"),
    ("sigma", {"sigma": True}, "sigma: sigma must be a real number, got True"),
    ("sigma", {"sigma": np.array([0.1, 0.2])}, "sigma: sigma must be a scalar (shape ()), got shape (2,)"),
    ("gaussian", {"log_sigma_min": math.inf}, "gaussian: log_sigma_min must be a finite number or None, got inf"),
    ("student-t", {"log_sigma_min": -math.inf},
     "student-t: log_sigma_min must be a finite number or None, got -inf"),
    ("logistic", {"log_sigma_min": np.float64("nan")},
     "logistic: log_sigma_min must be a finite number or None, got np.float64(nan)"),
    ("logistic", {"log_sigma_min": "-6"}, "logistic: log_sigma_min must be a real number, got '-6'"),
    ("sigma-learned", {"log_sigma": math.nan}, "sigma-learned: log_sigma must be finite, got nan"),
    ("sigma-learned", {"log_sigma": np.array(np.inf)},
     "sigma-learned: log_sigma must be finite, got array(inf)"),
    ("sigma-learned", {"log_sigma": np.zeros(3)},
     "sigma-learned: log_sigma must be a scalar (shape ()), got shape (3,)"),
    ("sigma-learned", {"log_sigma": True}, "sigma-learned: log_sigma must be a real number, got True"),
    ("gaussian", {"log_sigma": 0.0},
     "gaussian: takes no log_sigma (only sigma-learned does: its learned raw log sigma)"),
    ("logistic", {"sigmaa": 1.0}, f"logistic: unknown option(s) sigmaa; the options are: {OPTIONS}"),
    ("gaussian", {"bogus": 1, "sigma": -1.0, "mixtures": 0},  # the first check that fails
     f"gaussian: unknown option(s) bogus; the options are: {OPTIONS}"),
    ("gaussian", {"sigma": -1.0, "mixtures": 0}, "gaussian: sigma must be positive and finite, got -1.0"),
    ("poisson", {}, "unknown likelihood 'poisson'; choose one of: " + ", ".join(registry.NAMES)),
]


def _inputs(name, opts, seed=0):
    """x (2, 1, 2, 2) and raw that fit ``name`` (with the options' mixtures and n_bits
    where they are valid), so that only the options can be wrong."""
    rng = np.random.default_rng(seed)
    def valid(value, default, low, high):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high
        return int(value) if ok else default

    n_bits = valid(opts.get("n_bits", 8), 8, 1, 16)
    mixtures = valid(opts.get("mixtures", 10), 10, 1, 1000)
    levels = 2**n_bits
    x = rng.integers(0, levels, size=(2, 1, 2, 2))
    x[0, 0, 0, 0], x[1, 0, 1, 1] = 0, levels - 1
    out = registry.out_channels(name if name in registry.NAMES else "gaussian", 1, n_bits, mixtures)
    raw = rng.normal(0.0, 1.0, size=(2, out, 2, 2))
    return x.astype(np.uint8 if levels <= 256 else np.int32), raw


def _host_launch(tmp_path_factory):
    from vaecli.backends.cupy_backend import host

    return host.launcher(tmp_path_factory.mktemp("contract_kernels")) if host.available() else None


@pytest.fixture(scope="module")
def host_launch(tmp_path_factory):
    return _host_launch(tmp_path_factory)


def _numpy_engine():
    """The torch bridge's autograd logic over the formulas on NumPy (no CUDA here)."""
    return torch_bridge.Engine(
        to_array=lambda t: t.detach().numpy(),
        to_torch=torch.from_numpy,
        stream=lambda device: _Nothing(),
        evaluate=lambda name, x, raw, kind, **kw: formulas.evaluate(name, x, raw, kind, ns=NUMPY, **kw),
    )


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _calls(name, opts, host_launch):
    """{backend: a call with these options} for every implementation of the contract."""
    x, raw = _inputs(name, opts)
    x_t, raw_t = torch.from_numpy(x), torch.from_numpy(raw)
    calls = {
        "reference": lambda: reference.log_prob(name, x, raw, **opts),
        "reference-mean": lambda: reference.mean(name, raw, **opts),
        "torch": lambda: torch_backend.log_prob(name, x_t, raw_t, **opts),
        "torch-pmf": lambda: torch_backend.log_pmf(name, x_t, raw_t, **opts),
        "torch-mean": lambda: torch_backend.mean(name, raw_t, **opts),
        "torch-check_options": lambda: torch_backend.check_options(name, **opts),
        "cupy-formulas": lambda: formulas.value(name, x, raw, "log_prob", ns=NUMPY, **opts),
        "cupy-formulas-mean": lambda: formulas.mean(name, raw, ns=NUMPY, **opts),
        "cupy-torch-bridge": lambda: torch_bridge._apply(name, "log_prob", x_t, raw_t, opts, _numpy_engine()),
    }
    if host_launch is not None and (name not in registry.NAMES or kernels.supports(name)):
        calls["cupy-kernels"] = lambda: kernels.evaluate(name, x, raw, "log_prob", ns=NUMPY, launch=host_launch,
                                                         **opts)
    return calls


@pytest.mark.parametrize("name, opts, message", [pytest.param(*case, id=f"{case[0]}-{i}") for i, case in enumerate(BAD)])
def test_the_same_bad_option_gives_the_same_error_everywhere(name, opts, message, host_launch):
    for backend, call in _calls(name, opts, host_launch).items():
        with pytest.raises(VaeError) as caught:
            call()
        assert str(caught.value) == message, backend


def test_sigma_learned_without_its_log_sigma():
    """Evaluating sigma-learned needs log_sigma (its mean does not): the same message."""
    name = "sigma-learned"
    want = "sigma-learned needs the option log_sigma (the model's raw scalar log-sigma parameter, shape ())"
    x, raw = _inputs(name, {})
    for call in (lambda: reference.log_prob(name, x, raw),
                 lambda: torch_backend.log_pmf(name, torch.from_numpy(x), torch.from_numpy(raw)),
                 lambda: formulas.value(name, x, raw, "log_pmf", ns=NUMPY)):
        with pytest.raises(VaeError, match=re.escape(want)):
            call()
    torch_backend.check_options(name)  # a Likelihood module is made before its parameter is passed
    reference.mean(name, raw)


def test_backend_only_options_stay_with_their_backend():
    """batch_reduce is the torch backend's own (the data-parallel batch MSE); the others
    refuse it as unknown, and the shared message lists only the shared options."""
    x, raw = _inputs("sigma", {})
    got = torch_backend.log_prob("sigma", torch.from_numpy(x), torch.from_numpy(raw), batch_reduce=lambda t: t)
    np.testing.assert_allclose(got.numpy(), reference.log_prob("sigma", x, raw), rtol=1e-12)
    message = f"sigma: unknown option(s) batch_reduce; the options are: {OPTIONS}"
    for call in (lambda: reference.log_prob("sigma", x, raw, batch_reduce=None),
                 lambda: formulas.value("sigma", x, raw, ns=NUMPY, batch_reduce=None)):
        with pytest.raises(VaeError) as caught:
            call()
        assert str(caught.value) == message


def test_a_log_sigma_tensor_is_checked_where_it_can_be_read():
    """torch's log_sigma is the model's Parameter and stays a tensor (autograd); on the
    CPU its value is read and checked, on a device or under tracing it is not read."""
    x, raw = _inputs("sigma-learned", {})
    bad = torch.tensor(float("nan"), dtype=torch.float64, requires_grad=True)
    with pytest.raises(VaeError, match="sigma-learned: log_sigma must be finite, got tensor"):
        torch_backend.log_prob("sigma-learned", torch.from_numpy(x), torch.from_numpy(raw), log_sigma=bad)
    with pytest.raises(VaeError, match="sigma-learned: log_sigma must be a scalar \\(shape \\(\\)\\), got shape \\(1,\\)"):
        torch_backend.log_prob("sigma-learned", torch.from_numpy(x), torch.from_numpy(raw),
                               log_sigma=torch.zeros(1, dtype=torch.float64))
    good = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    value = torch_backend.log_prob("sigma-learned", torch.from_numpy(x), torch.from_numpy(raw), log_sigma=good)
    value.sum().backward()
    assert good.grad is not None and torch.isfinite(good.grad)
    o = registry.parse_options("sigma-learned", {"log_sigma": good}, read_scalar=lambda v: None)
    assert o.log_sigma is good  # kept as given: the parameter stays in the graph


# (likelihood, options, x's n_bits): valid options, the same values on every backend
GOOD = [
    ("gaussian", {"sigma": 0.3}, 8),
    ("gaussian", {}, 8),
    ("sigma", {"sigma": np.float64(0.2)}, 8),
    ("sigma", {}, 8),
    ("sigma-image", {"sigma": np.array(0.25)}, 8),
    ("sigma-learned", {"log_sigma": -1.5}, 8),
    ("sigma-learned", {"log_sigma": np.array(0.4), "log_sigma_min": None}, 8),
    ("gaussian-pixel", {"log_sigma_min": -3}, 8),
    ("gaussian-pixel", {"n_bits": 9}, 9),
    ("student-t", {"n_bits": np.int64(5)}, 5),
    ("logistic", {"log_sigma_min": None}, 8),
    ("logistic", {"n_bits": 4, "mixtures": 3}, 4),  # mixtures is checked everywhere, used by the mixture
    ("logistic-mixture", {"mixtures": np.int32(2)}, 8),
    ("logistic-mixture", {"mixtures": 1, "log_sigma_min": -4.5}, 8),
    ("categorical", {"n_bits": 3}, 3),
    ("bitwise", {"n_bits": 6}, 6),
    ("bernoulli", {}, 8),
]


@pytest.mark.parametrize("name, opts, n_bits", [pytest.param(*g, id=f"{g[0]}-{i}") for i, g in enumerate(GOOD)])
@pytest.mark.parametrize("kind", ["log_prob", "log_pmf"])
def test_the_same_good_options_give_the_same_values(name, opts, n_bits, kind, host_launch):
    x, raw = _inputs(name, dict(opts, n_bits=n_bits), seed=3)
    want = getattr(reference, kind)(name, x, raw, **opts)
    assert np.all(np.isfinite(want))
    got = {
        "torch": getattr(torch_backend, kind)(name, torch.from_numpy(x), torch.from_numpy(raw), **opts).numpy(),
        "cupy-formulas": formulas.value(name, x, raw, kind, ns=NUMPY, **opts),
    }
    if host_launch is not None and kernels.supports(name):
        got["cupy-kernels"] = kernels.evaluate(name, x, raw, kind, ns=NUMPY, launch=host_launch,
                                               need_grad=False, **opts).value
    for backend, value in got.items():
        np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-10, err_msg=backend)
    one = registry.parse_options(name, opts)  # the same Options, whichever backend parsed them
    for parse in (reference.parse_options, formulas.parse_options, torch_backend._options):
        assert parse(name, opts) == one


def test_the_parser_imports_neither_numpy_nor_torch():
    code = ("import sys, vaecli.registry as r; r.parse_options('logistic', {'n_bits': 8}); "
            "assert 'numpy' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
