"""What training, evaluation and sampling need from a model.

A vaecli model is a ``torch.nn.Module`` with a ``likelihood`` (a
:class:`vaecli.api.Likelihood`), ``latent_size`` and ``image_shape`` (C, H, W)
attributes, and four methods.  Noise is always passed in, never
drawn inside the model: one image's pass takes a flat vector of ``latent_size``
standard-normal numbers, which the model splits among its latent groups.  That is
what lets the library make every run reproducible, shard a batch over processes with
the same noise as one process, and capture the whole step in a CUDA graph.

``encode(x) -> features``
    The deterministic part of inference for uint8 levels ``x`` (B, C, H, W): a tensor
    or a tuple of tensors, each with the batch first (the library repeats them along
    the batch for importance sampling).
``posterior(features, eps) -> Pass``
    Sample every latent group from the posterior with the noise ``eps`` (B,
    latent_size) and decode: the raw likelihood outputs and, per group, the sample and
    the parameters of its posterior and prior.  ``eps = 0`` gives the posterior-mean
    path (reconstructions, active units).
``forward(x, eps) -> Pass``
    ``posterior(encode(x), eps)``: the training pass.
``generate(eps, temperature) -> raw``
    Decode latents drawn from the prior with the noise ``eps`` (B, latent_size) scaled
    by ``temperature`` (a number, or one per group).

A sequence model (data (B, T, C, H, W), e.g. ``svg``) also has ``target_shape``
(frames predicted, C, H, W), returns in its :class:`Pass` the frames its raw outputs
score (``target``), and has ``predict(context, eps, steps, temperature)`` for sampled
futures; the library then scores the predicted frames wherever it scores images.

The library computes everything else from a :class:`Pass`: the KL per group (analytic,
in float32 even under bf16 autocast), its sum, and the importance weight
log p(z) - log q(z | x).  Models therefore never hold the objective, and a calibrated
decoder works the same in every model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..errors import VaeError


class LatentGroup(NamedTuple):
    """One group of latents of one pass: the sample and the diagonal Gaussians it came
    from.  Shapes are (B, ...) each; ``prior_mean`` and ``prior_logvar`` are None for
    the standard normal prior."""

    z: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor
    prior_mean: torch.Tensor | None = None
    prior_logvar: torch.Tensor | None = None


class Pass(NamedTuple):
    """A model's pass: raw decoder outputs (B, out_channels, H, W) and its latent groups.

    A sequence model's raw outputs are those of the frames it predicts, F per example,
    as (B * F, out_channels, H, W), and ``target`` holds those frames' levels
    (B * F, C, H, W): the images the likelihood scores.  None: the input images."""

    raw: torch.Tensor
    groups: tuple
    target: torch.Tensor | None = None


def target_of(x: torch.Tensor, out: Pass) -> torch.Tensor:
    """The images ``out.raw`` is a likelihood of: ``out.target``, else ``x``."""
    return x if out.target is None else out.target


def per_example(values: torch.Tensor, batch: int) -> torch.Tensor:
    """(B * F,) per-frame values summed to (B,) per example (a no-op for images)."""
    return values if values.shape[0] == batch else values.reshape(batch, -1).sum(1)


def log_likelihood(likelihood, x: torch.Tensor, out: Pass, *, pmf: bool = False, raw=None) -> torch.Tensor:
    """log p(x | z) per example (B,): the likelihood's log_prob (or its discretized PMF)
    of the images the pass predicts, summed over a sequence's frames."""
    fn = likelihood.log_pmf if pmf else likelihood.log_prob
    return per_example(fn(target_of(x, out), out.raw if raw is None else raw), x.shape[0])


def target_shape(model) -> tuple:
    """The shape of what one example's raw outputs score: a sequence model's
    ``target_shape`` (frames predicted, C, H, W), else its ``image_shape``."""
    return tuple(getattr(model, "target_shape", model.image_shape))


