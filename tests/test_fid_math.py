"""The Fréchet distance and KID maths (SPEC.md, FID; issue 4): closed forms and
properties of the float64 reference, and the torch and CuPy versions against it.

The CuPy functions run on a GPU only when cupy sees a CUDA device (skipped otherwise,
with the reason); their array code is also run here on NumPy standing in for CuPy.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from fakes import cupy_device
from vaecli.backends import torch_fid
from vaecli.backends.cupy_backend import fid as cupy_fid
from vaecli.errors import VaeError
from vaecli.reference import fid as ref

# Reference and torch both run float64 LAPACK/BLAS on the CPU, but different builds
# sum in different orders: they agree to a few hundred ulps of the largest term.
RTOL_FLOAT64 = 1e-10
SEEDS = [0, 1, 2]


def _gaussian_features(rng, n, mean, cov):
    """n draws of N(mean, cov), shape (n, d)."""
    return rng.multivariate_normal(mean, cov, size=n, method="eigh")


def _random_spd(rng, d, scale=1.0):
    """A well-conditioned random symmetric positive definite (d, d) matrix."""
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.5 * np.eye(d))


def _features_pair(seed, n1=300, n2=250, d=32):
    """Two seeded feature sets of one width with different means and covariances."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n1, d)) @ rng.standard_normal((d, d)) / math.sqrt(d) + 0.3
    y = rng.standard_normal((n2, d)) * rng.uniform(0.5, 2.0, size=d) - 0.2
    return x, y


def _fid_of_features(module, x, y):
    return module.frechet_distance(
        *module.feature_statistics(x), *module.feature_statistics(y)
    )


