"""POST /v1/responses (OpenAI Responses API, what Codex CLI speaks): raw, streamed event
sequence, and the official `openai` SDK's `responses.create` / `responses.stream` helpers."""

import json
import re
from pathlib import Path

import jsonschema
import pytest

from support import (ECHO_PROMPT, ECHO_SCHEMA, FRANCE, assert_openai_error, iter_sse,
                     needs_trained)

pytestmark = pytest.mark.contract

# A reply that ends by itself within a few tokens: the schema leaves one short choice.
YES_NO = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
YES_NO_FORMAT = {"format": {"type": "json_schema", "name": "yes_no", "schema": YES_NO,
                            "strict": True}}
ECHO_FUNCTION = {"type": "function", "name": "echo", "description": "Echo the given text back.",
                 "parameters": ECHO_SCHEMA, "strict": False}
# Codex's freeform apply_patch tool, as Codex 0.169 sends it (its Lark grammar).
PATCH_TOOL = next(t for t in json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures/clients/codex_responses_apply_patch.json")
    .read_text())["tools"] if t["type"] == "custom")

def body(model, input=FRANCE, **extra):
    return {"model": model, "input": input, "max_output_tokens": 16, "temperature": 0, **extra}


def check_usage(usage):
    for k in ("input_tokens", "output_tokens", "total_tokens"):
        assert isinstance(usage.get(k), int), usage
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, usage
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"], usage
    assert isinstance(usage["input_tokens_details"]["cached_tokens"], int), usage


def check_response(r, status=("completed", "incomplete")):
    assert r["object"] == "response" and r["id"].startswith("resp_"), r
    assert r["status"] in status, r
    assert isinstance(r["created_at"], int), r
    assert r["output"], r
    for item in r["output"]:
        assert item["id"] and item["type"] in ("message", "reasoning", "function_call",
                                               "custom_tool_call"), item
    check_usage(r["usage"])
    if r["status"] == "incomplete":
        assert r["incomplete_details"] == {"reason": "max_output_tokens"}, r
        # The message the limit cut is incomplete too, as OpenAI marks it.
        messages = [i for i in r["output"] if i["type"] == "message"]
        assert not messages or messages[-1]["status"] == "incomplete", r


def message_text(r):
    return "".join(p["text"] for i in r["output"] if i["type"] == "message"
                   for p in i["content"] if p["type"] == "output_text")


def read_events(resp):
    events = []
    for ev in iter_sse(resp.iter_lines()):
        if ev.data:
            events.append(json.loads(ev.data))
            assert events[-1]["type"] == ev.event, (ev.event, ev.data[:200])
    return events


