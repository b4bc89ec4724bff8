"""An exponential moving average of the weights, updated on the device after each step.

Hierarchical VAEs evaluate and sample far better from an average of recent weights
than from the last step's (VDVAE and NVAE both do so).  The average skips the steps
the optimizer skipped (non-finite or over --grad-skip), so it never takes in weights a
skipped step would have left unchanged anyway, and it reads nothing back to the host:
it can run inside a captured CUDA graph.
"""

from __future__ import annotations

import torch


class WeightAverage:
    """shadow <- shadow + (1 - d_t) (weights - shadow) after the t-th step taken, with
    d_t = min(decay, (1 + t) / (10 + t)): early on the average follows the weights
    closely (at 0.999 from the start it would hold the initial weights for thousands of
    steps, longer than a CPU run), later it averages over about 1 / (1 - decay) steps."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.names = [name for name, p in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        device = self.params[0].device
        self.steps = torch.zeros((), dtype=torch.float64, device=device)  # steps taken so far
        self._zero = torch.zeros((), dtype=torch.float32, device=device)

    def update(self, ok: torch.Tensor):
        """After an optimizer step; ``ok`` (a device bool) says whether it was taken."""
        with torch.no_grad():
            self.steps.add_(ok.to(self.steps.dtype))
            warm = (1.0 + self.steps) / (10.0 + self.steps)
            rate = torch.where(ok, 1.0 - torch.clamp(warm, max=self.decay).float(), self._zero)
            diffs = torch._foreach_sub([p.detach() for p in self.params], self.shadow)
            torch._foreach_mul_(diffs, rate)
            torch._foreach_add_(self.shadow, diffs)

    def state(self) -> dict:
        """name -> array, for the run file (the steps taken go with the optimizer's count)."""
        return {name: t.detach().cpu().numpy() for name, t in zip(self.names, self.shadow)}

    def load(self, arrays: dict, steps: float = 0.0):
        with torch.no_grad():
            for name, t in zip(self.names, self.shadow):
                t.copy_(torch.from_numpy(arrays[name]))
            self.steps.fill_(steps)

    def swapped_in(self, model):
        """A context in which ``model``'s parameters hold the average (evaluation, sampling)."""
        return _Swap(self)


class _Swap:
    def __init__(self, average: WeightAverage):
        self.average = average

    def __enter__(self):
        with torch.no_grad():
            self.saved = [p.detach().clone() for p in self.average.params]
            for p, s in zip(self.average.params, self.average.shadow):
                p.copy_(s)

    def __exit__(self, *exc):
        with torch.no_grad():
            for p, s in zip(self.average.params, self.saved):
                p.copy_(s)
        return False
