"""The analysis scripts of docs/study.md compute what vaecli computes."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vaecli.backends import torch_backend

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _script(name):
    """A script of scripts/ as a module, imported as `python scripts/NAME.py` runs it
    (scripts/ first on the path, for the modules it shares with the others)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["student-t", "gaussian-pixel"])
def test_floor_share_pixel_densities_sum_to_the_decoders_log_prob(name):
    floor_share = _script("floor_share")
    gen = torch.Generator().manual_seed(0)
    channels = 3 if name == "student-t" else 2
    raw = 3 * torch.randn(4, channels, 5, 6, generator=gen, dtype=torch.float64) - 2  # some scales at the floor
    x = torch.randint(0, 256, (4, 1, 5, 6), generator=gen, dtype=torch.uint8)
    log_p, log_scale = floor_share.pixel_log_density(name, x.double() / 255, raw)
    assert log_p.shape == log_scale.shape == x.shape
    assert (log_scale < floor_share.LOG_SIGMA_MIN + floor_share.NEAR_FLOOR).any()
    torch.testing.assert_close(log_p.sum((1, 2, 3)), torch_backend.log_prob(name, x, raw), rtol=1e-12, atol=1e-9)


def test_floor_share_refuses_a_decoder_without_a_per_pixel_scale():
    with pytest.raises(SystemExit, match="no per-pixel scale"):
        _script("floor_share").pixel_log_density("sigma", torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def _run_study_table(directory):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(SCRIPTS / "study_table.py"), str(directory)], capture_output=True,
                          text=True, timeout=300)


def test_study_table_sorts_betas_as_numbers_and_fails_in_one_line(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from vaecli.cli import main

    data = tmp_path / "d.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (60, 1, 8, 8), dtype=np.uint8))
    sweep = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", "--out-dir", str(sweep), "--dataset", str(data), "--likelihood",
                                       "gaussian", "--beta", "10", "--beta", "2", "--epochs", "1", "--batch-size",
                                       "32", "--latent-dim", "2", "--device", "cpu", "--metric", "elbo"])
    assert result.exit_code == 0, result.output
    table = _run_study_table(sweep)
    assert table.returncode == 0, table.stderr
    rows = [line.split(" | ")[0] for line in table.stdout.splitlines()[2:] if line.startswith("| gaussian")]
    assert rows == ["| gaussian β=2", "| gaussian β=10"]
    (sweep / "damaged.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    table = _run_study_table(sweep)
    assert table.returncode == 1 and "Traceback" not in table.stderr
    assert table.stderr.strip().startswith("Error: ") and "damaged.h5" in table.stderr
    empty = _run_study_table(tmp_path / "nothing")
    assert empty.returncode == 1 and "no run files (*.h5) here" in empty.stderr


def test_a_stripped_run_evaluates_as_the_original_and_refuses_to_resume(tmp_path):
    import json

    import numpy as np
    from click.testing import CliRunner

    from fakes import blob_images
    from vaecli import VaeError, runfile
    from vaecli.cli import main

    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(40, size=8))
    run = tmp_path / "r.h5"
    train = ["train", "--data", str(data), "--epochs", "1", "--latent-dim", "2", "--width", "4", "--batch-size", "16",
             "--device", "cpu", "-q", "--out", str(run)]
    assert CliRunner().invoke(main, train).exit_code == 0
    assert CliRunner().invoke(main, ["eval", str(run), "--metric", "bpd", "--device", "cpu"]).exit_code == 0
    strip = _script("strip_run")
    out = tmp_path / "s.h5"
    strip.strip(str(run), str(out))
    a, b = runfile.read(run), runfile.read(out)
    assert b.optimizer is None and b.attrs["stripped"] and out.stat().st_size < run.stat().st_size
    assert b.evaluations == a.evaluations and b.history.keys() == a.history.keys()
    again = CliRunner().invoke(main, ["eval", str(out), "--metric", "bpd", "--device", "cpu", "--json", "--no-store"])
    assert json.loads(again.stdout)["results"]["bpd"]["value"] == a.evaluations["test"]["bpd"]["value"]
    with pytest.raises(VaeError, match="no optimizer state to resume from"):
        from vaecli.training import train as train_run

        train_run(a.config.replace(epochs=2), out, resume=True, progress=False)


