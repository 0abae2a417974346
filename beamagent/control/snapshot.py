"""What ``beamagent top`` shows: a JSON-ready picture of a live runtime.

Taken from outside the actors, without asking them anything but the
supervisors' ``which_children`` (bounded by a timeout): a session's state,
backend, model and incarnation are read from its process object, a run's
current nodes from its event log (whose lock is held only to copy a list).
A value read while it changes is at worst one refresh stale.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from supervisors import lookup, tree, whereis

if TYPE_CHECKING:
    from beamagent.runtime import Runtime

__all__ = ["PROTOCOL_VERSION", "take_snapshot"]

PROTOCOL_VERSION = 1
"""The control protocol's version, in every reply (``"version"``)."""

TREE_TIMEOUT = 1.0
"""How long each supervisor has to list its children; a late one is shown without them."""


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node["children"]:
        yield from _walk(child)


def _session_row(runtime: Runtime, session_id: str, restarts: dict[str, int]) -> dict[str, Any]:
    ref = whereis(runtime._session_name(session_id))
    process: Any = lookup(ref) if ref is not None else None
    row: dict[str, Any] = {
        "session_id": session_id,
        "backend": None,
        "state": "restarting" if process is None else None,
        "model": None,
        "incarnation": None,
        "restarts": restarts.get(ref.actor_urn, 0) if ref is not None else 0,
        "mailbox": 0,
        "urn": ref.actor_urn if ref is not None else None,
    }
    if process is None:
        return row
    try:  # plain attribute reads of another thread's actor: never a message, never a lock
        config = process.config
        handler = process.handler
        row["backend"] = config.backend
        row["state"] = process.state.value
        row["incarnation"] = config.lineage.incarnations
        row["model"] = handler.model if handler is not None else config.lineage.model
        row["mailbox"] = process.mailbox.qsize()
    except AttributeError:  # still starting: not every attribute is set yet
        pass
    return row


def _run_rows(runtime: Runtime) -> list[dict[str, Any]]:
    graph = runtime._graph()
    with graph.lock:
        runs = list(graph.runs.values())
    rows = []
    for run in runs:
        if run.done():
            continue
        events, current = run._log.progress()
        ref = whereis(runtime._run_name(run.run_id))
        process: Any = lookup(ref) if ref is not None else None
        rows.append(
            {
                "run_id": run.run_id,
                "job_id": run.job_id,
                "status": run.status().value,
                "events": events,
                "current": [{"node": node, "thread": thread} for node, thread in current],
                "mailbox": process.mailbox.qsize() if process is not None else 0,
            }
        )
    return rows


def take_snapshot(runtime: Runtime) -> dict[str, Any]:
    """The runtime now: its supervision tree, live sessions and live runs (JSON-ready).

    ``{"runtime": {...}, "tree": supervisors.tree(...), "sessions": [...], "runs": [...]}``;
    see ``docs/cli.md`` for every field.
    """
    root = tree(runtime.root, timeout=TREE_TIMEOUT)
    restarts = {node["urn"]: node["restarts"] for node in _walk(root) if node["urn"]}
    return {
        "runtime": {
            "id": runtime.id,
            "pid": os.getpid(),
            "time": time.time(),
            "routable_backends": runtime.routable_backends(),
        },
        "tree": root,
        "sessions": [
            _session_row(runtime, session_id, restarts)
            for session_id in sorted(runtime.live_sessions())
        ],
        "runs": _run_rows(runtime),
    }
