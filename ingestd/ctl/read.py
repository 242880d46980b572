"""`ingestctl` read commands: status, cameras, officers, footage, audit and replication, over the
control socket.

Exit codes (every command): 0 done; 2 a wrong flag, value or id (the message names it); 13 permission
denied (the daemon audits the attempt); 69 ingestd is not running (no socket); 70 ingestd failed
internally; 71 an output file could not be written (one that exists is never overwritten); 75 ingestd
did not answer in time; 76 a garbled answer. `status --watch` ends with 0 on Ctrl-C or SIGTERM.

When the daemon is down, `status`, `cameras`, `officers`, `audit` and `replication` read the catalog
directly, but only for a caller who can open the catalog file and holds a role allowing the command;
the output says so (`"served_by": "catalog"` in JSON, a note on stderr). `footage` needs the daemon,
because every search is audited.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from ingestd import replication
from ingestd.commandline import config_option, json_option, load, print_json
from ingestd.config import Config
from ingestd.control import queries
from ingestd.control.auth import current_caller
from ingestd.control.client import ControlTimeoutError, DaemonUnavailable
from ingestd.control.registry import EVERYONE, PermissionDenied
from ingestd.ctl import client
from ingestd.display import console, local_time, one_line_table, plain, styled, table
from ingestd.errors import IngestdError
from ingestd.exit_codes import ExitCode
from store.audit import Role
from store.catalog import Catalog
from store.durable import durable_file
from store.objects import FileObjectStore
from store.types import utcnow

WATCH_INTERVAL_S = 1.0
AUDIT_PAGE = queries.AUDIT_LIMIT_MAX
CSV_FIELDS = (
    "seq",
    "event_type",
    "time",
    "place",
    "source",
    "outcome",
    "user",
    "uid",
    "role",
    "subject",
    "details",
    "hash",
)
# Which commands may fall back to a direct catalog read, and for which roles (as on the socket).
DIRECT_READS: dict[str, frozenset[Role]] = {
    "status": EVERYONE,
    "cameras": EVERYONE,
    "officers": EVERYONE,
    "audit": frozenset({Role.ADMIN, Role.AUDITOR}),
    "replication": EVERYONE,
}


class OutputError(IngestdError):
    template = "cannot write {path}: {detail}"
    exit_code = ExitCode.OUTPUT_FAILED
    wire_code = "output"


# --- talking to the daemon, or reading the catalog directly ------------------------------------------


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _direct(
    config: Config, command: str, args: dict[str, Any], why: DaemonUnavailable, *, announce: bool
) -> dict[str, Any]:
    """The daemon is down: read the catalog ourselves, if this caller may (else re-raise `why`);
    `announce` says so on stderr (a live view says it inside itself instead)."""
    roles = DIRECT_READS.get(command)
    if roles is None:
        raise DaemonUnavailable(
            detail=f"{why.facts['detail']}; {command} needs the daemon, which checks and audits it"
        )
    caller = current_caller(config.control)
    database = _sqlite_file(config.catalog.url)
    readable = os.getuid() == 0 or (database is not None and os.access(database, os.R_OK))
    if not readable:
        raise DaemonUnavailable(detail=f"{why.facts['detail']}; and you cannot read the catalog directly")
    if not caller.roles & roles:
        raise PermissionDenied(detail=f"{command} needs one of the roles {', '.join(sorted(roles))}")
    catalog = Catalog.open(config.catalog.url, read_only=True)
    zone = config.deadlines.zone
    try:
        with catalog.transaction() as db:
            if command == "status":
                try:
                    free: int | None = FileObjectStore(config.store.root).free_bytes()
                except OSError:
                    free = None
                root = str(config.store.root)
                result = queries.status(
                    db, free_bytes=free, store_root=root, now=utcnow(), dock_label=config.dock_label
                )
                result["detection"] = None  # only the daemon knows what it watches
            elif command == "cameras":
                result = queries.cameras(db, args)
            elif command == "officers":
                result = queries.officers(db, args)
            elif command == "replication":
                vault = config.vault
                result = replication.view(
                    db, enabled=vault.enabled, bucket=vault.bucket, endpoint=vault.endpoint, now=utcnow()
                )
            else:
                result = queries.audit_events(db, args, zone=zone)
    except OperationalError as error:
        raise DaemonUnavailable(
            detail=f"{why.facts['detail']}; and you cannot read the catalog read-only: "
            f"{_unreadable(error, database)}"
        ) from None
    finally:
        catalog.close()
    if announce:
        click.echo(
            f"ingestctl: ingestd is not running ({why.facts['detail']}); read directly from the catalog "
            f"as {caller.user}: no live progress",
            err=True,
        )
    return result


def _unreadable(error: OperationalError, database: Path | None) -> str:
    """SQLite's reason, said for the operator: a reader may create nothing, not even the WAL index
    (which SQLite reports as a write to a read-only database)."""
    reason = str(error.orig)
    if database is not None and ("readonly database" in reason or "unable to open" in reason):
        return (
            f"its WAL index {database}-shm is missing and you may not create it "
            "(start ingestd, or read as root)"
        )
    return reason


def request(
    config: Config,
    command: str,
    args: dict[str, Any],
    *,
    timeout: float | None = None,
    announce: bool = True,
) -> dict[str, Any]:
    """Ask the daemon; `served_by` says whether the daemon or a direct catalog read answered (and,
    with `announce`, a note on stderr says the latter)."""
    try:
        result = client.call(config, command, args, timeout=timeout)
        served_by = "daemon"
    except DaemonUnavailable as why:
        result = _direct(config, command, client.given(args), why, announce=announce)
        served_by = "catalog"
    if not isinstance(result, dict):
        raise IngestdError(detail=f"ingestd answered {command} with {type(result).__name__}, not an object")
    return {**result, "served_by": served_by}


# --- formatting ------------------------------------------------------------------------------------


def _size(value: int | None) -> str:
    """At most three digits before the point (`1014.7 KiB` is shown as `1.0 MiB`), as `ls -h` does."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1000 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover - the loop always returns


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


