"""The PostgreSQL session store against the SQLite one, measured in one run.

Prints:
  * record_message through ``rt.store_write`` (one committed transaction per message, as
    ``bench/store.py`` measures it) on a ``PostgresStore`` vs on a ``SqliteStore``;
  * the same with the store called directly.

The PostgreSQL server is the tests' throwaway one (``beamagent.testing.postgres``: a Unix
socket, ``fsync=off``), so the figure is the store's and the protocol's cost, not a disk's.
Needs the ``postgres`` extra and the server binaries (``make postgres``).

Run: ``.venv/bin/python bench/store_postgres.py [N]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import paired, report
from store import MESSAGE

from beamagent import Runtime, configure_logging
from beamagent.testing.postgres import PostgresServer

configure_logging("error")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000
    with tempfile.TemporaryDirectory() as tmp, PostgresServer.start(tmp) as server:
        url = server.create_database("bench")
        with (
            Runtime(store=Path(tmp) / "sqlite.db", handle_signals=False) as lite,
            Runtime(store=url, handle_signals=False) as pg,
        ):
            for rt in (lite, pg):
                rt.store_write("create_session", "bench", "local")

            def sqlite_actor() -> None:
                lite.store_write("record_message", "bench", MESSAGE)

            def postgres_actor() -> None:
                pg.store_write("record_message", "bench", MESSAGE)

            base, ours = paired(sqlite_actor, postgres_actor, n)
            report(
                "record_message_postgres",
                ours * 1e6,
                base * 1e6,
                "us/msg",
                "baseline: the SQLite store in the same run; PostgreSQL over a Unix socket",
            )

            def sqlite_direct() -> None:
                lite._store.record_message("bench", MESSAGE)

            def postgres_direct() -> None:
                pg._store.record_message("bench", MESSAGE)

            base, ours = paired(sqlite_direct, postgres_direct, n)
            report(
                "record_message_postgres_store_only",
                ours * 1e6,
                base * 1e6,
                "us/msg",
                "the stores called directly",
            )


if __name__ == "__main__":
    main()
