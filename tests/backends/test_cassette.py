"""Cassettes over a fake Claude Code (fast): record, replay with no CLI, divergence, scrubbing."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from beamagent import Runtime
from beamagent.backends.cassette import Cassette, CassetteMode
from beamagent.errors import CassetteMismatch, InvalidOption
from beamagent.testing import kill_backend

FAKE_CLAUDE = Path(__file__).parent / "fakes" / "fake_claude.py"
SECRET = "sk-ant-cassette-env-secret-0123456789"
SESSION_SECRET = "session-only-secret-9876543210"


def run(cassette: Cassette, cwd: Path, prompts: list[str], **options: Any) -> list[Any]:
    """Start a claude session on ``cassette``; the (type, content) of each turn's messages."""
    options.setdefault("cli_path", str(FAKE_CLAUDE))
    with Runtime(store=":memory:", handle_signals=False, cassette=cassette) as runtime:
        session = runtime.start_session(
            backend="claude",
            command_prefix=[sys.executable],
            env={"FAKE_MODE": "echo", "MY_SERVICE_API_KEY": SESSION_SECRET},
            cwd=str(cwd),
            **options,
        )
        return [[(m.type.value, m.content) for m in session.query(p)] for p in prompts]


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Any]]:
    monkeypatch.setenv("BEAMAGENT_TEST_AUTH_TOKEN", SECRET)
    work = tmp_path / "record-here"
    work.mkdir()
    path = tmp_path / "cassettes" / "echo.jsonl"
    with Cassette(path, "record") as cassette:
        turns = run(cassette, work, ["hello", f"second, with Bearer {SECRET}"])
    return path, turns


