"""Loggers of this package (and of beamagent): structlog's API, the standard library's records.

Every module does ``log = get_logger(__name__)`` and logs structured events
(``log.info("child_started", child_id=...)``, ``log.bind(session_id=...)``).
Each event becomes a real :class:`logging.LogRecord` of the stdlib logger
named after the module, whatever ``structlog.configure`` the host did or did
not do, so hosts filter and route our events with ``logging`` alone:

* ``record.getMessage()`` is ``"<event> key=value ..."`` (values by ``repr``);
* ``record.event`` is the event name, and every key is a record attribute
  (``extra``); a key that clashes with a ``LogRecord`` attribute (``process``,
  ``thread``, ``message``...) gets a trailing underscore: ``record.process_``;
* :func:`event_dict` gives the event back as a dict with its own key names.

Secrets never reach a record: :func:`redact` runs on every event (see there).
A call below the logger's effective level returns after one
``Logger.isEnabledFor`` check: no processor runs, no record is made.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog.stdlib
    from structlog.typing import EventDict, WrappedLogger

__all__ = ["REDACTED", "event_dict", "get_logger", "redact", "redact_event"]

REDACTED = "[REDACTED]"
"""What a secret is replaced with."""

_MAX_DEPTH = 8
# Attributes every LogRecord has (plus those Formatter.format adds): an event key by
# one of these names cannot be an ``extra`` (logging raises KeyError), so it is renamed.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("name", logging.INFO, "path", 0, "msg", (), None).__dict__
) | {"message", "asctime"}
# Frames between the caller and logging.Logger.<method>: our method, the stdlib
# BoundLogger's _proxy_to_logger and BoundLoggerBase's. Records point at the caller.
_STACKLEVEL = 4

# --- redaction ----------------------------------------------------------------------------

_SECRET_LAST_WORDS = frozenset(
    {
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "authorization",
        "apikey",
        "auth",
        "bearer",
        "cookie",
        "credential",
        "credentials",
    }
)
_SECRET_LAST_PAIRS = frozenset(
    {("api", "key"), ("private", "key"), ("secret", "key"), ("access", "key")}
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORDS = re.compile(r"[a-z0-9]+")
_FLAG = re.compile(r"--?([A-Za-z][A-Za-z0-9_\-]*)")
_SECRET_TEXT = re.compile(
    r"""
      (?P<bearer>(?i:\bbearer\s+))[A-Za-z0-9._~+/=\-]{6,}
    | (?P<assign>(?<![A-Za-z0-9])
        (?i:api[_\-]?key|secret(?:[_\-]?(?:access[_\-]?)?key)?|private[_\-]?key
           |password|passwd|token|authorization|credentials?)
        ["']?\s*[:=]\s*["']?(?i:(?:bearer|basic|token)\s+)?)[^\s"'&,;)}\]]+
    | (?P<userinfo>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+:)[^/\s@]+(?=@)
    | \bsk-[A-Za-z0-9][A-Za-z0-9_\-]{10,}
    | \bgh[pousr]_[A-Za-z0-9]{20,}
    | \bgithub_pat_[A-Za-z0-9_]{20,}
    | \bxox[abprs]-[A-Za-z0-9\-]{10,}
    | \bAIza[0-9A-Za-z_\-]{30,}
    | \bAKIA[0-9A-Z]{16}\b
    | \beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}
    """,
    re.VERBOSE,
)

_SHORTEST_SECRET_TEXT = len("token=x")  # nothing shorter can match _SECRET_TEXT


@functools.lru_cache(maxsize=2048)
def is_secret_key(key: str) -> bool:
    """True if a value under this name is a credential (``api_key``, ``OPENAI_API_KEY``,
    ``access_token``, ``Authorization``, ``x-api-key``, ``clientSecret``...).

    Counts such as ``max_tokens`` or ``input_tokens`` are not credentials.
    """
    words = _WORDS.findall(_CAMEL.sub("_", key).lower())
    if not words:
        return False
    return words[-1] in _SECRET_LAST_WORDS or tuple(words[-2:]) in _SECRET_LAST_PAIRS


def _text_replacement(match: re.Match[str]) -> str:
    for group in ("bearer", "assign", "userinfo"):
        prefix = match.group(group)
        if prefix is not None:
            return prefix + REDACTED
    return REDACTED


def redact_text(text: str) -> str:
    """``text`` with credential-looking parts replaced by ``[REDACTED]``."""
    if len(text) < _SHORTEST_SECRET_TEXT:  # most values: ids, names, states
        return text
    return _SECRET_TEXT.sub(_text_replacement, text)


def _secret_value(value: Any) -> Any:
    # None and "" say "not set", which is worth seeing; anything else is hidden.
    return value if value is None or value == "" else REDACTED


def redact(value: Any, _depth: int = 0) -> Any:
    """``value`` with its secrets replaced by ``[REDACTED]``; unchanged parts are the same objects.

    * mapping entries whose key names a credential (see :func:`is_secret_key`),
      at any depth: ``{"env": {"OPENAI_API_KEY": ...}}``, header dicts;
    * ``(name, value)`` pairs with such a name (header lists), and the value
      after a ``--api-key``/``--token`` flag in an argv list;
    * inside any string: ``Bearer ...``, ``api_key=...``/``token: ...``,
      ``Authorization: ...``, passwords in URLs, and strings shaped like
      OpenAI/Anthropic (``sk-...``), GitHub, Slack, Google or AWS keys and JWTs.

    Strings in lists, tuples, sets, bytes and exception messages are scanned
    too; other objects are left alone. Nesting deeper than 8 levels is not walked.
    """
    if isinstance(value, str):
        return redact_text(value)
    if _depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return _redact_mapping(value, _depth)
    if isinstance(value, list | tuple):
        return _redact_sequence(value, _depth)
    if isinstance(value, set | frozenset):
        items = [redact(item, _depth + 1) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return type(value)(items) if changed else value
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("latin-1")
        clean = redact_text(text)
        return value if clean == text else clean.encode("latin-1")
    if isinstance(value, BaseException):
        text = repr(value)
        clean = redact_text(text)
        return value if clean == text else clean
    return value


def _redact_mapping(value: Mapping[Any, Any], depth: int) -> Any:
    out: dict[Any, Any] = {}
    changed = False
    for key, item in value.items():
        new = (
            _secret_value(item)
            if isinstance(key, str) and is_secret_key(key)
            else redact(item, depth + 1)
        )
        changed = changed or new is not item
        out[key] = new
    return out if changed else value


def _redact_sequence(value: list[Any] | tuple[Any, ...], depth: int) -> Any:
    items = list(value)
    if len(items) == 2 and isinstance(items[0], str) and is_secret_key(items[0]):
        items[1] = _secret_value(items[1])  # a (header, value) pair
    else:
        hide_next = False
        for i, item in enumerate(items):
            if hide_next:
                items[i] = _secret_value(item)
                hide_next = False
                continue
            if isinstance(item, str) and (flag := _FLAG.fullmatch(item)):
                hide_next = is_secret_key(flag.group(1))
            items[i] = redact(item, depth + 1)
    if all(new is old for new, old in zip(items, value, strict=True)):
        return value
    return items if isinstance(value, list) else tuple(items)


def redact_event(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """A structlog processor: :func:`redact` every value of the event (never raises)."""
    try:
        for key, value in event.items():
            if key in ("exc_info", "stack_info"):
                continue
            event[key] = _secret_value(value) if is_secret_key(key) else redact(value)
    except Exception as exc:  # logging must never crash its caller, nor leak on a bug
        return {"event": event.get("event"), "redaction_failed": repr(exc)}
    return event


# --- records ------------------------------------------------------------------------------


def _to_record(
    _logger: WrappedLogger, _method: str, event: EventDict
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: ``Logger.<method>`` arguments for a real ``LogRecord``."""
    name = event.pop("event", None)
    text = "" if name is None else str(name)
    positional = event.pop("positional_args", None)
    if positional:
        try:
            text = text % positional
        except (TypeError, ValueError):
            text = f"{text} {positional!r}"
    kwargs: dict[str, Any] = {"stacklevel": _STACKLEVEL + int(event.pop("stacklevel", 1)) - 1}
    for key in ("exc_info", "stack_info"):
        if key in event:
            kwargs[key] = event.pop(key)
    parts = [text.replace("%", "%%")]
    values: list[Any] = []
    extra: dict[str, Any] = {"event": text}
    for key, value in event.items():
        key = str(key)
        parts.append(f" {key.replace('%', '%%')}=%r")
        values.append(value)
        extra[f"{key}_" if key in _RECORD_ATTRS else key] = value
    kwargs["extra"] = extra
    return ("".join(parts), *values), kwargs


