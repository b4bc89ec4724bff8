"""bf16 against float32: paired seeds, one process, the test ELBO of each trained model.

    python benchmarks/precision_study.py --device cuda --seeds 12 --epochs 10 \
        [--time-limit 120] [--elbo-samples 4] [--json out.json]

Issue 8 asks that training under ``--precision bf16`` land within 0.5% of float32's
test ELBO on the bundled data.  One pair of runs cannot show that: the seed alone moves
the 10-epoch test ELBO on mnist5k by several percent (docs/performance.md).  This runs
``vaecli.training.train`` for seeds 0..N-1 under each precision (same seed: same
initialisation, batch order and noise), in one process with the data loaded once, and
evaluates every trained model the same way, in float32 with ``vaecli.evaluate``
(``vae eval --metric elbo --metric bpd``: the run's calibrated sigma, ``--elbo-samples``
posterior samples an image, the same evaluation seed).  It prints a row per seed as the
pair finishes and then the paired difference (bf16 - float32, percent of float32's
ELBO): mean, standard deviation, standard error and a 95% t-interval, and which of
"within ±0.5%", "outside ±0.5%" or "not resolved" the interval shows, with the number
of pairs that the measured mean and spread would need to resolve it; the same for the
history's single-sample test ELBO and for bits/dim (the discrete bound, whose sigma is
fitted to the PMF: it does not move with the training MSE's sigma as the ELBO does).

``--pair float32 channels_last`` compares two float32 runs that differ in rounding only
(the convolutions' memory layout): the spread that any change of rounding gives the
same seed's training, against which bf16's can be read.

``--time-limit S`` starts no new pair once the pairs so far say it would end after S
seconds (the rows measured are kept, and the JSON is rewritten after each pair), so
that a device call with a fixed budget gets as many pairs as fit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's vaecli, and the benchmarks beside this one

import torch  # noqa: E402
from train_throughput import _spread  # noqa: E402

from vaecli import datasets  # noqa: E402
from vaecli.config import TrainConfig  # noqa: E402
from vaecli.evaluate import evaluate  # noqa: E402
from vaecli.runs import load_model, prepare_images, resolve_device
from vaecli.training import train  # noqa: E402

# the configurations a study can pair, by name: TrainConfig options
VARIANTS = {"float32": {}, "bf16": {"precision": "bf16"}, "channels_last": {"memory_format": "channels_last"}}
TOLERANCE_PERCENT = 0.5  # issue 8's target


def train_and_evaluate(config: TrainConfig, data, test_images, elbo_samples: int) -> dict:
    """Train one run in a temporary file; its history's last test ELBO, and the
    evaluated test ELBO and bits/dim (float32, the run's calibrated sigma)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = train(config, os.path.join(tmp, "run.h5"), progress=False, log=lambda s: None, data=data)
        model = load_model(run, device=config.device)
    with torch.no_grad():
        results = evaluate(model, test_images, ["elbo", "bpd"], elbo_samples=elbo_samples, seed=0)
    return {"test_elbo_history": float(run.history["test_elbo"][-1]),
            "test_elbo": float(results["elbo"]["value"]), "test_elbo_stderr": float(results["elbo"]["stderr"]),
            "bpd": float(results["bpd"]["value"]), "seconds": time.perf_counter() - start}


def t_quantile(n_minus_1: int) -> float:
    """The 97.5% quantile of Student's t with n - 1 degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, n_minus_1))


def pairs_needed(sd: float, margin: float) -> int | None:
    """The fewest pairs m whose 95% t half-width, t(m-1) sd / sqrt(m), is below
    ``margin``, at this sd; None when there is no margin."""
    if margin <= 0:
        return None
    m = max(2, math.ceil((1.96 * sd / margin) ** 2))  # t > z: never fewer than the normal's count
    while t_quantile(m - 1) * sd / math.sqrt(m) >= margin:
        m += 1
    return m


def paired_summary(differences, tolerance=TOLERANCE_PERCENT) -> dict:
    """Mean, sd, standard error and 95% t-interval of paired differences (percent), and
    what the interval shows against ±tolerance."""
    n = len(differences)
    mean = sum(differences) / n
    out = {"pairs": n, "mean": mean}
    if n < 2:
        return {**out, "verdict": "not resolved (one pair: no spread to judge it by)"}
    sd = statistics.stdev(differences)
    se = sd / math.sqrt(n)
    half = t_quantile(n - 1) * se
    low, high = mean - half, mean + half
    if -tolerance < low and high < tolerance:
        verdict = f"within ±{tolerance}%"
    elif high <= -tolerance or low >= tolerance:
        verdict = f"outside ±{tolerance}%"
    else:  # the pairs that this mean and spread would need to put the interval on one side
        inside = abs(mean) < tolerance
        needed = pairs_needed(sd, tolerance - abs(mean) if inside else abs(mean) - tolerance)
        verdict = "not resolved" + (f" (about {needed} pairs at this mean and spread would show it "
                                    f"{'within' if inside else 'outside'} ±{tolerance}%)" if needed else "")
    return {**out, "sd": sd, "stderr": se, "ci95": [low, high], "verdict": verdict}


def _fmt_summary(name, s) -> str:
    if "sd" not in s:
        return f"{name}: {s['pairs']} pair, {s['mean']:+.2f}%; {s['verdict']}"
    return (f"{name}: {s['pairs']} pairs, mean {s['mean']:+.2f}%, sd {s['sd']:.2f}%, se {s['stderr']:.2f}%, "
            f"95% interval [{s['ci95'][0]:+.2f}%, {s['ci95'][1]:+.2f}%]: {s['verdict']}")


def _percent(new: float, old: float) -> float:
    return 100 * (new - old) / abs(old)


def study(device, seeds, epochs, batch, elbo_samples, time_limit=None, json_path=None, say=print,
          data=None, pair=("float32", "bf16")) -> dict:
    """The rows and summaries (see the module's docstring); ``data`` is (train, test)
    datasets, mnist5k's when not given; ``pair`` names the two VARIANTS compared, the
    second against the first."""
    base, other = pair
    data = data or (datasets.load("mnist5k", "train"), datasets.load("mnist5k", "test"))
    test_images = torch.from_numpy(prepare_images(data[1].images, TrainConfig())).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    report = {"device": name, "torch": torch.__version__, "epochs": epochs, "batch": batch,
              "elbo_samples": elbo_samples, "pair": [base, other], "rows": [], "stopped": None}
    say(f"{other} against {base}, mnist5k, sigma-VAE, {epochs} epochs, batch {batch}, {name}, "
        f"torch {torch.__version__}; test ELBO evaluated in float32, {elbo_samples} posterior sample(s) an image")
    say(f"| seed | {base} ELBO | {other} ELBO | {other} − {base} | {base} bpd | {other} bpd | "
        f"history: {other} − {base} | seconds |")
    say("|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for seed in seeds:
        done = report["rows"]
        if time_limit is not None and done:
            per_pair = (time.perf_counter() - start) / len(done)
            if time.perf_counter() - start + per_pair > time_limit:
                report["stopped"] = f"time limit {time_limit:g} s: {len(done)} pairs of {len(seeds)}"
                break
        runs = {v: train_and_evaluate(TrainConfig(epochs=epochs, batch_size=batch, device=str(device), seed=seed,
                                                  **VARIANTS[v]), data, test_images, elbo_samples)
                for v in pair}
        a, b = runs[base], runs[other]
        row = {"seed": seed, **runs, "difference_percent": _percent(b["test_elbo"], a["test_elbo"]),
               "history_difference_percent": _percent(b["test_elbo_history"], a["test_elbo_history"]),
               "bpd_difference_percent": _percent(b["bpd"], a["bpd"])}
        done.append(row)
        say(f"| {seed} | {a['test_elbo']:.2f} | {b['test_elbo']:.2f} | {row['difference_percent']:+.2f}% | "
            f"{a['bpd']:.4f} | {b['bpd']:.4f} | {row['history_difference_percent']:+.2f}% | "
            f"{a['seconds'] + b['seconds']:.1f} |")
        report["summary"] = paired_summary([r["difference_percent"] for r in done])
        report["summary_history"] = paired_summary([r["history_difference_percent"] for r in done])
        report["summary_bpd"] = paired_summary([r["bpd_difference_percent"] for r in done])
        if json_path:  # whole or not at all: a time limit may stop the process at any point
            tmp = Path(f"{json_path}.tmp")
            tmp.write_text(json.dumps(report, indent=1))
            os.replace(tmp, json_path)
    rows = report["rows"]
    if not rows:
        say("no pair finished")
        return report
    say(f"{base} test ELBO {_spread([r[base]['test_elbo'] for r in rows])}, "
        f"{other} {_spread([r[other]['test_elbo'] for r in rows])} (mean ± sd over seeds, nats/image)")
    say(_fmt_summary(f"{other} − {base}, evaluated ELBO", report["summary"]))
    say(_fmt_summary(f"{other} − {base}, history's ELBO", report["summary_history"]))
    say(_fmt_summary(f"{other} − {base}, bits/dim (lower is better)", report["summary_bpd"]))
    if report["stopped"]:
        say(f"stopped: {report['stopped']}")
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1, one run of each of the pair each")
    p.add_argument("--pair", nargs=2, default=["float32", "bf16"], choices=sorted(VARIANTS), metavar="NAME",
                   help=f"the two configurations, the second compared with the first ({', '.join(VARIANTS)}); "
                        "default: float32 bf16. float32 channels_last prices a change of rounding alone")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=TrainConfig().batch_size)
    p.add_argument("--elbo-samples", type=int, default=4, help="posterior samples an image in the evaluation")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; start no pair that would end later")
    p.add_argument("--json", default=None, help="write the rows and the summary here (after each pair)")
    args = p.parse_args()
    for flag in ("seeds", "epochs", "batch", "elbo_samples"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    device = resolve_device(args.device)
    if args.pair[0] == args.pair[1]:
        p.error("--pair needs two different configurations (float32 twice is the same run on the CPU)")
    study(device, list(range(args.first_seed, args.first_seed + args.seeds)), args.epochs, args.batch,
          args.elbo_samples, args.time_limit, args.json, pair=tuple(args.pair))


if __name__ == "__main__":
    main()
