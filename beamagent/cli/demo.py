"""`beamagent demo`: a supervised, routed graph workflow over the embedded ``local`` backend.

What it shows, in one readable trace:

* a graph job: a (scripted) model classifies each support message and routes
  it to a team; every node runs its prompt on a session;
* routing: each node's session is placed by policy (round robin over two
  ``local`` backend instances); every decision is printed with its reasons;
* supervision: the agent behind one session dies mid-answer; the crash and
  the supervisor's restart of that session (which child, why, which
  incarnation) are printed as they happen, the node's visit is retried, and
  the run completes;
* durability: every message lands in a real SQLite file (WAL) before anyone
  sees it; the demo reads the history back from the file.

Nothing here needs a network or an agent CLI; it finishes in a few seconds.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from beamagent.backends.local import LocalExit, LocalHandler
from beamagent.cli.text import message_text, short
from beamagent.graph import Edge, EdgeRouter, EventKind, Job, Node, Output, SessionServing
from beamagent.log import LOGGERS, event_dict
from beamagent.runtime import Runtime
from supervisors import format_tree, tree

__all__ = ["BACKENDS", "MESSAGES", "build_job", "run_demo"]

BACKENDS = ("local_a", "local_b")

MESSAGES = (
    "I was charged for a plan I cancelled, I want my money back",
    "The app crashes when I upload a photo",
    "THIS IS THE THIRD TIME I WRITE. NOBODY ANSWERS. I am furious",
    "hi! how's your day?",
)

_RESTART_WAIT = 10.0
"""How long the trace waits for the restart of a session whose agent died (it takes ms)."""

# The supervision events the trace shows (the library logs them; the demo listens).
_SUPERVISION_EVENTS = frozenset({"child_exited", "child_restarted", "session_restarted"})


class _ScriptedModel:
    """A deterministic stand-in for an LM that also dies once, mid-answer.

    The first classification is broken JSON (so the node is retried with a
    prompt saying what was wrong); the first tech-team answer kills the agent
    process (exit 137), which the session's supervisor heals.
    """

    def __init__(self) -> None:
        self.broke = False
        self.crashed = False

    def __call__(self, prompt: str, params: Mapping[str, Any]) -> Any:
        text = prompt.lower()
        if "tech team" in text and not self.crashed:
            self.crashed = True
            return ["Let me look at the crash rep", LocalExit(137)]
        if "classify" in text:
            return self._classify(prompt)
        team = re.search(r"you are the (\w+) team", text)
        name = team.group(1) if team else "someone"
        return _answer(f"[{name}] reply drafted")

    def _classify(self, prompt: str) -> str:
        if not self.broke:
            self.broke = True
            return "Sure! The intent is probably refund."  # not JSON: the node is retried
        message = re.search(r"message: (.*)", prompt)
        said = message.group(1).lower() if message else ""
        intent = (
            "refund"
            if "money" in said or "charged" in said
            else "tech"
            if "crash" in said
            else "other"
        )
        if "furious" in said:  # the model overrides the static routing
            route = [{"type": "route", "value": "human"}]
            return _answer("customer is angry: a human should answer", {"intent": intent}, route)
        return _answer(f"intent looks like {intent}", {"intent": intent})


def _answer(
    body: str, outputs: Mapping[str, Any] | None = None, next_: list[Any] | None = None
) -> str:
    return json.dumps(
        {"body": body, "outputs": dict(outputs or {}), "next": next_ or [], "tool_calls": []}
    )


def build_job(serving_options: Mapping[str, Any]) -> Job:
    """The support-desk graph: ``classify`` routes to ``refunds``, ``tech`` or ``smalltalk``."""
    options = dict(serving_options)
    router = EdgeRouter(
        [
            Edge("route", "refunds", conditions=[{"key": "intent", "value": "refund"}]),
            Edge("route", "tech", conditions=[{"key": "intent", "value": "tech"}]),
            Edge("fallback", "smalltalk"),
        ],
        outputs=[
            Output(
                "intent", "enum", choices=["refund", "tech", "other"], description="why they write"
            )
        ],
    )
    classify = SessionServing(
        "Classify the customer's message: {input}",
        system="You sort customer messages for a support desk.",
        **options,
    )

    def team(name: str) -> Node:
        prompt = f"You are the {name} team. Draft a reply to: {{input}}"
        return Node(name, serving=SessionServing(prompt, **options))

    return Job(
        "support-desk",
        [
            Node("classify", serving=classify, router=router),
            team("refunds"),
            team("tech"),
            team("smalltalk"),
            team("human"),
        ],
        start="classify",
    )


class _Listener(logging.Handler):
    """Collects the supervision events from the library's loggers, for the trace."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def emit(self, record: logging.LogRecord) -> None:
        event = event_dict(record)
        if event.get("event") in _SUPERVISION_EVENTS:
            self.events.put(event)

    def drain(self, trace: _SupervisionTrace, restarts: int = 0) -> Iterator[str]:
        """The trace lines of the events so far; first waits until ``restarts`` were seen."""
        while True:
            waiting = trace.restarts < restarts
            try:
                event = self.events.get(block=waiting, timeout=_RESTART_WAIT)
            except queue.Empty:
                return
            yield from trace.lines(event)


