"""The tables of docs/study.md's "At convergence" section from the JSON results that
scripts/convergence_study.sh writes beside each run (LIKELIHOOD-betaB-sS.json).

    python scripts/convergence_table.py study-convergence/conv > table.md

One row per decoder setting (cells mean ± sd over the seeds listed): how long it trained
and where its validation bits/dim was best (the run keeps the last epoch's weights, up
to the patience past the best: both validation numbers are shown), the test numbers
(with the aggregate posterior's KL from the prior and the mutual information, the two
parts of the rate; vaecli.aggregate), FID and the beta of the
equivalent MSE-loss objective SSE + beta*KL (2*beta*sigma^2: 2*beta for the fixed
Gaussian, 2*sigma^2 for the calibrated decoders).  Then FID seed by seed against the
best fixed beta, and the ranking, beside the paper's SVHN FIDs (its Tables 2-3) for the
conv model (the paper's SVHN VAE) only.  Where
a run has more FIDs beside it (fid/NAME-tT.json: its prior samples at temperature T, as
scripts/model_study_fid.sh writes them; reconstruction-fid/NAME.json: the test images'
reconstructions, scripts/reconstruction_fid.py; fitted-prior-fid/NAME.json: samples from
a Gaussian fitted to the aggregate posterior, scripts/fitted_prior_fid.py), a table shows them by its prior
samples' FID and its aggregate posterior's KL: the prior-holes diagnostics; and where a
hierarchical run has hierarchy-fid/NAME.json (scripts/hierarchy_fid.py), a last table gives
its FID with the groups down to each cut drawn from the posteriors, the rest from the prior.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from model_study_table import cell, difference_of_means, fids_at_temperatures  # this folder is first on the path of a script run from it

from vaecli.training.state import best_validation

# The sigma-VAE paper's SVHN FIDs (Rybkin et al. 2021, Tables 2-3): the MSE-loss beta sweep
# and the calibrated decoders, by this project's setting names.
PAPER_SVHN_FID = {("gaussian", 0.001): 44.5, ("gaussian", 0.01): 27.9, ("gaussian", 0.1): 28.3,
                  ("gaussian", 1.0): 70.4, ("gaussian", 10.0): 219.3, ("sigma", 1.0): 27.25,
                  ("sigma-learned", 1.0): 22.25}
CALIBRATED = ("sigma", "sigma-learned")


def value(result, metric, key="value"):
    r = result["test"]["results"].get(metric, {})
    return r.get(key) if r.get("applicable", True) else None


def label(setting):
    likelihood, beta = setting
    if likelihood == "gaussian":
        return f"gaussian σ=1, β={beta:g}"
    return likelihood + (" (σ-VAE)" if likelihood == "sigma" else "") + ("" if beta == 1 else f", β={beta:g}")


def implied_beta(result):
    """beta * 2 sigma^2 at the last epoch: the weight of the KL against the summed squared error."""
    history = result.get("equivalent_beta_history") or []
    if not history or not np.isfinite(history[-1]):
        return None
    return result["beta"] * history[-1]


def best_validation_epoch(result):
    """1-based epoch of the best validation value the early-stopping rule watched (bits/dim or
    the beta-weighted loss), by the rule's own count."""
    monitor = result.get("monitor", "bpd")
    best = best_validation({f"val_{monitor}": result.get(f"val_{monitor}_history") or []},
                           result.get("min_delta", 0.0), monitor)
    return None if best is None else best[1] + 1


def stopped_early(result):
    """Whether the early-stopping rule ended the run (not the epoch limit, nor a time budget):
    its last epoch is the patience past the best the rule watched."""
    best, patience = best_validation_epoch(result), result.get("early_stop") or 0
    return bool(patience) and best is not None and result["epochs"] < result["epochs_limit"] \
        and result["epochs"] - best >= patience


def validation_bpd_at_best(result):
    """The validation bits/dim at the epoch the rule watched as best (the monitored value may be the loss)."""
    best, history = best_validation_epoch(result), result.get("val_bpd_history") or []
    return history[best - 1] if best is not None and best <= len(history) else None


def load(folder):
    rows = defaultdict(list)
    for path in sorted(Path(folder).glob("*-beta*-s*.json")):  # a run's; eval-sigma-RUN.json is not one
        if path.name.startswith("eval-sigma-"):
            continue
        r = json.loads(path.read_text())
        r["name"] = path.stem
        rows[(r["likelihood"], float(r["beta"]))].append(r)
    for runs in rows.values():
        runs.sort(key=lambda r: r["seed"])
    return rows


