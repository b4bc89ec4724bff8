"""Faults injected on purpose: SIGKILL at random moments, a full disk, non-finite
losses, stale temporaries, corrupted run files.  Nothing may be lost."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from vaecli import VaeError, runfile  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from fakes import FakeData  # noqa: E402
from vaecli.training import train  # noqa: E402

KILLS = 8  # SIGKILLs per run of the test




def _data(n=64, size=8):
    x = np.random.default_rng(0).integers(0, 256, (n, 1, size, size)).astype(np.uint8)
    return FakeData(x), FakeData(x[:16], split="test", checksum="1" * 64)


def _config(**kw):
    return TrainConfig(**{**dict(epochs=2, batch_size=16, model_options=dict(latent_dim=2, width=2), seed=1), **kw})


# --------------------------------------------------------------------- SIGKILL


def _train_cmd(data, out, resume=False):
    cmd = [sys.executable, "-m", "vaecli", "train", "--data", str(data), "--epochs", "40", "--batch-size", "16",
           "--latent-dim", "2", "--width", "2", "--seed", "1", "--out", str(out), "--quiet"]
    return cmd + (["--resume"] if resume else [])


def test_sigkill_at_random_moments_never_loses_the_last_checkpoint(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, images=_data()[0].images)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    reference = tmp_path / "reference.h5"
    subprocess.run(_train_cmd(data, reference), env=env, check=True, capture_output=True)
    ref = runfile.read(reference)

    out = tmp_path / "killed.h5"
    rng = np.random.default_rng(2026)
    kills_mid_training = 0
    last_epochs = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(_train_cmd(data, out, resume=out.exists()), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pause = rng.uniform(0.5, 3.5)
        if not out.exists():  # no checkpoint yet: kill soon after the first one, however slow the machine
            deadline = time.monotonic() + 120
            while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            pause = rng.uniform(0.0, 1.0)
        time.sleep(pause)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not out.exists():
            continue  # killed before the first checkpoint: nothing to lose yet
        run = runfile.read(out)  # always opens: the last completed checkpoint
        done = int(run.attrs["epochs_done"])
        assert run.attrs["status"] in ("training", "complete")
        assert list(run.history["epoch"]) == list(range(1, done + 1))
        assert done >= last_epochs  # a checkpoint is never lost or rolled back
        last_epochs = done
        if run.attrs["status"] == "complete":
            break
        kills_mid_training += 1
    assert kills_mid_training >= 3, "the kills should land while training runs"
    subprocess.run(_train_cmd(data, out, resume=True), env=env, check=True, capture_output=True)
    final = runfile.read(out)
    assert final.attrs["status"] == "complete"
    # resuming from the surviving checkpoints reproduces the uninterrupted run exactly
    for k in ref.model:
        np.testing.assert_array_equal(final.model[k], ref.model[k])
    np.testing.assert_array_equal(final.history["test_elbo"], ref.history["test_elbo"])
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # killed writers' temporaries are gone


# ------------------------------------------------------------------ disk faults


def test_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    out = tmp_path / "run.h5"
    calls = {"n": 0}
    real_write = runfile.write

    def write_until_disk_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            def no_space(self, *a, **k):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(h5py.Group, "create_dataset", no_space)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(runfile, "write", write_until_disk_full)
    with pytest.raises(VaeError, match="cannot write .*run.h5: No space left on device"):
        train(_config(epochs=3), out, data=_data(), progress=False)
    monkeypatch.undo()
    run = runfile.read(out)
    assert run.attrs["epochs_done"] == 1 and run.attrs["status"] == "training"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_too_little_disk_fails_before_training(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(VaeError, match="not enough disk space"):
        train(_config(), tmp_path / "run.h5", data=_data(), progress=False)
    assert not (tmp_path / "run.h5").exists()


def test_missing_output_directory_fails_before_training(tmp_path):
    with pytest.raises(VaeError, match="does not exist or is not writable"):
        train(_config(), tmp_path / "no" / "run.h5", data=_data(), progress=False)


def test_stale_temporaries_of_the_same_run_are_removed(tmp_path):
    out = tmp_path / "run.h5"
    stale = tmp_path / ".run.h5.tmp-abc123.h5"
    other = tmp_path / ".other.h5.tmp-abc123.h5"
    stale.write_bytes(b"half a checkpoint")
    other.write_bytes(b"not ours to delete")
    train(_config(epochs=1), out, data=_data(), progress=False)
    assert not stale.exists() and other.exists()


# ------------------------------------------------------------ non-finite losses


def test_nonfinite_steps_are_skipped_counted_then_stop_training(tmp_path, monkeypatch):
    import vaecli.training.step as step_module

    real_kl = step_module.total_kl
    calls = {"n": 0}

    def kl_with_nans(groups):
        calls["n"] += 1
        kl = real_kl(groups)
        # 2 steps an epoch.  Epoch 1: step 2 non-finite (skipped); epoch 2: step 1 fine,
        # then every step: the third in a row is epoch 3's second step
        return kl * float("nan") if calls["n"] == 2 or calls["n"] > 3 else kl

    monkeypatch.setattr(step_module, "total_kl", kl_with_nans)
    out = tmp_path / "run.h5"
    with pytest.raises(VaeError, match=r"sigma: 3 non-finite steps in a row \(loss or gradient\) at epoch 3, "
                                       r"step 2; training stopped; the last good checkpoint, .*run.h5 "
                                       r"\(epoch 2 complete\), is intact"):
        train(_config(epochs=4, max_nonfinite=3, batch_size=32), out, data=_data(), progress=False)
    run = runfile.read(out)
    assert run.attrs["epochs_done"] == 2 and list(run.history["skipped_steps"]) == [1, 1]
    for k, v in run.model.items():
        assert np.all(np.isfinite(v)), k  # skipped steps never touched the weights
    # the skipped steps left the Adam state as it was: 1 + 1 real updates
    assert all(float(np.max(s["step"])) == 2 for s in run.optimizer["state"].values())


def test_nonfinite_gradient_with_finite_loss_is_skipped(tmp_path, monkeypatch):
    """An infinite gradient in one parameter, once, with the loss finite: that step is
    skipped (and counted), training completes."""
    import vaecli.runs as runs_module

    real_build = runs_module.build_model
    calls = {"n": 0}

    def inf_once(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 1 else grad

    def build(*a, **k):
        model = real_build(*a, **k)
        next(model.decoder.parameters()).register_hook(inf_once)
        return model

    monkeypatch.setattr(runs_module, "build_model", build)
    run = train(_config(epochs=1), tmp_path / "run.h5", data=_data(), progress=False)
    assert calls["n"] > 1  # the hook saw every step's gradient
    assert run.history["skipped_steps"][0] == 1 and run.attrs["status"] == "complete"


def _nan_kl_from(monkeypatch, first_bad_call):
    import vaecli.training.step as step_module

    real_kl, calls = step_module.total_kl, {"n": 0}

    def kl(groups):
        calls["n"] += 1
        value = real_kl(groups)
        return value * float("nan") if calls["n"] >= first_bad_call else value

    monkeypatch.setattr(step_module, "total_kl", kl)


@pytest.mark.parametrize("likelihood", ["sigma", "gaussian"])
def test_a_run_in_which_no_step_was_finite_stops_and_writes_nothing(tmp_path, monkeypatch, likelihood):
    _nan_kl_from(monkeypatch, 1)
    out = tmp_path / "run.h5"
    with pytest.raises(VaeError, match=rf"{likelihood}: no step of 1 epoch\(s\) was finite .*nothing was "
                                       r"trained, so the run stops; no run file was written"):
        train(_config(likelihood=likelihood, max_nonfinite=100), out, data=_data(), progress=False)
    assert not out.exists()


def test_an_epoch_without_a_finite_step_still_checkpoints(tmp_path, monkeypatch):
    """Epoch 1 trains; every step of epoch 2 is skipped (4 steps, under --max-nonfinite):
    the checkpoint holds numbers, no None, and epoch 2's training numbers are NaN."""
    _nan_kl_from(monkeypatch, 5)
    lines = []
    run = train(_config(max_nonfinite=100), tmp_path / "run.h5", data=_data(), progress=True, log=lines.append)
    assert run.attrs["status"] == "complete" and list(run.history["skipped_steps"]) == [0, 4]
    assert np.isfinite(run.history["train_elbo"][0]) and np.isnan(run.history["train_elbo"][1])
    assert run.calibration["epoch"] == 1 and run.calibration["eval_sigma"] > 0  # the last finite epoch's
    assert "train ELBO n/a (no finite step in this epoch)" in lines[1]


# --------------------------------------------------------- corrupted run files


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    train(_config(epochs=1), out, data=_data(n=32), progress=False)
    return out.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_run_files_give_only_vaecli_errors(tiny_run, tmp_path, data):
    blob = bytearray(tiny_run)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        i = data.draw(st.integers(0, len(blob) - 1), label="offset")
        blob[i] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob)), label="length")]
    path = tmp_path / "mutated.h5"
    path.write_bytes(bytes(blob))
    try:
        runfile.read(path)
    except VaeError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


def test_truncated_run_file_is_one_clear_error(tiny_run, tmp_path):
    path = tmp_path / "cut.h5"
    path.write_bytes(tiny_run[: len(tiny_run) // 2])
    with pytest.raises(VaeError, match="damaged vaecli run file .*seal mismatch"):
        runfile.read(path)


def test_cli_shows_one_line_and_debug_shows_the_traceback(tiny_run, tmp_path):
    from click.testing import CliRunner

    from vaecli.cli import main

    path = tmp_path / "cut.h5"
    path.write_bytes(tiny_run[:1000])
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["--debug", "info", str(path)])
    assert isinstance(result.exception, VaeError)  # --debug lets the exception (and its traceback) through
