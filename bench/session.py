"""Session overhead on the local backend, against raw Pykka, measured in one run.

Prints:
  * a blocking ``query`` on ``local`` vs one raw Pykka ask round trip, with the in-memory
    store (goal ratio <= 3.0) and with the default SQLite store (WAL; no goal against a
    raw ask: issue 12 sets the SQLite goal against raw sqlite3, next). Called from a
    thread other than the main one, as a service's request threads call it: the idle
    session's handler runs on the calling thread (caller-runs, docs/supervisors.md). The
    same from the main thread (``..._main_thread``), which keeps the hand-off to a worker
    (a signal's exception must reach the caller there), is printed too;
  * the query with a SQLite file store vs the same query's transaction in raw ``sqlite3``
    (same schema and pragmas, BEGIN IMMEDIATE, the rows one query records, COMMIT;
    goal ratio <= 2.0), from a thread and from the main thread;
  * where the main thread's in-memory figure goes: each stage of the query alone on this
    thread (the local agent's reply, the store commit), the same work right after a
    thread switch, and what no stage accounts for;
  * ``stream`` first-message latency;
  * 10,000 live idle ``local`` sessions: start rate and RSS per session (goal <= 40 KiB).

``python bench/session.py [N]``: N idle sessions (default 10,000). Run pinned: run_all.py
runs it under ``taskset -c 0`` (every figure is one caller's latency across threads; on a
VM a wake-up on an idle CPU costs tens of microseconds and varies run to run).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pykka

sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's beamagent, not whichever one is installed (a worktree, a clone).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, on_thread, paired, per_op, report, rss_bytes

from beamagent import Runtime, configure_logging
from beamagent.backends.local import LocalAgent, LocalHandler
from beamagent.messages import Message, MessageType
from beamagent.store import MemoryStore
from beamagent.store.sqlite import MIGRATIONS

configure_logging("critical")

QUERIES = 500


class RawEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def bench_query(store: Any, label: str) -> tuple[float, float]:
    """Print the query figures; return the main thread's (raw ask, query) seconds."""
    raw = RawEcho.start()
    with Runtime(store=store) as rt:
        session = rt.start_session(backend="local")
        goal = (
            "goal ratio <= 3.0"
            if label == "memory_store"
            else "no goal (the SQLite goal is vs raw sqlite3)"
        )
        raw_t, query_t = on_thread(
            lambda: paired(lambda: raw.ask(1), lambda: session.query("hi"), QUERIES)
        )
        report(
            f"query_local_{label}",
            query_t * 1e6,
            raw_t * 1e6,
            "us",
            f"baseline: raw Pykka ask; both from a thread (caller-runs); {goal}",
        )
        raw_t, query_t = paired(lambda: raw.ask(1), lambda: session.query("hi"), QUERIES)
        report(
            f"query_local_{label}_main_thread",
            query_t * 1e6,
            raw_t * 1e6,
            "us",
            "baseline: raw Pykka ask; both from the main thread (hand-off to a worker)",
        )

        def first_message() -> None:
            stream = session.stream("hi")
            next(stream)
            for _ in stream:
                pass

        first = per_op(lambda: next(iter(_first(session))), 300)
        figure(f"stream_first_message_{label}", first * 1e6, "us")
    raw.stop()
    return raw_t, query_t


