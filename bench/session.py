"""Session overhead on the local backend, against raw Pykka, measured in one run.

Prints:
  * a blocking ``query`` on ``local`` vs one raw Pykka ask round trip (goal ratio <= 3.0),
    with the in-memory store and with the default SQLite store (WAL);
  * ``stream`` first-message latency;
  * 10,000 live idle ``local`` sessions: start rate and RSS per session (goal <= 40 KiB).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pykka
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import figure, paired, per_op, report, rss_bytes

from beamagent import Runtime

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


class RawEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def bench_query(store: Any, label: str) -> None:
    raw = RawEcho.start()
    with Runtime(store=store) as rt:
        session = rt.start_session(backend="local")
        raw_t, query_t = paired(lambda: raw.ask(1), lambda: session.query("hi"), 500)
        report(
            f"query_local_{label}",
            query_t * 1e6,
            raw_t * 1e6,
            "us",
            "baseline: raw Pykka ask; goal ratio <= 3.0",
        )

        def first_message() -> None:
            stream = session.stream("hi")
            next(stream)
            for _ in stream:
                pass

        first = per_op(lambda: next(iter(_first(session))), 300)
        figure(f"stream_first_message_{label}", first * 1e6, "us")
    raw.stop()


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
    bench_query(":memory:", "memory_store")
    with tempfile.TemporaryDirectory() as tmp:
        bench_query(Path(tmp) / "bench.db", "sqlite_store")
    bench_many_sessions(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
