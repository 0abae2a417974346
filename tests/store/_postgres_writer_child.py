"""Child process of ``test_postgres``: one Runtime writing many sessions into PostgreSQL.

Usage: ``python _postgres_writer_child.py URL PROCESS SESSIONS QUERIES THREADS``

Starts ``SESSIONS`` local sessions (ids ``p<PROCESS>-s<n>``) on a ``Runtime`` whose store
is the PostgreSQL ``URL`` and runs ``QUERIES`` queries on each (prompts ``p-s-q``),
spread over ``THREADS`` threads, then prints one JSON line: ``{"queries": n}``.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from beamagent import Runtime


def main(url: str, process: int, sessions: int, queries: int, threads: int) -> None:
    """Run every query; exits non-zero on any error."""
    with Runtime(store=url, handle_signals=False) as rt:
        handles = [
            rt.start_session(backend="local", session_id=f"p{process}-s{n}")
            for n in range(sessions)
        ]

        def run(indexes: range) -> int:
            done = 0
            for q in range(queries):
                for n in indexes:
                    handles[n].query(f"{process}-{n}-{q}", timeout=60)
                    done += 1
            return done

        step = -(-sessions // threads)
        with ThreadPoolExecutor(threads) as pool:
            parts = [
                pool.submit(run, range(i, min(i + step, sessions)))
                for i in range(0, sessions, step)
            ]
            total = sum(part.result() for part in parts)
        for handle in handles:
            handle.stop()
    sys.stdout.write(json.dumps({"queries": total}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:6]))
