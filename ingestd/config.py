"""The configuration schema. Frozen, refuses unknown keys, and every key has a documented default.

Loaded from `--config PATH`, else `$INGESTD_CONFIG`, else `/etc/ingestd/config.toml`. A wrong key, type
or value stops start-up with a message naming the file and the key (exit code 78, EX_CONFIG).
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.base import DriverOptions
from drivers.registry import CameraRule, DriverRegistry
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from ingestd.policies.calendar import WorkingCalendar
from ingestd.policies.deadlines import MAX_EXTENSION_WORKING_DAYS
from ingestd.policies.retention import DEFAULT_LONG_TERM_TAGS, RetentionRules, normalize_tag
from store.vault import VaultSettings

DEFAULT_CONFIG_PATH = Path("/etc/ingestd/config.toml")
CONFIG_ENV = "INGESTD_CONFIG"


class ConfigError(IngestdError):
    """The configuration file is missing, unreadable, not TOML, or does not fit the schema."""

    template = "config {path}: {detail}"
    exit_code = ExitCode.CONFIG
    wire_code = "config"


class VaultSecretError(ConfigError):
    """The vault's secret access key file is missing, unreadable, empty or not private to root."""

    template = "vault.secret_access_key_file {path}: {detail}"
    wire_code = "vault-secret"


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DaemonConfig(Section):
    state_dir: Path = Field(Path("/var/lib/ingestd"), description="Signing key, checkpoints, partial state.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable on a terminal, JSON lines (for journald) otherwise."
    )


class CatalogConfig(Section):
    url: str = Field("sqlite:////var/lib/ingestd/catalog.db", description="SQLAlchemy database URL.")

    @field_validator("url")
    @classmethod
    def _supported_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("only sqlite:// and postgresql:// catalogs are supported")
        return value


class StoreConfig(Section):
    root: Path = Field(Path("/var/lib/ingestd/store"), description="Object store root directory.")
    read_back: bool = Field(True, description="Re-read each object from disk; compare size and BLAKE3.")
    chunk_mib: int = Field(4, ge=1, le=64, description="Copy buffer size in MiB.")
    copy_memory_mib: int = Field(
        128,
        ge=4,
        description="Copy buffers of all docks copying at once, MiB; each gets its share, at most chunk_mib.",
    )
    fsync_interval_mib: int = Field(
        256, ge=1, description="Durable-offset interval for resumable copies, in MiB."
    )


class AuditConfig(Section):
    checkpoint_every: int = Field(1000, ge=1, description="Write a signed checkpoint every N audit events.")


