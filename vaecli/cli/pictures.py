"""`vae sample`, `vae reconstruct` and `vae plot`: pictures of a run."""

from __future__ import annotations

import click

from ..errors import VaeError
from .common import CONTEXT, RUN_FILE, RUNS, SEED, Temperatures, check_out, expand_runs

SAMPLE_BATCH = 1000  # prior samples decoded at a time by `vae sample`


def _predicted(run, model, num, gen, temperature, mode):
    """A sequence model's samples: the context of the first ``num`` test videos, then
    the futures it predicts (decoder means)."""
    import torch

    from ..runs import predicted_videos, run_split

    if isinstance(temperature, tuple):
        raise click.BadParameter("a video model takes one temperature (its learned prior's)",
                                 param_hint="--temperature")
    if mode != "mean":
        raise click.BadParameter("video models picture the decoder mean (--mode mean)", param_hint="--mode")
    videos = run_split(run, "test").images
    if num > len(videos):
        raise click.BadParameter(f"-n {num}: the test split has {len(videos)} videos to continue", param_hint="-n")
    device = next(model.parameters()).device
    return predicted_videos(model, torch.from_numpy(videos[:num]).to(device), gen, temperature=temperature)


def _per_group(model, temperature):
    """A number, or a list with one temperature per latent group of ``model``."""
    from ..models.protocol import temperatures_for

    try:
        return temperatures_for(model, temperature)
    except VaeError as exc:
        raise click.BadParameter(str(exc), param_hint="--temperature") from None


@click.command("sample", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("-n", "num", type=click.IntRange(1), default=64, show_default=True)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default="samples.png", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "gif", "npz", "h5", "run"]), default=None,
              help="png grid (videos: a row of frames each), gif (videos), npz/h5 arrays, or 'run' (store in "
                   "the run file) [default: from -o].")
@click.option("--temperature", type=Temperatures(), default="1", show_default=True,
              help="Scale of the prior: z ~ N(0, T^2 I); or one per latent group, top first, as "
                   "T1,T2,... (vae info lists a model's groups).")
@click.option("--mode", type=click.Choice(["mean", "sample"]), default="mean", show_default=True,
              help="Picture the decoder mean, or draw from the decoder distribution.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--scale", type=click.IntRange(1, 16), default=2, show_default=True, help="PNG enlargement.")
def sample_command(run_path, num, out, fmt, temperature, mode, seed, device, scale):
    """Draw images from the prior of a trained run."""
    import torch

    from .. import images as pictures
    from .. import runfile
    from ..runs import load_model, prior_pictures

    run = runfile.read(run_path)
    fmt = fmt or (out.rsplit(".", 1)[-1].lower() if "." in out else "png")
    if fmt not in ("png", "gif", "npz", "h5", "run"):
        raise click.BadParameter(f"unknown format {fmt!r} (from -o {out}); use --format png|gif|npz|h5|run")
    if fmt != "run":
        check_out(out, [run_path])
    runfile.check_writable(run_path if fmt == "run" else out)  # before the work, not after
    model = load_model(run, device)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    if hasattr(model, "predict"):  # a sequence model: futures of the test split's first videos
        levels = _predicted(run, model, num, gen, temperature, mode)
        name_kind = "predicted"
    else:
        if fmt == "gif":
            raise click.BadParameter("gif is for video models; use png", param_hint="--format")
        temperature = _per_group(model, temperature)
        levels = prior_pictures(model, num, gen, temperature=temperature, mode=mode, batch=SAMPLE_BATCH)
        name_kind = "prior"
    if fmt == "run":
        text = "-".join(f"{t:g}" for t in temperature) if isinstance(temperature, list) else f"{temperature:g}"
        name = f"{name_kind}_{mode}_t{text}_s{seed}"
        runfile.store_samples(run_path, name, levels, {"temperature": temperature, "mode": mode, "seed": seed})
        out = f"{run_path} (samples/{name})"
    else:
        pictures.write_samples(out, fmt, levels, {"temperature": temperature, "mode": mode, "seed": seed}, scale)
    click.echo(f"wrote {num} samples to {out}")


@click.command("reconstruct", context_settings=CONTEXT)
@click.argument("run_path", metavar="RUN", type=RUN_FILE)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default="recon.png", show_default=True)
@click.option("-n", "num", type=click.IntRange(1), default=16, show_default=True,
              help="Images per row pair (video models: unused, a row is one video's predicted frames).")
@click.option("--rows", type=click.IntRange(1), default=2, show_default=True,
              help="Pairs of rows (video models: the number of videos).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--scale", type=click.IntRange(1, 16), default=2, show_default=True)
def reconstruct_command(run_path, out, num, rows, split, device, scale):
    """Picture data (upper row) above its reconstruction (lower row, decoder mean on the
    posterior-mean path).  For a video model each pair of rows is one video's predicted
    frames, true above reconstructed."""
    from .. import images as pictures
    from .. import runfile
    from ..runs import load_model, reconstructions

    run = runfile.read(run_path)
    check_out(out, [run_path])
    runfile.check_writable(out)
    model = load_model(run, device)
    video = hasattr(model, "predict")
    shown, recon = reconstructions(run, rows if video else num * rows, split, device, model=model)
    if video:  # (videos, frames, C, H, W): one video a pair of rows
        num = shown.shape[1]
        shown, recon = shown.reshape(-1, *shown.shape[2:]), recon.reshape(-1, *recon.shape[2:])
    tiles = pictures.row_pairs(shown, recon, num, rows)
    pictures.write_png(out, pictures.upscale(pictures.grid(tiles, rows=2 * rows), scale))
    click.echo(f"wrote {out}")


@click.command("plot", context_settings=CONTEXT)
@click.argument("run_paths", metavar="RUN|DIR...", nargs=-1, required=True, type=RUNS)
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), default="curves.png", show_default=True)
@click.option("--kind", type=click.Choice(["curves", "rate-distortion", "groups", "prediction"]), default="curves",
              show_default=True, help="Training curves; KL (rate) against MSE (distortion), one point per run, "
                                      "FID as colour; the rate of each latent group per epoch (hvae, svg); or "
                                      "SSIM and PSNR per predicted frame (video models, after vae eval).")
def plot_command(run_paths, out, kind):
    """Pictures of runs as a PNG: training curves, or the rate-distortion plane."""
    from .. import plots, runfile

    if not out.lower().endswith(".png"):
        raise click.BadParameter(f"{out}: plots are written as PNG; give a name ending in .png", param_hint="-o")
    paths = expand_runs(run_paths)
    check_out(out, paths)
    runs = [runfile.read(p) for p in paths]
    {"curves": plots.training_curves, "rate-distortion": plots.rate_distortion, "groups": plots.group_rates,
     "prediction": plots.prediction_curves}[kind](runs, out)
    click.echo(f"wrote {out}")


COMMANDS = (sample_command, reconstruct_command, plot_command)
