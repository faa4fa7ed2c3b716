"""The web console's files (`services/api/console/`), served by the control API without a
token: they hold no data. The console's script calls the JSON routes with the token typed
at login, so every authorisation stays with those routes."""

from __future__ import annotations

import re
from pathlib import Path

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
# A file's name, one path segment: no "..", no hidden files, only the types the console has.
_FILE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|js|css|svg)$")
_CONTENT_TYPES = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
                  "css": b"text/css; charset=utf-8", "svg": b"image/svg+xml"}
# The token sits in the page's sessionStorage: only the console's own files may run or load
# there, and no other site may frame it.
HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
           (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-cache")]


class ConsoleFileNotFound(Exception):
    """`name` is not one of the console's files; the message says so."""


def console_file(name: str) -> tuple[bytes, bytes]:
    """The console file `name` (e.g. "console.js") and its content type."""
    found = _FILE_NAME.match(name)
    path = CONSOLE_DIR / name
    if found is None or not path.is_file():
        raise ConsoleFileNotFound(f"/console/{name} is not a file of the console; it starts at /console/")
    return path.read_bytes(), _CONTENT_TYPES[found.group(1)]
