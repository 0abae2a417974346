"""Fuzz the runtime's public surface: only typed errors escape, and it stays healthy.

Codec and job-definition fuzzing of the pure functions lives beside them
(``tests/backends``, ``tests/graph``); here arbitrary values go through a
live ``Runtime`` — route requests, revert and rollback selectors, store
reads with arbitrary ints and strings, message normalisation and ``next``
lists — and after every example the runtime must still serve a query.
``make soak`` runs many more examples (``BEAMAGENT_SOAK=1``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beamagent import Runtime
from beamagent.errors import BeamAgentError
from beamagent.graph.instructions import parse_next
from beamagent.messages import Message, normalize
from supervisors import SupervisorsError
from tests.reliability.conftest import scale

EXAMPLES = scale(150, 5000)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Strings with what breaks encoders: lone surrogates, NULs, very long, non-BMP.
texts = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec=None, categories=None)),
    st.sampled_from(["caf\udce9", "\x00", "a" * 5000, "😀", "", " ", "auto", "claude"]),
)
ints = st.one_of(
    st.integers(),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 2**31, -1, 0]),
)
scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=True, allow_infinity=True), texts
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=5)),
    max_leaves=20,
)
TYPED = (BeamAgentError, SupervisorsError)


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def fuzz_runtime(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runtime, str]]:
    store = ":memory:" if request.param == "memory" else tmp_path_factory.mktemp("fuzz") / "f.db"
    with Runtime(store=store) as rt:
        session = rt.start_session(backend="local", session_id="fuzz-target")
        for i in range(3):
            session.query(f"seed {i}")
        yield rt, session.session_id


def _healthy(rt: Runtime, session_id: str) -> None:
    assert rt.session(session_id).query("still fine")[-1].content == "still fine"


def _typed_only(call: Any) -> None:
    with contextlib.suppress(*TYPED):
        call()


@FUZZ
@given(request=json_like, session_or_opts=json_like)
def test_route_requests(
    fuzz_runtime: tuple[Runtime, str], request: Any, session_or_opts: Any
) -> None:
    rt, session_id = fuzz_runtime
    _typed_only(lambda: rt.select_backend(request))
    _typed_only(lambda: rt.select_backend(session_or_opts, request))
    _healthy(rt, session_id)


@FUZZ
@given(selector=json_like, thread_id=texts)
def test_revert_and_rollback_selectors(
    fuzz_runtime: tuple[Runtime, str], selector: Any, thread_id: str
) -> None:
    rt, session_id = fuzz_runtime
    _typed_only(lambda: rt.revert_session(session_id, selector))
    _typed_only(lambda: rt.unrevert_session(session_id))
    _typed_only(lambda: rt.thread_rollback(session_id, thread_id, selector))
    _healthy(rt, session_id)


@FUZZ
@given(
    session_id=texts,
    offset=st.one_of(ints, scalars),
    limit=st.one_of(ints, scalars),
    types=st.one_of(st.none(), texts, st.lists(texts, max_size=3), json_like),
    since=st.one_of(scalars, ints),
)
def test_store_reads_with_arbitrary_ints_and_strings(
    fuzz_runtime: tuple[Runtime, str],
    session_id: str,
    offset: Any,
    limit: Any,
    types: Any,
    since: Any,
) -> None:
    rt, live = fuzz_runtime
    for target in (session_id, live):
        _typed_only(
            lambda t=target: rt.get_session_messages(t, types=types, offset=offset, limit=limit)
        )
        _typed_only(lambda t=target: rt.get_session(t))
        _typed_only(lambda t=target: rt.thread_list(t))
        _typed_only(lambda t=target: rt.thread_read(t, session_id))
    _typed_only(lambda: rt.list_sessions(backend=session_id, since=since, limit=limit))
    _healthy(rt, live)


@FUZZ
@given(mapping=st.dictionaries(texts, json_like, max_size=8), kind=json_like)
def test_normalize_never_raises(mapping: dict[str, Any], kind: Any) -> None:
    for candidate in (mapping, {**mapping, "type": kind}):
        message = normalize(candidate)
        assert isinstance(message, Message)
        message.to_dict()


@FUZZ
@given(entries=json_like)
def test_parse_next_raises_only_typed_errors(entries: Any) -> None:
    _typed_only(lambda: parse_next(entries))
