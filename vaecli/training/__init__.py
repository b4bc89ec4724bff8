"""Training: the loop (loop.py), the captured step (step.py), checkpoint and resume
(state.py), data-parallel processes (distributed.py), signals (interrupt.py) and the
sigma-VAE's evaluation sigmas (calibration.py)."""

from .loop import train

__all__ = ["train"]
