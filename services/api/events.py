"""GET /v1/experiments/{experiment_id}/events: an experiment's serves, rewards or evaluation
dataset as CSV or parquet, a page at a time, streamed (`sluice.analytics.events`).

The query parameters are read and checked here, each refused with a 400 naming it; the
page's end and first block are read before anything is sent, so a failure up to then is a
JSON answer. The next page's token comes in `X-Next-Page-Token` and as the `Link` header's
`rel="next"` (the same request with `page_token` set), absent on the last page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlencode

from services.api.params import bounded_int, moment_ms
from services.asgi import BadRequest
from sluice.analytics.event_files import CONTENT_TYPES, EVENT_FORMATS, EventFormat, file_chunks
from sluice.analytics.events import (
    EVENT_KINDS,
    MAX_PAGE_ROWS,
    Cursor,
    CursorError,
    EventKind,
    EventQuery,
    read_page,
)

DEFAULT_PAGE_ROWS = 10_000
PARAMETERS = ("kind", "format", "entity", "since", "until", "limit", "page_token")


@dataclass(frozen=True)
class EventsRequest:
    """What a request asks for: which rows (`query`) in which file format."""

    query: EventQuery
    format: EventFormat


@dataclass(frozen=True)
class EventsAnswer:
    """The answer's content type, headers, and its body as chunks read on demand."""

    content_type: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: Iterator[bytes]


def events_request(experiment_id: str, query: dict[str, list[str]], value: Callable[[str], str | None]) -> EventsRequest:
    """The request's parameters (`value` gives one's single value), checked; 400 naming the
    first that is wrong."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise BadRequest(400, f"query parameter '{unknown[0]}' is not known here; known: {', '.join(PARAMETERS)}")
    kind = _choice("kind", value("kind"), EVENT_KINDS, "serves")
    fmt = _choice("format", value("format"), EVENT_FORMATS, "csv")
    since, until, limit, token = value("since"), value("until"), value("limit"), value("page_token")
    try:
        after = None if token is None else Cursor.from_token(token, cast(EventKind, kind))
    except CursorError as exc:
        raise BadRequest(400, f"query parameter 'page_token' {exc}") from None
    return EventsRequest(EventQuery(
        experiment_id, cast(EventKind, kind), DEFAULT_PAGE_ROWS if limit is None else
        bounded_int("limit", limit, 1, MAX_PAGE_ROWS), entity=value("entity"),
        since_ms=None if since is None else moment_ms("since", since),
        until_ms=None if until is None else moment_ms("until", until), after=after), cast(EventFormat, fmt))


def _choice(name: str, given: str | None, allowed: tuple[str, ...], default: str) -> str:
    """`given`, one of `allowed`; `default` when the parameter is left out (not when empty)."""
    if given is None:
        return default
    if given not in allowed:
        raise BadRequest(400, f"query parameter '{name}' must be one of {', '.join(allowed)}, not {given!r}")
    return given


def events_answer(client: object, database: str, request: EventsRequest,
                  query: dict[str, list[str]]) -> EventsAnswer:
    """Read the page's end and first block (raises `ClickHouseError`), and the answer that
    streams the rest; `query` is the request's query string, parsed, for the `Link` header."""
    page = read_page(client, database, request.query)
    q = request.query
    name = f"{q.experiment}-{q.kind}.{request.format}"
    headers = [(b"content-disposition", f'attachment; filename="{quote(name)}"'.encode())]
    if page.next is not None:
        token = page.next.token()
        following = {**{k: v[0] for k, v in query.items()}, "page_token": token}
        link = f"/v1/experiments/{quote(q.experiment, safe='')}/events?{urlencode(following)}"
        headers += [(b"x-next-page-token", token.encode()), (b"link", f'<{link}>; rel="next"'.encode())]
    return EventsAnswer(CONTENT_TYPES[request.format].encode(), headers,
                        file_chunks(request.format, page.source, page.blocks))
