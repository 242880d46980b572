"""The flags a dock raises, as decisions: one key per fact, the keys existing catalogs already hold."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingestd.policies import dock
from ingestd.policies.flags import DEDUP_KEY_MAX, FlagDecision
from store.kinds import FlagKind

NOW = datetime(2026, 5, 11, 9, 0, tzinfo=UTC)


def test_a_usb_serial_other_than_the_reported_one_is_one_flag_per_pair() -> None:
    assert (
        dock.serial_mismatch(
            device_serial="ZFY0001", usb_serial="ZFY0001", source="serial", camera_id=1, now=NOW
        )
        is None
    )
    assert (
        dock.serial_mismatch(device_serial="ZFY0001", usb_serial="", source="serial", camera_id=1, now=NOW)
        is None
    )
    flag = dock.serial_mismatch(
        device_serial="ZFY0001", usb_serial="ZFY9999", source="serial", camera_id=1, now=NOW
    )
    assert flag is not None
    assert (flag.kind, flag.dedup_key, flag.camera_serial) == (
        FlagKind.IDENTITY_MISMATCH,
        "identity:ZFY0001:ZFY9999",
        "ZFY0001",
    )
    assert flag.details == {"usb_serial": "ZFY9999", "device_serial": "ZFY0001", "source": "serial"}


def test_an_officer_described_otherwise_is_one_flag_per_distinct_claim() -> None:
    def claim(name: str) -> FlagDecision | None:
        return dock.officer_mismatch(
            device_serial="ZFY0001",
            officer_no="000123",
            source="serial",
            disagreement={"officer_name": ("张三", name)} if name else {},
            camera_id=1,
            now=NOW,
        )

    assert claim("") is None
    first, again, other = claim("李四"), claim("李四"), claim("王五")
    assert first is not None
    assert again is not None
    assert other is not None
    assert first.dedup_key == again.dedup_key == "officer:ZFY0001:000123:李四"
    assert other.dedup_key != first.dedup_key
    assert first.details["officer_name_registered"] == "张三"
    assert first.details["officer_name_reported"] == "李四"


def test_file_flags_keep_their_keys_and_may_be_longer_than_the_column() -> None:
    deep = "DCIM/" + "deep/" * 80 + "fifo.MP4"
    rejected = dock.rejected_file(camera_serial="ZFY0001", camera_id=7, path=deep, reason="fifo", now=NOW)
    assert rejected.dedup_key == f"rejected:7:{deep}"
    assert len(rejected.dedup_key) > DEDUP_KEY_MAX  # the flag service stores the bounded form
    failed = dock.failed_file(
        camera_serial="ZFY0001", camera_id=7, dock_session_id=3, file="A.MP4", reason="read error", now=NOW
    )
    assert (failed.kind, failed.dedup_key, failed.details) == (
        FlagKind.FAILED_FILE,
        "failed:3:A.MP4",
        {"file": "A.MP4", "reason": "read error"},
    )
    full = dock.store_full(
        camera_serial=None, camera_id=None, dock_session_id=3, error="no space", free_bytes=0, now=NOW
    )
    assert full.dedup_key == "store-full:3"


def test_a_key_must_start_with_its_kind_or_its_kinds_older_prefix() -> None:
    with pytest.raises(ValueError, match="malformed"):
        FlagDecision(FlagKind.FAILED_FILE, "late:r1", NOW)
    with pytest.raises(ValueError, match="malformed"):
        FlagDecision(FlagKind.LATE, "rejected:1:x", NOW)
