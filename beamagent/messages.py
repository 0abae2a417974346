"""Canonical messages: the one shape every backend's output is normalized into.

A backend handler turns whatever its CLI or server sends into :class:`Message`
values with :func:`normalize`; sessions, the store and graphs only ever see
those. :meth:`Message.to_dict` / :meth:`Message.from_dict` are the stored form
(``from_dict`` is the exact inverse of ``to_dict``; wire data from a backend
goes through :func:`normalize` instead, which never raises).

    >>> m = normalize({"type": "result", "result": "4", "num_turns": 1}, now_ms=0)
    >>> (m.type, m.content, m.num_turns)
    (<MessageType.RESULT: 'result'>, '4', 1)

Messages hold canonical JSON only, whatever a backend sent: a non-finite
float (``NaN``, ``Infinity``, which Python's ``json`` accepts) becomes ``None``
inside mappings and lists and is refused (``InvalidOption``) as a number
field, and every string is valid Unicode (a surrogate pair is joined, a lone
surrogate becomes U+FFFD). So :meth:`Message.to_dict` is always
``json.dumps(..., allow_nan=False, ensure_ascii=False)``-able and UTF-8-encodable.
"""

from __future__ import annotations

import enum
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast

import attrs

from beamagent.errors import InvalidOption
from supervisors._ids import new_uuid4

__all__ = [
    "ContentBlock",
    "ContentBlockType",
    "Message",
    "MessageType",
    "StopReason",
    "normalize",
    "parse_stop_reason",
]


class MessageType(enum.StrEnum):
    """The closed set of canonical message types."""

    TEXT = "text"
    ASSISTANT = "assistant"
    TOOL_USE = "tool_use"
    TOOL_RESULT = "tool_result"
    SYSTEM = "system"
    RESULT = "result"
    ERROR = "error"
    USER = "user"
    CONTROL = "control"
    CONTROL_REQUEST = "control_request"
    CONTROL_RESPONSE = "control_response"
    STREAM_EVENT = "stream_event"
    RATE_LIMIT_EVENT = "rate_limit_event"
    TOOL_PROGRESS = "tool_progress"
    TOOL_USE_SUMMARY = "tool_use_summary"
    THINKING = "thinking"
    AUTH_STATUS = "auth_status"
    PROMPT_SUGGESTION = "prompt_suggestion"
    RAW = "raw"


class ContentBlockType(enum.StrEnum):
    """Kinds of content block; anything else a backend sends becomes ``RAW``."""

    TEXT = "text"
    THINKING = "thinking"
    TOOL_USE = "tool_use"
    TOOL_RESULT = "tool_result"
    RAW = "raw"


class StopReason(enum.StrEnum):
    """Why the model stopped, parsed from the backend's free-form ``stop_reason``."""

    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    REFUSAL = "refusal"
    TOOL_USE_STOP = "tool_use_stop"
    UNKNOWN_STOP = "unknown_stop"


_STOP_REASONS: Final[Mapping[str, StopReason]] = {
    "end_turn": StopReason.END_TURN,
    "max_tokens": StopReason.MAX_TOKENS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "refusal": StopReason.REFUSAL,
    "tool_use": StopReason.TOOL_USE_STOP,
}


def parse_stop_reason(stop_reason: str | None) -> StopReason | None:
    """Map a backend's stop reason to :class:`StopReason` (``None`` stays ``None``).

    >>> parse_stop_reason("tool_use")
    <StopReason.TOOL_USE_STOP: 'tool_use_stop'>
    """
    if stop_reason is None:
        return None
    return _STOP_REASONS.get(stop_reason, StopReason.UNKNOWN_STOP)


# --- JSON helpers -------------------------------------------------------------------


def _is_container(value: object) -> bool:
    kind = type(value)
    # Exact types first: what json.loads produces, and much cheaper than ABC checks.
    if kind is dict or kind is list or kind is tuple:
        return True
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return False
    return isinstance(value, Mapping | list | tuple)


