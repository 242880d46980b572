"""The copy buffers of all docks copying at once fit `store.copy_memory_mib`."""

from __future__ import annotations

import contextlib
import gc
import weakref

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


def test_a_burst_beyond_the_kept_rings_gives_its_buffers_back() -> None:
    """Slow docks that gave their slot back go on copying, so more rings than docks copying at once may
    be out; once the burst ends, only `keep_idle` stay mapped, and the next put reuses one of them."""
    pool = RingPool(MIN_CHUNK, keep_idle=2)
    with contextlib.ExitStack() as burst:
        rings = [burst.enter_context(pool.borrowed()) for _ in range(5)]
        mapped = [weakref.ref(buffer.obj) for ring in rings for buffer in ring]
        del rings
    gc.collect()
    alive = [ref() for ref in mapped if ref() is not None]
    assert len(alive) == 2 * len(mapped) // 5
    with pool.borrowed() as reused:
        assert {id(buffer.obj) for buffer in reused} <= {id(buffer) for buffer in alive}
