"""JSON Lines framing for subprocess stdio (Claude stream-json, Codex app-server, ACP).

One JSON object per ``\\n``-terminated line. Whatever else a CLI prints on the
same stream (banners, warnings, JSON that is not an object) is skipped, never
fatal. The objects are canonical JSON, whatever the line held: ``NaN`` and
``Infinity`` (which Python's ``json`` accepts) and numbers too large for a
float become ``None``, and every string is valid Unicode (invalid UTF-8 and
lone ``\\ud800`` escapes become U+FFFD), so anything decoded here can be
stored and sent on. :class:`JsonlDecoder` is the incremental form a transport should use: it
scans each byte once however a long line is split into chunks.
:func:`decode_lines` is the same thing as a pure function over a buffer.

    >>> decode_lines(b'{"a":1}\\n\\n{"b"')
    JsonlDecoded(objects=[{'a': 1}], leftover=b'{"b"', skipped=[])
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import attrs

from beamagent.errors import ProtocolError
from beamagent.log import get_logger
from beamagent.messages import _copy_json

__all__ = ["JsonlDecoded", "JsonlDecoder", "decode_lines", "encode_line"]

log = get_logger(__name__)

_PREVIEW_BYTES: Final = 120
_BOM: Final = b"\xef\xbb\xbf"


def _finite_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # 1e999 parses as inf


def _no_constant(_name: str) -> None:
    return None  # NaN, Infinity, -Infinity: not JSON, and not storable as JSON


_DECODER: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)
# An escape that json.loads turns into a surrogate code point (lone, or half of a pair).
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


@attrs.frozen(unsafe_hash=False)
class JsonlDecoded:
    """What one decoding step produced.

    ``objects`` are the parsed JSON objects in stream order, ``leftover`` the
    bytes of an unterminated last line (feed them again with the next chunk),
    ``skipped`` the complete non-blank lines that were not JSON objects.
    """

    objects: list[dict[str, Any]]
    leftover: bytes
    skipped: list[bytes]


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """The JSON object on ``line`` in canonical form, or ``None`` if the line is anything else."""
    # Decode explicitly (json.loads(bytes) would also guess UTF-16/32), replacing what is
    # not UTF-8: one bad byte must not cost a whole message (a turn's result, say).
    text = line.decode("utf-8", "replace")
    try:
        try:
            # raw_decode skips decode's two whitespace scans (a third of its cost); anything
            # it does not parse whole (surrounding blanks, junk) gets the full decode.
            value, end = _DECODER.raw_decode(text)
        except ValueError:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        scrubbed: dict[str, Any] = _copy_json(value)  # pairs joined, lone halves U+FFFD
        return scrubbed
    return value


def _parse_complete(data: bytes, objects: list[dict[str, Any]], skipped: list[bytes]) -> None:
    """Parse ``data``, a run of complete ``\\n``-terminated lines."""
    lines = data.split(b"\n")
    lines.pop()  # data ends with "\n": the last piece is always empty
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line.strip():
            continue
        obj = _parse_line(line)
        if obj is None:
            skipped.append(line)
            log.debug(
                "jsonl_line_skipped",
                length=len(line),
                preview=line[:_PREVIEW_BYTES].decode("utf-8", "replace"),
            )
        else:
            objects.append(obj)


def _check_leftover(size: int, max_line_bytes: int | None) -> None:
    if max_line_bytes is not None and size > max_line_bytes:
        raise ProtocolError(
            f"unterminated JSONL line of {size} bytes exceeds the limit of "
            f"{max_line_bytes} bytes; the backend is not sending newline-delimited JSON "
            "or a single message is larger than the limit allows"
        )


def decode_lines(buffer: bytes, *, max_line_bytes: int | None = None) -> JsonlDecoded:
    """Split ``buffer`` into JSON objects; the unterminated tail is the ``leftover``.

    Lines end with ``\\n`` (a ``\\r`` before it is dropped); blank lines are
    ignored; lines that are not JSON objects go to ``skipped``. Objects are
    canonical (see the module docstring).
    Raises :class:`~beamagent.errors.ProtocolError` when the leftover is longer
    than ``max_line_bytes``. Feeding ``leftover + next_chunk`` rescans the
    leftover each time; a transport should use :class:`JsonlDecoder`.
    """
    buffer = bytes(buffer)
    end = buffer.rfind(b"\n") + 1
    leftover = buffer[end:]
    _check_leftover(len(leftover), max_line_bytes)
    objects: list[dict[str, Any]] = []
    skipped: list[bytes] = []
    if end:
        _parse_complete(buffer[:end], objects, skipped)
    return JsonlDecoded(objects=objects, leftover=leftover, skipped=skipped)


class JsonlDecoder:
    """Incremental JSONL decoder: feed chunks as they arrive, get whole objects back.

    Not thread-safe: one reader owns it. Each byte is scanned for a newline
    once, so a 1 MB line split into many small chunks costs linear time.

        >>> d = JsonlDecoder()
        >>> d.feed(b'{"a":').objects, d.feed(b'1}\\n').objects
        ([], [{'a': 1}])
    """

    def __init__(self, *, max_line_bytes: int | None = None) -> None:
        """``max_line_bytes`` bounds the unterminated line held between chunks."""
        self._max_line_bytes = max_line_bytes
        self._parts: list[bytes] = []
        self._pending = 0

    @property
    def pending(self) -> bytes:
        """The bytes of the unterminated line held so far."""
        return b"".join(self._parts)

    @property
    def pending_size(self) -> int:
        """How many bytes :attr:`pending` holds, without joining them."""
        return self._pending

    def feed(self, chunk: bytes) -> JsonlDecoded:
        """Add ``chunk``; return the objects of the lines it completed.

        ``leftover`` in the result is :attr:`pending`. Raises
        :class:`~beamagent.errors.ProtocolError` if the unterminated line
        grows beyond ``max_line_bytes`` (the decoder should then be dropped).
        """
        chunk = bytes(chunk)
        objects: list[dict[str, Any]] = []
        skipped: list[bytes] = []
        end = chunk.rfind(b"\n") + 1
        if end:
            head = chunk[:end]
            if self._parts:
                self._parts.append(head)
                head = b"".join(self._parts)
                self._parts.clear()
            rest = chunk[end:]
            self._parts = [rest] if rest else []
            self._pending = len(rest)
            _check_leftover(self._pending, self._max_line_bytes)
            _parse_complete(head, objects, skipped)
        elif chunk:
            self._parts.append(chunk)
            self._pending += len(chunk)
            _check_leftover(self._pending, self._max_line_bytes)
        return JsonlDecoded(objects=objects, leftover=self.pending, skipped=skipped)

    def flush(self) -> JsonlDecoded:
        """End of stream: parse the final unterminated line, if any, and reset."""
        tail = self.pending
        self._parts = []
        self._pending = 0
        objects: list[dict[str, Any]] = []
        skipped: list[bytes] = []
        if tail:
            _parse_complete(tail + b"\n", objects, skipped)
        return JsonlDecoded(objects=objects, leftover=b"", skipped=skipped)


# json.dumps builds a new encoder on every call with these options; this one is stateless
# between calls (JSONEncoder.encode makes its own circular-reference markers per call).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_line(obj: Any) -> bytes:
    """``obj`` as compact JSON plus ``\\n``: one line, as JSONL peers expect.

    json.dumps escapes every newline inside strings, so the only ``\\n`` is
    the terminator. Raises ``TypeError``/``ValueError`` for values that are
    not JSON (NaN and infinities included: peers' JSON parsers reject them).
    """
    try:
        return (_ENCODER.encode(obj) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8; the \\uXXXX escape form is still valid JSON.
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
        return text.encode("ascii") + b"\n"
