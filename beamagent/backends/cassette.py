"""Cassettes: a session's wire traffic recorded at the transport boundary, replayed offline.

A handler only sees bytes through its :class:`~beamagent.backends.base.Transport`, so
recording there captures exactly what went over the CLI's stdio: each ``send`` the
session made, each ``Data`` chunk, ``Connected`` info, ``Exited`` status, in order, per
session and per incarnation. Replaying hands the handler a :class:`ReplayTransport`
that plays the recorded events back in answer to the writes: no CLI process, no
network, the same messages (native ids and timestamps as recorded). A write that
differs from the recorded one raises :class:`~beamagent.errors.CassetteMismatch` with a
unified diff, never a hang.

Secrets are scrubbed before anything is kept: the values of environment variables
whose names look secret (this process's and the session's ``env``; see
:func:`beamagent.log.is_secret_key`) and bearer/API-key strings
(:func:`beamagent.log.redact_text`) become ``[REDACTED]``; writes are scrubbed the same
way before they are compared. The session's id is kept as ``<SESSION_ID>`` (``opencode``
titles its session with it) and its ``cwd`` as ``<CWD>`` so a cassette
replays from another directory.

Works for every backend whose handler opens a
:class:`~beamagent.backends.base.SubprocessTransport` (``claude``, ``codex``, ``gemini``,
``copilot``) and for the HTTP backends, whose exchanges are recorded at the JSON-lines
transport the handler speaks to: ``openai``'s
:class:`~beamagent.backends.openai.HttpStreamTransport` (:class:`HttpRecordingTransport`:
each request's method, URL, headers and body, each response's status and headers, each
SSE event; a replay compares method, path and body, not the host, so it replays against
another ``base_url``) and ``opencode``'s ``OpenCodeServerTransport`` (each request's
method, path, query and body; each answer's status and body; each SSE event of the
session). ``local`` is refused with ``InvalidOption`` (see docs/testing.md)::

    with Cassette("tests/cassettes/hello.jsonl", mode="once") as cassette:
        with Runtime(cassette=cassette) as runtime:
            runtime.start_session(backend="claude").query("hi")
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import enum
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from beamagent.backends.base import (
    BackendHandler,
    Connected,
    Data,
    Disconnected,
    Exited,
    Messages,
    SubprocessTransport,
    Transport,
    TransportEvent,
    TransportSink,
)
from beamagent.errors import CassetteMismatch, InvalidOption
from beamagent.log import REDACTED, get_logger, is_secret_key, redact_text

if TYPE_CHECKING:
    from beamagent.backends.openai import HttpStreamTransport

__all__ = [
    "CWD_PLACEHOLDER",
    "Cassette",
    "CassetteMode",
    "CassetteSession",
    "HttpRecordingTransport",
    "RecordingTransport",
    "ReplayTransport",
    "Scrubber",
]

log = get_logger(__name__)

FORMAT_VERSION: Final = 1
CWD_PLACEHOLDER: Final = "<CWD>"
SESSION_PLACEHOLDER: Final = "<SESSION_ID>"
_MIN_SECRET = 4  # shorter values ("1", "yes") would scrub ordinary text


# "name": "value" in JSON, the name looking secret (is_secret_key): the value is scrubbed.
_JSON_PAIR = re.compile(r'"([A-Za-z][A-Za-z0-9_\-]{0,63})"(\s*:\s*")((?:[^"\\]|\\.)+)"')
_BEARER = re.compile(r"(\b(?i:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]{6,}")
# API keys by their well-known shapes (OpenAI/Anthropic, Google, GitHub, Slack).
_KEY_SHAPE = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{30,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abpr]-[A-Za-z0-9\-]{10,})"
)


def _json_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match.group(1)):
        return match.group(0)
    return f'"{match.group(1)}"{match.group(2)}{REDACTED}"'


class CassetteMode(enum.StrEnum):
    """How a :class:`Cassette` is used."""

    RECORD = "record"
    """Run the real backend; write its traffic (replacing the file) on :meth:`Cassette.save`."""
    REPLAY = "replay"
    """Play the file back; no backend runs. The file must exist."""
    ONCE = "once"
    """Replay if the file exists, else record."""


class Scrubber:
    """Replaces secret values and the working directory in recorded text."""

    def __init__(
        self, env: Mapping[str, str], cwd: str | None, session_id: str | None = None
    ) -> None:
        values = {
            value
            for source in (os.environ, env)
            for name, value in source.items()
            if is_secret_key(name) and len(value) >= _MIN_SECRET
        }
        self._secrets = sorted(values, key=len, reverse=True)  # a longer one first
        self.cwd = cwd
        # (value, placeholder): what differs from run to run, kept as a placeholder.
        self._places = [
            (value, place)
            for value, place in ((cwd, CWD_PLACEHOLDER), (session_id, SESSION_PLACEHOLDER))
            if value
        ]

    def text(self, text: str) -> str:
        """Wire text scrubbed, its JSON kept valid (the log's ``redact_text`` is not JSON-safe)."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for value, place in self._places:
            text = text.replace(value, place)
        text = _JSON_PAIR.sub(_json_pair, text)
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        return _KEY_SHAPE.sub(REDACTED, text)

    def prose(self, text: str) -> str:
        """Text that is no protocol (stderr): the log's rules too (``api_key=...``)."""
        return redact_text(self.text(text))

    def raw(self, data: bytes) -> bytes:
        """``data`` that is not UTF-8 text (a chunk cut inside a character), scrubbed as bytes."""
        for secret in self._secrets:
            data = data.replace(secret.encode(), REDACTED.encode())
        for value, place in self._places:
            data = data.replace(value.encode(), place.encode())
        return data

    def restore(self, text: str) -> str:
        """Recorded text as this run sees it (the placeholders back to this run's values)."""
        for value, place in self._places:
            text = text.replace(place, value)
        return text

    def restore_raw(self, data: bytes) -> bytes:
        """:meth:`restore` for bytes."""
        for value, place in self._places:
            data = data.replace(place.encode(), value.encode())
        return data

    def value(self, value: Any) -> Any:
        """A JSON value with every string scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                k: (REDACTED if is_secret_key(str(k)) and v else self.value(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


# A recorded line longer than this is kept in pieces (a stream that never ends a line).
_MAX_PENDING: Final = 1 << 20


def _encode(data: bytes, scrub: Scrubber) -> dict[str, str]:
    try:
        return {"text": scrub.text(data.decode("utf-8"))}
    except UnicodeDecodeError:  # a chunk cut inside a character: kept as bytes
        return {"b64": base64.b64encode(scrub.raw(data)).decode("ascii")}


def _decode(record: Mapping[str, Any], scrub: Scrubber) -> bytes:
    if "b64" in record:
        return scrub.restore_raw(base64.b64decode(record["b64"]))
    return scrub.restore(str(record["text"])).encode("utf-8")


def _http_write(data: bytes) -> bytes:
    """An HTTP transport's commands as a cassette keeps and compares them.

    One JSON object per command, indented (a diff names the changed field), keys
    sorted, the request's URL cut to its path (and query): a replay may run against
    another host or port. A line that is not JSON is kept as it is.
    """
    out: list[str] = []
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            command = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if isinstance(command, dict) and isinstance(command.get("url"), str):
            parts = urlsplit(command.pop("url"))
            command["path"] = parts.path + (f"?{parts.query}" if parts.query else "")
        out.append(json.dumps(command, indent=1, sort_keys=True, ensure_ascii=False))
    return ("\n".join(out) + "\n").encode("utf-8")


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class Cassette:
    """A cassette file and its mode; shared by the sessions of a runtime or a test.

    Sessions are numbered in the order they start, incarnations as they restart;
    a replay pairs them with the recording's by those numbers. Use it as a context
    manager (or call :meth:`save`) so a recording is written.

    Args:
        path: the JSON-lines file.
        mode: ``record``, ``replay`` or ``once`` (a :class:`CassetteMode` or its name).
    """

    def __init__(self, path: str | os.PathLike[str], mode: CassetteMode | str = "once") -> None:
        self.path = Path(path)
        try:
            requested = CassetteMode(mode)
        except ValueError:
            raise InvalidOption(
                f"cassette mode must be one of record, replay, once; got {mode!r}"
            ) from None
        if requested is CassetteMode.ONCE:
            requested = CassetteMode.REPLAY if self.path.exists() else CassetteMode.RECORD
        if requested is CassetteMode.REPLAY and not self.path.exists():
            raise InvalidOption(
                f"cassette {str(self.path)!r} does not exist: record it first "
                "(mode 'record' or 'once')"
            )
        self.mode = requested
        self._lock = threading.Lock()
        self._sessions = 0
        self._records: list[dict[str, Any]] = []
        self._tracks: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._backends: dict[int, str] = {}
        self.mismatches: list[CassetteMismatch] = []
        """Every divergence a replay met, in order (the plugin fails the test on any)."""
        if self.mode is CassetteMode.REPLAY:
            self._load()

    @property
    def replaying(self) -> bool:
        return self.mode is CassetteMode.REPLAY

    def __enter__(self) -> Cassette:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.save()

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "cassette" in record:
                if record["cassette"] != FORMAT_VERSION:
                    raise InvalidOption(
                        f"{self.path}:{number}: cassette format {record['cassette']!r} "
                        f"is not {FORMAT_VERSION}; re-record it"
                    )
                continue
            key = (int(record["session"]), int(record["incarnation"]))
            self._tracks.setdefault(key, []).append(record)
            if record["event"] == "open":
                self._backends[key[0]] = str(record["backend"])

    def save(self) -> None:
        """Write what was recorded (record mode; a replay writes nothing)."""
        if self.mode is not CassetteMode.RECORD:
            return
        with self._lock:
            records = list(self._records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"cassette": FORMAT_VERSION, "sessions": self._sessions}
        lines = [json.dumps(r, ensure_ascii=False) for r in [header, *records]]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def session(self, backend: str) -> CassetteSession:
        """The next session's part of the cassette (called as the session is configured)."""
        with self._lock:
            index = self._sessions
            self._sessions += 1
        if self.replaying:
            recorded = self._backends.get(index)
            if recorded is None:
                raise self._mismatch(
                    f"cassette {self.path} recorded {len(self._backends)} session(s); "
                    f"this is session {index + 1} (a {backend} session): nothing to replay. "
                    "Re-record the cassette (mode 'record')."
                )
            if recorded != backend:
                raise self._mismatch(
                    f"cassette {self.path}: session {index + 1} was recorded on {recorded!r}, "
                    f"this one runs on {backend!r}. Re-record the cassette (mode 'record')."
                )
        return CassetteSession(self, index, backend)

    def _mismatch(self, message: str) -> CassetteMismatch:
        error = CassetteMismatch(message, reason="cassette_mismatch")
        with self._lock:
            self.mismatches.append(error)
        return error

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(record)

    def _track(self, session: int, incarnation: int) -> list[dict[str, Any]] | None:
        return self._tracks.get((session, incarnation))


class CassetteSession:
    """One session's part of a :class:`Cassette`; the session actor opens its transports here."""

    def __init__(self, cassette: Cassette, index: int, backend: str) -> None:
        self.cassette = cassette
        self.index = index
        self.backend = backend
        self._incarnations = 0

    @property
    def replaying(self) -> bool:
        return self.cassette.replaying

    def open_transport(self, handler: BackendHandler) -> Transport:
        """The transport of the session's next incarnation: recording, or replaying."""
        self._incarnations += 1
        incarnation = self._incarnations
        options = handler.options
        env = getattr(handler, "env", None)
        # Secret-looking options (api_key=...) are scrubbed like secret env values.
        secrets = {
            str(k): v for k, v in options.items() if isinstance(v, str) and is_secret_key(str(k))
        }
        scrub = Scrubber(
            {**secrets, **(env if isinstance(env, Mapping) else options.get("env") or {})},
            str(options["cwd"]) if options.get("cwd") else None,
            getattr(handler, "session_id", None),
        )
        cassette = self.cassette
        from beamagent.backends.openai import HttpStreamTransport
        from beamagent.backends.opencode_server import OpenCodeServerTransport

        if not cassette.replaying:
            inner = handler.open_transport()
            if isinstance(inner, HttpStreamTransport):
                return HttpRecordingTransport(inner, self._recorder(incarnation), scrub)
            if isinstance(inner, OpenCodeServerTransport):
                return RecordingTransport(
                    inner, self._recorder(incarnation), scrub, canonical=_http_write
                )
            if not isinstance(inner, SubprocessTransport):
                with contextlib.suppress(Exception):  # never started: nothing much to release
                    inner.close()
                raise InvalidOption(
                    f"cassettes record the stdio CLI backends (claude, codex, gemini, "
                    f"copilot...) and the HTTP ones (openai, opencode); the {self.backend} "
                    "backend talks over a "
                    f"{type(inner).__name__}, which is not recorded yet"
                )
            return RecordingTransport(inner, self._recorder(incarnation), scrub)
        track = cassette._track(self.index, incarnation)
        if not track:
            recorded = sum(1 for s, _ in cassette._tracks if s == self.index)
            raise cassette._mismatch(
                f"cassette {cassette.path}: session {self.index + 1} ({self.backend}) was "
                f"recorded with {recorded} incarnation(s); this replay starts incarnation "
                f"{incarnation} (a restart the recording did not have). Re-record the cassette."
            )
        http = any(
            r["event"] == "info" and r["info"].get("transport") in ("http", "opencode")
            for r in track
        )
        return ReplayTransport(
            track,
            scrub,
            cassette,
            f"session {self.index + 1}",
            canonical=_http_write if http else None,
        )

    def _recorder(self, incarnation: int) -> Callable[[dict[str, Any]], None]:
        base = {"session": self.index, "incarnation": incarnation}

        def record(event: dict[str, Any]) -> None:
            self.cassette._record({**base, **event})

        record({"event": "open", "backend": self.backend})
        return record


class RecordingTransport(Transport):
    """Wraps the transport a handler opened; records every event both ways, scrubbed."""

    def __init__(
        self,
        inner: Transport,
        record: Callable[[dict[str, Any]], None],
        scrub: Scrubber,
        *,
        canonical: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._inner = inner
        self._record = record
        self._scrub = scrub
        self._canonical = canonical

    def start(self, sink: TransportSink) -> None:
        scrub, record = self._scrub, self._record
        # Data is kept whole lines at a time (every CLI protocol here is line-based), so a
        # secret or a character the pipe cut in two is scrubbed and decoded whole. The
        # handler still gets each chunk at once; only the recorded copy waits for its line.
        pending = bytearray()

        def keep_lines(data: bytes, *, final: bool = False) -> None:
            pending.extend(data)
            end = len(pending) if final or len(pending) > _MAX_PENDING else pending.rfind(b"\n") + 1
            if end:
                record({"event": "data", **_encode(bytes(pending[:end]), scrub)})
                del pending[:end]

        def recording_sink(event: TransportEvent) -> None:
            if isinstance(event, Data):
                keep_lines(event.data)
                sink(event)
                return
            keep_lines(b"", final=True)  # an unfinished last line, before what follows it
            if isinstance(event, Connected):
                record({"event": "connected", "info": _json_safe(scrub.value(dict(event.info)))})
            elif isinstance(event, Exited):
                tail = scrub.prose(event.stderr_tail)
                record({"event": "exited", "status": event.status, "stderr_tail": tail})
            elif isinstance(event, Disconnected):
                record({"event": "disconnected", "reason": scrub.prose(event.reason)})
            elif isinstance(event, Messages):  # pragma: no cover - no CLI transport sends it
                log.warning("cassette_messages_not_recorded", count=len(event.messages))
            sink(event)

        self._inner.start(recording_sink)
        # After start: what info() says of the running transport (its pid), for the replay.
        record({"event": "info", "info": _json_safe(scrub.value(self._inner.info()))})

    def send(self, data: bytes) -> None:
        kept = data if self._canonical is None else self._canonical(data)
        self._record({"event": "send", **_encode(kept, self._scrub)})  # before its answer
        self._inner.send(data)

    def signal(self, signum: int) -> None:
        signal = getattr(self._inner, "signal", None)
        if signal is not None:
            signal(signum)

    @property
    def pid(self) -> int | None:
        pid = getattr(self._inner, "pid", None)
        return pid if isinstance(pid, int) else None

    def close(self) -> None:
        self._record({"event": "close"})
        self._inner.close()

    def info(self) -> dict[str, Any]:
        return self._inner.info()


class HttpRecordingTransport(RecordingTransport):
    """Records an :class:`~beamagent.backends.openai.HttpStreamTransport`'s exchanges.

    Each write (a request or cancel command) is kept in its compared form
    (:func:`_http_write`: method, path, body) with the request as sent beside it
    (``http``: method, full URL, headers, all scrubbed); each response's status and
    headers as a ``response`` record; each delivered line (one per SSE event, then
    ``done`` / ``http_error`` / ...) as ``data``, as for a CLI.
    """

    def __init__(
        self,
        inner: HttpStreamTransport,
        record: Callable[[dict[str, Any]], None],
        scrub: Scrubber,
    ) -> None:
        super().__init__(inner, record, scrub)
        self._http = inner

        def on_response(request_id: int, status: int, headers: Mapping[str, str]) -> None:
            record(
                {
                    "event": "response",
                    "id": request_id,
                    "status": status,
                    "headers": _json_safe(scrub.value(dict(headers))),
                }
            )

        inner.on_response = on_response

    def send(self, data: bytes) -> None:
        requests = []
        for line in data.decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                command = json.loads(line)
                if isinstance(command, dict) and command.get("op") == "request":
                    requests.append(
                        {
                            "method": str(command.get("method", "POST")),
                            "url": self._scrub.text(str(command.get("url", ""))),
                            "headers": _json_safe(self._scrub.value(self._http.request_headers())),
                        }
                    )
        record: dict[str, Any] = {"event": "send", **_encode(_http_write(data), self._scrub)}
        if requests:
            record["http"] = requests
        self._record(record)  # before its answer
        self._inner.send(data)


def _replayed_info(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """Transport info as a replay gives it: no pid (the recorded one may name another
    process by now: ``kill_backend`` must not signal it)."""
    info = {k: v for k, v in recorded.items() if k != "pid"}
    info["transport"] = "cassette_replay"
    return info


class ReplayTransport(Transport):
    """Plays a recorded incarnation back: what followed each write is delivered on it.

    ``start`` delivers ``Connected`` and whatever came before the first write;
    each ``send`` is checked against the next recorded write (scrubbed the same
    way), then what followed it is delivered, up to the next write. An ``Exited``
    that followed ``close`` in the recording is delivered on ``close``.
    """

    def __init__(
        self,
        track: list[dict[str, Any]],
        scrub: Scrubber,
        cassette: Cassette,
        label: str,
        *,
        canonical: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._track = track
        self._canonical = canonical
        self._scrub = scrub
        self._cassette = cassette
        self._label = label
        self._at = 0
        self._sink: TransportSink | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._info: dict[str, Any] = {}
        for record in track:
            if record["event"] == "info":
                self._info = _replayed_info(record["info"])
                break

    def _events(self) -> Iterator[TransportEvent]:
        """Recorded events from the cursor up to the next write or close (cursor moved)."""
        track, scrub = self._track, self._scrub
        while self._at < len(track):
            record = track[self._at]
            kind = record["event"]
            if kind in ("send", "close"):
                return
            self._at += 1
            if kind == "connected":
                yield Connected(_replayed_info(record["info"]))
            elif kind == "data":
                yield Data(_decode(record, scrub))
            elif kind == "exited":
                yield Exited(int(record["status"]), scrub.restore(record["stderr_tail"]))
            elif kind == "disconnected":
                yield Disconnected(str(record["reason"]))

    def _deliver(self) -> None:
        sink = self._sink
        assert sink is not None
        for event in self._events():
            sink(event)

    def start(self, sink: TransportSink) -> None:
        with self._lock:
            self._sink = sink
            self._deliver()

    def send(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                raise CassetteMismatch("the replayed transport is closed", reason="closed")
            actual = _encode(
                data if self._canonical is None else self._canonical(data), self._scrub
            )
            record = self._track[self._at] if self._at < len(self._track) else None
            expected: dict[str, str] | None = (
                {k: str(record[k]) for k in ("text", "b64") if k in record}
                if record is not None and record["event"] == "send"
                else None
            )
            if expected != actual:
                raise self._diverged(expected, actual)
            self._at += 1
            self._deliver()

    def _diverged(self, expected: dict[str, str] | None, actual: dict[str, str]) -> Exception:
        def lines(value: dict[str, str] | None) -> list[str]:
            if value is None:
                return []
            return (value.get("text") or value.get("b64", "")).splitlines(keepends=True)

        diff = "".join(
            difflib.unified_diff(
                lines(expected), lines(actual), "recorded write", "this replay's write"
            )
        )
        what = "a write the recording does not have" if expected is None else "a different write"
        return self._cassette._mismatch(
            f"cassette {self._cassette.path}: {self._label} made {what} "
            f"(write {sum(1 for r in self._track[: self._at] if r['event'] == 'send') + 1}); "
            f"re-record the cassette if this change is intended.\n{diff}"
        )

    def signal(self, signum: int) -> None:
        """No process to signal in a replay."""

    @property
    def pid(self) -> int | None:
        return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._at < len(self._track) and self._track[self._at]["event"] == "close":
                self._at += 1
                if self._sink is not None:
                    self._deliver()

    def info(self) -> dict[str, Any]:
        return dict(self._info)
