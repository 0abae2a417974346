"""JSON-RPC message classification, encoding and request bookkeeping.

Serves two dialects: JSON-RPC 2.0 as ACP speaks it (Gemini, Copilot) and
Codex app-server's, which is the same shape without the ``"jsonrpc"`` field.
Framing (one message per line) is :mod:`beamagent.backends.jsonl`'s job.

Both peers send requests, and both number them from small integers, so an id
alone never says what a message is: Codex's first approval request to us has
``id: 0`` just like our first request to it. The rule here is that **a message
with a ``method`` is a request or notification from the peer; only a message
without one is a response**, and only responses are matched against our
:class:`PendingRequests`. Requests the peer sent us live in their own table,
:class:`InboundRequests`, keyed by the peer's ids.
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

import attrs

from beamagent.errors import InvalidOption

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "InboundRequests",
    "PendingRequest",
    "PendingRequests",
    "RequestIds",
    "RpcError",
    "RpcKind",
    "RpcMessage",
    "classify",
    "encode_error",
    "encode_notification",
    "encode_request",
    "encode_result",
]

# Error codes reserved by JSON-RPC 2.0.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

_VERSION: Final = "2.0"

#: A JSON-RPC id: an integer or a string (never a bool).
RpcId = int | str

T = TypeVar("T")


class RpcKind(enum.StrEnum):
    """What a JSON-RPC message is."""

    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"
    ERROR_RESPONSE = "error_response"
    INVALID = "invalid"


@attrs.frozen(unsafe_hash=False)
class RpcError:
    """The ``error`` member of an error response."""

    code: int
    message: str
    data: Any = None


@attrs.frozen(unsafe_hash=False)
class RpcMessage:
    """A classified JSON-RPC message; fields that do not apply to ``kind`` are ``None``.

    ``id`` is ``None`` for notifications, invalid messages and error
    responses to a request the peer could not identify.
    """

    kind: RpcKind
    id: RpcId | None = None
    method: str | None = None
    #: A request's or notification's params: a dict, a list, or None when absent.
    params: Any = None
    result: Any = None
    error: RpcError | None = None


_INVALID: Final = RpcMessage(RpcKind.INVALID)


def _is_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_params(value: object) -> bool:
    return value is None or isinstance(value, Mapping | list | tuple)


def _parse_error(value: object) -> RpcError | None:
    """An error member, read leniently so that a sloppy peer still fails our pending call."""
    if isinstance(value, str):
        return RpcError(INTERNAL_ERROR, value)
    if not isinstance(value, Mapping):
        return None
    code = value.get("code")
    message = value.get("message")
    return RpcError(
        code=code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR,
        message=message if isinstance(message, str) else "",
        data=value.get("data"),
    )


def classify(obj: object) -> RpcMessage:
    """Say what ``obj`` (one parsed JSON value) is; never raises.

    - ``method`` (a string) and an int/str ``id``: a request (from the peer
      when we read it: a server→client request);
    - ``method`` and no id (or ``id: null``): a notification;
    - no ``method``, an id and ``result``: a response;
    - no ``method`` and a non-null ``error``: an error response (its id may
      be null when the peer could not read our request);
    - anything else: invalid. The ``"jsonrpc"`` field is neither required
      nor checked, so Codex's dialect classifies the same way.

        >>> classify({"id": 0, "method": "item/commandExecution/requestApproval"}).kind
        <RpcKind.REQUEST: 'request'>
    """
    if not isinstance(obj, Mapping):
        return _INVALID
    msg_id = obj.get("id")
    if msg_id is not None and not _is_id(msg_id):
        return _INVALID
    if "method" in obj:
        method = obj["method"]
        params = obj.get("params")
        if not isinstance(method, str) or not _is_params(params):
            return _INVALID
        if msg_id is None:
            return RpcMessage(RpcKind.NOTIFICATION, method=method, params=params)
        return RpcMessage(RpcKind.REQUEST, id=msg_id, method=method, params=params)
    error = obj.get("error")
    if error is not None:
        rpc_error = _parse_error(error)
        if rpc_error is None or obj.get("result") is not None:
            return _INVALID
        return RpcMessage(RpcKind.ERROR_RESPONSE, id=msg_id, error=rpc_error)
    if "result" in obj and msg_id is not None:
        return RpcMessage(RpcKind.RESPONSE, id=msg_id, result=obj["result"])
    return _INVALID


# --- encoders -------------------------------------------------------------------------


def _check_id(msg_id: object) -> None:
    if not _is_id(msg_id):
        raise InvalidOption(f"a JSON-RPC id must be an int or a str, got {msg_id!r}")


def _check_method(method: object) -> None:
    if not isinstance(method, str):
        raise InvalidOption(f"a JSON-RPC method must be a str, got {method!r}")


def _check_params(params: object) -> None:
    if not _is_params(params):
        raise InvalidOption(f"JSON-RPC params must be an object or an array, got {params!r}")


def _envelope(jsonrpc: bool) -> dict[str, Any]:
    return {"jsonrpc": _VERSION} if jsonrpc else {}


def encode_request(
    id: RpcId, method: str, params: Any = None, *, jsonrpc: bool = True
) -> dict[str, Any]:
    """A request dict; ``params`` is left out when ``None``, ``jsonrpc=False`` for Codex.

    >>> encode_request(1, "initialize", {"protocolVersion": 1}, jsonrpc=False)
    {'id': 1, 'method': 'initialize', 'params': {'protocolVersion': 1}}
    """
    _check_id(id)
    _check_method(method)
    _check_params(params)
    out = _envelope(jsonrpc)
    out["id"] = id
    out["method"] = method
    if params is not None:
        out["params"] = params
    return out


def encode_notification(method: str, params: Any = None, *, jsonrpc: bool = True) -> dict[str, Any]:
    """A notification dict (a request without id); ``params`` left out when ``None``."""
    _check_method(method)
    _check_params(params)
    out = _envelope(jsonrpc)
    out["method"] = method
    if params is not None:
        out["params"] = params
    return out


def encode_result(id: RpcId, result: Any, *, jsonrpc: bool = True) -> dict[str, Any]:
    """A success response to the peer's request ``id``."""
    _check_id(id)
    out = _envelope(jsonrpc)
    out["id"] = id
    out["result"] = result
    return out


