"""What every camera link guarantees (drivers/base.py `Camera`), run against each driver: the serial
driver talking to the simulated camera over a real pty, its volume a loop-attached card image, and the
mass-storage driver on a loop-attached card image. A link without a control channel says `Unsupported`
for what only a control channel can do; it never pretends."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.base import (
    Battery,
    Camera,
    CameraIdentity,
    ClockSyncState,
    DeletionOutcome,
    DeviceGone,
    DeviceInfo,
    DriverOptions,
    OriginalFile,
    StorageInfo,
    Unsupported,
    closing_camera,
)
from drivers.mass_storage import MassStorageDriver
from drivers.scan import scan_volume
from drivers.serial_camera import SerialDriver
from drivers.simulator import PtyServer, SimulatedCamera
from drivers.simulator.volume import build_volume, make_image
from tests.support.loopdev import attach_held, mount_options, mounted, require_root_tools

pytestmark = pytest.mark.root

IDENTITY = CameraIdentity("0000007", "000123", "张三", "110105000000", "朝阳分局")
PASSWORD = "123456"
DRIFT_S = 3.5
START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


@dataclass
class Link:
    camera: Camera
    card: dict[str, bytes]  # the recordings on the card: path relative to the volume root -> bytes
    image: Path
    control_channel: bool
    unplug: Callable[[], None]


def card_image(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    source = tmp_path / "card"
    made = build_volume(
        source,
        device_serial=IDENTITY.device_serial,
        officer_no=IDENTITY.officer_no,
        officer_name=IDENTITY.officer_name,
        unit_no=IDENTITY.unit_no,
        unit_name=IDENTITY.unit_name,
        count=3,
        size_bytes=20_000,
        start=START,
        seed=7,
    )
    card = {str(path.relative_to(source)): path.read_bytes() for path in made}
    return make_image(source, tmp_path / "card.img"), card


@pytest.fixture(params=["serial", "mass-storage"])
def link(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Link]:
    require_root_tools("mkfs.ext4", "blkid")
    image, card = card_image(tmp_path)
    with contextlib.ExitStack() as held:
        block = attach_held(image, held)
        options = DriverOptions(password=PASSWORD, filesystems=("ext4",))
        if request.param == "serial":
            sim = SimulatedCamera(
                IDENTITY,
                password=PASSWORD,
                drift_s=DRIFT_S,
                battery=Battery(percent=64, charging=False),
                storage=StorageInfo(total_bytes=32 * 2**30, free_bytes=5 * 2**30),
            )
            server = held.enter_context(PtyServer(sim, seed=7))
            device = DeviceInfo(port="usb1/1-1", properties={}, tty=server.slave_path, block=block)
            camera = held.enter_context(closing_camera(SerialDriver().open(device, options)))
            yield Link(camera, card, image, control_channel=True, unplug=server.stop)
        else:
            device = DeviceInfo(
                port="usb1/1-2", properties={"ID_SERIAL_SHORT": IDENTITY.device_serial}, block=block
            )
            camera = held.enter_context(closing_camera(MassStorageDriver().open(device, options)))

            def unplug() -> None:
                subprocess.run(["losetup", "--detach", block], check=True, capture_output=True)

            yield Link(camera, card, image, control_channel=False, unplug=unplug)


def test_identify_reports_the_cameras_identity(link: Link) -> None:
    found = link.camera.identify()
    assert (found.device_serial, found.officer_no, found.officer_name, found.unit_no, found.unit_name) == (
        IDENTITY.device_serial,
        IDENTITY.officer_no,
        IDENTITY.officer_name,
        IDENTITY.unit_no,
        IDENTITY.unit_name,
    )


def test_the_clock_is_measured_and_set_or_said_to_be_unsupported(link: Link) -> None:
    if link.control_channel:
        sample = link.camera.read_clock()
        assert sample.camera_time.tzinfo is UTC
        assert sample.sent_at <= sample.received_at
        reading = link.camera.sync_clock(samples=3)
        assert reading.state is ClockSyncState.SYNCED
        assert reading.offset_s is not None
        assert abs(reading.offset_s - DRIFT_S) < 0.1
        assert reading.residual_s is not None
        assert abs(reading.residual_s) < 0.1
    else:
        with pytest.raises(Unsupported, match=r"read_clock"):
            link.camera.read_clock()
        with pytest.raises(Unsupported, match=r"set_clock"):
            link.camera.set_clock(datetime.now(UTC) - timedelta(hours=1))
        reading = link.camera.sync_clock(samples=3)
        assert reading.state is ClockSyncState.UNSUPPORTED
        assert reading.offset_s is None


def test_battery_is_read_or_said_to_be_unsupported_and_storage_is_read(link: Link) -> None:
    if link.control_channel:
        assert link.camera.battery() == Battery(percent=64, charging=False)
    else:
        with pytest.raises(Unsupported, match=r"battery"):
            link.camera.battery()
    storage = link.camera.storage()
    assert 0 <= storage.free_bytes <= storage.total_bytes
    assert storage.total_bytes > 0


def test_the_volume_lists_and_opens_every_recording_read_only_and_is_unmounted_after(link: Link) -> None:
    link.camera.identify()  # as a session does first: whatever it mounted is the volume used below
    with link.camera.mounted_volume() as volume:
        assert "ro" in mount_options(volume)
        listed = scan_volume(volume, extensions=DriverOptions().extensions)
        assert sorted(recording.name for recording in listed.recordings) == sorted(link.card)
        for name, data in link.card.items():
            assert (volume / name).read_bytes() == data
        with pytest.raises(OSError, match="Read-only") as refused:
            (volume / "written-by-the-station").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS
    assert not volume.exists()  # unmounted, and its private directory gone


def test_delete_removes_a_file_still_as_read_refuses_one_that_is_not_and_leaves_it_read_only(
    link: Link, tmp_path: Path
) -> None:
    first, second, kept = sorted(link.card)
    with link.camera.mounted_volume() as volume:
        proven = OriginalFile.of(Path(first), (volume / first).stat())
        info = (volume / second).stat()
        other = OriginalFile(Path(second), info.st_dev, info.st_ino, info.st_size + 1, info.st_mtime_ns)
        outcomes = link.camera.delete_originals(volume, [proven, other])
        assert [d.outcome for d in outcomes] == [DeletionOutcome.DELETED, DeletionOutcome.REFUSED]
        assert "ro" in mount_options(volume)  # writable for the deletion only
    with mounted(link.image, tmp_path / "after", "ro,noload") as card:
        assert not (card / first).exists()
        assert (card / second).read_bytes() == link.card[second]
        assert (card / kept).read_bytes() == link.card[kept]


def test_an_unplugged_camera_is_not_present_and_its_next_call_is_device_gone(link: Link) -> None:
    assert link.camera.present()
    link.unplug()
    assert not link.camera.present()
    with pytest.raises(DeviceGone, match=r"identify|GetZFYInfo"):
        link.camera.identify()
