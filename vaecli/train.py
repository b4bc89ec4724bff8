"""Training, top to bottom: data on the device, one optimizer step per batch, a run
file checkpoint after every epoch (and on Ctrl-C), exact resume."""

from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import torch

from . import registry, runfile
from ._version import __version__
from .api import Likelihood, gaussian_kl
from .calibration import pmf_sigma
from .config import TrainConfig
from .errors import VaeError
from .model import ConvVAE
from .step import EpochSums, NonFiniteGuard, TrainStep, fused_state, make_optimizer, match_layouts
from .units import equivalent_beta

HISTORY_COLUMNS = (
    "epoch", "train_elbo", "train_rec", "train_kl", "train_loss", "test_elbo", "test_rec", "test_kl",
    "sigma", "equivalent_beta", "train_mse", "seconds", "skipped_steps",
)
# Options that may differ when resuming: more epochs, another device.
RESUMABLE_CHANGES = ("epochs", "device", "max_nonfinite", "compile", "cuda_graph", "memory_format")
CHECKPOINT_SPACE_FACTOR = 4  # free disk needed before training: this many checkpoints' worth
READ_EVERY_S = 0.5  # seconds between host reads of device values (progress, non-finite guard)
SAMPLE_GRID = 64  # prior samples stored in the run file at the end of training
HOLDOUT_SEED = 0  # data files without splits: the permutation that picks the test set
HOLDOUT_FRACTION = 0.1  # ... and the share of images it holds out


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N as a torch device; anything else is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    if name not in ("cpu", "cuda") and not (index is not None and index.isdigit()):
        raise VaeError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VaeError(f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False)")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise VaeError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


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
    from . import datasets
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


def load_data(config: TrainConfig):
    return load_split(config.dataset, "train", config.image_size), load_split(config.dataset, "test", config.image_size)


def build_model(config: TrainConfig, image_shape, device) -> ConvVAE:
    c, h, w = image_shape
    if h != w:
        raise VaeError(f"the convolutional VAE needs square images, got {h}x{w}")
    # a sigma stored with a decoder that takes none (accepted, and ignored, before
    # vaecli checked it) is left out, so that such run files still load
    sigma = config.sigma if config.likelihood in registry.FIXED_SIGMA else None
    lik = Likelihood(
        config.likelihood, backend=config.backend, n_bits=config.n_bits, sigma=sigma,
        mixtures=config.mixtures, log_sigma_min=config.log_sigma_min,
    )
    return ConvVAE(c, h, lik, latent_dim=config.latent_dim, width=config.width).to(device)


def softclipped_sigma(mse: float, floor) -> float:
    """exp(softclip(0.5 log mse, floor)): the analytic sigma* of a given MSE."""
    t = 0.5 * math.log(max(mse, 1e-300))
    if floor is not None:
        t = floor + math.log1p(math.exp(t - floor)) if t - floor < 30 else t
    return math.exp(t)


def check_resume(stored: TrainConfig, wanted: TrainConfig):
    """Refuse a resume that would make the run another one.  A data file may be named by
    another path (moved, or relative to another directory): its images' checksum, checked
    when it is loaded, decides."""
    import dataclasses

    from .datasets import catalog

    def same(name):
        a, b = getattr(stored, name), getattr(wanted, name)
        if name == "dataset" and catalog.canonical_name(a) is None and catalog.canonical_name(b) is None:
            return True  # two data files
        return a == b

    differ = [
        f"{f.name} (run file: {getattr(stored, f.name)!r}, now: {getattr(wanted, f.name)!r})"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUMABLE_CHANGES and not same(f.name)
    ]
    if differ:
        raise VaeError("cannot resume with different options: " + "; ".join(differ))