BAR_CELLS = 8


def _bar(done: int, total: int) -> str:
    """A progress bar as literal text, with the percentage: one short line on any terminal."""
    if not total:
        return "-"
    percent = min(done, total) * 100 // total  # rounded down: 100% only when every byte is in
    filled = percent * BAR_CELLS // 100
    return f"{'█' * filled}{'░' * (BAR_CELLS - filled)} {percent:3d}%"


def status_view(result: dict[str, Any], zone: ZoneInfo) -> Group:
    """One line per dock and one per footer fact: at 80 columns a terminal cuts long cells with "…"
    rather than wrap (a pipe gets them whole)."""
    rows = [
        (
            dock["label"],
            dock["device_serial"],
            dock["officer_name"],
            dock["state"],
            _bar(dock["bytes_done"], dock["bytes_total"] or 0),
            f"{_size(int(dock['rate_bps']))}/s" if dock["rate_bps"] else None,
            _eta(dock["eta_s"]),
            dock["current_file"],
        )
        for dock in result["docks"]
    ]
    # At 80 columns a long label or officer name is cut at a readable width, and the file name gives
    # up the rest; the camera, state and figures never are.
    columns = (
        ("dock", 14),
        ("camera", None),
        ("officer", 12),
        ("state", None),
        ("progress", None),
        ("rate", None),
        ("ETA", None),
        ("file", None),
    )
    docks = one_line_table("Docks", columns, rows, flexible="file")
    flags = result["open_flags"]
    flag_text = ", ".join(f"{kind} {count}" for kind, count in sorted(flags.items())) or "none"
    verify = result["last_verify"]
    if verify is None:
        verify_text = "never run"
    else:
        verdict = "clean" if verify["clean"] else f"{verify['problems']} problem(s)"
        verify_text = f"{verdict} at {local_time(verify['at'], zone)} by {verify['by']}"
    footer = styled(
        *_detection_parts(result.get("detection")),
        ("open flags: ", "bold"),
        flag_text,
        "\n",
        ("store: ", "bold"),
        f"{_size(result['store']['free_bytes'])} free at {result['store']['root']}"
        + (
            f"; {result['store']['evicted_objects']} object(s) evicted, in the vault only"
            if result["store"].get("evicted_objects")
            else ""
        ),
        "\n",
        ("last verify: ", "bold"),
        verify_text,
        "\n",
        ("queued: ", "bold"),
        str(result["queued"]),
        ("  (read from the catalog: the daemon is not running)" if result["served_by"] == "catalog" else ""),
    )
    footer.no_wrap, footer.overflow = True, "ellipsis"
    return Group(docks, footer)


