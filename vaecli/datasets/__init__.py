"""Dataset loaders and the bundled data (vaecli.datasets).

Lives inside the vaecli package so that no top-level ``datasets`` module is
installed beside the well-known package of that name.

    >>> from vaecli import datasets
    >>> train = datasets.load("mnist5k", "train")    # bundled, works offline
    >>> train.images.shape, train.images.dtype
    ((4000, 1, 28, 28), dtype('uint8'))

Public API: :class:`Dataset`, :func:`load`, :func:`list_local`, :func:`download`,
:data:`NAMES`.  Importing this package loads no numpy (the loaders are imported on
first use), so ``vae data ...`` and ``vae --help`` stay light.
"""

from .catalog import DEFAULT_DATASET, DOWNLOADABLE, NAMES, download, list_local

__all__ = ["Dataset", "load", "list_local", "download", "NAMES", "DOWNLOADABLE", "DEFAULT_DATASET", "images_checksum"]

_LAZY = {"Dataset": "vaecli.datasets.core", "images_checksum": "vaecli.datasets.core",
         "load": "vaecli.datasets.loading"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vaecli.datasets' has no attribute {name!r}")
