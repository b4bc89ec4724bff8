"""Everything a training run carries from step to step, and its checkpoint: the run
file written atomically after every epoch (and on Ctrl-C), from which a resumed run
continues exactly where the checkpointed one stood."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

from .. import runcheck, runfile
from .._version import __version__
from ..config import TrainConfig
from ..errors import VaeError
from .step import EpochSums, fused_state, match_layouts

HISTORY_COLUMNS = (
    "epoch", "train_elbo", "train_rec", "train_kl", "train_loss", "test_elbo", "test_rec", "test_kl",
    "sigma", "equivalent_beta", "train_mse", "seconds", "skipped_steps",
)
# Options that may differ when resuming: more epochs or time, another device, the step's machinery.
RESUMABLE_CHANGES = ("epochs", "time_budget", "early_stop", "min_delta", "device", "max_nonfinite", "compile", "cuda_graph", "memory_format")
CHECKPOINT_SPACE_FACTOR = 4  # free disk needed before training: this many checkpoints' worth


# ----------------------------------------------------------------- before training

def check_resume(stored: TrainConfig, wanted: TrainConfig):
    """Refuse a resume that would make the run another one.  A data file may be named by
    another path (moved, or relative to another directory): its images' checksum, checked
    when it is loaded, decides."""
    from ..datasets import catalog

    def same(name):
        a, b = getattr(stored, name), getattr(wanted, name)
        if name == "dataset" and catalog.canonical_name(a) is None and catalog.canonical_name(b) is None:
            return True  # two data files
        return a == b

    differ = [
        f"{f.name} (run file: {getattr(stored, f.name)!r}, now: {getattr(wanted, f.name)!r})"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUMABLE_CHANGES + ("model_options",) and not same(f.name)
    ]
    if stored.model == wanted.model:  # another model's options differ as a whole
        a, b = stored.model_options, wanted.model_options
        differ += [f"model option {k} (run file: {a.get(k)!r}, now: {b.get(k)!r})"
                   for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    if differ:
        raise VaeError("cannot resume with different options: " + "; ".join(differ))


def previous_run(out: str, config: TrainConfig, resume: bool):
    """The run file to continue (None for a new run), checked against ``config``."""
    if not resume:
        if os.path.exists(out):
            raise VaeError(f"{out} exists; pass --resume to continue it or choose another --out")
        return None
    previous = runfile.read(out)
    check_resume(previous.config, config)
    done = int(previous.attrs.get("epochs_done", 0))
    if config.epochs < done:
        raise VaeError(f"{out} has {done} epochs done; --epochs {config.epochs} cannot resume it "
                       f"(give --epochs {done} or more)")
    spent = trained_seconds(previous.history)  # (an epoch in progress past the budget ends at once)
    if out_of_time(spent, config) and not is_finished(previous, config):
        raise VaeError(f"{out} has trained {spent:.1f} s already; --time-budget {config.time_budget:g} cannot "
                       f"resume it (give a larger budget, or none)")
    return previous


def trained_seconds(history, progress=None) -> float:
    """Seconds of training so far: the history's epochs and the epoch in progress."""
    return float(np.sum(history.get("seconds", []))) + float((progress or {}).get("seconds", 0.0))


def out_of_time(seconds: float, config: TrainConfig) -> bool:
    return config.time_budget is not None and seconds >= config.time_budget


def is_finished(previous, config: TrainConfig) -> bool:
    """A complete run with all of ``config.epochs`` done, its time budget spent, or
    stopped early: nothing to train."""
    if previous is None or previous.attrs.get("status") != "complete":
        return False
    done = int(previous.attrs.get("epochs_done", 0))
    return (done == config.epochs or (done > 0 and out_of_time(trained_seconds(previous.history), config))
            or early_stopped(previous.history, config) is not None)


def best_validation(history, min_delta: float = 0.0, monitor: str = "bpd"):
    """(best validation value, its epoch index) of a history (``val_bpd`` or, monitoring the
    loss, ``val_loss``; bits/dim), where an epoch counts as better only if it beats the best
    so far by more than ``min_delta``; None without any."""
    best = None
    for i, value in enumerate(history.get(f"val_{monitor}", [])):
        value = float(value)
        if value == value and (best is None or value < best[0] - min_delta):  # (NaN never counts)
            best = (value, i)
    return best


