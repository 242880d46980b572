"""Checking an exported evidence bag on its own, without the station's database or store.

This is what a court or the receiving party runs. Guarantees: every problem found is listed (the check
never stops at the first one); the payload is checked by the `bagit` library (RFC 8493: structure,
Payload-Oxum, manifests) and again here against both the SHA-256 and the BLAKE3 manifest; the tag
manifest must cover every signed tag file and match them; the Ed25519 signature over the tag manifest
must verify with the public key in the bag. That only proves the bag is consistent: anyone can re-sign
an edited bag with a key of their own. A bag is `valid` only when its key is also one of the trusted
station keys the checker was given (published by `ingestd key show`). Symlinks and paths leading out of
the bag are reported and never followed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import bagit
import blake3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ingestd.evidence import layout
from store.signing import SigningKeyError, key_id, keys_by_id, load_public_key, verify_signature

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class BagProblem:
    """kind: not-a-bag, bagit, unsafe-path, payload-missing, payload-unexpected, sha256-mismatch,
    blake3-mismatch, manifest, oxum, tag-manifest, public-key, signature, key-not-pinned."""

    kind: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


@dataclass
class BagReport:
    path: Path
    problems: list[BagProblem] = field(default_factory=list)
    payload_files: int = 0
    payload_bytes: int = 0
    key_id: str | None = None
    pinned_key_id: str | None = None  # the trusted station key the bag's key matched, if any
    info: dict[str, list[str]] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        """No problem found: the bag is whole and signed by the key it carries (whoever holds that)."""
        return not self.problems

    @property
    def signer_verified(self) -> bool:
        """The signature verifies with a trusted station key, not merely the key the bag carries."""
        return self.consistent and self.pinned_key_id is not None

    @property
    def valid(self) -> bool:
        return self.consistent and self.signer_verified

    def add(self, kind: str, subject: str, detail: str) -> None:
        self.problems.append(BagProblem(kind, subject, detail))

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "valid": self.valid,
            "consistent": self.consistent,
            "signer_verified": self.signer_verified,
            "payload_files": self.payload_files,
            "payload_bytes": self.payload_bytes,
            "key_id": self.key_id,
            "pinned_key_id": self.pinned_key_id,
            "info": self.info,
            "problems": [p.as_dict() for p in self.problems],
        }


@contextlib.contextmanager
def _quiet_bagit() -> Iterator[None]:
    # bagit logs each mismatch as a warning; they are returned as problems instead of printed twice.
    logger = logging.getLogger("bagit")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _bagit_problems(path: Path, report: BagReport) -> None:
    with _quiet_bagit():
        try:
            bag = bagit.Bag(str(path))
            bag.validate()
        except bagit.BagValidationError as error:
            details = getattr(error, "details", None) or []
            if not details:
                report.add("bagit", str(path), str(error) or type(error).__name__)
            for detail in details:
                report.add("bagit", str(getattr(detail, "path", path)), str(detail))
        except (bagit.BagError, OSError, UnicodeDecodeError, ValueError) as error:
            report.add("bagit", str(path), str(error) or type(error).__name__)


def _decode_name(text: str) -> str:
    # BagIt escapes CR and LF in manifest paths; nothing else.
    return re.sub("%0A", "\n", re.sub("%0D", "\r", text, flags=re.IGNORECASE), flags=re.IGNORECASE)


def _safe_relative(name: str) -> bool:
    pure = PurePosixPath(name)
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in name


def _inside(root: Path, relative: str) -> Path | None:
    """root/relative if no component of it is a symlink and it stays inside root; else None."""
    current = root
    for part in PurePosixPath(relative).parts:
        current = current / part
        try:
            if stat.S_ISLNK(current.lstat().st_mode):
                return None
        except FileNotFoundError:
            return current
    return current


def _read_manifest(path: Path, report: BagReport, name: str) -> dict[str, str] | None:
    """{relative path: hex digest} of a manifest file, each bad line reported."""
    target = _inside(path, name)
    if target is None:
        report.add("unsafe-path", name, "is a symlink")
        return None
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        report.add("manifest", name, "missing")
        return None
    except (OSError, UnicodeDecodeError) as error:
        report.add("manifest", name, f"unreadable: {error}")
        return None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or not _HEX64.match(parts[0]):
            report.add("manifest", f"{name}:{number}", f"not 'digest  path': {line[:200]!r}")
            continue
        relative = _decode_name(parts[1].lstrip("*"))
        if not _safe_relative(relative):
            report.add("unsafe-path", f"{name}:{number}", f"path {relative!r} leads outside the bag")
            continue
        if relative in entries and entries[relative] != parts[0].lower():
            report.add("manifest", f"{name}:{number}", f"{relative} listed twice with different digests")
        entries[relative] = parts[0].lower()
    return entries


def _payload_files(path: Path, report: BagReport) -> dict[str, Path]:
    data = path / layout.PAYLOAD_DIR
    found: dict[str, Path] = {}
    if data.is_symlink() or not data.is_dir():
        report.add("not-a-bag", layout.PAYLOAD_DIR, "payload directory missing or a symlink")
        return found
    for directory, dirnames, filenames in os.walk(data):
        for name in sorted(dirnames + filenames):
            full = Path(directory) / name
            relative = full.relative_to(path).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                report.add("unsafe-path", relative, "is a symlink; not followed")
                if name in dirnames:
                    dirnames.remove(name)
            elif stat.S_ISREG(mode):
                found[relative] = full
            elif not stat.S_ISDIR(mode):
                report.add("unsafe-path", relative, "is not a regular file")
    return found


def _digests(path: Path) -> tuple[str, str, int]:
    sha = hashlib.sha256()
    b3 = blake3.blake3()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            sha.update(chunk)
            b3.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), b3.hexdigest(), size


def _read_tags(path: Path) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if ":" in line and not line[:1].isspace():
            label, value = line.split(":", 1)
            tags.setdefault(label.strip(), []).append(value.strip())
    return tags


def _check_payload(path: Path, report: BagReport) -> None:
    files = _payload_files(path, report)
    sha_manifest = _read_manifest(path, report, layout.MANIFEST_SHA256)
    b3_manifest = _read_manifest(path, report, layout.MANIFEST_BLAKE3)
    manifests = ((layout.MANIFEST_SHA256, sha_manifest), (layout.MANIFEST_BLAKE3, b3_manifest))
    for manifest_name, manifest in manifests:
        if manifest is None:
            continue
        for relative in sorted(set(manifest) - set(files)):
            report.add("payload-missing", relative, f"listed in {manifest_name} but not in the bag")
        for relative in sorted(set(files) - set(manifest)):
            report.add("payload-unexpected", relative, f"in the bag but not listed in {manifest_name}")
    total = 0
    for relative, full in sorted(files.items()):
        try:
            sha, b3, size = _digests(full)
        except OSError as error:
            report.add("payload-missing", relative, f"unreadable: {error}")
            continue
        total += size
        if sha_manifest is not None and relative in sha_manifest and sha_manifest[relative] != sha:
            report.add(
                "sha256-mismatch", relative, f"SHA-256 is {sha}, manifest says {sha_manifest[relative]}"
            )
        if b3_manifest is not None and relative in b3_manifest and b3_manifest[relative] != b3:
            report.add("blake3-mismatch", relative, f"BLAKE3 is {b3}, manifest says {b3_manifest[relative]}")
    report.payload_files = len(files)
    report.payload_bytes = total
    oxum = report.info.get("Payload-Oxum", [None])[0]
    if oxum is None:
        report.add("oxum", layout.BAG_INFO, "no Payload-Oxum")
    elif oxum != f"{total}.{len(files)}":
        report.add("oxum", layout.BAG_INFO, f"Payload-Oxum {oxum}, the payload is {total}.{len(files)}")


def _check_tag_manifest(path: Path, report: BagReport) -> bytes | None:
    """Check the tag manifest against the tag files; its bytes, for the signature check."""
    entries = _read_manifest(path, report, layout.TAG_MANIFEST)
    if entries is None:
        return None
    for name in layout.SIGNED_TAG_FILES:
        if name not in entries:
            report.add(
                "tag-manifest", name, f"not listed in {layout.TAG_MANIFEST}, so not covered by the signature"
            )
    for relative, expected in sorted(entries.items()):
        target = _inside(path, relative)
        if target is None:
            report.add("unsafe-path", relative, "is a symlink; not followed")
            continue
        try:
            found = hashlib.sha256(target.read_bytes()).hexdigest()
        except OSError as error:
            report.add("tag-manifest", relative, f"listed but unreadable: {error.strerror or error}")
            continue
        if found != expected:
            report.add("tag-manifest", relative, f"SHA-256 is {found}, {layout.TAG_MANIFEST} says {expected}")
    return (path / layout.TAG_MANIFEST).read_bytes()


def _check_signature(
    path: Path, signed: bytes | None, trusted: dict[str, Ed25519PublicKey], report: BagReport
) -> None:
    bag_key: Ed25519PublicKey | None = None
    key_file = _inside(path, layout.PUBLIC_KEY)
    if key_file is None:
        report.add("unsafe-path", layout.PUBLIC_KEY, "is a symlink; not followed")
    else:
        try:
            bag_key = load_public_key(key_file)
            report.key_id = key_id(bag_key)
        except SigningKeyError as error:
            report.add("public-key", layout.PUBLIC_KEY, str(error))
    pinned: Ed25519PublicKey | None = None
    if trusted and report.key_id is not None:
        pinned = trusted.get(report.key_id)
        if pinned is None:
            report.add(
                "key-not-pinned",
                layout.PUBLIC_KEY,
                f"the bag's key {report.key_id} is not a trusted station key ({', '.join(sorted(trusted))})",
            )
        else:
            report.pinned_key_id = report.key_id
    signature_file = _inside(path, layout.SIGNATURE)
    if signature_file is None or not signature_file.is_file():
        report.add("signature", layout.SIGNATURE, "missing or a symlink")
        return
    try:
        fields = {label: values[0] for label, values in _read_tags(signature_file).items()}
    except (OSError, UnicodeDecodeError) as error:
        report.add("signature", layout.SIGNATURE, f"unreadable: {error}")
        return
    if fields.get("Signature-Algorithm") != "Ed25519":
        algorithm = fields.get("Signature-Algorithm")
        report.add("signature", layout.SIGNATURE, f"algorithm {algorithm!r}, expected Ed25519")
    if fields.get("Signed-File") != layout.TAG_MANIFEST:
        signs = fields.get("Signed-File")
        report.add("signature", layout.SIGNATURE, f"signs {signs!r}, expected {layout.TAG_MANIFEST}")
    if report.key_id is not None and fields.get("Key-Id") != report.key_id:
        report.add(
            "signature",
            layout.SIGNATURE,
            f"names key {fields.get('Key-Id')!r}, the bag's public key is {report.key_id}",
        )
    try:
        signature = base64.b64decode(fields.get("Signature", ""), validate=True)
    except (binascii.Error, ValueError):
        report.add("signature", layout.SIGNATURE, "the signature is not base64")
        return
    if signed is None:
        report.add("signature", layout.TAG_MANIFEST, "nothing to verify: the tag manifest is missing")
        return
    # A trusted key of the same id is the bag's key; check with the copy that came from the station.
    for which, key in [("trusted station", pinned)] if pinned is not None else [("bag", bag_key)]:
        if key is not None and not verify_signature(key, signature, signed):
            report.add(
                "signature",
                layout.TAG_MANIFEST,
                f"the signature does not verify with the {which} key {key_id(key)}: "
                "the tag manifest (or the signature) was changed",
            )


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_trusted_keys(path: Path) -> list[Ed25519PublicKey]:
    """The Ed25519 public keys (PEM) in the file at `path`: one station key, or several (other stations,
    or before and after a key change). Text outside the PEM blocks (a note of whose key it is) is ignored."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SigningKeyError(path=path, detail=f"cannot read: {error.strerror or error}") from None
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise SigningKeyError(path=path, detail="holds no PEM public key (BEGIN PUBLIC KEY)")
    keys = []
    for number, block in enumerate(blocks, 1):
        try:
            loaded = serialization.load_pem_public_key(block)
        except ValueError as error:
            raise SigningKeyError(path=path, detail=f"key {number}: {error}") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise SigningKeyError(
                path=path, detail=f"key {number} is not Ed25519 but {type(loaded).__name__}"
            )
        keys.append(loaded)
    return keys