class CameraRuleConfig(Section):
    """One `[[camera]]` rule: udev properties (glob values) to a driver and its options."""

    match: dict[str, str] = Field(description="udev property name -> glob, all must match.")
    driver: str = Field(description="Driver name: serial, mass-storage, or a plug-in's entry-point name.")
    password: str = Field(
        "", max_length=6, description="Device password inline; every ingestctl user can read it here."
    )
    password_file: Path | None = Field(
        None, description="File (owner root, no group/other access) whose first line is the password."
    )
    baud_rate: int = Field(115200, gt=0)
    filename_patterns: tuple[str, ...] = Field((), description="Regexes with named time groups.")
    extensions: tuple[str, ...] = Field((".mp4", ".mov", ".avi", ".jpg", ".wav"))
    filesystems: tuple[Literal["vfat", "exfat", "ext4"], ...] = Field(
        ("vfat", "exfat"),
        description="Volume types mounted from these cameras (detected before mounting); others are refused.",
    )

    @field_validator("filesystems")
    @classmethod
    def _some_filesystem(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one filesystem type")
        return tuple(dict.fromkeys(value))

    @field_validator("match")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("a rule with no match properties would match every device")
        return value

    @model_validator(mode="after")
    def _one_password_source(self) -> CameraRuleConfig:
        if self.password and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def to_rule(self) -> CameraRule:
        """The driver rule, with the password read from `password_file` (only the daemon calls this)."""
        password = read_password_file(self.password_file) if self.password_file else self.password
        options = DriverOptions(
            password=password,
            baud_rate=self.baud_rate,
            filename_patterns=self.filename_patterns,
            extensions=self.extensions,
            filesystems=self.filesystems,
        )
        return CameraRule(match=dict(self.match), driver=self.driver, options=options)


PASSWORD_FILE_MAX_BYTES = 256


def read_private_file(path: Path, fail: Callable[[str], ConfigError], limit: int) -> bytes:
    """The bytes of a secret file that only root (or the daemon's own user) can read, opened without
    following a symlink so the checks apply to the file actually read; `fail(detail)` builds the error
    naming the file, so a leaked secret is noticed, not used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise fail("file not found") from None
    except OSError as error:
        raise fail(f"cannot open: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise fail("not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise fail(f"must be owned by root, is owned by uid {info.st_uid}")
        if info.st_mode & 0o077:
            raise fail(
                f"must not be accessible to group or others, has mode {stat.S_IMODE(info.st_mode):04o}; "
                "chmod 600"
            )
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise fail(f"larger than {limit} bytes")
    return raw


def read_password_file(path: Path) -> str:
    """A camera password: the first line of a private file (`read_private_file`)."""

    def fail(detail: str) -> ConfigError:
        return ConfigError(path=path, detail=f"password file: {detail}")

    lines = (
        read_private_file(path, fail, PASSWORD_FILE_MAX_BYTES).decode("ascii", errors="replace").splitlines()
    )
    password = lines[0].strip() if lines else ""
    if not password or len(password) > 6 or not password.isprintable():
        raise fail("the first line must be the password (1-6 characters)")
    return password


class IngestConfig(Section):
    """How a docked camera is ingested (the dock sequence in DESIGN.md)."""

    max_concurrent: int = Field(4, ge=1, le=64, description="Cameras copying at once; the rest queue.")
    clock_samples: int = Field(
        5, ge=1, le=50, description="Round trips measured; the shortest sets the offset."
    )
    delete_after_ingest: bool = Field(
        True, description="Delete originals from the camera once proven (004 art. 19(四)); needs read-back."
    )
    stop_timeout_seconds: float = Field(
        60.0, gt=0, description="On SIGTERM, how long sessions get to finish their current durable step."
    )
    partial_max_age_hours: float = Field(
        72.0, gt=0, description="An interrupted copy not resumed within this many hours is removed (audited)."
    )
    slow_rate_floor_mib_s: float = Field(
        1.0, ge=0, description="A dock copying slower than this gives back its slot; 0 never does."
    )
    slow_rate_seconds: float = Field(
        120.0, gt=0, description="How long a dock's copy rate must stay below the floor first."
    )


class DetectionConfig(Section):
    """Where docked cameras come from."""

    udev: bool = Field(True, description="Watch kernel uevents (pyudev netlink) for USB cameras.")
    udev_source: Literal["auto", "udev", "kernel"] = Field(
        "auto",
        description="auto: udevd's events when udevd runs, else the kernel's; udev: events enriched by "
        "udevd (none arrive without it); kernel: raw kernel events (no udevd needed).",
    )
    settle_seconds: float = Field(
        1.0, ge=0, le=30, description="Wait this long after a camera's last device appears before docking."
    )
    storage_wait_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="How long a camera docked without its volume (real USB disks appear a second or more "
        "after the tty, some only after SetMSDC) may take to show it once switched to mass storage.",
    )
    reenumerate_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="How long a camera that leaves its port after SetMSDC (it re-enumerates with storage "
        "only) may take to come back and stay the same session.",
    )
    usb_grouping: Literal["device", "hub"] = Field(
        "device",
        description="device: one USB device is one camera (storage and tty are interfaces of it); hub: "
        "the devices behind one non-root hub are one camera (storage and tty are separate devices).",
    )
    watch_folders: tuple[Path, ...] = Field(
        (), description="Folders whose new subdirectories are docked volumes (card readers, automounts)."
    )


class DeadlinesConfig(Section):
    """Upload deadlines and the working-day calendar for extensions (001 art. 24; 003 art. 11)."""

    window_hours: int = Field(
        24, ge=1, description="Footage must be stored within this many hours of its end."
    )
    max_extension_working_days: int = Field(
        MAX_EXTENSION_WORKING_DAYS,
        ge=0,
        le=MAX_EXTENSION_WORKING_DAYS,
        description="Longest extension, in working days; 0 disables extensions; 003 art. 11 caps it at 3.",
    )
    country: str = Field("CN", description="Public holidays from the `holidays` package for this country.")
    timezone: str = Field("Asia/Shanghai", description="Zone in which working days and wall times count.")
    extra_holidays: tuple[date, ...] = Field((), description="Extra non-working days (local closures).")
    extra_working_days: tuple[date, ...] = Field(
        (), description="Extra working days, e.g. make-up weekend days (调休) the package does not list."
    )

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        if value not in holidays.list_supported_countries():
            raise ValueError(f"the holidays package has no calendar for {value!r}")
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The zone local times are shown and counted in."""
        return ZoneInfo(self.timezone)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _no_day_both_ways(self) -> DeadlinesConfig:
        clash = set(self.extra_holidays) & set(self.extra_working_days)
        if clash:
            days = ", ".join(sorted(day.isoformat() for day in clash))
            raise ValueError(f"listed in both extra_holidays and extra_working_days: {days}")
        return self

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_hours)

    def calendar(self) -> WorkingCalendar:
        return WorkingCalendar(
            country=self.country,
            timezone=self.timezone,
            extra_holidays=frozenset(self.extra_holidays),
            extra_working_days=frozenset(self.extra_working_days),
        )


