"""A snapshot of the cluster for ``beamagent top --cluster``: nodes, sessions, runs, decisions."""

from __future__ import annotations

import time
from typing import Any

from beamagent.cluster._ray import CONTROLLER_NAME, NAMESPACE, node_actor_name, require_ray
from beamagent.errors import ClusterUnavailable

__all__ = ["cluster_snapshot"]

SNAPSHOT_TIMEOUT = 10.0


def cluster_snapshot(decisions: int = 20) -> dict[str, Any]:
    """The cluster now (JSON-ready), read from the controller and every live node runtime.

    ``{"cluster": {...}, "nodes": [...], "sessions": [...], "runs": [...],
    "decisions": [...]}``: each session and run row names its ``node``; the
    decisions are the placement journal's newest entries. This process must be
    connected to the Ray cluster (``beamagent.cluster._ray.connect``).

    Raises:
        ClusterUnavailable: no controller runs on the cluster.
    """
    ray = require_ray()
    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        raise ClusterUnavailable("no beamagent controller runs on this Ray cluster") from None
    nodes, placed, runs, journal = ray.get(
        [
            controller.nodes.remote(),
            controller.sessions.remote(),
            controller.runs.remote(),
            controller.decisions.remote(decisions),
        ],
        timeout=SNAPSHOT_TIMEOUT,
    )
    pending = {}
    for node in nodes:
        if node["alive"]:
            try:
                actor = ray.get_actor(node_actor_name(node["node"]), namespace=NAMESPACE)
            except ValueError:
                continue
            pending[node["node"]] = actor.snapshot.remote()
    sessions: dict[str, dict[str, Any]] = {}
    run_rows: dict[str, dict[str, Any]] = {}
    for node_id, ref in pending.items():
        try:
            snap = ray.get(ref, timeout=SNAPSHOT_TIMEOUT)
        except ray.exceptions.RayError:
            continue
        for row in snap.get("sessions") or ():
            sessions[str(row.get("session_id"))] = {**row, "node": node_id}
        for row in snap.get("runs") or ():
            run_rows[str(row.get("run_id"))] = {**row, "node": node_id}
    for session_id, node_id in placed.items():  # placed, not (yet) live: moving
        sessions.setdefault(
            session_id, {"session_id": session_id, "node": node_id, "state": "moving"}
        )
    for run_id, node_id in runs.items():
        run_rows.setdefault(run_id, {"run_id": run_id, "node": node_id, "status": "moving"})
    return {
        "cluster": {"time": time.time(), "namespace": NAMESPACE},
        "nodes": nodes,
        "sessions": sorted(
            sessions.values(), key=lambda r: (str(r.get("node")), str(r["session_id"]))
        ),
        "runs": list(run_rows.values()),
        "decisions": journal,
    }
