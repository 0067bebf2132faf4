"""Unit tests of the suite's own helpers (no server): they must catch what they check."""

import pytest

from support import assert_usage, model_markers, parse_sse

pytestmark = pytest.mark.unit


def test_sse_events_comments_and_multiline_data():
    text = (": keepalive\n\n"
            "event: message_start\ndata: {\"a\":1}\n\n"
            "data: line1\r\ndata: line2\r\n\r\n"
            "data:[DONE]\n\n")
    evs = parse_sse(text)
    assert [(e.event, e.data) for e in evs] == [
        ("message_start", '{"a":1}'), (None, "line1\nline2"), (None, "[DONE]")]


def test_sse_trailing_event_without_blank_line():
    assert [e.data for e in parse_sse("data: x")] == ["x"]


def test_usage_checks_fail_on_inconsistent_numbers():
    assert_usage({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, 4, "length")
    bad = [
        {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 8},
        {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4},
        {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
        {"prompt_tokens": "3", "completion_tokens": 4, "total_tokens": 7},
    ]
    for usage in bad:
        with pytest.raises(AssertionError):
            assert_usage(usage)
    with pytest.raises(AssertionError):  # over max_tokens
        assert_usage({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}, 4)
    with pytest.raises(AssertionError):  # `length` before max_tokens
        assert_usage({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}, 4, "length")


@pytest.mark.parametrize("model_id,want", [
    ("SmolLM2-135M-Instruct", set()),
    ("Qwen2.5-Coder-0.5B-Instruct", {"tools"}),
    ("mlx-community/MiniMax-M2.1-4bit", {"tools", "minimax"}),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B", {"tools", "nemotron"}),
    ("mlx-community/GLM-4.6-4bit", {"tools"}),
])
def test_model_markers(model_id, want):
    assert model_markers(model_id) == want
