"""Flags a dock raises on what it finds: a file it cannot ingest, a camera whose identity claims
disagree with what the station knows, a store that ran full.

Keys (one flag per fact, across re-docks):
- a file the scan rejected (hostile name, symlink, device): per camera and path;
- a file that failed while read: per dock session and file, so the next dock's failure is flagged anew;
- a USB serial other than the serial the camera reports: per pair;
- an officer described otherwise than the registry holds: per officer and distinct claim;
- a full store: per dock session.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ingestd.policies.flags import FlagDecision
from store.kinds import FlagKind
from store.times import utc


def rejected_file(
    *, camera_serial: str, camera_id: int, path: str, reason: str, now: datetime
) -> FlagDecision:
    return _file_flag(
        f"rejected:{camera_id}:{path}", camera_serial, camera_id, {"file": path, "reason": reason}, now
    )


def failed_file(
    *, camera_serial: str, camera_id: int, dock_session_id: int, file: str, reason: str, now: datetime
) -> FlagDecision:
    return _file_flag(
        f"failed:{dock_session_id}:{file}", camera_serial, camera_id, {"file": file, "reason": reason}, now
    )


def _file_flag(
    key: str, camera_serial: str, camera_id: int, details: dict[str, Any], now: datetime
) -> FlagDecision:
    return FlagDecision(FlagKind.FAILED_FILE, key, utc(now, "now"), camera_serial, camera_id, details=details)


def serial_mismatch(
    *, device_serial: str, usb_serial: str, source: str, camera_id: int, now: datetime
) -> FlagDecision | None:
    """The serial a control channel or an identity file on the volume reports is a claim; the USB
    descriptor's serial disagreeing with it needs a person to look."""
    if not usb_serial or usb_serial == device_serial:
        return None
    return FlagDecision(
        kind=FlagKind.IDENTITY_MISMATCH,
        dedup_key=f"identity:{device_serial}:{usb_serial}",
        raised_at=utc(now, "now"),
        camera_serial=device_serial,
        camera_id=camera_id,
        details={"usb_serial": usb_serial, "device_serial": device_serial, "source": source},
    )


def officer_mismatch(
    *,
    device_serial: str,
    officer_no: str,
    source: str,
    disagreement: Mapping[str, tuple[Any, Any]],
    camera_id: int,
    now: datetime,
) -> FlagDecision | None:
    """A camera describing a known officer otherwise than the registry (field -> (registered, reported));
    one flag per distinct claim."""
    if not disagreement:
        return None
    claim = "|".join(str(reported) for _registered, reported in disagreement.values())
    return FlagDecision(
        kind=FlagKind.IDENTITY_MISMATCH,
        dedup_key=f"officer:{device_serial}:{officer_no}:{claim}",
        raised_at=utc(now, "now"),
        camera_serial=device_serial,
        camera_id=camera_id,
        details={
            "officer_no": officer_no,
            "device_serial": device_serial,
            "source": source,
            **{f"{field}_registered": registered for field, (registered, _) in disagreement.items()},
            **{f"{field}_reported": reported for field, (_, reported) in disagreement.items()},
        },
    )


def store_full(
    *,
    camera_serial: str | None,
    camera_id: int | None,
    dock_session_id: int,
    error: str,
    free_bytes: int,
    now: datetime,
) -> FlagDecision:
    return FlagDecision(
        kind=FlagKind.STORE_FULL,
        dedup_key=f"store-full:{dock_session_id}",
        raised_at=utc(now, "now"),
        camera_serial=camera_serial,
        camera_id=camera_id,
        details={"error": error, "free_bytes": free_bytes},
    )
