"""What a run file must hold before anything is built from it.

The seal (runfile.py) proves a file is the one vaecli wrote, or one a user edited and
resealed on purpose; it says nothing of whether the contents make sense.  Every reader
(``runfile.read``) passes the contents through :func:`validate`, and every reader that
builds a model or resumes training passes the model and optimizer it built through
:func:`check_model_state` and :func:`check_resume_state`: a wrong file is one line
naming the file and what is wrong, never a traceback from deep inside torch or h5py.
"""

from __future__ import annotations

import json
import math
import numbers

import numpy as np

from .errors import VaeError

MAX_DATASET_BYTES = 2**31  # no array of a run file declared larger than 2 GiB is read
MAX_RUN_BYTES = 2**33  # nor arrays declared larger than 8 GiB in all
# deflate (gzip, what vaecli compresses samples with) packs at most 1032 bytes into one:
# a dataset that declares more than that many times the bytes it stores holds mostly
# nothing (chunks never written, read back as fill values)
MAX_DEFLATE_RATIO = 1032
SMALL_DATASET_BYTES = 2**16  # below this a dataset's storage is not compared
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_CHANNELS = 4
MAX_FRAMES = 10000  # frames of a video (T)
STATUSES = ("training", "interrupted", "complete")
# the columns training writes (vaecli/training/state.py's HISTORY_COLUMNS; a test keeps
# the two equal): every reader of a history may use any of them
HISTORY_COLUMNS = (
    "epoch", "train_elbo", "train_rec", "train_kl", "train_loss", "test_elbo", "test_rec", "test_kl",
    "sigma", "equivalent_beta", "train_mse", "seconds", "skipped_steps",
)
INT64_LIMIT = 2**63  # integers of a config (seeds, sizes, counts) that torch and NumPy take
RNG_STATE_BYTES = 5056  # torch's CPU generator state (the CUDA one is 16 bytes)


class _Invalid(Exception):
    """What is wrong, found while validating (turned into a VaeError naming the file)."""


def fail(path, what):
    raise VaeError(f"{path}: invalid run file: {what}")


def check_declared_size(name, dataset) -> int:
    """Refuse a dataset whose declared size is absurd, or far beyond the bytes the file
    stores for it, before reading a byte of it.  Returns its size in bytes."""
    try:
        size = int(np.prod(dataset.shape, dtype=np.float64)) * dataset.dtype.itemsize
        stored = dataset.id.get_storage_size()
    except (TypeError, ValueError, RuntimeError, OSError) as exc:
        raise _Invalid(f"{name} has an unreadable shape, dtype or storage ({exc})") from None
    if size > MAX_DATASET_BYTES:
        raise _Invalid(f"{name} declares {_size_text(size)} (shape {dataset.shape}), more than a run file holds")
    if size > SMALL_DATASET_BYTES and size > MAX_DEFLATE_RATIO * stored:
        raise _Invalid(f"{name} declares {_size_text(size)} (shape {dataset.shape}) but the file stores "
                       f"{_size_text(stored)} of it")
    return size


class SizeBudget:
    """The bytes of the arrays read from one run file so far, each checked first."""

    def __init__(self):
        self.total = 0

    def take(self, name, dataset):
        self.total += check_declared_size(name, dataset)
        if self.total > MAX_RUN_BYTES:
            raise _Invalid(f"its arrays declare more than {_size_text(MAX_RUN_BYTES)} in all (at {name}), "
                           "more than a run file holds")


def _size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def validate(run):
    """Check everything a reader uses; a VaeError naming the file and the first problem."""
    try:
        _root(run.attrs, run.config)
        _config(run.config, run.attrs)
        _arrays("model", run.model, floating=True)
        _arrays("ema", run.ema, floating=True)
        if set(run.ema) - set(run.model):
            raise _Invalid(f"ema holds {sorted(set(run.ema) - set(run.model))[:3]}, which the model has not")
        _optimizer(run.optimizer)
        _rng(run.rng)
        _progress(run.progress, run.attrs)
        _history(run.history, int(run.attrs["epochs_done"]))
        _calibration(run.calibration)
        _evaluations(run.evaluations)
        _samples(run.samples, tuple(int(v) for v in run.attrs["image_shape"]))
    except _Invalid as exc:
        fail(run.path, str(exc))


