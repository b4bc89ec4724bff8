"""vaecli.models: the registry of models with typed options, and the protocol's
library-side computations (KL per group, importance weights)."""

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from vaecli import VaeError, models  # noqa: E402
from vaecli.cli import main  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.models.protocol import LatentGroup, group_kl, log_weight, repeat_features, total_kl  # noqa: E402


def test_options_are_completed_typed_and_checked():
    assert models.parse_options("conv") == {"latent_dim": 20, "width": 32}
    assert models.parse_options("conv", {"width": "8"}) == {"latent_dim": 20, "width": 8}
    with pytest.raises(VaeError, match=r"model conv has no option\(s\) depth; its options are: latent_dim, width"):
        models.parse_options("conv", {"depth": 3})
    with pytest.raises(VaeError, match="option width must be int, got 'wide'"):
        models.parse_options("conv", {"width": "wide"})
    with pytest.raises(VaeError, match="latent_dim must be an integer >= 1, got 0"):
        models.parse_options("conv", {"latent_dim": 0})
    with pytest.raises(VaeError, match="unknown model 'resnet'; choose one of: conv, mlp, hvae"):
        TrainConfig(model="resnet")


def test_a_schema_1_config_reads_as_the_conv_model():
    old = json.dumps({"dataset": "mnist5k", "likelihood": "sigma", "latent_dim": 7, "width": 3})
    config = TrainConfig.from_json(old)
    assert (config.model, config.model_options) == ("conv", {"latent_dim": 7, "width": 3})
    assert TrainConfig.from_json(config.to_json()) == config


def test_vae_models_lists_each_model_with_its_defaults():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows[0]["name"] == "conv" and rows[0]["options"] == {"latent_dim": 20, "width": 32}
    assert rows[1]["name"] == "mlp" and rows[1]["options"] == {"latent_dim": 20, "hidden": 400, "depth": 1}
    assert rows[2]["name"] == "hvae" and rows[2]["options"]["resolutions"] == "auto"


@pytest.mark.parametrize("args, message", [
    (["--model-option", "depth=2"], "Error: model conv has no option(s) depth; its options are: latent_dim, width"),
    (["--model-option", "width"], "Error: Invalid value for --model-option: 'width' is not KEY=VALUE"),
    (["--model", "resnet"], "Error: Invalid value for '--model': 'resnet' is neither one of conv, mlp, hvae, svg nor "
                            "package.module:function"),
    (["--model", "no_such_module_here:build"], "Error: --model no_such_module_here:build: cannot import "
                                               "no_such_module_here (ModuleNotFoundError"),
    (["--model", "vaecli.units:no_function"], "Error: --model vaecli.units:no_function: vaecli.units has no function "
                                              "no_function"),
    (["--model", "vaecli.units:bits_per_dim"], "Error: --model vaecli.units:bits_per_dim: the factory did not take"),
])
def test_train_refuses_bad_model_options_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "r.h5"), "--epochs", "0", *args])
    assert result.exit_code != 0
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(message), result.output
    assert not (tmp_path / "r.h5").exists()


def test_model_option_reaches_the_model(tmp_path):
    from fakes import FakeData, blob_images

    from vaecli.training import train

    data = (FakeData(blob_images(64, size=8)), FakeData(blob_images(16, size=8, seed=1)))
    config = TrainConfig(epochs=1, batch_size=32, model_options={"latent_dim": 3, "width": 5})
    run = train(config, tmp_path / "r.h5", data=data, progress=False)
    assert run.model["to_posterior.weight"].shape == (6, 4 * 5 * 2 * 2)
    assert run.attrs["model"] == "conv" and run.config.model_options == {"latent_dim": 3, "width": 5}


