"""Write-once, content-addressed evidence storage.

`interface` holds the contract every adapter keeps and its value types; `pipeline` the single-pass copy
and the resume check; `files` the filesystem adapter; `memory` the in-memory adapter for callers' tests;
`sealing` the inode-flag ioctls. The names callers use are re-exported here.
"""

from store.objects.files import FileObjectStore
from store.objects.interface import (
    ExpectedObject,
    KeepKeys,
    MiB,
    ObjectProblem,
    ObjectStore,
    PartialCopy,
    ProblemKind,
    PutResult,
    Reconciled,
    ScrubProgress,
    Seal,
    check_digest,
    object_relpath,
)
from store.objects.memory import MemoryObjectStore
from store.objects.sealing import is_immutable

__all__ = [
    "ExpectedObject",
    "FileObjectStore",
    "KeepKeys",
    "MemoryObjectStore",
    "MiB",
    "ObjectProblem",
    "ObjectStore",
    "PartialCopy",
    "ProblemKind",
    "PutResult",
    "Reconciled",
    "ScrubProgress",
    "Seal",
    "check_digest",
    "is_immutable",
    "object_relpath",
]
