"""The FID reference-statistics cache is checked before it is trusted (SPEC.md, FID).

A cache entry is used only when it is sound: mu (d,) and sigma (d, d) float64 and
finite, sigma symmetric and positive semi-definite within tolerances, a count n that
is an integer >= 2 and the data's size, and the attributes that key it.  Anything else,
and a cache file that is damaged or not vaecli's, is recomputed with a warning, and the
FID is the freshly computed one.  A small stand-in network with the Inception's
interface (tests/fakes.py) replaces the real weights, and the feature width is 64 (the
checks are the same for any width; at 2048 the linear algebra alone takes a minute a
case on a small CPU): one test runs the full width.
"""

from __future__ import annotations

import shutil
import warnings

import h5py
import numpy as np
import pytest

from fakes import FakeData, blob_images, stand_in_inception
from vaecli import fid, runfile

pytest.importorskip("torch")

N_IMAGES = 10
WIDTH = 64  # the feature width in these tests


@pytest.fixture(scope="module", autouse=True)
def narrow_features():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fid, "FEATURE_DIM", WIDTH)
        yield


@pytest.fixture(scope="module")
def extractor(narrow_features, tmp_path_factory):
    path = stand_in_inception(tmp_path_factory.mktemp("net") / "stand-in.pt", width=WIDTH)
    return fid.FeatureExtractor(path, "cpu", allow_unknown=True)


@pytest.fixture(scope="module")
def data():
    return FakeData(blob_images(N_IMAGES, seed=0), name="blobs", split="test", checksum="ab" * 32)


@pytest.fixture(scope="module")
def generated(extractor):
    """Statistics of another image set, to take FIDs against the reference."""
    return fid.statistics(extractor.features(blob_images(N_IMAGES, size=12, seed=1, width=3.0)))


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory, extractor, data):
    """A cache file vaecli wrote, holding a sound entry for ``data``; and its statistics."""
    path = tmp_path_factory.mktemp("cache") / "good.h5"
    stats = fid.reference_statistics(extractor, data, path)
    return path, stats


@pytest.fixture
def cache(tmp_path, good_cache):
    path = tmp_path / "stats.h5"
    shutil.copyfile(good_cache[0], path)
    return path


def no_recomputation(monkeypatch, extractor):
    def boom(*args, **kwargs):
        raise AssertionError("features recomputed despite a sound cache entry")

    monkeypatch.setattr(extractor, "features", boom)


def edit_entry(path, edit):
    """Apply ``edit(group)`` to the one entry of a cache file and reseal it, as a file
    edited on purpose would be: the seal holds, only the entry is wrong."""
    with h5py.File(path, "r+") as f:
        (key,) = list(f)
        edit(f[key])
    runfile.seal(path)


def _replace(name, value):
    def edit(g):
        del g[name]
        g[name] = value

    return edit


def _set_attr(name, value):
    def edit(g):
        g.attrs[name] = value

    return edit


def _del(name, attr=False):
    def edit(g):
        del (g.attrs if attr else g)[name]

    return edit


def _sigma(change):
    """An edit replacing sigma by ``change(sigma)``."""

    def edit(g):
        sigma = g["sigma"][()]
        g["sigma"][...] = change(sigma)

    return edit


def _flip_top_eigenvalue(sigma):
    """sigma with its largest eigenvalue made negative: symmetric, not PSD."""
    w, v = np.linalg.eigh(sigma)
    return sigma - 2 * w[-1] * np.outer(v[:, -1], v[:, -1])


def _asymmetric(sigma):
    out = sigma.copy()
    out[0, 1] += 1e-3 * np.abs(sigma).max()
    return out


