"""Modules import downward only: the layers of ``src/datadistill``, written down once here.

A module may import modules of lower layers, never of its own or a higher one. A new module
must be placed in a layer (the test names any that is not).
"""
import ast
from pathlib import Path

import datadistill

LAYERS = [  # bottom to top
    "errors _version distributed recompute linear_regression resize kernels baselines.knn "
    "scores",
    "registry runtime packaged functional config runfolder progress zoo",
    "text audio init_distributions convnets",
    "data models",
    "augment selectors artifacts kernels.normpool",
    "state",
    "inner_loop kernels.lenet",
    "nets backends tracking",
    "converge pools experts",
    "evaluate plots exchange methods.base",
    "floor baselines.run methods.unroll methods.dm methods.dc methods.mtt methods.krr "
    "runstate",
    "methods scorecard",
    "distill baselines.write report",
    "baselines",
    "__init__ cli",
    "__main__",
]
LAYER_OF = {module: i for i, line in enumerate(LAYERS) for module in line.split()}
ROOT = Path(datadistill.__file__).parent


def module_name(path: Path) -> str:
    """``kernels/lenet.py`` -> ``kernels.lenet``; a package's ``__init__.py`` -> the package
    (the top one: ``__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules that the file at ``path`` imports (relative or absolute)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" and name != "__init__" else \
        name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            names = [target + [alias.name] for alias in node.names] if not node.module else [target]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("datadistill"):
            names = [node.module.split(".")[1:]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.startswith("datadistill")]
        else:
            continue
        for parts in names:
            while parts and ".".join(parts) not in modules:
                parts = parts[:-1]  # a name inside a module: the module
            found.add(".".join(parts) or "__init__")
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per module outside the layers and per import that is not downward."""
    problems = [f"{m} is in no layer of tests/test_layering.py" for m in graph if m not in LAYER_OF]
    for module, targets in graph.items():
        for target in sorted(targets):
            if module in LAYER_OF and LAYER_OF.get(target, len(LAYERS)) >= LAYER_OF[module]:
                problems.append(f"{module} (layer {LAYER_OF[module]}) imports {target} "
                                f"(layer {LAYER_OF.get(target, '?')})")
    return problems


def test_modules_import_downward_only():
    assert violations(import_graph()) == []


def test_an_upward_import_is_caught():
    graph = import_graph()
    graph["state"] = graph["state"] | {"distill"}  # state reaching up into the outer loop
    assert violations(graph) == ["state (layer 5) imports distill (layer 12)"]


def test_config_imports_nothing_of_the_project_but_errors():
    assert import_graph()["config"] <= {"errors"}
