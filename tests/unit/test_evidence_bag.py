"""Writing a bag from an in-memory store and checking it offline, including `ingestctl verify-export`."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import bagit
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ingestd.ctl.evidence import verify_export
from ingestd.evidence import layout
from ingestd.evidence.bag import PayloadItem, write_bag
from ingestd.evidence.errors import ExportIntegrityError
from ingestd.evidence.verify_bag import verify_bag
from store.objects import MemoryObjectStore
from store.signing import Signer
from tests.support.evidence import forge_bag

NOW = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)


def make_bag(
    tmp_path: Path, signer: Signer, store: MemoryObjectStore | None = None
) -> tuple[Path, MemoryObjectStore]:
    store = store or MemoryObjectStore()
    items = []
    for n, data in enumerate([b"a" * 5000, b"\x00\xff" * 3000, b""], 1):
        put = store.put(io.BytesIO(data))
        items.append(
            PayloadItem(
                name=f"张三_案1_{n}_r{n}.mp4",
                recording_id=n,
                blake3=put.blake3,
                sha256=put.sha256,
                size=put.size,
                facts={"n": n},
            )
        )
    target = tmp_path / "bag"
    target.mkdir()
    with held(target) as fd:
        write_bag(fd, items, [("Approval-Id", "1"), ("Event", "line\nbreak")], signer, store.open, now=NOW)
    return target, store


@contextlib.contextmanager
def held(directory: Path) -> Iterator[int]:
    """The directory open, as the daemon holds the one the caller handed over."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def pem(signer: Signer, path: Path) -> Path:
    path.write_bytes(
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def kinds(path: Path) -> set[str]:
    return {p.kind for p in verify_bag(path).problems}


def test_a_written_bag_verifies_here_with_bagit_and_on_the_command_line(
    tmp_path: Path, signer: Signer
) -> None:
    bag, _ = make_bag(tmp_path, signer)
    assert verify_bag(bag, trusted_keys=[signer.public_key]).valid
    bagit.Bag(str(bag)).validate()
    assert bagit.Bag(str(bag)).info["Event"] == "line break"  # a value stays one line
    runner = CliRunner()
    result = runner.invoke(verify_export, [str(bag), "--public-key", str(pem(signer, tmp_path / "k.pem"))])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("valid")
    as_json = json.loads(runner.invoke(verify_export, [str(bag), "--json"]).output)
    assert as_json["consistent"] is True
    assert as_json["valid"] is False  # no station key given: the signer is not verified
    assert as_json["payload_files"] == 3
    assert as_json["key_id"] == signer.key_id


EXIT_SIGNER_UNVERIFIED = 17


def test_a_forged_bag_resigned_with_a_new_key_is_never_called_valid_without_the_station_key(
    tmp_path: Path, signer: Signer
) -> None:
    bag, _ = make_bag(tmp_path, signer)
    victim = sorted((bag / "data").iterdir())[0]
    forge_bag(bag, Signer(Ed25519PrivateKey.generate()), {f"data/{victim.name}": b"b" * 5000})
    runner = CliRunner()
    unpinned = runner.invoke(verify_export, [str(bag)])
    assert unpinned.exit_code == EXIT_SIGNER_UNVERIFIED, unpinned.output
    assert "valid" not in unpinned.output.replace("unverified", "")
    assert "signer unverified" in unpinned.output
    as_json = json.loads(runner.invoke(verify_export, [str(bag), "--json"]).output)
    assert (as_json["consistent"], as_json["signer_verified"], as_json["valid"]) == (True, False, False)
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(pem(signer, tmp_path / "k.pem").read_bytes())
    against_station = runner.invoke(verify_export, [str(bag), "--trusted-keys", str(trusted)])
    assert against_station.exit_code == 3, against_station.output
    assert "key-not-pinned" in against_station.output


def test_a_trusted_keys_file_may_hold_several_station_keys(tmp_path: Path, signer: Signer) -> None:
    bag, _ = make_bag(tmp_path, signer)
    other = Signer(Ed25519PrivateKey.generate())
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(
        pem(other, tmp_path / "o.pem").read_bytes() + pem(signer, tmp_path / "k.pem").read_bytes()
    )
    result = CliRunner().invoke(verify_export, [str(bag), "--trusted-keys", str(trusted), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["valid"], report["signer_verified"], report["pinned_key_id"]) == (
        True,
        True,
        signer.key_id,
    )


def test_another_station_key_is_refused_when_pinned(tmp_path: Path, signer: Signer) -> None:
    bag, _ = make_bag(tmp_path, signer)
    other = Signer(Ed25519PrivateKey.generate())
    result = CliRunner().invoke(
        verify_export, [str(bag), "--json", "--public-key", str(pem(other, tmp_path / "o.pem"))]
    )
    assert result.exit_code == 3
    assert {p["kind"] for p in json.loads(result.output)["problems"]} == {"key-not-pinned"}


def test_missing_extra_and_escaping_files_are_each_listed(tmp_path: Path, signer: Signer) -> None:
    bag, _ = make_bag(tmp_path, signer)
    victim = sorted((bag / "data").iterdir())[0]
    victim.unlink()
    (bag / "data" / "extra.mp4").write_bytes(b"x")
    outside = tmp_path / "secret"
    outside.write_bytes(b"not yours")
    (bag / "data" / "link.mp4").symlink_to(outside)
    found = verify_bag(bag)
    assert {"payload-missing", "payload-unexpected", "unsafe-path", "bagit", "oxum"} <= {
        p.kind for p in found.problems
    }
    assert any(p.subject == "data/link.mp4" and p.kind == "unsafe-path" for p in found.problems)
    assert not bagit.Bag(str(bag)).is_valid()


def test_a_manifest_path_out_of_the_bag_is_reported_and_not_read(tmp_path: Path, signer: Signer) -> None:
    bag, _ = make_bag(tmp_path, signer)
    manifest = bag / layout.MANIFEST_BLAKE3
    manifest.chmod(0o640)
    with manifest.open("a", encoding="utf-8") as out:
        out.write(f"{'0' * 64}  ../../etc/passwd\n")
    problems = verify_bag(bag).problems
    assert any(p.kind == "unsafe-path" and "etc/passwd" in p.detail for p in problems)
    assert any(p.kind == "tag-manifest" and p.subject == layout.MANIFEST_BLAKE3 for p in problems)


def test_a_missing_signature_or_key_is_a_problem(tmp_path: Path, signer: Signer) -> None:
    bag, _ = make_bag(tmp_path, signer)
    (bag / layout.SIGNATURE).unlink()
    assert kinds(bag) == {"signature"}
    (bag / layout.PUBLIC_KEY).unlink()
    assert {"public-key", "tag-manifest", "signature"} <= kinds(bag)


def test_not_a_bag(tmp_path: Path) -> None:
    assert kinds(tmp_path) == {"not-a-bag"}
    result = CliRunner().invoke(verify_export, [str(tmp_path / "nowhere")])
    assert result.exit_code == 2  # click: the path must exist
    result = CliRunner().invoke(verify_export, [str(tmp_path), "--public-key", os.devnull])
    assert result.exit_code == 2
    assert "public-key" in result.output


def test_store_bytes_that_differ_from_the_catalog_stop_the_bag(tmp_path: Path, signer: Signer) -> None:
    store = MemoryObjectStore()
    put = store.put(io.BytesIO(b"evidence" * 100))
    store.damage(put.blake3, data=b"evidencE" * 100)
    target = tmp_path / "bag"
    target.mkdir()
    item = PayloadItem(name="a_r1.mp4", recording_id=1, blake3=put.blake3, sha256=put.sha256, size=put.size)
    with pytest.raises(ExportIntegrityError, match="recording 1"), held(target) as fd:
        write_bag(fd, [item], [], signer, store.open, now=NOW)
    assert not (target / layout.SIGNATURE).exists()


def test_names_must_be_unique_ignoring_case(tmp_path: Path, signer: Signer) -> None:
    item = PayloadItem(name="A_r1.mp4", recording_id=1, blake3="0" * 64, sha256="0" * 64, size=0)
    twin = PayloadItem(name="a_r1.mp4", recording_id=2, blake3="0" * 64, sha256="0" * 64, size=0)
    with pytest.raises(ValueError, match="unique"), held(tmp_path) as fd:
        write_bag(fd, [item, twin], [], signer, MemoryObjectStore().open, now=NOW)


def test_file_names_in_a_bag_are_printed_literally_never_as_markup(tmp_path: Path, signer: Signer) -> None:
    bag, _ = make_bag(tmp_path, signer)
    (bag / "data" / "x[").mkdir()  # a camera's folder "x[" holding "red].mp4"
    (bag / "data" / "x[" / "red].mp4").write_bytes(b"x")
    (bag / "data" / "[bold]y.mp4").write_bytes(b"y")
    result = CliRunner().invoke(verify_export, [str(bag)], terminal_width=400)
    assert result.exit_code == 3, result.output
    assert "payload-unexpected data/x[/red].mp4:" in result.output
    assert "payload-unexpected data/[bold]y.mp4:" in result.output