def train(config: TrainConfig, out: str, *, resume: bool = False, progress: bool = True,
          data=None, log=print) -> runfile.Run:
    """Train (or resume) a VAE and write the run file ``out``; returns it, read back."""
    # ---------------------------------------------------------------- the run file
    out = os.fspath(out)
    if resume:
        previous = runfile.read(out)
        check_resume(previous.config, config)
        done = int(previous.attrs.get("epochs_done", 0))
        if config.epochs < done:
            raise VaeError(f"{out} has {done} epochs done; --epochs {config.epochs} cannot resume it "
                           f"(give --epochs {done} or more)")
        if config.epochs == done and previous.attrs.get("status") == "complete":
            # nothing to train: the file, its evaluations and samples stay as they are
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one rank says so
                log(f"{out} is already complete ({done}/{done} epochs); nothing to train "
                    f"(--epochs {done + 1} or more trains on)")
            return previous
    else:
        previous = None
        if os.path.exists(out):
            raise VaeError(f"{out} exists; pass --resume to continue it or choose another --out")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise VaeError(f"cannot write the run file: directory {out_dir} does not exist or is not writable")

    # ---------------------------------------------------------------------- data
    rank, world, device = distributed_setup(config.device)
    progress = progress and rank == 0
    train_set, test_set = data if data is not None else load_data(config)
    image_shape = tuple(train_set.images.shape[1:])
    if previous is not None and previous.attrs["dataset_checksum"] != train_set.checksum:
        raise VaeError(f"cannot resume: the training data {config.dataset} differs from the run's "
                       f"{previous.config.dataset} (SHA-256 {train_set.checksum[:16]}… vs "
                       f"{previous.attrs['dataset_checksum'][:16]}…)")
    train_images = torch.from_numpy(prepare_images(train_set.images, config)).to(device)  # (N, C, H, W) uint8
    test_images = torch.from_numpy(prepare_images(test_set.images, config)).to(device)
    n_train = train_images.shape[0]
    if n_train == 0:
        raise VaeError(f"dataset {config.dataset} has no training images")
    steps_per_epoch = math.ceil(n_train / config.batch_size)

    # ------------------------------------------------------------ model and state
    torch.manual_seed(config.seed)
    model = build_model(config, image_shape, device)
    if config.memory_format == "channels_last":  # the conv weights, and so the activations, NHWC
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), config.lr)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions for the fixed batch shape
    _check_disk_space(out_dir, model)
    if rank == 0:
        runfile.remove_stale_temporaries(out)
    stepper = model  # what the training step calls: the model, or its DDP wrapper
    if world > 1:
        if config.backend != "torch" and config.likelihood == "sigma":
            raise VaeError("data-parallel sigma needs --backend torch (its global MSE is a torch all-reduce)")
        from torch.nn.parallel import DistributedDataParallel

        stepper = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.likelihood == "sigma":
            model.likelihood.batch_reduce = _all_reduce_sum
    # Every rank draws the same batch order and the same noise for the whole global
    # batch, then takes its shard: N processes follow one process's trajectory.
    data_order = torch.Generator().manual_seed(config.seed + 1)  # batch order, on the CPU
    dequant = torch.Generator(device=device).manual_seed(config.seed + 2)
    noise = torch.Generator(device=device).manual_seed(config.seed + 5)  # reparameterization
    history = {k: [] for k in HISTORY_COLUMNS}
    epochs_done, step_in_epoch = 0, 0
    sums = EpochSums(device)
    epoch_order_state = data_order.get_state()
    if previous is not None:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in previous.model.items()})
        if previous.optimizer is not None:
            optimizer.load_state_dict(fused_state(_optimizer_from_numpy(previous.optimizer)))
            match_layouts(optimizer)
        history = {k: list(previous.history.get(k, [])) for k in HISTORY_COLUMNS}
        epochs_done = int(previous.attrs["epochs_done"])
        step_in_epoch = int(previous.progress.get("step_in_epoch", 0))
        if step_in_epoch and rank == 0:  # the sums so far (global ones); the other ranks add theirs to 0
            sums = EpochSums(device, previous.progress)
        torch.set_rng_state(torch.from_numpy(previous.rng["torch_cpu"]))
        epoch_order_state = torch.from_numpy(previous.rng["data_order_epoch_start"])
        dequant.set_state(torch.from_numpy(previous.rng["dequantize"]))
        noise.set_state(torch.from_numpy(previous.rng["noise"]))
        if device.type == "cuda" and "torch_cuda" in previous.rng:
            torch.cuda.set_rng_state(torch.from_numpy(previous.rng["torch_cuda"]), device)

    attrs = {
        "created": previous.attrs["created"] if previous else runfile._now(),
        "likelihood": config.likelihood, "n_bits": config.n_bits, "seed": config.seed,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "dataset": train_set.name, "dataset_source": str(train_set.source),
        "dataset_checksum": train_set.checksum, "test_checksum": test_set.checksum,
        "image_shape": np.asarray(image_shape, dtype=np.int64), "num_train": n_train,
        "num_test": int(test_images.shape[0]), "steps_per_epoch": steps_per_epoch,
        "library_versions": _versions(),
    }
    calibration = dict(previous.calibration) if previous else {}

    def checkpoint(status):
        if rank != 0:
            return
        progress_state = {"step_in_epoch": step_in_epoch, **(sums.to_dict() if step_in_epoch else {})}
        rng = {
            "torch_cpu": torch.get_rng_state().numpy(),
            "data_order_epoch_start": epoch_order_state.numpy(),
            "dequantize": dequant.get_state().numpy(),
            "noise": noise.get_state().numpy(),
        }
        if device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(device).numpy()
        runfile.write(
            out, config=config, attrs=dict(attrs, status=status, epochs_done=epochs_done,
                                              cuda_graph=train_step.graph_state),
            model={k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
            optimizer=_optimizer_to_numpy(optimizer.state_dict()), rng=rng, progress=progress_state,
            history=history, calibration=calibration, samples=samples,
        )

    samples = None
    bar = _progress_bar(progress, total=config.epochs * steps_per_epoch,
                        initial=epochs_done * steps_per_epoch + step_in_epoch)
    lik = model.likelihood
    levels = 2**config.n_bits
    interrupted = _InterruptFlag(patient=world > 1)
    guard = NonFiniteGuard(config.max_nonfinite, device)
    first_step = epochs_done * steps_per_epoch + step_in_epoch  # where this process starts
    train_step = TrainStep(model, stepper, optimizer, beta=config.beta, world=world, precision=config.precision,
                           device=device, levels=levels,
                           all_finite=(lambda flag: _all_finite(flag, world)) if world > 1 else None,
                           compile_forward=config.compile,
                           cuda_graph=config.cuda_graph, full_batch=config.batch_size)
    last_read = time.perf_counter()

    def stop_if_tripped():
        at = guard.tripped()
        if at is not None:
            index = first_step + at - 1
            raise _NonFinite(index // steps_per_epoch + 1, index % steps_per_epoch + 1)
    try:
        with interrupted:
            while epochs_done < config.epochs:
                epoch_start = time.perf_counter()
                data_order.set_state(epoch_order_state)
                order = torch.randperm(n_train, generator=data_order).to(device)
                model.train()
                for step in range(step_in_epoch, steps_per_epoch):
                    batch = order[step * config.batch_size : (step + 1) * config.batch_size]
                    n_global = batch.shape[0]
                    shard = slice(rank, None, world)
                    eps = torch.randn(n_global, config.latent_dim, generator=noise, device=device)[shard]
                    x = train_images[batch[shard]]
                    x_in = x
                    if config.dequantize:  # continuous levels x + u, u ~ U(-1/2, 1/2)
                        u = torch.rand((n_global, *x.shape[1:]), generator=dequant, device=device)[shard] - 0.5
                        x_in = x.float() + u
                    loss, kl, raw = train_step(x, x_in, eps, n_global, sums, guard)
                    step_in_epoch = step + 1
                    bar.update(1)
                    now = time.perf_counter()
                    if now - last_read >= READ_EVERY_S:  # the only host reads of device values
                        last_read = now
                        if progress:
                            bar.set_postfix_str(_postfix(epochs_done + 1, loss, kl, lik, x, raw), refresh=False)
                        stop_if_tripped()
                    if world == 1:
                        if interrupted.flag:
                            raise KeyboardInterrupt
                    elif (step + 1) % INTERRUPT_SYNC_STEPS == 0 or step + 1 == steps_per_epoch:
                        if _any_rank(interrupted.flag, device):  # every rank stops after the same step
                            raise KeyboardInterrupt
                # ------------------------------------------------------ epoch done
                stop_if_tripped()
                epoch_order_state = data_order.get_state()
                if world > 1:  # logged sums over the global batch
                    sums.all_reduce()
                n = max(int(sums.images), 1)
                train_mse = float(sums.sse) / (n * int(np.prod(image_shape)))
                sigma = _epoch_sigma(lik, config, train_mse)
                if config.likelihood == "sigma":
                    calibration = {
                        "eval_sigma": sigma, "mse": train_mse, "epoch": epochs_done + 1,
                        "method": "sqrt of the mean squared error over all training batches of the last "
                                  "epoch (running average while the model trained), softclipped at "
                                  f"log_sigma_min={config.log_sigma_min}",
                    }
                    calibration_start = time.perf_counter()  # checkpoint work: not in the epoch's seconds
                    calibration.update(pmf_sigma(model, train_images, seed=config.seed + 6, n_bits=config.n_bits,
                                                 log_sigma_min=config.log_sigma_min))
                    epoch_start += time.perf_counter() - calibration_start
                    lik.sigma = sigma  # evaluate with the calibrated sigma, never the test batch's
                test = _test_elbo(model, test_images, config)
                lik.sigma = config.sigma
                history["epoch"].append(epochs_done + 1)
                history["train_rec"].append(float(sums.rec) / n)
                history["train_kl"].append(float(sums.kl) / n)
                history["train_elbo"].append((float(sums.rec) - float(sums.kl)) / n)
                history["train_loss"].append(float(sums.loss) / n)
                history["test_rec"].append(test["rec"])
                history["test_kl"].append(test["kl"])
                history["test_elbo"].append(test["rec"] - test["kl"])
                history["sigma"].append(sigma if sigma is not None else math.nan)
                history["equivalent_beta"].append(equivalent_beta(sigma) if sigma is not None else math.nan)
                history["train_mse"].append(train_mse if lik.info.gaussian_family else math.nan)
                history["seconds"].append(time.perf_counter() - epoch_start)
                history["skipped_steps"].append(int(sums.skipped))
                epochs_done += 1
                step_in_epoch = 0
                sums.reset()
                if progress:
                    _log_epoch(log, history, config)
                if epochs_done == config.epochs:
                    samples = {"prior": (_prior_samples(model, config, calibration, device),
                                         {"what": "likelihood mean of z ~ N(0, I), quantized to uint8",
                                          "temperature": 1.0})}
                checkpoint("complete" if epochs_done == config.epochs else "training")
    except _NonFinite as stop:
        bar.close()
        last = (f"the last good checkpoint, {out} (epoch {epochs_done} complete), is intact"
                if os.path.exists(out) else "no checkpoint had been written yet")
        raise VaeError(
            f"{config.likelihood}: {config.max_nonfinite} non-finite steps in a row (loss or gradient) at epoch "
            f"{stop.epoch}, step {stop.step}; training stopped; {last}"
        ) from None
    except KeyboardInterrupt:
        bar.close()
        if world > 1:  # the ranks stopped at the same step: the checkpoint holds the global sums
            sums.all_reduce()
        try:
            with interrupted:  # a second signal while this checkpoint is written: _Abort, below
                checkpoint("interrupted")
        except _Abort:
            _aborted(out)
        raise VaeError(f"interrupted at epoch {epochs_done + 1}, step {step_in_epoch}/{steps_per_epoch}; "
                       f"saved {out}; continue with --resume") from None
    except _Abort:
        bar.close()
        _aborted(out)
    bar.close()
    if config.epochs == 0 or (previous is not None and epochs_done == int(previous.attrs["epochs_done"])):
        checkpoint("complete")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0's file is complete before anyone reads it
        dist.destroy_process_group()
    return runfile.read(out)


def _aborted(out):
    """After a second interrupt: nothing written now; the last checkpoint stands (atomic writes)."""
    status = runfile.read(out).attrs if os.path.exists(out) else None
    where = (f"{out} holds the last checkpoint (epoch {int(status['epochs_done'])} complete) unchanged; "
             "continue with --resume" if status is not None else "no checkpoint had been written yet")
    raise VaeError(f"interrupted twice: stopped at once, without saving; {where}") from None


class _NonFinite(Exception):
    def __init__(self, epoch, step):
        super().__init__(epoch, step)
        self.epoch, self.step = epoch, step


class _Abort(BaseException):
    """A second SIGINT or SIGTERM: stop at once, without writing a checkpoint (it could
    land anywhere, even inside a step or between an epoch's bookkeeping and its count,
    and a checkpoint of that state would resume onto another trajectory)."""


class _InterruptFlag:
    """Turns the first SIGINT or SIGTERM into a flag checked after each step (so the
    step in flight finishes and the checkpoint is consistent).  In one process a
    second signal stops at once (:class:`_Abort`), keeping the last checkpoint as it
    is.  Under torchrun (``patient``) the launcher
    passes the terminal's Ctrl-C on to the ranks again, so repeats are ignored: the
    ranks stop together at the next agreed step, and the launcher's SIGKILL after its
    grace period stays the hard stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, patient=False):
        self.flag = False
        self.patient = patient
        self._old = {}

    def _handler(self, signum, frame):
        if self.flag and not self.patient:
            raise _Abort
        self.flag = True

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False


INTERRUPT_SYNC_STEPS = 16  # under torchrun, the ranks agree on an interrupt every this many steps


def _any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is set on any (a MAX all-reduce; a host read)."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


DIST_TIMEOUT_S = 300  # a collective waiting longer than this means a rank is gone


def distributed_setup(device_name: str):
    """(rank, world size, device).  Under torchrun (WORLD_SIZE > 1) this joins the
    process group: NCCL on CUDA, gloo on the CPU; each rank uses cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_name)
    import datetime

    import torch.distributed as dist

    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    return dist.get_rank(), dist.get_world_size(), device


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the incoming gradients over the ranks
    too: d(sum_r f_r(global))/d(local) needs every rank's upstream gradient."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _all_reduce_sum(t):
    return _AllReduceSum.apply(t)


def _all_finite(flag: torch.Tensor, world: int) -> torch.Tensor:
    """``flag`` (a device bool) and-ed over the ranks, without a host read."""
    import torch.distributed as dist

    t = flag.to(torch.float32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t[0] > 0


def _check_disk_space(directory, model):
    """Refuse to start when the disk cannot hold a few checkpoints (weights + Adam)."""
    import shutil

    need = CHECKPOINT_SPACE_FACTOR * 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(directory).free
    if free < need:
        raise VaeError(f"not enough disk space in {directory}: {free / 2**20:.1f} MiB free, "
                       f"checkpoints need about {need / 2**20:.1f} MiB")


def _epoch_sigma(lik, config, train_mse):
    name = config.likelihood
    if name in ("sigma", "sigma-image"):
        return softclipped_sigma(train_mse, config.log_sigma_min) if train_mse > 0 else None
    if name in ("gaussian", "sigma-learned"):
        return lik.current_sigma()
    return None


@torch.no_grad()
def _test_elbo(model, images, config, batch_size=512):
    """Single-sample test ELBO terms in nats/image (log p uses the likelihood's
    log_prob; sigma-image uses its per-image sigma, a training objective only)."""
    model.eval()
    lik = model.likelihood
    rec = kl = 0.0
    gen = torch.Generator(device=images.device).manual_seed(config.seed + 3)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        rec += float(lik.log_prob(x, model.decode(z)).double().sum())
        kl += float(gaussian_kl(mu, logvar).double().sum())
    n = max(images.shape[0], 1)
    model.train()
    return {"rec": rec / n, "kl": kl / n}


@torch.no_grad()
def _prior_samples(model, config, calibration, device, n=SAMPLE_GRID):
    gen = torch.Generator(device=device).manual_seed(config.seed + 4)
    z = torch.randn(n, config.latent_dim, generator=gen, device=device)
    return mean_to_uint8(model.likelihood.mean(model.decode(z)))


def mean_to_uint8(mean: torch.Tensor) -> np.ndarray:
    """A [0, 1] picture -> uint8 exactly as saved images are quantized (round half up)."""
    return torch.clamp(torch.floor(mean.double() * 255 + 0.5), 0, 255).to(torch.uint8).cpu().numpy()


def _postfix(epoch, loss, kl, lik, x, raw):
    text = f"epoch {epoch} loss {float(loss.detach()):.1f} KL {float(kl.detach().mean()):.1f}"
    if lik.info.gaussian_family and lik.name != "gaussian-pixel":
        try:
            sigma = lik.current_sigma(x if lik.name in ("sigma", "sigma-image") else None,
                                      raw if lik.name in ("sigma", "sigma-image") else None)
            text += f" sigma {sigma:.4f}"
        except VaeError:
            pass
    return text


def objective_name(config: TrainConfig) -> str:
    """"ELBO", or "objective" where the training objective is no ELBO (sigma-image,
    bernoulli on non-binary data; `vae eval` calls their ELBO not applicable)."""
    from .evaluate import applicability

    return "ELBO" if applicability(config.likelihood, "elbo", config.binarize)[0] else "objective"


def _log_epoch(log, history, config):
    i = -1
    what = objective_name(config)
    text = (f"epoch {history['epoch'][i]}: train {what} {history['train_elbo'][i]:.2f}, "
            f"test {what} {history['test_elbo'][i]:.2f} nats (KL {history['test_kl'][i]:.2f})")
    if not math.isnan(history["sigma"][i]):
        text += f", sigma {history['sigma'][i]:.4f} (beta-equivalent {history['equivalent_beta'][i]:.4g})"
    if history["skipped_steps"][i]:
        text += f", {history['skipped_steps'][i]} non-finite steps skipped"
    log(text)


def _progress_bar(enabled, total, initial):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                leave=False)


def _versions():
    import platform

    import h5py
    import scipy

    return (f"vaecli {__version__}; python {platform.python_version()}; torch {torch.__version__}; "
            f"numpy {np.__version__}; scipy {scipy.__version__}; h5py {h5py.__version__}")


def _optimizer_to_numpy(state_dict):
    return {
        "param_groups": state_dict["param_groups"],
        "state": {int(i): {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                           for k, v in s.items()} for i, s in state_dict["state"].items()},
    }


def _optimizer_from_numpy(data):
    return {
        "param_groups": data["param_groups"],
        "state": {int(i): {k: torch.from_numpy(np.asarray(v)) for k, v in s.items()}
                  for i, s in data["state"].items()},
    }


def load_model(run: runfile.Run, device="auto", for_evaluation=True) -> ConvVAE:
    """The trained model of a run file, with the calibrated evaluation sigma set."""
    device = resolve_device(device) if isinstance(device, str) else device
    model = build_model(run.config, run.image_shape, device)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in run.model.items()})
    if for_evaluation and run.config.likelihood == "sigma":
        if run.eval_sigma is None:
            raise VaeError(f"{run.path}: no evaluation sigma stored yet (train for at least one epoch)")
        model.likelihood.sigma = float(run.eval_sigma)
        if run.calibration.get("pmf_sigma") is not None:  # files before it fall back to eval_sigma
            model.likelihood.pmf_sigma = float(run.calibration["pmf_sigma"])
    model.eval()
    return model


__all__ = ["train", "load_model", "resolve_device", "TrainConfig", "registry"]
