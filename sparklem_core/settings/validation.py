"""Declared configuration, validated strictly, with one-line errors.

Every configuration of the project (the processor's ``config.yaml``, each plugin's
settings, the agent's ``agent.yaml``) is a pydantic model built on :data:`STRICT`: no
coercion (``'false'`` is not a boolean, ``'5'`` not a number), no NaN or infinity, no
unknown key. :func:`validate` turns pydantic's report into one line naming the dotted
key; it never repeats the value, which may be a secret.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from sparklem_core.commands import ENROLL, command
from sparklem_core.plugin_api import DEFAULT_INTERVAL_S, SIDES, Manifest

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
MAX_INTERVAL_S = 86400
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"  # Kafka's rule for topic names

Model = TypeVar("Model", bound=BaseModel)


class SchemaError(ValueError):
    """A value that does not match its declaration: one line naming the key."""


def validate(
    model: type[Model],
    data: Any,
    where: str = "",
    labels: Mapping[str, str] | None = None,
) -> Model:
    """``data`` checked against ``model``.

    ``where`` prefixes the keys in messages (``plugins.temperature``); ``labels`` renames
    dotted keys whose value came from elsewhere (``database.url`` from
    ``SPARKLEM_DATABASE_URL``).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(describe(exc, model, where, labels or {})) from None


def describe(
    exc: ValidationError, model: type[BaseModel], where: str, labels: Mapping[str, str]
) -> str:
    """One line for pydantic's report: the first problem, by dotted key, without values."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        parent = loc[:-1]
        unknown = [
            _short(e["loc"][-1])
            for e in errors
            if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent
        ]
        text = f"unknown key(s) {', '.join(unknown)}"
        known = _known_keys(model, parent)
        if known:
            text += f" (known: {', '.join(known)})"
        return _join(where, parent, text, labels)
    if first["type"] == "invalid_key":
        return _join(where, loc[:-1], f"key {_short(loc[-1])} is not a string", labels)
    if loc and loc[-1] == "[key]":
        text = f"{_short(loc[-2])} is not a valid name"
        pattern = (first.get("ctx") or {}).get("pattern")
        return _join(where, loc[:-2], text + (f" ({pattern})" if pattern else ""), labels)
    text = _phrase(first, _field(model, loc))
    more = len(errors) - 1
    return _join(where, loc, text, labels) + (f" (and {more} more problem(s))" if more else "")


class YamlRefused(ValueError):
    """YAML text :func:`load_yaml` refuses: the message says where, to follow a name
    (``config file x.yaml is not valid YAML (line 3, column 1)``)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that holds one key twice (PyYAML keeps
    the last silently: a setting written twice would be half ignored)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # <<: overrides are the point
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the constructor refuses it below
                    continue
                if first is not key_node.start_mark:
                    raise YamlRefused(
                        f"holds the key {_short(key)} twice (lines {first.line + 1} and "
                        f"{key_node.start_mark.line + 1}): keep one"
                    )
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """The one way YAML is read (config files, ``agent.yaml``, ``--set`` values): PyYAML's
    safe loader, refusing duplicate keys; :class:`YamlRefused` in one line otherwise."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise YamlRefused(describe_yaml_error(exc)) from None
    except RecursionError:
        raise YamlRefused("is nested too deeply") from None
    except YamlRefused:
        raise
    # What PyYAML's constructors raise on a value they cannot make: a date such as
    # 2024-13-01, a 5000-digit number, an explicit tag on a value not of its type
    # (``!!bool x``: KeyError, ``!!timestamp x``: AttributeError).
    except (ValueError, OverflowError, LookupError, AttributeError, TypeError):
        raise YamlRefused(
            "holds a value YAML cannot make (a date, number or !!tag that does not fit)"
        ) from None


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """Where a YAML document is broken: line and column, never the text found there."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return "is not valid YAML"
    where = f"is not valid YAML (line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or ""
    # Problems such as "found undefined alias 'x'" quote the document: left out.
    if re.fullmatch(r"[a-z ,]+", problem):
        where += f": {problem}"
    return where + ")"


# --- plugin settings ------------------------------------------------------------------


