"""JSON-RPC classification (2.0 and Codex's field-less dialect), encoders, id bookkeeping."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beamagent.backends.jsonl import decode_lines
from beamagent.backends.jsonrpc import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    InboundRequests,
    PendingRequests,
    RequestIds,
    RpcError,
    RpcKind,
    RpcMessage,
    classify,
    encode_error,
    encode_notification,
    encode_request,
    encode_result,
)
from beamagent.errors import InvalidOption

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
rpc_ids = st.integers() | st.text(max_size=8)
methods = st.text(max_size=20)
params = (
    st.none()
    | st.lists(json_values, max_size=3)
    | st.dictionaries(st.text(max_size=5), json_values, max_size=3)
)
rpc_keys = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"])


@given(json_values)
def test_classify_never_raises_on_any_json(value: Any) -> None:
    assert isinstance(classify(value), RpcMessage)


@given(st.dictionaries(rpc_keys, json_values | st.dictionaries(rpc_keys, json_scalars), max_size=4))
def test_classify_never_raises_on_rpc_shaped_objects(obj: dict[str, Any]) -> None:
    message = classify(obj)
    if message.kind is RpcKind.INVALID:
        assert message == RpcMessage(RpcKind.INVALID)
    if message.kind in (RpcKind.REQUEST, RpcKind.NOTIFICATION):
        assert message.method == obj["method"]
    else:
        assert message.method is None
    if message.kind is RpcKind.ERROR_RESPONSE:
        assert isinstance(message.error, RpcError)


@given(rpc_ids, methods, params, st.booleans())
def test_request_round_trip(rpc_id: int | str, method: str, p: Any, jsonrpc: bool) -> None:
    encoded = encode_request(rpc_id, method, p, jsonrpc=jsonrpc)
    assert ("jsonrpc" in encoded) is jsonrpc
    assert classify(encoded) == RpcMessage(RpcKind.REQUEST, id=rpc_id, method=method, params=p)


@given(methods, params, st.booleans())
def test_notification_round_trip(method: str, p: Any, jsonrpc: bool) -> None:
    encoded = encode_notification(method, p, jsonrpc=jsonrpc)
    assert "id" not in encoded
    assert classify(encoded) == RpcMessage(RpcKind.NOTIFICATION, method=method, params=p)


@given(rpc_ids, json_values, st.booleans())
def test_result_round_trip(rpc_id: int | str, result: Any, jsonrpc: bool) -> None:
    encoded = encode_result(rpc_id, result, jsonrpc=jsonrpc)
    assert classify(encoded) == RpcMessage(RpcKind.RESPONSE, id=rpc_id, result=result)


@given(st.none() | rpc_ids, st.integers(), st.text(), json_values, st.booleans())
def test_error_round_trip(
    rpc_id: int | str | None, code: int, message: str, data: Any, jsonrpc: bool
) -> None:
    encoded = encode_error(rpc_id, code, message, data, jsonrpc=jsonrpc)
    assert classify(encoded) == RpcMessage(
        RpcKind.ERROR_RESPONSE, id=rpc_id, error=RpcError(code, message, data)
    )


def test_codex_dialect_examples() -> None:
    approval = {
        "id": 0,
        "method": "item/commandExecution/requestApproval",
        "params": {"threadId": "t", "itemId": "i", "command": "touch x"},
    }
    assert classify(approval).kind is RpcKind.REQUEST
    assert classify({"method": "turn/started", "params": {"turn": {}}}).kind is RpcKind.NOTIFICATION
    assert classify({"id": 0, "result": {"userAgent": "codex"}}).kind is RpcKind.RESPONSE
    assert encode_result(0, {"decision": "accept"}, jsonrpc=False) == {
        "id": 0,
        "result": {"decision": "accept"},
    }
    assert encode_notification("initialized", jsonrpc=False) == {"method": "initialized"}


def test_acp_examples() -> None:
    assert encode_request(1, "session/new", {"cwd": "/w", "mcpServers": []}) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "session/new",
        "params": {"cwd": "/w", "mcpServers": []},
    }
    error = classify(
        {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "nope", "data": [1]}}
    )
    assert error == RpcMessage(
        RpcKind.ERROR_RESPONSE, id=3, error=RpcError(METHOD_NOT_FOUND, "nope", [1])
    )


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"id": 1, "result": None}, RpcKind.RESPONSE),
        ({"id": 1, "result": 1, "error": None}, RpcKind.RESPONSE),
        ({"id": None, "error": {"code": -32700, "message": "parse"}}, RpcKind.ERROR_RESPONSE),
        ({"method": "m", "id": None}, RpcKind.NOTIFICATION),
        ({"method": "m", "id": "abc", "params": []}, RpcKind.REQUEST),
        ({"result": 1}, RpcKind.INVALID),
        ({"id": 1}, RpcKind.INVALID),
        ({"id": True, "result": 1}, RpcKind.INVALID),
        ({"id": 1.5, "method": "m"}, RpcKind.INVALID),
        ({"id": [1], "result": 1}, RpcKind.INVALID),
        ({"method": 5}, RpcKind.INVALID),
        ({"method": "m", "params": "scalar"}, RpcKind.INVALID),
        ({"id": 1, "result": 1, "error": {"code": 1, "message": "x"}}, RpcKind.INVALID),
        ({"id": 1, "error": 5}, RpcKind.INVALID),
        ([1, 2], RpcKind.INVALID),
        ("text", RpcKind.INVALID),
    ],
)
def test_classification_table(obj: Any, kind: RpcKind) -> None:
    assert classify(obj).kind is kind


def test_sloppy_errors_still_classify_as_error_responses() -> None:
    # A caller waiting on id 4 must be failed, not left to time out.
    assert classify({"id": 4, "error": "boom"}).error == RpcError(INTERNAL_ERROR, "boom")
    assert classify({"id": 4, "error": {"code": "x"}}).error == RpcError(INTERNAL_ERROR, "")


def test_encoders_validate_their_arguments() -> None:
    with pytest.raises(InvalidOption, match="id must be an int or a str"):
        encode_request(True, "m")
    with pytest.raises(InvalidOption, match="method must be a str"):
        encode_notification(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="params must be an object or an array"):
        encode_request(1, "m", "scalar")
    with pytest.raises(InvalidOption, match="error code must be an int"):
        encode_error(1, 1.5, "m")  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="error message must be a str"):
        encode_error(1, 1, None)  # type: ignore[arg-type]


def test_request_ids_are_unique_across_threads() -> None:
    ids = RequestIds(start=5)
    seen: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [ids.next_id() for _ in range(500)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(seen) == list(range(5, 2005))


def test_pending_requests_match_responses_only() -> None:
    pending: PendingRequests[str] = PendingRequests()
    first = pending.register("initialize", "future-a")
    second = pending.register("thread/start", "future-b")
    assert (first, second) == (0, 1)
    assert len(pending) == 2
    assert 0 in pending

    # Codex's own first request also has id 0: it must not resolve our request 0.
    server_request = classify({"id": 0, "method": "item/commandExecution/requestApproval"})
    assert pending.resolve(server_request) is None
    assert pending.resolve(classify({"method": "turn/started"})) is None
    assert pending.resolve(classify({"id": 99, "result": {}})) is None
    assert pending.resolve(classify({"id": "0", "result": {}})) is None
    assert 0 in pending

    done = pending.resolve(classify({"id": 0, "result": {"userAgent": "x"}}))
    assert done is not None
    assert (done.id, done.method, done.token) == (0, "initialize", "future-a")
    assert pending.resolve(classify({"id": 0, "result": {}})) is None  # answered once only

    failed = pending.resolve(classify({"id": 1, "error": {"code": -1, "message": "no"}}))
    assert failed is not None
    assert failed.token == "future-b"
    assert len(pending) == 0


def test_pending_requests_cancel_and_drain() -> None:
    pending: PendingRequests[int] = PendingRequests(RequestIds(start=10))
    a = pending.register("a", 1)
    b = pending.register("b", 2)
    cancelled = pending.cancel(a)
    assert cancelled is not None
    assert cancelled.token == 1
    assert pending.cancel(a) is None
    assert pending.resolve(classify({"id": a, "result": 1})) is None  # late answer: ignored
    assert [p.id for p in pending.drain()] == [b]
    assert len(pending) == 0


def test_inbound_requests_keep_the_peers_id_space() -> None:
    inbound = InboundRequests()
    approval = classify({"id": 0, "method": "session/request_permission", "params": {}})
    inbound.add(approval)
    assert 0 in inbound
    assert len(inbound) == 1
    assert inbound.pop(0) == approval
    assert inbound.pop(0) is None
    inbound.add(classify({"id": "x", "method": "m"}))
    assert [m.id for m in inbound.drain()] == ["x"]
    with pytest.raises(InvalidOption, match="only a request"):
        inbound.add(classify({"method": "note"}))


def _check_fields(message: RpcMessage) -> None:
    assert message.id is None or type(message.id) in (int, str)
    assert message.method is None or isinstance(message.method, str)
    if message.error is not None:
        assert type(message.error.code) is int
        assert isinstance(message.error.message, str)


@given(st.binary(max_size=400))
def test_lines_of_arbitrary_bytes_classify_without_raising(stream: bytes) -> None:
    pending: PendingRequests[None] = PendingRequests()
    pending.register("initialize", None)
    for obj in decode_lines(stream + b"\n").objects:
        message = classify(obj)
        _check_fields(message)
        pending.resolve(message)


# Structured junk: RPC keys with any JSON Python's json accepts (NaN, deep nesting).
wild = st.recursive(
    json_scalars | st.floats(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(rpc_keys | st.text(max_size=4), children)
    ),
    max_leaves=12,
)


@given(st.dictionaries(rpc_keys, wild, max_size=6) | wild)
def test_classify_gives_typed_fields_for_any_value(value: Any) -> None:
    _check_fields(classify(value))
