"""The ``vae`` command line: a thin Click layer over the library.

One module per command group; each command parses its options, calls the library
and prints.  Heavy imports (numpy, torch, cupy) happen inside command bodies, so
``vae --help`` stays fast and loads neither torch nor cupy.  Library errors
(VaeError) become one line on stderr and exit code 1; Click's usage errors exit 2.
"""

from __future__ import annotations

import click

from .._version import __version__
from .common import CONTEXT, VaeGroup


@click.group(cls=VaeGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="vae")
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.pass_context
def main(ctx, debug):
    """vaecli: variational autoencoders with calibrated decoders.

    Train with any of eleven decoder likelihoods (the sigma-VAE's analytic sigma by
    default), evaluate with numbers comparable across decoders, and verify every
    implementation against a float64 reference.
    """


def _register():
    from .data import data
    from . import evaluate, fid, pictures, reference, runs, train

    for module in (reference, train, evaluate, pictures, runs, fid):
        for command in module.COMMANDS:
            main.add_command(command)
    main.add_command(data)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