def test_kl_of_a_group_with_a_learned_prior_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    q_m, q_lv, p_m, p_lv = (torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(4))
    q = torch.distributions.Normal(q_m, torch.exp(0.5 * q_lv))
    p = torch.distributions.Normal(p_m, torch.exp(0.5 * p_lv))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))
    z = q_m + torch.exp(0.5 * q_lv) * torch.randn(q_m.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(group_kl(LatentGroup(z, q_m, q_lv, p_m, p_lv)), expected)
    standard = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    two = (LatentGroup(z, q_m, q_lv, p_m, p_lv), LatentGroup(z, q_m, q_lv))
    torch.testing.assert_close(total_kl(two), expected + standard)


def test_log_weight_is_log_prior_minus_log_posterior_over_all_groups():
    g = torch.Generator().manual_seed(1)
    q_m, q_lv, p_m, p_lv = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(4))
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(q_m, torch.exp(0.5 * q_lv))
    p = torch.distributions.Normal(p_m, torch.exp(0.5 * p_lv))
    expected = (p.log_prob(z) - q.log_prob(z)).sum(1) + (torch.distributions.Normal(0.0, 1.0).log_prob(z)
                                                         - q.log_prob(z)).sum(1)
    torch.testing.assert_close(log_weight((LatentGroup(z, q_m, q_lv, p_m, p_lv), LatentGroup(z, q_m, q_lv))),
                               expected)


def test_features_repeat_row_major_by_sample():
    a, b = torch.arange(6.0).view(3, 2), torch.arange(3.0).view(3, 1)
    ra, rb = repeat_features((a, b), 2)
    assert ra.shape == (6, 2) and torch.equal(ra[3:], a) and torch.equal(rb[:3], b)


def test_conv_follows_the_protocol():
    from vaecli.runs import build_model

    model = build_model(TrainConfig(model_options={"latent_dim": 4, "width": 2}), (1, 8, 8), "cpu")
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    eps = torch.randn(3, model.latent_size)
    a, b = model(x, eps), model.posterior(model.encode(x), eps)
    assert torch.equal(a.raw, b.raw) and torch.equal(a.groups[0].z, b.groups[0].z)
    mean_path = model.posterior(model.encode(x), torch.zeros_like(eps))
    assert torch.equal(mean_path.groups[0].z, mean_path.groups[0].mean)
    assert model.generate(eps, 0.5).shape == (3, 1, 8, 8)
    torch.testing.assert_close(model.generate(eps, 0.5), model.decode(0.5 * eps))


@pytest.mark.parametrize("name", ["conv", "mlp", "hvae"])
def test_every_model_trains_resumes_evaluates_and_samples(tmp_path, name):
    """The CLI path of each registered model, small: train 1 epoch, resume to 2, evaluate
    every likelihood metric, sample and reconstruct."""
    import numpy as np

    from fakes import blob_images

    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(48, size=8))
    out = str(tmp_path / "r.h5")
    size = ["--model-option", "width=8", "--model-option", "latent_channels=2"] if name == "hvae" else \
        ["--latent-dim", "3"]
    common = ["--data", str(data), "--model", name, *size, "--batch-size", "16", "--device", "cpu", "--quiet",
              "--out", out]
    for epochs, extra in (("1", []), ("2", ["--resume"])):
        result = CliRunner().invoke(main, ["train", *common, "--epochs", epochs, *extra])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", out, "--metric", "elbo", "--metric", "bpd", "--metric", "nll",
                                       "--metric", "kl", "--metric", "active-units", "--iw-samples", "4",
                                       "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["results"]
    assert np.isfinite(results["bpd"]["value"]) and results["bpd"]["value"] > 0  # (2 epochs: barely trained)
    latents = 2 * 2 * (1 + 4 * 4) if name == "hvae" else 3  # hvae on 8x8: groups at 1x1 and 4x4, 2 each
    assert results["active-units"]["unit"] == f"of {latents} latent dims"
    for command in (["sample", out, "-n", "4", "-o", str(tmp_path / "s.png")],
                    ["reconstruct", out, "-n", "2", "--rows", "1", "-o", str(tmp_path / "r.png")]):
        result = CliRunner().invoke(main, [*command, "--device", "cpu"])
        assert result.exit_code == 0, result.output


