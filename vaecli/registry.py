"""The eleven decoder likelihoods: names, raw-output layouts and what each supports.

This module holds no formulas, only facts about each likelihood that every
implementation (reference, torch, cupy) and every caller needs to agree on, and the
one parser of the options they all take (:func:`parse_options`): the same bad option
gives the same VaeError on every backend.

Raw decoder output layout
-------------------------
``x`` is an integer batch ``(B, C, H, W)`` with levels ``0 .. L-1``, ``L = 2**n_bits``.
The decoder emits unconstrained ``raw`` of shape ``(B, out_channels(C), H, W)``.

* Per-channel likelihoods with ``P`` parameters per image channel lay ``raw`` out
  parameter-major: parameter ``p`` of image channel ``c`` is ``raw[:, p*C + c]``, i.e.
  ``raw.reshape(B, P, C, H, W)[:, p]``.  The parameters, in order:

  ==================  ======================================================
  gaussian            mu logit
  gaussian-pixel      mu logit, log-sigma (raw, softclipped)
  sigma-learned       mu logit  (+ one scalar ``log_sigma`` parameter of the model)
  sigma               mu logit
  sigma-image         mu logit
  student-t           mu logit, log-scale (raw, softclipped), df (raw)
  bernoulli           logit
  categorical         L logits, level k at p = k
  bitwise             n_bits logits, most significant bit first
  logistic            mu (identity, on the [0, 1] scale), log-scale (raw, softclipped)
  ==================  ======================================================

* ``logistic-mixture`` with ``K`` components: ``raw[:, :K]`` are the mixture logits
  (shared by the channels of a pixel); ``raw[:, K : K + K*C]`` the means as
  ``(B, K, C, H, W)``; ``raw[:, K + K*C : K + 2*K*C]`` the raw log-scales as
  ``(B, K, C, H, W)``; for ``C == 3`` only, ``raw[:, K + 2*K*C : K + 2*K*C + 3*K]``
  the raw coupling coefficients as ``(B, K, 3, H, W)`` (``a, b, c = tanh(raw)``, with
  ``mu_G += a*y_R`` and ``mu_B += b*y_R + c*y_G``).  So ``out_channels = 3K`` for
  grayscale and ``10K`` for RGB.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from .constants import DEFAULT_MIXTURES, DEFAULT_N_BITS, LOG_SIGMA_MIN
from .errors import VaeError


@dataclass(frozen=True)
class LikelihoodInfo:
    """What callers need to know about one likelihood (no formulas)."""

    name: str
    summary: str
    params: tuple[str, ...]  # per-image-channel parameters in raw order ("" for mixture)
    continuous: bool  # log_prob is a density on y = x/(L-1); else log_prob is the PMF
    gaussian_family: bool  # has a Gaussian sigma, so an equivalent beta = 2 sigma^2
    separable: str  # finest independent unit of log_prob: "pixel", "image" or "batch"
    pmf_note: str = ""  # why bits/dim is not a normalized likelihood, if it is not
    training_only: bool = False  # likelihood metrics are not applicable at all


LIKELIHOODS: dict[str, LikelihoodInfo] = {
    info.name: info
    for info in (
        LikelihoodInfo(
            "gaussian",
            "Gaussian, fixed sigma (option, default 1): the MSE-loss VAE; use beta to weight KL",
            ("mu",),
            continuous=True,
            gaussian_family=True,
            separable="pixel",
        ),
        LikelihoodInfo(
            "gaussian-pixel",
            "Gaussian with a learned sigma per pixel and channel",
            ("mu", "log_sigma"),
            continuous=True,
            gaussian_family=True,
            separable="pixel",
        ),
        LikelihoodInfo(
            "sigma-learned",
            "Gaussian with one shared sigma learned by gradient",
            ("mu",),
            continuous=True,
            gaussian_family=True,
            separable="pixel",
        ),
        LikelihoodInfo(
            "sigma",
            "the sigma-VAE: one shared sigma set analytically to sqrt(batch MSE)",
            ("mu",),
            continuous=True,
            gaussian_family=True,
            separable="batch",
        ),
        LikelihoodInfo(
            "sigma-image",
            "Gaussian with sigma set analytically to sqrt(MSE) per image",
            ("mu",),
            continuous=True,
            gaussian_family=True,
            separable="image",
            pmf_note="sigma depends on the evaluated image, so it is a training objective only",
            training_only=True,
        ),
        LikelihoodInfo(
            "student-t",
            "Student-t with learned location, scale and degrees of freedom per pixel",
            ("mu", "log_scale", "df"),
            continuous=True,
            gaussian_family=False,
            separable="pixel",
        ),
        LikelihoodInfo(
            "bernoulli",
            "Bernoulli cross-entropy on intensities in [0, 1]",
            ("logit",),
            continuous=False,
            gaussian_family=False,
            separable="pixel",
            pmf_note="a normalized likelihood only on binarized data (--binarize)",
        ),
        LikelihoodInfo(
            "categorical",
            "256-way (L-way) categorical per channel",
            (),  # L logits, filled in by params_per_channel
            continuous=False,
            gaussian_family=False,
            separable="pixel",
        ),
        LikelihoodInfo(
            "bitwise",
            "independent Bernoulli per bit of the level, most significant bit first",
            (),  # n_bits logits
            continuous=False,
            gaussian_family=False,
            separable="pixel",
        ),
        LikelihoodInfo(
            "logistic",
            "discretized logistic per channel",
            ("mu", "log_scale"),
            continuous=False,
            gaussian_family=False,
            separable="pixel",
        ),
        LikelihoodInfo(
            "logistic-mixture",
            "mixture of K discretized logistics with RGB coupling (PixelCNN++)",
            (),
            continuous=False,
            gaussian_family=False,
            separable="pixel",
        ),
    )
}

NAMES = tuple(LIKELIHOODS)


def info(name: str) -> LikelihoodInfo:
    """The :class:`LikelihoodInfo` of ``name``, or a VaeError listing the known names."""
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise VaeError(
            f"unknown likelihood {name!r}; choose one of: {', '.join(NAMES)}"
        ) from None


# the likelihoods that take a fixed sigma: the plain Gaussian's, and the sigma-VAE's
# evaluation sigma (the others learn or predict theirs)
FIXED_SIGMA = ("gaussian", "sigma", "sigma-image")


# The options every backend takes (vaecli.backends says what each means); a backend may
# take more of its own (the torch backend's batch_reduce), named in parse_options(extra=).
OPTION_NAMES = ("n_bits", "sigma", "log_sigma", "mixtures", "log_sigma_min")


@dataclass(frozen=True)
class Options:
    """The validated options of one call, the same for every backend.

    ``log_sigma`` is None, a float, or the caller's own 0-d array or tensor (kept as
    given, so that a torch Parameter stays in the autograd graph); ``extra`` holds the
    backend-only options that the backend named, as given."""

    n_bits: int
    levels: int  # L = 2**n_bits
    sigma: float | None  # fixed sigma of the FIXED_SIGMA likelihoods (None: default or from data)
    log_sigma: object  # raw scalar parameter of sigma-learned, before the softclip
    mixtures: int
    log_sigma_min: float | None  # softclip floor of every log-scale; None: no floor
    extra: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


def _read_numpy_scalar(value) -> float | None:
    """The default reader of a 0-d log_sigma: NumPy's are read on the host; any other
    array (a torch tensor, a CuPy array) is left to its backend, which may not read it
    where that would stall a device."""
    if type(value).__module__.split(".")[0] == "numpy":
        return float(value)
    return None


def _real_scalar(name: str, option: str, value, read: Callable | None):
    """A real number or a 0-d real array as a float; None when ``read`` declines to read
    the array here.  Bools and non-scalars raise a VaeError naming the option."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    shape = getattr(value, "shape", None)
    kind = str(getattr(value, "dtype", ""))
    if shape is None or isinstance(value, bool) or "bool" in kind or "complex" in kind:
        raise VaeError(f"{name}: {option} must be a real number, got {value!r}")
    if tuple(shape) != ():
        raise VaeError(f"{name}: {option} must be a scalar (shape ()), got shape {tuple(shape)}")
    return (read or _read_numpy_scalar)(value)


