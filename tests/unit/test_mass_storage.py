"""The mass-storage camera on an already-mounted directory: identity, clock state, unsupported commands."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from drivers.base import (
    CameraIdentity,
    CameraProtocolError,
    ClockSyncState,
    DeviceInfo,
    DriverOptions,
    Unsupported,
)
from drivers.mass_storage import (
    IDENTITY_FILE,
    MassStorageCamera,
    MassStorageDriver,
    format_identity_file,
    parse_identity_file,
)
from drivers.simulator.volume import build_volume

START = datetime(2026, 11, 22, 0, 30, 15, tzinfo=UTC)


def open_directory(directory: Path, **properties: str) -> MassStorageCamera:
    camera = MassStorageDriver().open(
        DeviceInfo(port="1-1.2", properties=properties, directory=directory), DriverOptions()
    )
    assert isinstance(camera, MassStorageCamera)
    return camera


def test_identity_comes_from_the_identity_file(tmp_path: Path) -> None:
    build_volume(
        tmp_path, device_serial="0000042", officer_name="李四", count=1, size_bytes=100, start=START, seed=1
    )
    with open_directory(tmp_path, ID_SERIAL_SHORT="0000042") as camera:
        identity = camera.identify()
    assert identity == CameraIdentity(
        device_serial="0000042",
        officer_no="000001",
        officer_name="李四",
        unit_no="110105000000",
        unit_name="",
        source="identity-file",
    )
    assert camera.name == f"msc:{tmp_path}"


def test_identity_falls_back_to_the_usb_serial(tmp_path: Path) -> None:
    camera = open_directory(tmp_path, ID_SERIAL_SHORT="ZFY123456789")
    identity = camera.identify()
    assert (identity.device_serial, identity.source, identity.officer_name) == (
        "ZFY123456789",
        "usb-serial",
        "",
    )


def test_no_identity_at_all_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match=r"identify: no ZFYINFO\.TXT on the volume and no ID_SERIAL_SHORT"):
        open_directory(tmp_path).identify()


def test_serial_mismatch_is_logged_and_the_file_wins(tmp_path: Path) -> None:
    build_volume(
        tmp_path, device_serial="0000042", officer_name="李四", count=0, size_bytes=0, start=START, seed=1
    )
    with capture_logs() as logs:
        identity = open_directory(tmp_path, ID_SERIAL_SHORT="9999999").identify()
    assert identity.device_serial == "0000042"
    assert logs == [
        {
            "event": "camera.serial_mismatch",
            "log_level": "warning",
            "device": f"msc:{tmp_path}",
            "identity_file": "0000042",
            "usb_serial": "9999999",
        }
    ]


def test_identity_file_name_is_matched_case_insensitively_and_never_through_a_link(tmp_path: Path) -> None:
    identity = CameraIdentity("0000007", "000007", "王五", "110105000000", "朝阳分局", "identity-file")
    (tmp_path / "zfyinfo.txt").write_bytes(format_identity_file(identity))
    assert open_directory(tmp_path).identify() == identity
    (tmp_path / "zfyinfo.txt").unlink()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_bytes(format_identity_file(identity))
    (tmp_path / IDENTITY_FILE).symlink_to(outside)
    with pytest.raises(CameraProtocolError, match=IDENTITY_FILE):
        open_directory(tmp_path).identify()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"cSerial=0000001\nuserName=" + ("张" * 17).encode("gbk") + b"\n", "userName exceeds 32 bytes"),
        (b"cSerial=00000011\n", "cSerial exceeds 7 bytes"),
        (b"cSerial=0000001\npassword=x\n", "line 2: unknown entry 'password'"),
        (b"userNo=000001\n", "has no cSerial"),
        (b"cSerial=00\x1b01\n", "cSerial exceeds 7 bytes or has controls"),
        (b"\xff\xff\xff", "neither UTF-8 nor GBK"),
    ],
)
def test_bad_identity_files_are_refused(content: bytes, problem: str) -> None:
    with pytest.raises(CameraProtocolError) as caught:
        parse_identity_file(content, "msc:x")
    assert problem in str(caught.value)


def test_identity_file_round_trips_through_gbk() -> None:
    identity = CameraIdentity(
        "0000001", "012345", "张三", "110105000000", "北京市公安局朝阳分局", "identity-file"
    )
    data = format_identity_file(identity)
    assert "张三".encode("gbk") in data
    assert parse_identity_file(data, "msc:x") == identity
    utf8 = data.decode("gbk").encode("utf-8")
    assert parse_identity_file(utf8, "msc:x") == identity


def test_clock_is_reported_unsupported_and_other_commands_raise(tmp_path: Path) -> None:
    camera = open_directory(tmp_path)
    reading = camera.sync_clock()
    assert reading.state is ClockSyncState.UNSUPPORTED
    assert (reading.offset_s, reading.round_trip_s, reading.residual_s) == (None, None, None)
    for command in (camera.read_clock, camera.battery, camera.resolution):
        with pytest.raises(Unsupported, match="no control channel"):
            command()
    with pytest.raises(Unsupported, match="set_clock"):
        camera.set_clock(START)
    camera.enter_mass_storage()  # already mass storage: accepted, no effect


def test_storage_reports_the_volume_filesystem(tmp_path: Path) -> None:
    info = open_directory(tmp_path).storage()
    usage = os.statvfs(tmp_path)
    assert info.total_bytes == usage.f_blocks * usage.f_frsize
    assert 0 < info.free_bytes <= info.total_bytes


def test_directory_volume_is_yielded_as_is_and_not_mounted_twice(tmp_path: Path) -> None:
    camera = open_directory(tmp_path)
    with camera.mounted_volume() as volume:
        assert volume == tmp_path
        with pytest.raises(Unsupported, match="already mounted"), camera.mounted_volume():
            pass
    with camera.mounted_volume() as again:
        assert again == tmp_path


def test_device_without_a_volume_is_refused() -> None:
    with pytest.raises(Unsupported, match="no block device and no mounted directory"):
        MassStorageDriver().open(DeviceInfo(port="1-1", properties={}), DriverOptions())
