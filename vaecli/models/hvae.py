"""A top-down hierarchical VAE in the VDVAE/NVAE family, small enough for a CPU.

Bottom-up, a residual encoder reads the image at each resolution of ``resolutions``
(largest first; features are average-pooled from one resolution to the next).  Top
down, the decoder starts from a learned constant at the smallest resolution and, at
each resolution (nearest-neighbour upsampled from the one before), runs ``blocks``
blocks, each with one group of ``latent_channels`` latent maps:

* the prior p(z_g | z_<g) is a diagonal Gaussian read from the top-down state h;
* the posterior q(z_g | x, z_<g) is read from h and the bottom-up features at that
  resolution, so it is conditioned on the image and on every group above it;
* z_g enters the state through a 1x1 convolution (h += proj(z_g)), then a residual
  block follows.

Finally h is upsampled to the image size and a 1x1 convolution gives the likelihood's
raw outputs.  The KL of each group is against its own learned prior, so the model's KL
is a sum over groups, reported per group.  Log-variances are soft-clamped to
[-LOGVAR_BOUND, LOGVAR_BOUND] so that a step early in training cannot overflow them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import Likelihood
from ..errors import VaeError
from .protocol import LatentGroup, Pass

LOGVAR_BOUND = 10.0  # |log-variance| of every prior and posterior stays below this (soft clamp)


def auto_resolutions(side: int) -> tuple:
    """1x1, then the sides side/8, side/4 and side/2 that divide evenly and are at least 4
    (28: 1, 7, 14; 32: 1, 4, 8, 16; 64: 1, 8, 16, 32)."""
    return (1, *(side // 2**k for k in (3, 2, 1) if side % 2**k == 0 and side // 2**k >= 4))


def parse_resolutions(text: str, side: int) -> tuple:
    if text == "auto":
        return auto_resolutions(side)
    try:
        sides = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        raise VaeError(f"hvae: resolutions must be 'auto' or sides like 1,7,14, got {text!r}") from None
    if not sides or sides[0] < 1 or sides[-1] > side:
        raise VaeError(f"hvae: resolutions must be sides from 1 to the image side {side}, got {text!r}")
    return sides


def _pool(h: torch.Tensor, side: int) -> torch.Tensor:
    """Average-pool to ``side``: a plain k x k average where the sides divide (the same
    numbers as the adaptive pool, whose backward torch 2.13's CPU compiler fails to
    generate code for at 1x1), else the adaptive pool."""
    k = h.shape[-1] // side
    return F.avg_pool2d(h, k) if k * side == h.shape[-1] else F.adaptive_avg_pool2d(h, side)


def _upsample(h: torch.Tensor, side: int) -> torch.Tensor:
    """Nearest-neighbour upsampling to ``side``: each pixel copied f x f times where f is
    whole (the same numbers as F.interpolate; its backward is a sum, not the scatter that
    torch 2.13's CPU compiler fails to generate), else F.interpolate."""
    b, c, n, _ = h.shape
    f = side // n
    if f * n != side:
        return F.interpolate(h, size=(side, side), mode="nearest")
    return h[:, :, :, None, :, None].expand(b, c, n, f, n, f).reshape(b, c, side, side)


def _soft_clamp(t: torch.Tensor) -> torch.Tensor:
    return LOGVAR_BOUND * torch.tanh(t / LOGVAR_BOUND)


class Block(nn.Module):
    """x + conv3x3(gelu(conv3x3(gelu(x)))), the last layer scaled down at initialisation
    by the depth so that the sum of many blocks starts near the identity."""

    def __init__(self, width: int, depth_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(width, max(width // 2, 1), 3, padding=1)
        self.conv2 = nn.Conv2d(max(width // 2, 1), width, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(depth_scale)

    def forward(self, x):
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class TopDownBlock(nn.Module):
    """One latent group: prior from h, posterior from h and the bottom-up features."""

    def __init__(self, width: int, latent_channels: int, depth_scale: float):
        super().__init__()
        self.zc = latent_channels
        self.prior = nn.Conv2d(width, 2 * latent_channels + width, 1)
        self.posterior = nn.Conv2d(2 * width, 2 * latent_channels, 1)
        self.proj = nn.Conv2d(latent_channels, width, 1)
        self.block = Block(width, depth_scale)
        with torch.no_grad():  # the prior's contribution to h, and z's, start small
            self.prior.weight[2 * latent_channels:].mul_(depth_scale)
            self.proj.weight.mul_(depth_scale)

    def forward(self, h, features, eps, temperature=1.0):
        """(new h, LatentGroup); ``features`` None samples the prior at ``temperature``."""
        p = self.prior(h)
        p_mean, p_logvar, h_prior = p[:, : self.zc], _soft_clamp(p[:, self.zc : 2 * self.zc]), p[:, 2 * self.zc :]
        if features is None:
            z = p_mean + temperature * torch.exp(0.5 * p_logvar) * eps
            group = LatentGroup(z, p_mean, p_logvar, p_mean, p_logvar)
        else:
            q = self.posterior(torch.cat([h, features], dim=1))
            q_mean, q_logvar = q[:, : self.zc], _soft_clamp(q[:, self.zc :])
            z = q_mean + torch.exp(0.5 * q_logvar) * eps
            group = LatentGroup(z, q_mean, q_logvar, p_mean, p_logvar)
        return self.block(h + h_prior + self.proj(z)), group


class HierarchicalVAE(nn.Module):
    def __init__(self, image_shape, likelihood: Likelihood, *, width=32, resolutions="auto", blocks=2,
                 latent_channels=8):
        super().__init__()
        c, height, side = image_shape
        if height != side:
            raise VaeError(f"the hierarchical VAE needs square images, got {height}x{side}")
        self.image_shape, self.likelihood = tuple(image_shape), likelihood
        self.resolutions = parse_resolutions(resolutions, side)
        self.blocks_per_resolution = blocks
        n_groups = blocks * len(self.resolutions)
        depth_scale = 1.0 / max(n_groups, 1) ** 0.5
        self.group_names = tuple(f"{r}x{r}/{b}" for r in self.resolutions for b in range(blocks))
        self.group_sizes = tuple(latent_channels * r * r for r in self.resolutions for _ in range(blocks))
        self.latent_size = sum(self.group_sizes)
        self.latent_channels = latent_channels
        self.stem = nn.Conv2d(c, width, 3, padding=1)
        self.encoder = nn.ModuleList(nn.Sequential(*(Block(width, depth_scale) for _ in range(blocks)))
                                     for _ in self.resolutions)
        self.start = nn.Parameter(torch.zeros(1, width, self.resolutions[0], self.resolutions[0]))
        self.decoder = nn.ModuleList(TopDownBlock(width, latent_channels, depth_scale) for _ in range(n_groups))
        self.out_block = Block(width, depth_scale)
        self.out = nn.Conv2d(width, likelihood.out_channels(c), 1)

    def encode(self, x: torch.Tensor):
        """uint8 levels (B, C, H, W) -> bottom-up features at each resolution, smallest first."""
        h = self.stem(x.to(self.stem.weight.dtype) / (2**self.likelihood.n_bits - 1))
        features = []
        for r, blocks in zip(reversed(self.resolutions), reversed(self.encoder)):
            h = blocks(_pool(h, r) if h.shape[-1] != r else h)
            features.append(h)
        return tuple(reversed(features))

    def _top_down(self, eps, features=None, temperature=1.0, posterior_groups=None):
        """(raw outputs, groups): each group drawn from its posterior (given ``features``)
        up to ``posterior_groups`` groups (all when None), the rest from its prior."""
        batch = eps.shape[0]
        h = self.start.expand(batch, -1, -1, -1)
        groups, offset, g = [], 0, 0
        for level, r in enumerate(self.resolutions):
            if h.shape[-1] != r:
                h = _upsample(h, r)
            for _ in range(self.blocks_per_resolution):
                size = self.group_sizes[g]
                noise = eps[:, offset : offset + size].reshape(batch, self.latent_channels, r, r)
                t = temperature[g] if isinstance(temperature, (list, tuple)) else temperature
                from_posterior = features is not None and (posterior_groups is None or g < posterior_groups)
                h, group = self.decoder[g](h, features[level] if from_posterior else None, noise, t)
                groups.append(group)
                offset, g = offset + size, g + 1
        side = self.image_shape[-1]
        if h.shape[-1] != side:
            h = _upsample(h, side)
        return self.out(self.out_block(h)), tuple(groups)

    def posterior(self, features, eps: torch.Tensor) -> Pass:
        raw, groups = self._top_down(eps, features)
        return Pass(raw, groups)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Pass:
        return self.posterior(self.encode(x), eps)

    def generate(self, eps: torch.Tensor, temperature=1.0) -> torch.Tensor:
        """Raw outputs of latents drawn from the prior, group by group; ``temperature`` is
        one number or one per group (len(group_names))."""
        self._check_temperatures(temperature)
        return self._top_down(eps, None, temperature)[0]

    def _check_temperatures(self, temperature):
        if isinstance(temperature, (list, tuple)) and len(temperature) != len(self.group_names):
            raise VaeError(f"hvae: {len(temperature)} temperatures for {len(self.group_names)} latent groups")

    def posterior_then_prior(self, features, eps: torch.Tensor, posterior_groups: int,
                             temperature=1.0) -> torch.Tensor:
        """Raw outputs with the first ``posterior_groups`` latent groups drawn from the
        posteriors of the images whose bottom-up ``features`` (encode) are given and the
        groups below from their priors at ``temperature`` (one number, or one per group:
        the groups above the cut ignore theirs): 0 is a prior sample, all the
        groups a posterior sample.  Between the two it shows at which group samples from
        the prior leave what the images' posteriors cover (scripts/hierarchy_fid.py)."""
        if not 0 <= posterior_groups <= len(self.group_names):
            raise VaeError(f"hvae: posterior_groups must be 0 to {len(self.group_names)}, got {posterior_groups}")
        self._check_temperatures(temperature)
        return self._top_down(eps, features, temperature, posterior_groups)[0]


def build(image_shape, likelihood: Likelihood, options) -> HierarchicalVAE:
    """The registered factory (vaecli.models)."""
    return HierarchicalVAE(image_shape, likelihood, width=options.width, resolutions=options.resolutions,
                           blocks=options.blocks, latent_channels=options.latent_channels)
