"""Every exit code that `ingestd` and `ingestctl` choose themselves: one table, each code once, by name.

`store/` and `drivers/` keep their codes (20-55) on their own error classes, since they import nothing of
ours. The README's exit-code table lists both; `tests/unit/test_exit_codes.py` checks it against this one.
This module imports nothing, so any module may use it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an error with no code of its own
    USAGE = 2  # wrong flag, value or id
    PROBLEMS = 3  # integrity (store.errors.IntegrityError): a digest, the chain, a bag or bytes handed out
    INGEST_INCOMPLETE = 4  # a file failed or the camera was unplugged
    PERMISSION_DENIED = 13  # no role allowing the command, or no access to the control socket (EACCES)
    APPROVAL_REFUSED = 14  # no valid approval for viewing, copying or exporting footage
    EXPORT_FAILED = 15  # nothing written: the destination exists, is not writable, or its reader went
    SIGNER_UNVERIFIED = 17  # verify-export: consistent, but not checked against a trusted station key
    SCHEMA_MISMATCH = 32  # the catalog schema is older or newer than this release
    ALREADY_RUNNING = 43  # another `ingestd run` holds the state directory
    REPLICATION_INCOMPLETE = 56  # `ingestd replicate --once` left items not replicated and verified
    STORE_STILL_FULL = 57  # `ingestd vault evict` left the store past its high-water mark
    SPOOL_REFUSED = 58  # a viewing's vault spool would pass its budget or the state directory's reserve
    UNAVAILABLE = 69  # EX_UNAVAILABLE: ingestd is not running
    SOFTWARE = 70  # EX_SOFTWARE: ingestd failed internally
    OUTPUT_FAILED = 71  # EX_OSERR: an output file or the control socket could not be created
    OS_ERROR = 74  # EX_IOERR: a path the station cannot create or open
    TEMPFAIL = 75  # EX_TEMPFAIL: no answer in time, or the daemon refused or ended the connection
    PROTOCOL = 76  # EX_PROTOCOL: a garbled request or answer on the control socket
    CONFIG = 78  # EX_CONFIG: bad configuration
    ABORTED = 130  # the operator aborted (Ctrl-C at a prompt)
