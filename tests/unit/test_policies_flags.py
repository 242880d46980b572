"""Flag deduplication keys: bounded to the catalog column without two facts sharing a key."""

from __future__ import annotations

from ingestd.policies.flags import DEDUP_KEY_MAX, bounded_dedup_key


def test_a_key_shorter_than_the_column_is_kept_as_it_is() -> None:
    key = "late:r" + "9" * (DEDUP_KEY_MAX - 7)
    assert len(key) == DEDUP_KEY_MAX - 1
    assert bounded_dedup_key(key) == key


def test_a_long_key_is_bounded_deterministically_and_keeps_a_readable_prefix() -> None:
    key = "rejected:7:" + "a/" * 400
    bounded = bounded_dedup_key(key)
    assert len(bounded) == DEDUP_KEY_MAX
    assert bounded.startswith("rejected:7:a/a/")
    assert bounded_dedup_key(key) == bounded
    assert bounded_dedup_key(key + "b") != bounded


def test_no_short_key_equals_a_long_keys_bounded_form() -> None:
    """A volume that names a file after another path's bounded key still gets its own flag."""
    long_key = "rejected:7:" + "x" * 300
    forged = bounded_dedup_key(long_key)
    assert bounded_dedup_key(forged) != forged  # exactly DEDUP_KEY_MAX long: itself hashed, so distinct
    at_limit = "f" * DEDUP_KEY_MAX
    assert bounded_dedup_key(at_limit) != at_limit
