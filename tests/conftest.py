"""Session fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import build_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture()
def store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MIXMERGE_HOME for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("MIXMERGE_HOME", str(home))
    return home
