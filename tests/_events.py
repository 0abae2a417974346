"""Wait for beamagent's log events in tests: block on the event itself, never sleep."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from beamagent.log import event_dict

if TYPE_CHECKING:
    from beamagent import Session


class LogEvents(logging.Handler):
    """Collect the structured events of one logger (``with LogEvents() as events:``).

    Lowers the logger's level to ``level`` while it is installed, so that
    debug and info events (``session_hibernated``...) are made at all;
    restores it after.
    """

    def __init__(self, logger: str = "beamagent.session", level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self._logger = logging.getLogger(logger)
        self._level = self._logger.level
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    def __enter__(self) -> LogEvents:
        if self._logger.getEffectiveLevel() > self.level:
            self._logger.setLevel(self.level)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        event = event_dict(record)
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def matching(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The events named ``event`` so far whose keys have the values in ``fields``."""
        with self._changed:
            return [
                e
                for e in self._events
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait(self, event: str, timeout: float, count: int = 1, **fields: Any) -> dict[str, Any]:
        """Block until ``count`` such events were logged; return the last one.

        Raises:
            AssertionError: they did not come within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := self.matching(event, **fields)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{count} {event!r} event(s) with {fields} expected within {timeout} s; "
                        f"got {len(found)}"
                    )
                self._changed.wait(remaining)
            return found[count - 1]


def until_hibernating(events: LogEvents, session: Session, timeout: float = 30.0) -> None:
    """Return once ``session`` is hibernating; ``events`` must be collecting already.

    The session logs ``session_hibernated`` after it entered the state, so a
    ``health()`` that does not say so yet means the event is still to come.
    """
    session_id = session.session_id
    while True:
        seen = len(events.matching("session_hibernated", session_id=session_id))
        if session.health() == "hibernating":
            return
        events.wait("session_hibernated", timeout, count=seen + 1, session_id=session_id)