def verify_bag(path: Path, *, trusted_keys: Collection[Ed25519PublicKey] = ()) -> BagReport:
    """Check the bag at `path`; it is `valid` only if signed with one of `trusted_keys`."""
    if path.is_symlink():
        report = BagReport(path=path)
        report.add("not-a-bag", str(path), "is a symlink; not followed")
        return report
    return verify_tree(path, trusted_keys=trusted_keys)


def verify_tree(root: Path, *, trusted_keys: Collection[Ed25519PublicKey] = ()) -> BagReport:
    """`verify_bag` of the directory `root` leads to, which may be a descriptor's magic link
    (/proc/self/fd/N): the daemon checks a bag it holds open, whatever its name now leads to."""
    path = root
    report = BagReport(path=path)
    if not path.is_dir() or not (path / layout.BAGIT_TXT).is_file():
        report.add("not-a-bag", str(path), f"not a directory holding {layout.BAGIT_TXT}")
        return report
    info_file = _inside(path, layout.BAG_INFO)
    if info_file is not None and info_file.is_file():
        try:
            report.info = _read_tags(info_file)
        except (OSError, UnicodeDecodeError) as error:
            report.add("bagit", layout.BAG_INFO, f"unreadable: {error}")
    else:
        report.add("bagit", layout.BAG_INFO, "missing")
    _bagit_problems(path, report)
    _check_payload(path, report)
    signed = _check_tag_manifest(path, report)
    _check_signature(path, signed, keys_by_id(trusted_keys), report)
    return report
