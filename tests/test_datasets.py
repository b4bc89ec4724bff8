"""Dataset layer: every loader on small files written in the real formats, the bundled
mnist5k, discovery, downloads without a network, the `vae data` commands, and hostile
inputs (each must end in one VaeError that says what and where)."""

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaecli import VaeError
from vaecli.datasets import catalog, formats
from vaecli.datasets import load, list_local, download, Dataset, images_checksum
from vaecli.cli.data import data as data_group

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
# Checksums of the bundled split images (Dataset.checksum); change only with a rebuild.
MNIST5K_TRAIN_CHECKSUM = "5b018ac2e575a5fac32e4c890bdf35c38b8261526208cd5467ac4c87c75cbcca"
MNIST5K_TEST_CHECKSUM = "fb838a3220a6b19352a9192b5b8287d6f115dc4902c391e142a62f4447fc23b0"


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path, monkeypatch):
    """No test sees the user's data, cache or system folders unless it asks."""
    monkeypatch.setenv("VAECLI_DATA", str(tmp_path / "env-data"))
    monkeypatch.setenv("VAECLI_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setattr(catalog, "SYSTEM_DIRS", {})


def rng(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------
# Writers of the real formats
# ----------------------------------------------------------------------------------


def idx_bytes(array, magic):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_split(folder, stem, images, labels, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for role, kind, arr, magic in (("images", "idx3", images, 2051), ("labels", "idx1", labels, 2049)):
        blob = idx_bytes(arr, magic)
        (folder / f"{stem}-{role}-{kind}-ubyte{ext}").write_bytes(gzip.compress(blob) if gz else blob)


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class Py2StylePickler(pickle.Pickler):
    """Pickles arrays the way Python 2 numpy did: state data as a (latin-1) str."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            state = (1, obj.shape, obj.dtype, False, obj.tobytes().decode("latin1"))
            return _reconstruct(), (np.ndarray, (0,), "b"), state
        return NotImplemented


def cifar_batch_bytes(images, labels, protocol="py2"):
    batch = {"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in labels],
             "data": images.reshape(len(images), -1), "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    if protocol == "py2":
        buffer = io.BytesIO()
        Py2StylePickler(buffer, protocol=2).dump(batch)
        # Python 2 files name the module numpy.core.multiarray
        return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return pickle.dumps(batch, protocol=protocol)


def make_cifar(seed=0, per_batch=3, protocol="py2"):
    g = rng(seed)
    batches = {}
    for name in catalog.CIFAR_BATCHES["train"] + catalog.CIFAR_BATCHES["test"]:
        x = g.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = g.integers(0, 10, per_batch)
        batches[name] = (x, y, cifar_batch_bytes(x, y, protocol))
    return batches


def write_tar(path, members, mode="w:gz"):
    """members: list of (name, bytes) or (name, TarInfo-modifier)."""
    with tarfile.open(path, mode) as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def cifar_tar(path, batches, extra=()):
    members = [(f"cifar-10-batches-py/{n}", b[2]) for n, b in batches.items()]
    members.append(("cifar-10-batches-py/batches.meta", pickle.dumps({"label_names": ["airplane"]}, protocol=2)))
    return write_tar(path, list(extra) + members)


# ----------------------------------------------------------------------------------
# Dataset record and checksum
# ----------------------------------------------------------------------------------


def test_dataset_record_and_checksum_encoding():
    x = rng(1).integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    ds = Dataset(images=x, labels=np.arange(5, dtype=np.int64), name="t", split="train", source="here")
    assert ds.num_dims == 16 and len(ds) == 5 and ds.shape == (1, 4, 4) and ds.n_bits == 8
    expected = hashlib.sha256(b"vaecli-images-v1\0|u1\0" + b"5,1,4,4\0" + x.tobytes()).hexdigest()
    assert ds.checksum == expected == images_checksum(x)
    # shape is part of the encoding: same bytes, other shape, other checksum
    assert images_checksum(x.reshape(5, 1, 2, 8)) != ds.checksum
    with pytest.raises(AttributeError):
        ds.name = "other"  # frozen
    assert "checksum=" in repr(ds) and "uint8" in repr(ds)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 1, 3, 3), np.float32), "uint8"),
    (np.zeros((0, 1, 3, 3), np.uint8), "N >= 1"),
    (np.zeros((2, 2, 3, 3), np.uint8), "C in 1 or 3"),
])
def test_dataset_refuses_bad_arrays(bad, match):
    with pytest.raises(VaeError, match=match):
        Dataset(images=bad, labels=None, name="t", split="train")


def test_dataset_refuses_bad_labels():
    x = np.zeros((3, 1, 2, 2), np.uint8)
    with pytest.raises(VaeError, match="labels must be int64"):
        Dataset(images=x, labels=np.zeros(2, np.int64), name="t", split="train")


# ----------------------------------------------------------------------------------
# Bundled mnist5k
# ----------------------------------------------------------------------------------


def test_mnist5k_is_default_real_and_split():
    train, test = load("mnist5k", "train"), load("mnist5k", "test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.images.max() == 255 and ds.images.min() == 0
        assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == set(range(10))
        assert "LeCun" in ds.attribution and "CC BY-SA 3.0" in ds.attribution
        assert ds.name == "mnist5k" and ds.n_bits == 8
    assert train.checksum == MNIST5K_TRAIN_CHECKSUM and test.checksum == MNIST5K_TEST_CHECKSUM
    assert load("mnist5k", "train").checksum == train.checksum  # stable
    # 500 digits per class in all, shuffled (not sorted by label)
    assert (np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10) == 500).all()
    assert (np.diff(train.labels) != 0).sum() > 1000
    # disjoint: no image of test is an image of train (rows of the source csv are distinct)
    train_rows = {row.tobytes() for row in train.images.reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in test.images.reshape(1000, -1))


def test_mnist5k_file_matches_its_recorded_sha256_and_layout():
    blob = catalog.bundled_path().read_bytes()
    assert hashlib.sha256(blob).hexdigest() == catalog.MNIST5K_SHA256
    assert 500_000 < len(blob) < 1_200_000
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(["train_images", "train_labels", "train_rows", "test_images",
                                            "test_labels", "test_rows", "attribution"])
        rows = np.concatenate([npz["train_rows"], npz["test_rows"]])
        assert sorted(rows.tolist()) == list(range(5000))  # a permutation of the csv rows
        order = np.random.default_rng(catalog.MNIST5K_SPLIT_SEED).permutation(5000)
        assert (rows == order).all()  # the documented seed reproduces the split


def test_mnist5k_corruption_is_detected(monkeypatch):
    monkeypatch.setattr(catalog, "MNIST5K_SHA256", "0" * 64)
    with pytest.raises(VaeError, match="bundled .*mnist5k.npz is corrupted.*build_mnist5k"):
        load("mnist5k")


def test_mnist5k_resize_and_names():
    ds = load("MNIST-5k", "test", size=32)
    assert ds.images.shape == (1000, 1, 32, 32) and ds.name == "mnist5k"
    with pytest.raises(VaeError, match="mnist5k has no split 'valid'"):
        load("mnist5k", "valid")
    with pytest.raises(VaeError, match="size must be an integer"):
        load("mnist5k", size=0)


def test_unknown_name_is_one_clear_error():
    with pytest.raises(VaeError, match="unknown dataset 'imagenet': not one of mnist5k, mnist"):
        load("imagenet")


# ----------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_round_trip_from_data_dir(tmp_path, gz):
    g = rng(2)
    x, y = g.integers(0, 256, (7, 28, 28), dtype=np.uint8), g.integers(0, 10, 7).astype(np.uint8)
    write_idx_split(tmp_path / "mnist", "t10k", x, y, gz=gz)
    ds = load("mnist", "test", data_dir=tmp_path)
    assert ds.images.shape == (7, 1, 28, 28) and (ds.images[:, 0] == x).all()
    assert ds.labels.dtype == np.int64 and (ds.labels == y).all()
    assert ds.source == str(tmp_path / "mnist") and "LeCun" in ds.attribution
    with pytest.raises(VaeError, match=r"mnist \(train\) not found: looked for train-images-idx3-ubyte.gz"):
        load("mnist", "train", data_dir=tmp_path)


def test_idx_search_order_env_then_cache(tmp_path, monkeypatch):
    g = rng(3)
    x1, x2 = (g.integers(0, 256, (2, 4, 4), dtype=np.uint8) for _ in range(2))
    y = np.array([1, 2], np.uint8)
    write_idx_split(tmp_path / "env-cache" / "fashion-mnist", "train", x2, y)
    assert (load("fashion-mnist", "train").images[:, 0] == x2).all()  # found in the cache
    write_idx_split(tmp_path / "env-data" / "fashion-mnist", "train", x1, y)
    assert (load("fashion-mnist", "train").images[:, 0] == x1).all()  # $VAECLI_DATA comes first
    # MNIST files in a root do not count as Fashion-MNIST: only <root>/<name>/ is searched
    write_idx_split(tmp_path / "env-data", "t10k", x1, y)
    with pytest.raises(VaeError, match="not found"):
        load("fashion-mnist", "test")


def test_mnist_and_fashion_mnist_files_are_told_apart_by_their_labels(tmp_path):
    """The two datasets' files have the same names: a folder whose first ten labels are
    Fashion-MNIST's is not MNIST (a --dir pointing at Debian's Fashion-MNIST served it as
    mnist), and the other way round; labels that are neither's still load."""
    g = rng(5)
    images = g.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    for split, stem in (("train", "train"), ("test", "t10k")):
        write_idx_split(tmp_path / "fashion", stem, images,
                        np.array(catalog.IDX_FIRST_LABELS[("fashion-mnist", split)] + (1, 2), np.uint8))
        write_idx_split(tmp_path / "digits", stem, images,
                        np.array(catalog.IDX_FIRST_LABELS[("mnist", split)] + (1, 2), np.uint8))
        write_idx_split(tmp_path / "other", stem, images, np.arange(12, dtype=np.uint8) % 10)
        assert catalog.locate("mnist", split, tmp_path / "fashion") is None
        assert catalog.locate("fashion-mnist", split, tmp_path / "fashion")[0] == tmp_path / "fashion"
        assert catalog.locate("fashion-mnist", split, tmp_path / "digits") is None
        assert catalog.locate("mnist", split, tmp_path / "digits")[0] == tmp_path / "digits"
        assert catalog.locate("mnist", split, tmp_path / "other")[0] == tmp_path / "other"
    row = {r["name"]: r for r in list_local(tmp_path / "fashion")}
    assert not row["mnist"]["found"] and row["fashion-mnist"]["where"] == str(tmp_path / "fashion")


def test_a_corrupt_gzip_labels_file_is_one_line_not_a_traceback(tmp_path):
    g = rng(6)
    write_idx_split(tmp_path / "mnist", "train", g.integers(0, 256, (4, 28, 28), dtype=np.uint8),
                    np.arange(4, dtype=np.uint8))
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    blob = bytearray(labels.read_bytes())
    blob[10:16] = b"\xff" * 6  # inside the deflate stream
    labels.write_bytes(bytes(blob))
    with pytest.raises(VaeError, match="train-labels-idx1-ubyte.gz"):
        load("mnist", "train", data_dir=tmp_path)
    assert {r["name"]: r for r in list_local(tmp_path)}["mnist"]["found"] in (True, False)  # listed, no traceback


def test_fashion_mnist_system_folder_is_found(tmp_path, monkeypatch):
    g = rng(4)
    write_idx_split(tmp_path / "usr-share", "t10k", g.integers(0, 256, (3, 28, 28), dtype=np.uint8),
                    np.array([0, 1, 2], np.uint8))
    monkeypatch.setattr(catalog, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "usr-share",)})
    assert load("fashion-mnist", "test").source == str(tmp_path / "usr-share")


