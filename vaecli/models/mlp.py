"""The fully connected VAE of Kingma and Welling (2014), a quick baseline at any size.

Encoder: the image flattened, ``depth`` hidden layers of ``hidden`` units (ReLU), then a
linear layer to the mean and log-variance of a ``latent_dim``-dimensional Gaussian.
Decoder: ``depth`` hidden layers of ``hidden`` units (ReLU), then a linear layer to the
likelihood's raw outputs for every pixel.  One latent group, standard normal prior.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..api import Likelihood
from .protocol import OneGaussianLatent


def _stack(inputs: int, hidden: int, depth: int) -> list:
    layers = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else hidden, hidden), nn.ReLU()]
    return layers


class MlpVAE(OneGaussianLatent, nn.Module):
    def __init__(self, image_shape, likelihood: Likelihood, latent_dim: int = 20, hidden: int = 400, depth: int = 1):
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.latent_size, self.likelihood = tuple(image_shape), latent_dim, likelihood
        self.raw_shape = (likelihood.out_channels(c), h, w)
        dims = c * h * w
        self.encoder = nn.Sequential(nn.Flatten(), *_stack(dims, hidden, depth))
        self.to_posterior = nn.Linear(hidden if depth else dims, 2 * latent_dim)
        self.decoder = nn.Sequential(*_stack(latent_dim, hidden, depth),
                                     nn.Linear(hidden if depth else latent_dim, math.prod(self.raw_shape)))

    def encode(self, x: torch.Tensor):
        """uint8 levels (B, C, H, W) -> posterior mean and log-variance, (B, Z) each."""
        y = x.to(self.to_posterior.weight.dtype) / (2**self.likelihood.n_bits - 1)
        return self.to_posterior(self.encoder(y)).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.raw_shape)


def build(image_shape, likelihood: Likelihood, options) -> MlpVAE:
    """The registered factory (vaecli.models)."""
    return MlpVAE(image_shape, likelihood, latent_dim=options.latent_dim, hidden=options.hidden,
                  depth=options.depth)