def parse_options(
    name: str, opts: Mapping[str, object], *, extra: tuple[str, ...] = (), read_scalar: Callable | None = None
) -> Options:
    """Validate the keyword options of a likelihood call, once for every backend.

    The checks, in this order, each a VaeError naming the likelihood: an unknown
    likelihood; option names other than OPTION_NAMES (and the backend's ``extra``);
    ``n_bits`` an integer from 1 to 16; ``sigma`` only for FIXED_SIGMA likelihoods, a
    positive finite number; ``log_sigma`` only for sigma-learned, a finite real scalar
    (a number or an array of shape ()); ``mixtures`` an integer >= 1 (bools refused);
    ``log_sigma_min`` a finite number or None.  ``read_scalar(value) -> float | None``
    reads a 0-d ``log_sigma`` array to check that it is finite; it returns None where
    the value must not be read on the host (a tensor on a device, under torch.compile),
    and then the caller's value goes unchecked.  Python only: no NumPy or torch here.
    """
    info(name)
    unknown = sorted(set(opts) - set(OPTION_NAMES) - set(extra))
    if unknown:
        raise VaeError(
            f"{name}: unknown option(s) {', '.join(unknown)}; the options are: {', '.join(OPTION_NAMES)}"
        )

    n_bits = opts.get("n_bits", DEFAULT_N_BITS)
    if not isinstance(n_bits, numbers.Integral) or isinstance(n_bits, bool) or not 1 <= n_bits <= 16:
        raise VaeError(f"{name}: n_bits must be an integer from 1 to 16, got {n_bits!r}")
    n_bits = int(n_bits)

    sigma = opts.get("sigma")
    if sigma is not None:
        if name not in FIXED_SIGMA:
            raise VaeError(f"{name}: takes no fixed sigma (only {', '.join(FIXED_SIGMA)} do)")
        value = _real_scalar(name, "sigma", sigma, lambda v: float(v))
        if not (value > 0.0 and math.isfinite(value)):
            raise VaeError(f"{name}: sigma must be positive and finite, got {sigma!r}")
        sigma = value

    log_sigma = opts.get("log_sigma")
    if log_sigma is not None:
        if name != "sigma-learned":
            raise VaeError(f"{name}: takes no log_sigma (only sigma-learned does: its learned raw log sigma)")
        value = _real_scalar(name, "log_sigma", log_sigma, read_scalar)
        if value is not None and not math.isfinite(value):
            raise VaeError(f"{name}: log_sigma must be finite, got {log_sigma!r}")
        if isinstance(log_sigma, numbers.Real):
            log_sigma = value

    mixtures = opts.get("mixtures", DEFAULT_MIXTURES)
    if not isinstance(mixtures, numbers.Integral) or isinstance(mixtures, bool) or mixtures < 1:
        raise VaeError(f"{name}: mixtures must be a positive integer, got {mixtures!r}")
    mixtures = int(mixtures)

    floor = opts.get("log_sigma_min", LOG_SIGMA_MIN)
    if floor is not None:
        value = _real_scalar(name, "log_sigma_min", floor, lambda v: float(v))
        if not math.isfinite(value):
            raise VaeError(f"{name}: log_sigma_min must be a finite number or None, got {floor!r}")
        floor = value

    return Options(
        n_bits=n_bits,
        levels=2**n_bits,
        sigma=sigma,
        log_sigma=log_sigma,
        mixtures=mixtures,
        log_sigma_min=floor,
        extra=MappingProxyType({k: opts[k] for k in extra if k in opts}),
    )


