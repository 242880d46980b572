"""Pick a driver for a docked device from the `[[camera]]` rules.

Guarantees: rules are tried in order and the first whose every property glob matches wins; a device no
rule matches gets `None` and is logged once with its properties; a rule naming a driver nobody provides
is refused when the registry is built, not when a camera docks. Drivers are the built-ins plus any
installed distribution's `ingestd.drivers` entry points; a driver is imported only when first used, and
a plug-in cannot take over a built-in's name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType

import structlog

from drivers.base import DeviceInfo, Driver, DriverError, DriverOptions

ENTRY_POINT_GROUP = "ingestd.drivers"
# Imported lazily, by name, so one broken or missing driver module never stops the others.
BUILTIN_DRIVERS: Mapping[str, str] = MappingProxyType(
    {
        "serial": "drivers.serial_camera:SerialDriver",
        "mass-storage": "drivers.mass_storage:MassStorageDriver",
    }
)
_UNMATCHED_MEMORY = 4096  # distinct unmatched devices remembered for log-once

log = structlog.get_logger()


class DriverLoadError(DriverError):
    """A rule names a driver that is not installed, or whose module fails to load."""

    exit_code = 27
    wire_code = "driver-load"

    def __init__(self, driver: str, detail: str) -> None:
        super().__init__(f"driver {driver}", "load", detail)


@dataclass(frozen=True)
class CameraRule:
    """One `[[camera]]` rule: udev property globs (all must match) -> driver name and its options."""

    match: Mapping[str, str]
    driver: str
    options: DriverOptions = field(default_factory=DriverOptions)

    def __post_init__(self) -> None:
        if not self.match:
            raise ValueError("a rule with no match properties would match every device")
        object.__setattr__(self, "match", MappingProxyType(dict(self.match)))

    def matches(self, properties: Mapping[str, str]) -> bool:
        """Every listed property is present and its value matches the glob (case-sensitive)."""
        return all(
            key in properties and fnmatchcase(properties[key], pattern) for key, pattern in self.match.items()
        )


def _load_object(spec: str) -> object:
    module_name, _, attribute = spec.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        target = getattr(target, part)
    return target


class DriverRegistry:
    """Rules plus the drivers they may name. Driver instances are created once and shared."""

    def __init__(
        self,
        rules: Sequence[CameraRule],
        *,
        drivers: Mapping[str, Driver] | None = None,
        discover: bool = True,
    ) -> None:
        """`drivers` adds ready instances (they win over everything); `discover` reads entry points."""
        self.rules = tuple(rules)
        self._specs: dict[str, str] = dict(BUILTIN_DRIVERS)
        self._loaded: dict[str, Driver] = dict(drivers or {})
        self._unmatched: set[tuple[str, frozenset[tuple[str, str]]]] = set()
        if discover:
            self._discover()
        unknown = sorted({rule.driver for rule in self.rules} - self.available())
        if unknown:
            raise DriverLoadError(
                ", ".join(unknown), f"not installed; available: {', '.join(sorted(self.available()))}"
            )

    def _discover(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            known = self._specs.get(entry_point.name)
            if known is None:
                self._specs[entry_point.name] = entry_point.value
            elif known.replace(" ", "") != entry_point.value.replace(" ", ""):
                log.warning(
                    "driver.plugin_shadowed",
                    driver=entry_point.name,
                    plugin=entry_point.value,
                    kept=known,
                )

    def available(self) -> frozenset[str]:
        """Names rules may use: built-ins, discovered plug-ins and injected drivers."""
        return frozenset(self._specs) | frozenset(self._loaded)

    def driver(self, name: str) -> Driver:
        """The driver called `name`, imported and instantiated on first use."""
        if name in self._loaded:
            return self._loaded[name]
        spec = self._specs.get(name)
        if spec is None:
            raise DriverLoadError(name, "not installed")
        try:
            target = _load_object(spec)
        except Exception as error:
            raise DriverLoadError(name, f"{spec}: {type(error).__name__}: {error}") from error
        if not (isinstance(target, type) and issubclass(target, Driver)):
            raise DriverLoadError(name, f"{spec} is not a Driver subclass")
        instance = target()
        self._loaded[name] = instance
        return instance

    def ready(self, device: DeviceInfo) -> bool:
        """Whether the first rule matching `device` names a driver that can start on what it has now
        (an early dock); a device no rule matches is never ready, and is logged once it settled."""
        for rule in self.rules:
            if rule.matches(device.properties):
                return self.driver(rule.driver).ready(device)
        return False

    def match(self, device: DeviceInfo) -> tuple[Driver, DriverOptions] | None:
        """The first matching rule's driver and options; None (logged once) when no rule matches."""
        for rule in self.rules:
            if rule.matches(device.properties):
                return self.driver(rule.driver), rule.options
        key = (device.port, frozenset(device.properties.items()))
        if key not in self._unmatched:
            if len(self._unmatched) >= _UNMATCHED_MEMORY:
                self._unmatched.clear()
            self._unmatched.add(key)
            log.info("device.unmatched", port=device.port, properties=dict(device.properties))
        return None
