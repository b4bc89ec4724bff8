"""Test doubles and helpers shared by the test modules."""

import dataclasses

import numpy as np


@dataclasses.dataclass
class FakeData:
    """What `vaecli.train.train(data=...)` needs of a dataset split."""

    images: np.ndarray
    name: str = "fake"
    split: str = "train"
    source: str = "memory"
    checksum: str = "0" * 64


def cupy_device():
    """(cupy, "") when a CUDA device is usable from cupy, else (None, why).  Decided by
    ``cupy.cuda.is_available()``, never by the import alone."""
    try:
        import cupy
    except ImportError as exc:
        return None, f"cupy is not installed ({exc})"
    try:
        if not cupy.cuda.is_available():
            return None, "no CUDA device is available (cupy.cuda.is_available() is False)"
    except Exception as exc:  # a driver/runtime mismatch reads as "no device"
        return None, f"CUDA is not usable from cupy ({exc})"
    return cupy, ""