def need_log_sigma(name: str, o: Options):
    """``o.log_sigma``, or the VaeError every backend raises when sigma-learned is
    evaluated without it."""
    if o.log_sigma is None:
        raise VaeError(
            f"{name} needs the option log_sigma (the model's raw scalar log-sigma parameter, shape ())"
        )
    return o.log_sigma


def num_levels(n_bits: int = DEFAULT_N_BITS) -> int:
    """L = 2**n_bits integer levels."""
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not 1 <= n_bits <= 16:
        raise VaeError(f"n_bits must be an integer from 1 to 16, got {n_bits!r}")
    return 2**n_bits


def params_per_channel(name: str, n_bits: int = DEFAULT_N_BITS) -> int | None:
    """Decoder outputs per image channel, or None for the mixture (see out_channels)."""
    if name == "categorical":
        return num_levels(n_bits)
    if name == "bitwise":
        num_levels(n_bits)
        return n_bits
    if name == "logistic-mixture":
        return None
    return len(info(name).params)


def mixture_channels_per_component(image_channels: int) -> int:
    """1 logit + C means + C log-scales (+ 3 coupling coefficients for RGB)."""
    return 1 + 2 * image_channels + (3 if image_channels == 3 else 0)


def out_channels(
    name: str,
    image_channels: int,
    n_bits: int = DEFAULT_N_BITS,
    mixtures: int = DEFAULT_MIXTURES,
) -> int:
    """Number of decoder output channels the likelihood needs for C image channels."""
    info(name)
    if not isinstance(image_channels, int) or image_channels < 1:
        raise VaeError(f"image_channels must be a positive integer, got {image_channels!r}")
    if name == "logistic-mixture":
        if not isinstance(mixtures, int) or mixtures < 1:
            raise VaeError(f"logistic-mixture needs mixtures >= 1, got {mixtures!r}")
        return mixtures * mixture_channels_per_component(image_channels)
    return params_per_channel(name, n_bits) * image_channels


