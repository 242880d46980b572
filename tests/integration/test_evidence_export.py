"""Approvals and evidence exports on real catalogs (SQLite and PostgreSQL) and a real object store.

Handlers are called directly with a Request, as the dispatcher would after authorising the caller.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import bagit
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from ingestd.control.handlers_evidence import approve, export, revoke
from ingestd.control.registry import Request
from ingestd.evidence import layout
from ingestd.evidence.copies import CopyError
from ingestd.evidence.destination import deliver_into
from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError, ExportError, ExportIntegrityError
from ingestd.evidence.verify_bag import verify_bag
from store.audit import Actor, verify_chain
from store.catalog import Catalog
from store.models import AuditEvent, Confidentiality, Export, Recording
from store.signing import Signer
from tests.support.evidence import APPROVER, CLERK, NOW, World, forge_bag, make_services
from tests.support.objectstore import unseal_tree


@pytest.fixture
def world(catalog: Catalog, tmp_path: Path) -> Iterator[World]:
    services = make_services(catalog, tmp_path)
    w = World(services)
    w.unit("110105000000", "朝阳分局")
    w.unit("110106000000", "丰台分局")
    w.officer("000123", "张三", "110105000000")
    w.officer("000456", "李四/王", "110106000000")  # a separator in a name must not make a path
    w.camera("ZFY0001", "110105000000", "000123", battery=80)
    w.camera("ZFY0002", "110106000000", "000456", battery=15)
    try:
        yield w
    finally:
        unseal_tree(tmp_path)


def call(world: World, handler: Any, actor: Actor, now: Any = NOW, **args: Any) -> Any:
    """The handler as the dispatcher calls it; for export and copy, with DEST.partial made and handed
    over as `ingestctl` does (`deliver_into`), as `actor` would have made it."""
    name = handler.__name__

    def send(fd: int | None = None) -> Any:
        if fd is not None and os.geteuid() == 0 and actor.uid is not None:
            os.fchown(fd, actor.uid, -1)  # made by the caller, not by the test's root
        fds = () if fd is None else (fd,)
        return handler(world.services, Request(command=name, args=args, actor=actor, now=now, passed_fds=fds))

    if name not in ("export", "copy"):
        return send()
    return deliver_into(Path(args["dest"]), CopyError if name == "copy" else ExportError, send)


def approve_for(world: World, **args: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"purpose": "行政复议 evidence", "expires_in": "7d", "grantee": CLERK.user}
    return dict(call(world, approve, APPROVER, **{**defaults, **args}))


def events(world: World, action: str) -> list[AuditEvent]:
    with world.services.catalog.transaction() as db:
        return list(
            db.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))
        )


def case_recordings(world: World) -> list[int]:
    t = NOW - timedelta(days=2)
    return [
        world.recording(
            "ZFY0001",
            "000123",
            t,
            case_id="案2026-017",
            event="道路检查",
            place="朝阳路 1 号",
            original_path="DCIM/A.MP4",
        ),
        world.recording(
            "ZFY0001", "000123", t + timedelta(minutes=5), case_id="案2026-017", original_path="DCIM/B.mp4"
        ),
        world.recording("ZFY0002", "000456", t, case_id="案2026-017", original_path="DCIM\\C.MOV"),
    ]


# --- refusals ------------------------------------------------------------------------------------------


def test_export_without_an_approval_is_refused_and_audited(world: World, tmp_path: Path) -> None:
    case_recordings(world)
    dest = tmp_path / "out"
    with pytest.raises(ApprovalRefused) as refused:
        call(world, export, CLERK, approval_id=999, dest=str(dest))
    assert refused.value.code == "missing"
    assert refused.value.exit_code == 14
    assert not dest.exists()
    assert not (tmp_path / "out.partial").exists()
    [event] = events(world, "footage.export")
    assert (event.outcome, event.details["code"], event.actor_user) == ("refused", "missing", "li.clerk")


def test_export_with_an_expired_approval_is_refused(world: World, tmp_path: Path) -> None:
    case_recordings(world)
    approval = approve_for(world, case_id="案2026-017", expires_in="1h")
    with pytest.raises(ApprovalRefused) as refused:
        call(
            world,
            export,
            CLERK,
            now=NOW + timedelta(hours=1),
            approval_id=approval["id"],
            dest=str(tmp_path / "out"),
        )
    assert refused.value.code == "expired"
    assert events(world, "footage.export")[-1].details["code"] == "expired"
    assert not (tmp_path / "out").exists()


def test_export_outside_the_scope_is_refused(world: World, tmp_path: Path) -> None:
    ids = case_recordings(world)
    other = world.recording("ZFY0001", "000123", NOW - timedelta(days=1))  # in no case
    approval = approve_for(world, recording_ids=[ids[0]])
    with pytest.raises(ApprovalRefused) as refused:
        call(
            world,
            export,
            CLERK,
            approval_id=approval["id"],
            dest=str(tmp_path / "out"),
            recording_ids=[ids[0], other],
        )
    assert refused.value.code == "out-of-scope"
    assert str(other) in str(refused.value)
    assert events(world, "footage.export")[-1].outcome == "refused"
    assert not (tmp_path / "out").exists()


def test_a_revoked_approval_exports_nothing(world: World, tmp_path: Path) -> None:
    case_recordings(world)
    approval = approve_for(world, case_id="案2026-017")
    revoked = call(world, revoke, APPROVER, approval_id=approval["id"], reason="request withdrawn")
    assert revoked["state"] == "revoked"
    with pytest.raises(ApprovalRefused) as refused:
        call(world, export, CLERK, approval_id=approval["id"], dest=str(tmp_path / "out"))
    assert refused.value.code == "revoked"
    with pytest.raises(EvidenceUsageError, match="already revoked"):
        call(world, revoke, APPROVER, approval_id=approval["id"], reason="again")


def test_confidential_footage_needs_an_approval_that_allows_it(world: World, tmp_path: Path) -> None:
    ids = case_recordings(world)
    secret = world.recording(
        "ZFY0001",
        "000123",
        NOW - timedelta(hours=5),
        case_id="案2026-017",
        confidentiality=Confidentiality.PRIVACY,
    )
    plain = approve_for(world, case_id="案2026-017")
    with pytest.raises(ApprovalRefused) as refused:
        call(world, export, CLERK, approval_id=plain["id"], dest=str(tmp_path / "out"))
    assert refused.value.code == "confidential"
    assert str(secret) in str(refused.value)
    allowed = approve_for(world, case_id="案2026-017", allows_confidential=True)
    result = call(world, export, CLERK, approval_id=allowed["id"], dest=str(tmp_path / "out"))
    assert sorted(result["recording_ids"]) == sorted([*ids, secret])


def test_approval_requests_are_checked(world: World) -> None:
    ids = case_recordings(world)
    with pytest.raises(EvidenceUsageError, match="purpose"):
        approve_for(world, recording_ids=ids, purpose="  ")
    with pytest.raises(EvidenceUsageError, match="90 days"):
        approve_for(world, recording_ids=ids, expires_in="91d")
    with pytest.raises(EvidenceUsageError, match="not in the future"):
        approve_for(world, recording_ids=ids, expires_in=None, expires_at="2026-03-01T00:00:00+08:00")
    with pytest.raises(EvidenceUsageError, match="no zone"):
        approve_for(world, recording_ids=ids, expires_in=None, expires_at="2026-03-20T00:00:00")
    with pytest.raises(EvidenceUsageError, match="no recording with id 9999"):
        approve_for(world, recording_ids=[9999])
    with pytest.raises(EvidenceUsageError, match="no recording is tagged"):
        approve_for(world, case_id="typo")
    with pytest.raises(EvidenceUsageError, match="scope"):
        approve_for(world)
    with pytest.raises(EvidenceUsageError, match="recording_ids"):
        approve_for(world, recording_ids="1,2")
    [created] = [approve_for(world, recording_ids=ids[:1])]
    assert created["approver"] == "wang.approver"
    assert created["state"] == "valid"
    [event] = events(world, "approval.create")
    assert event.details["scope_recording_ids"] == ids[:1]


# --- a good export ---------------------------------------------------------------------------------------


def test_an_export_is_a_valid_signed_bag_and_is_recorded(world: World, tmp_path: Path) -> None:
    ids = case_recordings(world)
    approval = approve_for(world, case_id="案2026-017", requested_by="法院 刘")
    dest = tmp_path / "export 案2026-017"
    result = call(world, export, CLERK, approval_id=approval["id"], dest=str(dest))

    assert result["recording_ids"] == ids
    assert not (tmp_path / "export 案2026-017.partial").exists()
    bagit.Bag(str(dest)).validate()  # the library accepts it
    report = verify_bag(dest, trusted_keys=[world.services.audit.signer.public_key])
    assert report.problems == []
    assert report.payload_files == 3

    names = sorted(p.name for p in (dest / "data").iterdir())
    assert names[0].startswith("张三_000123_案2026-017_20260308T040000Z_r")
    assert any(n.startswith("李四_王_000456_") and n.endswith(".mov") for n in names)
    for name in names:
        assert "/" not in name
        assert "\\" not in name
        assert " " not in name
    for rid in ids:
        payload = next(p for p in (dest / "data").iterdir() if f"_r{rid}." in p.name)
        assert payload.read_bytes() == world.data[rid]

    info = bagit.Bag(str(dest)).info
    assert info["Approval-Id"] == str(approval["id"])
    assert info["Extracted-By"] == "法院 刘"
    assert info["Made-By"].startswith("li.clerk")
    assert info["Event"] == "道路检查"
    assert info["Place"] == "朝阳路 1 号"
    assert sorted(info["Officer"]) == [
        "张三 (000123), 朝阳分局 (110105000000)",
        "李四/王 (000456), 丰台分局 (110106000000)",
    ]
    assert info["Payload-Oxum"] == f"{sum(len(world.data[i]) for i in ids)}.3"
    facts = json.loads((dest / layout.RECORDINGS_JSON).read_text(encoding="utf-8"))
    assert {f["device_serial"] for f in facts} == {"ZFY0001", "ZFY0002"}

    with world.services.catalog.transaction() as db:
        row = db.scalars(select(Export)).one()
        assert (row.approval_id, row.destination, row.recording_count) == (approval["id"], str(dest), 3)
        assert row.tag_manifest_blake3 == result["tag_manifest_blake3"]
        problems = verify_chain(
            db,
            checkpoint_path=world.services.audit.checkpoints.path,
            public_key=world.services.audit.signer.public_key,
        )
        assert problems == []
    [done] = events(world, "export")
    assert done.outcome == "ok"
    assert done.details["recordings"] == ids
    assert events(world, "export.begin")[0].details["recordings"] == ids


def test_one_changed_payload_byte_fails_both_validators(world: World, tmp_path: Path) -> None:
    case_recordings(world)
    approval = approve_for(world, case_id="案2026-017")
    dest = tmp_path / "out"
    call(world, export, CLERK, approval_id=approval["id"], dest=str(dest))
    victim = sorted((dest / "data").iterdir())[1]
    victim.chmod(0o640)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0x01
    victim.write_bytes(bytes(data))

    assert not bagit.Bag(str(dest)).is_valid()
    report = verify_bag(dest)
    kinds = {p.kind for p in report.problems}
    assert {"bagit", "sha256-mismatch", "blake3-mismatch"} <= kinds
    assert all(p.subject.endswith(victim.name) for p in report.problems if p.kind.endswith("mismatch"))


def test_the_signature_catches_a_rewritten_tag_manifest(world: World, tmp_path: Path) -> None:
    case_recordings(world)
    approval = approve_for(world, case_id="案2026-017")
    dest = tmp_path / "out"
    call(world, export, CLERK, approval_id=approval["id"], dest=str(dest))
    # An attacker edits bag-info.txt and recomputes the tag manifest: bagit is satisfied, the signature not.
    info = dest / layout.BAG_INFO
    info.chmod(0o640)
    info.write_text(info.read_text(encoding="utf-8").replace("li.clerk", "someone.else"), encoding="utf-8")
    manifest = dest / layout.TAG_MANIFEST
    manifest.chmod(0o640)
    import hashlib  # noqa: PLC0415 - only this attack needs it

    lines = []
    for line in manifest.read_text().splitlines():
        _, name = line.split(None, 1)
        lines.append(f"{hashlib.sha256((dest / name).read_bytes()).hexdigest()}  {name}")
    manifest.write_text("\n".join(lines) + "\n")
    assert bagit.Bag(str(dest)).is_valid()
    kinds = [p.kind for p in verify_bag(dest).problems]
    assert kinds == ["signature"]


def test_a_bag_resigned_with_another_key_fails_only_when_the_station_key_is_pinned(
    world: World, tmp_path: Path
) -> None:
    case_recordings(world)
    approval = approve_for(world, case_id="案2026-017")
    dest = tmp_path / "out"
    call(world, export, CLERK, approval_id=approval["id"], dest=str(dest))
    forged = tmp_path / "forged"
    shutil.copytree(dest, forged)
    forge_bag(forged, Signer(Ed25519PrivateKey.generate()))  # re-signed consistently, another key
    unpinned = verify_bag(forged)
    assert unpinned.consistent  # self-consistent...
    assert not unpinned.valid  # ...so, with no station key to check against, never valid
    pinned = verify_bag(forged, trusted_keys=[world.services.audit.signer.public_key])
    assert {p.kind for p in pinned.problems} == {"key-not-pinned"}  # ...and not the station's


def test_store_bytes_that_differ_from_the_catalog_export_nothing(world: World, tmp_path: Path) -> None:
    ids = case_recordings(world)
    with world.services.catalog.transaction() as db:
        db.execute(update(Recording).where(Recording.id == ids[1]).values(sha256="0" * 64))
    approval = approve_for(world, case_id="案2026-017")
    dest = tmp_path / "out"
    with pytest.raises(ExportIntegrityError) as failed:
        call(world, export, CLERK, approval_id=approval["id"], dest=str(dest))
    assert failed.value.exit_code == 3
    assert not dest.exists()
    assert not (tmp_path / "out.partial").exists()
    assert events(world, "export")[-1].outcome == "failed"
    with world.services.catalog.transaction() as db:
        assert db.scalars(select(Export)).all() == []


def test_an_existing_destination_is_never_touched(world: World, tmp_path: Path) -> None:
    case_recordings(world)
    approval = approve_for(world, case_id="案2026-017")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        call(world, export, CLERK, approval_id=approval["id"], dest=str(dest))
    assert (dest / "keep").read_text() == "mine"
    with pytest.raises(EvidenceUsageError, match="absolute"):
        call(world, export, CLERK, approval_id=approval["id"], dest="relative/out")
    if os.getuid() != 0:
        with pytest.raises(ExportError, match="not owned"):
            call(world, export, CLERK, approval_id=approval["id"], dest="/tmp/not-mine-export")
