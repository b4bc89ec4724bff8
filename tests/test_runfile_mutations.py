"""Run files whose seal is valid but whose contents are wrong: every object in a real
run file (each group, dataset and attribute, the root's too, and every key of the JSON
attributes: the config and the optimizer's param_groups) is deleted, reshaped, retyped,
resized, declared huge or given a wrong value, the file is resealed, and a reader runs
on it.  Whatever the mutation, only vaecli's own errors may escape: a one-line
"Error: ..." and a non-zero exit, or (where the change is harmless) success."""

import collections
import functools
import json
import math
import shutil
import signal
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from vaecli import runfile  # noqa: E402
from vaecli.cli import main  # noqa: E402

TINY = ["--epochs", "2", "--batch-size", "16", "--latent-dim", "2", "--width", "2", "--device", "cpu", "--quiet"]
HUGE = 2**40  # elements of a dataset declared huge (chunked: h5py writes no data for it)

# every command that reads a run file, RUN (the mutated file) and OUT (a folder for its
# pictures) filled in per example
READERS = {
    "info": ["info", "RUN"],
    "info --json": ["info", "RUN", "--json"],
    "eval": ["eval", "RUN", "--device", "cpu"],
    "sample": ["sample", "RUN", "-n", "4", "-o", "OUT/s.png", "--device", "cpu"],
    "reconstruct": ["reconstruct", "RUN", "-n", "2", "--rows", "1", "-o", "OUT/r.png", "--device", "cpu"],
    "compare": ["compare", "RUN"],
    "compare --format json": ["compare", "RUN", "--format", "json"],
    "plot": ["plot", "RUN", "-o", "OUT/p.png"],
    "plot --kind rate-distortion": ["plot", "RUN", "--kind", "rate-distortion", "-o", "OUT/p.png"],
    "calibrate": ["calibrate", "RUN", "--device", "cpu"],
    "train --resume": ["train", "--out", "RUN", "--resume", "--epochs", "3", "--device", "cpu", "--quiet"],
}
READER_NAMES = sorted(READERS)

OUTCOMES = collections.Counter()  # refused | harmless | known crash -> files, for the summary below

# Crashes whose cause lies outside the run file's validation, left for the code that has
# it to fix: (target, mutation, reader) -> the exception type that escapes.  A case here
# still runs; it fails the test if it escapes with anything else.
KNOWN_CRASHES = {
    # runs.reconstructions loads the config's dataset without checking its image shape
    # against the model's (run_split does, for vae eval): a config without a dataset
    # means mnist5k, 28x28 images for a model of 8x8 ones
    (("json", "/", "config", ("dataset",)), "delete", "reconstruct"): RuntimeError,
    # plots.rd_labels takes the log of every stored MSE: an MSE of 0 is a math domain error
    (("attr", "evaluations/test/mse", "value"), "zero", "plot --kind rate-distortion"): ValueError,
}


