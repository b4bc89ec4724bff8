"""The CuPy backend on a GPU: fused kernels and the array formulas on CuPy arrays, and
the torch bridge, against the NumPy formulas (which tests/test_cupy_formulas_cpu.py
checks against the float64 reference, finite differences and torch autograd) and
against the reference itself.

Skipped, with the reason, unless cupy imports and sees a CUDA device; the torch
bridge tests also need torch with CUDA.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fakes import cupy_device
from vaecli import registry
from vaecli.backends.cupy_backend import formulas
from vaecli.errors import VaeError


cupy, _WHY = cupy_device()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(cupy is None, reason=f"the cupy GPU tests need a CUDA device: {_WHY}"),
]


def _cpu_tests():
    """The CPU test module (its input maker and settings), loaded by path so that it
    works under any pytest import mode."""
    path = Path(__file__).with_name("test_cupy_formulas_cpu.py")
    spec = importlib.util.spec_from_file_location("_cupy_cpu_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CPU = _cpu_tests()
NAMES = registry.NAMES
KINDS = ("log_prob", "log_pmf")
B = CPU.B
SEED = 0

# GPU against float64 NumPy on the same (rounded) inputs.  float32 bounds are a few
# times what NumPy float32 reaches on the CPU (GPU libm differs by an ulp or two, and
# CuPy compiles with -ftz=true); a wrong formula is off by far more.
VALUE_TOL = {np.float64: (1e-9, 1e-8), np.float32: (5e-5, 5e-5)}  # (rtol, atol)
GRAD_TOL = {np.float64: (1e-7, 1e-9), np.float32: (1e-2, 1e-4)}  # atol is x max|grad|

CASES = [
    pytest.param(name, kind, c, np.dtype(dt).type, id=f"{name}-{kind}-C{c}-{dt}-seed{SEED}")
    for name in NAMES
    for kind in KINDS
    for c in (1, 3)
    for dt in ("float64", "float32")
]


def _backend():
    from vaecli.backends import get_backend

    return get_backend("cupy")


def _inputs(name, channels, dtype):
    x, raw = CPU.make_inputs(name, channels, SEED)
    raw = raw.astype(dtype)  # the GPU computes at these rounded values
    u = np.random.default_rng(6000).normal(size=B).astype(dtype)
    return x, raw, u


def _want(name, kind, x, raw, u, **opts):
    """The float64 NumPy formulas at raw's values."""
    need = CPU._has_grad(name, kind)
    return formulas.evaluate(
        name, x, raw.astype(np.float64), kind, ns=formulas.numpy_namespace(),
        upstream=u.astype(np.float64), need_grad=need, **opts,
    )  # fmt: skip


def _check_value(got, want, dtype):
    rtol, atol = VALUE_TOL[dtype]
    got = cupy.asnumpy(got) if isinstance(got, cupy.ndarray) else np.asarray(got)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _check_grad(got, want, dtype):
    rtol, atol = GRAD_TOL[dtype]
    got = cupy.asnumpy(got) if isinstance(got, cupy.ndarray) else np.asarray(got)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got))
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


def test_available():
    assert _backend().available() == (True, "")


# --------------------------------------------------------------- the cupy backend


@pytest.mark.parametrize("name, kind, channels, dtype", CASES)
def test_backend_matches_formulas_and_reference(name, kind, channels, dtype):
    backend = _backend()
    x, raw, u = _inputs(name, channels, dtype)
    opts = CPU._opts(name)
    x_d, raw_d, u_d = cupy.asarray(x), cupy.asarray(raw), cupy.asarray(u)
    want = _want(name, kind, x, raw, u, **opts)

    value = getattr(backend, kind)(name, x_d, raw_d, **opts)
    assert isinstance(value, cupy.ndarray) and value.dtype == dtype and value.shape == (B,)
    _check_value(value, want.value, dtype)
    ref = getattr(CPU._ref(), kind)(name, x, raw.astype(np.float64), **opts)
    _check_value(value, ref, dtype)

    if not CPU._has_grad(name, kind):
        with pytest.raises(VaeError, match="evaluation metric only"):
            backend.value_and_grad(name, x_d, raw_d, kind, **opts)
        return
    v, g, g_ls = backend.value_and_grad(name, x_d, raw_d, kind, upstream=u_d, **opts)
    assert g.dtype == dtype and isinstance(g, cupy.ndarray)
    _check_value(v, want.value, dtype)
    _check_grad(g, want.grad_raw, dtype)
    if name == "sigma-learned":
        assert g_ls.shape == ()
        _check_grad(g_ls.reshape(1), want.grad_log_sigma.sum().reshape(1), dtype)
    else:
        assert g_ls is None


