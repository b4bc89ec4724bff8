"""scripts/gpu_targets.py turns one GPU check's JSON into issue 8's verdict table."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_targets", ROOT / "scripts" / "gpu_targets.py")
gpu_targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_targets)


def _row(table: str, start: str) -> list:
    hits = [line for line in table.splitlines() if line.startswith(f"| {start}")]
    assert len(hits) == 1, (start, table)
    return [cell.strip() for cell in hits[0].strip("|").split("|")]


def _throughput(rows):
    return {"rows": [{"batch": b, "variant": v, "ratio": sum(ours) / sum(base),
                      "baseline_images_per_s": base, "vaecli_images_per_s": ours,
                      "baseline_test_elbo": be, "vaecli_test_elbo": ve} for b, v, base, ours, be, ve in rows]}


def test_the_h200_calls_measured_numbers_give_the_verdicts_the_docs_state(tmp_path):
    """The mixture row of the H200's call 3 (docs/gpu/issue8) is 8.6x its floor, 15.4x eager."""
    shutil.copy(ROOT / "docs" / "gpu" / "issue8" / "call3_bench.json", tmp_path / "bench.json")
    (tmp_path / "gpu.txt").write_text("NVIDIA H200, 580.159.04, 143771 MiB\n")
    table = gpu_targets.targets_table(tmp_path)
    assert table.splitlines()[0] == "issue 8 targets, NVIDIA H200, 580.159.04, 143771 MiB"
    floor = _row(table, "mixture forward+backward ≤ 3×")
    assert floor[1].startswith("8.6× (cupy fused + CUDA graph: 0.219 ms") and floor[2] == "no"
    eager = _row(table, "mixture forward+backward ≥ 10×")
    assert eager[1].startswith("15.4×") and eager[2] == "yes"
    # the benchmarks that did not run are said so, not passed over
    assert _row(table, "training ≥ 5×")[1:] == ["not measured", "n/a"]
    assert _row(table, "bf16 within")[1:] == ["not measured", "n/a"]


def test_training_ratios_and_the_elbo_check_over_seeds(tmp_path):
    (tmp_path / "train_throughput.json").write_text(json.dumps(_throughput([
        (128, "float32", [20000, 21000], [100000, 106000], [530.0, 536.0], [533.0, 539.0]),
        (128, "bf16", [20000, 21000], [120000, 118000], [530.0, 536.0], [520.0, 521.0]),
        (1024, "float32", [77000, 77000], [200000, 202000], [550.0, 552.0], [560.0, 561.0]),
    ])))
    table = gpu_targets.targets_table(tmp_path)
    b128 = _row(table, "training ≥ 5× the plain loop, batch 128")
    assert b128[1].startswith("5.02× (103,000 against 20,500 images/s)") and b128[2] == "yes"
    assert _row(table, "training ≥ 3× the plain loop, batch 1024")[2] == "no"  # 2.61x
    assert _row(table, "for reference: bf16, batch 128")[1:] == ["5.80×", "yes"]
    # batch 128: +3.0 apart; se = sqrt(18/2 + 18/2) = 4.243 on Welch's 2 degrees of freedom,
    # t = 4.303: half-width 18.25, within; batch 1024: +9.5, se sqrt(1 + 0.25) on 1.47
    # degrees of freedom: half-width 6.92, outside
    within = _row(table, "test ELBO within seed noise of the plain loop's, batch 128")
    assert within[2] == "yes" and "difference +3.00, 95% half-width 18.25" in within[1]
    outside = _row(table, "test ELBO within seed noise of the plain loop's, batch 1024")
    assert outside[2] == "no" and "difference +9.50, 95% half-width 6.92" in outside[1]


