"""The training configuration: one frozen, typed dataclass, which is also what the
run file stores (as JSON in its attributes)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from . import models, registry
from .backends import LIKELIHOOD_BACKENDS
from .constants import DEFAULT_MIXTURES, DEFAULT_N_BITS, LOG_SIGMA_MIN, PMF_SIGMA_MAX
from .errors import VaeError

DEFAULT_DATASET = "mnist5k"
MEMORY_FORMATS = ("contiguous", "channels_last")
FLOAT32_MAX = 3.4028234663852886e38
MONITORS = ("bpd", "loss")  # early stopping's validation value: history val_bpd or val_loss
MONITOR_NAMES = {"bpd": "bits/dim", "loss": "loss (the training loss in bits/dim, KL weighted by beta)"}
MAX_VALIDATION = 0.5  # the most of the training split a validation split may take
# the PMF calibration searches sigma in [exp(log_sigma_min), PMF_SIGMA_MAX]: a floor above
# its top leaves nothing to fit (a sigma above 2 is twice the [0, 1] data range)
LOG_SIGMA_MIN_MAX = math.log(PMF_SIGMA_MAX)
_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = DEFAULT_DATASET  # a dataset name or a data file/folder
    likelihood: str = "sigma"
    backend: str = "torch"  # where the likelihood runs: torch or cupy
    beta: float = 1.0  # weight of KL in the training objective (reported ELBO uses 1)
    sigma: float | None = None  # fixed sigma of `gaussian` (default 1)
    mixtures: int = DEFAULT_MIXTURES
    n_bits: int = DEFAULT_N_BITS
    log_sigma_min: float | None = LOG_SIGMA_MIN
    epochs: int = 10  # the most epochs (a time budget may end training sooner)
    time_budget: float | None = None  # seconds of training (the history's seconds) after which it ends; None: no limit
    validation: float = 0.0  # share of the training split held out as a validation split (0: none)
    early_stop: int = 0  # epochs without a validation gain of min_delta after which training ends; 0: off
    min_delta: float = 0.0  # bits/dim by which a validation must beat the best so far to count as a gain
    monitor: str = "bpd"  # what early stopping watches: bpd (the PMF bound, KL weight 1) or loss (the training loss)
    batch_size: int = 128
    lr: float = 1e-3
    model: str = models.DEFAULT_MODEL  # a name from vaecli.models
    model_options: dict = field(default_factory=dict)  # that model's options (completed with its defaults)
    seed: int = 0
    device: str = "auto"
    binarize: bool = False
    dequantize: bool = False
    image_size: int | None = None  # resize loaders that support it (svhn, celeba)
    max_nonfinite: int = 20  # consecutive non-finite steps (skipped) before training stops
    precision: str = "float32"  # float32, or bf16 autocast of the model (likelihood and KL stay float32)
    compile: bool = False  # torch.compile the forward pass, likelihood and KL
    cuda_graph: bool = True  # capture the whole step in a CUDA graph (CUDA, one process)
    memory_format: str = "contiguous"  # layout of the conv weights and activations in training: or channels_last
    grad_clip: float | None = None  # clip the gradient's 2-norm to this; 0: off; None: the model's default
    grad_skip: float | None = None  # skip a step whose gradient 2-norm exceeds this; 0: off; None: the model's
    free_bits: float = 0.0  # each latent group's KL counts in the objective as at least this many nats an image
    ema: float | None = None  # decay of the weights' moving average used to evaluate and sample; 0: off;
    #                           None: the model's default

    def __post_init__(self):
        self._check_types()
        registry.info(self.likelihood)
        registry.num_levels(self.n_bits)
        object.__setattr__(self, "model_options", models.parse_options(self.model, self.model_options))
        for measure in ("grad_clip", "grad_skip", "ema"):  # the model's default where none is given; 0 is off
            if getattr(self, measure) is None:
                object.__setattr__(self, measure, float(models.info(self.model).training.get(measure, 0.0)))
        checks = [
            (self.backend in LIKELIHOOD_BACKENDS,
             f"backend must be {' or '.join(LIKELIHOOD_BACKENDS)}, got {self.backend!r}"),
            (0 <= self.beta <= FLOAT32_MAX, f"beta must be >= 0 and finite in float32 (at most {FLOAT32_MAX:.4g}), "
                                            f"got {self.beta}"),
            (self.log_sigma_min is None or self.log_sigma_min <= LOG_SIGMA_MIN_MAX,
             f"log_sigma_min must be at most ln {PMF_SIGMA_MAX:g} = {LOG_SIGMA_MIN_MAX:.4f} (a floor on every "
             f"sigma above {PMF_SIGMA_MAX:g}, twice the data's [0, 1] range, leaves the PMF calibration nothing to "
             f"fit), got {self.log_sigma_min}"),
            (self.sigma is None or self.sigma > 0, f"sigma must be > 0, got {self.sigma}"),
            (self.mixtures >= 1, f"mixtures must be >= 1, got {self.mixtures}"),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.time_budget is None or self.time_budget > 0,
             f"time budget must be > 0 seconds, got {self.time_budget}"),
            (0 <= self.validation <= MAX_VALIDATION,
             f"validation must be a share of the training split in [0, {MAX_VALIDATION}], got {self.validation}"),
            (self.early_stop >= 0, f"early stop patience must be >= 0 epochs (0: off), got {self.early_stop}"),
            (not self.early_stop or self.validation > 0,
             "early stopping needs a validation split (--validation 0.1, say): the test split is never used"),
            (self.min_delta >= 0, f"min delta must be >= 0 bits/dim, got {self.min_delta}"),
            (self.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}"),
            (not self.validation or not registry.info(self.likelihood).training_only,
             f"{self.likelihood} is a training objective only: it has no bits/dim to validate on"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0: off), got {self.grad_clip}"),
            (self.grad_skip >= 0, f"grad_skip must be >= 0 (0: off), got {self.grad_skip}"),
            (self.free_bits >= 0, f"free_bits must be >= 0, got {self.free_bits}"),
            (0 <= self.ema < 1, f"ema must be a decay in [0, 1) (0: off), got {self.ema}"),
            (self.max_nonfinite >= 1, f"max non-finite steps must be >= 1, got {self.max_nonfinite}"),
            (self.precision in ("float32", "bf16"), f"precision must be float32 or bf16, got {self.precision!r}"),
            (self.memory_format in MEMORY_FORMATS,
             f"memory format must be {' or '.join(MEMORY_FORMATS)}, got {self.memory_format!r}"),
            (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:")
                                                       and self.device[len("cuda:"):].isdigit()),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise VaeError(message)
        if self.compile and self.memory_format == "channels_last":
            # inductor's own channels-last layouts break the compiled backward
            # (vaecli/training/step.py); the pair is refused until it runs on a GPU
            raise VaeError("--compile with --memory-format channels_last is not supported yet; use one of them")
        if self.binarize and self.likelihood != "bernoulli":
            raise VaeError("--binarize is for the bernoulli likelihood")
        if self.dequantize and self.backend != "torch":
            raise VaeError("--dequantize needs --backend torch (the cupy kernels take integer levels)")
        if self.dequantize and not registry.info(self.likelihood).continuous:
            raise VaeError(f"--dequantize is for continuous decoders; {self.likelihood} is discrete")

    def _check_types(self):
        """Each field of the kind its annotation names (a run file's JSON is read here
        too): ints are ints (not bools), numbers finite, and None only where allowed."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, _, optional = str(f.type).partition(" | ")
            if value is None and optional == "None":
                continue
            types = _KINDS.get(kind)
            if types is None:
                continue
            ok = isinstance(value, types) and not (kind != "bool" and isinstance(value, bool))
            if ok and kind == "float":
                ok = math.isfinite(value)
                object.__setattr__(self, f.name, float(value))
            if not ok:
                raise VaeError(f"config {f.name} must be {'a finite number' if kind == 'float' else kind}"
                               f"{' or null' if optional else ''}, got {value!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        try:
            data = json.loads(text)
        except (TypeError, ValueError):
            raise VaeError(f"run file config is not JSON: {str(text)[:60]!r}") from None
        if not isinstance(data, dict):
            raise VaeError(f"run file config is not a JSON object: {str(text)[:60]!r}")
        if "model" not in data:  # schema 1: the conv model, its two options at the top level
            data["model"] = "conv"
            data["model_options"] = {k: data.pop(k) for k in ("latent_dim", "width") if k in data}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise VaeError(f"run file config has unknown keys {sorted(unknown)}; made by a newer vaecli?")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
