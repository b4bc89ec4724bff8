"""From a config or a run file to a model and its data, and the one evaluation path.

``vae train``, ``vae eval``, ``vae sweep``, the other commands and the Python API all
build models, load data and evaluate through these functions, so that a number means
the same wherever it was made and carries the same provenance.
"""

from __future__ import annotations

import numpy as np
import torch

from . import datasets, models, runcheck, runfile
from .api import Likelihood
from .config import TrainConfig
from .errors import VaeError
from .calibration import apply as apply_calibration
from .devices import resolve_device

HOLDOUT_SEED = 0  # data files without splits: the permutation that picks the test set
HOLDOUT_FRACTION = 0.1  # ... and the share of images it holds out


# --------------------------------------------------------------------------- data

def prepare_images(images: np.ndarray, config: TrainConfig) -> np.ndarray:
    """uint8 8-bit data -> the levels the model sees (fewer bits, or binarized)."""
    if config.binarize:
        return np.where(images >= 128, 2**config.n_bits - 1, 0).astype(np.uint8)
    if config.n_bits < 8:
        return (images >> (8 - config.n_bits)).astype(np.uint8)
    return images if images.flags.writeable else images.copy()  # torch wants writable memory


def load_split(dataset: str, split: str, size=None):
    """One split of a dataset.  A data file without train/test splits is split here:
    a fixed permutation (seed HOLDOUT_SEED) holds out HOLDOUT_FRACTION as the test set,
    so training and evaluation never see the same images by accident."""
    from .datasets.core import Dataset

    data = datasets.load(dataset, split, size=size)
    if data.split != "all":
        return data
    n = data.images.shape[0]
    if n < 2:
        raise VaeError(f"{dataset}: {n} image; need at least 2 to hold out a test set")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(n)
    n_test = max(1, round(HOLDOUT_FRACTION * n))
    keep = np.sort(order[:n_test] if split == "test" else order[n_test:])
    labels = None if data.labels is None else data.labels[keep]
    return Dataset(np.ascontiguousarray(data.images[keep]), labels, data.name,
                   f"{split} (fixed {HOLDOUT_FRACTION:.0%} hold-out of a file without splits)",
                   source=data.source, attribution=data.attribution)


VALIDATION_SEED = 1  # the permutation that picks a validation split (the same for every training seed)


def hold_out_validation(train, share: float):
    """(training, validation): ``share`` of the training split, picked by a fixed
    permutation (seed VALIDATION_SEED), held out; the test split is never touched."""
    from .datasets.core import Dataset

    n = len(train.images)
    n_val = round(share * n)
    if n_val < 1 or n_val >= n:
        raise VaeError(f"--validation {share:g} of {n} training images leaves {n_val} for validation and "
                       f"{n - n_val} for training; each needs at least 1")
    order = np.random.default_rng(VALIDATION_SEED).permutation(n)
    parts = []
    for keep, name in ((np.sort(order[n_val:]), "train"), (np.sort(order[:n_val]), "validation")):
        labels = getattr(train, "labels", None)
        parts.append(Dataset(np.ascontiguousarray(train.images[keep]), None if labels is None else labels[keep],
                             train.name, f"{train.split}: {name} ({share:.0%} held out for validation)",
                             source=str(getattr(train, "source", "")),
                             attribution=getattr(train, "attribution", "")))
    return tuple(parts)


def load_data(config: TrainConfig):
    """(train, test) splits of the config's dataset."""
    return load_split(config.dataset, "train", config.image_size), load_split(config.dataset, "test", config.image_size)


def run_split(run: runfile.Run, split: str, data_path=None):
    """The images a run is evaluated on: a split of its dataset, or all of a data file."""
    if data_path:
        data = datasets.load(data_path, split, size=run.config.image_size)
    else:
        data = load_split(run.config.dataset, split, run.config.image_size)
    if tuple(data.images.shape[1:]) != run.image_shape:
        raise VaeError(f"{data.source}: images of shape {data.images.shape[1:]} do not fit this model "
                       f"(trained on {run.image_shape})")
    return data


def levels_to_uint8(levels: np.ndarray, n_bits: int) -> np.ndarray:
    """Levels 0 .. 2**n_bits - 1 as 8-bit pixel values (for pictures)."""
    return (levels.astype(np.float64) * 255 / (2**n_bits - 1) + 0.5).astype(np.uint8)


