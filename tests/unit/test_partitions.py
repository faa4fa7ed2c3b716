"""Kafka's default partitioner: the vectors of Kafka's own `UtilsTest.testMurmur2`."""

from __future__ import annotations

import pytest

from sluice.kafka.partitions import murmur2, partition_for_key


@pytest.mark.parametrize(("data", "expected"), [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_equals_kafkas(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    assert partition_for_key(b"21", 6) == (-973932308 & 0x7FFFFFFF) % 6
    assert {partition_for_key(f"k{i}".encode(), 4) for i in range(100)} == {0, 1, 2, 3}
