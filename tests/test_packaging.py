"""The installable project: pyproject.toml agrees with the pinned requirements.txt, and the
installed console scripts (`pip install --no-deps -e .`) run from anywhere."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"hero-train": "minigpt4.cli.train:main", "hero-eval": "minigpt4.cli.evaluate:main",
           "hero-infer": "minigpt4.cli.infer:main", "hero-extract": "minigpt4.extraction.cli:main",
           "hero-app": "minigpt4.app.cli:main", "hero-finish-evidence": "minigpt4.cli.finish_evidence:main"}


def _pins() -> dict[str, str]:
    """requirements.txt -> {normalised name: pinned version}."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_declared_dependencies_agree_with_the_pins():
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    by_name = {_norm(r.name): r for r in declared}
    pins = _pins()
    assert sorted(set(pins) - set(by_name)) == []  # every pinned package is declared
    for name, version in pins.items():
        assert by_name[name].specifier.contains(version), f"{name}=={version} outside {by_name[name].specifier}"
    assert str(by_name["torch"].specifier) == f"=={pins['torch']}"  # torch stays pinned
    assert "einops" not in by_name  # never imported


def test_console_scripts_are_installed_and_point_at_the_cli():
    try:
        dist = metadata.distribution(_pyproject()["project"]["name"])
    except metadata.PackageNotFoundError:
        pytest.fail("the package is not installed: run `pip install --no-deps -e .` in this environment")
    eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert eps == SCRIPTS
    import minigpt4

    assert Path(minigpt4.__file__).resolve().parent == REPO / "minigpt4"  # editable: this clone's code


@pytest.mark.parametrize("script, usage", [("hero-train", "usage: hero-train"), ("hero-eval", "usage: hero-eval")])
def test_console_script_runs_outside_the_repository(script: str, usage: str, tmp_path: Path):
    exe = Path(sys.executable).parent / script
    if not exe.is_file():
        pytest.fail(f"{exe} missing: run `pip install --no-deps -e .` in this environment")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(exe), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(usage) and "--cfg-path" in res.stdout
