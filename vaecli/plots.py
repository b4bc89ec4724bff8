"""Pictures of training runs, drawn with matplotlib (imported here only)."""

from __future__ import annotations

import math
import os

from .errors import VaeError


def training_curves(runs, out):
    """Test and train ELBO, test KL and the decoder sigma per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for run in runs:
        h = run.history
        if not len(h.get("epoch", [])):
            raise VaeError(f"{run.path} has no completed epoch to plot")
        label = f"{run.config.likelihood} ({os.path.basename(run.path)})"
        line, = axes[0].plot(h["epoch"], h["test_elbo"], marker="o", label=label)
        axes[0].plot(h["epoch"], h["train_elbo"], linestyle="--", color=line.get_color())
        axes[1].plot(h["epoch"], h["test_kl"], marker="o", color=line.get_color())
        if not all(math.isnan(v) for v in h["sigma"]):
            axes[2].plot(h["epoch"], h["sigma"], marker="o", color=line.get_color())
    axes[0].set(title="ELBO (solid test, dashed train)", xlabel="epoch", ylabel="nats / image")
    axes[1].set(title="KL (test)", xlabel="epoch", ylabel="nats / image")
    axes[2].set(title="decoder sigma", xlabel="epoch", ylabel="sigma", yscale="log")
    axes[0].legend(fontsize=8)
    _save(fig, out)


def group_rates(runs, out):
    """The test KL each latent group carries, per epoch: one panel per run."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        h = run.history
        columns = sorted((k for k in h if k.startswith("test_kl_group")), key=lambda k: int(k[len("test_kl_group"):]))
        if not columns:
            raise VaeError(f"{run.path} has one latent group; --kind groups is for models with several (hvae)")
        names = json.loads(run.attrs.get("latent_groups", "[]"))
        names = names if len(names) == len(columns) else [c[len("test_kl_"):] for c in columns]
        for column, name in zip(columns, names):
            ax.plot(h["epoch"], h[column], marker="o", label=name)
        ax.set(title=f"{run.config.model} {run.config.likelihood} ({os.path.basename(run.path)})", xlabel="epoch",
               ylabel="test KL of the group (nats / image)", yscale="log")
        ax.legend(fontsize=7)
    _save(fig, out)


def rate_distortion(runs, out):
    """KL (rate, nats) against MSE (distortion), one point per run; FID as colour
    where the runs have it.  Uses the stored test evaluations (vae eval / vae sweep).
    Runs with one label (seeds of a sweep) share one annotation, at the mean of their points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for run in runs:
        ev = run.evaluations.get("test", {})
        if "kl" not in ev or "mse" not in ev:
            raise VaeError(f"{run.path} has no stored test kl and mse; run `vae eval {run.path} --metric kl --metric mse`")
        fid = ev.get("fid", {}).get("value")
        label = run.config.likelihood + (f" b={run.config.beta:g}" if run.config.likelihood == "gaussian" else "")
        points.append((ev["kl"]["value"], ev["mse"]["value"], fid, label))
    fig, ax = plt.subplots(figsize=(7, 5))
    fids = [p[2] for p in points]
    if all(f is not None for f in fids):
        sc = ax.scatter([p[0] for p in points], [p[1] for p in points], c=fids, cmap="viridis_r", s=60)
        fig.colorbar(sc, ax=ax, label="FID")
    else:
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=60)
    for label, (kl, mse, n) in rd_labels(points).items():
        ax.annotate(label if n == 1 else f"{label} ({n} runs)", (kl, mse), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlabel="rate: KL (nats / image)", ylabel="distortion: MSE on [0, 1]", yscale="log",
           title="rate-distortion of the runs (test split)")
    _save(fig, out)


def rd_labels(points):
    """label -> (mean KL, geometric mean MSE, number of runs) of (kl, mse, fid, label)
    points; the MSE mean is geometric since the axis is logarithmic."""
    groups = {}
    for kl, mse, _, label in points:
        groups.setdefault(label, []).append((kl, mse))
    return {label: (sum(k for k, _ in g) / len(g), math.exp(sum(math.log(m) for _, m in g) / len(g)), len(g))
            for label, g in groups.items()}


def prediction_curves(runs, out):
    """SSIM and PSNR per future time step of video models' stored evaluations (vae eval
    --metric ssim --metric psnr): the best sampled future (solid) and the mean over
    samples (dashed), one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = 0
    for i, run in enumerate(runs):
        stored = run.evaluations.get("test", {})
        label = f"{run.config.likelihood} β={run.config.beta:g} s{run.config.seed} ({os.path.basename(run.path)})"
        for ax, metric in zip(axes, ("ssim", "psnr")):
            r = stored.get(metric)
            if not r or not r.get("applicable", True) or "best_per_step" not in r:
                continue
            steps = range(int(r["context_frames"]) + 1, int(r["context_frames"]) + 1 + len(r["best_per_step"]))
            ax.plot(steps, r["best_per_step"], color=f"C{i % 10}", label=label)
            ax.plot(steps, r["mean_per_step"], color=f"C{i % 10}", linestyle="--")
            drawn += 1
    if not drawn:
        raise VaeError("no run holds ssim or psnr results; run vae eval RUN --metric ssim --metric psnr first")
    for ax, metric in zip(axes, ("SSIM", "PSNR (dB)")):
        ax.set(xlabel="predicted frame (time step)", ylabel=f"{metric}: best of N (solid), mean (dashed)")
    axes[0].legend(fontsize=7)
    _save(fig, out)


def _save(fig, out):
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = os.fspath(out) + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    except OSError as exc:
        raise VaeError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