def _detection_parts(detection: dict[str, Any] | None) -> list[str | tuple[str, str]]:
    """`watching:` the daemon's camera sources: udev's chosen event source and why, and the folders."""
    if detection is None:
        return []
    udev = detection["udev"]
    watched = [f"udev {udev['source']} events ({udev['why']})"] if udev else []
    watched += [f"folder {folder}" for folder in detection["watch_folders"]]
    return [("watching: ", "bold"), "; ".join(watched) or "nothing (no udev, no watched folder)", "\n"]


# --- commands --------------------------------------------------------------------------------------


def _end_watch(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM ends --watch as Ctrl-C does: the live display gives the cursor back


@click.command()
@config_option
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh about once a second until Ctrl-C or SIGTERM, then exit 0 (--json: JSON lines).",
)
@json_option
def status(config_path: Path | None, watch: bool, as_json: bool) -> None:
    """Docks with their transfers, open flags by kind, store free space and the last verify."""
    config = load(config_path)
    zone = config.deadlines.zone
    if not watch:
        result = request(config, "status", {})
        if as_json:
            print_json(result)
        else:
            console().print(status_view(result, zone))
        return
    signal.signal(signal.SIGTERM, _end_watch)
    try:
        if as_json:
            while True:  # each line says who answered (served_by); no note on stderr every second
                click.echo(json.dumps(request(config, "status", {}, announce=False), ensure_ascii=False))
                time.sleep(WATCH_INTERVAL_S)
        first = status_view(request(config, "status", {}, announce=False), zone)
        with Live(first, refresh_per_second=4) as live:
            while True:
                time.sleep(WATCH_INTERVAL_S)
                live.update(_watch_frame(config, zone))
    except KeyboardInterrupt:
        return  # Ctrl-C is how --watch ends


def _watch_frame(config: Config, zone: ZoneInfo) -> RenderableType:
    """The next view; when the daemon stops or stops answering, that notice, inside the live view (text
    written beside a live display tears it), until it answers again or the catalog can be read."""
    try:
        return status_view(request(config, "status", {}, announce=False), zone)
    except (DaemonUnavailable, ControlTimeoutError) as error:
        notice = f"{error}; trying again every {WATCH_INTERVAL_S:g} s (Ctrl-C ends)"
        return Text(notice, style="bold red", no_wrap=True, overflow="ellipsis")


@click.command()
@config_option
@click.option("--serial", help="Only this camera (device serial, up to 7 characters).")
@click.option("--unit", help="Only cameras of this unit (unit number, up to 12).")
@json_option
def cameras(config_path: Path | None, serial: str | None, unit: str | None, as_json: bool) -> None:
    """Cameras: state (docked/in/out), battery, storage, last clock offset and state, holder."""
    config = load(config_path)
    zone = config.deadlines.zone
    result = request(config, "cameras", {"serial": serial, "unit": unit})
    if as_json:
        print_json(result)
        return
    columns = (
        "serial",
        "unit",
        "state",
        "battery",
        "storage free",
        "clock offset",
        "clock",
        "holder",
        "checked out",
        "last docked",
    )
    rows = []
    for camera in result["cameras"]:
        holder = camera["holder"]
        offset = camera["last_clock_offset_s"]
        rows.append(
            (
                camera["device_serial"],
                camera["unit_no"],
                camera["state"],
                f"{camera['battery_percent']}%" if camera["battery_percent"] is not None else None,
                _size(camera["storage_free_bytes"]),
                f"{offset:+.3f} s" if offset is not None else None,
                camera["clock_state"],
                f"{holder['officer_no']} {holder['name']}" if holder else None,
                local_time(camera["checked_out_at"], zone),
                local_time(camera["last_docked_at"], zone),
            )
        )
    console().print(table("Cameras", columns, rows, empty="-"))


