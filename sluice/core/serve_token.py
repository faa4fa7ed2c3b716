"""Serve ids that carry what attribution needs: the serve's time, arm and whether it was in
the experiment.

A reward references its serve by the serve id the SDK or sidecar returned. When that id
itself says which arm was served, when, and whether the unit was in the experiment, the
stream worker can attribute the reward without having kept anything about the serve: it
needs no state per serve, only per *rewarded* serve (to count a binary reward once and to
sum a continuous one). That is what keeps the worker's memory and messages independent of
traffic (see README, "State").

Format (version 1), ASCII, at most 174 characters:

    1.<unique>.<serve time>.<in experiment>.<arm>

- `unique`: 24 lowercase hex digits (96 bits), distinct for every serve a process makes;
- `serve time`: the serve's event time in epoch milliseconds, lowercase hex, no leading zeros;
- `in experiment`: `1` or `0`;
- `arm`: the arm's name as the spec gives it (`[A-Za-z0-9][A-Za-z0-9_.-]*`, ≤ 128
  characters). It comes last, so the dots a name may hold do not matter.

e.g. `1.5f0c2a9e8b7d6c5a00000001.18bcfe56800.1.transformer-v1`. Other languages build and
read it with the same five fields; `tests/unit/test_serve_token.py` holds vectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sluice.core.errors import CoreInputError

VERSION = "1"
UNIQUE_HEX = 24
_UNIQUE = re.compile(r"^[0-9a-f]{24}$")
_TIME = re.compile(r"^[0-9a-f]{1,12}$")
_ARM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
HOUR_MS = 3_600_000


class ServeTokenError(CoreInputError):
    """A serve id that is not a Sluice serve token; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class ServeToken:
    """The facts a serve id carries."""

    unique: str  # 24 hex digits
    serve_ms: int  # event time of the serve, epoch ms
    in_experiment: bool
    arm: str

    @property
    def hour(self) -> int:
        """Event-time hour of the serve (epoch ms // 3,600,000): the hour its statistics are in."""
        return self.serve_ms // HOUR_MS

    def __str__(self) -> str:
        return format_serve_id(self.unique, self.serve_ms, self.in_experiment, self.arm)


def format_serve_id(unique: str, serve_ms: int, in_experiment: bool, arm: str) -> str:
    """The serve id of a serve (no validation: the hot path of `assign`; `parse_serve_id`
    checks what it reads)."""
    return f"1.{unique}.{serve_ms:x}.{1 if in_experiment else 0}.{arm}"


def parse_serve_id(text: str) -> ServeToken:
    """Read a serve id; raises `ServeTokenError` naming the part that is wrong."""
    if not isinstance(text, str):
        raise ServeTokenError(f"serve id must be a string, but {type(text).__name__} is given")
    parts = text.split(".", 4)
    if len(parts) != 5 or parts[0] != VERSION:
        raise ServeTokenError(f"serve id {text[:200]!r} is not a Sluice serve token "
                              f"('1.<unique>.<time>.<0|1>.<arm>'); pass back the serve_id that assign returned")
    _, unique, time_hex, flag, arm = parts
    if not _UNIQUE.fullmatch(unique):
        raise ServeTokenError(f"serve id {text[:200]!r}: unique part {unique[:40]!r} is not {UNIQUE_HEX} lowercase hex digits")
    if not _TIME.fullmatch(time_hex):
        raise ServeTokenError(f"serve id {text[:200]!r}: time {time_hex[:40]!r} is not epoch milliseconds in lowercase hex")
    if flag not in ("0", "1"):
        raise ServeTokenError(f"serve id {text[:200]!r}: in-experiment flag {flag[:40]!r} is not 0 or 1")
    if not _ARM.fullmatch(arm):
        raise ServeTokenError(f"serve id {text[:200]!r}: arm {arm[:140]!r} is not an arm name")
    return ServeToken(unique, int(time_hex, 16), flag == "1", arm)
