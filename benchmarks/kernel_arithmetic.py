"""Arithmetic cost of the fused CuPy kernels, measured without a GPU, against the
kernels of another git revision in the same run.

    python benchmarks/kernel_arithmetic.py --baseline REV [--batch 16] [--size 32]
        [--repeat 5] [--json]

The logistic mixture is bound by arithmetic, not memory (docs/performance.md): its
time on a GPU follows the transcendental functions it evaluates per pixel and
component.  This benchmark prices that arithmetic two ways, for the working tree's
kernels and for ``--baseline``'s (vaecli/backends/cupy_backend/kernels.py at REV):

* host time: the kernel source compiled as host C++ (g++ -O2, float32,
  vaecli.backends.cupy_backend.host) and run on one CPU core through the same
  ``kernels.evaluate`` as on a GPU, at B x 3 x size x size with K = 10 components
  (logistic mixture) and for the single logistic; per path: value only, value then
  recomputed gradient, value keeping the gradient then scaling it (the mixture's
  "defer").  The best of ``--repeat`` runs.
* static PTX: instructions per kernel in ``nvcc -ptx -arch=sm_90`` output (float32),
  when nvcc is on PATH.  Static counts ignore branches not taken, so host time is the
  better guide; neither is a GPU measurement.

Prints a markdown table with baseline / current ratios (and JSON with --json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the vaecli of this checkout, not whichever is installed

from vaecli.backends.cupy_backend import formulas, host  # noqa: E402
from vaecli.backends.cupy_backend import kernels as current_kernels  # noqa: E402

KERNELS_PATH = "vaecli/backends/cupy_backend/kernels.py"
MIXTURES = 10


def kernels_at(rev: str):
    """vaecli's kernels module as it was at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:{KERNELS_PATH}"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    name = f"vaecli.backends.cupy_backend._kernels_{re.sub(r'[^0-9A-Za-z]', '_', rev)}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "vaecli.backends.cupy_backend"
    sys.modules[name] = module
    exec(compile(source, f"{rev}:{KERNELS_PATH}", "exec"), module.__dict__)
    return module


def make_inputs(name, batch, size, seed=0):
    """x uniform over 256 levels and raw drawn like a trained decoder's output: means
    in [0, 1], log-scales around -4 (bins a few scales wide), small couplings."""
    rng = np.random.default_rng(seed)
    c, hw = 3, size * size
    x = rng.integers(0, 256, size=(batch, c, size, size), dtype=np.uint8)
    if name == "logistic":
        raw = np.concatenate([rng.uniform(0, 1, (batch, c, size, size)),
                              rng.normal(-4, 0.5, (batch, c, size, size))], axis=1)  # fmt: skip
    else:
        k = MIXTURES
        raw = np.concatenate([
            rng.normal(0, 1, (batch, k, size, size)),
            rng.uniform(0, 1, (batch, k * c, size, size)),
            rng.normal(-4, 0.5, (batch, k * c, size, size)),
            rng.normal(0, 0.5, (batch, 3 * k, size, size)),
        ], axis=1)  # fmt: skip
    assert raw.shape[2] * raw.shape[3] == hw
    return x, raw.astype(np.float32)


def host_times(module, launch, name, batch, size, repeat):
    """{path: best seconds} for one kernels module through a host launcher."""
    x, raw = make_inputs(name, batch, size)
    u = np.ones(batch, np.float32)
    ns = formulas.numpy_namespace()
    opts = {"mixtures": MIXTURES} if name == "logistic-mixture" else {}

    def run(**kw):
        return module.evaluate(name, x, raw, "log_prob", ns=ns, launch=launch, **opts, **kw)

    def best(fn):
        fn()  # compile and warm up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    paths = {"value": lambda: run(need_grad=False), "value+grad": lambda: run(upstream=u)}
    if name == "logistic-mixture":
        paths = {
            "value": lambda: run(need_grad=False),
            "recompute": lambda: run(upstream=u, state=run(need_grad=False).state),
            "defer": lambda: run(upstream=u, state=run(need_grad=False, keep_gradient=True).state),
        }
    return {path: best(fn) for path, fn in paths.items()}


def ptx_counts(source: str, tmp: Path, tag: str) -> dict:
    """{kernel: static PTX instruction count} for the float32 source (nvcc sm_90)."""
    src, out = tmp / f"{tag}.cu", tmp / f"{tag}.ptx"
    src.write_text("typedef float real;\n" + source)
    subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-ftz=true", "-o", str(out), str(src)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    counts, current = {}, None
    for line in out.read_text().splitlines():
        s = line.strip()
        entry = re.match(r"\.visible \.entry (\w+)\(", s)
        if entry:
            current = entry.group(1)
            counts[current] = 0
        elif current and s == "}":
            current = None
        elif current and s.endswith(";") and not s.startswith((".", "//")):
            counts[current] += 1
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="git revision whose kernels are the baseline")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not host.available():
        sys.exit("error: g++ is not on PATH")
    versions = {"baseline": kernels_at(args.baseline), "current": current_kernels}
    rows, ptx = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, module in versions.items():
            launch = host.launcher(tmp, source=module.SOURCE, threads=1, optimize="-O2", tag=label)
            for name in ("logistic-mixture", "logistic"):
                for path, seconds in host_times(module, launch, name, args.batch, args.size, args.repeat).items():
                    rows.append({"version": label, "likelihood": name, "path": path, "ms": seconds * 1e3})
            if shutil.which("nvcc"):
                ptx[label] = ptx_counts(module.SOURCE, tmp, label)
    result = {"baseline": args.baseline, "batch": args.batch, "size": args.size, "host": rows, "ptx": ptx}
    print(f"host time, g++ -O2 float32, one core, B={args.batch} 3x{args.size}x{args.size}, K={MIXTURES}\n")
    print("| likelihood | path | baseline ms | current ms | baseline/current |")
    print("|---|---|---|---|---|")
    base = {(r["likelihood"], r["path"]): r["ms"] for r in rows if r["version"] == "baseline"}
    for r in rows:
        if r["version"] == "current":
            b = base.get((r["likelihood"], r["path"]))
            ratio = f"{b / r['ms']:.2f}" if b else "-"
            print(f"| {r['likelihood']} | {r['path']} | {b:.1f} | {r['ms']:.1f} | {ratio} |")
    if ptx:
        print("\nstatic PTX instructions (nvcc -ptx -arch=sm_90, float32)\n")
        print("| kernel | baseline | current |")
        print("|---|---|---|")
        for k in sorted(set(ptx["baseline"]) | set(ptx["current"])):
            print(f"| {k} | {ptx['baseline'].get(k, '-')} | {ptx['current'].get(k, '-')} |")
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
