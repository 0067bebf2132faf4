"""Robustness (marker `fuzz`): whatever arrives, the server answers below 500, in bounded time,
with a JSON error that says what was wrong, and keeps serving.

- schemathesis generates requests for every operation of `GET /openapi.json` (positive and
  negative data, a fixed seed and number of examples, no shrinking) and checks each response
  against the document (it leaves out the operation that served the document itself);
- a corpus of hand-written nasty bodies goes to each generation route (chat, completions,
  messages, responses), each group followed by a normal request that must still succeed;
- valid but extreme numbers stay sane (a temperature of 1e-45 decodes like temperature 0);
- a body that stops arriving must be answered (408/400) or the connection closed within 40 s
  (`KOOKA_FUZZ_SLOW=0` skips it).

Generation is kept short: every request the fuzzer sends to a generation route has its token
limit clamped to `FUZZ_MAX_TOKENS` (set when absent, where absent means "the rest of the
context") just before it is sent; the document itself states the real ranges.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from support import httpx

try:
    import schemathesis
except ImportError as e:  # pragma: no cover - depends on the venv
    raise ImportError("schemathesis is missing: run scripts/setup.sh --tests "
                      "(scripts/requirements-test.txt pins it)") from e

pytestmark = [pytest.mark.contract, pytest.mark.fuzz]

SEED = 18
EXAMPLES_PER_OPERATION = 25
# No single request may take longer (a hang is a failure, not a stuck suite).
REQUEST_TIMEOUT = 60.0
FUZZ_MAX_TOKENS = 4
# The token-limit fields of each generation route, the one that wins first; `absent` says
# whether the fuzzer adds the first one when the body has none.
TOKEN_LIMITS = {
    "/v1/chat/completions": (("max_completion_tokens", "max_tokens"), True),
    "/chat/completions": (("max_completion_tokens", "max_tokens"), True),
    "/v1/completions": (("max_tokens",), True),
    "/completions": (("max_tokens",), True),
    "/v1/responses": (("max_output_tokens",), True),
    "/responses": (("max_output_tokens",), True),
    # Required there: a fuzzed body without it tests that it is required.
    "/v1/messages": (("max_tokens",), False),
}


# ---- error bodies -----------------------------------------------------------------------------

def error_message(path: str, status: int, content_type: str, text: str) -> dict:
    """Checks a 4xx body: JSON, the route's error shape, a message that says something.

    Returns the error object (OpenAI's `error`, or Anthropic's `error`)."""
    where = f"{status} on {path}: {text[:300]!r}"
    assert content_type.startswith("application/json"), f"content-type {content_type!r}, {where}"
    try:
        body = json.loads(text)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {where}") from None
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"no error object: {where}"
    err = body["error"]
    if path.startswith("/v1/messages"):
        assert body.get("type") == "error", f"not Anthropic's error shape: {where}"
    else:
        for key in ("message", "type", "param", "code"):
            assert key in err, f"error lacks {key!r}: {where}"
        assert err["param"] is None or (isinstance(err["param"], str) and err["param"]), where
    assert isinstance(err.get("type"), str) and err["type"], f"error type missing: {where}"
    message = err.get("message")
    assert isinstance(message, str) and len(message.strip()) >= 8, f"empty error message: {where}"
    return err


def names_field(err: dict, field: str) -> bool:
    """The error names `field`: as the root of its `param`, or in its message."""
    param = err.get("param")
    root = re.match(r"[A-Za-z_]+", param).group(0) if isinstance(param, str) and param else None
    return root == field or field in err.get("message", "")


def error_body_says_what_is_wrong(ctx, response, case) -> None:
    """schemathesis check: a 4xx is a JSON error in the route's shape with a real message."""
    if 400 <= response.status_code < 500:
        ct = (response.headers.get("content-type") or [""])[0]
        error_message(case.operation.path, response.status_code, ct, response.text)


# ---- schemathesis against /openapi.json ------------------------------------------------------

