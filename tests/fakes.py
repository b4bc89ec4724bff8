"""Test doubles shared by the test modules."""

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
