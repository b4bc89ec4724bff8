"""Stochastic moving MNIST: deterministic bytes from a seed (a pinned checksum), sequences
that do not depend on how many are made, bounces that keep digits inside the frame, and
test sequences made of test digits only."""

import hashlib

import numpy as np
import pytest

from vaecli import VaeError, datasets
from vaecli.datasets import smmnist

# SHA-256 of smmnist.generate(mnist5k train digits, 8, seed=0): the whole recipe (seeding,
# draws, scaling, compositing) pinned; a change to any of them must change this on purpose
PINNED = "5412f47a213357c48850cbf0665f4f767ac4a60e81db888cae8a8521784d5587"


@pytest.fixture(scope="module")
def digits():
    return datasets.load("mnist5k", "train").images


def test_the_same_seed_gives_the_same_bytes(digits):
    videos = smmnist.generate(digits, 8, seed=0)
    assert videos.shape == (8, 20, 1, 64, 64) and videos.dtype == np.uint8
    assert hashlib.sha256(videos.tobytes()).hexdigest() == PINNED
    # sequence i does not depend on the count made, and another seed or split differs
    np.testing.assert_array_equal(smmnist.generate(digits, 3, seed=0), videos[:3])
    assert not np.array_equal(smmnist.generate(digits, 3, seed=1), videos[:3])
    assert not np.array_equal(smmnist.generate(digits, 3, seed=0, split="test"), videos[:3])


def test_digits_stay_inside_and_move(digits):
    videos = smmnist.generate(digits, 16, seed=3, frames=40, n_digits=1)
    assert videos.max() > 200  # digits drawn at full intensity
    for video in videos[:, :, 0]:
        assert all(frame.any() for frame in video)  # never leaves the frame
        centres = [np.argwhere(f > 0).mean(0) for f in video]
        steps = np.abs(np.diff(centres, axis=0)).max(1)
        assert steps.max() <= smmnist.MAX_SPEED + 2  # (+ the centroid's wobble at a bounce)
    moving = [np.abs(np.diff([np.argwhere(f > 0).mean(0) for f in v[:, 0]], axis=0)).sum() for v in videos]
    assert sum(m > 1 for m in moving) >= 12  # most digits move (a velocity of 0 is possible, as in SVG)


def test_sequences_are_made_of_the_given_split_digits_only():
    """Stand-in digits of one constant level per split: a test video holds only its own
    split's level (and 255 where two digits overlap), never the training split's."""
    train_digits = np.full((5, 28, 28), 100, np.uint8)
    test_digits = np.full((5, 28, 28), 60, np.uint8)
    for split, own, other in (("train", 100, 60), ("test", 60, 100)):
        d = train_digits if split == "train" else test_digits
        levels = set(np.unique(smmnist.generate(d, 6, split=split, seed=0)).tolist())
        assert own in levels and other not in levels and levels <= {0, own, 2 * own}


def test_bad_arguments_are_one_line(digits):
    with pytest.raises(VaeError, match="split must be train or test"):
        smmnist.generate(digits, 2, split="valid")
    with pytest.raises(VaeError, match="count must be an integer >= 1"):
        smmnist.generate(digits, 0)
    with pytest.raises(VaeError, match="digits must be a non-empty uint8"):
        smmnist.generate(np.zeros((0, 28, 28), np.uint8), 2)
    with pytest.raises(VaeError, match="cannot hold digits of side 32"):
        smmnist.generate(digits, 1, size=32)