@pytest.mark.skipif(not (FASHION_SYSTEM / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_auto_discovery(monkeypatch):
    monkeypatch.setattr(catalog, "SYSTEM_DIRS", {"fashion-mnist": (FASHION_SYSTEM,)})
    ds = load("fashion-mnist", "test")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert (np.bincount(ds.labels) == 1000).all() and ds.images.max() == 255
    assert ds.source == str(FASHION_SYSTEM) and "MIT" in ds.attribution
    row = next(r for r in list_local() if r["name"] == "fashion-mnist")
    assert row["found"] and row["sizes"] == {"train": 60000, "test": 10000}


def test_idx_hostile_files(tmp_path):
    folder = tmp_path / "mnist"
    x, y = rng(20).integers(0, 256, (4, 28, 28), dtype=np.uint8), np.zeros(4, np.uint8)
    write_idx_split(folder, "train", x, y)
    images = folder / "train-images-idx3-ubyte.gz"
    good = gzip.decompress(images.read_bytes())
    # truncated data (a complete gzip stream of too few bytes)
    images.write_bytes(gzip.compress(good[:-100]))
    with pytest.raises(VaeError, match=r"train-images-idx3-ubyte.gz: truncated: expected 3136 bytes"):
        load("mnist", data_dir=tmp_path)
    # truncated gzip stream (a cut download)
    compressed = gzip.compress(good)
    images.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(VaeError, match="corrupted IDX file"):
        load("mnist", data_dir=tmp_path)
    # wrong magic: a labels file where images belong
    images.write_bytes(gzip.compress(idx_bytes(y, 2049)))
    with pytest.raises(VaeError, match="wrong magic number 2049.*starts with 2051"):
        load("mnist", data_dir=tmp_path)
    # trailing garbage
    images.write_bytes(gzip.compress(good + b"xx"))
    with pytest.raises(VaeError, match="more data than the header"):
        load("mnist", data_dir=tmp_path)
    # counts disagree
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28)), 2051)))
    with pytest.raises(VaeError, match="holds 3 images but .* holds 4 labels"):
        load("mnist", data_dir=tmp_path)
    # empty
    write_idx_split(folder, "train", np.zeros((0, 28, 28)), np.zeros(0))
    with pytest.raises(VaeError, match="empty"):
        load("mnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_cifar_round_trip_from_tar(tmp_path, protocol):
    batches = make_cifar(seed=5, protocol=protocol)
    (tmp_path / "cifar10").mkdir()
    cifar_tar(tmp_path / "cifar10" / "cifar-10-python.tar.gz", batches)
    train = load("cifar10", "train", data_dir=tmp_path)
    test = load("cifar10", "test", data_dir=tmp_path)
    want_x = np.concatenate([batches[n][0] for n in catalog.CIFAR_BATCHES["train"]])
    want_y = np.concatenate([batches[n][1] for n in catalog.CIFAR_BATCHES["train"]])
    assert train.images.shape == (15, 3, 32, 32) and (train.images == want_x).all()
    assert train.labels.dtype == np.int64 and (train.labels == want_y).all()
    assert (test.images == batches["test_batch"][0]).all() and test.images.shape == (3, 3, 32, 32)
    assert "Krizhevsky" in train.attribution


def test_cifar_from_extracted_folder_and_by_path(tmp_path):
    batches = make_cifar(seed=6)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (_, _, blob) in batches.items():
        (folder / name).write_bytes(blob)
    ds = load("cifar10", "test", data_dir=tmp_path)
    assert (ds.images == batches["test_batch"][0]).all() and ds.source == str(folder)
    by_path = load(str(folder), "train")
    assert by_path.images.shape == (15, 3, 32, 32) and by_path.split == "train"
    tar = cifar_tar(tmp_path / "c.tar.gz", batches)
    assert load(tar, "test").checksum == ds.checksum


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    batches = make_cifar(seed=7)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    for name, (_, _, blob) in batches.items():
        (folder / name).write_bytes(blob)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
    with pytest.raises(VaeError, match=r"test_batch: refusing pickle global (posix|os|nt)\.system"):
        load("cifar10", "test", data_dir=tmp_path)
    assert not marker.exists()  # nothing executed
    # other classic gadgets are refused the same way
    for payload in (pickle.dumps(Evil(), protocol=0), b"cbuiltins\neval\n(S'1+1'\ntR.",
                    b"csubprocess\nPopen\n(S'true'\ntR.", b"cnumpy\nload\n(S'x'\ntR."):
        with pytest.raises(VaeError, match="refusing pickle global"):
            formats.parse_cifar_batch(payload, "batch")
    assert not marker.exists()


def test_cifar_tar_with_unsafe_members_is_refused(tmp_path):
    batches = make_cifar(seed=8)
    for bad in ("../evil", "cifar-10-batches-py/../../evil", "/etc/evil"):
        tar = cifar_tar(tmp_path / "bad.tar.gz", batches, extra=[(bad, b"x")])
        with pytest.raises(VaeError, match=r"refusing archive with unsafe member path .*(absolute or '\.\.')"):
            load(tar, "test")
    assert not (tmp_path.parent / "evil").exists()
    # a symlink pretending to be a batch
    with tarfile.open(tmp_path / "link.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(VaeError, match="link .* pointing outside"):
        load(tmp_path / "link.tar.gz", "test")


def test_cifar_broken_inputs(tmp_path):
    batches = make_cifar(seed=9)
    tar = cifar_tar(tmp_path / "c.tar.gz", batches)
    blob = tar.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(VaeError, match="cut.tar.gz: (corrupted or unreadable archive|archive lacks)"):
        load(tmp_path / "cut.tar.gz", "train")
    write_tar(tmp_path / "partial.tar.gz", [("cifar-10-batches-py/data_batch_1", batches["data_batch_1"][2])])
    with pytest.raises(VaeError, match="archive lacks data_batch_2"):
        load(tmp_path / "partial.tar.gz", "train")
    with pytest.raises(VaeError, match="not a CIFAR-10 batch .*a pickled list"):
        formats.parse_cifar_batch(pickle.dumps([1, 2]), "b")
    with pytest.raises(VaeError, match="no 'labels' entry"):
        formats.parse_cifar_batch(pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}), "b")
    with pytest.raises(VaeError, match=r"'data' must be an \(n, 3072\) array"):
        formats.parse_cifar_batch(pickle.dumps({"data": np.zeros((1, 5), np.uint8), "labels": [1]}), "b")
    with pytest.raises(VaeError, match="float32 but vaecli data is integer"):
        formats.parse_cifar_batch(pickle.dumps({"data": np.zeros((1, 3072), np.float32), "labels": [1]}), "b")
    with pytest.raises(VaeError, match="not a valid pickle"):
        formats.parse_cifar_batch(b"\x80\x02}q\x00(", "b")


