"""The session store under the runtime, against raw ``sqlite3``, measured in one run.

Prints:
  * record_message through ``rt.store_write`` (one committed transaction per message, as a
    session records) vs a raw sqlite3 loop doing the same per message: BEGIN IMMEDIATE,
    INSERT the JSON message, UPDATE the session row, COMMIT; same schema, WAL,
    synchronous=NORMAL (goal ratio <= 1.5). Appends run on the caller's thread under the
    store's write lock, as a session's own recording does (they used to hop through the
    store actor). The store called directly and the bare store actor round trip (what
    the other writes still pay) are printed too, to show where the difference goes;
  * the same with 3 messages per transaction (what a session records per delivery of
    a local query: system + assistant + result);
  * the most group commit could save: raw sqlite3, 4 sessions' messages in one transaction
    vs one transaction each (why the store actor does not group-commit);
  * get_session_messages(limit=50, offset=99_000) on a 100,000-message session, vs the
    naive ``LIMIT 50 OFFSET 99000`` scan, with the query plan (an index range read).

Run: ``.venv/bin/python bench/store.py``. Run pinned: run_all.py runs it under
``taskset -c 0`` (one caller's latency through the store actor's thread).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pykka.messages import ProxyGetAttr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import figure, paired, per_op, report

from beamagent import Runtime, configure_logging
from beamagent.store.sqlite import MIGRATIONS, messages_query

# Measure the store, not log rendering.
configure_logging("error")

MESSAGE: dict[str, Any] = {
    "type": "assistant",
    "content": "The quick brown fox jumps over the lazy dog. " * 4,
    "uuid": "5b0ad091-9772-4944-b742-fc3df178ec32",
    "session_id": "bench",
    "model": "local-echo",
}


class RawStore:
    """The baseline: our schema in a plain sqlite3 connection, WAL, synchronous=NORMAL."""

    def __init__(self, path: Path, sessions: int = 1) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        for statement in MIGRATIONS[0]:
            self.conn.execute(statement)
        self.seqs = {f"s{i}": itertools.count(1) for i in range(sessions)}
        for sid in self.seqs:
            self.conn.execute(
                "INSERT INTO sessions (session_id, backend, created_at, updated_at) "
                "VALUES (?, 'local', ?, ?)",
                (sid, time.time(), time.time()),
            )

    def _append(self, sid: str, messages: list[dict[str, Any]]) -> None:
        now = time.time()
        seqs = self.seqs[sid]
        self.conn.executemany(
            "INSERT INTO messages (session_id, seq, type, uuid, message_id, thread_id, "
            "created_at, rolled_back, body) VALUES (?, ?, ?, ?, NULL, NULL, ?, 0, ?)",
            [(sid, next(seqs), m["type"], m.get("uuid"), now, json.dumps(m)) for m in messages],
        )
        self.conn.execute(
            "UPDATE sessions SET message_count = message_count + ?, updated_at = ? "
            "WHERE session_id = ?",
            (len(messages), now, sid),
        )

    def record(self, batches: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """One transaction holding every batch."""
        self.conn.execute("BEGIN IMMEDIATE")
        for sid, messages in batches:
            self._append(sid, messages)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def bench_record(tmp: Path) -> None:
    raw = RawStore(tmp / "raw.db")
    with Runtime(store=tmp / "ours.db") as rt:
        rt.store_write("create_session", "bench", "local")
        one, three = [MESSAGE], [MESSAGE] * 3

        def raw_one() -> None:
            raw.record([("s0", one)])

        def ours_one() -> None:
            rt.store_write("record_message", "bench", MESSAGE)

        base, ours = paired(raw_one, ours_one, 2_000)
        report("record_message", ours * 1e6, base * 1e6, "us/msg", "goal ratio <= 1.5")

        def store_only() -> None:
            rt._store.record_message("bench", MESSAGE)

        base, direct = paired(raw_one, store_only, 2_000)
        report(
            "record_message_store_only",
            direct * 1e6,
            base * 1e6,
            "us/msg",
            "the store's own cost, called directly: ours minus this is store_write's own",
        )

        actor = rt.store_actor
        get = ProxyGetAttr(attr_path=("store",))  # answered at once: the hop alone
        figure("store_actor_round_trip", per_op(lambda: actor.ask(get), 2_000) * 1e6, "us")

        def raw_three() -> None:
            raw.record([("s0", three)])

        def ours_three() -> None:
            rt.store_write("record_messages", "bench", three)

        base, ours = paired(raw_three, ours_three, 1_000)
        report(
            "record_messages_batch_of_3",
            ours / 3 * 1e6,
            base / 3 * 1e6,
            "us/msg",
            "same batching both sides",
        )
    raw.close()


def bench_group_commit_bound(tmp: Path) -> None:
    raw = RawStore(tmp / "group.db", sessions=4)
    sids = list(raw.seqs)

    def one_transaction_each() -> None:
        for sid in sids:
            raw.record([(sid, [MESSAGE])])

    def grouped() -> None:
        raw.record([(sid, [MESSAGE]) for sid in sids])

    each, group = paired(one_transaction_each, grouped, 500)
    report(
        "group_commit_upper_bound_4_sessions",
        group / 4 * 1e6,
        each / 4 * 1e6,
        "us/msg",
        "raw sqlite3: one shared transaction vs one each; the most grouping could save",
    )
    raw.close()


def bench_deep_page(tmp: Path) -> None:
    total = 100_000
    path = tmp / "deep.db"
    with Runtime(store=path) as rt:
        rt.store_write("create_session", "deep", "local")
        messages = [
            {**MESSAGE, "type": "assistant" if i % 2 else "user", "uuid": f"u{i}"}
            for i in range(total)
        ]
        for start in range(0, total, 10_000):
            rt.store_write("record_messages", "deep", messages[start : start + 10_000])
        page = rt.get_session_messages("deep", limit=50, offset=99_000)
        assert [m.uuid for m in page] == [f"u{i}" for i in range(99_000, 99_050)]

        naive = sqlite3.connect(path)

        def naive_scan() -> None:
            naive.execute(
                "SELECT body FROM messages WHERE session_id = ? ORDER BY seq LIMIT 50 OFFSET 99000",
                ("deep",),
            ).fetchall()

        def ours() -> None:
            rt.get_session_messages("deep", limit=50, offset=99_000)

        base, mine = paired(naive_scan, ours, 50)
        report(
            "get_session_messages_deep_page",
            mine * 1e6,
            base * 1e6,
            "us/call",
            "baseline: naive LIMIT/OFFSET scan; ours is an index range read",
        )
        dicts = per_op(lambda: rt._store.get_session_messages("deep", limit=50, offset=99_000), 50)
        figure(
            "get_session_messages_deep_page_store_dicts",
            dicts * 1e6,
            "us/call",
            "the same page as stored dicts: the rest is building 50 Message objects",
        )
        mine_typed = per_op(lambda: typed_page(rt), 20)
        figure(
            "get_session_messages_deep_page_types=user",
            mine_typed * 1e6,
            "us/call",
            "offset 49,000 among 50,000 user messages, on the (session_id, type, seq) index",
        )
        sql, params = messages_query("deep", total, None, 99_000, 50)
        plan = " | ".join(row[3] for row in naive.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        print(f"get_session_messages_plan: {plan}")
        sql, params = messages_query("deep", total, frozenset({"user"}), 49_000, 50)
        plan = " | ".join(row[3] for row in naive.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        print(f"get_session_messages_plan_types: {plan}")
        naive.close()


def typed_page(rt: Runtime) -> None:
    """A deep page of one message type."""
    rt.get_session_messages("deep", types="user", limit=50, offset=49_000)


def main() -> None:
    """Run every figure."""
    benches: list[Callable[[Path], None]] = [
        bench_record,
        bench_group_commit_bound,
        bench_deep_page,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for bench in benches:
            bench(Path(tmp))


if __name__ == "__main__":
    main()