def event_dict(record: logging.LogRecord) -> dict[str, Any]:
    """The structlog event a record carries: ``{"event": name, **keys}`` with the keys' own names.

    For a record that did not come from :func:`get_logger`, ``event`` is its
    message and the keys are its ``extra`` attributes.
    """
    attrs = record.__dict__
    out: dict[str, Any] = {"event": attrs["event"] if "event" in attrs else record.getMessage()}
    for key, value in attrs.items():
        if key in _RECORD_ATTRS or key == "event" or key.startswith("_"):
            continue
        if key.endswith("_") and key[:-1] in _RECORD_ATTRS:
            key = key[:-1]
        out[key] = value
    return out


# --- loggers ------------------------------------------------------------------------------

_DEBUG, _INFO, _WARNING, _ERROR, _CRITICAL = (
    logging.DEBUG,
    logging.INFO,
    logging.WARNING,
    logging.ERROR,
    logging.CRITICAL,
)


_LEVEL_METHODS = {
    _DEBUG: "debug",
    _INFO: "info",
    _WARNING: "warning",
    _ERROR: "error",
    _CRITICAL: "critical",
}


def _structlog_logger(
    logger: logging.Logger, context: dict[str, Any]
) -> structlog.stdlib.BoundLogger:
    # structlog is imported here, at the first event that passes its logger's level:
    # importing it imports rich (and asyncio), a third of `import beamagent` (docs/decisions.md).
    import structlog.stdlib
    from structlog.contextvars import merge_contextvars

    processors: list[Any] = [merge_contextvars, redact_event, _to_record]
    return structlog.stdlib.BoundLogger(logger, processors, context)


