"""`vae likelihoods`, `vae models` and `vae verify`: what exists, and the check of
every likelihood against the float64 reference."""

from __future__ import annotations

import json
import sys

import click

from .. import models, registry
from ..backends import LIKELIHOOD_BACKENDS
from .common import CONTEXT, SEED, echo_json, echo_lines


@click.command("likelihoods", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--channels", default=1, show_default=True, type=click.IntRange(1), help="Image channels.")
def likelihoods_command(as_json, channels):
    """List the decoder likelihoods and the decoder channels each needs."""
    rows = [{"name": name, "out_channels": registry.out_channels(name, channels), "continuous": info.continuous,
             "summary": info.summary, "note": info.pmf_note} for name, info in registry.LIKELIHOODS.items()]
    if as_json:
        return click.echo(json.dumps(rows, indent=2))
    click.echo(f"{'likelihood':18s}{'channels':>9s}  {'log_prob is':12s}summary")
    for r in rows:
        kind = "density" if r["continuous"] else "PMF"
        note = f" ({r['note']})" if r["note"] else ""
        click.echo(f"{r['name']:18s}{r['out_channels']:>9d}  {kind:12s}{r['summary']}{note}")


@click.command("models", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(as_json):
    """List the models `vae train --model` builds, with their options and defaults."""
    rows = [{"name": name, "summary": info.summary, "options": models.parse_options(name)}
            for name, info in models.MODELS.items()]
    if as_json:
        return echo_json(rows)
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        click.echo(f"{r['name']:8s}{r['summary']}\n{'':8s}options: {options}")


@click.command("verify", context_settings=CONTEXT)
@click.option("--backend", "backends", multiple=True, type=click.Choice([*LIKELIHOOD_BACKENDS, "all"]),
              help="Backend(s) to check against the float64 reference [default: torch].")
@click.option("--likelihood", "likelihoods", multiple=True, type=click.Choice(registry.NAMES),
              help="Likelihood(s) to check [default: all eleven].")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["float32", "float64"]),
              help="Floating dtype(s) [default: both].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Device of the torch backend (cupy always runs on CUDA).")
@click.option("--seed", type=SEED, default=None, help="Seed of the random inputs [default: fresh, printed].")
@click.option("--channels", "channels", multiple=True, type=click.Choice(["1", "3"]),
              help="Image channels to check [default: 1 and 3].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per case) instead of a table.")
def verify_command(backends, likelihoods, dtypes, device, seed, channels, as_json):
    """Check values and gradients of every likelihood against the float64 reference.

    Inputs are fresh seeded random batches that always hold the edge levels 0 and 255
    and extreme parameters (logits at ±100, log-scales far below the softclip floor).
    Gradients are compared with central differences of the reference.  Exits 1 if any
    case fails; a backend that cannot run here (no CUDA device) is reported and skipped.
    """
    import numpy as np

    from .. import report, verify

    backends = LIKELIHOOD_BACKENDS if "all" in backends else (backends or ("torch",))
    likelihoods, dtypes = likelihoods or registry.NAMES, dtypes or verify.DTYPES
    channels = tuple(int(c) for c in channels) or (1, 3)
    seed = int(np.random.default_rng().integers(0, 2**31 - 1)) if seed is None else seed
    total = sum(1 for _ in verify.cases(likelihoods, channels=channels)) * len(dtypes) * len(backends)
    with click.progressbar(length=total, label="verifying", file=sys.stderr, hidden=as_json) as bar:
        results, skipped = verify.verify(likelihoods, backends, dtypes, device, seed, channels=channels,
                                         progress=lambda: bar.update(1))
    failed = [r for r in results if not r.passed]
    if as_json:
        echo_json({"seed": seed, "tolerances": verify.TOLERANCES, "results": [r.to_dict() for r in results],
                   "skipped": skipped, "passed": len(results) - len(failed), "failed": len(failed)})
    else:
        echo_lines(report.verify_lines(results, skipped, seed))
    if failed:
        sys.exit(1)


COMMANDS = (likelihoods_command, models_command, verify_command)
