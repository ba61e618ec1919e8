"""ModelStore.build: atomic, reused when finished, one valid manifest with the peak RSS of that build alone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel

from runtime.artifacts import MANIFEST, Manifest
from runtime.errors import ModelStoreError
from runtime.memory import BuildPeak, own_peak_bytes
from runtime.models import ModelStore

MB = 1 << 20


class _Recipe(BaseModel):
    lr: float = 1e-3


@pytest.fixture()
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")


def _hold(megabytes: int) -> bytes:
    return b"\x01" * (megabytes * MB)  # written, so resident (a zeroed allocation may not be)


def _build(store: ModelStore, name: str, megabytes: int = 0, **kwargs) -> Manifest:
    with store.build(name, "merged", source="test", parent="tiny", config=_Recipe(), **kwargs) as build:
        if not build.reused:
            held = _hold(megabytes)
            time.sleep(0.5 if megabytes else 0)  # held while the 0.2 s sampler looks too (where VmHWM cannot reset)
            (build.tmp / "config.json").write_text("{}")
            build.record(scores={"completion": 1.0}, held=len(held) // MB)
            del held
    assert build.manifest is not None
    return build.manifest


def test_a_second_build_in_one_process_records_its_own_smaller_peak(tmp_path: Path):
    # in a fresh process: late in a long test session the heap holds hundreds of MB freed but resident, which a
    # new 400 MB object reuses without raising the RSS at all (both builds then rightly record the same RSS)
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_artifacts import _build
from runtime.models import ModelStore
store = ModelStore(__import__("pathlib").Path({str(tmp_path)!r}) / "home")
print(json.dumps([_build(store, "big", 400).peak_rss_mb, _build(store, "small", 20).peak_rss_mb]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    big, small = json.loads(out.stdout.strip().splitlines()[-1])
    assert big > small + 300  # the process's peak would be ~400 MB higher for both
    assert Manifest.load(ModelStore(tmp_path / "home").models_dir / "small").peak_rss_mb == small


def test_an_outer_build_keeps_the_peak_of_a_nested_one(store: ModelStore):
    with store.build("outer", "merged", source="test") as outer:
        inner = _build(store, "inner", 300)
        (outer.tmp / "config.json").write_text("{}")
    assert outer.manifest.peak_rss_mb >= inner.peak_rss_mb > 250


def test_the_peak_includes_a_child_process(store: ModelStore):
    with BuildPeak() as peak:
        start = own_peak_bytes() or 0
        subprocess.run([sys.executable, "-c", "import time; b = b'1' * (300 << 20); time.sleep(1.5)"], check=True)
    assert peak.mb > start / MB + 250


def test_a_process_running_before_the_build_is_not_counted(store: ModelStore):
    # a server the test session (or the bench) holds open is not the build's memory: in the full suite a live
    # child of ~2 GB made a 400 MB build and a 20 MB one record the same peak
    holder = subprocess.Popen([sys.executable, "-c", "import time; b = b'1' * (300 << 20); time.sleep(30)"])
    try:
        time.sleep(1.5)  # the child holds its 300 MB now
        with BuildPeak() as peak:
            start = own_peak_bytes() or 0
            time.sleep(0.5)  # the sampler looks at least twice
        assert peak.mb < start / MB + 100
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_build_leaves_nothing_and_the_next_starts_clean(store: ModelStore):
    with pytest.raises(RuntimeError), store.build("half", "merged", source="test") as build:
        (build.tmp / "config.json").write_text("{}")
        raise RuntimeError("killed")
    assert list(store.models_dir.iterdir()) == [] and store.list() == []
    assert _build(store, "half").name == "half" and [e.name for e in store.list()] == ["half"]


def test_a_finished_artifact_is_reused_without_building(store: ModelStore):
    first = _build(store, "once")
    with store.build("once", "merged", source="test") as build:
        assert build.reused and build.tmp is None
    assert build.manifest == first and build.entry.path == store.models_dir / "once"
    assert build.kind == "merged" and build.parent == "tiny"


class _Recipe2(BaseModel):
    NOT_RECIPE: ClassVar[frozenset[str]] = frozenset({"output_dir", "steps.shown"})
    lr: float = 1e-3
    output_dir: str | None = None
    steps: dict = {"n": 20, "shown": True}


def _build2(store: ModelStore, name: str, recipe: _Recipe2, inputs: list[str] | None = None) -> bool:
    """Build (or reuse) ``name`` from ``recipe``; whether it was reused."""
    with store.build(name, "expert", source="test", config=recipe, inputs=inputs) as build:
        if not build.reused:
            (build.tmp / "config.json").write_text("{}")
    return build.reused


def test_a_finished_artifact_is_reused_only_for_the_recipe_that_built_it(store: ModelStore):
    _build2(store, "expert", _Recipe2())
    assert _build2(store, "expert", _Recipe2(output_dir="/elsewhere", steps={"n": 20, "shown": False}))  # not recipe
    longer = _Recipe2(steps={"n": 60, "shown": True})
    assert store.recipe_changes("expert", longer) == ["steps.n: 20 -> 60"]
    with pytest.raises(ModelStoreError, match=r"built from another recipe \(steps.n: 20 -> 60\)") as e:
        _build2(store, "expert", longer)
    assert "runtime models remove expert" in e.value.fix
    assert store.recipe_changes("absent", longer) == []


def test_an_artifact_built_from_inputs_rebuilt_since_is_refused(store: ModelStore):
    _build2(store, "a", _Recipe2())
    _build2(store, "merged", _Recipe2(), inputs=["a"])
    assert _build2(store, "merged", _Recipe2(), inputs=["a"])  # the same input: reused
    store.remove("a")
    time.sleep(1.1)  # `created` has a resolution of a second
    _build2(store, "a", _Recipe2(lr=1e-4))
    (change,) = store.recipe_changes("merged", _Recipe2(), ["a"])
    assert change.startswith("a rebuilt since")
    with pytest.raises(ModelStoreError, match="a rebuilt since"):
        _build2(store, "merged", _Recipe2(), inputs=["a"])


def test_a_model_registered_without_a_manifest_counts_as_rebuilt_once_its_files_change(store: ModelStore,
                                                                                         tmp_path: Path):
    outside = tmp_path / "my-base"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    store.register("mine", outside)
    _build2(store, "tuned", _Recipe2(), inputs=["mine"])
    assert store.recipe_changes("tuned", _Recipe2(), ["mine"]) == []  # untouched: reused
    time.sleep(0.01)
    (outside / "config.json").write_text('{"hidden_size": 8}')  # overwritten in place
    (change,) = store.recipe_changes("tuned", _Recipe2(), ["mine"])
    assert change.startswith("mine rebuilt since (was unmanaged ")


def test_the_manifest_has_the_common_fields_then_the_kinds_own(store: ModelStore):
    manifest = _build(store, "full")
    data = json.loads((store.models_dir / "full" / MANIFEST).read_text())
    assert list(data)[:10] == ["created", "name", "kind", "format", "parent", "source", "config", "wall_s",
                               "peak_rss_mb", "git_sha"]
    assert (data["name"], data["kind"], data["format"], data["parent"]) == ("full", "merged", "full", "tiny")
    assert data["config"] == {"lr": 1e-3} and data["wall_s"] >= 0 and data["peak_rss_mb"] > 0
    assert manifest.extras == {"scores": {"completion": 1.0}, "held": 0}
    assert Manifest.model_validate(data) == manifest


def test_manifests_written_before_builds_validate(tmp_path: Path):
    old = tmp_path / "qwen-lora-review"
    old.mkdir()
    (old / MANIFEST).write_text(json.dumps({"created": "2026-11-26T12:32:11Z", "name": old.name, "kind": "expert",
                                            "format": "lora", "source": "runtime train", "peak_rss_mb": 12748.0,
                                            "loss_curve": {"val": [[0, 1.0]]}}))
    assert Manifest.load(old).extras["loss_curve"] == {"val": [[0, 1.0]]}
    (old / MANIFEST).write_text(json.dumps({"kind": "base"}))  # what fixtures write
    assert Manifest.load(old).name == old.name
    (old / MANIFEST).write_text(json.dumps({"kind": "nonsense"}))
    with pytest.raises(ModelStoreError, match="not a valid manifest"):
        Manifest.load(old)


def test_a_build_refuses_a_directory_it_did_not_write_before_any_work(store: ModelStore, tmp_path: Path):
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    with pytest.raises(ModelStoreError, match="no manifest"), store.build("x", "merged", source="t", path=foreign):
        raise AssertionError("the body must not run")


def test_an_artifact_built_outside_the_store_is_registered_with_its_entry(store: ModelStore, tmp_path: Path):
    with store.build("out", "merged", source="test", path=tmp_path / "out") as build:
        (build.tmp / "config.json").write_text("{}")
    assert not store.has("out")  # a folded copy in the cache is never asked for its entry
    assert build.entry.path == (tmp_path / "out").resolve()
    assert store.get("out").path == (tmp_path / "out").resolve() and store.get("out").source == "registered"


def test_the_common_fields_are_not_recorded(store: ModelStore):
    with pytest.raises(ValueError, match="peak_rss_mb"), store.build("y", "merged", source="t") as build:
        build.record(peak_rss_mb=1.0)
    assert not (store.models_dir / "y").exists()


def test_a_stored_recipe_is_read_by_todays_schema_and_an_empty_section_is_no_setting(store: ModelStore):
    _build2(store, "old", _Recipe2(steps={}))
    manifest = store.models_dir / "old" / MANIFEST
    data = json.loads(manifest.read_text())
    del data["config"]["lr"]  # a field the schema gained after this was built (its default is what ran)
    manifest.write_text(json.dumps(data))
    assert store.recipe_changes("old", _Recipe2(steps={})) == []
    assert _build2(store, "old", _Recipe2(steps={"shown": False}))  # only a NOT_RECIPE key in the section


def test_an_artifact_without_built_from_is_stale_once_an_input_is_newer(store: ModelStore):
    _build2(store, "a", _Recipe2())
    _build2(store, "merged", _Recipe2())  # built before manifests kept their inputs
    time.sleep(1.1)
    store.remove("a")
    _build2(store, "a", _Recipe2(lr=1e-4))
    (change,) = store.recipe_changes("merged", _Recipe2(), ["a"])
    assert change.startswith("a rebuilt since (at ")


def test_a_registered_or_output_dir_artifact_is_checked_where_it_lives(store: ModelStore, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    with store.build("out", "expert", source="test", config=_Recipe2(output_dir=str(elsewhere)),
                     path=elsewhere) as build:  # as `runtime train` builds a config with output_dir
        (build.tmp / "config.json").write_text("{}")
    assert store.recipe_changes("out", _Recipe2(output_dir=str(elsewhere), lr=0.5)) == ["lr: 0.001 -> 0.5"]
    store.register("kept", elsewhere, kind="expert")  # a registration of a built folder
    assert store.recipe_changes("kept", _Recipe2(lr=0.5)) == ["lr: 0.001 -> 0.5"]
