"""vaecli.runs: one evaluation path for vae eval, vae sweep and the API, and old run files."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from vaecli import runfile  # noqa: E402
from vaecli.cli import main  # noqa: E402

SCHEMA1 = Path(__file__).parent / "data" / "schema1_sigma.h5"
PROVENANCE = ("data", "data_checksum", "data_levels", "seed", "batch_size", "elbo_samples")


def test_a_schema_1_run_file_evaluates_to_the_numbers_stored_with_it(tmp_path):
    """tests/data/schema1_sigma.h5 was written by vaecli before the model registry
    (schema 1: latent_dim and width at the config's top level), then evaluated by that
    vaecli (`vae eval --metric elbo bpd kl mse active-units nll --iw-samples 5`); the
    stored numbers are the old code's."""
    old = runfile.read(SCHEMA1)
    assert old.attrs["schema_version"] == 1
    assert (old.config.model, old.config.model_options) == ("conv", {"latent_dim": 2, "width": 2})
    stored = old.evaluations["test"]
    copy = tmp_path / "old.h5"
    copy.write_bytes(SCHEMA1.read_bytes())
    result = CliRunner().invoke(main, ["eval", str(copy), "--metric", "elbo", "--metric", "bpd", "--metric", "kl",
                                       "--metric", "mse", "--metric", "active-units", "--metric", "nll",
                                       "--iw-samples", "5", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    now = json.loads(result.stdout)["results"]
    for metric in ("elbo", "bpd", "kl", "mse", "active-units", "nll"):
        assert now[metric]["value"] == pytest.approx(stored[metric]["value"], rel=1e-6, abs=1e-9), metric
    assert now["nll"]["bpd"] == pytest.approx(stored["nll"]["bpd"], rel=1e-6)
    info = CliRunner().invoke(main, ["info", str(copy)])
    assert info.exit_code == 0 and "model        conv (latent_dim 2, width 2)" in info.output


def test_sweep_and_eval_store_the_same_provenance(tmp_path):
    from fakes import blob_images
    import numpy as np

    data = tmp_path / "d.npz"
    np.savez(data, images=blob_images(80, size=8))
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", "--out-dir", str(out), "--dataset", str(data), "--likelihood",
                                       "sigma", "--epochs", "1", "--batch-size", "32", "--latent-dim", "2",
                                       "--width", "2", "--device", "cpu", "--metric", "elbo", "--metric", "kl"])
    assert result.exit_code == 0, result.output
    run_path = out / "sigma-beta1-seed0.h5"
    swept = runfile.read(run_path).evaluations["test"]
    result = CliRunner().invoke(main, ["eval", str(run_path), "--metric", "elbo", "--metric", "kl",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    evaluated = runfile.read(run_path).evaluations["test"]
    for metric in ("elbo", "kl"):
        for key in PROVENANCE:
            assert key in swept[metric], (metric, key)
            assert swept[metric][key] == evaluated[metric][key], (metric, key)
        # the same defaults (seed 0, batch 256, one sample): the same number
        assert swept[metric]["value"] == evaluated[metric]["value"]
