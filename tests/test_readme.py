"""The README's Python example runs as written."""

import pathlib
import re

import pytest


def test_readme_python_example_runs(capsys):
    pytest.importorskip("torch")
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["loss"].requires_grad and namespace["decoder_head"].weight.grad is not None
    sigma, beta = (float(v) for v in capsys.readouterr().out.split())
    assert beta == pytest.approx(2 * sigma**2, rel=1e-6)
    assert namespace["bpd"].shape == (8,)


def test_readme_own_model_example_trains_and_evaluates_in_a_fresh_process(tmp_path):
    """The "Your own model" module and commands, as written, with small settings: a run
    file made with a user model evaluates again in a fresh process."""
    import os
    import subprocess
    import sys

    import numpy as np

    pytest.importorskip("torch")
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Your own model", 1)[1].split("\n## ", 1)[0]
    module = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)[0].strip().splitlines()
    (tmp_path / "my_vae.py").write_text(module)
    data = tmp_path / "d.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8)).astype(np.uint8))
    env = {**os.environ, "PYTHONPATH": "."}
    small = ["--data", str(data), "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]
    for line in commands:
        args = line.split()[2:]  # after "PYTHONPATH=. vae"
        if args[0] == "train":
            args += small
        result = subprocess.run([sys.executable, "-m", "vaecli", *args], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert "bits/dim" in result.stdout
    from vaecli import runfile

    run = runfile.read(tmp_path / "tiny.h5")
    assert (run.config.model, run.config.model_options) == ("my_vae:TinyVAE", {"latent_dim": 4})
    # without the module on the path (-P: python -m leaves the working directory off it too):
    # one line, no traceback
    result = subprocess.run([sys.executable, "-P", "-m", "vaecli", "eval", "tiny.h5"], cwd=tmp_path,
                            env={k: v for k, v in env.items() if k != "PYTHONPATH"}, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("Error: --model my_vae:TinyVAE: cannot import my_vae")
