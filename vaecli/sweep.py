"""A grid of training runs (models x likelihoods x betas x seeds) in one directory, resumable:
finished runs are skipped, interrupted ones resumed, then every run is evaluated."""

from __future__ import annotations

import os
from pathlib import Path

from . import runfile
from .config import TrainConfig
from .errors import VaeError

PAPER_BETAS = (0.001, 0.01, 0.1, 1.0, 10.0)  # the sigma-VAE paper's beta sweep (SVHN)


def grid(likelihoods, betas, seeds):
    """(likelihood, beta, seed) triples: betas sweep the fixed-variance `gaussian`
    only; every other decoder is trained with beta = 1 (its sigma does the balancing)."""
    betas = list(dict.fromkeys(float(b) for b in betas))  # a beta given twice is one run
    for name in dict.fromkeys(likelihoods):
        for beta in (betas if name == "gaussian" else (1.0,)):
            for seed in dict.fromkeys(int(s) for s in seeds):
                yield name, beta, seed


def _beta_text(beta: float) -> str:
    """beta in a file name: the short form (0.1, 1, 10) where it is exact, else every
    digit, so that two betas never share a file."""
    short = f"{beta:g}"
    return short if float(short) == beta else repr(beta)


def run_name(likelihood, beta, seed, model="conv") -> str:
    """The run's file name; models other than the default conv lead it (a user's
    factory with its dots and colon as underscores)."""
    prefix = "" if model == "conv" else model.replace(":", "_").replace(".", "_") + "-"
    return f"{prefix}{likelihood}-beta{_beta_text(beta)}-seed{seed}.h5"


def run_paths(directory) -> list:
    """The run files in a directory, sorted by name."""
    return sorted(str(p) for p in Path(directory).glob("*.h5") if not p.name.startswith("."))


def _stale(metric, stored, iw_samples) -> bool:
    """Whether a stored evaluation is missing or was made with another K (nll)."""
    if stored is None:
        return True
    return metric == "nll" and stored.get("applicable", True) not in (False, 0) and \
        int(stored.get("iw_samples", iw_samples)) != iw_samples


def sweep(directory, base: TrainConfig, likelihoods, betas, seeds, metrics, *, fid_samples=0, inception=None,
          allow_unknown_weights=False, iw_samples=100, log=print, progress=False, models=None):
    """Train and evaluate the grid; returns the run file paths.  ``models`` (model name
    -> its options; default: ``base``'s model) is the grid's outer axis.  A run file
    already in the directory is continued (or skipped when complete) only if it was
    made with the same settings; otherwise the sweep stops with one line, as
    `vae train --resume` does."""
    from .runs import evaluate_run, load_split
    from .training import train
    from .training.state import check_resume, is_finished

    os.makedirs(directory, exist_ok=True)
    paths = []
    test = None
    models = models or {base.model: base.model_options}
    cells = [(model, *cell) for model in models for cell in grid(likelihoods, betas, seeds)]
    # every cell's settings are checked before the first run trains, so that a bad one stops
    # the sweep at once rather than hours in
    configs = [base.replace(model=model, model_options=models[model], likelihood=name, beta=beta, seed=seed)
               for model, name, beta, seed in cells]
    for (model, name, beta, seed), config in zip(cells, configs):
        path = os.path.join(directory, run_name(name, beta, seed, model))
        previous = runfile.read(path) if os.path.exists(path) else None
        if previous is not None:
            try:
                check_resume(previous.config, config)
            except VaeError as exc:
                raise VaeError(f"{path} was made with other settings ({str(exc).split(': ', 1)[1]}); "
                               "use another --out-dir, or the settings it was made with") from None
            done = int(previous.attrs.get("epochs_done", 0))
            if done > config.epochs:
                raise VaeError(f"{path} has {done} epochs, more than --epochs {config.epochs}; use another "
                               f"--out-dir, or --epochs {done} or more")
        if is_finished(previous, config):
            log(f"{path}: done, skipped")
        else:
            log(f"{path}: {'resuming' if previous is not None else 'training'}")
            try:
                train(config, path, resume=previous is not None, progress=progress, log=lambda s: None)
            except VaeError as exc:
                raise VaeError(str(exc).replace("continue with --resume",
                                                "rerun the same vae sweep command to continue")) from None
        paths.append(path)
        run = runfile.read(path)
        stored = run.evaluations.get("test", {})
        todo = [m for m in metrics if m != "fid" and _stale(m, stored.get(m), iw_samples)]
        want_fid = fid_samples and "fid" not in stored
        if test is None:
            test = load_split(base.dataset, "test", base.image_size)
        if test.checksum != run.attrs.get("test_checksum", test.checksum):  # a run of the directory's
            raise VaeError(f"{path} was trained on other data than {base.dataset} (test split SHA-256 "
                           f"{run.attrs['test_checksum'][:16]}…, here {test.checksum[:16]}…); use another "
                           "--out-dir")
        wanted = todo + (["fid"] if want_fid else [])
        if wanted:
            key, results, _ = evaluate_run(run, wanted, device=base.device, iw_samples=iw_samples,
                                           fid_samples=fid_samples, inception=inception,
                                           allow_unknown_weights=allow_unknown_weights)
            runfile.store_evaluation(path, key, results)
    return paths
