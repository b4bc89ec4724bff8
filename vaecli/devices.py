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


def available_bytes(device) -> int | None:
    """Memory a new allocation on ``device`` can take now: free GPU memory, or the
    host's available memory (Linux /proc/meminfo); None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(need: int, device, what: str, parts: str = ""):
    """Refuse, in one line, a request whose estimated memory exceeds what the device has."""
    free = available_bytes(device)
    if free is not None and need > free:
        detail = f" ({parts})" if parts else ""
        raise VaeError(f"{what} needs about {size_text(need)}{detail}, but {device} has {size_text(free)} available; "
                       "ask for less")


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
