"""The spill file keeps undelivered records across crashes, in order, within its bound."""

from __future__ import annotations

from pathlib import Path

from sluice.client.spill import SpillFile


def test_records_come_back_in_order_and_delivered_ones_do_not(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "s.spill", max_bytes=1 << 20)
    for i in range(10):
        assert spill.append("serves", None if i == 3 else f"k{i}".encode(), f"v{i}".encode())
    first = list(spill.pending(limit=4))
    assert [(r.key, r.value) for r in first] == [(b"k0", b"v0"), (b"k1", b"v1"), (b"k2", b"v2"), (None, b"v3")]
    spill.mark_delivered(first[-1].end_offset)
    spill.close()

    reopened = SpillFile(tmp_path / "s.spill", max_bytes=1 << 20)  # as after a restart
    rest = list(reopened.pending())
    assert [r.value for r in rest] == [f"v{i}".encode() for i in range(4, 10)]
    reopened.mark_delivered(rest[-1].end_offset)
    assert reopened.pending_bytes() == 0 and (tmp_path / "s.spill").stat().st_size == 0


def test_a_torn_last_record_is_cut_off_on_open(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "s.spill", max_bytes=1 << 20)
    spill.append("serves", b"k", b"complete")
    spill.append("serves", b"k", b"torn")
    spill.close()
    path = tmp_path / "s.spill"
    path.write_bytes(path.read_bytes()[:-2])  # a crash in the middle of the second append
    assert [r.value for r in SpillFile(path, max_bytes=1 << 20).pending()] == [b"complete"]


def test_the_bound_refuses_records_instead_of_growing(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "s.spill", max_bytes=100)
    accepted = sum(spill.append("serves", b"key", b"x" * 20) for _ in range(10))
    assert 0 < accepted < 10
    assert spill.pending_bytes() <= 100
