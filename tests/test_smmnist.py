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


def test_the_named_dataset_is_the_pinned_recipe_and_is_cached(tmp_path, monkeypatch):
    from vaecli.datasets import catalog

    monkeypatch.setenv("VAECLI_CACHE", str(tmp_path))
    test = datasets.load("smmnist", "test")
    assert test.images.shape == (1000, 20, 1, 64, 64) and test.frames == 20
    assert test.checksum == catalog.SMMNIST_SHA256["test"]  # the same videos on every machine
    assert "from mnist5k test" in test.source
    cached = list((tmp_path / "smmnist").glob("test-*.npz"))
    assert len(cached) == 1
    # a cache file that was altered is not used: the videos are made again, as pinned
    with np.load(cached[0]) as npz:
        videos = npz["images"].copy()
    videos[0, 0, 0, 0, 0] ^= 1
    np.savez_compressed(cached[0], images=videos)
    assert datasets.load("smmnist", "test").checksum == catalog.SMMNIST_SHA256["test"]
    assert datasets.load("sm-mnist", "test", size=32).images.shape == (1000, 20, 1, 32, 32)


def test_video_files_and_folders_load_as_n_t_c_h_w(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, (3, 4, 1, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", images=videos)
    np.save(tmp_path / "last.npy", videos.transpose(0, 1, 3, 4, 2))  # (N, T, H, W, C)
    for name in ("v.npz", "last.npy"):
        data = datasets.load(tmp_path / name)
        np.testing.assert_array_equal(data.images, videos)
        assert data.frames == 4 and data.shape == (4, 1, 16, 16)
    folder = tmp_path / "clips"
    for i, video in enumerate(videos):
        (folder / f"clip{i}").mkdir(parents=True)
        for t, frame in enumerate(video):
            Image.fromarray(frame[0]).save(folder / f"clip{i}" / f"frame_{t:03d}.png")
    np.testing.assert_array_equal(datasets.load(folder).images, videos)
    (folder / "clip1" / "frame_003.png").unlink()
    with pytest.raises(VaeError, match=r"clip1: 3 frames of \(1, 16, 16\) but clip0 has 4"):
        datasets.load(folder)
    with pytest.raises(VaeError, match=r"ambiguous between \(N, T, C, H, W\) and \(N, T, H, W, C\)"):
        np.save(tmp_path / "odd.npy", np.zeros((2, 3, 3, 4, 3), np.uint8))
        datasets.load(tmp_path / "odd.npy")


def test_image_models_refuse_videos_in_one_line(tmp_path):
    from click.testing import CliRunner

    from vaecli.cli import main

    np.savez(tmp_path / "v.npz", images=np.zeros((10, 3, 1, 16, 16), np.uint8))
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "v.npz"), "--out", str(tmp_path / "r.h5")])
    assert result.exit_code == 1 and "the data are videos" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.h5").exists()