def _kid_loop(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written as the plain double sums."""
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (m * m)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_statistics_are_mean_and_unbiased_covariance(seed):
    x, _ = _features_pair(seed)
    mu, sigma = ref.feature_statistics(x.astype(np.float32))
    x64 = x.astype(np.float32).astype(np.float64)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x64.mean(axis=0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(
        sigma, np.cov(x64, rowvar=False, ddof=1), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((1, 4)), r"at least 2 .*\(1, 4\)"),
        (np.zeros((0, 4)), r"at least 2 .*\(0, 4\)"),
        (np.zeros(5), r"2-D .*\(5,\)"),
        (np.zeros((2, 3, 4)), r"2-D .*\(2, 3, 4\)"),
        (np.zeros((5, 0)), r"d >= 1, got shape \(5, 0\)"),
        (np.array([[0.0, 1.0], [np.nan, 2.0]]), r"\(2, 2\) contain NaN or infinite"),
        (np.array([[0.0, 1.0], [np.inf, 2.0]]), r"NaN or infinite"),
        (np.ones((3, 2), dtype=complex), r"real numbers"),
    ],
    ids=["N1", "N0", "1d", "3d", "d0", "nan", "inf", "complex"],
)
@pytest.mark.parametrize("module", [ref, torch_fid], ids=["reference", "torch"])
def test_statistics_refuse_bad_features(module, bad, match):
    with pytest.raises(VaeError, match=match):
        module.feature_statistics(bad)


# --------------------------------------------------------------------------- Fréchet distance


def test_identical_feature_sets_give_zero():
    rng = np.random.default_rng(10)
    scale = 7.0
    x = scale * rng.standard_normal((2000, 64)) @ rng.standard_normal((64, 64)) + 3.0
    mu, sigma = ref.feature_statistics(x)
    value = ref.frechet_distance(mu, sigma, mu, sigma)
    # tr(S) is the natural size of the terms that cancel.
    assert abs(value) < 1e-8 * np.trace(sigma)
    assert abs(_fid_of_features(torch_fid, x, x)) < 1e-8 * np.trace(sigma)


def test_commuting_diagonal_covariances_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    a, b = (
        np.array([1.0, 4.0, 0.25, 9.0]),
        np.array([2.0, 1.0, 0.25, 0.0]),
    )  # one zero variance
    expected = (
        np.sum((mu1 - mu2) ** 2) + a.sum() + b.sum() - 2.0 * np.sum(np.sqrt(a * b))
    )
    for module in (ref, torch_fid):
        value = module.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
        assert isinstance(value, float)
        assert value == pytest.approx(expected, rel=1e-13)


def test_equal_means_scaled_covariance_closed_form():
    # S2 = c^2 S1 commutes with S1: tr((S1 S2)^(1/2)) = c tr(S1), so FID = (1-c)^2 tr(S1).
    rng = np.random.default_rng(11)
    s1, c = _random_spd(rng, 16), 3.0
    mu = rng.standard_normal(16)
    expected = (1.0 - c) ** 2 * np.trace(s1)
    assert ref.frechet_distance(mu, s1, mu, c * c * s1) == pytest.approx(
        expected, rel=1e-12
    )


def test_non_commuting_2x2_closed_form():
    # For a 2x2 M with eigenvalues l1, l2 >= 0: tr(M^(1/2)) = sqrt(l1) + sqrt(l2)
    # = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.1, -0.4]), np.array([1.0, 2.0])
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2.0 * math.sqrt(np.linalg.det(m)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    for module in (ref, torch_fid):
        assert module.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
            expected, rel=1e-13
        )


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_non_commuting_against_sqrtm(seed):
    # scipy.linalg.sqrtm (Schur method) as an independent computation, in the test only.
    rng = np.random.default_rng(seed)
    d = 12
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    root = scipy.linalg.sqrtm(s1 @ s2)
    expected = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2.0 * np.trace(root).real
    )
    assert ref.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_sample_statistics_converge_to_population_fid():
    rng = np.random.default_rng(12)
    d = 4
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=0.5)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    population = ref.frechet_distance(mu1, s1, mu2, s2)
    x = _gaussian_features(rng, 200_000, mu1, s1)
    y = _gaussian_features(rng, 200_000, mu2, s2)
    # Sampling error of the plug-in FID is O(sqrt(d/N)) relative: ~0.5% here.
    assert _fid_of_features(ref, x, y) == pytest.approx(population, rel=2e-2)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_fid_is_symmetric(seed):
    x, y = _features_pair(seed)
    s_x, s_y = ref.feature_statistics(x), ref.feature_statistics(y)
    forward, backward = (
        ref.frechet_distance(*s_x, *s_y),
        ref.frechet_distance(*s_y, *s_x),
    )
    assert forward > 0
    assert forward == pytest.approx(backward, rel=1e-10)


@pytest.mark.parametrize("module", [ref, torch_fid], ids=["reference", "torch"])
def test_rank_deficient_covariances_give_finite_non_negative_fid(module):
    # N < d: both covariances have rank N - 1 < d, with eigenvalues that round below 0.
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((10, 64)), rng.standard_normal((20, 64)) + 0.1
    value = _fid_of_features(module, x, y)
    assert math.isfinite(value) and value > 0
    # One set against itself: zero up to rounding, even with 54 zero eigenvalues.
    same = _fid_of_features(module, x, x)
    assert math.isfinite(same) and abs(same) < 1e-5 * 64


@pytest.mark.parametrize(
    "shapes",
    [
        ((3,), (3, 3), (4,), (4, 4)),
        ((3,), (3, 4), (3,), (3, 3)),
        ((3, 1), (3, 3), (3,), (3, 3)),
        ((3,), (3, 3), (3,), (2, 2)),
    ],
    ids=["d-mismatch", "sigma-not-square", "mu-2d", "sigma2-wrong"],
)
@pytest.mark.parametrize("module", [ref, torch_fid], ids=["reference", "torch"])
def test_frechet_distance_refuses_mismatched_shapes(module, shapes):
    args = [np.eye(s[0], s[1]) if len(s) == 2 else np.zeros(s) for s in shapes]
    got = ", ".join(
        r"\(" + ", ".join(map(str, s)) + (r",\)" if len(s) == 1 else r"\)")
        for s in shapes
    )
    with pytest.raises(VaeError, match=r"mu1 \(d,\).*got " + got):
        module.frechet_distance(*args)


@pytest.mark.parametrize("module", [ref, torch_fid], ids=["reference", "torch"])
def test_frechet_distance_refuses_non_finite_statistics(module):
    mu, sigma = np.zeros(3), np.eye(3)
    bad = sigma.copy()
    bad[1, 1] = np.nan
    with pytest.raises(VaeError, match="sigma2 .*NaN"):
        module.frechet_distance(mu, sigma, mu, bad)


# --------------------------------------------------------------------------- KID


def test_kid_matches_double_loop_on_whole_sets():
    # subset_size >= N: every subset is a permutation of the whole sets, and the
    # estimate does not depend on the order.
    rng = np.random.default_rng(20)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((7, 5)) + 0.5
    expected = _kid_loop(x, y)
    mean, std = ref.kid(x, y, subset_size=100, subsets=3, seed=4)
    assert mean == pytest.approx(expected, rel=1e-12)
    assert std < 1e-12 * abs(expected) + 1e-15


def test_kid_subsets_are_drawn_as_documented():
    # The draw protocol every backend follows: per subset, rows of set 1 then of set 2.
    rng = np.random.default_rng(21)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((9, 3)) * 1.5
    m, subsets, seed = 5, 4, 7
    draws = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        i = draws.choice(12, m, replace=False)
        j = draws.choice(9, m, replace=False)
        values.append(_kid_loop(x[i], y[j]))
    mean, std = ref.kid(x, y, subset_size=m, subsets=subsets, seed=seed)
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert std == pytest.approx(np.std(values), rel=1e-10)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_kid_of_one_distribution_is_near_zero(seed):
    rng = np.random.default_rng(100 + seed)
    x, y = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    subsets = 50
    mean, std = ref.kid(x, y, subset_size=100, subsets=subsets, seed=seed)
    assert std > 0
    assert abs(mean) < 3.0 * std / math.sqrt(subsets) + 1e-4


def test_kid_of_shifted_distributions_is_large_and_positive():
    rng = np.random.default_rng(22)
    x, y = rng.standard_normal((500, 16)), rng.standard_normal((500, 16)) + 1.0
    mean, std = ref.kid(x, y, subset_size=100, subsets=20, seed=0)
    same, _ = ref.kid(
        x, rng.standard_normal((500, 16)), subset_size=100, subsets=20, seed=0
    )
    # std is the spread of one subset's estimate, not of their mean.
    assert mean > 5.0 * std and mean > 100.0 * abs(same)


@pytest.mark.parametrize(
    "x_shape, y_shape, subset_size, match",
    [
        ((1, 4), (10, 4), 1000, r"at least 2 .*\(1, 4\) and \(10, 4\) gives 1"),
        ((10, 4), (10, 4), 1, r"subset_size=1 .*gives 1"),
        ((10, 4), (10, 5), 5, r"one width d.*\(10, 4\) and \(10, 5\)"),
        ((10,), (10, 4), 5, r"features1 must be a 2-D .*\(10,\)"),
    ],
    ids=["N1", "subset1", "width", "1d"],
)
@pytest.mark.parametrize("module", [ref, torch_fid], ids=["reference", "torch"])
def test_kid_refuses_bad_input(module, x_shape, y_shape, subset_size, match):
    with pytest.raises(VaeError, match=match):
        module.kid(
            np.ones(x_shape), np.ones(y_shape), subset_size=subset_size, subsets=2
        )


# --------------------------------------------------------------------------- torch vs reference


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_torch_agrees_with_reference(seed):
    x, y = _features_pair(seed)
    tx, ty = (
        torch.from_numpy(x),
        torch.from_numpy(y.astype(np.float32)),
    )  # float32 is widened

    mu_r, sigma_r = ref.feature_statistics(x)
    mu_t, sigma_t = torch_fid.feature_statistics(tx)
    assert mu_t.dtype == torch.float64 and sigma_t.dtype == torch.float64
    scale = np.abs(sigma_r).max()
    np.testing.assert_allclose(
        mu_t.numpy(), mu_r, rtol=RTOL_FLOAT64, atol=RTOL_FLOAT64 * scale
    )
    np.testing.assert_allclose(
        sigma_t.numpy(), sigma_r, rtol=RTOL_FLOAT64, atol=RTOL_FLOAT64 * scale
    )

    fid_r = _fid_of_features(ref, x, y.astype(np.float32))
    fid_t = _fid_of_features(torch_fid, tx, ty)
    assert isinstance(fid_t, float) and fid_r > 1.0
    assert fid_t == pytest.approx(fid_r, rel=RTOL_FLOAT64)

    kid_r = ref.kid(x, y, subset_size=100, subsets=10, seed=seed)
    kid_t = torch_fid.kid(
        tx, torch.from_numpy(y), subset_size=100, subsets=10, seed=seed
    )
    assert all(isinstance(v, float) for v in kid_t)
    np.testing.assert_allclose(kid_t, kid_r, rtol=RTOL_FLOAT64)


def test_torch_statistics_stay_on_the_features_device():
    x = torch.randn(50, 8, dtype=torch.float32, device="cpu")
    mu, sigma = torch_fid.feature_statistics(x)
    assert mu.device == x.device and sigma.device == x.device


# --------------------------------------------------------------------------- CuPy


class _NumpyAsCupy:
    """NumPy standing in for the few CuPy names the cupy FID uses."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def asnumpy(a):
        return np.asarray(a)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_cupy_array_code_on_numpy_agrees_with_reference(seed, monkeypatch):
    monkeypatch.setattr(cupy_fid, "_cupy", _NumpyAsCupy)
    x, y = _features_pair(seed)
    np.testing.assert_allclose(
        cupy_fid.feature_statistics(x)[1],
        ref.feature_statistics(x)[1],
        rtol=1e-12,
        atol=1e-14,
    )
    assert _fid_of_features(cupy_fid, x, y) == pytest.approx(
        _fid_of_features(ref, x, y), rel=1e-12
    )
    np.testing.assert_allclose(
        cupy_fid.kid(x, y, subset_size=50, subsets=5, seed=seed),
        ref.kid(x, y, subset_size=50, subsets=5, seed=seed),
        rtol=1e-12,
    )
    with pytest.raises(VaeError, match=r"at least 2 .*\(1, 3\)"):
        cupy_fid.feature_statistics(np.zeros((1, 3)))


_cupy_module, _WHY_NO_GPU = cupy_device()


def test_cupy_available_says_why_not():
    ok, why = cupy_fid.available()
    assert ok == (_cupy_module is not None)
    assert ok or why
    if not ok:
        with pytest.raises(VaeError, match="cannot run here"):
            cupy_fid.feature_statistics(np.zeros((3, 2)))


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
@pytest.mark.gpu
@pytest.mark.skipif(
    _cupy_module is None, reason=f"the cupy FID needs a CUDA device: {_WHY_NO_GPU}"
)
def test_cupy_agrees_with_reference_on_gpu(seed):
    cp = _cupy_module
    x, y = _features_pair(seed)
    gx, gy = cp.asarray(x), cp.asarray(y.astype(np.float32))
    mu_g, sigma_g = cupy_fid.feature_statistics(gx)
    assert isinstance(sigma_g, cp.ndarray) and sigma_g.dtype == cp.float64
    mu_r, sigma_r = ref.feature_statistics(x)
    scale = np.abs(sigma_r).max()
    np.testing.assert_allclose(
        cp.asnumpy(mu_g), mu_r, rtol=RTOL_FLOAT64, atol=RTOL_FLOAT64 * scale
    )
    np.testing.assert_allclose(
        cp.asnumpy(sigma_g), sigma_r, rtol=RTOL_FLOAT64, atol=RTOL_FLOAT64 * scale
    )
    fid_g = _fid_of_features(cupy_fid, gx, gy)
    assert isinstance(fid_g, float)
    assert fid_g == pytest.approx(
        _fid_of_features(ref, x, y.astype(np.float32)), rel=RTOL_FLOAT64
    )
    np.testing.assert_allclose(
        cupy_fid.kid(gx, cp.asarray(y), subset_size=100, subsets=10, seed=seed),
        ref.kid(x, y, subset_size=100, subsets=10, seed=seed),
        rtol=RTOL_FLOAT64,
    )


# --------------------------------------------------------------------------- imports


def test_reference_fid_imports_no_backend():
    code = (
        "import sys, vaecli.reference.fid; "
        "bad = [m for m in sys.modules if m in ('torch', 'cupy') or m.startswith('vaecli.backends')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_cupy_fid_imports_without_cupy_loaded():
    code = (
        "import sys, vaecli.backends.cupy_backend.fid; "
        "sys.exit(1 if 'cupy' in sys.modules else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
