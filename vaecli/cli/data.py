"""``vae data list`` and ``vae data download NAME``: a thin Click layer over the catalog.

Importing this module imports click and the pure-Python catalog only; anything
heavier is imported inside the command bodies.  Register with
``main.add_command(data)``.
"""

from __future__ import annotations

import click

from .common import CONTEXT, VaeGroup
from ..datasets.catalog import ALIASES, NAMES


@click.group("data", cls=VaeGroup, context_settings=CONTEXT)
def data():
    """See which datasets are on this machine and download the standard ones.

    The bundled mnist5k (5,000 real MNIST digits) always works offline.  Other
    datasets are searched for in --dir, $VAECLI_DATA/<name>, the cache
    ($VAECLI_CACHE or ~/.cache/vaecli)/<name>, and known system folders.
    """


def _sizes(row) -> str:
    if not row["splits"]:
        return "-"
    return ", ".join(f"{s} {row['sizes'].get(s) if row['sizes'].get(s) is not None else '?'}"
                     for s in row["splits"])


@data.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--dir", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Also look in this folder (and its <name>/ sub-folders) first.")
def list_command(as_json, data_dir):
    """List the named datasets and where each was found."""
    import json

    from ..datasets.catalog import list_local

    rows = list_local(data_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("name", "found", "splits", "where")]
    for row in rows:
        where = row["where"] or (f"vae data download {row['name']}" if row["name"] != "celeba"
                                 else "fetch by hand (vae data download celeba says how)")
        table.append((row["name"], "yes" if row["found"] else "no", _sizes(row), where))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


@data.command("download", context_settings=CONTEXT)
@click.argument("name", type=click.Choice(NAMES + tuple(ALIASES), case_sensitive=False))
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Download into DIR/<name>/ (default: $VAECLI_CACHE or ~/.cache/vaecli).")
def download_command(name, cache_dir):
    """Download NAME's official files and verify their SHA-256."""
    from ..datasets.catalog import canonical_name, download

    name = canonical_name(name)
    if name == "mnist5k":
        click.echo("mnist5k is bundled with vaecli; nothing to download")
        return
    shown = set()

    def progress(file_name, done, total):
        step = done * 10 // max(total, 1)
        if (file_name, step) not in shown:
            shown.add((file_name, step))
            click.echo(f"\r{file_name}: {done * 100 // max(total, 1):3d}%", nl=False, err=True)
            if done >= total:
                click.echo(err=True)

    folder = download(name, cache_dir, progress=progress)
    click.echo(f"{name}: verified files in {folder}")