@pytest.mark.parametrize(
    "name, kind, channels, dtype",
    [c for c in CASES if c.values[0] in ("gaussian", "gaussian-pixel", "sigma-learned", "sigma",
                                         "sigma-image", "categorical", "logistic",
                                         "logistic-mixture")],
)  # fmt: skip
def test_fused_kernels_match_formulas_on_cupy(name, kind, channels, dtype):
    """The fused kernels against the array formulas, both on the GPU."""
    backend = _backend()
    x, raw, u = _inputs(name, channels, dtype)
    opts = CPU._opts(name)
    args = (name, cupy.asarray(x), cupy.asarray(raw), kind)
    fused = backend.evaluate(*args, upstream=cupy.asarray(u), **opts)
    plain = backend.evaluate(*args, upstream=cupy.asarray(u), use_kernels=False, **opts)
    _check_value(fused.value, cupy.asnumpy(plain.value).astype(np.float64), dtype)
    _check_grad(fused.grad_raw, cupy.asnumpy(plain.grad_raw).astype(np.float64), dtype)


@pytest.mark.parametrize("name", ["categorical", "logistic-mixture", "sigma", "gaussian-pixel"])
def test_grid_stride_loops(name, monkeypatch):
    """Fewer blocks than work items: the grid-stride loops cover the rest."""
    from vaecli.backends.cupy_backend import kernels

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(2, 3, 24, 24)).astype(np.uint8)
    raw = rng.normal(size=(2, registry.out_channels(name, 3), 24, 24))
    x_d, raw_d = cupy.asarray(x), cupy.asarray(raw)
    full = _backend().evaluate(name, x_d, raw_d, "log_pmf")
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 2)
    strided = _backend().evaluate(name, x_d, raw_d, "log_pmf")
    cupy.testing.assert_allclose(strided.value, full.value, rtol=1e-13)
    cupy.testing.assert_allclose(strided.grad_raw, full.grad_raw, rtol=1e-12, atol=1e-14)


def test_empty_batch():
    x = cupy.zeros((0, 3, 4, 4), dtype=cupy.uint8)
    raw = cupy.zeros((0, 6, 4, 4), dtype=cupy.float32)
    v, g, _ = _backend().value_and_grad("logistic", x, raw)
    assert v.shape == (0,) and g.shape == raw.shape


def test_refuses_half_precision():
    x, raw = CPU.make_inputs("logistic", 1, 0)
    with pytest.raises(VaeError, match="float32 or float64"):
        _backend().log_prob("logistic", cupy.asarray(x), cupy.asarray(raw.astype(np.float16)))


@pytest.mark.parametrize("name", NAMES)
def test_mean_sample_on_gpu(name):
    backend = _backend()
    _, raw = CPU.make_inputs(name, 3, 5)
    opts = CPU._opts(name, sigma=0.05) if name in ("sigma", "sigma-image") else CPU._opts(name)
    for dtype in (np.float64, np.float32):
        raw_d = cupy.asarray(raw.astype(dtype))
        m = backend.mean(name, raw_d, **opts)
        assert isinstance(m, cupy.ndarray) and m.dtype == dtype
        want = CPU._ref().mean(name, raw.astype(dtype).astype(np.float64), **opts)
        np.testing.assert_allclose(cupy.asnumpy(m), want, rtol=VALUE_TOL[dtype][0], atol=1e-6)
        a = backend.sample(name, raw_d, generator=cupy.random.default_rng(0), **opts)
        b = backend.sample(name, raw_d, generator=cupy.random.default_rng(0), **opts)
        assert isinstance(a, cupy.ndarray) and a.dtype == np.uint8 and a.shape == m.shape
        cupy.testing.assert_array_equal(a, b)


