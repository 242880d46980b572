"""A small, real world for evidence tests: services over a test catalog, stored objects in a real
FileObjectStore, units, officers (with CJK names), cameras and recordings."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from drivers.registry import DriverRegistry
from ingestd.config import Config
from ingestd.evidence import layout
from ingestd.evidence.bag import tag_file_text
from ingestd.services import Services
from store.audit import Actor, AuditLog, Role
from store.catalog import Catalog
from store.models import Camera, Confidentiality, Officer, Recording, RetentionClass, StoredObject, Unit
from store.objects import FileObjectStore
from store.signing import Signer

NOW = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai


def actor(user: str, role: Role) -> Actor:
    # The caller's real uid: export destinations must be owned by the caller.
    return Actor(user=user, uid=os.getuid(), role=role, source=f"ctl:uid={os.getuid()}")


APPROVER = actor("wang.approver", Role.APPROVER)
CLERK = actor("li.clerk", Role.CLERK)
AUDITOR = actor("zhao.auditor", Role.AUDITOR)


def make_services(catalog: Catalog, tmp_path: Path) -> Services:
    state = tmp_path / "state"
    config = Config.model_validate(
        {
            "daemon": {"state_dir": str(state)},
            "catalog": {"url": catalog.engine.url.render_as_string(hide_password=False)},
            "store": {"root": str(tmp_path / "store")},
        }
    )
    state.mkdir(parents=True, exist_ok=True)
    signer = Signer.load_or_create(state)
    audit = AuditLog(signer, state / "audit-checkpoints.jsonl", 1000, set_append_only=False)
    store = FileObjectStore(tmp_path / "store").create_directories()
    return Services(
        config=config,
        catalog=catalog,
        store=store,
        audit=audit,
        registry=DriverRegistry(config.camera_rules()),
    )


def payload(seed: str, size: int = 4096) -> bytes:
    return hashlib.shake_256(f"footage-{seed}".encode()).digest(size)


@dataclass
class World:
    services: Services
    units: dict[str, int] = field(default_factory=dict)
    officers: dict[str, int] = field(default_factory=dict)
    cameras: dict[str, int] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)

    def unit(self, unit_no: str, name: str) -> int:
        with self.services.catalog.transaction() as session:
            row = Unit(unit_no=unit_no, name=name)
            session.add(row)
            session.flush()
            self.units[unit_no] = row.id
        return row.id

    def officer(self, officer_no: str, name: str, unit_no: str) -> int:
        with self.services.catalog.transaction() as session:
            row = Officer(officer_no=officer_no, name=name, unit_id=self.units[unit_no])
            session.add(row)
            session.flush()
            self.officers[officer_no] = row.id
        return row.id

    def camera(
        self, serial: str, unit_no: str, officer_no: str | None = None, *, battery: int | None = None
    ) -> int:
        with self.services.catalog.transaction() as session:
            row = Camera(
                device_serial=serial,
                driver="serial",
                unit_id=self.units[unit_no],
                assigned_officer_id=self.officers.get(officer_no or ""),
                battery_percent=battery,
                first_seen_at=NOW - timedelta(days=100),
            )
            session.add(row)
            session.flush()
            self.cameras[serial] = row.id
        return row.id

    def recording(
        self,
        serial: str,
        officer_no: str | None,
        recorded_at: datetime,
        *,
        data: bytes | None = None,
        case_id: str | None = None,
        confidentiality: Confidentiality = Confidentiality.NORMAL,
        duration_s: float | None = 60.0,
        late: bool = False,
        original_path: str = "DCIM/100MEDIA/FILE0001.MP4",
        event: str | None = None,
        place: str | None = None,
    ) -> int:
        content = data if data is not None else payload(f"{serial}-{recorded_at.isoformat()}")
        put = self.services.store.put(io.BytesIO(content))
        deadline = recorded_at + timedelta(hours=24)
        with self.services.catalog.transaction() as session:
            if session.get(StoredObject, put.blake3) is None:
                session.add(
                    StoredObject(
                        blake3=put.blake3,
                        sha256=put.sha256,
                        size=put.size,
                        seal=put.seal,
                        stored_at=recorded_at + timedelta(hours=1),
                    )
                )
            camera = session.get(Camera, self.cameras[serial])
            assert camera is not None
            unit_id = camera.unit_id
            row = Recording(
                camera_id=camera.id,
                officer_id=self.officers.get(officer_no or ""),
                unit_id=unit_id,
                original_path=original_path,
                source_key=f"{original_path}:{recorded_at.isoformat()}",
                size=put.size,
                recorded_at_raw=recorded_at,
                recorded_at=recorded_at,
                recorded_at_source="mvhd",
                duration_s=duration_s,
                ingested_at=deadline + timedelta(hours=3) if late else recorded_at + timedelta(hours=2),
                deadline_at=deadline,
                blake3=put.blake3,
                sha256=put.sha256,
                retention_class=RetentionClass.STANDARD,
                case_id=case_id,
                event=event,
                place=place,
                confidentiality=confidentiality,
            )
            session.add(row)
            session.flush()
            self.data[row.id] = content
            return row.id

    def recording_ids(self) -> list[int]:
        with self.services.catalog.transaction() as session:
            return list(session.scalars(select(Recording.id).order_by(Recording.id)))


def forge_bag(bag: Path, signer: Signer, edits: dict[str, bytes] | None = None) -> None:
    """What a forger without the station key can do: replace payload files (`edits`, by path in the
    bag), then rewrite every manifest and re-sign the bag consistently with a key of their own."""
    for path in bag.rglob("*"):
        path.chmod(0o750 if path.is_dir() else 0o640)
    for name, data in (edits or {}).items():
        (bag / name).write_bytes(data)
    payload_names = sorted(p.relative_to(bag).as_posix() for p in (bag / layout.PAYLOAD_DIR).iterdir())
    for manifest, digest in (
        (layout.MANIFEST_SHA256, hashlib.sha256),
        (layout.MANIFEST_BLAKE3, blake3.blake3),
    ):
        lines = [f"{digest((bag / n).read_bytes()).hexdigest()}  {n}\n" for n in payload_names]
        (bag / manifest).write_text("".join(lines))
    (bag / layout.PUBLIC_KEY).write_bytes(
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    lines = []
    for line in (bag / layout.TAG_MANIFEST).read_text().splitlines():
        _, name = line.split(None, 1)
        lines.append(f"{hashlib.sha256((bag / name).read_bytes()).hexdigest()}  {name}")
    signed = ("\n".join(lines) + "\n").encode()
    (bag / layout.TAG_MANIFEST).write_bytes(signed)
    (bag / layout.SIGNATURE).write_text(
        tag_file_text(
            [
                ("Signature-Algorithm", "Ed25519"),
                ("Signed-File", layout.TAG_MANIFEST),
                ("Key-Id", signer.key_id),
                ("Signature", base64.b64encode(signer.sign(signed)).decode()),
            ]
        )
    )
