"""Options and fixtures of the contract suite (see README.md)."""

from __future__ import annotations

import pytest

from support import MODEL_MARKERS, httpx, model_markers


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kooka contract")
    g.addoption("--base-url", default=None,
                help="server root, e.g. http://127.0.0.1:8080 (without /v1)")
    g.addoption("--api-key", default=None,
                help="key the server requires; also enables the auth tests")
    g.addoption("--model", default=None,
                help="model id to request (default: the first id of GET /v1/models)")
    g.addoption("--assume-tools", action="store_true",
                help="run the `tools` tests whatever the served model is")


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--base-url"):
        return
    needing = [i.nodeid for i in items if i.get_closest_marker("contract")]
    if needing:
        raise pytest.UsageError(
            f"{len(needing)} selected contract tests need a running server: pass "
            "--base-url http://HOST:PORT (or select -m unit)")


@pytest.fixture(scope="session")
def base_url(pytestconfig: pytest.Config) -> str:
    url = pytestconfig.getoption("--base-url")
    assert url, "--base-url is required"
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


@pytest.fixture(scope="session")
def api_key(pytestconfig: pytest.Config) -> str | None:
    return pytestconfig.getoption("--api-key")


@pytest.fixture(scope="session")
def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@pytest.fixture(scope="session")
def http(base_url: str, auth_headers: dict[str, str]):
    with httpx.Client(base_url=base_url, headers=auth_headers,
                      timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        yield client


@pytest.fixture(scope="session")
def model(pytestconfig: pytest.Config, http) -> str:
    chosen = pytestconfig.getoption("--model")
    if chosen:
        return chosen
    resp = http.get("/v1/models")
    assert resp.status_code == 200, f"GET /v1/models: {resp.status_code} {resp.text[:300]}"
    data = resp.json().get("data") or []
    assert data and data[0].get("id"), f"GET /v1/models lists no model: {resp.text[:300]}"
    return data[0]["id"]


@pytest.fixture(scope="session")
def oai(base_url: str, api_key: str | None):
    import openai
    return openai.OpenAI(base_url=base_url + "/v1", api_key=api_key or "no-key",
                         max_retries=0, timeout=300.0)


@pytest.fixture(scope="session")
def claude(base_url: str, api_key: str | None):
    import anthropic
    return anthropic.Anthropic(base_url=base_url, api_key=api_key or "no-key",
                               max_retries=0, timeout=300.0)


@pytest.fixture(autouse=True)
def _model_specific(request: pytest.FixtureRequest) -> None:
    """Skips model-specific tests unless the served model is one they are for."""
    wanted = {m.name for m in request.node.iter_markers()} & MODEL_MARKERS.keys()
    if not wanted:
        return
    model_id = request.getfixturevalue("model")
    can = model_markers(model_id)
    if request.config.getoption("--assume-tools"):
        can.add("tools")
    missing = sorted(wanted - can)
    if missing:
        reasons = {
            "tools": "is not known to emit a forced tool call without constrained decoding "
                     "(these run on Qwen2.5-Coder-0.5B-Instruct, Qwen3, MiniMax, Nemotron, GLM-4.x, gpt-oss; "
                     "--assume-tools runs them anyway)",
            "minimax": "is not a MiniMax model",
            "gpt_oss": "is not a gpt-oss model",
            "nemotron": "is not a Nemotron model",
        }
        pytest.skip(f"served model {model_id!r} " + "; ".join(reasons[m] for m in missing))
