"""Which stored objects this process is reading now (a copy, an export, a viewing being prepared).

Eviction skips them. It is a courtesy, not the guarantee: an open file survives its unlink on Linux,
and a reader that finds the local copy gone after eviction reads the vault's copy instead
(`ingestd.stream_back`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterable, Iterator


class ObjectsInUse:
    """A thread-safe count of readers per BLAKE3."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: Counter[str] = Counter()

    @contextlib.contextmanager
    def reading(self, digests: Iterable[str]) -> Iterator[None]:
        held = list(digests)
        with self._lock:
            self._readers.update(held)
        try:
            yield
        finally:
            with self._lock:
                self._readers.subtract(held)
                self._readers = +self._readers  # drop the zero counts

    def __contains__(self, blake3: object) -> bool:
        with self._lock:
            return self._readers.get(str(blake3), 0) > 0
