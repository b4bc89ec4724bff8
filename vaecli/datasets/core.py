"""The Dataset record, its checksum, and the array checks every loader shares.

Data is integers (SPEC.md): an image batch is ``uint8`` of shape ``(N, C, H, W)``
with ``C`` in (1, 3) and levels ``0 .. 255``.  Anything else that reaches
:func:`to_images` is either converted without loss (another integer dtype holding
0..255, the ``(N, H, W)`` and ``(N, H, W, C)`` layouts) or refused with a VaeError
that says what and where.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..constants import DEFAULT_N_BITS
from ..errors import VaeError

# Domain tag of the canonical image encoding that Dataset.checksum hashes:
#   sha256(TAG + b"\0" + dtype.str + b"\0" + "N,C,H,W" + b"\0" + C-order bytes)
# e.g. dtype.str is "|u1" for uint8.  Bump the tag if the encoding ever changes.
CHECKSUM_TAG = b"vaecli-images-v1"
IMAGE_CHANNELS = (1, 3)  # grayscale or RGB
MAX_LEVEL = 2**DEFAULT_N_BITS - 1  # 255
RESIZE_BATCH = 512  # images resized per matrix product (bounds float64 memory)


def images_checksum(images: np.ndarray) -> str:
    """SHA-256 hex of the canonical encoding of an image array (see CHECKSUM_TAG)."""
    a = np.ascontiguousarray(images)
    h = hashlib.sha256()
    h.update(CHECKSUM_TAG + b"\0" + a.dtype.str.encode() + b"\0")
    h.update(",".join(str(d) for d in a.shape).encode() + b"\0")
    h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """One split of an image dataset, ready for training.

    ``images`` is ``uint8`` ``(N, C, H, W)`` with levels ``0 .. 2**n_bits - 1``;
    ``labels`` is ``int64`` ``(N,)`` or None.  ``checksum`` is computed here, from
    the images only (:func:`images_checksum`), so that a run file can record
    exactly which pixels it was trained on.  ``source`` says where the data came
    from (a path or a description) and ``attribution`` whom to credit.
    """

    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray | None  # (N,) int64
    name: str
    split: str
    n_bits: int = DEFAULT_N_BITS
    source: str = ""
    attribution: str = ""
    checksum: str = field(init=False)

    def __post_init__(self):
        x = self.images
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim not in (4, 5):
            raise VaeError(f"Dataset images must be a uint8 (N, C, H, W) array (videos: (N, T, C, H, W)), got "
                           f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}")
        if x.shape[0] == 0 or x.shape[-3] not in IMAGE_CHANNELS or 0 in x.shape[1:]:
            raise VaeError(f"Dataset {self.name!r}: images of shape {x.shape} (need N >= 1, C in 1 or 3)")
        if self.n_bits != DEFAULT_N_BITS:
            raise VaeError(f"Dataset {self.name!r}: datasets hold 8-bit data, got n_bits={self.n_bits}")
        y = self.labels
        if y is not None and (not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != x.shape[:1]):
            raise VaeError(f"Dataset {self.name!r}: labels must be int64 of shape ({x.shape[0]},), got "
                           f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}")
        object.__setattr__(self, "checksum", images_checksum(x))

    @property
    def num_dims(self) -> int:
        """D = C*H*W, the number of dimensions of one image (of one video: T*C*H*W)."""
        return int(np.prod(self.images.shape[1:]))

    @property
    def shape(self) -> tuple:
        """(C, H, W) of one image; (T, C, H, W) of one video."""
        return tuple(self.images.shape[1:])

    @property
    def frames(self) -> int | None:
        """Frames of each video; None for images."""
        return int(self.images.shape[1]) if self.images.ndim == 5 else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        labels = "no labels" if self.labels is None else "labels"
        return (f"Dataset({self.name!r}, split={self.split!r}, images={self.images.shape} uint8, "
                f"{labels}, checksum={self.checksum[:12]}..., source={self.source!r})")


def _float_advice(a: np.ndarray) -> str:
    finite = a[np.isfinite(a)] if a.size else a
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        return "values in [0, 1]: convert with (x * 255).round().astype(numpy.uint8)"
    if finite.size and np.all(finite == np.round(finite)) and finite.min() >= 0 and finite.max() <= MAX_LEVEL:
        return "whole numbers 0..255: convert with x.astype(numpy.uint8)"
    return "convert to uint8 levels 0..255"


def to_images(array, where: str) -> np.ndarray:
    """Check and convert an image array to uint8 ``(N, C, H, W)`` (videos: ``(N, T, C, H,
    W)``); ``where`` names its origin.

    Accepts ``(N, H, W)``, ``(N, C, H, W)`` and ``(N, H, W, C)`` with ``C`` in (1, 3)
    when the layout is unambiguous, videos ``(N, T, C, H, W)`` and ``(N, T, H, W, C)``, and any integer dtype whose values lie in 0..255.
    Refuses floats (data is integers), booleans, empty arrays and other shapes.
    """
    a = np.asarray(array)
    kind = a.dtype.kind
    if kind == "f":
        raise VaeError(f"{where}: images are {a.dtype} but vaecli data is integer levels 0..255; "
                       f"{_float_advice(a)}")
    if kind == "b":
        raise VaeError(f"{where}: images are boolean; store them as uint8 0/255 (binarize with --binarize)")
    if kind not in "ui":
        raise VaeError(f"{where}: images have dtype {a.dtype}; need integers 0..255 (uint8)")
    if a.ndim == 3:
        if a.shape[2] in IMAGE_CHANNELS and a.shape[1] != a.shape[2]:
            raise VaeError(f"{where}: shape {a.shape} looks like one (H, W, C) image, not {a.shape[0]} images "
                           f"of {a.shape[1]}x{a.shape[2]}; store images as (N, H, W), (N, C, H, W) or "
                           f"(N, H, W, C) (one image: add a first axis of 1)")
        a = a[:, None]
    elif a.ndim == 5:  # videos: (N, T, C, H, W) or (N, T, H, W, C)
        first, last = a.shape[2] in IMAGE_CHANNELS, a.shape[4] in IMAGE_CHANNELS
        if first and last:
            raise VaeError(f"{where}: videos of shape {a.shape} are ambiguous between (N, T, C, H, W) "
                           f"and (N, T, H, W, C); store them as (N, T, C, H, W) with H, W not 1 or 3")
        if last:
            a = a.transpose(0, 1, 4, 2, 3)
        elif not first:
            raise VaeError(f"{where}: videos of shape {a.shape} have no channel axis of size 1 or 3; "
                           f"need (N, T, C, H, W) or (N, T, H, W, C) with C = 1 or 3")
    elif a.ndim == 4:
        first, last = a.shape[1] in IMAGE_CHANNELS, a.shape[3] in IMAGE_CHANNELS
        if first and last:
            raise VaeError(f"{where}: images of shape {a.shape} are ambiguous between (N, C, H, W) "
                           f"and (N, H, W, C); store them as (N, C, H, W) with H, W not 1 or 3")
        if last:
            a = a.transpose(0, 3, 1, 2)
        elif not first:
            raise VaeError(f"{where}: images of shape {a.shape} have no channel axis of size 1 or 3; "
                           f"need (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3 (videos: "
                           f"(N, T, C, H, W))")
    else:
        raise VaeError(f"{where}: images of shape {a.shape}; need (N, H, W), (N, C, H, W) or (N, H, W, C), "
                       f"or videos (N, T, C, H, W)")
    if a.shape[0] == 0:
        raise VaeError(f"{where}: the dataset is empty (shape {a.shape})")
    if 0 in a.shape[1:]:
        raise VaeError(f"{where}: images of zero size (shape {a.shape})")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > MAX_LEVEL:
        raise VaeError(f"{where}: pixel values range over {lo}..{hi}; need 0..{MAX_LEVEL}")
    return np.ascontiguousarray(a, dtype=np.uint8)


def to_labels(array, n: int, where: str) -> np.ndarray:
    """Check and convert labels to int64 ``(n,)``; ``(n, 1)`` is flattened."""
    y = np.asarray(array)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in "ui" or y.ndim != 1:
        raise VaeError(f"{where}: labels must be integers of shape ({n},), got {y.dtype} {y.shape}")
    if y.shape[0] != n:
        raise VaeError(f"{where}: {y.shape[0]} labels for {n} images")
    if y.dtype == np.uint64 and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise VaeError(f"{where}: labels too large for int64")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------------
# Resizing: antialiased bilinear (a triangle filter widened by the downscale factor,
# the filter Pillow's BILINEAR and torchvision's Resize use), as a separable linear map.
# ----------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: output pixel i averages input pixels with a triangle filter.

    Pixel centres sit at k + 0.5; output centre i maps to (i + 0.5) * n_in / n_out in
    input coordinates.  The triangle's half-width is max(scale, 1) input pixels, so
    downscaling averages over the whole footprint (area-aware) and upscaling is plain
    bilinear interpolation.  Rows are normalised to sum to 1 (edges clamp).
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    taps = np.arange(n_in) + 0.5
    w = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def center_crop(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop of (N, C, H, W) to (N, C, height, width); offsets round((H - h) / 2)."""
    h, w = images.shape[2:]
    top, left = int(round((h - height) / 2)), int(round((w - width) / 2))
    return images[:, :, top:top + height, left:left + width]


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, C, H, W) to (N, C, size, size); non-square images are centre-cropped first."""
    h, w = images.shape[2:]
    if h != w:
        images = center_crop(images, min(h, w), min(h, w))
        h = w = min(h, w)
    if h == size:
        return np.ascontiguousarray(images)
    rows = resample_matrix(h, size)  # (size, h)
    cols = resample_matrix(w, size).T  # (w, size)
    out = np.empty(images.shape[:2] + (size, size), dtype=np.uint8)
    for start in range(0, images.shape[0], RESIZE_BATCH):
        x = images[start:start + RESIZE_BATCH].astype(np.float64)
        y = np.matmul(np.matmul(rows, x), cols)
        out[start:start + RESIZE_BATCH] = np.clip(np.floor(y + 0.5), 0, MAX_LEVEL)
    return out
