"""The hand-over between the dock manager and a session: late storage and the re-enumeration grace."""

from __future__ import annotations

import threading

import pytest

from ingestd.manager import identity_refusal
from ingestd.session import IngestSettings, StorageHandover, StorageMissing, Unplugged, _Interrupted

SHORT = IngestSettings(storage_wait_s=0.2, reenumerate_s=0.2)
LONG = IngestSettings(storage_wait_s=30.0, reenumerate_s=30.0)


def test_an_undock_outside_the_grace_is_an_unplug() -> None:
    handover = StorageHandover()
    assert handover.detach() is False  # before SetMSDC
    handover.open_grace()
    assert handover.take(False, LONG, threading.Event()) is None  # the dock's own volume stands
    assert handover.close_grace() is False  # mounted, the camera still there
    assert handover.detach() is False  # a disk pulled mid-copy


def test_late_storage_is_handed_over_from_another_thread() -> None:
    handover = StorageHandover()
    handover.open_grace()
    assert handover.awaiting
    threading.Timer(0.05, handover.offer, args=("/dev/sdb1",)).start()
    assert handover.take(True, LONG, threading.Event()) == ("/dev/sdb1", None)
    assert not handover.awaiting


def test_a_volume_gone_at_its_mount_is_discarded_and_the_next_one_waited_for() -> None:
    handover = StorageHandover()
    handover.open_grace()
    handover.offer("/dev/sdb1")
    assert handover.take(True, LONG, threading.Event()) == ("/dev/sdb1", None)
    handover.discard("/dev/sdb1")  # it went as it was mounted
    assert handover.awaiting  # the grace is still open: a dock on the port is the camera back
    threading.Timer(0.05, handover.offer, args=("/dev/sdc1", "7")).start()
    assert handover.take(True, LONG, threading.Event()) == ("/dev/sdc1", "7")
    handover.discard("/dev/sdb1")  # a late discard of the old one keeps the new one
    assert handover.take(True, LONG, threading.Event()) == ("/dev/sdc1", "7")


def test_no_storage_in_time_is_storage_missing() -> None:
    handover = StorageHandover()
    handover.open_grace()
    with pytest.raises(StorageMissing, match=r"no storage appeared within 0\.2 s of SetMSDC"):
        handover.take(True, SHORT, threading.Event())


def test_a_camera_that_left_inside_the_grace_is_waited_for_and_its_old_volume_is_gone_with_it() -> None:
    handover = StorageHandover()
    handover.open_grace()
    handover.offer("/dev/sdb1")  # its disk came with the dock...
    assert handover.detach() is True  # ...and went when the camera re-enumerated
    assert handover.detached
    threading.Timer(0.05, handover.offer, args=("/dev/sdc1", "7")).start()
    assert handover.take(False, LONG, threading.Event()) == ("/dev/sdc1", "7")
    assert not handover.detached


def test_a_camera_not_back_in_time_is_unplugged_and_leaving_again_does_not_extend_the_grace() -> None:
    handover = StorageHandover()
    handover.open_grace()
    handover.detach()
    stop_detaching = threading.Event()

    def leave_again() -> None:  # a device that keeps leaving must not keep the session waiting
        while not stop_detaching.wait(0.02):
            handover.detach()

    threading.Thread(target=leave_again, daemon=True).start()
    try:
        with pytest.raises(Unplugged, match=r"not back within 0\.2 s"):
            handover.take(False, SHORT, threading.Event())
    finally:
        stop_detaching.set()


def test_a_daemon_stop_ends_the_wait() -> None:
    handover = StorageHandover()
    handover.open_grace()
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(_Interrupted):
        handover.take(True, LONG, stopping)


def test_a_camera_that_left_as_its_volume_was_mounted_is_reported_by_closing_the_grace() -> None:
    handover = StorageHandover()
    handover.open_grace()
    assert handover.take(False, LONG, threading.Event()) is None
    assert handover.detach() is True  # the undock came while the session was mounting
    assert handover.close_grace() is True  # the session ends it as unplugged


@pytest.mark.parametrize(
    ("docked", "appeared", "same_usb_device", "refused"),
    [
        ("ZFY7301", "ZFY7301", False, False),
        ("ZFY7301", "ZFY9999", False, True),
        ("ZFY7301", None, False, True),
        ("ZFY7301", None, True, True),  # a serial at the dock is always checked
        (None, "ZFY7301", False, False),  # the serial the camera reported over its control channel
        (None, "0000001", False, True),
        (None, None, False, True),
        (None, None, True, False),  # an interface of the very USB device that docked
    ],
)
def test_the_identity_rule_binds_a_volume_to_the_camera_by_usb_serial(
    docked: str | None, appeared: str | None, same_usb_device: bool, refused: bool
) -> None:
    def props(serial: str | None) -> dict[str, str]:
        return {"ID_VENDOR_ID": "0403"} | ({"ID_SERIAL_SHORT": serial} if serial else {})

    refusal = identity_refusal(
        props(docked), props(appeared), reported_serial="ZFY7301", same_usb_device=same_usb_device
    )
    assert (refusal is not None) is refused
