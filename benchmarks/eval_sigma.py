"""The sigma-VAE's evaluation sigma: the running average of the last epoch's batch MSE
(what training stores) against the maximum-likelihood sigma of the final model, the
root MSE of one pass over the training data (issue 22, item 5).

    python benchmarks/eval_sigma.py RUN.h5 [RUN.h5 ...] [--json out.json]

For each `sigma` run: both sigmas, and the test ELBO (nats, density; one posterior
sample, seed 0) and importance-weighted bound (K=10) evaluated with each.  The test
split's own root MSE is printed for context only: using it would look at the
evaluated data.  The bits/dim are not affected: the PMF has its own fitted sigma.

A run trained with --validation has a third: the root MSE of the held-out validation
split (the same images training held out, never the test split), the estimate of the
sigma for unseen data; its one-pass sigma then uses only the images it trained on.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vaecli import runfile
from vaecli.calibration import softclipped_sigma
from vaecli.evaluate import evaluate
from vaecli.models.protocol import draw_noise, target_of
from vaecli.runs import hold_out_validation, load_model, load_split, prepare_images


@torch.no_grad()
def pass_mse(model, images, batch=500, seed=0) -> float:
    """MSE of the decoder mean at one posterior sample, over every training image (eval mode)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    top = 2**model.likelihood.n_bits - 1
    total, count = 0.0, 0
    for start in range(0, images.shape[0], batch):
        x = images[start : start + batch]
        out = model.posterior(model.encode(x), draw_noise(model, x.shape[0], gen))
        y = target_of(x, out).double() / top
        total += float(((model.likelihood.mean(out.raw).double() - y) ** 2).sum())
        count += y.numel()
    return total / count


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for path in args.runs:
        run = runfile.read(path)
        if run.config.likelihood != "sigma":
            continue
        model = load_model(run, "cpu")
        train_split = load_split(run.config.dataset, "train", run.config.image_size)
        if train_split.checksum != run.attrs["dataset_checksum"]:
            raise SystemExit(f"{path}: the training data {run.config.dataset} here differs from the run's")
        validation = None
        if run.config.validation:
            train_split, held_out = hold_out_validation(train_split, run.config.validation)
            validation = torch.from_numpy(prepare_images(held_out.images, run.config))
        train = torch.from_numpy(prepare_images(train_split.images, run.config))
        test = torch.from_numpy(prepare_images(load_split(run.config.dataset, "test", run.config.image_size).images, run.config))
        running = float(run.calibration["eval_sigma"])
        mse = pass_mse(model, train)
        final = softclipped_sigma(mse, run.config.log_sigma_min)
        row = {"run": path, "model": run.config.model, "epochs": int(run.attrs["epochs_done"]),
               "running_sigma": running, "running_mse": float(run.calibration["mse"]), "pass_sigma": final,
               "pass_mse": mse, "test_mse_context_only": pass_mse(model, test)}
        sigmas = [("running", running), ("pass", final)]
        if validation is not None:
            row["validation_mse"] = pass_mse(model, validation)
            row["validation_sigma"] = softclipped_sigma(row["validation_mse"], run.config.log_sigma_min)
            sigmas.append(("validation", row["validation_sigma"]))
        for name, sigma in sigmas:
            model.likelihood.sigma = sigma
            r = evaluate(model, test, ["elbo", "nll"], iw_samples=10, seed=0)
            row[f"elbo_{name}"], row[f"nll_{name}"] = r["elbo"]["value"], r["nll"]["value"]
            row[f"elbo_{name}_stderr"] = r["elbo"]["stderr"]
        rows.append(row)
        print(f"{path}: {row['model']}, {row['epochs']} epochs: sigma running {running:.5f} (MSE "
              f"{row['running_mse']:.6f}), one pass {final:.5f} (MSE {mse:.6f}); test MSE {row['test_mse_context_only']:.6f}; "
              f"test ELBO {row['elbo_running']:.2f} vs {row['elbo_pass']:.2f} (± {row['elbo_pass_stderr']:.2f}), "
              f"IW-NLL {row['nll_running']:.2f} vs {row['nll_pass']:.2f} nats"
              + (f"; validation sigma {row['validation_sigma']:.5f} (MSE {row['validation_mse']:.6f}): test ELBO "
                 f"{row['elbo_validation']:.2f}, IW-NLL {row['nll_validation']:.2f}" if validation is not None else ""),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
