"""open_store and the default store location."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
import pytest

from beamagent.errors import InvalidOption, StoreError
from beamagent.store import MemoryStore, SessionStore, SqliteStore, open_store
from beamagent.store.location import default_store_path


def test_default_path_from_the_environment(tmp_path: Path) -> None:
    assert default_store_path({"BEAMAGENT_STORE": str(tmp_path / "x.db")}) == tmp_path / "x.db"
    assert default_store_path({"BEAMAGENT_STORE": "~/s.db"}) == Path.home() / "s.db"
    expected = Path(platformdirs.user_data_dir("beamagent")) / "sessions.db"
    assert default_store_path({}) == expected
    assert default_store_path({"BEAMAGENT_STORE": ""}) == expected


def test_open_store_none_uses_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEAMAGENT_STORE", str(tmp_path / "default.db"))
    store = open_store()
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == tmp_path / "default.db"
    finally:
        store.close()
    monkeypatch.setenv("BEAMAGENT_STORE", ":memory:")
    memory = open_store(None)
    assert isinstance(memory, MemoryStore)
    memory.close()


def test_open_store_specs(tmp_path: Path) -> None:
    memory = open_store(":memory:")
    assert isinstance(memory, MemoryStore)
    assert open_store(memory) is memory
    assert isinstance(memory, SessionStore)
    memory.close()
    for spec in (str(tmp_path / "a.db"), tmp_path / "b.db"):
        store = open_store(spec)
        assert isinstance(store, SqliteStore)
        assert isinstance(store, SessionStore)
        store.close()


@pytest.mark.parametrize("spec", ["", 42, object(), b"/tmp/x.db"])
def test_open_store_rejects_other_things(spec: object) -> None:
    with pytest.raises(InvalidOption):
        open_store(spec)


def test_an_unusable_default_store_says_how_to_choose_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "read-only"
    blocked.mkdir()
    blocked.chmod(0o500)
    monkeypatch.setenv("BEAMAGENT_STORE", str(blocked / "sub" / "sessions.db"))
    try:
        if os.access(blocked, os.W_OK):  # root ignores the mode: use a file as parent instead
            (tmp_path / "a-file").write_text("x")
            monkeypatch.setenv("BEAMAGENT_STORE", str(tmp_path / "a-file" / "sessions.db"))
        with pytest.raises(StoreError) as info:
            open_store()
    finally:
        blocked.chmod(0o700)
    message = str(info.value)
    assert "BEAMAGENT_STORE" in message
    assert "Runtime(store=" in message
    assert ":memory:" in message
