"""Renders every chat template in the llama.cpp corpus with transformers' own Jinja renderer.

For each template in `third_party/llama.cpp/templates/*.jinja` and each case in
`tests/fixtures/chat/conversations.json` (a conversation x add_generation_prompt), this calls
`transformers.utils.chat_template_utils.render_jinja_template` exactly as
`PreTrainedTokenizerBase.apply_chat_template` does (messages normalised first, special tokens
then the template kwargs passed as kwargs), with `strftime_now` frozen to FROZEN_NOW so the
output is deterministic. It writes `target/templates-expected.json` (or the path given as its argument):

    {"frozen_now": "...", "bos_token": "<s>", "eos_token": "</s>",
     "templates": {"<file>.jinja": {"fnv1a64": "...", "cases": {"<conv>/agp=<bool>":
         {"ok": "<rendered>"} | {"error": "<message>"}}}}}

`tests/templates.rs` renders the same cases with kooka and compares byte for byte.

One deliberate difference is rendered here too: where a template fails on an assistant turn
without content (an OpenAI client's tool-call turn, `content: null`) for any reason but its own
`raise_exception`, kooka renders again with `content: ""` on such turns
(`ChatTemplate::render`), so the expected output is that second render's.

usage: third_party/venv/bin/python tests/python/render_templates.py
"""

import datetime as _dt
import json
import pathlib
import sys

import jinja2
import transformers.utils.chat_template_utils as ctu

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "third_party" / "llama.cpp" / "templates"
FIXTURE = ROOT / "tests" / "fixtures" / "chat" / "conversations.json"
# The renders quote the (third-party) templates, so they are written at test time, never committed.
OUT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "templates-expected.json"

# The same instant is frozen on kooka's side (tests/templates.rs).
FROZEN_NOW = _dt.datetime(2025, 3, 14, 9, 26, 53)
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


class _FrozenDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FROZEN_NOW


# transformers' `strftime_now` calls `datetime.now()` from its module globals.
ctu.datetime = _FrozenDatetime


def fnv1a64(data):
    """The template's fingerprint (hex), so the Rust test notices a changed corpus."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def cases(fixture):
    for conv in fixture["conversations"]:
        tools = fixture[conv["tools"]] if "tools" in conv else None
        for agp in conv["add_generation_prompt"]:
            name = f"{conv['name']}/agp={'true' if agp else 'false'}"
            yield name, conv["messages"], tools, agp, conv.get("kwargs", {})


def render(source, messages, tools, agp, kwargs):
    # As apply_chat_template: normalise (drop None values), special tokens overridden by kwargs.
    chat = ctu._normalize_chat_messages(json.loads(json.dumps(messages)))
    template_kwargs = {**SPECIAL_TOKENS, **kwargs}
    rendered, _ = ctu.render_jinja_template(
        conversations=[chat],
        tools=json.loads(json.dumps(tools)) if tools is not None else None,
        chat_template=source,
        add_generation_prompt=agp,
        **template_kwargs,
    )
    return rendered[0]


def with_empty_content(messages):
    """`messages` with `content: ""` on assistant turns that have none (None: all have)."""
    out, changed = [], False
    for m in messages:
        if m.get("role") == "assistant" and m.get("content") is None:
            m, changed = {**m, "content": ""}, True
        out.append(m)
    return out if changed else None


def render_as_kooka(source, messages, tools, agp, kwargs):
    try:
        return render(source, messages, tools, agp, kwargs)
    except Exception as e:
        # transformers' raise_exception raises a bare TemplateError (a refusal: no retry);
        # UndefinedError and the like are its subclasses or other types.
        filled = with_empty_content(messages)
        if type(e) is jinja2.exceptions.TemplateError or filled is None:
            raise
        return render(source, filled, tools, agp, kwargs)


def main():
    if not TEMPLATES.is_dir():
        sys.exit(f"{TEMPLATES} is missing: run scripts/setup.sh --tests")
    fixture = json.loads(FIXTURE.read_text())
    out = {
        "frozen_now": FROZEN_NOW.isoformat(),
        **SPECIAL_TOKENS,
        "templates": {},
    }
    ok = err = 0
    for path in sorted(TEMPLATES.glob("*.jinja")):
        source = path.read_text()
        entry = {"fnv1a64": fnv1a64(source.encode()), "cases": {}}
        for name, messages, tools, agp, kwargs in cases(fixture):
            try:
                entry["cases"][name] = {"ok": render_as_kooka(source, messages, tools, agp, kwargs)}
                ok += 1
            except Exception as e:  # the template rejected the conversation: kooka must fail too
                entry["cases"][name] = {"error": f"{type(e).__name__}: {e}"}
                err += 1
        out["templates"][path.name] = entry
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    print(f"{len(out['templates'])} templates: {ok} renders, {err} errors -> {OUT}")


if __name__ == "__main__":
    main()
