"""Training throughput of `vae train` against a plain PyTorch loop, same model, same run.

    python benchmarks/train_throughput.py --device cpu --batch 128 --batch 1024 --epochs 2 \
        [--variant float32 --variant eager --variant bf16 --variant compile --variant compile+bf16
         --variant channels_last --variant channels_last+bf16]
        [--repeat 15] [--seeds 2]

vaecli: `vaecli.training.train` (data resident on the device, batches indexed there, the
sigma-VAE likelihood), timed per epoch from its own history (training steps plus the
test-ELBO pass; checkpoint writes excluded).  On CUDA its default step is captured in
a CUDA graph; the `eager` variant turns that off.  Baseline: the loop most VAE code uses
(the sigma-VAE authors' style): a DataLoader over float tensors, eager forward and
backward, the optimal-sigma Gaussian loss written inline, `.item()` every step, and the
same test pass.  Both use the same ConvVAE architecture and the bundled mnist5k.
The first epoch is a warm-up; the table reports the best of the remaining ones.
``--repeat R`` makes an epoch R passes over the 4,000 training images (both loops;
15 gives MNIST's 60,000), so that per-epoch costs (the baseline's DataLoader workers
start each epoch, the test pass) weigh what they weigh on a real dataset.
``--seeds N`` runs both loops with seeds 0..N-1 and reports the mean images/s and the
test ELBO as mean ± sd over seeds, the seed noise that the ELBOs are compared within.
Both report the test ELBO after the last epoch (nats/image, one posterior sample,
sigma = sqrt of the last epoch's training MSE), so the speed-up can be checked for
the same result.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from vaecli import datasets
from vaecli.config import TrainConfig
from vaecli.runs import build_model, resolve_device
from vaecli.training import train


def baseline_epoch_seconds(images, test, batch, device, epochs, workers, model_config=None):
    """Seconds per epoch of the plain loop (best of epochs 2..N) and its last test ELBO."""
    from torch.utils.data import DataLoader, TensorDataset

    from vaecli.models.protocol import total_kl

    model = build_model(model_config or TrainConfig(), tuple(images.shape[1:]), device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = TensorDataset(torch.from_numpy(images).float())
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False)
    test_x = torch.from_numpy(test).float()

    def loss_of(x, mse=None):
        raw, groups = model(x, torch.randn(x.shape[0], model.latent_size, device=x.device))[:2]
        y, m = x / 255.0, torch.sigmoid(raw)
        sq = (y - m) ** 2
        log_sigma = 0.5 * torch.log(sq.mean() if mse is None else mse)
        log_sigma = -6 + F.softplus(log_sigma + 6)
        rec = (0.5 * sq / (2 * log_sigma).exp() + log_sigma + 0.5 * math.log(2 * math.pi)).sum()
        kl = total_kl(groups).sum()  # the model's KL, as its own code would sum it
        return (rec + kl) / x.shape[0], sq.sum()

    times = []
    for _ in range(epochs):
        # the workers fork at iter(loader): collect the CUDA tensors left over from the
        # runs before, so that no child process frees one (CUDA cannot be used there)
        gc.collect()
        start = time.perf_counter()
        model.train()
        sse = 0.0
        for (x,) in loader:
            x = x.to(device)
            loss, sq = loss_of(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the usual per-step logging read
            sse += sq.item()
        model.eval()
        elbo = 0.0
        mse = torch.tensor(sse / images.size, device=device)
        with torch.no_grad():
            for i in range(0, len(test_x), 512):
                x = test_x[i : i + 512].to(device)
                elbo -= loss_of(x, mse)[0].item() * x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return (min(times[1:]) if len(times) > 1 else times[0]), elbo / len(test_x)


VARIANTS = {  # name -> TrainConfig options
    "float32": {},
    "eager": {"cuda_graph": False},
    "bf16": {"precision": "bf16"},
    "compile": {"compile": True},
    "compile+bf16": {"compile": True, "precision": "bf16"},
    "channels_last": {"memory_format": "channels_last"},
    "channels_last+bf16": {"memory_format": "channels_last", "precision": "bf16"},
}


def vaecli_epoch_seconds(batch, device, epochs, variant, data, seed=0, model=None):
    """Best epoch time (epochs 2..N) and the last test ELBO of `vaecli.training.train`."""
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(batch_size=batch, epochs=epochs, device=str(device), seed=seed,
                             **(model or {}), **VARIANTS[variant])
        run = train(config, os.path.join(tmp, "r.h5"), progress=False, log=lambda s: None, data=data)
    seconds = list(run.history["seconds"])
    return (min(seconds[1:]) if len(seconds) > 1 else seconds[0]), float(run.history["test_elbo"][-1])


def _mean(values):
    return sum(values) / len(values)


def _spread(values):
    """'m' for one value, 'm ± sd' (sample sd) for several."""
    m = _mean(values)
    if len(values) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the baseline")
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                   help="vaecli configurations to time [default: float32]")
    p.add_argument("--repeat", type=int, default=1, help="passes over the training images per epoch")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for both loops (mean, and ELBO sd)")
    p.add_argument("--json", default=None, help="write the rows here (rewritten after each row)")
    p.add_argument("--model", default="conv", help="the model both loops train (vae models)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    from vaecli.models import parse_options

    model = {"model": args.model, "model_options": parse_options(
        args.model, dict(pair.split("=", 1) for pair in args.model_option))}
    # the same stability measures in both loops: none (vaecli's model defaults are turned off)
    model.update(grad_clip=0.0, grad_skip=0.0, ema=0.0)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    device = resolve_device(args.device)
    train_set, test_set = datasets.load("mnist5k", "train"), datasets.load("mnist5k", "test")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    train_set = dataclasses.replace(train_set, images=np.tile(train_set.images, (args.repeat, 1, 1, 1)),
                                    labels=None)
    n = len(train_set.images)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"\ntraining throughput, mnist5k x{args.repeat} ({n} images an epoch, 28x28), sigma-VAE, "
          f"model {args.model} {model['model_options']}, {name}, torch {torch.__version__}")
    print(f"epochs {args.epochs} (best of epochs 2..N), baseline DataLoader workers {args.workers}, "
          f"seeds {args.seeds} (means; test ELBO mean ± sd over seeds)")
    print("| batch | vaecli variant | baseline images/s | vaecli images/s | ratio | baseline test ELBO | "
          "vaecli test ELBO |")
    print("|---|---|---|---|---|---|---|")
    seeds = range(args.seeds)
    report = {"device": name, "torch": torch.__version__, "images_per_epoch": n, "epochs": args.epochs,
              "model": args.model, "model_options": model["model_options"],
              "workers": args.workers, "seeds": args.seeds, "rows": []}
    for batch in args.batch or (128, 1024):
        base = []
        for seed in seeds:
            torch.manual_seed(seed)
            base.append(baseline_epoch_seconds(train_set.images, test_set.images, batch, device, args.epochs,
                                               args.workers, TrainConfig(**model)))
        for variant in args.variant or ["float32"]:
            ours = [vaecli_epoch_seconds(batch, device, args.epochs, variant, (train_set, test_set), seed, model)
                    for seed in seeds]
            base_rate, our_rate = _mean([n / t for t, _ in base]), _mean([n / t for t, _ in ours])
            print(f"| {batch} | {variant} | {base_rate:,.0f} | {our_rate:,.0f} | {our_rate / base_rate:.2f} | "
                  f"{_spread([e for _, e in base])} | {_spread([e for _, e in ours])} |",
                  flush=True)
            report["rows"].append({
                "batch": batch, "variant": variant, "ratio": our_rate / base_rate,
                "baseline_images_per_s": [n / t for t, _ in base], "vaecli_images_per_s": [n / t for t, _ in ours],
                "baseline_test_elbo": [e for _, e in base], "vaecli_test_elbo": [e for _, e in ours]})
            if args.json:  # whole or not at all: a time limit may stop the process at any point
                with open(f"{args.json}.tmp", "w") as f:
                    json.dump(report, f, indent=1)
                os.replace(f"{args.json}.tmp", args.json)


if __name__ == "__main__":
    main()
