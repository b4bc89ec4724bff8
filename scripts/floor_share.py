"""How much of a per-pixel-scale decoder's continuous log-likelihood comes from pixels
whose scale sits at the soft-clip floor (docs/study.md, the Student-t and
gaussian-pixel ELBOs).

    python scripts/floor_share.py study/fashion-mnist/student-t-beta1-seed0.h5 [...]

For `student-t` and `gaussian-pixel` runs: decode the posterior mean of the first N test
images (--n, default 1000) and report, per run, the mean log density of y = x/(L-1)
in nats per image, the fraction of pixels whose log-scale is within 0.05 of the floor
LOG_SIGMA_MIN, how many of those are exactly level 0, and the nats per image those
pixels contribute.  A density on discrete data has no upper bound; the floor is what
bounds it, so a large share here means the continuous ELBO measures the floor more
than the model.  Bits/dim (the discretized PMF) has no such problem.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vaecli import datasets, runfile
from vaecli.backends import torch_backend
from vaecli.constants import LOG_SIGMA_MIN
from vaecli.runs import load_model

NEAR_FLOOR = 0.05  # a log-scale within this of the floor counts as "at the floor"


def pixel_log_density(name: str, y: torch.Tensor, raw: torch.Tensor):
    """Per-pixel log density of y (same shape as y) and the per-pixel log-scale."""
    o = torch_backend._options(name, {})
    if name == "student-t":
        mu, log_scale, df = torch_backend._student_t_params(raw, o)
        standard_log_pdf = lambda t: torch_backend._student_t_log_pdf(t, df)  # noqa: E731
    elif name == "gaussian-pixel":
        mu, log_scale = torch_backend._gaussian_params(name, None, raw, o)
        standard_log_pdf = torch_backend._log_normal_pdf
    else:
        raise SystemExit(f"floor_share.py: {name} has no per-pixel scale (student-t or gaussian-pixel only)")
    return standard_log_pdf((y - mu) * torch.exp(-log_scale)) - log_scale, log_scale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=1000, help="test images (default 1000)")
    args = parser.parse_args(argv)
    print("| run | log p(x given z = posterior mean) | pixels at floor | of them level 0 | their nats | share |")
    print("|---|---|---|---|---|---|")
    for path in args.runs:
        run = runfile.read(path)
        model = load_model(run, device="cpu")
        images = datasets.load(run.config.dataset, "test").images[: args.n]
        x = torch.from_numpy(np.array(images))
        with torch.no_grad():
            mu, _ = model.encode(x)
            y = x.to(torch.float32) / (2 ** run.config.n_bits - 1)
            log_p, log_scale = pixel_log_density(run.config.likelihood, y, model.decode(mu))
        at_floor = log_scale < LOG_SIGMA_MIN + NEAR_FLOOR
        total = log_p.sum((1, 2, 3)).mean().item()
        floor_nats = (log_p * at_floor).sum((1, 2, 3)).mean().item()
        level0 = (at_floor & (x == 0)).sum().item() / max(int(at_floor.sum().item()), 1)
        print(f"| {path} | {total:.1f} | {at_floor.float().mean().item():.3f} | {level0:.3f} "
              f"| {floor_nats:.1f} | {floor_nats / total:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
