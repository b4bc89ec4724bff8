"""The main job end to end through the CLI: train, info, eval, sample, reconstruct,
plot, compare, on a small data file written by the test."""

import json
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from vaecli.cli import main
from fakes import write_blobs

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_blobs(tmp_path_factory.mktemp("data"), 160, seed=0)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("runs") / "run.h5"
    result = CliRunner().invoke(
        main,
        ["train", "--data", str(data_file), "--epochs", "2", "--batch-size", "32", "--latent-dim", "4",
         "--width", "4", "--out", str(out), "--quiet", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "complete" and summary["epochs_done"] == 2
    assert summary["calibration"]["eval_sigma"] > 0
    return out


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("command", ["train", "eval", "sample", "reconstruct", "info", "plot", "compare"])
def test_help(command):
    result = _invoke([command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_info_shows_the_run(run_file):
    result = _invoke(["info", str(run_file)])
    assert result.exit_code == 0
    assert "likelihood   sigma" in result.stdout and "eval sigma" in result.stdout
    data = json.loads(_invoke(["info", str(run_file), "--json"]).stdout)
    assert data["attrs"]["schema_version"] == 2 and len(data["attrs"]["dataset_checksum"]) == 64
    assert "torch" in data["attrs"]["library_versions"]


def test_eval_prints_stores_and_flags(run_file, tmp_path):
    result = _invoke(["eval", str(run_file), "--metric", "elbo", "--metric", "bpd", "--metric", "nll",
                      "--metric", "kl", "--metric", "mse", "--metric", "active-units", "--iw-samples", "4", "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)["results"]
    assert res["bpd"]["unit"] == "bits/dim" and 0 < res["bpd"]["value"] < 8
    assert res["nll"]["iw_samples"] == 4 and res["nll"]["bpd"] <= res["bpd"]["value"] + 0.05
    assert res["elbo"]["equivalent_beta"] == pytest.approx(2 * res["elbo"]["decoder_sigma"] ** 2)
    info = json.loads(_invoke(["info", str(run_file), "--json"]).stdout)
    assert info["evaluations"]["test"]["bpd"]["value"] == pytest.approx(res["bpd"]["value"])


def test_sample_writes_a_real_png(run_file, tmp_path):
    out = tmp_path / "s.png"
    result = _invoke(["sample", str(run_file), "-n", "9", "-o", str(out), "--temperature", "0.8"])
    assert result.exit_code == 0, result.output
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == ((3 * 14 + 2) * 2, (3 * 14 + 2) * 2)  # 3x3 grid of 12px tiles, pad 2, x2
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == height * (width + 1)


def test_sample_npz_and_into_run_file(run_file, tmp_path):
    out = tmp_path / "s.npz"
    assert _invoke(["sample", str(run_file), "-n", "5", "-o", str(out)]).exit_code == 0
    assert np.load(out)["images"].shape == (5, 1, 12, 12)
    result = _invoke(["sample", str(run_file), "-n", "5", "--format", "run", "--seed", "3"])
    assert result.exit_code == 0
    info = json.loads(_invoke(["info", str(run_file), "--json"]).stdout)
    assert info["samples"]["prior_mean_t1_s3"] == [5, 1, 12, 12]


def test_reconstruct_plot_compare(run_file, tmp_path):
    assert _invoke(["reconstruct", str(run_file), "-o", str(tmp_path / "r.png"), "-n", "4"]).exit_code == 0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert _invoke(["plot", str(run_file), "-o", str(tmp_path / "c.png")]).exit_code == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    table = _invoke(["compare", str(run_file), str(run_file), "--format", "markdown"]).stdout.splitlines()
    assert table[0].startswith("| run | status | model | likelihood") and len(table) == 4
    rows = json.loads(_invoke(["compare", str(run_file), "--format", "json"]).stdout)
    assert rows[0]["likelihood"] == "sigma"
    csv = _invoke(["compare", str(run_file), "--format", "csv"]).stdout.splitlines()
    assert csv[0].startswith("run,status,model,likelihood")


def test_resume_more_epochs(run_file, tmp_path, data_file):
    import shutil

    copy = tmp_path / "more.h5"
    shutil.copy(run_file, copy)
    result = _invoke(["train", "--out", str(copy), "--resume", "--epochs", "3", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs_done"] == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--likelihood", "nope"], "'nope' is not one of"),
        (["eval", "missing.h5"], "does not exist"),
        (["train", "--data", "DATA", "--beta", "-1"], "-1"),
        (["train", "--data", "DATA", "--out", "/nonexistent/dir/run.h5", "--epochs", "1"], "does not exist"),
        (["train", "--data", "DATA", "--likelihood", "categorical", "--binarize"], "--binarize is for the bernoulli"),
    ],
)
def test_mistakes_are_one_line_and_nonzero(args, message, data_file):
    args = [str(data_file) if a == "DATA" else a for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_not_a_run_file(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("hello")
    result = CliRunner().invoke(main, ["info", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad} is not an HDF5 file (not a vaecli run file)"


def test_memory_format_is_stored_shown_and_kept_on_resume(tmp_path, data_file):
    out = tmp_path / "nhwc.h5"
    result = _invoke(["train", "--data", str(data_file), "--epochs", "1", "--batch-size", "32", "--latent-dim", "4",
                      "--width", "4", "--memory-format", "channels_last", "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["memory_format"] == "channels_last"
    assert "memory channels_last" in _invoke(["info", str(out)]).stdout
    result = _invoke(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_done"] == 2 and summary["config"]["memory_format"] == "channels_last"
