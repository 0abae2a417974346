"""``StoreRecorder``: a session's way to the store actor, by name, across its restarts.

A session never holds the store actor's ref: each write looks the actor up by
its registered name and, while the runtime's supervisor restarts it, waits
for the new one (bounded by the recorder's timeout). A write whose store
actor died before handling it is sent again; one whose actor died while
handling it may have committed, so it is sent again with ``skip_recorded``,
which drops the messages the store already holds. A store restart therefore
costs a session one delayed write, never a lost or duplicated message.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from typing import Any

import pykka
from pykka._envelope import Envelope
from pykka.messages import ProxyCall

from beamagent.errors import BeamAgentError, StoreError
from supervisors import NoReply, ProcessFuture, WaitTimeout, await_name

__all__ = ["StoreRecorder"]


class StoreRecorder:
    """The session-side view of the store actor (the session's ``Recorder``).

    Args:
        name: the store actor's registered name.
        timeout: seconds a write may take, waiting for a restarting store included.

    Every method raises ``StoreError`` when the write did not happen (the
    store failed it, or no store actor answered in time).
    """

    __slots__ = ("_name", "_timeout")

    def __init__(self, name: Hashable, timeout: float = 30.0) -> None:
        self._name = name
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"StoreRecorder({self._name!r})"

    def _ask(self, method: str, args: tuple[Any, ...], retry_args: tuple[Any, ...]) -> Any:
        deadline = time.monotonic() + self._timeout
        message = ProxyCall((method,), args, {})
        while True:
            remaining = deadline - time.monotonic()
            try:
                ref = await_name(self._name, max(remaining, 0.0))
            except WaitTimeout:
                raise StoreError(
                    f"the store process did not come back within {self._timeout} s"
                ) from None
            if ref is None:
                raise StoreError("the store process is gone (is the runtime stopped?)")
            future = ProcessFuture()
            ref.actor_inbox.put(Envelope(message, reply_to=future))
            try:
                return future.get(timeout=max(remaining, 0.0))
            except NoReply:
                # It died while writing: the write may have committed. Again, idempotently.
                message = ProxyCall((method,), retry_args, {})
            except pykka.ActorDeadError:
                pass  # it ended before handling the write: send it to the next one
            except pykka.Timeout:
                raise StoreError(
                    f"the store did not answer {method} within {self._timeout} s"
                ) from None
            except BeamAgentError:
                raise
            except Exception as exc:  # the store actor crashed on it (and is restarting)
                raise StoreError(f"the store failed {method}: {exc!r}") from exc

    def session_started(self, meta: Mapping[str, Any]) -> None:
        """Upsert the session's metadata."""
        args = (dict(meta),)
        self._ask("session_started", args, args)

    def session_updated(self, session_id: str, fields: Mapping[str, Any]) -> None:
        """Update metadata fields (model, native session id)."""
        args = ("update_session", (session_id,), dict(fields))
        self._ask("write", args, args)

    def record(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        """Record messages durably, in order (each exactly once, also across store restarts)."""
        self._ask("record", (session_id, messages), (session_id, messages, True))
