"""An LM-driven router: a model classifies each message and decides where it goes.

    classify ──┬── refunds     intent == refund
               ├── tech        intent == tech
               └── smalltalk   fallback
    (the model may also write its own ``next``: here, angry customers go to a human)

Every node is a :class:`~beamagent.graph.SessionServing`: it renders its prompt,
asks for the JSON schema of its router's outputs, runs the prompt on a session
(the scriptable ``local`` backend stands in for a real model here; pass
``routing=`` or another ``backend`` to use one), and parses the structured
answer. The fake model answers the first message with broken JSON, so the trace
also shows a retry whose prompt tells the model what was wrong.

Run: .venv/bin/python examples/lm_router.py
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from beamagent.graph import (
    Edge,
    EdgeRouter,
    Job,
    Node,
    Output,
    SessionServing,
)
from beamagent.log import configure_logging
from beamagent.runtime import Runtime

MESSAGES = [
    "I was charged for a plan I cancelled, I want my money back",
    "The app crashes when I upload a photo",
    "THIS IS THE THIRD TIME I WRITE. NOBODY ANSWERS. I am furious",
    "hi! how's your day?",
]

_broke_once = False


def fake_model(prompt: str, params: Mapping[str, Any]) -> str:
    """A deterministic stand-in for an LM: reads the prompt, answers in the requested JSON."""
    global _broke_once
    text = prompt.lower()
    if "classify" in text:
        if not _broke_once:
            _broke_once = True
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
        answer: dict[str, Any] = {
            "body": f"intent looks like {intent}",
            "outputs": {"intent": intent},
            "next": [],
            "tool_calls": [],
        }
        if "furious" in said:
            # The model overrides the static routing: angry customers go to a human.
            answer["next"] = [{"type": "route", "value": "human"}]
            answer["body"] = "customer is angry: a human should answer"
        return json.dumps(answer)
    team = re.search(r"you are the (\w+) team", text)
    return json.dumps(
        {
            "body": f"[{team.group(1) if team else 'someone'}] reply drafted",
            "outputs": {},
            "next": [],
            "tool_calls": [],
        }
    )


LOCAL_MODEL: dict[str, Any] = {"backend": "local", "session_options": {"reply": fake_model}}
"""Where the servings run by default: the local backend, scripted by ``fake_model``."""


def team(name: str, serving_options: Mapping[str, Any]) -> SessionServing:
    return SessionServing(
        f"You are the {name} team. Draft a reply to: {{input}}", **serving_options
    )


def build_job(serving_options: Mapping[str, Any] | None = None) -> Job:
    """The routing graph; the router's outputs become the classify prompt's JSON schema.

    ``serving_options`` go to every ``SessionServing`` (default: ``LOCAL_MODEL``),
    e.g. ``{"routing": {...}}`` to choose each node's backend by policy.
    """
    options = dict(LOCAL_MODEL if serving_options is None else serving_options)
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
    return Job(
        "lm-router",
        [
            Node("classify", serving=classify, router=router),
            Node("refunds", serving=team("refunds", options)),
            Node("tech", serving=team("tech", options)),
            Node("smalltalk", serving=team("smalltalk", options)),
            Node("human", serving=team("human", options)),
        ],
        start="classify",
    )


def main() -> int:
    """Route each message through the graph, printing the trace of each run."""
    global _broke_once
    _broke_once = False
    configure_logging("critical")
    job = build_job()
    with Runtime(store=":memory:") as runtime:
        for text in MESSAGES:
            print(f"== message: {text}")
            run = runtime.run_job(job, f"message: {text}")
            for event in run.events(timeout=30):
                print(f"  {event}")
            result = run.result(30)
            path = " -> ".join(r.node_id for r in result.results_by_thread["0"])
            assert result.output is not None
            print(f"   {path}: {result.output.body}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
