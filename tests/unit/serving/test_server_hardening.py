"""Hostile and malformed input: each is a 4xx in the OpenAI shape and the server stays usable (red-team findings)."""

from __future__ import annotations

import pytest
from serving_fakes import make_client

from runtime.serving import ServerSettings

CHAT = {"model": "generation", "messages": [{"role": "user", "content": "Write a function."}], "max_tokens": 5}
AUTH = {"Authorization": "Bearer sekrit"}


def assert_openai_error(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    for word in words:
        assert word in err["message"], err["message"]


def test_a_chunked_body_over_the_limit_is_413_without_content_length():
    client, engines = make_client(ServerSettings(max_body_bytes=2000))

    def chunks():
        yield b'{"model": "generation", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_openai_error(r, 413, "limit")
    assert not engines["/models/base"].calls  # refused before any engine saw it
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize("body, param", [
    (CHAT | {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, "messages"),
    (CHAT | {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages"),
    (CHAT | {"seed": 2**64}, "seed"),
    (CHAT | {"seed": -1}, "seed"),
    (CHAT | {"logprobs": True}, "logprobs"),
    (CHAT | {"response_format": {"type": "json_object"}}, "response_format"),
    (CHAT | {"tool_choice": "required"}, "tool_choice"),
    (CHAT | {"logit_bias": {"50256": -100}}, "logit_bias"),
    (CHAT | {"presence_penalty": 0.5}, "presence_penalty"),
    (CHAT | {"frobnicate": 1}, "frobnicate"),
])
def test_bad_or_unsupported_chat_arguments_are_400s_that_name_the_argument(client, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert_openai_error(r, 400, param)
    assert r.json()["error"]["param"] == param
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # same connection, still fine


@pytest.mark.parametrize("extra", [{"prompt": ""}, {"prompt": [""]}, {"prompt": "x", "echo": True},
                                   {"prompt": "x", "best_of": 3}, {"prompt": "x", "suffix": "y"}])
def test_bad_completions_requests_are_400(client, extra):
    assert_openai_error(client.post("/v1/completions", json={"model": "merged"} | extra), 400)


def test_no_op_values_of_unimplemented_arguments_are_accepted(client):
    body = CHAT | {"logprobs": False, "tool_choice": "none", "presence_penalty": 0, "response_format": {"type": "text"},
                   "user": "u1", "temperature": None, "top_p": None, "n": 1}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_min_tokens_and_ignore_eos_reach_the_engine():
    client, engines = make_client()
    r = client.post("/v1/chat/completions", json=CHAT | {"min_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200
    params = engines["/models/base"].calls[-1].params
    assert (params.min_tokens, params.ignore_eos, params.eos_floor) == (3, True, 5)


def test_unknown_routes_and_methods_answer_in_the_openai_shape(client):
    assert_openai_error(client.get("/v1/nothing"), 404, "no route GET /v1/nothing")
    assert_openai_error(client.get("/v1/chat/completions"), 405, "method not allowed")


@pytest.mark.parametrize("name, status", [("", 400), ("a.b", 400), ("../x", 400), ("generation", 400),
                                          ("auto", 400), ("experts", 400), ("gen-lora", 409)])
def test_adapter_names_must_be_safe_and_routable(tmp_path, name, status):
    (tmp_path / "new").mkdir()
    client, engines = make_client(ServerSettings(enable_lora_updates=True, lora_dirs=[tmp_path]))
    r = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(tmp_path / "new")})
    assert_openai_error(r, status)
    assert engines["/models/base"].adapters().get(name) in (None, "/adapters/gen")


def test_a_nul_byte_in_an_adapter_path_is_400(tmp_path):
    client, _ = make_client(ServerSettings(enable_lora_updates=True, lora_dirs=[tmp_path]))
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": f"{tmp_path}/a\0b"})
    assert_openai_error(r, 400, "NUL")


def test_a_deployment_expert_cannot_be_unloaded_through_the_api(tmp_path):
    client, engines = make_client(ServerSettings(enable_lora_updates=True, lora_dirs=[tmp_path]))
    assert_openai_error(client.post("/v1/unload_lora_adapter", json={"lora_name": "gen-lora"}), 409, "deployment")
    assert "gen-lora" in engines["/models/base"].adapters()
    assert client.post("/v1/chat/completions", json=CHAT).headers["x-mixmerge-adapter"] == "gen-lora"


def test_models_show_names_and_only_the_keyed_debug_view_shows_paths():
    client, _ = make_client()
    listing = client.get("/v1/models").text
    assert "/adapters/" not in listing and "gen-lora" in listing
    assert client.get("/v1/debug/adapters").status_code == 404  # no key, no paths
    client, _ = make_client(ServerSettings(api_key="sekrit"))
    assert client.get("/v1/debug/adapters").status_code == 401
    assert client.get("/v1/debug/adapters", headers=AUTH).json()["gen-lora"] == "/adapters/gen"


def test_openapi_describes_every_request_body(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, model in [("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"),
                        ("/v1/load_lora_adapter", "LoadLoraAdapterRequest"),
                        ("/v1/unload_lora_adapter", "UnloadLoraAdapterRequest")]:
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith(model) and model in schemas
    assert {"messages", "max_tokens", "min_tokens", "ignore_eos", "seed"} <= set(schemas["ChatCompletionRequest"]
                                                                                 ["properties"])
