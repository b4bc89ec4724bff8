"""vae sweep: a resumable grid into a directory, then compare and the rate-distortion plot."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from vaecli.cli import main
from vaecli.sweep import grid, run_name

pytest.importorskip("torch")


def test_grid_sweeps_beta_for_the_fixed_gaussian_only():
    g = list(grid(["gaussian", "sigma"], [0.1, 1.0], [0, 1]))
    assert ("gaussian", 0.1, 1) in g and ("sigma", 1.0, 0) in g
    assert len(g) == 2 * 2 + 1 * 2
    assert run_name("gaussian", 0.001, 2) == "gaussian-beta0.001-seed2.h5"
    assert run_name("gaussian", 1.0, 0) == "gaussian-beta1-seed0.h5"
    # betas that print alike with %g get files of their own; a beta given twice is one run
    assert run_name("gaussian", 0.1000001, 0) != run_name("gaussian", 0.1, 0)
    assert list(grid(["gaussian"], [0.1, 0.1000001, 0.1], [0, 0])) == [("gaussian", 0.1, 0),
                                                                      ("gaussian", 0.1000001, 0)]


def test_sweep_then_compare_and_plot(tmp_path):
    data = tmp_path / "d.npz"
    yy, xx = np.mgrid[:8, :8]
    cx, cy = np.random.default_rng(0).uniform(2, 6, (2, 80, 1, 1))
    np.savez(data, images=(255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 3)).round().astype(np.uint8)[:, None])
    out = tmp_path / "sweep"
    args = ["sweep", "--out-dir", str(out), "--dataset", str(data), "--likelihood", "sigma", "--likelihood",
            "gaussian", "--beta", "0.01", "--beta", "1", "--epochs", "1", "--batch-size", "32", "--latent-dim", "2",
            "--device", "cpu"]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert first.stdout.count(": training") == 3
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.stdout.count("done, skipped") == 3  # resumable: nothing retrained
    rows = json.loads(CliRunner().invoke(main, ["compare", str(out), "--format", "json"]).stdout)
    assert sorted((r["likelihood"], r["beta"]) for r in rows) == [("gaussian", 0.01), ("gaussian", 1.0), ("sigma", 1.0)]
    assert all(0 < r["bpd"] < 8 and r["kl"] >= 0 and r["mse"] > 0 for r in rows)
    png = tmp_path / "rd.png"
    result = CliRunner().invoke(main, ["plot", str(out), "--kind", "rate-distortion", "-o", str(png)])
    assert result.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_the_rate_distortion_plot_labels_each_setting_once_at_its_mean():
    from vaecli.plots import rd_labels

    points = [(10.0, 0.01, 100.0, "sigma"), (20.0, 0.04, 120.0, "sigma"), (5.0, 0.1, None, "gaussian b=1")]
    labels = rd_labels(points)
    assert set(labels) == {"sigma", "gaussian b=1"}
    kl, mse, n = labels["sigma"]
    assert (kl, n) == (15.0, 2) and abs(mse - 0.02) < 1e-12  # geometric mean on the log axis
    assert labels["gaussian b=1"] == pytest.approx((5.0, 0.1, 1), rel=1e-12)


def _data(path, seed=0):
    yy, xx = np.mgrid[:8, :8]
    cx, cy = np.random.default_rng(seed).uniform(2, 6, (2, 80, 1, 1))
    np.savez(path, images=(255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 3)).round().astype(np.uint8)[:, None])
    return path


SMALL = ["--likelihood", "sigma", "--epochs", "1", "--batch-size", "32", "--latent-dim", "2", "--device", "cpu",
         "--metric", "elbo", "--metric", "nll", "--iw-samples", "2"]


def test_a_sweep_never_mixes_runs_of_other_settings(tmp_path):
    """Complete runs in the directory are skipped only when made with the same
    settings and data; a new K re-evaluates the NLL; more epochs train on."""
    data, other = _data(tmp_path / "d.npz"), _data(tmp_path / "e.npz", seed=1)
    out = tmp_path / "sweep"
    base = ["sweep", "--out-dir", str(out)]
    assert CliRunner().invoke(main, [*base, "--dataset", str(data), *SMALL]).exit_code == 0
    run = out / "sigma-beta1-seed0.h5"
    for change, message in [(["--batch-size", "16"], "batch_size (run file: 32, now: 16)"),
                            (["--latent-dim", "3"], "latent_dim (run file: 2, now: 3)")]:
        result = CliRunner().invoke(main, [*base, "--dataset", str(data), *SMALL, *change])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, [*base, "--dataset", str(other), *SMALL])
    assert result.exit_code == 1 and "was trained on other data than" in result.output
    result = CliRunner().invoke(main, [*base, "--dataset", str(data), *SMALL, "--iw-samples", "3"])
    assert result.exit_code == 0 and "done, skipped" in result.output
    info = json.loads(CliRunner().invoke(main, ["info", str(run), "--json"]).stdout)
    assert info["evaluations"]["test"]["nll"]["iw_samples"] == 3  # evaluated again with the K asked
    result = CliRunner().invoke(main, [*base, "--dataset", str(data), *SMALL, "--epochs", "2"])
    assert result.exit_code == 0 and ": resuming" in result.output
    assert json.loads(CliRunner().invoke(main, ["info", str(run), "--json"]).stdout)["epochs_done"] == 2
    result = CliRunner().invoke(main, [*base, "--dataset", str(data), *SMALL])  # --epochs 1 again
    assert result.exit_code == 1 and "has 2 epochs, more than --epochs 1" in result.output


def test_sweep_fid_options(tmp_path):
    data = _data(tmp_path / "d.npz")
    result = CliRunner().invoke(main, ["sweep", "--out-dir", str(tmp_path / "s"), "--dataset", str(data), *SMALL,
                                       "--metric", "fid"])
    assert result.exit_code == 2 and "--metric fid needs --fid-samples N" in result.output


def test_a_model_axis_with_shared_options_and_a_time_budget(tmp_path):
    """--model is an axis: each model's runs are named by it; a --model-option goes to the
    models that have it; --time-budget reaches every run's config."""
    data = tmp_path / "d.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (80, 1, 8, 8), dtype=np.uint8))
    out = tmp_path / "sweep"
    args = ["sweep", "--out-dir", str(out), "--dataset", str(data), "--likelihood", "sigma", "--model", "conv",
            "--model", "mlp", "--model", "hvae", "--model-option", "width=4", "--model-option", "blocks=1",
            "--epochs", "1", "--time-budget", "1h", "--batch-size", "32", "--device", "cpu", "--metric", "bpd"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from vaecli import runfile

    runs = {p.name: runfile.read(p) for p in out.glob("*.h5")}
    assert sorted(runs) == ["hvae-sigma-beta1-seed0.h5", "mlp-sigma-beta1-seed0.h5", "sigma-beta1-seed0.h5"]
    assert runs["sigma-beta1-seed0.h5"].config.model_options["width"] == 4
    assert runs["hvae-sigma-beta1-seed0.h5"].config.model_options["blocks"] == 1
    assert runs["hvae-sigma-beta1-seed0.h5"].config.model_options["width"] == 4
    assert all(r.config.time_budget == 3600.0 and "bpd" in r.evaluations["test"] for r in runs.values())
    compared = CliRunner().invoke(main, ["compare", str(out), "--format", "json"])
    assert sorted(row["model"] for row in json.loads(compared.stdout)) == ["conv", "hvae", "mlp"]
    nobody = CliRunner().invoke(main, args[:-2] + ["--model-option", "frob=1"])
    assert nobody.exit_code == 2 and "no model of conv, mlp, hvae has the option 'frob'" in nobody.output