# ---------------------------------------------------------------------- pieces

def is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _need(mapping, key, kind, where, check=None, why=""):
    if key not in mapping:
        raise _Invalid(f"{where} has no {key}")
    value = mapping[key]
    ok = {"int": is_int, "number": _is_number, "str": lambda v: isinstance(v, str),
          "list": lambda v: isinstance(v, list),
          "bool": lambda v: isinstance(v, (bool, np.bool_)) or v in (0, 1)}[kind](value)
    if not ok or (check is not None and not check(value)):
        raise _Invalid(f"{where} {key} is {value!r}" + (f"; {why}" if why else f"; expected {kind}"))
    return value


def _root(attrs, config):
    where = "the root"
    for key in ("vaecli_version", "created", "device", "dataset"):
        _need(attrs, key, "str", where)
    _need(attrs, "dataset_checksum", "str", where, lambda v: len(v) == 64, "expected a SHA-256 (64 hex digits)")
    status = _need(attrs, "status", "str", where, lambda v: v in STATUSES, f"expected one of {', '.join(STATUSES)}")
    done = _need(attrs, "epochs_done", "int", where, lambda v: 0 <= v <= config.epochs,
                 f"expected 0 .. {config.epochs} (the config's epochs)")
    if (status == "complete" and done != config.epochs and config.epochs and config.time_budget is None
            and not config.early_stop):
        raise _Invalid(f"status is complete with {done} of {config.epochs} epochs done")
    if "likelihood" in attrs and attrs["likelihood"] != config.likelihood:
        raise _Invalid(f"the root likelihood {attrs['likelihood']!r} is not the config's {config.likelihood!r}")
    shape = attrs.get("image_shape")
    if (not isinstance(shape, list) or len(shape) not in (3, 4) or not all(is_int(v) and v >= 1 for v in shape)
            or shape[-3] > MAX_IMAGE_CHANNELS or max(shape[-2:]) > MAX_IMAGE_SIDE
            or (len(shape) == 4 and shape[0] > MAX_FRAMES)):
        raise _Invalid(f"image_shape is {shape!r}; expected (C, H, W) with C <= {MAX_IMAGE_CHANNELS} and "
                       f"sides <= {MAX_IMAGE_SIDE}, or videos' (T, C, H, W) with T <= {MAX_FRAMES}")
    if "latent_groups" in attrs:  # the names of the model's latent groups, top first (vae info, plots)
        groups = parse_json(attrs["latent_groups"], "the root latent_groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise _Invalid(f"latent_groups is {groups!r}; expected a JSON list of the latent groups' names")
    for key in ("num_train", "num_test", "steps_per_epoch"):
        if key in attrs or key != "steps_per_epoch":
            _need(attrs, key, "int", where, lambda v: v >= 0, "expected an integer >= 0")


def _config(config, attrs):
    """What TrainConfig itself leaves open: integers that torch and NumPy take (int64),
    the seed in the range `vae train --seed` accepts, and an image size that is the
    stored images' (the loaders resize to it)."""
    import dataclasses

    def ints(value, name):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from ints(v, f"{name} {k}")
        elif is_int(value):
            yield name, value

    for name, value in ints(dataclasses.asdict(config), "config"):
        if not -INT64_LIMIT <= value < INT64_LIMIT:
            raise _Invalid(f"{name.replace('config model_options', 'config model option')} is {value}; "
                           f"out of the 64-bit integer range")
    if not 0 <= config.seed < INT64_LIMIT:
        raise _Invalid(f"config seed is {config.seed}; expected 0 .. 2**63 - 1")
    shape = attrs["image_shape"]
    if config.image_size is not None and shape[-2:] != [config.image_size] * 2:
        raise _Invalid(f"config image_size is {config.image_size}, but the images are {shape[-2]}x{shape[-1]}")


def _arrays(where, arrays, floating=False, dtype=None):
    for name, value in arrays.items():
        if not isinstance(value, (np.ndarray, np.generic)) or value.dtype.kind not in "fiub":
            raise _Invalid(f"{where}/{name} is not a numeric array")
        if floating and value.dtype.kind != "f":
            raise _Invalid(f"{where}/{name} has dtype {value.dtype}; expected floating point")
        if dtype is not None and value.dtype != dtype:
            raise _Invalid(f"{where}/{name} has dtype {value.dtype}; expected {dtype}")


def _optimizer(optimizer):
    if optimizer is None:
        return
    groups = optimizer.get("param_groups")
    if (not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups)
            or not all(isinstance(g.get("params"), list) and all(is_int(p) for p in g["params"]) for g in groups)):
        raise _Invalid("optimizer param_groups is not a list of groups with integer params")
    for i, group in enumerate(groups):
        _adam_group(group, f"optimizer param_groups[{i}]")
    for index, state in optimizer["state"].items():
        _arrays(f"optimizer/state/{index}", state, floating=True)


