"""BLAKE3 and SHA-256 of one byte stream, the pair every stored object is known by.

Guarantees: both digests see the same bytes in the same order when fed through `update`; a caller that
hashes on two threads (the store's copy pipeline) may feed `blake3` and `sha256` separately instead.
"""

from __future__ import annotations

import hashlib

import blake3


class Digests:
    def __init__(self) -> None:
        self.blake3 = blake3.blake3()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self.blake3.update(data)
        self.sha256.update(data)
        self.size += len(data)

    def hex(self) -> tuple[str, str]:
        return str(self.blake3.hexdigest()), self.sha256.hexdigest()

    def matches(self, blake3_hex: str, sha256_hex: str, size: int) -> str | None:
        """None when the bytes fed through `update` are what was claimed, else what differs."""
        got = (*self.hex(), self.size)
        if got == (blake3_hex, sha256_hex, size):
            return None
        return (
            f"blake3 {got[0]}, sha256 {got[1]}, {got[2]} bytes; expected {blake3_hex}, {sha256_hex}, {size}"
        )
