"""Issue 8's targets against what one `scripts/gpu_check.sh` run measured: a markdown table.

    python scripts/gpu_targets.py OUT_DIR

Reads the JSON that gpu_check.sh's benchmarks write into OUT_DIR (train_throughput.json,
train_throughput_compiled.json, bench.json, precision_study.json; gpu.txt for the card)
and prints one row per target with the measured value and whether it is met; a target
whose benchmark did not run (or failed) says "not measured".  The rules:

* training: the mean images/s of vaecli's default step (float32, CUDA graph) over the
  plain loop's, at batch 128 (>= 5) and 1024 (>= 3); bf16 and compiled rows follow for
  reference, marked as such.
* test ELBO after the same epochs "within seed noise": the difference of the two loops'
  mean ELBOs over seeds lies inside its 95% interval's half-width (Welch's t, so with
  2 seeds a loop the half-width is about 4.3 standard errors); with one seed there is
  no noise to judge by.
* the logistic mixture's forward+backward: the row that `vae train` runs (the CuPy
  kernels under the likelihood's default gradient policy, replayed from a CUDA graph)
  against the bytes floor (<= 3x) and against torch eager (>= 10x); the fastest row
  measured is given beside it.
* bf16: benchmarks/precision_study.py's verdict on the 95% interval of the paired
  difference of test ELBOs (within ±0.5% is met).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

# what gpu_check.sh's benchmarks write into OUT_DIR, and this reads
INPUTS = ("train_throughput.json", "train_throughput_compiled.json", "bench.json", "precision_study.json",
          "rounding_control.json")
TRAIN_TARGETS = {128: 5.0, 1024: 3.0}
FLOOR_TARGET, EAGER_TARGET = 3.0, 10.0
NOT_MEASURED = "not measured"


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_mean = statistics.mean


def _sd(values):
    return statistics.stdev(values) if len(values) >= 2 else None


def _mark(ok) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def welch_half_width(a, b) -> float:
    """Half-width of the 95% interval of mean(b) - mean(a) (Welch's t, unequal variances)."""
    from scipy.stats import t

    va, vb = _sd(a) ** 2 / len(a), _sd(b) ** 2 / len(b)
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t.ppf(0.975, df)) * math.sqrt(va + vb)


def training_rows(throughput, compiled) -> list:
    rows = []
    by_key = {}
    for report in (throughput, compiled):
        for r in (report or {}).get("rows", []):
            by_key[(r["batch"], r["variant"])] = r
    for batch, target in TRAIN_TARGETS.items():
        r = by_key.get((batch, "float32"))
        name = f"training ≥ {target:g}× the plain loop, batch {batch} (float32, the default step)"
        if r is None:
            rows.append((name, NOT_MEASURED, "n/a"))
        else:
            rows.append((name, f"{r['ratio']:.2f}× ({_mean(r['vaecli_images_per_s']):,.0f} against "
                               f"{_mean(r['baseline_images_per_s']):,.0f} images/s)", _mark(r["ratio"] >= target)))
        for variant in ("bf16", "channels_last", "channels_last+bf16", "compile", "compile+bf16"):
            other = by_key.get((batch, variant))
            if other is not None:
                rows.append((f"for reference: {variant}, batch {batch}", f"{other['ratio']:.2f}×",
                             _mark(other["ratio"] >= target)))
    for batch in TRAIN_TARGETS:
        r = by_key.get((batch, "float32"))
        name = f"test ELBO within seed noise of the plain loop's, batch {batch}"
        if r is None:
            rows.append((name, NOT_MEASURED, "n/a"))
            continue
        base, ours = r["baseline_test_elbo"], r["vaecli_test_elbo"]
        diff = _mean(ours) - _mean(base)
        sd_b, sd_o = _sd(base), _sd(ours)
        if sd_b is None or sd_o is None:
            rows.append((name, f"{_mean(ours):.2f} against {_mean(base):.2f} (one seed: no noise measured)", "n/a"))
            continue
        half = welch_half_width(base, ours)
        rows.append((name, f"{_mean(ours):.2f} ± {sd_o:.2f} against {_mean(base):.2f} ± {sd_b:.2f} "
                           f"({len(base)} seeds): difference {diff:+.2f}, 95% half-width {half:.2f}",
                     _mark(abs(diff) <= half)))
    return rows


