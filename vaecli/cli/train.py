"""`vae train` and `vae sweep`: training runs, one or a grid."""

from __future__ import annotations

import os

import click

from .. import models, registry
from ..backends import LIKELIHOOD_BACKENDS
from ..config import MEMORY_FORMATS, MONITORS
from ..constants import LOG_SIGMA_MIN as LOG_SIGMA_MIN_DEFAULT
from .common import (CONTEXT, METRIC_CHOICES, SEED, Duration, FiniteFloat, echo_json, inception_options,
                     tqdm_log)
from .launcher import launch_data_parallel

MODEL_SHORTCUTS = ("latent_dim", "width")  # model options with flags of their own


class ModelName(click.ParamType):
    """A registered model name, or a user's factory as package.module:function."""

    name = "MODEL"

    def convert(self, value, param, ctx):
        if value in models.MODELS or models.is_user_model(value):
            return value
        self.fail(f"{value!r} is neither one of {', '.join(models.MODELS)} nor package.module:function", param, ctx)


def model_options(f):
    """--model, --model-option KEY=VALUE and the shortcut flags of common model options."""
    for option in reversed([
        click.option("--model", type=ModelName(), default=models.DEFAULT_MODEL, show_default=True,
                     help="Model family (vae models lists them), or your own as package.module:function."),
        click.option("--model-option", "model_option", multiple=True, metavar="KEY=VALUE",
                     help="An option of the model (repeatable), e.g. --model-option width=64."),
        click.option("--latent-dim", type=click.IntRange(1), default=None,
                     help="Latent dimensions (the model option latent_dim) [default: the model's, 20 for conv]."),
        click.option("--width", type=click.IntRange(1), default=None,
                     help="Channels of the first layer (the model option width) [default: the model's, 32 for conv]."),
    ]):
        f = option(f)
    return f


