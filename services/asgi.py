"""What the raw ASGI services (the sidecar, the control API) share: the lifespan answer,
the 4xx they answer with, and reading a request body as one JSON object within a size limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge the server's startup and shutdown (the services hold nothing to open)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class BadRequest(Exception):
    """A request answered with `status` and `{"error": message, **extra}` (and `headers`)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra
        self.headers: list[tuple[bytes, bytes]] = []


async def read_body(receive: Receive, max_bytes: int, *, declared_length: str = "") -> bytes:
    """The body's bytes; 413 past `max_bytes` (refused at once when the Content-Length
    header says so)."""
    if declared_length.isdigit() and int(declared_length) > max_bytes:
        raise BadRequest(413, f"body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, f"body is larger than {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def json_object(raw: bytes, *, allow_empty: bool = False) -> dict[str, Any] | None:
    """`raw` as a JSON object (None for an empty body when `allow_empty`); 400 for a body
    that is not a JSON object."""
    if allow_empty and not raw.strip():
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"body must be a JSON object, not {type(body).__name__}")
    return body


async def read_json_object(receive: Receive, max_bytes: int, *, declared_length: str = "",
                           allow_empty: bool = False) -> dict[str, Any] | None:
    """The body as a JSON object (None for an empty body when `allow_empty`); 413 past
    `max_bytes` (refused at once when the Content-Length header says so), 400 for a body
    that is not a JSON object."""
    return json_object(await read_body(receive, max_bytes, declared_length=declared_length), allow_empty=allow_empty)