def test_latent_terms_on_gpu():
    backend = _backend()
    rng = np.random.default_rng(8)
    mu, logvar = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    got = backend.gaussian_kl(cupy.asarray(mu), cupy.asarray(logvar))
    np.testing.assert_allclose(cupy.asnumpy(got), CPU._ref().gaussian_kl(mu, logvar), rtol=1e-12)
    a = rng.normal(scale=50.0, size=(5, 4))
    got = backend.log_mean_exp(cupy.asarray(a), 1)
    np.testing.assert_allclose(cupy.asnumpy(got), CPU._ref().log_mean_exp(a, 1), rtol=1e-12)


# ------------------------------------------------------------------ the torch bridge


def _torch_cuda():
    try:
        import torch
    except ImportError as exc:
        pytest.skip(f"torch is not installed ({exc})")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device (torch.cuda.is_available() is False)")
    return torch


def _bridge():
    return importlib.import_module("vaecli.backends.cupy_backend.torch_bridge")


@pytest.mark.parametrize("name, kind, channels, dtype", CASES)
def test_torch_bridge_autograd(name, kind, channels, dtype):
    torch = _torch_cuda()
    bridge = _bridge()
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    x, raw, u = _inputs(name, channels, dtype)
    opts = CPU._opts(name)
    want = _want(name, kind, x, raw, u, **opts)
    x_t = torch.from_numpy(x).cuda()
    grad_wanted = CPU._has_grad(name, kind)
    raw_t = torch.tensor(raw, dtype=tdtype, device="cuda", requires_grad=grad_wanted)
    topts = dict(opts)
    if name == "sigma-learned":
        ls_t = torch.tensor(CPU.LOG_SIGMA, dtype=tdtype, device="cuda", requires_grad=True)
        topts["log_sigma"] = ls_t
    value = getattr(bridge, kind)(name, x_t, raw_t, **topts)
    assert value.dtype == tdtype and value.shape == (B,) and value.device == raw_t.device
    _check_value(value.detach().cpu().numpy(), want.value, dtype)
    if not grad_wanted:
        with pytest.raises(VaeError, match="evaluation metric only"):
            raw_t.requires_grad_(True)
            getattr(bridge, kind)(name, x_t, raw_t, **topts)
        return
    u_t = torch.tensor(u, dtype=tdtype, device="cuda")
    (value * u_t).sum().backward()
    _check_grad(raw_t.grad.cpu().numpy(), want.grad_raw, dtype)
    if name == "sigma-learned":
        got_ls = np.asarray([float(ls_t.grad)])
        _check_grad(got_ls, want.grad_log_sigma.sum().reshape(1), dtype)


@pytest.mark.parametrize("name", ["sigma", "logistic-mixture"])
def test_torch_bridge_twice_backward_and_side_stream(name):
    """The same graph input in two terms (gradients add), and work on a non-default
    torch stream (the CuPy work follows torch's current stream)."""
    torch = _torch_cuda()
    bridge = _bridge()
    x, raw, u = _inputs(name, 3, np.float64)
    x_t = torch.from_numpy(x).cuda()
    opts = CPU._opts(name)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        raw_t = torch.tensor(raw, device="cuda", requires_grad=True)
        u_t = torch.tensor(u, device="cuda")
        a = bridge.log_prob(name, x_t, raw_t, **opts)
        b = bridge.log_pmf(name, x_t, raw_t, **opts)
        ((a + 2 * b) * u_t).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    wa = _want(name, "log_prob", x, raw, u, **opts)
    wb = _want(name, "log_pmf", x, raw, 2 * u, **opts)
    _check_value(a.detach().cpu().numpy(), wa.value, np.float64)
    _check_value(b.detach().cpu().numpy(), wb.value, np.float64)
    _check_grad(raw_t.grad.cpu().numpy(), wa.grad_raw + wb.grad_raw, np.float64)