def _given_options(pairs, shortcuts, base=None) -> dict:
    """KEY=VALUE strings and the shortcut flags given, over ``base``, as a dict."""
    given = dict(base or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--model-option")
        given[key.strip().replace("-", "_")] = value.strip()
    given.update({k: v for k, v in shortcuts.items() if v is not None})
    return given


def parse_model_options(model, pairs, base=None, **shortcuts) -> dict:
    """KEY=VALUE strings and the shortcut flags given (over ``base``, the options of a
    run being resumed), checked against the model's options."""
    return models.parse_options(model, _given_options(pairs, shortcuts, base))


@click.command("train", context_settings=CONTEXT)
@click.option("--dataset", default=None, help="Dataset name (vae data list) [default: mnist5k, bundled].")
@click.option("--data", "data_path", type=click.Path(exists=True), help="Train on a data file or folder instead.")
@click.option("--likelihood", type=click.Choice(registry.NAMES), default="sigma", show_default=True,
              help="Decoder likelihood.")
@model_options
@click.option("--backend", type=click.Choice(LIKELIHOOD_BACKENDS), default="torch", show_default=True,
              help="Where the likelihood runs (the network always runs in torch).")
@click.option("--beta", type=FiniteFloat(min=0), default=1.0, show_default=True,
              help="Weight of KL in the training objective (reported ELBO uses 1).")
@click.option("--sigma", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Fixed sigma of the gaussian likelihood [default: 1].")
@click.option("--mixtures", type=click.IntRange(1), default=10, show_default=True,
              help="Components of logistic-mixture.")
@click.option("--n-bits", type=click.IntRange(1, 8), default=8, show_default=True, help="Bits per value.")
@click.option("--epochs", type=click.IntRange(0), default=10, show_default=True)
@click.option("--time-budget", type=Duration(), default=None,
              help="End training once it has run this long (e.g. 1800, 30m, 1.5h; training steps and the "
                   "per-epoch test pass count), within an epoch if need be; --epochs is then the most epochs.")
@click.option("--validation", type=FiniteFloat(min=0, max=0.5), default=0.0, show_default=True,
              help="Share of the training split held out (fixed permutation) as a validation split, whose "
                   "bits/dim (history val_bpd) and loss (val_loss) are recorded each epoch; 0: none.")
@click.option("--early-stop", type=click.IntRange(0), default=0, show_default=True,
              help="End training after this many epochs without a validation gain of --min-delta on "
                   "--monitor (needs --validation; 0: off).  The last weights are kept; the best epoch is "
                   "reported.")
@click.option("--min-delta", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Bits/dim by which validation must beat its best so far to count as a gain.")
@click.option("--monitor", type=click.Choice(MONITORS), default="bpd", show_default=True,
              help="What --early-stop watches: bpd (the validation bound of the discretized likelihood, KL "
                   "weight 1) or loss (the training loss on the validation split: the likelihood training "
                   "scores, a continuous decoder's density, with the KL weighted by --beta, in bits/dim).  A "
                   "fixed-sigma gaussian's bound barely moves with its reconstructions: watch its loss, with "
                   "--min-delta 0.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate.")
@click.option("--image-size", type=click.IntRange(8), default=None,
              help="Resize datasets that support it (svhn, celeba).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False), default="run.h5", show_default=True,
              help="The run file to write.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out with its own options; of those given here, only --epochs "
                   "(more), --time-budget, --early-stop, --min-delta, --device, --max-nonfinite, --compile, --memory-format and --cuda-graph may differ.")
@click.option("--dequantize", is_flag=True, help="Add uniform noise to the levels (continuous decoders).")
@click.option("--binarize", is_flag=True, help="Binarize the data at 128 (for bernoulli).")
@click.option("--log-sigma-min", default=str(LOG_SIGMA_MIN_DEFAULT), show_default=True,
              help="Softclip floor of every log-scale, or 'none' to disable it (unstable: for experiments).")
@click.option("--max-nonfinite", type=click.IntRange(1), default=20, show_default=True,
              help="Consecutive non-finite steps (skipped) after which training stops.")
@click.option("--grad-clip", type=FiniteFloat(min=0), default=None,
              help="Clip the gradient's 2-norm to this; 0 turns it off [default: the model's; hvae 1e4, else off].")
@click.option("--grad-skip", type=FiniteFloat(min=0), default=None,
              help="Skip steps whose gradient 2-norm exceeds this (counted as skipped); 0 turns it off "
                   "[default: the model's; hvae 1e5, else off].")
@click.option("--ema", type=FiniteFloat(min=0, max=1, max_open=True), default=None,
              help="Decay of a moving average of the weights, which evaluation and sampling use; 0 turns it "
                   "off [default: the model's; hvae 0.999, else off].")
@click.option("--free-bits", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Each latent group's KL counts in the objective as at least this many nats an image.")
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
@click.pass_context
def train_command(ctx, out, resume, nproc, quiet, as_json, **options):
    """Train a VAE with a calibrated decoder and write one HDF5 run file.

    The default is the sigma-VAE (shared sigma set analytically to sqrt(MSE)) on the
    bundled 5,000 MNIST digits.  Ctrl-C (or SIGTERM) saves a resumable checkpoint.
    """
    from .. import report
    from ..training import train
    from ..training.distributed import environment_rank

    config, finished = _train_config(ctx, options, out, resume)
    if nproc > 1:
        return launch_data_parallel(nproc, out)
    run = train(config, out, resume=resume, progress=not quiet, log=(lambda s: None) if quiet else tqdm_log)
    if environment_rank() != 0:
        return  # under torchrun only rank 0 reports
    summary = report.train_summary(run)
    if as_json:
        return echo_json(summary)
    if not finished:  # (a finished run: train() said so, and wrote nothing)
        line = report.trained_line(run, summary)
        click.echo(line) if line else None
        click.echo(f"wrote {out}")


def _train_config(ctx, options, out, resume):
    """The TrainConfig of the command line; with --resume the run's own, with just the
    options given here changed (train() refuses the changes that would make it another
    run).  Also whether the run is already finished."""
    from ..config import DEFAULT_DATASET, TrainConfig

    o = dict(options)
    if o["dataset"] and o["data_path"]:
        raise click.UsageError("give --dataset or --data, not both")
    if o["sigma"] is not None and o["likelihood"] not in registry.FIXED_SIGMA:
        raise click.UsageError(f"--sigma is for gaussian (its fixed sigma) and sigma/sigma-image (the evaluation "
                               f"sigma); {o['likelihood']} learns or predicts its own")
    data_path = o.pop("data_path")
    # a data file by its absolute path, so that the run file finds it from anywhere
    o["dataset"] = os.path.abspath(data_path) if data_path else o["dataset"] or DEFAULT_DATASET
    o["log_sigma_min"] = _parse_floor(o["log_sigma_min"])
    o["compile"] = o.pop("compile_")
    pairs, shortcuts = o.pop("model_option"), {k: o.pop(k) for k in MODEL_SHORTCUTS}
    if not resume:
        return TrainConfig(**o, model_options=parse_model_options(o["model"], pairs, **shortcuts)), False
    from .. import runfile
    from ..training.state import is_finished

    stored_run = runfile.read(out)
    stored = stored_run.config
    sources = {"dataset": ("dataset", "data_path"), "compile": ("compile_",)}
    given = {k: v for k, v in o.items()
             if any(ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT for p in sources.get(k, (k,)))}
    if pairs or any(v is not None for v in shortcuts.values()):  # the options given, over the run's own
        given["model_options"] = parse_model_options(given.get("model", stored.model), pairs,
                                                     stored.model_options, **shortcuts)
    config = stored.replace(**given)
    return config, is_finished(stored_run, config)


def _shared_options(names, pairs, shortcuts) -> dict:
    """Each model's options when a sweep has several: every KEY=VALUE (and shortcut flag)
    goes to each model that has that option; one that no model has is an error."""
    given = _given_options(pairs, shortcuts)
    known = {name: models.option_names(name) for name in names}  # None: a user's model takes every option
    known = {name: set(given) if keys is None else set(keys) for name, keys in known.items()}
    unknown = [k for k in given if not any(k in keys for keys in known.values())]
    if unknown:
        raise click.BadParameter(f"no model of {', '.join(names)} has the option {unknown[0]!r}",
                                 param_hint="--model-option")
    return {name: models.parse_options(name, {k: v for k, v in given.items() if k in known[name]})
            for name in names}


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


@click.command("sweep", context_settings=CONTEXT)
@click.option("--out-dir", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory of run files.")
@click.option("--likelihood", "likelihoods", multiple=True, type=click.Choice(registry.NAMES),
              help="Decoders to train [default: all eleven].")
@click.option("--beta", "betas", multiple=True, type=FiniteFloat(min=0),
              help="Betas of the fixed-variance gaussian [default: the paper's 0.001 0.01 0.1 1 10].")
@click.option("--seed", "seeds", multiple=True, type=SEED, help="Seeds [default: 0].")
@click.option("--dataset", default=None, help="Dataset name [default: mnist5k].")
@click.option("--model", "model_names", type=ModelName(), multiple=True,
              help="Model families to train (repeatable: an axis of the grid) [default: conv].")
@click.option("--model-option", "model_option", multiple=True, metavar="KEY=VALUE",
              help="An option of the models (repeatable); with several --model, it goes to each model "
                   "that has it.")
@click.option("--latent-dim", type=click.IntRange(1), default=None, help="The model option latent_dim.")
@click.option("--width", type=click.IntRange(1), default=None, help="The model option width.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--time-budget", type=Duration(), default=None,
              help="End each run's training once it has run this long (e.g. 30m); --epochs is then the most.")
@click.option("--validation", type=FiniteFloat(min=0, max=0.5), default=0.0, show_default=True,
              help="Share of the training split held out as a validation split (as vae train).")
@click.option("--early-stop", type=click.IntRange(0), default=0, show_default=True,
              help="Patience in epochs on the validation value --monitor names (as vae train; needs "
                   "--validation).")
@click.option("--min-delta", type=FiniteFloat(min=0), default=0.0, show_default=True)
@click.option("--monitor", type=click.Choice(MONITORS), default="bpd", show_default=True,
              help="What --early-stop watches (as vae train): bpd or loss (the training loss, the KL "
                   "weighted by beta).")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--mixtures", type=click.IntRange(1), default=10, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--metric", "metrics", multiple=True, type=click.Choice(METRIC_CHOICES),
              help="Metrics evaluated on the test split [default: elbo bpd kl mse active-units].")
@click.option("--iw-samples", type=click.IntRange(1), default=100, show_default=True)
@click.option("--fid-samples", type=click.IntRange(0), default=0, show_default=True,
              help="Prior samples for FID (0: no FID).")
@inception_options
def sweep_command(out_dir, likelihoods, betas, seeds, dataset, model_names, model_option, latent_dim, width, epochs,
                  time_budget, validation, early_stop, min_delta, monitor, batch_size, lr, mixtures, device, metrics,
                  iw_samples, fid_samples, inception,
                  allow_unknown_weights):
    """Train and evaluate a grid of runs (likelihoods x betas x seeds) into a directory.

    Resumable: finished runs are skipped and interrupted ones resumed.  Betas sweep the
    fixed-variance gaussian; the calibrated decoders train with beta = 1.  Then
    `vae compare DIR` and `vae plot DIR --kind rate-distortion`.
    """
    from ..config import DEFAULT_DATASET, TrainConfig
    from ..sweep import PAPER_BETAS, sweep

    names = list(dict.fromkeys(model_names or (models.DEFAULT_MODEL,)))
    shortcuts = dict(latent_dim=latent_dim, width=width)
    if len(names) == 1:
        grid_models = {names[0]: parse_model_options(names[0], model_option, **shortcuts)}
    else:
        grid_models = _shared_options(names, model_option, shortcuts)
    base = TrainConfig(dataset=dataset or DEFAULT_DATASET, epochs=epochs, time_budget=time_budget,
                       validation=validation, early_stop=early_stop, min_delta=min_delta, monitor=monitor,
                       batch_size=batch_size, lr=lr, model=names[0], model_options=grid_models[names[0]],
                       mixtures=mixtures, device=device)
    if "fid" in metrics and not fid_samples:
        raise click.UsageError("--metric fid needs --fid-samples N (the prior samples FID is computed on)")
    metrics = [m for m in (metrics or ("elbo", "bpd", "kl", "mse", "active-units")) if m != "fid"]
    if not likelihoods:
        likelihoods = registry.NAMES
        if validation:  # the default grid leaves out what has no bits/dim to validate on
            left_out = [n for n in likelihoods if registry.info(n).training_only]
            likelihoods = [n for n in likelihoods if n not in left_out]
            click.echo(f"--validation: leaving out {', '.join(left_out)} (a training objective only, no "
                       "bits/dim to validate on)")
    paths = sweep(out_dir, base, likelihoods, betas or PAPER_BETAS, seeds or (0,), metrics,
                  fid_samples=fid_samples, inception=inception, allow_unknown_weights=allow_unknown_weights,
                  iw_samples=iw_samples, log=click.echo, models=grid_models)
    click.echo(f"{len(paths)} runs in {out_dir}; see `vae compare {out_dir}`")


COMMANDS = (train_command, sweep_command)
