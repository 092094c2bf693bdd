"""The codebase's own rules, checked on the source: imports point one way (flows -> tasks -> {sae, storage}),
no import cycle among the project's modules (imports inside functions count), `sae/` knows nothing of Ray,
Prefect or zarr, and no module of the five packages is over ~400 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "storage", "sae", "infra")
MAX_LINES = 420
# which project packages each package may import (itself always)
ALLOWED = {
    "flows": {"tasks", "storage", "sae", "infra"},
    "infra": set(),
    "tasks": {"sae", "storage"},
    "sae": set(),
    "storage": set(),
}
FORBIDDEN_IN_SAE = ("ray", "prefect", "prefect_ray", "zarr", "fsspec", "s3fs")
CITATION = "DESIGN" + " section"  # spelt in two parts so this file does not cite it


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module this one imports, wherever the import statement stands, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _project_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports: for `a.b.c`, the longest prefix that is a module (a
    package's __init__ running first is how packages work, not an edge of the module graph)."""
    edges = {}
    for name, path in MODULES.items():
        targets = set()
        for imp in _imports(name, path):
            parts = imp.split(".")
            hit = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in MODULES),
                       None)
            if hit is not None and hit != name:
                targets.add(hit)
        edges[name] = targets
    return edges


def test_imports_point_one_way():
    bad = []
    for name, targets in _project_edges().items():
        top = name.split(".")[0]
        for t in targets:
            other = t.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(f"{name} imports {t}")
    assert not bad, bad


def test_no_import_cycles():
    edges = _project_edges()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, cycles


def test_sae_is_pure_torch():
    bad = [f"{name} imports {imp}" for name, path in MODULES.items() if name.split(".")[0] == "sae"
           for imp in _imports(name, path) if imp.split(".")[0] in FORBIDDEN_IN_SAE]
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(REPO)} has {lines} lines"


def test_no_file_cites_a_design_document_the_repo_lacks():
    cited = [str(p.relative_to(REPO)) for pkg in (*PACKAGES, "tests", "benchmarks", "configs")
             for p in (REPO / pkg).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".md")
             and CITATION in p.read_text()]
    cited += [f for f in ("README.md", "pyproject.toml", "Makefile") if CITATION in (REPO / f).read_text()]
    assert not cited, cited