def encode_error(
    id: RpcId | None,
    code: int,
    message: str,
    data: Any = None,
    *,
    jsonrpc: bool = True,
) -> dict[str, Any]:
    """An error response to the peer's request ``id`` (``None`` if it was unreadable).

    >>> encode_error(7, METHOD_NOT_FOUND, "unknown method", jsonrpc=False)
    {'id': 7, 'error': {'code': -32601, 'message': 'unknown method'}}
    """
    if id is not None:
        _check_id(id)
    if not isinstance(code, int) or isinstance(code, bool):
        raise InvalidOption(f"a JSON-RPC error code must be an int, got {code!r}")
    if not isinstance(message, str):
        raise InvalidOption(f"a JSON-RPC error message must be a str, got {message!r}")
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    out = _envelope(jsonrpc)
    out["id"] = id
    out["error"] = error
    return out


# --- request bookkeeping ------------------------------------------------------------


class RequestIds:
    """Thread-safe allocator of ids for the requests *we* send: start, start+1, ...

    These ids only ever meet responses. The peer numbers its own requests to us
    independently (Codex starts at 0 too), which is why a message with a
    ``method`` is never looked up here.
    """

    def __init__(self, start: int = 0) -> None:
        """Allocate from ``start`` upwards."""
        self._counter = itertools.count(start)
        self._lock = threading.Lock()

    def next_id(self) -> int:
        """A fresh id, never returned before by this allocator."""
        with self._lock:
            return next(self._counter)


@attrs.frozen(unsafe_hash=False)
class PendingRequest(Generic[T]):
    """One of our requests still waiting for its response, and what the waiter attached."""

    id: int
    method: str
    token: T


class PendingRequests(Generic[T]):
    """Our outbound requests awaiting responses, matched by id.

    ``token`` is whatever the owner needs to finish the call (a future, a
    query ref, a callback). Only ``response``/``error_response`` messages are
    ever matched: a peer *request* carrying the same id as one of ours (both
    sides count from 0) is a different message in a different id space. Safe to
    use from several threads.
    """

    def __init__(self, ids: RequestIds | None = None) -> None:
        """Use ``ids`` to number requests (a fresh allocator from 0 by default)."""
        self._ids = ids if ids is not None else RequestIds()
        self._lock = threading.Lock()
        self._pending: dict[int, PendingRequest[T]] = {}

    def register(self, method: str, token: T) -> int:
        """Allocate an id for a request to ``method``, remember it, return the id."""
        request_id = self._ids.next_id()
        with self._lock:
            self._pending[request_id] = PendingRequest(request_id, method, token)
        return request_id

    def resolve(self, message: RpcMessage) -> PendingRequest[T] | None:
        """Pop and return the pending request ``message`` answers, if it answers one.

        Requests, notifications and invalid messages are never matched, even
        when their id equals a pending id; so are responses to unknown ids.
        """
        if message.kind not in (RpcKind.RESPONSE, RpcKind.ERROR_RESPONSE):
            return None
        if not isinstance(message.id, int) or isinstance(message.id, bool):
            return None
        with self._lock:
            return self._pending.pop(message.id, None)

    def cancel(self, request_id: int) -> PendingRequest[T] | None:
        """Forget a request (e.g. its caller timed out); a late response then matches nothing."""
        with self._lock:
            return self._pending.pop(request_id, None)

    def drain(self) -> list[PendingRequest[T]]:
        """Remove and return every pending request (the transport died: fail them all)."""
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        return pending

    def __contains__(self, request_id: object) -> bool:
        with self._lock:
            return request_id in self._pending

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


class InboundRequests:
    """Requests the peer sent us (approvals, permission prompts) that we have yet to answer.

    Keyed by the peer's ids, which are a separate space from ours
    (:class:`PendingRequests`). Safe to use from several threads.
    """

    def __init__(self) -> None:
        """An empty table."""
        self._lock = threading.Lock()
        self._open: dict[RpcId, RpcMessage] = {}

    def add(self, message: RpcMessage) -> None:
        """Remember a peer request until :meth:`pop`; rejects non-requests."""
        if message.kind is not RpcKind.REQUEST or message.id is None:
            raise InvalidOption(f"only a request with an id can be awaiting an answer: {message}")
        with self._lock:
            self._open[message.id] = message

    def pop(self, request_id: RpcId) -> RpcMessage | None:
        """Take the open request ``request_id`` out of the table (we are answering it)."""
        with self._lock:
            return self._open.pop(request_id, None)

    def drain(self) -> list[RpcMessage]:
        """Remove and return every open request (e.g. to decline them on interrupt)."""
        with self._lock:
            open_requests = list(self._open.values())
            self._open.clear()
        return open_requests

    def __contains__(self, request_id: object) -> bool:
        with self._lock:
            return request_id in self._open

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)
