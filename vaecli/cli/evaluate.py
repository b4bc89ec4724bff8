"""`vae eval` and `vae calibrate`: the numbers of a trained run."""

from __future__ import annotations

import click

from .common import (CONTEXT, METRIC_CHOICES, RUN_FILE, SEED, Temperatures, echo_json, echo_lines,
                     inception_options, progress_bars)
from .launcher import launch_data_parallel


@click.command("eval", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("--metric", "metrics", multiple=True, type=click.Choice(METRIC_CHOICES),
              help="Metric(s) to compute [default: elbo and bpd].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--data", "data_path", type=click.Path(exists=True), help="Evaluate on this data file instead.")
@click.option("--iw-samples", type=click.IntRange(1), default=100, show_default=True,
              help="Importance samples K for nll.")
@click.option("--elbo-samples", type=click.IntRange(1), default=1, show_default=True,
              help="Posterior samples S averaged in elbo, bpd, kl and mse.")
@click.option("--fid-samples", type=click.IntRange(2), default=10_000, show_default=True,
              help="Prior samples generated for fid.")
@click.option("--fid-temperature", type=Temperatures(), default="1", show_default=True,
              help="Temperature of fid's prior samples: one, or one per latent group (vae info lists them), "
                   "e.g. 1,1,0.9,0.9,0.8,0.8.")
@click.option("--future-samples", type=click.IntRange(1), default=100, show_default=True,
              help="Video models: futures sampled per test video for ssim and psnr (the best and the mean "
                   "are reported per time step).")
@click.option("--fid-ref", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Dataset split whose statistics fid compares against.")
@inception_options
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the posterior and prior samples.")
@click.option("--no-store", is_flag=True, help="Do not write the results into the run file.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Evaluate with this many processes (starts torchrun); results equal one process's.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(run_path, metrics, device, no_store, nproc, as_json, **options):
    """Evaluate a run: ELBO (nats), bits/dim, importance-weighted NLL, KL, MSE,
    active units, FID; for video models SSIM and PSNR of predicted futures.  Metrics a likelihood does not define are reported as not
    applicable, with the reason."""
    from .. import report, runfile
    from ..runs import evaluate_run
    from ..training import distributed

    if nproc > 1:
        return launch_data_parallel(nproc, run_path, "evaluation")
    run = runfile.read(run_path)
    if not no_store:
        runfile.check_writable(run_path)  # now, not after the evaluation
    metrics = metrics or ("elbo", "bpd")
    rank, world, dev = distributed.setup(device)
    key, results, n = evaluate_run(run, metrics, device=dev, progress=progress_bars(hidden=rank != 0),
                                   rank=rank, world=world, **options)
    distributed.teardown(world)
    if rank != 0:
        return  # rank 0 stores and reports
    if not no_store:
        runfile.store_evaluation(run_path, key, results)
    if as_json:
        return echo_json({"run": run_path, "split": key, "results": results})
    echo_lines(report.eval_lines(run_path, run, results, metrics, n))


@click.command("calibrate", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def calibrate_command(run_path, device, as_json):
    """Store the PMF evaluation sigma of a `sigma` run (vae train does this at every
    checkpoint; use this for older run files).  It is the maximum-likelihood sigma
    of the discretized Gaussian on the run's training data; stored bits/dim and NLL
    results, computed with the old sigma, are removed."""
    from .. import runfile
    from ..runs import recalibrate

    run = runfile.read(run_path)
    runfile.check_writable(run_path)
    values = recalibrate(run, device)
    removed = runfile.store_calibration(run_path, values, stale_metrics=("bpd", "nll"))
    if as_json:
        return echo_json({"run": run_path, "calibration": values, "removed_evaluations": removed})
    click.echo(f"PMF sigma {values['pmf_sigma']:.5f} (eval sigma {run.eval_sigma:.5f}); "
               f"training PMF term {values['pmf_train_bits']:.4f} bits/dim on {values['pmf_images']} images")
    if removed:
        click.echo(f"removed stale evaluations: {', '.join(removed)} (rerun vae eval)")


COMMANDS = (eval_command, calibrate_command)