def test_one_seed_has_no_noise_to_judge_by_and_the_policy_row_is_the_one_vae_train_runs(tmp_path):
    (tmp_path / "train_throughput.json").write_text(json.dumps(_throughput([
        (128, "float32", [20000], [90000], [530.0], [533.0])])))
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [
        {"likelihood": "logistic-mixture", "variant": "torch eager", "ms": 3.0, "floor_ms": 0.025},
        {"likelihood": "logistic-mixture", "variant": "cupy fused + CUDA graph (keep)", "ms": 0.06, "floor_ms": 0.025},
        {"likelihood": "logistic-mixture", "variant": "cupy fused + CUDA graph (defer, default)", "ms": 0.09,
         "floor_ms": 0.025},
        {"likelihood": "categorical", "variant": "torch eager", "ms": 1.0, "floor_ms": 0.2},
    ]}))
    table = gpu_targets.targets_table(tmp_path)
    assert _row(table, "test ELBO within seed noise of the plain loop's, batch 128")[2] == "n/a"
    floor = _row(table, "mixture forward+backward ≤ 3×")
    assert floor[1].startswith("3.6× (cupy fused + CUDA graph (defer, default): 0.090 ms") and floor[2] == "no"
    assert "fastest row: cupy fused + CUDA graph (keep), 0.060 ms" in floor[1]
    assert _row(table, "mixture forward+backward ≥ 10×")[1].startswith("33.3×")


@pytest.mark.parametrize("verdict, met", [("within ±0.5%", "yes"), ("outside ±0.5%", "no"),
                                          ("not resolved (about 40 pairs at this mean and spread)", "n/a")])
def test_the_bf16_row_follows_the_precision_studys_interval(tmp_path, verdict, met):
    (tmp_path / "precision_study.json").write_text(json.dumps({"epochs": 10, "summary": {
        "pairs": 12, "mean": 0.31, "sd": 0.4, "stderr": 0.115, "ci95": [0.06, 0.56], "verdict": verdict}}))
    row = _row(gpu_targets.targets_table(tmp_path), "bf16 within")
    assert row[1] == f"+0.31% (sd 0.40%), 95% interval [+0.06%, +0.56%] over 12 seed pairs of 10 epochs: {verdict}"
    assert row[2] == met
    study = json.loads((tmp_path / "precision_study.json").read_text())
    study["summary_bpd"] = {"pairs": 12, "mean": -0.02, "sd": 0.2, "stderr": 0.06, "ci95": [-0.15, 0.11],
                            "verdict": "within ±0.5%"}
    (tmp_path / "precision_study.json").write_text(json.dumps(study))
    bpd = _row(gpu_targets.targets_table(tmp_path), "for reference: bf16's bits/dim")
    assert bpd[1].startswith("-0.02% (sd 0.20%), 95% interval [-0.15%, +0.11%]") and bpd[2] == "yes"
    # the rounding control's spread is shown beside bf16's, for reference
    (tmp_path / "rounding_control.json").write_text(json.dumps({"epochs": 10, "pair": ["float32", "channels_last"],
        "summary": {"pairs": 5, "mean": -0.37, "sd": 1.93, "stderr": 0.86, "ci95": [-2.77, 2.03],
                    "verdict": "not resolved"}}))
    control = _row(gpu_targets.targets_table(tmp_path), "for reference: float32 with channels-last")
    assert control[1].startswith("-0.37% (sd 1.93%), 95% interval [-2.77%, +2.03%] over 5 seed pairs")


def test_the_command_line_wants_one_directory(tmp_path, capsys):
    assert gpu_targets.main([]) == 2
    assert gpu_targets.main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert gpu_targets.main([str(tmp_path)]) == 0
    assert "| training ≥ 5× the plain loop, batch 128 (float32, the default step) | not measured | n/a |" \
        in capsys.readouterr().out


def test_a_precision_study_of_another_pair_is_not_the_bf16_target(tmp_path):
    (tmp_path / "precision_study.json").write_text(json.dumps({"epochs": 10, "pair": ["float32", "channels_last"],
        "summary": {"pairs": 6, "mean": 0.1, "sd": 0.2, "stderr": 0.08, "ci95": [-0.1, 0.3],
                    "verdict": "within ±0.5%"}}))
    assert _row(gpu_targets.targets_table(tmp_path), "bf16 within")[1:] == ["not measured", "n/a"]


def test_the_rounding_control_is_shown_when_the_bf16_study_did_not_run(tmp_path):
    (tmp_path / "rounding_control.json").write_text(json.dumps({"epochs": 10, "pair": ["float32", "channels_last"],
        "summary": {"pairs": 4, "mean": 0.2, "sd": 1.5, "stderr": 0.75, "ci95": [-2.2, 2.6],
                    "verdict": "not resolved"}}))
    table = gpu_targets.targets_table(tmp_path)
    assert _row(table, "bf16 within")[1:] == ["not measured", "n/a"]
    assert _row(table, "for reference: float32 with channels-last")[1].startswith("+0.20% (sd 1.50%)")
