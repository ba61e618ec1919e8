"""The bench's zoo refuses, before anything runs, models built from other recipes than its configs now name."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from runtime.bench.zoo import ZooStep, check_recipes
from runtime.errors import ModelNotFoundError, ModelStoreError
from runtime.models import ModelStore


class _Train(BaseModel):
    steps: int = 20


def _built(store: ModelStore, name: str, config: BaseModel, inputs: list[str]) -> None:
    with store.build(name, "expert", source="test", config=config, inputs=inputs) as build:
        (build.tmp / "config.json").write_text("{}")


def test_a_changed_recipe_and_every_merge_built_from_it_are_named_in_one_error(store_home):
    store = ModelStore()
    _built(store, "base", _Train(), [])
    for name in ("review", "completion"):
        _built(store, name, _Train(), ["base"])
    _built(store, "merged", _Train(), ["base", "review", "completion"])
    steps = [ZooStep("review", "train", _Train(steps=60), ["base"], "train"),
             ZooStep("completion", "train", _Train(), ["base"], "train"),
             ZooStep("merged", "merge", _Train(), ["base", "review", "completion"], "sweep"),
             ZooStep("absent", "train", _Train(steps=5), ["base"], "train")]  # not built yet: built, not refused
    with pytest.raises(ModelStoreError) as e:
        check_recipes(steps, store)
    assert "review (steps: 20 -> 60)" in e.value.message and "merged (built from review" in e.value.message
    assert "completion" not in e.value.message.split(":", 1)[1] and "absent" not in e.value.message
    assert "`runtime models remove review merged`" in e.value.fix
    check_recipes(steps[1:2], store)  # an unchanged recipe passes


def test_a_zoo_step_runs_in_a_child_and_its_error_comes_back_with_its_fix(store_home):
    from runtime.bench.zoo import Progress, build_step
    from runtime.process import in_child

    with pytest.raises(ModelNotFoundError) as e:  # no such model to pull: refused in the child, raised here
        in_child(build_step, "pull", "no-such-model", ModelStore().home, None, on_message=Progress().relayed)
    assert "no-such-model" in e.value.message and e.value.fix
