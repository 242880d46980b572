"""Payload file names for exported footage: officer name, case and time (004 art. 19(三)).

Guarantees: a name is one path component that every common filesystem accepts (no separators, control
or format characters, no characters Windows forbids, no reserved device names, no leading dot, at most
240 UTF-8 bytes) and that BagIt manifests carry unchanged (no `%`, no whitespace). CJK and other
letters are kept (UTF-8, NFC). The recording id is always kept, so names are unique even when two
recordings share officer, case and second, also on case-insensitive filesystems.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

MAX_NAME_BYTES = 240  # below the 255 of ext4, NTFS, APFS; leaves room for ".partial"-style suffixes
_FORBIDDEN = set('<>:"/\\|?*%')  # Windows' reserved characters, and % (BagIt's escape for CR and LF)
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,8}$")
_RUNS = re.compile(r"(?:_|\.{2,})+")  # also "..": harmless here, alarming to a reader


def clean_component(text: str) -> str:
    """`text` with every unsafe character replaced by `_` (runs collapsed), NFC-normalised."""
    out = []
    for char in unicodedata.normalize("NFC", text):
        category = unicodedata.category(char)
        unsafe = char in _FORBIDDEN or category[0] in ("C", "Z")  # control, format, separators, spaces
        out.append("_" if unsafe else char)
    return _RUNS.sub("_", "".join(out)).strip("._-")


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore").rstrip("._-")


def extension_of(original_path: str) -> str:
    """The original file's extension, lower-case, when it is short and plain; else `.bin`."""
    name = original_path.replace("\\", "/").rsplit("/", 1)[-1]
    if "." in name:
        ext = name.rsplit(".", 1)[1]
        if _EXTENSION.match(ext):
            return "." + ext.lower()
    return ".bin"


def payload_name(
    *,
    recording_id: int,
    officer_name: str | None,
    officer_no: str | None,
    case: str | None,
    recorded_at: datetime,
    original_path: str,
) -> str:
    """E.g. `张三_000123_案2026-017_20260301T080000Z_r42.mp4`; parts that are unknown say so."""
    if recorded_at.tzinfo is None or recorded_at.utcoffset() is None:
        raise ValueError("recorded_at must carry a zone")
    stamp = recorded_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    parts = [
        clean_component(officer_name or "") or "unknown-officer",
        clean_component(officer_no or ""),
        clean_component(case or "") or "no-case",
        stamp,
    ]
    suffix = f"_r{recording_id}{extension_of(original_path)}"
    stem = "_".join(p for p in parts if p)
    stem = _truncate_utf8(stem, MAX_NAME_BYTES - len(suffix.encode("utf-8")))
    name = stem + suffix
    if _WINDOWS_RESERVED.match(name):  # pragma: no cover - the suffix makes this unreachable today
        name = "_" + name
    return name
