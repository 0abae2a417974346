"""A supervised graph workflow: support-ticket triage.

    intake ──┬── security ──┐
             ├── billing ───┼── (yield) ── triage ──┬── escalate   severity >= 7
             └── technical ─┘                       └── respond    otherwise

``intake`` fans out to three checks that run in parallel on node actors; each
yields to ``triage``, which runs once with all three results and picks the
next node with conditional edges. ``billing`` fails once with a
``ConnectionError``, which its node lists in ``retry_on``, so its visit is
retried (any other exception would end the run), and ``technical`` crashes its
node actor once (the actor's supervisor restarts it and the visit runs again).
The trace shows every event and the supervision tree, while the run is in
flight and after it.

Run: .venv/bin/python examples/triage_graph.py
"""

from __future__ import annotations

import threading

import supervisors
from beamagent.graph import (
    Condition,
    Edge,
    EdgeRouter,
    EventKind,
    Job,
    Node,
    NodeMessage,
    Output,
    Result,
    Route,
    RunEvent,
    Yield,
)
from beamagent.log import configure_logging
from beamagent.runtime import Runtime

TICKET = "Customer reports being charged twice and then locked out after a password reset."

_failed_once: set[str] = set()
_lock = threading.Lock()
tree_shown = threading.Event()


class NodeCrash(BaseException):
    """Not an ``Exception``: it takes the node actor down instead of failing the visit."""


def first_time(key: str) -> bool:
    with _lock:
        if key in _failed_once:
            return False
        _failed_once.add(key)
        return True


def intake(message: NodeMessage) -> Result:
    return Result(
        f"ticket: {message.input}",
        next=[Route("security"), Route("billing"), Route("technical")],
    )


def security(message: NodeMessage) -> Result:
    locked = "locked out" in str(message.input)
    return Result(
        "account lock after reset: possible takeover" if locked else "nothing suspicious",
        outputs={"score": 8 if locked else 1},
        next=[Yield("triage")],
    )


def billing(message: NodeMessage) -> Result:
    if first_time("billing"):
        raise ConnectionError("billing API timed out")  # in the node's retry_on: retried
    return Result("duplicate charge found", outputs={"score": 5}, next=[Yield("triage")])


def technical(message: NodeMessage) -> Result:
    if first_time("technical"):
        raise NodeCrash()  # the node actor dies; its supervisor restarts it
    tree_shown.wait(5)  # hold the run in flight while the demo prints the tree
    return Result("password reset flow works", outputs={"score": 2}, next=[Yield("triage")])


def triage(message: NodeMessage) -> Result:
    scores = [int(r.outputs.get("score", 0)) for r in message.joined]
    findings = "; ".join(r.body for r in message.joined)
    return Result(f"{len(scores)} checks: {findings}", outputs={"severity": max(scores)})


def escalate(message: NodeMessage) -> str:
    return f"ESCALATED to on-call ({message.previous_result.body})"  # type: ignore[union-attr]


def respond(message: NodeMessage) -> str:
    return f"auto-reply sent ({message.previous_result.body})"  # type: ignore[union-attr]


def build_job() -> Job:
    """The triage graph."""
    severity = EdgeRouter(
        [
            Edge("route", "escalate", conditions=[Condition("severity", "gte", 7)]),
            Edge("fallback", "respond"),
        ],
        outputs=[Output("severity", "int", min=0, max=10)],
    )
    return Job(
        "ticket-triage",
        [
            Node("intake", serving=intake),
            Node("security", serving=security),
            Node("billing", serving=billing, retry_on=(ConnectionError,)),
            Node("technical", serving=technical),
            Node("triage", serving=triage, router=severity),
            Node("escalate", serving=escalate),
            Node("respond", serving=respond),
        ],
        start="intake",
        description="Check a ticket three ways in parallel, then escalate or answer it.",
    )


def show(event: RunEvent) -> None:
    print(f"  {event}")


def main() -> int:
    """Run the triage graph on one ticket, printing its trace and supervision tree."""
    configure_logging("critical")
    _failed_once.clear()
    tree_shown.clear()
    with Runtime(store=":memory:") as runtime:
        print(f"== ticket: {TICKET}\n== trace")
        run = runtime.run_job(build_job(), TICKET)
        for event in run.events(timeout=30):
            show(event)
            restarted = event.kind is EventKind.NODE_STARTED and event.data.get("retries")
            if restarted and event.node_id == "technical":
                print("== supervision tree, run in flight")
                print(supervisors.format_tree(supervisors.tree(runtime.root)))
                tree_shown.set()
        result = run.result(30)
        print(f"== {result.status.value} after {result.steps} steps")
        assert result.output is not None
        print(f"   {result.output.body}")
        for thread, results in sorted(result.results_by_thread.items()):
            print(f"   thread {thread}: {' -> '.join(r.node_id for r in results)}")
        print("== supervision tree, after the run")
        print(supervisors.format_tree(supervisors.tree(runtime.root)))
    tree_shown.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
