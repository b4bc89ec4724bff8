"""SVG-LP (vae train --model svg) on small stochastic-moving-MNIST videos: training,
exact resume, evaluation per predicted frame (ELBO, bits/dim, KL per frame, SSIM, PSNR),
samples as GIF and PNG strips, reconstructions, and the sigma-VAE's sigma shared over
every pixel of every predicted frame."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from vaecli import VaeError, runfile  # noqa: E402
from vaecli.cli import main  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.constants import LOG_SIGMA_MIN  # noqa: E402
from vaecli.datasets import smmnist  # noqa: E402
from vaecli.models.protocol import draw_noise, log_likelihood, total_kl  # noqa: E402
from vaecli.runs import build_model  # noqa: E402
from vaecli.training import train  # noqa: E402
from fakes import FakeData, interrupt_at_kl_call  # noqa: E402

SMALL = dict(width=4, g_dim=8, rnn_size=8, z_dim=2, n_past=2, n_future=3, predictor_layers=1)
OPTIONS = [arg for k, v in SMALL.items() for arg in ("--model-option", f"{k}={v}")]


def _videos(n=24, frames=6, seed=0):
    digits = np.random.default_rng(seed).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    return smmnist.generate(digits, n, frames=frames, size=16, digit_size=8, n_digits=1, seed=seed)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("svg") / "videos.npz"
    np.savez(path, images=_videos())
    return path


def _config(**kw):
    return TrainConfig(**{**dict(model="svg", model_options=SMALL, epochs=1, batch_size=8, seed=1), **kw})


def test_a_pass_scores_the_predicted_frames_with_one_sigma_over_all_of_them():
    torch.manual_seed(0)
    model = build_model(_config(), (6, 1, 16, 16), "cpu")
    x = torch.from_numpy(_videos(3))
    out = model(x, draw_noise(model, 3, torch.Generator().manual_seed(0)))
    steps = SMALL["n_past"] + SMALL["n_future"] - 1  # frames 1 .. S-1 are predicted
    assert out.raw.shape == (3 * steps, 1, 16, 16) and len(out.groups) == steps
    np.testing.assert_array_equal(out.target.view(3, steps, 1, 16, 16).numpy(), x[:, 1 : steps + 1].numpy())
    # the sigma-VAE: sigma* = sqrt(MSE) over every pixel of every predicted frame of the batch
    raw = out.raw.detach().double()
    y = out.target.double() / 255
    mean = model.likelihood.mean(raw).double()
    floor = LOG_SIGMA_MIN  # sigma* softclipped from below, as SPEC.md says
    log_sigma = floor + math.log1p(math.exp(0.5 * math.log(float(((mean - y) ** 2).mean())) - floor))
    d = 16 * 16 * steps
    expected = (-0.5 * ((mean - y) ** 2).view(3, -1).sum(1) / math.exp(2 * log_sigma) - d * log_sigma
                - 0.5 * d * math.log(2 * math.pi))
    torch.testing.assert_close(log_likelihood(model.likelihood, x, out, raw=raw).double(), expected,
                               rtol=1e-12, atol=1e-9)
    # one KL per predicted frame, against the learned prior
    assert all(g.prior_mean is not None for g in out.groups) and total_kl(out.groups).shape == (3,)


def test_prediction_feeds_back_and_a_cold_prior_is_deterministic():
    torch.manual_seed(0)
    model = build_model(_config(), (6, 1, 16, 16), "cpu").eval()
    context = torch.from_numpy(_videos(2))[:, :2]
    eps = torch.randn(2, 1 + 4, 2)
    raw = model.predict(context, eps, 4, temperature=0.0)
    assert raw.shape == (2, 4, 1, 16, 16)
    other = eps.clone()
    other[:, 1:] = torch.randn(2, 4, 2)  # other future noise: no effect at temperature 0
    torch.testing.assert_close(model.predict(context, other, 4, temperature=0.0), raw)
    assert not torch.allclose(model.predict(context, other, 4, temperature=1.0), raw)


def test_video_models_refuse_images_and_too_short_videos():
    with pytest.raises(VaeError, match="svg is a video model: it needs videos"):
        build_model(_config(), (1, 16, 16), "cpu")
    with pytest.raises(VaeError, match=r"n_past \+ n_future = 5 frames, but the videos have 4"):
        build_model(_config(), (4, 1, 16, 16), "cpu")


def test_train_resume_evaluate_sample_and_reconstruct(tmp_path, video_file):
    out = str(tmp_path / "svg.h5")
    common = ["--data", str(video_file), "--model", "svg", *OPTIONS, "--batch-size", "8", "--device", "cpu",
              "--quiet", "--out", out]
    for epochs, extra in (("1", []), ("2", ["--resume"])):
        result = CliRunner().invoke(main, ["train", *common, "--epochs", epochs, *extra])
        assert result.exit_code == 0, result.output
    assert "nats/video" in result.output
    run = runfile.read(out)
    assert run.samples["predicted"][0].shape == (2, 5, 1, 16, 16)  # the test videos' context, then predictions
    assert json.loads(run.attrs["latent_groups"]) == ["frame 1", "frame 2", "frame 3", "frame 4"]
    assert "test_kl_group3" in run.history
    result = CliRunner().invoke(main, ["eval", out, "--metric", "elbo", "--metric", "bpd", "--metric", "kl",
                                       "--metric", "mse", "--metric", "nll", "--iw-samples", "2", "--metric",
                                       "ssim", "--metric", "psnr", "--future-samples", "3", "--metric", "fid",
                                       "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)["results"]
    assert r["bpd"]["value"] > 0 and math.isfinite(r["elbo"]["value"]) and r["kl"]["value"] >= 0
    assert len(json.loads(r["kl"]["per_group"])) == 4  # the KL of each predicted frame
    assert r["elbo"]["unit"] == r["kl"]["unit"] == r["nll"]["unit"] == "nats/video"
    assert r["ssim"]["stderr"] > 0  # over the 2 test videos' best samples
    for metric in ("ssim", "psnr"):
        assert r[metric]["samples"] == 3 and len(r[metric]["best_per_step"]) == 6 - 2  # T - n_past steps
        # the best sample is chosen per video by its mean over the steps: on that mean it wins
        assert np.mean(r[metric]["best_per_step"]) >= np.mean(r[metric]["mean_per_step"]) - 1e-12
        assert r[metric]["value"] == pytest.approx(np.mean(r[metric]["best_per_step"]))
    assert -1 <= r["ssim"]["value"] <= 1 and r["psnr"]["value"] > 0
    assert not r["fid"]["applicable"] and "video model" in r["fid"]["reason"]
    for command, name in ((["sample", out, "-n", "2", "--device", "cpu"], "s.gif"),
                          (["sample", out, "-n", "2", "--device", "cpu"], "s.png"),
                          (["reconstruct", out, "--rows", "1", "--scale", "1", "--device", "cpu"], "r.png"),
                          (["plot", out, "--kind", "prediction"], "p.png"), (["plot", out, "--kind", "groups"], "g.png")):
        result = CliRunner().invoke(main, [*command, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "s.gif").read_bytes()[:6] == b"GIF89a"
    from PIL import Image

    with Image.open(tmp_path / "s.gif") as gif:
        assert gif.n_frames == 5  # context and predicted frames
    with Image.open(tmp_path / "r.png") as picture:  # one video: its 4 predicted frames, true above reconstructed
        assert picture.size == (4 * (16 + 2) + 2, 2 * (16 + 2) + 2)
    too_many = CliRunner().invoke(main, ["sample", out, "-n", "99", "-o", str(tmp_path / "x.gif")])
    assert too_many.exit_code == 2 and "the test split has 2 videos" in too_many.output


def test_ctrl_c_mid_epoch_resumes_bitwise(tmp_path, monkeypatch):
    videos = _videos(24)
    data = (FakeData(videos[:16]), FakeData(videos[16:], split="test", checksum="1" * 64))
    full = train(_config(epochs=2), tmp_path / "full.h5", data=data, progress=False)
    undo = interrupt_at_kl_call(monkeypatch, 3)  # epoch 2's first step (2 steps an epoch)
    part = tmp_path / "part.h5"
    with pytest.raises(VaeError, match=r"interrupted at epoch 2, step 1/2"):
        train(_config(epochs=2), part, data=data, progress=False)
    undo()
    resumed = train(_config(epochs=2), part, data=data, resume=True, progress=False)
    for k in full.model:
        np.testing.assert_array_equal(resumed.model[k], full.model[k], err_msg=k)
    np.testing.assert_array_equal(resumed.history["test_elbo"], full.history["test_elbo"])


@pytest.mark.parametrize("likelihood", ["logistic-mixture", "bernoulli", "categorical", "sigma-learned",
                                        "gaussian-bf16"])
def test_other_likelihoods_per_frame(tmp_path, likelihood):
    videos = _videos(16)
    data = (FakeData(videos[:12]), FakeData(videos[12:], split="test", checksum="1" * 64))
    kw = dict(binarize=True) if likelihood == "bernoulli" else {}
    if likelihood == "gaussian-bf16":  # the network under bf16 autocast, the likelihood in float32
        likelihood, kw = "gaussian", dict(precision="bf16")
    run = train(_config(likelihood=likelihood, mixtures=2, **kw), tmp_path / "r.h5", data=data, progress=False)
    assert math.isfinite(run.history["test_elbo"][-1]) and run.history["test_kl"][-1] >= 0
