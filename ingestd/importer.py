"""`ingestd import`: a one-shot ingest of a mounted volume or directory through the dock pipeline.

Used for card readers and by the benchmarks. The identity comes from the operator (`--device-id`,
`--officer-no`) when the volume has no identity file; everything after identification is the same
session code the daemon runs, including custody, read-back and deletion rules. `--officer-no` must name
an officer already in the registry (as for `ingestctl checkout`): an import never creates one.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from drivers.base import CameraIdentity, DeviceInfo, DriverOptions
from drivers.mass_storage import MassStorageCamera
from ingestd import records
from ingestd.errors import UsageError
from ingestd.operations import UnknownOfficerError
from ingestd.progress import DockProgress
from ingestd.services import Services
from ingestd.session import IngestSettings, SessionSummary, run_session

DEVICE_SERIAL_MAX = 7
OFFICER_NO_MAX = 6


class OperatorNamedCamera(MassStorageCamera):
    """A volume whose identity the operator states; an identity file on it still wins for the serial.
    The officer the operator names replaces the file's officer, name included (the registry's counts)."""

    def __init__(self, device: DeviceInfo, options: DriverOptions, officer_no: str | None) -> None:
        super().__init__(device, options)
        self._officer_no = officer_no

    def identify(self) -> CameraIdentity:
        identity = super().identify()
        if self._officer_no is not None:
            identity = dataclasses.replace(identity, officer_no=self._officer_no, officer_name="")
        return identity


def run_import(
    services: Services,
    path: Path,
    *,
    device_id: str,
    officer_no: str | None,
    settings: IngestSettings,
    clock: Callable[[], datetime],
    progress: DockProgress | None = None,
) -> SessionSummary:
    if not path.is_dir():
        raise UsageError(detail=f"{path}: not a directory (mount the card first)")
    if not device_id or len(device_id.encode()) > DEVICE_SERIAL_MAX:
        raise UsageError(
            detail=f"--device-id {device_id!r}: 1 to {DEVICE_SERIAL_MAX} characters (GA/T 947 cSerial)"
        )
    if officer_no is not None and (not officer_no.isalnum() or len(officer_no) > OFFICER_NO_MAX):
        raise UsageError(detail=f"--officer-no {officer_no!r}: 1 to {OFFICER_NO_MAX} letters or digits")
    if officer_no is not None:
        with services.catalog.transaction() as catalog_session:
            if records.officer_by_number(catalog_session, officer_no) is None:
                raise UnknownOfficerError(officer_no=officer_no)
    device = DeviceInfo(
        port=f"import:{path.resolve()}", properties={"ID_SERIAL_SHORT": device_id}, directory=path.resolve()
    )
    options = DriverOptions()
    camera = OperatorNamedCamera(device, options, officer_no)
    return run_session(
        services,
        camera,
        device=device,
        driver_name="import",
        options=options,
        settings=settings,
        clock=clock,
        progress=progress or DockProgress(),
        unplugged=threading.Event(),
        stopping=threading.Event(),
    )
