"""--validation and --early-stop: a validation split carved from the training split (never
the test split), its bits/dim each epoch, and training that ends after --early-stop epochs
without a gain larger than --min-delta; complete, resumable, and usable in vae sweep."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from click.testing import CliRunner  # noqa: E402

from vaecli import VaeError, runfile  # noqa: E402
from vaecli.cli import main  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.training import train  # noqa: E402
from vaecli.training.state import best_validation  # noqa: E402
from fakes import FakeData, blob_images  # noqa: E402


def _data():
    images = blob_images(60, size=8)
    return FakeData(images[:40]), FakeData(images[40:], split="test", checksum="1" * 64)


def _config(**kw):
    base = dict(epochs=50, batch_size=16, model_options=dict(latent_dim=2, width=2), seed=1, validation=0.25)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def scripted(monkeypatch):
    """The validation values of each epoch, as the test scripts them: bits/dim (the loss the
    same), or a pair (bits/dim, loss)."""
    import vaecli.training.loop as loop_module

    values = []

    def scripted_validation(model, images, config):
        value = values.pop(0)
        bpd, loss = value if isinstance(value, tuple) else (value, value)
        return {"val_bpd": bpd, "val_loss": loss}

    monkeypatch.setattr(loop_module, "_validation", scripted_validation)
    return values


def test_training_ends_after_the_patience_without_a_gain(tmp_path, scripted):
    # gains: epoch 2 (by 0.5), epoch 4 (by 0.2); epoch 5 gains only 0.05 <= min_delta 0.1; 6, 7 none
    scripted += [3.0, 2.5, 2.6, 2.3, 2.25, 2.4, 2.35, 9.0]
    lines = []
    run = train(_config(early_stop=3, min_delta=0.1), tmp_path / "r.h5", data=_data(), progress=True,
                log=lines.append)
    assert int(run.attrs["epochs_done"]) == 7 and run.attrs["status"] == "complete"
    assert list(run.history["val_bpd"]) == [3.0, 2.5, 2.6, 2.3, 2.25, 2.4, 2.35]
    assert any("has not improved by more than 0.1 for 3 epochs (best 2.3000 at epoch 4)" in s for s in lines)
    assert run.samples["prior"][0].shape[0] == 64  # a complete run's samples
    assert best_validation(run.history, 0.1) == (2.3, 3)


def test_a_stopped_run_is_finished_and_more_patience_trains_on(tmp_path, scripted):
    out = tmp_path / "r.h5"
    scripted += [3.0, 3.1, 3.2]
    train(_config(early_stop=2), out, data=_data(), progress=False)
    lines = []
    train(_config(early_stop=2), out, data=_data(), resume=True, log=lines.append)
    assert "stopped early after 3 epochs (validation best bits/dim 3.0000 at epoch 1)" in lines[0]
    scripted += [2.0, 2.1, 2.2, 2.3]
    run = train(_config(early_stop=3), out, data=_data(), resume=True, progress=False)
    assert list(run.history["val_bpd"]) == [3.0, 3.1, 3.2, 2.0, 2.1, 2.2, 2.3]
    assert int(run.attrs["epochs_done"]) == 7 and run.attrs["status"] == "complete"


def test_monitoring_the_loss_follows_the_beta_objective_not_the_bound(tmp_path, scripted):
    # the bound (bpd) worsens from epoch 2 on while the beta objective (loss) still gains:
    # watching the loss, training goes on until the loss has had no gain for 2 epochs
    scripted += [(3.0, 2.0), (3.1, 1.9), (3.2, 1.8), (3.3, 1.85), (3.4, 1.81), (9.0, 9.0)]
    lines = []
    run = train(_config(early_stop=2, monitor="loss", beta=0.5, likelihood="gaussian"), tmp_path / "r.h5",
                data=_data(), progress=True, log=lines.append)
    assert int(run.attrs["epochs_done"]) == 5 and run.attrs["status"] == "complete"
    assert list(run.history["val_loss"]) == [2.0, 1.9, 1.8, 1.85, 1.81]
    assert any("validation loss (the training loss in bits/dim, KL weighted by beta) has not improved by more than 0 for 2 epochs "
               "(best 1.8000 at epoch 3)" in s for s in lines)
    assert best_validation(run.history, 0.0, "loss") == (1.8, 2)
    assert best_validation(run.history, 0.0, "bpd") == (3.0, 0)  # watching the bound it would have ended at 3
    with pytest.raises(VaeError, match="monitor must be one of bpd, loss"):
        TrainConfig(monitor="elbo")


def _validation_oracle(model, images, config):
    """The validation values from the NumPy reference: the density (continuous decoders) or
    PMF of the images at one posterior sample with _validation's noise, and the KL."""
    from vaecli import reference
    from vaecli.models.protocol import draw_noise

    gen = torch.Generator().manual_seed(config.seed + 7)
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(images)
        out = model.posterior((mu, logvar), draw_noise(model, images.shape[0], gen))
    x, raw = images.numpy(), out.raw.double().numpy()
    kl = reference.gaussian_kl(mu.double().numpy(), logvar.double().numpy())
    return reference.log_prob(config.likelihood, x, raw), reference.log_pmf(config.likelihood, x, raw), kl


