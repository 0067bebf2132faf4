"""GET /health, /v1/models and /v1/models/{id}."""

import pytest

pytestmark = pytest.mark.contract


def test_health_is_ok(http):
    resp = http.get("/health")
    assert resp.status_code == 200, resp.text
    assert resp.json().get("status") == "ok", resp.text


def test_models_list_serves_model_first(http, model):
    resp = http.get("/v1/models")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body.get("object") == "list", body
    data = body.get("data")
    assert isinstance(data, list) and data, body
    assert data[0]["id"] == model, f"the served model {model!r} is not first: {data[:3]}"
    ids = [m.get("id") for m in data]
    assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"
    for entry in data:
        assert isinstance(entry.get("id"), str) and entry["id"], entry
        assert entry.get("object") == "model", entry
        assert isinstance(entry.get("created"), int), entry
        assert isinstance(entry.get("owned_by"), str), entry


def test_models_list_with_openai_sdk(oai, model):
    ids = [m.id for m in oai.models.list()]
    assert ids and ids[0] == model, ids


def test_model_by_id(http, oai, model):
    resp = http.get(f"/v1/models/{model}")
    assert resp.status_code == 200, resp.text
    entry = resp.json()
    assert entry.get("id") == model and entry.get("object") == "model", entry
    got = oai.models.retrieve(model)
    assert got.id == model and got.object == "model"


def test_unknown_model_by_id_is_404(http):
    from support import assert_openai_error
    assert_openai_error(http.get("/v1/models/no-such-model-kooka-contract"), 404)
