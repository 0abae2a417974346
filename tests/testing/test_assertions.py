"""assert_restarted and wait_for_event beyond what the plugin's pytester test shows."""

from __future__ import annotations

import pytest

from beamagent import Runtime
from beamagent.testing import assert_restarted, crash, cut, wait_for_event


def test_a_session_given_up_fails_assert_restarted_at_once_saying_so() -> None:
    with Runtime(store=":memory:", handle_signals=False, session_restarts=(0, 5.0)) as rt:
        session = rt.start_session(backend="local")
        before = crash(session)
        with pytest.raises(AssertionError, match=r"was not restarted: .*given up"):
            assert_restarted(session, within=30, after=before)


def test_a_restart_is_found_by_session_id_in_the_live_runtimes() -> None:
    with Runtime(store=":memory:", handle_signals=False) as rt:
        session = rt.start_session(backend="local")
        assert assert_restarted(session.session_id, after=cut(session.session_id)) == 2
        assert assert_restarted(session.session_id, after=crash(session)) == 3


def test_wait_for_event_on_a_session_needs_a_query() -> None:
    with Runtime(store=":memory:", handle_signals=False) as rt:
        session = rt.start_session(backend="local")
        with pytest.raises(TypeError, match="query="):
            wait_for_event(session, lambda m: True)  # type: ignore[call-overload]
        ref = session.send_query("hello")
        assert wait_for_event(session, lambda m: m.content == "hello", query=ref).content == "hello"
