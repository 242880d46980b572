"""Catalog writes of a dock session, on each catalog backend."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from ingestd import records
from ingestd.policies.flags import DEDUP_KEY_MAX
from store.catalog import Catalog
from store.models import Flag, FlagKind, FlagStatus

NOW = datetime(2026, 5, 11, 0, 30, tzinfo=UTC)


def test_a_flag_key_longer_than_its_column_is_raised_once_and_kept_apart_from_its_neighbours(
    catalog: Catalog,
) -> None:
    # A camera path nested far deeper than the column is wide, in characters (PostgreSQL counts those).
    deep = "rejected:1:DCIM/" + "/".join(f"录像-{level:02d}" for level in range(80))
    keys = [deep + "/fifo.MP4", deep + "/fifo2.MP4"]  # same first 255 characters
    with catalog.transaction() as session:
        raised = [
            records.raise_flag(
                session, kind=FlagKind.FAILED_FILE, dedup_key=key, now=NOW, details={"file": key}
            )
            for key in keys
        ]
        again = records.raise_flag(
            session, kind=FlagKind.FAILED_FILE, dedup_key=keys[0], now=NOW, details={"file": keys[0]}
        )
    assert all(flag is not None for flag in raised)
    assert again is None
    with catalog.transaction() as session:
        flags = session.scalars(select(Flag).order_by(Flag.id)).all()
        assert [flag.details["file"] for flag in flags] == keys  # the whole path is kept in the details
        assert all(len(flag.dedup_key) == DEDUP_KEY_MAX for flag in flags)
        assert all(flag.dedup_key.startswith("rejected:1:DCIM/录像-00/") for flag in flags)


def test_a_long_key_a_sqlite_catalog_kept_whole_before_keys_were_bounded_still_dedups(
    sqlite_catalog: Catalog,
) -> None:
    key = "rejected:1:DCIM/" + "deep/" * 80 + "fifo.MP4"
    with sqlite_catalog.transaction() as session:
        session.add(
            Flag(kind=FlagKind.FAILED_FILE, status=FlagStatus.OPEN, dedup_key=key, raised_at=NOW, details={})
        )
    with sqlite_catalog.transaction() as session:
        assert (
            records.raise_flag(session, kind=FlagKind.FAILED_FILE, dedup_key=key, now=NOW, details={}) is None
        )
        assert session.scalars(select(Flag.dedup_key)).all() == [key]
