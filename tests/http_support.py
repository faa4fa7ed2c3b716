"""One HTTP request from a test, answered as the server under test answers it."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


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


def wait_until_answers(url: str, proc: subprocess.Popen[bytes], name: str, log_path: Path,
                       timeout_s: float = 60, poll_s: float = 0.05) -> None:
    """Until GET `url` answers 200: a server's readiness. Fails naming `name` and its log if
    the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}; log {log_path}")
        try:
            if exchange(url, timeout_s=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(poll_s)
    raise AssertionError(f"{name} not ready within {timeout_s} s; log {log_path}")
