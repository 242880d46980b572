"""The serial driver against the simulated camera over real ptys: commands, faults, clock, the CLI."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers import protocol as p
from drivers.base import (
    AuthenticationFailed,
    Battery,
    CameraIdentity,
    CameraProtocolError,
    ClockSyncState,
    DeviceGone,
    DeviceInfo,
    DriverError,
    DriverOptions,
    DriverTimeout,
    Resolution,
    StorageInfo,
    Unsupported,
)
from drivers.serial_camera import SerialCamera, SerialDriver
from drivers.simulator import ALWAYS, Faults, PtyServer, SimulatedCamera, throttle
from tests.support.loopdev import detach_if_backed_by, require_root_tools

pytestmark = pytest.mark.timeout(15)

PASSWORD = "123456"
IDENTITY = CameraIdentity("0000001", "000123", "张三", "110000000000", "北京市公安局")
TIMEOUT_S = 0.2
RETRIES = 2
CLOCK_TOLERANCE_S = 0.020
REPO = Path(__file__).resolve().parents[2]


def options(password: str = PASSWORD, **extra: Any) -> DriverOptions:
    return DriverOptions(password=password, extra={"timeout_s": TIMEOUT_S, "retries": RETRIES, **extra})


def device(server: PtyServer, **kwargs: Any) -> DeviceInfo:
    return DeviceInfo(port="usb1/1-1", properties={}, tty=server.slave_path, **kwargs)


@pytest.fixture
def sim() -> SimulatedCamera:
    return SimulatedCamera(
        IDENTITY,
        password=PASSWORD,
        drift_s=3.5,
        battery=Battery(percent=64, charging=False),
        storage=StorageInfo(total_bytes=32 * 2**30, free_bytes=5 * 2**30),
        resolution=Resolution(2304, 1296),
    )


@pytest.fixture
def server(sim: SimulatedCamera) -> Iterator[PtyServer]:
    with PtyServer(sim, seed=7) as running:
        yield running


@pytest.fixture
def camera(server: PtyServer) -> Iterator[SerialCamera]:
    opened = SerialDriver().open(device(server), options())
    try:
        yield opened
    finally:
        opened.close()


def wait_for(condition: Any, within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def timed(call: Any) -> float:
    """Seconds the call took to raise."""
    started = time.monotonic()
    with pytest.raises(DriverError):
        call()
    return time.monotonic() - started


# Every command


def test_every_command_round_trips(camera: SerialCamera, sim: SimulatedCamera) -> None:
    assert sim.authenticated
    assert camera.identify() == IDENTITY
    assert camera.id_code() == "0000001"
    assert camera.battery() == Battery(percent=64, charging=False)
    assert camera.storage() == StorageInfo(total_bytes=32 * 2**30, free_bytes=5 * 2**30)
    assert camera.resolution() == Resolution(2304, 1296)
    sample = camera.read_clock()
    assert sample.camera_time.tzinfo is UTC
    assert sample.sent_at <= sample.received_at
    assert abs(sample.offset_s - 3.5) < 0.1  # one sample; accuracy is tested with sync_clock below

    target = datetime.now(UTC) - timedelta(hours=1)
    camera.set_clock(target)
    assert abs(sim.drift_s + 3600) < 0.05

    renamed = CameraIdentity("0000001", "000456", "李四", "110105000000", "北京市公安局朝阳分局")
    camera.write_identity(renamed)
    assert sim.identity == renamed
    assert camera.identify() == renamed

    camera.enter_mass_storage()
    assert sim.msc_mode
    camera.enter_mass_storage()  # a repeat is harmless: MSC_MODE counts as done
    with pytest.raises(CameraProtocolError, match=r"serial:.*: ReadDeviceBatteryDumpEnergy: .*mass-storage"):
        camera.battery()


def test_gbk_fields_round_trip_over_the_wire(camera: SerialCamera, sim: SimulatedCamera) -> None:
    longest = CameraIdentity("0000009", "999999", "欧阳" * 8, "123456789012", "北京市公安局" * 2 + "交通管理")
    camera.write_identity(longest)
    assert camera.identify() == longest
    assert sim.identity.officer_name == "欧阳" * 8


def test_over_long_or_non_gbk_identity_is_refused_before_sending(
    camera: SerialCamera, sim: SimulatedCamera
) -> None:
    before = sim.requests
    with pytest.raises(p.FieldError, match=r"userName: .* is 34 bytes in GBK; the field holds 32"):
        camera.write_identity(CameraIdentity("0000001", "000123", "张" * 17, "110000000000", "x"))
    with pytest.raises(p.FieldError, match="unitName: '😀' cannot be encoded in GBK"):
        camera.write_identity(CameraIdentity("0000001", "000123", "张三", "110000000000", "局😀"))
    assert sim.requests == before
    assert sim.identity == IDENTITY


# Authentication


def test_wrong_password_is_authentication_failed(server: PtyServer, sim: SimulatedCamera) -> None:
    with pytest.raises(AuthenticationFailed, match=r"^serial:/dev/.*: Init_Device: password refused"):
        SerialDriver().open(device(server), options(password="654321"))
    assert not sim.authenticated
    assert sim.password_failures == 1  # refused once, never resent


def test_repeated_wrong_passwords_lock_the_camera(server: PtyServer) -> None:
    for _ in range(3):
        with pytest.raises(AuthenticationFailed, match="password refused"):
            SerialDriver().open(device(server), options(password="000000"))
    with pytest.raises(AuthenticationFailed, match="locked"):
        SerialDriver().open(device(server), options())


def test_misconfigured_password_is_refused_without_contacting_the_camera(
    server: PtyServer, sim: SimulatedCamera
) -> None:
    with pytest.raises(AuthenticationFailed, match="Init_Device: configured password must be 6"):
        SerialDriver().open(device(server), options(password=""))
    assert sim.requests == 0


def test_command_before_authentication_logs_in_once_and_continues(
    server: PtyServer, sim: SimulatedCamera
) -> None:
    with SerialCamera(device(server), options()) as camera:
        assert camera.battery().percent == 64
        assert sim.authenticated
    wait_for(lambda: not sim.authenticated)  # closing the tty ended the camera's session
    with SerialCamera(device(server), options(password="999999")) as camera:
        sim_failures = sim.password_failures
        with pytest.raises(AuthenticationFailed, match="Init_Device: password refused"):
            camera.battery()
        assert sim.password_failures == sim_failures + 1


# Faults the protocol survives


@pytest.mark.parametrize(
    "faults",
    [
        Faults(garbage=True),
        Faults(slow_ms=50),
        Faults(bad_crc=1),
        Faults(truncate=1),
        Faults(silence=1),
        Faults(busy=2),
        Faults(garbage=True, bad_crc=1, busy=1),
    ],
    ids=["garbage", "slow-within-deadline", "one-bad-crc", "one-truncated", "one-silent", "busy", "mixed"],
)
def test_transient_faults_are_survived(camera: SerialCamera, server: PtyServer, faults: Faults) -> None:
    server.faults = faults
    assert camera.identify() == IDENTITY
    assert camera.battery() == Battery(percent=64, charging=False)
    assert camera.storage().free_bytes == 5 * 2**30
    assert camera.resolution() == Resolution(2304, 1296)
    assert abs(camera.read_clock().offset_s - 3.5) < 0.2


def test_one_bad_crc_costs_exactly_one_resend(
    camera: SerialCamera, server: PtyServer, sim: SimulatedCamera
) -> None:
    server.faults = Faults(bad_crc=1)
    before = sim.requests
    started = time.monotonic()
    assert camera.battery().percent == 64
    assert sim.requests - before == 2
    assert time.monotonic() - started < TIMEOUT_S  # resent at once, not after the deadline


# Faults that must fail, fast and with the specific error


def test_corrupt_replies_are_a_protocol_error(
    camera: SerialCamera, server: PtyServer, sim: SimulatedCamera
) -> None:
    server.faults = Faults(bad_crc=ALWAYS)
    before = sim.requests
    with pytest.raises(CameraProtocolError, match="ReadDeviceBatteryDumpEnergy: reply failed its CRC check"):
        camera.battery()
    assert sim.requests - before == 1 + RETRIES


def test_truncated_replies_are_a_protocol_error(camera: SerialCamera, server: PtyServer) -> None:
    server.faults = Faults(truncate=ALWAYS)
    with pytest.raises(CameraProtocolError, match="GetZFYInfo: truncated reply"):
        camera.identify()


def test_silence_is_a_timeout_within_the_retry_budget(
    camera: SerialCamera, server: PtyServer, sim: SimulatedCamera
) -> None:
    server.faults = Faults(silence=ALWAYS)
    before = server.received
    started = time.monotonic()
    with pytest.raises(DriverTimeout, match=r"ReadStorage: no reply within 0.20 s"):
        camera.storage()
    elapsed = time.monotonic() - started
    assert (1 + RETRIES) * TIMEOUT_S <= elapsed < (1 + RETRIES) * TIMEOUT_S + 0.3
    assert server.received - before == 1 + RETRIES
    assert sim.requests == 1  # only Init_Device ever reached the camera


def test_replies_slower_than_the_deadline_are_a_timeout(camera: SerialCamera, server: PtyServer) -> None:
    server.faults = Faults(slow_ms=int(TIMEOUT_S * 1000) + 150)
    with pytest.raises(DriverTimeout, match="ReadDeviceResolution: no reply"):
        camera.resolution()


def test_a_camera_that_stays_busy_is_a_timeout(camera: SerialCamera, server: PtyServer) -> None:
    server.faults = Faults(busy=ALWAYS)
    with pytest.raises(DriverTimeout, match="GetIDCode: device stayed busy"):
        camera.id_code()


def test_garbage_with_silence_still_times_out(camera: SerialCamera, server: PtyServer) -> None:
    server.faults = Faults(garbage=True, silence=ALWAYS)
    assert timed(camera.battery) < (1 + RETRIES) * TIMEOUT_S + 0.3


def test_disconnect_mid_command_is_device_gone_at_once(server: PtyServer, sim: SimulatedCamera) -> None:
    server.faults = Faults(disconnect_after=2)  # Init_Device and one more, then hang up on the third
    patient = options(timeout_s=2.0)
    with SerialDriver().open(device(server), patient) as camera:
        assert camera.battery().percent == 64
        started = time.monotonic()
        with pytest.raises(DeviceGone, match=r"^serial:/dev/.*: GetZFYInfo: tty "):
            camera.identify()
        assert time.monotonic() - started < 1.0  # the hangup, not the 2 s deadline
        assert server.disconnected.wait(1.0)
    assert sim.requests == 2


def test_tty_closed_between_commands_is_device_gone(camera: SerialCamera, server: PtyServer) -> None:
    assert camera.present()
    server.stop()
    assert not camera.present()  # the pty node goes with its master
    with pytest.raises(DeviceGone, match="ReadStorage"):
        camera.storage()


def test_commands_after_close_are_device_gone(camera: SerialCamera) -> None:
    camera.close()
    camera.close()
    with pytest.raises(DeviceGone, match="control channel is closed"):
        camera.battery()


def test_missing_tty_is_device_gone_and_no_tty_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DeviceGone, match="open: cannot open the tty"):
        SerialDriver().open(DeviceInfo("usb1/1-1", {}, tty=str(tmp_path / "ttyACM9")), options())
    with pytest.raises(Unsupported, match="no control tty"):
        SerialDriver().open(DeviceInfo("usb1/1-1", {}, block="/dev/sdz1"), options())


def test_a_second_session_on_the_same_tty_is_refused(camera: SerialCamera, server: PtyServer) -> None:
    with pytest.raises(DriverError, match="cannot open the tty") as refused:
        SerialDriver().open(device(server), options())
    assert not isinstance(refused.value, DeviceGone)  # the camera is still there
    assert camera.battery().percent == 64


# A camera that lies


class LyingCamera(SimulatedCamera):
    """Answers chosen commands with chosen raw data, the way a buggy firmware would."""

    def __init__(self, lies: dict[p.Command, tuple[int, bytes]]) -> None:
        super().__init__(IDENTITY, password=PASSWORD)
        self.lies = lies

    def handle(self, frame: p.Frame) -> bytes:
        lie = next((lie for command, lie in self.lies.items() if command == frame.code), None)
        if lie is None:
            return super().handle(frame)
        code, payload = lie
        return p.encode_frame(frame.seq, code, payload)


@pytest.mark.parametrize(
    ("command", "lie", "error", "message"),
    [
        (
            p.Command.GET_ZFY_INFO,
            (0x83, b"\x00" + bytes(13) + b"\xff\x80" + bytes(74)),
            CameraProtocolError,
            "GetZFYInfo: bad reply data: userName: bytes ff80 are not valid GBK",
        ),
        (p.Command.READ_BATTERY, (0x89, b"\x00\x96\x00"), CameraProtocolError, "battery 150% is outside"),
        (
            p.Command.READ_BATTERY,
            (0x88, b"\x00\x50\x00"),
            CameraProtocolError,
            "does not answer command 0x09",
        ),
        (p.Command.READ_STORAGE, (0x8A, b"\x00\x01"), CameraProtocolError, "storage is 1 bytes; expected 16"),
        (p.Command.READ_STORAGE, (0x8A, b"\x03"), Unsupported, "ReadStorage: device does not support it"),
        (p.Command.READ_TIME, (0x85, b"\x42"), CameraProtocolError, "unknown status 0x42"),
    ],
    ids=["bad-gbk", "battery-150", "wrong-code", "short-storage", "no-storage-extension", "bad-status"],
)
def test_lies_are_refused_with_the_specific_error(
    command: p.Command, lie: tuple[int, bytes], error: type[DriverError], message: str
) -> None:
    sim = LyingCamera({command: lie})
    with PtyServer(sim) as server, SerialDriver().open(device(server), options()) as camera:
        call = {
            p.Command.GET_ZFY_INFO: camera.identify,
            p.Command.READ_BATTERY: camera.battery,
            p.Command.READ_STORAGE: camera.storage,
            p.Command.READ_TIME: camera.read_clock,
        }[command]
        with pytest.raises(error, match=message):
            call()


def test_simulator_answers_a_corrupt_request_with_bad_crc(server: PtyServer) -> None:
    fd = os.open(server.slave_path, os.O_RDWR | os.O_NOCTTY)
    try:
        request = bytearray(p.encode_frame(42, p.Command.GET_ID_CODE))
        request[-1] ^= 0xFF
        os.write(fd, bytes(request) + p.encode_frame(43, 0x7E))
        decoder = p.FrameDecoder()
        frames: list[p.Frame] = []
        deadline = time.monotonic() + 2
        while len(frames) < 2 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                frames += decoder.feed(os.read(fd, 1024))
        assert [(f.seq, f.code, f.payload[:1]) for f in frames] == [
            (42, 0x82, bytes([p.Status.BAD_CRC])),
            (43, 0xFE, bytes([p.Status.BAD_COMMAND])),
        ]
    finally:
        os.close(fd)


# Clock


@pytest.mark.parametrize("drift_s", [3.5, -120.25])
def test_sync_measures_the_offset_and_corrects_the_clock(
    server: PtyServer, sim: SimulatedCamera, drift_s: float
) -> None:
    sim.set_drift(drift_s)
    with SerialDriver().open(device(server), options()) as camera:
        reading = camera.sync_clock(samples=5)
        assert reading.state is ClockSyncState.SYNCED
        assert reading.offset_s is not None
        assert abs(reading.offset_s - drift_s) <= CLOCK_TOLERANCE_S
        assert reading.round_trip_s is not None
        assert 0 < reading.round_trip_s < TIMEOUT_S
        assert reading.residual_s is not None
        assert abs(reading.residual_s) <= CLOCK_TOLERANCE_S
        # Independently of the driver's own read-back: the simulator's clock now matches the station.
        assert abs((sim.now() - datetime.now(UTC)).total_seconds()) <= CLOCK_TOLERANCE_S
        assert abs(camera.read_clock().offset_s) <= CLOCK_TOLERANCE_S


def test_lost_set_clock_reply_is_resolved_by_reading_back_not_resending(
    camera: SerialCamera, server: PtyServer, sim: SimulatedCamera
) -> None:
    server.faults = Faults(bad_crc=1)  # the set is applied; only its reply is corrupted
    before = sim.requests
    camera.set_clock(datetime.now(UTC))
    assert sim.requests - before == 2  # SyncDevTime(set), then SyncDevTime(read); no second set
    assert abs(sim.drift_s) <= 0.05


def test_unanswered_set_clock_is_resent_once_after_reading_back(
    camera: SerialCamera, server: PtyServer, sim: SimulatedCamera
) -> None:
    server.faults = Faults(silence=1)  # the set never reached the camera's logic
    before = server.received
    camera.set_clock(datetime.now(UTC) + timedelta(seconds=10))
    assert server.received - before == 3  # set (lost), read back (still +3.5 s), set again
    assert abs(sim.drift_s - 10) <= 0.05


class StubbornClockCamera(SimulatedCamera):
    """Acknowledges SyncDevTime(set), or refuses it, without ever changing its clock."""

    def __init__(self, *, refuse: bool) -> None:
        super().__init__(IDENTITY, password=PASSWORD, drift_s=3.5)
        self.refuse = refuse

    def handle(self, frame: p.Frame) -> bytes:
        if frame.code != p.Command.SET_TIME:
            return super().handle(frame)
        if self.refuse:
            return p.encode_error_reply(frame.seq, frame.code, p.Status.BAD_VALUE, "clock is read-only")
        return p.encode_reply(frame.seq, frame.code, p.Status.OK)


@pytest.mark.parametrize("refuse", [True, False], ids=["set-refused", "set-ignored"])
def test_sync_that_does_not_take_is_measured_only(refuse: bool) -> None:
    sim = StubbornClockCamera(refuse=refuse)
    with PtyServer(sim) as server, SerialDriver().open(device(server), options()) as camera:
        reading = camera.sync_clock(samples=3)
    assert reading.state is ClockSyncState.MEASURED_ONLY
    assert reading.offset_s is not None
    assert abs(reading.offset_s - 3.5) <= CLOCK_TOLERANCE_S
    if refuse:
        assert reading.residual_s is None
    else:
        assert reading.residual_s is not None
        assert abs(reading.residual_s - 3.5) <= CLOCK_TOLERANCE_S


def test_naive_set_clock_is_refused_before_sending(camera: SerialCamera, sim: SimulatedCamera) -> None:
    before = sim.requests
    with pytest.raises(p.FieldError, match="no timezone"):
        camera.set_clock(datetime.now(UTC).replace(tzinfo=None))
    assert sim.requests == before


# Volume


def test_mounted_volume_with_a_directory_switches_to_mass_storage(
    server: PtyServer, sim: SimulatedCamera, tmp_path: Path
) -> None:
    opened = SerialDriver().open(device(server, directory=tmp_path), options())
    with opened as camera, camera.mounted_volume() as volume:
        assert volume == tmp_path
        assert sim.msc_mode
        server.stop()  # a real camera may drop its tty once in mass storage
        assert camera.present()  # what matters now is the volume


def test_mounted_volume_without_block_or_directory_is_unsupported(
    camera: SerialCamera, sim: SimulatedCamera
) -> None:
    with pytest.raises(Unsupported, match="mount: the device has neither"), camera.mounted_volume():
        pass
    assert not sim.msc_mode  # refused before switching the camera away from its control channel


# The command-line simulator


def start_simulator(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drivers.simulator",
            "--serial",
            "0000001",
            "--officer-no",
            "000123",
            "--officer-name",
            "张三",
            "--unit-no",
            "110000000000",
            "--unit-name",
            "北京市公安局",
            "--password",
            PASSWORD,
            "--drift",
            "3.5",
            "--battery",
            "80",
            "--volume",
            str(tmp_path / "vol"),
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 10)
    if not ready:
        process.kill()
        pytest.fail("the simulator printed nothing within 10 s")
    line = process.stdout.readline()
    if not line:
        process.wait(5)
        assert process.stderr is not None
        pytest.fail(f"the simulator exited: {process.stderr.read()}")
    return process, json.loads(line)


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(5)


def test_cli_simulator_serves_a_camera_until_sigterm(tmp_path: Path) -> None:
    process, ready = start_simulator(tmp_path, "--faults", "garbage,wrong-identity")
    try:
        assert ready["pid"] == process.pid
        assert Path(ready["volume"]) == (tmp_path / "vol").resolve()
        assert Path(ready["volume"]).is_dir()
        assert ready["serial"] == "0000001"
        assert ready["usb_serial"] != ready["serial"]  # the injected identity mismatch
        info = DeviceInfo("usb1/1-1", {}, tty=ready["tty"])
        with SerialDriver().open(info, options()) as camera:
            assert camera.identify() == IDENTITY
            assert camera.battery().percent == 80
            assert abs(camera.read_clock().offset_s - 3.5) <= 0.1
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        stop_process(process)


def test_cli_simulator_exits_after_an_injected_disconnect(tmp_path: Path) -> None:
    process, ready = start_simulator(tmp_path, "--faults", "disconnect-after=1")
    try:
        info = DeviceInfo("usb1/1-1", {}, tty=ready["tty"])
        with SerialDriver().open(info, options(timeout_s=2.0)) as camera, pytest.raises(DeviceGone):
            camera.identify()
        assert process.wait(5) == 0
    finally:
        stop_process(process)


def test_cli_simulator_runs_its_on_msdc_command_once_setmsdc_is_answered(tmp_path: Path) -> None:
    # What the vm tier re-enumerates a USB gadget with; here the command leaves a mark.
    mark = tmp_path / "re-enumerated"
    process, ready = start_simulator(tmp_path, "--on-msdc", f"touch {mark}")
    try:
        info = DeviceInfo("usb1/1-1", {}, tty=ready["tty"])
        with SerialDriver().open(info, options()) as camera:
            camera.identify()
            assert not mark.exists()  # nothing before SetMSDC
            camera.enter_mass_storage()  # its reply arrived: the command runs after it is sent
            deadline = time.monotonic() + 10
            while not mark.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert mark.exists()
    finally:
        stop_process(process)


def test_cli_simulator_generates_the_volume(tmp_path: Path) -> None:
    pytest.importorskip("drivers.simulator.volume")
    process, ready = start_simulator(
        tmp_path, "--generate", "2", "--size-bytes", "4096", "--start", "2024-05-01T08:00:00+08:00"
    )
    try:
        files = [f for f in Path(ready["volume"]).rglob("*") if f.is_file()]
        assert len(files) >= 2
    finally:
        stop_process(process)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--faults", "sparks"], 2, "unknown fault 'sparks'"),
        (["--faults", "disconnect-after"], 2, "needs a count"),
        (["--faults", "read-rate"], 2, "needs a rate"),
        (["--faults", "read-rate=512"], 2, "fault read-rate needs --image"),
        (["--officer-name", "张" * 17], 64, "userName: .* is 34 bytes in GBK"),
        (["--start", "2024-05-01T08:00:00"], 2, "has no timezone"),
    ],
)
def test_cli_simulator_refuses_bad_flags_clearly(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "drivers.simulator", "--volume", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=10,
        check=False,
    )
    assert done.returncode == code
    assert done.stdout == ""
    assert re.search(message, done.stderr), done.stderr


def test_cli_simulator_read_rate_throttles_its_own_card_only_while_it_serves(tmp_path: Path) -> None:
    require_root_tools("mkfs.ext4")
    reason = throttle.unavailable()
    if reason is not None:
        pytest.skip(reason)
    image = tmp_path / "card.img"
    args = ["--generate", "1", "--size-bytes", "4096", "--image", str(image), "--faults", "read-rate=256"]
    process, ready = start_simulator(tmp_path, *args)
    try:
        number = Path(ready["block"]).stat().st_rdev
        device = f"{os.major(number)}:{os.minor(number)}"
        rules = throttle.READ_BPS.read_text(encoding="ascii").splitlines()
        assert f"{device} {256 * 1024}" in rules  # this card only, at the asked rate
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        rules = throttle.READ_BPS.read_text(encoding="ascii").splitlines()
        assert not [rule for rule in rules if rule.startswith(f"{device} ")]  # cleared on the way out
    finally:
        stop_process(process)
        detach_if_backed_by(ready["block"], image)


def test_undocking_returns_the_camera_to_normal_mode_for_its_next_dock(
    server: PtyServer, sim: SimulatedCamera
) -> None:
    first = SerialDriver().open(device(server), options())
    first.enter_mass_storage()
    first.close()  # the dock drops DTR when the camera is taken out
    wait_until = time.monotonic() + 2
    while sim.msc_mode and time.monotonic() < wait_until:
        time.sleep(0.01)
    assert not sim.msc_mode
    second = SerialDriver().open(device(server), options())
    try:
        assert second.identify() == IDENTITY
    finally:
        second.close()
