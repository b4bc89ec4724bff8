"""Training, the run file, resume and evaluation on small synthetic data."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from vaecli import VaeError, runfile  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.evaluate import evaluate  # noqa: E402
from fakes import FakeData  # noqa: E402
from vaecli.runs import load_model
from vaecli.training import train  # noqa: E402




def _data(n_train=96, n_test=32, size=12, c=1, seed=0):
    rng = np.random.default_rng(seed)
    # smooth blobs, so a VAE has something to learn
    yy, xx = np.mgrid[:size, :size]
    def make(n):
        cx, cy = rng.uniform(3, size - 3, (2, n, 1, 1))
        img = 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 6.0)
        return np.repeat(img[:, None], c, axis=1).round().astype(np.uint8)
    return FakeData(make(n_train)), FakeData(make(n_test), split="test", checksum="1" * 64)


def _config(**kw):
    base = dict(epochs=2, batch_size=32, model_options=dict(latent_dim=4, width=4), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_a_self_describing_run_file(tmp_path):
    out = tmp_path / "run.h5"
    run = train(_config(), out, data=_data(), progress=False)
    assert run.attrs["format"] == "vaecli-run" and run.attrs["schema_version"] == runfile.SCHEMA_VERSION
    assert run.attrs["status"] == "complete" and run.attrs["epochs_done"] == 2
    assert run.attrs["likelihood"] == "sigma" and run.attrs["units"] == "nats"
    assert list(run.history["epoch"]) == [1, 2]
    assert np.all(np.isfinite(run.history["test_elbo"]))
    # the evaluation sigma comes from training data, with how it was computed
    cal = run.calibration
    assert cal["eval_sigma"] == pytest.approx(run.history["sigma"][-1])
    assert cal["eval_sigma"] == pytest.approx(math.sqrt(cal["mse"]), rel=0.02)
    assert "mean squared error" in cal["method"]
    assert run.history["equivalent_beta"][-1] == pytest.approx(2 * cal["eval_sigma"] ** 2)
    assert run.samples["prior"][0].shape == (64, 1, 12, 12) and run.samples["prior"][0].dtype == np.uint8
    # no pickle anywhere: every object is a plain dataset or attribute
    with h5py.File(out) as f:
        kinds = set()
        f.visititems(lambda name, obj: kinds.add(obj.dtype.kind) if isinstance(obj, h5py.Dataset) else None)
        assert kinds <= {"f", "i", "u", "b"}


def test_refuses_to_overwrite_and_resume_checks_options(tmp_path):
    out = tmp_path / "run.h5"
    data = _data()
    train(_config(epochs=1), out, data=data, progress=False)
    with pytest.raises(VaeError, match="exists; pass --resume"):
        train(_config(epochs=1), out, data=data, progress=False)
    with pytest.raises(VaeError, match=r"cannot resume with different options: lr \(run file: 0.001, now: 0.01\)"):
        train(_config(epochs=2, lr=1e-2), out, data=data, resume=True, progress=False)


def test_resume_matches_an_uninterrupted_run_exactly(tmp_path):
    data = _data()
    full = train(_config(epochs=3), tmp_path / "full.h5", data=data, progress=False)
    part = tmp_path / "part.h5"
    train(_config(epochs=1), part, data=data, progress=False)
    resumed = train(_config(epochs=3), part, data=data, resume=True, progress=False)
    for k in full.model:
        np.testing.assert_array_equal(resumed.model[k], full.model[k])
    for k in ("train_elbo", "test_elbo", "sigma"):
        np.testing.assert_array_equal(resumed.history[k], full.history[k])


@pytest.mark.parametrize("likelihood", ["gaussian", "sigma-learned", "logistic-mixture", "categorical", "bitwise"])
def test_every_family_trains_and_evaluates(tmp_path, likelihood):
    out = tmp_path / f"{likelihood}.h5"
    run = train(_config(likelihood=likelihood, epochs=1, mixtures=2), out, data=_data(), progress=False)
    if likelihood == "sigma-learned":  # the likelihood's own parameter is saved with the model
        assert run.model["likelihood.log_sigma"].shape == ()
    model = load_model(run, "cpu")
    images = torch.from_numpy(_data()[1].images)
    results = evaluate(model, images, ["elbo", "bpd", "nll", "kl", "mse", "active-units"], iw_samples=3)
    for metric in ("elbo", "bpd", "nll", "kl", "mse"):
        assert results[metric]["applicable"] and np.isfinite(results[metric]["value"])
    assert results["bpd"]["value"] > 0
    # the IW bound with K samples is at least as tight as the single-sample ELBO on average
    assert -results["nll"]["nats_discrete"] >= -results["bpd"]["value"] * 144 * math.log(2) - 5


def test_metrics_not_defined_are_reported_not_computed(tmp_path):
    run = train(_config(likelihood="sigma-image", epochs=1), tmp_path / "si.h5", data=_data(), progress=False)
    results = evaluate(load_model(run, "cpu"), torch.from_numpy(_data()[1].images), ["bpd", "kl"])
    assert results["bpd"]["applicable"] is False and "training objective only" in results["bpd"]["reason"]
    assert results["kl"]["applicable"] is True


def test_sigma_model_is_evaluated_with_the_stored_sigma(tmp_path):
    run = train(_config(epochs=1), tmp_path / "s.h5", data=_data(), progress=False)
    model = load_model(run, "cpu")
    assert model.likelihood.sigma == pytest.approx(run.calibration["eval_sigma"])
    results = evaluate(model, torch.from_numpy(_data()[1].images), ["elbo"])
    assert results["elbo"]["decoder_sigma"] == pytest.approx(run.calibration["eval_sigma"])


def test_store_evaluation_round_trips(tmp_path):
    out = tmp_path / "r.h5"
    train(_config(epochs=1), out, data=_data(), progress=False)
    runfile.store_evaluation(out, "test", {"bpd": {"value": 1.25, "stderr": 0.01, "unit": "bits/dim", "n": 32,
                                                   "applicable": True}})
    run = runfile.read(out)
    assert run.evaluations["test"]["bpd"]["value"] == 1.25
    assert run.attrs["status"] == "complete"  # the rest of the file is untouched
    assert list(run.history["epoch"]) == [1]


def test_not_a_run_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(VaeError, match="not an HDF5 file"):
        runfile.read(bad)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(VaeError, match="not a vaecli run file"):
        runfile.read(tmp_path / "other.h5")
    with pytest.raises(VaeError, match="no such run file"):
        runfile.read(tmp_path / "missing.h5")


def test_newer_schema_is_refused(tmp_path):
    out = tmp_path / "r.h5"
    train(_config(epochs=1), out, data=_data(), progress=False)
    with h5py.File(out, "r+") as f:
        f.attrs["schema_version"] = runfile.SCHEMA_VERSION + 1
    with pytest.raises(VaeError, match="seal mismatch"):  # edited outside vaecli
        runfile.read(out)
    runfile.seal(out)
    with pytest.raises(VaeError, match="newer than this vaecli"):
        runfile.read(out)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_sigint_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch, signame):
    """Ctrl-C (or a SIGTERM, as schedulers send) in the middle of an epoch: the step in
    flight completes, the run file says 'interrupted', and --resume ends bitwise equal
    to an uninterrupted run."""
    import signal

    import vaecli.training.step as step_module

    data = _data()
    full = train(_config(epochs=2), tmp_path / "full.h5", data=data, progress=False)

    calls = {"n": 0}
    real_kl = step_module.total_kl

    def kl_then_interrupt(groups):
        calls["n"] += 1
        if calls["n"] == 4:  # 3 training steps in epoch 1, then epoch 2's first step
            signal.raise_signal(getattr(signal, signame))
        return real_kl(groups)

    monkeypatch.setattr(step_module, "total_kl", kl_then_interrupt)
    part = tmp_path / "part.h5"
    with pytest.raises(VaeError, match=r"interrupted at epoch 2, step 1/3; saved .*--resume"):
        train(_config(epochs=2), part, data=data, progress=False)
    saved = runfile.read(part)
    assert saved.attrs["status"] == "interrupted" and saved.progress["step_in_epoch"] == 1
    monkeypatch.setattr(step_module, "total_kl", real_kl)
    resumed = train(_config(epochs=2), part, data=data, resume=True, progress=False)
    for k in full.model:
        np.testing.assert_array_equal(resumed.model[k], full.model[k])
    for k in ("train_elbo", "train_kl", "test_elbo", "sigma"):
        np.testing.assert_array_equal(resumed.history[k], full.history[k])


@pytest.mark.parametrize("where", ["epoch end", "checkpoint"])
def test_a_second_interrupt_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, where):
    """Two quick Ctrl-Cs: the second lands anywhere (here between an epoch's bookkeeping
    and its count, or while the first's checkpoint is written).  Nothing is written
    then: the last checkpoint stands as it was, and resuming from it is exact.  (A
    checkpoint of the half-counted epoch resumed onto another trajectory.)"""
    import signal

    import vaecli.training.loop as train_module
    from vaecli import runfile as runfile_module

    data = _data()
    full = train(_config(epochs=3), tmp_path / "full.h5", data=data, progress=False)
    part = tmp_path / "part.h5"
    real_test, real_write = train_module._test_elbo, runfile_module.write
    state = {"tests": 0}

    def test_elbo_then_two_signals(*args, **kwargs):
        state["tests"] += 1
        if state["tests"] == 2:  # epoch 2's end: its data order is advanced, epochs_done not yet
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real_test(*args, **kwargs)

    def write_then_signal(path, **kwargs):
        if kwargs["attrs"]["status"] == "interrupted":
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C while the first one's checkpoint is written
        return real_write(path, **kwargs)

    if where == "epoch end":
        monkeypatch.setattr(train_module, "_test_elbo", test_elbo_then_two_signals)
    else:
        import vaecli.training.step as step_module

        calls, step_kl = {"n": 0}, step_module.total_kl

        def kl_then_interrupt(groups):
            calls["n"] += 1
            if calls["n"] == 5:  # epoch 2, second step
                signal.raise_signal(signal.SIGINT)
            return step_kl(groups)

        monkeypatch.setattr(step_module, "total_kl", kl_then_interrupt)
        monkeypatch.setattr(runfile_module, "write", write_then_signal)
    with pytest.raises(VaeError, match=r"interrupted twice: stopped at once, without saving; .*part.h5 holds the "
                                       r"last checkpoint \(epoch 1 complete\) unchanged; continue with --resume"):
        train(_config(epochs=3), part, data=data, progress=False)
    saved = runfile.read(part)
    assert int(saved.attrs["epochs_done"]) == 1 and saved.attrs["status"] == "training"
    monkeypatch.undo()
    resumed = train(_config(epochs=3), part, data=data, resume=True, progress=False)
    for k in full.model:
        np.testing.assert_array_equal(resumed.model[k], full.model[k])
    np.testing.assert_array_equal(resumed.history["test_elbo"], full.history["test_elbo"])


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 32, 32)])
@pytest.mark.parametrize("likelihood", ["sigma", "logistic-mixture", "categorical"])
def test_model_sizes_itself(shape, likelihood):
    from vaecli.runs import build_model

    config = _config(likelihood=likelihood, model_options=dict(latent_dim=20, width=8), mixtures=2)
    model = build_model(config, shape, torch.device("cpu"))
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    raw, (group,) = model(x, torch.randn(2, model.latent_size))[:2]
    assert group.mean.shape == group.logvar.shape == group.z.shape == (2, 20)
    assert raw.shape == (2, model.likelihood.out_channels(shape[0]), *shape[1:])
    assert torch.isfinite(model.likelihood.log_prob(x, raw)).all()


def test_model_refuses_sizes_it_cannot_mirror():
    from vaecli.runs import build_model

    with pytest.raises(VaeError, match="divisible by 4"):
        build_model(_config(), (1, 30, 30), torch.device("cpu"))
    with pytest.raises(VaeError, match="square"):
        build_model(_config(), (1, 28, 32), torch.device("cpu"))