def check_event_sequence(events):
    """The sequence a Responses client relies on: numbered, created first, every item added
    before its deltas and done once with the same id, one terminal event with the response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events))), events[:3]
    assert events[0]["type"] == "response.created", events[0]
    assert events[1]["type"] == "response.in_progress", events[1]
    final = events[-1]
    assert final["type"] in ("response.completed", "response.incomplete"), final
    terminal = ("response.completed", "response.incomplete", "response.failed")
    assert not [e for e in events[:-1] if e["type"] in terminal], [e["type"] for e in events]
    added, done, open_ids = {}, {}, set()
    text = {}
    for e in events[2:-1]:
        t = e["type"]
        if t == "response.output_item.added":
            assert e["output_index"] == len(added), e
            added[e["item"]["id"]] = e["output_index"]
            open_ids.add(e["item"]["id"])
        elif t == "response.output_item.done":
            assert e["item"]["id"] in open_ids, e
            open_ids.remove(e["item"]["id"])
            done[e["item"]["id"]] = e["item"]
        elif "item_id" in e:
            assert e["item_id"] in open_ids, f"{t} for an item not open: {e}"
            assert e["output_index"] == added[e["item_id"]], e
            if t == "response.output_text.delta":
                text[e["item_id"]] = text.get(e["item_id"], "") + e["delta"]
            if t == "response.output_text.done":
                assert e["text"] == text.get(e["item_id"], ""), (e, text)
    assert not open_ids and list(added) == list(done), (added, done)
    response = final["response"]
    # The final response carries the same items as the stream.
    assert [i["id"] for i in response["output"]] == list(done), response["output"]
    assert response["output"] == list(done.values())
    return response


def test_responses_non_streamed(http, model):
    resp = http.post("/v1/responses", json=body(model))
    assert resp.status_code == 200, resp.text[:500]
    r = resp.json()
    check_response(r)
    assert message_text(r).strip(), r
    assert r["model"] == model


def test_responses_streamed_event_sequence(http, model):
    with http.stream("POST", "/v1/responses", json=body(model, stream=True)) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = read_events(resp)
    response = check_event_sequence(events)
    check_response(response)
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == message_text(response) and deltas.strip()


def test_responses_input_items_and_instructions(http, model):
    """A second turn as Codex sends it: developer message, reasoning, calls and outputs."""
    items = [
        {"type": "message", "role": "developer",
         "content": [{"type": "input_text", "text": "You are a coding agent."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List files"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": None, "encrypted_content": None},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell",
         "arguments": "{\"command\": [\"ls\"]}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.rs\nb.rs"},
        {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_2", "name": "apply_patch",
         "input": "*** Begin Patch\n*** End Patch"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Done"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": FRANCE}]},
    ]
    tools = [{"type": "function", "name": "shell", "parameters": {"type": "object"}}, PATCH_TOOL,
             {"type": "web_search"}, {"type": "local_shell"}]
    resp = http.post("/v1/responses", json=body(model, input=items, tools=tools,
                                                 instructions="Be brief.", store=False,
                                                 include=["reasoning.encrypted_content"],
                                                 prompt_cache_key="k", reasoning={"effort": "low"}))
    assert resp.status_code == 200, resp.text[:500]
    check_response(resp.json())


def test_responses_sdk_create_and_stream(oai, model):
    r = oai.responses.create(model=model, input=FRANCE, max_output_tokens=16, temperature=0)
    assert r.status in ("completed", "incomplete") and r.output_text.strip(), r
    assert r.usage.input_tokens > 0
    with oai.responses.stream(model=model, input="Is water wet? Answer in JSON.",
                              max_output_tokens=40, temperature=0, text=YES_NO_FORMAT) as s:
        deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert final.status == "completed", final
    assert deltas == final.output_text
    jsonschema.validate(json.loads(final.output_text), YES_NO)


def test_responses_json_schema_format(http, model):
    resp = http.post("/v1/responses", json=body(model, input="Is water wet?",
                                                 max_output_tokens=40, text=YES_NO_FORMAT))
    assert resp.status_code == 200, resp.text[:500]
    r = resp.json()
    check_response(r, status=("completed",))
    jsonschema.validate(json.loads(message_text(r)), YES_NO)


@pytest.mark.tools
def test_responses_forced_function_call_streamed(http, model):
    b = body(model, input=ECHO_PROMPT, tools=[ECHO_FUNCTION], tool_choice="required",
             max_output_tokens=64, stream=True)
    with http.stream("POST", "/v1/responses", json=b) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        events = read_events(resp)
    response = check_event_sequence(events)
    calls = [i for i in response["output"] if i["type"] == "function_call"]
    assert calls, response["output"]
    call = calls[0]
    assert call["name"] == "echo" and call["call_id"], call
    jsonschema.validate(json.loads(call["arguments"]), ECHO_SCHEMA)
    args = "".join(e["delta"] for e in events if e.get("item_id") == call["id"]
                   and e["type"] == "response.function_call_arguments.delta")
    assert args == call["arguments"]
    done = [e for e in events if e.get("item_id") == call["id"]
            and e["type"] == "response.function_call_arguments.done"]
    assert done and done[0]["arguments"] == call["arguments"]


@pytest.mark.tools
def test_responses_forced_custom_tool_call(http, model):
    """A forced custom tool's input is held to its Lark grammar (Codex's apply_patch)."""
    needs_trained(model)  # a random model does not finish a free-form patch in time
    b = body(model, input="Use apply_patch to add a file hello.txt containing the line hi.",
             tools=[PATCH_TOOL], tool_choice={"type": "custom", "name": "apply_patch"},
             max_output_tokens=160, stream=True)
    with http.stream("POST", "/v1/responses", json=b) as resp:
        assert resp.status_code == 200, resp.read()[:500]
        events = read_events(resp)
    response = check_event_sequence(events)
    calls = [i for i in response["output"] if i["type"] == "custom_tool_call"]
    assert calls, response["output"]
    call = calls[0]
    assert call["name"] == "apply_patch" and call["call_id"], call
    done = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert done and done[0]["input"] == call["input"]
    text = call["input"]
    # The grammar's head, then hunks; whole when the reply was not cut by the token limit.
    assert text.startswith("*** Begin Patch\n*** "), text
    assert re.match(r"\*\*\* (Add|Delete|Update) File: ", text.split("\n")[1]), text
    if response["status"] == "completed":
        assert re.search(r"\n\*\*\* End Patch\n?$", text), text


def test_responses_errors(http, model):
    assert_openai_error(http.post("/v1/responses", json={**body(model),
                                                        "previous_response_id": "resp_x"}),
                        400, "previous_response_id")
    assert_openai_error(http.post("/v1/responses", json={"model": model}), 400, "input")
    assert_openai_error(http.post("/v1/responses", json=body("no-such-model")), 404, "model")
    assert_openai_error(http.post("/v1/responses", json=body(model, tool_choice="required")),
                        400, "tool_choice")


@pytest.mark.tools
def test_responses_sdk_function_call(oai, model):
    """The `openai` SDK reads a function_call item (what a Responses agent loop consumes)."""
    r = oai.responses.create(model=model, input=ECHO_PROMPT, tools=[ECHO_FUNCTION],
                             tool_choice="required", max_output_tokens=64, temperature=0)
    calls = [i for i in r.output if i.type == "function_call"]
    assert calls and calls[0].name == "echo", r.output
    jsonschema.validate(json.loads(calls[0].arguments), ECHO_SCHEMA)
