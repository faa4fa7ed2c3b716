"""Serve tokens: the serve id format every SDK writes and the worker reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.core.serve_token import ServeToken, ServeTokenError, format_serve_id, parse_serve_id

# Vectors for other languages: (serve id, unique, serve ms, in experiment, arm).
VECTORS = [
    ("1.5f0c2a9e8b7d6c5a00000001.18bcfe56800.1.transformer-v1", "5f0c2a9e8b7d6c5a00000001", 1_700_000_000_000, True,
     "transformer-v1"),
    ("1.000000000000000000000000.0.0.a", "000000000000000000000000", 0, False, "a"),
    ("1.ffffffffffffffffffffffff.ffffffffffff.1.gbdt.v12_b", "ffffffffffffffffffffffff", 2**48 - 1, True, "gbdt.v12_b"),
]


@pytest.mark.parametrize(("text", "unique", "serve_ms", "inside", "arm"), VECTORS)
def test_vectors_parse_and_format_both_ways(text: str, unique: str, serve_ms: int, inside: bool, arm: str) -> None:
    token = parse_serve_id(text)
    assert token == ServeToken(unique, serve_ms, inside, arm)
    assert str(token) == format_serve_id(unique, serve_ms, inside, arm) == text
    assert token.hour == serve_ms // 3_600_000


arms = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}\Z")


@given(unique=st.from_regex(r"\A[0-9a-f]{24}\Z"), serve_ms=st.integers(0, 2**48 - 1), inside=st.booleans(), arm=arms)
def test_every_token_reads_back_as_written(unique: str, serve_ms: int, inside: bool, arm: str) -> None:
    assert parse_serve_id(format_serve_id(unique, serve_ms, inside, arm)) == ServeToken(unique, serve_ms, inside, arm)


@pytest.mark.parametrize(("text", "says"), [
    ("3f2504e0-4f89-41d3-9a0c-0305e82c3301", "not a Sluice serve token"),  # a UUID
    ("2.5f0c2a9e8b7d6c5a00000001.18bcfe56800.1.a", "not a Sluice serve token"),  # another version
    ("1.5f0c2a9e8b7d6c5a0000001.18bcfe56800.1.a", "unique part"),  # 23 digits
    ("1.5F0C2A9E8B7D6C5A00000001.18bcfe56800.1.a", "unique part"),  # upper case
    ("1.5f0c2a9e8b7d6c5a00000001.-1.1.a", "time"),
    ("1.5f0c2a9e8b7d6c5a00000001.18bcfe56800.2.a", "flag"),
    ("1.5f0c2a9e8b7d6c5a00000001.18bcfe56800.1.", "arm"),
    ("1.5f0c2a9e8b7d6c5a00000001.18bcfe56800.1.-a", "arm"),
    ("", "not a Sluice serve token"),
])
def test_malformed_ids_are_refused_naming_the_part(text: str, says: str) -> None:
    with pytest.raises(ServeTokenError, match=says):
        parse_serve_id(text)
