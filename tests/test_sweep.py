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
