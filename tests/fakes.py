"""Test doubles and helpers shared by the test modules."""

import dataclasses

import numpy as np


@dataclasses.dataclass
class FakeData:
    """What `vaecli.training.train(data=...)` needs of a dataset split."""

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


def blob_images(n: int, size: int = 12, seed: int = 0, width: float = 6.0) -> np.ndarray:
    """n grayscale Gaussian blobs at random centres, uint8 (n, 1, size, size): small
    images with structure a VAE learns in an epoch or two."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(3, size - 3, (2, n, 1, 1))
    return (255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / width)).round().astype(np.uint8)[:, None]


def write_blobs(directory, n: int, seed: int = 0):
    """``blob_images(n, seed=seed)`` saved as ``directory/blobs.npz``; returns its path."""
    path = directory / "blobs.npz"
    np.savez(path, images=blob_images(n, seed=seed))
    return path



def stand_in_inception(path, seed: int = 0, width: int = 2048):
    """A small TorchScript network with the FID Inception's interface, saved at
    ``path``: (N, 3, 299, 299) in [-1, 1] -> (N, width) non-negative features
    (4x4 average pooling, a seeded linear map, ReLU).  Load it with
    ``FeatureExtractor(path, allow_unknown=True)``: its hash is not the Inception's."""
    import warnings

    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(48, width), torch.nn.ReLU()).eval()
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    return path


def interrupt_at_kl_call(monkeypatch, call: int):
    """Make the ``call``-th training step (its KL) raise SIGINT, as a Ctrl-C would;
    returns a function that undoes it."""
    import signal

    import vaecli.training.step as step_module

    real_kl, calls = step_module.total_kl, {"n": 0}

    def kl_then_interrupt(groups):
        calls["n"] += 1
        if calls["n"] == call:
            signal.raise_signal(signal.SIGINT)
        return real_kl(groups)

    monkeypatch.setattr(step_module, "total_kl", kl_then_interrupt)
    return lambda: monkeypatch.setattr(step_module, "total_kl", real_kl)
