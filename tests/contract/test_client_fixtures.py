"""The agent clients' recorded request bodies (tests/fixtures/clients, captured from Claude Code
2.1.328, Codex 0.169.0 and opencode 1.18.33 with their texts cut) replayed against the server:
the small ones generate a few tokens and must stream to a clean end; the large ones (many tools)
go through Anthropic's token count, which parses and renders them exactly as a generation would."""

import json
from pathlib import Path

import pytest

from support import iter_sse

pytestmark = pytest.mark.contract

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clients"
HEADERS = {"anthropic-version": "2023-06-01",
           "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}


def load(name):
    return json.loads((FIXTURES / name).read_text())


def events(resp):
    out = []
    for ev in iter_sse(resp.iter_lines()):
        if ev.data and ev.data != "[DONE]":
            out.append((ev.event, json.loads(ev.data)))
        elif ev.data == "[DONE]":
            out.append(("done", None))
    return out


@pytest.mark.parametrize("name", ["claude_code_messages_notools.json",
                                  "claude_code_messages_bare_notools.json"])
def test_claude_code_bodies_stream(http, model, name):
    body = {**load(name), "model": model, "max_tokens": 8}
    with http.stream("POST", "/v1/messages?beta=true", json=body, headers=HEADERS) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        got = events(resp)
    kinds = [k for k, _ in got if k != "ping"]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "error" not in kinds, got


@pytest.mark.parametrize("name", ["claude_code_messages.json", "claude_code_count_tokens.json"])
def test_claude_code_bodies_count(http, model, name):
    body = {k: v for k, v in load(name).items() if k not in ("max_tokens", "stream")}
    resp = http.post("/v1/messages/count_tokens?beta=true", json={**body, "model": model},
                     headers=HEADERS)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.json()["input_tokens"] > 100, resp.json()


@pytest.mark.parametrize("name", ["opencode_title.json", "opencode_chat_min.json"])
def test_opencode_bodies_stream(http, model, name):
    body = {**load(name), "model": model, "max_tokens": 8}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        got = events(resp)
    assert got[-1][0] == "done", got[-3:]
    assert any(d and d.get("usage") for _, d in got), "no usage chunk (stream_options.include_usage)"


def test_codex_body_streams(http, model):
    body = {**load("codex_responses_min.json"), "model": model, "max_output_tokens": 8}
    with http.stream("POST", "/v1/responses", json=body) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        got = events(resp)
    kinds = [k for k, _ in got]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
    final = got[-1][1]["response"]
    assert isinstance(final["usage"]["input_tokens"], int) and final["usage"]["output_tokens"] > 0
