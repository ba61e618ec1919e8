"""The server with the fake engine in process: wire shapes, streaming, headers, errors, auth, fallbacks."""

from __future__ import annotations

import json

from serving_fakes import make_client

from runtime.serving import ServerSettings

CHAT = {"model": "generation", "messages": [{"role": "user", "content": "Write a function."}], "max_tokens": 5}


def test_chat_completion_shape_usage_and_route_headers(client):
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "generation"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"].split()) == 5
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5
    assert r.headers["x-mixmerge-deployment"] == "experts" and r.headers["x-mixmerge-adapter"] == "gen-lora"
    assert r.headers["x-mixmerge-task"] == "generation" and r.headers["x-mixmerge-engine"] == "base"


def test_completions_endpoint_and_stop(client):
    r = client.post("/v1/completions", json={"model": "merged", "prompt": "x = 1", "max_tokens": 6})
    full = r.json()["choices"][0]["text"]
    stop = full.split()[2]
    r = client.post("/v1/completions", json={"model": "merged", "prompt": "x = 1", "max_tokens": 6, "stop": stop})
    assert r.json()["choices"][0]["text"] == full[: full.index(stop)].rstrip()
    assert r.json()["choices"][0]["finish_reason"] == "stop"


def test_streaming_chat_sends_role_deltas_usage_and_done(client):
    body = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done():
    client, engines = make_client()
    engine = engines["/models/base"]
    real = engine.stream

    async def breaks(request):  # two deltas, then an engine bug (not a MixmergeError)
        n = 0
        async for delta in real(request):
            yield delta
            n += 1
            if n == 2:
                raise ValueError("tensor shapes do not match")

    engine.stream = breaks
    with client.stream("POST", "/v1/chat/completions", json=CHAT | {"stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 500 and "ValueError: tensor shapes do not match" in error["message"]


def test_models_lists_tasks_deployments_and_adapters_with_parent(client):
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert {"auto", "generation", "review", "experts", "merged", "gen-lora"} <= set(data)
    assert data["gen-lora"]["kind"] == "adapter" and data["gen-lora"]["parent"] == "base"


def test_errors_use_the_openai_shape_and_status():
    client, _ = make_client()
    r = client.post("/v1/chat/completions", json=CHAT | {"model": "reveiw"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert "unknown model 'reveiw'" in r.json()["error"]["message"] and r.json()["error"]["param"] == "model"
    for bad in (CHAT | {"temperature": 7}, CHAT | {"messages": []}, CHAT | {"n": 3}, {"model": "generation"}):
        r = client.post("/v1/chat/completions", json=bad)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", bad
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 5000})
    assert r.status_code == 400 and "exceeds the context" in r.json()["error"]["message"]
    assert client.get("/health").status_code == 200  # still alive


def test_api_key_and_body_limit():
    client, _ = make_client(ServerSettings(api_key="sekrit", max_body_bytes=2000))
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    ok = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200
    big = CHAT | {"messages": [{"role": "user", "content": "x" * 5000}]}
    r = client.post("/v1/chat/completions", json=big, headers={"Authorization": "Bearer sekrit"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_a_failing_expert_falls_back_to_the_merged_model_and_is_counted():
    client, engines = make_client(fail_adapters=("gen-lora",))
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.headers["x-mixmerge-deployment"] == "merged"
    assert r.headers["x-mixmerge-route-reason"].startswith("fallback from experts to merged")
    metrics = client.get("/metrics").text
    assert 'mixmerge_fallbacks_total{from_deployment="experts",to_deployment="merged"} 1.0' in metrics


def test_a_failing_expert_falls_back_when_streaming_too():
    client, _ = make_client(fail_adapters=("gen-lora",))
    with client.stream("POST", "/v1/chat/completions", json=CHAT | {"stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-mixmerge-deployment"] == "merged"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and len(lines) > 3


def test_metrics_count_requests_tokens_and_routes(client):
    client.post("/v1/chat/completions", json=CHAT)
    text = client.get("/metrics").text
    assert 'mixmerge_requests_total{adapter="gen-lora",deployment="experts",endpoint="chat",status="200"} 1.0' in text
    assert 'mixmerge_tokens_total{adapter="gen-lora",deployment="experts",kind="completion"} 5.0' in text
    assert "mixmerge_request_latency_seconds_bucket" in text and "mixmerge_queue_depth" in text


def test_lora_updates_are_off_by_default_and_confined_when_on(tmp_path):
    client, _ = make_client()
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)})
    assert r.status_code == 404 and "--enable-lora-updates" in r.json()["error"]["message"]
    allowed = tmp_path / "adapters"
    (allowed / "new").mkdir(parents=True)
    client, engines = make_client(ServerSettings(enable_lora_updates=True, lora_dirs=[allowed]))
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "new", "lora_path": "/etc"})
    assert r.status_code == 400 and "outside the allowed" in r.json()["error"]["message"]
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "new", "lora_path": str(allowed / "new")})
    assert r.status_code == 200 and "new" in engines["/models/base"].adapters()
    assert client.post("/v1/chat/completions", json=CHAT | {"model": "new"}).headers["x-mixmerge-adapter"] == "new"
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "new"}).status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT | {"model": "new"}).status_code == 404


def test_timeouts_are_504_and_an_unhealthy_engine_is_503():
    client, engines = make_client(ServerSettings(request_timeout_s=0.05), delay_s=0.05)
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"

    async def sick() -> bool:
        return False

    engines["/models/merged"].health = sick
    assert client.get("/health").status_code == 503
