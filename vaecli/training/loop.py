"""Training, top to bottom: data on the device, one optimizer step per batch, a run
file checkpoint after every epoch (and on Ctrl-C), exact resume."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from .. import runfile, runs
from ..config import MONITOR_NAMES, TrainConfig
from ..errors import VaeError
from ..models.protocol import draw_noise, kl_per_group, log_likelihood, target_shape, total_kl
from ..report import epoch_line, progress_postfix
from ..units import equivalent_beta
from .. import calibration
from . import distributed, state
from .interrupt import Abort, InterruptFlag, NonFinite
from .ema import WeightAverage
from .step import NonFiniteGuard, TrainStep, make_optimizer

READ_EVERY_S = 0.5  # seconds between host reads of device values (progress, non-finite guard)
SAMPLE_GRID = 64  # prior samples stored in the run file at the end of training
SAMPLE_VIDEOS = 8  # a sequence model's predicted test videos stored instead


def train(config: TrainConfig, out, *, resume: bool = False, progress: bool = True,
          data=None, log=print) -> runfile.Run:
    """Train (or resume) a VAE and write the run file ``out``; returns it, read back."""
    out = os.fspath(out)
    previous = state.previous_run(out, config, resume)
    if state.is_finished(previous, config):  # nothing to train: the file stays as it is
        if distributed.environment_rank() == 0:  # under torchrun, one rank says so
            done = int(previous.attrs["epochs_done"])
            stopped = state.early_stopped(previous.history, config)
            if done == config.epochs:
                log(f"{out} is already complete ({done}/{done} epochs); nothing to train "
                    f"(--epochs {done + 1} or more trains on)")
            elif stopped is not None:
                log(f"{out} is already complete: stopped early after {done} epochs (validation best "
                    f"{MONITOR_NAMES[config.monitor]} {stopped[0]:.4f} at epoch {stopped[1]}); nothing to train "
                    "(a larger --early-stop trains on)")
            else:
                log(f"{out} is already complete: its time budget of {config.time_budget:g} s is spent "
                    f"({done} epochs); nothing to train (a larger --time-budget trains on)")
        return previous
    out_dir = state.check_out_dir(out)

    rank, world, device = distributed.setup(config.device)
    train_set, test_set = data if data is not None else runs.load_data(config)
    state.check_same_data(previous, train_set, config)
    validation_images, full_train = None, train_set
    if config.validation:  # carved from the training split; the test split stays unseen
        train_set, validation = runs.hold_out_validation(train_set, config.validation)
        validation_images = torch.from_numpy(runs.prepare_images(validation.images, config)).to(device)
    image_shape = tuple(train_set.images.shape[1:])
    runs.estimate_memory(config, image_shape, device, batch=config.batch_size, training=True,
                         data_bytes=train_set.images.nbytes + test_set.images.nbytes)
    train_images = torch.from_numpy(runs.prepare_images(train_set.images, config)).to(device)  # (N, C, H, W)
    test_images = torch.from_numpy(runs.prepare_images(test_set.images, config)).to(device)
    if train_images.shape[0] == 0:
        raise VaeError(f"dataset {config.dataset} has no training images")
    steps_per_epoch = math.ceil(train_images.shape[0] / config.batch_size)

    torch.manual_seed(config.seed)
    model = runs.build_model(config, image_shape, device)
    if config.memory_format == "channels_last":  # the conv weights, and so the activations, NHWC
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), config.lr)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions for the fixed batch shape
    state.check_disk_space(out_dir, model)
    if rank == 0:
        runfile.remove_stale_temporaries(out)
    stepper = _data_parallel(model, config, device) if world > 1 else model
    run = state.TrainingState(config, device)
    if config.ema:
        run.ema = WeightAverage(model, config.ema)
    if previous is not None:
        run.restore(previous, model, optimizer, rank)
        if run.step_in_epoch > steps_per_epoch:
            raise VaeError(f"{out}: invalid run file: step {run.step_in_epoch} of an epoch that has "
                           f"{steps_per_epoch} steps")
    attrs = state.run_attrs(previous, config, device, train_set, test_set, steps_per_epoch,
                            getattr(model, "group_names", ()))
    if validation_images is not None:  # the data named is the whole training split, checked on resume
        attrs["num_validation"] = int(validation_images.shape[0])
        attrs["dataset_checksum"] = full_train.checksum
    train_step = TrainStep(model, stepper, optimizer, beta=config.beta, world=world, precision=config.precision,
                           device=device, levels=2**config.n_bits,
                           all_finite=distributed.all_finite if world > 1 else None,
                           compile_forward=config.compile, cuda_graph=config.cuda_graph,
                           full_batch=config.batch_size, grad_clip=config.grad_clip, grad_skip=config.grad_skip,
                           free_bits=config.free_bits, ema=run.ema)

    def checkpoint(status):
        if rank == 0:
            run.save(out, config, attrs, model, optimizer, status, train_step.graph_state)

    loop = _EpochLoop(config, model, train_step, run, train_images, test_images, rank, world,
                      progress=progress and rank == 0, log=log, validation_images=validation_images)
    interrupted = InterruptFlag(patient=world > 1)
    try:
        with interrupted:
            loop.run(interrupted, checkpoint)
    except NonFinite as stop:
        loop.bar.close()
        last = (f"the last good checkpoint, {out} (epoch {run.epochs_done} complete), is intact"
                if os.path.exists(out) else "no checkpoint had been written yet")
        raise VaeError(
            f"{config.likelihood}: {config.max_nonfinite} non-finite steps in a row (loss or gradient) at epoch "
            f"{stop.epoch}, step {stop.step}; training stopped; {last}"
        ) from None
    except NothingTrained as stop:
        loop.bar.close()
        kept = f"{out} is unchanged" if previous is not None else "no run file was written"
        raise VaeError(f"{config.likelihood}: no step of {stop.epochs} epoch(s) was finite (every loss or gradient "
                       f"was NaN or infinite): nothing was trained, so the run stops; {kept} (try a smaller --lr)"
                       ) from None
    except KeyboardInterrupt:
        loop.bar.close()
        if world > 1:  # the ranks stopped at the same step: the checkpoint holds the global sums
            run.sums.all_reduce()
        try:
            with interrupted:  # a second signal while this checkpoint is written: Abort, below
                checkpoint("interrupted")
        except Abort:
            _aborted(out)
        raise VaeError(f"interrupted at epoch {run.epochs_done + 1}, step {run.step_in_epoch}/{steps_per_epoch}; "
                       f"saved {out}; continue with --resume") from None
    except Abort:
        loop.bar.close()
        _aborted(out)
    loop.bar.close()
    if config.epochs == 0 or (previous is not None and run.epochs_done == int(previous.attrs["epochs_done"])):
        checkpoint("complete")
    distributed.teardown(world)
    return runfile.read(out)


class NothingTrained(Exception):
    """Every step so far was non-finite: the model is as it was initialised."""

    def __init__(self, epochs):
        super().__init__(epochs)
        self.epochs = epochs


class _EpochLoop:
    """The epochs of one training process: steps, then the epoch's bookkeeping."""

    def __init__(self, config, model, train_step, run, train_images, test_images, rank, world, *, progress, log,
                 validation_images=None):
        self.config, self.model, self.train_step, self.state = config, model, train_step, run
        self.train_images, self.test_images, self.validation_images = train_images, test_images, validation_images
        self.rank, self.world, self.progress, self.log = rank, world, progress, log
        self.steps_per_epoch = math.ceil(train_images.shape[0] / config.batch_size)
        self.first_step = run.epochs_done * self.steps_per_epoch + run.step_in_epoch  # where this process starts
        self.guard = NonFiniteGuard(config.max_nonfinite, train_images.device)
        self.bar = _progress_bar(progress, total=config.epochs * self.steps_per_epoch, initial=self.first_step)

    def run(self, interrupted, checkpoint):
        run, config = self.state, self.config
        out_of_time = False
        while run.epochs_done < config.epochs and not out_of_time:  # (one epoch a pass)
            self.started = time.perf_counter()
            out_of_time = self._steps(interrupted)
            self._stop_if_tripped()
            with run.evaluation_weights(self.model):
                extra_seconds = self._end_epoch()
            run.history["seconds"].append(run.epoch_seconds + time.perf_counter() - self.started - extra_seconds)
            run.epoch_seconds = 0.0
            ended_early = out_of_time  # within the epoch
            out_of_time = out_of_time or self._spent(state.trained_seconds(run.history))
            stopped = self._early_stopped()
            if not any(math.isfinite(v) for v in run.history["train_elbo"]):
                raise NothingTrained(run.epochs_done + 1)
            steps_done, run.step_in_epoch = run.step_in_epoch, 0
            run.epochs_done += 1
            run.sums.reset()
            if self.progress:
                self.log(epoch_line(run.history, config))
                if out_of_time:
                    where = (f"after step {steps_done}/{self.steps_per_epoch} of epoch {run.epochs_done}"
                             if ended_early else f"with epoch {run.epochs_done}")
                    self.log(f"time budget of {config.time_budget:g} s spent {where}: training ends here")
                elif stopped is not None:
                    self.log(f"validation {MONITOR_NAMES[config.monitor]} has not improved by more than "
                             f"{config.min_delta:g} for "
                             f"{config.early_stop} epochs (best {stopped[0]:.4f} at epoch {stopped[1]}): "
                             "training ends here")
            out_of_time = out_of_time or stopped is not None  # (either way the run is complete)
            if run.epochs_done == config.epochs or out_of_time:
                gen = torch.Generator(device=self.train_images.device).manual_seed(config.seed + 4)
                with run.evaluation_weights(self.model):
                    if hasattr(self.model, "predict"):  # a sequence model: futures of test contexts
                        videos = runs.predicted_videos(self.model, self.test_images[:SAMPLE_VIDEOS], gen)
                        run.samples = {"predicted": (videos, {
                            "what": "the first test videos' context frames, then the likelihood mean of "
                                    "frames predicted with z from the learned prior, quantized to uint8",
                            "temperature": 1.0})}
                    else:
                        pictures = runs.prior_pictures(self.model, SAMPLE_GRID, gen)
                        run.samples = {"prior": (pictures,
                                                 {"what": "likelihood mean of z ~ N(0, I), quantized to uint8",
                                                  "temperature": 1.0})}
            checkpoint("complete" if run.epochs_done == config.epochs or out_of_time else "training")

    def _spent(self, seconds: float) -> bool:
        """Whether the budget is spent, by rank 0's clock on every rank (a collective
        under torchrun: each rank calls it at the same point)."""
        spent = state.out_of_time(seconds, self.config)
        if self.world > 1 and self.config.time_budget is not None:
            spent = distributed.any_ranks([spent and self.rank == 0], self.train_images.device)[0]
        return spent

    def _early_stopped(self):
        """The early-stopping rule's (best, epoch) when the run ends here, else None, by rank
        0's validation values on every rank (a collective under torchrun, as _spent)."""
        stopped = state.early_stopped(self.state.history, self.config)
        if self.world > 1 and self.config.early_stop:
            ends = distributed.any_ranks([stopped is not None and self.rank == 0], self.train_images.device)[0]
            stopped = (stopped or (math.nan, 0)) if ends else None
        return stopped

    def seconds_so_far(self) -> float:
        """Training seconds of the run up to now (the epoch in progress included)."""
        return state.trained_seconds(self.state.history) + self.state.epoch_seconds + time.perf_counter() - self.started

    def _steps(self, interrupted) -> bool:
        """The rest of the epoch's steps; a KeyboardInterrupt after the step in flight on a
        signal.  True when the time budget ran out (after the step that spent it)."""
        run, config, world = self.state, self.config, self.world
        if self.world == 1 and state.out_of_time(self.seconds_so_far(), config):
            return True  # (a resumed run whose budget was spent by the steps checkpointed)
        order = run.epoch_order(self.train_images.shape[0])
        self.model.train()
        last_read = time.perf_counter()
        for step in range(run.step_in_epoch, self.steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            n_global = batch.shape[0]
            shard = slice(self.rank, None, world)
            eps = draw_noise(self.model, n_global, run.noise)[shard]
            x = self.train_images[batch[shard]]
            x_in = x
            if config.dequantize:  # continuous levels x + u, u ~ U(-1/2, 1/2)
                u = torch.rand((n_global, *x.shape[1:]), generator=run.dequant, device=x.device)[shard] - 0.5
                x_in = x.float() + u
            loss, kl, raw = self.train_step(x, x_in, eps, n_global, run.sums, self.guard)
            run.step_in_epoch = step + 1
            self.bar.update(1)
            now = time.perf_counter()
            if now - last_read >= READ_EVERY_S:  # the only host reads of device values
                last_read = now
                if self.progress:
                    scored = x if raw.shape[0] == x.shape[0] else None  # (a sequence model's frames: no sigma shown)
                    self.bar.set_postfix_str(progress_postfix(run.epochs_done + 1, loss, kl, self.model.likelihood,
                                                              scored, raw), refresh=False)
                self._stop_if_tripped()
            if world == 1:
                if interrupted.flag:
                    raise self._interrupt()
                if state.out_of_time(self.seconds_so_far(), config):
                    return True
            elif (step + 1) % distributed.INTERRUPT_SYNC_STEPS == 0 or step + 1 == self.steps_per_epoch:
                # every rank stops after the same step: on a signal, or when rank 0's clock
                # says the budget is spent
                spent = state.out_of_time(self.seconds_so_far(), config)
                flags = distributed.any_ranks([interrupted.flag, spent and self.rank == 0], x.device)
                if flags[0]:
                    raise self._interrupt()
                if flags[1]:
                    return True
        return False

    def _interrupt(self) -> KeyboardInterrupt:
        """Stop here: the epoch's seconds so far go into the checkpoint."""
        self.state.epoch_seconds += time.perf_counter() - self.started
        self.started = time.perf_counter()
        return KeyboardInterrupt()

    def _stop_if_tripped(self):
        at = self.guard.tripped()
        if at is not None:
            index = self.first_step + at - 1
            raise NonFinite(index // self.steps_per_epoch + 1, index % self.steps_per_epoch + 1)

    def _end_epoch(self) -> float:
        """Calibration, the test ELBO and the history row of the epoch just trained;
        returns the seconds spent calibrating (checkpoint work, not the epoch's)."""
        run, config, lik = self.state, self.config, self.model.likelihood
        run.epoch_order_state = run.data_order.get_state()
        if self.world > 1:  # logged sums over the global batch
            run.sums.all_reduce()
        sums = run.sums
        finite = int(sums.images) > 0  # some step of the epoch was finite: its sums mean something
        n = max(int(sums.images), 1)
        train_mse = float(sums.sse) / (n * int(np.prod(target_shape(self.model))))
        sigma = calibration.epoch_sigma(lik, train_mse, config.log_sigma_min)
        started = time.perf_counter()
        values = calibration.calibrate(self.model, self.train_images, train_mse=train_mse,
                                       epoch=run.epochs_done + 1, seed=config.seed + 6, n_bits=config.n_bits,
                                       log_sigma_min=config.log_sigma_min)
        seconds = time.perf_counter() - started
        fixed = lik.sigma
        if values:
            run.calibration = values
            lik.sigma = values["eval_sigma"]  # evaluate with the calibrated sigma, never the test batch's
        test = _test_elbo(self.model, self.test_images, config)
        if self.validation_images is not None:
            pmf_fixed, lik.pmf_sigma = lik.pmf_sigma, (values or {}).get("pmf_sigma", lik.pmf_sigma)
            for key, value in _validation(self.model, self.validation_images, config).items():
                # (NaN for the epochs of a run made before the column existed: not recorded)
                run.history.setdefault(key, [math.nan] * run.epochs_done).append(value)
            lik.pmf_sigma = pmf_fixed
        lik.sigma = fixed
        h = run.history
        h["epoch"].append(run.epochs_done + 1)
        none = math.nan  # an epoch without a finite step has no training numbers
        h["train_rec"].append(float(sums.rec) / n if finite else none)
        h["train_kl"].append(float(sums.kl) / n if finite else none)
        h["train_elbo"].append((float(sums.rec) - float(sums.kl)) / n if finite else none)
        h["train_loss"].append(float(sums.loss) / n if finite else none)
        h["test_rec"].append(test["rec"])
        h["test_kl"].append(test["kl"])
        if len(test["kl_groups"]) > 1:  # the rate each latent group carries
            for i, value in enumerate(test["kl_groups"]):
                h.setdefault(f"test_kl_group{i}", []).append(value)
        h["test_elbo"].append(test["rec"] - test["kl"])
        h["sigma"].append(sigma if sigma is not None else math.nan)
        h["equivalent_beta"].append(equivalent_beta(sigma) if sigma is not None else math.nan)
        h["train_mse"].append(train_mse if lik.info.gaussian_family and finite else math.nan)
        h["skipped_steps"].append(int(sums.skipped))
        return seconds


def _data_parallel(model, config, device):
    """The model in DistributedDataParallel; a batch-coupled likelihood (the sigma-VAE's
    batch sigma*) gets the global batch's sums through a differentiable all-reduce."""
    from torch.nn.parallel import DistributedDataParallel

    if calibration.needs_calibration(config.likelihood):
        if config.backend != "torch":
            raise VaeError(f"data-parallel {config.likelihood} needs --backend torch "
                           "(its global MSE is a torch all-reduce)")
        model.likelihood.batch_reduce = distributed.all_reduce_sum
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _aborted(out):
    """After a second interrupt: nothing written now; the last checkpoint stands (atomic writes)."""
    status = runfile.read(out).attrs if os.path.exists(out) else None
    where = (f"{out} holds the last checkpoint (epoch {int(status['epochs_done'])} complete) unchanged; "
             "continue with --resume" if status is not None else "no checkpoint had been written yet")
    raise VaeError(f"interrupted twice: stopped at once, without saving; {where}") from None


@torch.no_grad()
def _test_elbo(model, images, config, batch_size=512):
    """Single-sample test ELBO terms in nats/image (log p uses the likelihood's
    log_prob; sigma-image uses its per-image sigma, a training objective only)."""
    model.eval()
    lik = model.likelihood
    rec = kl = 0.0
    groups = None
    gen = torch.Generator(device=images.device).manual_seed(config.seed + 3)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        out = model.posterior(model.encode(x), draw_noise(model, x.shape[0], gen))
        rec += float(log_likelihood(lik, x, out).double().sum())
        kl += float(total_kl(out.groups).double().sum())
        parts = torch.stack([part.double().sum() for part in kl_per_group(out.groups)])
        groups = parts if groups is None else groups + parts
    n = max(images.shape[0], 1)
    model.train()
    return {"rec": rec / n, "kl": kl / n, "kl_groups": [] if groups is None else (groups / n).tolist()}


@torch.no_grad()
def _validation(model, images, config, batch_size=512) -> dict:
    """The validation split's bits/dim, with fixed noise: ``val_bpd``, the discretized PMF's
    single-sample ELBO (as `vae eval --metric bpd`, comparable across decoders), and
    ``val_loss``, the training loss itself on these images: the likelihood training scores
    (a continuous decoder's density on y = x/(L-1)) with the KL weighted by beta and free
    bits as in training.  A density's -log p(y) is given in bits/dim with log2(L-1) a
    dimension added (an interior bin 1/(L-1) wide has mass about p(y)/(L-1)), the usual
    convention for continuous models; it is not the discretized bound: where many pixels sit
    at the edge levels, whose bins reach to infinity, it reads well above val_bpd.  At beta 1
    a discrete decoder's two values are equal."""
    from ..units import bits_per_dim

    model.eval()
    lik = model.likelihood
    rec = pmf = kl = kl_objective = 0.0
    gen = torch.Generator(device=images.device).manual_seed(config.seed + 7)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        out = model.posterior(model.encode(x), draw_noise(model, x.shape[0], gen))
        pmf += float(log_likelihood(lik, x, out, pmf=True).double().sum())
        rec += float(log_likelihood(lik, x, out).double().sum())
        kl += float(total_kl(out.groups).double().sum())
        if config.free_bits:
            kl_objective += float(sum(torch.clamp(part.double(), min=config.free_bits)
                                      for part in kl_per_group(out.groups)).sum())
    model.train()
    if not config.free_bits:
        kl_objective = kl
    n, dims = max(images.shape[0], 1), int(np.prod(target_shape(model)))
    offset = math.log2(2**config.n_bits - 1) if lik.info.continuous else 0.0
    return {"val_bpd": float(bits_per_dim((pmf - kl) / n, dims)),
            "val_loss": float(bits_per_dim((rec - config.beta * kl_objective) / n, dims)) + offset}


def _progress_bar(enabled, total, initial):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                leave=False)
