"""`.ingestd-dock.json` is a claim about devices: honoured only when the station wrote it, never from the
docked medium, and only for devices that could be a docked camera. Real files with real owners and
modes, a real pty, real loop devices and a real mount."""

from __future__ import annotations

import json
import os
import pty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.base import DeviceInfo
from ingestd.docking.folders import DESCRIPTOR, device_for
from tests.support.loopdev import attached, make_image, mounted, require_root_tools, root_filesystem_source


@pytest.fixture
def terminal() -> Iterator[str]:
    primary, secondary = pty.openpty()
    try:
        yield os.ttyname(secondary)
    finally:
        os.close(secondary)
        os.close(primary)


def volume(tmp_path: Path, descriptor: dict[str, Any], *, mode: int = 0o644, uid: int | None = None) -> Path:
    directory = tmp_path / "docks" / "cam"
    directory.mkdir(parents=True)
    path = directory / DESCRIPTOR
    path.write_text(json.dumps(descriptor), encoding="utf-8")
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return directory


def docked(directory: Path) -> tuple[DeviceInfo, list[str]]:
    with capture_logs() as logs:
        device = device_for(directory)
    return device, [str(e.get("error")) for e in logs if e["event"] == "dock_descriptor_ignored"]


def assert_plain(device: DeviceInfo, directory: Path) -> None:
    """Docked as the plain directory it is: no tty, no block device, no claimed properties."""
    assert (device.tty, device.block, device.directory) == (None, None, directory)
    assert device.properties == {"SUBSYSTEM": "folder", "FOLDER": str(directory)}


def test_the_stations_own_descriptor_is_honoured(tmp_path: Path, terminal: str) -> None:
    directory = volume(tmp_path, {"tty": terminal, "properties": {"ZFY_TRANSPORT": "serial"}})
    device, ignored = docked(directory)
    assert ignored == []
    assert device.tty == terminal
    assert device.properties["ZFY_TRANSPORT"] == "serial"


@pytest.mark.parametrize(
    ("mode", "uid", "reason"),
    [(0o644, 43210, "owned by uid 43210"), (0o664, None, "mode 0664"), (0o646, None, "mode 0646")],
)
def test_a_descriptor_someone_else_could_write_is_ignored(
    tmp_path: Path, terminal: str, mode: int, uid: int | None, reason: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file another owner")
    directory = volume(
        tmp_path, {"tty": terminal, "properties": {"ZFY_TRANSPORT": "serial"}}, mode=mode, uid=uid
    )
    device, [why] = docked(directory)
    assert reason in why
    assert_plain(device, directory)


def test_a_descriptor_on_the_docked_medium_is_ignored(tmp_path: Path, terminal: str) -> None:
    require_root_tools("mkfs.ext4")
    image = make_image(tmp_path / "card.img", 8)
    card = tmp_path / "docks" / "card"
    with attached(image) as device_node, mounted(device_node, card):
        (card / DESCRIPTOR).write_text(json.dumps({"tty": terminal}), encoding="utf-8")  # root's, 0644
        device, [why] = docked(card)
    assert "on the docked medium" in why
    assert_plain(device, card)


def test_device_paths_must_be_what_a_docked_camera_could_be(tmp_path: Path) -> None:
    claims: list[tuple[dict[str, Any], str]] = [
        ({"tty": "/dev/null"}, "is not a terminal"),
        ({"tty": str(tmp_path)}, "not a device node under /dev"),
        ({"block": "/dev/null"}, "is not a block device"),
        ({"properties": {"SUBSYSTEM": "block"}}, "may not set SUBSYSTEM"),
    ]
    root_source = root_filesystem_source()
    if root_source.startswith("/dev/"):
        claims.append(({"block": root_source}, "in use by the station"))
    for number, (claim, reason) in enumerate(claims):
        directory = volume(tmp_path / str(number), claim)
        device, [why] = docked(directory)
        assert reason in why, claim
        assert_plain(device, directory)


def test_a_block_device_is_honoured_only_while_nothing_has_it_mounted(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4")
    image = make_image(tmp_path / "camera.img", 8)
    with attached(image) as block:
        free = volume(tmp_path / "free", {"block": block})
        device, ignored = docked(free)
        assert (ignored, device.block, device.directory) == ([], block, None)
        with mounted(block, tmp_path / "elsewhere"):
            busy = volume(tmp_path / "busy", {"block": block})
            device, [why] = docked(busy)
        assert "in use by the station" in why
        assert_plain(device, busy)


def test_storage_later_means_the_directory_is_not_the_volume(tmp_path: Path, terminal: str) -> None:
    # A camera that shows its storage only after SetMSDC: the directory (the station's own) must never be
    # taken for its card, else the session would "ingest" and wipe nothing.
    device, ignored = docked(volume(tmp_path, {"tty": terminal, "storage": "later"}))
    assert ignored == []
    assert (device.tty, device.block, device.directory) == (terminal, None, None)


def test_an_unknown_storage_value_makes_the_descriptor_ignored(tmp_path: Path, terminal: str) -> None:
    directory = volume(tmp_path, {"tty": terminal, "storage": "soon"})
    device, ignored = docked(directory)
    assert ignored == ["storage is 'soon', not \"later\""]
    assert_plain(device, directory)
