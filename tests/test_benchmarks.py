"""The hand-run benchmarks that price the step and the kernels without a GPU still run,
and what they count holds: the step's own bookkeeping stays a few kernels."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from vaecli.training.step import EpochSums, NonFiniteGuard  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
ROOT = BENCHMARKS.parent


def _benchmark(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ops():
    """benchmarks/step_ops.py's counter: operations that are not views (each a kernel on CUDA)."""
    return _benchmark("step_ops")._counter()


def test_the_epoch_sums_and_the_guard_take_a_few_kernels_a_step():
    """Inside a captured graph each kernel costs a launch gap, so the per-step
    bookkeeping is a handful of kernels, not one or more per sum."""
    sums, guard = EpochSums("cpu"), NonFiniteGuard(3, "cpu")
    b = 16
    log_px, kl, terms = torch.randn(b), torch.rand(b), torch.randn(b)
    sse = torch.tensor(2.5, dtype=torch.float64)
    ok = torch.tensor(True)
    sums.add(ok, log_px, kl, terms, sse, b)  # the batch size's coefficients are made once
    with _ops() as ops:
        sums.add(ok, log_px, kl, terms, sse, b)
    assert sum(ops.ops.values()) <= 6, ops.ops
    with _ops() as ops:
        guard.update(ok)
    assert sum(ops.ops.values()) <= 7, ops.ops
    # and they still sum what they should, skipping a bad step
    sums.add(torch.tensor(False), log_px * float("nan"), kl, terms, None, b)
    assert float(sums.rec) == pytest.approx(2 * float(log_px.double().sum()))
    assert float(sums.loss) == pytest.approx(-2 * float(terms.double().sum()))
    assert float(sums.sse) == 5.0 and int(sums.images) == 2 * b and int(sums.skipped) == 1


def test_step_ops_counts_each_phase_of_the_step():
    result = _benchmark("step_ops").count("sigma", 8)
    step = result["step"]
    assert step["forward"] > 10 and step["backward"] > 10 and 0 < step["bookkeeping"] <= 35
    assert result["likelihood+KL"]["forward"] > 0
    assert any(k.startswith("backward/convolution_backward") for k in result["ops"])


def test_step_profile_times_the_step_on_the_cpu(tmp_path, capsys):
    import json

    out = tmp_path / "p.json"
    _benchmark("step_profile").main(["--device", "cpu", "--batch", "8", "--steps", "2", "--warmup", "4",
                                     "--memory-format", "contiguous", "--memory-format", "channels_last",
                                     "--profile", "--top", "3", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["memory_format"] for r in rows] == ["contiguous", "channels_last"]
    assert all(r["ms_per_step"] > 0 and r["graph"] == "off" and len(r["top"]) == 3 for r in rows)
    assert "| 8 | float32 | channels_last |" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("git") is None, reason="needs g++ and git")
def test_kernel_arithmetic_prices_the_kernels_of_two_revisions(tmp_path):
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    bench = _benchmark("kernel_arithmetic")
    from vaecli.backends.cupy_backend import host

    baseline = bench.kernels_at("HEAD")
    assert "logistic_mixture_components" in baseline.SOURCE
    launch = host.launcher(tmp_path, source=baseline.SOURCE, threads=1, optimize="-O2", tag="base")
    times = bench.host_times(baseline, launch, "logistic-mixture", 1, 4, 1)
    assert set(times) == {"value", "recompute", "defer"} and all(t > 0 for t in times.values())


