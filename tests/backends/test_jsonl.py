"""JSONL framing: chunk-boundary independence, noise tolerance, limits, big lines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beamagent.backends.jsonl import JsonlDecoded, JsonlDecoder, decode_lines, encode_line
from beamagent.errors import ProtocolError

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

# Things CLIs print on stdout besides their JSON: banners, arrays, scalars, broken JSON.
noise_lines = st.sampled_from(
    [
        b"Starting server...",
        b"[1, 2, 3]",
        b'"just a string"',
        b"42",
        b"null",
        b'{"unterminated": ',
        b"\xff\xfe not utf-8",
        b"warning: \x1b[33myellow\x1b[0m",
    ]
)

heavy = settings(max_examples=max(20, settings().max_examples * 3 // 10))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


def _feed_pure(chunks: list[bytes]) -> tuple[list[dict[str, Any]], list[bytes], bytes]:
    objects: list[dict[str, Any]] = []
    skipped: list[bytes] = []
    leftover = b""
    for chunk in chunks:
        decoded = decode_lines(leftover + chunk)
        objects += decoded.objects
        skipped += decoded.skipped
        leftover = decoded.leftover
    return objects, skipped, leftover


def _feed_decoder(chunks: list[bytes]) -> tuple[list[dict[str, Any]], list[bytes], bytes]:
    decoder = JsonlDecoder()
    objects: list[dict[str, Any]] = []
    skipped: list[bytes] = []
    for chunk in chunks:
        decoded = decoder.feed(chunk)
        objects += decoded.objects
        skipped += decoded.skipped
        assert decoded.leftover == decoder.pending
        assert decoder.pending_size == len(decoder.pending)
    return objects, skipped, decoder.pending


@heavy
@given(
    st.lists(json_objects, max_size=6),
    st.lists(st.integers(min_value=0), max_size=8),
    st.booleans(),
)
def test_chunked_stream_yields_the_objects_in_order(
    objects: list[dict[str, Any]], cuts: list[int], crlf: bool
) -> None:
    stream = b"".join(encode_line(obj) for obj in objects)
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    chunks = _split(stream, cuts)
    assert _feed_pure(chunks) == (objects, [], b"")
    assert _feed_decoder(chunks) == (objects, [], b"")


@heavy
@given(
    st.lists(
        st.one_of(json_objects.map(lambda o: ("obj", o)), noise_lines.map(lambda n: ("noise", n))),
        max_size=8,
    ),
    st.lists(st.integers(min_value=0), max_size=8),
    st.booleans(),
)
def test_noise_lines_are_skipped_and_reported(
    items: list[tuple[str, Any]], cuts: list[int], crlf: bool
) -> None:
    eol = b"\r\n" if crlf else b"\n"
    stream = b"".join(
        (encode_line(value)[:-1] if kind == "obj" else value) + eol + b"\n" for kind, value in items
    )
    expected_objects = [value for kind, value in items if kind == "obj"]
    expected_skipped = [value for kind, value in items if kind == "noise"]
    chunks = _split(stream, cuts)
    assert _feed_pure(chunks) == (expected_objects, expected_skipped, b"")
    assert _feed_decoder(chunks) == (expected_objects, expected_skipped, b"")


@given(json_values)
def test_encode_line_is_one_compact_line(value: Any) -> None:
    line = encode_line(value)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert b"\r" not in line
    assert json.loads(line) == value


def test_encode_line_escapes_newlines_and_keeps_unicode() -> None:
    line = encode_line({"text": "a\nb\r\nc\u2028", "name": "héllo"})
    assert line == '{"text":"a\\nb\\r\\nc\u2028","name":"héllo"}\n'.encode()


def test_encode_line_survives_lone_surrogates() -> None:
    line = encode_line({"s": "\ud800"})
    assert line == b'{"s":"\\ud800"}\n'


def test_encode_line_rejects_nan_and_non_json() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_line({"x": float("nan")})
    with pytest.raises(TypeError):
        encode_line({"x": object()})


def test_decode_lines_example() -> None:
    decoded = decode_lines(b'{"a":1}\r\n\n  \nbanner\n[1]\n{"b":')
    assert decoded == JsonlDecoded(
        objects=[{"a": 1}], leftover=b'{"b":', skipped=[b"banner", b"[1]"]
    )


def test_invalid_utf8_is_replaced_not_raised_nor_the_line_lost() -> None:
    decoded = decode_lines(b'{"a":"\xff\xc3"}\n{"ok":true}\n\xff\n')
    assert decoded.objects == [{"a": "\ufffd\ufffd"}, {"ok": True}]
    assert decoded.skipped == [b"\xff"]


def test_non_finite_numbers_become_null() -> None:
    line = b'{"a":NaN,"b":[Infinity,-Infinity,1e999,-1e999,1.5,2],"c":{"d":NaN}}\n'
    [obj] = decode_lines(line).objects
    assert obj == {"a": None, "b": [None, None, None, None, 1.5, 2], "c": {"d": None}}
    json.dumps(obj, allow_nan=False)


def test_surrogate_escapes_become_valid_unicode() -> None:
    line = rb'{"lone":"a\ud800b","low":"\uDC00","pair":"\ud83d\ude00","\ud801k":1,"lit":"\\ud800"}'
    [obj] = decode_lines(line + b"\n").objects
    assert obj == {
        "lone": "a\ufffdb",
        "low": "\ufffd",
        "pair": "\U0001f600",
        "\ufffdk": 1,
        "lit": "\\ud800",  # an escaped backslash, not an escape: kept as written
    }
    json.dumps(obj, ensure_ascii=False).encode("utf-8")


def test_utf16_is_not_guessed() -> None:
    # json.loads(bytes) would happily decode UTF-16; a JSONL stream is UTF-8 only.
    line = '{"a":1}'.encode("utf-16")
    assert decode_lines(line + b"\n").objects == []


def test_bom_at_stream_start_is_ignored() -> None:
    assert decode_lines(b'\xef\xbb\xbf{"a":1}\n').objects == [{"a": 1}]


def test_deeply_nested_line_is_skipped() -> None:
    line = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    decoded = decode_lines(line + b'{"ok":1}\n')
    assert decoded.objects == [{"ok": 1}]
    assert len(decoded.skipped) == 1


def test_multibyte_characters_split_across_chunks() -> None:
    line = encode_line({"t": "日本語 ✓"})
    decoder = JsonlDecoder()
    objects = [obj for byte in line for obj in decoder.feed(bytes([byte])).objects]
    assert objects == [{"t": "日本語 ✓"}]


def test_one_megabyte_line_in_small_chunks() -> None:
    payload = {"type": "assistant", "text": "x" * (1 << 20)}
    line = encode_line(payload)
    decoder = JsonlDecoder(max_line_bytes=2 << 20)
    received: list[dict[str, Any]] = []
    for start in range(0, len(line), 4096):
        received += decoder.feed(line[start : start + 4096]).objects
    assert received == [payload]
    assert decoder.pending == b""


def test_max_line_bytes_bounds_the_unterminated_line() -> None:
    with pytest.raises(ProtocolError, match=r"10 bytes exceeds the limit of 9 bytes"):
        decode_lines(b'{"a":1}\n0123456789', max_line_bytes=9)
    # Complete lines of any size are fine: only unparsed bytes are bounded.
    assert decode_lines(b'{"a":"' + b"x" * 50 + b'"}\n', max_line_bytes=9).leftover == b""
    assert decode_lines(b"012345678", max_line_bytes=9).leftover == b"012345678"

    decoder = JsonlDecoder(max_line_bytes=9)
    decoder.feed(b"01234")
    decoder.feed(b"5678")
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(b"9")


def test_flush_parses_a_final_unterminated_line() -> None:
    decoder = JsonlDecoder()
    assert decoder.feed(b'{"a":1}\n{"b":2}').objects == [{"a": 1}]
    assert decoder.flush() == JsonlDecoded(objects=[{"b": 2}], leftover=b"", skipped=[])
    assert decoder.pending == b""
    decoder.feed(b"trailing noise")
    assert decoder.flush().skipped == [b"trailing noise"]
    assert decoder.flush() == JsonlDecoded(objects=[], leftover=b"", skipped=[])


def _strict(obj: dict[str, Any]) -> None:
    json.dumps(obj, allow_nan=False, ensure_ascii=False).encode("utf-8")


@heavy
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_never_raise_and_give_canonical_objects(
    stream: bytes, cuts: list[int]
) -> None:
    decoded = decode_lines(stream)
    for obj in decoded.objects:
        assert isinstance(obj, dict)
        _strict(obj)
    assert _feed_decoder(_split(stream, cuts)) == (
        decoded.objects,
        decoded.skipped,
        decoded.leftover,
    )


@heavy
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=64))
def test_a_line_limit_raises_protocol_error_only(stream: bytes, limit: int) -> None:
    try:
        decoded = decode_lines(stream, max_line_bytes=limit)
    except ProtocolError:
        assert len(stream) - (stream.rfind(b"\n") + 1) > limit
    else:
        assert len(decoded.leftover) <= limit


# What a sloppy backend writes with Python's json.dumps: NaN tokens, \ud800 escapes.
hostile_values = st.recursive(
    json_scalars
    | st.floats()
    | st.text(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@heavy
@given(st.lists(st.dictionaries(st.text(max_size=5), hostile_values, max_size=4), max_size=5))
def test_sloppy_json_lines_decode_to_canonical_objects(objects: list[dict[str, Any]]) -> None:
    stream = b"".join(json.dumps(obj).encode() + b"\n" for obj in objects)
    decoded = decode_lines(stream)
    assert len(decoded.objects) == len(objects)  # nothing lost
    for obj in decoded.objects:
        _strict(obj)
