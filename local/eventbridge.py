"""EventBridge rule matching and target-input rendering with AWS semantics, for the local twin.

Pure functions over plain JSON data (no moto imports); the matching rules and their sources: docs/twin/eventbridge.md.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import operator
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any


class PatternError(ValueError):
    """An invalid event pattern; the message starts with the dotted path of the bad part."""


# Keys a "$or" branch may not use as field names (event-ruler Constants.RESERVED_FIELD_NAMES_IN_OR_RELATIONSHIP).
_RESERVED_IN_OR = frozenset(
    {
        "exactly",
        "equals-ignore-case",
        "prefix",
        "suffix",
        "anything-but",
        "exists",
        "wildcard",
        "numeric",
        "cidr",
        "=",
        "<",
        "<=",
        ">",
        ">=",
        "regex",
        "not-wildcard",
        "not-equals-ignore-case",
        "date-after",
        "date-on-or-after",
        "date-before",
        "date-on-or-before",
        "in-date-range",
        "ip-address-in-range",
        "ip-address-not-in-range",
    }
)
_ANYTHING_BUT_INNER = ("prefix", "suffix", "equals-ignore-case", "wildcard")
_NUMERIC_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_MISSING = object()
_EMPTY: Mapping[str, Any] = {}


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python but a distinct JSON type
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def _fail(path: str, reason: str) -> PatternError:
    return PatternError(f"{path or '<root>'}: {reason}")


# --------------------------------------------------------------------------- validation


def validate_pattern(pattern: dict[str, Any]) -> None:
    """Raise :class:`PatternError` unless ``pattern`` is a valid EventBridge event pattern.

    The checks and reasons follow event-ruler's JsonRuleCompiler: objects and value lists may not be
    empty, values are scalars or one-key match expressions with a known operator and a well-formed
    argument, ``$or`` holds at least two objects. Limits that need a live account to pin down (pattern
    size, wildcard complexity, numeric range bounds) are not checked.
    """
    if not isinstance(pattern, dict):
        raise _fail("", "Filter is not an object")
    _validate_object(pattern, "", in_or=False)


def _validate_object(obj: dict[str, Any], path: str, *, in_or: bool) -> None:
    if not obj:
        raise _fail(path, "Empty objects are not allowed")
    for key, value in obj.items():
        if key == "$or":
            _validate_or(value, path)
            continue
        child = f"{path}.{key}" if path else key
        if in_or and key in _RESERVED_IN_OR:
            raise _fail(child, f"{key} is Ruler reserved fieldName which cannot be used inside $or.")
        if isinstance(value, dict):
            _validate_object(value, child, in_or=in_or)
        elif isinstance(value, list):
            _validate_values(value, child)
        else:
            raise _fail(child, f'"{key}" must be an object or an array')


def _validate_or(branches: Any, path: str) -> None:
    where = f"{path}.$or" if path else "$or"
    if not isinstance(branches, list):
        raise _fail(where, "It must be an Array followed with $or.")
    if len(branches) < 2:
        raise _fail(where, "There must have at least 2 Objects in $or relationship.")
    for branch in branches:
        if not isinstance(branch, dict):
            raise _fail(where, "Only JSON object is allowed in array of $or relationship.")
        _validate_object(branch, path, in_or=True)


def _validate_values(values: list[Any], path: str) -> None:
    if not values:
        raise _fail(path, "Empty arrays are not allowed")
    for value in values:
        if isinstance(value, dict):
            _validate_expression(value, path)
        elif not _is_scalar(value):
            raise _fail(path, "Match value must be String, number, true, false, or null")


def _validate_expression(expr: dict[str, Any], path: str) -> None:
    if not expr:
        raise _fail(path, "Match expression name not found")
    if len(expr) > 1:
        raise _fail(path, "Only one key allowed in match expression")
    [(name, arg)] = expr.items()
    check = _EXPRESSION_CHECKS.get(name)
    if check is None:
        raise _fail(path, f"Unrecognized match type {name}")
    check(arg, path)


def _check_string(name: str) -> Callable[[Any, str], None]:
    def check(arg: Any, path: str) -> None:
        if not isinstance(arg, str):
            raise _fail(path, f"{name} match pattern must be a string")

    return check


def _check_affix(name: str) -> Callable[[Any, str], None]:
    def check(arg: Any, path: str) -> None:
        if isinstance(arg, dict):
            # {"prefix": {"equals-ignore-case": "..."}} is the only nested form
            if len(arg) != 1 or "equals-ignore-case" not in arg:
                inner = next(iter(arg), "")
                raise _fail(path, f"Unsupported {name} pattern: {inner}")
            _check_string("equals-ignore-case")(arg["equals-ignore-case"], path)
        elif not isinstance(arg, str):
            raise _fail(path, f"{name} match pattern must be a string")

    return check


def _check_wildcard(arg: Any, path: str) -> None:
    if not isinstance(arg, str):
        raise _fail(path, "wildcard match pattern must be a string")
    _wildcard_regex(arg, path)


def _check_exists(arg: Any, path: str) -> None:
    if not isinstance(arg, bool):
        raise _fail(path, "exists match pattern must be either true or false.")


def _check_cidr(arg: Any, path: str) -> None:
    if not isinstance(arg, str):
        raise _fail(path, "prefix match pattern must be a string")  # event-ruler's wording for cidr too
    if arg.count("/") != 1:
        raise _fail(path, "Malformed CIDR, one '/' required")
    try:
        ipaddress.ip_network(arg, strict=False)
    except ValueError as exc:
        raise _fail(path, f"Nonstandard IP address or mask: {arg}") from exc


def _check_numeric(arg: Any, path: str) -> None:
    if not isinstance(arg, list):
        raise _fail(path, "Value of numeric must be an array.")
    if not arg or not isinstance(arg[0], str):
        raise _fail(path, f"Invalid member in numeric match: {arg[0] if arg else ']'}")
    first = arg[0]
    if first not in _NUMERIC_OPS:
        raise _fail(path, f"Unrecognized numeric range operator: {first}")
    _check_numeric_operand(arg, 1, first, path)
    if len(arg) == 2:
        return
    if first not in (">", ">="):
        raise _fail(path, "Too many elements in numeric expression")
    second = arg[2]
    if second not in ("<", "<="):
        raise _fail(path, f"Bad numeric range operator: {second}")
    _check_numeric_operand(arg, 3, second, path)
    if len(arg) > 4:
        raise _fail(path, "Too many terms in numeric range expression")
    if arg[3] <= arg[1]:
        raise _fail(path, "Bottom must be less than top")


def _check_numeric_operand(arg: list[Any], index: int, op: str, path: str) -> None:
    if index >= len(arg) or not _is_number(arg[index]):
        raise _fail(path, f"Value of {'equals' if op == '=' else op} must be numeric")


def _check_anything_but(arg: Any, path: str) -> None:
    if isinstance(arg, dict):
        _check_anything_but_inner(arg, path)
    elif isinstance(arg, list):
        strings = all(isinstance(v, str) for v in arg)
        numbers = all(_is_number(v) for v in arg)
        if not arg or not (strings or numbers):
            raise _fail(
                path, "Inside anything but list, either all values are number or string, mixed type is not supported"
            )
    elif not (isinstance(arg, str) or _is_number(arg)):
        raise _fail(path, "Value of anything-but must be an array or single string/number value.")


def _check_anything_but_inner(arg: dict[str, Any], path: str) -> None:
    if len(arg) != 1:
        raise _fail(path, "Only one key allowed in match expression")
    [(name, value)] = arg.items()
    if name not in _ANYTHING_BUT_INNER:
        raise _fail(path, f"Unsupported anything-but pattern: {name}")
    values = value if isinstance(value, list) else [value]
    for item in values:
        if not isinstance(item, str):
            raise _fail(path, f"anything-but/{name} match pattern must be a string or a list of strings")
        if name in ("prefix", "suffix") and not item:
            raise _fail(path, "Null prefix/suffix not allowed")
        if name == "wildcard":
            _wildcard_regex(item, path)


_EXPRESSION_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "prefix": _check_affix("prefix"),
    "suffix": _check_affix("suffix"),
    "equals-ignore-case": _check_string("equals-ignore-case"),
    "wildcard": _check_wildcard,
    "anything-but": _check_anything_but,
    "numeric": _check_numeric,
    "exists": _check_exists,
    "cidr": _check_cidr,
}


@functools.lru_cache(maxsize=1024)
def _compile_wildcard(pattern: str) -> re.Pattern[str] | str:
    """The regex for a wildcard value, or the reason it is invalid (event-ruler WildcardParser)."""
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            if pattern.startswith("**", i):
                return f"Consecutive wildcard characters at pos {i}"
            parts.append(".*")
        elif char == "\\":
            if pattern[i + 1 : i + 2] not in ("*", "\\"):
                return f"Invalid escape character at pos {i}"
            i += 1
            parts.append(re.escape(pattern[i]))
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def _wildcard_regex(pattern: str, path: str) -> re.Pattern[str]:
    compiled = _compile_wildcard(pattern)
    if isinstance(compiled, str):
        raise _fail(path, compiled)
    return compiled


# --------------------------------------------------------------------------- matching


def matches(pattern: dict[str, Any] | str, event: dict[str, Any]) -> bool:
    """Whether ``event`` matches the EventBridge event ``pattern`` (a dict or its JSON text).

    The pattern is validated first (:class:`PatternError` if invalid, also for JSON text that does not
    parse). ``event`` is the full event envelope (``source``, ``detail-type``, ``detail``, ...).
    """
    parsed: Any = pattern
    if isinstance(pattern, str):
        try:
            parsed = json.loads(pattern)
        except json.JSONDecodeError as exc:
            raise _fail("", f"Filter is not valid JSON: {exc}") from exc
    validate_pattern(parsed)
    return _match_object(parsed, event)


def _match_object(pattern: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    return all(_match_field(key, spec, node) for key, spec in pattern.items())


def _match_field(key: str, spec: Any, node: Mapping[str, Any]) -> bool:
    if key == "$or":
        return any(_match_object(branch, node) for branch in spec)
    value = node.get(key, _MISSING)
    if isinstance(spec, dict):
        return _match_nested(spec, value)
    leaves = _leaves(value)
    return any(_condition_matches(condition, leaves) for condition in spec)


def _match_nested(pattern: Mapping[str, Any], value: Any) -> bool:
    if isinstance(value, dict):
        return _match_object(pattern, value)
    if isinstance(value, list) and value:
        # array consistency: one element has to satisfy the whole sub-pattern
        return any(_match_nested(pattern, element) for element in value)
    # missing, scalar or empty array: no sub-fields, so only {"exists": false} leaves can match
    return _match_object(pattern, _EMPTY)


def _leaves(value: Any) -> list[Any]:
    if value is _MISSING or isinstance(value, dict):
        return []
    if isinstance(value, list):
        return [leaf for element in value for leaf in _leaves(element)]
    return [value]


def _condition_matches(condition: Any, leaves: list[Any]) -> bool:
    if not isinstance(condition, dict):
        return any(_equals(condition, leaf) for leaf in leaves)
    [(name, arg)] = condition.items()
    if name == "exists":
        return bool(leaves) is arg
    test = _OPERATORS[name]
    return any(test(arg, leaf) for leaf in leaves)


def _equals(expected: Any, value: Any) -> bool:
    if expected is None or isinstance(expected, bool):
        return value is expected
    if _is_number(expected):
        return _is_number(value) and bool(value == expected)
    return isinstance(value, str) and value == expected


def _op_prefix(arg: Any, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if isinstance(arg, dict):
        return value.lower().startswith(arg["equals-ignore-case"].lower())
    return value.startswith(arg)


def _op_suffix(arg: Any, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if isinstance(arg, dict):
        return value.lower().endswith(arg["equals-ignore-case"].lower())
    return value.endswith(arg)


def _op_equals_ignore_case(arg: Any, value: Any) -> bool:
    return isinstance(value, str) and value.lower() == arg.lower()


def _op_wildcard(arg: Any, value: Any) -> bool:
    return isinstance(value, str) and _wildcard_regex(arg, "").fullmatch(value) is not None


def _op_numeric(arg: Any, value: Any) -> bool:
    if not _is_number(value):
        return False
    return all(_NUMERIC_OPS[arg[i]](value, arg[i + 1]) for i in range(0, len(arg), 2))


def _op_cidr(arg: Any, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(arg, strict=False)
    except ValueError:
        return False


def _op_anything_but(arg: Any, value: Any) -> bool:
    if isinstance(arg, dict):
        [(name, excluded)] = arg.items()
        test = _OPERATORS[name]
        return not any(test(item, value) for item in (excluded if isinstance(excluded, list) else [excluded]))
    excluded_values = arg if isinstance(arg, list) else [arg]
    return not any(_equals(item, value) for item in excluded_values)


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "prefix": _op_prefix,
    "suffix": _op_suffix,
    "equals-ignore-case": _op_equals_ignore_case,
    "wildcard": _op_wildcard,
    "numeric": _op_numeric,
    "cidr": _op_cidr,
    "anything-but": _op_anything_but,
}


# --------------------------------------------------------------------------- target input

_PLACEHOLDER = re.compile(r"<([A-Za-z0-9_.\-]+)>")
_PREDEFINED = frozenset(
    {
        "aws.events.rule-arn",
        "aws.events.rule-name",
        "aws.events.event",
        "aws.events.event.json",
        "aws.events.event.ingestion-time",
    }
)


def _dumps(value: Any) -> str:
    # minified, unicode kept as-is (AWS: "The JSON that is passed to the target is minified")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render_target_input(
    event: dict[str, Any],
    *,
    input: str | None = None,
    input_path: str | None = None,
    input_transformer: dict[str, Any] | None = None,
    rule_arn: str = "",
    rule_name: str = "",
    ingestion_time: str | None = None,
) -> str:
    """The exact text EventBridge hands a rule target for ``event``.

    At most one of the three target settings may be given (``None`` means unset), as PutTargets enforces:

    * ``input``: the constant JSON text, returned unchanged.
    * ``input_path``: the JSONPath (``$``, ``$.a.b``, ``$.a[0]``, ``$.a[*].b``) value as minified JSON;
      ``null`` when the path is absent (*twin choice*; AWS's behaviour is undocumented).
    * ``input_transformer``: ``{"InputTemplate": ..., "InputPathsMap": {...}}`` rendered as AWS does:
      in a JSON template a variable outside quotes becomes its JSON value (strings get quotes), a
      variable inside a quoted string inserts the string's characters JSON-escaped (objects and arrays
      with their quotes removed, as AWS documents); a path absent from the event gives ``""`` outside
      quotes and nothing inside (AWS-recorded). A template that is neither a JSON object, array nor
      string is plain text and gets raw values. Predefined variables: ``aws.events.rule-arn`` and
      ``aws.events.rule-name`` (from ``rule_arn`` / ``rule_name``, default ``""``),
      ``aws.events.event.ingestion-time`` (``ingestion_time``; default the event's ``time``, else now),
      ``aws.events.event`` (the event without ``detail`` and with ``detail-type`` renamed ``detailType``,
      as AWS delivers it) and ``aws.events.event.json`` (the whole event).
    * none: the whole event as minified JSON.

    Raises ValueError for more than one setting, an unknown placeholder, a reserved or ``aws.``-prefixed
    InputPathsMap key, or an unsupported JSONPath (AWS rejects all of these at PutTargets).
    """
    given = [
        name
        for name, value in (("Input", input), ("InputPath", input_path), ("InputTransformer", input_transformer))
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"Only one of Input, InputPath, or InputTransformer must be provided (got {', '.join(given)})")
    if input is not None:
        return input
    if input_path is not None:
        found, value = _json_path(event, input_path)
        return _dumps(value if found else None)
    if input_transformer is not None:
        variables = _transformer_variables(event, input_transformer, rule_arn, rule_name, ingestion_time)
        return _fill_template(_template_of(input_transformer), variables)
    return _dumps(event)


def _template_of(input_transformer: Mapping[str, Any]) -> str:
    template = input_transformer.get("InputTemplate")
    if not isinstance(template, str):
        raise ValueError("InputTransformer needs an InputTemplate string")
    return template


def _transformer_variables(
    event: dict[str, Any],
    input_transformer: Mapping[str, Any],
    rule_arn: str,
    rule_name: str,
    ingestion_time: str | None,
) -> dict[str, tuple[bool, Any]]:
    variables: dict[str, tuple[bool, Any]] = {}
    for name, path in (input_transformer.get("InputPathsMap") or {}).items():
        if name in _PREDEFINED or name.lower().startswith("aws."):
            raise ValueError(f"InputPathsMap key {name} is reserved")
        variables[name] = _json_path(event, path)
    if ingestion_time is None:
        ingestion_time = event.get("time") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    without_detail = {("detailType" if key == "detail-type" else key): v for key, v in event.items() if key != "detail"}
    variables.update(
        {
            "aws.events.rule-arn": (True, rule_arn),
            "aws.events.rule-name": (True, rule_name),
            "aws.events.event.ingestion-time": (True, ingestion_time),
            "aws.events.event": (True, without_detail),
            "aws.events.event.json": (True, event),
        }
    )
    return variables


def _fill_template(template: str, variables: Mapping[str, tuple[bool, Any]]) -> str:
    json_mode = template.lstrip()[:1] in ("{", "[", '"')
    out: list[str] = []
    in_string = False
    i = 0
    while i < len(template):
        placeholder = _PLACEHOLDER.match(template, i) if template[i] == "<" else None
        if placeholder:
            name = placeholder.group(1)
            if name not in variables:
                raise ValueError(f"InputTemplate contains invalid placeholder {name}")
            found, value = variables[name]
            out.append(_render_variable(found, value, in_string=in_string or not json_mode, json_mode=json_mode))
            i = placeholder.end()
            continue
        step = 2 if in_string and template[i] == "\\" else 1  # keep escape pairs (\" \\) intact
        if json_mode and template[i] == '"':
            in_string = not in_string
        out.append(template[i : i + step])
        i += step
    return "".join(out)


def _render_variable(found: bool, value: Any, *, in_string: bool, json_mode: bool) -> str:
    if not in_string:
        return _dumps(value) if found else '""'
    if not found:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list):
        text = _dumps(value).replace('"', "")  # AWS: objects referenced in a string lose their quotes
    else:
        text = _dumps(value)
    return json.dumps(text, ensure_ascii=False)[1:-1] if json_mode else text


_PATH_STEP = re.compile(r"\.(?P<name>[^.\[\]]+)|\[(?P<index>\d+|\*)\]|\[(?P<quote>['\"])(?P<key>.*?)(?P=quote)\]")


def _json_path(document: Any, path: str) -> tuple[bool, Any]:
    """``(found, value)`` for a simple JSONPath; a ``*`` step makes the value the list of all matches."""
    if not path.startswith("$"):
        raise ValueError(f"unsupported JSONPath {path!r}: must start with $")
    steps: list[str | int | None] = []  # key, index, or None for *
    position = 1
    while position < len(path):
        step = _PATH_STEP.match(path, position)
        if step is None:
            raise ValueError(f"unsupported JSONPath {path!r} at position {position}")
        if step.group("index") is not None:
            steps.append(None if step.group("index") == "*" else int(step.group("index")))
        else:
            name = step.group("name") if step.group("name") is not None else step.group("key")
            steps.append(None if name == "*" else name)
        position = step.end()
    found = _walk(document, steps)
    if None in steps:
        return True, found
    return (True, found[0]) if found else (False, None)


def _walk(node: Any, steps: list[str | int | None]) -> list[Any]:
    if not steps:
        return [node]
    step, rest = steps[0], steps[1:]
    if step is None:
        children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
        return [found for child in children for found in _walk(child, rest)]
    if isinstance(step, int):
        in_range = isinstance(node, list) and step < len(node)
        return _walk(node[step], rest) if in_range else []
    return _walk(node[step], rest) if isinstance(node, dict) and step in node else []
