"""Logging set-up for applications that use beamagent.

beamagent logs through ``structlog`` (events like ``session_started``,
``route_selected``, ``child_restarted`` with ``session_id``, ``backend``,
``run_id`` and ``node_id`` bound) and never configures logging on import: that
is the application's call. :func:`configure_logging` is a sensible default.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def configure_logging(
    level: str | int = "warning", *, json: bool = False, stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process: a level filter and a renderer.

    Args:
        level: ``"debug"``, ``"info"``, ``"warning"`` (default), ``"error"``,
            ``"critical"`` or a ``logging`` level number.
        json: render one JSON object per line (for log shippers) instead of
            the coloured console format.
        stream: where to write (default: stderr).
    """
    number = _LEVELS[level.lower()] if isinstance(level, str) else int(level)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