# ------------------------------------------------------------------ the run files


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real run files of a tiny sigma-VAE: a complete one with calibration,
    evaluations (elbo, bpd, kl, mse) and two sample sets, and one interrupted mid-epoch
    (a resumable checkpoint with the epoch's running sums)."""
    import vaecli.training.step as step_module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is many times faster on a loaded 2-core machine
    root = tmp_path_factory.mktemp("mutations")
    data = root / "data.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (48, 1, 8, 8)).astype(np.uint8))
    complete = root / "complete.h5"
    assert _invoke(["train", "--data", data, *TINY, "--out", complete]).exit_code == 0
    assert _invoke(["eval", complete, "--device", "cpu", *[f"--metric={m}" for m in ("elbo", "bpd", "kl", "mse")]]
                   ).exit_code == 0
    assert _invoke(["sample", complete, "-n", "3", "--format", "run", "--device", "cpu"]).exit_code == 0

    interrupted = root / "interrupted.h5"
    calls, real_kl = {"n": 0}, step_module.total_kl

    def kl_then_interrupt(groups):
        calls["n"] += 1
        if calls["n"] == 4:  # 3 steps in epoch 1, then epoch 2's first step
            signal.raise_signal(signal.SIGINT)
        return real_kl(groups)

    step_module.total_kl = kl_then_interrupt
    try:
        result = _invoke(["train", "--data", data, *TINY, "--out", interrupted])
    finally:
        step_module.total_kl = real_kl
    assert result.exit_code == 1 and "interrupted at epoch 2, step 1/3" in result.output, result.output
    saved = runfile.read(interrupted)
    assert saved.attrs["status"] == "interrupted" and saved.progress["step_in_epoch"] == 1
    yield {"complete": complete, "interrupted": interrupted, "scratch": root}
    torch.set_num_threads(threads)
    print(f"\nmutated run files: {sum(OUTCOMES.values())} ({dict(OUTCOMES)})")


@functools.lru_cache(maxsize=None)
def objects(path):
    """Every object of a run file, as ('group', path), ('dataset', path), ('attr', path,
    name) and ('json', path, name, key path) for the keys of a JSON attribute."""
    found = []
    path = str(path)

    def attributes(name, obj):
        for key in obj.attrs:
            found.append(("attr", name, key))
            value = obj.attrs[key]
            if isinstance(value, str) and value[:1] in ("[", "{"):
                found.extend(("json", name, key, keys) for keys in _json_keys(json.loads(value)))

    with h5py.File(path, "r") as f:
        attributes("/", f)

        def visit(name, obj):
            found.append(("group" if isinstance(obj, h5py.Group) else "dataset", name))
            attributes(name, obj)

        f.visititems(visit)
    return tuple(found)


def _json_keys(value, prefix=()):
    """Key paths of the dicts in a JSON value (list items by index); lists of scalars
    count as one value."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        if isinstance(value, list) and not isinstance(child, (dict, list)):
            return []
        out.append(prefix + (key,))
        out.extend(_json_keys(child, prefix + (key,)))
    return out


# ------------------------------------------------------------------ the mutations
# Each takes the open file and the target and changes it; MUTATIONS[kind] lists the
# ones that make sense for a kind of object.


def _replace_dataset(f, name, data=None, **kwargs):
    attrs = dict(f[name].attrs) if isinstance(f[name], h5py.Dataset) else {}
    del f[name]
    d = f.create_dataset(name, data=data, **kwargs)
    for k, v in attrs.items():
        d.attrs[k] = v


def _values(f, name):
    return f[name][()]


def _dataset_reshape(f, name):
    v = np.asarray(_values(f, name))
    _replace_dataset(f, name, v.reshape(-1) if v.ndim > 1 else v.reshape(1, -1))


def _dataset_retype(dtype):
    def mutate(f, name):
        v = np.asarray(_values(f, name))
        if dtype == "str":
            _replace_dataset(f, name, np.full(v.shape, "x", dtype=object), dtype=h5py.string_dtype())
        else:
            with np.errstate(all="ignore"):
                _replace_dataset(f, name, v.astype(dtype))
    return mutate


def _dataset_resize(delta):
    def mutate(f, name):
        v = np.asarray(_values(f, name))
        if v.ndim == 0:
            _replace_dataset(f, name, np.repeat(v, 2))
        elif delta < 0:
            _replace_dataset(f, name, v[:-1])
        else:
            _replace_dataset(f, name, np.concatenate([v, v[-1:] if len(v) else np.zeros((1, *v.shape[1:]), v.dtype)]))
    return mutate


def _dataset_huge(nd):
    """The dataset declared huge (chunked, no chunk written): (2**40,), or its own shape
    with a first axis of 2**36."""
    def mutate(f, name):
        d = f[name]
        shape = (HUGE,) if not nd or d.ndim < 2 else (2**36, *d.shape[1:])
        _replace_dataset(f, name, shape=shape, dtype=d.dtype, chunks=(1024,) + tuple(1 for _ in shape[1:]))
    return mutate


def _unwritten_children(f, name):
    """Every dataset in the group declared 1 GiB, under the size limit of one array, and
    never written (chunked, no chunk stored)."""
    for child in list(f[name]):
        if isinstance(f[name][child], h5py.Dataset):
            _replace_dataset(f, f"{name}/{child}", shape=(2**30 // f[name][child].dtype.itemsize,),
                             dtype=f[name][child].dtype, chunks=(2**16,))


def _dataset_fill(value):
    """Every element set to ``value``; in an integer dataset, a value it cannot hold
    (NaN, infinity, 1e30) becomes its largest, and -1 wraps in an unsigned one."""
    def mutate(f, name):
        v = np.asarray(_values(f, name))
        if v.dtype.kind in "iub" and not (math.isfinite(value) and abs(value) < 2**31):
            value_ = np.iinfo(v.dtype).max if v.dtype.kind in "iu" else True
        else:
            value_ = value
        with np.errstate(all="ignore"):
            _replace_dataset(f, name, np.full(v.shape, value_).astype(v.dtype))
    return mutate


def _dataset_random(f, name):
    v = np.asarray(_values(f, name))
    if v.dtype.kind not in "fiub":
        return
    raw = np.random.default_rng(len(name)).integers(0, 256, v.nbytes, dtype=np.uint8)
    _replace_dataset(f, name, np.frombuffer(raw.tobytes(), dtype=v.dtype).reshape(v.shape).copy())


def _to_group(f, name):
    del f[name]
    f.create_group(name)


def _to_dataset(f, name):
    del f[name]
    f.create_dataset(name, data=1.0)


def _delete(f, name):
    del f[name]


def _empty_group(f, name):
    for child in list(f[name]):
        del f[name][child]


def _extra_child(f, name):
    f[name].create_dataset("bogus", data=np.zeros(3, dtype=np.float32))


def _extra_attr(f, name):
    f[name].attrs["bogus"] = 1


def _set_attr(value):
    def mutate(f, target):
        name, key = target
        f[name].attrs[key] = value(f[name].attrs[key]) if callable(value) else value
    return mutate


def _delete_attr(f, target):
    name, key = target
    del f[name].attrs[key]


def _negative(v):
    if isinstance(v, np.ndarray):
        return -np.abs(v.astype(np.int64 if v.dtype.kind in "iub" else v.dtype)) - 1
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        return -abs(v) - 1
    return -1


def _wrong_length(v):
    """An array attribute one element short; a scalar one an array of five."""
    return v[:-1] if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) else np.arange(5)


def _json_edit(change):
    def mutate(f, target):
        name, key, keys = target
        data = json.loads(f[name].attrs[key])
        holder = data
        for k in keys[:-1]:
            holder = holder[k]
        change(holder, keys[-1])
        f[name].attrs[key] = json.dumps(data)  # NaN and Infinity as JSON's non-standard words
    return mutate


def _json_set(value):
    def change(holder, key):
        holder[key] = value(holder[key]) if callable(value) else value
    return change


def _json_delete(holder, key):
    del holder[key]


def _json_extra(holder, key):
    if isinstance(holder, dict):
        holder["bogus_key"] = 1
    else:
        holder.append({"bogus_key": 1})


MUTATIONS = {
    "group": {
        "delete": _delete, "to dataset": _to_dataset, "empty": _empty_group, "extra child": _extra_child,
        "extra attr": _extra_attr, "unwritten 1 GiB children": _unwritten_children,
    },
    "dataset": {
        "delete": _delete, "to group": _to_group, "reshape": _dataset_reshape,
        "float16": _dataset_retype(np.float16), "float64": _dataset_retype(np.float64),
        "int32": _dataset_retype(np.int32), "uint8": _dataset_retype(np.uint8),
        "float32": _dataset_retype(np.float32), "bool": _dataset_retype(np.bool_), "str": _dataset_retype("str"),
        "shorter": _dataset_resize(-1), "longer": _dataset_resize(+1),
        "huge 1-d": _dataset_huge(False), "huge n-d": _dataset_huge(True),
        "nan": _dataset_fill(float("nan")), "inf": _dataset_fill(float("inf")), "negative": _dataset_fill(-1),
        "1e30": _dataset_fill(1e30), "zero": _dataset_fill(0), "random bytes": _dataset_random,
    },
    "attr": {
        "delete": _delete_attr, "str": _set_attr("bogus"), "empty str": _set_attr(""), "int": _set_attr(7),
        "float": _set_attr(2.5), "negative": _set_attr(_negative), "nan": _set_attr(float("nan")),
        "inf": _set_attr(float("inf")), "1e30": _set_attr(1e30), "2**62": _set_attr(2**62), "zero": _set_attr(0),
        "bool": _set_attr(np.bool_(True)), "array": _set_attr(np.arange(3)), "wrong length": _set_attr(_wrong_length),
        "float array": _set_attr(np.array([1.5, 8.0, 8.0])), "bad utf-8 bytes": _set_attr(np.bytes_(b"\xff\xfe")),
        "json list": _set_attr("[1, 2]"), "json object": _set_attr('{"a": 1}'),
    },
    "json": {
        "delete": _json_edit(_json_delete), "str": _json_edit(_json_set("bogus")), "int": _json_edit(_json_set(7)),
        "float": _json_edit(_json_set(2.5)), "null": _json_edit(_json_set(None)),
        "list": _json_edit(_json_set([1, 2])), "object": _json_edit(_json_set({"a": 1})),
        "bool": _json_edit(_json_set(True)), "negative": _json_edit(_json_set(_negative)),
        "nan": _json_edit(_json_set(float("nan"))), "inf": _json_edit(_json_set(float("inf"))),
        "1e30": _json_edit(_json_set(1e30)), "2**70": _json_edit(_json_set(2**70)),
        "zero": _json_edit(_json_set(0)), "extra key": _json_edit(_json_extra),
    },
}


def mutate(path, target, mutation):
    kind, *where = target
    with h5py.File(path, "r+") as f:
        MUTATIONS[kind][mutation](f, where[0] if len(where) == 1 else tuple(where))


def plain_copy(source, dest):
    """The run file as a plain HDF5 file: the same objects, no user block and no seal."""
    with h5py.File(source, "r") as src, h5py.File(dest, "w") as dst:
        for name in src:
            src.copy(src[name], dst, name)
        for k, v in src.attrs.items():
            dst.attrs[k] = v


# ------------------------------------------------------------------ the check


def check_reader(base, target, mutation, reader, scratch, plain=False):
    """Mutate a copy of ``base``, reseal it (or make it a plain HDF5 file) and run
    ``reader`` on it: success, or one line "Error: ..." and a non-zero exit."""
    work = tempfile.mkdtemp(dir=scratch)
    try:
        run = f"{work}/run.h5"
        shutil.copyfile(base, run)
        mutate(run, target, mutation)
        if plain:
            plain_copy(run, f"{work}/plain.h5")
            run = f"{work}/plain.h5"
        else:
            runfile.seal(run)
        args = [a.replace("RUN", run).replace("OUT", work) for a in READERS[reader]]
        result = CliRunner().invoke(main, args)
        where = f"{'plain ' if plain else ''}{target} {mutation!r} then `vae {' '.join(args)}`"
        known = KNOWN_CRASHES.get((target, mutation, reader))
        if known is not None and type(result.exception) is known:
            OUTCOMES["known crash"] += 1
            return
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            trace = "".join(traceback.format_exception(*result.exc_info))
            pytest.fail(f"{where}: {type(result.exception).__name__} escaped\n{trace}")
        output = result.output.strip()
        assert "Traceback" not in output, f"{where}:\n{output}"
        if result.exit_code != 0:
            last = output.splitlines()[-1] if output else ""
            assert last.startswith("Error: "), f"{where}: exit {result.exit_code} without a one-line error:\n{output}"
            assert run in last, f"{where}: the error does not name the file:\n{last}"
            OUTCOMES["refused"] += 1
        else:
            assert not plain, f"{where}: an unsealed file was read:\n{output}"
            OUTCOMES["harmless"] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_every_object_of_a_run_file_mutated_is_refused_or_harmless(runs):
    """Each object of both run files, twice: a mutation and a reader drawn for it (the
    lists rotated per object, so that the first, simplest draw differs too)."""
    for base in ("complete", "interrupted"):
        targets = objects(runs[base])
        assert len(targets) > 150, targets  # groups, datasets, attributes, JSON keys
        for i, target in enumerate(targets):
            kinds = list(MUTATIONS[target[0]])
            kinds = kinds[i % len(kinds):] + kinds[: i % len(kinds)]
            readers = READER_NAMES[i % len(READER_NAMES):] + READER_NAMES[: i % len(READER_NAMES)]

            @settings(max_examples=1 if base == "interrupted" else 2, phases=[Phase.generate, Phase.shrink],
                      **SETTINGS)
            @given(mutation=st.sampled_from(kinds), reader=st.sampled_from(readers))
            def one(mutation, reader):
                check_reader(runs[base], target, mutation, reader, runs["scratch"])

            one()


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_random_mutations_and_readers(runs, data):
    """(object, mutation, reader) drawn together, from either run file."""
    base = data.draw(st.sampled_from(["complete", "interrupted"]), label="run file")
    target = data.draw(st.sampled_from(objects(runs[base])), label="object")
    mutation = data.draw(st.sampled_from(sorted(MUTATIONS[target[0]])), label="mutation")
    reader = data.draw(st.sampled_from(READER_NAMES), label="reader")
    check_reader(runs[base], target, mutation, reader, runs["scratch"])


@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_plain_hdf5_run_files_mutated_are_refused(runs, data):
    """The same objects in a plain HDF5 file (no user block, no seal), mutated: refused
    in one line, whatever the mutation (the root attributes are drawn most often: the
    reader looks at them first)."""
    targets = objects(runs["complete"])
    roots = [t for t in targets if t[0] == "attr" and t[1] == "/"]
    target = data.draw(st.sampled_from(roots) | st.sampled_from(targets), label="object")
    mutation = data.draw(st.sampled_from(sorted(MUTATIONS[target[0]])), label="mutation")
    reader = data.draw(st.sampled_from(READER_NAMES), label="reader")
    check_reader(runs["complete"], target, mutation, reader, runs["scratch"], plain=True)


def test_the_validator_requires_the_history_columns_training_writes():
    from vaecli import runcheck
    from vaecli.training.state import HISTORY_COLUMNS

    assert runcheck.HISTORY_COLUMNS == HISTORY_COLUMNS


def test_arrays_declared_larger_in_all_than_a_run_file_holds_are_refused(runs, monkeypatch):
    """Each array under the limit of one, all of them over the limit of a file (here
    lowered to less than the run's own arrays): refused before they are read."""
    from vaecli import VaeError, runcheck

    monkeypatch.setattr(runcheck, "MAX_RUN_BYTES", 10_000)
    with pytest.raises(VaeError, match=r"complete\.h5: invalid run file: its arrays declare more than 9\.8 KiB in all"):
        runfile.read(runs["complete"])


@pytest.mark.parametrize("mutation", ["inf", "int", "array", "json list", "json object", "str"])
@pytest.mark.parametrize("reader", ["info", "eval"])
def test_latent_group_names_that_are_not_a_json_list_of_names_are_refused(runs, mutation, reader):
    # found by the random search above (inf, then vae info): the names were read unchecked
    check_reader(runs["complete"], ("attr", "/", "latent_groups"), mutation, reader, runs["scratch"])
