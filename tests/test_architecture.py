"""The package's import graph: no cycles, imports run one way (bottom to top), no experiments.

Every module under ``bifrepro/`` is parsed with ``ast``; module-level and function-level imports
count (a function-level import hides a cycle from Python, not from this test); imports under
``if TYPE_CHECKING:`` are ignored (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bifrepro"

#: Layer of each module prefix (a prefix ending in "*" also covers its sub-modules); lower layers
#: never import higher ones; the first matching entry wins. The low-level helpers of the sampling
#: core (``stats``, ``sgld_config``, ``chain_diagnostics``, ``fingerprint``) sit at layer 0 with
#: ``traces``; so do the training loops (a model config names its training recipe), except
#: ``training.lm_setup``, which calibrates a sampler and so sits with the layers that use one.
LAYERS: dict[str, int] = {
    "bifrepro.training.lm_setup": 3,
    "bifrepro.training*": 0,
    "bifrepro.data*": 0,
    "bifrepro.io": 0,
    "bifrepro.traces": 0,
    "bifrepro.validation": 0,
    "bifrepro.models*": 0,
    "bifrepro.stats": 0,
    "bifrepro.sgld_config": 0,
    "bifrepro.chain_diagnostics": 0,
    "bifrepro.fingerprint": 0,
    "bifrepro.sampling*": 1,
    "bifrepro.attribution*": 2,
    "bifrepro.evaluation*": 3,
    "bifrepro.dynamics*": 3,
    "bifrepro.plots*": 4,
    "bifrepro.tracking": 4,
    "bifrepro.hydra_callbacks": 4,
    "bifrepro.config*": 4,
    "bifrepro.demo": 4,
    "bifrepro.report": 4,
    "bifrepro.report_language_scale": 4,
    "bifrepro.report_stagewise_controls": 4,
    "bifrepro.report_time_to_accuracy": 4,
    "bifrepro.reproduce": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if prefix.endswith("*"):
            base = prefix[:-1]
            if module == base or module.startswith(base + "."):
                return layer
        elif module == prefix:
            return layer
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``bifrepro``/``experiments`` modules ``module`` imports (resolved to known modules)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from pkg import name`` imports pkg.name when that is a module, else pkg.
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        for target in targets:
            if target.split(".")[0] == "experiments":
                out.add("experiments")
                continue
            if not target.startswith("bifrepro"):
                continue
            # The most specific known module the target names.
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts:
                out.add(".".join(parts))
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imported_modules(m, p, known) for m, p in mods.items()}


def _edges_without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges into ``bifrepro`` itself (importing a sub-module runs the root package)."""
    return {m: {t for t in ts if t != "bifrepro"} for m, ts in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_parser_sees_function_level_imports_and_skips_type_checking(tmp_path):
    src = tmp_path / "bifrepro" / "a.py"
    src.parent.mkdir()
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from bifrepro.c import C\n"
        "def f():\n    from bifrepro.b import g\n    import experiments.x\n"
    )
    known = {"bifrepro.a", "bifrepro.b", "bifrepro.c"}
    assert imported_modules("bifrepro.a", src, known) == {"bifrepro.b", "experiments"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if m != "bifrepro" and layer_of(m) is None)
    assert not unplaced, f"modules missing from the layer table: {unplaced}"


def test_no_import_cycles():
    cycle = find_cycle(_edges_without_packages(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_run_from_lower_to_higher_layers_only():
    upward = []
    for module, targets in import_graph().items():
        low = layer_of(module)
        for target in sorted(targets):
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                upward.append(f"{module} (layer {low}) imports {target} (layer {high})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_package_never_imports_experiments():
    offenders = sorted(m for m, ts in import_graph().items() if "experiments" in ts)
    assert not offenders, f"bifrepro modules importing experiments: {offenders}"


@pytest.mark.parametrize(
    "statement",
    [
        "from bifrepro.traces import LossTraces",
        "from bifrepro.sampling.health import run_health",
        "from bifrepro.attribution.bif import bif_scores",
        "from bifrepro.sampling.calibration import CalibrationReport",
    ],
)
def test_a_fresh_interpreter_imports_the_core_modules(statement):
    done = subprocess.run(
        [sys.executable, "-c", statement], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_every_experiment_module_is_at_most_300_lines():
    """Experiments orchestrate: logic that grows belongs in the library."""
    long = {
        p.name: n
        for p in sorted((ROOT / "experiments").glob("*.py"))
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert not long, f"experiment modules over 300 lines: {long}"
