"""What every vaecli Click group shares (imports click only)."""

import math

import click

from .errors import VaeError

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
