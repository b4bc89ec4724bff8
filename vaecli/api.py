"""The torch-style Python API: a decoder likelihood as a ``torch.nn.Module``.

    import torch, vaecli

    lik = vaecli.likelihood("sigma")                 # the sigma-VAE decoder
    head = torch.nn.Conv2d(64, lik.out_channels(3), 1)  # decoder's last layer
    raw = head(features)                             # (B, 3, H, W) unconstrained
    log_px = lik.log_prob(x_uint8, raw)              # (B,) nats
    loss = -(log_px - vaecli.gaussian_kl(mu, logvar)).mean()

Values are nats per image, summed over all dimensions; ``x`` is the integer batch
``(B, C, H, W)`` of levels ``0 .. 2**n_bits - 1``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from . import registry
from .backends import LIKELIHOOD_BACKENDS, get_backend
from .backends import torch_backend
from .constants import DEFAULT_MIXTURES, DEFAULT_N_BITS, LOG_SIGMA_MIN
from .errors import VaeError
from .units import equivalent_beta

_PARAMETER_DTYPES = (torch.float32, torch.float64)
# Batches of a bernoulli module whose x is read on a GPU for non-binary levels: each
# read waits for the device, so only the first (on the CPU every batch, until the
# warning, as the range check reads x there anyway).
_BINARY_CHECKS_ON_DEVICE = 1


class Likelihood(nn.Module):
    """One decoder likelihood.  ``sigma-learned`` owns its ``log_sigma`` parameter,
    so put this module's parameters in your optimizer.

    Parameters
    ----------
    name: one of ``vaecli.NAMES``.
    backend: ``"torch"`` (autograd, CPU or CUDA) or ``"cupy"`` (fused CUDA kernels,
        with gradients through a custom autograd function; CUDA tensors only).
    n_bits: bits per data value (L = 2**n_bits levels).
    sigma: fixed sigma of ``gaussian`` (default 1); for ``sigma``/``sigma-image`` the
        fixed evaluation sigma (None: sigma* = sqrt(MSE) of the batch / image).
    pmf_sigma: ``sigma`` only: the evaluation sigma of the discretized PMF (``log_pmf``
        and ``sample``), when it differs from the density's (vaecli.calibration);
        None: ``sigma`` serves both.
    mixtures: components of ``logistic-mixture``.
    log_sigma_min: softclip floor of every log-scale (None disables it).
    init_log_sigma: initial raw log sigma of ``sigma-learned``.
    device, dtype: where and in which floating dtype ``sigma-learned`` makes its
        ``log_sigma`` parameter, as torch modules take them (default: the CPU and
        ``torch.get_default_dtype()``); the other likelihoods own no tensors.  Make a
        float64 model with ``dtype=torch.float64``: ``.double()`` afterwards converts
        a float32 parameter, whose ``init_log_sigma`` is already rounded to float32.

    ``raw`` is laid out as docs/likelihoods.md, "Raw decoder outputs", says.
    ``bernoulli`` warns (a UserWarning, once per module) when ``log_prob`` or
    ``log_pmf`` is given levels other than 0 and L-1: on such data it is a
    cross-entropy, not a normalized likelihood.
    """

    def __init__(
        self,
        name: str,
        *,
        backend: str = "torch",
        n_bits: int = DEFAULT_N_BITS,
        sigma: float | None = None,
        pmf_sigma: float | None = None,
        mixtures: int = DEFAULT_MIXTURES,
        log_sigma_min: float | None = LOG_SIGMA_MIN,
        init_log_sigma: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.info = registry.info(name)
        self.name = name
        if dtype is not None and dtype not in _PARAMETER_DTYPES:
            raise VaeError(f"{name}: likelihoods compute in float32 or float64, got dtype={dtype}")
        factory_kwargs = {"device": device, "dtype": dtype}
        if backend not in LIKELIHOOD_BACKENDS:
            raise VaeError(
                f"unknown likelihood backend {backend!r}; choose one of: {', '.join(LIKELIHOOD_BACKENDS)}"
            )
        if backend == "cupy":
            ok, why = get_backend("cupy").available()
            if not ok:
                raise VaeError(f"the cupy backend cannot run here: {why}")
        self.backend = backend
        registry.num_levels(n_bits)
        self.n_bits = n_bits
        self.sigma = sigma
        if pmf_sigma is not None and name != "sigma":
            raise VaeError(f"{name}: pmf_sigma is an evaluation sigma of the sigma likelihood only")
        self.pmf_sigma = pmf_sigma
        self.mixtures = mixtures
        self.log_sigma_min = log_sigma_min
        # the options' errors now, not at the first call
        torch_backend.check_options(name, n_bits=n_bits, sigma=sigma, mixtures=mixtures,
                                    log_sigma_min=log_sigma_min)
        if name == "sigma-learned":
            self.log_sigma = nn.Parameter(torch.tensor(float(init_log_sigma), **factory_kwargs))
        else:
            self.log_sigma = None
        # data-parallel training sets a differentiable all-reduce here (torch backend)
        self.batch_reduce = None
        # bernoulli: x is read for levels other than 0 and L-1 until it warns once
        self._binary_checks_left = _BINARY_CHECKS_ON_DEVICE if name == "bernoulli" else 0

    # ------------------------------------------------------------------ facts
    def out_channels(self, image_channels: int) -> int:
        """Decoder output channels needed for images with ``image_channels`` channels."""
        return registry.out_channels(self.name, image_channels, self.n_bits, self.mixtures)

    def options(self) -> dict:
        """The backend options this module passes (see vaecli.backends)."""
        opts = {"n_bits": self.n_bits, "log_sigma_min": self.log_sigma_min}
        if self.sigma is not None:
            opts["sigma"] = self.sigma
        if self.name == "logistic-mixture":
            opts["mixtures"] = self.mixtures
        if self.log_sigma is not None:
            opts["log_sigma"] = self.log_sigma
        if self.batch_reduce is not None:
            opts["batch_reduce"] = self.batch_reduce
        return opts

    def pmf_options(self) -> dict:
        """The options of the discretized PMF: ``options()`` with ``pmf_sigma`` as the
        sigma where one is set."""
        opts = self.options()
        if self.pmf_sigma is not None:
            opts["sigma"] = self.pmf_sigma
        return opts

    def extra_repr(self) -> str:
        extra = f", sigma={self.sigma}" if self.sigma is not None else ""
        if self.pmf_sigma is not None:
            extra += f", pmf_sigma={self.pmf_sigma}"
        if self.name == "logistic-mixture":
            extra += f", mixtures={self.mixtures}"
        return f"{self.name!r}, backend={self.backend!r}, n_bits={self.n_bits}{extra}"

    # ----------------------------------------------------------------- values
    def _functions(self):
        if self.backend == "cupy":
            from .backends.cupy_backend import torch_bridge

            return torch_bridge
        return torch_backend

    def log_prob(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """log p(x | raw), nats per image (B,): the density of y = x/(L-1) for the
        continuous decoders, the PMF for the discrete ones."""
        value = self._functions().log_prob(self.name, x, raw, **self.options())
        self._warn_if_not_binary(x)
        return value

    def log_pmf(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """The discretized PMF over the L levels, nats per image (B,); comparable
        across all decoders (bits/dim: vaecli.bits_per_dim(log_pmf - kl, D))."""
        if self.info.training_only:
            raise VaeError(f"{self.name}: {self.info.pmf_note}; no PMF is defined")
        value = self._functions().log_pmf(self.name, x, raw, **self.pmf_options())
        self._warn_if_not_binary(x)
        return value

    def _warn_if_not_binary(self, x: torch.Tensor):
        """bernoulli: warn once if x holds levels other than 0 and L-1.  Reading x is a
        device sync, so it is done only until the warning (CPU) or for the first batch
        (GPU), and never while torch.compile traces, a CUDA graph is captured or
        torch.func transforms x (vmap, grad)."""
        if self._binary_checks_left <= 0 or x.numel() == 0:
            return
        wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
        if torch.compiler.is_compiling() or (wrapped is not None and wrapped(x)):
            return
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return
        if x.device.type != "cpu":
            self._binary_checks_left -= 1
        top = 2**self.n_bits - 1
        if bool(((x != 0) & (x != top)).any()):
            self._binary_checks_left = 0
            warnings.warn(
                f"bernoulli: x holds levels other than 0 and {top}; on such data bernoulli's "
                "y*l - softplus(l) is a cross-entropy, not a normalized likelihood (its ELBO and "
                "bits/dim are no bounds); binarize the data to levels 0 and "
                f"{top} (vae train --binarize does it at 128)", UserWarning, stacklevel=3)

    def forward(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x, raw)

    def mean(self, raw: torch.Tensor) -> torch.Tensor:
        """The decoder mean as a picture in [0, 1], (B, C, H, W)."""
        return torch_backend.mean(self.name, raw, **self.options())

    def sample(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Integer levels (B, C, H, W) drawn from the discretized distribution."""
        return torch_backend.sample(self.name, raw, generator=generator, **self.pmf_options())

    def current_sigma(self, x: torch.Tensor | None = None, raw: torch.Tensor | None = None):
        """The decoder sigma now in use as a float (None for non-Gaussian decoders
        and for gaussian-pixel, whose sigma varies per pixel).  ``sigma`` without a
        fixed evaluation sigma needs the batch (x, raw) it is computed from;
        ``sigma-image`` gives the batch mean of its per-image sigmas.  It is computed
        in raw's dtype, as log_prob computes it; without raw, in the dtype of
        ``sigma-learned``'s parameter, or in float64 from a fixed sigma option."""
        if not self.info.gaussian_family or self.name == "gaussian-pixel":
            return None
        with torch.no_grad():
            needs_batch = self.name in ("sigma", "sigma-image") and self.sigma is None
            if needs_batch and (x is None or raw is None):
                raise VaeError(f"{self.name}: sigma comes from a batch; pass x and raw")
            opts = self.options()
            opts.pop("batch_reduce", None)  # a local estimate: no collective from one rank's display
            if raw is None:
                # no batch: sigma needs no x, and is computed in the parameter's dtype
                # (sigma-learned) or in float64 from the fixed sigma option
                x = None
                dtype = torch.float64 if self.log_sigma is None else self.log_sigma.dtype
                device = None if self.log_sigma is None else self.log_sigma.device
                raw = torch.zeros(1, self.out_channels(1), 1, 1, dtype=dtype, device=device)
            log_sigma = torch_backend.gaussian_log_sigma(self.name, x, raw, **opts)
            return float(torch.exp(log_sigma).mean())

    def equivalent_beta(self, x=None, raw=None):
        """beta = 2 sigma^2 of the MSE-loss beta-VAE this decoder amounts to."""
        sigma = self.current_sigma(x, raw)
        return None if sigma is None else equivalent_beta(sigma)


def likelihood(name: str, **options) -> Likelihood:
    """The :class:`Likelihood` module called ``name`` (options as Likelihood's)."""
    return Likelihood(name, **options)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats per image, summed over latents: (B,)."""
    return torch_backend.gaussian_kl(mu, logvar)
