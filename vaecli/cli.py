"""The ``vae`` command line: a thin Click layer over the library.

Heavy imports (numpy, torch, cupy) happen inside command bodies, so ``vae --help``
stays fast and loads neither torch nor cupy.  Library errors (VaeError) become one
line on stderr and exit code 1; Click's usage errors exit with 2.
"""

from __future__ import annotations

import json
import sys

import click

from . import registry
from ._version import __version__
from .errors import VaeError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns a VaeError escaping any command into a one-line ClickException."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VaeError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="vae")
def main():
    """vaecli: variational autoencoders with calibrated decoders.

    Train with any of eleven decoder likelihoods (the sigma-VAE's analytic sigma by
    default), evaluate with numbers comparable across decoders, and verify every
    implementation against a float64 reference.
    """


@main.command("likelihoods", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--channels", default=1, show_default=True, type=click.IntRange(1), help="Image channels.")
def likelihoods_command(as_json, channels):
    """List the decoder likelihoods and the decoder channels each needs."""
    rows = []
    for name, info in registry.LIKELIHOODS.items():
        rows.append(
            {
                "name": name,
                "out_channels": registry.out_channels(name, channels),
                "continuous": info.continuous,
                "summary": info.summary,
                "note": info.pmf_note,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'likelihood':18s}{'channels':>9s}  {'log_prob is':12s}summary")
    for r in rows:
        kind = "density" if r["continuous"] else "PMF"
        note = f" ({r['note']})" if r["note"] else ""
        click.echo(f"{r['name']:18s}{r['out_channels']:>9d}  {kind:12s}{r['summary']}{note}")


@main.command("verify", context_settings=CONTEXT)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(["torch", "cupy", "all"]),
    help="Backend(s) to check against the float64 reference [default: torch].",
)
@click.option(
    "--likelihood",
    "likelihoods",
    multiple=True,
    type=click.Choice(registry.NAMES),
    help="Likelihood(s) to check [default: all eleven].",
)
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    type=click.Choice(["float32", "float64"]),
    help="Floating dtype(s) [default: both].",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Device of the torch backend (cupy always runs on CUDA).",
)
@click.option("--seed", type=int, default=None, help="Seed of the random inputs [default: fresh, printed].")
@click.option(
    "--channels",
    "channels",
    multiple=True,
    type=click.Choice(["1", "3"]),
    help="Image channels to check [default: 1 and 3].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per case) instead of a table.")
def verify_command(backends, likelihoods, dtypes, device, seed, channels, as_json):
    """Check values and gradients of every likelihood against the float64 reference.

    Inputs are fresh seeded random batches that always hold the edge levels 0 and 255
    and extreme parameters (logits at ±100, log-scales far below the softclip floor).
    Gradients are compared with central differences of the reference.  Exits 1 if any
    case fails; a backend that cannot run here (no CUDA device) is reported and skipped.
    """
    import numpy as np

    from . import verify

    backends = ("torch", "cupy") if "all" in backends else (backends or ("torch",))
    likelihoods = likelihoods or registry.NAMES
    dtypes = dtypes or verify.DTYPES
    channels = tuple(int(c) for c in channels) or (1, 3)
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31 - 1))
    total = sum(1 for _ in verify.cases(likelihoods, channels=channels)) * len(dtypes) * len(backends)
    if as_json:
        results, skipped = verify.verify(likelihoods, backends, dtypes, device, seed, channels=channels)
    else:
        with click.progressbar(length=total, label="verifying", file=sys.stderr) as bar:
            results, skipped = verify.verify(
                likelihoods, backends, dtypes, device, seed, channels=channels, progress=lambda: bar.update(1)
            )
    failed = [r for r in results if not r.passed]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "seed": seed,
                    "tolerances": verify.TOLERANCES,
                    "results": [r.to_dict() for r in results],
                    "skipped": skipped,
                    "passed": sum(r.passed for r in results),
                    "failed": len(failed),
                },
                indent=2,
            )
        )
    else:
        _print_verify_table(results, skipped, seed)
    if failed:
        sys.exit(1)


def _print_verify_table(results, skipped, seed):
    click.echo(f"seed {seed}; errors are max |backend - reference| and that over max |reference|")
    if results:
        header = (
            f"{'likelihood':17s} {'kind':8s} {'C':>1s} {'backend':7s} {'device':6s} {'dtype':7s} "
            f"{'value abs':>10s} {'value rel':>10s} {'grad abs':>10s} {'grad rel':>10s}  result"
        )
        click.echo(header)
        click.echo("-" * len(header))
    for r in results:
        status = "pass" if r.passed else "FAIL" + (f" ({r.message})" if r.message else "")
        click.echo(
            f"{r.likelihood:17s} {r.kind:8s} {r.channels:>1d} {r.backend:7s} {r.device:6s} {r.dtype:7s} "
            f"{r.value_max_abs:10.2e} {r.value_max_rel:10.2e} {r.grad_max_abs:10.2e} {r.grad_max_rel:10.2e}  {status}"
        )
    for backend, why in skipped.items():
        click.echo(f"{backend}: not verified: {why}")
    passed = sum(r.passed for r in results)
    click.echo(f"{passed} passed, {len(results) - passed} failed")


if __name__ == "__main__":  # pragma: no cover
    main()
