"""SVG-LP, the sequence VAE with a learned prior of Denton and Fergus ("Stochastic Video
Generation with a Learned Prior", ICML 2018), behind vaecli's model protocol.

Data are videos (B, T, C, H, W) of uint8 levels; the model reads the first
``n_past + n_future`` frames.  Every frame goes through a DCGAN-style encoder (4x4
stride-2 convolutions down to 4x4, then a 4x4 convolution to a ``g_dim`` vector, tanh)
whose intermediate maps are the skip connections.  For each frame t = 1 .. S-1
(S = n_past + n_future):

* the posterior q(z_t | x_1..t) is an LSTM over the encodings of the frames seen,
  read at frame t;
* the learned prior p(z_t | x_1..t-1) is an LSTM over the encodings up to t-1;
* the frame predictor, an LSTM stack over [h_{t-1}, z_t], gives the encoding of frame
  t, which the decoder (the encoder mirrored, with the skips concatenated at each
  resolution) turns into the likelihood's raw outputs for frame t.

The skips come from frame t-1 while t-1 is a context frame and from the last context
frame after that (``last_frame_skip`` true: always from frame t-1).  (SVG's code keeps
those of the second-to-last context frame; the paper describes the last.)

Differences from SVG, each for a reason: the decoder has no sigmoid (it gives the raw
outputs of any of the eleven likelihoods: each predicted frame's pixels are the
likelihood's images, so the sigma-VAE's sigma is shared over all pixels of all
predicted frames of the batch); GroupNorm instead of BatchNorm (batch statistics would
couple the sequences of a batch and make evaluation depend on running averages); the
KL of each frame is against the learned prior, one latent group per predicted frame,
so `--beta` weights the per-frame KL as SVG's beta does, and the KL per frame is
reported as the hierarchical VAE's per-group KL is.

Noise: one flat vector of ``z_dim * (S - 1)`` standard normals a sequence, frame by
frame.  :meth:`predict` continues context frames into sampled futures for evaluation
(SSIM, PSNR) and pictures; a sequence model has no unconditional ``generate``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..api import Likelihood
from ..errors import VaeError
from .protocol import LatentGroup, Pass

LOGVAR_BOUND = 10.0  # |log-variance| of the posterior and prior stays below this (soft clamp)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class FrameEncoder(nn.Module):
    """(N, C, H, W) frames -> (N, g_dim) encodings and the skip maps, largest first."""

    def __init__(self, channels: int, side: int, width: int, g_dim: int):
        super().__init__()
        downs = int(round(math.log2(side / 4)))
        if side < 8 or 4 * 2**downs != side:
            raise VaeError(f"svg: frames must be square with a side of 4 * 2^k (8, 16, 32, 64, ...), got {side}")
        self.widths = [min(width * 2**i, 8 * width) for i in range(downs)]
        layers, c_in = [], channels
        for c in self.widths:
            layers.append(nn.Sequential(nn.Conv2d(c_in, c, 4, 2, 1, bias=False), _norm(c), nn.LeakyReLU(0.2)))
            c_in = c
        self.downs = nn.ModuleList(layers)
        self.out = nn.Conv2d(c_in, g_dim, 4)

    def forward(self, x):
        skips = []
        for layer in self.downs:
            x = layer(x)
            skips.append(x)
        return torch.tanh(self.out(x)).flatten(1), skips


class FrameDecoder(nn.Module):
    """(N, g_dim) encodings and the skip maps -> (N, out_channels, H, W) raw outputs."""

    def __init__(self, widths, g_dim: int, out_channels: int):
        super().__init__()
        self.start = nn.Sequential(nn.ConvTranspose2d(g_dim, widths[-1], 4, bias=False), _norm(widths[-1]),
                                   nn.LeakyReLU(0.2))
        ups = []
        for i in reversed(range(len(widths))):
            c_out = widths[i - 1] if i > 0 else out_channels
            up = nn.ConvTranspose2d(2 * widths[i], c_out, 4, 2, 1, bias=i == 0)  # (a bias before a norm is void)
            ups.append(up if i == 0 else nn.Sequential(up, _norm(c_out), nn.LeakyReLU(0.2)))
        self.ups = nn.ModuleList(ups)

    def forward(self, g, skips):
        x = self.start(g[:, :, None, None])
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(torch.cat([x, skip], 1))
        return x


class Recurrent(nn.Module):
    """Linear embedding, a stack of LSTM cells, a linear read-out; the state is explicit."""

    def __init__(self, n_in: int, n_out: int, size: int, layers: int, gaussian: bool):
        super().__init__()
        self.embed = nn.Linear(n_in, size)
        self.cells = nn.ModuleList(nn.LSTMCell(size, size) for _ in range(layers))
        self.gaussian = gaussian
        self.read = nn.Linear(size, 2 * n_out if gaussian else n_out)
        self.size = size

    def initial(self, batch: int, like: torch.Tensor):
        zeros = like.new_zeros(batch, self.size)
        return [(zeros, zeros) for _ in self.cells]

    def forward(self, x, state):
        h = self.embed(x)
        new = []
        for cell, s in zip(self.cells, state):
            hc = cell(h, s)
            new.append(hc)
            h = hc[0]
        out = self.read(h)
        if self.gaussian:
            mean, logvar = out.chunk(2, dim=1)
            return (mean, LOGVAR_BOUND * torch.tanh(logvar / LOGVAR_BOUND)), new
        return torch.tanh(out), new


class SVG(nn.Module):
    def __init__(self, image_shape, likelihood: Likelihood, *, n_past=5, n_future=10, z_dim=10, g_dim=128,
                 width=64, rnn_size=256, predictor_layers=2, posterior_layers=1, prior_layers=1,
                 last_frame_skip=False):
        super().__init__()
        if len(tuple(image_shape)) != 4:
            raise VaeError(f"svg is a video model: it needs videos (N, T, C, H, W), got images of shape "
                           f"{tuple(image_shape)}")
        frames, c, h, w = image_shape
        if h != w:
            raise VaeError(f"svg needs square frames, got {h}x{w}")
        self.steps = n_past + n_future
        if frames < self.steps:
            raise VaeError(f"svg: n_past + n_future = {self.steps} frames, but the videos have {frames}")
        self.image_shape, self.likelihood = tuple(image_shape), likelihood
        self.n_past, self.n_future, self.z_dim, self.last_frame_skip = n_past, n_future, z_dim, last_frame_skip
        self.latent_size = z_dim * (self.steps - 1)
        self.target_shape = (self.steps - 1, c, h, w)  # the frames scored: 1 .. S-1
        self.group_names = tuple(f"frame {t}" for t in range(1, self.steps))
        self.encoder = FrameEncoder(c, w, width, g_dim)
        self.decoder = FrameDecoder(self.encoder.widths, g_dim, likelihood.out_channels(c))
        self.predictor = Recurrent(g_dim + z_dim, g_dim, rnn_size, predictor_layers, gaussian=False)
        self.q = Recurrent(g_dim, z_dim, rnn_size, posterior_layers, gaussian=True)
        self.p = Recurrent(g_dim, z_dim, rnn_size, prior_layers, gaussian=True)

    # ------------------------------------------------------------------ protocol
    def _levels(self, x):
        return x.to(self.encoder.out.weight.dtype) / (2**self.likelihood.n_bits - 1)

    def _encode_frames(self, frames):
        """(B, S, C, H, W) levels -> (B, S, g) and the skips (B, S, c, r, r) each."""
        b, s = frames.shape[:2]
        g, skips = self.encoder(self._levels(frames).reshape(b * s, *frames.shape[2:]))
        return g.view(b, s, -1), [k.view(b, s, *k.shape[1:]) for k in skips]

    def encode(self, x: torch.Tensor):
        """Videos (B, T, C, H, W) -> (encodings, *skips, the frames predicted (B, S-1, C, H, W))."""
        frames = x[:, : self.steps]
        g, skips = self._encode_frames(frames)
        return (g, *skips, frames[:, 1:])

    def _skip_frame(self, t: int) -> int:
        return t - 1 if self.last_frame_skip else min(t - 1, self.n_past - 1)

    def posterior(self, features, eps: torch.Tensor) -> Pass:
        g, *skips, target = features
        b = g.shape[0]
        eps = eps.view(b, self.steps - 1, self.z_dim)
        q_state, p_state, f_state = (m.initial(b, g) for m in (self.q, self.p, self.predictor))
        raws, groups = [], []
        for t in range(1, self.steps):
            (q_mean, q_logvar), q_state = self.q(g[:, t], q_state)
            (p_mean, p_logvar), p_state = self.p(g[:, t - 1], p_state)
            z = q_mean + torch.exp(0.5 * q_logvar) * eps[:, t - 1]
            predicted, f_state = self.predictor(torch.cat([g[:, t - 1], z], 1), f_state)
            s = self._skip_frame(t)
            raws.append(self.decoder(predicted, [k[:, s] for k in skips]))
            groups.append(LatentGroup(z, q_mean, q_logvar, p_mean, p_logvar))
        raw = torch.stack(raws, 1)
        return Pass(raw.reshape(b * (self.steps - 1), *raw.shape[2:]), tuple(groups),
                    target.reshape(b * (self.steps - 1), *target.shape[2:]))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Pass:
        return self.posterior(self.encode(x), eps)

    def generate(self, eps, temperature=1.0):
        raise VaeError("svg predicts videos from context frames (vae sample takes them from the test split); "
                       "it has no unconditional samples")

    @torch.no_grad()
    def predict(self, context: torch.Tensor, eps: torch.Tensor, steps: int, temperature: float = 1.0):
        """Raw outputs (B, steps, out_channels, H, W) of ``steps`` frames after the
        ``n_past`` context frames (B, n_past, C, H, W), with z of the learned prior
        (scaled by ``temperature``) from the noise ``eps`` (B, (n_past - 1 + steps),
        z_dim); each predicted frame's decoder mean is the next frame's input."""
        b = context.shape[0]
        g_ctx, skips_ctx = self._encode_frames(context[:, : self.n_past])
        q_state, p_state, f_state = (m.initial(b, g_ctx) for m in (self.q, self.p, self.predictor))
        g_prev, skip = g_ctx[:, 0], [k[:, 0] for k in skips_ctx]
        raws = []
        for t in range(1, self.n_past + steps):
            (p_mean, p_logvar), p_state = self.p(g_prev, p_state)
            if t < self.n_past:  # a context frame: z from the posterior of the true frame
                (q_mean, q_logvar), q_state = self.q(g_ctx[:, t], q_state)
                z = q_mean + torch.exp(0.5 * q_logvar) * eps[:, t - 1]
            else:
                z = p_mean + temperature * torch.exp(0.5 * p_logvar) * eps[:, t - 1]
            predicted, f_state = self.predictor(torch.cat([g_prev, z], 1), f_state)
            if t < self.n_past:
                g_prev = g_ctx[:, t]
                if self.last_frame_skip or t <= self.n_past - 1:
                    skip = [k[:, t] for k in skips_ctx]
                continue
            raw = self.decoder(predicted, skip)
            raws.append(raw)
            levels = self.likelihood.mean(raw.float()) * (2**self.likelihood.n_bits - 1)
            g_next, skip_next = self.encoder(levels / (2**self.likelihood.n_bits - 1))
            g_prev = g_next
            if self.last_frame_skip:
                skip = skip_next
        return torch.stack(raws, 1)


def build(image_shape, likelihood: Likelihood, options) -> SVG:
    """The registered factory (vaecli.models)."""
    return SVG(image_shape, likelihood, n_past=options.n_past, n_future=options.n_future, z_dim=options.z_dim,
               g_dim=options.g_dim, width=options.width, rnn_size=options.rnn_size,
               predictor_layers=options.predictor_layers, posterior_layers=options.posterior_layers,
               prior_layers=options.prior_layers, last_frame_skip=options.last_frame_skip)