# ----------------------------------------------------------------------------------
# SVHN
# ----------------------------------------------------------------------------------


def write_svhn(folder, split, n, seed, compressed=True, label_dtype=np.float64):
    """Like the official files: compressed MATLAB v5, X (32, 32, 3, N) uint8, y (N, 1) double."""
    import scipy.io

    g = rng(seed)
    x = g.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = g.integers(1, 11, (n, 1)).astype(label_dtype)
    y[0] = 10  # digit 0
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y, "note": "extra variable"},
                     do_compression=compressed)
    return x, y


@pytest.mark.parametrize("compressed, label_dtype", [(True, np.float64), (False, np.uint8)])
def test_svhn_round_trip_and_resize(tmp_path, compressed, label_dtype):
    x, y = write_svhn(tmp_path / "svhn", "test", 6, seed=10, compressed=compressed, label_dtype=label_dtype)
    ds = load("svhn", "test", data_dir=tmp_path)
    assert ds.images.shape == (6, 3, 32, 32) and (ds.images == x.transpose(3, 2, 0, 1)).all()
    assert ds.labels[0] == 0 and (ds.labels == y[:, 0] % 10).all() and ds.labels.max() <= 9
    small = load("svhn", "test", data_dir=tmp_path, size=catalog.SVHN_PAPER_SIZE)
    assert small.images.shape == (6, 3, 28, 28) and small.checksum != ds.checksum
    # the resize is Pillow's antialiased bilinear (up to Pillow's intermediate rounding)
    from PIL import Image

    pil = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(ch)).resize((28, 28), Image.BILINEAR))
                    for ch in ds.images[0]])
    assert np.abs(small.images[0].astype(int) - pil).max() <= 1


