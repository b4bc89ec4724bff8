"""Models by name, each with typed options (what ``vae train --model`` builds).

A model is registered with a factory and a frozen dataclass of its options; the run
file stores the name and the options (never code), and :func:`build` makes the same
model again from them.  The protocol every model follows is in
:mod:`vaecli.models.protocol`.  Importing this package loads no torch: the factories
are imported when a model is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass

from ..errors import VaeError


@dataclass(frozen=True)
class ConvOptions:
    latent_dim: int = 20  # dimensions of the one Gaussian latent
    width: int = 32  # channels of the first conv layer (w, 2w, 4w)

    def __post_init__(self):
        _at_least("latent_dim", self.latent_dim, 1)
        _at_least("width", self.width, 1)


@dataclass(frozen=True)
class MlpOptions:
    latent_dim: int = 20  # dimensions of the one Gaussian latent
    hidden: int = 400  # units of each hidden layer
    depth: int = 1  # hidden layers in the encoder and in the decoder

    def __post_init__(self):
        _at_least("latent_dim", self.latent_dim, 1)
        _at_least("hidden", self.hidden, 1)
        _at_least("depth", self.depth, 0)


@dataclass(frozen=True)
class HvaeOptions:
    width: int = 32  # channels of the residual state, bottom-up and top-down
    resolutions: str = "auto"  # sides of the latent groups, e.g. "1,7,14"; auto: 1 and side/8, /4, /2
    blocks: int = 2  # residual blocks per resolution, each top-down one with a latent group
    latent_channels: int = 8  # latent maps per group

    def __post_init__(self):
        _at_least("width", self.width, 1)
        _at_least("blocks", self.blocks, 1)
        _at_least("latent_channels", self.latent_channels, 1)
        if not isinstance(self.resolutions, str):
            raise VaeError(f"model option resolutions must be 'auto' or sides like 1,7,14, got {self.resolutions!r}")


@dataclass(frozen=True)
class SvgOptions:
    n_past: int = 5  # context frames
    n_future: int = 10  # frames predicted after them in training
    z_dim: int = 10  # latents per frame
    g_dim: int = 128  # size of a frame's encoding
    width: int = 64  # channels of the encoder's first layer (doubling to 8x at 4x4)
    rnn_size: int = 256  # units of each LSTM
    predictor_layers: int = 2  # LSTM layers of the frame predictor
    posterior_layers: int = 1
    prior_layers: int = 1
    last_frame_skip: bool = False  # skips from the previous frame always, not the last context frame

    def __post_init__(self):
        for name in ("n_past", "n_future", "z_dim", "g_dim", "width", "rnn_size", "predictor_layers",
                     "posterior_layers", "prior_layers"):
            _at_least(name, getattr(self, name), 1)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    summary: str
    options: type  # a frozen dataclass of the model's options, with defaults
    factory: str  # "module:function" taking (image_shape, likelihood, options)
    training: dict = dataclasses.field(default_factory=dict)  # defaults of the stability measures for it
    video: bool = False  # a sequence model: data are videos (N, T, C, H, W)


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("conv", "the sigma-VAE paper's small convolutional VAE (3 convs each way, one latent)",
                  ConvOptions, "vaecli.models.conv:build"),
        ModelInfo("mlp", "the fully connected VAE of Kingma and Welling (any image size)",
                  MlpOptions, "vaecli.models.mlp:build"),
        # initial gradient 2-norms of the default hvae on mnist5k are ~5e3, ~4e2 after 30
        # steps (nats per image): clip at twice the first, skip only steps 20x beyond it
        ModelInfo("hvae", "a top-down hierarchical VAE (VDVAE/NVAE family): latent groups at several resolutions",
                  HvaeOptions, "vaecli.models.hvae:build", training={"grad_clip": 1e4, "grad_skip": 1e5, "ema": 0.999}),
        ModelInfo("svg", "SVG-LP (Denton and Fergus 2018): video prediction with a learned prior, for videos",
                  SvgOptions, "vaecli.models.svg:build", video=True),
    )
}
DEFAULT_MODEL = "conv"


PROTOCOL = ("encode", "posterior", "forward", "generate", "latent_size", "image_shape", "likelihood")


def is_user_model(name: str) -> bool:
    """A model of the user's own, named by the factory that builds it: "package.module:function"."""
    module, sep, function = name.partition(":")
    return bool(sep) and all(part.isidentifier() for part in (*module.split("."), function))


