"""Shared helpers for the contract suite: SSE parsing, request payloads, shape checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pytest

try:  # the venv ships httpx's successor under its own name
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    import httpx2 as httpx  # type: ignore[no-redef]

FRANCE = "What is the capital of France?"
# A prompt no model answers within a handful of tokens, so `finish_reason` is `length`.
LONG_PROMPT = "Write a long story about a dragon who learns to paint. Use at least 500 words."

# The kooka-server contract's tool: one required string, nothing else allowed.
ECHO_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}
ECHO_TOOL = {
    "type": "function",
    "function": {
        "name": "echo",
        "description": "Echo the given text back to the user.",
        "parameters": ECHO_SCHEMA,
    },
}
ANTHROPIC_ECHO_TOOL = {
    "name": "echo",
    "description": "Echo the given text back to the user.",
    "input_schema": ECHO_SCHEMA,
}
ECHO_PROMPT = "Use the echo tool to echo the text: hello world"

# Markup a tool-call parser must strip: it must never reach `content`.
TOOL_MARKUP = ("<tool_call>", "</tool_call>", "<function=", "<minimax:tool_call>", "<invoke ",
               "[TOOL_CALLS]", "<|tool_call_start|>")


@dataclass
class SseEvent:
    event: str | None
    data: str


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Yields the events of a text/event-stream, given its lines (without newlines).

    Comment lines (`: keepalive`) are skipped; multi-line `data:` fields are joined with `\\n`.
    """
    event: str | None = None
    data: list[str] = []
    for line in lines:
        line = line.rstrip("\r")
        if line == "":
            if data:
                yield SseEvent(event, "\n".join(data))
            event, data = None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    if data:
        yield SseEvent(event, "\n".join(data))


def parse_sse(text: str) -> list[SseEvent]:
    return list(iter_sse(text.split("\n")))


def chat_body(model: str, content: str = FRANCE, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0,
    }
    body.update(extra)
    return body


def assert_openai_error(resp: "httpx.Response", status: int, param: str | None = None) -> dict:
    """The response has `status` and an OpenAI-shaped JSON error body; returns `error`."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    err = body["error"]
    for key in ("message", "type", "param", "code"):
        assert key in err, f"error object lacks {key!r}: {err}"
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert isinstance(err["type"], str) and err["type"], err
    if param is not None:
        assert err["param"] == param, f"param should be {param!r}: {err}"
    return err


def assert_usage(usage: dict, max_tokens: int | None = None, finish_reason: str | None = None) -> None:
    assert isinstance(usage, dict), usage
    p, c, t = usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
    assert all(isinstance(x, int) and not isinstance(x, bool) for x in (p, c, t)), usage
    assert p > 0, usage
    assert c > 0, usage
    assert t == p + c, usage
    if max_tokens is not None:
        assert c <= max_tokens, usage
        if finish_reason == "length":
            assert c == max_tokens, f"finish_reason length but {c} of {max_tokens} tokens: {usage}"


@dataclass
class StreamedChat:
    """What an OpenAI chat stream carried, reassembled."""
    chunks: list[dict] = field(default_factory=list)
    content: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    usage_chunks: list[dict] = field(default_factory=list)
    tool_calls: dict[int, dict] = field(default_factory=dict)
    logprobs: list[dict] = field(default_factory=list)
    done: bool = False
    after_done: list[str] = field(default_factory=list)
    content_type: str = ""


def read_chat_stream(resp: "httpx.Response") -> StreamedChat:
    """Reads a streamed chat or text completion; checks the framing as it goes."""
    out = StreamedChat(content_type=resp.headers.get("content-type", ""))
    for ev in iter_sse(resp.iter_lines()):
        if out.done:
            out.after_done.append(ev.data)
            continue
        if ev.data == "[DONE]":
            out.done = True
            continue
        chunk = json.loads(ev.data)
        assert isinstance(chunk, dict), chunk
        assert "error" not in chunk, f"error event in stream: {chunk}"
        out.chunks.append(chunk)
        if chunk.get("usage"):
            out.usage_chunks.append(chunk)
        for choice in chunk.get("choices") or []:
            assert choice.get("index", 0) == 0, choice
            delta = choice.get("delta")
            if delta is None:  # legacy completions chunk
                out.content += choice.get("text") or ""
            else:
                out.content += delta.get("content") or ""
                for tc in delta.get("tool_calls") or []:
                    acc = out.tool_calls.setdefault(tc["index"], {"id": None, "type": None,
                                                                  "name": "", "arguments": ""})
                    if tc.get("id"):
                        assert acc["id"] in (None, tc["id"]), f"tool call id changed: {tc}"
                        acc["id"] = tc["id"]
                    if tc.get("type"):
                        acc["type"] = tc["type"]
                    fn = tc.get("function") or {}
                    acc["name"] += fn.get("name") or ""
                    acc["arguments"] += fn.get("arguments") or ""
            lp = choice.get("logprobs")
            if lp and lp.get("content"):
                out.logprobs.extend(lp["content"])
            if choice.get("finish_reason") is not None:
                out.finish_reasons.append(choice["finish_reason"])
    return out


# Served-model id substrings for the model-specific markers. `tools`: models that emit a
# forced tool call reliably without constrained decoding (override with --assume-tools).
MODEL_MARKERS: dict[str, tuple[str, ...]] = {
    "tools": ("qwen2.5-coder", "qwen3", "minimax", "nemotron", "glm-4", "gpt-oss"),
    "minimax": ("minimax",),
    "gpt_oss": ("gpt-oss",),
    "nemotron": ("nemotron",),
}


def model_markers(model_id: str) -> set[str]:
    """The model-specific markers whose tests can run against `model_id`."""
    low = model_id.lower()
    return {m for m, pats in MODEL_MARKERS.items() if any(p in low for p in pats)}


def needs_trained(model_id: str) -> None:
    """Skips a test that needs a trained model's answer on the tiny random test models."""
    if "tiny-random" in model_id.lower():
        pytest.skip(f"{model_id!r} has random weights: this test needs a trained model's answer")
