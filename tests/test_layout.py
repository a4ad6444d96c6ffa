"""The package's layout holds: imports only run from a higher layer down, modules stay small.

Layers, lowest first: `common` (constants, config, IO) -> `datasets`, `evaluation` -> `extraction`
(writes feature files through `datasets`) -> `models`, `synthetic` -> `tasks` -> `runners` ->
`inference` (a loaded run predicting new clips) -> `cli`, `app` (the command lines and the web app).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minigpt4"
LAYERS = {"common": 0, "datasets": 1, "evaluation": 1, "extraction": 2, "models": 3, "synthetic": 3,
          "tasks": 4, "runners": 5, "inference": 6, "cli": 7, "app": 7}
MAX_LINES = 450


def _imported_packages(path: Path) -> set[str]:
    """Top-level `minigpt4.<package>` names a module imports (anywhere in it, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "minigpt4" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS), "give a new package its place in LAYERS (and in this docstring)"


def test_imports_run_from_a_higher_layer_down() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) < 2:
            continue  # minigpt4/__init__.py wires the registry: it may import every layer
        own = rel.parts[0]
        for other in _imported_packages(path) - {own}:
            if LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{rel} ({own}, layer {LAYERS[own]}) imports minigpt4.{other} (layer {LAYERS[other]})")
    assert not wrong, "\n".join(wrong)


def test_modules_stay_small() -> None:
    long = [f"{p.relative_to(PACKAGE)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "split these modules (one job each) or explain here why not:\n" + "\n".join(long)