def info(name: str) -> ModelInfo:
    if name in MODELS:
        return MODELS[name]
    if is_user_model(name):
        return ModelInfo(name, f"a model of your own, built by {name}", None, name)
    raise VaeError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}, or give your own as "
                   "package.module:function")


def option_names(name: str):
    """The names of model ``name``'s options; None for a user's model, whose factory
    takes whatever it is given."""
    spec = info(name).options
    return None if spec is None else tuple(f.name for f in dataclasses.fields(spec))


def _at_least(option, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise VaeError(f"model option {option} must be an integer >= {low}, got {value!r}")


def parse_options(name: str, given: dict | None = None) -> dict:
    """The complete options of model ``name``: ``given`` (a dict, values already typed or
    as strings from the command line) over the defaults, checked.  Unknown names are
    one error listing the known ones."""
    spec = info(name).options
    if spec is None:  # a user's model: its factory checks its options; strings become numbers where they read so
        return {str(k): _literal(v) for k, v in dict(given or {}).items()}
    fields = {f.name: f for f in dataclasses.fields(spec)}
    given = dict(given or {})
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise VaeError(f"model {name} has no option(s) {', '.join(unknown)}; its options are: "
                       f"{', '.join(fields)}")
    typed = {k: _typed(name, k, v, fields[k]) for k, v in given.items()}
    for key, value in typed.items():
        kind = _kind(fields[key])
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise VaeError(f"model {name}: option {key} must be {kind.__name__}, got {value!r}")
    return dataclasses.asdict(spec(**typed))


def _kind(field) -> type:
    return field.type if isinstance(field.type, type) else {"int": int, "float": float, "bool": bool,
                                                            "str": str}.get(field.type, object)


def _typed(model, key, value, field):
    kind = _kind(field)
    if isinstance(value, str) and kind is not str:
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return kind(value)
        except ValueError:
            raise VaeError(f"model {model}: option {key} must be {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _literal(value):
    """A command-line value as the JSON literal it spells (3, 0.5, true, null, [1, 2]), else the string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def check_shape(name: str, image_shape):
    """Image models take (C, H, W); video data (T, C, H, W) needs a sequence model: one
    line saying so.  (A user's model takes what it takes.)"""
    spec = info(name)
    if spec.options is None:
        return
    if len(tuple(image_shape)) == 4 and not spec.video:
        videos = ", ".join(n for n, m in MODELS.items() if m.video)
        raise VaeError(f"--model {name}: the data are videos (frames, channels, height, width = "
                       f"{tuple(int(v) for v in image_shape)}); {name} is an image model (for videos: {videos})")
    if len(tuple(image_shape)) == 3 and spec.video:
        raise VaeError(f"--model {name} is a video model: it needs videos (N, T, C, H, W), got images "
                       f"{tuple(int(v) for v in image_shape)}")


def build(name: str, options: dict, image_shape, likelihood):
    """The model ``name`` with ``options`` (complete, from :func:`parse_options`) for images
    of ``image_shape`` (C, H, W) and the decoder ``likelihood``.  A user's model is built
    by its factory, ``function(image_shape, likelihood, **options)``, imported by name
    (nothing stored in a run file is ever executed: only this module import)."""
    spec = info(name)
    check_shape(name, image_shape)
    factory = _factory(spec.factory)
    if spec.options is not None:
        return factory(tuple(image_shape), likelihood, spec.options(**options))
    try:
        model = factory(tuple(image_shape), likelihood, **options)
    except TypeError as exc:
        raise VaeError(f"--model {name}: the factory did not take the options {options}: {exc}") from None
    missing = [a for a in PROTOCOL if not hasattr(model, a)]
    if missing or not hasattr(model, "parameters"):
        raise VaeError(f"--model {name} built a {type(model).__name__} without {', '.join(missing) or 'parameters'}"
                       " of the model protocol (see vaecli/models/protocol.py)")
    return model


def _factory(reference: str):
    module_name, _, function = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import the user's module is one line
        raise VaeError(f"--model {reference}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
                       "is it installed or on PYTHONPATH?") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise VaeError(f"--model {reference}: {module_name} has no function {function}")
    return factory
