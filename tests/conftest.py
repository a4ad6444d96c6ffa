"""Shared pytest fixtures: seeded RNGs and a tiny real-tokenizer LLM saved to a temp folder.

The package is installed (`pip install --no-deps -e .`) and the tests run as `python -m pytest`
from the repository root, so `minigpt4` and the test helpers (`tests.*`) import as they are.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster and immune to a busy shared machine's oversubscription
    (test modules of tiny models use it for every test: `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) with the real SmolLM2 tokenizer, saved with save_pretrained."""
    from minigpt4.common.tiny_llm import make_tiny_llm

    out = tmp_path_factory.mktemp("tiny_llm") / "llm"
    return make_tiny_llm(out, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)
