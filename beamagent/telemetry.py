"""OpenTelemetry traces: a thin layer over ``opentelemetry-api``, a no-op without it.

beamagent makes spans for session starts, queries, routing decisions, graph
runs and node visits, and tool calls (``docs/observability.md`` lists them with
their attributes). They go to the tracer provider the host configured
(``opentelemetry.trace.set_tracer_provider``); beamagent never configures an
exporter. Without ``opentelemetry-api`` installed (the ``beamagent[otel]``
extra) every function here returns at once and nothing of OpenTelemetry is
imported; with the API but no provider set, none are made either. The API
itself is imported only once the host has imported it (to set a provider) or
names a provider in ``OTEL_PYTHON_TRACER_PROVIDER``: ``import beamagent`` does
not import it.

Span attributes never carry prompts, replies or tool arguments, and every
string value goes through the same redaction as the log events
(:func:`beamagent.log.redact`).

A tracing failure (an exporter or span processor that raises) is logged and
swallowed: it must never crash the session or run it happened in.

Spans cross threads: a query is sent by the caller and runs in the session
actor, so the caller's context (:func:`current_context`) travels with the
message and becomes the parent of the span the actor starts and ends.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any, Final

from supervisors._log import REDACTED, get_logger, is_secret_key, redact_text

__all__ = [
    "ENABLED",
    "INSTRUMENTATION_NAME",
    "Span",
    "add_event",
    "attach",
    "attributes",
    "context_of",
    "current_context",
    "detach",
    "end_span",
    "live",
    "set_attributes",
    "span",
    "span_context",
    "start_span",
    "tracing",
]

INSTRUMENTATION_NAME: Final = "beamagent"
"""The instrumentation scope of every span beamagent makes."""

Span = Any
"""An OpenTelemetry span, or None when tracing is off (every function here accepts None)."""


def _api_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        return False


ENABLED: Final = _api_installed()
"""Whether ``opentelemetry-api`` is importable (spans are then made, recorded or not)."""


def _otel_trace() -> ModuleType:
    # Imported at the first use, which comes only once the host imported it to set a
    # provider (or named one in the environment): `import beamagent` imports none of it.
    from opentelemetry import trace

    return trace


def _otel_context() -> ModuleType:
    from opentelemetry import context

    return context


_tracer: Any = None
_tracer_provider: Any = None
_UNKNOWN: Final = object()
# Set, the API loads the provider the variable names at the first get_tracer_provider().
_PROVIDER_FROM_ENV: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
log = get_logger(__name__)


def _failed(what: str, exc: Exception) -> None:
    log.warning("span_failed", operation=what, error=repr(exc))


def _get_tracer() -> Any:
    """The tracer of the global provider; None while no provider is set (or a no-op one).

    The provider may be set (or replaced, in tests) after the first span: the tracer
    is asked for again when it changed. Until the host sets one, the API's proxy
    would hand out non-recording spans: making none costs less (near nothing).
    """
    global _tracer, _tracer_provider
    _trace = sys.modules.get("opentelemetry.trace")
    if _trace is None:
        # Not imported yet: no provider can have been set but through the environment.
        if not _PROVIDER_FROM_ENV:
            return None
        _trace = _otel_trace()
    # The API's own global, read directly: get_tracer_provider() also looks up an
    # environment variable at each call while none is set (most of the cost of a no-op).
    provider: Any = getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None and not _PROVIDER_FROM_ENV:
        return None
    if provider is None or provider is _UNKNOWN:
        provider = _trace.get_tracer_provider()
    if provider is not _tracer_provider:
        if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
            _tracer = None
        else:
            _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
        _tracer_provider = provider
    return _tracer


def tracing() -> bool:
    """Whether spans are made now: the API is installed and the host set a real provider.

    For hot paths that would build a span's attributes only to drop them: when this is
    False, :func:`span` yields None and :func:`start_span` returns None.
    """
    if not ENABLED:
        return False
    try:
        return _get_tracer() is not None
    except Exception:
        return True  # let span() and start_span() meet the failure, and log it as they do


# Attribute keys are a small fixed set (beamagent's own, bar a caller's): remember the
# verdict rather than split each key into words at every span.
_secret_keys: dict[str, bool] = {}


@functools.lru_cache(maxsize=4096)
def _redacted(text: str) -> str:
    # The same ids, names and models come back at every span: the scan once each.
    return redact_text(text)


def _value(key: str, value: Any) -> Any:
    secret = _secret_keys.get(key)
    if secret is None:
        secret = is_secret_key(key)
        if len(_secret_keys) < 1024:
            _secret_keys[key] = secret
    if secret:
        return REDACTED
    if isinstance(value, str):
        return _redacted(value) if len(value) <= 256 else redact_text(value)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Sequence | set | frozenset):
        items = [str(item) for item in value]
        return [redact_text(item) for item in items]
    return redact_text(str(value))


def attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as span attributes: None dropped, secrets redacted, others made str.

    Example::

        >>> attributes({"beamagent.backend": "local", "api_key": "sk-1", "model": None})
        {'beamagent.backend': 'local', 'api_key': '[REDACTED]'}
    """
    return {key: _value(key, value) for key, value in values.items() if value is not None}