@pytest.fixture(scope="module")
def api_schema(base_url: str, auth_headers: dict[str, str]):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": base_url,
        "headers": auth_headers,
        "request-timeout": REQUEST_TIMEOUT,
        "suppress-health-check": ["all"],
        "generation": {
            "mode": "all",
            "max-examples": EXAMPLES_PER_OPERATION,
            "no-shrink": True,
            "database": "none",
            "with-security-parameters": False,
        },
        # Examples from the document, then generated data; no coverage sweep (hundreds of
        # cases per operation) and no stateful links (kooka keeps no state).
        "phases": {
            "examples": {"enabled": True},
            "fuzzing": {"enabled": True},
            "coverage": {"enabled": False},
            "stateful": {"enabled": False},
        },
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "response_headers_conformance": {"enabled": True},
            "unsupported_method": {"enabled": True},
        },
    })
    url = f"{base_url}/openapi.json"
    resp = httpx.get(url, headers=auth_headers, timeout=30)
    if resp.status_code == 404:  # another server (kooka's route is checked by its unit tests)
        pytest.skip(f"{url} is a 404: this server publishes no OpenAPI document")
    assert resp.status_code == 200, f"GET /openapi.json: {resp.status_code} {resp.text[:300]}"
    return schemathesis.openapi.from_url(url, config=config, headers=auth_headers, timeout=30)


def clamp_generation(case) -> None:
    """Keeps generated requests short (see the module's docstring)."""
    limits = TOKEN_LIMITS.get(case.operation.path)
    if limits is None or not isinstance(case.body, dict):
        return
    keys, add_when_absent = limits
    present = [k for k in keys if k in case.body and case.body[k] is not None]
    for k in present:
        v = case.body[k]
        if isinstance(v, int) and not isinstance(v, bool) and v > FUZZ_MAX_TOKENS:
            case.body[k] = FUZZ_MAX_TOKENS
    if not present and add_when_absent:
        case.body[keys[-1]] = FUZZ_MAX_TOKENS


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's `from_fixture` reads and relabels `node._nodeid`, which pytest 9.2
    # no longer has; without this every run dies with an AttributeError before any request.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_openapi_operations(case):
    clamp_generation(case)
    case.call_and_validate(additional_checks=[error_body_says_what_is_wrong])


# ---- the corpus -------------------------------------------------------------------------------

HI = "Say hi."
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions",
             {"messages": [{"role": "user", "content": HI}], "max_tokens": 2, "temperature": 0}),
    "completions": ("/v1/completions", {"prompt": HI, "max_tokens": 2, "temperature": 0}),
    "messages": ("/v1/messages",
                 {"max_tokens": 2, "messages": [{"role": "user", "content": HI}], "temperature": 0}),
    "responses": ("/v1/responses", {"input": HI, "max_output_tokens": 2, "temperature": 0}),
}
# What a normal reply is, per route.
REPLY_OBJECT = {"chat": ("object", "chat.completion"), "completions": ("object", "text_completion"),
                "messages": ("type", "message"), "responses": ("object", "response")}

STRING, INT, NUMBER, BOOL, LIST, OBJECT = "string", "int", "number", "bool", "list", "object"
STRING_OR_LIST, STRING_OR_OBJECT, PROMPT, ABSENT = "string|list", "string|object", "prompt", "null"
WRONG: dict[str, list[Any]] = {
    STRING: [5, True, [], {}],
    INT: ["5", 1.5, True, [], {}],
    NUMBER: ["0.5", True, [], {}],
    BOOL: ["true", 1, [], {}],
    LIST: ["x", 5, True, {}],
    OBJECT: ["x", 5, True, []],
    STRING_OR_LIST: [5, True, {}, [1], [None]],
    STRING_OR_OBJECT: [5, True, [], "no-such-choice"],
    PROMPT: [5, True, {}, [1.5], ["a", "b"], [-1], []],
    ABSENT: ["resp_1", 5, {}],
}
SAMPLING = {"temperature": NUMBER, "top_p": NUMBER, "top_k": INT, "min_p": NUMBER,
            "repetition_penalty": NUMBER, "presence_penalty": NUMBER, "frequency_penalty": NUMBER,
            "seed": INT, "logit_bias": OBJECT}
