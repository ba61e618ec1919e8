from tiny import build_tiny_tokenizer

from training.examples import IGNORE, BuildStats, PadCollator, Row, build_row, pack

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}]


def test_the_prompt_mask_is_exact():
    tok = build_tiny_tokenizer()
    row = build_row(tok, MESSAGES, "    return a + b", max_length=512)
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert row.labels[:n_prompt] == [IGNORE] * n_prompt
    assert row.labels[n_prompt:] == row.input_ids[n_prompt:]
    assert tok.decode(row.input_ids[n_prompt:]) == "    return a + b<|im_end|>\n"  # end of turn is learned
    assert tok.decode(row.input_ids) == tok.apply_chat_template(
        MESSAGES + [{"role": "assistant", "content": "    return a + b"}], tokenize=False)


def test_base_models_get_raw_prompt_and_eos():
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    row = build_row(tok, MESSAGES, "x", max_length=512)
    response = [t for t in row.labels if t != IGNORE]
    assert tok.decode(response) == "x<|im_end|>"


def test_long_prompts_are_dropped_and_long_responses_cut():
    tok = build_tiny_tokenizer()
    stats = BuildStats()
    assert build_row(tok, [{"role": "user", "content": "word " * 400}], "x", max_length=64, stats=stats) is None
    row = build_row(tok, MESSAGES, "y = 1\n" * 100, max_length=64, stats=stats)
    assert len(row.input_ids) == 64
    assert (stats.kept, stats.dropped_long_prompt, stats.truncated_response) == (1, 1, 1)


def test_pack_and_collate():
    rows = [Row([1, 2, 3], [IGNORE, 2, 3]), Row([4, 5], [IGNORE, 5]), Row([6, 7, 8, 9], [IGNORE, 7, 8, 9])]
    packed = pack(rows, max_length=5)
    assert packed == [Row([1, 2, 3, 4, 5], [IGNORE, 2, 3, IGNORE, 5]), Row([6, 7, 8, 9], [IGNORE, 7, 8, 9])]
    batch = PadCollator(0)([{"input_ids": r.input_ids, "labels": r.labels} for r in packed])
    assert batch["input_ids"].tolist()[1] == [6, 7, 8, 9, 0]
    assert batch["labels"].tolist()[1] == [IGNORE, 7, 8, 9, IGNORE]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0]


def test_response_logits_give_the_same_loss_from_fewer_positions(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [Row(list(range(5, 25)), [IGNORE] * 15 + list(range(20, 25))),
            Row(list(range(30, 42)), [IGNORE] * 9 + list(range(39, 42))),
            Row(list(range(50, 68)), [IGNORE] * 12 + list(range(62, 68)))]
    batch = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]
    full, cut = PadCollator(0)(batch), PadCollator(0, response_logits=True)(batch)
    assert cut["logits_to_keep"] == 20 - 8 and cut["labels"].shape == (3, 12)  # from the position before 9 on
    with torch.no_grad():
        out = model(**cut)
        assert out.logits.shape[1] == 12
        assert torch.allclose(model(**full).loss, out.loss, atol=1e-6)
