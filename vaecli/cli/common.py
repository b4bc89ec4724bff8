"""What every vaecli Click group shares (imports click only)."""

import math

import click

from ..errors import VaeError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class VaeGroup(click.Group):
    """Turns a VaeError escaping any command into a one-line ClickException (exit 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VaeError as exc:
            root = ctx.find_root()
            if root.params.get("debug"):  # vae --debug ...: the whole traceback
                raise
            raise click.ClickException(str(exc)) from None


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and +-inf (which FloatRange lets through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class Duration(click.ParamType):
    """Seconds, as a number of seconds or with a unit: 90, 90s, 30m, 1.5h."""

    name = "DURATION"
    UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            scale = self.UNITS.get(text[-1:], None)
            try:
                seconds = float(text[:-1] if scale else text) * (scale or 1.0)
            except ValueError:
                self.fail(f"{value!r} is not a duration (seconds, or a number with s, m or h: 1800, 30m, 1.5h)",
                          param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a positive, finite duration", param, ctx)
        return seconds


def jsonable(value):
    """``value`` with every non-finite float as None (JSON has no NaN or infinity) and
    NumPy scalars and arrays as Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


SEED = click.IntRange(0, 2**63 - 1)  # what torch's generators and the run file's int64 attributes hold
RUN_FILE = click.Path(exists=True, dir_okay=False)
RUNS = click.Path(exists=True)
METRIC_CHOICES = ("elbo", "bpd", "nll", "kl", "mse", "active-units", "aggregate-kl", "fid", "ssim", "psnr")

INCEPTION_OPTIONS = [
    click.option("--inception", type=click.Path(exists=True, dir_okay=False),
                 help="Inception weights file [default: $VAECLI_INCEPTION, then the cache]."),
    click.option("--allow-unknown-weights", is_flag=True,
                 help="Use a weights file whose SHA-256 is not the FID Inception's (recorded with the result)."),
]


def inception_options(fn):
    for option in reversed(INCEPTION_OPTIONS):
        fn = option(fn)
    return fn


def echo_json(data):
    import json

    click.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))


def echo_lines(lines):
    for line in lines:
        click.echo(line)


def check_out(out, inputs):
    """An output file must not be one of the run files read: writing it would replace the run."""
    import os

    for path in inputs:
        if os.path.exists(out) and os.path.samefile(out, path):
            raise VaeError(f"-o {out} is the run file {path}: writing it would replace the run; "
                           "choose another output path")


def progress_bars(hidden=False):
    """A factory (label, total) -> context of an update function: click's progress bar on stderr."""
    import sys

    def factory(label, total):
        bar = click.progressbar(length=total, label=label, file=sys.stderr, hidden=hidden)

        class _Updates:
            def __enter__(self):
                return bar.__enter__().update

            def __exit__(self, *exc):
                return bar.__exit__(*exc)

        return _Updates()

    return factory


def tqdm_log(text):
    from tqdm import tqdm

    tqdm.write(text)


def expand_runs(paths):
    """Run files, with directories (a vae sweep) expanded to the run files inside."""
    import os

    from ..sweep import run_paths

    out = []
    for p in paths:
        found = run_paths(p) if os.path.isdir(p) else [p]
        if not found:
            raise VaeError(f"{p}: no run files (*.h5) in this directory")
        out.extend(found)
    return out


class Temperatures(click.ParamType):
    """One temperature, or one per latent group: 0.8 or 1,1,0.8,0.6 (finite, >= 0)."""

    name = "T[,T...]"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float, tuple)):
            return value
        values = []
        for part in str(value).split(","):
            number = FiniteFloat(min=0).convert(part.strip(), param, ctx)
            values.append(number)
        return values[0] if len(values) == 1 else tuple(values)
