"""Structured outputs a node declares, their JSON schema, and conditions over them.

A :class:`~beamagent.graph.router.Router` declares the :class:`Output` values a
node must produce; :func:`outputs_schema` turns them into the JSON schema of
the whole structured answer a model is asked for; a :class:`Condition` tests
one produced value (the building block of edge routers).

>>> Output("score", "int", min=0, max=10).to_json_schema()["type"]
'integer'
>>> Condition("score", "gte", "7").check({"score": 8}, types={"score": "int"})
True
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "Condition",
    "ConditionOp",
    "Output",
    "OutputType",
    "outputs_schema",
]

_TRUE_WORDS = frozenset({"true", "1"})
_FALSE_WORDS = frozenset({"false", "0"})


class OutputType(enum.StrEnum):
    """The type of one structured output."""

    STRING = "string"
    INT = "int"
    BOOL = "bool"
    ENUM = "enum"

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as this type, or raise ``ValueError`` saying what was expected.

        ``int`` takes ints, integral floats and decimal strings (not bools);
        ``bool`` takes bools, ``0``/``1`` and the strings ``true``/``false``/``1``/``0``
        (any case); ``string`` and ``enum`` take strings and write numbers and
        bools as text (``true``/``false``), but refuse lists and objects.

        >>> OutputType.INT.coerce(" 3 "), OutputType.BOOL.coerce("TRUE")
        (3, True)
        """
        if self is OutputType.INT:
            return _to_int(value)
        if self is OutputType.BOOL:
            return _to_bool(value)
        return _to_str(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError(f"expected a boolean (true or false), got {value!r}")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ValueError(f"expected a string, got {value!r}")


def _to_output_type(value: OutputType | str) -> OutputType:
    if isinstance(value, OutputType):
        return value
    if isinstance(value, str):
        try:
            return OutputType(value.strip().lower())
        except ValueError:
            pass
    known = ", ".join(t.value for t in OutputType)
    raise ValueError(f"unknown output type {value!r}; known types: {known}")


def _to_choices(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        # A lone string is almost always a mistake for a one-item list.
        raise ValueError(f"choices must be a list of strings, got the string {value!r}")
    return tuple(value)


def _optional_int(value: Any, name: str) -> None:
    if value is not None and type(value) is not int:
        raise ValueError(f"{name} must be an int, got {value!r}")


@attrs.frozen
class Output:
    """One declared structured output of a node, optionally with its produced ``value``.

    ``min``/``max`` apply to ``int`` outputs and ``choices`` (required) to
    ``enum`` outputs; giving them for another type is an error. ``type`` may
    be given as a string (``"int"``).

    Raises:
        ValueError: a key that is not a non-empty string, or meta that does
            not fit the type (``min > max``, an enum without choices, ...).
    """

    key: str
    type: OutputType = attrs.field(default=OutputType.STRING, converter=_to_output_type)
    description: str = ""
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] | None = attrs.field(default=None, converter=_to_choices)
    value: Any = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"an output key must be a non-empty string, got {self.key!r}")
        where = f"output {self.key!r}"
        if not isinstance(self.description, str):
            raise ValueError(f"{where}: description must be a string")
        _optional_int(self.min, f"{where}: min")
        _optional_int(self.max, f"{where}: max")
        if (self.min is not None or self.max is not None) and self.type is not OutputType.INT:
            raise ValueError(f"{where}: min/max only apply to int outputs")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{where}: min {self.min} is greater than max {self.max}")
        if self.type is OutputType.ENUM:
            if not self.choices:
                raise ValueError(f"{where}: an enum output needs a non-empty list of choices")
            if not all(isinstance(c, str) for c in self.choices):
                raise ValueError(f"{where}: choices must be strings")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"{where}: choices must not repeat")
        elif self.choices is not None:
            raise ValueError(f"{where}: choices only apply to enum outputs")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Output:
        """Build an output from its JSON form (keys: key, type, description, min, max, choices).

        Raises:
            ValueError: not an object, an unknown key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an output must be an object, got {data!r}")
        unknown = set(data) - {"key", "type", "description", "min", "max", "choices"}
        if unknown:
            raise ValueError(f"unknown output keys: {', '.join(sorted(map(str, unknown)))}")
        if "key" not in data:
            raise ValueError("an output needs a 'key'")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def with_value(self, value: Any) -> Output:
        """A copy of this output holding ``value``."""
        return attrs.evolve(self, value=value)

    def check_value(self, value: Any) -> Any:
        """Return ``value`` coerced to this output's type, checked against min/max/choices.

        ``None`` is allowed (a model may leave an output empty) and returned as is.

        Raises:
            ValueError: the value cannot be read as this type or is out of range;
                the message names the output (``outputs.<key>``).
        """
        if value is None:
            return None
        where = f"outputs.{self.key}"
        try:
            coerced = self.type.coerce(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if self.min is not None and coerced < self.min:
            raise ValueError(f"{where}: {coerced} is below the minimum {self.min}")
        if self.max is not None and coerced > self.max:
            raise ValueError(f"{where}: {coerced} is above the maximum {self.max}")
        if self.choices is not None and coerced not in self.choices:
            raise ValueError(f"{where}: {coerced!r} is not one of {', '.join(self.choices)}")
        return coerced

    def to_json_schema(self) -> dict[str, Any]:
        """The JSON schema of this output's value, titled ``outputs.<key>``.

        >>> Output("verdict", "enum", choices=["ok", "bad"]).to_json_schema()["enum"]
        ['ok', 'bad']
        """
        schema: dict[str, Any] = {"title": f"outputs.{self.key}", "description": self.description}
        if self.type is OutputType.INT:
            schema["type"] = "integer"
            if self.min is not None:
                schema["minimum"] = self.min
            if self.max is not None:
                schema["maximum"] = self.max
        elif self.type is OutputType.BOOL:
            schema["type"] = "boolean"
        elif self.type is OutputType.ENUM:
            schema["type"] = "string"
            schema["enum"] = list(self.choices or ())
        else:
            schema["type"] = "string"
        return schema


def outputs_schema(outputs: Iterable[Output]) -> dict[str, Any]:
    """The JSON schema of a node's whole structured answer.

    ``{"body": str, "outputs": {<declared keys, all required>}, "next": [entries],
    "tool_calls": [{"id", "name", "arguments"}]}``. This is the schema a
    model-backed serving asks the model to answer in; ``next`` entries are the
    ones :func:`~beamagent.graph.instructions.parse_next` reads.
    """
    declared = list(outputs)
    return {
        "type": "object",
        "properties": {
            "body": {"type": "string", "description": "The answer itself, as text."},
            "outputs": {
                "type": "object",
                "properties": {o.key: o.to_json_schema() for o in declared},
                "required": [o.key for o in declared],
                "additionalProperties": False,
            },
            "next": {
                "type": "array",
                "description": "Optional: where the work goes next. Leave empty to use the "
                "default routing.",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {
                            "type": "string",
                            "enum": ["route", "yield", "sub", "end", "retry"],
                        },
                        "value": {
                            "type": "string",
                            "description": "The node id (route, yield), job id (sub) or "
                            "reason (retry).",
                        },
                        "count": {"type": "integer", "minimum": 1},
                    },
                    "required": ["type"],
                },
            },
            "tool_calls": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "arguments": {"type": "object"},
                    },
                    "required": ["name", "arguments"],
                },
            },
        },
        "required": ["body", "outputs", "next", "tool_calls"],
        "additionalProperties": False,
    }


class ConditionOp(enum.StrEnum):
    """A comparison of a :class:`Condition`."""

    EQ = "eq"
    NEQ = "neq"
    GT = "gt"
    LT = "lt"
    GTE = "gte"
    LTE = "lte"


_COMPARE: dict[ConditionOp, Callable[[Any, Any], bool]] = {
    ConditionOp.EQ: operator.eq,
    ConditionOp.NEQ: operator.ne,
    ConditionOp.GT: operator.gt,
    ConditionOp.LT: operator.lt,
    ConditionOp.GTE: operator.ge,
    ConditionOp.LTE: operator.le,
}


def _to_condition_op(value: ConditionOp | str) -> ConditionOp:
    if isinstance(value, ConditionOp):
        return value
    if isinstance(value, str):
        try:
            return ConditionOp(value.strip().lower())
        except ValueError:
            pass
    known = ", ".join(op.value for op in ConditionOp)
    raise ValueError(f"unknown condition op {value!r}; known ops: {known}")


@attrs.frozen
class Condition:
    """``<output key> <op> <value>``; ``op`` is one of eq, neq, gt, lt, gte, lte.

    >>> Condition("approved", "eq", "true").check([Output("approved", "bool", value=True)])
    True
    """

    key: str
    op: ConditionOp = attrs.field(default=ConditionOp.EQ, converter=_to_condition_op)
    value: Any = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"a condition key must be a non-empty string, got {self.key!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        """Build a condition from ``{"key": ..., "op": ..., "value": ...}``.

        Raises:
            ValueError: not an object, an unknown or missing key, or a bad op.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a condition must be an object, got {data!r}")
        unknown = set(data) - {"key", "op", "value"}
        if unknown:
            raise ValueError(f"unknown condition keys: {', '.join(sorted(map(str, unknown)))}")
        if "key" not in data:
            raise ValueError("a condition needs a 'key'")
        return cls(data["key"], data.get("op", ConditionOp.EQ), data.get("value"))

    def check(
        self,
        outputs: Sequence[Output] | Mapping[str, Any],
        types: Mapping[str, OutputType | str] | None = None,
    ) -> bool:
        """Whether the produced outputs satisfy this condition; never raises.

        With :class:`Output` values the output's declared type is used. With a
        plain mapping the type comes from ``types[key]`` when given, else from
        the produced value (bool, int or str; any other value never matches).
        Both the condition's value and the produced value are coerced to that
        type (``"3"`` → 3, ``"true"``/``"1"`` → True), so ``gt``/``lt`` compare
        ints as numbers. False when the key is missing, its value is None, or
        either side cannot be coerced.
        """
        try:
            found = self._lookup(outputs, types)
            if found is None:
                return False
            actual, output_type = found
            left = output_type.coerce(actual)
            right = output_type.coerce(self.value)
            return bool(_COMPARE[self.op](left, right))
        except Exception:  # a check over model output must decide, never crash the run
            return False

    def _lookup(
        self,
        outputs: Sequence[Output] | Mapping[str, Any],
        types: Mapping[str, OutputType | str] | None,
    ) -> tuple[Any, OutputType] | None:
        if isinstance(outputs, Mapping):
            if self.key not in outputs or outputs[self.key] is None:
                return None
            actual = outputs[self.key]
            if types is not None and self.key in types:
                return actual, _to_output_type(types[self.key])
            inferred = _infer_type(actual)
            return None if inferred is None else (actual, inferred)
        if isinstance(outputs, str | bytes) or not isinstance(outputs, Sequence):
            return None
        for output in outputs:
            if isinstance(output, Output) and output.key == self.key:
                return None if output.value is None else (output.value, output.type)
        return None


def _infer_type(value: Any) -> OutputType | None:
    if isinstance(value, bool):
        return OutputType.BOOL
    if isinstance(value, int):
        return OutputType.INT
    if isinstance(value, str):
        return OutputType.STRING
    return None
