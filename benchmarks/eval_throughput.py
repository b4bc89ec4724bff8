"""Evaluation throughput (images/s): bits/dim over a test set, the importance-weighted
NLL with K samples, and FID feature extraction, each against a plain loop in the same run.

    python benchmarks/eval_throughput.py --device cpu [--nll-images 20 --iw-samples 1000 --fid-images 200]

The model is the default ConvVAE with the sigma-VAE decoder (untrained: the cost does
not depend on the weights) sized for the dataset (default the bundled mnist5k, whose
test split has 1,000 images).

- bits/dim: `vaecli.evaluate.evaluate(..., ["bpd"], elbo_samples=1)` (uint8 data on the
  device, batches indexed there) against the loop most VAE code uses: a DataLoader over
  float tensors, encode, one posterior sample, decode, the discretized log-likelihood,
  `.item()` per batch.
- NLL: `evaluate(..., ["nll"], iw_samples=K)` against a loop that repeats each image K
  times in one batch (chunks of `--chunk` rows) and takes a logsumexp per image.
- FID features: `vaecli.fid.FeatureExtractor.features` (Inception-v3 pool features,
  resize to 299 included) on test images; its baseline is the same network called
  one image at a time.  Needs the Inception weights (`vae weights fetch inception`);
  the row is skipped without them.
Each timing is the best of `--repeats` after one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from vaecli import datasets
from vaecli.config import TrainConfig
from vaecli.evaluate import evaluate
from vaecli.runs import build_model, resolve_device
from vaecli.units import bits_per_dim


def _best(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return min(times)


def baseline_bpd(model, images, batch):
    """The plain loop: DataLoader of floats, .item() per batch.  Returns bits/dim."""
    from torch.utils.data import DataLoader, TensorDataset

    device = next(model.parameters()).device
    loader = DataLoader(TensorDataset(torch.from_numpy(images).float()), batch_size=batch)
    lik = model.likelihood
    total, dims = 0.0, int(np.prod(images.shape[1:]))
    with torch.no_grad():
        for (x,) in loader:
            x = x.to(device)
            mu, logvar = model.encode(x.round().to(torch.uint8))
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(1)
            total += (lik.log_pmf(x.to(torch.uint8), model.decode(z)) - kl).sum().item()
    return bits_per_dim(total / len(images), dims)


def baseline_nll(model, images, k, chunk):
    """Each image repeated K times, decoded in chunks, logsumexp per image."""
    device = next(model.parameters()).device
    lik = model.likelihood
    out = []
    with torch.no_grad():
        for i in range(len(images)):
            x = torch.from_numpy(images[i : i + 1]).to(device)
            mu, logvar = model.encode(x)
            log_w = []
            for start in range(0, k, chunk):
                n = min(chunk, k - start)
                eps = torch.randn(n, mu.shape[1], device=device)
                z = mu + torch.exp(0.5 * logvar) * eps
                log_q = (-0.5 * (eps**2 + logvar + math.log(2 * math.pi))).sum(1)
                log_p = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(1)
                log_w.append(lik.log_pmf(x.expand(n, *x.shape[1:]), model.decode(z)) + log_p - log_q)
            out.append((torch.logsumexp(torch.cat(log_w), 0) - math.log(k)).item())
    return -float(np.mean(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--nll-images", type=int, default=20)
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=500, help="rows per decode in the NLL baseline")
    p.add_argument("--fid-images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args()
    device = resolve_device(args.device)
    test = datasets.load(args.dataset, "test").images
    config = TrainConfig(dataset=args.dataset)
    torch.manual_seed(0)
    model = build_model(config, tuple(test.shape[1:]), device).eval()
    model.likelihood.sigma = 0.2  # a fixed evaluation sigma, as a trained run file has
    x_all = torch.from_numpy(test)
    rows = []

    def row(task, images, ours, base):
        t_ours = _best(ours, args.repeats, device)
        t_base = _best(base, args.repeats, device)
        rows.append({"task": task, "images": images, "vaecli_img_s": images / t_ours,
                     "baseline_img_s": images / t_base, "speedup": t_base / t_ours})

    n = len(test)
    row(f"bits/dim, {n} test images", n,
        lambda: evaluate(model, x_all, ["bpd"], elbo_samples=1, batch_size=args.batch),
        lambda: baseline_bpd(model, test, args.batch))
    m = min(args.nll_images, n)
    row(f"IW NLL K={args.iw_samples}, {m} images", m,
        lambda: evaluate(model, x_all[:m], ["nll"], iw_samples=args.iw_samples, batch_size=args.batch),
        lambda: baseline_nll(model, test[:m], args.iw_samples, args.chunk))
    try:
        from vaecli import fid

        extractor = fid.FeatureExtractor(None, device)
    except Exception as exc:  # no weights here: report, do not fail the table
        rows.append({"task": "FID features", "error": f"{type(exc).__name__}: {exc}"[:160]})
    else:
        f = min(args.fid_images, n)
        few = test[:f]
        row(f"FID features, {f} images", f, lambda: extractor.features(few),
            lambda: [extractor.features(few[i : i + 1]) for i in range(f)])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nevaluation throughput, {args.dataset}, {name}, torch {torch.__version__}, best of {args.repeats}")
    print("| task | vaecli img/s | baseline img/s | vaecli / baseline |")
    print("|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['task']} | skipped: {r['error']} | | |")
        else:
            print(f"| {r['task']} | {r['vaecli_img_s']:.1f} | {r['baseline_img_s']:.1f} | {r['speedup']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "rows": rows, "args": vars(args)}, fh, indent=2)


if __name__ == "__main__":
    main()
