"""The sequence study's tables (docs/sequence.md) from the JSON results that
scripts/svg_study.sh writes beside each run.

    python scripts/svg_study_table.py study-svg > table.md
    python scripts/svg_study_table.py study-svg --figure curves.png   # also draws SSIM and PSNR per step

One row per decoder setting: with several seeds each cell is mean ± sd over them, and
the seeds are listed.  Then best-of-N SSIM and PSNR per predicted time step, beside two
predictions without a model (a black frame; the last context frame repeated) on the same
test videos, the KL of each predicted frame, and each setting against SVG's seed by seed.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from model_study_table import cell  # this folder is first on the path of a script run from it

ORDER = ["svg-beta1e-4", "gaussian", "sigma-learned", "sigma", "logistic-mixture"]
LABELS = {"svg-beta1e-4": "gaussian σ=1, β=1e-4 (SVG's)", "gaussian": "gaussian σ=1, β=1",
          "sigma-learned": "sigma-learned", "sigma": "sigma (σ-VAE)", "logistic-mixture": "logistic-mixture"}
REFERENCE = "svg-beta1e-4"
STEPS_SHOWN = (1, 5, 10, 15)


def value(result, metric, key="value"):
    r = result["test"]["results"].get(metric, {})
    return r.get(key) if r.get("applicable", True) else None


def setting(path: Path) -> str:
    return path.stem.rsplit("-s", 1)[0]


def baselines(folder, n_past, n_videos):
    """SSIM and PSNR per future step of two predictions that need no model, on the test
    videos the study scores (the smmnist-test-first*.npz the study wrote, else the first
    ``n_videos`` of smmnist's test split): an all-black frame, and the last context frame
    repeated.  {name: {metric: per-step list}}."""
    import torch

    from vaecli.prediction import psnr, ssim

    files = sorted(Path(folder).glob("smmnist-test-first*.npz"))
    if files:
        videos = np.load(files[0])["test_images"]
    else:
        from vaecli.runs import load_split

        videos = load_split("smmnist", "test").images[:n_videos]
    videos = torch.from_numpy(videos).double() / 255  # (N, T, C, H, W)
    future = videos[:, n_past:]
    n, steps = future.shape[:2]
    out = {}
    for name, guess in (("blank frame (no model)", torch.zeros_like(future)),
                        ("last context frame repeated (no model)", videos[:, n_past - 1 : n_past].expand_as(future))):
        a, b = guess.reshape(n * steps, *future.shape[2:]), future.reshape(n * steps, *future.shape[2:])
        out[name] = {m: f(a, b).reshape(n, steps).mean(0).tolist() for m, f in (("ssim", ssim), ("psnr", psnr))}
    return out


def main(folder):
    rows = defaultdict(list)
    for p in sorted(Path(folder).glob("*.json")):
        rows[setting(p)].append(json.loads(p.read_text()))
    names = sorted(rows, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    for n in names:
        rows[n].sort(key=lambda r: r["seed"])
    some = rows[names[0]][0]
    samples = value(some, "ssim", "samples")
    budget = f"{some['time_budget'] / 60:g} min" if some.get("time_budget") else "the run"
    print(f"| decoder | seeds | parameters | videos/s (1 core) | epochs in {budget} | test bits/dim "
          f"| test ELBO (nats/video) | KL (nats/video) | MSE | SSIM, best of {samples} | PSNR (dB), best of {samples} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        runs = rows[n]
        print(f"| {LABELS.get(n, n)} | {', '.join(str(r['seed']) for r in runs)} | {runs[0]['parameters']:,} "
              f"| {cell([r['images_per_second'] for r in runs], 1)} | {cell([r['epochs'] for r in runs], 1)} "
              f"| {cell([value(r, 'bpd') for r in runs], 4)} | {cell([value(r, 'elbo') for r in runs], 1)} "
              f"| {cell([value(r, 'kl') for r in runs], 2)} | {cell([value(r, 'mse') for r in runs], 5)} "
              f"| {cell([value(r, 'ssim') for r in runs], 4)} | {cell([value(r, 'psnr') for r in runs], 2)} |")
    steps = len(value(some, "ssim", "best_per_step"))
    from vaecli.models import parse_options

    reference = baselines(folder, parse_options("svg", some.get("model_options") or {})["n_past"],
                          value(some, "ssim", "videos"))
    shown = [s for s in STEPS_SHOWN if s <= steps]
    for metric, digits in (("ssim", 3), ("psnr", 2)):
        print(f"\n{metric.upper()} per predicted step, best of {samples} (mean over seeds; in brackets the mean "
              f"over the {samples} samples):\n")
        print("| decoder | " + " | ".join(f"step {s}" for s in shown) + " |")
        print("|---|" + "---|" * len(shown))
        for n in names:
            best = np.mean([value(r, metric, "best_per_step") for r in rows[n]], 0)
            mean = np.mean([value(r, metric, "mean_per_step") for r in rows[n]], 0)
            print(f"| {LABELS.get(n, n)} | " + " | ".join(f"{best[s - 1]:.{digits}f} ({mean[s - 1]:.{digits}f})"
                                                        for s in shown) + " |")
        for name, per_step in reference.items():
            print(f"| {name} | " + " | ".join(f"{per_step[metric][s - 1]:.{digits}f}" for s in shown) + " |")
    groups = some["latent_groups"]
    print("\nKL of each predicted frame (nats per test video, mean over seeds):\n")
    print("| decoder | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for n in names:
        kl = [json.loads(r["test"]["results"]["kl"]["per_group"]) for r in rows[n]]
        print(f"| {LABELS.get(n, n)} | " + " | ".join(f"{np.mean([k[g] for k in kl]):.2f}" for g in groups) + " |")
    if REFERENCE in rows:
        ref = {r["seed"]: r for r in rows[REFERENCE]}
        print(f"\nAgainst {LABELS[REFERENCE]}, seed by seed (positive: better than SVG's setting):\n")
        for n in names:
            if n == REFERENCE:
                continue
            pairs = [(r, ref[r["seed"]]) for r in rows[n] if r["seed"] in ref]
            if not pairs:
                continue
            parts = []
            for metric, digits, sign in (("bpd", 4, -1), ("ssim", 4, 1), ("psnr", 2, 1)):
                d = [sign * (value(a, metric) - value(b, metric)) for a, b in pairs]
                mean = (f" (mean {np.mean(d):+.{digits}f} ± {np.std(d, ddof=1) / np.sqrt(len(d)):.{digits}f})"
                        if len(d) > 1 else "")  # the standard error of the paired differences
                parts.append(f"{metric} " + ", ".join(f"{x:+.{digits}f}" for x in d) + mean)
            print(f"- {LABELS.get(n, n)} (seeds {', '.join(str(a['seed']) for a, _ in pairs)}): " + "; ".join(parts))
    return rows, names, reference, samples


def figure(rows, names, reference, samples, out):
    """SSIM and PSNR per predicted step: each setting's best of N (solid, mean over seeds;
    the band is its range over the seeds) and the two predictions without a model (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in zip(axes, ("ssim", "psnr"), ("SSIM", "PSNR (dB)")):
        for i, n in enumerate(names):
            per_seed = np.array([value(r, metric, "best_per_step") for r in rows[n]])
            steps = np.arange(1, per_seed.shape[1] + 1)
            seeds = ", ".join(str(r["seed"]) for r in rows[n])
            ax.plot(steps, per_seed.mean(0), color=f"C{i}", label=f"{LABELS.get(n, n)} (seeds {seeds})")
            ax.fill_between(steps, per_seed.min(0), per_seed.max(0), color=f"C{i}", alpha=0.2, linewidth=0)
        for style, (name, per_step) in zip((":", "--"), reference.items()):
            ax.plot(np.arange(1, len(per_step[metric]) + 1), per_step[metric], color="grey", linestyle=style,
                    label=name)
        ax.set(xlabel="predicted frame (after the context)", ylabel=f"{title}, best of {samples}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    args = sys.argv[1:]
    picture = None
    if "--figure" in args:
        i = args.index("--figure")
        picture = args[i + 1]
        del args[i : i + 2]
    found = main(args[0] if args else "study-svg")
    if picture:
        figure(*found, picture)