def order(setting):
    likelihood, beta = setting
    return (CALIBRATED.index(likelihood) if likelihood in CALIBRATED else len(CALIBRATED), beta)


def main(folder):
    rows = load(folder)
    if not rows:
        raise SystemExit(f"no results (*.json) in {folder}")
    settings = sorted(rows, key=order)
    print("| decoder | seeds | epochs trained | best validation epoch | stopped early | training (min, wall) "
          "| validation bits/dim at the best epoch | validation bits/dim, last epoch (the weights kept) | test bits/dim | test ELBO (nats) | KL (nats) | MSE | active units "
          "| aggregate posterior KL (nats) | I(x; z) (nats) | FID (10k vs 10k test) | β of SSE + β·KL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in settings:
        runs = rows[s]
        stopped = sum(stopped_early(r) for r in runs)
        print(f"| {label(s)} | {', '.join(str(r['seed']) for r in runs)} | {cell([r['epochs'] for r in runs], 1)} "
              f"| {cell([best_validation_epoch(r) for r in runs], 1)} "
              f"| {stopped} of {len(runs)} | {cell([r['trained_seconds'] / 60 for r in runs], 0)} "
              f"| {cell([validation_bpd_at_best(r) for r in runs], 4)} "
              f"| {cell([r['val_bpd_history'][-1] if r.get('val_bpd_history') else None for r in runs], 4)} "
              f"| {cell([value(r, 'bpd') for r in runs], 4)} | {cell([value(r, 'elbo') for r in runs], 1)} "
              f"| {cell([value(r, 'kl') for r in runs], 2)} | {cell([value(r, 'mse') for r in runs], 5)} "
              f"| {cell([value(r, 'active-units') for r in runs], 1)} "
              f"| {cell([value(r, 'aggregate-kl') for r in runs], 2)} "
              f"| {cell([value(r, 'aggregate-kl', 'mutual_information') for r in runs], 2)} "
              f"| {cell([value(r, 'fid') for r in runs], 1)} "
              f"| {cell([implied_beta(r) for r in runs], 4)} |")

    fixed = [s for s in settings if s[0] == "gaussian" and any(value(r, "fid") is not None for r in rows[s])]
    sigma = ("sigma", 1.0)
    if fixed and sigma in rows:
        best = min(fixed, key=lambda s: np.mean([value(r, "fid") for r in rows[s] if value(r, "fid") is not None]))
        print(f"\nFID seed by seed, the σ-VAE against every fixed β (best by mean FID: β = {best[1]:g}); "
              "a negative difference favours the σ-VAE:\n")
        print("| seed | σ-VAE | " + " | ".join(f"β = {s[1]:g}" for s in fixed) + f" | σ-VAE − β = {best[1]:g} |")
        print("|---|---|" + "---|" * len(fixed) + "---|")
        by_seed = {s: {r["seed"]: value(r, "fid") for r in rows[s]} for s in [sigma, *fixed]}
        diffs = []
        for seed in sorted(by_seed[sigma]):
            own, other = by_seed[sigma][seed], by_seed[best].get(seed)
            diff = None if own is None or other is None else own - other
            if diff is not None:
                diffs.append(diff)
            cells = [f"{by_seed[s].get(seed):.1f}" if by_seed[s].get(seed) is not None else "–" for s in fixed]
            print(f"| {seed} | {own:.1f} | " + " | ".join(cells) + f" | {'–' if diff is None else f'{diff:+.1f}'} |")
        a = [v for v in by_seed[sigma].values() if v is not None]
        b = [v for v in by_seed[best].values() if v is not None]
        diff, se = difference_of_means(a, b)
        spread = f"{np.std(b, ddof=1):.1f}" if len(b) > 1 else "–"
        print(f"\nσ-VAE {np.mean(a):.1f} against β = {best[1]:g} {np.mean(b):.1f} (sd over seeds {spread}): "
              f"difference of means {diff:+.1f}" + (f" ± {se:.1f} (standard error)" if se is not None else "")
              + f"; the σ-VAE is lower in {sum(d < 0 for d in diffs)} of {len(diffs)} paired seeds.")

    # the paper's SVHN numbers are its small conv VAE's: set beside conv runs only
    models = sorted({r["model"] for s in settings for r in rows[s]})
    beside_paper = models == ["conv"]
    columns = ["rank", "decoder", "FID here"] + (["FID in the paper (SVHN)"] if beside_paper else [])
    print("\nRanking by mean FID here, beside the paper's SVHN FIDs (its conv VAE; Tables 2-3):\n" if beside_paper
          else f"\nRanking by mean FID here (model {', '.join(models)}; the paper's SVHN FIDs are its conv VAE's, "
               "so they are not set beside it):\n")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    scored = [(np.mean(f), s) for s in settings if (f := [value(r, "fid") for r in rows[s] if value(r, "fid") is not None])]
    for rank, (fid, s) in enumerate(sorted(scored), 1):
        cells = [str(rank), label(s), f"{fid:.1f}"]
        if beside_paper:
            paper = PAPER_SVHN_FID.get(s)
            cells.append("–" if paper is None else f"{paper:g}")
        print("| " + " | ".join(cells) + " |")

    every = [r for s in settings for r in rows[s]]
    diagnostics(folder, every)
    hierarchy(folder, every)


def diagnostics(folder, runs):
    """The runs' other FIDs (prior samples at each temperature measured, samples from the
    fitted prior, the test images' reconstructions) beside their prior samples' FID and
    aggregate posterior KL."""
    found = {}
    for r in runs:
        fids = {t: f for t, f in fids_at_temperatures(folder, r["name"]).items() if t != 1.0}
        recon = Path(folder) / "reconstruction-fid" / f"{r['name']}.json"
        if recon.exists():
            fids["reconstructions"] = json.loads(recon.read_text())["reconstruction_fid"]
        fitted = Path(folder) / "fitted-prior-fid" / f"{r['name']}.json"
        if fitted.exists():
            fids["fitted prior"] = json.loads(fitted.read_text())["fitted_prior_fid"]
        if fids:
            found[r["name"]] = (r, fids)
    if not found:
        return
    others = ("fitted prior", "reconstructions")
    ts = sorted({t for _, fids in found.values() for t in fids if t not in others}, reverse=True)
    columns = ts + [o for o in others if any(o in f for _, f in found.values())]
    print("\nPrior holes: FID (10k against the 10k test images) of prior samples at temperature T = 1 and "
          "lower, of samples from a Gaussian fitted to the aggregate posterior (scripts/fitted_prior_fid.py) "
          "and of the test images' reconstructions (no prior involved), beside the aggregate "
          "posterior's KL from the prior:\n")
    print("| decoder | seed | aggregate posterior KL (nats) | T = 1 | " + " | ".join(
        t if t in others else f"T = {t:g}" for t in columns) + " |")
    print("|---|---|---|---|" + "---|" * len(columns))
    for r, fids in found.values():
        agg, fid = value(r, "aggregate-kl"), value(r, "fid")
        print(f"| {label((r['likelihood'], float(r['beta'])))} | {r['seed']} | {'–' if agg is None else f'{agg:.2f}'} "
              f"| {'–' if fid is None else f'{fid:.1f}'} | "
              + " | ".join(f"{fids[t]:.1f}" if t in fids else "–" for t in columns) + " |")


def hierarchy(folder, runs):
    """FID of each cut of scripts/hierarchy_fid.py (hierarchy-fid/NAME.json): the groups
    down to the cut from the test images' posteriors, the rest from the prior."""
    found = [(r, json.loads(f.read_text())) for r in runs
             if (f := Path(folder) / "hierarchy-fid" / f"{r['name']}.json").exists()]
    if not found:
        return
    cuts = sorted({(c["posterior_groups"], c["posterior_through"]) for _, h in found for c in h["cuts"]},
                  key=lambda c: c[0])
    print("\nWhere along the hierarchy (scripts/hierarchy_fid.py): FID of pictures whose latent groups down to "
          "the one named are drawn from the posteriors of the first n test images and the rest from the prior "
          "(the same noise at every cut; none: prior samples, the last group: posterior samples), against the "
          "10k test images:\n")
    print("| decoder | seed | n | " + " | ".join("none (prior)" if k == 0 else f"to {through}"
                                                for k, through in cuts) + " |")
    print("|---|---|---|" + "---|" * len(cuts))
    for r, h in found:
        by_cut = {c["posterior_groups"]: c["fid"] for c in h["cuts"]}
        print(f"| {label((r['likelihood'], float(r['beta'])))} | {r['seed']} | {h['n']} | "
              + " | ".join(f"{by_cut[k]:.1f}" if k in by_cut else "–" for k, _ in cuts) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
