"""Incremental Server-Sent Events parsing, per the WHATWG HTML "event stream" rules.

Used for OpenCode's ``GET /event`` stream and by our fake model server (which
writes with :func:`encode_event`). Bytes may arrive split anywhere, even inside
a UTF-8 character or between the ``\\r`` and ``\\n`` of a line break; the
events produced do not depend on where.

    >>> SseDecoder().feed(b"event: ping\\ndata: a\\ndata: b\\n\\n")
    [SseEvent(data='a\\nb', event='ping', id=None, retry=None)]
"""

from __future__ import annotations

import codecs
import re
from typing import Final

import attrs

from beamagent.errors import InvalidOption

__all__ = ["SseDecoder", "SseEvent", "encode_event"]

_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_BOM: Final = "\ufeff"
# A longer retry value is ignored: ~30,000 years of ms, and int() of thousands of digits
# raises (Python's int max str digits) -- a stream must never make the decoder raise.
_MAX_RETRY_DIGITS: Final = 15


@attrs.frozen
class SseEvent:
    """One dispatched event.

    ``id`` is the stream's last event id when the event was dispatched (it
    carries over from earlier events, as in browsers), ``None`` when unset.
    ``retry`` is a reconnection delay in ms sent within this event's block.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SseDecoder:
    """Feed it chunks of an event stream; it returns the events they complete.

    Not thread-safe: one reader owns it. Whatever the bytes, it never raises:
    invalid UTF-8 is replaced (U+FFFD), unknown fields and malformed ``retry``
    values (not digits, or more than 15 of them) are ignored, as the spec says.

        >>> d = SseDecoder()
        >>> d.feed(b"data: hel"), d.feed(b"lo\\r"), d.feed(b"\\n\\r\\n")
        ([], [], [SseEvent(data='hello', event='message', id=None, retry=None)])
    """

    def __init__(self) -> None:
        """A decoder at the start of a stream."""
        self._reset()

    def _reset(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._parts: list[str] = []
        # A "\r" ended the previous chunk: a "\n" opening the next one belongs to it.
        self._skip_lf = False
        self._data: list[str] = []
        self._event_type = ""
        self._last_id = ""
        self._retry: int | None = None
        self._block_retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        """The last event id the stream set (to send as ``Last-Event-ID`` on reconnect)."""
        return self._last_id or None

    @property
    def retry(self) -> int | None:
        """The last reconnection delay (ms) the stream asked for, if any."""
        return self._retry

    def feed(self, chunk: bytes | str) -> list[SseEvent]:
        """Add a chunk (bytes are UTF-8, invalid sequences replaced); return completed events."""
        text = self._utf8.decode(chunk) if isinstance(chunk, bytes) else chunk
        events: list[SseEvent] = []
        self._feed_text(text, events)
        return events

    def flush(self, *, dispatch_incomplete: bool = False) -> list[SseEvent]:
        """End of stream: finish the last line and reset the decoder for a new stream.

        The spec discards an event whose blank line never came, so this returns
        ``[]`` unless ``dispatch_incomplete`` asks for that event anyway.
        """
        events: list[SseEvent] = []
        self._feed_text(self._utf8.decode(b"", final=True), events)
        if self._parts:
            self._process_line("".join(self._parts), events)
        if dispatch_incomplete:
            self._dispatch(events)
        self._reset()
        return events

    def _feed_text(self, text: str, events: list[SseEvent]) -> None:
        if not text:
            return
        if not self._started:
            self._started = True
            if text.startswith(_BOM):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        pos = 0
        for match in _LINE_END.finditer(text):
            line = text[pos : match.start()]
            if self._parts:
                self._parts.append(line)
                line = "".join(self._parts)
                self._parts.clear()
            self._process_line(line, events)
            pos = match.end()
        if pos < len(text):
            self._parts.append(text[pos:])
        elif text.endswith("\r"):
            self._skip_lf = True

    def _process_line(self, line: str, events: list[SseEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif (
            name == "retry"
            and value.isascii()
            and value.isdigit()
            and len(value) <= _MAX_RETRY_DIGITS
        ):
            self._retry = self._block_retry = int(value)

    def _dispatch(self, events: list[SseEvent]) -> None:
        if self._data:
            events.append(
                SseEvent(
                    data="\n".join(self._data),
                    event=self._event_type or "message",
                    id=self._last_id or None,
                    retry=self._block_retry,
                )
            )
        self._data = []
        self._event_type = ""
        self._block_retry = None


def _check_field(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidOption(f"an SSE {name} must be a str, got {type(value).__name__}: {value!r}")
    if "\n" in value or "\r" in value:
        raise InvalidOption(f"an SSE {name} cannot contain a line break: {value!r}")
    return value


def encode_event(
    data: str,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One event in wire form: ``event:``/``id:``/``retry:`` lines, ``data:`` lines, blank line.

    Line breaks in ``data`` (``\\n``, ``\\r\\n`` or ``\\r``) become separate
    ``data:`` lines, so the decoder gives ``data`` back with ``\\n`` breaks.

        >>> encode_event("a\\nb", event="delta")
        b'event: delta\\ndata: a\\ndata: b\\n\\n'

    Raises:
        InvalidOption: a field is not a str (``retry``: not an int >= 0 that
            decoders read), ``event``/``id`` holds a line break or ``id`` a NUL
            (decoders would misread or ignore it), or a field holds a lone
            surrogate (the stream is UTF-8).
    """
    lines: list[str] = []
    if not isinstance(data, str):
        raise InvalidOption(f"SSE data must be a str, got {type(data).__name__}: {data!r}")
    if event is not None:
        lines.append(f"event: {_check_field('event name', event)}")
    if id is not None:
        if "\0" in _check_field("id", id):
            raise InvalidOption(f"an SSE id cannot contain NUL (decoders ignore it): {id!r}")
        lines.append(f"id: {id}")
    if retry is not None:
        if (
            isinstance(retry, bool)
            or not isinstance(retry, int)
            or not 0 <= retry < 10**_MAX_RETRY_DIGITS
        ):
            raise InvalidOption(
                f"an SSE retry must be an int (ms) from 0 to {10**_MAX_RETRY_DIGITS - 1}, "
                f"got {retry!r}"
            )
        lines.append(f"retry: {retry}")
    lines.extend(f"data: {line}" for line in _LINE_END.split(data))
    try:
        return ("\n".join(lines) + "\n\n").encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidOption(
            f"an SSE event must be valid Unicode (the stream is UTF-8): {exc}"
        ) from None
