"""transformers (+ PEFT) models for the `hf` engine: load a model directory (prepacked linears, the decode
attention, an adapter), render prompts, check a request fits the context, read and install adapters.

``HFRunner`` holds the model; the serving engine (``hf_engine.py``: continuous batching, several adapters,
streaming) generates with it, online and offline (``offline.py``: ``runtime eval``, the merge sweep, the
self-distilled rewrites). There is no second, padded ``model.generate`` path.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from runtime.engines.attention import use_decode_attention
from runtime.engines.prepacked import dense_weights_needed, prepack, prepacked_bytes
from runtime.errors import BadRequestError, ModelStoreError
from runtime.hardware import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
Message = dict[str, str]


class HFRunner:
    def __init__(self, model_path: str | Path, adapter_path: str | Path | None = None, dtype: str = "float32",
                 max_batch_size: int = 8, device: str = "auto", pack: bool = True) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in DTYPES:
            raise BadRequestError(f"unknown dtype '{dtype}'", fix=f"use one of: {', '.join(DTYPES)}")
        self.device = resolve_device(device)  # auto: the first GPU where torch sees one
        dtype = resolve_dtype(dtype, self.device)  # auto: bfloat16 where that device computes it natively
        self.model_path = Path(model_path)
        self.adapter_path = Path(adapter_path) if adapter_path else None
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, padding_side="left")
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as e:
            raise ModelStoreError(f"could not load the model at {self.model_path}: {e}",
                                  fix="pass a Hugging Face model directory or a name from `runtime models list`") from e
        model = model.to(self.device)
        needs_dense = self.adapter_path is not None and dense_weights_needed(check_adapter(self.adapter_path))
        self.pack = pack and not needs_dense  # (adaptive's folded copies follow the served model)
        if self.pack:
            model = prepack(model)  # before any adapter wraps its linears
        if self.adapter_path is not None:
            model = load_adapter(model, self.adapter_path)
        self.model = use_decode_attention(model.eval())  # one-token steps without SDPA's CPU kernel
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def is_chat(self) -> bool:
        return bool(self.tokenizer.chat_template)

    def render(self, messages: list[Message]) -> str:
        """Messages through the chat template (instruct models), or their contents joined (base models)."""
        if self.is_chat:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in messages if m["role"] != "system")

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """A 400 for a prompt that leaves no room for its answer (the one place this is decided)."""
        if prompt_tokens + max_new_tokens > self.context_length:
            raise BadRequestError(
                f"prompt of {prompt_tokens} tokens + max_tokens {max_new_tokens} exceeds the context of "
                f"{self.context_length} tokens", fix="shorten the prompt or lower max_tokens", param="max_tokens")

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length)


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and pad, and the generation config's EOS (Qwen has two)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id, *configured) if i is not None}


def check_adapter(path: Path) -> dict:
    """Read and check a LoRA adapter directory before any layer is injected: a readable config, a positive rank,
    and weights whose LoRA ranks match it (a config that disagrees with its weights used to leave half-injected
    layers behind on each failed load). Returns the config."""
    import json

    from safetensors import safe_open

    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.is_file():
        raise BadRequestError(f"{path} is not a PEFT adapter directory (no adapter_config.json)", param="lora_path",
                              fix="pass the folder that the LoRA training run saved")
    try:
        config = json.loads(config_file.read_text())
        rank = int(config["r"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadRequestError(f"{config_file} is not a LoRA config ({e})", param="lora_path",
                              fix="pass an adapter saved by PEFT") from e
    if config.get("peft_type", "LORA") != "LORA" or rank <= 0:
        raise BadRequestError(f"{config_file}: only LoRA adapters with a positive rank are served", param="lora_path")
    if weights.is_file():
        try:
            with safe_open(weights, "pt") as f:
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # the header only: no tensor is read
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise BadRequestError(f"{weights} is unreadable ({e})", param="lora_path") from e
        patterns = config.get("rank_pattern") or {}
        for key, shape in shapes.items():
            expected = next((int(r) for p, r in patterns.items() if p in key), rank)
            found = shape[0] if ".lora_A." in key else shape[1] if ".lora_B." in key else expected
            if found != expected:
                raise BadRequestError(f"{path}: rank {expected} in adapter_config.json but {key} has rank {found}",
                                      param="lora_path", fix="save the adapter again with PEFT")
    return config


def load_adapter(model, adapter_path: Path):
    from peft import PeftModel

    check_adapter(adapter_path)
    return PeftModel.from_pretrained(model, adapter_path, torch_device=str(model.device))


def adapter_layers(base_config, peft_config, weights: dict) -> list[tuple[str, object]]:
    """An adapter's LoRA layers by module name, built and filled away from the served model (for ``transplant``):
    a PEFT model over a copy of the base architecture on the meta device (no base weights), its LoRA weights
    assigned from ``weights`` as they are (PEFT's ``set_peft_model_state_dict`` would move them to the meta base's
    device). Raises where the weights do not fit (shape, missing keys); the served model is never touched."""
    import re

    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(base_config)
    skeleton = PeftModel(base, copy.deepcopy(peft_config), adapter_name="skeleton", low_cpu_mem_usage=True)
    named = {re.sub(r"\.(lora_[AB])\.", r".\1.skeleton.", k): v for k, v in weights.items()}
    result = skeleton.load_state_dict(named, strict=False, assign=True)
    missing = [k for k in result.missing_keys if ".skeleton." in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights missing ({missing[:1]}) or unexpected ({result.unexpected_keys[:1]})")
    return [(key, layer) for key, layer in skeleton.eval().named_modules() if isinstance(layer, LoraLayer)]


def transplant(model, layers: list[tuple[str, object]], name: str, peft_config) -> bool:
    """Add an adapter's prebuilt layers (``adapter_layers``) to a PEFT model whose LoRA layers already sit there:
    per layer, the adapter's entries (``adapter_layer_names`` + ``other_param_names``, the lists PEFT's own
    ``delete_adapter`` removes) are set under ``name``. Nothing is walked or created: ~200 dict inserts instead
    of PEFT's injection (0.4 s on SmolLM2-135M, r16, all-linear). False, with nothing changed, where the layers
    do not line up (the caller then injects the PEFT way)."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for key, layer in layers:
        try:
            target = model.get_submodule(key)
        except AttributeError:
            return False
        if not isinstance(target, LoraLayer) or type(target) is not type(layer):
            return False
        pairs.append((target, layer))
    if not pairs:
        return False
    for target, layer in pairs:
        device = target.get_base_layer().weight.device  # the skeleton's weights were read to the CPU
        for attr in (*layer.adapter_layer_names, *layer.other_param_names, "lora_variant"):
            source = getattr(layer, attr, None)
            if source is not None and "skeleton" in source:
                part = source["skeleton"]
                getattr(target, attr)[name] = part.to(device) if hasattr(part, "to") else part
    model.peft_config[name] = peft_config
    return True


