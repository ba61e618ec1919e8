"""Greedy token ids of a chat prompt: how the integration tests compare a converted model with its GGUF."""

from __future__ import annotations


def greedy_ids(model, tokenizer, prompt: str, n: int) -> list[int]:
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()
