"""Shared offline fixtures: a tiny random Llama chat model and tiny sae-lens SAEs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_tiny_chat_model, make_tiny_sae  # noqa: E402


@pytest.fixture(scope="session")
def tiny_chat():
    """Tiny random chat model (4 layers, d=32); shared, so tests must not modify its weights."""
    return make_tiny_chat_model()


@pytest.fixture(scope="session")
def tiny_saes(tiny_chat):
    """One random standard SAE (d_sae=64) per layer of ``tiny_chat``."""
    d = tiny_chat.facts.d_model
    return {layer: make_tiny_sae(d, 2 * d, seed=layer) for layer in range(tiny_chat.facts.n_layers)}


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """The tiny workflow run to the end once per session (end-to-end and rerun-planning tests read it)."""
    from tiny_workflow import start_workflow

    return start_workflow(tmp_path_factory.mktemp("workflow"))
