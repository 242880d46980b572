"""Copying and viewing approved footage on real catalogs and a real object store, and the open file that
`view` hands over the control socket (a real ControlServer and client, in-process).

Handlers are called directly with a Request, as the dispatcher would after authorising the caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from ingestd.control import protocol
from ingestd.control.client import RemoteError, call_with_fd
from ingestd.control.client import call as client_call
from ingestd.control.handlers_evidence import copy, export, revoke, view
from ingestd.control.registry import Request
from ingestd.control.server import ControlServer
from ingestd.ctl.evidence import ViewIntegrityError, stream_verified
from ingestd.evidence.copies import SUMS_FILE, CopyError, CopyIntegrityError
from ingestd.evidence.delivery import DeliveryRequest
from ingestd.evidence.destination import deliver_into
from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError, ExportError
from store.audit import Actor, Role
from store.catalog import Catalog
from store.models import Recording
from tests.integration.test_evidence_export import approve_for, call, events
from tests.support.evidence import APPROVER, AUDITOR, CLERK, NOW, World, make_services
from tests.support.objectstore import unseal_tree

CASE = "案2026-017"


@pytest.fixture
def world(catalog: Catalog, tmp_path: Path) -> Iterator[World]:
    services = make_services(catalog, tmp_path)
    w = World(services)
    w.unit("110105000000", "朝阳分局")
    w.officer("000123", "张三", "110105000000")
    w.camera("ZFY0001", "110105000000", "000123")
    try:
        yield w
    finally:
        unseal_tree(tmp_path)


def recordings(world: World) -> list[int]:
    t = NOW - timedelta(days=2)
    in_case = [
        world.recording("ZFY0001", "000123", t, case_id=CASE, original_path="DCIM/A.MP4"),
        world.recording("ZFY0001", "000123", t + timedelta(minutes=5), case_id=CASE, original_path="B.mov"),
    ]
    return [*in_case, world.recording("ZFY0001", "000123", t + timedelta(hours=1))]  # the last in no case


def sums_of(directory: Path) -> dict[str, str]:
    lines = (directory / SUMS_FILE).read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


# --- copy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "expired", "revoked", "out-of-scope"])
def test_a_copy_without_a_valid_approval_is_refused_audited_and_writes_nothing(
    world: World, tmp_path: Path, case: str
) -> None:
    ids = recordings(world)
    approval_id, now, subset = 999, NOW, None
    if case != "missing":
        approval_id = approve_for(world, case_id=CASE, expires_in="1h")["id"]
    if case == "expired":
        now = NOW + timedelta(hours=1)
    if case == "revoked":
        call(world, revoke, APPROVER, approval_id=approval_id, reason="withdrawn")
    if case == "out-of-scope":
        subset = [ids[0], ids[2]]
    dest = tmp_path / "copy"
    with pytest.raises(ApprovalRefused) as refused:
        call(world, copy, CLERK, now=now, approval_id=approval_id, dest=str(dest), recording_ids=subset)
    assert (refused.value.code, refused.value.exit_code) == (case, 14)
    assert not dest.exists()
    assert not (tmp_path / "copy.partial").exists()
    [event] = events(world, "footage.copy")
    assert (event.outcome, event.details["code"], event.actor_user) == ("refused", case, "li.clerk")
    assert event.details["destination"] == str(dest)


def test_a_copy_is_plain_files_named_like_an_export_with_sums_that_verify(
    world: World, tmp_path: Path
) -> None:
    ids = recordings(world)
    approval = approve_for(world, case_id=CASE)
    dest = tmp_path / "copy for court"
    result = call(world, copy, CLERK, approval_id=approval["id"], dest=str(dest))

    assert result["recording_ids"] == ids[:2]
    assert result["bytes"] == sum(len(world.data[i]) for i in ids[:2])
    assert sorted(p.name for p in dest.iterdir()) == sorted([*result["files"], SUMS_FILE])
    assert result["files"][0].startswith(f"张三_000123_{CASE}_20260308T040000Z_r{ids[0]}")
    assert result["files"][1].endswith(f"_r{ids[1]}.mov")
    for rid in ids[:2]:
        [copied] = dest.glob(f"*_r{rid}.*")
        assert copied.read_bytes() == world.data[rid]
        assert sums_of(dest)[copied.name] == hashlib.sha256(world.data[rid]).hexdigest()
    for path in dest.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
    if shutil.which("sha256sum"):
        checked = subprocess.run(
            ["sha256sum", "-c", SUMS_FILE], cwd=dest, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (tmp_path / "copy for court.partial").exists()

    [event] = events(world, "footage.copy")
    assert (event.outcome, event.actor_user, event.subject) == (
        "ok",
        "li.clerk",
        f"approval:{approval['id']}",
    )
    assert event.details["recordings"] == ids[:2]
    assert event.details["destination"] == str(dest)
    assert event.details["files"] == result["files"]


def test_a_copy_of_listed_recordings_takes_only_those(world: World, tmp_path: Path) -> None:
    ids = recordings(world)
    approval = approve_for(world, case_id=CASE)
    dest = tmp_path / "one"
    result = call(world, copy, CLERK, approval_id=approval["id"], dest=str(dest), recording_ids=[ids[1]])
    assert result["recording_ids"] == [ids[1]]
    assert list(sums_of(dest)) == result["files"]
    with pytest.raises(EvidenceUsageError, match="no recording with id 9999"):
        call(world, copy, CLERK, approval_id=approval["id"], dest=str(tmp_path / "x"), recording_ids=[9999])


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs root, like the daemon")
def test_the_copy_belongs_to_the_caller_and_the_group_their_new_directory_got(
    world: World, tmp_path: Path
) -> None:
    ids = recordings(world)
    approval = approve_for(world, recording_ids=ids[:1], grantee="someone")
    caller = Actor(user="someone", uid=43210, role=Role.CLERK, source="ctl:uid=43210")
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, 43210, 54321)
    parent.chmod(0o2770)  # setgid: a new directory in it gets the group 54321
    dest = parent / "copy"
    call(world, copy, caller, approval_id=approval["id"], dest=str(dest))
    for path in [dest, *dest.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (43210, 54321), path


@pytest.mark.skipif(os.geteuid() != 0, reason="taking a directory over needs root, like the daemon")
def test_a_directory_not_the_callers_or_not_empty_is_refused_and_left_as_it_was(
    world: World, tmp_path: Path
) -> None:
    recordings(world)
    approval = approve_for(world, case_id=CASE, grantee="someone")
    caller = Actor(user="someone", uid=43210, role=Role.CLERK, source="ctl:uid=43210")
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o755)
    fd = os.open(roots, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = {"approval_id": approval["id"], "dest": str(tmp_path / "x")}
        with pytest.raises(CopyError, match="not the caller's"):
            copy(world.services, Request(command="copy", args=args, actor=caller, now=NOW, passed_fds=(fd,)))
    finally:
        os.close(fd)
    assert (roots.stat().st_uid, stat.S_IMODE(roots.stat().st_mode)) == (0, 0o755)
    assert events(world, "footage.copy")[-1].outcome == "failed"

    full = tmp_path / "full"  # the caller's, but not new: refused, and given back as it was
    full.mkdir(mode=0o750)
    (full / "keep").write_text("mine")
    os.chown(full, 43210, 54321)
    fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = {"approval_id": approval["id"], "dest": str(full)}
        with pytest.raises(CopyError, match="not empty"):
            copy(world.services, Request(command="copy", args=args, actor=caller, now=NOW, passed_fds=(fd,)))
    finally:
        os.close(fd)
    assert (full.stat().st_uid, full.stat().st_gid, stat.S_IMODE(full.stat().st_mode)) == (
        43210,
        54321,
        0o750,
    )
    assert (full / "keep").read_text() == "mine"


def test_copy_and_export_need_the_directory_handed_over_open(world: World, tmp_path: Path) -> None:
    recordings(world)
    approval = approve_for(world, case_id=CASE)
    args = {"approval_id": approval["id"], "dest": str(tmp_path / "x")}
    with pytest.raises(EvidenceUsageError, match="handed over open"):
        copy(world.services, Request(command="copy", args=args, actor=CLERK, now=NOW))
    assert not (tmp_path / "x").exists()


def test_store_bytes_that_differ_from_the_catalog_copy_nothing(world: World, tmp_path: Path) -> None:
    ids = recordings(world)
    with world.services.catalog.transaction() as db:
        db.execute(update(Recording).where(Recording.id == ids[1]).values(sha256="0" * 64))
    approval = approve_for(world, case_id=CASE)
    dest = tmp_path / "copy"
    with pytest.raises(CopyIntegrityError) as failed:
        call(world, copy, CLERK, approval_id=approval["id"], dest=str(dest))
    assert failed.value.exit_code == 3
    assert str(failed.value).startswith("copy refused: stored object")
    assert not dest.exists()
    assert not (tmp_path / "copy.partial").exists()
    [event] = events(world, "footage.copy")
    assert event.outcome == "failed"
    assert "SHA-256" in event.details["error"]


def test_an_existing_destination_is_never_touched(world: World, tmp_path: Path) -> None:
    recordings(world)
    approval = approve_for(world, case_id=CASE)
    dest = tmp_path / "copy"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(CopyError, match=r"copy to .*already exists") as exists:
        call(world, copy, CLERK, approval_id=approval["id"], dest=str(dest))
    assert exists.value.exit_code == 15
    assert (dest / "keep").read_text() == "mine"
    partial = tmp_path / "other.partial"
    partial.mkdir()
    with pytest.raises(CopyError, match="interrupted"):
        call(world, copy, CLERK, approval_id=approval["id"], dest=str(tmp_path / "other"))
    assert partial.is_dir()
    with pytest.raises(EvidenceUsageError, match="absolute"):
        call(world, copy, CLERK, approval_id=approval["id"], dest="relative/copy")
    assert events(world, "footage.copy") == []  # nothing was attempted


# --- view ------------------------------------------------------------------------------------------------


def test_view_hands_over_the_stored_bytes_read_only_and_is_audited(world: World) -> None:
    ids = recordings(world)
    approval = approve_for(world, recording_ids=[ids[2]], grantee=AUDITOR.user)
    passed = call(world, view, AUDITOR, approval_id=approval["id"], recording_id=ids[2])
    assert isinstance(passed, protocol.PassedFile)
    with passed.file as opened:
        assert opened.read() == world.data[ids[2]]
        assert fcntl.fcntl(opened.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert os.fstat(opened.fileno()).st_mode & 0o222 == 0  # the sealed object itself
    assert passed.result["size"] == len(world.data[ids[2]])
    assert passed.result["sha256"] == hashlib.sha256(world.data[ids[2]]).hexdigest()
    [event] = events(world, "footage.view")
    assert (event.outcome, event.actor_user, event.subject) == ("ok", "zhao.auditor", f"recording:{ids[2]}")
    assert event.details["approval"] == approval["id"]


def test_view_without_a_valid_approval_opens_nothing_and_is_audited(world: World) -> None:
    ids = recordings(world)
    approval = approve_for(world, case_id=CASE, expires_in="1h")
    attempts = [
        ({"approval_id": 999, "recording_id": ids[0]}, NOW, "missing"),
        ({"approval_id": approval["id"], "recording_id": ids[2]}, NOW, "out-of-scope"),
        ({"approval_id": approval["id"], "recording_id": ids[0]}, NOW + timedelta(hours=2), "expired"),
    ]
    for args, now, code in attempts:
        with pytest.raises(ApprovalRefused) as refused:
            call(world, view, CLERK, now=now, **args)
        assert refused.value.code == code
    assert [(e.outcome, e.details["code"]) for e in events(world, "footage.view")] == [
        ("refused", "missing"),
        ("refused", "out-of-scope"),
        ("refused", "expired"),
    ]
    with pytest.raises(EvidenceUsageError, match="no recording with id 4242"):
        call(world, view, CLERK, approval_id=approval["id"], recording_id=4242)
    with world.services.catalog.transaction() as db:
        db.execute(update(Recording).where(Recording.id == ids[0]).values(purged_at=NOW))
    with pytest.raises(EvidenceUsageError, match="purged"):
        call(world, view, CLERK, approval_id=approval["id"], recording_id=ids[0])


# --- the open file over the control socket ----------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for a Unix socket path (pytest's tmp_path may not be)."""
    path = Path(tempfile.mkdtemp(prefix="ingestd-fd-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serving(world: World, short_dir: Path) -> Iterator[Path]:
    """A real ControlServer in this process (its caller, root, is admin); its socket."""
    if os.geteuid() != 0:
        pytest.skip("the caller needs a role: as root it is admin")
    config = world.services.config.control.model_copy(update={"socket": short_dir / "c.sock"})
    server = ControlServer(world.services, config, clock=lambda: NOW)
    server.start()
    try:
        yield config.socket
    finally:
        server.stop()


def test_the_server_passes_the_open_file_and_the_client_receives_it(world: World, short_dir: Path) -> None:
    ids = recordings(world)
    approval = approve_for(world, recording_ids=[ids[0]], grantee="root")  # the caller over the socket
    with serving(world, short_dir) as sock:
        result, fd = call_with_fd(sock, "view", {"approval_id": approval["id"], "recording_id": ids[0]})
        try:
            assert os.get_inheritable(fd) is False  # received close-on-exec
            assert os.pread(fd, len(world.data[ids[0]]) + 1, 0) == world.data[ids[0]]
            assert result["recording_id"] == ids[0]
        finally:
            os.close(fd)
        with pytest.raises(RemoteError) as refused:
            call_with_fd(sock, "view", {"approval_id": approval["id"], "recording_id": ids[1]})
        assert refused.value.exit_code == 14
        assert "out-of-scope" in str(refused.value)
    ctl_events = [(e.outcome, e.actor_user) for e in events(world, "ctl.view")]
    assert ctl_events == [("ok", "root"), ("error", "root")]


def test_a_copy_through_the_server_fills_the_directory_ingestctl_hands_over(
    world: World, short_dir: Path, tmp_path: Path
) -> None:
    """ingestctl's side (`deliver_into`) and the real server: the directory goes over the socket open,
    the server closes its copy once it has answered, and a request handing over two is refused."""
    ids = recordings(world)
    approval = approve_for(world, recording_ids=[ids[0]], grantee="root")
    dest = tmp_path / "copy"
    args = {"approval_id": approval["id"], "dest": str(dest)}
    with serving(world, short_dir) as sock:
        result = deliver_into(dest, CopyError, lambda fd: client_call(sock, "copy", args, pass_fd=fd))
        assert result["files"] == [p.name for p in sorted(dest.iterdir()) if p.name != SUMS_FILE]
        assert descriptors_on(dest) == set()  # the server's copy of the descriptor is closed
        two = tmp_path / "two"
        two.mkdir()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held = [os.open(two, os.O_RDONLY | os.O_DIRECTORY) for _ in range(2)]
        try:
            with connection:
                connection.connect(str(sock))
                request = {"id": 1, "command": "copy", "args": {**args, "dest": str(two / "x")}}
                socket.send_fds(connection, [protocol.encode(request)], held)
                answer = protocol.parse_response(connection.makefile("rb").readline(), 1)
        finally:
            for fd in held:
                os.close(fd)
        assert answer["ok"] is False
        assert "(got 2 descriptors)" in answer["error"]["message"]
        assert list(two.iterdir()) == []


def answer_once(path: Path, response: dict[str, Any], fds: list[int]) -> threading.Thread:
    """A fake daemon that answers one request with `response` and hands over `fds`."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener, listener.accept()[0] as connection:
            request = protocol.parse_request(connection.makefile("rb").readline())
            line = protocol.encode({**response, "id": request.id})
            socket.send_fds(connection, [line], fds)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def descriptors_on(path: Path) -> set[int]:
    """This process's descriptors open on `path` (other threads' descriptors come and go; these do not)."""
    found = set()
    for entry in Path("/proc/self/fd").iterdir():
        try:
            if entry.resolve(strict=True) == path:
                found.add(int(entry.name))
        except OSError:
            continue  # closed while we looked
    return found


def test_an_answer_without_the_file_is_a_protocol_error_and_a_failed_one_leaks_no_descriptor(
    short_dir: Path,
) -> None:
    answer_once(short_dir / "a.sock", protocol.ok(None, {"size": 1}), [])
    with pytest.raises(protocol.WireProtocolError, match="hands over 0 files, expected one"):
        call_with_fd(short_dir / "a.sock", "view", {})
    handed_path = (short_dir / "f").resolve()
    with handed_path.open("wb") as handed:
        server = answer_once(
            short_dir / "b.sock", protocol.failure(None, "x", "refused", 14), [handed.fileno()]
        )
        with pytest.raises(RemoteError, match="refused"):
            call_with_fd(short_dir / "b.sock", "view", {})
        server.join(10)
        assert descriptors_on(handed_path) == {handed.fileno()}  # the copy with the error answer was closed


def test_the_client_checks_the_file_it_was_handed(tmp_path: Path) -> None:
    data = b"footage" * 1000
    facts = {"recording_id": 7, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    good, out = tmp_path / "good", tmp_path / "out"
    good.write_bytes(data)
    with good.open("rb") as source, out.open("wb") as target:
        stream_verified(source.fileno(), target.fileno(), facts, "out")
    assert out.read_bytes() == data

    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ViewIntegrityError, match="not a regular file") as not_a_file:
            stream_verified(read_end, write_end, facts, "out")
        assert not_a_file.value.exit_code == 3
    finally:
        os.close(read_end)
        os.close(write_end)
    short, changed = tmp_path / "short", tmp_path / "changed"
    short.write_bytes(data[:-1])
    changed.write_bytes(data[:-1] + b"!")
    for wrong, message in ((short, f"the catalog says {len(data)}"), (changed, "SHA-256")):
        with (
            wrong.open("rb") as source,
            Path(os.devnull).open("wb") as sink,
            pytest.raises(ViewIntegrityError, match=message),
        ):
            stream_verified(source.fileno(), sink.fileno(), facts, "out")


# Where a caller who owns DEST's parent could swap names for symlinks while the daemon (root) works:
# (module, function the daemon calls at that step).
STEPS = {
    "copy": {
        "taken-over": ("ingestd.evidence.delivery", "take_workspace"),
        "writing": ("ingestd.evidence.copies", "copy_proving"),
        "sums": ("ingestd.evidence.copies", "write_new"),
        "handing-over": ("ingestd.evidence.copies", "give_to"),
    },
    "export": {
        "taken-over": ("ingestd.evidence.delivery", "take_workspace"),
        "writing": ("ingestd.evidence.export", "write_bag"),
        "verifying": ("ingestd.evidence.export", "verify_tree"),
        "handing-over": ("ingestd.evidence.export", "give_to"),
    },
}


@pytest.mark.parametrize(("kind", "step"), [(kind, step) for kind, steps in STEPS.items() for step in steps])
def test_a_caller_swapping_their_directories_for_symlinks_redirects_nothing(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, step: str
) -> None:
    """The caller owns the directory DEST is made in: at each step of the daemon's work they replace
    it, and DEST.partial in it, by symlinks to a root-only directory. The daemon works only through the
    descriptor it was handed: nothing is created or chowned in the root-only directory, and what was
    written is in the caller's real directory, theirs."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the daemon's privilege is what a swapped symlink would abuse")
    recordings(world)
    approval = approve_for(world, case_id=CASE)
    caller_uid = 4242  # no such user needed: ownership is what matters
    exports, victim = tmp_path / "exports", tmp_path / "root-only"
    exports.mkdir()
    os.chown(exports, caller_uid, 0)
    victim.mkdir(mode=0o700)
    (victim / "config").write_text("root's own file")
    moved = tmp_path / "exports-moved"

    def swap() -> None:
        if exports.is_symlink():
            return
        exports.rename(moved)
        exports.symlink_to(victim)
        (moved / "out.partial").rename(moved / "moved-away")
        (moved / "out.partial").symlink_to(victim)

    module_name, function = STEPS[kind][step]
    module = importlib.import_module(module_name)
    original = getattr(module, function)

    def swapping(*args: Any, **kwargs: Any) -> Any:
        swap()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function, swapping)
    caller = Actor(user="li.clerk", uid=caller_uid, role=Role.CLERK, source=f"ctl:uid={caller_uid}")
    handler, error = (copy, CopyError) if kind == "copy" else (export, ExportError)
    with pytest.raises(error, match="moved or replaced"):  # the caller's own rename is refused...
        call(world, handler, caller, approval_id=approval["id"], dest=str(exports / "out"))
    assert sorted(p.name for p in victim.iterdir()) == ["config"]  # ...and nothing went astray
    assert [(p.stat().st_uid, p.stat().st_gid) for p in [victim, victim / "config"]] == [(0, 0), (0, 0)]
    written = moved / "moved-away"
    delivered = [written, *written.rglob("*")]
    assert len(delivered) > 3
    assert {p.lstat().st_uid for p in delivered} == {caller_uid}
    assert not any(p.is_symlink() for p in delivered)
    assert events(world, "footage.copy" if kind == "copy" else "export")[-1].outcome == "ok"


