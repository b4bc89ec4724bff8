"""The run file: one self-describing HDF5 file per training run (docs/runfile.md).

Layout (schema 1)::

    /                 attrs: format="vaecli-run", schema_version, vaecli_version,
                      created, updated, likelihood, n_bits, units="nats", seed,
                      device, dataset, dataset_checksum, image_shape, config (JSON),
                      status, epochs_done, step_in_epoch, library versions
    /model/<name>     model (and likelihood) parameters and buffers, one dataset each
    /optimizer        attrs: param_groups (JSON); /optimizer/state/<i>/<key> datasets
    /rng/<name>       RNG states as uint8 datasets (torch CPU, data order, CUDA)
    /progress         attrs and datasets of the epoch in progress (running sums)
    /history/<column> one float64 value per completed epoch
    /calibration      attrs: eval_sigma, mse, method (sigma likelihood only)
    /evaluations/<split>/<metric>  attrs: value, stderr, unit, n, ... or applicable=0 + reason
    /samples/<name>   uint8 (N, C, H, W) with attrs

Nothing is pickled: loading a run file never executes code.  Every write goes to a
temporary file in the same directory, is flushed to disk and renamed over the old
file, so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .config import TrainConfig
from .errors import VaeError

FORMAT = "vaecli-run"
SCHEMA_VERSION = 1


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_h5(path, copy_from=None):
    """Open a temporary HDF5 file beside ``path`` for writing (a copy of
    ``copy_from`` if given), then flush, fsync and rename it over ``path``."""
    import h5py

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise VaeError(f"cannot write {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=directory)
    os.close(fd)
    try:
        if copy_from is not None:
            shutil.copyfile(copy_from, tmp)
        with h5py.File(tmp, "r+" if copy_from is not None else "w") as f:
            yield f
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise VaeError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise VaeError(f"{path} is not an HDF5 file (not a vaecli run file)") from None
    try:
        with f:
            attrs = _attrs(f)
            if attrs.get("format") != FORMAT:
                raise VaeError(f"{path} is an HDF5 file but not a vaecli run file")
            version = int(attrs.get("schema_version", 0))
            if version > SCHEMA_VERSION:
                raise VaeError(
                    f"{path} has run-file schema {version}, newer than this vaecli "
                    f"{__version__} reads ({SCHEMA_VERSION}); upgrade vaecli"
                )
            config = TrainConfig.from_json(attrs["config"])
            model = {k: f["model"][k][()] for k in f["model"]} if "model" in f else {}
            optimizer = None
            if "optimizer" in f:
                g = f["optimizer"]
                optimizer = {
                    "param_groups": json.loads(g.attrs["param_groups"]),
                    "state": {int(i): {k: g["state"][i][k][()] for k in g["state"][i]} for i in g["state"]},
                }
            rng = {k: f["rng"][k][()] for k in f["rng"]} if "rng" in f else {}
            progress = {}
            if "progress" in f:
                progress = _attrs(f["progress"])
                progress.update({k: f["progress"][k][()] for k in f["progress"]})
            history = {k: f["history"][k][()] for k in f["history"]} if "history" in f else {}
            calibration = _attrs(f["calibration"]) if "calibration" in f else {}
            evaluations = {}
            if "evaluations" in f:
                for split in f["evaluations"]:
                    evaluations[split] = {m: _attrs(f["evaluations"][split][m]) for m in f["evaluations"][split]}
            samples = {}
            if "samples" in f:
                samples = {k: (f["samples"][k][()], _attrs(f["samples"][k])) for k in f["samples"]}
    except VaeError:
        raise
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise VaeError(f"{path} is a damaged vaecli run file ({type(exc).__name__}: {exc})") from None
    return Run(path, attrs, config, model, optimizer, rng, progress, history, calibration, evaluations, samples)


def write(path, *, config: TrainConfig, attrs: dict, model: dict, optimizer: dict | None, rng: dict,
          progress: dict, history: dict, calibration: dict, samples: dict | None = None):
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