d = WIDTH
BAD_ENTRIES = [
    ("missing-mu", _del("mu"), "it has no mu dataset"),
    ("missing-sigma", _del("sigma"), "it has no sigma dataset"),
    ("missing-n", _del("n", attr=True), "its count n is None, not an integer"),
    ("n-float", _set_attr("n", float(N_IMAGES)), "its count n is 10.0, not an integer"),
    ("n-one", _set_attr("n", 1), "its count n is 1, not the 10 images"),
    ("n-other-count", _set_attr("n", N_IMAGES + 1), "its count n is 11, not the 10 images"),
    ("mu-float32", _replace("mu", np.zeros(d, np.float32)), "mu is float32, not float64"),
    ("sigma-float32", _replace("sigma", np.eye(d, dtype=np.float32)), "sigma is float32, not float64"),
    ("mu-int", _replace("mu", np.zeros(d, np.int64)), "mu is int64, not float64"),
    ("mu-strings", _replace("mu", np.array([b"x"] * d)), r"mu is \|S1, not float64"),
    ("mu-shape", _replace("mu", np.zeros(d - 1)), r"mu has shape \(63,\), not \(64,\)"),
    ("sigma-shape", _replace("sigma", np.eye(d)[:, :-1]), r"sigma has shape \(64, 63\), not \(64, 64\)"),
    ("sigma-flat", _replace("sigma", np.zeros(d)), r"sigma has shape \(64,\)"),
    ("mu-nan", _replace("mu", np.full(d, np.nan)), "mu holds NaN or infinite values"),
    ("sigma-inf", _sigma(lambda s: np.where(np.eye(d, dtype=bool), np.inf, s)), "sigma holds NaN or infinite"),
    ("non-symmetric", _sigma(_asymmetric), "sigma is not symmetric"),
    ("negative-eigenvalue", _sigma(_flip_top_eigenvalue), "sigma is not positive semi-definite"),
    ("negative-definite", _sigma(lambda s: -s - np.eye(d)), "sigma is not positive semi-definite"),
    ("other-data", _set_attr("data_checksum", "cd" * 32), "its data_checksum is 'cdcd"),
    ("other-weights", _set_attr("inception_sha256", "0" * 64), "its inception_sha256 is '0000"),
    ("other-preprocessing", _set_attr("preprocessing", "none"), "its preprocessing is 'none'"),
]


@pytest.mark.parametrize("edit, why", [b[1:] for b in BAD_ENTRIES], ids=[b[0] for b in BAD_ENTRIES])
def test_a_bad_entry_is_recomputed_with_a_warning(cache, good_cache, extractor, data, generated, monkeypatch,
                                                   edit, why):
    edit_entry(cache, edit)
    with pytest.warns(UserWarning, match=f"cached FID statistics of blobs/test are not used: {why}.*recomputed"):
        mu, sigma, n = fid.reference_statistics(extractor, data, cache)
    fresh_mu, fresh_sigma, fresh_n = good_cache[1]
    np.testing.assert_array_equal(mu, fresh_mu)
    np.testing.assert_array_equal(sigma, fresh_sigma)
    assert n == fresh_n == N_IMAGES
    assert fid.frechet(generated, (mu, sigma)) == fid.frechet(generated, (fresh_mu, fresh_sigma)) > 0
    no_recomputation(monkeypatch, extractor)  # the entry was rewritten, sound this time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = fid.reference_statistics(extractor, data, cache)
    np.testing.assert_array_equal(again[1], fresh_sigma)
    assert runfile.check_seal(cache) is True


def test_a_non_psd_covariance_would_have_given_fid_zero(good_cache, generated):
    """Why PSD is checked: the distance of a negative definite 'covariance' is negative,
    and clamped at 0 it reads as a perfect score."""
    mu, sigma, _ = good_cache[1]
    assert fid.frechet(generated, (mu, -sigma - np.eye(d))) == 0.0
    assert fid.frechet(generated, (mu, sigma)) > 0


