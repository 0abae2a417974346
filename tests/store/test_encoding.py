"""Values SQLite cannot encode (lone surrogates, non-finite floats) — one rule, both stores.

* Names and ids the caller gives (session id, backend, model, cwd, thread id and name,
  share id, run ids, filters, ``types``): a lone surrogate is ``InvalidOption`` naming
  the argument, before anything is written. Selectors say ``InvalidSelector``.
* Looking up an id that holds one finds nothing (``SessionNotFound``, ...), as for any
  id that was never stored.
* Metadata the caller sets (``extra``, thread ``metadata``) must be strict JSON: a lone
  surrogate or a non-finite float is ``InvalidOption`` naming where it is.
* Content (message bodies, summary text, run checkpoints) is always stored: a lone
  surrogate becomes U+FFFD, a non-finite float ``null`` (as ``JSON.stringify`` does).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.errors import (
    InvalidOption,
    InvalidSelector,
    RunNotFound,
    SessionNotFound,
    ThreadNotFound,
)
from beamagent.store import MessageMatch, SessionStore
from beamagent.store.base import encode_content, storable, storable_text
from tests.store._stores import STORE_KINDS, open_test_store

BAD = os.fsdecode(b"caf\xe9")  # 'caf\udce9': a lone surrogate, as from an undecodable path
FIXED = "caf\ufffd"


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    """Both stores, with a session ``s1`` holding a thread ``t1`` and one message."""
    opened = open_test_store(request, tmp_path)
    opened.create_session("s1", "local", model="m", cwd="/w", extra={"k": 1})
    opened.thread_start("s1", thread_id="t1")
    opened.record_message("s1", {"type": "user", "content": "hi", "uuid": "u1"})
    opened.save_run("r1", job_id="j", status="running", state="{}")
    yield opened
    opened.close()


def state(store: SessionStore) -> Any:
    """Everything a test could have changed, to prove a refused call wrote nothing."""
    return (
        [r.to_dict() for r in store.list_sessions()],
        {r.session_id: store.get_session_messages(r.session_id) for r in store.list_sessions()},
        [t.to_dict() for t in store.thread_list("s1")],
        store.list_runs(),
    )


# --- names and ids ------------------------------------------------------------------------

NAMED_CALLS: dict[str, tuple[str, Callable[[SessionStore], object]]] = {
    "create id": ("session_id", lambda s: s.create_session(BAD, "local")),
    "create backend": ("backend", lambda s: s.create_session("s2", BAD)),
    "create model": ("model", lambda s: s.create_session("s2", "local", model=BAD)),
    "create cwd": ("cwd", lambda s: s.create_session("s2", "local", cwd=BAD)),
    "create native id": (
        "native_session_id",
        lambda s: s.create_session("s1", "local", native_session_id=BAD),
    ),
    "update backend": ("backend", lambda s: s.update_session("s1", backend=BAD)),
    "update model": ("model", lambda s: s.update_session("s1", model=BAD)),
    "update cwd": ("cwd", lambda s: s.update_session("s1", cwd=BAD)),
    "update native id": (
        "native_session_id",
        lambda s: s.update_session("s1", native_session_id=BAD),
    ),
    "fork into": ("session_id", lambda s: s.fork_session("s1", session_id=BAD)),
    "thread id": ("thread_id", lambda s: s.thread_start("s1", thread_id=BAD)),
    "thread name": ("name", lambda s: s.thread_start("s1", name=BAD)),
    "thread parent": ("parent_thread_id", lambda s: s.thread_start("s1", parent_thread_id=BAD)),
    "thread fork name": ("name", lambda s: s.thread_fork("s1", "t1", name=BAD)),
    "share id": ("share_id", lambda s: s.share_session("s1", share_id=BAD)),
    "run id": ("run_id", lambda s: s.save_run(BAD, job_id="j", status="x", state="{}")),
    "job id": ("job_id", lambda s: s.save_run("r2", job_id=BAD, status="x", state="{}")),
    "run status": ("status", lambda s: s.save_run("r2", job_id="j", status=BAD, state="{}")),
    "run parent": (
        "parent_run_id",
        lambda s: s.save_run("r2", job_id="j", status="x", state="{}", parent_run_id=BAD),
    ),
    "filter backend": ("backend", lambda s: s.list_sessions(backend=BAD)),
    "filter cwd": ("cwd", lambda s: s.list_sessions(cwd=BAD)),
    "filter model": ("model", lambda s: s.list_sessions(model=BAD)),
    "run filter status": ("status", lambda s: s.list_runs(status=BAD)),
    "run filter job": ("job_id", lambda s: s.list_runs(job_id=BAD)),
    "types": ("types", lambda s: s.get_session_messages("s1", types=[BAD])),
    "one type": ("types", lambda s: s.get_session_messages("s1", types=BAD)),
}


@pytest.mark.parametrize("field_call", NAMED_CALLS.values(), ids=NAMED_CALLS.keys())
def test_a_name_with_a_lone_surrogate_is_refused_naming_it(
    store: SessionStore, field_call: tuple[str, Callable[[SessionStore], object]]
) -> None:
    field, call = field_call
    before = state(store)
    with pytest.raises(InvalidOption, match=f"^{field} .*lone surrogate"):
        call(store)
    assert state(store) == before


SELECTOR_CALLS: dict[str, Callable[[SessionStore], object]] = {
    "revert uuid": lambda s: s.revert_session("s1", {"uuid": BAD}),
    "revert message_id": lambda s: s.revert_session("s1", {"message_id": BAD}),
    "revert typed": lambda s: s.revert_session("s1", MessageMatch("uuid", BAD)),
    "rollback uuid": lambda s: s.thread_rollback("s1", "t1", {"uuid": BAD}),
}


@pytest.mark.parametrize("call", SELECTOR_CALLS.values(), ids=SELECTOR_CALLS.keys())
def test_a_selector_with_a_lone_surrogate_is_invalid(
    store: SessionStore, call: Callable[[SessionStore], object]
) -> None:
    before = state(store)
    with pytest.raises(InvalidSelector, match="lone surrogate"):
        call(store)
    assert state(store) == before


LOOKUPS: dict[str, tuple[type[Exception], Callable[[SessionStore], object]]] = {
    "get_session": (SessionNotFound, lambda s: s.get_session(BAD)),
    "get_session_messages": (SessionNotFound, lambda s: s.get_session_messages(BAD)),
    "record_messages": (SessionNotFound, lambda s: s.record_messages(BAD, [{"type": "x"}])),
    "update_session": (SessionNotFound, lambda s: s.update_session(BAD, model="m")),
    "delete_session": (SessionNotFound, lambda s: s.delete_session(BAD)),
    "fork_session": (SessionNotFound, lambda s: s.fork_session(BAD)),
    "summarize_session": (SessionNotFound, lambda s: s.summarize_session(BAD)),
    "thread_list": (SessionNotFound, lambda s: s.thread_list(BAD)),
    "thread_read": (ThreadNotFound, lambda s: s.thread_read("s1", BAD)),
    "thread_resume": (ThreadNotFound, lambda s: s.thread_resume("s1", BAD)),
    "thread_fork": (ThreadNotFound, lambda s: s.thread_fork("s1", BAD)),
    "thread_archive": (ThreadNotFound, lambda s: s.thread_archive("s1", BAD)),
    "thread_rollback": (ThreadNotFound, lambda s: s.thread_rollback("s1", BAD, {"count": 1})),
    "load_run": (RunNotFound, lambda s: s.load_run(BAD)),
    "delete_run": (RunNotFound, lambda s: s.delete_run(BAD)),
}


@pytest.mark.parametrize("error_call", LOOKUPS.values(), ids=LOOKUPS.keys())
def test_looking_up_an_id_with_a_lone_surrogate_finds_nothing(
    store: SessionStore, error_call: tuple[type[Exception], Callable[[SessionStore], object]]
) -> None:
    error, call = error_call
    before = state(store)
    with pytest.raises(error):
        call(store)
    assert state(store) == before


# --- metadata the caller sets -------------------------------------------------------------

METADATA_CALLS: dict[str, tuple[str, Callable[[SessionStore, Any], object]]] = {
    "create extra": ("extra", lambda s, v: s.create_session("s2", "local", extra=v)),
    "upsert extra": ("extra", lambda s, v: s.create_session("s1", "local", extra=v)),
    "update extra": ("extra", lambda s, v: s.update_session("s1", extra=v)),
    "fork extra": ("extra", lambda s, v: s.fork_session("s1", session_id="f", extra=v)),
    "thread metadata": ("metadata", lambda s, v: s.thread_start("s1", metadata=v)),
}
BAD_METADATA = {
    "surrogate value": ({"k": BAD}, r"\['k'\] 'caf\\udce9'"),
    "surrogate key": ({BAD: 1}, r" key 'caf\\udce9'"),
    "nested surrogate": ({"a": [1, {"b": BAD}]}, r"\['a'\]\[1\]\['b'\] 'caf\\udce9'"),
    "nan": ({"k": math.nan}, "JSON"),
    "infinity": ({"k": [math.inf]}, "JSON"),
    "minus infinity": ({"k": {"x": -math.inf}}, "JSON"),
}


@pytest.mark.parametrize("field_call", METADATA_CALLS.values(), ids=METADATA_CALLS.keys())
@pytest.mark.parametrize("value_where", BAD_METADATA.values(), ids=BAD_METADATA.keys())
def test_metadata_must_be_strict_json(
    store: SessionStore,
    field_call: tuple[str, Callable[[SessionStore, Any], object]],
    value_where: tuple[Any, str],
) -> None:
    field, call = field_call
    value, where = value_where
    before = state(store)
    with pytest.raises(InvalidOption, match=f"^{field}{where}" if "caf" in where else where):
        call(store, value)
    assert state(store) == before


# --- content ------------------------------------------------------------------------------


def test_message_bodies_are_always_stored_made_storable(store: SessionStore) -> None:
    message = {
        "type": "assistant",
        "content": BAD,
        BAD: [BAD, {"deep": BAD}],
        "pair": "\ud83d\ude00",  # a valid pair, as two code points: the character
        "usage": {"cost": math.nan, "limit": math.inf, "floor": -math.inf, "ok": 1.5},
        "list": [math.nan, 1, "x"],
    }
    assert store.record_message("s1", message) == 2
    (stored,) = store.get_session_messages("s1", offset=1)
    assert stored == {
        "type": "assistant",
        "content": FIXED,
        FIXED: [FIXED, {"deep": FIXED}],
        "pair": "\U0001f600",
        "usage": {"cost": None, "limit": None, "floor": None, "ok": 1.5},
        "list": [None, 1, "x"],
        "thread_id": "t1",
    }
    assert message["content"] == BAD  # the caller's dict is not changed


def test_indexed_fields_of_content_are_made_storable(store: SessionStore) -> None:
    seqs = store.record_messages(
        "s1",
        [
            {"type": BAD, "uuid": BAD, "message_id": BAD, "model": BAD, "thread_id": BAD},
            {"type": "user", "content": "after"},
        ],
    )
    assert seqs == [2, 3]
    assert store.get_session("s1").model == FIXED  # a message's model names the session's
    assert [m["uuid"] for m in store.get_session_messages("s1", types=[FIXED])] == [FIXED]
    reverted = store.revert_session("s1", {"uuid": FIXED})
    assert reverted.visible_message_count == 2
    store.unrevert_session("s1")
    store.revert_session("s1", {"message_id": FIXED})
    assert store.get_session("s1").visible_message_count == 2


def test_a_surrogate_key_that_collides_keeps_the_last_value(store: SessionStore) -> None:
    # Both keys become 'caf\ufffd': the JSON text holds the key twice, the last one wins.
    store.record_message("s1", {"type": "user", BAD: 1, os.fsdecode(b"caf\xea"): 2})
    assert store.get_session_messages("s1")[-1][FIXED] == 2


def test_a_non_finite_float_key_is_named_as_javascript_does(store: SessionStore) -> None:
    store.record_message("s1", {"type": "user", "k": {math.nan: 1, math.inf: 2, -math.inf: 3}})
    assert store.get_session_messages("s1")[-1]["k"] == {"NaN": 1, "Infinity": 2, "-Infinity": 3}


def test_what_is_not_json_at_all_is_still_refused(store: SessionStore) -> None:
    cyclic: dict[str, Any] = {"type": "user"}
    cyclic["self"] = cyclic
    cyclic_with_nan: dict[str, Any] = {"type": "user", "x": math.nan}
    cyclic_with_nan["self"] = cyclic_with_nan
    for message in (cyclic, cyclic_with_nan, {"type": "user", "x": math.nan, "b": b"x"}):
        with pytest.raises(InvalidOption, match="JSON"):
            store.record_message("s1", message)
    assert store.get_session("s1").message_count == 1


def test_summary_content_is_made_storable(store: SessionStore) -> None:
    summary = store.summarize_session("s1", content=BAD)
    assert summary["content"] == FIXED
    assert store.get_session("s1").extra["summary"] == summary


def test_run_checkpoints_are_made_storable(store: SessionStore) -> None:
    state_text = json.dumps({"name": BAD}, ensure_ascii=False)  # the raw surrogate in the text
    store.save_run("r2", job_id="j", status="x", state=state_text, results=[f'"{BAD}"'])
    run = store.load_run("r2")
    assert run["state"] == {"name": FIXED}
    assert run["results"] == [FIXED]


def test_a_fork_and_a_thread_fork_copy_the_stored_content(store: SessionStore) -> None:
    store.record_message("s1", {"type": "user", "content": BAD, "n": math.nan})
    fork = store.fork_session("s1", session_id="f")
    assert store.get_session_messages(fork.session_id)[-1]["content"] == FIXED
    thread = store.thread_fork("s1", "t1")
    detail = store.thread_read("s1", thread.thread_id, include_messages=True)
    assert detail.messages is not None
    assert [m["content"] for m in detail.messages] == ["hi", FIXED]
    assert detail.messages[-1]["n"] is None


# --- the codec ----------------------------------------------------------------------------


def reference_text(text: str) -> str:
    """Independent of the code under test: walk code points, pair or replace surrogates."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = ord(text[i])
        if 0xD800 <= c <= 0xDBFF and i + 1 < len(text) and 0xDC00 <= ord(text[i + 1]) <= 0xDFFF:
            out.append(chr(0x10000 + ((c - 0xD800) << 10) + (ord(text[i + 1]) - 0xDC00)))
            i += 2
            continue
        out.append("\ufffd" if 0xD800 <= c <= 0xDFFF else text[i])
        i += 1
    return "".join(out)


