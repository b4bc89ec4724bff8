"""Frame-prediction metrics, as video-prediction papers report them (SVG, Denton and
Fergus 2018): PSNR and SSIM of a predicted frame against the true one, per frame.

Both take images in [0, 1] of shape (N, C, H, W) and return (N,) values in float64.

* PSNR = 10 log10(1 / MSE), the MSE over the frame's pixels; a perfect frame is +inf.
* SSIM is Wang, Bovik, Sheikh and Simoncelli's (2004) structural similarity with their
  standard settings: an 11x11 Gaussian window of sigma 1.5 (normalised), K1 = 0.01,
  K2 = 0.03 and the dynamic range L = 1, the local statistics taken over the window
  positions that lie wholly inside the image ('valid'), biased (1/N) variances, the map
  averaged over positions and then over channels.  This is what the authors' MATLAB
  code and scikit-image's ``structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)`` compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import VaeError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check(a: torch.Tensor, b: torch.Tensor, what: str):
    if a.shape != b.shape or a.dim() != 4:
        raise VaeError(f"{what}: two (N, C, H, W) arrays of one shape needed, got {tuple(a.shape)} and "
                       f"{tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each frame, for values in [0, 1]: (N,) float64."""
    _check(a, b, "psnr")
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64) -> torch.Tensor:
    """The normalised 1-d Gaussian of ``size`` taps (the 2-d window is its outer product)."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each frame (module docstring), computed in float64: (N,)."""
    _check(a, b, "ssim")
    n, c, h, w = a.shape
    if min(h, w) < SSIM_WINDOW:
        raise VaeError(f"ssim: frames of {h}x{w} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window")
    g = gaussian_window().to(a.device)
    x = a.double().reshape(n * c, 1, h, w)
    y = b.double().reshape(n * c, 1, h, w)

    def blur(t):  # separable 'valid' filtering
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K L)^2 with L = 1
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(1).reshape(n, c).mean(1)


def summarize(per_sample: torch.Tensor) -> dict:
    """Best-of-N and mean-over-N of a (samples, sequences, steps) metric, per time step:
    SVG's report (the best sample chosen per sequence by its mean over the steps)."""
    if per_sample.dim() != 3:
        raise VaeError("summarize: a (samples, sequences, steps) array is needed")
    best_index = per_sample.mean(2).argmax(0)  # (sequences,)
    best = per_sample[best_index, torch.arange(per_sample.shape[1])]  # (sequences, steps)
    return {"best": best.mean(0).tolist(), "mean": per_sample.mean((0, 1)).tolist(),
            "samples": int(per_sample.shape[0]), "sequences": int(per_sample.shape[1])}
