"""Logging: beamagent's structured events are standard-library ``logging`` records.

beamagent and ``supervisors`` log structured events (``session_started``,
``route_selected``, ``child_restarted``... with ``session_id``, ``backend``,
``run_id``, ``node_id`` bound) through structlog, into the stdlib loggers
named after their modules (``beamagent.runtime``, ``beamagent.session``,
``supervisors._supervisor``...). Nothing is configured on import: no handler,
no level. So, until the application configures logging, Python's
``logging.lastResort`` prints WARNING and above to stderr and nothing else;
a host's own ``logging`` configuration (``basicConfig``, ``dictConfig``)
decides everything else. :func:`configure_logging` is a ready-made set-up for
applications that have none. Secrets are redacted from every event
(:func:`redact`). See ``docs/logging.md``.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from supervisors._log import (
    REDACTED,
    event_dict,
    get_logger,
    is_secret_key,
    redact,
    redact_event,
    redact_text,
)

if TYPE_CHECKING:
    import structlog.types
    from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "LOGGERS",
    "REDACTED",
    "configure_logging",
    "event_dict",
    "get_logger",
    "is_secret_key",
    "redact",
    "redact_text",
]

LOGGERS = ("beamagent", "supervisors")
"""The stdlib loggers every event of this library goes through."""


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (recognised to replace it)."""


def _from_record(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    record: logging.LogRecord = event["_record"]
    event.update(event_dict(record))
    event["timestamp"] = (
        datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    return event


def _colours(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(
            f"unknown log level {level!r}: use debug, info, warning, error, critical "
            "or a logging level number"
        )
    return number


def configure_logging(
    level: str | int = "warning", *, json: bool = False, stream: TextIO | None = None
) -> None:
    """Send beamagent's (and ``supervisors``') log events to ``stream``, at ``level`` and above.

    For applications that do not configure ``logging`` themselves (those that
    do need nothing from here: the events are ordinary records of the
    ``beamagent.*`` and ``supervisors.*`` loggers). Installs one handler on
    each of those two loggers, sets their level and stops them propagating
    to the root logger (so a root handler does not print them twice). Calling
    it again replaces that handler; it never adds a second one.

    Args:
        level: ``"debug"``, ``"info"``, ``"warning"`` (default), ``"error"``,
            ``"critical"`` or a ``logging`` level number.
        json: one JSON object per line (``event``, ``level``, ``logger``,
            ``timestamp``, the bound keys such as ``session_id``, and
            ``exception``), for log shippers, instead of the console format.
        stream: where to write (default: ``sys.stderr``). The console format
            is coloured only when this is a terminal and ``NO_COLOR`` is unset.

    Raises:
        ValueError: ``level`` is not a level name.

    Example::

        configure_logging("info")                       # readable lines on stderr
        configure_logging("debug", json=True, stream=open("beamagent.log", "a"))
    """
    import structlog  # here: importing it costs a third of `import beamagent`

    number = _level(level)
    target = sys.stderr if stream is None else stream
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=_colours(target), exception_formatter=structlog.dev.plain_traceback
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            _from_record,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_event,  # again: tracebacks become text only here
            renderer,
        ],
    )
    handler = _Handler(target)
    handler.setFormatter(formatter)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(number)
        logger.propagate = False
