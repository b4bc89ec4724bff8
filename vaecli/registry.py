"""The eleven decoder likelihoods: names, raw-output layouts and what each supports.

This module holds no formulas, only facts about each likelihood that every
implementation (reference, torch, cupy) and every caller needs to agree on.

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

from dataclasses import dataclass

from .constants import DEFAULT_MIXTURES, DEFAULT_N_BITS
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
