"""The layers of ARCHITECTURE.md, checked on the package's own imports.

A module imports only from its own layer or the ones below; steps never import other steps
(``run`` and ``demo`` chain them); there are no import circles, counting the imports inside
functions too (they are how circles hide).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "igcam_cli"
LAYERS = {  # top-level module or package of igcam_cli -> layer, highest on top
    "cli": 5, "__main__": 5,
    "steps": 4,
    "methods": 3, "training": 3, "refiners": 3,
    "runner": 2, "distributed": 2, "models": 2, "affinity": 2, "datasets": 2, "vis": 2,
    "masks": 2, "metrics": 2, "faithfulness": 2, "demo_data": 2, "report": 2, "export": 2,
    "selection": 2, "segmentation": 2,
    "artifacts": 1, "backbones": 1, "images": 1, "options": 1, "registry": 1, "transforms": 1,
    "hessian": 1, "errors": 1, "__init__": 1,
}
CHAINING_STEPS = {"igcam_cli.steps.run", "igcam_cli.steps.demo"}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from igcam_cli import options` names a module
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_imports_only_go_down_or_sideways() -> None:
    wrong = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
             if _layer(b) > _layer(a)]
    assert not wrong, wrong


def test_steps_do_not_import_steps_and_nothing_below_imports_a_step() -> None:
    wrong = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
             if b.startswith("igcam_cli.steps.") and a not in CHAINING_STEPS
             and not a.startswith("igcam_cli.cli")]
    assert not wrong, wrong


def test_no_import_circles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_module_has_a_layer() -> None:
    assert all(_layer(module) for module in _graph())