class OneGaussianLatent:
    """The protocol's sampling methods for a model with one Gaussian latent and a
    standard normal prior, from its ``encode(x) -> (mu, logvar)`` and ``decode(z) -> raw``."""

    def posterior(self, features, eps: torch.Tensor) -> Pass:
        """z = mu + sigma eps from the posterior (mu, logvar) = ``features``, decoded."""
        mu, logvar = features
        z = mu + torch.exp(0.5 * logvar) * eps
        return Pass(self.decode(z), (LatentGroup(z, mu, logvar),))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Pass:
        """The training pass: encode, sample with the standard normal noise ``eps`` (B, Z), decode."""
        return self.posterior(self.encode(x), eps)

    def generate(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Raw decoder output of z = temperature * eps, z from the prior N(0, T^2 I)."""
        return self.decode(temperature * eps)


def flat(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) as (B, rest): one row of latents per example."""
    return t.reshape(t.shape[0], -1)


def group_kl(group: LatentGroup) -> torch.Tensor:
    """KL(q || p) of one group in nats per image, (B,), in the group's dtype."""
    from ..backends.torch_backend import gaussian_kl

    mean, logvar = flat(group.mean), flat(group.logvar)
    if group.prior_mean is None:
        return gaussian_kl(mean, logvar)
    p_mean, p_logvar = flat(group.prior_mean), flat(group.prior_logvar)
    return 0.5 * (p_logvar - logvar + (torch.exp(logvar) + (mean - p_mean) ** 2) * torch.exp(-p_logvar)
                  - 1.0).sum(-1)


def kl_per_group(groups) -> list:
    """[(B,) KL of each group], in float32 at least (bf16 autocast outputs are cast up)."""
    return [group_kl(LatentGroup(*(None if t is None else _at_least_float32(t) for t in g))) for g in groups]


def total_kl(groups) -> torch.Tensor:
    """KL per image, the sum over the groups, (B,)."""
    parts = kl_per_group(groups)
    kl = parts[0]
    for part in parts[1:]:
        kl = kl + part
    return kl


def _log_normal(z, mean, logvar):
    """log N(z; mean, exp(logvar)) summed over all but the batch dimension."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


def log_weight(groups) -> torch.Tensor:
    """log p(z) - log q(z | x) of a pass's sample, (B,): its importance weight without
    the likelihood term."""
    total = None
    for g in groups:
        z, mean, logvar = flat(g.z), flat(g.mean), flat(g.logvar)
        if g.prior_mean is None:
            p_mean, p_logvar = torch.zeros_like(z), torch.zeros_like(z)
        else:
            p_mean, p_logvar = flat(g.prior_mean), flat(g.prior_logvar)
        part = _log_normal(z, p_mean, p_logvar) - _log_normal(z, mean, logvar)
        total = part if total is None else total + part
    return total


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def draw_noise(model, batch: int, generator: torch.Generator, leading=()) -> torch.Tensor:
    """Standard normal noise of ``batch`` passes, (*leading, batch, latent_size), in the
    dtype and on the device of the model's parameters."""
    p = next(model.parameters())
    return torch.randn((*leading, batch, model.latent_size), generator=generator, device=p.device, dtype=p.dtype)


def repeat_features(features, k: int):
    """Features of B images as those of k*B rows, row i*B + b holding image b."""
    if isinstance(features, torch.Tensor):
        return features.expand(k, *features.shape).reshape(k * features.shape[0], *features.shape[1:])
    return type(features)(repeat_features(f, k) for f in features)


def group_names(model, count: int) -> tuple:
    """The names of a model's latent groups (its ``group_names``, else z0, z1, ...)."""
    names = tuple(getattr(model, "group_names", ()))
    return names if len(names) == count else tuple(f"z{i}" for i in range(count))


def temperatures_for(model, temperature):
    """A number, or a list with one temperature per latent group of ``model`` (from a
    tuple); another count is refused in one line naming the groups."""
    if not isinstance(temperature, (tuple, list)):
        return temperature
    names = tuple(getattr(model, "group_names", ()))
    if len(temperature) != len(names):
        count = len(names) or 1
        raise VaeError(f"{len(temperature)} temperatures for the model's {count} latent group"
                       f"{'s' if count > 1 else ''} ({', '.join(group_names(model, count))}): give one, "
                       f"or one per group")
    return list(temperature)


def group_sizes(groups) -> list:
    """Latent dimensions per group of a pass."""
    return [int(g.mean[0].numel()) for g in groups]