def image_channels_of(
    name: str,
    raw_channels: int,
    n_bits: int = DEFAULT_N_BITS,
    mixtures: int = DEFAULT_MIXTURES,
) -> int:
    """Inverse of out_channels: the image channels C that a raw output with
    ``raw_channels`` channels describes.  Raises VaeError if none fits."""
    info(name)
    if name == "logistic-mixture":
        per = raw_channels // mixtures if mixtures >= 1 else 0
        if mixtures >= 1 and per * mixtures == raw_channels:
            if per == 10:
                return 3
            if per >= 3 and (per - 1) % 2 == 0 and (per - 1) // 2 != 3:
                return (per - 1) // 2
        raise VaeError(
            f"logistic-mixture with {mixtures} components needs 3*K (grayscale) or "
            f"10*K (RGB) decoder channels, got {raw_channels}"
        )
    p = params_per_channel(name, n_bits)
    if raw_channels % p or raw_channels == 0:
        raise VaeError(
            f"{name} needs {p} decoder channels per image channel; "
            f"got {raw_channels} channels, which is not a multiple of {p}"
        )
    return raw_channels // p


def check_shapes(name, x_shape, raw_shape, n_bits=DEFAULT_N_BITS, mixtures=DEFAULT_MIXTURES):
    """Raise a VaeError naming the likelihood and shapes unless x and raw fit."""
    if len(x_shape) != 4:
        raise VaeError(f"{name}: x must have shape (B, C, H, W), got {tuple(x_shape)}")
    if len(raw_shape) != 4:
        raise VaeError(f"{name}: raw must have shape (B, K, H, W), got {tuple(raw_shape)}")
    b, c, h, w = x_shape
    want = (b, out_channels(name, c, n_bits, mixtures), h, w)
    if tuple(raw_shape) != want:
        raise VaeError(
            f"{name}: x of shape {tuple(x_shape)} needs raw decoder output of shape "
            f"{want}, got {tuple(raw_shape)}"
        )
