"""beamagent's pytest plugin: the fixtures every ``pip install beamagent`` brings.

Registered through the ``pytest11`` entry point. It imports nothing of beamagent until a
test asks for one of its fixtures, so pytest runs that do not use them are unchanged.

* ``beamagent_runtime``: a fresh ``Runtime`` on a SQLite file in a temp dir, stopped after
  the test, then leak-checked.
* ``fake_model_server``: a started ``FakeModelServer`` on 127.0.0.1, stopped after.
* ``local_backend``: a :class:`~beamagent.testing.LocalBackend` on ``beamagent_runtime``;
  ``local_backend(replies=[...])`` starts a scripted ``local`` session.
* ``beamagent_leak_check``: the leak check alone; fails a test that leaves runtimes,
  actors, threads, child processes or file descriptors behind.
* ``cassette`` and ``@pytest.mark.beamagent_cassette("name")``: the sessions of
  ``beamagent_runtime`` record their wire traffic to ``cassettes/<name>.jsonl`` next to
  the test module, or replay it (``--beamagent-cassette-mode`` or
  ``BEAMAGENT_CASSETTE_MODE``: ``once``, the default, ``record``, ``replay``).
* ``postgres_server``: a throwaway PostgreSQL server for the whole test session
  (:class:`beamagent.testing.postgres.PostgresServer`, Unix socket only), stopped at the
  end; ``postgres_url``: a fresh, empty database on it per test (its URL), dropped after.
  Without the server binaries they skip, or fail under ``CI=true`` or
  ``BEAMAGENT_REQUIRE_POSTGRES=1``.

See ``docs/testing.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from beamagent.backends.cassette import Cassette
    from beamagent.runtime import Runtime
    from beamagent.testing import FakeModelServer, LocalBackend
    from beamagent.testing.postgres import PostgresServer

__all__ = [
    "beamagent_leak_check",
    "beamagent_runtime",
    "cassette",
    "fake_model_server",
    "local_backend",
    "postgres_server",
    "postgres_url",
    "pytest_addoption",
    "pytest_configure",
]

_GRACE_INI = "beamagent_leak_grace"
_MODE_OPTION = "--beamagent-cassette-mode"
_MODE_ENV = "BEAMAGENT_CASSETTE_MODE"
_MARKER = "beamagent_cassette"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``beamagent_leak_grace`` ini option."""
    parser.addini(
        _GRACE_INI,
        "seconds the beamagent leak check waits for threads and child processes "
        "that are already ending (default 5)",
        default="5.0",
    )
    parser.addoption(
        _MODE_OPTION,
        choices=("once", "record", "replay"),
        default=None,
        help="how beamagent cassettes are used: replay if the file exists, else record "
        f"(once, the default); record afresh; replay only. Also ${_MODE_ENV}.",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``beamagent_cassette`` marker."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(name): the test's beamagent sessions record to / replay from "
        "cassettes/<name>.jsonl next to the test module",
    )


@pytest.fixture
def cassette(request: pytest.FixtureRequest) -> Iterator[Cassette]:
    """The test's :class:`~beamagent.backends.cassette.Cassette`; ``beamagent_runtime`` uses it.

    Stored as ``cassettes/<name>.jsonl`` next to the test module: ``name`` from
    ``@pytest.mark.beamagent_cassette("name")``, else the test's name. Written after the
    test (record mode); a replay that diverged from it fails the test with the diff.
    """
    from beamagent.backends.cassette import Cassette

    marker = request.node.get_closest_marker(_MARKER)
    name = str(marker.args[0]) if marker is not None and marker.args else request.node.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    mode = request.config.getoption(_MODE_OPTION) or os.environ.get(_MODE_ENV) or "once"
    path = Path(request.node.path).parent / "cassettes" / f"{name}.jsonl"
    tape = Cassette(path, mode)
    yield tape
    tape.save()
    if tape.mismatches:
        pytest.fail(str(tape.mismatches[0]), pytrace=False)


@pytest.fixture
def beamagent_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves runtimes, actors, threads, children or descriptors open.

    Set up before the other beamagent fixtures and checked after they are torn down.
    What leaked is stopped, so one leak does not fail the tests that follow. The leak is
    reported as an error at the test's teardown, naming what leaked.
    """
    from beamagent.testing.leaks import LeakSnapshot

    grace = float(request.config.getini(_GRACE_INI))
    snapshot = LeakSnapshot.take()
    yield
    leaks = snapshot.check(grace, fds=True)
    if leaks:
        pytest.fail(leaks.describe(), pytrace=False)


@pytest.fixture
def beamagent_runtime(
    beamagent_leak_check: None,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Runtime]:
    """A fresh ``Runtime`` on a SQLite store in a temp dir; stopped, then leak-checked.

    It leaves SIGTERM to pytest (``handle_signals=False``). With the ``cassette``
    fixture or the ``beamagent_cassette`` marker, its sessions record or replay it.
    """
    from beamagent.runtime import Runtime

    tape = None
    if "cassette" in request.fixturenames or request.node.get_closest_marker(_MARKER):
        tape = request.getfixturevalue("cassette")  # set up first: saved after the stop
    store = tmp_path_factory.mktemp("beamagent") / "store.db"
    with Runtime(store=str(store), handle_signals=False, cassette=tape) as runtime:
        yield runtime


@pytest.fixture
def fake_model_server(beamagent_leak_check: None) -> Iterator[FakeModelServer]:
    """A started ``FakeModelServer`` on 127.0.0.1 (``.url``, ``.script([...])``); stopped after."""
    from beamagent.testing import FakeModelServer

    with FakeModelServer(host="127.0.0.1") as server:
        yield server


@pytest.fixture
def local_backend(beamagent_runtime: Runtime) -> LocalBackend:
    """Scripted ``local`` sessions on ``beamagent_runtime``: ``local_backend(replies=[...])``."""
    from beamagent.testing import LocalBackend

    return LocalBackend(beamagent_runtime)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the test session (Unix socket only); stopped after.

    Skips the tests that use it when the server binaries are missing, or fails them under
    ``CI=true`` / ``BEAMAGENT_REQUIRE_POSTGRES=1``.
    """
    from beamagent.testing.postgres import (
        PostgresServer,
        PostgresUnavailable,
        postgres_required,
    )

    try:
        server = PostgresServer.start(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as exc:
        if postgres_required():
            pytest.fail(f"PostgreSQL is required here (CI) but {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on ``postgres_server``; dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url.rsplit("/", 1)[1])