def test_the_validation_loss_is_the_training_loss(tmp_path):
    from vaecli.training.loop import _validation
    from vaecli.runs import load_model, prepare_images

    run = train(_config(epochs=1, likelihood="gaussian", beta=0.25), tmp_path / "r.h5", data=_data(),
                progress=False)
    assert len(run.history["val_loss"]) == len(run.history["val_bpd"]) == 1
    model = load_model(run, device="cpu")
    images = torch.from_numpy(prepare_images(_data()[0].images[:10], run.config))
    dims = int(np.prod(images.shape[1:]))
    for beta, free_bits in ((0.0, 0.0), (0.25, 0.0), (1.0, 0.0), (0.25, 50.0)):
        config = _config(likelihood="gaussian", beta=beta, free_bits=free_bits)
        values = _validation(model, images, config)
        log_p, log_pmf, kl = _validation_oracle(model, images, config)
        assert kl.max() < free_bits or free_bits == 0  # so the free bits replace every image's KL
        kl_objective = np.maximum(kl, free_bits)
        # the density in bits/dim with log2(255) a dimension added: -log2 p(y) + log2(255)
        loss = -(log_p - beta * kl_objective).mean() / (dims * np.log(2)) + np.log2(255)
        assert values["val_loss"] == pytest.approx(loss, rel=1e-6)
        assert values["val_bpd"] == pytest.approx(-(log_pmf - kl).mean() / (dims * np.log(2)), rel=1e-6)
    # the density and the PMF differ (the edge bins reach to infinity), so at beta 1 the two differ
    one = _validation(model, images, _config(likelihood="gaussian"))
    assert abs(one["val_loss"] - one["val_bpd"]) > 1e-3


def test_a_discrete_decoders_validation_loss_at_beta_1_is_its_bits_per_dim(tmp_path):
    from vaecli.training.loop import _validation
    from vaecli.runs import load_model, prepare_images

    run = train(_config(epochs=1, likelihood="logistic"), tmp_path / "r.h5", data=_data(), progress=False)
    model = load_model(run, device="cpu")
    images = torch.from_numpy(prepare_images(_data()[0].images[:10], run.config))
    values = _validation(model, images, run.config)
    assert values["val_loss"] == values["val_bpd"]
    assert run.history["val_loss"][0] == run.history["val_bpd"][0]


def test_resuming_a_run_made_before_the_validation_loss_existed(tmp_path, monkeypatch):
    import vaecli.training.loop as loop_module

    real = loop_module._validation
    out = tmp_path / "r.h5"
    monkeypatch.setattr(loop_module, "_validation", lambda *a: {"val_bpd": real(*a)["val_bpd"]})  # the old column
    train(_config(epochs=1), out, data=_data(), progress=False)
    monkeypatch.setattr(loop_module, "_validation", real)
    train(_config(epochs=2), out, data=_data(), resume=True, progress=False)
    run = runfile.read(out)  # a valid file: every history column has a row an epoch
    assert np.isnan(run.history["val_loss"][0]) and np.isfinite(run.history["val_loss"][1])


