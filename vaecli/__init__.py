"""vaecli: variational autoencoders with calibrated decoders.

``import vaecli`` is light: it loads neither torch nor cupy.  The torch-facing API
(:func:`likelihood`, :class:`Likelihood`) is imported on first use, and ``dir(vaecli)``
(tab completion) lists it without importing it.

    >>> import vaecli
    >>> lik = vaecli.likelihood("sigma")          # a torch.nn.Module
    >>> lik.out_channels(image_channels=1)        # decoder channels it needs
    1
"""

from ._version import __version__
from .errors import VaeError
from .registry import LIKELIHOODS, NAMES, out_channels
from .units import bits_per_dim

__all__ = [
    "__version__",
    "VaeError",
    "LIKELIHOODS",
    "NAMES",
    "out_channels",
    "bits_per_dim",
    "likelihood",
    "Likelihood",
    "gaussian_kl",
    "get_backend",
    "load_run",
]

_LAZY = {
    "likelihood": "vaecli.api",
    "Likelihood": "vaecli.api",
    "gaussian_kl": "vaecli.api",
    "get_backend": "vaecli.backends",
    "load_run": "vaecli.runs",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vaecli' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
