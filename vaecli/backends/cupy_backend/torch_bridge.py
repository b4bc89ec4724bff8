"""Torch autograd over the CuPy backend: likelihoods of torch CUDA tensors computed
by the fused kernels, with gradients for training.

``log_prob(name, x, raw, **opts)`` and ``log_pmf(...)`` take torch CUDA tensors
(``x`` integer levels ``(B, C, H, W)``, ``raw`` float32/float64 decoder output that
may require grad; for sigma-learned the option ``log_sigma`` is a torch scalar tensor,
the model's parameter) and return a ``(B,)`` tensor of nats in raw's dtype, attached
to the autograd graph.  The options are those of :mod:`vaecli.backends`.

How: a :class:`torch.autograd.Function` hands the tensors to CuPy without a copy
through DLPack and runs :func:`vaecli.backends.cupy_backend.evaluate` on torch's
current CUDA stream, with CuPy's allocations taken from torch's caching allocator (one
memory pool, and the work can be captured in a torch CUDA graph, whose private pool
then holds it).  How backward gets the gradient is chosen per likelihood
(:data:`GRADIENT`): kept from forward and scaled by the upstream ``(B,)`` weights
(every likelihood is separable by image); recomputed in backward with the weights
inside the kernel (categorical, and ``sigma`` with a batch sigma, which couples the
images); or, for the logistic mixture, kept unscaled by forward's one pass over raw and
scaled in a kernel.  torch and cupy are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable

from ... import registry
from ...errors import VaeError

_FUNCTION = None  # the autograd.Function, made on first use (torch is imported then)
_ALLOCATOR = None  # CuPy allocations from torch's caching allocator, made on first use
# How backward gets the gradient, by likelihood (default "keep"):
#   keep:      forward computes value and gradient; backward scales the kept gradient
#              by the upstream weights (a torch multiply)
#   recompute: forward computes the value only; backward runs the gradient kernel with
#              the weights inside it (raw read twice, the gradient written once)
#   defer:     forward's one pass over raw also keeps the unscaled gradient; backward
#              scales it in a kernel (the mixture's kernels; for the others, recompute)
# On an H200 (B=128, 3x32x32, in a CUDA graph) recompute made categorical 0.855 ->
# 0.831 ms, but logistic 0.021 -> 0.031 and gaussian-pixel 0.022 -> 0.033 ms: their raw
# is small and their maths is the cost.  The mixture's recompute measured 0.219 ms; it
# is bound by arithmetic, which defer does once instead of twice (not yet measured:
# benchmarks/likelihood_speed.py times both).
GRADIENT = {"categorical": "recompute", "logistic-mixture": "defer"}
POLICIES = ("keep", "recompute", "defer")


def log_prob(name, x, raw, **opts):
    """log p(x | raw) per image (B,) with autograd: see vaecli.backends."""
    return _apply(name, "log_prob", x, raw, opts)


def log_pmf(name, x, raw, **opts):
    """The discretized PMF of x, log per image (B,) with autograd."""
    return _apply(name, "log_pmf", x, raw, opts)


@dataclass(frozen=True)
class Engine:
    """Where the bridge computes: zero-copy conversions between torch tensors and
    arrays, a context that puts the array work on torch's stream, and the
    ``evaluate(name, x, raw, kind, *, upstream, need_grad, **opts)`` that runs it.
    :func:`cupy_engine` is the real one; tests run the same autograd logic on the CPU
    with a NumPy engine."""

    to_array: Callable
    to_torch: Callable
    stream: Callable  # device -> context manager
    evaluate: Callable


def cupy_engine() -> Engine:
    from . import evaluate

    return Engine(_to_cupy, _to_torch, _torch_stream, evaluate)


def _apply(name, kind, x, raw, opts, engine=None):
    import torch

    # the options contract every backend shares, before any device work; a log_sigma
    # tensor is read to check it only on the CPU (on a device that would stall the stream)
    registry.parse_options(name, opts, read_scalar=_read_cpu_scalar)
    if not isinstance(raw, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise VaeError(f"{name}: the cupy torch bridge takes torch tensors x and raw")
    if engine is None and (raw.device.type != "cuda" or x.device != raw.device):
        raise VaeError(
            f"{name}: the cupy torch bridge needs x and raw on the same CUDA device, "
            f"got x on {x.device} and raw on {raw.device}"
        )
    if raw.dtype not in (torch.float32, torch.float64):
        raise VaeError(
            f"{name}: likelihoods compute in float32 or float64, got raw of dtype "
            f"{raw.dtype} (cast it with raw.float())"
        )
    opts = dict(opts)
    log_sigma = opts.pop("log_sigma", None)
    if log_sigma is not None and not isinstance(log_sigma, torch.Tensor):
        log_sigma = torch.as_tensor(log_sigma, dtype=raw.dtype, device=raw.device)
    if log_sigma is not None and log_sigma.device != raw.device:
        raise VaeError(f"{name}: log_sigma is on {log_sigma.device} but raw is on {raw.device}")
    engine = engine or cupy_engine()
    return _function().apply(x, raw, log_sigma, name, kind, tuple(sorted(opts.items())), engine)


def _read_cpu_scalar(value):
    """A 0-d log_sigma as a float where reading it costs no device sync, else None."""
    import torch

    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.device.type == "cpu" else None
    return float(value) if type(value).__module__.split(".")[0] == "numpy" else None


def _torch_allocator():
    """A CuPy allocator drawing from torch's caching allocator on torch's current
    stream: inside a CUDA graph capture that is the graph's private pool."""
    global _ALLOCATOR
    if _ALLOCATOR is None:
        import cupy
        import torch

        def malloc(size, device_id):
            return torch.cuda.caching_allocator_alloc(size, device_id, torch.cuda.current_stream(device_id))

        def free(ptr, device_id):
            torch.cuda.caching_allocator_delete(ptr)

        _ALLOCATOR = cupy.cuda.memory.PythonFunctionAllocator(malloc, free).malloc
    return _ALLOCATOR


