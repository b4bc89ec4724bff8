"""Training: the loop (loop.py), the captured step (step.py), checkpoint and resume
(state.py), data-parallel processes (distributed.py) and signals (interrupt.py).  The
sigma-VAE's evaluation sigmas are computed by vaecli.calibration."""

from .loop import train

__all__ = ["train"]
