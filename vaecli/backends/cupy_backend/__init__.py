"""The CuPy backend: every likelihood on CUDA arrays, with analytic gradients.

Implements the interface written in :mod:`vaecli.backends` on CuPy arrays (NumPy
inputs are copied to the device): ``x`` an integer array ``(B, C, H, W)`` of levels
``0 .. L-1``, ``raw`` a float32 or float64 decoder output laid out as
:mod:`vaecli.registry` says (float16 is refused).  Values are nats, ``(B,)``, in
raw's dtype.  Besides the interface, :func:`value_and_grad` returns the analytic
gradient with the value, computed in the same pass, which :mod:`.torch_bridge` uses
to give torch autograd a CuPy implementation.

The heavy likelihoods (the Gaussian family, categorical, logistic and the logistic
mixture) run as fused CUDA kernels (:mod:`.kernels`); the others (student-t,
bernoulli, bitwise) run :mod:`.formulas` on CuPy.  ``cupy`` is imported inside the
functions only, so importing this module never fails on a machine without it;
:func:`available` says whether the backend can run here.

As in the torch backend, the range of ``x`` is not checked on the device (that
would stall the stream): the caller validates the data once.  The categorical
kernel gives NaN for an out-of-range level instead of reading out of bounds.
"""

from __future__ import annotations

from ...errors import VaeError
from . import formulas

NAME = "cupy"
_NO_DEVICE = "no CUDA device is available (cupy.cuda.is_available() is False)"

__all__ = [
    "available",
    "evaluate",
    "gaussian_kl",
    "log_mean_exp",
    "log_pmf",
    "log_prob",
    "mean",
    "sample",
    "value_and_grad",
]


def available():
    """``(True, "")`` when cupy imports and sees a CUDA device, else ``(False, why)``."""
    try:
        import cupy
    except ImportError as exc:
        return False, (
            f"cupy is not installed ({exc}); install cupy-cuda12x or cupy-cuda13x "
            "to match your CUDA"
        )
    try:
        ok = bool(cupy.cuda.is_available())
    except Exception as exc:  # a broken driver or runtime reads as "no device"
        return False, f"{_NO_DEVICE}: {exc}"
    if not ok:
        return False, _NO_DEVICE
    return True, ""


def _cupy():
    """The cupy module, or a VaeError saying why this backend cannot run here."""
    ok, why = available()
    if not ok:
        raise VaeError(f"the cupy backend cannot run here: {why}")
    import cupy

    return cupy


def _on_device(cupy, a):
    return a if isinstance(a, cupy.ndarray) else cupy.asarray(a)


def evaluate(
    name, x, raw, kind="log_prob", *, upstream=None, need_grad=True, use_kernels=True, state=None,
    keep_gradient=False, **opts
):
    """:func:`formulas.evaluate` on CuPy arrays: a :class:`formulas.Evaluation` with
    the value (B,), ``d(sum_b u_b value_b)/d raw`` and, for sigma-learned, the
    per-image ``u_b d value_b / d log_sigma`` (B,).  Fused kernels where there is
    one (``use_kernels=False`` forces the array formulas, for tests); ``state`` and
    ``keep_gradient``: see :func:`kernels.evaluate` (the array formulas ignore them)."""
    cupy = _cupy()
    from . import kernels

    x, raw = _on_device(cupy, x), _on_device(cupy, raw)
    if upstream is not None:
        upstream = _on_device(cupy, upstream)
    if use_kernels and kernels.supports(name):
        return kernels.evaluate(name, x, raw, kind, upstream=upstream, need_grad=need_grad, state=state,
                                keep_gradient=keep_gradient, **opts)
    return formulas.evaluate(
        name,
        x,
        raw,
        kind,
        ns=formulas.cupy_namespace(),
        upstream=upstream,
        need_grad=need_grad,
        check_range=False,
        **opts,
    )


def log_prob(name, x, raw, **opts):
    """log p(x | raw) in nats per image, (B,): the density of y = x/(L-1) for the
    continuous decoders, the PMF for the discrete ones (see vaecli.backends)."""
    return evaluate(name, x, raw, "log_prob", need_grad=False, **opts).value


def log_pmf(name, x, raw, **opts):
    """The discretized PMF of x over the L levels, log in nats per image, (B,)."""
    return evaluate(name, x, raw, "log_pmf", need_grad=False, **opts).value


def value_and_grad(name, x, raw, kind="log_prob", *, upstream=None, **opts):
    """``(value (B,), grad_raw like raw, grad_log_sigma)`` of ``kind`` ("log_prob" or
    "log_pmf"): the gradient is ``d(sum_b u_b value_b)/d raw`` with ``u = upstream``
    (B,) or ones; ``grad_log_sigma`` is the 0-d gradient with respect to the raw
    ``log_sigma`` option of sigma-learned, else None.  student-t's log_pmf has no
    gradient here (VaeError)."""
    ev = evaluate(name, x, raw, kind, upstream=upstream, need_grad=True, **opts)
    g_ls = None if ev.grad_log_sigma is None else ev.grad_log_sigma.sum()
    return ev.value, ev.grad_raw, g_ls


def mean(name, raw, **opts):
    """The decoder's mean picture in [0, 1], (B, C, H, W), raw's dtype."""
    cupy = _cupy()
    return formulas.mean(name, _on_device(cupy, raw), ns=formulas.cupy_namespace(), **opts)


def sample(name, raw, *, generator=None, **opts):
    """Integer levels (B, C, H, W) from the discretized decoder distribution (uint8 for
    n_bits <= 8, else uint16).  ``generator``: a ``cupy.random.Generator``, an int
    seed, or None for a fresh one."""
    cupy = _cupy()
    return formulas.sample(
        name, _on_device(cupy, raw), generator=generator, ns=formulas.cupy_namespace(), **opts
    )


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over latent dims: (B,)."""
    cupy = _cupy()
    return formulas.gaussian_kl(
        _on_device(cupy, mu), _on_device(cupy, logvar), ns=formulas.cupy_namespace()
    )


def log_mean_exp(a, axis=0):
    """log mean_k exp(a_k) along ``axis`` = logsumexp - log K."""
    cupy = _cupy()
    return formulas.log_mean_exp(_on_device(cupy, a), axis, ns=formulas.cupy_namespace())
