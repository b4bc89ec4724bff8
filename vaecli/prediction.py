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
    SVG's report (the best sample chosen per sequence by its mean over the steps), and
    the standard error over sequences of the best sample's mean over the steps."""
    if per_sample.dim() != 3:
        raise VaeError("summarize: a (samples, sequences, steps) array is needed")
    best_index = per_sample.mean(2).argmax(0)  # (sequences,)
    best = per_sample[best_index, torch.arange(per_sample.shape[1])]  # (sequences, steps)
    per_sequence = best.double().mean(1)  # the best sample's mean over the steps, per sequence
    n = per_sequence.numel()
    stderr = float(per_sequence.std() / n**0.5) if n > 1 else 0.0
    return {"best": best.mean(0).tolist(), "mean": per_sample.mean((0, 1)).tolist(), "stderr": stderr,
            "samples": int(per_sample.shape[0]), "sequences": int(per_sample.shape[1])}


@torch.no_grad()
def prediction_metrics(model, videos: torch.Tensor, metrics, *, samples: int, seed: int, batch_size: int,
                       progress=None) -> dict:
    """SVG's report of a video model on ``videos`` (levels (N, T, C, H, W)): condition on
    the first ``n_past`` frames, draw ``samples`` futures of the other T - n_past frames
    (z from the learned prior, each predicted frame's decoder mean fed back), and score
    each predicted frame against the true one.  Per metric (``ssim``, ``psnr``): the
    value per future time step of the best sample (chosen per video by its mean over the
    steps) and the mean over samples; ``value`` is the best sample's mean over steps."""
    from .runs import predicted_videos

    n_past = model.n_past
    steps = videos.shape[1] - n_past
    if steps < 1:
        raise VaeError(f"the videos have {videos.shape[1]} frames: none left to predict after n_past = {n_past}")
    top = 2**model.likelihood.n_bits - 1
    gen = torch.Generator(device=videos.device).manual_seed(seed)
    scores = {m: [] for m in metrics}  # per batch: (samples, videos, steps)
    for start in range(0, videos.shape[0], batch_size):
        x = videos[start : start + batch_size]
        b = x.shape[0]
        flat_t = (x[:, n_past:].double() / top).reshape(b * steps, *x.shape[2:])
        per_sample = {m: [] for m in metrics}
        for _ in range(samples):
            # scored as the pictures are saved: the decoder means quantized to 8 bits
            future = predicted_videos(model, x, gen, steps=steps)[:, n_past:]
            flat_p = torch.from_numpy(future).to(x.device).double().reshape(b * steps, *x.shape[2:]) / 255
            for m in metrics:
                value = ssim(flat_p, flat_t) if m == "ssim" else psnr(flat_p, flat_t)
                per_sample[m].append(value.view(b, steps))
        for m in metrics:
            scores[m].append(torch.stack(per_sample[m]))
        if progress:
            progress(b)
    results = {}
    for m in metrics:
        s = summarize(torch.cat(scores[m], 1).cpu())
        unit = "SSIM" if m == "ssim" else "dB PSNR"
        results[m] = {"value": float(sum(s["best"]) / len(s["best"])), "stderr": s["stderr"], "applicable": True,
                      "unit": f"{unit} of the best of {samples} sampled futures, mean over {steps} steps",
                      "best_per_step": s["best"], "mean_per_step": s["mean"], "samples": samples,
                      "n": s["sequences"], "context_frames": n_past, "predicted_frames": steps}
    return results