def test_torch_bridge_matches_torch_backend():
    """Against the torch backend's autograd on the same CUDA tensors."""
    torch = _torch_cuda()
    try:
        tb = importlib.import_module("vaecli.backends.torch_backend")
    except ImportError as exc:
        pytest.skip(f"the torch backend is not importable ({exc})")
    bridge = _bridge()
    for name in ("logistic-mixture", "categorical", "gaussian-pixel", "sigma"):
        x, raw, u = _inputs(name, 3, np.float64)  # float64: torch's float32 chain rule
        x_t = torch.from_numpy(x).cuda()  # through log1mexp loses digits in narrow bins
        opts = CPU._opts(name)
        grads = []
        for module in (bridge, tb):
            raw_t = torch.tensor(raw, device="cuda", requires_grad=True)
            value = module.log_pmf(name, x_t, raw_t, **opts)
            (value * torch.tensor(u, device="cuda")).sum().backward()
            grads.append(raw_t.grad.cpu().numpy())
        _check_grad(grads[0], grads[1], np.float64)


def test_torch_bridge_refuses_cpu_and_half():
    torch = _torch_cuda()
    bridge = _bridge()
    x, raw = CPU.make_inputs("logistic", 1, 0)
    with pytest.raises(VaeError, match="CUDA"):
        bridge.log_prob("logistic", torch.from_numpy(x), torch.from_numpy(raw))
    with pytest.raises(VaeError, match="float32 or float64"):
        bridge.log_prob(
            "logistic", torch.from_numpy(x).cuda(), torch.from_numpy(raw).half().cuda()
        )


@pytest.mark.parametrize("name", ["bitwise", "logistic-mixture", "categorical"])
def test_torch_bridge_memory_comes_from_torch(name):
    """The bridge's CuPy allocations are torch's: what forward keeps shows up in
    torch.cuda.memory_allocated and goes when the graph is freed.  The array formulas
    (bitwise) keep the gradient of raw, the mixture its unscaled gradient and
    component terms; categorical recomputes in backward and keeps no gradient."""
    torch = _torch_cuda()
    bridge = _bridge()
    x, raw, _ = _inputs(name, 3, np.float64)
    x_t = torch.from_numpy(x).cuda()
    raw_t = torch.tensor(raw, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    value = bridge.log_prob(name, x_t, raw_t, **CPU._opts(name))
    held = torch.cuda.memory_allocated() - before
    raw_bytes = raw_t.numel() * raw_t.element_size()
    if name == "categorical":
        assert 0 < held < raw_bytes  # the value, no gradient
    else:
        assert held >= raw_bytes  # at least a gradient of raw's size
    del value
    assert torch.cuda.memory_allocated() - before < held


@pytest.mark.parametrize("name", ["logistic-mixture", "categorical", "sigma"])
def test_torch_bridge_replays_in_a_cuda_graph(name):
    """Forward and backward through the bridge captured in a torch CUDA graph: a
    replay on new inputs gives what an eager call gives."""
    torch = _torch_cuda()
    bridge = _bridge()
    opts = CPU._opts(name)
    x0, raw0, _ = _inputs(name, 3, np.float32)
    x1, raw1 = CPU.make_inputs(name, 3, SEED + 1)
    raw1 = raw1.astype(np.float32)
    static_x = torch.from_numpy(x0).cuda()
    static_raw = torch.tensor(raw0, device="cuda", requires_grad=True)

    def step():
        return bridge.log_prob(name, static_x, static_raw, **opts).sum()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: kernel compilation, allocator caches
        for _ in range(2):
            static_raw.grad = None
            step().backward()
    torch.cuda.current_stream().wait_stream(side)
    static_raw.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total = step()
        total.backward()
    static_x.copy_(torch.from_numpy(x1))
    with torch.no_grad():
        static_raw.copy_(torch.from_numpy(raw1))
    graph.replay()
    torch.cuda.synchronize()
    eager_raw = torch.tensor(raw1, device="cuda", requires_grad=True)
    eager = bridge.log_prob(name, torch.from_numpy(x1).cuda(), eager_raw, **opts).sum()
    eager.backward()
    assert float(total) == float(eager)
    torch.testing.assert_close(static_raw.grad, eager_raw.grad, rtol=0, atol=0)
