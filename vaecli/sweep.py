"""A grid of training runs (likelihoods x betas x seeds) in one directory, resumable:
finished runs are skipped, interrupted ones resumed, then every run is evaluated."""

from __future__ import annotations

import os
from pathlib import Path

from . import runfile
from .config import TrainConfig

PAPER_BETAS = (0.001, 0.01, 0.1, 1.0, 10.0)  # the sigma-VAE paper's beta sweep (SVHN)


def grid(likelihoods, betas, seeds):
    """(likelihood, beta, seed) triples: betas sweep the fixed-variance `gaussian`
    only; every other decoder is trained with beta = 1 (its sigma does the balancing)."""
    for name in likelihoods:
        for beta in (betas if name == "gaussian" else (1.0,)):
            for seed in seeds:
                yield name, float(beta), int(seed)


def run_name(likelihood, beta, seed) -> str:
    return f"{likelihood}-beta{beta:g}-seed{seed}.h5"


def run_paths(directory) -> list:
    """The run files in a directory, sorted by name."""
    return sorted(str(p) for p in Path(directory).glob("*.h5") if not p.name.startswith("."))


def sweep(directory, base: TrainConfig, likelihoods, betas, seeds, metrics, *, fid_samples=0, inception=None,
          iw_samples=100, log=print, progress=False):
    """Train and evaluate the grid; returns the run file paths."""
    import torch

    from .evaluate import evaluate
    from .train import load_model, load_split, prepare_images, train

    os.makedirs(directory, exist_ok=True)
    paths = []
    test = None
    for name, beta, seed in grid(likelihoods, betas, seeds):
        path = os.path.join(directory, run_name(name, beta, seed))
        config = base.replace(likelihood=name, beta=beta, seed=seed)
        status = runfile.read(path).attrs.get("status") if os.path.exists(path) else None
        if status == "complete":
            log(f"{path}: done, skipped")
        else:
            log(f"{path}: {'resuming' if status else 'training'}")
            train(config, path, resume=status is not None, progress=progress, log=lambda s: None)
        paths.append(path)
        run = runfile.read(path)
        todo = [m for m in metrics if m != "fid" and m not in run.evaluations.get("test", {})]
        if todo:
            if test is None:
                test = load_split(base.dataset, "test", base.image_size)
            model = load_model(run, base.device)
            images = torch.from_numpy(prepare_images(test.images, run.config))
            results = evaluate(model, images, todo, iw_samples=iw_samples, binarized=run.config.binarize)
            runfile.store_evaluation(path, "test", results)
        if fid_samples and "fid" not in runfile.read(path).evaluations.get("test", {}):
            from . import fid

            if test is None:
                test = load_split(base.dataset, "test", base.image_size)
            model = load_model(run, base.device)
            extractor = fid.FeatureExtractor(inception, next(model.parameters()).device)
            runfile.store_evaluation(path, "test", {"fid": fid.model_fid(model, test, extractor, fid_samples)})
    return paths