def _result(model, likelihood, seed, bpd, *, groups=("z0",), fid_dir=None, fid=None, extra=None):
    """A minimal result JSON as scripts/model_study_result.py writes it."""
    import json

    per_group = json.dumps({g: 1.0 for g in groups})
    metric = {"applicable": True}
    test = {"results": {
        "bpd": {**metric, "value": bpd}, "nll": {**metric, "value": 1.0, "bpd": bpd - 0.01},
        "elbo": {**metric, "value": -100.0}, "kl": {**metric, "value": 5.0, "per_group": per_group},
        "mse": {**metric, "value": 0.01}, "active-units": {**metric, "value": 3, "per_group": per_group},
        **(extra or {})}}
    r = {"model": model, "likelihood": likelihood, "seed": seed, "parameters": 1000, "images_per_second": 10.0,
         "epochs": 3, "time_budget": 1800.0, "latent_groups": list(groups), "test": test,
         "mnist5k": {"results": {"bpd": {**metric, "value": 2.0}, "elbo": {**metric, "value": -50.0}}}}
    return r


def _table(script, directory):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), str(directory)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_model_study_table_rows_fid_column_and_differences(tmp_path):
    import json

    (tmp_path / "fid").mkdir()
    for name, r in {"conv-sigma-s0": _result("conv", "sigma", 0, 4.1),
                    "hvae-sigma-s0": _result("hvae", "sigma", 0, 4.0, groups=("1x1/0", "7x7/0")),
                    "hvae-sigma-s1": _result("hvae", "sigma", 1, 3.9, groups=("1x1/0", "7x7/0"))}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    (tmp_path / "fid" / "conv-sigma-s0.json").write_text(json.dumps({"results": {"fid": {"value": 89.43}}}))
    out = _table("model_study_table", tmp_path)
    conv = next(line for line in out.splitlines() if line.startswith("| conv | sigma |"))
    hvae = next(line for line in out.splitlines() if line.startswith("| hvae | sigma |"))
    assert "| 4.1000 |" in conv and "| 89.4 |" in conv  # its FID, from fid/conv-sigma-s0.json
    assert "| 0, 1 |" in hvae and "| 3.9500 ± 0.0707 |" in hvae and "| – |" in hvae  # no FID yet
    assert "seed 0: -0.1000, seed 1: -0.2000" in out
    assert "difference of means -0.1500;" in out  # one conv seed: no standard error


def test_model_study_table_standard_error_and_fid_at_temperatures(tmp_path):
    import json

    (tmp_path / "fid").mkdir()
    groups = ("1x1/0", "7x7/0")
    for name, r in {"conv-sigma-s0": _result("conv", "sigma", 0, 4.1), "conv-sigma-s1": _result("conv", "sigma", 1, 4.3),
                    "hvae-sigma-s0": _result("hvae", "sigma", 0, 4.0, groups=groups),
                    "hvae-sigma-s1": _result("hvae", "sigma", 1, 3.9, groups=groups)}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    for name, fid in {"hvae-sigma-s0": 105.0, "hvae-sigma-s0-t0.8": 70.25, "hvae-sigma-s1": 96.0,
                      "conv-sigma-s0": 89.0}.items():
        (tmp_path / "fid" / f"{name}.json").write_text(json.dumps({"results": {"fid": {"value": fid}}}))
    (tmp_path / "reconstruction-fid").mkdir()
    (tmp_path / "reconstruction-fid" / "conv-sigma-s1.json").write_text(json.dumps({"reconstruction_fid": 40.04}))
    out = _table("model_study_table", tmp_path)
    # hvae 3.95 (sd 0.0707), conv 4.2 (sd 0.1414): -0.25 ± sqrt(0.005/2 + 0.02/2) = 0.1118
    assert "difference of means -0.2500 ± 0.1118 (standard error)" in out
    assert "| model | decoder | seed | T = 1 | T = 0.8 | reconstructions |" in out
    # the runs with a second FID only: at another temperature, or of reconstructions
    assert "| hvae | sigma | 0 | 105.0 | 70.2 | – |" in out and "| conv | sigma | 1 | – | – | 40.0 |" in out
    assert "| hvae | sigma | 1 |" not in out and "| conv | sigma | 0 | 89.0" not in out


