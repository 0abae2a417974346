"""Suite-wide fixtures: every test is checked for leaked runtimes, actors, threads, processes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import settings

from beamagent.testing.leaks import LEAK_GRACE_SECONDS, LeakSnapshot

pytest_plugins = ["pytester"]  # tests/plugin runs pytest on sample projects

# No per-example deadline: it is a timed assertion, and on a loaded 2-core CI machine a
# slow example (an import, a GC pause) failed a property test that had found no bug
# (test_acp's permission property once). pytest-timeout still bounds every test.
settings.register_profile("beamagent", deadline=None)
settings.load_profile("beamagent")


@pytest.fixture(autouse=True)
def isolated_default_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never let a test write to the user's real default store."""
    path = tmp_path_factory.mktemp("default-store") / "sessions.db"
    monkeypatch.setenv("BEAMAGENT_STORE", str(path))


@pytest.fixture(autouse=True)
def restore_library_loggers() -> Iterator[None]:
    """Undo ``configure_logging`` (the README and examples call it): handlers, level, propagate."""
    loggers = [logging.getLogger(name) for name in ("beamagent", "supervisors")]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for logger, level, propagate, handlers in saved:
        for handler in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(autouse=True)
def leak_check() -> Iterator[None]:
    """Fail the test if it leaves runtimes, actors, threads or child processes alive.

    The check the plugin's fixtures give users (``beamagent.testing.LeakSnapshot``).
    """
    snapshot = LeakSnapshot.take()
    yield
    leaks = snapshot.check(LEAK_GRACE_SECONDS)
    if leaks:
        pytest.fail(leaks.describe(), pytrace=False)
