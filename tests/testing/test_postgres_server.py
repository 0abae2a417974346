"""The throwaway PostgreSQL server of the test kit (beamagent.testing.postgres)."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from beamagent.testing.postgres import PostgresServer, reap_orphans

ROOT = Path(__file__).resolve().parents[2]

psycopg = pytest.importorskip("psycopg")


def test_server_listens_on_its_socket_only(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url()) as conn:
        (addresses,) = conn.execute("SHOW listen_addresses").fetchone()  # type: ignore[misc]
        (sockets,) = conn.execute("SHOW unix_socket_directories").fetchone()  # type: ignore[misc]
    assert addresses == ""
    assert sockets == str(postgres_server.socket_dir)
    socket = postgres_server.socket_dir / f".s.PGSQL.{postgres_server.port}"
    assert stat.S_ISSOCK(os.stat(socket).st_mode)


def test_databases_are_fresh_and_separate(postgres_server: PostgresServer) -> None:
    first = postgres_server.create_database()
    second = postgres_server.create_database()
    assert first != second
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
    with psycopg.connect(second) as conn:
        (count,) = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
        ).fetchone()
    assert count == 0
    for url in (first, second):
        postgres_server.drop_database(url.rsplit("/", 1)[1])


def test_postgres_url_is_an_empty_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        (count,) = conn.execute(  # type: ignore[misc]
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert count == 0


def test_a_second_server_starts_and_stops(tmp_path: os.PathLike[str]) -> None:
    with PostgresServer.start(tmp_path) as server:
        base = server.base
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not base.exists()


def test_a_server_left_by_a_killed_test_run_is_reaped_at_the_next_start(
    tmp_path: os.PathLike[str],
) -> None:
    # A run killed with SIGKILL cannot stop its server (it runs in a session of its own).
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from beamagent.testing.postgres import PostgresServer\n"
            "server = PostgresServer.start(sys.argv[1])\n"
            "print(server.base, server.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            os.fspath(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    out, _ = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    base_text, pid_text = out.split()
    base, postmaster = Path(base_text), int(pid_text)
    os.kill(postmaster, 0)  # the orphan still runs
    watch = os.pidfd_open(postmaster)
    try:
        assert reap_orphans(base.parent) >= 1  # under root /tmp: other orphans go too
        assert select.select([watch], [], [], 0)[0]  # it has exited
    finally:
        os.close(watch)
    assert not base.exists()
    # A live owner's server is left alone.
    with PostgresServer.start(tmp_path) as server:
        reap_orphans(server.base.parent)
        assert server.base.exists()
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