def early_stopped(history, config: TrainConfig):
    """(best validation value, its epoch) when the last ``early_stop`` epochs brought no gain
    on the monitored value: the run ends; else None."""
    if not config.early_stop:
        return None
    best = best_validation(history, config.min_delta, config.monitor)
    epochs = len(history.get(f"val_{config.monitor}", []))
    if best is None or epochs - 1 - best[1] < config.early_stop:
        return None
    return best[0], best[1] + 1


def check_out_dir(out: str) -> str:
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise VaeError(f"cannot write the run file: directory {out_dir} does not exist or is not writable")
    return out_dir


def check_same_data(previous, train_set, config: TrainConfig):
    if previous is not None and previous.attrs["dataset_checksum"] != train_set.checksum:
        raise VaeError(f"cannot resume: the training data {config.dataset} differs from the run's "
                       f"{previous.config.dataset} (SHA-256 {train_set.checksum[:16]}… vs "
                       f"{previous.attrs['dataset_checksum'][:16]}…)")


def check_disk_space(directory, model):
    """Refuse to start when the disk cannot hold a few checkpoints (weights + Adam)."""
    import shutil

    need = CHECKPOINT_SPACE_FACTOR * 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(directory).free
    if free < need:
        raise VaeError(f"not enough disk space in {directory}: {free / 2**20:.1f} MiB free, "
                       f"checkpoints need about {need / 2**20:.1f} MiB")


def versions() -> str:
    import platform

    import h5py
    import scipy

    return (f"vaecli {__version__}; python {platform.python_version()}; torch {torch.__version__}; "
            f"numpy {np.__version__}; scipy {scipy.__version__}; h5py {h5py.__version__}")


def run_attrs(previous, config: TrainConfig, device, train_set, test_set, steps_per_epoch: int,
              latent_groups=()) -> dict:
    """The run file's root attributes that describe the run (not its progress); the names
    of the model's latent groups (the history's test_kl_group<i> columns) as JSON."""
    return {
        "created": previous.attrs["created"] if previous else runfile._now(),
        "likelihood": config.likelihood, "model": config.model, "n_bits": config.n_bits, "seed": config.seed,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "dataset": train_set.name, "dataset_source": str(train_set.source),
        "dataset_checksum": train_set.checksum, "test_checksum": test_set.checksum,
        "image_shape": np.asarray(train_set.images.shape[1:], dtype=np.int64), "num_train": len(train_set.images),
        "num_test": len(test_set.images), "steps_per_epoch": steps_per_epoch,
        "latent_groups": json.dumps(list(latent_groups)),
        "library_versions": versions(),
    }


# -------------------------------------------------------------------------- state