def test_hvae_groups_priors_and_temperatures():
    from vaecli.models.hvae import auto_resolutions
    from vaecli.runs import build_model

    assert auto_resolutions(28) == (1, 7, 14) and auto_resolutions(32) == (1, 4, 8, 16)
    config = TrainConfig(model="hvae", model_options={"width": 8, "latent_channels": 2, "resolutions": "1,4"})
    torch.manual_seed(0)
    model = build_model(config, (1, 8, 8), "cpu")
    assert model.group_names == ("1x1/0", "1x1/1", "4x4/0", "4x4/1") and model.latent_size == 2 * (2 + 32)
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    out = model(x, torch.randn(3, model.latent_size))
    assert len(out.groups) == 4 and all(g.prior_mean is not None for g in out.groups)
    assert out.groups[2].z.shape == (3, 2, 4, 4) and out.raw.shape == (3, 1, 8, 8)
    # every group below the top conditions its prior on the groups above: the prior of
    # group 2 moves when group 0's noise does
    eps = torch.randn(1, model.latent_size)
    moved = eps.clone()
    moved[0, :2] += 3.0
    priors = [model(x[:1], e).groups[2].prior_mean for e in (eps, moved)]
    assert not torch.allclose(*priors)
    # temperature 0 draws each group's prior mean
    raw0 = model.generate(torch.randn(2, model.latent_size), 0.0)
    assert torch.allclose(raw0[0], raw0[1], atol=1e-6)
    assert model.generate(eps, [1.0, 0.5, 0.0, 1.0]).shape == (1, 1, 8, 8)
    with pytest.raises(VaeError, match="3 temperatures for 4 latent groups"):
        model.generate(eps, [1.0, 1.0, 1.0])


def test_hvae_draws_the_top_groups_from_the_posterior_and_the_rest_from_the_prior():
    """posterior_then_prior(features, eps, k): k = 0 is generate, k = every group the
    posterior pass; between, groups above the cut depend on the image and groups below
    are drawn from their priors (posterior equal to prior there)."""
    from vaecli.runs import build_model

    config = TrainConfig(model="hvae", model_options={"width": 8, "latent_channels": 2, "resolutions": "1,4"})
    torch.manual_seed(0)
    model = build_model(config, (1, 8, 8), "cpu")
    with torch.no_grad():  # posteriors that differ from the priors, as after training
        for block in model.decoder:
            block.posterior.weight.normal_(0, 0.5)
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    eps = torch.randn(3, model.latent_size)
    features = model.encode(x)
    with torch.no_grad():
        assert torch.equal(model.posterior_then_prior(features, eps, 0), model.generate(eps))
        assert torch.equal(model.posterior_then_prior(features, eps, 4), model.posterior(features, eps).raw)
        middle = model.posterior_then_prior(features, eps, 2)
        _, groups = model._top_down(eps, features, 1.0, 2)
    assert not torch.allclose(middle, model.generate(eps)) and not torch.allclose(middle, model.posterior(features, eps).raw)
    assert all(not torch.equal(g.mean, g.prior_mean) for g in groups[:2])
    assert all(torch.equal(g.mean, g.prior_mean) and torch.equal(g.logvar, g.prior_logvar) for g in groups[2:])
    # the temperature reaches the prior groups below the cut only
    with torch.no_grad():
        cold = model.posterior_then_prior(features, eps, 2, 0.0)
        assert torch.equal(cold, model.posterior_then_prior(features, eps, 2, [1.0, 1.0, 0.0, 0.0]))
        assert torch.equal(cold, model.posterior_then_prior(features, eps, 2, [0.0, 0.0, 0.0, 0.0]))
        moved = eps.clone()
        moved[:, 4:] += 2.0  # the noise of the groups below the cut
        assert torch.equal(cold, model.posterior_then_prior(features, moved, 2, 0.0))
        assert not torch.allclose(middle, model.posterior_then_prior(features, moved, 2))
    with pytest.raises(VaeError, match="posterior_groups must be 0 to 4, got 5"):
        model.posterior_then_prior(features, eps, 5)
    with pytest.raises(VaeError, match="3 temperatures for 4 latent groups"):
        model.posterior_then_prior(features, eps, 2, [1.0, 1.0, 1.0])