def _adam_group(group, where):
    """The hyperparameters vaecli's Adam (fused, minimizing, no AMSGrad) steps with."""
    for key, low in (("lr", 0.0), ("eps", 0.0), ("weight_decay", 0.0)):
        _need(group, key, "number", where, lambda v: math.isfinite(v) and v >= low and (key != "lr" or v > 0),
              f"expected a finite number {'>' if key == 'lr' else '>='} 0")
    _need(group, "betas", "list", where, lambda v: len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
          "expected two numbers in [0, 1)")
    for key in ("amsgrad", "maximize", "differentiable", "decoupled_weight_decay"):
        if key in group and not isinstance(group[key], bool):
            raise _Invalid(f"{where} {key} is {group[key]!r}; expected true or false")
    for key in ("amsgrad", "maximize", "differentiable"):
        if group.get(key):
            raise _Invalid(f"{where} {key} is true; vaecli's fused Adam steps without it")


def _rng(rng):
    for name, value in rng.items():
        if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 1:
            raise _Invalid(f"rng/{name} is not a 1-d uint8 array")


def _progress(progress, attrs):
    step = progress.get("step_in_epoch", 0)
    if not is_int(step) or step < 0 or step > int(attrs.get("steps_per_epoch", step)):
        raise _Invalid(f"progress step_in_epoch is {step!r}; expected 0 .. steps_per_epoch")
    if "seconds" in progress:  # training seconds of the epoch so far
        _need(progress, "seconds", "number", "progress", lambda v: math.isfinite(v) and v >= 0,
              "expected a finite number of seconds >= 0")
    for key in ("rec", "kl", "loss", "sse"):  # sums of finite steps only
        if key in progress:
            _need(progress, key, "number", "progress", math.isfinite, "expected a finite number")
    for key in ("images", "skipped"):
        if key in progress:
            _need(progress, key, "number", "progress", lambda v: math.isfinite(v) and v >= 0 and v == int(v),
                  "expected a count (a whole number >= 0)")


def _history(history, epochs_done):
    missing = [name for name in HISTORY_COLUMNS if name not in history]
    if missing and (history or epochs_done):
        raise _Invalid(f"history has no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} column")
    lengths = {}
    for name, column in history.items():
        if not isinstance(column, np.ndarray) or column.ndim != 1 or column.dtype.kind not in "fiu":
            raise _Invalid(f"history/{name} is not a 1-d numeric column")
        lengths[name] = len(column)
    if len(set(lengths.values())) > 1:
        raise _Invalid(f"history columns differ in length: {dict(sorted(lengths.items()))}")
    if lengths and next(iter(lengths.values())) != epochs_done:
        raise _Invalid(f"history has {next(iter(lengths.values()))} rows for {epochs_done} epochs done")
    if history and not np.array_equal(history["epoch"], np.arange(1, epochs_done + 1)):
        raise _Invalid(f"history/epoch is {_short(history['epoch'])}; expected the epochs 1 .. {epochs_done}")


def _calibration(calibration):
    if not calibration:
        return
    where = "calibration"
    for key in ("eval_sigma", "pmf_sigma"):
        if key in calibration or key == "eval_sigma":
            _need(calibration, key, "number", where, lambda v: math.isfinite(v) and v > 0,
                  "expected a positive finite sigma")
    _need(calibration, "mse", "number", where, lambda v: math.isfinite(v) and v >= 0, "expected a finite MSE >= 0")
    _need(calibration, "method", "str", where)
    if "pmf_sigma" in calibration:
        _need(calibration, "pmf_method", "str", where)
    for key in ("pmf_images", "epoch"):
        if key in calibration:
            _need(calibration, key, "int", where, lambda v: v >= 0, "expected an integer >= 0")
    if "pmf_train_bits" in calibration:
        _need(calibration, "pmf_train_bits", "number", where)


