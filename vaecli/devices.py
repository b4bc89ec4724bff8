"""Which device a command runs on: auto, cpu, cuda or cuda:N, checked."""

from __future__ import annotations

import torch

from .errors import VaeError


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N as a torch device; anything else is one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    if name not in ("cpu", "cuda") and not (index is not None and index.isdigit()):
        raise VaeError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VaeError(f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False)")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise VaeError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)