def test_the_validation_split_is_carved_from_training_only(tmp_path):
    train_set, test_set = _data()
    run = train(_config(epochs=2), tmp_path / "r.h5", data=(train_set, test_set), progress=False)
    assert (int(run.attrs["num_train"]), int(run.attrs["num_validation"]), int(run.attrs["num_test"])) == (30, 10, 20)
    values = run.history["val_bpd"]
    assert len(values) == 2 and np.all(np.isfinite(values)) and np.all(values > 0)
    from vaecli.runs import hold_out_validation

    kept, held = hold_out_validation(train_set, 0.25)
    rows = {a.tobytes() for a in kept.images}
    assert not any(v.tobytes() in rows for v in held.images)  # disjoint (blob images are distinct)
    # the same split for every training seed: it is a property of the data
    again, _ = hold_out_validation(train_set, 0.25)
    np.testing.assert_array_equal(again.images, kept.images)


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(VaeError, match="early stopping needs a validation split"):
        TrainConfig(early_stop=3)
    with pytest.raises(VaeError, match="sigma-image is a training objective only"):
        TrainConfig(likelihood="sigma-image", validation=0.1)
    with pytest.raises(VaeError, match=r"validation must be a share of the training split in \[0, 0.5\]"):
        TrainConfig(validation=0.9)
    result = CliRunner().invoke(main, ["train", "--early-stop", "2", "--out", str(tmp_path / "r.h5")])
    assert result.exit_code == 1 and "early stopping needs a validation split" in result.output
    assert not (tmp_path / "r.h5").exists()


def test_sweep_passes_the_stopping_rule_to_every_run(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(50, size=8))
    result = CliRunner().invoke(main, ["sweep", "--out-dir", str(tmp_path / "s"), "--dataset", str(data),
                                       "--likelihood", "sigma", "--epochs", "3", "--validation", "0.2",
                                       "--early-stop", "1", "--min-delta", "5", "--monitor", "loss", "--batch-size", "16",
                                       "--latent-dim", "2", "--device", "cpu", "--metric", "bpd"])
    assert result.exit_code == 0, result.output
    run = runfile.read(next((tmp_path / "s").glob("*.h5")))
    assert (run.config.validation, run.config.early_stop, run.config.min_delta) == (0.2, 1, 5.0)
    assert run.config.monitor == "loss" and len(run.history["val_loss"]) == 2
    # a gain of 5 bits/dim never comes: the run stops after epoch 2
    assert int(run.attrs["epochs_done"]) == 2 and run.attrs["status"] == "complete"


def test_a_sweep_with_a_setting_that_cannot_validate_stops_before_training_anything(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(50, size=8))
    result = CliRunner().invoke(main, ["sweep", "--out-dir", str(tmp_path / "s"), "--dataset", str(data),
                                       "--likelihood", "sigma", "--likelihood", "sigma-image", "--epochs", "1",
                                       "--validation", "0.2", "--batch-size", "16", "--latent-dim", "2",
                                       "--device", "cpu"])
    assert result.exit_code == 1
    assert "sigma-image is a training objective only" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "s").glob("*.h5"))  # the sigma run was not trained first


def test_the_default_sweep_grid_leaves_out_what_cannot_validate(tmp_path, monkeypatch):
    import vaecli.sweep as sweep_module

    asked = {}
    monkeypatch.setattr(sweep_module, "sweep", lambda out, base, likelihoods, *a, **k: asked.update(
        likelihoods=list(likelihoods), validation=base.validation) or [])
    result = CliRunner().invoke(main, ["sweep", "--out-dir", str(tmp_path / "s"), "--validation", "0.1"])
    assert result.exit_code == 0, result.output
    assert "leaving out sigma-image" in result.output
    assert "sigma-image" not in asked["likelihoods"] and len(asked["likelihoods"]) == 10
    assert asked["validation"] == 0.1