class GapsConfig(Section):
    """Gaps between recordings that need a written explanation (000 art. 12; 001 art. 23)."""

    threshold_minutes: int = Field(
        10, ge=1, description="Flag a gap between consecutive recordings in one check-out longer than this."
    )

    @property
    def threshold(self) -> timedelta:
        return timedelta(minutes=self.threshold_minutes)


class ClockConfig(Section):
    drift_alarm_seconds: float = Field(
        30.0, gt=0, allow_inf_nan=False, description="Flag a camera whose clock offset exceeds this."
    )


class RetentionConfig(Section):
    """Retention classes (000 art. 15; 003 art. 14; 004 art. 20) and the purge notice."""

    routine_months: int = Field(6, ge=6, description="Routine footage: kept at least 6 months (000 art. 15).")
    standard_years: int = Field(3, ge=3, description="Standard class: at least 3 years (004 art. 20).")
    notice_days: int = Field(14, ge=1, description="A deletion notice is given this many days before.")
    long_term_tags: tuple[str, ...] = Field(
        tuple(sorted(DEFAULT_LONG_TERM_TAGS)), description="Tags that force long-term retention."
    )

    @field_validator("long_term_tags")
    @classmethod
    def _normalized_tags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        tags = tuple(sorted({normalize_tag(tag) for tag in value}))
        if not tags or "" in tags:
            raise ValueError("needs at least one tag, and no empty tag")
        return tags

    def rules(self) -> RetentionRules:
        return RetentionRules(
            routine_months=self.routine_months,
            standard_years=self.standard_years,
            notice_days=self.notice_days,
            long_term_tags=frozenset(self.long_term_tags),
        )


class JobsConfig(Section):
    """The daemon's scheduled jobs (APScheduler, UTC). Each is idempotent: a re-run flags nothing twice."""

    enabled: bool = Field(True, description="Run the scheduled jobs inside the daemon.")
    overdue_interval_minutes: int = Field(
        15, ge=1, description="How often cameras checked out longer than the window are looked for."
    )
    gaps_interval_minutes: int = Field(60, ge=1, description="How often recent sessions are checked (gaps).")
    drift_interval_minutes: int = Field(60, ge=1, description="How often recent clock readings are checked.")
    retention_interval_hours: int = Field(24, ge=1, description="How often retention notices are given.")
    audit_checkpoint_interval_minutes: int = Field(
        5, ge=1, description="How often the audit chain's head is signed if anything is unsigned."
    )
    lookback_hours: int = Field(
        72, ge=1, description="Gap and drift jobs look at dock sessions that ended this recently."
    )
    misfire_grace_seconds: int = Field(
        300, ge=1, description="A run missed by more than this (station asleep) is skipped, not replayed."
    )


class NotifyConfig(Section):
    """An optional command run once for each new flag, with the flag as JSON on stdin."""

    command: str = Field("", description="Command line (split like a shell, run without one); empty: none.")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="The command is killed after this long.")

    @field_validator("command")
    @classmethod
    def _splits(cls, value: str) -> str:
        try:
            shlex.split(value)
        except ValueError as error:
            raise ValueError(f"cannot be split into arguments: {error}") from None
        return value

    def argv(self) -> list[str]:
        return shlex.split(self.command)


GROUP_NAME_MAX = 32  # useradd's limit
SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux, with its NUL


