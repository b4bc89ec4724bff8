"""``python -m vaecli`` is the ``vae`` command."""

from .cli import main

main(prog_name="vae")