def mean_to_uint8(mean: torch.Tensor) -> np.ndarray:
    """A [0, 1] picture -> uint8 exactly as saved images are quantized (round half up)."""
    return torch.clamp(torch.floor(mean.double() * 255 + 0.5), 0, 255).to(torch.uint8).cpu().numpy()


# -------------------------------------------------------------------------- models

def build_likelihood(config: TrainConfig) -> Likelihood:
    from . import registry

    # a sigma stored with a decoder that takes none (accepted, and ignored, before
    # vaecli checked it) is left out, so that such run files still load
    sigma = config.sigma if config.likelihood in registry.FIXED_SIGMA else None
    return Likelihood(config.likelihood, backend=config.backend, n_bits=config.n_bits, sigma=sigma,
                      mixtures=config.mixtures, log_sigma_min=config.log_sigma_min)


def build_model(config: TrainConfig, image_shape, device):
    """The config's model, freshly initialised (from torch's global RNG), on ``device``;
    its weights' memory is estimated first (on torch's meta device, no allocation) and a
    model the device cannot hold is refused in one line."""
    estimate_memory(config, image_shape, device, batch=0, training=False)
    return models.build(config.model, config.model_options, image_shape, build_likelihood(config)).to(device)


def estimate_memory(config: TrainConfig, image_shape, device, *, batch: int, training: bool, data_bytes: int = 0):
    """Bytes the model's weights (and in training its gradients and Adam moments) and a
    pass of ``batch`` images take, found by building the model and running one image
    through it on the meta device; a VaeError if that exceeds what the device has."""
    from .devices import check_fits, size_text

    with torch.device("meta"):
        probe = models.build(config.model, config.model_options, image_shape, build_likelihood(config))
        weights = sum(p.numel() * p.element_size() for p in probe.parameters())
        activations = 0
        if batch:
            def count(module, inputs, output):
                nonlocal activations
                for t in output if isinstance(output, (tuple, list)) else (output,):
                    if isinstance(t, torch.Tensor):
                        activations += t.numel() * t.element_size()

            hooks = [m.register_forward_hook(count) for m in probe.modules() if not list(m.children())]
            x = torch.zeros((1, *image_shape), dtype=torch.uint8)
            probe(x, torch.zeros(1, probe.latent_size))
            for h in hooks:
                h.remove()
    per_image = activations * (2 if training else 1)  # kept for the backward pass, and their gradients
    need = weights * (4 if training else 1) + batch * per_image + data_bytes
    parts = (f"weights {size_text(weights)}{' x4 with gradients and Adam' if training else ''}"
             + (f", activations {size_text(per_image)} an image x {batch}" if batch else "")
             + (f", data {size_text(data_bytes)}" if data_bytes else ""))
    check_fits(need, device, f"{config.model} ({', '.join(f'{k} {v}' for k, v in config.model_options.items())})"
               f" on {image_shape[0]}x{image_shape[1]}x{image_shape[2]} images", parts)
    return need


def load_model(run: runfile.Run, device="auto", for_evaluation=True):
    """The trained model of a run file in eval mode, with the calibrated evaluation
    sigmas set on its likelihood (where it has them)."""
    device = resolve_device(device) if isinstance(device, str) else device
    model = build_model(run.config, run.image_shape, device)
    runcheck.check_model_state(run.path, model, run.model)
    # evaluation and sampling use the weights' moving average where the run kept one
    weights = {**run.model, **run.ema} if for_evaluation and run.ema else run.model
    if for_evaluation and run.ema:
        runcheck.check_model_state(run.path, model, weights)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    if for_evaluation:
        apply_calibration(model, run.calibration, run.path)
    model.eval()
    return model


def load_run(path, device: str = "auto"):
    """The trained model of a run file, in eval mode, with its likelihood's evaluation
    sigmas set (``sigma`` runs): what ``vae eval`` evaluates.  The sigmas are attributes
    of ``model.likelihood``, not part of ``state_dict()``."""
    return load_model(runfile.read(path), device)