def reference(value: Any) -> Any:
    """What ``JSON.parse(JSON.stringify(value))`` gives in JavaScript (for these values)."""
    if isinstance(value, str):
        return reference_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {reference_text(k): reference(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reference(v) for v in value]
    return value


texts = st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=8).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", BAD, "\ud800x"]), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(json_values)
def test_encode_content_is_json_stringify(value: Any) -> None:
    text = encode_content(value, "value")
    assert storable(text)
    # Keys that collide after replacement keep the last value, as JSON.parse does.
    assert json.loads(text) == reference(value)


@given(texts)
def test_storable_text(text: str) -> None:
    fixed = storable_text(text)
    assert storable(fixed)
    assert fixed == reference_text(text).replace("\x00", "\ufffd")  # NUL: PostgreSQL's text
    assert storable(text) == (fixed == text)


def test_nul_is_refused_in_names_and_made_storable_in_content(store: SessionStore) -> None:
    """PostgreSQL's text cannot hold U+0000: every store treats it like a lone surrogate."""
    before = state(store)
    with pytest.raises(InvalidOption, match=r"^session_id .*NUL"):
        store.create_session("a\x00b", "local")
    with pytest.raises(SessionNotFound):
        store.get_session("a\x00b")
    assert state(store) == before
    seq = store.record_message(
        "s1", {"type": "user\x00", "uuid": "u\x00", "content": "x\x00y", "model": "m\x00"}
    )
    stored = store.get_session_messages("s1")[seq - 1]
    assert stored["content"] == "x\x00y"  # inside JSON it is an escape: kept
    assert store.get_session("s1").model == "m\ufffd"
    assert store.get_session_messages("s1", types="user\ufffd") == [stored]
