"""Data-parallel training on torch.distributed (gloo, 2 CPU processes): the same
trajectory as one process with the same global batch, and a dying rank fails the
job cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

from vaecli import runfile  # noqa: E402

# float32 reduction order differs (gradients averaged over ranks, sums split in two):
# after 3 epochs of Adam the weights agree to a few float32 ulps of their size.
WEIGHT_ATOL = 1e-6
ELBO_RTOL = 1e-6


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "d.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (96, 1, 8, 8)).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def weights():
    """The verified FID Inception weights, or a skip saying why they cannot be had."""
    from vaecli import VaeError, fid

    try:
        return fid.fetch_inception()
    except VaeError as exc:
        pytest.skip(f"the FID Inception weights cannot be had here: {exc}")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


CONV = ("--latent-dim", "2", "--width", "2")
HVAE = ("--model", "hvae", "--model-option", "width=4", "--model-option", "latent_channels=2",
        "--model-option", "blocks=1")  # with its defaults: gradient clipping and the weights' average
MLP = ("--model", "mlp", "--model-option", "latent_dim=2", "--model-option", "hidden=16")


def _args(data, out, likelihood, epochs=3, model=CONV):
    return ["train", "--data", str(data), "--epochs", str(epochs), "--batch-size", "32", *model,
            "--mixtures", "2", "--seed", "1", "--quiet", "--likelihood", likelihood, "--out", str(out)]


@pytest.mark.parametrize("likelihood, extra", [("sigma", []), ("sigma-learned", []), ("logistic-mixture", []),
                                               ("sigma", ["--memory-format", "channels_last"]),
                                               ("sigma", ["model", HVAE]), ("logistic-mixture", ["model", HVAE]),
                                               ("sigma", ["model", MLP])])
def test_two_ranks_follow_the_single_process_trajectory(tmp_path, data_file, likelihood, extra):
    model = extra[1] if extra[:1] == ["model"] else CONV
    extra = [] if extra[:1] == ["model"] else extra
    single, double = tmp_path / "one.h5", tmp_path / "two.h5"
    subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, single, likelihood, model=model), *extra],
                   env=_env(), check=True, capture_output=True, timeout=300)
    done = subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, double, likelihood, model=model),
                           *extra, "--nproc", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = runfile.read(single), runfile.read(double)
    if model is HVAE:  # the average, which evaluation uses, follows the same trajectory
        assert a.ema and set(a.ema) == set(b.ema)
        for k in a.ema:
            np.testing.assert_allclose(b.ema[k], a.ema[k], rtol=0, atol=WEIGHT_ATOL, err_msg=k)
        assert any(k.startswith("test_kl_group") for k in b.history)
    for k in a.model:
        np.testing.assert_allclose(b.model[k], a.model[k], rtol=0, atol=WEIGHT_ATOL, err_msg=k)
    for k in ("train_elbo", "train_kl", "test_elbo"):
        np.testing.assert_allclose(b.history[k], a.history[k], rtol=ELBO_RTOL, err_msg=k)
    if likelihood == "sigma":  # the calibrated sigma comes from the global MSE
        assert b.calibration["eval_sigma"] == pytest.approx(a.calibration["eval_sigma"], rel=1e-6)
    assert b.attrs["num_train"] == a.attrs["num_train"]  # 96 less the 10% hold-out


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc to find the ranks")
def test_a_dying_rank_fails_the_job_and_keeps_the_checkpoint(tmp_path, data_file):
    out = tmp_path / "run.h5"
    proc = subprocess.Popen([sys.executable, "-m", "vaecli", *_args(data_file, out, "sigma", epochs=500),
                             "--nproc", "2"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline:  # wait for a checkpoint
        time.sleep(0.2)
    assert out.exists(), "no checkpoint within 120 s"
    launcher = _children(proc.pid)
    workers = [w for p in launcher for w in _children(p)]
    assert len(workers) == 2, (launcher, workers)
    os.kill(workers[1], signal.SIGKILL)  # rank 1 dies
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: data-parallel training failed: a worker exited with code") and \
        "the last checkpoint in" in last and "is intact" in last, last
    run = runfile.read(out)
    assert run.attrs["status"] == "training" and int(run.attrs["epochs_done"]) >= 1


def test_distributed_evaluation_equals_one_process(tmp_path, data_file):
    run = tmp_path / "run.h5"
    subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, run, "logistic-mixture", epochs=1)],
                   env=_env(), check=True, capture_output=True, timeout=300)
    common = ["eval", str(run), "--metric", "elbo", "--metric", "bpd", "--metric", "nll", "--metric", "kl",
              "--metric", "mse", "--metric", "active-units", "--metric", "aggregate-kl", "--iw-samples", "5",
              "--batch-size", "3", "--json", "--no-store"]
    one = subprocess.run([sys.executable, "-m", "vaecli", *common], env=_env(), capture_output=True, text=True,
                         check=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "vaecli", *common, "--nproc", "2"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout)["results"], json.loads(two.stdout)["results"]
    assert set(a) == set(b)
    for metric in a:  # bitwise: each batch draws the same noise on whichever rank
        assert b[metric]["value"] == a[metric]["value"], metric
        assert b[metric]["n"] == a[metric]["n"]
    assert b["elbo"]["processes"] == 2


def test_distributed_fid_equals_one_process(tmp_path, data_file, weights):
    run = tmp_path / "run.h5"
    subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, run, "sigma", epochs=1)],
                   env=_env(), check=True, capture_output=True, timeout=300)
    common = ["eval", str(run), "--metric", "fid", "--fid-samples", "12", "--batch-size", "4", "--json",
              "--no-store", "--inception", str(weights)]
    results = []
    for extra, cache in (([], "one"), (["--nproc", "2"], "two")):  # separate caches: both compute the reference
        env = dict(_env(), VAECLI_CACHE=str(tmp_path / cache))
        done = subprocess.run([sys.executable, "-m", "vaecli", *common, *extra], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(json.loads(done.stdout)["results"]["fid"])
    assert results[1]["value"] == results[0]["value"] and results[0]["n_generated"] == 12


def test_distributed_resume_continues_the_trajectory(tmp_path, data_file):
    single, double = tmp_path / "one.h5", tmp_path / "two.h5"
    subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, single, "sigma", epochs=3)],
                   env=_env(), check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, double, "sigma", epochs=1), "--nproc", "2"],
                   env=_env(), check=True, capture_output=True, timeout=300)
    done = subprocess.run([sys.executable, "-m", "vaecli", "train", "--out", str(double), "--resume", "--epochs", "3",
                           "--quiet", "--nproc", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = runfile.read(single), runfile.read(double)
    assert b.attrs["epochs_done"] == 3
    for k in a.model:
        np.testing.assert_allclose(b.model[k], a.model[k], rtol=0, atol=WEIGHT_ATOL, err_msg=k)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups to send a terminal's Ctrl-C")
def test_ctrl_c_stops_the_ranks_together_and_the_run_resumes_on_its_trajectory(tmp_path, data_file):
    """Ctrl-C in a terminal signals the launcher and every rank.  The ranks agree to
    stop after the same step, rank 0 saves the global running sums mid-epoch, and the
    resumed run ends where an uninterrupted one does."""
    epochs = 12

    def args(out):  # 86 training images, batch 4: 22 steps an epoch, so a stop can fall mid-epoch
        return ["train", "--data", str(data_file), "--epochs", str(epochs), "--batch-size", "4",
                "--latent-dim", "2", "--width", "2", "--seed", "1", "--quiet", "--likelihood", "logistic",
                "--out", str(out), "--nproc", "2"]

    reference = tmp_path / "reference.h5"
    done = subprocess.run([sys.executable, "-m", "vaecli", *args(reference)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "run.h5"
    proc = subprocess.Popen([sys.executable, "-m", "vaecli", *args(out)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not out.exists() and time.time() < deadline:  # the first epoch's checkpoint
        time.sleep(0.05)
    assert out.exists(), "no checkpoint within 300 s"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: data-parallel training interrupted after epoch ") and \
        "; continue with --resume" in last, last
    run = runfile.read(out)
    assert run.attrs["status"] == "interrupted" and int(run.attrs["epochs_done"]) < epochs
    step = int(run.progress["step_in_epoch"])
    assert step in (16, 22), step  # the ranks agree every 16 steps and at the end of an epoch
    assert int(run.progress["images"]) == 4 * step  # the global batch's images: both ranks' sums
    done = subprocess.run([sys.executable, "-m", "vaecli", "train", "--out", str(out), "--resume", "--quiet",
                           "--nproc", "2"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = runfile.read(reference), runfile.read(out)
    assert b.attrs["status"] == "complete"
    for k in a.model:
        np.testing.assert_array_equal(b.model[k], a.model[k], err_msg=k)  # same ranks, same reductions
    for k in ("train_elbo", "train_kl", "test_elbo"):
        np.testing.assert_allclose(b.history[k], a.history[k], rtol=ELBO_RTOL, err_msg=k)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_a_signal_to_the_launcher_alone_stops_the_ranks(tmp_path, data_file, signame):
    """`kill PID` (SIGTERM, what schedulers send) to `vae train --nproc 2` itself, not
    its process group: it passes it to torchrun, and the ranks checkpoint and stop.  A
    SIGKILL of the launcher cannot be caught: torchrun gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG), so no rank runs on as an orphan."""
    out = tmp_path / "run.h5"
    proc = subprocess.Popen([sys.executable, "-m", "vaecli", "train", "--data", str(data_file), "--epochs", "200",
                             "--batch-size", "4", "--latent-dim", "2", "--width", "2", "--quiet", "--out", str(out),
                             "--nproc", "2"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not out.exists() and time.time() < deadline:  # the first epoch's checkpoint
            time.sleep(0.05)
        assert out.exists(), "no checkpoint within 300 s"
        proc.send_signal(getattr(signal, signame))
        _, stderr = proc.communicate(timeout=120)
        if signame == "SIGTERM":
            assert proc.returncode == 1, stderr[-2000:]
            assert stderr.strip().splitlines()[-1].startswith("Error: data-parallel training interrupted after epoch ")
        deadline = time.time() + 90  # torchrun's grace period for its ranks is 30 s
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anything left of the launcher's process group?
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("ranks or torchrun still running 90 s after the launcher stopped")
        assert runfile.read(out).attrs["status"] in ("interrupted", "training")  # a readable checkpoint
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_distributed_fid_of_two_image_sets_equals_one_process(tmp_path, data_file, weights):
    other = tmp_path / "other.npz"
    np.savez(other, images=np.random.default_rng(1).integers(0, 256, (10, 1, 8, 8)).astype(np.uint8))
    common = ["fid", str(data_file), str(other), "--batch-size", "3", "--kid-subset-size", "5", "--kid-subsets", "4",
              "--json", "--inception", str(weights)]
    results = []
    for extra in ([], ["--nproc", "2"]):
        done = subprocess.run([sys.executable, "-m", "vaecli", *common, *extra], env=_env(), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(json.loads(done.stdout))
    one, two = results
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["fid"] == one["fid"] and two["kid"] == one["kid"]  # the same features, gathered in batch order
    assert (one["n_a"], one["n_b"]) == (96, 10)


def test_a_time_budget_ends_every_rank_at_the_same_step(tmp_path, data_file):
    """Rank 0's clock decides; the ranks agree at a sync point and the run is complete."""
    out = tmp_path / "two.h5"
    done = subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, out, "sigma", epochs=100000),
                           "--time-budget", "3s", "--nproc", "2"], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = runfile.read(out)
    assert run.attrs["status"] == "complete" and 0 < int(run.attrs["epochs_done"]) < 100000
    assert float(np.sum(run.history["seconds"])) >= 3.0


