"""Every training feature with every model family: the mlp and the hvae train with each of
the eleven likelihoods, resume bitwise after a Ctrl-C mid-epoch, skip non-finite steps,
run bf16 and compiled.  (The conv model's own tests are in test_train, test_step and
test_fault_injection; --nproc 2 and FID of these models are in test_distributed and test_fid.)"""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from vaecli import VaeError, registry  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.evaluate import evaluate  # noqa: E402
from vaecli.runs import load_model  # noqa: E402
from vaecli.training import train  # noqa: E402
from fakes import FakeData, blob_images, interrupt_at_kl_call  # noqa: E402

MODELS = {
    "mlp": dict(model="mlp", model_options=dict(latent_dim=3, hidden=16)),
    "hvae": dict(model="hvae", model_options=dict(width=4, latent_channels=2, blocks=1)),
}


def _data():
    images = blob_images(48, size=8)
    return FakeData(images[:32]), FakeData(images[32:], split="test", checksum="1" * 64)


def _config(name, **kw):
    return TrainConfig(**{**dict(epochs=1, batch_size=16, seed=2, mixtures=2), **MODELS[name], **kw})


@pytest.mark.parametrize("likelihood", registry.NAMES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_likelihood_trains_and_evaluates(tmp_path, name, likelihood):
    kw = dict(binarize=True) if likelihood == "bernoulli" else {}
    run = train(_config(name, likelihood=likelihood, **kw), tmp_path / "r.h5", data=_data(), progress=False)
    assert math.isfinite(run.history["test_elbo"][-1])
    model = load_model(run, "cpu")
    x = torch.from_numpy(_data()[1].images)
    if kw:
        x = (x >= 128).to(torch.uint8)
    results = evaluate(model, x, ["elbo", "bpd", "kl"], iw_samples=2)
    for metric in ("elbo", "bpd"):  # a number, or (as for conv) not applicable with the reason
        r = results[metric]
        assert (math.isfinite(r["value"]) and (metric != "bpd" or r["value"] > 0)) if r["applicable"] else r["reason"]
    # a density to report, except for sigma-image (a training objective only) and binarized bernoulli
    assert results["bpd"]["applicable"] == (likelihood not in ("sigma-image", "bernoulli"))
    assert results["kl"]["value"] >= 0
    if name == "hvae":  # the rate of each group, which sum to the total
        groups = json.loads(results["kl"]["per_group"])
        assert len(groups) == 2 and sum(groups.values()) == pytest.approx(results["kl"]["value"], rel=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ctrl_c_mid_epoch_resumes_bitwise(tmp_path, monkeypatch, name):
    data = _data()
    full = train(_config(name, epochs=2), tmp_path / "full.h5", data=data, progress=False)
    undo = interrupt_at_kl_call(monkeypatch, 3)  # epoch 2's first step (2 steps an epoch)
    part = tmp_path / "part.h5"
    with pytest.raises(VaeError, match=r"interrupted at epoch 2, step 1/2"):
        train(_config(name, epochs=2), part, data=data, progress=False)
    undo()
    resumed = train(_config(name, epochs=2), part, data=data, resume=True, progress=False)
    for k in full.model:
        np.testing.assert_array_equal(resumed.model[k], full.model[k], err_msg=k)
    for k in full.ema:  # the hvae's weights average too
        np.testing.assert_array_equal(resumed.ema[k], full.ema[k], err_msg=k)
    for k in ("train_elbo", "test_elbo", "test_kl"):
        np.testing.assert_array_equal(resumed.history[k], full.history[k])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_nonfinite_steps_are_skipped_and_leave_the_weights_finite(tmp_path, monkeypatch, name):
    import vaecli.training.step as step_module

    real_kl, calls = step_module.total_kl, {"n": 0}

    def kl_with_a_nan(groups):
        calls["n"] += 1
        return real_kl(groups) * float("nan") if calls["n"] == 2 else real_kl(groups)

    monkeypatch.setattr(step_module, "total_kl", kl_with_a_nan)
    run = train(_config(name, epochs=2), tmp_path / "r.h5", data=_data(), progress=False)
    assert list(run.history["skipped_steps"]) == [1, 0]
    assert all(np.isfinite(v).all() for v in run.model.values())
    assert all(float(np.max(s["step"])) == 3 for s in run.optimizer["state"].values())  # 4 steps, 1 skipped


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_tracks_float32(tmp_path, name):
    data = _data()
    elbo = {p: train(_config(name, epochs=2, precision=p), tmp_path / f"{p}.h5", data=data, progress=False
                     ).history["test_elbo"][-1] for p in ("float32", "bf16")}
    assert math.isfinite(elbo["bf16"]) and elbo["bf16"] == pytest.approx(elbo["float32"], rel=0.05), elbo


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_step_follows_the_eager_one(tmp_path, name):
    data = _data()
    elbo = {c: train(_config(name, compile=c), tmp_path / f"{c}.h5", data=data, progress=False
                     ).history["test_elbo"][-1] for c in (False, True)}
    assert elbo[True] == pytest.approx(elbo[False], rel=1e-4), elbo
