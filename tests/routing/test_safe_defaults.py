"""Routing only ever picks backends the user enabled: no paid agent starts by surprise."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from beamagent import Runtime
from beamagent.backends.local import LocalHandler
from beamagent.errors import BackendNotEligible, UnknownBackend


@pytest.fixture
def fake_clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``claude`` and ``codex`` executables first on PATH that leave a mark if started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marks = tmp_path / "started"
    for name in ("claude", "codex"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho {name} >> {marks}\nexit 1\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    yield marks
    assert not marks.exists(), f"a CLI was started: {marks.read_text()}"


def test_nothing_named_routes_to_local_only(fake_clis: Path) -> None:
    with Runtime(store=":memory:") as rt:
        session = rt.start_session()
        assert session.backend() == "local"
        picks = [rt.select_backend({"policy": "round_robin"}).backend for _ in range(12)]
        assert set(picks) == {"local"}
        assert rt.routable_backends() == ["local"]


def test_round_robin_over_preferred_backends_never_drifts_into_clis(fake_clis: Path) -> None:
    backends = {"local_a": LocalHandler, "local_b": LocalHandler}
    with Runtime(store=":memory:", backends=backends) as rt:
        request = {"policy": "round_robin", "preferred_backends": ["local_a", "local_b"]}
        picks = [rt.select_backend(request).backend for _ in range(12)]
        assert picks == ["local_a", "local_b"] * 6
        for _ in range(4):
            assert rt.start_session(routing=request).backend() in ("local_a", "local_b")
        with pytest.raises(BackendNotEligible):
            rt.select_backend({"backend": "claude"})


def test_enabled_backends_are_routable_in_the_given_order() -> None:
    with Runtime(store=":memory:", backends=["codex", "local", "claude"]) as rt:
        assert rt.routable_backends() == ["codex", "local", "claude"]
    with Runtime(store=":memory:", backends={"local": LocalHandler, "mine": LocalHandler}) as rt:
        assert rt.routable_backends() == ["local", "mine"]
    with pytest.raises(UnknownBackend):
        Runtime(store=":memory:", backends=["no-such-backend"])


def test_a_builtin_named_explicitly_can_still_be_started() -> None:
    # Naming a backend is enabling it: the built-ins stay startable by name.
    with Runtime(store=":memory:", backends=["local"]) as rt:
        assert rt.backend_spec("claude").name == "claude"
        assert "claude" in rt.backends()
        assert rt.backend_availability()["claude"][0] is False


def test_a_builtin_enabled_with_default_options_gets_them() -> None:
    # A dict enables the built-in of that name with default options for its sessions.
    backends = {"local": {"model": "local-large"}}
    with Runtime(store=":memory:", backends=backends) as rt:
        assert rt.routable_backends() == ["local"]
        assert rt.backend_spec("local").handler is LocalHandler
        session = rt.start_session()
        assert session.session_info()["model"] == "local-large"
    with pytest.raises(UnknownBackend):
        Runtime(store=":memory:", backends={"no-such-backend": {"model": "m"}})
