"""Shared fixtures: one tiny checkpoint and one full export per test session."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.random_checkpoint import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint: Path):
    """colpali-engine's own model and processor for the tiny checkpoint."""
    from export.checkpoint import load_checkpoint

    return load_checkpoint(str(tiny_checkpoint))


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four variants exported and validated, exactly as `make export` does."""
    from export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    return run_export(ExportOptions(checkpoint=str(tiny_checkpoint), out_dir=out))
