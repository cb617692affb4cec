"""Reading a request: its headers, its id, and its body within the limits."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final

from proxy.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType, shown
from proxy.relay import Receive

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    # ASGI servers give lower-cased names; later duplicates win, which is fine for these.
    # Typed, so that the compiled loop decodes with CPython's Latin-1 decoder directly
    # (on an untyped value each decode is a method lookup and call: 15 of them a request)
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}


def request_id(headers: dict[str, str]) -> str:
    given = headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return _IDS.next_id()


class RequestIds:
    """Request ids: "req_", 20 random hex digits per process and a 12-digit hex counter, so
    unique without a urandom call per request, and in order (the ledger's id index is
    appended to, not inserted into). The counter's top 8 digits are rendered once per 65,536
    ids and the last 4 from a table: compiled, `hex()` and `zfill()` are generic calls, about
    3,000 instructions a request."""

    __slots__ = ("prefix", "count", "high")

    def __init__(self) -> None:
        self.prefix = ""
        self.count = 0
        self.high = ""
        self.reseed()

    def next_id(self) -> str:
        n = self.count = self.count + 1
        low = n & 0xFFFF
        if low == 0 or not self.high:
            self.high = self.prefix + hex(n >> 16)[2:].zfill(8)
        return f"{self.high}{_HEX2[low >> 8]}{_HEX2[low & 0xFF]}"

    def reseed(self) -> None:
        """A fresh prefix (and a forked worker's own: two processes never share one)."""
        self.prefix = "req_" + os.urandom(10).hex()
        self.count = 0
        self.high = ""


_HEX2: Final = tuple(f"{i:02x}" for i in range(256))
_IDS: Final = RequestIds()
os.register_at_fork(after_in_child=_IDS.reseed)


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
