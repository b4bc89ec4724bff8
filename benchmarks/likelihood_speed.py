"""Forward+backward time of likelihoods per backend at a realistic size.

    python benchmarks/likelihood_speed.py --device cuda [--batch 128 --size 32 --channels 3]
        [--compile] [--graph] [--policies]

For each likelihood: torch eager, torch.compile (with --compile) and the CuPy fused
kernels through the torch bridge (on CUDA), each timed with CUDA events over
``--iters`` repetitions after warm-up; and the bytes-moved floor: raw read once, its
gradient written once, x read once, at the copy bandwidth measured on the same device
in the same run.  With --graph (CUDA) each variant is also captured in a CUDA graph
and its replay timed: the device time without Python's per-call cost, which is what
the likelihood costs inside vae train's captured step.  With --policies the CuPy rows
are timed under each way of getting the gradient in backward (keep / recompute /
defer: vaecli.backends.cupy_backend.torch_bridge.GRADIENT), the default one marked.
Prints a markdown table (and JSON with --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch

import vaecli
from vaecli import registry

DEFAULT_LIKELIHOODS = ("logistic-mixture", "logistic", "categorical", "sigma", "gaussian-pixel", "bitwise")


def _timer(device):
    if device.type == "cuda":

        def run(fn, iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / iters

    else:

        def run(fn, iters):
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - t) / iters

    return run


def copy_bandwidth(device, nbytes=256 * 2**20, iters=20):
    """Bytes per second of a device-to-device copy (read + write counted)."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    run = _timer(device)
    run(lambda: b.copy_(a), 3)
    return 2 * nbytes / run(lambda: b.copy_(a), iters)


def captured(step, device):
    """``step`` captured in a CUDA graph after a warm-up on a side stream: its replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


@contextlib.contextmanager
def gradient_policy(name, policy):
    """The torch bridge's gradient policy for ``name`` set to ``policy`` (None: as it is)."""
    if policy is None:
        yield
        return
    from vaecli.backends.cupy_backend import torch_bridge

    saved = torch_bridge.GRADIENT.get(name)
    torch_bridge.GRADIENT[name] = policy
    try:
        yield
    finally:
        if saved is None:
            del torch_bridge.GRADIENT[name]
        else:
            torch_bridge.GRADIENT[name] = saved


def bench(name, backend, device, batch, channels, size, iters, compile_it=False, graph=False):
    lik = vaecli.likelihood(name, backend=backend, sigma=None).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, 256, (batch, channels, size, size), generator=g, dtype=torch.uint8).to(device)
    raw = torch.randn(batch, lik.out_channels(channels), size, size, generator=g).to(device).requires_grad_()
    fn = lik.log_prob
    if compile_it:
        fn = torch.compile(lik.log_prob)

    def step():
        raw.grad = None
        fn(x, raw).sum().backward()

    run = _timer(device)
    if graph:
        step = captured(step, device)
    run(step, 3)  # warm-up (compilation, kernel caches)
    seconds = run(step, iters)
    moved = 2 * raw.numel() * raw.element_size() + x.numel()
    return seconds, moved


def _with_policies(variants, name, policies):
    """(backend, compiled, graph, policy) rows, each CuPy variant once per gradient policy
    with ``policies`` (else as it is), and the likelihood's default policy."""
    if not policies:
        return [v + (None,) for v in variants], None
    from vaecli.backends.cupy_backend import kernels, torch_bridge

    default = torch_bridge.GRADIENT.get(name, "keep")
    rows = []
    for v in variants:
        if v[0] == "cupy" and kernels.supports(name) and name != "sigma":  # sigma: always recompute
            kinds = torch_bridge.POLICIES if name == "logistic-mixture" else ("keep", "recompute")
            rows += [v + (p,) for p in kinds]
        else:
            rows.append(v + (None,))
    return rows, default


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--likelihood", action="append", choices=registry.NAMES)
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--graph", action="store_true", help="also time each variant replayed from a CUDA graph")
    p.add_argument("--policies", action="store_true",
                   help="time the CuPy rows under each gradient policy (keep, recompute, defer)")
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args()
    device = torch.device(args.device)
    names = args.likelihood or DEFAULT_LIKELIHOODS
    bandwidth = copy_bandwidth(device)
    variants = [("torch", False)]
    if args.compile:
        variants.append(("torch", True))
    if device.type == "cuda" and vaecli.get_backend("cupy").available()[0]:
        variants.append(("cupy", False))
    graphs = (False, True) if args.graph and device.type == "cuda" else (False,)
    variants = [(backend, compiled, graph) for backend, compiled in variants for graph in graphs]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"likelihood forward+backward, B={args.batch}, {args.channels}x{args.size}x{args.size}, {gpu}, "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s, torch {torch.__version__}")
    print("| likelihood | variant | ms | floor ms | time/floor | speed-up vs eager |")
    print("|---|---|---|---|---|---|")
    rows, eager = [], {}
    for name in names:
        timed, default = _with_policies(variants, name, args.policies)
        for backend, compiled, graph, policy in timed:
            label = "torch.compile" if compiled else ("cupy fused" if backend == "cupy" else "torch eager")
            label += " + CUDA graph" if graph else ""
            label += f" ({policy}{', default' if policy == default else ''})" if policy else ""
            try:
                with gradient_policy(name, policy):
                    seconds, moved = bench(name, backend, device, args.batch, args.channels, args.size,
                                           args.iters, compiled, graph)
            except Exception as exc:  # a benchmark row reports, it does not stop the table
                row = {"likelihood": name, "variant": label, "error": f"{type(exc).__name__}: {exc}"[:120]}
                print(f"| {name} | {label} | error: {row['error']} | | | |")
            else:
                floor = moved / bandwidth
                row = {"likelihood": name, "variant": label, "ms": seconds * 1e3, "floor_ms": floor * 1e3,
                       "fraction_of_floor": floor / seconds}
                if label == "torch eager":  # the first row of each likelihood
                    eager[name] = row["ms"]
                if name in eager:
                    row["speedup_vs_eager"] = eager[name] / row["ms"]
                print(f"| {name} | {label} | {row['ms']:.3f} | {row['floor_ms']:.4f} | "
                      f"{row['ms'] / row['floor_ms']:.1f} | {row.get('speedup_vs_eager', float('nan')):.1f} |",
                      flush=True)
            rows.append(row)
            if args.json:  # after every row, atomically: a run stopped at its time limit keeps what it measured
                with open(f"{args.json}.tmp", "w") as f:
                    json.dump({"device": gpu, "bandwidth": bandwidth, "rows": rows, "args": vars(args)}, f, indent=2)
                os.replace(f"{args.json}.tmp", args.json)


if __name__ == "__main__":
    main()
