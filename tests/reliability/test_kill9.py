"""kill -9: a runtime under write load is SIGKILLed at a random moment, again and again.

After each kill the SQLite file is reopened: ``PRAGMA integrity_check`` is ``ok``,
every message the child had acknowledged is there exactly once, and the durable
runs the kill interrupted resume and finish.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

from beamagent import MessageType, Runtime
from beamagent.graph.run import RunStatus
from tests.reliability._kill9_child import slow_job
from tests.reliability.conftest import scale
from tests.store.test_durability import kill_and_reap, read_acks

CHILD = Path(__file__).with_name("_kill9_child.py")
REPO = Path(__file__).resolve().parents[2]
ROUNDS = scale(20, 200)
FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.ENDED})  # LinearRouter ends with End


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "kill9.db"
    rng = random.Random(9)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    totals: Counter[str] = Counter()
    for round_no in range(ROUNDS):
        wanted = rng.randint(3, 80)  # acknowledgements before the kill: early and late
        with (tmp_path / f"child-{round_no}.stderr").open("w") as stderr:
            child = subprocess.Popen(
                [sys.executable, str(CHILD), str(path), str(round_no)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
            acks = []
            try:
                acks = read_acks(child, wanted, timeout=60)
            finally:
                acks += kill_and_reap(child)
        assert child.returncode == -9
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = [a["run"] for a in acks if "run" in a]
        queries = [a for a in acks if "session" in a]
        with Runtime(store=path) as rt:
            for ack in queries:
                stored = rt.get_session_messages(ack["session"])
                uuids = Counter(m.uuid for m in stored)
                prompts = Counter(m.content for m in stored if m.type is MessageType.USER)
                assert prompts[ack["prompt"]] == 1, ack
                assert all(uuids[u] == 1 for u in ack["uuids"]), ack
            for run_id in runs:
                status = rt._store.load_run(run_id)["status"]
                if status in ("running", "interrupted"):
                    result = rt.resume_run(run_id, slow_job()).result(60)
                    assert result.status in FINISHED
                    totals["runs_resumed"] += 1
                else:
                    assert status in {s.value for s in FINISHED}, (run_id, status)
                    totals["runs_finished_before_kill"] += 1
        totals["rounds"] += 1
        totals["messages_checked"] += sum(len(a["uuids"]) for a in queries)
        totals["queries_checked"] += len(queries)
    print(f"\nkill -9: {dict(totals)}; integrity_check ok every round; lost=0")
    assert totals["rounds"] == ROUNDS
