"""The copy buffers of all docks copying at once fit `store.copy_memory_mib`."""

from __future__ import annotations

from store.objects.pipeline import DIRECT_ALIGNMENT, MIN_CHUNK, RingPool, chunk_within

MiB = 1024 * 1024


def ring_bytes(chunk: int) -> int:
    with RingPool(chunk).borrowed() as ring:
        return sum(len(buffer) for buffer in ring)


def test_few_docks_get_the_configured_buffer() -> None:
    assert chunk_within(128 * MiB, 4, 4 * MiB) == 4 * MiB


def test_twenty_five_docks_share_the_memory_in_aligned_buffers() -> None:
    chunk = chunk_within(128 * MiB, 25, 4 * MiB)
    assert chunk % DIRECT_ALIGNMENT == 0
    assert chunk < 4 * MiB
    assert 25 * ring_bytes(chunk) <= 128 * MiB


def test_buffers_never_shrink_below_the_floor() -> None:
    assert chunk_within(4 * MiB, 1000, 4 * MiB) == MIN_CHUNK
