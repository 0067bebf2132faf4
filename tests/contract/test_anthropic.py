"""POST /v1/messages (Anthropic Messages API), plain and streamed, raw and with the SDK."""

import json
import re

import pytest

from support import FRANCE, LONG_PROMPT, iter_sse

pytestmark = pytest.mark.contract

HEADERS = {"anthropic-version": "2023-06-01"}
# This anthropic SDK has no `temperature` argument; the API field is sent as an extra.
GREEDY = {"temperature": 0}
STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence")
RAW_EVENTS = ("message_start", "content_block_start", "content_block_delta",
              "content_block_stop", "message_delta", "message_stop")
# One or more content blocks, each with any number of deltas.
ORDER = re.compile(r"message_start (content_block_start (content_block_delta )*"
                   r"content_block_stop )+message_delta message_stop ")


def msg_body(model, content=FRANCE, max_tokens=16, **extra):
    return {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **extra}


def post_messages(http, body, path="/v1/messages"):
    resp = http.post(path, json=body, headers=HEADERS)
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    return resp.json()


def check_message(out, max_tokens):
    assert out.get("type") == "message", out
    assert out.get("role") == "assistant", out
    assert isinstance(out.get("id"), str) and out["id"], out
    blocks = out.get("content")
    assert isinstance(blocks, list) and blocks, out
    for b in blocks:
        assert b.get("type") in ("text", "tool_use", "thinking"), b
        if b["type"] == "text":
            assert isinstance(b.get("text"), str), b
    text = "".join(b["text"] for b in blocks if b["type"] == "text")
    assert text.strip(), f"no text: {out}"
    assert out.get("stop_reason") in STOP_REASONS, out
    usage = out.get("usage") or {}
    inp, outp = usage.get("input_tokens"), usage.get("output_tokens")
    assert isinstance(inp, int) and inp > 0, usage
    assert isinstance(outp, int) and 0 < outp <= max_tokens, usage
    if out["stop_reason"] == "max_tokens":
        assert outp == max_tokens, usage
    return text


def test_messages_non_streamed(http, model):
    check_message(post_messages(http, msg_body(model)), 16)


def test_messages_max_tokens_stop_reason(http, model):
    out = post_messages(http, msg_body(model, LONG_PROMPT, max_tokens=8))
    check_message(out, 8)
    assert out["stop_reason"] == "max_tokens", out
    assert out["usage"]["output_tokens"] == 8, out["usage"]


def test_messages_system_and_blocks(http, model):
    body = msg_body(model, [{"type": "text", "text": "What is the capital"},
                            {"type": "text", "text": " of France?"}],
                    system="You are a helpful assistant.")
    check_message(post_messages(http, body), 16)


def test_messages_beta_query_string(http, claude, model):
    check_message(post_messages(http, msg_body(model), path="/v1/messages?beta=true"), 16)
    # The SDK's beta namespace posts to /v1/messages?beta=true.
    out = claude.beta.messages.create(model=model, max_tokens=16, extra_body=GREEDY,
                                      messages=[{"role": "user", "content": FRANCE}])
    assert out.type == "message" and out.content and out.content[0].type == "text"
    assert out.content[0].text.strip()


@pytest.mark.parametrize("name", ["claude-3-5-sonnet", "claude-3-5-sonnet-20241022",
                                  "claude-sonnet-4-5"])
def test_claude_model_names_map_to_served_model(http, name):
    check_message(post_messages(http, msg_body(name)), 16)


def test_messages_with_sdk(claude, model):
    out = claude.messages.create(model=model, max_tokens=16, extra_body=GREEDY,
                                 messages=[{"role": "user", "content": FRANCE}])
    assert out.type == "message" and out.role == "assistant"
    assert out.content and out.content[0].type == "text" and out.content[0].text.strip()
    assert out.stop_reason in STOP_REASONS
    assert out.usage.input_tokens > 0 and 0 < out.usage.output_tokens <= 16


def test_messages_stream_with_sdk(claude, model):
    kinds, deltas = [], ""
    with claude.messages.stream(model=model, max_tokens=16, extra_body=GREEDY,
                                messages=[{"role": "user", "content": FRANCE}]) as stream:
        for event in stream:
            if event.type in RAW_EVENTS:
                kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas += event.delta.text
        final = stream.get_final_message()
    assert ORDER.fullmatch("".join(k + " " for k in kinds)), f"event order: {kinds}"
    assert deltas.strip(), "no text deltas"
    assert final.content and final.content[0].type == "text"
    assert final.content[0].text == deltas
    assert final.stop_reason in STOP_REASONS
    assert final.usage.output_tokens > 0


