"""Model-specific tool-call contracts (kooka-server's MiniMax-M2 and Nemotron smoke tests).

They run only when the served model matches their marker; the shared contract stays frozen.
"""

import json

import pytest

from support import TOOL_MARKUP, needs_trained

pytestmark = pytest.mark.contract

READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file from the repository.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"], "additionalProperties": False},
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
    },
}


def forced_call(oai, model, tool, prompt):
    out = oai.chat.completions.create(
        model=model, max_tokens=512, tools=[tool],
        tool_choice={"type": "function", "function": {"name": tool["function"]["name"]}},
        messages=[{"role": "user", "content": prompt}])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls, choice.message
    for tag in TOOL_MARKUP + ("<think>", "</think>"):
        assert tag not in (choice.message.content or ""), choice.message.content
    call = choice.message.tool_calls[0]
    assert call.function.name == tool["function"]["name"], call
    args = json.loads(call.function.arguments)
    assert isinstance(args, dict), call.function.arguments
    return args


@pytest.mark.minimax
def test_minimax_path_arguments_are_repaired(oai, model):
    needs_trained(model)
    args = forced_call(oai, model, READ_FILE,
                       "Read the file kooka-server/validate.js with the read_file tool.")
    assert set(args) == {"path"}, args
    assert args["path"] == "kooka-server/validate.js", args


@pytest.mark.minimax
def test_minimax_parameters_typed_by_schema(oai, model):
    """MiniMax writes every parameter as text: integers come back as JSON integers."""
    args = forced_call(oai, model, ADD, "Use the add tool to add 2 and 3.")
    assert set(args) == {"a", "b"}, args
    assert all(type(args[k]) is int for k in ("a", "b")), args


@pytest.mark.minimax
def test_minimax_forced_call_after_open_think(http, claude, model):
    """MiniMax-M2's template opens <think> in the prompt: a forced call closes it first and
    comes back as a tool call (Anthropic tool_use, stop_reason tool_use), not as reasoning."""
    tool = {"name": "add", "description": ADD["function"]["description"],
            "input_schema": ADD["function"]["parameters"]}
    out = claude.messages.create(model=model, max_tokens=256, tools=[tool],
                                 tool_choice={"type": "tool", "name": "add"},
                                 messages=[{"role": "user", "content": "Add 2 and 3."}])
    assert out.stop_reason == "tool_use", out
    kinds = [b.type for b in out.content]
    assert kinds[-1] == "tool_use", kinds
    assert "thinking" not in kinds, out.content
    for b in out.content:
        if b.type == "text":
            assert b.text.strip(), f"blank text block: {out.content}"
            for tag in TOOL_MARKUP + ("<think>", "</think>"):
                assert tag not in b.text, b.text
    use = out.content[-1]
    assert use.name == "add" and all(type(use.input[k]) is int for k in ("a", "b")), use


@pytest.mark.nemotron
def test_nemotron_parameters_typed_by_schema(oai, model):
    args = forced_call(oai, model, ADD, "Use the add tool to add 2 and 3.")
    assert args.get("a") == 2 and args.get("b") == 3, args
    assert all(type(args[k]) is int for k in ("a", "b")), args
