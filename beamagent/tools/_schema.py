"""Input schemas of tools: JSON schemas derived from type hints, and argument checking.

A tool's parameters become a :class:`Shape` tree (pure values), which gives
both the JSON schema the model sees (:meth:`Shape.schema`) and the conversion
of a checked JSON value into the Python value the function expects
(:meth:`Shape.convert`: a dict into a dataclass, a string into an ``Enum``...).
What a model sends is checked against the JSON schema itself
(:func:`validate_json`), so the schema is the one definition of what is valid:
a value that passes is converted, one that does not is refused with a message
naming the place and the reason. Nothing here raises on a model's bad value.

Supported hints: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
``Optional``/unions, ``Literal``, ``Enum`` subclasses (JSON-scalar values),
``list``/``Sequence``/``set``/``frozenset``/``tuple`` (variadic or fixed),
``dict``/``Mapping`` with ``str`` keys, dataclasses, ``attrs`` classes and
``TypedDict``s (their fields recursively), ``Annotated[X, "description"]``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

import attrs

from beamagent.errors import InvalidOption

__all__ = [
    "AnyShape",
    "ArgumentError",
    "ArrayShape",
    "EnumShape",
    "LiteralShape",
    "MapShape",
    "ObjectField",
    "ObjectShape",
    "Scalar",
    "Shape",
    "TupleShape",
    "UnionShape",
    "shape_of",
    "validate_json",
]

JSON = Any

_SCALARS: Final[Mapping[Any, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
    None: "null",
}
_SEQUENCES: Final = (
    list,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Iterable,
    collections.abc.Collection,
)
# TypedDict key qualifiers (ReadOnly exists from Python 3.13).
_QUALIFIERS: Final = tuple(
    getattr(typing, name)
    for name in ("Required", "NotRequired", "ReadOnly")
    if hasattr(typing, name)
)
_SETS: Final = (set, frozenset, collections.abc.Set, collections.abc.MutableSet)
_MAPPINGS: Final = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


class ArgumentError(Exception):
    """A value does not fit its schema, or could not be converted; ``str()`` says where and why."""


# --- shapes ----------------------------------------------------------------------------


class Shape:
    """A parameter type, as far as tools are concerned: its JSON schema and its conversion."""

    def schema(self) -> dict[str, JSON]:
        """The JSON schema of the values this shape accepts."""
        raise NotImplementedError

    def convert(self, value: JSON, path: str) -> Any:
        """The Python value for a JSON ``value`` that passed :meth:`schema`.

        Raises:
            ArgumentError: the value could not be built (e.g. a class's own validator refused it).
        """
        raise NotImplementedError


@attrs.frozen
class AnyShape(Shape):
    """``Any`` or no annotation: any JSON value, passed as it is."""

    def schema(self) -> dict[str, JSON]:
        return {}

    def convert(self, value: JSON, path: str) -> Any:
        return value


@attrs.frozen
class Scalar(Shape):
    """``str``, ``int``, ``float``, ``bool`` or ``None``."""

    kind: str

    def schema(self) -> dict[str, JSON]:
        return {"type": self.kind}

    def convert(self, value: JSON, path: str) -> Any:
        if self.kind == "integer":
            return int(value)  # 3.0 is an integer in JSON Schema
        if self.kind == "number":
            return float(value)
        return value


@attrs.frozen
class ArrayShape(Shape):
    """A variadic sequence: ``list[X]``, ``tuple[X, ...]``, ``set[X]``..."""

    items: Shape
    container: type = list

    def schema(self) -> dict[str, JSON]:
        schema: dict[str, JSON] = {"type": "array", "items": self.items.schema()}
        if self.container in (set, frozenset):
            schema["uniqueItems"] = True
        return schema

    def convert(self, value: JSON, path: str) -> Any:
        items = [self.items.convert(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if self.container is list:
            return items
        try:
            return self.container(items)
        except TypeError as exc:  # unhashable items in a set
            raise ArgumentError(f"{path}: {exc}") from None


@attrs.frozen
class TupleShape(Shape):
    """A fixed-length tuple: ``tuple[X, Y]``."""

    items: tuple[Shape, ...]

    def schema(self) -> dict[str, JSON]:
        n = len(self.items)
        return {
            "type": "array",
            "prefixItems": [item.schema() for item in self.items],
            "minItems": n,
            "maxItems": n,
        }

    def convert(self, value: JSON, path: str) -> Any:
        return tuple(
            shape.convert(v, f"{path}[{i}]")
            for i, (shape, v) in enumerate(zip(self.items, value, strict=True))
        )


@attrs.frozen
class MapShape(Shape):
    """``dict[str, X]`` / ``Mapping[str, X]``."""

    values: Shape

    def schema(self) -> dict[str, JSON]:
        return {"type": "object", "additionalProperties": self.values.schema()}

    def convert(self, value: JSON, path: str) -> Any:
        return {k: self.values.convert(v, f"{path}.{k}") for k, v in value.items()}


@attrs.frozen
class UnionShape(Shape):
    """``X | Y`` (``Optional[X]`` is ``X | None``): the first option the value fits."""

    options: tuple[Shape, ...]

    def schema(self) -> dict[str, JSON]:
        return {"anyOf": [option.schema() for option in self.options]}

    def convert(self, value: JSON, path: str) -> Any:
        for option in self.options:
            if not validate_json(option.schema(), value):
                return option.convert(value, path)
        raise ArgumentError(f"{path}: fits none of the options")  # not reached once validated


@attrs.frozen
class LiteralShape(Shape):
    """``Literal["a", 1, True, None]``."""

    values: tuple[JSON, ...]

    def schema(self) -> dict[str, JSON]:
        schema: dict[str, JSON] = {"enum": list(self.values)}
        kinds = {_json_type(v) for v in self.values}
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        return schema

    def convert(self, value: JSON, path: str) -> Any:
        return next(v for v in self.values if _json_equal(v, value))


@attrs.frozen
class EnumShape(Shape):
    """An ``Enum`` subclass whose values are JSON scalars; the model sends a value."""

    cls: type[enum.Enum]

    def schema(self) -> dict[str, JSON]:
        values = [member.value for member in self.cls]
        schema: dict[str, JSON] = {"enum": values, "title": self.cls.__name__}
        kinds = {_json_type(v) for v in values}
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        return schema

    def convert(self, value: JSON, path: str) -> Any:
        return next(m for m in self.cls if _json_equal(m.value, value))


@attrs.frozen
class ObjectField:
    """One field of an :class:`ObjectShape`: its JSON name, its argument name, its shape."""

    name: str
    shape: Shape
    required: bool
    description: str | None = None
    init_name: str | None = None


@attrs.frozen
class ObjectShape(Shape):
    """A dataclass, an ``attrs`` class or a ``TypedDict`` (``cls``), or a tool's arguments."""

    fields: tuple[ObjectField, ...]
    cls: type | None = None
    kind: str = "arguments"  # dataclass | attrs | typeddict | arguments
    title: str | None = None
    description: str | None = None

    def schema(self) -> dict[str, JSON]:
        properties: dict[str, JSON] = {}
        for field in self.fields:
            prop = field.shape.schema()
            if field.description:
                prop = {**prop, "description": field.description}
            properties[field.name] = prop
        schema: dict[str, JSON] = {"type": "object", "properties": properties}
        required = [f.name for f in self.fields if f.required]
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
        if self.title:
            schema["title"] = self.title
        if self.description:
            schema["description"] = self.description
        return schema

    def convert(self, value: JSON, path: str) -> Any:
        values = {}
        for field in self.fields:
            if field.name in value:
                sub = f"{path}.{field.name}" if path else field.name
                values[field.init_name or field.name] = field.shape.convert(value[field.name], sub)
        if self.cls is None or self.kind == "typeddict":
            return values
        try:
            return self.cls(**values)
        except Exception as exc:  # the class's own checks (attrs validators, __post_init__)
            raise ArgumentError(
                f"{path or 'arguments'}: {self.cls.__name__} refused the value: {exc}"
            ) from None


# --- deriving shapes from hints --------------------------------------------------------


def shape_of(hint: Any, where: str, seen: frozenset[type] = frozenset()) -> Shape:
    """The shape of type hint ``hint``; ``where`` names it in errors.

    Raises:
        InvalidOption: no JSON schema can be derived from ``hint`` (the message
            says which hints are supported and that ``schema=`` is the way out).
    """
    if hint is Any or hint is object:
        return AnyShape()
    if hint in _SCALARS:
        return Scalar(_SCALARS[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return shape_of(args[0], where, seen)
    if origin is typing.Union or origin is types.UnionType:
        options: list[Shape] = []
        for arg in args:
            shape = shape_of(arg, where, seen)
            if shape not in options:
                options.append(shape)
        return options[0] if len(options) == 1 else UnionShape(tuple(options))
    if origin is typing.Literal:
        for value in args:
            if not _is_json_scalar(value) or isinstance(value, float):
                raise _unsupported(hint, where, "Literal values must be str, int, bool or None")
        return LiteralShape(tuple(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        if not values or not all(_is_json_scalar(v) for v in values):
            raise _unsupported(hint, where, "an Enum needs members with JSON scalar values")
        return EnumShape(hint)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        item = shape_of(args[0], where, seen) if args else AnyShape()
        return ArrayShape(item, list)
    if hint in _SETS or origin in _SETS:
        item = shape_of(args[0], where, seen) if args else AnyShape()
        container: type = frozenset if (hint is frozenset or origin is frozenset) else set
        return ArrayShape(item, container)
    if hint is tuple or origin is tuple:
        if not args:
            return ArrayShape(AnyShape(), tuple)
        if len(args) == 2 and args[1] is Ellipsis:
            return ArrayShape(shape_of(args[0], where, seen), tuple)
        if args == ((),):
            return TupleShape(())
        return TupleShape(tuple(shape_of(a, where, seen) for a in args))
    if hint in _MAPPINGS or origin in _MAPPINGS:
        if args and args[0] is not str:
            raise _unsupported(hint, where, "mapping keys must be str (JSON object keys)")
        return MapShape(shape_of(args[1], where, seen) if args else AnyShape())
    if isinstance(hint, type):
        if hint in seen:
            raise _unsupported(hint, where, "recursive types are not supported")
        if typing.is_typeddict(hint):
            return _typeddict_shape(hint, where, seen | {hint})
        if dataclasses.is_dataclass(hint):
            return _dataclass_shape(hint, where, seen | {hint})
        if attrs.has(hint):
            return _attrs_shape(hint, where, seen | {hint})
    if isinstance(hint, str | typing.ForwardRef):
        raise _unsupported(hint, where, "the annotation could not be resolved")
    raise _unsupported(hint, where)


def _unsupported(hint: Any, where: str, why: str | None = None) -> InvalidOption:
    reason = f" ({why})" if why else ""
    return InvalidOption(
        f"{where}: cannot derive a JSON schema from {hint!r}{reason}; supported: str, int, "
        "float, bool, None, Any, unions/Optional, Literal, Enum, list/tuple/set, dict[str, X], "
        "dataclasses, attrs classes and TypedDicts -- or pass an explicit schema=... to @tool"
    )


def _hints(cls: type, where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:
        raise InvalidOption(f"{where}: cannot resolve the annotations of {cls!r}: {exc}") from None


def _annotated_description(hint: Any) -> str | None:
    if typing.get_origin(hint) is typing.Annotated:
        for extra in typing.get_args(hint)[1:]:
            if isinstance(extra, str):
                return extra
    return None


def _dataclass_shape(cls: type, where: str, seen: frozenset[type]) -> ObjectShape:
    hints = _hints(cls, where)
    fields = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint = hints.get(field.name, Any)
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        fields.append(
            ObjectField(
                field.name,
                shape_of(hint, f"{where}.{field.name}", seen),
                required,
                _annotated_description(hint),
            )
        )
    return ObjectShape(tuple(fields), cls, "dataclass", cls.__name__, _first_paragraph(cls))


def _attrs_shape(cls: type, where: str, seen: frozenset[type]) -> ObjectShape:
    hints = _hints(cls, where)
    fields = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        hint = hints.get(field.name, field.type if field.type is not None else Any)
        init_name = field.alias or field.name.lstrip("_")
        fields.append(
            ObjectField(
                init_name,
                shape_of(hint, f"{where}.{init_name}", seen),
                field.default is attrs.NOTHING,
                _annotated_description(hint),
                init_name,
            )
        )
    return ObjectShape(tuple(fields), cls, "attrs", cls.__name__, _first_paragraph(cls))


def _typeddict_shape(cls: type, where: str, seen: frozenset[type]) -> ObjectShape:
    hints = _hints(cls, where)
    required_keys: frozenset[str] = getattr(cls, "__required_keys__", frozenset(hints))
    fields = tuple(
        ObjectField(
            name,
            shape_of(_strip_required(hint), f"{where}.{name}", seen),
            name in required_keys,
            _annotated_description(_strip_required(hint)),
        )
        for name, hint in hints.items()
    )
    return ObjectShape(fields, cls, "typeddict", cls.__name__, _first_paragraph(cls))


def _strip_required(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in _QUALIFIERS:
        return typing.get_args(hint)[0]
    return hint


def _first_paragraph(obj: Any) -> str | None:
    doc = obj.__doc__
    if not isinstance(doc, str) or not doc.strip():
        return None
    if dataclasses.is_dataclass(obj) and doc.startswith(f"{getattr(obj, '__name__', '')}("):
        return None  # the signature dataclasses writes, not a description
    return doc.strip().split("\n\n", 1)[0].strip() or None


# --- checking JSON values against a schema -----------------------------------------------


def validate_json(schema: JSON, value: JSON, root: JSON = None, path: str = "") -> list[str]:
    """What is wrong with ``value`` under JSON schema ``schema`` (empty: it fits).

    A subset of JSON Schema 2020-12, enough for tool inputs: ``type``, ``enum``,
    ``const``, ``properties``, ``required``, ``additionalProperties``,
    ``items`` (a schema, or a list as in draft 4-7), ``prefixItems``,
    ``minItems``, ``maxItems``, ``uniqueItems``, ``minLength``, ``maxLength``,
    ``pattern``, ``minimum``, ``maximum``, ``exclusiveMinimum``,
    ``exclusiveMaximum``, ``multipleOf``, ``anyOf``, ``oneOf``, ``allOf``,
    ``not``, ``$ref`` to ``#/...`` (``$defs``, ``definitions``) and boolean
    schemas. Other keywords are ignored. Never raises on any JSON value.

    >>> validate_json({"type": "integer", "minimum": 1}, 0)
    ['value 0 is less than the minimum 1']
    """
    root = schema if root is None else root
    errors: list[str] = []
    _check(schema, value, root, path, errors, 0)
    return errors


def _where(path: str) -> str:
    return f"{path}: " if path else ""


def _check(schema: JSON, value: JSON, root: JSON, path: str, errors: list[str], depth: int) -> None:
    if schema is True or schema is None:
        return
    if schema is False:
        errors.append(f"{_where(path)}no value is allowed here")
        return
    if not isinstance(schema, Mapping):
        return
    if depth > 64:
        errors.append(f"{_where(path)}the schema nests too deeply")
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref, root)
        if target is None:
            errors.append(f"{_where(path)}the schema's $ref {ref!r} does not resolve")
        else:
            _check(target, value, root, path, errors, depth + 1)
    before = len(errors)
    _check_type(schema, value, path, errors)
    if len(errors) > before:
        return  # the rest would only repeat that the type is wrong
    if "const" in schema and not _json_equal(schema["const"], value):
        errors.append(f"{_where(path)}must be {_show(schema['const'])}")
    enum_values = schema.get("enum")
    if isinstance(enum_values, list) and not any(_json_equal(v, value) for v in enum_values):
        errors.append(f"{_where(path)}must be one of {_show(enum_values)}, got {_show(value)}")
    if isinstance(value, str):
        _check_string(schema, value, path, errors)
    elif _is_number(value):
        _check_number(schema, value, path, errors)
    elif isinstance(value, list):
        _check_array(schema, value, root, path, errors, depth)
    elif isinstance(value, Mapping):
        _check_object(schema, value, root, path, errors, depth)
    _check_combinators(schema, value, root, path, errors, depth)


def _check_type(schema: Mapping[str, JSON], value: JSON, path: str, errors: list[str]) -> None:
    wanted = schema.get("type")
    if wanted is None:
        return
    kinds = wanted if isinstance(wanted, list) else [wanted]
    if not any(_has_type(value, str(kind)) for kind in kinds):
        expected = " or ".join(str(k) for k in kinds)
        errors.append(f"{_where(path)}expected {expected}, got {_describe(value)}")


def _check_string(schema: Mapping[str, JSON], value: str, path: str, errors: list[str]) -> None:
    length = len(value)
    low, high = _int(schema.get("minLength")), _int(schema.get("maxLength"))
    if low is not None and length < low:
        errors.append(f"{_where(path)}must be at least {low} characters long")
    if high is not None and length > high:
        errors.append(f"{_where(path)}must be at most {high} characters long")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            matched = re.search(pattern, value) is not None
        except re.error:
            matched = True  # a pattern Python cannot read is not the model's fault
        if not matched:
            errors.append(f"{_where(path)}must match the pattern {pattern!r}")


def _check_number(schema: Mapping[str, JSON], value: float, path: str, errors: list[str]) -> None:
    minimum, maximum = _num(schema.get("minimum")), _num(schema.get("maximum"))
    if minimum is not None and value < minimum:
        errors.append(
            f"{_where(path)}value {_show(value)} is less than the minimum {_show(minimum)}"
        )
    if maximum is not None and value > maximum:
        errors.append(
            f"{_where(path)}value {_show(value)} is more than the maximum {_show(maximum)}"
        )
    low, high = _num(schema.get("exclusiveMinimum")), _num(schema.get("exclusiveMaximum"))
    if low is not None and value <= low:
        errors.append(f"{_where(path)}must be more than {_show(low)}")
    if high is not None and value >= high:
        errors.append(f"{_where(path)}must be less than {_show(high)}")
    multiple = _num(schema.get("multipleOf"))
    if multiple is not None and multiple > 0:
        quotient = value / multiple
        if math.isfinite(quotient) and not math.isclose(quotient, round(quotient), abs_tol=1e-9):
            errors.append(f"{_where(path)}must be a multiple of {_show(multiple)}")


def _check_array(
    schema: Mapping[str, JSON],
    value: list[JSON],
    root: JSON,
    path: str,
    errors: list[str],
    depth: int,
) -> None:
    low, high = _int(schema.get("minItems")), _int(schema.get("maxItems"))
    if low is not None and len(value) < low:
        errors.append(f"{_where(path)}needs at least {low} items, got {len(value)}")
    if high is not None and len(value) > high:
        errors.append(f"{_where(path)}takes at most {high} items, got {len(value)}")
    prefix = schema.get("prefixItems")
    items = schema.get("items")
    if isinstance(items, list):  # draft 4-7 tuple form
        prefix, items = items, schema.get("additionalItems", True)
    prefix = prefix if isinstance(prefix, list) else []
    for index, item in enumerate(value):
        sub = f"{path}[{index}]"
        if index < len(prefix):
            _check(prefix[index], item, root, sub, errors, depth + 1)
        elif items is not None:
            _check(items, item, root, sub, errors, depth + 1)
    if schema.get("uniqueItems") is True:
        for i, a in enumerate(value):
            if any(_json_equal(a, b) for b in value[:i]):
                errors.append(f"{_where(path)}items must be unique; {_show(a)} repeats")
                break


def _check_object(
    schema: Mapping[str, JSON],
    value: Mapping[str, JSON],
    root: JSON,
    path: str,
    errors: list[str],
    depth: int,
) -> None:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    for name in required if isinstance(required, list) else []:
        if isinstance(name, str) and name not in value:
            errors.append(f"{_where(path)}missing required {_key(path, name)!r}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub = _key(path, str(key))
        if key in properties:
            _check(properties[key], item, root, sub, errors, depth + 1)
        elif extra is False:
            known = ", ".join(sorted(map(str, properties))) or "none"
            errors.append(f"{_where(path)}unknown {sub!r} (known: {known})")
        else:
            _check(extra, item, root, sub, errors, depth + 1)


def _check_combinators(
    schema: Mapping[str, JSON], value: JSON, root: JSON, path: str, errors: list[str], depth: int
) -> None:
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if not isinstance(options, list) or not options:
            continue
        fits = [not validate_json(option, value, root) for option in options]
        if key == "anyOf" and not any(fits):
            errors.append(f"{_where(path)}{_show(value)} fits none of the allowed forms")
        if key == "oneOf" and fits.count(True) != 1:
            errors.append(
                f"{_where(path)}{_show(value)} must fit exactly one of the allowed forms, "
                f"fits {fits.count(True)}"
            )
    all_of = schema.get("allOf")
    for part in all_of if isinstance(all_of, list) else []:
        _check(part, value, root, path, errors, depth + 1)
    if "not" in schema and not validate_json(schema["not"], value, root):
        errors.append(f"{_where(path)}{_show(value)} is not allowed")


def _resolve(ref: str, root: JSON) -> JSON:
    if not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_number(value: JSON) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )


def _has_type(value: JSON, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return _is_number(value) and float(value).is_integer()
    if kind == "number":
        return _is_number(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, Mapping)
    return True  # an unknown type name: not the model's fault


def _json_type(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _json_equal(a: JSON, b: JSON) -> bool:
    """Equality as JSON Schema means it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    return bool(a == b)


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _int(value: JSON) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: JSON) -> float | None:
    return value if _is_number(value) else None


def _describe(value: JSON) -> str:
    return f"{_json_type(value)} {_show(value)}"


def _show(value: JSON) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
