"""Readers for each file format, written for untrusted input.

Every reader turns whatever a broken or hostile file does (truncation, wrong magic,
bad compression, pickles that try to run code, archives with ``..`` paths) into one
VaeError that names the file and the problem.  Nothing here executes code from a
file: pickles go through :class:`RestrictedUnpickler`, NumPy files are read with
``allow_pickle=False``, archives are read in memory and never extracted.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import VaeError
from .catalog import is_safe_member_name
from .core import to_images, to_labels

GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes (the only one image datasets use)
IDX_MAX_DIMS = 4
READ_CHUNK = 1 << 24  # read compressed streams in 16 MiB pieces (memory grows with real data only)
MAX_MEMBER_BYTES = 1 << 30  # a CIFAR batch is ~31 MB; refuse archive members over 1 GiB
CIFAR_ROW = 3 * 32 * 32  # one CIFAR-10 image: R, G, B planes of 32x32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def oneline(exc: BaseException) -> str:
    """An exception as one short line for a message."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def names_for_message(names, limit: int = 10) -> str:
    """Names read from a file, for a one-line message: control characters escaped, at most ``limit``."""
    shown = [n if n.isprintable() else repr(n) for n in names[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _open(source, where: str):
    if hasattr(source, "read"):
        return source
    try:
        return open(source, "rb")
    except OSError as exc:
        raise VaeError(f"cannot read {where}: {exc.strerror or oneline(exc)}") from None


def _read_exact(stream, n: int, where: str, what: str) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(min(READ_CHUNK, n - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    if got < n:
        raise VaeError(f"{where}: truncated: expected {n} bytes of {what}, found {got}")
    return b"".join(parts)


# ----------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------------


def read_idx(source, *, magic: int | None = None, where: str | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed or raw) into an array.

    ``magic`` (2051 for images, 2049 for labels) is checked when given; otherwise any
    unsigned-byte IDX file with 1 to 4 dimensions is accepted.  The data must be
    exactly as long as the header says.
    """
    where = where or str(source)
    raw = _open(source, where)
    try:
        with raw:
            head = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if head == GZIP_MAGIC else raw
            return _parse_idx(stream, magic, where)
    except VaeError:
        raise
    except Exception as exc:  # noqa: BLE001 - gzip/zlib raise OSError, EOFError, zlib.error, ...
        raise VaeError(f"{where}: corrupted IDX file ({oneline(exc)})") from None


def _parse_idx(stream, magic, where) -> np.ndarray:
    header = stream.read(4)
    if len(header) < 4:
        raise VaeError(f"{where}: truncated: not even an IDX header ({len(header)} bytes)")
    found = struct.unpack(">I", header)[0]
    zero, code, ndim = struct.unpack(">HBB", header)
    if magic is not None and found != magic:
        kind = {2051: "images", 2049: "labels"}.get(magic, "IDX")
        raise VaeError(f"{where}: wrong magic number {found} (0x{found:08x}); an IDX {kind} file starts with {magic}")
    if zero != 0 or code != IDX_UBYTE or not 1 <= ndim <= IDX_MAX_DIMS:
        raise VaeError(f"{where}: not an unsigned-byte IDX file (magic 0x{found:08x})")
    dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, where, "IDX dimensions"))
    count = int(np.prod(dims, dtype=object))
    data = _read_exact(stream, count, where, f"data for shape {dims}")
    if stream.read(1):
        raise VaeError(f"{where}: more data than the header's shape {dims} holds")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


# ----------------------------------------------------------------------------------
# CIFAR-10 python batches, through a restricted unpickler
# ----------------------------------------------------------------------------------


def _latin1_encode(text, encoding="latin1"):
    """What pickle protocol 2 calls to rebuild bytes (``_codecs.encode(s, "latin1")``), nothing more."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise VaeError(f"refusing pickle call _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


@lru_cache(maxsize=1)
def _numpy_globals() -> dict:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    reconstruct = multiarray._reconstruct
    frombuffer = getattr(numeric, "_frombuffer", None)
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("_codecs", "encode"): _latin1_encode,
    }
    if frombuffer is not None:
        allowed[("numpy.core.numeric", "_frombuffer")] = frombuffer
        allowed[("numpy._core.numeric", "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers, str, bytes, numbers and NumPy arrays.

    Pickle runs code by looking up a global (``find_class``) and calling it; this
    class allows only the NumPy array reconstruction functions and the bytes
    rebuilder of protocol 2, so ``os.system`` and friends are refused before anything
    is called.  Persistent ids are refused by the base class.
    """

    def find_class(self, module, name):
        allowed = _numpy_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise VaeError(f"refusing pickle global {module}.{name}: only NumPy arrays and builtin containers are allowed")


def restricted_loads(data: bytes, where: str):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 strings read as latin-1)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except VaeError as exc:
        raise VaeError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed pickle can raise almost anything
        raise VaeError(f"{where}: not a valid pickle ({oneline(exc)})") from None


def parse_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch (a pickled dict with ``data`` (n, 3072) uint8 and ``labels``)."""
    obj = restricted_loads(data, where)
    if not isinstance(obj, dict):
        raise VaeError(f"{where}: not a CIFAR-10 batch (a pickled {type(obj).__name__}, expected a dict)")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise VaeError(f"{where}: not a CIFAR-10 batch (no {key!r} entry; has "
                           f"{names_for_message(sorted(map(str, batch)))})")
    x = batch["data"]
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != CIFAR_ROW:
        raise VaeError(f"{where}: CIFAR-10 'data' must be an (n, {CIFAR_ROW}) array, got "
                       f"{getattr(x, 'shape', type(x).__name__)}")
    images = to_images(x.reshape(-1, 3, 32, 32), where)
    labels = batch["labels"]
    if isinstance(labels, (list, tuple)):
        if not all(type(v) is int and 0 <= v <= 9 for v in labels):
            raise VaeError(f"{where}: CIFAR-10 'labels' must be integers 0..9")
        labels = np.array(labels, dtype=np.int64)
    elif not isinstance(labels, np.ndarray):
        raise VaeError(f"{where}: CIFAR-10 'labels' must be a list of integers, got {type(labels).__name__}")
    labels = to_labels(labels, images.shape[0], where)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise VaeError(f"{where}: CIFAR-10 labels must be 0..9, got {labels.min()}..{labels.max()}")
    return images, labels


def check_member(member: tarfile.TarInfo, where: str) -> None:
    """Refuse members with absolute or ``..`` paths, unsafe links and device files."""
    if not is_safe_member_name(member.name):
        raise VaeError(f"{where}: refusing archive with unsafe member path {member.name!r} (absolute or '..')")
    if (member.issym() or member.islnk()) and not is_safe_member_name(
            str(PurePosixPath(member.name).parent / member.linkname) if member.issym() else member.linkname):
        raise VaeError(f"{where}: refusing archive with link {member.name!r} -> {member.linkname!r} "
                       f"pointing outside the archive")
    if member.isdev():
        raise VaeError(f"{where}: refusing archive with device file {member.name!r}")


def read_tar_members(path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of the members whose base names are in ``wanted``, read in one pass.

    ``path`` is a path or a binary file object (tar, tar.gz, tar.bz2 or tar.xz).

    Every member's path is checked (:func:`check_member`); nothing is written to disk.
    """
    where = "archive" if hasattr(path, "read") else str(path)
    found: dict[str, bytes] = {}
    opened = {"fileobj": path} if hasattr(path, "read") else {"name": path}
    try:
        with tarfile.open(mode="r|*", **opened) as archive:
            for member in archive:
                check_member(member, where)
                base = PurePosixPath(member.name.replace("\\", "/")).name
                if base not in wanted:
                    continue
                if not member.isfile():
                    raise VaeError(f"{where}: member {member.name!r} is not a regular file")
                if base in found:
                    raise VaeError(f"{where}: member {base!r} appears twice")
                if member.size > MAX_MEMBER_BYTES:
                    raise VaeError(f"{where}: member {member.name!r} is {member.size} bytes, too large")
                data = archive.extractfile(member).read()
                if len(data) != member.size:
                    raise VaeError(f"{where}: truncated member {member.name!r}")
                found[base] = data
    except VaeError:
        raise
    except Exception as exc:  # noqa: BLE001 - tarfile/gzip/bz2/lzma raise many kinds
        raise VaeError(f"{where}: corrupted or unreadable archive ({oneline(exc)})") from None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise VaeError(f"{where}: archive lacks {', '.join(missing)}")
    return found


def read_cifar(files: dict, batches: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, str]:
    """CIFAR-10 batches from ``{"archive": tar}`` or ``{"folder": dir}``; returns images, labels, source."""
    if "archive" in files:
        source = str(files["archive"])
        raw = read_tar_members(files["archive"], batches)
        blobs = [(f"{source}:{b}", raw[b]) for b in batches]
    else:
        folder = Path(files["folder"])
        source = str(folder)
        blobs = []
        for b in batches:
            path = folder / b
            with _open(path, str(path)) as f:
                blobs.append((str(path), f.read(MAX_MEMBER_BYTES + 1)))
            if len(blobs[-1][1]) > MAX_MEMBER_BYTES:
                raise VaeError(f"{path}: larger than {MAX_MEMBER_BYTES} bytes; not a CIFAR-10 batch")
    parts = [parse_cifar_batch(data, where) for where, data in blobs]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, source


# ----------------------------------------------------------------------------------
# SVHN .mat: a small MATLAB v5 reader for numeric matrices
#
# scipy.io.loadmat crashes the interpreter (segmentation fault) on some corrupted
# files, so vaecli reads the part of the format that SVHN uses itself: a 128-byte
# header, then data elements (tag: type, byte count; small elements pack both in 4
# bytes), each miMATRIX holding array flags, dimensions, name and real part,
# optionally inside an miCOMPRESSED (zlib) element.  Column-major data.
# ----------------------------------------------------------------------------------

MAT_HEADER_BYTES = 128
MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
MI_NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
MX_NUMERIC = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
MX_COMPLEX_FLAG = 0x0800


class _MatError(Exception):
    pass


def _mat_elements(buf: bytes, pos: int, end: int, order: str):
    """Yield (type, payload, is_compressed) for the data elements of buf[pos:end]."""
    while pos < end:
        if end - pos < 8:
            raise _MatError(f"truncated element tag at byte {pos}")
        first, second = struct.unpack_from(order + "II", buf, pos)
        if first >> 16:  # small data element: count in the upper 16 bits, data in the next 4 bytes
            kind, n = first & 0xFFFF, first >> 16
            if n > 4:
                raise _MatError(f"bad small element at byte {pos}")
            yield kind, buf[pos + 4:pos + 4 + n]
            pos += 8
            continue
        kind, n = first, second
        if pos + 8 + n > end:
            raise _MatError(f"element at byte {pos} claims {n} bytes, only {end - pos - 8} left")
        yield kind, buf[pos + 8:pos + 8 + n]
        pos += 8 + n
        if kind != MI_COMPRESSED:
            pos += -n % 8  # padded to 8 bytes


def _mat_matrix(payload: bytes, order: str, wanted) -> tuple[str, np.ndarray] | None:
    parts = list(_mat_elements(payload, 0, len(payload), order))
    if len(parts) < 3 or parts[0][0] != MI_UINT32 or parts[1][0] != MI_INT32 or parts[2][0] != MI_INT8:
        raise _MatError("malformed matrix header")
    flags = struct.unpack_from(order + "I", parts[0][1])[0] if len(parts[0][1]) >= 4 else 0
    name = bytes(parts[2][1]).decode("latin1")
    if name not in wanted:
        return None
    mx = flags & 0xFF
    if mx not in MX_NUMERIC or flags & MX_COMPLEX_FLAG:
        raise _MatError(f"variable {name!r} is not a real numeric matrix (class {mx})")
    if len(parts[1][1]) % 4:
        raise _MatError(f"variable {name!r} has malformed dimensions")
    dims = struct.unpack(order + f"{len(parts[1][1]) // 4}i", parts[1][1])
    if any(d < 0 for d in dims) or len(parts) < 4:
        raise _MatError(f"variable {name!r} has bad dimensions {dims}")
    kind, data = parts[3]
    if kind not in MI_NUMERIC:
        raise _MatError(f"variable {name!r} stores data of unknown type {kind}")
    stored = np.dtype(MI_NUMERIC[kind]).newbyteorder(order)
    count = int(np.prod(dims, dtype=object))
    if len(data) != count * stored.itemsize:
        raise _MatError(f"variable {name!r} of shape {dims} has {len(data)} bytes of data")
    values = np.frombuffer(data, dtype=stored).astype(MX_NUMERIC[mx])
    return name, values.reshape(dims, order="F")


def read_mat(source, names=("X", "y"), where: str | None = None) -> dict[str, np.ndarray]:
    """The named real numeric matrices of a MATLAB v5 .mat file (others are skipped)."""
    where = where or str(source)
    raw = _open(source, where)
    try:
        with raw:
            buf = memoryview(raw.read())
    except OSError as exc:
        raise VaeError(f"cannot read {where}: {oneline(exc)}") from None
    if len(buf) < MAT_HEADER_BYTES or bytes(buf[:6]) != b"MATLAB":
        raise VaeError(f"{where}: not a MATLAB .mat file (no 'MATLAB 5.0 MAT-file' header)")
    if bytes(buf[:10]) == b"MATLAB 7.3":
        raise VaeError(f"{where}: MATLAB v7.3 (HDF5) .mat files are not supported; save with -v7 or "
                       f"give the arrays as .h5/.npz")
    order = {b"IM": "<", b"MI": ">"}.get(bytes(buf[126:128]))
    if order is None:
        raise VaeError(f"{where}: not a MATLAB v5 .mat file (bad endian indicator)")
    found = {}
    try:
        for kind, payload in _mat_elements(buf, MAT_HEADER_BYTES, len(buf), order):
            if kind == MI_COMPRESSED:
                inner = memoryview(zlib.decompress(payload))
                elements = list(_mat_elements(inner, 0, len(inner), order))
            else:
                elements = [(kind, payload)]
            for inner_kind, inner_payload in elements:
                if inner_kind != MI_MATRIX:
                    continue
                hit = _mat_matrix(inner_payload, order, names)
                if hit is not None:
                    found.setdefault(hit[0], hit[1])
    except _MatError as exc:
        raise VaeError(f"{where}: corrupted .mat file ({exc})") from None
    except (zlib.error, ValueError, MemoryError, OverflowError, struct.error) as exc:
        raise VaeError(f"{where}: corrupted .mat file ({oneline(exc)})") from None
    return found


def mat_shapes(path) -> dict[str, tuple[int, ...]]:
    """Variable name -> dimensions, reading only each matrix's header (cheap, for listing)."""
    with _open(path, str(path)) as raw:
        buf = memoryview(raw.read())
    order = {b"IM": "<", b"MI": ">"}.get(bytes(buf[126:128]))
    shapes = {}
    if len(buf) < MAT_HEADER_BYTES or order is None:
        return shapes
    try:
        for kind, payload in _mat_elements(buf, MAT_HEADER_BYTES, len(buf), order):
            head = zlib.decompressobj().decompress(payload, 256) if kind == MI_COMPRESSED else payload
            if kind == MI_COMPRESSED:
                kind, n = struct.unpack_from(order + "II", head)
                head = head[8:]
            if kind != MI_MATRIX:
                continue
            parts = []
            for part in _mat_elements(head, 0, len(head), order):
                parts.append(part)
                if len(parts) == 3:
                    break
            if len(parts) == 3 and len(parts[1][1]) % 4 == 0:
                dims = struct.unpack(order + f"{len(parts[1][1]) // 4}i", parts[1][1])
                shapes[bytes(parts[2][1]).decode("latin1")] = dims
    except (_MatError, zlib.error, struct.error, ValueError):
        pass
    return shapes


def read_svhn_mat(path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``{split}_32x32.mat``: X (32, 32, 3, N) uint8 and y (N, 1) with 10 meaning digit 0."""
    where = str(path) if not hasattr(path, "read") else "mat"
    mat = read_mat(path, ("X", "y"), where)
    for key in ("X", "y"):
        if key not in mat:
            raise VaeError(f"{where}: no variable {key!r}; SVHN .mat files hold X (32, 32, 3, N) and y (N, 1)")
    x = mat["X"]
    if x.ndim != 4 or x.shape[2] not in (1, 3):
        raise VaeError(f"{where}: X has shape {x.shape}; SVHN stores (H, W, 3, N)")
    images = to_images(x.transpose(3, 2, 0, 1), f"{where} (X)")
    y = mat["y"]
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # MATLAB's default class is double; whole numbers are labels
    labels = to_labels(y, images.shape[0], f"{where} (y)")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise VaeError(f"{where}: SVHN labels must be 1..10 (10 is digit 0), got {labels.min()}..{labels.max()}")
    return images, labels % 10


# ----------------------------------------------------------------------------------
# Images (PNG, JPEG) with Pillow
# ----------------------------------------------------------------------------------


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise VaeError("reading PNG/JPEG images needs Pillow: pip install pillow") from None
    return Image


def read_image(path) -> np.ndarray:
    """One image file as uint8 (C, H, W) with C = 1 (grayscale) or 3 (RGB); alpha is dropped."""
    image_module = _pil()
    where = str(path)
    try:
        with image_module.open(path) as opened:
            opened.load()
            from PIL import ImageOps

            im = ImageOps.exif_transpose(opened)  # as a viewer shows it (a camera's rotation tag)
            mode = im.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise VaeError(f"{where}: {mode} images (16-bit or float) are not supported; need 8-bit")
            if mode in ("1", "L", "LA", "La"):
                im = im.convert("L")
            elif mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except VaeError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, UnidentifiedImageError, ...
        raise VaeError(f"{where}: cannot read image ({oneline(exc)})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def image_files(folder) -> list[Path]:
    folder = Path(folder)
    try:
        # hidden files are not images of the set (macOS writes ._NAME beside each file)
        return sorted(p for p in folder.iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    except OSError as exc:
        raise VaeError(f"cannot read folder {folder}: {exc.strerror or oneline(exc)}") from None


def sub_folders(folder) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name."""
    try:
        return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise VaeError(f"cannot read folder {folder}: {exc.strerror or oneline(exc)}") from None


# ----------------------------------------------------------------------------------
# NumPy (.npz, .npy) and HDF5 arrays
# ----------------------------------------------------------------------------------

IMAGE_KEYS = ("images", "x", "arr_0")  # tried in order for a file without splits
LABEL_KEYS = ("labels", "y")


def split_keys(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Per-split key names: ``train_images``/``x_train`` (Keras style) and their labels."""
    return (f"{split}_images", f"x_{split}", f"{split}/images"), (f"{split}_labels", f"y_{split}", f"{split}/labels")


def _pick(keys, candidates):
    return next((k for k in candidates if k in keys), None)


KNOWN_SPLITS = ("train", "test", "val", "valid", "validation")


def _splits_in(keys) -> list[str]:
    """The split names that per-split keys in ``keys`` announce.  ``x_NAME`` counts only
    for a usual split name or with its ``y_NAME``: ``x_mean`` beside ``x`` is no split."""
    found = set()
    for k in keys:
        if k.endswith(("_images", "/images")):
            found.add(k[: -len("_images")])
        elif k.startswith("x_") and (k[2:] in KNOWN_SPLITS or f"y_{k[2:]}" in keys):
            found.add(k[2:])
    return sorted(found)


def choose_keys(keys, split: str, where: str) -> tuple[str, str | None, str]:
    """(image key, label key or None, split name) for a file with arrays named ``keys``.

    A file with per-split keys gives that split (and refuses an absent one); a file
    with one image array gives it for every split, named "all".
    """
    keys = set(keys)
    s_images, s_labels = split_keys(split)
    key = _pick(keys, s_images)
    if key is not None:
        return key, _pick(keys, s_labels), split
    has_splits = _splits_in(keys)
    if has_splits:
        raise VaeError(f"{where}: no {split!r} split (the file has {names_for_message(has_splits)})")
    key = _pick(keys, IMAGE_KEYS)
    if key is None:
        raise VaeError(f"{where}: no image array; name it one of {', '.join(IMAGE_KEYS)} "
                       f"(or {s_images[0]}); found {names_for_message(sorted(keys)) or 'nothing'}")
    return key, _pick(keys, LABEL_KEYS), "all"


def read_npz(source, split: str, where: str | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images, labels (or None) and split name from an ``.npz`` file, never unpickling."""
    where = where or str(source)
    try:
        with np.load(source, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise VaeError(f"{where}: not an .npz archive (a single array; use .npy)")
            key, label_key, split_name = choose_keys(npz.files, split, where)
            x = npz[key]
            y = npz[label_key] if label_key else None
    except VaeError:
        raise
    except FileNotFoundError:
        raise VaeError(f"cannot read {where}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - zipfile/zlib/format errors, pickled object arrays
        raise VaeError(f"{where}: not a readable .npz file ({oneline(exc)})") from None
    images = to_images(x, f"{where} ({key})")
    labels = None if y is None else to_labels(y, images.shape[0], f"{where} ({label_key})")
    return images, labels, split_name


def read_npy(source, where: str | None = None) -> np.ndarray:
    where = where or str(source)
    try:
        x = np.load(source, allow_pickle=False)
    except FileNotFoundError:
        raise VaeError(f"cannot read {where}: no such file") from None
    except Exception as exc:  # noqa: BLE001
        raise VaeError(f"{where}: not a readable .npy file ({oneline(exc)})") from None
    if not isinstance(x, np.ndarray):
        raise VaeError(f"{where}: not a single .npy array")
    return to_images(x, where)


def read_h5(path, split: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images from dataset ``images`` (or ``x``, or ``<split>/images``) of an HDF5 file."""
    where = str(path)
    try:
        import h5py
    except ImportError:
        raise VaeError("reading HDF5 files needs h5py: pip install h5py") from None
    try:
        with h5py.File(path, "r") as f:
            names = set()
            f.visit(names.add)
            key, label_key, split_name = choose_keys(names, split, where)
            for k in (key, label_key):
                if k is not None and not isinstance(f[k], h5py.Dataset):
                    raise VaeError(f"{where}: {k!r} is a group, not a dataset")
            x = f[key][()]
            y = f[label_key][()] if label_key else None
    except VaeError:
        raise
    except FileNotFoundError:
        raise VaeError(f"cannot read {where}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, TypeError, ...
        raise VaeError(f"{where}: not a readable HDF5 file ({oneline(exc)})") from None
    images = to_images(x, f"{where} ({key})")
    labels = None if y is None else to_labels(y, images.shape[0], f"{where} ({label_key})")
    return images, labels, split_name
