"""What every vaecli Click group shares (imports click only)."""

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