def test_messages_stream_raw_matches_non_streamed(http, model):
    plain = check_message(post_messages(http, msg_body(model)), 16)
    with http.stream("POST", "/v1/messages", json=msg_body(model, stream=True),
                     headers=HEADERS) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        assert resp.headers.get("content-type", "").startswith("text/event-stream")
        events = []
        for ev in iter_sse(resp.iter_lines()):
            data = json.loads(ev.data)
            if data.get("type") == "ping":
                continue
            assert ev.event == data.get("type"), f"event: {ev.event} but data type {data.get('type')}"
            events.append(data)
    kinds = [e["type"] for e in events]
    assert ORDER.fullmatch("".join(k + " " for k in kinds)), f"event order: {kinds}"
    start = events[0]["message"]
    assert start.get("role") == "assistant" and start.get("type") == "message", start
    assert start.get("content") == [], start
    assert isinstance(start.get("usage", {}).get("input_tokens"), int), start
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == plain, "greedy streamed text differs from the non-streamed text"
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"].get("stop_reason") in STOP_REASONS, delta
    assert delta.get("usage", {}).get("output_tokens", 0) > 0, delta


def test_messages_stop_sequences(http, model):
    base = post_messages(http, msg_body(model))
    text = check_message(base, 16)
    k = len(text) // 2
    stop = next((text[i:i + 4] for i in range(k, len(text) - 3) if text[i:i + 4].strip()), None)
    assert stop, f"reply too short to pick a stop sequence from: {text!r}"
    out = post_messages(http, msg_body(model, stop_sequences=[stop]))
    assert out["stop_reason"] == "stop_sequence", out
    assert out.get("stop_sequence") == stop, out
    got = "".join(b.get("text", "") for b in out["content"] if b["type"] == "text")
    assert got == text[: text.find(stop)], (text, stop, got)


# ---- what Claude Code sends (issue 15) --------------------------------------------------------

def anthropic_error(resp, status, kind):
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:300]}"
    body = resp.json()
    assert body.get("type") == "error", body
    assert body["error"]["type"] == kind and body["error"]["message"].strip(), body
    return body["error"]["message"]


def test_system_entries_inside_messages_are_accepted(http, model):
    """Claude Code 2.1 sends `role: "system"` entries among the turns; consecutive user
    turns, image blocks, thinking history and unknown top-level fields pass too."""
    body = msg_body(model, stream=False, metadata={"user_id": "u"},
                    context_management={"edits": []}, output_config={"effort": "low"})
    body["system"] = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.0;"},
                      {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    body["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>none</system-reminder>"}]},
        {"role": "system", "content": "Available agents: none."},
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
        {"role": "user", "content": [{"type": "text", "text": FRANCE, "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Paris.", "signature": "abc"},
                                          {"type": "text", "text": "Paris."}]},
        {"role": "user", "content": "And of Italy?"},
    ]
    check_message(post_messages(http, body, "/v1/messages?beta=true"), 16)


def test_count_tokens_matches_the_prompt(http, model):
    body = msg_body(model, content="Count the tokens of this prompt, please.")
    resp = http.post("/v1/messages/count_tokens?beta=true",
                     json={k: v for k, v in body.items() if k != "max_tokens"}, headers=HEADERS)
    assert resp.status_code == 200, resp.text[:300]
    n = resp.json()["input_tokens"]
    assert isinstance(n, int) and n > 5, resp.json()
    usage = post_messages(http, body)["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == n, (n, usage)


def test_messages_errors_are_anthropic_shaped(http, model, api_key, base_url):
    anthropic_error(http.post("/v1/messages", json=msg_body("no-such-model"), headers=HEADERS),
                    404, "not_found_error")
    anthropic_error(http.get("/v1/messages", headers=HEADERS), 405, "invalid_request_error")
    anthropic_error(http.post("/v1/messages", json={"model": model}, headers=HEADERS),
                    400, "invalid_request_error")
    anthropic_error(http.post("/v1/messages/count_tokens", json={"model": model, "messages": 3},
                              headers=HEADERS), 400, "invalid_request_error")
    if api_key:
        from support import httpx
        resp = httpx.post(base_url + "/v1/messages", json=msg_body(model),
                          headers={**HEADERS, "x-api-key": "wrong"})
        anthropic_error(resp, 401, "authentication_error")


def test_prompt_too_long_uses_anthropic_wording(http, model):
    """Claude Code compacts its conversation when it reads this wording."""
    body = msg_body(model, content="hello " * 40000)
    message = anthropic_error(http.post("/v1/messages", json=body, headers=HEADERS),
                              400, "invalid_request_error")
    assert re.match(r"prompt is too long: \d+ tokens > \d+ maximum", message), message


def test_output_config_format_is_enforced(http, model):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    body = msg_body(model, content="Is water wet?", max_tokens=40,
                    output_config={"format": {"type": "json_schema", "schema": schema}})
    out = post_messages(http, body)
    text = "".join(b["text"] for b in out["content"] if b["type"] == "text")
    assert json.loads(text)["answer"] in ("yes", "no"), text


def test_count_tokens_with_sdk(claude, model):
    """The `anthropic` SDK's own count_tokens call (what Claude Code's /context sends)."""
    n = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": FRANCE}],
                                     system="Be brief.")
    assert n.input_tokens > 5, n
