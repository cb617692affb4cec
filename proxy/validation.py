"""Checks on OpenAI request bodies: only the fields the proxy itself relies on or that
are cheap to get right here; the provider validates the rest and its 4xx passes through.
Each failure names the offending field in `param`, as OpenAI does.
"""

from __future__ import annotations

import re
from typing import Any, Final, NoReturn

import orjson

from proxy.errors import InvalidRequest, shown

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# a name a client chooses (model, user) travels into response headers, log lines, metric
# labels, Redis keys and error messages: printable, and of a sane length
MAX_NAME = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(value: Any, param: str) -> None:
    """A client-chosen name: a string of 1..256 characters without control characters."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string, not {_kind(value)}.", param=param)
    if len(value) > MAX_NAME:
        raise InvalidRequest(f"'{param}' is longer than {MAX_NAME} characters.", param=param)
    if not value.isprintable() and _CONTROL.search(value):  # isprintable: the fast, common answer
        raise InvalidRequest(f"'{param}' must not contain control characters (got {shown(value)}).", param=param)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send valid JSON with 'Content-Type: application/json'."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {_kind(body)}")
    return body


def check_chat(body: dict[str, Any]) -> None:
    _check_model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list):
        raise InvalidRequest(f"'messages' must be an array, not {_kind(messages)}.", param="messages")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    for message in messages:  # every message checked at once; named only when one is wrong
        if not (isinstance(message, dict) and isinstance(role := message.get("role"), str) and role in _ROLES
                and _is_content(message.get("content"))):
            _refuse_message(messages)
    _check_generation(body)
    for field in ("max_tokens", "max_completion_tokens", "n"):
        _check_int(body, field, 1)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options")


def _is_content(value: Any) -> bool:
    """A message's content: text, parts, or none (tool calls). Three checks compiled code
    makes inline; an isinstance against a tuple of types is a generic call."""
    return value is None or isinstance(value, str) or isinstance(value, list)


def _refuse_message(messages: list[Any]) -> NoReturn:
    """The error for the first message that is not a chat message."""
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object, not {_kind(message)}.", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidRequest(
                f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}.", param=f"{where}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(
                f"'{where}.content' must be a string or an array of parts, not {_kind(content)}.",
                param=f"{where}.content",
            )
    raise AssertionError("no wrong message")  # check_chat found one


def check_embeddings(body: dict[str, Any]) -> None:
    _check_model(body)
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    value = body["input"]
    if not _texts_or_tokens(value, empty_token_lists=False) or value == "":
        raise InvalidRequest(
            "'input' must be a non-empty string, array of strings, or array of token arrays.", param="input"
        )
    check_name(body.get("user"), "user")
    _check_int(body, "dimensions", 1)


def _check_generation(body: dict[str, Any]) -> None:
    """The fields chat and legacy completions share: stream flags, user, sampling."""
    stream, options = body.get("stream"), body.get("stream_options")
    if stream is not None and not isinstance(stream, bool):  # (inline checks: see _is_content)
        _refuse_type("stream", "a boolean", stream)
    if options is not None and not isinstance(options, dict):
        _refuse_type("stream_options", "an object", options)
    check_name(body.get("user"), "user")
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)


def _texts_or_tokens(value: Any, *, empty_token_lists: bool) -> bool:
    """A string, or a non-empty array of strings, of tokens, or of token arrays (embeddings
    refuse an empty token array; legacy completions take one)."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    return (all(isinstance(v, str) for v in value) or all(_is_token(v) for v in value)
            or all(isinstance(v, list) and (empty_token_lists or bool(v)) and all(_is_token(t) for t in v)
                   for v in value))


def check_completions(body: dict[str, Any]) -> None:
    """Legacy completions: a prompt (text, texts, or token arrays) and the fields the gateway reads."""
    _check_model(body)
    if "prompt" not in body:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt")
    if not _texts_or_tokens(body["prompt"], empty_token_lists=True):
        raise InvalidRequest("'prompt' must be a string, an array of strings, or token arrays.", param="prompt")
    _check_generation(body)
    for field in ("max_tokens", "n", "best_of"):
        _check_int(body, field, 1)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not token 1


def _check_model(body: dict[str, Any]) -> None:
    check_name(body.get("model"), "model")


def _check_type(body: dict[str, Any], field: str, kind: type, name: str) -> None:
    value = body.get(field)
    if value is not None and not isinstance(value, kind):
        _refuse_type(field, name, value)


def _refuse_type(field: str, name: str, value: Any) -> NoReturn:
    raise InvalidRequest(f"'{field}' must be {name}, not {_kind(value)}.", param=field)


def _check_number(body: dict[str, Any], field: str, low: int, high: int) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"'{field}' must be a number, not {_kind(value)}.", param=field)
    if not low <= value <= high:
        raise InvalidRequest(f"'{field}' must be between {low} and {high}, got {value}.", param=field)


def _check_int(body: dict[str, Any], field: str, low: int) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{field}' must be an integer, not {_kind(value)}.", param=field)
    if value < low:
        raise InvalidRequest(f"'{field}' must be at least {low}, got {value}.", param=field)


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def check_feedback(body: dict[str, Any]) -> tuple[str, float, str | None]:
    """`POST /v1/feedback`: (request_id, score in [0, 1], optional comment)."""
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
        raise InvalidRequest("'request_id' must be the x-request-id of one of your requests.", param="request_id")
    score = body.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise InvalidRequest("'score' must be a number from 0 to 1.", param="score")
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 4000):
        raise InvalidRequest("'comment' must be a string of at most 4000 characters.", param="comment")
    unknown = sorted(set(body) - {"request_id", "score", "comment"})
    if unknown:
        raise InvalidRequest(f"unknown field {shown(unknown[0])}.", param=unknown[0][:64])
    return request_id, float(score), comment
