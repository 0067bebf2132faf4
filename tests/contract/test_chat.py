"""POST /v1/chat/completions: plain and streamed, usage, logprobs, seed, stop strings."""

import math

import pytest

from support import FRANCE, LONG_PROMPT, assert_usage, chat_body, read_chat_stream

pytestmark = pytest.mark.contract

FINISH = ("stop", "length")


def post_chat(http, body, path="/v1/chat/completions"):
    resp = http.post(path, json=body)
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    return resp.json()


def stream_chat(http, body):
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, f"{resp.status_code}: {resp.read()[:500]!r}"
        return read_chat_stream(resp)


def check_completion(out, model, max_tokens):
    assert isinstance(out.get("id"), str) and out["id"].startswith("chatcmpl-"), out
    assert out.get("object") == "chat.completion", out
    assert isinstance(out.get("created"), int), out
    assert out.get("model") == model, out
    assert len(out.get("choices") or []) == 1, out
    choice = out["choices"][0]
    assert choice.get("index") == 0, choice
    msg = choice["message"]
    assert msg.get("role") == "assistant", msg
    assert isinstance(msg.get("content"), str) and msg["content"].strip(), f"empty content: {out}"
    assert choice.get("finish_reason") in FINISH, choice
    assert_usage(out.get("usage"), max_tokens, choice["finish_reason"])
    details = out["usage"].get("prompt_tokens_details")
    if details is not None:
        cached = details.get("cached_tokens")
        assert isinstance(cached, int) and 0 <= cached <= out["usage"]["prompt_tokens"], details
    return msg["content"], choice["finish_reason"]


def test_chat_non_streamed(http, model):
    out = post_chat(http, chat_body(model, max_tokens=16))
    check_completion(out, model, 16)


def test_chat_stops_at_max_tokens(http, model):
    out = post_chat(http, chat_body(model, LONG_PROMPT, max_tokens=8))
    check_completion(out, model, 8)
    assert out["choices"][0]["finish_reason"] == "length", out
    assert out["usage"]["completion_tokens"] == 8, out["usage"]


def test_max_completion_tokens(http, model):
    body = chat_body(model, LONG_PROMPT, max_completion_tokens=6)
    del body["max_tokens"]
    out = post_chat(http, body)
    assert out["choices"][0]["finish_reason"] == "length", out
    assert out["usage"]["completion_tokens"] == 6, out["usage"]


def test_chat_alias_route(http, model):
    out = post_chat(http, chat_body(model, max_tokens=8), path="/chat/completions")
    check_completion(out, model, 8)


def test_chat_content_parts_and_system(http, model):
    body = chat_body(model, max_tokens=12)
    body["messages"] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                     {"type": "text", "text": " of France?"}]},
    ]
    check_completion(post_chat(http, body), model, 12)


def test_chat_multi_turn(http, model):
    body = chat_body(model, max_tokens=12)
    body["messages"] = [
        {"role": "user", "content": "Hi, my name is Ada."},
        {"role": "assistant", "content": "Hello Ada! How can I help you?"},
        {"role": "user", "content": FRANCE},
    ]
    check_completion(post_chat(http, body), model, 12)


def test_chat_with_openai_sdk(oai, model):
    out = oai.chat.completions.create(model=model, max_tokens=16, temperature=0,
                                      messages=[{"role": "user", "content": FRANCE}])
    assert out.object == "chat.completion" and out.model == model
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in FINISH
    assert_usage(out.usage.model_dump(), 16, choice.finish_reason)


