"""Requests checked as AWS checks them on the server, and the payload quotas the app lives within.

`validation_errors(service, operation, params)` applies botocore's service model to a request the way AWS's
front ends do: required members present, each value of its shape's type, string / list / map / blob lengths within
`min`..`max`, numbers within their range, enum values in their set, strings matching their pattern. The message
is AWS's: `1 validation error detected: Value 'x' at 'member.path' failed to satisfy constraint: ...` (the SDK
only checks required members and types before sending; AWS checks the rest). Patterns are Java regular
expressions; the `regex` package reads their `\\p{...}` classes.

Quotas (each enforced where the twin handles the call; see docs/twin/fidelity.md):
- Step Functions: execution input, output and every state's input/output <= 256 KiB of UTF-8; execution names
  1-80 characters without whitespace, brackets, wildcards, `"#%\\^|~`$&,;:/` or control characters; at most 25,000
  history events ("Step Functions service quotas").
- SQS message, EventBridge PutEvents entries, Lambda asynchronous invocation payload: 1 MB since AWS raised all
  three from 256 KB on 2026-01-29 (AWS Compute Blog, "larger payloads for serverless"); DynamoDB item 400 KB.
- Lambda synchronous invocation payload: 6 MB (6,291,456 bytes; Lambda quotas, "Invocation payload (request and
  response)"). An SQS event source mapping invokes with fewer messages than its batch size when the batch would be
  larger: "The payload size reaches 6 MB. You cannot modify this limit." (Lambda developer guide, "Lambda event
  source mappings", batching behavior). The twin's pollers cut their batches there (`Twin._gather`).
- SSM PutParameter: a Standard-tier value holds at most 4,096 characters, an Advanced one 8,192 (Systems Manager
  endpoints and quotas, "Parameter value size"; moto accepts any size). A name holds at most 1,011 characters
  counting the ARN before it, and at most 15 levels (Systems Manager user guide, "Requirements and constraints for
  parameter names"; moto checks neither); moto refuses the reserved "aws" / "ssm" prefixes itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import botocore.session
import regex

STATES_PAYLOAD_BYTES = 256 * 1024
STATES_HISTORY_EVENTS = 25_000
EXECUTION_NAME_MAX = 80
ASYNC_PAYLOAD_BYTES = 1024 * 1024  # SQS message, EventBridge entries, Lambda async invocation
SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda synchronous invocation (an event source mapping's batch)
PARAMETER_VALUE_CHARS = {"Standard": 4096, "Advanced": 8192}  # SSM parameter values, by tier
PARAMETER_NAME_CHARS = 1011  # SSM parameter name, with the ARN before it ("arn:aws:ssm:<region>:<account>:parameter/")
PARAMETER_LEVELS = 15  # SSM parameter hierarchy depth
# Characters a Step Functions execution (or state machine) name may not contain (StartExecution `name`).
_NAME_FORBIDDEN = frozenset(' \t\n\r<>{}[]?*"#%\\^|~`$&,;:/') | frozenset(
    chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))
)
_MAX_SHOWN = 80  # how much of a bad value a message shows


@functools.cache
def _model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


@functools.cache
def _pattern(text: str) -> Any:
    try:
        return regex.compile(text, regex.V0)
    except regex.error:  # a Java-only construct the regex package cannot read: the pattern is not checked
        return None


def validation_errors(service: str, operation: str, params: Mapping[str, Any]) -> list[str]:
    """Every constraint of the operation's input shape that `params` breaks, worded as AWS words them."""
    shape = _model(service).operation_model(operation).input_shape
    errors: list[str] = []
    if shape is not None:
        _check(shape, params, "", errors)
    return errors


def validation_message(errors: list[str]) -> str:
    count = len(errors)
    return f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(errors)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _member_path(path: str, name: str) -> str:
    member = name[:1].lower() + name[1:]
    return f"{path}.{member}" if path else member


def _fail(errors: list[str], value: Any, path: str, constraint: str) -> None:
    shown = "null" if value is None else f"'{_shown(value)}'"
    errors.append(f"Value {shown} at '{path}' failed to satisfy constraint: {constraint}")


