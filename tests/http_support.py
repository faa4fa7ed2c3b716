"""One HTTP request from a test, answered as the server under test answers it."""

from __future__ import annotations

import urllib.error
import urllib.request


def exchange(url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None,
             timeout_s: float = 30) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers with lower-case names); an error status is an answer here, not
    an exception."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, answer.read(), {k.lower(): v for k, v in answer.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}
