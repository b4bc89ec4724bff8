"""Every backend implements the whole written interface; dispatch is lazy."""

import subprocess
import sys

import pytest

from vaecli import VaeError
from vaecli.backends import BACKENDS, INTERFACE, get_backend


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_implements_interface(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    module = get_backend(backend)  # importable even without a GPU or cupy
    missing = [f for f in INTERFACE if not callable(getattr(module, f, None))]
    assert missing == [], f"{backend} lacks {missing}"
    ok, why = module.available()
    assert isinstance(ok, bool) and isinstance(why, str)
    assert ok or why  # a backend that cannot run says why


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(VaeError, match="unknown backend 'jax'.*reference, torch, cupy"):
        get_backend("jax")


def test_reference_is_always_available():
    assert get_backend("reference").available() == (True, "")


def _loaded_modules(code):
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; sys.stderr.write(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stderr.split())


def test_import_vaecli_loads_neither_torch_nor_cupy():
    mods = _loaded_modules("import vaecli; vaecli.out_channels('sigma', 3); vaecli.NAMES")
    assert "vaecli" in mods
    assert not {"torch", "cupy"} & mods


def test_vae_help_loads_neither_torch_nor_cupy():
    code = (
        "import sys\n"
        "from vaecli.cli import main\n"
        "try:\n    main(['--help'], prog_name='vae')\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "try:\n    main(['verify', '--help'], prog_name='vae')\nexcept SystemExit as e:\n    assert e.code == 0\n"
    )
    mods = _loaded_modules(code)
    assert "click" in mods and "vaecli.cli" in mods
    assert not {"torch", "cupy", "numpy"} & mods
