"""PSNR and SSIM of predicted frames (vaecli.prediction) against independent
implementations: scikit-image's structural_similarity and a float64 NumPy/SciPy SSIM
written from Wang et al. (2004), and PSNR from its definition."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vaecli import VaeError  # noqa: E402
from vaecli.prediction import psnr, ssim, summarize  # noqa: E402


def _pairs(seed=0, n=4, c=1, size=24):
    rng = np.random.default_rng(seed)
    a = rng.random((n, c, size, size))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    b[0] = a[0]  # identical frames
    b[1] = rng.random(a[1].shape)  # unrelated frames
    return a, b


def _ssim_scipy(a, b):
    """SSIM of one (H, W) pair: scipy's Gaussian filter (sigma 1.5, truncated to an
    11-tap window), the 'valid' positions only (5 pixels cropped at each border)."""
    from scipy.ndimage import gaussian_filter

    f = lambda t: gaussian_filter(t, 1.5, truncate=3.5 - 1e-9, mode="constant")[5:-5, 5:-5]  # noqa: E731
    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_a_scipy_reference(channels):
    a, b = _pairs(c=channels)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = [np.mean([_ssim_scipy(a[i, k], b[i, k]) for k in range(channels)]) for i in range(len(a))]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert ours[0] == pytest.approx(1.0, abs=1e-12) and ours[1] < 0.1


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(channels):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _pairs(seed=1, c=channels, size=32)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = [metrics.structural_similarity(a[i], b[i], channel_axis=0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1.0) for i in range(len(a))]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_psnr_from_its_definition():
    a, b = _pairs()
    ours = psnr(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert math.isinf(ours[0]) and ours[0] > 0
    for i in range(1, len(a)):
        assert ours[i] == pytest.approx(10 * math.log10(1 / np.mean((a[i] - b[i]) ** 2)), rel=1e-12)
    metrics = pytest.importorskip("skimage.metrics")
    assert ours[2] == pytest.approx(metrics.peak_signal_noise_ratio(a[2], b[2], data_range=1.0), rel=1e-12)


def test_float32_frames_give_the_float64_values():
    a, b = _pairs(seed=2)
    wide = ssim(torch.from_numpy(a), torch.from_numpy(b))
    narrow = ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert narrow.dtype == torch.float64
    np.testing.assert_allclose(narrow.numpy(), wide.numpy(), atol=1e-6)


def test_bad_shapes_are_one_line():
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(VaeError, match="smaller than the 11x11 window"):
        ssim(x, x)
    with pytest.raises(VaeError, match=r"ssim: two \(N, C, H, W\) arrays of one shape needed"):
        ssim(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 12))
    with pytest.raises(VaeError, match="psnr"):
        psnr(torch.zeros(3, 16), torch.zeros(3, 16))


def test_best_of_n_picks_each_sequences_best_sample_by_its_mean():
    # 3 samples, 2 sequences, 2 steps
    values = torch.tensor([[[0.1, 0.9], [0.5, 0.5]],
                           [[0.6, 0.6], [0.2, 0.1]],
                           [[0.0, 0.0], [0.9, 0.0]]], dtype=torch.float64)
    s = summarize(values)
    # sequence 0: sample 1 (mean 0.6) over sample 0 (0.5); sequence 1: sample 0 (0.5)
    assert s["best"] == pytest.approx([(0.6 + 0.5) / 2, (0.6 + 0.5) / 2])
    assert s["mean"] == pytest.approx(values.mean((0, 1)).tolist())
    assert (s["samples"], s["sequences"]) == (3, 2)
    # the best samples' means over the steps are 0.6 and 0.5: sd 0.0707, over sqrt(2)
    assert s["stderr"] == pytest.approx(0.1 / 2**0.5 / 2**0.5)