def mixture_rows(bench) -> list:
    name_floor = f"mixture forward+backward ≤ {FLOOR_TARGET:g}× the bytes floor"
    name_eager = f"mixture forward+backward ≥ {EAGER_TARGET:g}× torch eager"
    rows = [r for r in (bench or {}).get("rows", []) if r["likelihood"] == "logistic-mixture" and "ms" in r]
    eager = next((r for r in rows if r["variant"] == "torch eager"), None)
    # what vae train runs: the CuPy kernels under their default policy, in the step's graph
    used = [r for r in rows if r["variant"].startswith("cupy fused + CUDA graph")
            and ("default)" in r["variant"] or "(" not in r["variant"])]
    if not used or eager is None:
        return [(name_floor, NOT_MEASURED, "n/a"), (name_eager, NOT_MEASURED, "n/a")]
    r = used[0]
    best = min(rows, key=lambda row: row["ms"])
    ratio = r["ms"] / r["floor_ms"]
    aside = f"; fastest row: {best['variant']}, {best['ms']:.3f} ms" if best is not r else ""
    return [(name_floor, f"{ratio:.1f}× ({r['variant']}: {r['ms']:.3f} ms, floor {r['floor_ms']:.4f} ms{aside})",
             _mark(ratio <= FLOOR_TARGET)),
            (name_eager, f"{eager['ms'] / r['ms']:.1f}× ({eager['ms']:.3f} ms eager)",
             _mark(eager["ms"] / r["ms"] >= EAGER_TARGET))]


def _paired_row(name, summary, epochs):
    if "ci95" not in summary:
        return (name, f"{summary['mean']:+.2f}% ({summary['pairs']} pair): {summary['verdict']}", "n/a")
    low, high = summary["ci95"]
    verdict = summary["verdict"]
    met = True if verdict.startswith("within") else (False if verdict.startswith("outside") else None)
    return (name, f"{summary['mean']:+.2f}% (sd {summary['sd']:.2f}%), 95% interval [{low:+.2f}%, {high:+.2f}%] "
                  f"over {summary['pairs']} seed pairs of {epochs} epochs: {verdict}", _mark(met))


def precision_rows(study, control=None) -> list:
    name = "bf16 within 0.5% of float32's test ELBO"
    summary = (study or {}).get("summary")
    if not summary or study.get("pair", ["float32", "bf16"]) != ["float32", "bf16"]:
        rows = [(name, NOT_MEASURED, "n/a")]
    else:
        rows = [_paired_row(name, summary, study["epochs"])]
        if study.get("summary_bpd"):
            rows.append(_paired_row("for reference: bf16's bits/dim within 0.5% of float32's",
                                    study["summary_bpd"], study["epochs"]))
    if control and control.get("summary") and control.get("pair") == ["float32", "channels_last"]:
        rows.append(_paired_row("for reference: float32 with channels-last convolutions (rounding alone), "
                                "test ELBO", control["summary"], control["epochs"]))
    return rows


def targets_table(out: Path) -> str:
    throughput, compiled, bench, study, control = (_load(out / name) for name in INPUTS)
    rows = training_rows(throughput, compiled) + mixture_rows(bench) + precision_rows(study, control)
    card = ((out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "") or "card unknown"
    lines = [f"issue 8 targets, {card}", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {met} |" for name, measured, met in rows]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    out = Path(argv[0])
    if not out.is_dir():
        print(f"error: {out} is not a directory", file=sys.stderr)
        return 2
    print(targets_table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