@pytest.mark.parametrize("kind", ["copy", "export"])
def test_an_approval_revoked_while_the_files_are_written_hands_nothing_over(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The approval is checked again before the files become the caller's: when it is re-checked they
    are still root's, and once it was revoked meanwhile nothing is handed over or left behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root: handing files over is a chown")
    recordings(world)
    approval = approve_for(world, case_id=CASE)
    caller_uid = 4242
    exports = tmp_path / "exports"
    exports.mkdir()
    os.chown(exports, caller_uid, 0)
    store_open = world.services.store.open
    revoked: list[int] = []

    def revoke_then_open(blake3_hex: str) -> Any:
        if not revoked:
            revoked.append(approval["id"])
            call(world, revoke, APPROVER, approval_id=approval["id"], reason="withdrawn meanwhile")
        return store_open(blake3_hex)

    owners_at_recheck: set[int] = set()
    recheck = DeliveryRequest.recheck_approval

    def observed(self: DeliveryRequest, *args: Any) -> None:
        tree = Path(f"/proc/self/fd/{self.directory}")
        owners_at_recheck.update(p.lstat().st_uid for p in [tree, *tree.rglob("*")])
        recheck(self, *args)

    monkeypatch.setattr(world.services.store, "open", revoke_then_open)
    monkeypatch.setattr(DeliveryRequest, "recheck_approval", observed)
    caller = Actor(user="li.clerk", uid=caller_uid, role=Role.CLERK, source=f"ctl:uid={caller_uid}")
    handler = copy if kind == "copy" else export
    with pytest.raises(ApprovalRefused) as refused:
        call(world, handler, caller, approval_id=approval["id"], dest=str(exports / "out"))
    assert (refused.value.code, refused.value.exit_code) == ("revoked", 14)
    assert owners_at_recheck == {0}  # not yet the caller's when the approval was checked again
    assert list(exports.iterdir()) == []  # no DEST, and the emptied DEST.partial removed
    assert events(world, "footage.copy" if kind == "copy" else "export")[-1].outcome == "refused"
