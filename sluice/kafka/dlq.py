"""The dead-letter topic's message format, shared by every processor that rejects input.

A dead letter carries the original key and bytes unchanged, and headers that say why and
where from, so a person (or a replay tool) can find and fix the source.
"""

from __future__ import annotations

REASON = "sluice.reason"
SOURCE_TOPIC = "sluice.source.topic"
SOURCE_PARTITION = "sluice.source.partition"
SOURCE_OFFSET = "sluice.source.offset"
REJECTED_BY = "sluice.rejected.by"


def dead_letter_headers(reason: str, topic: str, partition: int, offset: int, rejected_by: str) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: the reason (one line, whole) and the source coordinates."""
    return [
        (REASON, reason.encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (REJECTED_BY, rejected_by.encode()),
    ]


def read_headers(headers: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode() for k, v in (headers or ())}
