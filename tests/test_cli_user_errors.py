"""Users' mistakes through the CLI: nothing they type may destroy a run, end in a
traceback, or print JSON that a strict parser refuses."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from vaecli import runfile
from vaecli.cli import main
from fakes import write_blobs
from vaecli.cli.common import jsonable

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_blobs(tmp_path_factory.mktemp("data"), 120, seed=1)


SMALL = ["--epochs", "2", "--batch-size", "32", "--latent-dim", "4", "--width", "4", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_file):
    """A complete two-epoch run with a stored evaluation and stored samples."""
    out = tmp_path_factory.mktemp("runs") / "run.h5"
    assert _invoke(["train", "--data", str(data_file), *SMALL, "--out", str(out)]).exit_code == 0
    assert _invoke(["eval", str(out), "--metric", "elbo"]).exit_code == 0
    assert _invoke(["sample", str(out), "-n", "4", "--format", "run"]).exit_code == 0
    return out


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.output.strip()


@pytest.mark.parametrize("command", [
    ["sample", "RUN", "-o", "RUN"], ["sample", "RUN", "-o", "RUN", "--format", "npz"],
    ["reconstruct", "RUN", "-o", "RUN", "-n", "2"], ["plot", "RUN", "-o", "RUN.png"],
])
def test_an_output_that_is_the_run_file_is_refused_and_the_run_kept(finished, tmp_path, command):
    run = tmp_path / ("run.png" if "RUN.png" in command else "run.h5")  # plot: a run file named .png
    shutil.copy(finished, run)
    before = _digest(run)
    message = _one_line_error(_invoke([run if a in ("RUN", "RUN.png") else a for a in command]))
    assert f"-o {run} is the run file {run}: writing it would replace the run" in message
    assert _digest(run) == before


def test_resuming_a_complete_run_trains_nothing_and_keeps_the_file(finished, tmp_path):
    run = tmp_path / "run.h5"
    shutil.copy(finished, run)
    before = _digest(run)
    result = _invoke(["train", "--out", run, "--resume"])
    assert result.exit_code == 0, result.output
    assert "already complete (2/2 epochs); nothing to train (--epochs 3 or more trains on)" in result.output
    assert "wrote" not in result.output
    assert _digest(run) == before  # evaluations and samples included
    stored = runfile.read(run)
    assert "elbo" in stored.evaluations["test"] and stored.samples
    message = _one_line_error(_invoke(["train", "--out", run, "--resume", "--epochs", "1"]))
    assert "has 2 epochs done; --epochs 1 cannot resume it (give --epochs 2 or more)" in message
    assert _digest(run) == before


def test_resume_keeps_the_runs_options_and_changes_only_those_given(finished, tmp_path, data_file, monkeypatch):
    run = tmp_path / "run.h5"
    shutil.copy(finished, run)
    # --data (the same file, by a relative path) and --seed (the run's own) are no change:
    # the batch size, latent size and width stay the run's, not the command line's defaults
    monkeypatch.chdir(data_file.parent)
    result = _invoke(["train", "--out", run, "--resume", "--data", data_file.name, "--seed", "0",
                      "--epochs", "3", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert (config["batch_size"], config["model_options"]) == (32, {"latent_dim": 4, "width": 4})
    assert config["dataset"] == str(data_file)  # stored absolutely
    message = _one_line_error(_invoke(["train", "--out", run, "--resume", "--lr", "0.1", "--epochs", "4"]))
    assert message == ("Error: cannot resume with different options: lr (run file: 0.001, now: 0.1)")


def test_a_data_file_is_stored_by_its_absolute_path(data_file, tmp_path, monkeypatch):
    monkeypatch.chdir(data_file.parent)
    run = tmp_path / "rel.h5"
    assert _invoke(["train", "--data", data_file.name, *SMALL[:-3], "--quiet", "--epochs", "1",
                    "--out", run]).exit_code == 0
    monkeypatch.chdir(tmp_path)  # elsewhere: the run still finds its data
    result = _invoke(["eval", run, "--metric", "kl", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["kl"]["data"].startswith("blobs")


def test_a_missing_data_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _one_line_error(_invoke(["train", "--dataset", "gone.npy", "--out", tmp_path / "r.h5"]))
    assert f"no such file or folder (from {tmp_path})" in message


def test_npz_samples_go_exactly_to_o_and_atomically(finished, tmp_path):
    out = tmp_path / "arrays"  # no extension: numpy alone would write arrays.npz
    result = _invoke(["sample", finished, "-n", "3", "--format", "npz", "-o", out])
    assert result.exit_code == 0 and result.output.strip() == f"wrote 3 samples to {out}"
    assert np.load(out)["images"].shape == (3, 1, 12, 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays"]  # no temporary left


def test_samples_are_decoded_in_batches_with_the_same_draws(finished, tmp_path, monkeypatch):
    import vaecli.cli.pictures as cli

    whole = tmp_path / "whole.npz"
    assert _invoke(["sample", finished, "-n", "7", "-o", whole]).exit_code == 0
    monkeypatch.setattr(cli, "SAMPLE_BATCH", 3)
    batched = tmp_path / "batched.npz"
    assert _invoke(["sample", finished, "-n", "7", "-o", batched]).exit_code == 0
    np.testing.assert_array_equal(np.load(batched)["images"], np.load(whole)["images"])


@pytest.mark.parametrize("command", [
    ["sample", "RUN", "-o", "MISSING/x.npz", "--format", "npz"], ["sample", "RUN", "-o", "MISSING/x.h5"],
    ["reconstruct", "RUN", "-o", "MISSING/r.png", "-n", "2"],
])
def test_an_unwritable_output_is_one_line_before_the_work(finished, tmp_path, command):
    missing = tmp_path / "no-such-dir"
    message = _one_line_error(_invoke([str(a).replace("RUN", str(finished)).replace("MISSING", str(missing))
                                       for a in command]))
    assert message.startswith(f"Error: cannot write {missing}/") and "does not exist" in message


def test_a_failed_temporary_file_is_a_vae_error(tmp_path, monkeypatch):
    import tempfile

    from vaecli import VaeError

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(VaeError, match="cannot write .*x.h5: Operation not permitted"):
        with runfile.atomic_h5(tmp_path / "x.h5"):
            pass
    with pytest.raises(VaeError, match="cannot write .*x.h5: Operation not permitted"):
        runfile.check_writable(tmp_path / "x.h5")
    with pytest.raises(VaeError, match="cannot write .*x.png: Operation not permitted"):
        runfile.atomic_write_bytes(tmp_path / "x.png", b"data")


@pytest.mark.parametrize("command", [["eval", "RUN", "--device", "gpu"], ["sample", "RUN", "--device", "bogus"],
                                     ["calibrate", "RUN", "--device", "cuda:x"],
                                     ["reconstruct", "RUN", "--device", "cpu:1"]])
def test_a_bad_device_is_one_line_everywhere(finished, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default outputs, should a command run on
    message = _one_line_error(_invoke([finished if a == "RUN" else a for a in command]))
    assert "--device must be auto, cpu, cuda or cuda:N, got" in message


def test_reconstruct_refuses_more_images_than_the_split_holds(finished, tmp_path):
    message = _one_line_error(_invoke(["reconstruct", finished, "-o", tmp_path / "r.png", "-n", "16",
                                       "--rows", "100"]))
    assert message.startswith("Error: 1600 images asked for (-n x --rows), but the test split has ")


@pytest.mark.parametrize("args", [
    ["sample", "RUN", "--temperature", "nan"], ["sample", "RUN", "--temperature", "inf"],
    ["train", "--lr", "inf"], ["train", "--beta", "nan"], ["train", "--log-sigma-min", "nan"],
    ["train", "--log-sigma-min", "-inf"],
])
def test_non_finite_numbers_are_usage_errors(finished, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default outputs, should a command run on
    result = _invoke([finished if a == "RUN" else a for a in args])
    assert result.exit_code == 2, result.output
    assert "finite" in result.output


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_has_no_nan(data_file, tmp_path):
    run = tmp_path / "bern.h5"
    result = _invoke(["train", "--data", data_file, "--likelihood", "bernoulli", "--binarize", *SMALL[:-3],
                      "--epochs", "1", "--quiet", "--json", "--out", run])
    assert result.exit_code == 0, result.output
    summary = _strict_json(result.stdout)
    assert summary["last_epoch"]["sigma"] is None  # no decoder sigma: null, not NaN
    _strict_json(_invoke(["info", run, "--json"]).stdout)
    _strict_json(_invoke(["compare", run, "--format", "json"]).stdout)


def test_jsonable():
    assert jsonable({"a": float("nan"), "b": [np.float32(1.5), float("-inf")], "c": np.arange(2), 3: "x"}) == {
        "a": None, "b": [1.5, None], "c": [0, 1], "3": "x"}


def test_eval_says_which_levels_its_bits_per_dim_are_of(data_file, tmp_path):
    run = tmp_path / "four.h5"
    assert _invoke(["train", "--data", data_file, "--n-bits", "4", *SMALL[:-3], "--epochs", "1", "--quiet",
                    "--out", run]).exit_code == 0
    result = _invoke(["eval", run, "--metric", "bpd", "--no-store"])
    assert result.exit_code == 0, result.output
    assert "16 levels: bits/dim of that data, not of the 8-bit images" in result.stdout.splitlines()[0]
    stored = _invoke(["eval", run, "--metric", "bpd", "--json"])
    assert json.loads(stored.stdout)["results"]["bpd"]["data_levels"] == 16


def test_an_objective_that_is_no_elbo_is_not_called_one(data_file, tmp_path):
    result = _invoke(["train", "--data", data_file, "--likelihood", "bernoulli", *SMALL[:-3], "--epochs", "1",
                      "--out", tmp_path / "b.h5"])
    assert result.exit_code == 0, result.output
    assert "ELBO" not in result.output.replace("not an ELBO", "")
    assert result.stdout.splitlines()[-2].endswith(
        "nats/image (not an ELBO: bernoulli on non-binary data is a cross-entropy, not a likelihood "
        "(train with --binarize))")


def test_compare_formats(finished, data_file, tmp_path):
    """CSV with one kind of line end, a | in a path escaped in markdown, a missing sigma
    empty (null in JSON), the status shown, and a split no run has said so."""
    weird = tmp_path / "we|ird"
    weird.mkdir()
    shutil.copy(finished, weird / "run.h5")
    bern = tmp_path / "bern.h5"
    assert _invoke(["train", "--data", data_file, "--likelihood", "bernoulli", *SMALL[:-3], "--epochs", "1",
                    "--quiet", "--out", bern]).exit_code == 0
    csv_out = _invoke(["compare", weird, bern, "--format", "csv"]).stdout
    assert "\r" not in csv_out and csv_out.splitlines()[0].startswith("run,status,model,likelihood")
    table = _invoke(["compare", weird, bern]).stdout.splitlines()
    assert len({line.count("|") - line.count("\\|") for line in table}) == 1  # as many columns on every line
    assert "we\\|ird" in table[2]
    bern_row = next(line for line in table if "bern.h5" in line)
    cells = [c.strip() for c in bern_row.strip("|").split(" | ")]
    header = [c.strip() for c in table[0].strip("|").split(" | ")]
    assert cells[header.index("status")] == "complete" and cells[header.index("sigma")] == ""
    assert cells[header.index("test_elbo")] == "n/a"  # bernoulli on 8-bit data: no ELBO
    rows = _strict_json(_invoke(["compare", bern, "--format", "json"]).stdout)
    assert rows[0]["sigma"] is None
    result = _invoke(["compare", bern, "--split", "tset"])
    assert "none of these runs has evaluations of the split 'tset'" in result.output


def test_plots_are_png_by_name(finished, tmp_path):
    result = _invoke(["plot", finished, "-o", tmp_path / "rd.svg"])
    assert result.exit_code == 2 and "plots are written as PNG; give a name ending in .png" in result.output
    assert not (tmp_path / "rd.svg").exists()


def test_eval_records_what_its_noise_depends_on_and_takes_any_seed(finished, tmp_path):
    result = _invoke(["eval", finished, "--metric", "elbo", "--seed", str(2**62), "--batch-size", "17",
                      "--elbo-samples", "2", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)["results"]["elbo"]
    assert (r["seed"], r["batch_size"], r["elbo_samples"]) == (2**62, 17, 2)
    stored = runfile.read(finished).evaluations["test"]["elbo"]
    assert int(stored["seed"]) == 2**62 and int(stored["batch_size"]) == 17
    assert _invoke(["eval", finished, "--seed", "-1"]).exit_code == 2
    assert _invoke(["eval", finished, "--seed", str(2**63)]).exit_code == 2


def test_a_sigma_stored_with_a_decoder_that_takes_none_still_loads(finished, tmp_path):
    """Older vaecli stored --sigma with any decoder and ignored it; such run files still
    load and evaluate; vae train now refuses the option there."""
    import h5py

    from vaecli.config import TrainConfig

    result = _invoke(["train", "--likelihood", "gaussian-pixel", "--sigma", "0.5", "--out", tmp_path / "x.h5"])
    assert result.exit_code == 2 and "--sigma is for gaussian" in result.output
    run = tmp_path / "old.h5"
    assert _invoke(["train", "--data", runfile.read(finished).config.dataset, "--likelihood", "gaussian-pixel",
                    *SMALL[:-3], "--epochs", "1", "--quiet", "--out", run]).exit_code == 0
    config = runfile.read(run).config.replace(sigma=0.5)  # as the older vaecli wrote it
    with h5py.File(run, "r+") as f:
        f.attrs["config"] = config.to_json()
    runfile.seal(run)
    assert isinstance(runfile.read(run).config, TrainConfig) and runfile.read(run).config.sigma == 0.5
    result = _invoke(["eval", run, "--metric", "bpd", "--no-store"])
    assert result.exit_code == 0, result.output
