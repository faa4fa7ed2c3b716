"""Serve ids of the SDK: valid version-4 UUID strings, never repeated."""

from __future__ import annotations

import uuid

from sluice.client.sdk import ServeIds


def test_serve_ids_are_distinct_v4_uuids_across_generators() -> None:
    ids = [gen() for gen in (ServeIds(), ServeIds()) for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[::997]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
