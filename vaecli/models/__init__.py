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
class ModelInfo:
    name: str
    summary: str
    options: type  # a frozen dataclass of the model's options, with defaults
    factory: str  # "module:function" taking (image_shape, likelihood, options)


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("conv", "the sigma-VAE paper's small convolutional VAE (3 convs each way, one latent)",
                  ConvOptions, "vaecli.models.conv:build"),
    )
}
DEFAULT_MODEL = "conv"


def info(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise VaeError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def _at_least(option, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise VaeError(f"model option {option} must be an integer >= {low}, got {value!r}")


def parse_options(name: str, given: dict | None = None) -> dict:
    """The complete options of model ``name``: ``given`` (a dict, values already typed or
    as strings from the command line) over the defaults, checked.  Unknown names are
    one error listing the known ones."""
    spec = info(name).options
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


def build(name: str, options: dict, image_shape, likelihood):
    """The model ``name`` with ``options`` (complete, from :func:`parse_options`) for images
    of ``image_shape`` (C, H, W) and the decoder ``likelihood``."""
    module, _, function = info(name).factory.partition(":")
    factory = getattr(importlib.import_module(module), function)
    return factory(tuple(image_shape), likelihood, info(name).options(**options))
