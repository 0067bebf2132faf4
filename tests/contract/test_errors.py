"""Errors: OpenAI-shaped JSON bodies with the right status, never a dropped connection."""

import json

import pytest

from support import assert_openai_error, chat_body

pytestmark = pytest.mark.contract

JSON = {"content-type": "application/json"}


def test_malformed_json_is_400(http):
    resp = http.post("/v1/chat/completions", content=b'{"messages": [', headers=JSON)
    assert_openai_error(resp, 400)


def test_malformed_json_on_completions_is_400(http):
    resp = http.post("/v1/completions", content=b'{"prompt": "hi",', headers=JSON)
    assert_openai_error(resp, 400)


def test_wrong_type_names_the_param(http, model):
    resp = http.post("/v1/chat/completions", json=chat_body(model, max_tokens="ten"))
    assert_openai_error(resp, 400, param="max_tokens")
    resp = http.post("/v1/chat/completions", json=chat_body(model, temperature="hot"))
    assert_openai_error(resp, 400, param="temperature")
    resp = http.post("/v1/chat/completions", json={"model": model, "messages": 5})
    assert_openai_error(resp, 400, param="messages")


def test_missing_messages_is_400(http, model):
    assert_openai_error(http.post("/v1/chat/completions", json={"model": model}), 400)


def test_unknown_model_is_404(http, oai):
    import openai
    body = chat_body("no-such-model-kooka-contract", max_tokens=2)
    assert_openai_error(http.post("/v1/chat/completions", json=body), 404)
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(**body)
    assert err.value.status_code == 404


def test_n_above_one_is_400(http, oai, model):
    import openai
    resp = http.post("/v1/chat/completions", json=chat_body(model, max_tokens=2, n=2))
    assert_openai_error(resp, 400, param="n")
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(**chat_body(model, max_tokens=2, n=2))


def test_get_on_post_route_is_405(http):
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert_openai_error(http.get(path), 405)


def test_unknown_route_is_404(http):
    assert_openai_error(http.get("/v1/no-such-route"), 404)
    assert_openai_error(http.post("/v1/no-such-route", json={}), 404)


def test_oversized_body_is_413(http, model):
    # The server's default limit is 8 MiB; this body is 9 MiB of valid JSON.
    body = chat_body(model, "x" * (9 * 1024 * 1024), max_tokens=1)
    resp = http.post("/v1/chat/completions", content=json.dumps(body).encode(), headers=JSON)
    assert_openai_error(resp, 413)
    # And the server still answers afterwards.
    assert http.get("/health").status_code == 200
