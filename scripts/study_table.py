"""The study's markdown table (docs/study.md) from a `vae sweep` directory.

    python scripts/study_table.py study/mnist5k > study/mnist5k-table.md

One row per decoder (and beta of the fixed gaussian); with several seeds each cell is
the mean ± the standard deviation over seeds, and the seed count is a column.  Columns:
test ELBO (nats), bits/dim, IW-NLL (bits/dim, discrete), KL, MSE, FID, the decoder
sigma (for `sigma`: the evaluation sigma of the density, then that of the PMF) and the
beta of the equivalent SSE + beta*KL objective.  Below the table: the sigma-VAE's FID
against the fixed gaussian's best beta (lowest mean FID), seed by seed, since runs with
the same seed share the batch order and the noise draws.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict

import numpy as np

from vaecli import VaeError, runfile
from vaecli.sweep import run_paths


def _value(evaluation, key="value"):
    if not evaluation:
        return None
    if evaluation.get("applicable", 1) in (0, False):
        return "n/a"
    return evaluation.get(key)


def _cell(values, fmt):
    if any(v == "n/a" for v in values):
        return "n/a"
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    sd = np.std(values, ddof=1)
    if sd <= 1e-9 * max(1.0, abs(np.mean(values))):  # equal values: no rounding-noise spread
        sd = 0.0
    return f"{fmt.format(np.mean(values))} ± {fmt.format(sd)}"


def main(directory):
    paths = run_paths(directory)
    if not paths:
        raise VaeError(f"{directory}: no run files (*.h5) here")
    groups = defaultdict(list)
    order = {}  # name -> (likelihood, beta): rows sort by decoder, then beta as a number
    details = {}
    for path in paths:
        run = runfile.read(path)
        c, ev = run.config, run.evaluations.get("test", {})
        name = c.likelihood + (f" β={c.beta:g}" if c.likelihood == "gaussian" else "")
        order[name] = (c.likelihood, c.beta)
        if c.likelihood == "sigma":
            sigma = run.eval_sigma
        elif len(run.history.get("sigma", [])):
            sigma = float(run.history["sigma"][-1])
        else:
            sigma = None
        beta_eq = 2 * c.beta if c.likelihood == "gaussian" else (2 * sigma**2 if sigma is not None
                                                                  and not math.isnan(sigma) else None)
        groups[name].append({
            "elbo": _value(ev.get("elbo")), "bpd": _value(ev.get("bpd")), "nll": _value(ev.get("nll"), "bpd"),
            "kl": _value(ev.get("kl")), "mse": _value(ev.get("mse")), "fid": _value(ev.get("fid")),
            "sigma": sigma, "pmf_sigma": run.calibration.get("pmf_sigma"), "beta_eq": beta_eq,
            "seed": c.seed,
        })
        if "nll" in ev and "iw_samples" in ev["nll"]:
            details["K"] = int(ev["nll"]["iw_samples"])
        if "fid" in ev and "n_generated" in ev["fid"]:
            details["fid"] = f"{int(ev['fid']['n_generated'])} vs {int(ev['fid']['n_reference'])}"
        details["epochs"] = c.epochs
        details["dataset"] = run.attrs["dataset"]
    k, fid = details.get("K", "?"), details.get("fid", "?")
    print(f"| decoder | seeds | test ELBO (nats) | bits/dim | IW-NLL bits/dim (K={k}) | KL (nats) | MSE "
          f"| FID ({fid}) | σ (density) | σ (PMF) | β of SSE + β·KL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in sorted(groups, key=order.__getitem__):
        rows = groups[name]

        def col(key, fmt):
            return _cell([r[key] for r in rows], fmt)

        print("| " + " | ".join([
            name, str(len(rows)), col("elbo", "{:.1f}"), col("bpd", "{:.4f}"), col("nll", "{:.4f}"),
            col("kl", "{:.2f}"), col("mse", "{:.4f}"), col("fid", "{:.1f}"), col("sigma", "{:.4f}"),
            col("pmf_sigma", "{:.4f}"), col("beta_eq", "{:.4g}"),
        ]) + " |")
    paired = _paired_fid(groups)
    if paired:
        print("\n" + paired)


def _fids(rows):
    return {r["seed"]: float(r["fid"]) for r in rows if r["fid"] not in (None, "n/a") and not math.isnan(r["fid"])}


def _paired_fid(groups):
    """The sigma-VAE's FID minus that of the best-mean-FID fixed beta, per shared seed."""
    betas = {name: _fids(rows) for name, rows in groups.items() if name.startswith("gaussian β=")}
    betas = {name: f for name, f in betas.items() if f}
    sigma = _fids(groups.get("sigma", []))
    if not betas or not sigma:
        return ""
    best = min(betas, key=lambda name: np.mean(list(betas[name].values())))
    seeds = sorted(set(sigma) & set(betas[best]))
    if not seeds:
        return ""
    diffs = [sigma[s] - betas[best][s] for s in seeds]
    cells = ", ".join(f"seed {s}: {sigma[s]:.1f} vs {betas[best][s]:.1f}" for s in seeds)
    spread = f" ± {np.std(diffs, ddof=1):.1f}" if len(diffs) > 1 else ""
    wins = sum(d < 0 for d in diffs)
    return (f"FID, sigma against the best fixed β ({best.split('=')[1]}), same seeds: {cells}; "
            f"difference {np.mean(diffs):+.1f}{spread} (sigma lower in {wins} of {len(diffs)}).")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/study_table.py SWEEP_DIR")
    try:
        main(sys.argv[1])
    except VaeError as exc:  # a damaged run file, an empty directory: one line, exit 1
        sys.exit(f"Error: {exc}")