def test_svhn_broken_mats(tmp_path):
    import scipy.io

    folder = tmp_path / "svhn"
    folder.mkdir()
    scipy.io.savemat(folder / "train_32x32.mat", {"y": np.ones((3, 1), np.uint8)})
    with pytest.raises(VaeError, match=r"train_32x32.mat: no variable 'X'; SVHN .mat files hold X"):
        load("svhn", "train", data_dir=tmp_path)
    scipy.io.savemat(folder / "train_32x32.mat",
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.zeros((2, 1), np.uint8)})
    with pytest.raises(VaeError, match="labels must be 1..10"):
        load("svhn", "train", data_dir=tmp_path)
    scipy.io.savemat(folder / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2)), "y": np.ones((2, 1))})
    with pytest.raises(VaeError, match="float64 but vaecli data is integer"):
        load("svhn", "train", data_dir=tmp_path)
    (folder / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 50)
    with pytest.raises(VaeError, match="train_32x32.mat: not a MATLAB .mat file"):
        load("svhn", "train", data_dir=tmp_path)
    scipy.io.savemat(folder / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                                  "y": np.ones((2, 1))}, do_compression=True)
    blob = (folder / "train_32x32.mat").read_bytes()
    (folder / "train_32x32.mat").write_bytes(blob[:-20])
    with pytest.raises(VaeError, match="train_32x32.mat: corrupted .mat file"):
        load("svhn", "train", data_dir=tmp_path)
    (folder / "train_32x32.mat").write_bytes(b"MATLAB 7.3 MAT-file" + b" " * 110 + b"IM" + b"\0" * 8)
    with pytest.raises(VaeError, match="v7.3 \\(HDF5\\) .mat files are not supported"):
        load("svhn", "train", data_dir=tmp_path)


