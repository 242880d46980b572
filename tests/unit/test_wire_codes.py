"""Control-protocol error codes are constants: pinned here, one code per error class, so a rename or a
new subclass can never change or merge what a script on the socket sees."""

from __future__ import annotations

from collections import Counter

import pytest

from drivers import base
from drivers.base import AuthenticationFailed, DeviceGone, DriverError, DriverTimeout, MountError, Unsupported
from drivers.mount import FilesystemRefused
from drivers.registry import DriverLoadError
from ingestd.audit_anchor import AnchorError
from ingestd.bay.server import BayDisplayError
from ingestd.cli import ReplicationIncompleteError, StoreStillFullError, VaultCheckError
from ingestd.commandline import CrashPointError
from ingestd.config import ConfigError, VaultSecretError
from ingestd.control import protocol
from ingestd.control.client import ControlTimeoutError, DaemonUnavailable, RemoteError, SocketAccessDenied
from ingestd.control.queries import BadArgumentError
from ingestd.control.registry import PermissionDenied, UnknownCommand
from ingestd.control.server import ControlSocketError
from ingestd.ctl.evidence import ViewIntegrityError, ViewOutputError
from ingestd.ctl.read import OutputError
from ingestd.daemon import AlreadyRunningError
from ingestd.demo import DemoError
from ingestd.errors import IngestdError, UsageError
from ingestd.evidence.copies import CopyError, CopyIntegrityError
from ingestd.evidence.errors import ApprovalRefused, EvidenceUsageError, ExportError, ExportIntegrityError
from ingestd.operations import (
    LoweringNotAllowedError,
    OperationError,
    RefusedError,
    UnknownCameraError,
    UnknownFlagError,
    UnknownOfficerError,
    UnknownRecordingError,
)
from ingestd.policies.errors import (
    AttributionError,
    CalendarError,
    ExtensionRefusedError,
    PolicyError,
    RetentionError,
)
from ingestd.schema import SchemaError
from ingestd.session import _ObjectGoneError
from ingestd.stream_back import SpoolRefusedError
from store.audit import AuditError
from store.catalog import CatalogError
from store.errors import (
    DiskFullError,
    ExistingObjectCorruptError,
    IntegrityError,
    InvalidDigestError,
    ObjectMissing,
    ReadBackMismatchError,
    ResumeBusyError,
    ResumeMismatch,
    SourceSizeError,
    StoreError,
    StoreNotSetUpError,
)
from store.signing import SigningKeyError
from store.times import NaiveDatetimeError
from store.vault import (
    VaultBucketError,
    VaultCredentialsError,
    VaultError,
    VaultIntegrityError,
    VaultObjectMissingError,
    VaultRetentionError,
    VaultUnreachableError,
)
from tests.support.errors import error_classes

ROOTS = (IngestdError, StoreError, DriverError)