@torch.no_grad()
def prior_pictures(model, n: int, generator: torch.Generator, *, temperature=1.0, mode="mean",
                   batch: int = 1000) -> np.ndarray:
    """uint8 pictures (n, C, H, W) of prior samples, decoded ``batch`` at a time (memory
    stays bounded for any n): the decoder mean, or (``mode="sample"``) a draw from the
    decoder distribution."""
    from .models.protocol import draw_noise

    from .devices import check_fits

    p = next(model.parameters())
    check_fits(n * (model.latent_size * p.element_size() + int(np.prod(model.image_shape))), p.device,
               f"{n} prior samples (their noise and uint8 pictures)")
    eps = draw_noise(model, n, generator)
    chunks = []
    for start in range(0, n, batch):
        raw = model.generate(eps[start : start + batch], temperature)
        if mode == "mean":
            chunks.append(mean_to_uint8(model.likelihood.mean(raw)))
        else:
            drawn = model.likelihood.sample(raw, generator=generator).cpu().numpy()
            chunks.append(levels_to_uint8(drawn, model.likelihood.n_bits))
    return np.concatenate(chunks)


@torch.no_grad()
def predicted_videos(model, videos: torch.Tensor, generator: torch.Generator, *, temperature=1.0,
                     steps=None) -> np.ndarray:
    """uint8 videos (N, n_past + steps, C, H, W) of a sequence model: the context frames
    of ``videos`` (levels), then the decoder means of the ``steps`` frames it predicts
    (the model's n_future unless given), quantized to 8 bits as pictures are saved."""
    context = videos[:, : model.n_past]
    steps = model.n_future if steps is None else steps
    eps = torch.randn(videos.shape[0], model.n_past - 1 + steps, model.z_dim, generator=generator,
                      device=videos.device)
    raw = model.predict(context, eps, steps, temperature)
    b, f = raw.shape[:2]
    means = mean_to_uint8(model.likelihood.mean(raw.reshape(b * f, *raw.shape[2:]).float()))
    future = means.reshape(b, f, *means.shape[1:])
    past = levels_to_uint8(context.cpu().numpy(), model.likelihood.n_bits)
    return np.concatenate([past, future], axis=1)


# ---------------------------------------------------------------------- evaluation

PREDICTION_METRICS = ("ssim", "psnr")  # a video model's: scores of sampled futures (vaecli.prediction)


def evaluate_run(run: runfile.Run, metrics, *, split="test", data_path=None, model=None, device="auto",
                 batch_size=256, elbo_samples=1, iw_samples=100, seed=0, fid_samples=10_000, fid_ref="test",
                 inception=None, allow_unknown_weights=False, progress=None, rank=0, world=1, future_samples=100,
                 fid_temperature=1.0):
    """Evaluate ``metrics`` of a run on a split (or a data file): the results with their
    provenance (the data, its checksum, its levels, and the seed, batch size and samples
    the Monte Carlo numbers depend on), and the key they are stored under.  ``progress``
    is a function (label, total) -> update(n) for progress bars.  Returns (key, results, n)."""
    from .evaluate import evaluate

    model = model if model is not None else load_model(run, device)
    data = run_split(run, split, data_path)
    images = torch.from_numpy(prepare_images(data.images, run.config))
    results = {}
    video = hasattr(model, "predict")
    likelihood_metrics = [m for m in metrics if m not in ("fid", *PREDICTION_METRICS)]
    if likelihood_metrics:
        with _bar(progress, "evaluating", images.shape[0]) as update:
            results = evaluate(model, images, likelihood_metrics, batch_size=batch_size, elbo_samples=elbo_samples,
                               iw_samples=iw_samples, seed=seed, binarized=run.config.binarize,
                               progress=update, rank=rank, world=world)
    wanted = [m for m in metrics if m in PREDICTION_METRICS]
    if wanted and not video:
        results.update({m: {"applicable": False, "n": int(images.shape[0]),
                            "reason": "SSIM and PSNR score predicted video frames; this is an image model"}
                        for m in wanted})
    elif wanted:
        from .prediction import prediction_metrics

        with _bar(progress, "predicting", images.shape[0]) as update:
            results.update(prediction_metrics(model, images.to(next(model.parameters()).device), wanted,
                                              samples=future_samples, seed=seed, batch_size=batch_size,
                                              progress=update))
    if "fid" in metrics and video:
        results["fid"] = {"applicable": False, "n": int(images.shape[0]),
                          "reason": "FID scores images; a video model reports ssim and psnr of its predictions"}
    elif "fid" in metrics:
        from . import fid

        from .models.protocol import temperatures_for

        temperature = temperatures_for(model, fid_temperature)  # before the Inception loads: a wrong count is quick
        extractor = fid.FeatureExtractor(inception, next(model.parameters()).device, allow_unknown_weights)
        reference = load_split(run.config.dataset, fid_ref, run.config.image_size)
        with _bar(progress, "fid", fid_samples + len(reference.images)) as update:
            results["fid"] = fid.model_fid(model, reference, extractor, fid_samples,
                                           min(batch_size, fid.DEFAULT_BATCH), seed=seed, progress=update,
                                           rank=rank, world=world, temperature=temperature)
    if data_path:
        where = str(data_path) if data.split == "all" else f"{data_path}:{data.split}"
    else:
        where = f"{data.name}/{data.split}"
    for r in results.values():
        r["data"] = where
        r["data_checksum"] = data.checksum
        # what the Monte Carlo noise depends on: with these the number is reproduced exactly
        r["seed"], r["batch_size"], r["elbo_samples"] = seed, batch_size, elbo_samples
        # the levels the model saw: bits/dim are of this data (of the 8-bit data only at n_bits 8)
        r["data_levels"] = 2 if run.config.binarize else 2**run.config.n_bits
        if world > 1:
            r["processes"] = world
    key = f"data:{data.checksum[:16]}" if data_path else split
    return key, results, int(images.shape[0])


