"""The configuration schema. Frozen, refuses unknown keys, and every key has a documented default.

Loaded from `--config PATH`, else `$INGESTD_CONFIG`, else `/etc/ingestd/config.toml`. A wrong key, type
or value stops start-up with a message naming the file and the key (exit code 78, EX_CONFIG).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from drivers.base import DriverOptions
from drivers.registry import CameraRule
from ingestd.errors import IngestdError

DEFAULT_CONFIG_PATH = Path("/etc/ingestd/config.toml")
CONFIG_ENV = "INGESTD_CONFIG"


class ConfigError(IngestdError):
    """The configuration file is missing, unreadable, not TOML, or does not fit the schema."""

    template = "config {path}: {detail}"
    exit_code = 78  # EX_CONFIG from sysexits.h


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
    read_back: bool = Field(True, description="Re-read each object from disk and compare both digests.")
    chunk_mib: int = Field(4, ge=1, le=64, description="Copy buffer size in MiB.")
    fsync_interval_mib: int = Field(
        256, ge=1, description="Durable-offset interval for resumable copies, in MiB."
    )


class AuditConfig(Section):
    checkpoint_every: int = Field(1000, ge=1, description="Write a signed checkpoint every N audit events.")


class CameraRuleConfig(Section):
    """One `[[camera]]` rule: udev properties (glob values) to a driver and its options."""

    match: dict[str, str] = Field(description="udev property name -> glob, all must match.")
    driver: str = Field(description="Driver name: serial, mass-storage, or a plug-in's entry-point name.")
    password: str = Field("", max_length=6, description="Device password (GA/T 947.4: 6 characters).")
    baud_rate: int = Field(115200, gt=0)
    filename_patterns: tuple[str, ...] = Field((), description="Regexes with named time groups.")
    extensions: tuple[str, ...] = Field((".mp4", ".mov", ".avi", ".jpg", ".wav"))

    @field_validator("match")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("a rule with no match properties would match every device")
        return value

    def to_rule(self) -> CameraRule:
        options = DriverOptions(
            password=self.password,
            baud_rate=self.baud_rate,
            filename_patterns=self.filename_patterns,
            extensions=self.extensions,
        )
        return CameraRule(match=dict(self.match), driver=self.driver, options=options)


class Config(Section):
    daemon: DaemonConfig = DaemonConfig()
    catalog: CatalogConfig = CatalogConfig()
    store: StoreConfig = StoreConfig()
    audit: AuditConfig = AuditConfig()
    camera: tuple[CameraRuleConfig, ...] = ()

    def camera_rules(self) -> list[CameraRule]:
        return [rule.to_rule() for rule in self.camera]


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
        return Config.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{_key_path(tuple(item['loc']))}: {_friendly(item)}" for item in error.errors()
        )
        raise ConfigError(path=path, detail=problems) from None


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
