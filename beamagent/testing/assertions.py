"""Assertions that wait, in the spirit of ExUnit's ``assert_receive``.

:func:`wait_for_event` waits for a graph run's event or a query's message that matches a
predicate; :func:`assert_restarted` waits for a session's supervisor to restart it. Both
block on the event itself (never a sleep) and fail with an ``AssertionError`` that says
what they saw instead::

    run = rt.run_job(job, "hello")
    event = wait_for_event(run, lambda e: e.kind is EventKind.NODE_RESULT, timeout=5)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from beamagent.errors import QueryComplete, QueryTimeout, SessionError, SessionNotFound
from beamagent.graph.run import Run, RunEvent
from beamagent.messages import Message
from beamagent.session import QueryRef, Session
from beamagent.testing.faults import resolve_session
from supervisors import WaitTimeout, demonitor, monitor

if TYPE_CHECKING:
    from beamagent.runtime import Runtime

__all__ = ["assert_restarted", "wait_for_event"]

_T = TypeVar("_T", Message, RunEvent)
_SHOWN = 20  # the last events an AssertionError lists


def _seen(items: list[Any]) -> str:
    if not items:
        return "nothing"
    shown = [_describe(item) for item in items[-_SHOWN:]]
    more = f"... ({len(items) - _SHOWN} earlier), " if len(items) > _SHOWN else ""
    return f"{len(items)}: {more}" + ", ".join(shown)


def _describe(item: Any) -> str:
    if isinstance(item, Message):
        content = item.content if isinstance(item.content, str) else ""
        return f"{item.type.value}({content[:60]!r})" if content else item.type.value
    if isinstance(item, RunEvent):
        where = f"@{item.node_id}" if item.node_id else ""
        return f"{item.kind.value}{where}"
    return repr(item)


@overload
def wait_for_event(
    source: Run, predicate: Callable[[RunEvent], bool], timeout: float = ...
) -> RunEvent: ...
@overload
def wait_for_event(
    source: Session,
    predicate: Callable[[Message], bool],
    timeout: float = ...,
    *,
    query: QueryRef | str,
) -> Message: ...
def wait_for_event(
    source: Run | Session,
    predicate: Callable[[Any], bool],
    timeout: float = 5.0,
    *,
    query: QueryRef | str | None = None,
) -> Any:
    """The first event of a graph run, or message of a session's query, matching ``predicate``.

    ``source`` is a :class:`~beamagent.graph.run.Run` (its events from the first, as
    ``run.events()`` gives them) or a :class:`~beamagent.session.Session`, whose query
    ``query`` is read: a :class:`~beamagent.session.QueryRef` from ``send_query``, or a
    prompt to send now. Messages and events read before the match are consumed.

    Raises:
        AssertionError: nothing matched within ``timeout`` seconds, or the run or query
            ended first; the message lists what was seen.
        TypeError: ``source`` is a session and ``query`` is missing.
    """
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    if isinstance(source, Run):
        what = f"run {source.run_id}"
        while (remaining := deadline - time.monotonic()) > 0:
            # A fresh follower per event, so that each wait is bounded by what is left.
            try:
                event = next(itertools.islice(source.events(timeout=remaining), len(seen), None))
            except TimeoutError:
                break
            except StopIteration:
                raise AssertionError(
                    f"{what} ended with no matching event; seen {_seen(seen)}"
                ) from None
            seen.append(event)
            if predicate(event):
                return event
    elif isinstance(source, Session):
        if query is None:
            raise TypeError(
                "wait_for_event(session, ...) reads one query's messages: pass "
                "query=session.send_query(prompt), or query='a prompt' to send one"
            )
        ref = source.send_query(query) if isinstance(query, str) else query
        what = f"query {ref.id} of session {source.session_id}"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = source.receive_message(ref, timeout=remaining)
            except QueryTimeout:
                break
            except QueryComplete:
                raise AssertionError(
                    f"{what} ended with no matching message; seen {_seen(seen)}"
                ) from None
            seen.append(message)
            if predicate(message):
                return message
    else:
        raise TypeError(f"wait_for_event needs a Run or a Session, got {source!r}")
    raise AssertionError(f"no matching event from {what} within {timeout} s; seen {_seen(seen)}")


def assert_restarted(
    session_or_name: Session | str,
    within: float = 5.0,
    *,
    after: int = 1,
    runtime: Runtime | None = None,
) -> int:
    """Wait until the session's supervisor started an incarnation later than ``after``.

    ``after`` is the incarnation that must have been replaced: what :func:`crash`,
    :func:`kill_backend` and :func:`cut` return, or 1 (the first) by default. Returns
    the live incarnation, once it is up (its ``session_info()`` answered).

    Raises:
        AssertionError: no later incarnation was up within ``within`` seconds; says
            which incarnation and state were seen, or that the session was given up.
    """
    session = resolve_session(session_or_name, runtime)
    rt = session.runtime
    deadline = time.monotonic() + within
    info: dict[str, Any] = {}
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise WaitTimeout("out of time")
            ref = rt._session_ref(session.session_id, timeout=remaining)
            down = monitor(ref, watcher=None)
            try:
                info = session._call("session_info", timeout=max(deadline - time.monotonic(), 1e-3))
                if info["incarnation"] > after:
                    return int(info["incarnation"])
                down.wait(max(deadline - time.monotonic(), 0.0))  # it ends, or time is up
            finally:
                demonitor(down)
        except SessionError as exc:
            if exc.reason == "given_up":
                raise AssertionError(
                    f"session {session.session_id} was not restarted: {exc}"
                ) from None
            if exc.reason != "restarting" and time.monotonic() < deadline:
                continue  # it ended while answering: the next incarnation answers
            break
        except (WaitTimeout, QueryTimeout):
            break
        except SessionNotFound:
            raise AssertionError(
                f"session {session.session_id} was not restarted: it ended for good"
            ) from None
    seen = (
        f"incarnation {info['incarnation']} in state {info['state']!r}"
        if info
        else "no live incarnation"
    )
    raise AssertionError(
        f"session {session.session_id} was not restarted after incarnation {after} "
        f"within {within} s: saw {seen}"
    )
