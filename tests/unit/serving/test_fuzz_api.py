"""Fuzzing the request schemas (hypothesis, fake engine): whatever arrives, no 5xx, every error in the OpenAI shape,
and the server keeps answering."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_fakes import make_client

from runtime.serving import ServerSettings

JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
MODELS = st.sampled_from(["generation", "review", "auto", "experts", "merged/review", "gen-lora", "nope", ""])
TEXT_PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio"]),
                                   "text": st.none() | st.text(max_size=30)})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "x"])},
                                optional={"content": st.text(max_size=40) | st.lists(TEXT_PART, max_size=2) | JSON,
                                          "name": st.text(max_size=5) | JSON})
SAMPLING = {
    "max_tokens": st.integers(-5, 5000) | JSON, "max_completion_tokens": st.integers(-1, 40),
    "min_tokens": st.integers(-2, 10) | JSON, "ignore_eos": st.booleans() | JSON,
    "temperature": st.floats(-1, 3, allow_nan=False) | st.none(), "top_p": st.floats(-0.5, 1.5, allow_nan=False),
    "stop": st.none() | st.text(max_size=4) | st.lists(st.text(max_size=3), max_size=6),
    "seed": st.integers(-2**65, 2**65), "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | JSON}) | JSON,
    "n": st.integers(0, 3), "logprobs": st.booleans() | JSON, "tool_choice": st.sampled_from(["none", "auto",
                                                                                            "required"]) | JSON,
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]) | JSON,
    "user": st.text(max_size=5) | JSON, "unknown_arg": JSON,
}
CHAT = st.fixed_dictionaries({"model": MODELS | JSON, "messages": st.lists(MESSAGE, max_size=3) | JSON},
                             optional=SAMPLING | {"tools": JSON})
COMPLETION = st.fixed_dictionaries({"model": MODELS, "prompt": st.text(max_size=30) | st.lists(st.text(max_size=5),
                                                                                              max_size=2) | JSON},
                                   optional=SAMPLING | {"echo": JSON, "best_of": st.integers(0, 3), "suffix": JSON})
LORA = st.fixed_dictionaries({}, optional={"lora_name": st.text(max_size=12) | JSON,
                                           "lora_path": st.text(max_size=20) | JSON, "lora_int_id": JSON})
RAW = st.binary(max_size=64) | st.builds(lambda v: json.dumps(v).encode(), JSON)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    lora_dir = tmp_path_factory.mktemp("loras")
    client, _ = make_client(ServerSettings(enable_lora_updates=True, lora_dirs=[lora_dir], max_body_bytes=4096))
    return client


def check(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == r.status_code
        assert isinstance(err["message"], str) and err["message"]


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=CHAT)
def test_chat_completions_never_5xx(fuzz_client, body):
    check(fuzz_client.post("/v1/chat/completions", json=body))


@FUZZ
@given(body=COMPLETION)
def test_completions_never_5xx(fuzz_client, body):
    check(fuzz_client.post("/v1/completions", json=body))


@FUZZ
@given(path=st.sampled_from(["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]), body=LORA)
def test_adapter_routes_never_5xx(fuzz_client, path, body):
    check(fuzz_client.post(path, json=body))


@FUZZ
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/load_lora_adapter", "/v1/x"]), raw=RAW)
def test_raw_bodies_never_5xx(fuzz_client, path, raw):
    check(fuzz_client.post(path, content=raw, headers={"content-type": "application/json"}))


def test_the_server_still_answers_after_the_fuzzing(fuzz_client):
    assert fuzz_client.get("/health").status_code == 200
    ok = fuzz_client.post("/v1/chat/completions", json={"model": "generation", "max_tokens": 3,
                                                        "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    assert 'mixmerge_errors_total{type="internal_error"}' not in fuzz_client.get("/metrics").text
