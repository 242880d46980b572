"""Writing an evidence bag (BagIt, RFC 8493) from stored objects, signed with the station's key.

Guarantees: each payload file is copied from the store and hashed (SHA-256 and BLAKE3) in the same pass;
any difference from the catalog's size or digests raises ExportIntegrityError before anything is
signed. Every file is fsynced, then its directory. The manifests carry the catalog's digests, which the
copy has just proven. The caller provides an empty directory, as an open descriptor: every file and
folder is created relative to it, never through a symlink, so what its path leads to does not matter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

import blake3
from cryptography.hazmat.primitives import serialization

from ingestd.evidence import layout
from ingestd.evidence.errors import ExportIntegrityError
from store.signing import Signer

MiB = 1024 * 1024
AGENT = "ingestd evidence export (BagIt 1.0, RFC 8493)"


@dataclass(frozen=True)
class PayloadItem:
    """One recording to put in the bag: where its bytes are, what the catalog says they are."""

    name: str  # file name under data/, from naming.payload_name
    recording_id: int
    blake3: str
    sha256: str
    size: int
    facts: dict[str, Any] = field(default_factory=dict)  # JSON-safe, for recordings.json


@dataclass(frozen=True)
class BagResult:
    payload_bytes: int
    payload_files: int
    tag_manifest_sha256: str
    tag_manifest_blake3: str
    key_id: str


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create(directory: int, name: str, mode: int) -> BinaryIO:
    """The new file `name` in the directory open as `directory`, with exactly `mode` (not narrowed by
    the umask); never an existing file, never through a symlink."""
    out = os.fdopen(os.open(name, _NEW_FILE, mode, dir_fd=directory), "wb")
    os.fchmod(out.fileno(), mode)
    return out


def write_new(directory: int, name: str, data: bytes, mode: int) -> None:
    """Write `data` durably to the new file `name` in the directory open as `directory`."""
    with _create(directory, name, mode) as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def copy_proving(source: BinaryIO, directory: int, item: PayloadItem, mode: int, chunk_size: int) -> None:
    """Write `source` to the new file `item.name` in the directory open as `directory`, hashing as it goes:
    what leaves the station is proven to be what the catalog recorded (ExportIntegrityError otherwise;
    the caller removes the partial tree)."""
    sha = hashlib.sha256()
    b3 = blake3.blake3()
    size = 0
    with _create(directory, item.name, mode) as out:
        while chunk := source.read(chunk_size):
            sha.update(chunk)
            b3.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    problems = []
    if size != item.size:
        problems.append(f"{size} bytes, catalog says {item.size}")
    if (found := b3.hexdigest()) != item.blake3:
        problems.append(f"BLAKE3 {found}")
    if (found := sha.hexdigest()) != item.sha256:
        problems.append(f"SHA-256 {found}, catalog says {item.sha256}")
    if problems:
        raise ExportIntegrityError(
            blake3=item.blake3, recording=item.recording_id, detail="; ".join(problems)
        )


def tag_file_text(fields: Sequence[tuple[str, str]]) -> str:
    """`Label: value` lines; line breaks inside a value become spaces (a value is one line)."""
    lines = []
    for label, value in fields:
        if not label or ":" in label or label != label.strip():
            raise ValueError(f"bad tag label {label!r}")
        flat = " ".join(str(value).split())
        lines.append(f"{label}: {flat}\n")
    return "".join(lines)


def write_bag(
    target: int,
    items: Sequence[PayloadItem],
    bag_info: Sequence[tuple[str, str]],
    signer: Signer,
    open_object: Callable[[str], BinaryIO],
    *,
    now: datetime,
    file_mode: int = 0o640,
    dir_mode: int = 0o750,
    chunk_size: int = 4 * MiB,
) -> BagResult:
    """Fill the empty directory open as `target` with a complete, signed bag of `items`."""
    names = [item.name for item in items]
    if len(set(names)) != len(names) or len({n.casefold() for n in names}) != len(names):
        raise ValueError("payload names must be unique (also ignoring case)")
    os.mkdir(layout.PAYLOAD_DIR, dir_mode, dir_fd=target)
    data = os.open(
        layout.PAYLOAD_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=target
    )
    ordered = sorted(items, key=lambda i: i.name)
    try:
        os.fchmod(data, dir_mode)
        for item in ordered:
            with open_object(item.blake3) as source:
                copy_proving(source, data, item, file_mode, chunk_size)
        os.fsync(data)
    finally:
        os.close(data)

    total = sum(item.size for item in ordered)
    manifest_sha = "".join(f"{i.sha256}  {layout.PAYLOAD_DIR}/{i.name}\n" for i in ordered)
    manifest_b3 = "".join(f"{i.blake3}  {layout.PAYLOAD_DIR}/{i.name}\n" for i in ordered)
    recordings = [
        {
            "file": f"{layout.PAYLOAD_DIR}/{i.name}",
            "recording_id": i.recording_id,
            "size": i.size,
            "sha256": i.sha256,
            "blake3": i.blake3,
            **i.facts,
        }
        for i in ordered
    ]
    pem = signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = [
        ("Bagging-Date", now.date().isoformat()),
        ("Bag-Software-Agent", AGENT),
        ("Payload-Oxum", f"{total}.{len(ordered)}"),
        *bag_info,
        ("Signing-Key-Id", signer.key_id),
    ]
    tag_files: dict[str, bytes] = {
        layout.BAGIT_TXT: (
            f"BagIt-Version: {layout.BAGIT_VERSION}\nTag-File-Character-Encoding: UTF-8\n"
        ).encode(),
        layout.BAG_INFO: tag_file_text(info).encode("utf-8"),
        layout.MANIFEST_SHA256: manifest_sha.encode("utf-8"),
        layout.MANIFEST_BLAKE3: manifest_b3.encode("utf-8"),
        layout.RECORDINGS_JSON: (
            json.dumps(recordings, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        ).encode("utf-8"),
        layout.PUBLIC_KEY: pem,
    }
    for name, content in tag_files.items():
        write_new(target, name, content, file_mode)
    tag_manifest = "".join(
        f"{hashlib.sha256(tag_files[name]).hexdigest()}  {name}\n" for name in sorted(tag_files)
    ).encode("utf-8")
    write_new(target, layout.TAG_MANIFEST, tag_manifest, file_mode)
    signature = signer.sign(tag_manifest)
    tag_manifest_sha = hashlib.sha256(tag_manifest).hexdigest()
    write_new(
        target,
        layout.SIGNATURE,
        tag_file_text(
            [
                ("Signature-Algorithm", "Ed25519"),
                ("Signed-File", layout.TAG_MANIFEST),
                ("Signed-File-SHA256", tag_manifest_sha),
                ("Key-Id", signer.key_id),
                ("Public-Key-File", layout.PUBLIC_KEY),
                ("Signature", base64.b64encode(signature).decode("ascii")),
            ]
        ).encode("utf-8"),
        file_mode,
    )
    os.fsync(target)
    return BagResult(
        payload_bytes=total,
        payload_files=len(ordered),
        tag_manifest_sha256=tag_manifest_sha,
        tag_manifest_blake3=blake3.blake3(tag_manifest).hexdigest(),
        key_id=signer.key_id,
    )