# The wire code of every error class, each code once. Change an entry only with a note to operators.
PINNED: dict[str, type[Exception]] = {
    "audit-anchor": AnchorError,
    "replication-incomplete": ReplicationIncompleteError,
    "store-still-full": StoreStillFullError,
    "spool-refused": SpoolRefusedError,
    "bay-display": BayDisplayError,
    "socket-access-denied": SocketAccessDenied,
    "store-not-set-up": StoreNotSetUpError,
    "already-running": AlreadyRunningError,
    "approval-refused": ApprovalRefused,
    "attribution": AttributionError,
    "audit": AuditError,
    "authentication-failed": AuthenticationFailed,
    "bad-argument": BadArgumentError,
    "calendar": CalendarError,
    "camera-protocol": base.CameraProtocolError,
    "catalog": CatalogError,
    "config": ConfigError,
    "control-socket": ControlSocketError,
    "control-timeout": ControlTimeoutError,
    "copy": CopyError,
    "copy-integrity": CopyIntegrityError,
    "crash-point": CrashPointError,
    "daemon-unavailable": DaemonUnavailable,
    "demo": DemoError,
    "device-gone": DeviceGone,
    "disk-full": DiskFullError,
    "driver": DriverError,
    "driver-load": DriverLoadError,
    "driver-timeout": DriverTimeout,
    "evidence-usage": EvidenceUsageError,
    "existing-object-corrupt": ExistingObjectCorruptError,
    "export": ExportError,
    "export-integrity": ExportIntegrityError,
    "extension-refused": ExtensionRefusedError,
    "filesystem-refused": FilesystemRefused,
    "ingestd": IngestdError,
    "integrity": IntegrityError,
    "invalid-digest": InvalidDigestError,
    "lowering-not-allowed": LoweringNotAllowedError,
    "mount": MountError,
    "naive-datetime": NaiveDatetimeError,
    "object-gone": _ObjectGoneError,
    "object-missing": ObjectMissing,
    "operation": OperationError,
    "output": OutputError,
    "permission-denied": PermissionDenied,
    "policy": PolicyError,
    "protocol": protocol.WireProtocolError,
    "read-back-mismatch": ReadBackMismatchError,
    "refused": RefusedError,
    "remote": RemoteError,
    "resume-busy": ResumeBusyError,
    "resume-mismatch": ResumeMismatch,
    "retention": RetentionError,
    "schema": SchemaError,
    "signing-key": SigningKeyError,
    "source-size": SourceSizeError,
    "store": StoreError,
    "unknown-camera": UnknownCameraError,
    "unknown-command": UnknownCommand,
    "unknown-flag": UnknownFlagError,
    "unknown-officer": UnknownOfficerError,
    "unknown-recording": UnknownRecordingError,
    "unsupported": Unsupported,
    "usage": UsageError,
    "vault": VaultError,
    "vault-bucket": VaultBucketError,
    "vault-check": VaultCheckError,
    "vault-credentials": VaultCredentialsError,
    "vault-integrity": VaultIntegrityError,
    "vault-object-missing": VaultObjectMissingError,
    "vault-retention": VaultRetentionError,
    "vault-secret": VaultSecretError,
    "vault-unreachable": VaultUnreachableError,
    "view-integrity": ViewIntegrityError,
    "view-output": ViewOutputError,
}


def _wire_errors() -> list[type[IngestdError | StoreError | DriverError]]:
    return [cls for cls in error_classes() if issubclass(cls, ROOTS)]


def test_every_error_class_declares_its_own_wire_code() -> None:
    inherited = [cls.__qualname__ for cls in _wire_errors() if "wire_code" not in vars(cls)]
    assert inherited == []


def test_each_wire_code_is_used_once_and_pinned() -> None:
    codes = Counter(cls.wire_code for cls in _wire_errors())
    assert [code for code, count in codes.items() if count > 1] == []
    assert {cls.wire_code: cls for cls in _wire_errors()} == PINNED


def test_the_protocols_own_codes_are_distinct_from_every_error_class_code() -> None:
    assert len(set(protocol.PROTOCOL_CODES)) == len(protocol.PROTOCOL_CODES)
    assert set(protocol.PROTOCOL_CODES).isdisjoint(PINNED)


@pytest.mark.parametrize("root", ROOTS)
def test_a_subclass_of_another_name_keeps_the_code_it_inherits_until_it_declares_one(
    root: type[IngestdError | StoreError | DriverError],
) -> None:
    renamed = type("SomethingElseEntirely", (root,), {})
    error = renamed(device="d", command="c", detail="x") if root is DriverError else renamed(detail="x")
    assert protocol.error_code(error) == root.wire_code


def test_a_remote_error_carries_the_code_the_daemon_answered_with() -> None:
    error = RemoteError(code="permission-denied", message="no role", exit_code=13)
    assert (error.wire_code, error.exit_code, str(error)) == ("permission-denied", 13, "no role")
