"""The sigma-VAE's PMF evaluation sigma: a maximum-likelihood fit on training data."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from click.testing import CliRunner  # noqa: E402

import vaecli  # noqa: E402
from vaecli import VaeError, runfile  # noqa: E402
from vaecli.calibration import pmf_sigma  # noqa: E402
from vaecli.cli import main  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.evaluate import evaluate  # noqa: E402
from vaecli.reference import log_pmf as reference_log_pmf  # noqa: E402
from vaecli.runs import load_model
from vaecli.training import train  # noqa: E402
from fakes import FakeData  # noqa: E402


class FixedMeanModel(torch.nn.Module):
    """A 'VAE' whose decoder mean for image i is the fixed picture means[i]."""

    latent_size = 1

    def __init__(self, means):
        super().__init__()
        self.raw = torch.logit(torch.as_tensor(means, dtype=torch.float64))
        self.lookup = {}
        self.dtype_anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))  # the noise's dtype

    def encode(self, x):
        index = torch.tensor([self.lookup[bytes(row.numpy())] for row in x])
        mu = index[:, None].double()
        return mu, torch.full_like(mu, -60.0)  # the posterior is a point: z = mu

    def decode(self, z):
        return self.raw[z[:, 0].round().long()]

    def posterior(self, features, eps):
        from vaecli.models.protocol import LatentGroup, Pass

        mu, logvar = features
        z = mu + torch.exp(0.5 * logvar) * eps
        return Pass(self.decode(z), (LatentGroup(z, mu, logvar),))


def _discretized_gaussian_data(sigma, n=300, shape=(1, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.2, 0.8, (n, *shape))
    y = means + sigma * rng.standard_normal(means.shape)
    x = np.clip(np.round(y * 255), 0, 255).astype(np.uint8)
    return means, x


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.3])
def test_recovers_the_sigma_the_data_were_drawn_with(sigma):
    means, x = _discretized_gaussian_data(sigma)
    model = FixedMeanModel(means)
    model.lookup = {bytes(row.tobytes()): i for i, row in enumerate(x)}
    assert len(model.lookup) == len(x)
    found = pmf_sigma(model, torch.from_numpy(x), seed=0, n_bits=8, log_sigma_min=-6.0, n_images=len(x))
    # 19,200 pixels: the MLE's standard error in sigma is about sigma/sqrt(2n) ~ 0.5%
    assert found["pmf_sigma"] == pytest.approx(sigma, rel=0.03)
    assert found["pmf_images"] == len(x)


def test_large_examples_are_fitted_on_fewer_of_them(monkeypatch):
    # a video's worth of values per example: the subset shrinks to about
    # PMF_CALIBRATION_VALUES values (here 4 examples of 1,024), and never below the minimum
    import vaecli.calibration as calibration

    monkeypatch.setattr(calibration, "PMF_CALIBRATION_VALUES", 4 * 1024)
    monkeypatch.setattr(calibration, "PMF_CALIBRATION_MIN", 3)
    means, x = _discretized_gaussian_data(0.05, n=40, shape=(1, 32, 32))
    model = FixedMeanModel(means)
    model.lookup = {bytes(row.tobytes()): i for i, row in enumerate(x)}
    found = pmf_sigma(model, torch.from_numpy(x), seed=0, n_bits=8, log_sigma_min=-6.0)
    assert found["pmf_images"] == 4
    assert found["pmf_sigma"] == pytest.approx(0.05, rel=0.03)  # 4,096 pixels: about 1% standard error
    monkeypatch.setattr(calibration, "PMF_CALIBRATION_VALUES", 1024)
    assert pmf_sigma(model, torch.from_numpy(x), seed=0, n_bits=8, log_sigma_min=-6.0)["pmf_images"] == 3


def test_the_fit_is_a_maximum_of_the_reference_pmf():
    # means near the edges: the PMF's maximiser is far from sqrt(MSE)
    rng = np.random.default_rng(1)
    means = rng.uniform(0.001, 0.05, (200, 1, 6, 6))
    x = np.where(rng.uniform(size=means.shape) < 0.8, 0, rng.integers(0, 256, means.shape)).astype(np.uint8)
    model = FixedMeanModel(means)
    model.lookup = {bytes(row.tobytes()): i for i, row in enumerate(x)}
    found = pmf_sigma(model, torch.from_numpy(x), seed=0, n_bits=8, log_sigma_min=-6.0, n_images=len(x))
    s = found["pmf_sigma"]
    raw = np.log(means) - np.log1p(-means)

    def total(sig):  # the float64 oracle, independent of the backend the fit used
        return reference_log_pmf("sigma", x, raw, n_bits=8, sigma=sig).sum()

    assert total(s) >= total(s * 1.02) and total(s) >= total(s / 1.02)
    assert -total(s) / (x.size * math.log(2)) == pytest.approx(found["pmf_train_bits"], rel=1e-9)
    mse_sigma = math.sqrt(np.mean((x / 255 - means) ** 2))
    assert abs(math.log(s / mse_sigma)) > 0.3  # a different sigma than sqrt(MSE), and a better one
    assert total(s) > total(mse_sigma)


def test_likelihood_uses_the_pmf_sigma_for_the_pmf_only():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.integers(0, 256, (4, 1, 5, 5)).astype(np.uint8))
    raw = torch.from_numpy(rng.normal(size=(4, 1, 5, 5)))
    both = vaecli.likelihood("sigma", sigma=0.1, pmf_sigma=0.3)
    plain = vaecli.likelihood("sigma", sigma=0.1)
    wide = vaecli.likelihood("sigma", sigma=0.3)
    torch.testing.assert_close(both.log_prob(x, raw), plain.log_prob(x, raw))
    torch.testing.assert_close(both.log_pmf(x, raw), wide.log_pmf(x, raw))
    assert not torch.allclose(plain.log_pmf(x, raw), wide.log_pmf(x, raw))
    assert both.current_sigma() == pytest.approx(0.1)
    with pytest.raises(VaeError, match="sigma likelihood only"):
        vaecli.likelihood("gaussian", pmf_sigma=0.3)


def _data():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:12, :12]

    def make(n):
        cx, cy = rng.uniform(3, 9, (2, n, 1, 1))
        return (255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 6.0))[:, None].round().astype(np.uint8)

    return FakeData(make(96)), FakeData(make(32), split="test", checksum="1" * 64)


def test_training_stores_it_and_evaluation_uses_it(tmp_path):
    config = TrainConfig(epochs=1, batch_size=32, model_options=dict(latent_dim=4, width=4), seed=3)
    run = train(config, tmp_path / "s.h5", data=_data(), progress=False)
    cal = run.calibration
    assert cal["pmf_sigma"] > 0 and cal["pmf_images"] == 96 and "maximum-likelihood" in cal["pmf_method"]
    model = load_model(run, "cpu")
    assert model.likelihood.pmf_sigma == pytest.approx(cal["pmf_sigma"])
    assert model.likelihood.sigma == pytest.approx(cal["eval_sigma"])
    results = evaluate(model, torch.from_numpy(_data()[1].images), ["bpd", "elbo"])
    assert results["bpd"]["pmf_sigma"] == pytest.approx(cal["pmf_sigma"])
    assert results["elbo"]["decoder_sigma"] == pytest.approx(cal["eval_sigma"])
    # an older file without it falls back to the eval sigma for the PMF
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        for key in ("pmf_sigma", "pmf_images", "pmf_train_bits", "pmf_method"):
            del f["calibration"].attrs[key]
    runfile.seal(tmp_path / "s.h5")
    older = load_model(runfile.read(tmp_path / "s.h5"), "cpu")
    assert older.likelihood.pmf_sigma is None
    fallback = evaluate(older, torch.from_numpy(_data()[1].images), ["bpd"])["bpd"]
    assert fallback["pmf_sigma"] == pytest.approx(cal["eval_sigma"])
    assert fallback["pmf_sigma_source"] == "eval sigma (no PMF sigma stored; vae calibrate stores one)"


def test_calibrate_command_upgrades_a_run_and_drops_stale_results(tmp_path, monkeypatch):
    import vaecli.runs as train_module

    config = TrainConfig(epochs=1, batch_size=32, model_options=dict(latent_dim=4, width=4), seed=3)
    out = tmp_path / "s.h5"
    train(config, out, data=_data(), progress=False)
    stored = runfile.read(out).calibration["pmf_sigma"]
    with h5py.File(out, "r+") as f:
        del f["calibration"].attrs["pmf_sigma"]
    runfile.seal(out)
    runfile.store_evaluation(out, "test", {"bpd": {"value": 9.0, "unit": "bits/dim", "n": 1, "applicable": True},
                                           "kl": {"value": 1.0, "unit": "nats/image", "n": 1, "applicable": True}})
    monkeypatch.setattr(train_module, "load_split", lambda dataset, split, size=None: _data()[0])
    result = CliRunner().invoke(main, ["calibrate", str(out)])
    assert result.exit_code == 0, result.output
    assert "removed stale evaluations: test/bpd" in result.output
    run = runfile.read(out)
    assert run.calibration["pmf_sigma"] == pytest.approx(stored)  # the same fit as at training time
    assert "bpd" not in run.evaluations["test"] and "kl" in run.evaluations["test"]


@pytest.mark.parametrize("validation", [0.0, 0.25])
def test_calibrate_fits_the_images_training_calibrated_on(tmp_path, monkeypatch, validation):
    """With --validation the held-out images are not training images: vae calibrate leaves
    them out, as training did, and gets training's fit again."""
    import vaecli.runs as train_module

    config = TrainConfig(epochs=1, batch_size=32, model_options=dict(latent_dim=4, width=4), seed=3,
                         validation=validation)
    out = tmp_path / "s.h5"
    train(config, out, data=_data(), progress=False)
    stored = runfile.read(out).calibration
    monkeypatch.setattr(train_module, "load_split", lambda dataset, split, size=None: _data()[0])
    result = CliRunner().invoke(main, ["calibrate", str(out), "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)["calibration"]
    assert values["pmf_images"] == stored["pmf_images"] == round(len(_data()[0].images) * (1 - validation))
    assert values["pmf_sigma"] == pytest.approx(stored["pmf_sigma"], rel=1e-6)


def test_calibrate_refuses_what_has_no_evaluation_sigma(tmp_path):
    config = TrainConfig(epochs=1, batch_size=32, model_options=dict(latent_dim=4, width=4), seed=3, likelihood="logistic")
    train(config, tmp_path / "l.h5", data=_data(), progress=False)
    result = CliRunner().invoke(main, ["calibrate", str(tmp_path / "l.h5")])
    assert result.exit_code != 0
    assert "a logistic run; only sigma runs have evaluation sigmas" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