class _bar:
    """A progress bar from a factory (label, total) -> update, or none."""

    def __init__(self, factory, label, total):
        self.factory, self.label, self.total = factory, label, total
        self.ctx = None

    def __enter__(self):
        if self.factory is None:
            return None
        self.ctx = self.factory(self.label, self.total)
        return self.ctx.__enter__()

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx is not None else False


def recalibrate(run: runfile.Run, device="auto") -> dict:
    """The PMF evaluation sigma of a run whose likelihood is calibrated, computed from
    its training data (for run files written before vae train stored it)."""
    from .calibration import needs_calibration, pmf_sigma

    if not needs_calibration(run.config.likelihood):
        raise VaeError(f"{run.path}: a {run.config.likelihood} run; only sigma runs have evaluation sigmas")
    model = load_model(run, device)
    data = load_split(run.config.dataset, "train", run.config.image_size)
    if data.checksum != run.attrs["dataset_checksum"]:
        raise VaeError(f"{run.path}: the training data {run.config.dataset} here differs from the run's "
                       f"(SHA-256 {data.checksum[:16]}… vs {run.attrs['dataset_checksum'][:16]}…)")
    if run.config.validation:  # the images it trained on, as training calibrated it
        data = hold_out_validation(data, run.config.validation)[0]
    images = torch.from_numpy(prepare_images(data.images, run.config)).to(next(model.parameters()).device)
    return pmf_sigma(model, images, seed=run.config.seed + 6, n_bits=run.config.n_bits,
                     log_sigma_min=run.config.log_sigma_min)


@torch.no_grad()
@torch.no_grad()
def reconstruct(model, x: torch.Tensor):
    """(the posterior's output, the uint8 reconstruction) of a batch x on the model's
    device: the decoder mean on the posterior-mean path (eps = 0)."""
    eps = torch.zeros(x.shape[0], model.latent_size, device=x.device)
    out = model.posterior(model.encode(x), eps)
    return out, mean_to_uint8(model.likelihood.mean(out.raw))


def reconstructions(run: runfile.Run, n: int, split="test", device="auto", model=None):
    """(data, reconstruction) of the first ``n`` examples of a split as uint8 pictures:
    the decoder mean on the posterior-mean path (eps = 0).  Images come as (n, C, H, W);
    a sequence model's come as (n, frames, C, H, W), the frames it predicts."""
    model = model if model is not None else load_model(run, device)
    data = load_split(run.config.dataset, split, run.config.image_size)
    if n > len(data.images):
        what = "videos asked for (--rows)" if data.images.ndim == 5 else "images asked for (-n x --rows)"
        raise VaeError(f"{n} {what}, but the {split} split has {len(data.images)}")
    x = torch.from_numpy(prepare_images(data.images[:n], run.config))
    out, recon = reconstruct(model, x.to(next(model.parameters()).device))
    if out.target is not None:  # a sequence model: the frames it predicts
        from .models.protocol import target_shape

        frames = target_shape(model)
        shown = levels_to_uint8(out.target.cpu().numpy(), run.config.n_bits).reshape(n, *frames)
        return shown, recon.reshape(n, *frames)
    return levels_to_uint8(x.numpy(), run.config.n_bits), recon
