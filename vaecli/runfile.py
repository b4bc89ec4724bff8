"""The run file: one self-describing HDF5 file per training run (docs/runfile.md).

Layout (schema 2)::

    /                 attrs: format="vaecli-run", schema_version, vaecli_version,
                      created, updated, likelihood, model, n_bits, units="nats", seed,
                      device, dataset, dataset_checksum, image_shape, config (JSON,
                      with the model's registered name and its options),
                      status, epochs_done, step_in_epoch, library versions, cuda_graph
    /model/<name>     model (and likelihood) parameters and buffers, one dataset each
    /optimizer        attrs: param_groups (JSON); /optimizer/state/<i>/<key> datasets
    /rng/<name>       RNG states as uint8 datasets (torch CPU, data order, CUDA)
    /progress         attrs and datasets of the epoch in progress (running sums)
    /history/<column> one float64 value per completed epoch
    /calibration      attrs: eval_sigma, mse, method; pmf_sigma, pmf_images, pmf_train_bits,
                      pmf_method (sigma likelihood only; pmf_* absent in older files)
    /evaluations/<split>/<metric>  attrs: value, stderr, unit, n, ... or applicable=0 + reason
    /samples/<name>   uint8 (N, C, H, W) with attrs

Nothing is pickled: loading a run file never executes code.  Every write goes to a
temporary file in the same directory, is flushed to disk and renamed over the old
file, so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from . import runcheck
from ._version import __version__
from .config import TrainConfig
from .errors import VaeError

FORMAT = "vaecli-run"
# 2: the config names the model and holds its options (model, model_options); schema 1
# files (the conv model, latent_dim and width at the config's top level) still load
SCHEMA_VERSION = 2

# Every file vaecli writes starts with an HDF5 user block (bytes HDF5 ignores) that
# holds a seal: the SHA-256 of everything after it.  A reader checks the seal before
# h5py parses a byte, because the HDF5 library can loop for minutes on corrupted
# metadata; a damaged file is then one clear error, never a hang or a crash.
USERBLOCK = 512
SEAL_MAGIC = b"vaecli-seal-sha256-v1\n"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _temp_prefix(path) -> str:
    return f".{os.path.basename(path)}.tmp-"


def remove_stale_temporaries(path) -> list:
    """Delete temporary files that a killed writer of ``path`` left beside it (only
    ours: named after ``path``).  Returns the names removed."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed = []
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(".h5"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def _digest_after_userblock(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(USERBLOCK)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(path):
    """(Re)write the seal of a file that has a vaecli user block, e.g. after editing
    it with h5py directly."""
    with open(path, "rb") as f:
        if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            raise VaeError(f"{path} has no vaecli user block to hold a seal (it was not written by vaecli)")
    header = (SEAL_MAGIC + _digest_after_userblock(path).encode() + b"\n").ljust(USERBLOCK, b"\0")
    with open(path, "r+b") as f:
        f.write(header)
        f.flush()
        os.fsync(f.fileno())


def check_seal(path) -> bool:
    """True if ``path`` carries a valid seal, False for an unsealed HDF5 file (not
    written by vaecli); a VaeError for anything else, naming what is wrong."""
    try:
        with open(path, "rb") as f:
            head = f.read(USERBLOCK + len(HDF5_SIGNATURE))
    except OSError as exc:
        raise VaeError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(HDF5_SIGNATURE):
        return False
    if not head.startswith(SEAL_MAGIC):
        if HDF5_SIGNATURE in head:
            raise VaeError(f"{path} is a damaged vaecli run file (its header is corrupted)")
        raise VaeError(f"{path} is not an HDF5 file (not a vaecli run file)")
    stored = head[len(SEAL_MAGIC) : len(SEAL_MAGIC) + 64].decode("ascii", "replace")
    if stored != _digest_after_userblock(path):
        raise VaeError(f"{path} is a damaged vaecli run file (SHA-256 seal mismatch: truncated, corrupted or "
                       "edited outside vaecli; vaecli.runfile.seal(path) reseals a file you edited on purpose)")
    return True


def _beside(path) -> tuple[str, str]:
    """(path, its directory), the directory checked to exist."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise VaeError(f"cannot write {path}: directory {directory} does not exist")
    return path, directory


@contextlib.contextmanager
def _replacing(path, suffix=""):
    """A temporary file beside ``path`` (its name, created empty) for the body to fill;
    then it gets the umask's mode and is renamed over ``path``, and the directory is
    synced.  Any OSError is one VaeError, and the temporary file never stays."""
    path, directory = _beside(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=directory)
        os.close(fd)
        yield tmp
        os.chmod(tmp, public_mode())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise VaeError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_h5(path, copy_from=None):
    """Open a temporary HDF5 file beside ``path`` for writing (a copy of
    ``copy_from`` if given), then flush, fsync and rename it over ``path``."""
    import h5py

    with _replacing(path, suffix=".h5") as tmp:
        if copy_from is not None:
            shutil.copyfile(copy_from, tmp)
            with h5py.File(tmp, "r+") as f:
                yield f
        else:
            with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
                yield f
        seal(tmp)  # also flushes to disk


def public_mode() -> int:
    """The mode a plain open() would give a new file (0o666 less the umask): the
    temporary files behind atomic writes are made 0o600, and keep it through the rename.
    The umask is read from /proc (Linux); setting it to read it back, the only other
    way, would change it for a moment for every thread of the process."""
    try:
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def check_writable(path):
    """Raise a VaeError now, before any work, if a file could not be written atomically
    at ``path`` (a temporary file beside it is made and removed)."""
    path, directory = _beside(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".h5", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise VaeError(f"cannot write {path}: {exc.strerror or exc}") from None


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    with _replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Run:
    """Everything in a run file, as NumPy arrays and plain Python values."""

    path: str
    attrs: dict
    config: TrainConfig
    model: dict  # name -> ndarray
    optimizer: dict | None  # {"param_groups": [...], "state": {i: {key: ndarray}}}
    rng: dict  # name -> uint8 ndarray
    progress: dict  # epoch in progress: attrs and arrays
    history: dict  # column -> ndarray (one value per completed epoch)
    calibration: dict
    evaluations: dict = field(default_factory=dict)  # split -> metric -> dict
    samples: dict = field(default_factory=dict)  # name -> (ndarray, attrs)
    ema: dict = field(default_factory=dict)  # parameter name -> ndarray: the weights' moving average, if kept

    @property
    def image_shape(self):
        return tuple(int(v) for v in self.attrs["image_shape"])

    @property
    def eval_sigma(self):
        return self.calibration.get("eval_sigma")


def _attrs(obj):
    out = {}
    for k, v in obj.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


def read(path) -> Run:
    """Load a run file; a VaeError says what is wrong with a file that is not one."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise VaeError(f"no such run file: {path}")
    if not check_seal(path):  # an HDF5 file vaecli did not write
        try:
            with h5py.File(path, "r") as f:
                fmt = f.attrs.get("format")
        except (OSError, RuntimeError):
            raise VaeError(f"{path} is a damaged HDF5 file (not a vaecli run file)") from None
        if isinstance(fmt, (str, bytes)) and fmt in (FORMAT, FORMAT.encode()):
            raise VaeError(f"{path} is a vaecli run file without its seal (edited outside vaecli?); "
                           "if you edited it on purpose, reseal it with vaecli.runfile.seal(path)")
        raise VaeError(f"{path} is an HDF5 file but not a vaecli run file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise VaeError(f"{path} is not an HDF5 file (not a vaecli run file)") from None
    try:
        with f:
            attrs = _attrs(f)
            if attrs.get("format") != FORMAT:
                raise VaeError(f"{path} is an HDF5 file but not a vaecli run file")
            version = attrs.get("schema_version")
            if not runcheck.is_int(version) or version < 1:
                raise runcheck._Invalid(f"schema_version is {version!r}; expected an integer >= 1")
            if version > SCHEMA_VERSION:
                raise VaeError(
                    f"{path} has run-file schema {version}, newer than this vaecli "
                    f"{__version__} reads ({SCHEMA_VERSION}); upgrade vaecli"
                )
            config = _config(path, attrs)
            budget = runcheck.SizeBudget()  # every array's declared size checked before it is read
            model = {k: _read(f, budget, f"model/{k}") for k in f["model"]} if "model" in f else {}
            optimizer = None
            if "optimizer" in f:
                g = f["optimizer"]
                optimizer = {
                    "param_groups": runcheck.parse_json(g.attrs["param_groups"], "optimizer param_groups"),
                    "state": {int(i): {k: _read(f, budget, f"optimizer/state/{i}/{k}") for k in g["state"][i]}
                              for i in g["state"]},
                }
            rng = {k: _read(f, budget, f"rng/{k}") for k in f["rng"]} if "rng" in f else {}
            progress = {}
            if "progress" in f:
                progress = _attrs(f["progress"])
                progress.update({k: _read(f, budget, f"progress/{k}") for k in f["progress"]})
            history = {k: _read(f, budget, f"history/{k}") for k in f["history"]} if "history" in f else {}
            calibration = _attrs(f["calibration"]) if "calibration" in f else {}
            evaluations = {}
            if "evaluations" in f:
                for split in f["evaluations"]:
                    evaluations[split] = {m: _attrs(f["evaluations"][split][m]) for m in f["evaluations"][split]}
            ema = {k: _read(f, budget, f"ema/{k}") for k in f["ema"]} if "ema" in f else {}
            samples = {}
            if "samples" in f:
                samples = {k: (_read(f, budget, f"samples/{k}"), _attrs(f["samples"][k])) for k in f["samples"]}
    except VaeError:
        raise
    except runcheck._Invalid as exc:
        runcheck.fail(path, str(exc))
    except (KeyError, OSError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as exc:
        raise VaeError(f"{path} is a damaged vaecli run file ({type(exc).__name__}: {exc})") from None
    run = Run(path, attrs, config, model, optimizer, rng, progress, history, calibration, evaluations, samples,
              ema)
    runcheck.validate(run)
    return run


def _config(path, attrs) -> TrainConfig:
    """The run's TrainConfig from its JSON; what is wrong with it names the file."""
    if not isinstance(attrs.get("config"), str):
        raise runcheck._Invalid(f"the root config is {attrs.get('config')!r}; expected the TrainConfig as JSON")
    try:
        return TrainConfig.from_json(attrs["config"])
    except VaeError as exc:
        raise runcheck._Invalid(f"config: {exc}") from None


def _read(f, budget, name):
    """A dataset's values, its declared size checked (and counted in ``budget``) before
    any byte is read."""
    import h5py

    d = f[name]
    if not isinstance(d, h5py.Dataset):
        raise runcheck._Invalid(f"{name} is a group where an array belongs")
    budget.take(name, d)
    return d[()]


def write(path, *, config: TrainConfig, attrs: dict, model: dict, optimizer: dict | None, rng: dict,
          progress: dict, history: dict, calibration: dict, samples: dict | None = None, ema: dict | None = None):
    """Write a whole checkpoint atomically.  Evaluations of earlier weights are not
    carried over (they would describe another model)."""
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["vaecli_version"] = __version__
        f.attrs["units"] = "nats"
        f.attrs["config"] = config.to_json()
        f.attrs["updated"] = _now()
        for k, v in attrs.items():
            f.attrs[k] = v
        g = f.create_group("model")
        for k, v in model.items():
            g.create_dataset(k, data=v)
        if ema is not None:  # the moving average of the parameters, which evaluation uses
            g = f.create_group("ema")
            for k, v in ema.items():
                g.create_dataset(k, data=v)
        if optimizer is not None:
            g = f.create_group("optimizer")
            g.attrs["param_groups"] = json.dumps(optimizer["param_groups"])
            s = g.create_group("state")
            for i, state in optimizer["state"].items():
                gi = s.create_group(str(i))
                for k, v in state.items():
                    gi.create_dataset(k, data=v)
        g = f.create_group("rng")
        for k, v in rng.items():
            g.create_dataset(k, data=v)
        g = f.create_group("progress")
        for k, v in progress.items():
            if isinstance(v, np.ndarray):
                g.create_dataset(k, data=v)
            else:
                g.attrs[k] = v
        g = f.create_group("history")
        for k, v in history.items():
            g.create_dataset(k, data=np.asarray(v, dtype=np.float64))
        g = f.create_group("calibration")
        for k, v in calibration.items():
            g.attrs[k] = v
        f.create_group("evaluations")
        g = f.create_group("samples")
        for k, (v, a) in (samples or {}).items():
            d = g.create_dataset(k, data=v, compression="gzip")
            for ak, av in a.items():
                d.attrs[ak] = av


def store_evaluation(path, split: str, results: dict):
    """Add evaluation results (metric -> dict of scalars/strings) to a run file."""
    read(path)  # refuse what is not a run file before copying it
    with atomic_h5(path, copy_from=path) as f:
        g = f.require_group("evaluations").require_group(split)
        for metric, values in results.items():
            if metric in g:
                del g[metric]
            m = g.create_group(metric)
            m.attrs["evaluated"] = _now()
            for k, v in values.items():
                if v is None:
                    continue
                m.attrs[k] = v
        f.attrs["updated"] = _now()


def store_calibration(path, values: dict, stale_metrics=()) -> list:
    """Add or replace calibration attrs; stored evaluations of ``stale_metrics``
    (computed with the old values) are removed.  Returns the removed 'split/metric's."""
    read(path)
    removed = []
    with atomic_h5(path, copy_from=path) as f:
        g = f.require_group("calibration")
        for k, v in values.items():
            g.attrs[k] = v
        for split, metrics in f.get("evaluations", {}).items():
            for metric in stale_metrics:
                if metric in metrics:
                    del metrics[metric]
                    removed.append(f"{split}/{metric}")
        f.attrs["updated"] = _now()
    return removed


def store_samples(path, name: str, images: np.ndarray, attrs: dict):
    """Add a named uint8 sample array (N, C, H, W) to a run file."""
    read(path)
    with atomic_h5(path, copy_from=path) as f:
        g = f.require_group("samples")
        if name in g:
            del g[name]
        d = g.create_dataset(name, data=images, compression="gzip")
        d.attrs["created"] = _now()
        for k, v in attrs.items():
            d.attrs[k] = v
        f.attrs["updated"] = _now()
