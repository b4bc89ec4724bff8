"""The fused CUDA kernels compiled as host C++, for checking and costing them on a
machine without a GPU.

The kernel source is plain CUDA C++ with no CUDA-only construct besides the launch
built-ins, ``__device__``/``__global__`` and two bit-cast intrinsics, so a short
prelude turns it into host C++ (g++): each "launch" runs the grid-stride loop of every
thread of a small block one after the other.  :func:`kernels.evaluate` then runs on
NumPy arrays with :func:`launcher`, which also checks every argument's type against
the kernel's C signature (CuPy passes NumPy scalars as they are: a wrong width would
be garbage on a GPU).

Used by tests/test_cupy_formulas_cpu.py (the kernels against formulas.py) and by
benchmarks/kernel_arithmetic.py (their arithmetic cost, timed on the CPU).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from . import kernels

PRELUDE = r"""
#include <math.h>
#include <string.h>
struct k_dim3 { unsigned int x, y, z; };
static k_dim3 threadIdx = {0, 0, 0};
static k_dim3 blockIdx = {0, 0, 0};
static k_dim3 blockDim = {1, 1, 1};
static k_dim3 gridDim = {1, 1, 1};
extern "C" void host_set_thread(unsigned int thread, unsigned int threads) {
    threadIdx.x = thread;
    blockDim.x = threads;
}
#define __device__
#define __global__
#define __forceinline__ inline
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, sizeof d);
    return d;
}
// erfcx(x) = e^(x^2) erfc(x), which libm lacks: long double where that is in range,
// the asymptotic series beyond.
static double host_erfcx(double x) {
    if (x >= 50.0) {
        const double r = 1.0 / (x * x);
        return (1.0 - 0.5 * r + 0.75 * r * r - 1.875 * r * r * r) / (x * 1.7724538509055160273);
    }
    const long double t = x;
    if (x >= 0.0) return (double)(expl(t * t) * erfcl(t));
    return (double)(2.0L * expl(t * t) - (long double)host_erfcx(-x));
}
double erfcx(double x) { return host_erfcx(x); }
float erfcxf(float x) { return (float)host_erfcx((double)x); }
"""

_REAL = {"float32": "float", "float64": "double"}
_SCALARS = {
    "int": (np.int32, ctypes.c_int),
    "long long": (np.int64, ctypes.c_longlong),
    "float": (np.float32, ctypes.c_float),
    "double": (np.float64, ctypes.c_double),
}
_ELEMENTS = {"int": np.int32, "float": np.float32, "double": np.float64}


def available() -> bool:
    return shutil.which("g++") is not None


def compile_library(source: str, dtype, out_dir: Path, *, optimize: str = "-O1", tag: str = ""):
    """g++-compile the kernel ``source`` (without its ``real`` typedef) for ``dtype``
    into a shared library in ``out_dir``; the loaded :class:`ctypes.CDLL`."""
    name = np.dtype(dtype).name
    stem = f"host_{tag}{name}{optimize.replace('-', '_')}"
    src, lib = Path(out_dir) / f"{stem}.cpp", Path(out_dir) / f"{stem}.so"
    src.write_text(PRELUDE + f"typedef {_REAL[name]} real;\n" + source)
    result = subprocess.run(
        ["g++", "-std=c++14", optimize, "-ffp-contract=off", "-shared", "-fPIC",
         "-Wall", "-Werror", "-Wno-unused-function", "-o", str(lib), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"g++ failed on the kernel source:\n{result.stderr}")
    return ctypes.CDLL(str(lib))


def signatures(source: str, real: str) -> dict:
    """{kernel name: [(C type, is_pointer)]} parsed from ``source`` (real -> float/double)."""
    sigs = {}
    for name, params in re.findall(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', source, flags=re.S):
        out = []
        for p in params.split(","):
            p = p.replace("__restrict__", "").replace("const", "").strip()
            pointer = "*" in p
            ctype = p.replace("*", " ").split()[:-1]  # drop the parameter name
            out.append((" ".join(ctype).replace("real", real), pointer))
        sigs[name] = out
    return sigs


def launcher(out_dir, *, source: str = kernels.SOURCE, threads: int = 7, optimize: str = "-O1", tag: str = ""):
    """A ``launch(name, dtype, n, args)`` for :func:`kernels.evaluate` that runs ``source``
    compiled for the host: ``threads`` threads of one block (an odd count exercises the
    grid-stride loops), each argument checked against the kernel's C signature.  The
    names of the kernels launched are appended to ``launch.calls``."""
    libraries: dict = {}
    calls = []

    def launch(name, dtype, n, args):
        key = np.dtype(dtype).name
        real = _REAL[key]
        sig = signatures(source, real)[name]
        assert len(sig) == len(args), (name, len(sig), len(args))
        if key not in libraries:
            libraries[key] = compile_library(source, dtype, out_dir, optimize=optimize, tag=tag)
        cargs = []
        for (ctype, pointer), a in zip(sig, args):
            if pointer:
                assert isinstance(a, np.ndarray) and a.flags.c_contiguous, (name, ctype)
                assert a.dtype == _ELEMENTS[ctype], (name, ctype, a.dtype)
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                np_type, c_type = _SCALARS[ctype]
                assert type(a) is np_type, (name, ctype, type(a))
                cargs.append(c_type(a.item()))
        fn = getattr(libraries[key], name)
        fn.restype = None
        calls.append(name)
        if n == 0:
            return
        for t in range(threads):
            libraries[key].host_set_thread(t, threads)
            fn(*cargs)

    launch.calls = calls
    return launch