def _check(shape: Any, value: Any, path: str, errors: list[str]) -> None:  # noqa: C901 - one branch per shape type
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        if not isinstance(value, Mapping):
            _fail(errors, value, path or "input", "Member must be a structure")
            return
        for required in shape.required_members:
            token = shape.members[required].metadata.get("idempotencyToken")  # the SDK fills it in
            if value.get(required) is None and not token:
                _fail(errors, None, _member_path(path, required), "Member must not be null")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                _check(member, value[name], _member_path(path, name), errors)
        return
    if kind == "list":
        if not isinstance(value, list | tuple):
            _fail(errors, value, path, "Member must be a list")
            return
        _length(errors, value, len(value), meta, path)
        for index, item in enumerate(value, start=1):
            _check(shape.member, item, f"{path}.{index}.member", errors)
        return
    if kind == "map":
        if not isinstance(value, Mapping):
            _fail(errors, value, path, "Member must be a map")
            return
        _length(errors, value, len(value), meta, path)
        for key, item in value.items():
            _check(shape.key, key, f"{path}.key", errors)
            _check(shape.value, item, f"{path}.{key}.value", errors)
        return
    if kind == "string":
        if not isinstance(value, str):
            _fail(errors, value, path, "Member must be a string")
            return
        _length(errors, value, len(value), meta, path)
        if shape.enum and value not in shape.enum:
            _fail(errors, value, path, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        pattern = _pattern(meta["pattern"]) if "pattern" in meta else None
        if pattern is not None and pattern.fullmatch(value) is None:
            _fail(errors, value, path, f"Member must satisfy regular expression pattern: {meta['pattern']}")
        return
    if kind in ("integer", "long", "float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(errors, value, path, f"Member must be a number ({kind})")
            return
        if "min" in meta and value < meta["min"]:
            _fail(errors, value, path, f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            _fail(errors, value, path, f"Member must have value less than or equal to {meta['max']}")
        return
    if kind == "boolean" and not isinstance(value, bool):
        _fail(errors, value, path, "Member must be a boolean")
    if kind == "blob" and isinstance(value, str | bytes):
        _length(errors, value, len(value), meta, path)


def _length(errors: list[str], value: Any, length: int, meta: Mapping[str, Any], path: str) -> None:
    if "min" in meta and length < meta["min"]:
        _fail(errors, value, path, f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and length > meta["max"]:
        _fail(errors, value, path, f"Member must have length less than or equal to {meta['max']}")


def execution_name_problem(name: str) -> str | None:
    """Why Step Functions refuses `name` for an execution (InvalidName), or None."""
    if not 1 <= len(name) <= EXECUTION_NAME_MAX:
        return f"Invalid Name: '{name}' (an execution name has 1 to {EXECUTION_NAME_MAX} characters)"
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"Invalid Name: '{name}' (it may not contain {shown})"
    return None


def utf8_size(value: Any) -> int:
    """The size AWS counts for a payload: its JSON text in UTF-8 (a str is counted as given)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return len(text.encode("utf-8"))


def put_events_size(entries: Sequence[Mapping[str, Any]]) -> int:
    """The size of PutEvents entries as EventBridge counts it ("Calculating PutEvents event entry size"): Time 14
    bytes when given; Source, DetailType, Detail and each Resources entry in UTF-8."""
    total = 0
    for entry in entries:
        total += 14 if entry.get("Time") is not None else 0
        for key in ("Source", "DetailType", "Detail"):
            total += len(str(entry.get(key) or "").encode("utf-8"))
        total += sum(len(str(r).encode("utf-8")) for r in entry.get("Resources") or [])
    return total


def parameter_value_problem(value: str, tier: str | None) -> str | None:
    """Why SSM refuses `value` for a parameter of `tier` (default Standard; Intelligent-Tiering picks the tier the
    value needs), or None. The message is SSM's ValidationException."""
    limit = PARAMETER_VALUE_CHARS["Advanced" if tier == "Intelligent-Tiering" else tier or "Standard"]
    if len(value) <= limit:
        return None
    if limit == PARAMETER_VALUE_CHARS["Standard"]:
        return (
            f"Standard tier parameters support a maximum parameter value of {limit} characters. To create a larger "
            "parameter value, upgrade the parameter to use the advanced-parameter tier."
        )
    return f"Advanced tier parameters support a maximum parameter value of {limit} characters."


def parameter_name_problem(name: str, region: str, account: str) -> str | None:
    """Why SSM refuses `name` for a parameter of the twin's account and region, as `<error code>: <message>`, or
    None (Systems Manager user guide, "Requirements and constraints for parameter names": "The maximum length for
    the fully qualified parameter name ... is 1011 characters", a count that "includes the characters in the ARN that
    precede the name"; "the hierarchy can have a maximum depth of fifteen levels"). The depth message is the one
    botocore's model gives HierarchyLevelLimitExceededException; the length one is the twin's (AWS's is not
    documented)."""
    before = f"arn:aws:ssm:{region}:{account}:parameter/"
    if len(before) + len(name) > PARAMETER_NAME_CHARS:
        return (
            f"ValidationException: Parameter name: {len(name)} characters, {len(before) + len(name)} with the ARN "
            f"before it ({before}); the maximum is {PARAMETER_NAME_CHARS}."
        )
    levels = len(name.strip("/").split("/"))
    if levels > PARAMETER_LEVELS:
        return (
            f"HierarchyLevelLimitExceededException: A hierarchy can have a maximum of {PARAMETER_LEVELS} levels "
            f"({name!r} has {levels})."
        )
    return None
