"""The copy pipeline's threads: a hash that fails on its own thread ends the pump with its error."""

from __future__ import annotations

import hashlib
import io
import threading
from typing import TYPE_CHECKING, cast

import pytest
from blake3 import blake3

from store.digests import Digests
from store.objects.pipeline import RingPool, pump, source_reader

if TYPE_CHECKING:
    from hashlib import _Hash

CHUNK = 4096
RING = 4  # buffers: a copy of more chunks than this needs them back from every stage


class HashFailedError(Exception):
    pass


class FailsAfter:
    """A hash whose `update` fails once it has been given more than `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def update(self, data: memoryview) -> None:
        self.seen += len(data)
        if self.seen > self.limit:
            raise HashFailedError(f"hash failed after {self.seen} bytes")


def pump_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("store-hash", "store-reader")]


@pytest.mark.parametrize("chunks", [RING, 16 * RING], ids=["ends-before-the-error", "needs-the-buffers"])
@pytest.mark.parametrize(
    ("failing", "with_sink"),
    [("sha256", True), ("blake3", True), ("sha256", False)],
    ids=["sha256-beside-the-write", "blake3-beside-the-write", "sha256-beside-blake3"],
)
def test_a_hash_failing_on_its_thread_ends_the_pump_with_its_error(
    failing: str, with_sink: bool, chunks: int
) -> None:
    # Short, the source reaches its end before the hash fails: the pump must not return a size whose
    # digest missed bytes. Long, the failed stage never gives its buffers back: it must not wedge.
    data = bytes(range(256)) * (chunks * CHUNK // 256)
    pool = RingPool(CHUNK)
    digests = Digests()
    if failing == "sha256":
        digests.sha256 = cast("_Hash", FailsAfter(2 * CHUNK))
    else:
        digests.blake3 = cast("blake3", FailsAfter(2 * CHUNK))
    written: list[bytes] = []
    outcome: list[BaseException | int] = []

    def run() -> None:
        with pool.borrowed() as ring, source_reader(io.BytesIO(data)) as fill:
            sink = (lambda view: written.append(bytes(view))) if with_sink else None
            try:
                outcome.append(pump(ring, fill, sink, digests))
            except HashFailedError as error:
                outcome.append(error)

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    caller.join(60)  # a guard so a wedged pump fails the test instead of hanging it
    assert not caller.is_alive(), "the pump never returned: the failed hash wedged it"
    (raised,) = outcome
    assert isinstance(raised, HashFailedError)
    assert pump_threads() == []  # its reader and hashers are gone
    # The ring goes back to the pool whole: the next copy through it hashes right.
    healthy = Digests()
    with pool.borrowed() as ring, source_reader(io.BytesIO(data)) as fill:
        assert pump(ring, fill, lambda view: None, healthy) == len(data)
    assert healthy.hex() == (blake3(data).hexdigest(), hashlib.sha256(data).hexdigest())
