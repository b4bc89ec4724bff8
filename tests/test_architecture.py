"""The shape of the package: no import circles, a --help for every command, and no
sigma-VAE branches outside the likelihood and calibration code."""

import ast
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vaecli.cli import main

PACKAGE = Path(__file__).resolve().parent.parent / "vaecli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set:
    """vaecli modules imported when ``path`` is imported (not inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vaecli"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("vaecli"):
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                          or (PACKAGE.parent / Path(*sub.split(".")) / "__init__.py").exists() else base)
    return found


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _top_level_imports(path):
            # importing a.b.c imports the packages a and a.b first
            parts = target.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = {t for t in edges if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_circles():
    graph = _graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_import_graph_holds_the_imports_the_check_follows():
    """The check above follows real edges: a test that could not fail otherwise."""
    graph = _graph()
    assert "vaecli.cli.common" in graph["vaecli.cli"] and "vaecli.runs" in graph["vaecli.training.loop"]


def _commands(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


COMMANDS = list(_commands(main))


def test_every_command_is_listed():
    assert {("train",), ("eval",), ("models",), ("weights", "fetch"), ("data", "list")} <= set(COMMANDS)


@pytest.mark.parametrize("path", [()] + COMMANDS, ids=lambda p: " ".join(p) or "vae")
def test_help_of_every_command(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ") and "--help" in result.output


# likelihood code (formulas, the module, its registry), calibration and the CLI's choices
SIGMA_BRANCHES_ALLOWED = ("reference/", "backends/", "registry.py", "api.py", "calibration.py", "verify.py",
                          "config.py", "cli/train.py")


def test_no_sigma_vae_branches_outside_likelihood_and_calibration_code():
    pattern = re.compile(r"""(likelihood|name|\.name)\s*(==|!=)\s*["']sigma["']|["']sigma["']\s+(not\s+)?in\s""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(SIGMA_BRANCHES_ALLOWED):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