# ----------------------------------------------------------------------------------
# CelebA
# ----------------------------------------------------------------------------------


def write_celeba(root, parts=(0, 0, 0, 1, 2, 2), seed=11):
    from PIL import Image

    g = rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    lines = []
    for i, part in enumerate(parts, 1):
        # smooth content so that JPEG is close to lossless in the crop
        yy, xx = np.mgrid[0:218, 0:178]
        img = np.stack([(xx * g.uniform(0.5, 1.4)) % 256, (yy * g.uniform(0.5, 1.1)) % 256,
                        np.full_like(xx, g.integers(0, 256))], -1).astype(np.uint8)
        Image.fromarray(img).save(images / f"{i:06d}.jpg", quality=95)
        lines.append(f"{i:06d}.jpg {part}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return images


@pytest.mark.parametrize("size", [64, 32])
def test_celeba_crop_resize_and_splits(tmp_path, size):
    from PIL import Image

    images = write_celeba(tmp_path / "celeba")
    train = load("celeba", "train", data_dir=tmp_path, size=None if size == 64 else size)
    assert train.images.shape == (3, 3, size, size) and train.labels is None
    assert load("celeba", "valid", data_dir=tmp_path).images.shape[0] == 1
    assert load("celeba", "test", data_dir=tmp_path, size=size).images.shape[0] == 2
    assert load("celeba", "all", data_dir=tmp_path, size=size).images.shape[0] == 6
    # oracle: Pillow's crop of the 148x148 centre (left 15, top 35) and bilinear resize
    with Image.open(images / "000001.jpg") as im:
        want = np.asarray(im.convert("RGB").crop((15, 35, 163, 183)).resize((size, size), Image.BILINEAR))
    assert np.abs(train.images[0].transpose(1, 2, 0).astype(int) - want).max() <= 1
    assert "CelebA" in train.attribution


def test_celeba_partition_problems(tmp_path):
    write_celeba(tmp_path / "celeba")
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text("../../etc/passwd 0\n")
    with pytest.raises(VaeError, match="refusing image name"):
        load("celeba", "train", data_dir=tmp_path)
    partition.write_text("000001.jpg 7\n")
    with pytest.raises(VaeError, match=r"list_eval_partition.txt:1: expected"):
        load("celeba", "train", data_dir=tmp_path)
    partition.write_text("000001.jpg 0\n999999.jpg 0\n")
    with pytest.raises(VaeError, match="1 images listed .* are missing .*first: 999999.jpg"):
        load("celeba", "train", data_dir=tmp_path)
    partition.unlink()
    with pytest.raises(VaeError, match=r"celeba \(train\) not found"):
        load("celeba", "train", data_dir=tmp_path)
    assert load("celeba", "all", data_dir=tmp_path, size=32).images.shape == (6, 3, 32, 32)
    (tmp_path / "celeba" / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(VaeError, match="000002.jpg: cannot read image"):
        load("celeba", "all", data_dir=tmp_path)


# ----------------------------------------------------------------------------------
# Any file: npz, npy, h5, image folders
# ----------------------------------------------------------------------------------


def test_npz_layouts_and_splits(tmp_path):
    g = rng(12)
    x = g.integers(0, 256, (5, 9, 9), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", images=x, labels=np.arange(5))
    ds = load(tmp_path / "plain.npz", "test")
    assert ds.images.shape == (5, 1, 9, 9) and (ds.images[:, 0] == x).all() and ds.split == "all"
    assert (ds.labels == np.arange(5)).all() and ds.name == "plain.npz"
    nhwc = g.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "keras.npz", x_train=nhwc, y_train=np.arange(4), x_test=nhwc[:2],
                        y_test=np.arange(2))
    tr = load(tmp_path / "keras.npz", "train")
    assert tr.images.shape == (4, 3, 8, 8) and (tr.images == nhwc.transpose(0, 3, 1, 2)).all()
    assert tr.split == "train" and load(tmp_path / "keras.npz", "test").images.shape[0] == 2
    with pytest.raises(VaeError, match="no 'valid' split \\(the file has test, train\\)"):
        load(tmp_path / "keras.npz", "valid")
    np.savez(tmp_path / "arr.npz", g.integers(0, 256, (3, 1, 4, 4)).astype(np.int32))
    assert load(tmp_path / "arr.npz").images.dtype == np.uint8


def test_a_stray_x_key_is_no_split(tmp_path):
    g = rng(21)
    x = g.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "stats.npz", x=x, x_mean=x.mean(0))
    ds = load(tmp_path / "stats.npz", "train")  # the one image array, held out as usual
    assert ds.split == "all" and (ds.images[:, 0] == x).all()
    np.savez(tmp_path / "keras.npz", x_train=x, x_test=x[:2])
    with pytest.raises(VaeError, match=r"no 'val' split \(the file has test, train\)"):
        load(tmp_path / "keras.npz", "val")


def test_npy_and_h5(tmp_path):
    import h5py

    g = rng(13)
    x = g.integers(0, 256, (3, 3, 6, 6)).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    ds = load(tmp_path / "x.npy")
    assert ds.images.dtype == np.uint8 and (ds.images == x).all() and ds.labels is None
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["images"] = x.astype(np.uint8)
        f["labels"] = np.array([3, 4, 5])
        f["train/images"] = x[:2].astype(np.uint8)
    with h5py.File(tmp_path / "flat.hdf5", "w") as f:
        f["images"] = x.astype(np.uint8)
        f["labels"] = np.array([3, 4, 5])
    flat = load(tmp_path / "flat.hdf5", "test")
    assert (flat.images == x).all() and (flat.labels == [3, 4, 5]).all() and flat.split == "all"
    assert load(tmp_path / "d.h5", "train").images.shape == (2, 3, 6, 6)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("images")
    with pytest.raises(VaeError, match="'images' is a group, not a dataset"):
        load(tmp_path / "g.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(VaeError, match="junk.h5: not a readable HDF5 file"):
        load(tmp_path / "junk.h5")


def test_png_folder(tmp_path):
    from PIL import Image

    g = rng(14)
    gray = g.integers(0, 256, (4, 10, 12), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(gray):
        Image.fromarray(img).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("ignored")
    ds = load(folder)
    assert ds.images.shape == (4, 1, 10, 12) and (ds.images[:, 0] == gray).all() and ds.split == "all"
    assert load(folder, size=8).images.shape == (4, 1, 8, 8)
    rgb = g.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "9.png")
    with pytest.raises(VaeError, match="9.png: 3 channel\\(s\\) but 0.png has 1"):
        load(folder)
    (folder / "9.png").unlink()
    Image.fromarray(gray[0][:5]).save(folder / "5.png")
    with pytest.raises(VaeError, match="5.png: 12x5 but 0.png is 12x10; the images of a folder must share one size"):
        load(folder)
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    Image.fromarray(np.dstack([rgb, np.full((10, 12), 7, np.uint8)])).save(rgba / "a.png")
    one = load(rgba)
    assert one.images.shape == (1, 3, 10, 12) and (one.images[0] == rgb.transpose(2, 0, 1)).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaeError, match="no dataset files found"):
        load(tmp_path / "empty")


def test_image_folders_skip_hidden_files_and_follow_exif_rotation(tmp_path):
    from PIL import Image

    g = rng(15)
    img = g.integers(0, 256, (10, 12), dtype=np.uint8)
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; a viewer rotates 90 degrees clockwise
    Image.fromarray(img).save(folder / "a.png", exif=exif)
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # not an image
    ds = load(folder)
    assert ds.images.shape == (1, 1, 12, 10)
    assert (ds.images[0, 0] == np.rot90(img, -1)).all()


def test_written_files_get_the_umask_mode_not_mkstemp_private_one(tmp_path):
    import os

    from vaecli import runfile

    old = os.umask(0o022)
    try:
        runfile.atomic_write_bytes(tmp_path / "s.png", b"data")
        assert (tmp_path / "s.png").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("array, match", [
    (np.full((2, 4, 4), 0.5, np.float32), r"float32 but vaecli data is integer levels 0..255; values in \[0, 1\]: "
                                          r"convert with \(x \* 255\)"),
    (np.full((2, 4, 4), 7.0), r"whole numbers 0..255: convert with x.astype"),
    (np.zeros((0, 4, 4), np.uint8), "the dataset is empty"),
    (np.zeros((0, 28, 28, 1), np.uint8), "the dataset is empty"),
    (np.full((2, 4, 4), 300, np.int16), r"pixel values range over 300..300; need 0..255"),
    (np.full((2, 4, 4), -1, np.int8), r"range over -1..-1"),
    (np.zeros((2, 3, 5, 3), np.uint8), "ambiguous between"),
    (np.zeros((2, 5, 5, 4), np.uint8), "no channel axis of size 1 or 3"),
    (np.zeros((2, 784), np.uint8), r"need \(N, H, W\)"),
    (np.zeros((32, 32, 3), np.uint8), r"shape \(32, 32, 3\) looks like one \(H, W, C\) image, not 32 images of 32x3"),
    (np.zeros((2, 4, 4), bool), "boolean"),
    (np.array(["a", "b"]), "dtype <U1"),
])
def test_bad_arrays_are_refused_with_reasons(tmp_path, array, match):
    np.savez(tmp_path / "bad.npz", images=array)
    with pytest.raises(VaeError, match="bad.npz \\(images\\): .*" + match):
        load(tmp_path / "bad.npz")


def test_files_that_try_to_unpickle_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(VaeError, match="obj.npy: not a readable .npy file .*allow_pickle"):
        load(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object))
    with pytest.raises(VaeError, match="obj.npz: not a readable .npz file"):
        load(tmp_path / "obj.npz")
    (tmp_path / "p.npy").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(VaeError, match="p.npy: not a readable .npy file"):
        load(tmp_path / "p.npy")