def test_svg_study_table_compares_each_decoder_with_svgs_setting(tmp_path):
    import json

    def video_result(seed, bpd, ssim, psnr):
        steps = {"applicable": True, "samples": 100}
        extra = {"ssim": {**steps, "value": ssim, "best_per_step": [ssim] * 3, "mean_per_step": [ssim - 0.1] * 3},
                 "psnr": {**steps, "value": psnr, "best_per_step": [psnr] * 3, "mean_per_step": [psnr - 1] * 3}}
        r = _result("svg", "x", seed, bpd, groups=("frame 1", "frame 2"), extra=extra)
        del r["mnist5k"]
        return r

    for name, r in {"svg-beta1e-4-s0": video_result(0, 2.0, 0.70, 15.0), "svg-beta1e-4-s1": video_result(1, 2.0, 0.70, 15.0),
                    "sigma-s0": video_result(0, 1.5, 0.75, 16.0), "sigma-s1": video_result(1, 1.7, 0.69, 15.5),
                    "gaussian-s0": video_result(0, 2.5, 0.60, 14.0)}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    # the scored test videos: frames of one grey level each, context frame 5 at 0.4, then 0.2, 0.4, 0.6
    import numpy as np

    levels = np.array([0, 0, 0, 0, 102, 51, 102, 153], dtype=np.uint8)
    np.savez(tmp_path / "smmnist-test-first2.npz", test_images=np.broadcast_to(levels[None, :, None, None, None],
                                                                               (2, 8, 1, 16, 16)).copy())
    out = _table("svg_study_table", tmp_path)
    assert "epochs in 30 min" in out and "SSIM, best of 100" in out
    # step 1 (the table shows steps 1, 5, 10, 15 that exist): the truth is flat at 0.2.  A black
    # frame: SSIM c1 / (0.2^2 + c1) = 0.002, PSNR -20 log10 0.2 = 13.98 dB; the last context
    # frame (0.4): SSIM (2 * 0.4 * 0.2 + c1) / (0.4^2 + 0.2^2 + c1) = 0.800, PSNR 13.98 dB
    assert "| blank frame (no model) | 0.002 |" in out and "| blank frame (no model) | 13.98 |" in out
    assert "| last context frame repeated (no model) | 0.800 |" in out
    assert "| last context frame repeated (no model) | 13.98 |" in out
    import subprocess
    import sys

    from PIL import Image

    picture = tmp_path / "curves.png"
    done = subprocess.run([sys.executable, str(SCRIPTS / "svg_study_table.py"), str(tmp_path), "--figure", str(picture)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == out and Image.open(picture).size == (1210, 440)  # the table again, and the curves
    # lower bits/dim and higher SSIM and PSNR are better: all positive for the sigma-VAE here
    # with two paired seeds, the mean difference and its standard error (sd / sqrt 2)
    assert ("- sigma (σ-VAE) (seeds 0, 1): bpd +0.5000, +0.3000 (mean +0.4000 ± 0.1000); "
            "ssim +0.0500, -0.0100 (mean +0.0200 ± 0.0300); psnr +1.00, +0.50 (mean +0.75 ± 0.25)") in out
    assert "- gaussian σ=1, β=1 (seeds 0): bpd -0.5000; ssim -0.1000; psnr -1.00" in out
    assert out.index("gaussian σ=1, β=1e-4 (SVG's)") < out.index("sigma (σ-VAE)")


def test_convergence_table_best_beta_paired_seeds_and_paper_ranking(tmp_path):
    import json

    def run(likelihood, beta, seed, fid, *, sigma=1.0, val=(3.0, 2.9, 2.95, 2.96), epochs=4, limit=100, loss=None):
        extra = {"fid": {"applicable": True, "value": fid},
                 "aggregate-kl": {"applicable": True, "value": fid / 10, "mutual_information": 9.0}}
        r = _result("conv", likelihood, seed, 4.0, extra=extra)
        r.update(beta=beta, epochs=epochs, epochs_limit=limit, early_stop=2, min_delta=0.001, trained_seconds=600.0,
                 val_bpd_history=list(val), equivalent_beta_history=[2 * sigma**2] * epochs)
        if loss:  # stopped on the beta-weighted validation loss
            r.update(monitor="loss", val_loss_history=list(loss))
        return r

    runs = {"sigma-beta1-s0": run("sigma", 1.0, 0, 30.0, sigma=0.1), "sigma-beta1-s1": run("sigma", 1.0, 1, 40.0, sigma=0.1),
            "gaussian-beta0.1-s0": run("gaussian", 0.1, 0, 35.0, loss=(2.0, 1.9, 1.8, 1.85)),
            "gaussian-beta0.1-s1": run("gaussian", 0.1, 1, 37.0, loss=(2.0, 1.9, 1.8, 1.85)),
            # trained to the epoch limit, its validation still improving (best at the last epoch)
            "gaussian-beta1-s0": run("gaussian", 1.0, 0, 70.0, val=(3.0, 2.9, 2.8, 2.7), limit=4)}
    for name, r in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    # other JSON beside the runs (benchmarks/eval_sigma.py's, a list) is not a run
    (tmp_path / "eval-sigma-sigma-beta1-s0.json").write_text(json.dumps([{"method": "running"}]))
    # the prior-holes diagnostics beside the runs: a lower temperature, the reconstructions
    (tmp_path / "fid").mkdir()
    (tmp_path / "fid" / "sigma-beta1-s0-t0.8.json").write_text(json.dumps({"results": {"fid": {"value": 21.25}}}))
    (tmp_path / "reconstruction-fid").mkdir()
    (tmp_path / "reconstruction-fid" / "gaussian-beta0.1-s1.json").write_text(json.dumps({"reconstruction_fid": 12.5}))
    (tmp_path / "fitted-prior-fid").mkdir()
    (tmp_path / "fitted-prior-fid" / "sigma-beta1-s0.json").write_text(json.dumps({"fitted_prior_fid": 17.0}))
    out = _table("convergence_table", tmp_path)
    rows = {}
    for line in out.splitlines():  # the first table's rows (the diagnostics' rows begin with a decoder too)
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    # the sigma-VAE first; 2 sigma^2 = 0.02 is its beta; the fixed Gaussian's is 2 beta
    assert rows["sigma (σ-VAE)"].endswith("| 3.50 ± 0.71 | 9.00 ± 0.00 | 35.0 ± 7.1 | 0.0200 ± 0.0000 |")
    assert "| 2 of 2 |" in rows["sigma (σ-VAE)"] and "| 2.0 ± 0.0 |" in rows["sigma (σ-VAE)"]  # best at epoch 2
    assert "| 2.9000 ± 0.0000 | 2.9600 ± 0.0000 |" in rows["sigma (σ-VAE)"]  # best and last validation bits/dim
    assert "| 0 of 1 |" in rows["gaussian σ=1, β=1"] and "| 4.0 |" in rows["gaussian σ=1, β=1"]
    assert rows["gaussian σ=1, β=0.1"].endswith("| 0.2000 ± 0.0000 |")
    assert "| 3.0 ± 0.0 |" in rows["gaussian σ=1, β=0.1"]  # its loss was best at epoch 3 (its bound at 2)
    # ended one epoch after its best (a time budget, say), short of the patience: not the rule's stop;
    # the validation bits/dim shown is its bound at the epoch the rule took as best
    assert "| 0 of 2 |" in rows["gaussian σ=1, β=0.1"] and "| 2.9500 ± 0.0000 |" in rows["gaussian σ=1, β=0.1"]
    assert "best by mean FID: β = 0.1" in out
    assert "| 0 | 30.0 | 35.0 | 70.0 | -5.0 |" in out and "| 1 | 40.0 | 37.0 | – | +3.0 |" in out
    # 35 - 36 = -1; standard error sqrt(50/2 + 2/2) = 5.10
    assert "difference of means -1.0 ± 5.1 (standard error); the σ-VAE is lower in 1 of 2 paired seeds." in out
    assert "| 1 | sigma (σ-VAE) | 35.0 | 27.25 |" in out and "| 3 | gaussian σ=1, β=1 | 70.0 | 70.4 |" in out
    # the diagnostics: only the runs that have them, their prior samples' FID (T = 1) and aggregate KL beside
    assert "| decoder | seed | aggregate posterior KL (nats) | T = 1 | T = 0.8 | fitted prior | reconstructions |" in out
    assert "| sigma (σ-VAE) | 0 | 3.00 | 30.0 | 21.2 | 17.0 | – |" in out
    assert "| gaussian σ=1, β=0.1 | 1 | 3.70 | 37.0 | – | – | 12.5 |" in out and "| sigma (σ-VAE) | 1 |" not in out

    # another model's runs are ranked without the paper's SVHN column (its conv VAE's numbers)
    for name, r in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({**r, "model": "hvae"}))
    out = _table("convergence_table", tmp_path)
    assert "| 1 | sigma (σ-VAE) | 35.0 |\n" in out and "27.25" not in out and "FID in the paper" not in out
    assert "model hvae; the paper's SVHN FIDs are its conv VAE's" in out
    # a hierarchy's cuts (scripts/hierarchy_fid.py): one column a cut, in the order of depth
    (tmp_path / "hierarchy-fid").mkdir()
    cuts = [{"posterior_groups": k, "posterior_through": through, "fid": f}
            for k, through, f in ((4, "7x7/1", 20.0), (0, None, 30.25), (2, "1x1/1", 29.0))]
    (tmp_path / "hierarchy-fid" / "sigma-beta1-s0.json").write_text(json.dumps({"n": 5000, "cuts": cuts}))
    out = _table("convergence_table", tmp_path)
    assert "| decoder | seed | n | none (prior) | to 1x1/1 | to 7x7/1 |\n|---|---|---|---|---|---|\n" in out
    assert "| sigma (σ-VAE) | 0 | 5000 | 30.2 | 29.0 | 20.0 |" in out and out.count("| 5000 |") == 1


def _block_features(images):
    """A stand-in for Inception's features: (n, 1, 12, 12) uint8 -> 6 averages of pixel blocks."""
    import numpy as np

    return np.asarray(images, dtype=np.float64).reshape(len(images), 6, -1).mean(axis=2)


class _StandInExtractor:
    """fid.FeatureExtractor's interface with :func:`_block_features` in place of Inception."""

    device = "cpu"

    def __init__(self, *args):
        pass

    def features(self, images, batch_size):
        return _block_features(images)


def _stand_in_inception(monkeypatch, script):
    """A diagnostic script's FID on :func:`_block_features`: the extractor and the
    reference statistics (no cache) both from the stand-in."""
    from vaecli import fid

    monkeypatch.setattr(script.fid, "FeatureExtractor", _StandInExtractor)
    monkeypatch.setattr(script.fid, "reference_statistics",
                        lambda extractor, data, **kw: (*fid.statistics(_block_features(data.images)), len(data.images)))


def test_fitted_prior_fid_fits_the_kept_training_images_and_scores_its_samples(tmp_path, monkeypatch):
    """The Gaussian is fitted to the posteriors of the images the run trained on (not its
    validation share, not the test split), its KL from the prior is the oracle's, and the
    FID is that of the samples decoded from it: with a stand-in feature map."""
    import numpy as np
    import torch

    from fakes import FakeData, blob_images
    from vaecli import fid, reference, runfile
    from vaecli.config import TrainConfig
    from vaecli.runs import hold_out_validation, load_model
    from vaecli.training import train

    data = FakeData(blob_images(64))
    test = FakeData(blob_images(40, seed=1), split="test", checksum="1" * 64)
    config = TrainConfig(epochs=1, batch_size=16, model_options=dict(latent_dim=4, width=4), seed=0, validation=0.25)
    train(config, tmp_path / "r.h5", data=(data, test), progress=False)

    features = _block_features

    script = _script("fitted_prior_fid")
    monkeypatch.setattr(script, "load_split", lambda dataset, split, size=None: {"train": data, "test": test}[split])
    _stand_in_inception(monkeypatch, script)
    result = script.fitted_prior_fid(tmp_path / "r.h5", samples=30, seed=3, batch_size=7)

    kept, _ = hold_out_validation(data, 0.25)
    model = load_model(runfile.read(tmp_path / "r.h5"), "cpu")
    with torch.no_grad():
        mu, logvar = (t.double().numpy() for t in model.encode(torch.from_numpy(kept.images)))
    assert result["fitted_images"] == 48 and result["n"] == 30 and result["n_reference"] == 40
    assert result["fitted_kl_from_prior"] == pytest.approx(reference.gaussian_fit_kl(mu, logvar), rel=1e-9)
    m = mu.mean(0)
    cov = (mu - m).T @ (mu - m) / len(mu) + np.diag(np.exp(logvar).mean(0))
    assert result["fitted_mean_norm"] == pytest.approx(np.linalg.norm(m), rel=1e-9)
    assert result["fitted_variances"]["max"] == pytest.approx(np.linalg.eigvalsh(cov).max(), rel=1e-9)
    pictures = script.fitted_prior_pictures(model, torch.from_numpy(m), torch.from_numpy(cov), 30, seed=3)
    expected = fid.frechet(fid.statistics(features(pictures)), fid.statistics(features(test.images)))
    assert result["fitted_prior_fid"] == pytest.approx(expected, rel=1e-9)
    # another seed draws other samples
    assert not np.array_equal(pictures, script.fitted_prior_pictures(model, torch.from_numpy(m),
                                                                      torch.from_numpy(cov), 30, seed=4))
    # a hierarchy has no single aggregate posterior: a one-line error
    monkeypatch.setattr(script, "load_model", lambda run, device: object())
    with pytest.raises(SystemExit, match="^error: .*more than one latent group"):
        script.main([str(tmp_path / "r.h5")])


def test_reconstruction_fid_scores_what_vae_reconstruct_shows(tmp_path, monkeypatch):
    """The script's FID is the Fréchet distance between the features of the pictures
    `vae reconstruct` shows (vaecli.runs.reconstructions) and the reference's: with a
    stand-in feature map (a few pixel averages) in place of Inception."""
    import numpy as np

    from fakes import FakeData, blob_images
    from vaecli import fid, runfile, runs
    from vaecli.config import TrainConfig
    from vaecli.training import train

    test = FakeData(blob_images(40, seed=1), split="test", checksum="1" * 64)
    config = TrainConfig(epochs=1, batch_size=16, model_options=dict(latent_dim=4, width=4), seed=0)
    train(config, tmp_path / "r.h5", data=(FakeData(blob_images(64)), test), progress=False)

    features = _block_features

    script = _script("reconstruction_fid")
    monkeypatch.setattr(script, "load_split", lambda *args: test)
    _stand_in_inception(monkeypatch, script)
    result = script.reconstruction_fid(tmp_path / "r.h5", samples=30, batch_size=7)  # batches of 7: 5 calls
    monkeypatch.setattr(runs, "load_split", lambda *args: test)
    shown = runs.reconstructions(runfile.read(tmp_path / "r.h5"), 30, device="cpu")[1]
    expected = fid.frechet(fid.statistics(features(shown)), fid.statistics(features(test.images)))
    assert result["n"] == 30 and result["n_reference"] == 40
    assert result["reconstruction_fid"] == pytest.approx(expected, rel=1e-9)
    assert result["reconstruction_fid"] > 0  # an epoch of training does not reconstruct blobs exactly


def test_hierarchy_fid_scores_each_cut_from_prior_samples_to_posterior_samples(tmp_path, monkeypatch):
    """Each cut's FID is that of the hvae's pictures with its first k groups drawn from
    the test images' posteriors (same noise at every cut): k = 0 scores prior samples
    decoded from that noise, every group the posterior samples; a stand-in feature map."""
    import numpy as np
    import torch

    from fakes import FakeData, blob_images
    from vaecli import fid, runfile
    from vaecli.config import TrainConfig
    from vaecli.models.protocol import draw_noise
    from vaecli.runs import load_model, mean_to_uint8
    from vaecli.training import train

    test = FakeData(blob_images(40, seed=1), split="test", checksum="1" * 64)
    config = TrainConfig(model="hvae", epochs=1, batch_size=16, seed=0,
                         model_options={"width": 4, "latent_channels": 1, "resolutions": "1,3,6"})
    train(config, tmp_path / "r.h5", data=(FakeData(blob_images(64)), test), progress=False)

    features = _block_features
    script = _script("hierarchy_fid")
    monkeypatch.setattr(script, "load_split", lambda *args: test)
    _stand_in_inception(monkeypatch, script)
    result = script.hierarchy_fid(tmp_path / "r.h5", samples=30, seed=2, batch_size=7)
    assert [c["posterior_groups"] for c in result["cuts"]] == [0, 2, 4, 6]  # 0, then each resolution's last group
    assert [c["posterior_through"] for c in result["cuts"]] == [None, "1x1/1", "3x3/1", "6x6/1"]

    model = load_model(runfile.read(tmp_path / "r.h5"), "cpu")
    eps = draw_noise(model, 30, torch.Generator().manual_seed(2))
    x = torch.from_numpy(test.images[:30])
    reference = fid.statistics(features(test.images))
    with torch.no_grad():
        prior = mean_to_uint8(model.likelihood.mean(model.generate(eps)))
        posterior = mean_to_uint8(model.likelihood.mean(model.posterior(model.encode(x), eps).raw))
    assert result["cuts"][0]["fid"] == pytest.approx(fid.frechet(fid.statistics(features(prior)), reference), rel=1e-9)
    assert result["cuts"][-1]["fid"] == pytest.approx(fid.frechet(fid.statistics(features(posterior)), reference),
                                                      rel=1e-9)
    with torch.no_grad():  # a cut between: the first 2 groups (the 1x1 resolution's) from the posteriors
        middle = mean_to_uint8(model.likelihood.mean(model.posterior_then_prior(model.encode(x), eps, 2)))
    assert result["cuts"][1]["fid"] == pytest.approx(fid.frechet(fid.statistics(features(middle)), reference), rel=1e-9)
    assert len({round(c["fid"], 9) for c in result["cuts"]}) == 4  # every cut draws other pictures
    # a cut past the last group, or a model with one latent, is a one-line error
    with pytest.raises(SystemExit, match="^error: --groups: cuts must be 0 to 6"):
        script.main([str(tmp_path / "r.h5"), "--groups", "0,7"])
    with pytest.raises(SystemExit, match="^error: --groups takes whole numbers"):
        script.main([str(tmp_path / "r.h5"), "--groups", "top"])
    for n in ("0", "41"):
        with pytest.raises(SystemExit, match=f"^error: --samples {n}: FID needs 2 to 40 images"):
            script.main([str(tmp_path / "r.h5"), "--samples", n])
    with pytest.raises(SystemExit, match="^error: .*no such run file"):
        script.main([str(tmp_path / "missing.h5")])
    monkeypatch.setattr(script, "load_model", lambda run, device: object())
    with pytest.raises(SystemExit, match="^error: .*no hierarchy of latent groups"):
        script.main([str(tmp_path / "r.h5")])


@pytest.mark.parametrize("model", ["conv", "hvae"])
def test_study_md_holds_the_convergence_tables_of_the_committed_results(model, capsys):
    """docs/study.md's "At convergence" tables are what convergence_table.py makes of the
    committed JSON results, so a result added without its table (or a table edited by
    hand) fails here."""
    root = SCRIPTS.parent
    _script("convergence_table").main(str(root / "docs" / "convergence-study" / model))
    tables = capsys.readouterr().out.strip()
    text = (root / "docs" / "study.md").read_text()
    heading = {"conv": "### Conv, Fashion-MNIST", "hvae": "### Hierarchical VAE (hvae)"}[model]
    section = text[text.index(heading):]
    start = section.index("| decoder | seeds |")  # the first table of this model's subsection
    assert section[start:section.index("\n\n<!-- end of the tables of scripts/convergence_table.py -->")] == tables