@contextlib.contextmanager
def _torch_stream(device):
    """Make CuPy work on torch's current CUDA stream of ``device`` (and that device),
    with its memory from torch's allocator."""
    import cupy
    import torch

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.using_allocator(_torch_allocator()):
        if hasattr(cupy.cuda, "ExternalStream"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # CuPy 14 deprecates it
                external = cupy.cuda.ExternalStream(stream.cuda_stream, device.index)
        else:  # CuPy >= 15: the CUDA stream protocol
            external = cupy.cuda.Stream.from_external(stream)
        with external:
            yield


def _to_cupy(tensor):
    import cupy

    return cupy.from_dlpack(tensor.detach())


def _to_torch(array):
    import torch

    return torch.from_dlpack(array)


def _with_log_sigma(engine, opts, log_sigma):
    """The evaluate options, with the model's log sigma as a 0-d array if there is one."""
    extra = dict(opts)
    if log_sigma is not None:
        extra["log_sigma"] = engine.to_array(log_sigma).reshape(())
    return extra


def _function():
    global _FUNCTION
    if _FUNCTION is not None:
        return _FUNCTION
    import torch
    from torch.autograd.function import once_differentiable

    class CupyLikelihood(torch.autograd.Function):
        """value = likelihood(x, raw[, log_sigma]); gradients from the CuPy pass."""

        @staticmethod
        def forward(ctx, x, raw, log_sigma, name, kind, opts_items, engine):
            opts = dict(opts_items)
            want_raw = ctx.needs_input_grad[1]
            want_ls = log_sigma is not None and ctx.needs_input_grad[2]
            # how backward gets the gradient: see GRADIENT (sigma with a batch sigma
            # couples the images, so it needs the upstream weights in the kernel)
            coupled = name == "sigma" and opts.get("sigma") is None
            policy = "recompute" if coupled else GRADIENT.get(name, "keep")
            wants = want_raw or want_ls
            need_grad = wants and policy == "keep"
            ctx.name, ctx.kind, ctx.opts, ctx.from_state = name, kind, opts, policy != "keep"
            ctx.engine = engine
            ctx.grad_raw = ctx.grad_log_sigma = ctx.state = None
            ctx.log_sigma_meta = None if log_sigma is None else (log_sigma.shape, log_sigma.dtype)
            extra = {"keep_gradient": True} if wants and policy == "defer" else {}
            e = engine
            with e.stream(raw.device):
                ev = e.evaluate(name, e.to_array(x), e.to_array(raw), kind, need_grad=need_grad,
                                **extra, **_with_log_sigma(e, opts, log_sigma))
                value = e.to_torch(ev.value)
                if need_grad:
                    ctx.grad_raw = e.to_torch(ev.grad_raw)
                    if ev.grad_log_sigma is not None:
                        ctx.grad_log_sigma = e.to_torch(ev.grad_log_sigma)  # (B,)
            if wants and policy != "keep":
                ctx.state = ev.state  # the engine's arrays, opaque here (None for most)
                ctx.save_for_backward(x, raw, log_sigma)
            return value

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_value):
            g = grad_value.reshape(-1)
            grad_raw = grad_ls = None
            if ctx.from_state:
                x, raw, log_sigma = ctx.saved_tensors
                g = g.to(raw.dtype).contiguous()
                e = ctx.engine
                # every conversion inside the stream context: CuPy hands its current
                # stream to DLPack, and outside it that is the legacy default stream,
                # which a CUDA graph capture refuses
                with e.stream(raw.device):
                    ev = e.evaluate(ctx.name, e.to_array(x), e.to_array(raw), ctx.kind,
                                    upstream=e.to_array(g), need_grad=True, state=ctx.state,
                                    **_with_log_sigma(e, ctx.opts, log_sigma))
                    grad_raw = e.to_torch(ev.grad_raw)
                    if ev.grad_log_sigma is not None and ctx.needs_input_grad[2]:
                        shape, dtype = ctx.log_sigma_meta
                        grad_ls = e.to_torch(ev.grad_log_sigma).sum().to(dtype).reshape(shape)
            elif ctx.grad_raw is not None:
                g = g.to(ctx.grad_raw.dtype)
                grad_raw = ctx.grad_raw * g.view(-1, 1, 1, 1)
                if ctx.grad_log_sigma is not None and ctx.needs_input_grad[2]:
                    shape, dtype = ctx.log_sigma_meta
                    grad_ls = (ctx.grad_log_sigma * g).sum().to(dtype).reshape(shape)
            if not ctx.needs_input_grad[1]:
                grad_raw = None
            return None, grad_raw, grad_ls, None, None, None, None

    _FUNCTION = CupyLikelihood
    return _FUNCTION