def test_misc_path_errors(tmp_path):
    with pytest.raises(VaeError, match="no such file or folder"):
        load(tmp_path / "nope.npz")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(VaeError, match="x.csv: unsupported file type"):
        load(tmp_path / "x.csv")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(VaeError, match="cut.npz: not a readable .npz file"):
        load(tmp_path / "cut.npz")
    np.savez(tmp_path / "nokey.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(VaeError, match="no image array; name it one of images, x, arr_0"):
        load(tmp_path / "nokey.npz")
    np.savez(tmp_path / "lab.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(3, int))
    with pytest.raises(VaeError, match="3 labels for 2 images"):
        load(tmp_path / "lab.npz")


# ----------------------------------------------------------------------------------
# Property tests: random and mutated bytes give VaeError or a valid result, nothing else
# ----------------------------------------------------------------------------------

# VAECLI_FUZZ_EXAMPLES=5000 runs a deeper search (the default keeps the suite fast).
FUZZ_EXAMPLES = int(os.environ.get("VAECLI_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutations(seed_blob):
    return st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, len(seed_blob)), st.binary(max_size=8)).map(
            lambda t: seed_blob[: t[0]] + t[1] + seed_blob[t[0] + len(t[1]):]),
        st.integers(0, len(seed_blob)).map(lambda n: seed_blob[:n]),
    )


_IDX_SEED = idx_bytes(np.arange(2 * 3 * 3).reshape(2, 3, 3), 2051)
_IDX_GZ_SEED = gzip.compress(_IDX_SEED)


@FUZZ
@given(blob=st.one_of(_mutations(_IDX_SEED), _mutations(_IDX_GZ_SEED)))
def test_fuzz_idx_reader(blob):
    try:
        out = formats.read_idx(io.BytesIO(blob), magic=2051, where="fuzz")
    except VaeError as exc:
        assert "\n" not in str(exc)
        return
    assert out.dtype == np.uint8 and out.ndim == 3


def _npz_seed():
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.arange(32, dtype=np.uint8).reshape(2, 4, 4), labels=np.arange(2))
    return buffer.getvalue()


