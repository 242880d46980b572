"""The copy buffers of all docks copying at once fit `store.copy_memory_mib`."""

from __future__ import annotations

from pathlib import Path

from ingestd.config import load_config
from ingestd.services import open_store
from store.objects.pipeline import DIRECT_ALIGNMENT, MIN_CHUNK, RingPool, chunk_within

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def ring_bytes(chunk: int) -> int:
    with RingPool(chunk).borrowed() as ring:
        return sum(len(buffer) for buffer in ring)


def test_few_docks_get_the_configured_buffer() -> None:
    assert chunk_within(128 * MiB, 4, 4 * MiB) == 4 * MiB


def test_twenty_five_docks_share_the_memory_in_aligned_buffers() -> None:
    rings = 25 * 2  # each dock's copy and the read-back that trails it
    chunk = chunk_within(128 * MiB, rings, 4 * MiB)
    assert chunk % DIRECT_ALIGNMENT == 0
    assert chunk < 4 * MiB
    assert rings * ring_bytes(chunk) <= 128 * MiB


def test_buffers_never_shrink_below_the_floor() -> None:
    assert chunk_within(4 * MiB, 1000, 4 * MiB) == MIN_CHUNK


def test_the_station_budgets_a_ring_for_each_copy_and_its_trailing_read_back() -> None:
    config = load_config(REPO / "config.example.toml")
    config = config.model_copy(update={"ingest": config.ingest.model_copy(update={"max_concurrent": 25})})
    store = open_store(config)
    assert 25 * 2 * ring_bytes(store.chunk_size) <= config.store.copy_memory_mib * MiB


def test_a_spare_ring_is_only_lent_within_the_budget_and_a_copy_always_gets_one() -> None:
    pool = RingPool(MIN_CHUNK, budget=2)
    with pool.borrowed(), pool.spare() as second:
        assert second is not None
        with pool.spare() as third, pool.borrowed() as copy:
            assert third is None
            assert len(copy) > 0
    with pool.spare() as again:
        assert again is not None
