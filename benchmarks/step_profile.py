"""Where the training step's time goes: ms per step by variant, and its kernels.

    python benchmarks/step_profile.py --device cuda [--batch 128 --batch 1024]
        [--precision float32 --precision bf16] [--memory-format contiguous
        --memory-format channels_last] [--likelihood sigma] [--steps 50] [--profile]
        [--json FILE]

vaecli's training step (`vaecli.training.step.TrainStep`: forward, likelihood, backward, fused
Adam, the device-side sums; captured in a CUDA graph on CUDA, as `vae train` does) on
the paper's ConvVAE with mnist5k batches (1x28x28), timed over ``--steps`` steps after
the warm-up and capture (CUDA events; wall clock on the CPU), for each batch size,
precision and memory format:

* ``contiguous`` is what `vae train` does;
* ``channels_last`` converts the model's weights and each batch to channels-last
  (NHWC) memory, the layout cuDNN's tensor-core convolutions work in natively, as
  `vae train --memory-format channels_last` does (which converts the weights only: on
  these 1-channel images the batch's two layouts are the same memory; on 3-channel
  data the first convolution converts its input itself).

With ``--profile`` each variant's steps also run under ``torch.profiler`` and the table
lists the kernels (CUDA; top-level operators on the CPU) by total time: per step, how
many there are, their summed time, and what share of the step's time that is (on CUDA
the rest is launch gaps and idle; on the CPU operators overlap threads and the share
means little).  Per step includes drawing the batch (a few small kernels) and, under
the graph, copying it into the graph's inputs.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch

from vaecli import datasets
from vaecli.config import TrainConfig
from vaecli.training.step import GRAPH_WARMUP_STEPS, EpochSums, NonFiniteGuard, TrainStep, make_optimizer
from vaecli.runs import build_model

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def make_step(device, batch, precision, memory_format, likelihood, images, graph=True):
    """A TrainStep (captured on CUDA if ``graph``) and a function giving it its next batch."""
    torch.manual_seed(0)
    config = TrainConfig(likelihood=likelihood, precision=precision)
    model = build_model(config, tuple(images.shape[1:]), device)
    fmt = MEMORY_FORMATS[memory_format]
    model = model.to(memory_format=fmt)
    opt = make_optimizer(model.parameters(), config.lr)
    step = TrainStep(model, model, opt, beta=config.beta, world=1, precision=precision, device=device,
                     levels=256, cuda_graph=graph and device.type == "cuda", full_batch=batch)
    data = torch.from_numpy(images).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    sums, guard = EpochSums(device), NonFiniteGuard(1 << 30, device)

    def run_one():
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen, device=device)
        x = data[idx].contiguous(memory_format=fmt)
        eps = torch.randn(batch, config.model_options["latent_dim"], generator=gen, device=device)
        return step(x, x, eps, batch, sums, guard)

    return step, run_one


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(device, run_one, steps):
    """Milliseconds per step over ``steps`` steps."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            run_one()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        run_one()
    return (time.perf_counter() - t0) * 1e3 / steps


def profile_steps(device, run_one, steps, top):
    """(per-step kernel count, per-step kernel ms, [(name, calls per step, ms per step)])."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    _sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run_one()
        _sync(device)
    totals, calls = collections.Counter(), collections.Counter()
    for event in prof.events():
        if device.type == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = event.device_time_total
        else:
            if event.cpu_parent is not None:  # top-level operators only: no double counting
                continue
            us = event.cpu_time_total
        totals[event.name] += us
        calls[event.name] += 1
    rows = [(name, calls[name] / steps, us / steps / 1e3) for name, us in totals.most_common(top)]
    return sum(calls.values()) / steps, sum(totals.values()) / steps / 1e3, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--precision", action="append", choices=("float32", "bf16"))
    p.add_argument("--memory-format", action="append", choices=sorted(MEMORY_FORMATS))
    p.add_argument("--likelihood", default="sigma")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10,
                   help=f"steps before timing, at least {GRAPH_WARMUP_STEPS + 1} (the capture is among them)")
    p.add_argument("--eager", action="store_true", help="also each variant without the CUDA graph")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", help="write the results here as JSON")
    args = p.parse_args(argv)
    if args.warmup < GRAPH_WARMUP_STEPS + 1:
        p.error(f"--warmup must be at least {GRAPH_WARMUP_STEPS + 1}: the timed steps must come after the capture")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as vae train does
        if args.profile:
            # the profiler's CUDA side must start before the first graph is captured, or the
            # kernels replayed from it can go missing from its trace (pytorch#75504); a
            # private helper, where this torch has it.  Kernel times inside a replayed graph
            # are still the profiler's view: ms/step (CUDA events) is the number to trust
            init = getattr(getattr(torch.profiler, "_utils", None), "_init_for_cuda_graphs", None)
            if init is not None:
                init()
    images = datasets.load("mnist5k", "train").images
    # each row is printed (and the JSON rewritten) as soon as it is measured, so that a
    # run stopped by a time limit keeps what it measured
    print(f"training step on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{args.likelihood}, 1x28x28, {args.steps} steps after {args.warmup}\n")
    print("| batch | precision | memory format | ms/step | images/s | CUDA graph | kernels/step | kernel ms/step "
          "| kernel share |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    results = []
    for batch in args.batch or [128]:
        for precision in args.precision or ["float32"]:
            for memory_format in args.memory_format or ["contiguous"]:
                for graph in (True, False) if args.eager and device.type == "cuda" else (True,):
                    step, run_one = make_step(device, batch, precision, memory_format, args.likelihood, images,
                                              graph)
                    for _ in range(args.warmup):
                        run_one()
                    ms = time_steps(device, run_one, args.steps)
                    r = {"batch": batch, "precision": precision, "memory_format": memory_format,
                         "ms_per_step": ms, "images_per_s": batch / ms * 1e3, "graph": step.graph_state}
                    if args.profile:
                        count, kernel_ms, top = profile_steps(device, run_one, min(args.steps, 20), args.top)
                        r.update(kernels_per_step=count, kernel_ms_per_step=kernel_ms, top=top)
                    results.append(r)
                    del step, run_one
                    k = (f"{r['kernels_per_step']:.0f} | {r['kernel_ms_per_step']:.3f} | "
                         f"{100 * r['kernel_ms_per_step'] / r['ms_per_step']:.0f}%") if "top" in r else "- | - | -"
                    print(f"| {r['batch']} | {r['precision']} | {r['memory_format']} | {r['ms_per_step']:.3f} | "
                          f"{r['images_per_s']:,.0f} | {r['graph']} | {k} |", flush=True)
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump(results, f, indent=1)
    for r in results:
        if "top" in r:
            print(f"\n{r['batch']} {r['precision']} {r['memory_format']} (CUDA graph {r['graph']}): "
                  f"top {len(r['top'])} by time per step\n")
            print("| kernel | calls/step | ms/step |")
            print("|---|---|---|")
            for name, per_step, ms in r["top"]:
                print(f"| {name[:90]} | {per_step:.1f} | {ms:.4f} |")

if __name__ == "__main__":
    main()
