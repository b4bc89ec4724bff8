"""float64 torch.autograd.gradcheck of every likelihood of the torch backend.

On moderate inputs: gradcheck differentiates whole per-image sums with a fixed step,
which cannot resolve gradients next to terms of size 1e5 (log-scales at the floor).
Extreme inputs are covered by test_torch_equivalence, whose reference differences
are taken per pixel."""

import pytest

torch = pytest.importorskip("torch")

from vaecli import registry, verify  # noqa: E402
from vaecli.backends import torch_backend  # noqa: E402


@pytest.mark.parametrize("name,kind,c", [pytest.param(*case, id="-".join(map(str, case))) for case in verify.cases(registry.NAMES)])
def test_gradcheck(name, kind, c):
    x, raw, options = verify.make_inputs(name, seed=7, channels=c, batch=2, size=3, extremes=False)
    x = torch.as_tensor(x)
    raw = torch.tensor(raw, requires_grad=True)
    inputs = [raw]
    if "log_sigma" in options:
        options["log_sigma"] = torch.tensor(float(options["log_sigma"]), dtype=torch.float64, requires_grad=True)
        inputs.append(options["log_sigma"])
    fn = getattr(torch_backend, kind)

    def f(raw, *log_sigma):
        opts = dict(options, log_sigma=log_sigma[0]) if log_sigma else options
        return fn(name, x, raw, **opts)

    assert torch.autograd.gradcheck(f, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-4)
