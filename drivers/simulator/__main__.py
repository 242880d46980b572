"""`python -m drivers.simulator`: serve one simulated camera until SIGTERM or SIGINT.

Once the pty is ready it prints one JSON line, {"tty", "volume", "pid", "usb_serial", "serial"}, so a
test or `ingestd demo` can wire the camera up without guessing paths.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from drivers.base import Battery, CameraIdentity, Resolution, StorageInfo
from drivers.protocol import FieldError
from drivers.simulator.camera import SimulatedCamera
from drivers.simulator.faults import Faults
from drivers.simulator.pty_server import PtyServer

EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69  # a fault this host cannot inject (no block read throttle)


def _resolution(text: str) -> Resolution:
    width, _, height = text.lower().partition("x")
    try:
        return Resolution(int(width), int(height))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None


def _faults(text: str) -> Faults:
    try:
        return Faults.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _start(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no timezone (write e.g. 2024-05-01T08:00:00+00:00)")
    return when.astimezone(UTC)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m drivers.simulator", description=__doc__)
    camera = parser.add_argument_group("camera")
    camera.add_argument("--serial", default="0000001", help="cSerial, 7 ASCII characters")
    camera.add_argument("--usb-serial", help="USB serial number (default: --serial)")
    camera.add_argument("--officer-no", default="000123", help="userNo, 6 ASCII characters")
    camera.add_argument("--officer-name", default="张三", help="userName, at most 32 bytes in GBK")
    camera.add_argument("--unit-no", default="110000000000", help="unitNo, 12 ASCII characters")
    camera.add_argument("--unit-name", default="北京市公安局", help="unitName, at most 32 bytes in GBK")
    camera.add_argument("--password", default="000000", help="Init_Device password, 6 characters")
    camera.add_argument("--drift", type=float, default=0.0, help="camera clock minus station clock, s")
    camera.add_argument("--battery", type=int, default=80, help="battery percent, 0..100")
    camera.add_argument("--charging", action=argparse.BooleanOptionalAction, default=True)
    camera.add_argument("--storage-total", type=int, default=64 * 2**30, help="bytes")
    camera.add_argument("--storage-free", type=int, default=48 * 2**30, help="bytes")
    camera.add_argument("--resolution", type=_resolution, default=Resolution(1920, 1080), help="WxH")
    camera.add_argument(
        "--faults",
        type=_faults,
        default=Faults(),
        help="comma-separated: garbage, slow[=MS], bad-crc[=N], truncate[=N], silence[=N], busy[=N], "
        "disconnect-after=N, wrong-identity, read-rate=KIB_PER_S (an --image card read at most that fast)",
    )
    camera.add_argument(
        "--on-msdc",
        type=shlex.split,
        metavar="COMMAND",
        help="run COMMAND (not waited for) once SetMSDC is answered, where a real camera re-enumerates",
    )
    camera.add_argument("--seed", type=int, default=0, help="seed for garbage bytes and generated files")
    volume = parser.add_argument_group("volume")
    volume.add_argument("--volume", type=Path, help="directory standing in for the camera volume")
    volume.add_argument("--generate", type=int, metavar="N", help="write N recordings into --volume first")
    volume.add_argument("--size-bytes", type=int, default=256 * 1024, help="size of each generated file")
    volume.add_argument("--start", type=_start, help="time of the first generated recording (ISO 8601)")
    volume.add_argument("--hostile", action="store_true", help="add hostile names, symlinks, junk")
    volume.add_argument(
        "--image", type=Path, help="serve the volume as an ext4 image at this path on a loop device (root)"
    )
    args = parser.parse_args(argv)
    if args.generate is not None and args.volume is None:
        parser.error("--generate needs --volume")
    if args.image is not None and args.volume is None:
        parser.error("--image needs --volume (the directory whose files the image holds)")
    if args.image is not None and os.geteuid() != 0:
        parser.error("--image needs root to attach a loop device")
    if args.faults.read_kib_s and args.image is None:
        parser.error("fault read-rate needs --image: a directory volume is read without a device to throttle")
    return args


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[str]:
    """Attach `image` to a free loop device for as long as the camera is served; detach that device."""
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)


def build_camera(args: argparse.Namespace) -> SimulatedCamera:
    usb_serial: str | None = args.usb_serial
    faults: Faults = args.faults
    if faults.wrong_identity and usb_serial is None:
        # Same length, different last character: what a swapped board or a cloned ID looks like.
        last = "1" if args.serial[-1:] != "1" else "2"
        usb_serial = args.serial[:-1] + last
    identity = CameraIdentity(args.serial, args.officer_no, args.officer_name, args.unit_no, args.unit_name)
    return SimulatedCamera(
        identity,
        password=args.password,
        drift_s=args.drift,
        battery=Battery(percent=args.battery, charging=args.charging),
        storage=StorageInfo(total_bytes=args.storage_total, free_bytes=args.storage_free),
        resolution=args.resolution,
        usb_serial=usb_serial,
    )


def generate_volume(args: argparse.Namespace) -> None:
    from drivers.simulator.volume import build_volume  # noqa: PLC0415  # only when asked to generate

    start: datetime = args.start or (datetime.now(UTC) - timedelta(hours=8)).replace(microsecond=0)
    build_volume(
        args.volume,
        device_serial=args.serial,
        officer_name=args.officer_name,
        count=args.generate,
        size_bytes=args.size_bytes,
        start=start,
        seed=args.seed,
        hostile=args.hostile,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        camera = build_camera(args)
    except FieldError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.faults.read_kib_s:
        from drivers.simulator.throttle import unavailable  # noqa: PLC0415  # only for a read-rate fault

        reason = unavailable()
        if reason is not None:
            print(f"simulator: read-rate: {reason}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    if args.volume is not None:
        args.volume.mkdir(parents=True, exist_ok=True)
        if args.generate:
            generate_volume(args)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.ExitStack() as held:
        block: str | None = None
        if args.image is not None:
            from drivers.simulator.volume import make_image  # noqa: PLC0415  # only for image volumes

            block = held.enter_context(loop_device(make_image(args.volume, args.image)))
            if args.faults.read_kib_s:
                from drivers.simulator.throttle import read_rate  # noqa: PLC0415  # only for a read-rate fault

                held.enter_context(read_rate(block, args.faults.read_kib_s * 1024))
        on_msdc: list[str] | None = args.on_msdc
        hook = (lambda: subprocess.Popen(on_msdc)) if on_msdc else None  # a re-enumeration, not waited for
        server = held.enter_context(PtyServer(camera, args.faults, seed=args.seed, on_mass_storage=hook))
        ready = {
            "tty": server.slave_path,
            "volume": str(args.volume.resolve()) if args.volume is not None else None,
            "block": block,
            "pid": os.getpid(),
            "serial": camera.identity.device_serial,
            "usb_serial": camera.usb_serial,
        }
        print(json.dumps(ready, ensure_ascii=False), flush=True)
        # Wake up now and then: a disconnect fault ends the session without a signal.
        while not stop.wait(0.2) and not server.disconnected.is_set():
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
