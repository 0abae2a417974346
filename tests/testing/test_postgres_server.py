"""The throwaway PostgreSQL server of the test kit (beamagent.testing.postgres)."""

from __future__ import annotations

import os
import stat

import pytest

from beamagent.testing.postgres import PostgresServer

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