# The top-level fields each route reads, by the types it accepts: a wrong type must be a 400
# (or a 404 for `model`) naming the field.
FIELDS: dict[str, dict[str, str]] = {
    "chat": {"model": STRING, "messages": LIST, "n": INT, "stream": BOOL, "stream_options": OBJECT,
             "max_tokens": INT, "max_completion_tokens": INT, **SAMPLING, "logprobs": BOOL,
             "top_logprobs": INT, "stop": STRING_OR_LIST, "tools": LIST,
             "tool_choice": STRING_OR_OBJECT, "parallel_tool_calls": BOOL,
             "chat_template_kwargs": OBJECT, "response_format": OBJECT},
    "completions": {"model": STRING, "prompt": PROMPT, "n": INT, "best_of": INT, "echo": BOOL,
                    "suffix": STRING, "stream": BOOL, "stream_options": OBJECT, "max_tokens": INT,
                    **SAMPLING, "logprobs": INT, "stop": STRING_OR_LIST, "response_format": OBJECT},
    "messages": {"model": STRING, "max_tokens": INT, "stream": BOOL, "temperature": NUMBER,
                 "top_p": NUMBER, "top_k": INT, "stop_sequences": STRING_OR_LIST,
                 "system": STRING_OR_LIST, "messages": LIST, "tools": LIST, "tool_choice": OBJECT,
                 "output_format": OBJECT},
    "responses": {"model": STRING, "input": STRING_OR_LIST, "instructions": STRING, "stream": BOOL,
                  "max_output_tokens": INT, **SAMPLING, "tools": LIST,
                  "tool_choice": STRING_OR_OBJECT, "parallel_tool_calls": BOOL,
                  "previous_response_id": ABSENT, "conversation": ABSENT},
}
# Read leniently (a value of another type is ignored): only "no 5xx" is asked of them.
LENIENT: dict[str, list[str]] = {
    "chat": [], "completions": [],
    "messages": ["thinking", "output_config", "metadata"],
    "responses": ["text", "reasoning", "store", "metadata", "include", "truncation"],
}

JSON_HEADERS = {"content-type": "application/json"}


def raw(route: str, **changes: Any) -> bytes:
    body = dict(ROUTES[route][1])
    body.update(changes)
    return json.dumps(body).encode()


def with_text(route: str, text: str) -> bytes:
    """The route's normal body with its user text replaced by `text` (JSON-escaped)."""
    return raw(route).replace(json.dumps(HI).encode(), json.dumps(text).encode())


def with_raw_text(route: str, text: bytes) -> bytes:
    """... replaced by raw bytes between the quotes (to send what JSON cannot escape)."""
    return raw(route).replace(json.dumps(HI).encode(), b'"' + text + b'"')


def with_raw_field(route: str, field: str, value: bytes) -> bytes:
    """The normal body with `field` set to the raw JSON text `value`."""
    marker = "__RAW__"
    return raw(route, **{field: marker}).replace(json.dumps(marker).encode(), value)


def post(http, path: str, content: bytes) -> httpx.Response:
    t = time.monotonic()
    resp = http.post(path, content=content, headers=JSON_HEADERS, timeout=REQUEST_TIMEOUT)
    assert time.monotonic() - t < REQUEST_TIMEOUT
    return resp


def check_answer(route: str, resp: httpx.Response, what: str) -> dict | None:
    """Below 500, and a 4xx is a proper error; returns the error object of a 4xx."""
    path = ROUTES[route][0]
    assert resp.status_code < 500, f"{what}: {resp.status_code} {resp.text[:500]}"
    if resp.status_code >= 400:
        return error_message(path, resp.status_code, resp.headers.get("content-type", ""), resp.text)
    return None


def still_serves(http, route: str) -> None:
    path, body = ROUTES[route]
    resp = http.post(path, json=body, timeout=REQUEST_TIMEOUT)
    assert resp.status_code == 200, f"a normal request after the corpus: {resp.status_code} {resp.text[:300]}"
    key, value = REPLY_OBJECT[route]
    assert resp.json().get(key) == value, resp.text[:300]


