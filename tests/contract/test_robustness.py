"""Concurrency, client disconnects, and the optional API key."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import (LONG_PROMPT, assert_openai_error, assert_usage, chat_body, httpx, iter_sse,
                     read_chat_stream)

pytestmark = pytest.mark.contract

PROMPTS = ["What is the capital of France?", "Name three colours.", "What is 2 + 2?"]


def test_three_concurrent_streams_complete(http, model):
    def one(prompt):
        body = chat_body(model, prompt, max_tokens=16, stream=True,
                         stream_options={"include_usage": True})
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200, resp.read()[:500]
            return read_chat_stream(resp)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, PROMPTS))
    for prompt, s in zip(PROMPTS, results):
        assert s.done and not s.after_done, f"{prompt!r}: no [DONE]"
        assert s.content.strip(), f"{prompt!r}: no content"
        assert len(s.finish_reasons) == 1 and s.finish_reasons[0] in ("stop", "length"), s.finish_reasons
        assert len(s.usage_chunks) == 1, f"{prompt!r}: {len(s.usage_chunks)} usage chunks"
        assert_usage(s.usage_chunks[0]["usage"], 16, s.finish_reasons[0])
    assert len({s.chunks[0]["id"] for s in results}) == 3, "concurrent streams share an id"


def test_disconnect_mid_stream_then_server_still_serves(http, base_url, auth_headers, model):
    body = chat_body(model, LONG_PROMPT, max_tokens=512, stream=True)
    with httpx.Client(base_url=base_url, headers=auth_headers, timeout=120.0) as own:
        with own.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200, resp.read()[:500]
            for ev in iter_sse(resp.iter_lines()):
                if ev.data == "[DONE]":
                    pytest.fail("the stream ended before any content arrived")
                chunk = json.loads(ev.data)
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    break  # got real text: walk away mid-generation
    # Dropping the client (and its pool) closes the connection.
    start = time.monotonic()
    health = http.get("/health", timeout=10.0)
    assert health.status_code == 200, health.text
    assert time.monotonic() - start < 10
    resp = http.post("/v1/chat/completions", json=chat_body(model, max_tokens=8))
    assert resp.status_code == 200, resp.text[:500]
    assert resp.json()["choices"][0]["message"]["content"].strip()


@pytest.fixture()
def key(api_key):
    if not api_key:
        pytest.skip("no --api-key given: the auth tests need a server started with --api-key")
    return api_key


def test_api_key_required(base_url, key, model):
    body = chat_body(model, max_tokens=2)
    with httpx.Client(base_url=base_url, timeout=60.0) as anon:
        assert_openai_error(anon.post("/v1/chat/completions", json=body), 401)
        assert_openai_error(anon.post("/v1/chat/completions", json=body,
                                      headers={"Authorization": "Bearer not-the-key"}), 401)
        assert_openai_error(anon.post("/v1/completions", json={"model": model, "prompt": "Hi",
                                                               "max_tokens": 2}), 401)
        resp = anon.post("/v1/messages", json={"model": model, "max_tokens": 2,
                                               "messages": [{"role": "user", "content": "Hi"}]})
        assert resp.status_code == 401, resp.text[:300]
        ok = anon.post("/v1/chat/completions", json=body, headers={"x-api-key": key})
        assert ok.status_code == 200, ok.text[:300]
        ok = anon.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.text[:300]


def test_health_stays_public(base_url, key):
    with httpx.Client(base_url=base_url, timeout=30.0) as anon:
        resp = anon.get("/health")
    assert resp.status_code == 200 and resp.json().get("status") == "ok", resp.text