def read_adapter(path: Path, base_config=None) -> tuple[object, dict, list | None]:
    """An adapter checked and read without touching any model: its config, its weights in float32 (the dtype
    PEFT gives LoRA layers, upcast from bf16/fp16 by ``autocast_adapter_dtype``) and, given the base model's
    config, its layers prebuilt on a meta skeleton for ``transplant`` (None where that fails: the install then
    injects)."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    if check_adapter(path).get("use_dora"):  # PEFT: "Cannot pass `adapter_names` when DoRA is enabled", every request
        raise BadRequestError(f"{path} is a DoRA adapter (use_dora): PEFT cannot mix DoRA into per-row adapter batches",
                              param="lora_path", fix="merge it into the base model (`runtime merge`) and serve that "
                              "model, or train a plain LoRA adapter (`runtime eval --adapter` runs it alone)")
    try:
        config = PeftConfig.from_pretrained(str(path))
        weights = {k: v.float() for k, v in load_peft_weights(str(path), device="cpu").items()}  # PEFT: GPU if any
    except Exception as e:
        raise BadRequestError(f"adapter {path} is unreadable: {e}", param="lora_path",
                              fix="pass the folder that the LoRA training run saved") from e
    config.inference_mode = True
    built = None
    if base_config is not None:
        try:
            built = adapter_layers(base_config, config, weights)
        except Exception as e:  # the PEFT injection will say what is wrong, and roll back
            log.info("adapter %s: no skeleton (%s); it will be injected", path, e)
    return config, weights, built


def install_adapter(model, name: str, config, weights: dict, layers: list | None = None):
    """The model with one read adapter (``read_adapter``) added: its prebuilt layers set into the LoRA layers
    already there (fast), else PEFT's injection (the first adapter wraps the model in PEFT). A failure raises
    and leaves the model as it was."""
    from peft import PeftModel, set_peft_model_state_dict

    if (why := dense_weights_needed(config)) and prepacked_bytes(model):
        raise BadRequestError(f"adapter for '{name}' cannot be served on this engine's prepacked weights: {why}",
                              param="lora_path", fix="serve it from a deployment with engine.prepack: false, or name "
                              "it among the deployment's adapters so the engine keeps dense weights from the start")
    wrapped = hasattr(model, "peft_config")
    transplanted = wrapped and bool(layers) and transplant(model, layers, name, config)
    if not transplanted:
        try:
            if wrapped:
                model.add_adapter(name, config)
            else:  # in steps, so a failure can unwrap it again
                model = PeftModel(model, config, adapter_name=name)
            result = set_peft_model_state_dict(model, weights, adapter_name=name)
            missing = [k for k in result.missing_keys if ".lora_" in k and f".{name}." in k]
            if missing:
                raise ValueError(f"{len(missing)} LoRA weights missing from the file, e.g. {missing[0]}")
        except Exception as e:
            rolled_back(model, name, wrapped)
            raise BadRequestError(f"adapter for '{name}' does not fit this model: {e}", param="lora_path",
                                  fix="load an adapter trained on this engine's base model") from e
    if getattr(model, "active_adapter", None) not in model.peft_config:
        # the active adapter was evicted (PEFT's delete_adapter leaves it set when none other remains) and a
        # transplant does not activate: PEFT then fails every forward looking its config up
        model.set_adapter(name)
    # an injection builds modules in training mode; a transplant's parts come from a skeleton in inference mode
    # (adapter_layers), and walking every module of the model again took ~20 ms of the held time (SmolLM2-135M)
    return model if transplanted else model.eval()


def rolled_back(model, name: str, was_wrapped: bool):
    """The model without the adapter a failed load left half-injected."""
    if name in getattr(model, "peft_config", {}):
        if not was_wrapped:
            return model.unload()  # drops every LoRA layer: the base model as it was
        model.delete_adapter(name)
    return model
