"""The aggregate posterior against the prior (vaecli.aggregate, `vae eval --metric
aggregate-kl`): the matrix form against the pair-by-pair float64 reference, closed forms,
the moment-matched lower bound, and the metric on each model family."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from vaecli import VaeError, aggregate, reference  # noqa: E402
from vaecli.cli import main  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.evaluate import evaluate  # noqa: E402
from vaecli.runs import build_model  # noqa: E402


def _posteriors(n, d, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    return rng.normal(0, spread, (n, d)), rng.normal(-1.0, 0.8, (n, d))


@pytest.mark.parametrize("chunk", [2**24, 7])  # all samples in one product, or a few rows at a time
def test_matrix_form_matches_the_pairwise_reference(monkeypatch, chunk):
    monkeypatch.setattr(aggregate, "CHUNK_VALUES", chunk)
    mean, logvar = _posteriors(9, 3)
    z = np.random.default_rng(1).normal(0, 2, (11, 3))
    got = aggregate.aggregate_kl_terms(torch.from_numpy(mean), torch.from_numpy(logvar), torch.from_numpy(z))
    want = reference.aggregate_kl_terms(mean, logvar, z)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-10)
    assert got.dtype == torch.float64 and got.shape == (11,)
    np.testing.assert_allclose(aggregate.gaussian_fit_kl(torch.from_numpy(mean), torch.from_numpy(logvar)),
                               reference.gaussian_fit_kl(mean, logvar), rtol=1e-12)


def test_posteriors_equal_to_the_prior_give_zero():
    mean, logvar = torch.zeros(5, 4, dtype=torch.float64), torch.zeros(5, 4, dtype=torch.float64)
    z = torch.randn(5, 4, dtype=torch.float64)
    assert torch.allclose(aggregate.aggregate_kl_terms(mean, logvar, z), torch.zeros(5, dtype=torch.float64),
                          atol=1e-12)
    assert abs(aggregate.gaussian_fit_kl(mean, logvar)) < 1e-12


def test_identical_posteriors_give_the_closed_form_kl():
    """Every image with the posterior N(a, s^2): q(z) is that Gaussian, its KL from N(0, I)
    is sum 0.5 (s^2 + a^2 - 1 - log s^2); the moment fit is exact, and the Monte Carlo
    estimate agrees within its standard error."""
    a, s2 = np.array([0.5, -1.0, 2.0]), np.array([0.25, 1.0, 4.0])
    closed = float(np.sum(0.5 * (s2 + a**2 - 1 - np.log(s2))))
    n = 4000
    mean = torch.from_numpy(np.tile(a, (n, 1)))
    logvar = torch.from_numpy(np.tile(np.log(s2), (n, 1)))
    assert aggregate.gaussian_fit_kl(mean, logvar) == pytest.approx(closed, rel=1e-10)
    gen = torch.Generator().manual_seed(0)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen, dtype=torch.float64)
    terms = aggregate.aggregate_kl_terms(mean, logvar, z).numpy()
    assert abs(terms.mean() - closed) < 4 * terms.std(ddof=1) / math.sqrt(n)


def test_moment_fit_is_a_lower_bound_that_misses_two_separated_clusters():
    """Half the posteriors at -3, half at +3, narrow: the aggregate is bimodal with a hole
    at 0 where the prior is densest.  Its moments (mean 0, variance ~9) hide the hole; the
    mixture's own KL shows it."""
    n = 2000
    mean = torch.cat([torch.full((n // 2, 1), -3.0), torch.full((n // 2, 1), 3.0)]).double()
    logvar = torch.full((n, 1), math.log(0.1**2), dtype=torch.float64)
    z = mean + 0.1 * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kl = float(aggregate.aggregate_kl_terms(mean, logvar, z).mean())
    fit = aggregate.gaussian_fit_kl(mean, logvar)
    # the mixture: -H(q) - E log p with H(q) = log 2 + H(N(0, 0.1^2)), E z^2 = 9.01
    closed = -(math.log(2) + 0.5 * math.log(2 * math.pi * math.e * 0.01)) + 0.5 * (math.log(2 * math.pi) + 9.01)
    assert kl == pytest.approx(closed, abs=0.02)
    assert fit == pytest.approx(0.5 * (9.01 - 1 - math.log(9.01)), rel=1e-9) and fit < kl - 1.0


def test_shapes_are_checked_in_one_line():
    with pytest.raises(VaeError, match=r"mean and logvar must both be \(N, Z\)"):
        aggregate.aggregate_kl_terms(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(1, 2))
    with pytest.raises(VaeError, match=r"samples must be \(M, 2\)"):
        aggregate.aggregate_kl_terms(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(1, 3))


def _model(name, options, shape=(1, 8, 8)):
    torch.manual_seed(0)
    config = TrainConfig(model=name, model_options=options)
    return build_model(config, shape, "cpu")


def test_conv_metric_splits_the_rate_into_information_and_marginal_kl():
    model = _model("conv", {"width": 8, "latent_dim": 3})
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    r = evaluate(model, images, ["kl", "aggregate-kl"], batch_size=10, seed=3)
    agg = r["aggregate-kl"]
    assert agg["applicable"] and agg["n"] == 37 and agg["latent_dims"] == 3 and json.loads(agg["groups"]) == ["z0"]
    # conv's posterior does not depend on the noise: its analytic KL is the ELBO's
    assert agg["rate"] == pytest.approx(r["kl"]["value"], rel=1e-5)
    assert agg["mutual_information"] == pytest.approx(agg["rate"] - agg["value"], rel=1e-12)
    assert agg["mutual_information"] <= math.log(37) + 1e-9 and agg["value"] >= agg["gaussian_fit_kl"] - 5 * agg["stderr"]
    # the batches do not change it: the posteriors and the seeded samples are the same
    again = evaluate(model, images, ["aggregate-kl"], batch_size=37, seed=3)["aggregate-kl"]
    assert again["value"] == pytest.approx(agg["value"], rel=1e-12)
    other = evaluate(model, images, ["aggregate-kl"], batch_size=37, seed=4)["aggregate-kl"]
    assert other["value"] != agg["value"]


def test_hvae_uses_its_top_group_and_svg_has_none():
    hvae = _model("hvae", {"width": 8, "latent_channels": 2, "resolutions": "1,4"})
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    agg = evaluate(hvae, images, ["aggregate-kl"], batch_size=5)["aggregate-kl"]
    # the top group's prior is learned but the same for every image; the others condition on it
    assert agg["applicable"] and json.loads(agg["groups"]) == ["1x1/0"] and agg["latent_dims"] == 2
    # against its learned prior N(m, s^2): the reference in the coordinates (z - m) / s, same samples
    with torch.no_grad():
        top = hvae.posterior(hvae.encode(images), torch.zeros(12, hvae.latent_size)).groups[0]
    flat = [t.reshape(12, -1).double().numpy() for t in (top.mean, top.logvar, top.prior_mean, top.prior_logvar)]
    mean, logvar = (flat[0] - flat[2]) * np.exp(-0.5 * flat[3]), flat[1] - flat[3]
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    want = reference.aggregate_kl_terms(mean, logvar, mean + np.exp(0.5 * logvar) * eps).mean()
    assert agg["value"] == pytest.approx(want, rel=1e-6)
    assert agg["gaussian_fit_kl"] == pytest.approx(reference.gaussian_fit_kl(mean, logvar), rel=1e-6)
    svg = _model("svg", {"width": 8, "g_dim": 8, "rnn_size": 8, "z_dim": 2, "n_past": 2, "n_future": 2},
                 shape=(4, 1, 64, 64))
    videos = torch.randint(0, 256, (3, 4, 1, 64, 64), dtype=torch.uint8)
    r = evaluate(svg, videos, ["aggregate-kl"], batch_size=2)["aggregate-kl"]
    assert not r["applicable"] and "every latent group's prior depends on the data" in r["reason"]


def test_vae_eval_reports_it(tmp_path):
    from fakes import blob_images

    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(40, size=8))
    out = str(tmp_path / "r.h5")
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--latent-dim", "2", "--batch-size", "20",
                                       "--epochs", "1", "--device", "cpu", "--quiet", "--out", out])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", out, "--metric", "aggregate-kl", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    agg = json.loads(result.stdout)["results"]["aggregate-kl"]
    assert agg["unit"] == "nats" and agg["n"] == 4 and math.isfinite(agg["value"])  # (the 10% test hold-out)
    result = CliRunner().invoke(main, ["eval", out, "--metric", "aggregate-kl", "--device", "cpu"])
    assert result.exit_code == 0 and "aggregate-kl" in result.output, result.output
