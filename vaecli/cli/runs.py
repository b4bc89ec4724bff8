"""`vae info` and `vae compare`: what run files hold."""

from __future__ import annotations

import click

from .common import CONTEXT, RUN_FILE, RUNS, echo_json, echo_lines, expand_runs


@click.command("info", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_command(run_path, as_json):
    """Summarize a run file: config, data, history, calibration, evaluations."""
    from .. import report, runfile

    run = runfile.read(run_path)
    if not as_json:
        return echo_lines(report.info_lines(run_path, run))
    summary = report.train_summary(run)
    summary["attrs"] = {k: v for k, v in run.attrs.items() if k != "config"}
    summary["evaluations"] = run.evaluations
    summary["samples"] = {k: list(v[0].shape) for k, v in run.samples.items()}
    echo_json(summary)


@click.command("compare", context_settings=CONTEXT)
@click.argument("run_paths", metavar="RUN|DIR...", nargs=-1, required=True, type=RUNS)
@click.option("--format", "fmt", type=click.Choice(["markdown", "json", "csv"]), default="markdown",
              show_default=True)
@click.option("--split", default="test", show_default=True, help="Evaluation split to show.")
def compare_command(run_paths, fmt, split):
    """One table of several runs' configs, last epoch and stored evaluations."""
    from .. import report, runfile

    runs = [(p, runfile.read(p)) for p in expand_runs(run_paths)]
    if not any(split in run.evaluations for _, run in runs):
        click.echo(f"note: none of these runs has evaluations of the split {split!r} (vae eval stores them)",
                   err=True)
    click.echo(report.table([report.compare_row(p, run, split) for p, run in runs], fmt))


COMMANDS = (info_command, compare_command)
