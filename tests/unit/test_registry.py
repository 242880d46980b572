"""Driver registry: glob rules, first match wins, unknown devices logged once, plug-ins by entry point."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest
from structlog.testing import capture_logs

from drivers.base import DeviceInfo, DriverOptions
from drivers.mass_storage import MassStorageDriver
from drivers.registry import BUILTIN_DRIVERS, CameraRule, DriverLoadError, DriverRegistry

USB_CAMERA = {"SUBSYSTEM": "tty", "ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "0104", "ID_SERIAL_SHORT": "0000001"}
BLOCK = {"SUBSYSTEM": "block", "ID_FS_LABEL": "ZFY_0001", "DEVNAME": "/dev/sdb1"}


def device(properties: dict[str, str], port: str = "1-1.2") -> DeviceInfo:
    return DeviceInfo(port=port, properties=properties)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real installed distribution on sys.path: a module plus a dist-info with entry points."""
    module = "ingestd_test_plugin"
    (tmp_path / f"{module}.py").write_text(
        dedent(
            """
            from drivers.mass_storage import MassStorageCamera
            from drivers.base import Driver

            class AdbDriver(Driver):
                name = "adb"

                def open(self, device, options):
                    return MassStorageCamera(device, options)

            class NotADriver:
                pass
            """
        ),
        encoding="utf-8",
    )
    dist_info = tmp_path / "ingestd_test_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ingestd-test-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        dedent(
            f"""
            [ingestd.drivers]
            adb = {module}:AdbDriver
            serial = {module}:AdbDriver
            broken = {module}_missing:Driver
            not-a-driver = {module}:NotADriver
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(module, None)


def test_rule_globs_must_all_match() -> None:
    rule = CameraRule(match={"ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "01*"}, driver="mass-storage")
    assert rule.matches(USB_CAMERA)
    assert not rule.matches({**USB_CAMERA, "ID_MODEL_ID": "0204"})
    assert not rule.matches({"ID_VENDOR_ID": "1d6b"})  # a missing property never matches
    assert not rule.matches({**USB_CAMERA, "ID_VENDOR_ID": "1D6B"})  # globs are case-sensitive
    assert CameraRule(match={"DEVNAME": "/dev/sd[b-z]?"}, driver="x").matches(BLOCK)


def test_rule_is_frozen_and_copies_its_match() -> None:
    match = {"SUBSYSTEM": "block"}
    rule = CameraRule(match=match, driver="mass-storage")
    match["SUBSYSTEM"] = "tty"
    assert rule.match == {"SUBSYSTEM": "block"}
    with pytest.raises(TypeError):
        rule.match["SUBSYSTEM"] = "tty"  # type: ignore[index]  # the point: it is read-only
    with pytest.raises(ValueError, match="would match every device"):
        CameraRule(match={}, driver="mass-storage")


def test_first_matching_rule_wins_with_its_options() -> None:
    first = DriverOptions(filename_patterns=("first",))
    rules = [
        CameraRule(match={"SUBSYSTEM": "block", "ID_FS_LABEL": "ZFY*"}, driver="mass-storage", options=first),
        CameraRule(match={"SUBSYSTEM": "block"}, driver="mass-storage", options=DriverOptions()),
    ]
    registry = DriverRegistry(rules)
    matched = registry.match(device(BLOCK))
    assert matched is not None
    driver, options = matched
    assert isinstance(driver, MassStorageDriver)
    assert options is first
    other = registry.match(device({"SUBSYSTEM": "block", "ID_FS_LABEL": "USBSTICK"}))
    assert other is not None
    assert other[1] is rules[1].options
    assert other[0] is driver  # one instance per driver


def test_unknown_device_returns_none_and_is_logged_once() -> None:
    registry = DriverRegistry([CameraRule(match={"ID_VENDOR_ID": "1d6b"}, driver="mass-storage")])
    stranger = {"SUBSYSTEM": "block", "ID_VENDOR_ID": "0781", "ID_MODEL_ID": "5581"}
    with capture_logs() as logs:
        assert registry.match(device(stranger)) is None
        assert registry.match(device(stranger)) is None
        assert registry.match(device(stranger, port="1-1.3")) is None  # another dock: logged again
    assert logs == [
        {"event": "device.unmatched", "log_level": "info", "port": "1-1.2", "properties": stranger},
        {"event": "device.unmatched", "log_level": "info", "port": "1-1.3", "properties": stranger},
    ]


def test_rule_naming_a_missing_driver_is_refused_at_build_time() -> None:
    with pytest.raises(DriverLoadError) as caught:
        DriverRegistry([CameraRule(match={"SUBSYSTEM": "block"}, driver="scsi")])
    assert "driver scsi: load: not installed; available: " in str(caught.value)
    assert "mass-storage" in str(caught.value)


def test_builtins_are_known_without_entry_points() -> None:
    registry = DriverRegistry([CameraRule(match={"SUBSYSTEM": "tty"}, driver="serial")], discover=False)
    assert registry.available() == frozenset(BUILTIN_DRIVERS)
    assert isinstance(registry.driver("mass-storage"), MassStorageDriver)


def test_third_party_driver_is_discovered_by_entry_point(plugin: Path) -> None:
    rules = [CameraRule(match={"ID_VENDOR_ID": "18d1"}, driver="adb")]
    with capture_logs() as logs:
        registry = DriverRegistry(rules)
    assert {"adb", "broken", "not-a-driver", "serial", "mass-storage"} <= registry.available()
    matched = registry.match(device({"ID_VENDOR_ID": "18d1"}))
    assert matched is not None
    assert type(matched[0]).__name__ == "AdbDriver"
    assert type(matched[0]).__module__ == "ingestd_test_plugin"
    # The plug-in's "serial" does not replace the built-in one.
    assert {
        "event": "driver.plugin_shadowed",
        "log_level": "warning",
        "driver": "serial",
        "plugin": "ingestd_test_plugin:AdbDriver",
        "kept": BUILTIN_DRIVERS["serial"],
    } in logs


def test_plugin_that_fails_to_load_raises_a_load_error_naming_it(plugin: Path) -> None:
    registry = DriverRegistry([CameraRule(match={"ID_VENDOR_ID": "dead"}, driver="broken")])
    with pytest.raises(DriverLoadError, match=r"driver broken: load: ingestd_test_plugin_missing:Driver: "):
        registry.match(device({"ID_VENDOR_ID": "dead"}))
    with pytest.raises(DriverLoadError, match="is not a Driver subclass"):
        registry.driver("not-a-driver")


def test_own_entry_points_match_the_builtins_without_warnings() -> None:
    with capture_logs() as logs:
        registry = DriverRegistry([CameraRule(match={"SUBSYSTEM": "block"}, driver="mass-storage")])
    assert logs == []
    assert frozenset(BUILTIN_DRIVERS) <= registry.available()