def _is_mapping(value: object) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _valid_text(text: str) -> str:
    """``text`` as valid Unicode: surrogate pairs joined, lone surrogates U+FFFD.

    ``json.loads`` turns a ``\\ud800`` escape into a lone surrogate, which no
    UTF-8 encoder (SQLite's included) accepts.
    """
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _canonical_scalar(value: Any) -> Any:
    """A JSON scalar in canonical form: finite or ``None``, valid Unicode."""
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def _copy_json(value: Any) -> Any:
    """Deep-copy a JSON value into fresh dicts and lists (tuples become lists), canonically.

    Non-finite floats become ``None`` and strings (keys too) valid Unicode
    (see the module docstring). Iterative rather than recursive: anything
    ``json.loads`` accepted must be copyable, and a recursive copy uses more
    stack per level than the parser.
    """
    if not _is_container(value):
        return _canonical_scalar(value)
    root: Any = {} if _is_mapping(value) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        src, dst = stack.pop()
        items = src.items() if _is_mapping(src) else enumerate(src)
        into_dict = type(dst) is dict
        for key, item in items:
            kind = type(item)
            # Inline checks, cheapest first: this runs for every value of every message.
            if kind is str:
                copy: Any = item if item.isascii() else _valid_text(item)
            elif kind is int or kind is bool or item is None:
                copy = item
            elif _is_container(item):
                copy = {} if _is_mapping(item) else []
                stack.append((item, copy))
            else:
                copy = _canonical_scalar(item)
            if into_dict:
                if type(key) is str and not key.isascii():
                    key = _valid_text(key)
                dst[key] = copy
            else:
                dst.append(copy)
    return root