def plugin_model(manifest: Manifest, side: str) -> type[BaseModel]:
    """The model of ``plugins.<name>`` on one side: the core keys, then the declared ones."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}")
    declared = {s.name: s for s in manifest.declared(side)}
    fields: dict[str, Any] = {}
    if side == "processor":
        fields["enabled"] = (bool, Field(True, description="false: the plugin is not loaded"))
        topic = Field(manifest.topic, pattern=TOPIC_PATTERN, description="its Kafka topic")
        fields["topic"] = (str, topic)
    else:
        fields["topic"] = (
            str,
            Field(pattern=TOPIC_PATTERN, description="its Kafka topic (the processor's)"),
        )
        own = declared.pop("interval", None)
        interval = Field(
            own.default if own else DEFAULT_INTERVAL_S,
            gt=0,
            le=MAX_INTERVAL_S,
            description=own.description if own else "seconds between two collections",
        )
        fields["interval"] = (float, interval)
    for s in declared.values():
        annotation = s.type if s.default is not None else s.type | None
        fields[s.name] = (annotation, Field(s.default, ge=s.ge, le=s.le, description=s.description))
    config = ConfigDict(**STRICT, protected_namespaces=(), validate_default=True)
    return create_model(f"{manifest.name}_{side}_settings", __config__=config, **fields)


def plugin_settings(
    manifest: Manifest, values: Any, side: str = "processor", where: str = ""
) -> dict[str, Any]:
    """``values`` checked against the plugin's declaration, with defaults filled in."""
    where = where or f"plugins.{manifest.name}"
    other = {s.name for s in manifest.settings if s.side != side}
    other |= {"interval"} if side == "processor" else {"enabled"}
    if isinstance(values, Mapping):
        misplaced = sorted(k for k in values if k in other and isinstance(k, str))
        if misplaced:
            home = (
                f"the agent's bundle ({command(ENROLL)} --set)"
                if side == "processor"
                else "config.yaml"
            )
            article = "an" if side == "agent" else "a"
            raise SchemaError(
                f"{where}.{misplaced[0]}: not {article} {side} setting; it belongs in {home}"
            )
    settings = validate(plugin_model(manifest, side), values, where).model_dump()
    if side == "processor" and manifest.check is not None:
        try:
            manifest.check(settings)
        except ValueError as exc:
            raise SchemaError(f"{where}: {exc}") from None
    return settings


def describe_settings(manifest: Manifest) -> list[tuple[str, str, str, str, str]]:
    """(side, name, type, default, description) of every setting, core keys included."""
    rows = []
    for side in SIDES:
        for name, info in plugin_model(manifest, side).model_fields.items():
            default = "(required)" if info.is_required() else _yaml_scalar(info.default)
            rows.append((side, name, _type_name(info.annotation), default, info.description or ""))
    return rows


# --- helpers --------------------------------------------------------------------------


_TYPE_WORDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
_TYPE_WORDS.update({type(None): "null", list: "a list", dict: "a mapping"})
_EXPECT = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}
_PHRASES = {
    "missing": "is required",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "invalid_key": "keys must be strings",
    "string_too_short": "must not be empty",
    "too_short": "must not be empty",
}


def _phrase(error: Mapping[str, Any], field: FieldInfo | None) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    got = f" (got {_got(error.get('input'))})" if kind.endswith("_type") else ""
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"has a form that is not allowed ({ctx.get('pattern')})"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    expect = _expectation(field) if field is not None else None
    if expect and kind != "missing":
        return f"must be {expect}{got}"
    for bound, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if bound in ctx:
            return f"must be {symbol} {ctx[bound]}"
    return _PHRASES.get(kind, "is not valid") + got


def _expectation(field: FieldInfo) -> str | None:
    """'a finite number > 0 and <= 60' for a field, from its type and bounds."""
    annotation, nullable = _unwrap(field.annotation)
    noun = _EXPECT.get(annotation) if isinstance(annotation, type) else None
    if noun is None:
        return None
    bounds = []
    for item in field.metadata:
        for kind, name, symbol in (
            (Gt, "gt", ">"),
            (Ge, "ge", ">="),
            (Lt, "lt", "<"),
            (Le, "le", "<="),
        ):
            if isinstance(item, kind):
                bounds.append(f"{symbol} {getattr(item, name)}")
    text = noun + (" " + " and ".join(bounds) if bounds else "")
    return text + (" (or null)" if nullable else "")


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed) of ``X`` or ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _field(model: type[BaseModel], loc: Sequence[Any]) -> FieldInfo | None:
    """The field at ``loc``, through models and the values of dicts of models."""
    current: Any = model
    info = None
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if get_origin(current) is dict:  # ``part`` is a key: on to the value type
            current = _unwrap(get_args(current)[1])[0]
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            return None
        current = _unwrap(info.annotation)[0]
    return info


def _known_keys(model: type[BaseModel], parent: Sequence[Any]) -> list[str]:
    current: Any = model if not parent else None
    if parent:
        field = _field(model, parent)
        current = _unwrap(field.annotation)[0] if field is not None else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _join(where: str, loc: Sequence[Any], text: str, labels: Mapping[str, str]) -> str:
    # A key is the user's text: cut like an unknown key, no newline or secret gets out.
    key = ".".join(_short(part) for part in loc)
    full = f"{where}.{key}" if where and key else where or key
    if full in labels:
        full = labels[full]
    elif loc and isinstance(loc[-1], int) and full.rpartition(".")[0] in labels:
        # An item of a list that came whole from elsewhere (SPARKLEM_READ_TOKENS=a,b).
        full = f"{labels[full.rpartition('.')[0]]} item {loc[-1] + 1}"
    return f"{full}: {text}" if full else text


def _short(value: Any) -> str:
    """A key as the user wrote it, up to its first blank or symbol: a key such as
    ``sasl.password S3cret`` (a missing colon) must not print what follows."""
    text = str(value)
    name = re.match(r"[A-Za-z0-9_.-]{0,40}", text).group()  # type: ignore[union-attr]
    if name == text:
        return name
    return f"{name}..." if name else "(a key of blanks or symbols)"


def _got(value: Any) -> str:
    return _TYPE_WORDS.get(type(value), f"a {type(value).__name__}")


def _type_name(annotation: Any) -> str:
    inner, nullable = _unwrap(annotation)
    name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if nullable else name


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
