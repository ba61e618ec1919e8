"""The converted SmolLM2 directory is the GGUF model, token for token, and the CLI shows it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from greedy import greedy_ids
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime.models import ModelEntry

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "What does this code do?\n\ndef f(xs):\n    return [x for x in xs if x % 2 == 0]",
    "Complete the next line:\n\nfor i in range(10):",
]


def test_converted_directory_generates_exactly_what_the_gguf_generates(smollm2: ModelEntry, smollm2_gguf: Path):
    converted = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    original = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                    dtype=torch.float32).eval()
    original_tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    for prompt in PROMPTS:
        ids = greedy_ids(converted, tokenizer, prompt, 24)
        assert len(ids) > 4
        assert ids == greedy_ids(original, original_tok, prompt, 24), prompt
    assert tokenizer.decode(greedy_ids(converted, tokenizer, PROMPTS[0], 24)).strip()  # says something


def test_converted_directory_is_plain_safetensors_with_chat_template(smollm2: ModelEntry):
    files = {p.name for p in smollm2.path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".gguf") or f.endswith(".bin") for f in files)
    config = json.loads((smollm2.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.model_max_length == config["max_position_embeddings"]


@pytest.mark.parametrize("args", [["models", "pull", "smollm2-135m"], ["models", "list", "--json"]])
def test_cli_shows_the_converted_model(smollm2: ModelEntry, args: list[str]):
    runtime = Path(sys.executable).parent / "runtime"
    proc = subprocess.run([str(runtime), *args], capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    if "--json" in args:
        rows = {r["name"]: r for r in json.loads(proc.stdout)}
        assert rows["smollm2-135m"]["kind"] == "base"
        assert rows["smollm2-135m"]["size_bytes"] > 500e6
    else:
        assert "already in the store" in proc.stdout