def _copy_mapping(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidOption(f"expected a mapping, got {type(value).__name__}")
    copied: dict[str, Any] = _copy_json(value)
    return copied


def _copy_sequence(value: Iterable[Any] | None) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise InvalidOption(f"expected a list, got {type(value).__name__}")
    return tuple(_copy_json(item) for item in value)


def _text_or_other(value: Any) -> Any:
    """attrs converter of str fields: a str made valid Unicode; anything else for the validator."""
    return _valid_text(value) if isinstance(value, str) else value


def _finite(*types: type) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """attrs validator: like :func:`_optional`, and a float must be finite (JSON has no NaN)."""
    check_type = _optional(*types)

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_type(instance, attribute, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidOption(
                f"{type(instance).__name__}.{attribute.name} must be a finite number or None, "
                f"got {value!r}"
            )

    return check


def _optional(*types: type) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """attrs validator: ``None`` or an instance of ``types`` (bool is not an int here)."""
    names = " or ".join(t.__name__ for t in types)

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            raise InvalidOption(
                f"{type(instance).__name__}.{attribute.name} must be {names} or None, "
                f"got {type(value).__name__}"
            )

    return check


def _to_block_type(value: ContentBlockType | str) -> ContentBlockType:
    try:
        return ContentBlockType(value)
    except ValueError:
        known = ", ".join(t.value for t in ContentBlockType)
        raise InvalidOption(f"unknown content block type {value!r}; known: {known}") from None


def _to_message_type(value: MessageType | str) -> MessageType:
    try:
        return MessageType(value)
    except ValueError:
        known = ", ".join(t.value for t in MessageType)
        raise InvalidOption(f"unknown message type {value!r}; known: {known}") from None


def _to_stop_reason(value: StopReason | str | None) -> StopReason | None:
    if value is None:
        return None
    try:
        return StopReason(value)
    except ValueError:
        known = ", ".join(t.value for t in StopReason)
        raise InvalidOption(f"unknown parsed stop reason {value!r}; known: {known}") from None


def _text_field() -> Any:
    return attrs.field(
        default=None, kw_only=True, converter=_text_or_other, validator=_optional(str)
    )


# --- content blocks -----------------------------------------------------------------


# No weakref slot: see _OpenBlock (blocks are values; nothing refers to one weakly).
@attrs.frozen(unsafe_hash=False, weakref_slot=False)
class ContentBlock:
    """One block of an assistant or user message (text, thinking, tool use, tool result).

    Blocks of a kind we do not model (images, server tool use, ...) are kept
    whole as ``type=RAW`` with the original mapping in ``raw``.
    """

    type: ContentBlockType = attrs.field(converter=_to_block_type)
    text: str | None = _text_field()
    thinking: str | None = _text_field()
    id: str | None = _text_field()
    name: str | None = _text_field()
    input: dict[str, Any] | None = attrs.field(default=None, kw_only=True, converter=_copy_mapping)
    tool_use_id: str | None = _text_field()
    #: A tool result's content: a string or a list of blocks, as the backend sent it.
    content: Any = attrs.field(default=None, kw_only=True, converter=_copy_json)
    is_error: bool | None = attrs.field(default=None, kw_only=True, validator=_optional(bool))
    raw: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping, repr=False
    )

    @classmethod
    def from_dict(cls, block: object) -> ContentBlock:
        """Build a block from a backend's (or :meth:`to_dict`'s) mapping; never raises.

        Fields of the wrong type are dropped; an unknown ``type`` gives a
        ``RAW`` block holding the original mapping, a non-mapping gives a
        ``RAW`` block with ``raw={"value": block}``. (``"raw"`` itself is a
        known type: that is how :meth:`to_dict` writes a raw block.)
        """
        # One deep copy of the whole block, then every field is taken from the copy.
        return _owned_block(_copy_json(block))

    def to_dict(self, *, copy: bool = True) -> dict[str, Any]:
        """The block as a JSON-serialisable dict, ``None`` fields left out.

        ``copy=False`` shares nested values with the block, as in :meth:`Message.to_dict`.
        """
        out: dict[str, Any] = {"type": self.type.value}
        for field, value in zip(_BLOCK_FIELDS, _block_values(self), strict=True):
            if value is not None:
                out[field] = _copy_json(value) if copy else value
        return out


_BLOCK_TYPES: Final[Mapping[str, ContentBlockType]] = {t.value: t for t in ContentBlockType}
_BLOCK_FIELDS: Final[tuple[str, ...]] = tuple(
    f.name for f in attrs.fields(ContentBlock) if f.name != "type"
)
_block_values = operator.attrgetter(*_BLOCK_FIELDS)


# --- trusted construction -----------------------------------------------------------
#
# The attrs constructors copy every mapping and validate every field: right for values
# a caller passes in, wasted on values the library has just built itself. The builders
# below fill the slots directly. They are private, and their callers guarantee two
# things: every value already has its field's type (``normalize`` picks each field with
# a type check), and every mutable value is owned by the new instance, i.e. nobody
# outside holds it (a deep copy made for it, or JSON parsed for it and handed over).


def _slot_setters(cls: type) -> tuple[tuple[str, Callable[[Any, Any], None]], ...]:
    # Setting the slot descriptors directly skips the frozen class's __setattr__.
    return tuple((f.name, getattr(cls, f.name).__set__) for f in attrs.fields(cls))


_BLOCK_SETTERS: Final = _slot_setters(ContentBlock)


def _build_block(kind: ContentBlockType, fields: Mapping[str, Any]) -> ContentBlock:
    block: ContentBlock = object.__new__(ContentBlock)
    get = fields.get
    for name, set_slot in _BLOCK_SETTERS:
        set_slot(block, get(name))
    _BLOCK_SETTERS[0][1](block, kind)
    return block


class _OpenBlock:
    """A :class:`ContentBlock` under construction: the same slots, but plain ones.

    Set through ``STORE_ATTR`` rather than the frozen class's slot descriptors, then
    made a ``ContentBlock`` by assigning ``__class__`` (see :class:`_OpenMessage`).
    """

    __slots__ = tuple(f.name for f in attrs.fields(ContentBlock))


def _text_block(text: str) -> ContentBlock:
    """``_build_block(ContentBlockType.TEXT, {"text": text})``, without the mapping.

    One per assistant message of ``local``: plain stores, 0.2 us; through the frozen
    class's ten slot descriptors it was 0.6 us.
    """
    block: Any = object.__new__(_OpenBlock)
    block.type = ContentBlockType.TEXT
    block.text = text
    block.thinking = None
    block.id = None
    block.name = None
    block.input = None
    block.tool_use_id = None
    block.content = None
    block.is_error = None
    block.raw = None
    block.__class__ = ContentBlock
    return cast(ContentBlock, block)


assert _text_block("x") == _build_block(ContentBlockType.TEXT, {"text": "x"}), "every field"


def _owned_block(block: object) -> ContentBlock:
    """:meth:`ContentBlock.from_dict` of a value the caller hands over (see above)."""
    if not isinstance(block, Mapping):
        return _build_block(ContentBlockType.RAW, {"raw": {"value": block}})
    kind = block.get("type")
    if not isinstance(kind, str) or kind not in _BLOCK_TYPES:
        return _build_block(ContentBlockType.RAW, {"raw": block})
    fields: dict[str, Any] = {}
    for key in block.keys() & _BLOCK_ACCEPT.keys():
        value = block[key]
        if value is not None and _BLOCK_ACCEPT[key](value):
            fields[key] = value  # fields of the wrong type are dropped
    return _build_block(_BLOCK_TYPES[kind], fields)


def _to_blocks(
    value: Iterable[ContentBlock | Mapping[str, Any]] | None,
) -> tuple[ContentBlock, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise InvalidOption(f"content_blocks must be a list, got {type(value).__name__}")
    return tuple(b if isinstance(b, ContentBlock) else ContentBlock.from_dict(b) for b in value)


# --- messages -----------------------------------------------------------------------


def _field(validator: Callable[[Any, attrs.Attribute[Any], Any], None]) -> Any:
    return attrs.field(default=None, kw_only=True, validator=validator)


def _default_stop_reason_parsed(message: Message) -> StopReason | None:
    return parse_stop_reason(message.stop_reason)


# No weakref slot: see _OpenMessage (messages are values; nothing refers to one weakly).
@attrs.frozen(unsafe_hash=False, weakref_slot=False)
class Message:
    """A canonical message: ``type`` plus whichever optional fields apply.

    Mapping and list fields are private deep copies of what was passed in
    (plain dicts and lists in canonical form, so they stay JSON-serialisable:
    non-finite floats become ``None``, strings valid Unicode); treat them as
    read-only (a message from :func:`normalize` shares nested values between
    its fields and ``raw``, never with the caller). ``stop_reason_parsed``
    defaults to the parse of ``stop_reason``.

    Raises:
        InvalidOption: a field has the wrong type, or a number field is not finite.

        >>> Message("text", content="hi").to_dict()["type"]
        'text'
    """

    type: MessageType = attrs.field(converter=_to_message_type)
    content: str | None = _text_field()
    content_blocks: tuple[ContentBlock, ...] = attrs.field(
        default=(), kw_only=True, converter=_to_blocks
    )
    tool_name: str | None = _text_field()
    tool_input: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping
    )
    tool_use_id: str | None = _text_field()
    parent_tool_use_id: str | None = _text_field()
    uuid: str | None = _text_field()
    session_id: str | None = _text_field()
    message_id: str | None = _text_field()
    model: str | None = _text_field()
    usage: dict[str, Any] | None = attrs.field(default=None, kw_only=True, converter=_copy_mapping)
    model_usage: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping
    )
    stop_reason: str | None = _text_field()
    stop_reason_parsed: StopReason | None = attrs.field(
        default=attrs.Factory(_default_stop_reason_parsed, takes_self=True),
        kw_only=True,
        converter=_to_stop_reason,
    )
    is_error: bool | None = _field(_optional(bool))
    subtype: str | None = _text_field()
    duration_ms: float | None = _field(_finite(int, float))
    duration_api_ms: float | None = _field(_finite(int, float))
    num_turns: int | None = _field(_optional(int))
    total_cost_usd: float | None = _field(_finite(int, float))
    errors: tuple[Any, ...] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_sequence
    )
    #: Any JSON value the backend produced for a structured-output request.
    structured_output: Any = attrs.field(default=None, kw_only=True, converter=_copy_json)
    permission_denials: tuple[Any, ...] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_sequence
    )
    error_info: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping
    )
    system_info: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping
    )
    request_id: str | int | None = attrs.field(
        default=None, kw_only=True, converter=_text_or_other, validator=_optional(str, int)
    )
    request: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping
    )
    response: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping
    )
    rate_limit_info: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping
    )
    thread_id: str | None = _text_field()
    #: Milliseconds since the epoch.
    timestamp: int | None = _field(_optional(int))
    #: The backend's original mapping (left out of repr: it can be large).
    raw: dict[str, Any] | None = attrs.field(
        default=None, kw_only=True, converter=_copy_mapping, repr=False
    )
    # Not a field of the message (not in to_dict, eq or repr): whether the library built
    # it from values known to be JSON (a decoder's parse, the local agent's own values),
    # so a store may keep it as it is instead of encoding it to check it (see
    # ``is_json_native``). Only the trusted builders set it; anything else (the
    # constructor, ``attrs.evolve``, ``from_dict``) leaves it False.
    _json_native: bool = attrs.field(default=False, init=False, eq=False, repr=False)

    @property
    def is_json_native(self) -> bool:
        """Whether the library built this message from JSON values only (private use).

        Such a message's :meth:`to_dict` is exactly its JSON round trip: every mapping
        key a str, every value a JSON scalar, list or mapping, canonical (finite floats,
        valid Unicode). Messages built any other way answer False, and a store checks
        them by encoding them.
        """
        return self._json_native

    def to_dict(self, *, copy: bool = True) -> dict[str, Any]:
        """The message as a JSON-serialisable dict: ``None`` fields (and no blocks) left out.

        With ``copy=False`` nested values are shared with the message: cheaper,
        for callers that only read or serialise the result (e.g. the store).
        """
        out: dict[str, Any] = {"type": self.type.value}
        for name, value in zip(_MESSAGE_FIELDS, _message_values(self), strict=True):
            if value is None:
                continue
            if name == "content_blocks":
                if value:
                    out[name] = [block.to_dict(copy=copy) for block in value]
            elif isinstance(value, enum.Enum):
                out[name] = value.value
            else:
                out[name] = _copy_json(value) if copy else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Rebuild a message from :meth:`to_dict`'s output (unknown keys are ignored).

        Raises :class:`~beamagent.errors.InvalidOption` when ``type`` is missing
        or a field has the wrong type. Use :func:`normalize` for backend data.
        """
        if not isinstance(data, Mapping):
            raise InvalidOption(f"a message must be a mapping, got {type(data).__name__}")
        if "type" not in data:
            raise InvalidOption("a message mapping needs a 'type' key")
        kwargs = {name: data[name] for name in _MESSAGE_FIELDS if name in data}
        # to_dict omits a None stop_reason_parsed, so absence must mean None here, not
        # "derive it from stop_reason" (that would break the round trip).
        kwargs.setdefault("stop_reason_parsed", None)
        return cls(data["type"], **kwargs)

    def with_fields(self, **changes: Any) -> Message:
        """A copy with ``changes`` applied (``attrs.evolve``), e.g. to stamp ``session_id``.

        Changing ``stop_reason`` re-derives ``stop_reason_parsed`` unless it is
        given too.
        """
        if "stop_reason" in changes and "stop_reason_parsed" not in changes:
            changes["stop_reason_parsed"] = parse_stop_reason(changes["stop_reason"])
        if changes.keys() <= _SIMPLE_STR_FIELDS:
            # Stamping ids is on every message's path: skip re-converting every field
            # (the clone shares this message's values, read-only by contract, as a
            # shallow copy would).
            values = list(_all_message_values(self))
            for name, value in changes.items():
                if value is not None and (type(value) is not str or not value.isascii()):
                    break  # let the converters and validators deal with it
                values[_FIELD_INDEX[name]] = value
            else:
                clone: Message = object.__new__(Message)
                for set_slot, value in zip(_ALL_SLOT_SETS, values, strict=True):
                    set_slot(clone, value)
                return clone
        return attrs.evolve(self, **changes)


_MESSAGE_FIELDS: Final[tuple[str, ...]] = tuple(
    f.name for f in attrs.fields(Message) if f.name not in ("type", "_json_native")
)
_ALL_MESSAGE_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in attrs.fields(Message))
_message_values = operator.attrgetter(*_MESSAGE_FIELDS)
_all_message_values = operator.attrgetter(*_ALL_MESSAGE_FIELDS)
_FIELD_INDEX: Final[Mapping[str, int]] = {name: i for i, name in enumerate(_ALL_MESSAGE_FIELDS)}
_MESSAGE_SETTERS: Final = _slot_setters(Message)[1:-1]  # all but ``type`` and the flag
assert _ALL_MESSAGE_FIELDS[-1] == "_json_native"
_ALL_SLOT_SETS: Final = tuple(set_slot for _name, set_slot in _slot_setters(Message))


def _build_message(
    kind: MessageType, fields: Mapping[str, Any], *, json_native: bool = False
) -> Message:
    """A message from ``fields`` as they are (see "trusted construction" above).

    Absent fields are ``None``, except ``content_blocks`` (a tuple; default ``()``) and
    ``stop_reason_parsed`` (default: parsed from ``stop_reason``). ``json_native=True``
    is the caller's promise that every value is canonical JSON (str keys, JSON scalars,
    finite floats, valid Unicode; tuples stand for lists): see ``Message.is_json_native``.
    """
    return _new_message(kind, json_native, **fields)


_UNSET: Final[Any] = object()


class _OpenMessage:
    """A :class:`Message` under construction: the same slots, but plain ones.

    A frozen class's slots are set through descriptor calls (``__setattr__`` refuses);
    a plain class's through ``STORE_ATTR``, several times cheaper. The builder fills one
    of these and then makes it a ``Message`` by assigning ``__class__``, which CPython
    allows between classes whose instances have the same layout: same base, same slot
    names, no ``__dict__`` (and no ``__weakref__``: CPython's check does not place it
    there, which is why ``Message`` has no weakref slot).
    """

    __slots__ = tuple(f.name for f in attrs.fields(Message))


def _slot_filler() -> Callable[..., Message]:
    """``build(kind, json_native, **fields)``: a new message with every slot set.

    Generated, as attrs generates ``__init__``: one parameter per field (absent ones
    default to ``None``; pass them by keyword) and one slot store per line, on an
    :class:`_OpenMessage` turned into a ``Message`` at the end (every library message is
    built here). The fields are not keyword-only: CPython fills a missing keyword-only
    parameter's default with a dict lookup, a positional one's from a tuple, and a
    message passes about six of its 32 fields (0.56 us vs 0.71 us a message).
    """
    namespace: dict[str, Any] = {
        "_UNSET": _UNSET,
        "parse": parse_stop_reason,
        "new": object.__new__,
        "Open": _OpenMessage,
        "Message": Message,
    }
    params, lines = [], []
    for name, _set_slot in _MESSAGE_SETTERS:
        default = {"content_blocks": "()", "stop_reason_parsed": "_UNSET"}.get(name, "None")
        params.append(f"{name}={default}")
        if name == "stop_reason_parsed":
            lines.append(f"    if {name} is _UNSET:\n        {name} = parse(stop_reason)")
        lines.append(f"    m.{name} = {name}")
    source = (
        f"def build(kind, json_native, {', '.join(params)}):\n"
        "    m = new(Open)\n    m.type = kind\n    m._json_native = json_native\n"
        + "\n".join(lines)
        + "\n    m.__class__ = Message\n    return m\n"
    )
    exec(source, namespace)  # the source holds the field names above, nothing else
    build: Callable[..., Message] = namespace["build"]
    return build


_new_message: Final = _slot_filler()
assert type(_new_message(MessageType.RAW, False)) is Message, "the layouts must match"
_SIMPLE_STR_FIELDS: Final[frozenset[str]] = frozenset(
    {"session_id", "thread_id", "uuid", "message_id", "model", "parent_tool_use_id"}
)


_new_uuid: Final = new_uuid4
"""``str(uuid.uuid4())``, made ahead in batches (see :func:`supervisors._ids.new_uuid4`).