def test_a_sound_entry_is_used_without_warnings(cache, good_cache, extractor, data, monkeypatch):
    no_recomputation(monkeypatch, extractor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mu, sigma, n = fid.reference_statistics(extractor, data, cache)
    np.testing.assert_array_equal(sigma, good_cache[1][1])
    assert n == N_IMAGES


def test_a_bad_entry_is_replaced_and_the_others_kept(tmp_path, cache, extractor, data):
    other = FakeData(blob_images(N_IMAGES, seed=2), name="other", split="test", checksum="ef" * 32)
    fid.reference_statistics(extractor, other, cache)
    with h5py.File(cache, "r+") as f:
        assert len(f) == 2
        key = next(k for k, g in f.items() if g.attrs["dataset"] == "blobs")
        del f[key]["mu"]
    runfile.seal(cache)
    with pytest.warns(UserWarning, match="it has no mu dataset"):
        fid.reference_statistics(extractor, data, cache)
    with h5py.File(cache, "r") as f:
        assert sorted(g.attrs["dataset"] for g in f.values()) == ["blobs", "other"]
        assert "mu" in f[key]


CORRUPTIONS = [
    ("garbage", lambda p: p.write_bytes(b"not an HDF5 file at all" * 100), "is not an HDF5 file"),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "seal mismatch"),
    ("bit-flip", lambda p: p.write_bytes(_flip_a_byte(p.read_bytes())), "seal mismatch"),
    ("header", lambda p: p.write_bytes(b"\0" * 64 + p.read_bytes()[64:]), "header is corrupted"),
    ("edited-unsealed", lambda p: edit_without_seal(p), "seal mismatch"),
    ("foreign-hdf5", lambda p: foreign_cache(p), "not written by vaecli"),
    ("empty", lambda p: p.write_bytes(b""), "is not an HDF5 file"),
]


def _flip_a_byte(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :]


def edit_without_seal(path):
    with h5py.File(path, "r+") as f:
        (key,) = list(f)
        f[key]["sigma"][0, 0] = -1e6


def foreign_cache(path):
    """A plain HDF5 file (no vaecli seal) with the right layout but a negative definite
    sigma under the right key: it must not be read at all."""
    with h5py.File(path, "r") as f:
        (key,) = list(f)
        entry = {name: f[key][name][()] for name in ("mu", "sigma")}
        attrs = dict(f[key].attrs)
    with h5py.File(path, "w") as f:
        g = f.create_group(key)
        g["mu"], g["sigma"] = entry["mu"], -entry["sigma"]
        g.attrs.update(attrs)


@pytest.mark.parametrize("damage, why", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_a_damaged_cache_file_is_ignored_and_rewritten(cache, good_cache, extractor, data, generated, monkeypatch,
                                                         damage, why):
    damage(cache)
    with pytest.warns(UserWarning, match=f"ignoring the FID statistics cache.*{why}.*recomputed and the cache "
                                         "rewritten"):
        mu, sigma, n = fid.reference_statistics(extractor, data, cache)
    fresh_mu, fresh_sigma, _ = good_cache[1]
    np.testing.assert_array_equal(sigma, fresh_sigma)
    assert fid.frechet(generated, (mu, sigma)) == fid.frechet(generated, (fresh_mu, fresh_sigma)) > 0
    assert runfile.check_seal(cache) is True  # rewritten whole, sealed
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no temporary file left
    no_recomputation(monkeypatch, extractor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid.reference_statistics(extractor, data, cache)


def test_full_width_statistics_pass_and_a_negative_eigenvalue_does_not(tmp_path, monkeypatch, data):
    """At the Inception's width 2048 with fewer images than dimensions (a covariance
    whose zero eigenvalues come out about -1e-16 |S| from rounding), fresh statistics
    pass the checks and are read back; a diagonal entry of -1e-6 |S| is refused."""
    monkeypatch.setattr(fid, "FEATURE_DIM", 2048)
    wide = fid.FeatureExtractor(stand_in_inception(tmp_path / "wide.pt", width=2048), "cpu", allow_unknown=True)
    calls, features = [], wide.features
    monkeypatch.setattr(wide, "features", lambda *a, **k: calls.append(1) or features(*a, **k))
    cache = tmp_path / "stats.h5"
    mu, sigma, _ = fid.reference_statistics(wide, data, cache)
    assert sigma.shape == (2048, 2048) and len(calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(fid.reference_statistics(wide, data, cache)[1], sigma)
    assert len(calls) == 1  # read back, not recomputed

    def negative_first_variance(s):
        s = s.copy()
        s[0, 0] = -1e-6 * np.linalg.norm(s)  # e0' S e0 < 0: not PSD
        return s

    edit_entry(cache, _sigma(negative_first_variance))
    with pytest.warns(UserWarning, match="sigma is not positive semi-definite"):
        again = fid.reference_statistics(wide, data, cache)
    np.testing.assert_array_equal(again[1], sigma)
    assert len(calls) == 2
