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
    """The validation bits/dim of each epoch, as the test scripts them."""
    import vaecli.training.loop as loop_module

    values = []
    monkeypatch.setattr(loop_module, "_validation_bpd", lambda model, images, config: values.pop(0))
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
    assert "stopped early after 3 epochs (validation best 3.0000 bits/dim at epoch 1)" in lines[0]
    scripted += [2.0, 2.1, 2.2, 2.3]
    run = train(_config(early_stop=3), out, data=_data(), resume=True, progress=False)
    assert list(run.history["val_bpd"]) == [3.0, 3.1, 3.2, 2.0, 2.1, 2.2, 2.3]
    assert int(run.attrs["epochs_done"]) == 7 and run.attrs["status"] == "complete"


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
                                       "--early-stop", "1", "--min-delta", "5", "--batch-size", "16",
                                       "--latent-dim", "2", "--device", "cpu", "--metric", "bpd"])
    assert result.exit_code == 0, result.output
    run = runfile.read(next((tmp_path / "s").glob("*.h5")))
    assert (run.config.validation, run.config.early_stop, run.config.min_delta) == (0.2, 1, 5.0)
    # a gain of 5 bits/dim never comes: the run stops after epoch 2
    assert int(run.attrs["epochs_done"]) == 2 and run.attrs["status"] == "complete"
