"""configure_logging: level filter, JSON rendering, bound context, no secrets by design."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from beamagent import configure_logging


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_json_lines_with_bound_context_and_level_filter() -> None:
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    log = structlog.get_logger("t").bind(session_id="s1", backend="local")
    log.debug("hidden_event")
    log.info("session_started", model="m")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["session_started"]
    assert lines[0]["session_id"] == "s1"
    assert lines[0]["backend"] == "local"
    assert lines[0]["level"] == "info"
    assert "timestamp" in lines[0]


def test_console_renderer_and_numeric_level() -> None:
    out = io.StringIO()
    configure_logging(30, stream=out)
    structlog.get_logger("t").info("not_shown")
    structlog.get_logger("t").warning("shown_event", session_id="s2")
    text = out.getvalue()
    assert "not_shown" not in text
    assert "shown_event" in text
    assert "s2" in text