def test_replay_gives_the_recorded_messages_with_no_cli(
    recorded: tuple[Path, list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, turns = recorded
    assert ("assistant", "echo: hello") in turns[0]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    elsewhere = tmp_path / "replay-here"  # another cwd: recorded as a placeholder
    elsewhere.mkdir()
    cassette = Cassette(path, "replay")
    replayed = run(
        cassette,
        elsewhere,
        ["hello", f"second, with Bearer {SECRET}"],
        cli_path=str(tmp_path / "nowhere" / "claude"),
    )
    # What the secret was in (the prompt, echoed back) replays scrubbed.
    scrubbed = json.loads(json.dumps(turns).replace(SECRET, "[REDACTED]"))
    assert replayed == [[tuple(m) for m in turn] for turn in scrubbed]
    assert cassette.mismatches == []


def test_no_secret_reaches_the_file(recorded: tuple[Path, list[Any]]) -> None:
    path, _ = recorded
    text = path.read_text()
    assert SECRET not in text
    assert SESSION_SECRET not in text
    assert "[REDACTED]" in text
    assert str(path.parent.parent / "record-here") not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert events[0] == {"cassette": 1, "sessions": 1}
    kinds = [e["event"] for e in events[1:]]
    assert kinds[:3] == ["open", "connected", "info"]
    assert {"send", "data", "close", "exited"} <= set(kinds)


def test_a_changed_prompt_fails_with_a_diff(
    recorded: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    path, _ = recorded
    cassette = Cassette(path, "replay")
    with pytest.raises(CassetteMismatch) as raised:
        run(cassette, tmp_path, ["goodbye"], cli_path="/nowhere/claude")
    assert cassette.mismatches, "the divergence was not reported"
    message = str(raised.value)
    assert str(cassette.mismatches[0]) == message
    assert "a different write" in message
    assert "--- recorded write" in message
    assert "+++ this replay's write" in message
    assert '-{"type":"user"' in message.replace(" ", "") or '"hello"' in message
    assert "goodbye" in message


def test_once_records_then_replays(tmp_path: Path) -> None:
    path = tmp_path / "once.jsonl"
    first = Cassette(path, "once")
    assert first.mode is CassetteMode.RECORD
    with first:
        turns = run(first, tmp_path, ["hi"])
    second = Cassette(path, "once")
    assert second.mode is CassetteMode.REPLAY
    assert run(second, tmp_path, ["hi"], cli_path="/nowhere/claude") == turns


def test_replay_of_a_missing_cassette_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match="record it first"):
        Cassette(tmp_path / "absent.jsonl", "replay")
    with pytest.raises(InvalidOption, match="record, replay, once"):
        Cassette(tmp_path / "x.jsonl", "rewind")


def test_a_session_the_recording_does_not_have_fails_at_start(
    recorded: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    path, _ = recorded
    cassette = Cassette(path, "replay")
    with (
        Runtime(store=":memory:", handle_signals=False, cassette=cassette) as runtime,
        pytest.raises(CassetteMismatch, match="was recorded on 'claude'"),
    ):
        runtime.start_session(backend="codex", cli_path="/nowhere/codex")


def test_one_session_can_take_a_cassette_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    options: dict[str, Any] = {
        "backend": "claude",
        "command_prefix": [sys.executable],
        "env": {"FAKE_MODE": "echo"},
    }
    with Cassette(path, "record") as cassette, Runtime(store=":memory:") as runtime:
        plain = runtime.start_session(cli_path=str(FAKE_CLAUDE), **options)
        taped = runtime.start_session(cli_path=str(FAKE_CLAUDE), cassette=cassette, **options)
        assert plain.query("a")[-1].content == taped.query("a")[-1].content == "echo: a"
    with Runtime(store=":memory:") as runtime:
        replayed = runtime.start_session(
            cli_path="/nowhere/claude", cassette=Cassette(path, "replay"), **options
        )
        assert replayed.query("a")[-1].content == "echo: a"
        info = replayed.session_info()
        assert info["transport"] == "cassette_replay"
        assert info.get("pid") is None  # the recorded pid may name another process by now
        with pytest.raises(InvalidOption, match="without a process of its own"):
            kill_backend(replayed)


def test_a_chunk_that_is_not_text_is_kept_as_bytes_scrubbed(tmp_path: Path) -> None:
    from beamagent.backends.cassette import Scrubber, _decode, _encode

    scrub = Scrubber({"X_API_KEY": "secret-key-1234"}, str(tmp_path))
    chunk = b"\xe2\x82 secret-key-1234 in " + str(tmp_path).encode()
    record = _encode(chunk, scrub)
    assert set(record) == {"b64"}
    assert b"secret-key-1234" not in base64.b64decode(record["b64"])
    assert _decode(record, scrub) == b"\xe2\x82 [REDACTED] in " + str(tmp_path).encode()


@pytest.mark.parametrize(
    ("wire", "kept"),
    [
        ('{"apiKey":"abc\\"def","token":"zz"}', '{"apiKey":"[REDACTED]","token":"[REDACTED]"}'),
        ("Authorization: Bearer abcdefgh123", "Authorization: Bearer [REDACTED]"),
        ("key sk-ant-api03-abcdefghijklmnop here", "key [REDACTED] here"),
        # JSON stays JSON: a secret-looking name over an object, token counts, untouched.
        (
            '{"_meta":{"api-key":{"provider":"google"}}}',
            '{"_meta":{"api-key":{"provider":"google"}}}',
        ),
        ('{"max_tokens":5,"inputTokens":3}', '{"max_tokens":5,"inputTokens":3}'),
    ],
)
def test_wire_text_is_scrubbed_and_stays_json(wire: str, kept: str) -> None:
    from beamagent.backends.cassette import Scrubber

    assert Scrubber({}, None).text(wire) == kept


def test_a_backend_that_is_not_a_stdio_cli_is_refused(tmp_path: Path) -> None:
    with (
        Cassette(tmp_path / "local.jsonl", "record") as cassette,
        Runtime(store=":memory:", handle_signals=False, cassette=cassette) as runtime,
        pytest.raises(InvalidOption, match=r"stdio CLI backends.*not recorded yet"),
    ):
        runtime.start_session(backend="local")


def test_the_session_id_is_kept_as_a_placeholder() -> None:
    from beamagent.backends.cassette import Scrubber

    recorded = Scrubber({}, None, "session_1234abcd").text('{"title":"beamagent session_1234abcd"}')
    assert recorded == '{"title":"beamagent <SESSION_ID>"}'
    assert Scrubber({}, None, "session_99").restore(recorded) == '{"title":"beamagent session_99"}'


def test_a_secret_or_character_cut_between_chunks_is_kept_whole_and_scrubbed(
    tmp_path: Path,
) -> None:
    """The recorded copy waits for its line; the handler gets every chunk at once."""
    from beamagent.backends.base import Connected, Data, Exited, Transport, TransportSink
    from beamagent.backends.cassette import RecordingTransport, Scrubber

    class Pipe(Transport):
        """Stands for a CLI's stdout, delivering what the test pushes."""

        sink: TransportSink

        def start(self, sink: TransportSink) -> None:
            self.sink = sink

        def send(self, data: bytes) -> None:
            raise AssertionError("nothing is sent here")

        def close(self) -> None:
            pass

        def info(self) -> dict[str, Any]:
            return {}

    secret = "secret-key-1234567890"
    records: list[dict[str, Any]] = []
    delivered: list[Any] = []
    pipe = Pipe()
    recording = RecordingTransport(pipe, records.append, Scrubber({"X_API_KEY": secret}, None))
    recording.start(delivered.append)
    line = f'{{"text":"caf\u00e9 {secret}"}}\n'.encode()
    cut_in_secret, cut_in_char = line.index(b"key-") + 2, line.index(b"\xa9")
    chunks = [line[:cut_in_char], line[cut_in_char:cut_in_secret], line[cut_in_secret:]]
    chunks += [b'{"unfinished":', b'"line"}']
    pipe.sink(Connected({}))
    for chunk in chunks:
        pipe.sink(Data(chunk))
    pipe.sink(Exited(0))

    assert delivered[1:-1] == [Data(c) for c in chunks]  # each chunk as it came
    data = [r for r in records if r["event"] == "data"]
    assert data == [
        {"event": "data", "text": '{"text":"caf\u00e9 [REDACTED]"}\n'},
        {"event": "data", "text": '{"unfinished":"line"}'},  # flushed before the exit
    ]
    assert [r["event"] for r in records] == ["info", "connected", "data", "data", "exited"]
