"""The vae command line: help everywhere, verify's table, JSON, exit codes."""

import json

import pytest
from click.testing import CliRunner

from vaecli.cli import main

COMMANDS = [[], ["verify"], ["likelihoods"]]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "vae")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(args, flag):
    result = CliRunner().invoke(main, args + [flag], catch_exceptions=False)
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_verify_table_passes_and_reports_errors():
    pytest.importorskip("torch")
    result = CliRunner().invoke(
        main,
        ["verify", "--likelihood", "logistic", "--likelihood", "sigma", "--seed", "5", "--channels", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("seed 5")
    rows = [line for line in lines if line.startswith(("logistic ", "sigma "))]
    # logistic: log_prob; sigma: log_prob and log_pmf; each in two dtypes
    assert len(rows) == 6 and all(row.endswith("pass") for row in rows)
    assert lines[-1] == "6 passed, 0 failed"


def test_verify_json():
    pytest.importorskip("torch")
    result = CliRunner().invoke(
        main,
        ["verify", "--likelihood", "bitwise", "--dtype", "float64", "--seed", "1", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["seed"] == 1 and data["failed"] == 0 and data["passed"] == 2
    assert {r["channels"] for r in data["results"]} == {1, 3}
    assert all(r["value_max_rel"] < 1e-12 for r in data["results"])


def test_verify_fails_with_nonzero_exit(monkeypatch):
    pytest.importorskip("torch")
    from vaecli import verify

    monkeypatch.setitem(verify.TOLERANCES, "float64", {k: 0.0 for k in verify.TOLERANCES["float64"]})
    result = CliRunner().invoke(
        main, ["verify", "--likelihood", "logistic-mixture", "--dtype", "float64", "--seed", "2"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and not result.stdout.splitlines()[-1].endswith(" 0 failed")


def test_verify_cupy_without_gpu_exits_zero_with_nothing_passed():
    from vaecli.backends import get_backend

    if get_backend("cupy").available()[0]:
        pytest.skip("a CUDA device is present")
    result = CliRunner().invoke(main, ["verify", "--backend", "cupy", "--seed", "0"], catch_exceptions=False)
    assert result.exit_code == 0
    # no device, or no cupy at all: either way it says so and marks nothing passed
    assert ("cupy: not verified: no CUDA device is available" in result.stdout
            or "cupy: not verified: cupy is not installed" in result.stdout)
    assert result.stdout.splitlines()[-1] == "0 passed, 0 failed"


def test_verify_torch_cuda_without_gpu_is_reported():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = CliRunner().invoke(main, ["verify", "--device", "cuda", "--seed", "0"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "torch: not verified: no CUDA device is available" in result.output


def test_unknown_likelihood_is_a_usage_error():
    result = CliRunner().invoke(main, ["verify", "--likelihood", "gauss"])
    assert result.exit_code == 2
    assert "'gauss' is not one of" in result.output


def test_likelihoods_json_lists_all_eleven():
    result = CliRunner().invoke(main, ["likelihoods", "--json", "--channels", "3"], catch_exceptions=False)
    rows = json.loads(result.output)
    assert len(rows) == 11
    by_name = {r["name"]: r for r in rows}
    assert by_name["logistic-mixture"]["out_channels"] == 100
    assert by_name["categorical"]["out_channels"] == 768
