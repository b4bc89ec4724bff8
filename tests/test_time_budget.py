"""--time-budget: training ends when its seconds are spent, within an epoch if need be,
and the run is complete, resumable with a larger budget, and exact across a Ctrl-C.

A fake clock makes each training step cost 10 s and everything else nothing, so the
step at which a budget runs out is known."""

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from click.testing import CliRunner  # noqa: E402

from vaecli import VaeError, runfile  # noqa: E402
from vaecli.cli import main  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.training import train  # noqa: E402
from fakes import FakeData  # noqa: E402

STEP_SECONDS = 10.0


def _data():
    rng = np.random.default_rng(0)
    make = lambda n: rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)  # noqa: E731
    return FakeData(make(96)), FakeData(make(32), split="test", checksum="1" * 64)  # 3 steps an epoch


def _config(**kw):
    base = dict(epochs=100, batch_size=32, model_options=dict(latent_dim=3, width=4), seed=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def clock(monkeypatch):
    """The training loop's clock: each training step (its KL) advances it by 10 s."""
    import vaecli.training.loop as loop_module
    import vaecli.training.step as step_module

    now = {"t": 1000.0, "steps": 0, "on_step": None}
    real_kl = step_module.total_kl

    def kl(groups):
        now["t"] += STEP_SECONDS
        now["steps"] += 1
        if now["on_step"] is not None:
            now["on_step"](now["steps"])
        return real_kl(groups)

    monkeypatch.setattr(step_module, "total_kl", kl)
    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(perf_counter=lambda: now["t"]))
    return now


def test_budget_ends_training_within_an_epoch_and_the_run_is_complete(tmp_path, clock):
    lines = []
    run = train(_config(time_budget=45.0), tmp_path / "run.h5", data=_data(), progress=True, log=lines.append)
    # epoch 1: 3 steps, 30 s; epoch 2: step 1 at 40 s, step 2 at 50 s >= 45 s: the end
    assert clock["steps"] == 5
    assert run.attrs["status"] == "complete" and int(run.attrs["epochs_done"]) == 2
    assert list(run.history["seconds"]) == [30.0, 20.0]
    assert run.samples["prior"][0].shape == (64, 1, 8, 8)
    assert any("time budget of 45 s spent after step 2/3 of epoch 2: training ends here" in s for s in lines)
    assert not run.progress.get("step_in_epoch")  # the shortened epoch is closed, not in progress


def test_a_spent_budget_is_finished_and_a_larger_one_trains_on(tmp_path, clock):
    out = tmp_path / "run.h5"
    train(_config(time_budget=45.0), out, data=_data(), progress=False)
    before = out.stat().st_mtime_ns
    lines = []
    again = train(_config(time_budget=45.0), out, data=_data(), resume=True, log=lines.append)
    assert out.stat().st_mtime_ns == before and clock["steps"] == 5
    assert lines == [f"{out} is already complete: its time budget of 45 s is spent (2 epochs); nothing to train "
                     "(a larger --time-budget trains on)"]
    assert int(again.attrs["epochs_done"]) == 2
    more = train(_config(time_budget=75.0), out, data=_data(), resume=True, progress=False)
    # 50 s spent; epoch 3 from its first step: 60, 70, 80 s
    assert clock["steps"] == 8
    assert list(more.history["seconds"]) == [30.0, 20.0, 30.0] and more.attrs["status"] == "complete"
    assert more.config.time_budget == 75.0


def test_interrupted_budget_run_resumes_to_the_same_weights(tmp_path, clock):
    import signal

    data = _data()
    full = train(_config(time_budget=45.0), tmp_path / "full.h5", data=data, progress=False)
    clock["steps"] = 0
    clock["on_step"] = lambda n: signal.raise_signal(signal.SIGINT) if n == 2 else None
    part = tmp_path / "part.h5"
    with pytest.raises(VaeError, match=r"interrupted at epoch 1, step 2/3"):
        train(_config(time_budget=45.0), part, data=data, progress=False)
    saved = runfile.read(part)
    assert saved.attrs["status"] == "interrupted" and saved.progress["seconds"] == 20.0
    clock["on_step"] = None
    resumed = train(_config(time_budget=45.0), part, data=data, resume=True, progress=False)
    assert clock["steps"] == 5  # 2 before the interrupt, 3 after: the budget counted the saved 20 s
    assert list(resumed.history["seconds"]) == [30.0, 20.0]
    for k in full.model:
        np.testing.assert_array_equal(resumed.model[k], full.model[k])


def test_a_budget_smaller_than_the_seconds_trained_is_refused(tmp_path, clock):
    import signal

    out = tmp_path / "run.h5"
    clock["on_step"] = lambda n: signal.raise_signal(signal.SIGINT) if n == 4 else None
    with pytest.raises(VaeError, match="interrupted at epoch 2"):
        train(_config(time_budget=1000.0), out, data=_data(), progress=False)
    clock["on_step"] = None
    with pytest.raises(VaeError, match=r"has trained 30.0 s already; --time-budget 20 cannot resume it"):
        train(_config(time_budget=20.0), out, data=_data(), resume=True, progress=False)
    assert runfile.read(out).attrs["status"] == "interrupted"


def test_without_a_budget_a_short_complete_run_is_invalid(tmp_path, clock):
    out = tmp_path / "run.h5"
    train(_config(time_budget=45.0), out, data=_data(), progress=False)
    import h5py

    config = runfile.read(out).config.replace(time_budget=None)
    with h5py.File(out, "r+") as f:  # the same run, claiming no budget
        f.attrs["config"] = config.to_json()
    runfile.seal(out)
    with pytest.raises(VaeError, match="status is complete with 2 of 100 epochs done"):
        runfile.read(out)


@pytest.mark.parametrize("text, seconds", [("1800", 1800.0), ("30m", 1800.0), ("1.5h", 5400.0), ("90s", 90.0)])
def test_cli_durations(tmp_path, text, seconds):
    out = tmp_path / "run.h5"
    result = CliRunner().invoke(main, ["train", "--epochs", "0", "--time-budget", text, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert runfile.read(out).config.time_budget == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "abc", "inf", "nanm", "5d"])
def test_cli_refuses_bad_durations(tmp_path, text):
    result = CliRunner().invoke(main, ["train", "--time-budget", text, "--out", str(tmp_path / "r.h5")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--time-budget" in result.output and not (tmp_path / "r.h5").exists()


def test_config_refuses_a_budget_that_is_not_positive():
    with pytest.raises(VaeError, match="time budget must be > 0 seconds, got 0.0"):
        TrainConfig(time_budget=0.0)
