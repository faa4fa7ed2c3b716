"""Serve ids of the SDK: serve tokens (`sluice.core.serve_token`) whose unique parts never repeat."""

from __future__ import annotations

from sluice.client.sdk import ServeIds
from sluice.core.serve_token import format_serve_id, parse_serve_id


def test_unique_parts_are_distinct_across_generators_and_make_valid_tokens() -> None:
    ids = [gen() for gen in (ServeIds(), ServeIds()) for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    for unique in ids[::997]:
        assert parse_serve_id(format_serve_id(unique, 1_700_000_000_000, True, "arm-1")).unique == unique


def test_a_wrapped_counter_starts_a_new_head() -> None:
    gen = ServeIds()
    first = gen()
    gen._next = iter([2**32]).__next__  # the counter's next value overflows 32 bits
    wrapped = gen()
    assert wrapped[:16] != first[:16] and wrapped.endswith("00000001")


def test_a_token_is_the_serve_token_format_of_its_unique_part() -> None:
    gen = ServeIds()
    for serve_ms, inside, arm in [(1_700_000_000_000, True, "arm-1"), (0, False, "a"), (2**40, True, "m.v2_x-1")]:
        token = gen.token(serve_ms, inside, arm)
        parsed = parse_serve_id(token)
        assert token == format_serve_id(parsed.unique, serve_ms, inside, arm)
        assert (parsed.serve_ms, parsed.in_experiment, parsed.arm) == (serve_ms, inside, arm)
    gen._next = iter([2**32]).__next__  # a wrapped counter renews the head here too
    assert parse_serve_id(gen.token(1, True, "a")).unique.endswith("00000001")
