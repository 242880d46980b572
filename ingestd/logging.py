"""structlog, configured once at the entry point: JSON lines for journald, readable on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(
    log_format: LogFormat = "auto", level: int = logging.INFO, *, stream: TextIO | None = None
) -> None:
    """The daemon logs to stdout (journald); one-shot commands pass stderr so stdout stays their output."""
    out = stream or sys.stdout
    render_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if render_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library (APScheduler's "Execution of job ... skipped"): their
    # records take the same path, so every line is JSON where ours are. Replacing the root's handlers
    # keeps a second call from doubling lines. Their INFO is chatter (a line per APScheduler job run,
    # Alembic's context): warnings and worse only, as Python shows them unconfigured.
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(max(level, logging.WARNING))


class _ToStructlog(logging.Handler):
    """A standard-library record as one structlog event: its message, level, logger name, exception."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format arguments: logging's own report
            self.handleError(record)
            return
        structlog.get_logger().log(record.levelno, message, logger=record.name, exc_info=record.exc_info)