class ControlConfig(Section):
    """The control socket `ingestctl` talks to. Callers are identified by SO_PEERCRED (the kernel's
    word, not theirs); their OS groups give their roles. uid 0 is always admin."""

    socket: Path = Field(Path("/run/ingestd/control.sock"), description="Unix socket path (mode 0660).")
    socket_group: str = Field(
        "", max_length=GROUP_NAME_MAX, description="Group owning the socket; empty: the daemon's group."
    )
    admin_group: str = Field("ingestd-admin", max_length=GROUP_NAME_MAX, description="Role admin.")
    clerk_group: str = Field("ingestd-clerk", max_length=GROUP_NAME_MAX, description="Role clerk.")
    approver_group: str = Field("ingestd-approver", max_length=GROUP_NAME_MAX, description="Role approver.")
    auditor_group: str = Field("ingestd-auditor", max_length=GROUP_NAME_MAX, description="Role auditor.")
    viewer_group: str = Field("ingestd-viewer", max_length=GROUP_NAME_MAX, description="Role viewer.")
    timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A connection idle this long (or a request this slow) is closed."
    )
    max_connections: int = Field(32, ge=1, le=1024, description="Connections served at once, in all.")
    max_connections_per_uid: int = Field(
        4, ge=1, le=1024, description="Connections one uid may hold open at once; more are refused."
    )
    connection_lifetime_seconds: float = Field(
        300.0, gt=0, le=86400, description="A connection is closed this long after it was accepted."
    )
    denial_audit_interval_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Refusals of one kind from one uid: the first is audited, the rest once per interval.",
    )

    @model_validator(mode="after")
    def _per_uid_within_total(self) -> ControlConfig:
        if self.max_connections_per_uid > self.max_connections:
            raise ValueError("max_connections_per_uid cannot exceed max_connections")
        return self

    @field_validator("socket")
    @classmethod
    def _fits_sockaddr(cls, value: Path) -> Path:
        if len(os.fsencode(value)) >= SUN_PATH_MAX:
            raise ValueError(f"socket path is longer than the {SUN_PATH_MAX - 1} bytes a Unix socket allows")
        return value


