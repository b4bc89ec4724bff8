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