class TrainingState:
    """Where training stands: epochs and steps done, the history, the running sums of
    the epoch in progress, the random streams, the calibration and the final samples.

    Every rank draws the same batch order and the same noise for the whole global
    batch, then takes its shard: N processes follow one process's trajectory."""

    def __init__(self, config: TrainConfig, device):
        self.device = device
        self.data_order = torch.Generator().manual_seed(config.seed + 1)  # batch order, on the CPU
        self.dequant = torch.Generator(device=device).manual_seed(config.seed + 2)
        self.noise = torch.Generator(device=device).manual_seed(config.seed + 5)  # reparameterization
        self.epoch_order_state = self.data_order.get_state()
        self.history = {k: [] for k in HISTORY_COLUMNS}
        self.epochs_done, self.step_in_epoch = 0, 0
        self.epoch_seconds = 0.0  # training seconds of the epoch in progress before this process
        self.sums = EpochSums(device)
        self.calibration = {}
        self.samples = None
        self.ema = None  # a WeightAverage of the weights, where the config asks for one

    def evaluation_weights(self, model):
        """A context in which the model holds the weights evaluation uses: the average, if any."""
        import contextlib

        return self.ema.swapped_in(model) if self.ema is not None else contextlib.nullcontext()

    def restore(self, previous, model, optimizer, rank: int):
        """Continue from a checkpoint: weights, Adam, history, progress and random streams."""
        runcheck.check_model_state(previous.path, model, previous.model)
        runcheck.check_resume_state(previous.path, model, previous.optimizer, previous.rng)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in previous.model.items()})
        if previous.optimizer is not None:
            optimizer.load_state_dict(fused_state(optimizer_from_numpy(previous.optimizer)))
            match_layouts(optimizer)
        self.history = {k: list(previous.history.get(k, [])) for k in HISTORY_COLUMNS}
        self.history.update({k: list(v) for k, v in previous.history.items()
                             if k.startswith("test_kl_group") or k in ("val_bpd", "val_loss")})
        self.epochs_done = int(previous.attrs["epochs_done"])
        self.step_in_epoch = int(previous.progress.get("step_in_epoch", 0))
        self.epoch_seconds = float(previous.progress.get("seconds", 0.0)) if self.step_in_epoch else 0.0
        if self.step_in_epoch and rank == 0:  # the sums so far (global ones); the other ranks add theirs to 0
            self.sums = EpochSums(self.device, previous.progress)
        self.calibration = dict(previous.calibration)
        if self.ema is not None:
            if previous.ema:
                runcheck.check_model_state(previous.path, model, previous.ema)
                # the steps the average has taken in: Adam's count of steps taken
                steps = max((float(s["step"]) for s in (previous.optimizer or {}).get("state", {}).values()),
                            default=0.0)
                self.ema.load(previous.ema, steps)
            else:  # a run without an average yet: it starts from the weights resumed
                self.ema.load({k: v for k, v in previous.model.items() if k in self.ema.names})
        rng = previous.rng
        try:
            torch.set_rng_state(torch.from_numpy(rng["torch_cpu"]))
            self.epoch_order_state = torch.from_numpy(rng["data_order_epoch_start"])
            self.data_order.set_state(self.epoch_order_state)  # checked now, used at the epoch's start
            self.dequant.set_state(torch.from_numpy(rng["dequantize"]))
            self.noise.set_state(torch.from_numpy(rng["noise"]))
            if self.device.type == "cuda" and "torch_cuda" in rng:
                torch.cuda.set_rng_state(torch.from_numpy(rng["torch_cuda"]), self.device)
        except RuntimeError as exc:  # a state of another generator kind or size
            raise VaeError(f"{previous.path}: invalid run file: a random generator state does not load "
                           f"({str(exc).splitlines()[0]})") from None

    def epoch_order(self, n_train: int) -> torch.Tensor:
        """This epoch's batch order (the same for every resume within the epoch)."""
        self.data_order.set_state(self.epoch_order_state)
        return torch.randperm(n_train, generator=self.data_order).to(self.device)

    def rng(self) -> dict:
        rng = {
            "torch_cpu": torch.get_rng_state().numpy(),
            "data_order_epoch_start": self.epoch_order_state.numpy(),
            "dequantize": self.dequant.get_state().numpy(),
            "noise": self.noise.get_state().numpy(),
        }
        if self.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(self.device).numpy()
        return rng

    def save(self, out: str, config: TrainConfig, attrs: dict, model, optimizer, status: str, graph_state: str):
        """Write the checkpoint (atomically: the old file or the new one, never a torn one)."""
        progress = {"step_in_epoch": self.step_in_epoch,
                    **({**self.sums.to_dict(), "seconds": self.epoch_seconds} if self.step_in_epoch else {})}
        runfile.write(
            out, config=config, attrs=dict(attrs, status=status, epochs_done=self.epochs_done,
                                              cuda_graph=graph_state),
            model={k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
            optimizer=optimizer_to_numpy(optimizer.state_dict()), rng=self.rng(), progress=progress,
            history=self.history, calibration=self.calibration, samples=self.samples,
            ema=self.ema.state() if self.ema is not None else None,
        )


def optimizer_to_numpy(state_dict):
    return {
        "param_groups": state_dict["param_groups"],
        "state": {int(i): {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                           for k, v in s.items()} for i, s in state_dict["state"].items()},
    }


def optimizer_from_numpy(data):
    return {
        "param_groups": data["param_groups"],
        "state": {int(i): {k: torch.from_numpy(np.asarray(v)) for k, v in s.items()}
                  for i, s in data["state"].items()},
    }
