"""`vae train --memory-format channels_last`: the same training in NHWC layout, resumable."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_train import _config, _data  # noqa: E402
from vaecli import VaeError
from vaecli.training import loop as train_module, step as step_module  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.training.step import make_optimizer, match_layouts  # noqa: E402
from vaecli.training import train  # noqa: E402


def _layouts_seen(monkeypatch):
    """The memory formats of the 4-D parameters that training's optimizer gets."""
    seen = []
    real = train_module.make_optimizer

    def spy(params, lr):
        params = list(params)
        seen.extend((p.is_contiguous(memory_format=torch.channels_last), p.is_contiguous())
                    for p in params if p.dim() == 4)
        return real(params, lr)

    monkeypatch.setattr(train_module, "make_optimizer", spy)
    return seen


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_trains_like_contiguous_to_rounding(tmp_path, monkeypatch, channels):
    data = _data(c=channels)
    seen = _layouts_seen(monkeypatch)
    base = train(_config(epochs=2), tmp_path / "a.h5", data=data, progress=False)
    # (a weight with one input channel, (O, 1, k, k), is laid out the same either way)
    assert seen and all(contiguous for _, contiguous in seen) and not all(nhwc for nhwc, _ in seen)
    seen.clear()
    nhwc = train(_config(epochs=2, memory_format="channels_last"), tmp_path / "b.h5", data=data, progress=False)
    # every conv weight (so every conv's activations) is NHWC
    assert seen and all(nhwc for nhwc, _ in seen) and not all(contiguous for _, contiguous in seen)
    assert nhwc.config.memory_format == "channels_last"
    # the run file stores the weights by value: they load into a contiguous model
    for key in base.model:
        assert nhwc.model[key].shape == base.model[key].shape
        np.testing.assert_allclose(nhwc.model[key], base.model[key], rtol=0, atol=2e-5)  # 1.7e-6 measured
    np.testing.assert_allclose(nhwc.history["test_elbo"], base.history["test_elbo"], rtol=1e-6)  # 1.3e-8


def test_a_channels_last_run_resumes_on_its_trajectory(tmp_path):
    data = _data(c=3)
    full = train(_config(epochs=3, memory_format="channels_last"), tmp_path / "full.h5", data=data, progress=False)
    part = tmp_path / "part.h5"
    train(_config(epochs=1, memory_format="channels_last"), part, data=data, progress=False)
    resumed = train(_config(epochs=3, memory_format="channels_last"), part, data=data, resume=True, progress=False)
    for key in full.model:
        np.testing.assert_array_equal(resumed.model[key], full.model[key])
    np.testing.assert_array_equal(resumed.history["test_elbo"], full.history["test_elbo"])


def test_loaded_adam_moments_take_their_parameters_layout_and_the_step_is_unchanged():
    """The run file's moments load contiguous; the fused step then runs on moments laid
    out like their channels-last parameter, and takes the step the contiguous one does."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3)
    grad = torch.randn_like(conv.weight)

    def adam_after_a_step(memory_format):
        module = torch.nn.Conv2d(3, 5, 3)
        module.load_state_dict(conv.state_dict())
        module = module.to(memory_format=memory_format)
        opt = make_optimizer(module.parameters(), 1e-2)
        module.weight.grad = grad.clone().contiguous(memory_format=memory_format)
        module.bias.grad = torch.ones_like(module.bias)
        opt.step()
        return module, opt

    _, saved = adam_after_a_step(torch.contiguous_format)

    def stored():  # as from a run file: fresh contiguous tensors (a loaded state is stepped in place)
        return {"param_groups": saved.state_dict()["param_groups"],
                "state": {i: {k: v.clone() for k, v in s.items()} for i, s in saved.state_dict()["state"].items()}}

    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        module, opt = adam_after_a_step(memory_format)
        opt.load_state_dict(step_module.fused_state(stored()))
        match_layouts(opt)
        moments = opt.state[module.weight]
        assert moments["exp_avg"].stride() == module.weight.stride() == moments["exp_avg_sq"].stride()
        module.weight.grad = (2 * grad).contiguous(memory_format=memory_format)
        opt.step()
        results.append(module.weight.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    assert not results[1].is_contiguous()  # the second one really stepped in NHWC
    # without the layouts matched, the fused kernel pairs the wrong elements (it does on the
    # CPU with this torch; a torch that loads moments in their parameter's layout needs no fix)
    module, opt = adam_after_a_step(torch.channels_last)
    opt.load_state_dict(step_module.fused_state(stored()))
    if opt.state[module.weight]["exp_avg"].stride() != module.weight.stride():
        module.weight.grad = (2 * grad).contiguous(memory_format=torch.channels_last)
        opt.step()
        assert not torch.equal(module.weight.detach(), results[0])


def test_a_run_changes_memory_format_on_resume_and_goes_on_from_its_state(tmp_path):
    """A contiguous run resumed channels-last continues from the same weights and moments:
    it ends where the contiguous run ends, to rounding."""
    data = _data(c=3)
    full = train(_config(epochs=3), tmp_path / "full.h5", data=data, progress=False)
    part = tmp_path / "part.h5"
    train(_config(epochs=1), part, data=data, progress=False)
    resumed = train(_config(epochs=3, memory_format="channels_last"), part, data=data, resume=True, progress=False)
    assert resumed.config.memory_format == "channels_last"
    for key in full.model:
        np.testing.assert_allclose(resumed.model[key], full.model[key], rtol=0, atol=2e-5, err_msg=key)
    np.testing.assert_allclose(resumed.history["test_elbo"], full.history["test_elbo"], rtol=1e-6)


def test_an_unknown_memory_format_and_compile_with_channels_last_are_refused():
    with pytest.raises(VaeError, match="memory format must be contiguous or channels_last, got 'nhwc'"):
        TrainConfig(memory_format="nhwc")
    with pytest.raises(VaeError, match="--compile with --memory-format channels_last is not supported yet"):
        TrainConfig(compile=True, memory_format="channels_last")