class RawSqliteQuery:
    """The baseline for a query on a SQLite store: the same transaction in raw ``sqlite3``.

    Our schema, the pragmas ``beamagent/store/sqlite.py`` sets (WAL, synchronous=NORMAL,
    foreign_keys=ON); per call BEGIN IMMEDIATE, INSERT the rows one local query records
    (the prompt, system, assistant, result: the same bodies, JSON-encoded, under the same
    session id and message ids), UPDATE the session row, COMMIT.
    """

    def __init__(self, path: Path, messages: list[dict[str, Any]], session_id: str = "raw") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        for statement in MIGRATIONS[0]:
            self.conn.execute(statement)
        now = time.time()
        self.conn.execute(
            "INSERT INTO sessions (session_id, backend, created_at, updated_at) "
            "VALUES (?, 'local', ?, ?)",
            (session_id, now, now),
        )
        self.session_id = session_id
        self.messages = messages
        self.seq = itertools.count(1)

    def transaction(self) -> None:
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        sid = self.session_id
        self.conn.executemany(
            "INSERT INTO messages (session_id, seq, type, uuid, message_id, thread_id, "
            "created_at, rolled_back, body) VALUES (?, ?, ?, ?, ?, NULL, ?, 0, ?)",
            [
                (
                    sid,
                    next(self.seq),
                    m["type"],
                    m.get("uuid"),
                    m.get("message_id"),
                    now,
                    json.dumps(m),
                )
                for m in self.messages
            ],
        )
        self.conn.execute(
            "UPDATE sessions SET message_count = message_count + ?, updated_at = ? "
            "WHERE session_id = ?",
            (len(self.messages), now, sid),
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def bench_query_vs_raw_sqlite(tmp: Path) -> None:
    """P1 on SQLite: a query with a SQLite file store vs its transaction in raw sqlite3."""
    with Runtime(store=tmp / "ours.db") as rt:
        session = rt.start_session(backend="local")
        session.query("hi")
        recorded = rt._store.get_session_messages(session.session_id)
        stored = [dict(m) for m in recorded[-4:]]  # what one query records
        assert [m["type"] for m in stored] == ["user", "system", "assistant", "result"]
        # The same rows: the session's own id (40 characters, in every index entry of the
        # messages table) and message ids, not a shorter stand-in.
        raw = RawSqliteQuery(tmp / "raw.db", stored, session.session_id)
        try:
            raw_t, query_t = on_thread(
                lambda: paired(raw.transaction, lambda: session.query("hi"), QUERIES)
            )
            main_raw_t, main_query_t = paired(raw.transaction, lambda: session.query("hi"), QUERIES)
        finally:
            raw.close()
    baseline = f"baseline: raw sqlite3 WAL transaction of the {len(stored)} rows a query records"
    report(
        "query_local_sqlite_store_vs_raw_sqlite3",
        query_t * 1e6,
        raw_t * 1e6,
        "us",
        f"{baseline}; both from a thread (caller-runs); goal ratio <= 2.0",
    )
    report(
        "query_local_sqlite_store_vs_raw_sqlite3_main_thread",
        main_query_t * 1e6,
        main_raw_t * 1e6,
        "us",
        f"{baseline}; both from the main thread (hand-off to a worker)",
    )


def bench_query_breakdown(raw_t: float, query_t: float) -> None:
    """Split ``query_local_memory_store_main_thread`` into its stages, each run alone.

    A query crosses two threads and back (caller -> session -> caller), one raw ask
    round trip; the session thread encodes the query command, runs the local agent
    (which hands its answer over as ``Message`` objects: the default ``messages``
    codec), and records the prompt and the answer in the store (a ``MemoryStore``
    keeps the library's JSON-native messages as they are). Stages measured back to back
    stay in the CPU's caches; in the real query each runs right after a thread switch,
    so the same work is also timed after a raw ask (``work_after_switch``).
    ``unattributed`` is what is left: the session's own bookkeeping (query state,
    building the user prompt, Pykka dispatch) and the cold-cache cost of the switch.
    """
    agent = LocalAgent(
        native_session_id=f"local-{'0' * 32}",
        model="local-echo",
        cwd=None,
        permission_mode=None,
        session_id="session_bench",
    )
    answers: list[Message] = []
    agent.attach(lambda _data: None, lambda _status: None)
    agent.attach_messages(answers.extend)
    handler = LocalHandler({"session_id": "session_bench"})
    store = MemoryStore()
    store.create_session("session_bench", "local")

    def agent_reply() -> list[Message]:
        agent.receive(b"".join(handler.encode_query("hi", {}).writes))
        answer = list(answers)
        answers.clear()
        return answer

    user = Message(MessageType.USER, content="hi", session_id="session_bench", uuid="u")
    answer = [user, *agent_reply()]

    def work() -> None:  # every stage, in the order a query runs them
        store.record_messages("session_bench", [user, *agent_reply()])

    stages = {
        "agent_reply": per_op(agent_reply, 2000),
        "store_commit": per_op(lambda: store.record_messages("session_bench", answer), 2000),
    }
    raw = RawEcho.start()
    ask_t, after_switch = paired(lambda: raw.ask(1), lambda: (raw.ask(1), work()), 1000)
    raw.stop()
    hot = per_op(work, 2000)
    for name, seconds in stages.items():
        figure(f"query_breakdown_{name}", seconds * 1e6, "us")
    figure("query_breakdown_round_trip", raw_t * 1e6, "us", "the raw ask above")
    figure("query_breakdown_work_hot", hot * 1e6, "us", "all stages back to back")
    figure("query_breakdown_work_after_switch", (after_switch - ask_t) * 1e6, "us")
    rest = query_t - raw_t - (after_switch - ask_t)
    figure("query_breakdown_unattributed", rest * 1e6, "us", "query - round trip - work")


def _first(session: Any) -> Any:
    stream = session.stream("hi")
    message = next(stream)
    for _ in stream:  # drain so the session is ready for the next round
        pass
    yield message


def bench_many_sessions(n: int = 10_000) -> None:
    with Runtime(store=":memory:") as rt:
        before = rt_rss = rss_bytes()
        start = time.perf_counter()
        for _ in range(n):
            rt.start_session(backend="local")
        elapsed = time.perf_counter() - start
        rt_rss = rss_bytes()
        figure("session_start_rate", n / elapsed, "sessions/s")
        figure("rss_per_idle_session", (rt_rss - before) / n / 1024, "KiB", "goal <= 40 KiB")
        start = time.perf_counter()
    figure(f"runtime_stop_with_{n}_sessions", time.perf_counter() - start, "s")


if __name__ == "__main__":
    bench_query_breakdown(*bench_query(":memory:", "memory_store"))
    with tempfile.TemporaryDirectory() as tmp:
        bench_query(Path(tmp) / "bench.db", "sqlite_store")
        bench_query_vs_raw_sqlite(Path(tmp))
    bench_many_sessions(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
