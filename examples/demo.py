"""`make demo`: a supervised, routed graph workflow over the embedded ``local`` backend.

What it shows, in one readable trace:

* a graph job (``examples/lm_router.py``): a model classifies each support
  message and routes it to a team; every node runs its prompt on a session;
* routing: each node's session is placed by policy (round robin over two
  ``local`` backend instances), and the decisions are printed;
* supervision: the agent behind one session dies mid-answer; its supervisor
  restarts the session, the node's visit is retried, and the run completes;
* durability: every message lands in a real SQLite file (WAL) before anyone
  sees it; the demo reads the history back from the file.

Run: ``make demo`` (or ``.venv/bin/python examples/demo.py``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm_router

from beamagent import LocalExit, Runtime, configure_logging
from beamagent.backends.local import LocalHandler
from supervisors import format_tree, tree

BACKENDS = ("local_a", "local_b")
_crashed = False


def flaky_model(prompt: str, params: Mapping[str, Any]) -> Any:
    """The example's scripted model, except that its agent process dies once."""
    global _crashed
    if "tech team" in prompt and not _crashed:
        _crashed = True
        return ["Let me look at the crash rep", LocalExit(137)]
    return lm_router.fake_model(prompt, params)


def main() -> int:
    """Run the demo; returns 0 when every run completed."""
    global _crashed
    _crashed = False
    lm_router._broke_once = False
    configure_logging("critical")
    routing = {
        "policy": "round_robin",
        "preferred_backends": list(BACKENDS),
        "fallback_policy": "none",
    }
    job = lm_router.build_job({"routing": routing, "session_options": {"error_linger": 0}})
    backends = {name: (LocalHandler, {"reply": flaky_model}) for name in BACKENDS}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "sessions.db"
        with Runtime(store=store, backends=backends) as runtime:
            print(f"== runtime up; history goes to {store.name} (SQLite, WAL)")
            print(format_tree(tree(runtime.root)) + "\n")
            for text in lm_router.MESSAGES:
                print(f"== message: {text}")
                run = runtime.run_job(job, f"message: {text}")
                for event in run.events(timeout=60):
                    print(f"  {event}")
                result = run.result(60, raise_error=False)
                ok = ok and result.status.value == "completed"
                path = " -> ".join(r.node_id for r in result.results_by_thread.get("0", []))
                body = result.output.body if result.output is not None else result.error
                print(f"   {result.status.value}: {path}: {body}\n")

            print("== routing decisions (newest first)")
            for decision in runtime.routing_decisions(limit=6):
                reasons = "; ".join(decision.get("reasons", []))
                print(f"  {decision.get('policy')}: {decision.get('backend')}  ({reasons})")

            sessions = runtime.list_sessions()
            print(f"\n== {len(sessions)} sessions recorded in {store.name}")
            for record in sessions:
                history = runtime.get_session_messages(record.session_id)
                if any("crash rep" in (m.content or "") for m in history):
                    print(
                        f"  the session whose agent died ({record.backend}), read back from disk:"
                    )
                    for message in history:
                        content = (message.content or "").replace("\n", " ")[:60]
                        print(f"    {message.type.value:<9} {content}")

            print("\n== supervision tree after the runs (sessions end with their runs)")
            print(format_tree(tree(runtime.root)))
    print("\n== all runs completed" if ok else "\n== some runs did not complete")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
