"""One way to build an artifact (a model, an adapter or a folded expert): ``ModelStore.build``.

    with store.build(name, "merged", parent=base.name, config=config, inputs=experts,
                     source="runtime merge") as build:
        if not build.reused:                # a finished artifact of that name and recipe is reused, never rebuilt
            write_the_files(build.tmp)      # a temporary sibling of build.path, renamed only if the block succeeds
            build.record(MergeRecord(...))  # kind-specific manifest fields
    return build.entry

On success the build writes one manifest (``Manifest``: name, kind, format, parent, source, config, wall time,
the peak RSS of this build alone, git sha, then the kind-specific fields) into the directory and renames it into
place; on failure nothing is left that looks finished. A directory with a ``manifest.json`` is finished.

A finished artifact is reused only for the recipe that made it: the same config (but for its ``NOT_RECIPE``
keys, such as ``output_dir``) from the same inputs (each input artifact's ``created`` stamp, recorded as
``built_from``). Another recipe under the same name is refused with what changed, never silently reused: a
config edited from 20 to 60 steps must not be answered by the 20-step model, nor a merge by the experts it was
merged from before they were retrained.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from runtime.errors import ModelStoreError
from runtime.memory import BuildPeak

if TYPE_CHECKING:
    from runtime.models import ModelEntry, ModelStore

ModelKind = Literal["base", "expert", "merged", "mixed", "adapter"]
MODEL_KINDS: tuple[str, ...] = ("base", "expert", "merged", "mixed", "adapter")
MANIFEST = "manifest.json"


def git_sha() -> str | None:
    """The commit of the code that runs (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` only if the block succeeds.

    Leftovers of a killed process (``.tmp-NAME-*``) are removed on the next attempt and never listed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            raise ModelStoreError(f"{final} appeared while it was being written", fix="remove it and try again")
        tmp.chmod(0o755)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Manifest(BaseModel):
    """``manifest.json``: what every artifact says about itself. The fields below are common to all; each kind
    adds its own after them (a training run's loss curve and budget, a merge's inputs, a sweep's scores, a pull's
    files). Manifests written before builds measured themselves lack the optional fields and still validate."""

    model_config = ConfigDict(extra="allow", frozen=True)

    created: str | None = None
    name: str
    kind: ModelKind
    format: Literal["full", "lora"] | None = None
    parent: str | None = None  # the base model an adapter applies to, or a model was tuned or merged from
    source: str = "?"  # what built it: "runtime train", "runtime merge", a pulled package==version
    config: dict[str, Any] | None = None  # the config it was built from, as loaded (overrides applied)
    wall_s: float | None = None
    peak_rss_mb: float | None = None  # this process's and its children's while the build ran (not before it)
    git_sha: str | None = None

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        try:
            data = json.loads((directory / MANIFEST).read_text())
            return cls.model_validate({"name": directory.name, **data})
        except (OSError, ValueError, ValidationError) as e:
            raise ModelStoreError(f"{directory / MANIFEST} is not a valid manifest ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0]})", fix="remove the directory and build it again") from e

    def save(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @property
    def extras(self) -> dict[str, Any]:
        """The kind-specific fields."""
        return dict(self.__pydantic_extra__ or {})


@dataclass
class Build:
    """One artifact being built or reused (``ModelStore.build``). Write the files into ``tmp``; add the
    kind-specific manifest fields with ``record``."""

    store: ModelStore
    name: str
    kind: ModelKind
    path: Path  # where the finished artifact lives
    parent: str | None = None
    config: dict[str, Any] | None = None
    source: str = "?"
    inputs: dict[str, str | None] | None = None  # input artifact -> its manifest's ``created`` (``built_from``)
    schema: type[BaseModel] | None = None  # the config's class: a stored config is read through it to compare
    reused: bool = False  # a finished artifact of the same recipe was found: build nothing
    tmp: Path | None = None  # where to write (None when reused)
    manifest: Manifest | None = None  # the finished or reused artifact's
    extras: dict[str, Any] = field(default_factory=dict)

    def record(self, *records: BaseModel, **fields: Any) -> None:
        """Kind-specific manifest fields, as typed records or keywords (never one of the common fields)."""
        for r in records:
            fields = r.model_dump(mode="json") | fields
        fields = {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in fields.items()}
        clash = sorted(set(fields) & set(Manifest.model_fields))
        if clash:
            raise ValueError(f"{', '.join(clash)} are written by the build itself, not recorded")
        self.extras.update(fields)

    @property
    def entry(self) -> ModelEntry:
        """The artifact in the store; one written outside models/ (``output_dir``) is registered under its name."""
        return self.store.keep(self.name, self.path, self.kind, self.parent)

    def recipe_changes(self, built: Manifest) -> list[str]:
        """How this build's recipe differs from the finished artifact's ("key: was -> now"); [] if it does not.
        A side the manifest does not record (one written before it recorded them) is not compared."""
        changes = []
        if self.config is not None and built.config is not None:
            skip = getattr(self.schema, "NOT_RECIPE", frozenset())  # keys that do not change what is built
            old, new = _flat(self._current(built.config), skip), _flat(self.config, skip)
            changes += [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}"
                        for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        was = built.extras.get("built_from")
        if self.inputs is not None and was is not None:
            # "None": an input recorded before unmanaged inputs were stamped (``ModelStore.stamp``): not compared
            changes += [f"{k} rebuilt since (was {was.get(k)}, now {self.inputs.get(k)})"
                        for k in sorted(set(was) | set(self.inputs))
                        if was.get(k) != self.inputs.get(k) and was.get(k) != "None"]
        elif self.inputs is not None and built.created:  # built before manifests kept their inputs: by the clock
            changes += [f"{k} rebuilt since (at {when}, after this was built at {built.created})"
                        for k, when in sorted(self.inputs.items())
                        if when and when[:1].isdigit() and when > built.created]  # a time, not "unmanaged ..."
        return changes

    def _current(self, config: dict[str, Any]) -> dict[str, Any]:
        """A stored config read by today's schema (defaults added since filled in), so that only real changes
        count; as stored where today's schema no longer reads it."""
        if self.schema is None:
            return config
        try:
            return self.schema.model_validate(config).model_dump(mode="json")
        except (ValidationError, ValueError, TypeError):
            return config

    def _finish(self, wall_s: float, peak_rss_mb: float, sha: str | None) -> None:
        assert self.tmp is not None
        if self.inputs is not None:
            self.extras["built_from"] = self.inputs
        fmt = "lora" if (self.tmp / "adapter_config.json").is_file() else "full"
        self.manifest = Manifest(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), name=self.name, kind=self.kind,
            format=fmt, parent=self.parent, source=self.source, config=self.config, wall_s=round(wall_s, 2),
            peak_rss_mb=peak_rss_mb, git_sha=sha, **self.extras)
        self.manifest.save(self.tmp)


@contextlib.contextmanager
def build_dir(build: Build) -> Iterator[Build]:
    """Reuse ``build.path`` if it is finished; else yield with ``build.tmp`` and write the manifest on success."""
    final = build.path
    if (final / MANIFEST).is_file():
        built = Manifest.load(final)
        if changes := build.recipe_changes(built):
            shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            raise ModelStoreError(f"'{build.name}' at {final} was built from another recipe ({shown})",
                                  fix=f"`runtime models remove {build.name}` to build it from this one, or give "
                                      "the new recipe another name")
        build.reused, build.manifest = True, built
        build.kind, build.parent = build.manifest.kind, build.manifest.parent
        yield build
        return
    if final.exists():
        raise ModelStoreError(f"{final} exists but has no manifest (left by something else)",
                              fix="remove it or choose another output_dir")
    start, sha = time.perf_counter(), git_sha()  # a commit made while it builds is not the code that built it
    with atomic_dir(final) as tmp, BuildPeak() as peak:
        build.tmp = tmp
        yield build
        build._finish(time.perf_counter() - start, peak.mb, sha)


def _flat(tree: dict[str, Any], skip: frozenset[str], prefix: str = "") -> dict[str, Any]:
    """{"training.max_steps": 20, ...}: a nested config as dotted keys, without those in ``skip``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in skip:
            continue
        if isinstance(value, dict):  # an empty section is no setting: `training: {}` equals no `training:`
            out |= _flat(value, skip, f"{dotted}.")
        else:
            out[dotted] = value
    return out
