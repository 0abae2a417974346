"""Logging: stdlib records by default, configure_logging, redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from beamagent import configure_logging
from beamagent.log import REDACTED, event_dict, get_logger, redact
from tests._child import run_script

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SECRET = "sk-proj-Zx81kQ0aBcDeFgHiJkLmNoPq"


@pytest.fixture
def debug_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="beamagent")
    caplog.set_level(logging.DEBUG, logger="supervisors")
    return caplog


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


# --- records ------------------------------------------------------------------------------


def test_events_are_records_of_the_module_logger_with_their_keys(
    debug_records: pytest.LogCaptureFixture,
) -> None:
    log = get_logger("beamagent.example").bind(session_id="s1")
    log.info("session_started", model="m", count=3)
    (record,) = [r for r in debug_records.records if r.name == "beamagent.example"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == "session_started session_id='s1' model='m' count=3"
    assert record.event == "session_started"  # type: ignore[attr-defined]
    assert record.session_id == "s1"  # type: ignore[attr-defined]
    assert record.count == 3  # type: ignore[attr-defined]
    assert event_dict(record) == {
        "event": "session_started",
        "session_id": "s1",
        "model": "m",
        "count": 3,
    }
    # The record points at the code that logged, not at structlog or this module's wrapper.
    assert record.funcName == "test_events_are_records_of_the_module_logger_with_their_keys"
    assert record.pathname == __file__


def test_keys_named_like_record_attributes_are_renamed_on_the_record_only(
    debug_records: pytest.LogCaptureFixture,
) -> None:
    get_logger("beamagent.example").warning("odd", process="p", message="m", thread="t")
    (record,) = [r for r in debug_records.records if r.name == "beamagent.example"]
    assert record.process_ == "p"  # type: ignore[attr-defined]
    assert record.message_ == "m"  # type: ignore[attr-defined]
    assert record.process != "p"  # the real process id is untouched
    assert event_dict(record) == {"event": "odd", "process": "p", "message": "m", "thread": "t"}
    assert record.getMessage() == "odd process='p' message='m' thread='t'"


def test_exceptions_and_positional_arguments_reach_the_record(
    debug_records: pytest.LogCaptureFixture,
) -> None:
    log = get_logger("beamagent.example")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it_failed", step=2)
    log.log(logging.WARNING, "%s of %d", "three", 4)
    failed, warned = [r for r in debug_records.records if r.name == "beamagent.example"]
    assert failed.levelno == logging.ERROR
    assert failed.exc_info is not None
    assert failed.exc_info[0] is ValueError
    assert warned.getMessage() == "three of 4"


def test_library_modules_log_through_their_own_stdlib_loggers(
    debug_records: pytest.LogCaptureFixture,
) -> None:
    from beamagent import Runtime

    with Runtime(store=":memory:") as rt:
        rt.start_session(backend="local").query("hi")
    names = {r.name for r in debug_records.records}
    assert {"beamagent.runtime", "beamagent.session", "supervisors._supervisor"} <= names
    started = [r for r in debug_records.records if getattr(r, "event", None) == "session_started"]
    assert started
    assert started[0].backend == "local"  # type: ignore[attr-defined]


def test_a_global_structlog_configuration_does_not_change_our_events(
    debug_records: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    restore_structlog: None,
) -> None:
    def drop_everything(*_args: Any) -> Any:
        raise structlog.DropEvent

    structlog.configure(
        processors=[drop_everything], logger_factory=structlog.PrintLoggerFactory(sys.stdout)
    )
    get_logger("beamagent.example").info("still_here", key="v")
    assert [r.event for r in debug_records.records] == ["still_here"]  # type: ignore[attr-defined]
    assert capsys.readouterr().out == ""


class _CountingMapping(dict[str, Any]):
    """A value that notices when a processor looks into it."""

    looked = 0

    def items(self) -> Any:
        type(self).looked += 1
        return super().items()


def test_a_filtered_out_call_runs_no_processor(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="beamagent")
    log = get_logger("beamagent.example").bind(session_id="s")
    _CountingMapping.looked = 0
    log.debug("hidden", value=_CountingMapping(a=1))
    log.info("hidden", value=_CountingMapping(a=1))
    assert _CountingMapping.looked == 0
    assert caplog.records == []
    log.warning("shown", value=_CountingMapping(a=1))
    assert _CountingMapping.looked == 1
    assert [r.event for r in caplog.records] == ["shown"]  # type: ignore[attr-defined]


# --- configure_logging -------------------------------------------------------------------


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_console_format_filters_by_level_without_colours_off_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    log = get_logger("beamagent.example").bind(session_id="s2")
    log.debug("not_shown")
    log.info("shown_event", api_key=SECRET)
    get_logger("supervisors._supervisor").warning("child_restarted", child_id="c")
    text = out.getvalue()
    assert "not_shown" not in text
    assert "shown_event" in text
    assert "session_id=s2" in text
    assert "child_restarted" in text
    assert "[beamagent.example]" in text
    assert SECRET not in text
    assert REDACTED in text
    assert not ANSI.search(text)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_format_is_coloured_on_a_terminal_unless_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _Terminal()
    configure_logging("info", stream=out)
    get_logger("beamagent.example").info("coloured")
    assert ANSI.search(out.getvalue())
    monkeypatch.setenv("NO_COLOR", "1")
    plain = _Terminal()
    configure_logging("info", stream=plain)
    get_logger("beamagent.example").info("plain")
    assert "plain" in plain.getvalue()
    assert not ANSI.search(plain.getvalue())


def test_json_lines_with_level_logger_bound_keys_and_redacted_exceptions() -> None:
    out = io.StringIO()
    configure_logging(logging.INFO, json=True, stream=out)
    log = get_logger("beamagent.example").bind(session_id="s1", backend="local")
    log.debug("hidden_event")
    log.info("session_started", model="m", headers={"Authorization": f"Bearer {SECRET}"})
    try:
        raise RuntimeError(f"request failed with key {SECRET}")
    except RuntimeError:
        log.exception("request_failed")
    started, failed = (json.loads(line) for line in _lines(out))
    assert started["event"] == "session_started"
    assert started["level"] == "info"
    assert started["logger"] == "beamagent.example"
    assert started["session_id"] == "s1"
    assert started["backend"] == "local"
    assert started["headers"] == {"Authorization": REDACTED}
    assert started["timestamp"].endswith("Z")
    assert failed["level"] == "error"
    assert "RuntimeError" in failed["exception"]
    assert SECRET not in out.getvalue()


def test_configuring_twice_replaces_the_handler_and_stops_propagation() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", stream=first)
    configure_logging("info", stream=second)
    for name in ("beamagent", "supervisors"):
        logger = logging.getLogger(name)
        assert len(logger.handlers) == 1
        assert logger.propagate is False
        assert logger.level == logging.INFO
    get_logger("beamagent.example").info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")


# --- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apikey",
        "apiKey",
        "x-api-key",
        "token",
        "access_token",
        "refresh_token",
        "accessToken",
        "secret",
        "client_secret",
        "password",
        "authorization",
        "Authorization",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "cookie",
    ],
)
def test_values_under_credential_keys_are_hidden(key: str) -> None:
    assert redact({key: "hunter2"}) == {key: REDACTED}
    assert redact({"nested": [{key: {"any": "thing"}}]}) == {"nested": [{key: REDACTED}]}


@pytest.mark.parametrize(
    "key", ["max_tokens", "input_tokens", "token_count", "session_id", "keys", "monkey"]
)
def test_other_keys_are_left_alone(key: str) -> None:
    assert redact({key: 12}) == {key: 12}


def test_unset_credentials_stay_visible_as_unset() -> None:
    assert redact({"api_key": None, "token": ""}) == {"api_key": None, "token": ""}


def test_environment_headers_and_argv_are_scrubbed() -> None:
    event = {
        "env": {"OPENAI_API_KEY": SECRET, "PATH": "/usr/bin", "HOME": "/root"},
        "headers": [("Authorization", f"Bearer {SECRET}"), ("Accept", "text/plain")],
        "argv": ["claude", "--api-key", "plain-secret", "--model", "m", f"--token={SECRET}"],
        "raw": b"Authorization: Bearer abcdef123456\r\n",
    }
    assert redact(event) == {
        "env": {"OPENAI_API_KEY": REDACTED, "PATH": "/usr/bin", "HOME": "/root"},
        "headers": [("Authorization", REDACTED), ("Accept", "text/plain")],
        "argv": ["claude", "--api-key", REDACTED, "--model", "m", f"--token={REDACTED}"],
        "raw": f"Authorization: Bearer {REDACTED}\r\n".encode(),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"using {SECRET} now", f"using {REDACTED} now"),
        ("sk-ant-api03-AbCdEfGhIjKlMnOp", REDACTED),
        ("Authorization: Bearer abc.def-123456", f"Authorization: Bearer {REDACTED}"),
        (
            "curl -H 'authorization: Basic dXNlcjpwYXNz'",
            f"curl -H 'authorization: Basic {REDACTED}'",
        ),
        ("bearer eyJhbGciOiJIUzI1NiJ9", f"bearer {REDACTED}"),
        ("OPENAI_API_KEY=abc123 other=1", f"OPENAI_API_KEY={REDACTED} other=1"),
        ('{"password": "hunter2"}', f'{{"password": "{REDACTED}"}}'),
        ("https://user:pa55@example.com/v1", f"https://user:{REDACTED}@example.com/v1"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123", f"token {REDACTED}"),
        ("the task-abcdefghijklmnop ran", "the task-abcdefghijklmnop ran"),
        ("max_tokens=5 input_tokens: 7", "max_tokens=5 input_tokens: 7"),
        ("a token limit was hit", "a token limit was hit"),
        ("token=x", f"token={REDACTED}"),  # the shortest text that can hold a secret
    ],
)
def test_credentials_inside_text_are_hidden(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_exceptions_carrying_secrets_become_their_redacted_repr() -> None:
    error = ConnectionError(f"401 for key {SECRET}")
    assert redact(error) == f"ConnectionError('401 for key {REDACTED}')"
    harmless = ConnectionError("refused")
    assert redact(harmless) is harmless


def test_unchanged_values_are_the_same_objects() -> None:
    value = {"a": [1, "two", ("three", {"four": 4.0})], "b": {"c"}}
    assert redact(value) is value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_redaction_never_raises_and_is_idempotent(value: Any) -> None:
    once = redact(value)
    assert redact(once) == once


@given(json_values, st.data())
def test_a_key_placed_anywhere_never_survives(value: Any, data: st.DataObject) -> None:
    def plant(v: Any) -> Any:
        if isinstance(v, dict) and v and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(v)))
            return {**v, key: plant(v[key])}
        if isinstance(v, list) and v and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(v) - 1))
            return [*v[:i], plant(v[i]), *v[i + 1 :]]
        prefix = data.draw(st.sampled_from(["", "key ", "x=", "Bearer "]))
        return [v, prefix + SECRET]

    assert SECRET not in repr(redact(plant(value)))


# --- fresh interpreters -------------------------------------------------------------------

_SCENARIO = """
import logging, sys
{setup}
from beamagent import Runtime
from beamagent.log import get_logger

