"""The σ-VAE paper's small convolutional VAE.

Encoder: conv 3x3 stride 1 (w channels), conv 4x4 stride 2 (2w), conv 5x5 stride 2
(4w), ReLU after each, then a linear layer to the posterior mean and log-variance
of a ``latent_dim``-dimensional Gaussian.  Decoder: the mirror image, a linear layer
then (no activation, as in the paper's code) transposed convs 6x6/2 (2w), 6x6/2 (w) and 5x5/1 to the likelihood's
``out_channels``.  Works for any square size divisible by 4 (28, 32, 64, ...).

One latent group, standard normal prior (vaecli.models.protocol).
"""

from __future__ import annotations

import torch
from torch import nn

from ..api import Likelihood
from ..errors import VaeError
from .protocol import OneGaussianLatent


class ConvVAE(OneGaussianLatent, nn.Module):
    def __init__(self, image_channels: int, image_size: int, likelihood: Likelihood,
                 latent_dim: int = 20, width: int = 32):
        super().__init__()
        if image_size % 4 or image_size < 8:
            raise VaeError(f"the convolutional VAE needs a square image size of at least 8 and divisible by 4, "
                           f"got {image_size}")
        self.image_channels, self.image_size, self.latent_dim = image_channels, image_size, latent_dim
        self.latent_size = latent_dim
        self.image_shape = (image_channels, image_size, image_size)
        w = width
        self.feature_shape = (4 * w, image_size // 4, image_size // 4)
        features = 4 * w * (image_size // 4) ** 2
        self.encoder = nn.Sequential(
            nn.Conv2d(image_channels, w, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 5, stride=2, padding=2), nn.ReLU(),
            nn.Flatten(),
        )
        self.to_posterior = nn.Linear(features, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, features)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 6, stride=2, padding=2), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 6, stride=2, padding=2), nn.ReLU(),
            nn.ConvTranspose2d(w, likelihood.out_channels(image_channels), 5, stride=1, padding=2),
        )
        self.likelihood = likelihood

    def encode(self, x: torch.Tensor):
        """uint8 levels (B, C, H, W) -> posterior mean and log-variance, (B, Z) each."""
        levels = 2 ** self.likelihood.n_bits
        y = x.to(self.to_posterior.weight.dtype) / (levels - 1)
        return self.to_posterior(self.encoder(y)).chunk(2, dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, Z) -> raw decoder output (B, out_channels, H, W)."""
        return self.decoder(self.from_latent(z).view(-1, *self.feature_shape))


def build(image_shape, likelihood: Likelihood, options) -> ConvVAE:
    """The registered factory (vaecli.models): a ConvVAE for square images."""
    c, h, w = image_shape
    if h != w:
        raise VaeError(f"the convolutional VAE needs square images, got {h}x{w}")
    return ConvVAE(c, h, likelihood, latent_dim=options.latent_dim, width=options.width)
