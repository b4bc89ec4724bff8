"""Stochastic moving MNIST (SM-MNIST), the video benchmark of SVG (Denton and Fergus, 2018),
generated deterministically: the same seed gives the same bytes on every machine.

Each sequence is ``frames`` frames of ``size x size`` (64 by default), with ``digits``
MNIST digits (2 by default) scaled to ``digit_size`` (32) that move with a constant
velocity and bounce off the borders.  On a bounce the digit's velocity along that axis
is drawn anew, pointing away from the border: the stochastic part that makes the future
uncertain.  Per frame and digit, in order: the position is checked against the borders
(and clamped, with the new velocity drawn), the digit is drawn, then it moves.  Digits
add up where they overlap, saturating at 255.

Determinism: sequence ``i`` of a split draws from its own generator, NumPy's PCG64
seeded by ``SeedSequence([seed, split code, i])``, whose stream NumPy keeps stable
across platforms; the digits are scaled by vaecli's float64 resampling
(:func:`vaecli.datasets.core.resize`).  So sequence ``i`` does not depend on how many
sequences are made, and a split's checksum pins the whole recipe.  Train sequences use
only the digits of the training split and test sequences only those of the test split.
"""

from __future__ import annotations

import numpy as np

from ..errors import VaeError
from .core import resize

SIZE = 64  # frame side, as in SVG
DIGIT_SIZE = 32  # the digits' side in the frame, as in SVG (MNIST's 28 scaled up)
DIGITS = 2  # digits per sequence, as in SVG's SM-MNIST
FRAMES = 20  # frames per sequence
MAX_SPEED = 4  # |velocity| per axis in pixels a frame; a bounce draws 1..4 away from the border
SPLIT_CODES = {"train": 0, "test": 1}  # the split's word in each sequence's seed
RECIPE = 1  # the version of this recipe, in cache file names: a change of recipe is a new number


def scaled_digits(digits: np.ndarray, digit_size: int = DIGIT_SIZE) -> np.ndarray:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) digits -> uint8 (N, digit_size, digit_size)."""
    d = np.asarray(digits)
    if d.ndim == 4 and d.shape[1] == 1:
        d = d[:, 0]
    if d.ndim != 3 or d.dtype != np.uint8 or len(d) == 0:
        raise VaeError(f"smmnist: digits must be a non-empty uint8 (N, H, W) array, got {d.dtype} {d.shape}")
    return resize(d[:, None], digit_size)[:, 0]


def sequence(digits: np.ndarray, index: int, *, split: str = "train", seed: int = 0, frames: int = FRAMES,
             n_digits: int = DIGITS, size: int = SIZE) -> np.ndarray:
    """Sequence ``index`` of ``split``: uint8 (frames, 1, size, size), from ``digits``
    already scaled (:func:`scaled_digits`)."""
    digit_size = digits.shape[-1]
    limit = size - digit_size  # the largest top-left coordinate that keeps a digit inside
    if limit < 1:
        raise VaeError(f"smmnist: frames of side {size} cannot hold digits of side {digit_size}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLIT_CODES[split], index])))
    video = np.zeros((frames, size, size), dtype=np.uint16)
    for _ in range(n_digits):
        digit = digits[rng.integers(len(digits))].astype(np.uint16)
        x, y = (int(v) for v in rng.integers(0, limit, size=2))
        dx, dy = (int(v) for v in rng.integers(-MAX_SPEED, MAX_SPEED + 1, size=2))
        for t in range(frames):
            if y < 0:
                y, dy = 0, int(rng.integers(1, MAX_SPEED + 1))
            elif y >= limit:
                y, dy = limit - 1, -int(rng.integers(1, MAX_SPEED + 1))
            if x < 0:
                x, dx = 0, int(rng.integers(1, MAX_SPEED + 1))
            elif x >= limit:
                x, dx = limit - 1, -int(rng.integers(1, MAX_SPEED + 1))
            video[t, y : y + digit_size, x : x + digit_size] += digit
            x, y = x + dx, y + dy
    return np.minimum(video, 255).astype(np.uint8)[:, None]


def generate(digits: np.ndarray, count: int, *, split: str = "train", seed: int = 0, frames: int = FRAMES,
             n_digits: int = DIGITS, size: int = SIZE, digit_size: int = DIGIT_SIZE) -> np.ndarray:
    """``count`` sequences of ``split``: uint8 (count, frames, 1, size, size), drawn from
    ``digits`` (uint8 (N, 28, 28), the split's own MNIST digits)."""
    if split not in SPLIT_CODES:
        raise VaeError(f"smmnist: split must be train or test, got {split!r}")
    for name, value, low in (("count", count, 1), ("frames", frames, 1), ("digits", n_digits, 1),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise VaeError(f"smmnist: {name} must be an integer >= {low}, got {value!r}")
    scaled = scaled_digits(digits, digit_size)
    out = np.empty((count, frames, 1, size, size), dtype=np.uint8)
    for i in range(count):
        out[i] = sequence(scaled, i, split=split, seed=seed, frames=frames, n_digits=n_digits, size=size)
    return out