@FUZZ
@given(blob=_mutations(_npz_seed()))
def test_fuzz_npz_reader(blob):
    try:
        images, labels, _ = formats.read_npz(io.BytesIO(blob), "train", where="fuzz")
    except VaeError as exc:
        assert "\n" not in str(exc)
        return
    assert images.dtype == np.uint8 and images.ndim == 4


_PICKLE_SEED = cifar_batch_bytes(np.zeros((1, 3, 32, 32), np.uint8), [3])


@FUZZ
@given(blob=_mutations(_PICKLE_SEED))
def test_fuzz_cifar_pickle_reader(blob):
    try:
        images, labels = formats.parse_cifar_batch(blob, "fuzz")
    except VaeError as exc:
        assert "\n" not in str(exc)
        return
    assert images.shape[1:] == (3, 32, 32) and labels.dtype == np.int64


def _tar_seed():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(_PICKLE_SEED)
        tar.addfile(info, io.BytesIO(_PICKLE_SEED))
    return buffer.getvalue()


@FUZZ
@given(blob=_mutations(_tar_seed()))
def test_fuzz_tar_reader(blob):
    try:
        found = formats.read_tar_members(io.BytesIO(blob), ("test_batch",))
    except VaeError as exc:
        assert "\n" not in str(exc)
        return
    assert set(found) == {"test_batch"}


def _mat_seed():
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.ones((1, 1), np.uint8)})
    return buffer.getvalue()


