"""The package's shape: no import cycle, nothing imports upward, a torch-free core.

The import graph is read from the source with ``ast`` (every ``import`` statement, also
those inside functions, since a lazy import still ties two modules together), independently
of Python's import machinery, so a cycle hidden behind a function-level import is found.
Importing ``pkg.sub`` from outside ``pkg`` runs ``pkg/__init__.py`` first, so it is an edge
to the package as well; a cycle through a package's ``__init__`` is found that way.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils import REPO

PACKAGE = REPO / "segkit"

# Layers, lowest first. A module may import from its own layer and from lower ones only.
# The torch-free core is the arithmetic every other layer builds on.
LAYERS: list[tuple[str, ...]] = [
    ("segkit.errors", "segkit.table", "segkit.fsio", "segkit.defaults"),
    ("segkit.args",),  # the command-line grammar (torch-free)
    ("segkit.shapes", "segkit.spec", "segkit.plan", "segkit.registry"),
    ("segkit.nn",),
    ("segkit.config",),  # composing conf/ and turning a config into a spec and a plan
    ("segkit.data",),
    ("segkit.planner",),
    ("segkit.inference",),
    ("segkit.training", "segkit.sweeps", "segkit.crossval"),
    ("segkit.configure", "segkit.cli"),
]
TORCH_FREE = (
    "segkit.errors",
    "segkit.table",
    "segkit.shapes",
    "segkit.spec",
    "segkit.plan",
    "segkit.registry",
    "segkit.defaults",
    "segkit.fsio",
    "segkit.args",
)


def module_name(path: Path, root: Path = REPO) -> str:
    """The dotted name of the module in ``path``, a file under the folder ``root``."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_statements(path: Path, root: Path = REPO) -> list[tuple[str, tuple[str, ...]]]:
    """Every import statement in ``path`` as ``(module, names)``: ``import a.b`` is
    ``("a.b", ())``, ``from a import b, c`` is ``("a", ("b", "c"))`` (relative resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module_name(path, root)
                if path.name != "__init__.py":
                    package = package.rpartition(".")[0]
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, tuple(alias.name for alias in node.names)))
    return found


def imports_of(path: Path, root: Path = REPO) -> set[str]:
    """Every module an import statement in ``path`` may name (``from a import b``: ``a``
    and ``a.b``, since ``b`` may be a submodule)."""
    found: set[str] = set()
    for mod, names in import_statements(path, root):
        found.add(mod)
        found.update(f"{mod}.{name}" for name in names)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """The modules of the package folder ``package`` and what executing each one executes.

    ``a`` imports ``b``: an edge ``a → b``, and an edge to every package above ``b`` that
    ``a`` lies outside of (Python runs that package's ``__init__`` before ``b``). A module
    importing a submodule of its own package adds no edge to that package: its
    ``__init__`` has already begun. ``from p import n`` names the submodule ``p.n`` where
    there is one, else ``p`` itself.
    """
    root = package.parent
    modules = {module_name(p, root): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for mod, names in import_statements(path, root):
            subs = {f"{mod}.{n}" for n in names} & modules.keys()
            targets = subs | ({mod} if len(subs) < max(1, len(names)) else set())
            for target in targets & modules.keys():
                parts = target.split(".")
                above = (".".join(parts[:i]) for i in range(1, len(parts)))
                deps.add(target)
                deps.update(p for p in above if name != p and not name.startswith(p + "."))
        graph[name] = deps - {name}
    return graph


@functools.cache
def segkit_graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def layer_of(module: str) -> int:
    if module == "segkit":  # the package's __init__ re-exports the error classes only
        return 0
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    raise AssertionError(f"{module} belongs to no layer in tests/test_architecture.py::LAYERS")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    found = cycles(segkit_graph())
    assert not found, f"import cycles (function-level imports included): {found}"


def test_nothing_imports_upward():
    graph = segkit_graph()
    upward = sorted(
        f"{mod} → {dep}"
        for mod, deps in graph.items()
        for dep in deps
        if layer_of(dep) > layer_of(mod)
    )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_core_is_torch_free(module):
    path = PACKAGE / (module.removeprefix("segkit.").replace(".", "/") + ".py")
    names = imports_of(path)
    heavy = sorted(n for n in names if n.split(".")[0] in {"torch", "pytorch_lightning"})
    assert not heavy, f"{module} imports {heavy}; the shape/plan core must stay torch-free"
    # Also what it pulls in through segkit: every segkit module it imports, transitively.
    graph = segkit_graph()
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    offenders = {
        m: sorted(
            n
            for n in imports_of(PACKAGE.parent / (m.replace(".", "/") + ".py"))
            if n.split(".")[0] == "torch"
        )
        for m in seen
        if (PACKAGE.parent / (m.replace(".", "/") + ".py")).exists()
    }
    offenders = {m: v for m, v in offenders.items() if v}
    assert not offenders, f"{module} reaches torch through {offenders}"


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    """The instrument itself: a hand-made graph with a known cycle and an upward edge."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert layer_of("segkit.nn.unet") > layer_of("segkit.plan")
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from segkit.nn.unet import UNet\n")
    assert "segkit.nn.unet" in imports_of(src)


@pytest.mark.parametrize(
    ("plans", "cycle"),
    [
        # beside the planner package (segkit.nnunet_plans once): a cycle through its __init__
        ("toy.plans", [["toy.planner", "toy.planner.startup", "toy.plans"]]),
        # inside it: importing its own siblings does not run the package's __init__ again
        ("toy.planner.plans", []),
    ],
)
def test_the_graph_finds_a_cycle_through_a_package_init(tmp_path, plans, cycle):
    """A tiny package with the layout segkit had: the checker finds the cycle a function-level
    import hides, and Python itself fails on it exactly when that import is moved to the top."""
    files = {
        "toy/__init__.py": "",
        plans.replace(".", "/") + ".py": "from toy.planner import memory\n\np = memory.m\n",
        "toy/planner/__init__.py": "from toy.planner.startup import s\n",
        "toy/planner/memory.py": "m = 1\n",
        "toy/planner/startup.py": f"def s():\n    from {plans} import p\n\n    return p\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cycles(import_graph(tmp_path / "toy")) == cycle
    (tmp_path / "toy/planner/startup.py").write_text(f"from {plans} import p\n\ns = p\n")
    assert cycles(import_graph(tmp_path / "toy")) == cycle
    run = subprocess.run(
        [sys.executable, "-c", f"import {plans}"], cwd=tmp_path, capture_output=True, text=True
    )
    assert (run.returncode != 0) == bool(cycle), run.stderr
    if cycle:
        assert "partially initialized module 'toy.plans'" in run.stderr


def dot(graph: dict[str, set[str]]) -> str:
    """The graph between segkit's packages and top-level modules, as Graphviz DOT."""

    def node(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2])

    edges = sorted(
        {(node(a), node(b)) for a, deps in graph.items() for b in deps if node(a) != node(b)}
    )
    nodes = sorted({n for e in edges for n in e} | {node(m) for m in graph})
    lines = ["digraph segkit {", "  rankdir=BT; node [shape=box, fontsize=10];"]
    for i in range(len(LAYERS)):
        members = [n for n in nodes if n != "segkit" and layer_of(n) == i]
        lines.append(f"  {{ rank=same; {' '.join(f'{chr(34)}{n}{chr(34)}' for n in members)} }}")
    lines += [f'  "{a}" -> "{b}";' for a, b in edges]
    return "\n".join(lines + ["}"])


if __name__ == "__main__":  # python -m tests.test_architecture | dot -Tsvg > docs/img/imports.svg
    print(dot(segkit_graph()))
