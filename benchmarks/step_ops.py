"""Kernel-launching operations in one training step, counted on the CPU.

    python benchmarks/step_ops.py [--likelihood sigma --likelihood logistic-mixture ...]
        [--batch 128] [--baseline REV] [--json]

Inside a captured CUDA graph a step costs its kernels' run time plus a launch gap of
a few microseconds for each kernel, and a small VAE's step is hundreds of small
kernels (docs/performance.md), so the number of kernels is one of the few costs of the
step that can be counted without a GPU.  This runs vaecli's training step
(`vaecli.training.step.TrainStep`, eager, float32, the paper's ConvVAE on 1x28x28) on the CPU
under a TorchDispatchMode and counts the ATen operations it dispatches, leaving out
those that only return a view of their input (no kernel), by phase: forward (model,
likelihood, KL), backward, and the bookkeeping after it (finiteness check, Adam, the
device-side sums and guard); and the likelihood and KL alone, forward and backward.
On CUDA an ATen operation is usually one kernel; cuDNN convolutions and the fused
Adam's multi-tensor chunks may be more than one.  The torch backend's range check of
the data (two reductions read on the host, ``_check_x``) runs on the CPU only: it is
counted apart, as "CPU-only data check", and left out of every other column.

``--baseline REV`` counts the same at git revision REV (a temporary worktree) in the
same run and prints both.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the vaecli of this checkout, not whichever is installed
DATA_CHECK = "CPU-only data check"
NO_KERNEL = {"_record_function_enter_new", "_record_function_exit"}  # profiler marks


def _counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        """ATen operations by phase, leaving out those that only return a view."""

        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()
            self.phase = "forward"

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            returns = func._schema.returns
            view = bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)
            name = func.overloadpacket.__name__
            if not view and name not in NO_KERNEL:
                self.ops[(self.phase, name)] += 1
            return func(*args, **(kwargs or {}))

    return Counter()


def _data_check_apart(backend, counters):
    """Count what the torch backend's CPU-only range check dispatches as DATA_CHECK."""
    real = backend._check_x

    def check(*a, **k):
        saved = [c.phase for c in counters]
        for c in counters:
            c.phase = DATA_CHECK
        try:
            return real(*a, **k)
        finally:
            for c, phase in zip(counters, saved):
                c.phase = phase

    backend._check_x = check
    return real


def _by_phase(counter) -> dict:
    phases = collections.Counter()
    for (phase, _), n in counter.ops.items():
        phases[phase] += n
    return dict(phases)


def count(likelihood: str, batch: int) -> dict:
    """{phase: operations} of one training step, and of the likelihood and KL alone."""
    import torch

    from vaecli.api import gaussian_kl
    from vaecli.backends import torch_backend
    from vaecli.config import TrainConfig
    from vaecli.training.step import EpochSums, NonFiniteGuard, TrainStep, make_optimizer
    from vaecli.runs import build_model

    torch.manual_seed(0)
    config = TrainConfig(likelihood=likelihood)
    model = build_model(config, (1, 28, 28), torch.device("cpu"))
    opt = make_optimizer(model.parameters(), 1e-3)
    step = TrainStep(model, model, opt, beta=1.0, world=1, precision="float32", device="cpu", levels=256)
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    eps = torch.randn(batch, config.model_options["latent_dim"])
    sums, guard = EpochSums("cpu"), NonFiniteGuard(2, "cpu")
    step(x, x, eps, batch, sums, guard)  # Adam's state exists from here on

    counter, alone = _counter(), _counter()
    real_check = _data_check_apart(torch_backend, [counter, alone])
    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):  # the step's one backward; what follows it is bookkeeping
        counter.phase = "backward"
        try:
            return real_backward(self, *a, **k)
        finally:
            counter.phase = "bookkeeping"

    torch.Tensor.backward = backward
    try:
        with counter:
            step(x, x, eps, batch, sums, guard)
    finally:
        torch.Tensor.backward = real_backward

    raw = torch.randn(batch, model.likelihood.out_channels(1), 28, 28, requires_grad=True)
    mu = torch.randn(batch, config.model_options["latent_dim"], requires_grad=True)
    logvar = torch.randn(batch, config.model_options["latent_dim"], requires_grad=True)
    try:
        with alone:
            (-(model.likelihood.log_prob(x, raw) - gaussian_kl(mu, logvar)).sum()).backward()
    finally:
        torch_backend._check_x = real_check
    return {"likelihood": likelihood, "step": _by_phase(counter), "likelihood+KL": _by_phase(alone),
            "ops": {f"{p}/{n}": c for (p, n), c in sorted(counter.ops.items())}}


def counts_at(rev: str, likelihoods, batch: int) -> list:
    """The counts of git revision ``rev``, from a temporary worktree."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            # this script, run from the worktree: it counts the vaecli beside it
            script = tree / "benchmarks" / "_step_ops_now.py"
            script.parent.mkdir(exist_ok=True)
            script.write_text(Path(__file__).read_text())
            args = [sys.executable, str(script), "--batch", str(batch), "--raw"]
            for name in likelihoods:
                args += ["--likelihood", name]
            run = subprocess.run(args, cwd=tree, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"error: counting at {rev} failed:\n{run.stderr}")
            out = run.stdout
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True,
                           capture_output=True)  # fmt: skip
    return json.loads(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--likelihood", action="append")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--baseline", help="git revision to count the same at")
    p.add_argument("--json", action="store_true")
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # JSON only (for --baseline)
    args = p.parse_args(argv)
    names = args.likelihood or ["sigma", "gaussian-pixel", "logistic-mixture"]
    ours = [count(name, args.batch) for name in names]
    if args.raw:
        print(json.dumps(ours))
        return
    base = counts_at(args.baseline, names, args.batch) if args.baseline else None
    phases = ("forward", "backward", "bookkeeping")
    print(f"ATen operations launching kernels per training step (CPU, float32, B={args.batch}, 1x28x28)\n")
    print("| likelihood | " + " | ".join(phases) + f" | step total | likelihood+KL fwd+bwd alone | {DATA_CHECK} |")
    print("|" + "---|" * (len(phases) + 4))

    def cell(now, before):
        return f"{before} → {now}" if before is not None else str(now)

    for i, row in enumerate(ours):
        b = base[i] if base else None

        def get(r, key, phase=None):
            if r is None:
                return None
            d = r[key]
            return d.get(phase, 0) if phase else sum(v for k, v in d.items() if k != DATA_CHECK)

        cells = [cell(get(row, "step", ph), get(b, "step", ph)) for ph in phases]
        cells.append(cell(get(row, "step"), get(b, "step")))
        cells.append(cell(get(row, "likelihood+KL"), get(b, "likelihood+KL")))
        cells.append(cell(get(row, "step", DATA_CHECK), get(b, "step", DATA_CHECK)))
        print(f"| {row['likelihood']} | " + " | ".join(cells) + " |")
    if args.json:
        print(json.dumps({"current": ours, "baseline": base, "baseline_rev": args.baseline}, indent=1))


if __name__ == "__main__":
    main()
