"""Query parameters that more than one route of the control API reads: moments in time and
bounded integers, each refused with a 400 that names the parameter and what it takes, as
openapi.yaml states it (`Moment`, `minimum`/`maximum`)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from services.asgi import BadRequest

# openapi.yaml's `Moment`: epoch milliseconds (14 digits reach the year 5138), or an ISO
# 8601 time with its timezone. A '+' in a query string is a space: write it %2B.
MOMENT = re.compile(r"^([0-9]{1,14}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                    r"(Z|[+-][0-9]{2}:[0-9]{2}))$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def moment_ms(name: str, text: str) -> int:
    """Query parameter `name` as epoch milliseconds: given as such, or as an ISO 8601 time
    with its timezone; 400 for anything else, and for a time that does not exist."""
    if MOMENT.fullmatch(text) is None:
        raise BadRequest(400, f"query parameter '{name}' must be epoch milliseconds or an ISO 8601 time with its "
                              f"timezone (2026-11-30T10:00:00Z; '+' written %2B), not {text!r}")
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(400, f"query parameter '{name}' is no time: {text!r} ({exc})") from None
    return (moment - _EPOCH) // timedelta(milliseconds=1)  # exact; a float timestamp may lose the last ms


def bounded_int(name: str, text: str, low: int, high: int) -> int:
    """Query parameter `name` as an integer from `low` to `high`, in decimal digits."""
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise BadRequest(400, f"query parameter '{name}' must be an integer from {low} to {high}, not {text!r}")
    return int(text)
