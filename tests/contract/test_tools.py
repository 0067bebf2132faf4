"""Tool calls: forced calls through the OpenAI and Anthropic SDKs, tool history, `none`.

Forced calls are marked `tools`: they run only when the served model can be trusted to emit
one (see conftest.py); the default SmolLM2-135M cannot until constrained decoding lands.
"""

import json

import jsonschema
import pytest

from support import (ANTHROPIC_ECHO_TOOL, ECHO_PROMPT, ECHO_SCHEMA, ECHO_TOOL, TOOL_MARKUP,
                     read_chat_stream)

pytestmark = pytest.mark.contract

FORCED = [
    pytest.param("required", id="required"),
    pytest.param({"type": "function", "function": {"name": "echo"}}, id="named"),
]
MAX_TOKENS = 64


def messages():
    return [{"role": "user", "content": ECHO_PROMPT}]


def check_arguments(arguments):
    assert isinstance(arguments, str), f"arguments must be a JSON string: {arguments!r}"
    args = json.loads(arguments)
    assert isinstance(args, dict), f"arguments are not an object: {arguments!r}"
    jsonschema.validate(args, ECHO_SCHEMA)
    assert args["text"].strip(), f"empty text: {arguments!r}"


def assert_no_markup(content):
    for tag in TOOL_MARKUP:
        assert tag not in (content or ""), f"tool-call markup {tag!r} leaked into content: {content!r}"


@pytest.mark.tools
@pytest.mark.parametrize("tool_choice", FORCED)
def test_forced_tool_call(oai, model, tool_choice):
    out = oai.chat.completions.create(model=model, messages=messages(), tools=[ECHO_TOOL],
                                      tool_choice=tool_choice, max_tokens=MAX_TOKENS)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", (choice.finish_reason, choice.message)
    calls = choice.message.tool_calls
    assert calls, f"no tool_calls: {choice.message}"
    for call in calls:
        assert call.type == "function" and call.id
        assert call.function.name == "echo", call
        check_arguments(call.function.arguments)
    assert_no_markup(choice.message.content)


@pytest.mark.tools
@pytest.mark.parametrize("tool_choice", FORCED)
def test_forced_tool_call_streamed(oai, model, tool_choice):
    stream = oai.chat.completions.create(model=model, messages=messages(), tools=[ECHO_TOOL],
                                         tool_choice=tool_choice, max_tokens=MAX_TOKENS,
                                         stream=True)
    calls, content, finish = {}, "", []
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                acc = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    assert acc["id"] in (None, tc.id), "tool call id changed mid-stream"
                    acc["id"] = tc.id
                if tc.function:
                    acc["name"] += tc.function.name or ""
                    acc["arguments"] += tc.function.arguments or ""
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    assert finish == ["tool_calls"], (finish, content, calls)
    assert calls, f"no tool_calls deltas; content: {content!r}"
    for call in calls.values():
        assert call["id"], call
        assert call["name"] == "echo", call
        check_arguments(call["arguments"])
    assert_no_markup(content)


@pytest.mark.tools
def test_forced_tool_call_raw_stream_deltas(http, model):
    body = {"model": model, "messages": messages(), "tools": [ECHO_TOOL],
            "tool_choice": "required", "max_tokens": MAX_TOKENS, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        s = read_chat_stream(resp)
    assert s.done and s.finish_reasons == ["tool_calls"], s.finish_reasons
    for chunk in s.chunks:
        for ch in chunk.get("choices") or []:
            for tc in (ch.get("delta") or {}).get("tool_calls") or []:
                assert isinstance(tc.get("index"), int), f"tool_calls delta without index: {tc}"
    assert s.tool_calls and all(c["type"] in (None, "function") for c in s.tool_calls.values())
    for call in s.tool_calls.values():
        assert call["name"] == "echo"
        check_arguments(call["arguments"])
    assert_no_markup(s.content)


@pytest.mark.tools
def test_streamed_tool_call_is_one_whole_delta(http, model):
    """Like kooka-server and mlx-lm: each call in one delta carrying its index, id, type,
    name and complete arguments (`--incremental-tool-calls` streams arguments instead)."""
    body = {"model": model, "messages": messages(), "tools": [ECHO_TOOL],
            "tool_choice": "required", "max_tokens": MAX_TOKENS, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        s = read_chat_stream(resp)
    deltas = [tc for chunk in s.chunks for ch in chunk.get("choices") or []
              for tc in (ch.get("delta") or {}).get("tool_calls") or []]
    assert deltas, "no tool_calls delta"
    assert len({d["index"] for d in deltas}) == len(deltas), f"a call split over deltas: {deltas}"
    for d in deltas:
        assert d.get("id") and d.get("type") == "function", d
        assert d["function"]["name"] == "echo", d
        check_arguments(d["function"]["arguments"])


def check_tool_use(message):
    assert message.stop_reason == "tool_use", message
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses, f"no tool_use block: {message.content}"
    for use in uses:
        assert use.id and use.name == "echo", use
        assert isinstance(use.input, dict), use
        jsonschema.validate(use.input, ECHO_SCHEMA)
        assert use.input["text"].strip(), use
    for b in message.content:
        if b.type == "text":
            assert_no_markup(b.text)


@pytest.mark.tools
def test_anthropic_forced_tool_use(claude, model):
    out = claude.messages.create(model=model, max_tokens=MAX_TOKENS, messages=messages(),
                                 tools=[ANTHROPIC_ECHO_TOOL],
                                 tool_choice={"type": "tool", "name": "echo"})
    check_tool_use(out)


@pytest.mark.tools
def test_anthropic_forced_tool_use_streamed(claude, model):
    json_deltas = 0
    with claude.messages.stream(model=model, max_tokens=MAX_TOKENS, messages=messages(),
                                tools=[ANTHROPIC_ECHO_TOOL],
                                tool_choice={"type": "tool", "name": "echo"}) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_deltas += 1
        final = stream.get_final_message()
    assert json_deltas > 0, "no input_json_delta events"
    check_tool_use(final)


def test_tool_choice_none_answers_in_text(oai, model):
    out = oai.chat.completions.create(
        model=model, max_tokens=16, temperature=0, tools=[ECHO_TOOL], tool_choice="none",
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    choice = out.choices[0]
    assert not choice.message.tool_calls, choice.message
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert choice.message.content and choice.message.content.strip()
    assert_no_markup(choice.message.content)


def test_tool_history_is_accepted(oai, model):
    """A conversation that already holds a call and its result (what agents send)."""
    history = [
        {"role": "user", "content": ECHO_PROMPT},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "echo", "arguments": json.dumps({"text": "hello world"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "hello world"},
    ]
    out = oai.chat.completions.create(model=model, max_tokens=16, temperature=0,
                                      tools=[ECHO_TOOL], tool_choice="none", messages=history)
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert choice.message.content and choice.message.content.strip()
