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
    needs_trained(model)
    args = forced_call(oai, model, ADD, "Use the add tool to add 2 and 3.")
    assert args.get("a") == 2 and args.get("b") == 3, args
    assert all(type(args[k]) is int for k in ("a", "b")), args


@pytest.mark.nemotron
def test_nemotron_tool_use_through_messages(claude, model):
    """Nemotron writes <tool_call><function=add><parameter=a>...: an Anthropic client gets a
    tool_use block with schema-typed input, and no markup or reasoning tags as text. (A
    trained model would call the tool unasked; `any` makes the tiny random one.)"""
    tool = {"name": "add", "description": ADD["function"]["description"],
            "input_schema": ADD["function"]["parameters"]}
    out = claude.messages.create(
        model=model, max_tokens=256, tools=[tool], tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "What is 2 plus 3? Use the add tool."}])
    assert out.stop_reason == "tool_use", out
    uses = [b for b in out.content if b.type == "tool_use"]
    assert uses and uses[0].name == "add", out.content
    assert all(type(uses[0].input[k]) is int for k in ("a", "b")), uses[0]
    for b in out.content:
        if b.type == "text":
            for tag in TOOL_MARKUP + ("<think>", "</think>", "<function=", "<parameter="):
                assert tag not in b.text, b.text


@pytest.mark.nemotron
def test_nemotron_second_turn_reads_the_checkpoint(claude, model):
    """A recurrent model's prefix cache resumes only where a state was kept: the second turn
    of a conversation reads turn 1's messages from the checkpoint kooka took where they
    ended, and reports them as cache reads."""
    system = "You are a careful assistant. " * 30
    first = [{"role": "user", "content": "Name a prime number."}]
    out = claude.messages.create(model=model, max_tokens=8, system=system, messages=first,
                                 extra_body={"temperature": 0})
    reply = "".join(b.text for b in out.content if b.type == "text") or "7"
    second = first + [{"role": "assistant", "content": reply},
                      {"role": "user", "content": "And another one?"}]
    out2 = claude.messages.create(model=model, max_tokens=8, system=system, messages=second,
                                  extra_body={"temperature": 0})
    assert out2.usage.cache_read_input_tokens > 100, out2.usage


HARMONY_MARKUP = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                  "<|return|>", "<|call|>")


def integral(v):
    """JSON Schema's integer: a number with no fractional part (grammars also allow `-0.0`)."""
    return type(v) in (int, float) and float(v).is_integer()


def no_harmony_markup(text):
    for tag in HARMONY_MARKUP:
        assert tag not in (text or ""), text


@pytest.mark.gpt_oss
def test_gpt_oss_forced_call_is_a_tool_call(oai, model):
    """A forced call is a message to `functions.add` on the commentary channel: it comes
    back as an OpenAI tool call whose arguments are a JSON object, with no harmony markup."""
    out = oai.chat.completions.create(
        model=model, max_tokens=512, tools=[ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        messages=[{"role": "user", "content": "Use the add tool to add 2 and 3."}])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "add", call
    args = json.loads(call.function.arguments)
    assert all(integral(args[k]) for k in ("a", "b")), args
    no_harmony_markup(choice.message.content)
    no_harmony_markup(getattr(choice.message, "reasoning_content", None))


@pytest.mark.gpt_oss
def test_gpt_oss_forced_call_streamed_matches(oai, model):
    stream = oai.chat.completions.create(
        model=model, max_tokens=512, tools=[ADD], stream=True,
        tool_choice={"type": "function", "function": {"name": "add"}},
        messages=[{"role": "user", "content": "Add 2 and 3."}])
    name, arguments, finish, text = "", "", None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")
        for tc in delta.tool_calls or []:
            name += tc.function.name or ""
            arguments += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and name == "add", (finish, name)
    args = json.loads(arguments)
    assert all(integral(args[k]) for k in ("a", "b")), args
    no_harmony_markup(text)


@pytest.mark.gpt_oss
def test_gpt_oss_forced_call_anthropic(claude, model):
    tool = {"name": "add", "description": ADD["function"]["description"],
            "input_schema": ADD["function"]["parameters"]}
    out = claude.messages.create(model=model, max_tokens=512, tools=[tool],
                                 tool_choice={"type": "tool", "name": "add"},
                                 messages=[{"role": "user", "content": "Add 2 and 3."}])
    assert out.stop_reason == "tool_use", out
    assert out.content[-1].type == "tool_use", out.content
    use = out.content[-1]
    assert use.name == "add" and all(integral(use.input[k]) for k in ("a", "b")), use
    for b in out.content:
        no_harmony_markup(getattr(b, "text", None) or getattr(b, "thinking", None))


@pytest.mark.gpt_oss
def test_gpt_oss_response_format_is_the_final_message(oai, model):
    """response_format holds the final channel's message to the schema; the content is that
    JSON alone."""
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"], "additionalProperties": False}
    out = oai.chat.completions.create(
        model=model, max_tokens=512,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "sum", "schema": schema, "strict": True}},
        messages=[{"role": "user", "content": "What is 2 + 3? Answer in JSON."}])
    choice = out.choices[0]
    assert choice.finish_reason == "stop", choice
    value = json.loads(choice.message.content)
    assert set(value) == {"answer"} and type(value["answer"]) is int, value
    no_harmony_markup(getattr(choice.message, "reasoning_content", None))


@pytest.mark.gpt_oss
def test_gpt_oss_plain_reply_has_no_markup(oai, model):
    out = oai.chat.completions.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "Say hello."}])
    message = out.choices[0].message
    no_harmony_markup(message.content)
    no_harmony_markup(getattr(message, "reasoning_content", None))