@click.command()
@config_option
@json_option
def replication_command(config_path: Path | None, as_json: bool) -> None:
    """Replication to the vault: items per state, oldest pending, throughput, last error, bucket."""
    config = load(config_path)
    zone = config.deadlines.zone
    result = request(config, "replication", {})
    if as_json:
        print_json(result)
        return
    counts = result["counts"]
    age = result["oldest_pending_age_s"]
    console().print(
        styled(
            ("vault: ", "bold"),
            f"{result['bucket'] or '-'} at {result['endpoint'] or '-'}"
            + ("" if result["enabled"] else " (vault.enabled is false: nothing replicates)"),
            "\n",
            ("items: ", "bold"),
            ", ".join(
                f"{state} {counts[state]}" for state in ("replicated", "pending", "uploading", "failed")
            ),
            "\n",
            ("oldest not replicated: ", "bold"),
            f"{local_time(result['oldest_pending_at'], zone)} ({_eta(age)} ago)"
            if age is not None
            else "none",
            "\n",
            ("throughput (last hour): ", "bold"),
            f"{_size(int(result['bytes_per_s_last_hour']))}/s; "
            f"{_size(result['replicated_bytes'])} replicated in all",
            "\n",
            ("evicted locally: ", "bold"),
            f"{result['evicted']['objects']} object(s), {_size(result['evicted']['bytes'])} "
            "(read back from the vault)",
            "\n",
            ("last error: ", "bold"),
            f"{result['last_error_subject']}: {result['last_error']}" if result["last_error"] else "none",
        )
    )


@click.command()
@config_option
@click.option("--officer", help="Only this officer (officer number, up to 6 characters).")
@click.option("--unit", help="Only officers of this unit (unit number).")
@json_option
def officers(config_path: Path | None, officer: str | None, unit: str | None, as_json: bool) -> None:
    """Officers: number, name, unit and how many cameras each holds now."""
    config = load(config_path)
    result = request(config, "officers", {"officer": officer, "unit": unit})
    if as_json:
        print_json(result)
        return
    columns = ("officer", "name", "unit", "unit name", "cameras held")
    rows = [
        (row["officer_no"], row["name"], row["unit_no"], row["unit_name"], row["cameras_held"])
        for row in result["officers"]
    ]
    console().print(table("Officers", columns, rows, empty="-"))


@click.command()
@config_option
@click.option("--device", help="Camera device serial.")
@click.option("--officer", help="Officer number.")
@click.option("--unit", help="Unit number.")
@click.option("--since", help="Recorded at or after: a date (station time zone) or ISO 8601 with a zone.")
@click.option("--until", help="Recorded before: a date (whole day included) or ISO 8601 with a zone.")
@click.option("--case", help="Case id.")
@click.option("--late", is_flag=True, help="Only recordings stored after their deadline.")
@click.option("--flagged", is_flag=True, help="Only recordings with an open flag.")
@click.option(
    "--class",
    "retention_class",
    type=click.Choice(["routine", "standard", "long-term"]),
    help="Retention class.",
)
@click.option("--include-purged", is_flag=True, help="Also list recordings removed by the retention purge.")
@click.option(
    "--limit",
    type=click.IntRange(1, queries.FOOTAGE_LIMIT_MAX),
    default=queries.FOOTAGE_LIMIT_DEFAULT,
    show_default=True,
    help="Recordings per page.",
)
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@json_option
def footage(config_path: Path | None, as_json: bool, **filters: Any) -> None:
    """Search recordings (metadata), newest first. Each search is audited with who searched for what.

    Viewing or copying the footage itself needs an approval (see `ingestctl approve`)."""
    config = load(config_path)
    zone = config.deadlines.zone
    result = request(config, "footage", filters)
    if as_json:
        print_json(result)
        return
    columns = (
        "id",
        "recorded",
        "device",
        "officer",
        "unit",
        "size",
        "late",
        "flags",
        "class",
        "case",
        "hold",
    )
    rows = [
        (
            item["id"],
            local_time(item["recorded_at"], zone),
            item["device_serial"],
            f"{_cell(item['officer_no'])} {item['officer_name'] or ''}".strip(),
            item["unit_no"],
            _size(item["size"]),
            "late" if item["late"] else "",
            ",".join(item["open_flags"]),
            item["retention_class"],
            item["case_id"],
            "hold" if item["legal_hold"] else "",
        )
        for item in result["recordings"]
    ]
    out = console()
    out.print(table("Footage", columns, rows, empty="-"))
    if result["next"]:
        out.print(plain(f"more: --cursor '{result['next']}'"), highlight=False)