@settings(max_examples=max(FUZZ_EXAMPLES // 2, 1), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=_mutations(_mat_seed()))
def test_fuzz_svhn_mat_reader(blob):
    try:
        images, labels = formats.read_svhn_mat(io.BytesIO(blob))
    except VaeError as exc:
        assert "\n" not in str(exc)
        return
    assert images.ndim == 4 and labels.dtype == np.int64


# ----------------------------------------------------------------------------------
# Downloads (never touching the network)
# ----------------------------------------------------------------------------------


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_download_without_network_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    with pytest.raises(VaeError) as info:
        download("mnist", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "could not download mnist" in message and "name resolution" in message
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in message
    assert str(tmp_path / "mnist") in message
    assert [p.name for p in (tmp_path / "mnist").iterdir()] == []  # no partial files


def _fake_spec(monkeypatch, payload):
    rf = catalog.RemoteFile("blob.bin", hashlib.sha256(payload).hexdigest(), len(payload),
                            ("https://mirror-a.invalid/blob.bin", "https://mirror-b.invalid/blob.bin"))
    spec = catalog.Spec("fake", "a fake dataset", ("train",), "nobody", "https://fake.invalid/", (rf,))
    monkeypatch.setitem(catalog.SPECS, "fake", spec)
    return rf


def test_download_verifies_sha256_and_is_atomic(tmp_path, monkeypatch):
    payload = b"the real bytes" * 1000
    _fake_spec(monkeypatch, payload)
    calls = []

    def serve(responses):
        def urlopen(request, timeout=None):
            calls.append(request.full_url)
            body = responses[len(calls) - 1]
            if isinstance(body, Exception):
                raise body
            return io.BytesIO(body)
        return urlopen

    # both mirrors serve tampered bytes (same length): refused, nothing left behind
    monkeypatch.setattr("urllib.request.urlopen", serve([b"x" * len(payload), b"y" * len(payload)]))
    with pytest.raises(VaeError, match="could not download fake .*SHA-256 mismatch"):
        download("fake", tmp_path)
    assert list((tmp_path / "fake").iterdir()) == []
    # a too-long body is cut off, not written in full
    calls.clear()
    monkeypatch.setattr("urllib.request.urlopen", serve([payload + b"extra", urllib.error.URLError("down")]))
    with pytest.raises(VaeError, match="could not download fake"):
        download("fake", tmp_path)
    assert list((tmp_path / "fake").iterdir()) == []
    # first mirror down, second good: verified file in place, progress reported
    calls.clear()
    progress = []
    monkeypatch.setattr("urllib.request.urlopen", serve([urllib.error.URLError("down"), payload]))
    folder = download("fake", tmp_path, progress=lambda *a: progress.append(a))
    assert folder == tmp_path / "fake" and (folder / "blob.bin").read_bytes() == payload
    assert [p.name for p in folder.iterdir()] == ["blob.bin"]
    assert progress[-1] == ("blob.bin", len(payload), len(payload))
    # a verified file is not fetched again
    calls.clear()
    monkeypatch.setattr("urllib.request.urlopen", serve([]))
    download("fake", tmp_path)
    assert calls == []


def test_download_known_table_and_manual_celeba(tmp_path):
    for name in ("mnist", "fashion-mnist", "cifar10", "svhn"):
        for rf in catalog.SPECS[name].remote:
            assert len(rf.sha256) == 64 and int(rf.sha256, 16) >= 0 and rf.size > 0
            assert all(u.startswith("https://") for u in rf.urls)
    assert catalog.DOWNLOADABLE == ("mnist", "fashion-mnist", "cifar10", "svhn")
    with pytest.raises(VaeError, match=r"CelebA cannot be downloaded by vaecli.*mmlab.*celeba/img_align_celeba"):
        download("celeba", tmp_path)
    with pytest.raises(VaeError, match="unknown dataset 'nope'"):
        download("nope", tmp_path)


# ----------------------------------------------------------------------------------
# list_local and the `vae data` commands
# ----------------------------------------------------------------------------------


def test_list_local_reports_what_is_there(tmp_path):
    write_svhn(tmp_path / "svhn", "train", 3, seed=15)
    write_idx_split(tmp_path / "mnist", "t10k", np.zeros((2, 4, 4)), np.zeros(2))
    rows = {r["name"]: r for r in list_local(tmp_path)}
    assert set(rows) == set(catalog.NAMES)
    assert rows["mnist5k"]["found"] and rows["mnist5k"]["sizes"] == {"train": 4000, "test": 1000}
    assert rows["svhn"] == {**rows["svhn"], "found": True, "splits": ["train"], "sizes": {"train": 3},
                            "where": str(tmp_path / "svhn")}
    assert rows["mnist"]["splits"] == ["test"] and rows["mnist"]["sizes"] == {"test": 2}
    assert not rows["cifar10"]["found"] and rows["cifar10"]["where"] is None


@pytest.mark.parametrize("args", [[], ["list"], ["download"]], ids=lambda a: " ".join(a) or "data")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_data_help(args, flag):
    result = CliRunner().invoke(data_group, args + [flag], catch_exceptions=False)
    assert result.exit_code == 0 and "Usage:" in result.output


def test_data_list_json_and_table(tmp_path):
    write_svhn(tmp_path / "svhn", "test", 2, seed=16)
    result = CliRunner().invoke(data_group, ["list", "--json", "--dir", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["svhn"]["sizes"] == {"test": 2} and rows["mnist5k"]["found"]
    table = CliRunner().invoke(data_group, ["list"], catch_exceptions=False)
    assert table.exit_code == 0 and "mnist5k" in table.output and "vae data download cifar10" in table.output


def test_data_download_without_network_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    result = CliRunner().invoke(data_group, ["download", "cifar10", "--dir", str(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: could not download cifar10")
    assert "cifar-10-python.tar.gz" in lines[0] and str(tmp_path / "cifar10") in lines[0]
    ok = CliRunner().invoke(data_group, ["download", "mnist5k"], catch_exceptions=False)
    assert ok.exit_code == 0 and "bundled" in ok.output
    bad = CliRunner().invoke(data_group, ["download", "imagenet"], catch_exceptions=False)
    assert bad.exit_code == 2


def test_data_download_success_message(tmp_path, monkeypatch):
    payload = b"abc" * 10
    rf = catalog.RemoteFile("test_32x32.mat", hashlib.sha256(payload).hexdigest(), len(payload),
                            ("https://mirror.invalid/test_32x32.mat",))
    monkeypatch.setitem(catalog.SPECS, "svhn", catalog.Spec("svhn", "fake", ("test",), "", "", (rf,)))
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout=None: io.BytesIO(payload))
    result = CliRunner().invoke(data_group, ["download", "svhn", "--dir", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0 and f"svhn: verified files in {tmp_path / 'svhn'}" in result.stdout
    assert (tmp_path / "svhn" / "test_32x32.mat").read_bytes() == payload


def test_importing_the_commands_loads_no_numpy():
    code = ("import sys, vaecli.datasets, vaecli.cli.data; "
            "bad = [m for m in ('numpy', 'scipy', 'PIL', 'h5py', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
