"""The store's error root. Each error formats a message template from keyword facts and has an exit code.

`IntegrityError` is the project's one integrity root: every error that says evidence is not what was
recorded (here, in the vault adapter, and in `ingestd`'s export, copy and view) derives from it and exits
with its code. It must never be caught by a broad handler: callers catch `StoreError` only where they
also re-raise `IntegrityError`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StoreError(Exception):
    """Root of every error raised by `store/`."""

    template: ClassVar[str] = "{detail}"
    exit_code: ClassVar[int] = 30
    wire_code: ClassVar[str] = "store"

    def __init__(self, **facts: Any) -> None:
        self.facts = facts
        # Exception's own __init__, not super(): an integrity error raised by ingestd/ is both an
        # IngestdError and an IntegrityError, and the two roots' constructors take only facts.
        Exception.__init__(self, self.template.format(**facts))


class IntegrityError(StoreError):
    """Root of every integrity error: evidence does not match what was recorded. One exit code for all
    of them; subclasses keep their own message templates. Never swallowed."""

    template = "integrity: {detail}"
    exit_code = 3
    wire_code = "integrity"


class DiskFullError(StoreError):
    """The store's filesystem ran out of space or quota. The partial copy is gone; objects are intact."""

    template = (
        "object store {root} is full ({reason}): {free_bytes} bytes free after writing {written} bytes; "
        "the partial copy was removed and every stored object is untouched"
    )
    exit_code = 37
    wire_code = "disk-full"


class ObjectMissing(StoreError):  # noqa: N818 - the name callers were given for this fact
    """No object is stored under the given BLAKE3."""

    template = "object {blake3} is not in the store (expected at {path})"
    exit_code = 38
    wire_code = "object-missing"


class ResumeMismatch(StoreError):  # noqa: N818 - the name callers were given for this fact
    """A resumed source is shorter than what was already stored for its key: it is not the same source."""

    template = (
        "cannot resume {key!r}: the source has {source_size} bytes but {durable} were already stored; "
        "the partial copy was discarded"
    )
    exit_code = 39
    wire_code = "resume-mismatch"


class SourceSizeError(StoreError):
    """The source produced a different number of bytes than the caller announced; nothing was stored."""

    template = "source {key!r} produced {actual} bytes but {expected} were expected; nothing was stored"
    exit_code = 34
    wire_code = "source-size"


class ResumeBusyError(StoreError):
    """Another put holds the partial copy of the same resume key."""

    template = "resume key {key!r} is being written by another put"
    exit_code = 35
    wire_code = "resume-busy"


class StoreNotSetUpError(StoreError):
    wire_code = "store-not-set-up"
    """The object store's directories are missing: the station was never set up there, or the filesystem
    that holds it is not mounted. Opening a store creates nothing; only set-up does."""

    template = "object store {root} is not set up: {missing} does not exist (is its filesystem mounted?)"
    exit_code = 44


class InvalidDigestError(StoreError, ValueError):
    """A digest that is not 64 lowercase hex characters: refused before it can become a path."""

    template = "not a BLAKE3 hex digest: {value!r}"
    exit_code = 36
    wire_code = "invalid-digest"


class ReadBackMismatchError(IntegrityError):
    """What was read back from disk after fsync differs from what was written."""

    template = (
        "integrity: object {blake3} (sha256 {sha256}, {size} bytes) read back from disk as blake3 "
        "{read_blake3}, {read_size} bytes; the copy was quarantined at {quarantine}"
    )
    wire_code = "read-back-mismatch"


class ExistingObjectCorruptError(IntegrityError):
    """An object already stored under a BLAKE3 does not hold the content that BLAKE3 names."""

    template = (
        "integrity: stored object {path} does not match new content with the same BLAKE3 ({detail}); "
        "it was left untouched for investigation"
    )
    wire_code = "existing-object-corrupt"