def test_the_weights_average_is_stored_resumes_exactly_and_is_what_evaluation_uses(tmp_path):
    import numpy as np

    from fakes import FakeData, blob_images
    from vaecli import runfile
    from vaecli.runs import load_model
    from vaecli.training import train

    data = (FakeData(blob_images(64, size=8)), FakeData(blob_images(16, size=8, seed=1)))
    config = TrainConfig(model="hvae", epochs=2, batch_size=16, model_options={"width": 4, "latent_channels": 1})
    assert config.ema == 0.999 and TrainConfig().ema == 0.0
    full = train(config, tmp_path / "full.h5", data=data, progress=False)
    assert set(full.ema) == {k for k in full.model if k in dict(load_model(full, "cpu").named_parameters())}
    assert any(not np.array_equal(full.ema[k], full.model[k]) for k in full.ema)
    train(config.replace(epochs=1), tmp_path / "part.h5", data=data, progress=False)
    resumed = train(config, tmp_path / "part.h5", data=data, resume=True, progress=False)
    for k in full.ema:
        np.testing.assert_array_equal(resumed.ema[k], full.ema[k])
    model = load_model(runfile.read(tmp_path / "full.h5"), "cpu")
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), full.ema[name])
    conv = train(TrainConfig(epochs=1, batch_size=16, model_options={"latent_dim": 2, "width": 2}),
                 tmp_path / "conv.h5", data=data, progress=False)
    assert conv.ema == {}


def test_sample_takes_a_temperature_per_latent_group(tmp_path):
    """vae sample --temperature T1,T2,...: one per group of an hvae, top first; a count
    that is not the model's is one line; the temperatures are stored with the samples."""
    import numpy as np

    from fakes import blob_images
    from vaecli import runfile

    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(32, size=8))
    out = str(tmp_path / "r.h5")
    train = ["train", "--data", str(data), "--model", "hvae", "--model-option", "width=4", "--model-option",
             "latent_channels=2", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet", "--out", out]
    assert CliRunner().invoke(main, train).exit_code == 0
    info = CliRunner().invoke(main, ["info", out])
    assert "4 latent groups: 1x1/0, 1x1/1, 4x4/0, 4x4/1" in info.output
    arrays = {}
    for name, temperature in (("cold", "0,0,0,0"), ("mixed", "1,1,0,0"), ("warm", "1")):
        path = tmp_path / f"{name}.npz"
        result = CliRunner().invoke(main, ["sample", out, "-n", "6", "--temperature", temperature, "--device", "cpu",
                                           "--mode", "mean", "-o", str(path)])
        assert result.exit_code == 0, result.output
        arrays[name] = np.load(path)
    # temperature 0 everywhere: every sample is the chain of prior means, the same picture
    assert (arrays["cold"]["images"] == arrays["cold"]["images"][:1]).all()
    assert list(arrays["mixed"]["temperature"]) == [1.0, 1.0, 0.0, 0.0]
    assert not (arrays["mixed"]["images"] == arrays["mixed"]["images"][:1]).all()
    stored = CliRunner().invoke(main, ["sample", out, "-n", "2", "--temperature", "1,0.5,0.5,0", "--format", "run",
                                       "--device", "cpu"])
    assert stored.exit_code == 0, stored.output
    assert runfile.read(out).samples["prior_mean_t1-0.5-0.5-0_s0"][0].shape == (2, 1, 8, 8)
    wrong = CliRunner().invoke(main, ["sample", out, "--temperature", "1,0.5", "-o", str(tmp_path / "x.png")])
    assert wrong.exit_code == 2 and "2 temperatures for the model's 4 latent groups (1x1/0, 1x1/1, 4x4/0, 4x4/1)" \
        in wrong.output and not (tmp_path / "x.png").exists()