@contextmanager
def _listening() -> Iterator[_Listener]:
    """Route the library's log records to a listener only (nothing reaches stderr)."""
    listener = _Listener()
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate))
        logger.handlers = [listener]
        logger.setLevel(logging.DEBUG)  # child_exited (a crash's reason) is a debug event
        logger.propagate = False
    try:
        yield listener
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers = handlers
            logger.setLevel(level)
            logger.propagate = propagate


class _SupervisionTrace:
    """Turns the supervisors' events into trace lines: a crash, then the restart that healed it."""

    def __init__(self) -> None:
        self._restarted_session: dict[str, Any] | None = None
        self.restarts = 0

    def lines(self, event: Mapping[str, Any]) -> list[str]:
        name = event["event"]
        if name == "child_exited" and str(event.get("reason", "")).startswith("crashed("):
            reason = str(event["reason"])[len("crashed(") : -1]
            child = event.get("child_id")
            return [f"  !! crash       child {child} crashed: {short(reason, 110)}"]
        if name == "session_restarted":
            self._restarted_session = dict(event)
            return []
        if name == "child_restarted":
            session = self._restarted_session
            self._restarted_session = None
            self.restarts += 1
            what = (
                ""
                if session is None
                else f": session {session.get('session_id')} ({session.get('backend')}), "
                f"incarnation {session.get('incarnation')}"
            )
            return [
                f"  >> restart     supervisor restarted child {event.get('child_id')} "
                f"(restart #{event.get('restarts')}){what}"
            ]
        return []


def _event_line(event: Any) -> str:
    where = event.node_id or ""
    details = ", ".join(f"{key}={short(value)}" for key, value in event.data.items())
    return f"  {event.kind.value:<13} {where:<10} {details}".rstrip()


def run_demo(console: Console | None = None) -> int:
    """Run the demo, printing its trace; returns 0 when every run completed."""
    out = console or Console(highlight=False, soft_wrap=True)
    model = _ScriptedModel()
    routing = {
        "policy": "round_robin",
        "preferred_backends": list(BACKENDS),
        "fallback_policy": "none",
    }
    job = build_job({"routing": routing, "session_options": {"error_linger": 0}})
    backends = {name: (LocalHandler, {"reply": model}) for name in BACKENDS}
    supervision = _SupervisionTrace()
    expected_restarts = 0
    ok = True
    with _listening() as listener, tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "sessions.db"
        with Runtime(store=store, backends=backends, handle_signals=False) as runtime:
            out.print(f"[bold]== runtime up[/]; history goes to {store.name} (SQLite, WAL)")
            out.print(format_tree(tree(runtime.root)) + "\n", markup=False)
            for text in MESSAGES:
                out.print(f"[bold]== message:[/] {text}")
                run = runtime.run_job(job, f"message: {text}")
                for event in run.events(timeout=60):
                    if event.kind is EventKind.NODE_RETRY and "TransportError" in str(
                        event.data.get("reason")
                    ):
                        # The visit failed because its agent died: show the crash and the
                        # supervisor's restart first (the retry runs on the restarted session).
                        expected_restarts += 1
                    for line in listener.drain(supervision, expected_restarts):
                        out.print(line, markup=False)
                    out.print(_event_line(event), markup=False)
                result = run.result(60, raise_error=False)
                ok = ok and result.status.value == "completed"
                path = " -> ".join(r.node_id for r in result.results_by_thread.get("0", []))
                body = result.output.body if result.output is not None else result.error
                out.print(f"   {result.status.value}: {path}: {body}\n", markup=False)

            decisions = runtime.routing_decisions()
            out.print(f"[bold]== {len(decisions)} routing decisions[/] (oldest first)")
            for decision in reversed(decisions):
                reasons = "; ".join(decision.get("reasons", []))
                out.print(
                    f"  {decision.get('policy')}: {decision.get('backend')}  ({reasons})",
                    markup=False,
                )

            sessions = runtime.list_sessions()
            out.print(f"\n[bold]== {len(sessions)} sessions recorded in {store.name}[/]")
            for record in sessions:
                history = runtime.get_session_messages(record.session_id)
                if any("crash rep" in (m.content or "") for m in history):
                    out.print(
                        f"  the session whose agent died ({record.backend}), read back from disk:",
                        markup=False,
                    )
                    for message in history:
                        content = short(message_text(message), 100)
                        out.print(f"    {message.type.value:<9} {content}", markup=False)

            out.print("\n[bold]== supervision tree after the runs[/] (sessions end with runs)")
            out.print(format_tree(tree(runtime.root)), markup=False)
    out.print("\n== all runs completed" if ok else "\n== some runs did not complete", markup=False)
    return 0 if ok else 1
