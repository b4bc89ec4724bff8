"""Backends: implementations of the likelihood interface, registered by name and
imported on first use (so ``import vaecli`` loads neither torch nor cupy).

The interface
-------------
Every backend module implements each function named in :data:`INTERFACE`; a test
checks it.  ``name`` is a likelihood name from :mod:`vaecli.registry`; ``x`` is an
integer array ``(B, C, H, W)`` of levels ``0 .. L-1``; ``raw`` is the decoder output
``(B, out_channels(C), H, W)`` laid out as :mod:`vaecli.registry` says.  Options are
keyword arguments, the same for every backend:

``n_bits`` (int, default 8); ``sigma`` (float: fixed sigma of ``gaussian``, default 1,
and the fixed evaluation sigma of ``sigma``/``sigma-image``; when ``None`` those two
compute it from the batch); ``log_sigma`` (the scalar raw parameter of
``sigma-learned``, an array of shape ``()``; required there); ``mixtures`` (int K of
``logistic-mixture``, default 10); ``log_sigma_min`` (float floor of the softclip on
every log-scale, default ``LOG_SIGMA_MIN``; ``None`` disables the floor).  The torch
backend also takes ``batch_reduce``: a differentiable all-reduce (sum) that makes the
``sigma`` likelihood's batch MSE the global one under data-parallel training.

``log_prob(name, x, raw, **opts) -> (B,)``
    log p(x | raw) in nats, summed over the D = C*H*W dimensions: the continuous
    density of ``y = x/(L-1)`` for continuous decoders, the PMF for discrete ones.
``log_pmf(name, x, raw, **opts) -> (B,)``
    the discretized PMF over the L levels, in nats (bin k centred at k/(L-1) with
    half-width 1/(2(L-1)); the first and last bins reach to -inf and +inf).
``mean(name, raw, **opts) -> (B, C, H, W)``
    a picture in [0, 1] of the decoder's mean (see docs/likelihoods.md).
``sample(name, raw, *, generator=None, **opts) -> (B, C, H, W)``
    integer levels drawn from the discretized distribution (uint8 for n_bits <= 8).
``gaussian_kl(mu, logvar) -> (B,)``
    KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over the latent dimensions.
``log_mean_exp(a, axis=0)``
    log of the mean of exp(a) along ``axis``, via logsumexp (importance weighting).

Backends return the floating dtype of ``raw`` (float32 or float64) and refuse half
precision with a VaeError.  Each backend module also has ``available() -> (bool, str)``
saying whether it can run here and, if not, why.
"""

from __future__ import annotations

import importlib

from ..errors import VaeError

INTERFACE = ("log_prob", "log_pmf", "mean", "sample", "gaussian_kl", "log_mean_exp", "available")

BACKENDS = {
    "reference": "vaecli.reference",
    "torch": "vaecli.backends.torch_backend",
    "cupy": "vaecli.backends.cupy_backend",
}

# The backends a model's likelihood can run on (the reference is the oracle only):
# every caller (CLI choices, TrainConfig, the Likelihood module, verify) reads this.
LIKELIHOOD_BACKENDS = ("torch", "cupy")

# What to install when a backend's import fails.
_INSTALL_HINT = {
    "reference": "pip install numpy scipy",
    "torch": "pip install torch",
    "cupy": "pip install 'vaecli[cupy]' (or cupy-cuda12x / cupy-cuda13x to match your CUDA)",
}

_loaded: dict = {}


def get_backend(name: str):
    """Import (once) and return the backend module called ``name``."""
    if name in _loaded:
        return _loaded[name]
    if name not in BACKENDS:
        raise VaeError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        raise VaeError(
            f"the {name} backend needs a package that is not installed ({exc}); "
            f"install it with: {_INSTALL_HINT[name]}"
        ) from None
    _loaded[name] = module
    return module