def test_early_stopping_ends_every_rank_at_the_epoch_one_process_ends(tmp_path, data_file):
    """Rank 0's validation values decide (a collective, as the time budget): both ranks end
    together, at the epoch the same run in one process ends, with the same values."""
    stop = ["--epochs", "50", "--validation", "0.2", "--early-stop", "2", "--min-delta", "0.5", "--monitor", "loss"]
    runs = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        out = tmp_path / f"{name}.h5"
        done = subprocess.run([sys.executable, "-m", "vaecli", *_args(data_file, out, "sigma"), *stop, *extra],
                              env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = runfile.read(out)
    one, two = runs["one"], runs["two"]
    assert two.attrs["status"] == one.attrs["status"] == "complete"
    assert int(two.attrs["epochs_done"]) == int(one.attrs["epochs_done"]) < 50
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=ELBO_RTOL)


def test_two_ranks_follow_one_process_for_the_video_model(tmp_path):
    """SVG-LP under torchrun: the sigma-VAE's sigma from the global MSE over every
    predicted frame of the global batch; the same trajectory as one process."""
    from vaecli.datasets import smmnist

    digits = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    data = tmp_path / "videos.npz"
    np.savez(data, images=smmnist.generate(digits, 40, frames=5, size=16, digit_size=8, n_digits=1))
    svg = ("--model", "svg", *[a for k, v in dict(width=4, g_dim=8, rnn_size=8, z_dim=2, n_past=2, n_future=3,
                                                 predictor_layers=1).items() for a in ("--model-option", f"{k}={v}")])
    single, double = tmp_path / "one.h5", tmp_path / "two.h5"
    subprocess.run([sys.executable, "-m", "vaecli", *_args(data, single, "sigma", epochs=2, model=svg)],
                   env=_env(), check=True, capture_output=True, timeout=300)
    done = subprocess.run([sys.executable, "-m", "vaecli", *_args(data, double, "sigma", epochs=2, model=svg),
                           "--nproc", "2"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = runfile.read(single), runfile.read(double)
    for k in a.model:
        np.testing.assert_allclose(b.model[k], a.model[k], rtol=0, atol=WEIGHT_ATOL, err_msg=k)
    np.testing.assert_allclose(b.history["test_elbo"], a.history["test_elbo"], rtol=ELBO_RTOL)
    assert b.calibration["eval_sigma"] == pytest.approx(a.calibration["eval_sigma"], rel=1e-6)