def current_context() -> Any:
    """The caller's OpenTelemetry context, to parent a span started on another thread.

    None when tracing is off (or no provider is set), so a message need carry nothing.
    """
    if not ENABLED or _get_tracer() is None:
        return None
    return _otel_context().get_current()


def start_span(
    name: str,
    values: Mapping[str, Any] | None = None,
    *,
    parent: Any = None,
    links: Sequence[Any] = (),
) -> Span:
    """Start a span (not made current); end it with :func:`end_span`. None when off.

    Args:
        name: the span name (``beamagent.query``...).
        values: its attributes, through :func:`attributes`.
        parent: a context from :func:`current_context` (default: this thread's).
        links: span contexts this span is linked to.
    """
    if not ENABLED:
        return None
    try:
        tracer = _get_tracer()
        if tracer is None:
            return None
        links_ = [_otel_trace().Link(link) for link in links if link is not None]
        return tracer.start_span(
            name,
            context=parent,
            attributes=attributes(values) if values else None,
            links=links_ or None,
        )
    except Exception as exc:
        _failed("start", exc)
        return None


def set_attributes(span: Span, values: Mapping[str, Any]) -> None:
    """Set attributes on ``span`` (redacted as :func:`attributes` does)."""
    if span is not None and span.is_recording():
        try:
            span.set_attributes(attributes(values))
        except Exception as exc:
            _failed("set_attributes", exc)


def add_event(span: Span, name: str, values: Mapping[str, Any] | None = None) -> None:
    """Add an event (``retry``, ``session_restarted``...) to ``span``."""
    if span is not None and span.is_recording():
        try:
            span.add_event(name, attributes(values) if values else None)
        except Exception as exc:
            _failed("add_event", exc)


def end_span(
    span: Span,
    values: Mapping[str, Any] | None = None,
    *,
    error: BaseException | str | None = None,
) -> None:
    """Set ``values`` and the status on ``span`` and end it; an ``error`` makes it ERROR.

    An exception's type goes into ``error.type`` and its (redacted) message into the
    status description; no traceback is recorded (it may quote prompts or secrets).
    """
    if span is None:
        return
    try:
        if span.is_recording():
            if values:
                span.set_attributes(attributes(values))
            if error is not None:
                kind = error if isinstance(error, str) else type(error).__name__
                text = error if isinstance(error, str) else str(error)
                span.set_attribute("error.type", kind)
                span.set_status(_otel_trace().StatusCode.ERROR, redact_text(text))
            else:
                span.set_status(_otel_trace().StatusCode.OK)
        span.end()
    except Exception as exc:
        _failed("end", exc)


def span_context(span: Span) -> Any:
    """``span``'s span context (for a link), or None."""
    return None if span is None else span.get_span_context()


@contextlib.contextmanager
def span(name: str, values: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A span around a block, current inside it; an exception leaving it is its error.

    Example::

        with telemetry.span("beamagent.route", {"beamagent.routing.policy": "failover"}) as s:
            decision = select(...)
            telemetry.set_attributes(s, {"beamagent.backend": decision.backend})
    """
    if not ENABLED:
        yield None
        return
    started = start_span(name, values)
    if started is None:
        yield None
        return
    context = _otel_context()
    token = context.attach(_otel_trace().set_span_in_context(started))
    try:
        yield started
    except BaseException as exc:
        context.detach(token)
        end_span(started, error=exc)
        raise
    context.detach(token)
    end_span(started)


def live(span: Span) -> Span:
    """``span`` while it records (not ended yet), else None."""
    if span is None or not span.is_recording():
        return None
    return span


def context_of(span: Span) -> Any:
    """A context with ``span`` as the parent of the spans started in it; None when off."""
    if not ENABLED or span is None:
        return None
    return _otel_trace().set_span_in_context(span)


def attach(context: Any) -> Any:
    """Make ``context`` current in this thread; give the token to :func:`detach`. None: nothing."""
    if not ENABLED or context is None:
        return None
    return _otel_context().attach(context)


def detach(token: Any) -> None:
    """Undo an :func:`attach` (None: nothing)."""
    if token is not None and ENABLED:
        _otel_context().detach(token)