class MetricsConfig(Section):
    """Prometheus text exposition over HTTP. Loopback only: the figures describe evidence handling."""

    enabled: bool = Field(False, description="Serve /metrics.")
    listen: str = Field("127.0.0.1:9464", description="host:port, host a loopback IP ([::1]:port for v6).")

    @field_validator("listen")
    @classmethod
    def _loopback(cls, value: str) -> str:
        host = listen_address(value, "127.0.0.1:9464")
        if not host.is_loopback:
            raise ValueError(f"{host} is not a loopback address: metrics are served on loopback only")
        return value

    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` as the (host, port) a socket binds."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def listen_address(value: str, example: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP of a `host:port` setting; a ValueError naming `example` if it is not an IP and a port."""
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, e.g. {example}")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (use 127.0.0.1 or [::1])") from None


class BayDisplayConfig(Section):
    """The officers' bay display: a read-only web page of the docks (README, Bay display)."""

    enabled: bool = Field(False, description="Serve the bay display page.")
    # Before listen: its validator reads this.
    allow_remote: bool = Field(
        False,
        description="Allow a non-loopback listen address (a kiosk screen on another machine). The page "
        "shows docked officers' names to whoever can reach it.",
    )
    listen: str = Field(
        "127.0.0.1:8947", description="host:port; a loopback IP unless allow_remote ([::1]:port for v6)."
    )
    max_clients: int = Field(8, ge=1, le=64, description="Screens that may watch live at once.")

    @field_validator("listen")
    @classmethod
    def _loopback_unless_allowed(cls, value: str, info: ValidationInfo) -> str:
        host = listen_address(value, "127.0.0.1:8947")
        if not host.is_loopback and not info.data.get("allow_remote", False):
            raise ValueError(
                f"{host} is not a loopback address; set bay_display.allow_remote = true to serve the "
                "bay display beyond this machine"
            )
        return value

    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)


class DockConfig(Section):
    """One `[[dock]]`: a physical port and the name operators and officers see for it."""

    port: str = Field(
        min_length=1,
        description="The dock's port as status --json shows it: the USB device path, or folder:/path.",
    )
    label: str = Field(min_length=1, max_length=24, description="What status and the bay display show.")


def short_port_name(port: str) -> str:
    """A short name that stays the same for a port across docks: the last part of its path (the USB
    port, `1-4`, or the watched folder's subdirectory)."""
    return port.removeprefix("folder:").rstrip("/").rpartition("/")[2] or port


BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class VaultConfig(Section):
    """The agency vault: an S3 bucket with Object Lock in compliance mode (see README, Agency vault).

    `ingestd vault check` checks the configured bucket whether or not `enabled` is set, so a bucket
    can be proven before replication is turned on."""

    enabled: bool = Field(False, description="Replicate every stored object to the vault in the background.")
    endpoint: str = Field("", description="S3 endpoint URL; https, or http on a loopback address only.")
    bucket: str = Field("", description="Bucket created with Object Lock (versioning follows).")
    region: str = Field("us-east-1", min_length=1, description="Region the requests are signed for.")
    access_key_id: str = Field("", description="The station's access key id.")
    secret_access_key_file: Path = Field(
        Path("/etc/ingestd/vault-secret"),
        description="File holding the secret key: owned by root, mode 0600.",
    )
    concurrency: int = Field(2, ge=1, le=16, description="Objects sent at once.")
    bandwidth_limit_mib_s: float = Field(
        0.0, ge=0, description="Upload rate cap in MiB/s across all transfers; 0 means no cap."
    )
    part_size_mib: int = Field(
        64, ge=5, le=5120, description="Multipart part size in MiB; larger objects go in parts."
    )
    retry_initial_seconds: float = Field(
        30.0, gt=0, le=3600, description="Wait after a first failure; doubles per failure, at most 1 h."
    )
    replication_deadline_hours: int = Field(
        24, ge=1, description="An object not replicated and verified this long after storing is flagged."
    )
    evict_high_water_percent: int = Field(
        0,
        ge=0,
        le=99,
        description="Evict local copies the vault holds when the store's filesystem is fuller; 0: never.",
    )
    evict_low_water_percent: int = Field(
        80, ge=1, le=98, description="Eviction stops once the store's filesystem is this full."
    )
    evict_confirmed_within_hours: int = Field(
        168,
        ge=1,
        description="An object is evicted only if its vault copy was put or scrubbed this recently, "
        "else it is read back from the vault first.",
    )
    stream_back_spool_mib: int = Field(
        4096,
        ge=1,
        description="Viewings of evicted recordings spool them whole in the state directory first: at "
        "most this many MiB being spooled at once; a viewing past it is refused.",
    )
    stream_back_reserve_mib: int = Field(
        1024,
        ge=0,
        description="A viewing is refused if its spool would leave the state directory's filesystem "
        "(the catalog's) less free than this.",
    )

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"https", "http"} or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://s3.example.org")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError("plain http is allowed only to a loopback address: the key would cross the wire")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if value and not BUCKET_NAME.fullmatch(value):
            raise ValueError("not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> VaultConfig:
        missing = self.unset_keys()
        if self.enabled and missing:
            raise ValueError(f"enabled needs {', '.join(missing)}")
        if self.evict_high_water_percent and self.evict_low_water_percent >= self.evict_high_water_percent:
            raise ValueError(
                f"evict_low_water_percent ({self.evict_low_water_percent}) must be below "
                f"evict_high_water_percent ({self.evict_high_water_percent})"
            )
        return self

    @property
    def evicts(self) -> bool:
        """Whether local copies are evicted at all: only with the vault enabled and a high-water mark."""
        return self.enabled and self.evict_high_water_percent > 0

    def unset_keys(self) -> list[str]:
        """The keys a vault cannot be reached without, where still empty."""
        return [name for name in ("endpoint", "bucket", "access_key_id") if not getattr(self, name)]

    def settings(self, config_path: Path | str) -> VaultSettings:
        """The adapter's settings, with the secret read from its root-only file."""
        missing = self.unset_keys()
        if missing:
            raise ConfigError(path=config_path, detail=f"vault: set {', '.join(missing)}")
        return VaultSettings(
            endpoint=self.endpoint,
            bucket=self.bucket,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=read_secret_file(self.secret_access_key_file),
            part_size=self.part_size_mib * 1024 * 1024,
            multipart_threshold=self.part_size_mib * 1024 * 1024,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path) -> str:
    """The vault's secret access key: one line of a private file (`read_private_file`)."""

    def fail(detail: str) -> ConfigError:
        return VaultSecretError(path=path, detail=detail)

    try:
        secret = read_private_file(path, fail, 4096).decode("ascii").strip()
    except UnicodeDecodeError:
        raise fail("not ASCII text") from None
    if not secret or any(char.isspace() for char in secret):
        raise fail("must hold exactly one secret key on one line")
    return secret


class Config(Section):
    daemon: DaemonConfig = DaemonConfig()
    catalog: CatalogConfig = CatalogConfig()
    store: StoreConfig = StoreConfig()
    audit: AuditConfig = AuditConfig()
    ingest: IngestConfig = IngestConfig()
    detection: DetectionConfig = DetectionConfig()
    deadlines: DeadlinesConfig = DeadlinesConfig()
    gaps: GapsConfig = GapsConfig()
    clock: ClockConfig = ClockConfig()
    retention: RetentionConfig = RetentionConfig()
    jobs: JobsConfig = JobsConfig()
    notify: NotifyConfig = NotifyConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    bay_display: BayDisplayConfig = BayDisplayConfig()
    vault: VaultConfig = VaultConfig()
    camera: tuple[CameraRuleConfig, ...] = ()
    dock: tuple[DockConfig, ...] = ()

    def dock_label(self, port: str) -> str:
        """The `[[dock]]` label of `port`, else its short name."""
        for dock in self.dock:
            if dock.port == port:
                return dock.label
        return short_port_name(port)

    def camera_rules(self) -> list[CameraRule]:
        """The driver rules with their passwords: reads the password files, so for the daemon only."""
        return [rule.to_rule() for rule in self.camera]

    def redacted_json(self) -> str:
        """The configuration as JSON with inline passwords masked (password files are named, not read)."""
        data = self.model_dump(mode="json")
        for rule in data["camera"]:
            if rule["password"]:
                rule["password"] = "***"  # noqa: S105 - the mask, not a password
        return json.dumps(data, indent=2, ensure_ascii=False)


def check_for_run(config: Config, explicit: Path | None) -> list[str]:
    """What the schema cannot see but `run` refuses, named by key: each rule's driver is installed, each
    password file is usable, the socket group exists. Raises one ConfigError for the file `explicit`
    resolves to, listing every problem; returns what this user could not check (a root-only password
    file, when not root)."""
    problems: list[str] = []
    unchecked: list[str] = []
    available = DriverRegistry([]).available()
    for index, rule in enumerate(config.camera):
        if rule.driver not in available:
            problems.append(
                f"camera[{index}].driver: {rule.driver!r} is not an installed driver "
                f"(available: {', '.join(sorted(available))})"
            )
        secret = rule.password_file
        if secret is None:
            continue
        if os.geteuid() != 0 and secret.exists() and not os.access(secret, os.R_OK):
            unchecked.append(f"camera[{index}].password_file {secret}: only root can read it; not checked")
            continue
        try:
            read_password_file(secret)
        except ConfigError as error:
            detail = str(error.facts["detail"]).removeprefix("password file: ")
            problems.append(f"camera[{index}].password_file: {secret}: {detail}")
    group = config.control.socket_group
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            problems.append(f"control.socket_group: no group {group!r} on this host")
    if config.vault.enabled:  # the daemon reads the vault secret at start: refuse what it would refuse
        try:
            read_secret_file(config.vault.secret_access_key_file)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError(
            path=resolve_config_path(explicit) or "(built-in defaults)", detail="; ".join(problems)
        )
    return unchecked


def _key_path(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in location:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            parts.append(part)
    return ".".join(parts) or "(top level)"


def parse_config(data: Mapping[str, Any], path: Path | str) -> Config:
    """Validate a parsed TOML document; every problem is named by its key path."""
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{_key_path(tuple(item['loc']))}: {_friendly(item)}" for item in error.errors())
        raise ConfigError(path=path, detail=problems) from None
    _refuse_duplicate_docks(config, path)
    return config


def _refuse_duplicate_docks(config: Config, path: Path | str) -> None:
    """Two `[[dock]]` entries for one port, or one label for two bays, would show an officer the wrong bay."""
    for key in ("port", "label"):
        seen: dict[str, int] = {}
        for index, dock in enumerate(config.dock):
            value = getattr(dock, key)
            if value in seen:
                raise ConfigError(
                    path=path, detail=f"dock[{index}].{key}: {value!r} is already dock[{seen[value]}].{key}"
                )
            seen[value] = index


def _friendly(item: Mapping[str, Any]) -> str:
    if item["type"] == "extra_forbidden":
        return "unknown key"
    return str(item["msg"])


def resolve_config_path(explicit: Path | None) -> Path | None:
    """--config, then $INGESTD_CONFIG, then the system path if present; None means built-in defaults."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(explicit: Path | None = None) -> Config:
    """Load the configuration the operator asked for. An explicitly named file must exist."""
    path = resolve_config_path(explicit)
    if path is None:
        return Config()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path=path, detail="file not found") from None
    except OSError as error:
        raise ConfigError(path=path, detail=f"cannot read: {error.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(path=path, detail=f"not UTF-8 at byte {error.start}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path=path, detail=f"not valid TOML: {error}") from None
    return parse_config(data, path)
