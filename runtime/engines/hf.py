"""transformers (+ PEFT) generation: load a model directory, render prompts, generate a batch.

``HFRunner`` is the synchronous core: one call runs one padded batch through ``model.generate``. The serving
engine (scheduler, several adapters, streaming) builds on it; ``runtime eval`` uses it directly.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.engines.attention import use_decode_attention
from runtime.engines.base import SamplingParams
from runtime.engines.prepacked import dense_weights_needed, prepack, prepacked_bytes
from runtime.engines.scheduler import last_position
from runtime.errors import BadRequestError, ModelStoreError
from runtime.hardware import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
Message = dict[str, str]


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    token_ids: list[int] = field(default_factory=list, repr=False)


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

    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> list[Generation]:
        """Generate for every prompt, in batches of ``max_batch_size`` sorted by length; results in input order.
        ``on_batch(indices, generations)`` after each batch: which prompts it answered and how (progress bars,
        caches that keep what an interrupted run finished)."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start:start + self.max_batch_size]
            generations = self.generate_batch([prompts[i] for i in chunk], params)
            for i, gen in zip(chunk, generations, strict=True):
                results[i] = gen
            if on_batch:
                on_batch(chunk, generations)
        return [r for r in results if r is not None]

    def generate_batch(self, prompts: Sequence[str], params: SamplingParams) -> list[Generation]:
        import torch

        inputs = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(self.device)
        kwargs = generate_kwargs(params, params.max_new_tokens, self.tokenizer.pad_token_id)
        width = inputs["input_ids"].shape[1]
        self.check_fits(int(inputs["attention_mask"].sum(dim=1).max()), params.max_new_tokens)
        if params.stop:
            kwargs["stopping_criteria"] = [StopOnText(self.tokenizer, width, params.stop)]
        with torch.inference_mode():
            out = generate_prefilled(self.model, inputs, **kwargs)
        return [self._result(row[width:].tolist(), int(mask.sum()), params)
                for row, mask in zip(out, inputs["attention_mask"], strict=True)]

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """A 400 for a prompt that leaves no room for its answer (the one place this is decided)."""
        if prompt_tokens + max_new_tokens > self.context_length:
            raise BadRequestError(
                f"prompt of {prompt_tokens} tokens + max_tokens {max_new_tokens} exceeds the context of "
                f"{self.context_length} tokens", fix="shorten the prompt or lower max_tokens", param="max_tokens")

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length)

    def _result(self, ids: list[int], prompt_tokens: int, params: SamplingParams) -> Generation:
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        cut = next((i for i, t in enumerate(ids) if t in eos), None)
        kept = ids[:cut] if cut is not None else ids
        text = self.tokenizer.decode(kept, skip_special_tokens=True).rstrip("\ufffd")  # a cut multi-byte char
        stopped = cut is not None
        for stop in params.stop:
            if stop in text:
                text, stopped = text[: text.index(stop)], True
        finish = "stop" if stopped or len(kept) < params.max_new_tokens else "length"
        return Generation(text, prompt_tokens, len(kept), finish, kept)


def generate_kwargs(params: SamplingParams, max_new_tokens: int, pad_token_id: int) -> dict:
    """``model.generate`` arguments for greedy (temperature 0) or seeded sampling."""
    import torch

    kwargs: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
    if not params.greedy:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        if params.seed is not None:
            torch.manual_seed(params.seed)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and pad, and the generation config's EOS (Qwen has two)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id, *configured) if i is not None}


def prefill_rows(model, input_ids, attention_mask, adapter_names: Sequence[str] | None = None):
    """The KV cache of a left-padded batch's prompts but their last token, computed a row at a time.

    A padded batch's prompt pass computes every pad position and, with a padding mask, takes SDPA's slow masked
    path: on 16 review prompts (525 tokens on average, up to 1,472) the batched pass took 27 s on 2 cores, the
    rows one by one 11.5 s. The rows' caches are left-padded into one (the pads are masked as before), and
    ``generate`` then runs only the last prompt token and the new ones, batched. Greedy answers are unchanged
    (tests compare them). Returns None where it would not help: one row, or rows of equal length.
    """
    import torch
    from torch.nn.functional import pad
    from transformers import DynamicCache

    lengths = attention_mask.sum(dim=1).tolist()
    width = input_ids.shape[1]
    if len(lengths) < 2 or len(set(lengths)) == 1:
        return None
    rows = []
    for i, length in enumerate(lengths):
        cache = DynamicCache()
        if length > 1:
            extra = {"adapter_names": [adapter_names[i]]} if adapter_names else {}
            model(input_ids=input_ids[i:i + 1, width - length:width - 1], past_key_values=cache, use_cache=True,
                  logits_to_keep=last_position(length - 1, input_ids.device), **extra)
        rows.append(cache)
    shaped = next(c for c in rows if c.get_seq_length())  # some row is longer than one token: lengths differ
    merged = DynamicCache()
    for layer, template in enumerate(shaped.layers):
        keys, values = [], []
        for cache in rows:
            if cache.get_seq_length():
                k, v = cache.layers[layer].keys, cache.layers[layer].values
            else:
                k = v = template.keys.new_zeros(*template.keys.shape[:2], 0, template.keys.shape[3])
            keys.append(pad(k, (0, 0, width - 1 - k.shape[2], 0)))
            values.append(pad(v, (0, 0, width - 1 - v.shape[2], 0)))
        merged.update(torch.cat(keys), torch.cat(values), layer)
    return merged


def generate_prefilled(model, inputs, **kwargs):
    """``model.generate`` on a left-padded batch, its prompts prefilled a row at a time where that helps (the one
    way the runner, the serving engine and the benchmark generate)."""
    cache = prefill_rows(model, inputs["input_ids"], inputs["attention_mask"], kwargs.get("adapter_names"))
    return model.generate(**inputs, **kwargs, **({"past_key_values": cache} if cache is not None else {}))


class StopOnText:
    """Stop a row once its *generated* text contains a stop string (OpenAI semantics: the prompt does not count,
    unlike transformers' ``stop_strings``, which also matches text that straddles the prompt's end)."""

    def __init__(self, tokenizer, prompt_width: int, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.width = prompt_width
        self.stops = tuple(stops)
        self.tail = max(len(s) for s in self.stops) + 8  # tokens to decode: every token is at least one char

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [any(stop in self.tokenizer.decode(row[self.width:][-self.tail:].tolist(), skip_special_tokens=True)
                    for stop in self.stops) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