def _evaluations(evaluations):
    for split, metrics in evaluations.items():
        for metric, r in metrics.items():
            where = f"evaluations/{split}/{metric}"
            if r.get("applicable", True) in (False, 0):
                _need(r, "reason", "str", where)
                continue
            _need(r, "value", "number", where)
            if metric == "mse":  # a mean of squares (NaN where the model's outputs were)
                _need(r, "value", "number", where, lambda v: not v < 0, "expected a mean squared error >= 0")
            _need(r, "unit", "str", where)
            if "stderr" in r:
                _need(r, "stderr", "number", where)


def _samples(samples, image_shape):
    ndim = len(image_shape) + 1  # (N, C, H, W), or videos' (N, T, C, H, W)
    for name, (value, _) in samples.items():
        if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != ndim:
            raise _Invalid(f"samples/{name} is not a uint8 {'(N, T, C, H, W)' if ndim == 5 else '(N, C, H, W)'} "
                           "array")


# ------------------------------------------------------------ against a built model

def check_model_state(path, model, state: dict):
    """The stored weights against the model the config builds: the same names, shapes
    and floating dtypes (a VaeError naming the first difference)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else [])
        fail(path, f"model weights do not fit the {_model_name(model)} its config builds ({'; '.join(parts)})")
    for name, tensor in expected.items():
        value = state[name]
        if tuple(value.shape) != tuple(tensor.shape):
            fail(path, f"model/{name} has shape {tuple(value.shape)}; the model built from the config has "
                       f"{tuple(tensor.shape)}")
        if value.dtype.kind != "f" and tensor.is_floating_point():
            fail(path, f"model/{name} has dtype {value.dtype}; expected floating point")
        if not np.all(np.isfinite(value)):
            fail(path, f"model/{name} holds non-finite values (NaN or infinity)")


def check_resume_state(path, model, optimizer_state, rng: dict):
    """What a resume loads besides the weights: Adam's state for each parameter, in its
    shape, and the random generators' states."""
    params = [p for p in model.parameters()]
    if optimizer_state is None:
        fail(path, "no optimizer state to resume from")
    try:
        indices = [i for g in optimizer_state["param_groups"] for i in g["params"]]
    except (KeyError, TypeError):
        fail(path, "optimizer param_groups without params")
    if sorted(indices) != list(range(len(params))):
        fail(path, f"optimizer param_groups name {len(indices)} parameters; the model has {len(params)}")
    for index, state in optimizer_state["state"].items():
        if not 0 <= int(index) < len(params):
            fail(path, f"optimizer/state/{index} is not one of the model's {len(params)} parameters")
        shape = tuple(params[int(index)].shape)
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in state or tuple(state[key].shape) != shape:
                got = tuple(state[key].shape) if key in state else "missing"
                fail(path, f"optimizer/state/{index}/{key} is {got}; its parameter has shape {shape}")
            if not np.all(np.isfinite(state[key])):
                fail(path, f"optimizer/state/{index}/{key} holds non-finite values")
        if "step" not in state or np.asarray(state["step"]).size != 1:
            fail(path, f"optimizer/state/{index} has no step count")
    for name in ("torch_cpu", "data_order_epoch_start", "dequantize", "noise"):
        if name not in rng:
            fail(path, f"rng/{name} is missing; cannot resume the random streams")
        if rng[name].shape != (RNG_STATE_BYTES,) and name in ("torch_cpu", "data_order_epoch_start"):
            fail(path, f"rng/{name} has {rng[name].size} bytes; a torch CPU generator state has {RNG_STATE_BYTES}")


def _short(values, n=4) -> str:
    """An array as text, its first ``n`` values."""
    values = np.asarray(values).ravel()
    return "[" + ", ".join(repr(v.item()) for v in values[:n]) + (", ...]" if len(values) > n else "]")


def _model_name(model) -> str:
    return type(model).__name__


def parse_json(text, where):
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _Invalid(f"{where} is not JSON ({exc})") from None