def test_chat_streamed_matches_non_streamed(http, model):
    body = chat_body(model, max_tokens=16)
    plain_content, plain_finish = check_completion(post_chat(http, body), model, 16)
    s = stream_chat(http, body)
    assert s.content_type.startswith("text/event-stream"), s.content_type
    assert s.done, "the stream did not end with data: [DONE]"
    assert not s.after_done, f"events after [DONE]: {s.after_done}"
    assert s.chunks, "no chunks"
    ids = {c.get("id") for c in s.chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-"), ids
    for c in s.chunks:
        assert c.get("object") == "chat.completion.chunk", c
        assert c.get("model") == model, c
    first = s.chunks[0]["choices"][0]["delta"]
    assert first.get("role") == "assistant", s.chunks[0]
    assert s.finish_reasons == [plain_finish], s.finish_reasons
    # The finish chunk is the last chunk with choices.
    with_choices = [c for c in s.chunks if c.get("choices")]
    assert with_choices[-1]["choices"][0]["finish_reason"] == plain_finish
    assert s.content == plain_content, "greedy streamed text differs from the non-streamed text"


def test_stream_include_usage(http, model):
    body = chat_body(model, max_tokens=16)
    plain = post_chat(http, body)
    s = stream_chat(http, {**body, "stream_options": {"include_usage": True}})
    assert s.done and not s.after_done
    assert len(s.usage_chunks) == 1, f"expected one usage chunk, got {len(s.usage_chunks)}"
    last = s.chunks[-1]
    assert last is s.usage_chunks[0], f"the usage chunk is not the last one: {last}"
    assert last.get("choices") == [], last
    finish = s.finish_reasons[-1]
    assert_usage(last["usage"], 16, finish)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert last["usage"][key] == plain["usage"][key], (last["usage"], plain["usage"])


def test_stream_with_openai_sdk(oai, model):
    stream = oai.chat.completions.create(
        model=model, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": FRANCE}])
    text, finish, usage = "", [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for ch in chunk.choices:
            text += ch.delta.content or ""
            if ch.finish_reason:
                finish.append(ch.finish_reason)
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage.model_dump()
    assert text.strip(), "no streamed content"
    assert len(finish) == 1 and finish[0] in FINISH, finish
    assert usage is not None, "no usage chunk"
    assert_usage(usage, 16, finish[0])


def check_logprob_entry(entry, top_n):
    token, lp = entry.get("token"), entry.get("logprob")
    assert isinstance(token, str), entry
    assert isinstance(lp, (int, float)) and lp <= 0 and math.isfinite(lp), entry
    raw = entry.get("bytes")
    if raw is not None:
        assert isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw), entry
        if "\ufffd" not in token:
            assert bytes(raw) == token.encode("utf-8"), entry
    top = entry.get("top_logprobs")
    assert isinstance(top, list) and len(top) == top_n, f"want {top_n} top_logprobs: {entry}"
    lps = [t["logprob"] for t in top]
    assert all(isinstance(x, (int, float)) and x <= 0 for x in lps), top
    assert lps == sorted(lps, reverse=True), f"top_logprobs not sorted: {top}"
    assert len({t["token"] for t in top}) == top_n, f"duplicate top tokens: {top}"
    # Greedy: the chosen token is the most likely one.
    assert top[0]["token"] == token, entry
    assert abs(top[0]["logprob"] - lp) < 1e-3, entry


def test_logprobs(http, model):
    body = chat_body(model, LONG_PROMPT, max_tokens=6, logprobs=True, top_logprobs=3)
    out = post_chat(http, body)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length", choice
    content = choice["logprobs"]["content"]
    assert len(content) == out["usage"]["completion_tokens"] == 6, content
    for entry in content:
        check_logprob_entry(entry, 3)
    assert "".join(e["token"] for e in content) == choice["message"]["content"]

    s = stream_chat(http, body)
    assert [e["token"] for e in s.logprobs] == [e["token"] for e in content]
    for entry in s.logprobs:
        check_logprob_entry(entry, 3)
    assert s.content == choice["message"]["content"]


def test_no_logprobs_unless_asked(http, model):
    out = post_chat(http, chat_body(model, max_tokens=4))
    assert not out["choices"][0].get("logprobs"), out["choices"][0]


def sampled(http, model, seed):
    body = chat_body(model, "Write a short poem about the sea.", max_tokens=10,
                     temperature=0.8, seed=seed)
    return post_chat(http, body)["choices"][0]["message"]["content"]


def test_seed_makes_sampling_repeatable(http, model):
    first = sampled(http, model, 1234)
    assert first.strip()
    assert sampled(http, model, 1234) == first, "same seed, different text"


def test_temperature_samples(http, model):
    texts = {sampled(http, model, seed) for seed in (1, 2, 3)}
    assert len(texts) >= 2, f"three seeds at temperature 0.8 gave one text: {texts}"


def pick_stop(text):
    """A stop string from the middle of `text`, and what the reply must be cut to."""
    for k in range(len(text) // 2, len(text) - 3):
        stop = text[k:k + 4]
        if stop.strip() and "\ufffd" not in stop:
            return stop, text[: text.find(stop)]
    pytest.fail(f"the greedy reply is too short to pick a stop string from: {text!r}")


def test_stop_strings(http, model):
    base = post_chat(http, chat_body(model, max_tokens=16))
    text = base["choices"][0]["message"]["content"]
    stop, want = pick_stop(text)

    out = post_chat(http, chat_body(model, max_tokens=16, stop=["\u2603never\u2603", stop]))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    assert choice["message"]["content"] == want, (text, stop, choice["message"]["content"])
    assert out["usage"]["completion_tokens"] <= base["usage"]["completion_tokens"]

    s = stream_chat(http, chat_body(model, max_tokens=16, stop=stop))
    assert s.finish_reasons == ["stop"], s.finish_reasons
    assert s.content == want, f"streamed text with stop {stop!r}: {s.content!r}, want {want!r}"


def test_completion_ids_are_unique(http, model):
    a = post_chat(http, chat_body(model, max_tokens=2))
    b = post_chat(http, chat_body(model, max_tokens=2))
    assert a["id"] != b["id"], "two completions share an id"