def _audit_pages(config: Config, filters: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
    after: int | None = None
    left = limit
    served_by = "daemon"
    while True:
        page_size = min(AUDIT_PAGE, left) if left is not None else AUDIT_PAGE
        result = request(config, "audit", {**filters, "limit": page_size, "after_seq": after})
        served_by = result["served_by"]
        for event in result["events"]:
            yield {**event, "served_by": served_by}
        if left is not None:
            left -= result["count"]
        after = result["next_after_seq"]
        if after is None or (left is not None and left <= 0):
            return


def _refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise OutputError(path=path, detail="it already exists (an export never overwrites a file)")


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[io.TextIOBase | Any]:
    """stdout, or a new file written whole and durably (store/durable.py), never over an existing one."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    _refuse_existing(path)  # before asking the daemon for anything
    stage = "create"
    try:
        with durable_file(path, overwrite=False) as raw:
            stage = "write"
            handle = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            try:
                yield handle
            finally:
                handle.detach()  # flushes into `raw`, which durable_file fsyncs, then names or removes
            stage = "publish"
    except OSError as error:
        if stage == "create":
            raise OutputError(path=path, detail=error.strerror or str(error)) from None
        if stage == "publish" and isinstance(error, FileExistsError):
            raise OutputError(path=path, detail="it appeared while the export was written; kept") from None
        raise


def _write_csv(events: Iterator[dict[str, Any]], out: Any) -> int:
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    count = 0
    for event in events:
        details = json.dumps(event["details"], ensure_ascii=False, sort_keys=True)
        writer.writerow({**event, "details": details})
        count += 1
    return count


def _write_json(events: Iterator[dict[str, Any]], out: Any) -> int:
    # A JSON array streamed one event at a time, so a long trail never sits in memory twice.
    out.write("[")
    count = 0
    for event in events:
        event.pop("served_by", None)
        out.write(("," if count else "") + "\n  " + json.dumps(event, ensure_ascii=False, sort_keys=True))
        count += 1
    out.write("\n]\n")
    return count


@click.command()
@config_option
@click.option("--action", help="Event type, exactly, or a family with a trailing * (e.g. 'ctl.*').")
@click.option("--actor", help="OS user name who acted.")
@click.option("--outcome", help="ok, error, denied, problems, ...")
@click.option("--since", help="At or after: a date (station time zone) or ISO 8601 with a zone.")
@click.option("--until", help="Before: a date (whole day included) or ISO 8601 with a zone.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many events (table: per page, default 100, at most 10000; csv/json default: all).",
)
@click.option(
    "--before",
    type=click.IntRange(min=1),
    default=None,
    help="Table: events older than this seq (the next page, as the table's last line says).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default=None,
    help="table on a terminal; csv or json export the CJIS 5.4 fields.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the export to this new file (atomically; an existing file is refused) instead of stdout.",
)
@json_option
def audit(
    *,
    config_path: Path | None,
    fmt: str | None,
    output: Path | None,
    limit: int | None,
    before: int | None,
    as_json: bool,
    **filters: Any,
) -> None:
    """Show or export the audit trail: event type, time, place (this station), source, outcome, user.

    Needs the admin or auditor role. The table shows the newest events first, a page at a time (its last
    line says how to get the next); exports are in chain order (seq), with each event's hash."""
    if as_json and fmt not in (None, "json"):
        raise click.UsageError("--json and --format csv contradict each other")
    fmt = (
        "json"
        if as_json
        else (
            fmt
            or (
                "csv"
                if output is not None and output.suffix == ".csv"
                else "json"
                if output is not None
                else "table"
            )
        )
    )
    if fmt == "table" and output is not None:
        raise click.UsageError("--output needs --format csv or json")
    config = load(config_path)
    if before is not None and fmt != "table":
        raise click.UsageError("--before pages the table; csv and json export in chain order")
    if fmt == "table":
        zone = config.deadlines.zone
        page = min(limit or queries.AUDIT_LIMIT_DEFAULT, AUDIT_PAGE)
        newest = {**filters, "limit": page, "newest_first": True, "before_seq": before}
        found = request(config, "audit", newest)
        events = found["events"]
        columns = ("seq", "time", "event", "user", "role", "outcome", "subject", "source")
        rows = [
            (
                event["seq"],
                local_time(event["time"], zone),
                event["event_type"],
                event["user"],
                event["role"],
                event["outcome"],
                event["subject"],
                event["source"],
            )
            for event in events
        ]
        shown = console()
        shown.print(table("Audit trail (newest first)", columns, rows, empty="-"))
        if found["next_before_seq"] is not None:
            shown.print(plain(f"more: --before {found['next_before_seq']}"), highlight=False)
        return
    writer: Callable[[Iterator[dict[str, Any]], Any], int] = _write_csv if fmt == "csv" else _write_json
    with _output(output) as out:
        count = writer(_audit_pages(config, filters, limit), out)
    if output is not None:
        click.echo(f"{count} event(s) written to {output}", err=True)