class BoundLogger:
    """structlog's bound-logger API over a stdlib logger, checking the level before any work.

    ``bind``/``new``/``unbind``/``try_unbind`` return a new logger with the
    context changed; ``debug``... ``critical``, ``exception`` and ``log`` make
    an event. A call below the logger's effective level costs one
    ``isEnabledFor`` (a dict lookup in the logger's cache): no context copy, no
    processor, no record. structlog itself is imported at the first event that
    passes (and its stdlib ``BoundLogger`` then does the work), so importing
    this library costs no structlog while nothing is logged.
    """

    __slots__ = ("_bound", "_context", "_logger")

    def __init__(self, logger: logging.Logger, context: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._context: dict[str, Any] = {} if context is None else context
        self._bound: structlog.stdlib.BoundLogger | None = None

    def __repr__(self) -> str:
        return f"<BoundLogger(context={self._context!r}, logger={self._logger.name!r})>"

    def bind(self, **new_values: Any) -> BoundLogger:
        """A logger with ``new_values`` added to the context."""
        return BoundLogger(self._logger, {**self._context, **new_values})

    def new(self, **new_values: Any) -> BoundLogger:
        """A logger whose context is ``new_values`` alone."""
        return BoundLogger(self._logger, dict(new_values))

    def unbind(self, *keys: str) -> BoundLogger:
        """A logger without ``keys`` in the context (``KeyError`` if one is missing)."""
        context = dict(self._context)
        for key in keys:
            del context[key]
        return BoundLogger(self._logger, context)

    def try_unbind(self, *keys: str) -> BoundLogger:
        """A logger without ``keys`` in the context (missing ones ignored)."""
        context = dict(self._context)
        for key in keys:
            context.pop(key, None)
        return BoundLogger(self._logger, context)

    def isEnabledFor(self, level: int) -> bool:
        """Whether an event at ``level`` would be logged (check before building costly fields)."""
        return self._logger.isEnabledFor(level)

    def is_enabled_for(self, level: int) -> bool:
        """Same as :meth:`isEnabledFor`."""
        return self._logger.isEnabledFor(level)

    def _structlog(self) -> structlog.stdlib.BoundLogger:
        bound = self._bound
        if bound is None:  # a race makes two equal ones: harmless
            bound = self._bound = _structlog_logger(self._logger, self._context)
        return bound

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at DEBUG."""
        if self._logger.isEnabledFor(_DEBUG):
            return self._structlog()._proxy_to_logger("debug", event, *args, **kw)
        return None

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at INFO."""
        if self._logger.isEnabledFor(_INFO):
            return self._structlog()._proxy_to_logger("info", event, *args, **kw)
        return None

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at WARNING."""
        if self._logger.isEnabledFor(_WARNING):
            return self._structlog()._proxy_to_logger("warning", event, *args, **kw)
        return None

    warn = warning

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at ERROR."""
        if self._logger.isEnabledFor(_ERROR):
            return self._structlog()._proxy_to_logger("error", event, *args, **kw)
        return None

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at ERROR with the exception being handled."""
        if self._logger.isEnabledFor(_ERROR):
            kw.setdefault("exc_info", True)
            return self._structlog()._proxy_to_logger("error", event, *args, **kw)
        return None

    def critical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at CRITICAL."""
        if self._logger.isEnabledFor(_CRITICAL):
            return self._structlog()._proxy_to_logger("critical", event, *args, **kw)
        return None

    fatal = critical

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at a standard numeric ``level`` (``logging.INFO``...)."""
        if self._logger.isEnabledFor(level):
            return self._structlog()._proxy_to_logger(_LEVEL_METHODS[level], event, *args, **kw)
        return None


def get_logger(name: str) -> BoundLogger:
    """A structlog-style logger whose events are records of ``logging.getLogger(name)``.

    Independent of ``structlog.configure``. Sets no handler and no level:
    what is shown, and where, is the host's ``logging`` configuration. Every
    event runs through structlog's context variables (``merge_contextvars``),
    :func:`redact_event` and becomes a record.

    Example::

        log = get_logger(__name__)
        log.bind(session_id="s1").info("session_started", model="m")
    """
    return BoundLogger(logging.getLogger(name))
