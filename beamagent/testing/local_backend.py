"""Scripted ``local`` sessions for tests: the object behind the ``local_backend`` fixture."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from beamagent.graph.session_serving import SessionServing
from beamagent.session import Session

if TYPE_CHECKING:
    from beamagent.runtime import Runtime

__all__ = ["LocalBackend"]


@attrs.frozen
class LocalBackend:
    """Starts ``local`` sessions with scripted replies on ``runtime``; offline and deterministic.

    ``replies`` are the answers to the queries, one entry per query (then the prompt is
    echoed); an entry is a ``str``, or a list of items (texts, message dicts, ``bytes``,
    :class:`~beamagent.LocalExit`, :class:`~beamagent.LocalToolCall`). ``reply`` is a
    callable ``reply(prompt, params)`` instead (see ``beamagent.backends.local``).

    Example::

        def test_greets(local_backend):
            session = local_backend(replies=["hi there"])
            assert session.query("hello")[-1].content == "hi there"
    """

    runtime: Runtime

    def __call__(
        self,
        replies: Sequence[Any] = (),
        *,
        reply: Callable[..., Any] | None = None,
        **options: Any,
    ) -> Session:
        """A started, ready ``local`` session; the runtime stops it at the end of the test."""
        return self.runtime.start_session(
            backend="local", **self.options(replies, reply=reply, **options)
        )

    @staticmethod
    def options(
        replies: Sequence[Any] = (),
        *,
        reply: Callable[..., Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """The session options that script a ``local`` session (without ``backend``)."""
        scripted = dict(options)
        if replies:
            scripted["replies"] = list(replies)
        if reply is not None:
            scripted["reply"] = reply
        return scripted

    def serving(
        self,
        prompt_template: Any,
        replies: Sequence[Any] = (),
        *,
        reply: Callable[..., Any] | None = None,
        **serving_options: Any,
    ) -> SessionServing:
        """A graph node's serving that asks a scripted ``local`` session (on the run's runtime).

        A node served by a model answers with a structured answer (``body``, ``next``,
        ``outputs``, see :class:`~beamagent.graph.SessionServing`): each reply is that
        answer, a dict (sent as JSON) or the JSON text. ``serving_options`` go to
        :class:`~beamagent.graph.SessionServing`.

        Example::

            serving = local_backend.serving("Greet {input}", [{"body": "Hello, Ada!"}])
            job = Job("greet", [Node("greet", serving=serving)], start="greet")
        """
        answers = [json.dumps(r) if isinstance(r, Mapping) else r for r in replies]
        session_options = {
            **serving_options.pop("session_options", {}),
            **self.options(answers, reply=reply),
        }
        return SessionServing(
            prompt_template,
            backend="local",
            session_options=session_options,
            **serving_options,
        )
