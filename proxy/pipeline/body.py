"""Reading a request: its headers, its id, and its body within the limits."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from typing import Any

from proxy.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType, shown
from proxy.relay import Receive

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    # ASGI servers give lower-cased names; later duplicates win, which is fine for these.
    # Typed, so that the compiled loop decodes with CPython's Latin-1 decoder directly
    # (on an untyped value each decode is a method lookup and call: 15 of them a request)
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}


def request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    # a random per-process prefix and a counter: unique, and no urandom call per request
    # (compiled, an f-string's format spec costs three times as much as hex())
    return _ID_PREFIX + hex(next(_ID_COUNTER))[2:].zfill(12)


_ID_PREFIX = "req_" + os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


async def read_body(headers: Mapping[str, str], receive: Receive, limit: int,
                    setting: str | None = "server.max_body_mb", *, json_only: bool = True) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed `limit` bytes
    (`setting` names what sets the limit, for the message); unless `json_only` is False,
    a declared Content-Type other than JSON is a 415."""
    content_type = headers.get("content-type")
    if content_type is not None and json_only and content_type != "application/json":  # (what SDKs send)
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, not {shown(media) if media else 'empty'}."
            )
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(_too_large(limit, setting))
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(limit, setting))
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(limit: int, setting: str | None) -> str:
    size = f"{limit / 1048576:g} MiB" if limit >= 1048576 else f"{limit / 1024:g} KiB"
    return f"the request body is larger than the {size} " + (
        f"this server accepts ({setting})" if setting else "this endpoint accepts")