def nasty_bodies(route: str) -> dict[str, list[bytes]]:
    path = ROUTES[route][0]
    limit = {"responses": "max_output_tokens"}.get(route, "max_tokens")
    deep_list = b"[" * 10_000 + b"]" * 10_000
    deep_object = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    return {
        "empty_body": [b"", b" ", b"\n\n"],
        "not_an_object": [b"[]", b"null", b'"x"', b"42", b"true", b"[{}]", b'{"a":1} {"b":2}'],
        "truncated_json": [raw(route)[:-1], raw(route)[: len(raw(route)) // 2], b"{", b'{"'],
        "deep_nesting": [deep_list, deep_object,
                         with_raw_field(route, "metadata", deep_list),
                         with_raw_field(route, "messages" if route != "completions" else "prompt",
                                        deep_object)],
        "invalid_utf8": [with_raw_text(route, b"\xff\xfe"), with_raw_text(route, b"\xc0\x80"),
                         with_raw_text(route, b"\xed\xa0\x80"), with_raw_text(route, b"abc\x80"),
                         with_text(route, "x").replace(b'"x"', b'"\\ud800"'),
                         b"\xef\xbb\xbf" + raw(route)],
        "nul_bytes": [with_text(route, "a\u0000b"), with_raw_text(route, b"a\x00b"),
                      raw(route, model="a\u0000b"), b"\x00", raw(route) + b"\x00"],
        "huge_numbers": [with_raw_field(route, limit, b"1e400"),
                         with_raw_field(route, limit, b"-1e308"),
                         with_raw_field(route, limit, str(2**70).encode()),
                         with_raw_field(route, limit, str(2**64).encode()),
                         with_raw_field(route, limit, b"0"),
                         with_raw_field(route, limit, b"-1"),
                         with_raw_field(route, limit, b"2.5"),
                         with_raw_field(route, "temperature", b"1e400"),
                         with_raw_field(route, "temperature", b"-1e308"),
                         with_raw_field(route, "temperature", b"1e308"),
                         with_raw_field(route, "temperature", b"NaN"),
                         with_raw_field(route, "temperature", b"Infinity"),
                         with_raw_field(route, "top_p", b"1e-400"),
                         with_raw_field(route, "top_k", str(2**70).encode()),
                         with_raw_field(route, "seed", str(2**70).encode()),
                         with_raw_field(route, "seed", str(-(2**70)).encode())],
        "long_prompts": [with_text(route, "hello " * 9000),
                         with_text(route, "x" * 1_000_000),
                         with_text(route, "\u00e9\U0001f600" * 200_000)],
        "duplicate_keys": [raw(route)[:-1] + f', "{limit}": 1, "{limit}": 3}}'.encode()],
        "many_items": [raw(route, stop=["a"] * 10_000) if route != "messages"
                       else raw(route, stop_sequences=["a"] * 10_000),
                       many_messages(route)],
        "wrong_content_type": [raw(route)],
    }


def many_messages(route: str) -> bytes:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(5_000)]
    turns.append({"role": "user", "content": HI})
    if route == "completions":
        return raw(route, prompt=[1] * 100_000)
    if route == "responses":
        return raw(route, input=turns)
    return raw(route, messages=turns)


NASTY_GROUPS = list(nasty_bodies("chat"))


@pytest.mark.parametrize("group", NASTY_GROUPS)
@pytest.mark.parametrize("route", list(ROUTES))
def test_nasty_bodies(http, route: str, group: str) -> None:
    path = ROUTES[route][0]
    for i, body in enumerate(nasty_bodies(route)[group]):
        what = f"{group}[{i}] to {path} ({body[:80]!r}...)"
        if group == "wrong_content_type":
            resp = http.post(path, content=body, headers={"content-type": "text/plain"},
                             timeout=REQUEST_TIMEOUT)
        else:
            resp = post(http, path, body)
        check_answer(route, resp, what)
    still_serves(http, route)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_tiny_temperatures_decode_greedily(http, route: str) -> None:
    """A temperature whose reciprocal overflows f32 is still a valid one: near-greedy, not noise."""
    path, body = ROUTES[route]
    text = {"chat": lambda r: r["choices"][0]["message"]["content"],
            "completions": lambda r: r["choices"][0]["text"]}[route]
    replies = {}
    for t in (0, 1e-45, 1e-40, 1e-38):
        resp = http.post(path, json={**body, "max_tokens": 8, "temperature": t},
                         timeout=REQUEST_TIMEOUT)
        assert resp.status_code == 200, f"temperature {t}: {resp.status_code} {resp.text[:300]}"
        replies[t] = text(resp.json())
    assert all(r == replies[0] for r in replies.values()), replies


def absurd_schemas() -> dict[str, dict]:
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    return {
        "type_nonsense": {"type": "nonsense"},
        "not_anything": {"not": {}},
        "false_schema_property": {"type": "object", "properties": {"a": False}, "required": ["a"]},
        "self_ref": {"$ref": "#"},
        "recursive_ref": {"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
                          "$ref": "#/$defs/n"},
        "dangling_ref": {"$ref": "#/$defs/missing"},
        "remote_ref": {"$ref": "http://127.0.0.1:9/schema.json"},
        "bounds_crossed": {"type": "integer", "minimum": 1e308, "maximum": -1e308},
        "huge_bounds": {"type": "number", "minimum": -1e308, "maximum": 1e308,
                        "multipleOf": 1e-300},
        "min_items_huge": {"type": "array", "minItems": 1_000_000_000},
        "min_length_huge": {"type": "string", "minLength": 1_000_000_000},
        "min_length_2_70": {"type": "string", "minLength": 2**70},
        "bad_regex": {"type": "string", "pattern": "(["},
        "regex_blowup": {"type": "string", "pattern": "(a|aa)*" * 50 + "b"},
        "huge_enum": {"enum": [f"w{i}" for i in range(20_000)]},
        "wide_object": {"type": "object",
                        "properties": {f"p{i}": {"type": "string"} for i in range(2_000)},
                        "required": [f"p{i}" for i in range(2_000)]},
        "deep_object": deep,
        "unknown_keywords": {"type": "object", "x-foo": 1, "if": {"type": "object"},
                             "then": {"required": ["a"]}, "dependentSchemas": {"a": False}},
        "wrong_keyword_types": {"type": 5, "properties": [], "required": "a", "items": 7},
        "format_everything": {"type": "object", "properties": {
            f: {"type": "string", "format": f} for f in
            ["date-time", "email", "uri", "uuid", "ipv6", "regex", "nonsense"]}},
        "empty": {},
    }


def schema_body(route: str, schema: dict) -> bytes:
    if route in ("chat", "completions"):
        return raw(route, response_format={"type": "json_schema",
                                           "json_schema": {"name": "x", "schema": schema,
                                                           "strict": True}})
    if route == "messages":
        return raw(route, output_config={"format": {"type": "json_schema", "schema": schema}})
    return raw(route, text={"format": {"type": "json_schema", "name": "x", "schema": schema,
                                       "strict": True}})


@pytest.mark.parametrize("route", list(ROUTES))
def test_absurd_json_schemas(http, route: str) -> None:
    for name, schema in absurd_schemas().items():
        resp = post(http, ROUTES[route][0], schema_body(route, schema))
        check_answer(route, resp, f"schema {name} on {route}")
    still_serves(http, route)


@pytest.mark.parametrize("route", list(ROUTES))
def test_wrong_types_name_the_field(http, route: str) -> None:
    path = ROUTES[route][0]
    failures = []
    for field, kind in FIELDS[route].items():
        for value in WRONG[kind]:
            resp = post(http, path, raw(route, **{field: value}))
            what = f"{field}={json.dumps(value)} on {path}"
            err = check_answer(route, resp, what)
            if resp.status_code not in (400, 404):
                failures.append(f"{what}: {resp.status_code}, expected a 400 naming `{field}`")
            elif not names_field(err, field):
                failures.append(f"{what}: the error does not name `{field}`: {err}")
    for field in LENIENT[route]:
        for value in ["x", []]:
            check_answer(route, post(http, path, raw(route, **{field: value})), f"{field}={value!r}")
    assert not failures, "\n".join(failures)
    still_serves(http, route)


# ---- slow bodies ------------------------------------------------------------------------------

SLOW_BODY_DEADLINE = 40.0


@pytest.mark.skipif(os.environ.get("KOOKA_FUZZ_SLOW") == "0", reason="KOOKA_FUZZ_SLOW=0")
def test_stalled_body_is_answered_or_closed(base_url: str, api_key: str | None) -> None:
    url = urlsplit(base_url)
    assert url.scheme == "http", f"raw-socket test needs http://, got {base_url}"
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n")
    if api_key:
        head += f"Authorization: Bearer {api_key}\r\n"
    start = time.monotonic()
    with socket.create_connection((url.hostname, url.port or 80), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + b'{"messages')  # 10 of the 100 bytes
        received = b""
        closed = False
        while time.monotonic() - start < SLOW_BODY_DEADLINE:
            sock.settimeout(max(0.1, SLOW_BODY_DEADLINE - (time.monotonic() - start)))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if b"\r\n\r\n" in received:
                break
    elapsed = time.monotonic() - start
    assert received or closed, f"no answer and still open after {elapsed:.0f} s"
    if received:
        status = received.split(b"\r\n", 1)[0]
        assert re.match(rb"HTTP/1\.[01] (408|400) ", status), f"answered {status!r} after {elapsed:.0f} s"
