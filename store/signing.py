"""The Ed25519 key that signs audit checkpoints.

Guarantees: the private key file is created 0600 and appears under its final name only once complete
(so a crash or a second starter never sees half a key); a key file that group or others could read, or
that another user owns (and so could have replaced), is refused rather than used; a missing key is
created only when the caller says no history depends on it; the public key is published beside it for
verifiers.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from store.durable import write_durably
from store.errors import StoreError

PRIVATE_KEY_NAME = "audit-signing.key"
PUBLIC_KEY_NAME = "audit-signing.pub"
_KEY_ID_HEX = 32  # 128 bits of the public key's BLAKE3: names a key, the signature does the proving


class SigningKeyError(StoreError):
    """The audit signing key is missing, unsafe or unreadable."""

    template = "audit signing key {path}: {detail}"
    exit_code = 40
    wire_code = "signing-key"


def canonical_json(value: Any) -> bytes:
    """The one byte form of anything hashed or signed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A stable fingerprint of `public_key`, written into every checkpoint it signs."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + blake3.blake3(raw).hexdigest()[:_KEY_ID_HEX]


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def keys_by_id(public_keys: Ed25519PublicKey | Collection[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """Index one key or several (after a rotation) by their key ids."""
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    return {key_id(key): key for key in keys}


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The PEM public key at `path` (as written by `Signer.load_or_create`), for verifiers."""
    try:
        data = path.read_bytes()
    except OSError as error:  # the path is in the message already
        raise SigningKeyError(path=path, detail=f"cannot open: {error.strerror or error}") from error
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise SigningKeyError(path=path, detail=f"cannot load public key: {error}") from error
    if not isinstance(loaded, Ed25519PublicKey):
        raise SigningKeyError(path=path, detail=f"not an Ed25519 key but {type(loaded).__name__}")
    return loaded


@dataclass(frozen=True)
class Signer:
    """Signs checkpoint bodies with the station's Ed25519 key."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def load(cls, state_dir: Path) -> Signer:
        """Load the station's existing key; never create one (for tools that are not the daemon)."""
        path = state_dir / PRIVATE_KEY_NAME
        try:
            return cls(_load_private_key(path))
        except FileNotFoundError:
            raise SigningKeyError(
                path=path, detail="no signing key; the station has not been set up (start ingestd)"
            ) from None

    @classmethod
    def load_or_create(cls, state_dir: Path, *, history: Callable[[], str | None] = lambda: None) -> Signer:
        """Load `state_dir/audit-signing.key`, generating it on first start, and publish the public key.

        `history` is asked only when the key is missing: it names what the old key signed (an audit
        chain with events, checkpoints), or None. A key is never regenerated over such history: a new
        key would let whoever deleted the old one sign a rewritten past."""
        path = state_dir / PRIVATE_KEY_NAME
        try:
            signer = cls(_load_private_key(path))
        except FileNotFoundError:
            signed = history()
            if signed is not None:
                raise SigningKeyError(
                    path=path,
                    detail=f"missing, but {signed}; restore the key from its backup "
                    f"(it must match {PUBLIC_KEY_NAME}); a new key is never generated over signed history",
                ) from None
            signer = cls(_create_private_key(path))
        signer._publish_public_key(state_dir / PUBLIC_KEY_NAME)
        return signer

    def _publish_public_key(self, path: Path) -> None:
        pem = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == pem:
                return
        # Missing or not ours (a stale or substituted file): replace it atomically.
        write_durably(path, pem, mode=0o644)


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    # O_NOFOLLOW and fstat on the open descriptor: the mode checked is the mode of the file read.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise SigningKeyError(path=path, detail=f"cannot open: {error.strerror}") from error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SigningKeyError(path=path, detail="not a regular file")
        if info.st_uid != os.geteuid():
            raise SigningKeyError(
                path=path,
                detail=f"owned by uid {info.st_uid}, not by uid {os.geteuid()} that uses it; its owner could "
                "have replaced it, so it is refused (if it is the station's key: chown it back)",
            )
        if info.st_mode & 0o077:
            raise SigningKeyError(
                path=path,
                detail=f"mode {stat.S_IMODE(info.st_mode):04o} lets group or others access the key; "
                f"refusing to use it (if it was never exposed: chmod 600 {path}; otherwise replace it)",
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            pem = handle.read()
    finally:
        os.close(fd)
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(path=path, detail=f"not a readable PEM private key: {error}") from error
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningKeyError(path=path, detail=f"not an Ed25519 key but {type(loaded).__name__}")
    return loaded


def _create_private_key(path: Path) -> Ed25519PrivateKey:
    """Generate a key and link it into place; if another process won the race, use its key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        write_durably(path, pem, mode=0o600, overwrite=False)  # the first complete key wins
    except FileExistsError:
        return _load_private_key(path)
    return key
