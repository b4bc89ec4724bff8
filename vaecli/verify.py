"""Cross-backend numerical verification: likelihood x backend x dtype x kind.

Each case draws fresh seeded inputs that always contain the edge levels 0 and L-1
and extreme parameters (logits at ±100, log-scales far below the floor), evaluates
the backend's value ``(B,)`` and its gradient with respect to the raw decoder output
(and to ``log_sigma`` for sigma-learned), and compares them with the float64 NumPy
reference: values directly, gradients against central finite differences of the
reference.  Used by ``vae verify`` and by the equivalence tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from . import registry
from .errors import VaeError

KINDS = ("log_prob", "log_pmf")
DTYPES = ("float32", "float64")

# Shapes of the verification inputs: small enough for finite differences of the
# reference, large enough to hold every edge case.
VERIFY_BATCH = 3
VERIFY_SIZE = 5
VERIFY_MIXTURES = 3
EXTREME_LOGIT = 100.0  # logits at ±100: sigmoid is exactly 0 or 1 in float32
BELOW_FLOOR = -100.0  # a raw log-scale far below the softclip floor
EXTREME_FRACTION = 0.2  # share of raw entries set to an extreme value

# Tolerances tied to the dtype.  Values: per-image sums compared elementwise with
# rtol, plus atol per dimension summed.  Gradients: rtol elementwise plus an atol
# relative to the largest reference gradient of the case (finite differences of
# the reference are themselves accurate to about 1e-8 of that scale).
TOLERANCES = {
    "float64": {"value_rtol": 1e-9, "value_atol_per_dim": 1e-9, "grad_rtol": 1e-6, "grad_atol_scale": 1e-6},
    "float32": {"value_rtol": 1e-5, "value_atol_per_dim": 1e-5, "grad_rtol": 1e-3, "grad_atol_scale": 1e-4},
}
# Relative central-difference steps of the reference gradient: per-pixel terms are
# small, so a small step; sigma's batch sum is large (rounding ~ eps*|sum|/step), so
# a larger one (truncation ~ step^2 stays far below the tolerances).
FD_STEP = 1e-6
FD_STEP_BATCH = 1e-5

# Pairs whose gradient the cupy backend does not provide (an evaluation metric only:
# the t CDF's derivative in df needs the incomplete beta's parameter derivative).
CUPY_VALUE_ONLY = {("student-t", "log_pmf")}


@dataclass
class Result:
    likelihood: str
    backend: str
    device: str
    dtype: str
    kind: str
    channels: int
    seed: int
    value_max_abs: float
    value_max_rel: float
    grad_max_abs: float
    grad_max_rel: float
    passed: bool
    message: str = ""

    def to_dict(self):
        return asdict(self)


# ----------------------------------------------------------------------- inputs


def _raw_roles(name, channels, n_bits, mixtures):
    """Role of each raw channel: 'logit' (extremes ±100), 'log_scale' (extreme far
    below the floor), 'loc' (a location on the [0, 1] scale, extremes ±100)."""
    if name == "logistic-mixture":
        k, c = mixtures, channels
        roles = ["logit"] * k + ["loc"] * (k * c) + ["log_scale"] * (k * c)
        return roles + (["logit"] * (3 * k) if c == 3 else [])
    if name in ("categorical", "bitwise"):
        return ["logit"] * registry.out_channels(name, channels, n_bits)
    by_param = {"mu": "logit", "logit": "logit", "log_sigma": "log_scale", "log_scale": "log_scale", "df": "logit"}
    if name == "logistic":
        by_param = dict(by_param, mu="loc")
    return [by_param[p] for p in registry.info(name).params for _ in range(channels)]


def make_inputs(name, seed, channels=1, n_bits=8, mixtures=VERIFY_MIXTURES,
                batch=VERIFY_BATCH, size=VERIFY_SIZE, extremes=True):
    """Seeded inputs for one case: (x uint8/int32 (B,C,H,W), raw float64, options).
    With ``extremes`` a share of the raw entries is set to extreme values."""
    rng = np.random.default_rng(seed)
    levels = registry.num_levels(n_bits)
    x = rng.integers(0, levels, size=(batch, channels, size, size))
    # edge levels always present, in every channel, and a pixel where every channel is at an edge
    x[0, :, 0, 0] = 0
    x[0, :, 0, 1] = levels - 1
    x[-1, :, -1, -1] = levels - 1
    x[:, 0, 1, 0] = 0
    x = x.astype(np.uint8 if levels <= 256 else np.int32)

    roles = _raw_roles(name, channels, n_bits, mixtures)
    raw = rng.normal(0.0, 2.0, size=(batch, len(roles), size, size))
    for j, role in enumerate(roles):
        if role == "loc":
            raw[:, j] = rng.uniform(-0.2, 1.2, size=(batch, size, size))
        extreme = rng.random((batch, size, size)) < (EXTREME_FRACTION if extremes else 0.0)
        if role == "log_scale":
            raw[:, j][extreme] = BELOW_FLOOR
        else:
            raw[:, j][extreme] = rng.choice([-EXTREME_LOGIT, EXTREME_LOGIT], size=int(extreme.sum()))
    options = {"n_bits": n_bits}
    if name == "logistic-mixture":
        options["mixtures"] = mixtures
    if name == "sigma-learned":
        options["log_sigma"] = np.float64(rng.normal(-2.0, 1.0))
    if name == "gaussian":
        options["sigma"] = float(np.exp(rng.uniform(-3.0, 0.0)))
    return x, raw, options


# -------------------------------------------------------------- reference oracle


def reference_value_and_grad(name, kind, x, raw, options):
    """The reference value (B,) and central-difference gradients of its batch sum
    with respect to raw (and to log_sigma for sigma-learned)."""
    from . import reference

    fn = getattr(reference, kind)
    value = fn(name, x, raw, **options)
    separable = registry.info(name).separable
    step = FD_STEP_BATCH if separable == "batch" else FD_STEP
    grad = np.zeros_like(raw)
    h = step * np.maximum(1.0, np.abs(raw))
    if separable == "pixel":
        terms = getattr(reference, kind + "_terms")
        for j in range(raw.shape[1]):  # perturb channel j at every pixel at once
            up, down = raw.copy(), raw.copy()
            up[:, j] += h[:, j]
            down[:, j] -= h[:, j]
            grad[:, j] = (terms(name, x, up, **options) - terms(name, x, down, **options)) / (2 * h[:, j])
    else:  # sigma-image couples the pixels of an image, sigma the whole batch
        per_image = separable == "image"
        shape = raw.shape[1:] if per_image else raw.shape
        for index in np.ndindex(*shape):
            sl = ((slice(None),) + index) if per_image else index
            up, down = raw.copy(), raw.copy()
            up[sl] += h[sl]
            down[sl] -= h[sl]
            diff = fn(name, x, up, **options) - fn(name, x, down, **options)
            grad[sl] = (diff if per_image else diff.sum()) / (2 * h[sl])
    grad_log_sigma = None
    if "log_sigma" in options:
        t = float(options["log_sigma"])
        d = step * max(1.0, abs(t))
        up = fn(name, x, raw, **dict(options, log_sigma=np.float64(t + d))).sum()
        down = fn(name, x, raw, **dict(options, log_sigma=np.float64(t - d))).sum()
        grad_log_sigma = (up - down) / (2 * d)
    return value, grad, grad_log_sigma


# ------------------------------------------------------------------- backends


def _torch_value_and_grad(name, kind, x, raw, options, dtype, device):
    import torch

    from .backends import torch_backend

    tdtype = getattr(torch, dtype)
    x_t = torch.as_tensor(x, device=device)
    raw_t = torch.tensor(raw, dtype=tdtype, device=device, requires_grad=True)
    opts = dict(options)
    leaves = [raw_t]
    if "log_sigma" in opts:
        opts["log_sigma"] = torch.tensor(float(opts["log_sigma"]), dtype=tdtype, device=device, requires_grad=True)
        leaves.append(opts["log_sigma"])
    value = getattr(torch_backend, kind)(name, x_t, raw_t, **opts)
    grads = torch.autograd.grad(value.sum(), leaves)
    if value.dtype != tdtype:
        raise AssertionError(f"torch backend returned {value.dtype} for {dtype} input")
    to_np = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    return to_np(value), to_np(grads[0]), (float(grads[1]) if len(grads) > 1 else None)


def _cupy_value_and_grad(name, kind, x, raw, options, dtype, device):
    import cupy

    from .backends import cupy_backend

    x_c = cupy.asarray(x)
    raw_c = cupy.asarray(raw, dtype=dtype)
    opts = dict(options)
    if "log_sigma" in opts:
        opts["log_sigma"] = cupy.asarray(opts["log_sigma"], dtype=dtype)
    if (name, kind) in CUPY_VALUE_ONLY:
        value = getattr(cupy_backend, kind)(name, x_c, raw_c, **opts)
        grad = grad_log_sigma = None
    else:
        value, grad, grad_log_sigma = cupy_backend.value_and_grad(name, x_c, raw_c, kind=kind, **opts)
    if value.dtype != np.dtype(dtype):
        raise AssertionError(f"cupy backend returned {value.dtype} for {dtype} input")
    return (
        cupy.asnumpy(value).astype(np.float64),
        None if grad is None else cupy.asnumpy(grad).astype(np.float64),
        None if grad_log_sigma is None else float(grad_log_sigma),
    )


def device_unavailable(backend, device):
    """None if (backend, device) can run here, else the reason it cannot."""
    if backend == "cupy":
        from .backends import get_backend

        ok, why = get_backend("cupy").available()
        return None if ok else why
    if backend == "torch" and device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device is available (torch.cuda.is_available() is False)"
    return None


# ------------------------------------------------------------------ comparison


def _errors(actual, expected, rtol, atol):
    diff = np.abs(np.asarray(actual, float) - np.asarray(expected, float))
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max(float(np.abs(expected).max()), np.finfo(float).tiny) if diff.size else 0.0
    finite = bool(np.all(np.isfinite(actual)))
    ok = finite and bool(np.all(diff <= atol + rtol * np.abs(expected)))
    return max_abs, max_rel, ok, finite


def compare(actual, expected, dtype, num_dims):
    """(value_ok, grad_ok, stats) for backend output against the reference output;
    each is (value (B,), grad_raw, grad_log_sigma or None)."""
    tol = TOLERANCES[dtype]
    v_abs, v_rel, v_ok, v_finite = _errors(
        actual[0], expected[0], tol["value_rtol"], tol["value_atol_per_dim"] * num_dims
    )
    if actual[1] is None:  # value only
        return v_ok, True, (v_abs, v_rel, math.nan, math.nan, v_finite)
    g_act = np.concatenate([actual[1].ravel(), np.atleast_1d(actual[2] if actual[2] is not None else [])])
    g_ref = np.concatenate([expected[1].ravel(), np.atleast_1d(expected[2] if expected[2] is not None else [])])
    scale = max(1.0, float(np.abs(g_ref).max()))
    g_abs, g_rel, g_ok, g_finite = _errors(g_act, g_ref, tol["grad_rtol"], tol["grad_atol_scale"] * scale)
    return v_ok, g_ok, (v_abs, v_rel, g_abs, g_rel, v_finite and g_finite)


def run_case(name, backend, kind, dtype, seed, channels=1, device="cpu", reference_cache=None):
    """Verify one case and return a :class:`Result`."""
    x, raw, options = make_inputs(name, seed, channels)
    key = (name, kind, seed, channels)
    if reference_cache is not None and key in reference_cache:
        expected = reference_cache[key]
    else:
        expected = reference_value_and_grad(name, kind, x, raw, options)
        if reference_cache is not None:
            reference_cache[key] = expected
    run = _torch_value_and_grad if backend == "torch" else _cupy_value_and_grad
    try:
        actual = run(name, kind, x, raw, options, dtype, device)
    except VaeError as exc:
        return Result(name, backend, device, dtype, kind, channels, seed, math.nan, math.nan,
                      math.nan, math.nan, False, str(exc))
    v_ok, g_ok, (v_abs, v_rel, g_abs, g_rel, finite) = compare(actual, expected, dtype, x[0].size)
    message = "" if finite else "non-finite output"
    if actual[1] is None:
        message = "value only: no gradient on this backend"
    return Result(name, backend, device, dtype, kind, channels, seed, v_abs, v_rel, g_abs, g_rel,
                  v_ok and g_ok, message)


def cases(likelihoods, kinds=KINDS, channels=(1, 3)):
    """The (likelihood, kind, channels) combinations worth checking: log_pmf only
    where it differs from log_prob, and none for sigma-image's PMF (not applicable)."""
    for name in likelihoods:
        info = registry.info(name)
        for kind in kinds:
            if kind == "log_pmf" and (not info.continuous or name == "sigma-image"):
                continue  # equals log_prob (discrete decoders), or not applicable
            if kind == "log_pmf" and name == "bernoulli":
                continue
            for c in channels:
                yield name, kind, c


def verify(likelihoods, backends, dtypes, device="cpu", seed=0, kinds=KINDS, channels=(1, 3),
           progress=None):
    """Run the matrix; returns (results, skipped) where skipped maps backend to why."""
    results, skipped, cache = [], {}, {}
    for backend in backends:
        why = device_unavailable(backend, "cuda" if backend == "cupy" else device)
        if why:
            skipped[backend] = why
            continue
        dev = "cuda" if backend == "cupy" else device
        for name, kind, c in cases(likelihoods, kinds, channels):
            for dtype in dtypes:
                results.append(run_case(name, backend, kind, dtype, seed, c, dev, cache))
                if progress:
                    progress()
    return results, skipped