def test_precision_study_judges_the_interval_against_half_a_percent():
    bench = _benchmark("precision_study")
    summary = bench.paired_summary
    within = summary([0.10, 0.20, 0.15, 0.12, 0.18])
    assert within["verdict"] == "within ±0.5%" and within["ci95"][0] < 0.15 < within["ci95"][1]
    # Student's t with n - 1 = 4 degrees of freedom: 2.776 standard errors each side
    assert within["ci95"][1] - within["mean"] == pytest.approx(2.7764451 * within["sd"] / 5**0.5)
    assert summary([2.0, 2.1, 1.9])["verdict"] == "outside ±0.5%"
    assert summary([-1.6, -1.5, -1.7])["verdict"] == "outside ±0.5%"
    wide = summary([0.4, -0.9, 1.2, -0.2])
    assert wide["verdict"].startswith("not resolved (about ") and wide["verdict"].endswith("within ±0.5%)")
    # the pairs it asks for make the t half-width smaller than what the mean leaves of 0.5%,
    # and one pair fewer would not
    needed = int(wide["verdict"].split("about ")[1].split()[0])

    def half(m):
        return bench.t_quantile(m - 1) * wide["sd"] / m**0.5

    assert half(needed) < 0.5 - abs(wide["mean"]) <= half(needed - 1)
    # never fewer than ran already when the interval is still too wide
    assert int(summary([0.0, 0.4, 0.2])["verdict"].split("about ")[1].split()[0]) > 3
    # a mean beyond 0.5% with a wide interval: the pairs that would show it outside
    beyond = summary([0.9, 0.3, 1.4])
    assert beyond["verdict"].endswith("would show it outside ±0.5%)")
    assert summary([0.3])["verdict"].startswith("not resolved (one pair")
    assert wide["stderr"] == pytest.approx(wide["sd"] / 2)


def _tiny_mnist5k():
    """96 training and 40 test images of mnist5k: a study's few steps in seconds."""
    import dataclasses

    from vaecli import datasets

    train_set, test_set = datasets.load("mnist5k", "train"), datasets.load("mnist5k", "test")
    return (dataclasses.replace(train_set, images=train_set.images[:96], labels=None),
            dataclasses.replace(test_set, images=test_set.images[:40], labels=None))


def test_precision_study_trains_both_precisions_per_seed_and_stops_at_its_time_limit(tmp_path):
    import json

    bench = _benchmark("precision_study")
    data = _tiny_mnist5k()
    lines = []
    report = bench.study(torch.device("cpu"), [0, 1, 2], 1, 32, 1, time_limit=0.0,
                         json_path=tmp_path / "p.json", say=lines.append, data=data)
    assert len(report["rows"]) == 1 and report["stopped"].startswith("time limit 0 s: 1 pairs of 3")
    row = report["rows"][0]
    f32, bf16 = row["float32"], row["bf16"]
    assert f32["test_elbo"] != bf16["test_elbo"]  # bf16 autocast did change the training
    assert row["bpd_difference_percent"] == pytest.approx(100 * (bf16["bpd"] - f32["bpd"]) / f32["bpd"])
    assert row["difference_percent"] == pytest.approx(100 * (bf16["test_elbo"] - f32["test_elbo"])
                                                      / abs(f32["test_elbo"]))
    assert 0 < f32["bpd"] < 8 and 0 < bf16["bpd"] < 8
    assert json.loads((tmp_path / "p.json").read_text())["rows"][0]["seed"] == 0
    assert any(line.startswith("| 0 |") for line in lines) and lines[-1].startswith("stopped: time limit")


def test_precision_study_pairs_float32_with_a_change_of_rounding_alone():
    """float32 against channels-last float32: the same seed's training, rounded otherwise.
    The runs differ, but by rounding: far less than bf16 moves them."""
    bench = _benchmark("precision_study")
    data = _tiny_mnist5k()
    lines = []
    report = bench.study(torch.device("cpu"), [0], 1, 32, 1, say=lines.append, data=data,
                         pair=("float32", "channels_last"))
    assert report["pair"] == ["float32", "channels_last"] and lines[0].startswith("channels_last against float32")
    row = report["rows"][0]
    assert row["float32"]["test_elbo"] != row["channels_last"]["test_elbo"]
    assert abs(row["difference_percent"]) < 1e-3
    assert any(line.startswith("channels_last − float32, evaluated ELBO: 1 pair") for line in lines)
