"""Request-body checks: each malformed body gives OpenAI's error shape with the right
status, type, code and param."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from proxy.errors import InvalidRequest
from proxy.validation import check_chat, check_embeddings, check_feedback, parse_json_object

MSG = [{"role": "user", "content": "hi"}]


def rejected(check: Callable[[Any], Any], arg: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        check(arg)
    return exc.value


def assert_openai_error(err: InvalidRequest, param: str | None, message: str) -> None:
    assert (err.status, err.type, err.code, err.param) == (400, "invalid_request_error", None, param)
    assert err.message == message
    assert orjson.loads(err.body()) == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }


# ---------------------------------------------------------------- JSON body

BAD_JSON = "We could not parse the JSON body of your request. Send valid JSON with 'Content-Type: application/json'."

BODY_CASES = [
    ("empty", b"", "the request body is empty; send a JSON object"),
    ("whitespace", b"  \n\t", "the request body is empty; send a JSON object"),
    ("truncated", b'{"model": "x"', BAD_JSON),
    ("trailing garbage", b'{"model": "x"} x', BAD_JSON),
    ("not utf-8", b'{"model": "\xff"}', BAD_JSON),
    ("NaN", b'{"temperature": NaN}', BAD_JSON),
    ("single quotes", b"{'model': 'x'}", BAD_JSON),
    ("array", b"[1, 2]", "the request body must be a JSON object, not an array"),
    ("string", b'"hello"', "the request body must be a JSON object, not a string"),
    ("number", b"42", "the request body must be a JSON object, not a number"),
    ("null", b"null", "the request body must be a JSON object, not null"),
    ("boolean", b"true", "the request body must be a JSON object, not a boolean"),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_bad_json_body(raw, message):
    assert_openai_error(rejected(parse_json_object, raw), None, message)


@pytest.mark.parametrize("raw", [b"{}", b' {"model": "x", "messages": []} ', '{"a": "é"}'.encode()])
def test_json_object_parses(raw):
    assert parse_json_object(raw) == orjson.loads(raw)


# ---------------------------------------------------------------- chat completions


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fast", "messages": MSG}
    for key, value in fields.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


ROLES = "assistant, developer, function, system, tool, user"

CHAT_CASES = [
    ("model number", chat(model=5), "model", "'model' must be a string, not a number."),
    ("model list", chat(model=["a"]), "model", "'model' must be a string, not an array."),
    ("messages missing", chat(messages=...), "messages", "Missing required parameter: 'messages'."),
    ("messages null", chat(messages=None), "messages", "Missing required parameter: 'messages'."),
    ("messages string", chat(messages="hi"), "messages", "'messages' must be an array, not a string."),
    ("messages object", chat(messages={"role": "user"}), "messages", "'messages' must be an array, not an object."),
    ("messages empty", chat(messages=[]), "messages", "'messages' must contain at least one message."),
    ("message not object", chat(messages=["hi"]), "messages[0]", "'messages[0]' must be an object, not a string."),
    ("second message null", chat(messages=[MSG[0], None]), "messages[1]", "'messages[1]' must be an object, not null."),
    ("role missing", chat(messages=[{"content": "x"}]), "messages[0].role", f"'messages[0].role' must be one of {ROLES}."),
    ("role unknown", chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role",
     f"'messages[0].role' must be one of {ROLES}."),
    ("role not a string", chat(messages=[{"role": 1, "content": "x"}]), "messages[0].role",
     f"'messages[0].role' must be one of {ROLES}."),
    ("role wrong case", chat(messages=[MSG[0], {"role": "User", "content": "x"}]), "messages[1].role",
     f"'messages[1].role' must be one of {ROLES}."),
    ("role a list", chat(messages=[{"role": ["user"], "content": "x"}]), "messages[0].role",
     f"'messages[0].role' must be one of {ROLES}."),
    ("role an object", chat(messages=[{"role": {"user": 1}, "content": "x"}]), "messages[0].role",
     f"'messages[0].role' must be one of {ROLES}."),
    ("the wrong one of many", chat(messages=[*MSG * 40, {"role": "user", "content": 1.5}, {"role": 2}]),
     "messages[40].content", "'messages[40].content' must be a string or an array of parts, not a number."),
    ("content number", chat(messages=[{"role": "user", "content": 5}]), "messages[0].content",
     "'messages[0].content' must be a string or an array of parts, not a number."),
    ("content object", chat(messages=[{"role": "user", "content": {"text": "x"}}]), "messages[0].content",
     "'messages[0].content' must be a string or an array of parts, not an object."),
    ("stream string", chat(stream="yes"), "stream", "'stream' must be a boolean, not a string."),
    ("stream number", chat(stream=1), "stream", "'stream' must be a boolean, not a number."),
    ("stream_options list", chat(stream=True, stream_options=[]), "stream_options",
     "'stream_options' must be an object, not an array."),
    ("stream_options without stream", chat(stream_options={"include_usage": True}), "stream_options",
     "'stream_options' is only allowed when 'stream' is true."),
    ("stream_options with stream false", chat(stream=False, stream_options={}), "stream_options",
     "'stream_options' is only allowed when 'stream' is true."),
    ("user number", chat(user=5), "user", "'user' must be a string, not a number."),
    ("temperature string", chat(temperature="hot"), "temperature", "'temperature' must be a number, not a string."),
    ("temperature boolean", chat(temperature=True), "temperature", "'temperature' must be a number, not a boolean."),
    ("temperature too high", chat(temperature=2.5), "temperature", "'temperature' must be between 0 and 2, got 2.5."),
    ("temperature negative", chat(temperature=-0.1), "temperature", "'temperature' must be between 0 and 2, got -0.1."),
    ("top_p too high", chat(top_p=1.01), "top_p", "'top_p' must be between 0 and 1, got 1.01."),
    ("max_tokens zero", chat(max_tokens=0), "max_tokens", "'max_tokens' must be at least 1, got 0."),
    ("max_tokens float", chat(max_tokens=1.5), "max_tokens", "'max_tokens' must be an integer, not a number."),
    ("max_tokens string", chat(max_tokens="10"), "max_tokens", "'max_tokens' must be an integer, not a string."),
    ("max_tokens boolean", chat(max_tokens=True), "max_tokens", "'max_tokens' must be an integer, not a boolean."),
    ("max_completion_tokens negative", chat(max_completion_tokens=-5), "max_completion_tokens",
     "'max_completion_tokens' must be at least 1, got -5."),
    ("n zero", chat(n=0), "n", "'n' must be at least 1, got 0."),
]


@pytest.mark.parametrize(("body", "param", "message"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_body(body, param, message):
    assert_openai_error(rejected(check_chat, body), param, message)


@pytest.mark.parametrize(
    "body",
    [
        chat(),
        chat(model=...),  # the team's default model applies
        chat(model=None),
        chat(messages=[{"role": r, "content": "x"} for r in ("system", "developer", "user", "assistant", "tool", "function")]),
        chat(messages=[{"role": "assistant", "content": None, "tool_calls": []}]),
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
        chat(stream=True, stream_options={"include_usage": True}),
        chat(stream=False),
        chat(stream_options=None),
        chat(temperature=0, top_p=1),
        chat(temperature=2, top_p=0.0),
        chat(max_tokens=1, max_completion_tokens=4096, n=2),
        chat(max_tokens=None, user="alice"),
        chat(tools=[{"type": "function"}], response_format={"type": "json_object"}),  # left to the provider
    ],
)
def test_good_chat_body(body):
    check_chat(body)


def test_first_problem_is_reported():
    err = rejected(check_chat, {"model": 1, "messages": "x", "temperature": 9})
    assert err.param == "model"


# ---------------------------------------------------------------- embeddings

INPUT = "'input' must be a non-empty string, array of strings, or array of token arrays."

EMBED_CASES = [
    ("model number", {"model": 1, "input": "x"}, "model", "'model' must be a string, not a number."),
    ("input missing", {"model": "e"}, "input", "Missing required parameter: 'input'."),
    ("input null", {"model": "e", "input": None}, "input", INPUT),
    ("input empty string", {"model": "e", "input": ""}, "input", INPUT),
    ("input empty list", {"model": "e", "input": []}, "input", INPUT),
    ("input number", {"model": "e", "input": 5}, "input", INPUT),
    ("input object", {"model": "e", "input": {"text": "x"}}, "input", INPUT),
    ("input mixed", {"model": "e", "input": ["a", 1]}, "input", INPUT),
    ("input booleans", {"model": "e", "input": [True, False]}, "input", INPUT),
    ("input floats", {"model": "e", "input": [1.5]}, "input", INPUT),
    ("token arrays with floats", {"model": "e", "input": [[1, 2.5]]}, "input", INPUT),
    ("token arrays with booleans", {"model": "e", "input": [[1, True]]}, "input", INPUT),
    ("token arrays mixed with strings", {"model": "e", "input": [[1], "a"]}, "input", INPUT),
    ("user number", {"model": "e", "input": "x", "user": 3}, "user", "'user' must be a string, not a number."),
    ("dimensions zero", {"model": "e", "input": "x", "dimensions": 0}, "dimensions", "'dimensions' must be at least 1, got 0."),
    ("dimensions string", {"model": "e", "input": "x", "dimensions": "8"}, "dimensions",
     "'dimensions' must be an integer, not a string."),
]


@pytest.mark.parametrize(("body", "param", "message"), [c[1:] for c in EMBED_CASES], ids=[c[0] for c in EMBED_CASES])
def test_bad_embeddings_body(body, param, message):
    assert_openai_error(rejected(check_embeddings, body), param, message)


@pytest.mark.parametrize(
    "value",
    ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]], [0]],
)
def test_good_embeddings_body(value):
    check_embeddings({"model": "e", "input": value, "dimensions": 8, "user": "u"})


# ---------------------------------------------------------------- feedback

FEEDBACK_CASES = [
    ("request_id missing", {"score": 1}, "request_id"),
    ("request_id empty", {"request_id": "", "score": 1}, "request_id"),
    ("request_id number", {"request_id": 5, "score": 1}, "request_id"),
    ("request_id too long", {"request_id": "r" * 129, "score": 1}, "request_id"),
    ("score missing", {"request_id": "r"}, "score"),
    ("score boolean", {"request_id": "r", "score": True}, "score"),
    ("score string", {"request_id": "r", "score": "1"}, "score"),
    ("score above one", {"request_id": "r", "score": 1.5}, "score"),
    ("score negative", {"request_id": "r", "score": -0.1}, "score"),
    ("comment number", {"request_id": "r", "score": 1, "comment": 5}, "comment"),
    ("comment too long", {"request_id": "r", "score": 1, "comment": "c" * 4001}, "comment"),
    ("unknown field", {"request_id": "r", "score": 1, "rating": 5}, "rating"),
]


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in FEEDBACK_CASES], ids=[c[0] for c in FEEDBACK_CASES])
def test_bad_feedback_body(body, param):
    err = rejected(check_feedback, body)
    assert (err.status, err.type, err.code, err.param) == (400, "invalid_request_error", None, param)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"request_id": "r1", "score": 1}, ("r1", 1.0, None)),
        ({"request_id": "r1", "score": 0, "comment": "bad"}, ("r1", 0.0, "bad")),
        ({"request_id": "r1", "score": 0.5, "comment": None}, ("r1", 0.5, None)),
    ],
)
def test_good_feedback_body(body, expected):
    assert check_feedback(body) == expected


def test_empty_token_array_in_embeddings_input_is_refused():
    from proxy.validation import check_embeddings

    with pytest.raises(InvalidRequest) as info:
        check_embeddings({"model": "m", "input": [[1, 2], []]})
    assert info.value.param == "input"
