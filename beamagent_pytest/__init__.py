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

See ``docs/testing.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from beamagent.runtime import Runtime
    from beamagent.testing import FakeModelServer, LocalBackend

__all__ = [
    "beamagent_leak_check",
    "beamagent_runtime",
    "fake_model_server",
    "local_backend",
    "pytest_addoption",
]

_GRACE_INI = "beamagent_leak_grace"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``beamagent_leak_grace`` ini option."""
    parser.addini(
        _GRACE_INI,
        "seconds the beamagent leak check waits for threads and child processes "
        "that are already ending (default 5)",
        default="5.0",
    )


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
    beamagent_leak_check: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    """A fresh ``Runtime`` on a SQLite store in a temp dir; stopped, then leak-checked.

    It leaves SIGTERM to pytest (``handle_signals=False``).
    """
    from beamagent.runtime import Runtime

    store = tmp_path_factory.mktemp("beamagent") / "store.db"
    with Runtime(store=str(store), handle_signals=False) as runtime:
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
