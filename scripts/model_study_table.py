"""The model study's tables (docs/models.md) from the JSON results that
scripts/model_study.sh writes beside each run.

    python scripts/model_study_table.py docs/models-study > table.md

One row per model and likelihood: with several seeds each cell is mean ± sd over them,
and the seeds are listed.  Then the KL of each latent group of the hvae runs, and the
head-to-head differences the issue asks for (hvae against conv with the same decoder).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = {"conv": 0, "mlp": 1, "hvae": 2}
LIKELIHOODS = {"sigma": 0, "logistic-mixture": 1, "gaussian": 2}


def cell(values, digits):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def value(result, split, metric, key="value"):
    r = result[split]["results"].get(metric, {})
    return r.get(key) if r.get("applicable", True) else None


def fid_of(folder, name):
    """The run's FID (scripts/model_study_fid.sh writes fid/NAME.json), or None."""
    path = Path(folder) / "fid" / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["results"]["fid"]["value"]


def fids_at_temperatures(folder, name):
    """{temperature: FID} of the run: fid/NAME.json at 1, fid/NAME-tT.json at T."""
    out = {}
    if (fid := fid_of(folder, name)) is not None:
        out[1.0] = fid
    for path in (Path(folder) / "fid").glob(f"{name}-t*.json"):
        out[float(path.stem[len(name) + 2:])] = json.loads(path.read_text())["results"]["fid"]["value"]
    return out


def difference_of_means(a, b):
    """mean(a) - mean(b) and its standard error (unequal variances), or None for the
    error when either side has one value."""
    diff = np.mean(a) - np.mean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None
    return diff, float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))


def main(folder):
    results = []
    for p in sorted(Path(folder).glob("*.json")):
        r = json.loads(p.read_text())
        r["name"], r["fid"] = p.stem, fid_of(folder, p.stem)
        results.append(r)
    rows = defaultdict(list)
    for r in results:
        rows[(r["model"], r["likelihood"])].append(r)
    print("| model | decoder | seeds | parameters | images/s (1 core) | epochs in 30 min | test bits/dim "
          "| IW-NLL bits/dim (K=10) | test ELBO (nats) | KL (nats) | MSE | active units | FID (10k) "
          "| mnist5k bits/dim | mnist5k ELBO (nats) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (model, lik), runs in sorted(rows.items(), key=lambda kv: (ORDER.get(kv[0][0], 9),
                                                                    LIKELIHOODS.get(kv[0][1], 9))):
        runs.sort(key=lambda r: r["seed"])
        print(f"| {model} | {lik} | {', '.join(str(r['seed']) for r in runs)} | {runs[0]['parameters']:,} "
              f"| {cell([r['images_per_second'] for r in runs], 0)} | {cell([r['epochs'] for r in runs], 1)} "
              f"| {cell([value(r, 'test', 'bpd') for r in runs], 4)} "
              f"| {cell([value(r, 'test', 'nll', 'bpd') for r in runs], 4)} "
              f"| {cell([value(r, 'test', 'elbo') for r in runs], 1)} "
              f"| {cell([value(r, 'test', 'kl') for r in runs], 1)} "
              f"| {cell([value(r, 'test', 'mse') for r in runs], 5)} "
              f"| {cell([value(r, 'test', 'active-units') for r in runs], 0)} "
              f"| {cell([r['fid'] for r in runs], 1)} "
              f"| {cell([value(r, 'mnist5k', 'bpd') for r in runs], 4)} "
              f"| {cell([value(r, 'mnist5k', 'elbo') for r in runs], 1)} |")
    hvae = [r for r in results if r["model"] == "hvae"]
    if hvae:
        names = hvae[0]["latent_groups"]
        print("\nKL of each latent group of the hvae (nats per test image) and its active units:\n")
        print("| decoder | seed | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for r in sorted(hvae, key=lambda r: (LIKELIHOODS.get(r["likelihood"], 9), r["seed"])):
            kl = json.loads(r["test"]["results"]["kl"]["per_group"])
            au = json.loads(r["test"]["results"]["active-units"]["per_group"])
            print(f"| {r['likelihood']} | {r['seed']} | "
                  + " | ".join(f"{kl[n]:.1f} ({au[n]})" for n in names) + " |")
    print("\nhvae against conv, the same decoder (test bits/dim; negative: the hvae is better):\n")
    for lik in LIKELIHOODS:
        conv = [value(r, "test", "bpd") for r in rows.get(("conv", lik), [])]
        h = [value(r, "test", "bpd") for r in rows.get(("hvae", lik), [])]
        if conv and h:
            diffs = ", ".join(f"seed {r['seed']}: {value(r, 'test', 'bpd') - np.mean(conv):+.4f}"
                              for r in sorted(rows[("hvae", lik)], key=lambda r: r["seed"]))
            diff, stderr = difference_of_means(h, conv)
            means = f"difference of means {diff:+.4f}" + (f" ± {stderr:.4f} (standard error)" if stderr else "")
            print(f"- {lik}: hvae {cell(h, 4)} against conv {cell(conv, 4)}: {means}; each hvae seed "
                  f"against conv's mean: {diffs}")
    second_fids = {}
    for r in results:
        fids = fids_at_temperatures(folder, r["name"])
        recon = Path(folder) / "reconstruction-fid" / f"{r['name']}.json"
        if recon.exists():
            fids["reconstructions"] = json.loads(recon.read_text())["reconstruction_fid"]
        if any(k != 1.0 for k in fids):  # a second FID: at another temperature, or of reconstructions
            second_fids[(r["model"], r["likelihood"], r["seed"])] = fids
    if second_fids:
        ts = sorted({t for fids in second_fids.values() for t in fids if t != "reconstructions"}, reverse=True)
        columns = ts + (["reconstructions"] if any("reconstructions" in f for f in second_fids.values()) else [])
        print("\nFID (10k) of prior samples at a temperature (every group's), and of the test images' "
              "reconstructions (scripts/reconstruction_fid.py):\n")
        print("| model | decoder | seed | " + " | ".join(f"T = {t:g}" if t != "reconstructions" else t
                                                         for t in columns) + " |")
        print("|---|---|---|" + "---|" * len(columns))
        for (model, lik, seed), fids in sorted(second_fids.items(), key=lambda kv: (
                ORDER.get(kv[0][0], 9), LIKELIHOODS.get(kv[0][1], 9), kv[0][2])):
            print(f"| {model} | {lik} | {seed} | "
                  + " | ".join(f"{fids[t]:.1f}" if t in fids else "–" for t in columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/models-study")
