"""POST /v1/completions (legacy text completions), plain and streamed."""

import pytest

from support import assert_usage, read_chat_stream

pytestmark = pytest.mark.contract

PROMPT = "The capital of France is"
FINISH = ("stop", "length")


def body(model, **extra):
    return {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **extra}


def post_completion(http, payload):
    resp = http.post("/v1/completions", json=payload)
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    return resp.json()


def test_completion_non_streamed(http, model):
    out = post_completion(http, body(model))
    assert isinstance(out.get("id"), str) and out["id"].startswith("cmpl-"), out
    assert out.get("object") == "text_completion", out
    assert isinstance(out.get("created"), int), out
    assert out.get("model") == model, out
    assert len(out.get("choices") or []) == 1, out
    choice = out["choices"][0]
    assert choice.get("index") == 0, choice
    assert isinstance(choice.get("text"), str) and choice["text"].strip(), f"empty text: {out}"
    assert choice.get("finish_reason") in FINISH, choice
    assert_usage(out.get("usage"), 8, choice["finish_reason"])


def test_completion_streamed_matches_non_streamed(http, model):
    plain = post_completion(http, body(model))["choices"][0]
    with http.stream("POST", "/v1/completions", json=body(model, stream=True)) as resp:
        assert resp.status_code == 200, f"{resp.status_code}: {resp.read()[:500]!r}"
        s = read_chat_stream(resp)
    assert s.content_type.startswith("text/event-stream"), s.content_type
    assert s.done and not s.after_done, "the stream did not end with a single data: [DONE]"
    assert s.chunks
    ids = {c.get("id") for c in s.chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("cmpl-"), ids
    for c in s.chunks:
        assert c.get("object") == "text_completion", c
        for ch in c.get("choices") or []:
            assert "text" in ch, c
    assert s.finish_reasons == [plain["finish_reason"]], s.finish_reasons
    assert s.content == plain["text"], "greedy streamed text differs from the non-streamed text"


def test_completion_with_openai_sdk(oai, http, model):
    plain = post_completion(http, body(model))["choices"][0]["text"]
    out = oai.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    assert out.object == "text_completion"
    assert out.choices[0].text == plain
    assert out.choices[0].finish_reason in FINISH
    assert_usage(out.usage.model_dump(), 8, out.choices[0].finish_reason)

    text, finish = "", []
    for chunk in oai.completions.create(model=model, prompt=PROMPT, max_tokens=8,
                                        temperature=0, stream=True):
        for ch in chunk.choices:
            text += ch.text or ""
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    assert text == plain
    assert len(finish) == 1 and finish[0] in FINISH, finish
