"""SSE decoding per the WHATWG event-stream rules, independent of chunk boundaries."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.backends.sse import SseDecoder, SseEvent, encode_event
from beamagent.errors import InvalidOption


def _reference(stream: bytes) -> list[SseEvent]:
    """A direct, whole-stream reading of the spec, to check the incremental decoder against."""
    text = stream.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    *lines, _incomplete = re.split(r"\r\n|\r|\n", text)
    events: list[SseEvent] = []
    data, event_type, last_id, retry = "", "", "", None
    for line in lines:
        if line == "":
            if data:
                events.append(SseEvent(data[:-1], event_type or "message", last_id or None, retry))
            data, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, value = line.split(":", 1)
            value = value[1:] if value.startswith(" ") else value
        else:
            field, value = line, ""
        if field == "data":
            data += value + "\n"
        elif field == "event":
            event_type = value
        elif field == "id" and "\0" not in value:
            last_id = value
        elif field == "retry" and re.fullmatch(r"[0-9]{1,15}", value):
            retry = int(value)
    return events


def _decode_chunks(chunks: list[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    assert decoder.flush() == []
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


# Fragments that exercise every rule: line endings, comments, colons, spaces, fields
# known and unknown, multi-byte and invalid UTF-8, the BOM, NUL in ids.
fragments = st.sampled_from(
    [
        b"data",
        b"data:",
        b"data: ",
        b"event:",
        b"event: ",
        b"id:",
        b"id: ",
        b"retry:",
        b"retry: ",
        b"foo:",
        b":",
        b" ",
        b"  ",
        b"x",
        b"12",
        b"\x00",
        b"\r",
        b"\n",
        b"\r\n",
        b"\n\n",
        b"\xc3\xa9",
        b"\xe2\x9c\x93",
        b"\xff",
        b"\xef\xbb\xbf",
    ]
)
streams = st.lists(fragments, max_size=30).map(b"".join)
cuts = st.lists(st.integers(min_value=0), max_size=10)


@given(streams, cuts)
def test_events_do_not_depend_on_chunk_boundaries(stream: bytes, cut_points: list[int]) -> None:
    whole = _decode_chunks([stream])
    assert _decode_chunks(_split(stream, cut_points)) == whole
    assert whole == _reference(stream)


@given(streams)
def test_byte_at_a_time_matches_whole(stream: bytes) -> None:
    assert _decode_chunks([bytes([b]) for b in stream]) == _reference(stream)


@given(streams, cuts)
def test_str_chunks_match_bytes(stream: bytes, cut_points: list[int]) -> None:
    text = stream.decode("utf-8", "replace")
    decoder = SseDecoder()
    chunks = _split(text.encode(), cut_points)
    # Split the text at character boundaries by decoding whole-character prefixes.
    pieces: list[str] = []
    start = 0
    for chunk in chunks:
        end = start + len(chunk.decode("utf-8", "ignore"))
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    events = [event for piece in pieces for event in decoder.feed(piece)]
    assert events == _reference(text.encode())


event_texts = st.text(max_size=20)  # no surrogates: they cannot be UTF-8
field_texts = event_texts.filter(lambda t: not re.search(r"[\r\n\0]", t))


@given(
    st.lists(
        st.tuples(
            event_texts,
            st.none() | field_texts,
            st.none() | field_texts,
            st.none() | st.integers(min_value=0, max_value=10**6),
        ),
        max_size=5,
    ),
    cuts,
)
def test_encode_event_round_trips(
    specs: list[tuple[str, str | None, str | None, int | None]], cut_points: list[int]
) -> None:
    stream = b"".join(encode_event(data, event, id, retry) for data, event, id, retry in specs)
    expected = []
    last_id = ""
    for data, event, event_id, retry in specs:
        if event_id is not None:
            last_id = event_id
        expected.append(
            SseEvent(re.sub(r"\r\n|\r", "\n", data), event or "message", last_id or None, retry)
        )
    assert _decode_chunks(_split(stream, cut_points)) == expected


# --- the spec's own examples --------------------------------------------------------


def test_multiple_data_lines_are_joined() -> None:
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert SseDecoder().feed(stream) == [SseEvent("YHOO\n+2\n10")]


def test_comments_ids_and_an_unterminated_last_event() -> None:
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n"
    )
    decoder = SseDecoder()
    assert decoder.feed(stream) == [
        SseEvent("first event", id="1"),
        SseEvent("second event", id=None),
    ]
    assert decoder.flush() == []


def test_empty_data_lines() -> None:
    stream = b"data\n\ndata\ndata\n\ndata:"
    assert SseDecoder().feed(stream) == [SseEvent(""), SseEvent("\n")]


def test_one_leading_space_is_removed() -> None:
    assert SseDecoder().feed(b"data:test\n\ndata: test\n\ndata:  x\n\n") == [
        SseEvent("test"),
        SseEvent("test"),
        SseEvent(" x"),
    ]


# --- edges --------------------------------------------------------------------------


def test_cr_at_chunk_end_followed_by_lf() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The "\n" belongs to the "\r": it is not a blank line, so "b" joins the same event.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r\n") == [SseEvent("a\nb")]


def test_cr_only_line_endings() -> None:
    assert SseDecoder().feed(b"event: e\rdata: a\r\r") == [SseEvent("a", event="e")]


def test_event_type_unknown_fields_and_no_event_without_data() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: ping\nfoo: bar\n\n") == []
    # The event type does not leak into the next event.
    assert decoder.feed(b"data: x\n\n") == [SseEvent("x")]


def test_id_persists_and_nul_ids_are_ignored() -> None:
    decoder = SseDecoder()
    events = decoder.feed(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\x00\ndata: c\n\n")
    assert [e.id for e in events] == ["7", "7", "7"]
    assert decoder.last_event_id == "7"


def test_retry() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"retry: 1500\ndata: a\n\ndata: b\n\nretry: 10a\ndata: c\n\n") == [
        SseEvent("a", retry=1500),
        SseEvent("b"),
        SseEvent("c"),
    ]
    assert decoder.retry == 1500
    assert decoder.feed(b"retry: 20\n\n") == []
    assert decoder.retry == 20


def test_utf8_split_bom_and_invalid_bytes() -> None:
    stream = "\ufeffdata: héllo ✓\n\n".encode() + b"data: \xff\n\n"
    decoder = SseDecoder()
    events = [e for b in stream for e in decoder.feed(bytes([b]))]
    assert events == [SseEvent("héllo ✓"), SseEvent("\ufffd")]


def test_only_a_leading_bom_is_dropped() -> None:
    assert SseDecoder().feed("\ufeffdata: a\n\n\ufeffdata: b\n\n") == [SseEvent("a")]


def test_flush_can_dispatch_the_incomplete_event_and_resets() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"id: 1\ndata: a\n\ndata: partial") == [SseEvent("a", id="1")]
    assert decoder.flush(dispatch_incomplete=True) == [SseEvent("partial", id="1")]
    assert decoder.last_event_id is None
    assert decoder.feed(b"data: new\n\n") == [SseEvent("new")]


def test_opencode_event_stream() -> None:
    stream = (
        b'data: {"type":"server.connected","properties":{}}\n\n'
        b'data: {"type":"message.part.delta","properties":{"field":"text","delta":"Hi"}}\n\n'
    )
    events = SseDecoder().feed(stream)
    assert [e.event for e in events] == ["message", "message"]
    assert events[1].data.endswith('"delta":"Hi"}}')


def test_encode_event_wire_form() -> None:
    assert encode_event("a\nb", event="delta", id="3", retry=10) == (
        b"event: delta\nid: 3\nretry: 10\ndata: a\ndata: b\n\n"
    )
    assert encode_event("") == b"data: \n\n"
    assert SseDecoder().feed(encode_event("")) == [SseEvent("")]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"event": "a\nb"}, "event name cannot contain a line break"),
        ({"id": "a\rb"}, "id cannot contain a line break"),
        ({"id": "a\0b"}, "cannot contain NUL"),
        ({"retry": -1}, "retry must be an int"),
        ({"retry": True}, "retry must be an int"),
        ({"retry": 10**15}, "retry must be an int"),
        ({"event": 5}, "event name must be a str"),
        ({"id": b"7"}, "id must be a str"),
        ({"data": None}, "data must be a str"),
        ({"data": "a\ud800"}, "must be valid Unicode"),
    ],
)
def test_encode_event_rejects_unencodable_fields(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidOption, match=match):
        encode_event(**{"data": "x", **kwargs})  # type: ignore[arg-type]


not_text = st.none() | st.integers() | st.floats() | st.binary() | st.lists(st.text(), max_size=2)


@given(
    st.one_of(
        not_text.map(lambda v: {"data": v}),
        not_text.filter(lambda v: v is not None).map(lambda v: {"event": v}),
        not_text.filter(lambda v: v is not None).map(lambda v: {"id": v}),
        (not_text | st.booleans() | st.text())
        .filter(lambda v: v is not None and not (type(v) is int and 0 <= v < 10**15))
        .map(lambda v: {"retry": v}),
        st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1).map(
            lambda v: {"data": v}
        ),
    )
)
def test_encode_event_raises_only_invalid_option(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidOption):
        encode_event(**{"data": "x", **kwargs})  # type: ignore[arg-type]


@given(st.binary(max_size=400), cuts)
def test_arbitrary_bytes_never_raise_nor_depend_on_chunks(
    stream: bytes, cut_points: list[int]
) -> None:
    whole = _decode_chunks([stream])
    assert _decode_chunks(_split(stream, cut_points)) == whole
    decoder = SseDecoder()
    decoder.feed(stream)
    tail = decoder.flush(dispatch_incomplete=True)
    for event in whole + tail:
        for text in (event.data, event.event, event.id or ""):
            text.encode("utf-8")  # replaced, never a surrogate
        assert event.retry is None or event.retry >= 0


def test_a_retry_too_long_for_an_int_is_ignored() -> None:
    events = SseDecoder().feed(b"retry: " + b"9" * 5000 + b"\ndata: x\n\nretry: 15\ndata: y\n\n")
    assert [(e.data, e.retry) for e in events] == [("x", None), ("y", 15)]