The local agent and the session stamp every message they build with one, so it is on
every query's path.
"""


# --- normalization ------------------------------------------------------------------


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_list(value: object) -> bool:
    return isinstance(value, list | tuple)


def _is_request_id(value: object) -> bool:
    return isinstance(value, str) or _is_int(value)


def _is_present(value: object) -> bool:
    return value is not None


def _pick(mapping: Mapping[str, Any], accept: Callable[[object], bool], *keys: str) -> Any:
    """The first of ``keys`` whose value passes ``accept``; wrong types are skipped."""
    for key in keys:
        value = mapping.get(key)
        if value is not None and accept(value):
            return value
    return None


_BLOCK_ACCEPT: Final[Mapping[str, Callable[[object], bool]]] = {
    "text": _is_str,
    "thinking": _is_str,
    "id": _is_str,
    "name": _is_str,
    "input": _is_mapping,
    "tool_use_id": _is_str,
    "content": _is_present,
    "is_error": _is_bool,
    "raw": _is_mapping,
}
assert _BLOCK_ACCEPT.keys() == set(_BLOCK_FIELDS)


def _as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# Canonical field -> (accepted type, keys to look for, snake_case first). The camelCase
# spellings are those the CLIs use (Claude's modelUsage, ACP/Codex sessionId, threadId).
_COMMON_FIELDS: Final[tuple[tuple[str, Callable[[object], bool], tuple[str, ...]], ...]] = (
    ("content", _is_str, ("content",)),
    ("uuid", _is_str, ("uuid",)),
    ("session_id", _is_str, ("session_id", "sessionId", "sessionID")),
    ("parent_tool_use_id", _is_str, ("parent_tool_use_id", "parentToolUseId")),
    ("tool_use_id", _is_str, ("tool_use_id", "toolUseId")),
    ("tool_name", _is_str, ("tool_name", "toolName")),
    ("tool_input", _is_mapping, ("tool_input", "toolInput")),
    ("message_id", _is_str, ("message_id", "messageId")),
    ("model", _is_str, ("model",)),
    ("usage", _is_mapping, ("usage",)),
    ("model_usage", _is_mapping, ("model_usage", "modelUsage")),
    ("stop_reason", _is_str, ("stop_reason", "stopReason")),
    ("is_error", _is_bool, ("is_error", "isError")),
    ("subtype", _is_str, ("subtype",)),
    ("duration_ms", _is_number, ("duration_ms", "durationMs")),
    ("duration_api_ms", _is_number, ("duration_api_ms", "durationApiMs")),
    ("num_turns", _is_int, ("num_turns", "numTurns")),
    ("total_cost_usd", _is_number, ("total_cost_usd", "totalCostUsd")),
    ("errors", _is_list, ("errors",)),
    ("structured_output", _is_present, ("structured_output", "structuredOutput")),
    ("permission_denials", _is_list, ("permission_denials", "permissionDenials")),
    ("error_info", _is_mapping, ("error_info", "errorInfo")),
    ("system_info", _is_mapping, ("system_info", "systemInfo")),
    ("request_id", _is_request_id, ("request_id", "requestId")),
    ("request", _is_mapping, ("request",)),
    ("response", _is_mapping, ("response",)),
    ("rate_limit_info", _is_mapping, ("rate_limit_info", "rateLimitInfo")),
    ("thread_id", _is_str, ("thread_id", "threadId")),
)

# Key -> (canonical field, accepted type, rank of this spelling: lower wins).
_COMMON_KEY_PLAN: Final[Mapping[str, tuple[str, Callable[[object], bool], int]]] = {
    key: (name, accept, rank)
    for name, accept, spelled in _COMMON_FIELDS
    for rank, key in enumerate(spelled)
}
assert len(_COMMON_KEY_PLAN) == sum(len(keys) for _n, _a, keys in _COMMON_FIELDS), "a shared key"
_COMMON_KEYS: Final[frozenset[str]] = frozenset(_COMMON_KEY_PLAN)

# system/init keys the CLIs spell in camelCase, and their canonical names.
_SYSTEM_INFO_KEYS: Final[Mapping[str, str]] = {
    "permissionMode": "permission_mode",
    "apiKeySource": "api_key_source",
    "outputStyle": "output_style",
    "sessionId": "session_id",
    "mcpServers": "mcp_servers",
    "slashCommands": "slash_commands",
}


def _blocks_from(value: object) -> list[ContentBlock]:
    if not isinstance(value, list | tuple):
        return []
    return [_owned_block(item) for item in value]


def _joined_text(blocks: Iterable[ContentBlock]) -> str | None:
    texts = [b.text for b in blocks if b.type is ContentBlockType.TEXT and b.text is not None]
    return "".join(texts) if texts else None


def _system_info(mapping: Mapping[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in ("type", "subtype"):
            continue
        canonical = _SYSTEM_INFO_KEYS.get(key, key)
        # The snake_case spelling wins when both are present.
        if canonical != key and canonical in mapping:
            continue
        info[canonical] = value
    version = _pick(mapping, _is_str, "version", "claude_code_version")
    if version is not None:
        info["version"] = version
    return info


def _conversation_fields(mapping: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """assistant/user: blocks from ``content`` or ``message.content``, metadata from ``message``."""
    inner = _as_mapping(mapping.get("message"))
    raw_content = mapping.get("content")
    if not isinstance(raw_content, list | tuple | str):
        raw_content = inner.get("content")
    if isinstance(raw_content, str):
        fields["content"] = raw_content
    else:
        blocks = _blocks_from(raw_content)
        fields["content_blocks"] = blocks
        fields["content"] = _joined_text(blocks)
    for name, accept, key in (
        ("usage", _is_mapping, "usage"),
        ("model", _is_str, "model"),
        ("message_id", _is_str, "id"),
        ("stop_reason", _is_str, "stop_reason"),
    ):
        value = _pick(inner, accept, key)
        if value is not None:
            fields[name] = value


def _type_specific(kind: MessageType, mapping: Mapping[str, Any], fields: dict[str, Any]) -> None:
    if kind is MessageType.RESULT:
        fields["content"] = _pick(mapping, _is_str, "result", "content")
    elif kind in (MessageType.ASSISTANT, MessageType.USER):
        _conversation_fields(mapping, fields)
    elif kind is MessageType.SYSTEM:
        if mapping.get("subtype") == "init":
            fields["system_info"] = _system_info(mapping)
    elif kind is MessageType.TEXT:
        fields["content"] = _pick(mapping, _is_str, "text", "content")
    elif kind is MessageType.THINKING:
        fields["content"] = _pick(mapping, _is_str, "thinking", "text", "content")
    elif kind is MessageType.TOOL_USE:
        fields["tool_name"] = _pick(mapping, _is_str, "tool_name", "toolName", "name")
        fields["tool_input"] = _pick(mapping, _is_mapping, "tool_input", "toolInput", "input")
        fields["tool_use_id"] = _pick(mapping, _is_str, "tool_use_id", "toolUseId", "id")
    elif kind is MessageType.TOOL_RESULT:
        content = mapping.get("content")
        if isinstance(content, list | tuple):
            blocks = _blocks_from(content)
            fields["content_blocks"] = blocks
            fields["content"] = _joined_text(blocks)
    elif kind is MessageType.ERROR:
        error = mapping.get("error")
        fields["content"] = _pick(mapping, _is_str, "error", "message", "content") or _pick(
            _as_mapping(error), _is_str, "message"
        )
        if fields.get("error_info") is None and isinstance(error, Mapping):
            fields["error_info"] = error
    elif kind is MessageType.CONTROL_REQUEST:
        request = _as_mapping(mapping.get("request"))
        for name, accept, key in (
            ("subtype", _is_str, "subtype"),
            ("tool_name", _is_str, "tool_name"),
            ("tool_input", _is_mapping, "input"),
            ("tool_use_id", _is_str, "tool_use_id"),
        ):
            if fields.get(name) is None:
                fields[name] = _pick(request, accept, key)
    elif kind is MessageType.CONTROL_RESPONSE:
        # Claude puts the request_id inside "response"; accept it at top level too.
        response = _as_mapping(mapping.get("response"))
        if fields.get("request_id") is None:
            fields["request_id"] = _pick(response, _is_request_id, "request_id", "requestId")
        if fields.get("subtype") is None:
            fields["subtype"] = _pick(response, _is_str, "subtype")
    elif kind is MessageType.STREAM_EVENT:
        delta = _as_mapping(_as_mapping(mapping.get("event")).get("delta"))
        if delta.get("type") == "text_delta":
            fields["content"] = _pick(delta, _is_str, "text")
    elif kind is MessageType.TOOL_USE_SUMMARY:
        fields["content"] = _pick(mapping, _is_str, "summary", "content")
    elif kind is MessageType.PROMPT_SUGGESTION:
        fields["content"] = _pick(mapping, _is_str, "suggestion", "content")


def normalize(mapping: Mapping[str, Any], *, now_ms: int | None = None) -> Message:
    """Turn one backend mapping (a parsed JSON object) into a :class:`Message`; never raises.

    A missing or unknown ``type`` gives ``MessageType.RAW``. Values of the
    wrong type for a field are dropped (the original stays in ``raw``), and so
    are non-finite numbers; inside mappings and lists (``raw`` included) they
    become ``None``, and lone surrogates in strings U+FFFD.
    ``timestamp`` is the mapping's integer ``timestamp`` if it has one, else
    ``now_ms``, else the current time in milliseconds.
    """
    # One deep copy of the whole input: every field is then taken from the copy, which
    # nobody else holds, so no field needs a copy of its own (see "trusted construction").
    owned = _copy_json(mapping) if isinstance(mapping, Mapping) else {"value": _copy_json(mapping)}
    return _normalize_owned(owned, now_ms=now_ms)


def _normalize_owned(
    mapping: dict[str, Any],
    *,
    now_ms: int | None = None,
    session_id: str | None = None,
    json_native: bool = False,
) -> Message:
    """:func:`normalize` of a dict the caller hands over: no copies, nothing re-validated.

    For the library's own decoders only, with a dict their parser just returned and
    nobody else holds, in canonical form (no non-finite float, no lone surrogate: see
    ``beamagent.backends.jsonl``): the message keeps it as ``raw`` and shares its
    nested values.
    Anything else goes through :func:`normalize`. A ``session_id`` (a str: the
    canonical id a handler knows) replaces the backend's, saving the session a copy.
    ``json_native=True``: ``mapping`` is a JSON decoder's output (not just a copy of
    one), so the message is marked as built from JSON values only.
    """
    if type(mapping) is not dict:
        message = normalize(mapping, now_ms=now_ms)
        return message if session_id is None else message.with_fields(session_id=session_id)
    kind_name = mapping.get("type")
    kind = MessageType.RAW
    if isinstance(kind_name, str) and kind_name in _MESSAGE_TYPES:
        kind = _MESSAGE_TYPES[kind_name]

    fields: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    # Visit only the keys the mapping has (most messages have a handful). Of two
    # spellings of one field, the first listed in _COMMON_FIELDS wins if its type is right.
    for key in mapping.keys() & _COMMON_KEYS:
        name, accept, rank = _COMMON_KEY_PLAN[key]
        value = mapping[key]
        if value is not None and accept(value) and ranks.setdefault(name, rank) >= rank:
            fields[name] = value
            ranks[name] = rank
    _type_specific(kind, mapping, fields)

    timestamp = mapping.get("timestamp")
    if not _is_int(timestamp):
        if now_ms is None:
            timestamp = time.time_ns() // 1_000_000
        elif _is_int(now_ms):
            timestamp = now_ms
        else:
            raise InvalidOption(f"now_ms must be an int or None, got {type(now_ms).__name__}")
    fields["timestamp"] = timestamp
    fields["raw"] = mapping
    if session_id is not None:
        fields["session_id"] = session_id
    for name in _TUPLE_FIELDS:
        value = fields.get(name)
        if value is not None:
            fields[name] = tuple(value)
    return _build_message(kind, fields, json_native=json_native)


_TUPLE_FIELDS: Final = ("content_blocks", "errors", "permission_denials")


_MESSAGE_TYPES: Final[Mapping[str, MessageType]] = {t.value: t for t in MessageType}