for name in ("beamagent", "supervisors"):
    logger = logging.getLogger(name)
    assert logger.level == logging.NOTSET and logger.propagate, name
    assert {expected_handlers}, (name, logger.handlers)

with Runtime(store=":memory:") as rt:
    session = rt.start_session(backend="local")
    session.query("hello")
get_logger("beamagent.runtime").bind(session_id=session.session_id).warning(
    "demo_warning", env={{"ANTHROPIC_API_KEY": "{secret}"}}, argv=["x", "--api-key", "{secret}"]
)
"""


def _scenario(setup: str = "", expected_handlers: str = "not logger.handlers") -> str:
    return _SCENARIO.format(setup=setup, expected_handlers=expected_handlers, secret=SECRET)


def test_by_default_nothing_on_stdout_and_only_warnings_on_stderr() -> None:
    done = run_script(_scenario())
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    # logging.lastResort prints the message alone: the one warning, redacted.
    found = re.search(r"session_id='(session_[0-9a-f]+)'", done.stderr)
    assert found is not None, done.stderr
    assert done.stderr == (
        f"demo_warning session_id='{found.group(1)}'"
        f" env={{'ANTHROPIC_API_KEY': '{REDACTED}'}} argv=['x', '--api-key', '{REDACTED}']\n"
    )


def test_configure_logging_writes_plain_lines_to_a_file(tmp_path: Any) -> None:
    path = tmp_path / "beamagent.log"
    setup = f"from beamagent import configure_logging\nlog_file = open({str(path)!r}, 'w')"
    code = _scenario(setup).replace(
        "with Runtime(", 'configure_logging("info", stream=log_file)\nwith Runtime(', 1
    )
    done = run_script(code)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    text = path.read_text()
    assert "runtime_started" in text
    assert "session_started" in text
    assert "child_started" not in text  # a debug event
    assert "demo_warning" in text
    assert SECRET not in text
    assert not ANSI.search(text)


def test_configure_logging_json_lines(tmp_path: Any) -> None:
    path = tmp_path / "beamagent.jsonl"
    setup = f"from beamagent import configure_logging\nlog_file = open({str(path)!r}, 'w')"
    code = _scenario(setup).replace(
        "with Runtime(", 'configure_logging("debug", json=True, stream=log_file)\nwith Runtime(', 1
    )
    done = run_script(code)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all({"event", "level", "logger", "timestamp"} <= set(line) for line in lines)
    by_event = {line["event"]: line for line in lines}
    assert by_event["child_started"]["level"] == "debug"
    assert by_event["session_started"]["session_id"].startswith("session_")
    assert by_event["demo_warning"]["env"] == {"ANTHROPIC_API_KEY": REDACTED}
    assert SECRET not in path.read_text()


def test_a_hosts_basic_config_sees_debug_records_of_beamagent_loggers() -> None:
    setup = (
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,"
        " format='%(name)s|%(levelname)s|%(message)s')"
    )
    code = _scenario(setup, expected_handlers="True")
    done = run_script(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert any(line.startswith("supervisors._supervisor|DEBUG|child_started ") for line in lines)
    assert any(line.startswith("beamagent.runtime|INFO|runtime_started ") for line in lines)
    assert any(line.startswith("beamagent.session|INFO|session_started ") for line in lines)
    assert any(line.startswith("beamagent.session|DEBUG|session_state_changed ") for line in lines)
    assert any(line.startswith("beamagent.runtime|WARNING|demo_warning ") for line in lines)
    assert SECRET not in done.stderr


_PASSING_TEST = """
import pytest
from beamagent import LocalExit, Runtime
from beamagent.errors import SessionError


def test_a_session_dies_and_is_restarted():
    with Runtime(store=":memory:") as rt:
        session = rt.start_session(backend="local", replies=[[LocalExit(1)]])
        with pytest.raises(SessionError):
            session.query("die")
"""


def test_a_passing_pytest_run_prints_no_library_lines(tmp_path: Any) -> None:
    """Even without output capture (``-s``): pytest's logging plugin takes the records."""
    (tmp_path / "test_quiet.py").write_text(_PASSING_TEST)
    done = run_script(
        "import sys, pytest\n"
        "sys.exit(pytest.main(['-q', '-s', '-p', 'no:cacheprovider', sys.argv[1]]))",
        str(tmp_path / "test_quiet.py"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "1 passed" in output
    for event in ("runtime_started", "session_started", "session_failed", "process_exited"):
        assert event not in output
