"""Huge pages for large CPU tensors (`minigpt4.common.host_memory`): every entry point asks for
them before torch allocates, a user's own setting wins, and torch then backs a large block with
huge pages where the kernel allows it."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt4.common.host_memory import HUGE_PAGES_ENV, enable_huge_pages

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

ENTRY_POINTS = [
    "minigpt4.cli.train", "minigpt4.cli.evaluate", "minigpt4.cli.infer", "minigpt4.cli.finish_evidence",
    "minigpt4.app.cli", "minigpt4.extraction.cli",
]


def test_sets_the_variable_and_keeps_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    assert enable_huge_pages() is True
    import os

    assert os.environ[HUGE_PAGES_ENV] == "1"
    monkeypatch.setenv(HUGE_PAGES_ENV, "0")
    assert enable_huge_pages() is False
    assert os.environ[HUGE_PAGES_ENV] == "0"


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_asks_first(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--help` exits while parsing: the variable is already set by then (main's first statement)."""
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    import os

    assert os.environ.get(HUGE_PAGES_ENV) == "1"


def _thp_mode() -> str:
    text = THP_MODE.read_text() if THP_MODE.exists() else ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else "never"


PROBE = """
import sys
from minigpt4.common.host_memory import enable_huge_pages
enable_huge_pages()
import torch
x = torch.ones(96 << 18)  # 96 MiB, touched
kb = 0
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        kb = int(line.split()[1])
print(kb)
"""


def _huge_kb(env_value: str) -> int:
    import os

    env = {**os.environ, HUGE_PAGES_ENV: env_value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(_thp_mode() == "never" or not Path("/proc/self/smaps_rollup").exists(),
                    reason="transparent huge pages are off in this kernel (or no /proc/self/smaps_rollup)")
def test_torch_backs_a_large_tensor_with_huge_pages() -> None:
    on = _huge_kb("1")
    assert on >= 64 * 1024, f"only {on} kB of huge pages for a 96 MiB tensor"
    if _thp_mode() == "madvise":  # only blocks torch marks get them: without the variable, none of the tensor
        assert _huge_kb("0") < 16 * 1024
