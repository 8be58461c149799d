"""IAM policy evaluation as AWS documents it (IAM User Guide, "Policy evaluation logic"), within one account.

What is evaluated, the decision, what is not modelled: docs/twin/iam.md ("Policy evaluation").
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ContextValue = str | bool | int | float | Sequence[str] | None
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_SPECIAL_VARIABLES = {"*": "*", "?": "?", "$": "$"}
# Negated operator -> the positive test it negates.
_NEGATED = {
    "stringnotequals": "stringequals",
    "stringnotequalsignorecase": "stringequalsignorecase",
    "stringnotlike": "stringlike",
    "numericnotequals": "numericequals",
    "datenotequals": "dateequals",
    "notipaddress": "ipaddress",
    "arnnotequals": "arnequals",
    "arnnotlike": "arnlike",
}
_VARIABLE_OPERATORS = ("string", "arn")  # operators whose values may hold policy variables


class PolicyError(ValueError):
    """A policy the evaluator cannot read: a malformed statement or an unknown condition operator."""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@functools.lru_cache(maxsize=4096)
def wildcard(pattern: str, ignore_case: bool = False, within_segment: bool = False) -> re.Pattern[str]:
    """`*` -> any run of characters, `?` -> one character (neither crosses `:` when `within_segment`)."""
    run, one = ("[^:]*", "[^:]") if within_segment else (".*", ".")
    body = "".join(run if c == "*" else one if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, (re.IGNORECASE if ignore_case else 0) | re.DOTALL)


def arn_matches(pattern: str, arn: str) -> bool:
    """An ARN pattern (with wildcards) against an ARN, as Resource and ArnLike compare them."""
    if pattern == "*":
        return True
    pattern_parts, arn_parts = pattern.split(":", 5), arn.split(":", 5)
    if len(arn_parts) != 6:
        return pattern == arn  # not an ARN: the request resource "*" of an action without resource types
    if len(pattern_parts) != 6:
        return False  # a pattern with fewer segments never matches an ARN
    for index, (p, a) in enumerate(zip(pattern_parts, arn_parts, strict=True)):
        if wildcard(p, within_segment=index < 5).fullmatch(a) is None:
            return False
    return True


class Context:
    """The request context: condition keys looked up case-insensitively (tag keys exactly first); `resolve`
    computes keys on demand (e.g. `aws:ResourceTag/<k>` from the resource's tags) and returns None when absent."""

    def __init__(
        self,
        values: Mapping[str, ContextValue] | None = None,
        resolve: Callable[[str], ContextValue] | None = None,
    ) -> None:
        self._exact: dict[str, list[str] | None] = {}
        self._lower: dict[str, list[str] | None] = {}
        for key, value in (values or {}).items():
            self.set(key, value)
        self._resolve = resolve

    def set(self, key: str, value: ContextValue) -> None:
        normalized = None if value is None else [_text(v) for v in _as_list(value)]
        self._exact[key] = normalized
        self._lower[key.lower()] = normalized

    def get(self, key: str) -> list[str] | None:
        """The key's values, or None when the request context does not have it."""
        if key in self._exact:
            return self._exact[key]
        if key.lower() in self._lower:
            return self._lower[key.lower()]
        if self._resolve is not None:
            value = self._resolve(key)
            self.set(key, value)
            return self._exact[key]
        return None

    def keys(self) -> list[str]:
        return sorted(k for k, v in self._exact.items() if v is not None)


@dataclass(frozen=True)
class Caller:
    """Who makes the request: an IAM role session (arn = the session, role_arn = its role), an IAM user, or a
    service principal (service = e.g. `events.amazonaws.com`)."""

    arn: str
    account: str
    role_arn: str | None = None
    service: str | None = None

    @property
    def principal_arns(self) -> frozenset[str]:
        return frozenset(a for a in (self.arn, self.role_arn) if a)


@dataclass(frozen=True)
class Request:
    """One authorization question: may `caller` perform `action` on `resource` with this context?"""

    caller: Caller
    action: str  # service:Action
    resource: str  # an ARN, or "*" for an action without resource types
    context: Context


@dataclass(frozen=True)
class Statement:
    """One parsed statement."""

    policy: str
    index: int
    sid: str | None
    effect: str
    actions: tuple[str, ...]
    not_actions: tuple[str, ...] | None
    resources: tuple[str, ...]
    not_resources: tuple[str, ...] | None
    principal: Any
    not_principal: Any
    condition: Mapping[str, Mapping[str, Any]]

    @property
    def label(self) -> str:
        return f"{self.policy}#{self.sid or self.index}"


@dataclass(frozen=True)
class Policy:
    """A policy document and the name it is reported under (`<role>/<policy name>`, `bucket policy of x`, ...)."""

    name: str
    statements: tuple[Statement, ...]
    resource_based: bool = False

    @classmethod
    def parse(cls, name: str, document: Mapping[str, Any] | str, *, resource_based: bool = False) -> Policy:
        doc = json.loads(document) if isinstance(document, str) else document
        raw = doc.get("Statement") if isinstance(doc, Mapping) else None
        if raw is None:
            raise PolicyError(f"{name}: a policy needs a Statement")
        statements = []
        for index, st in enumerate(_as_list(raw)):
            effect = st.get("Effect")
            if effect not in ("Allow", "Deny"):
                raise PolicyError(f"{name}: statement {index}: Effect must be Allow or Deny, got {effect!r}")
            if ("Action" in st) == ("NotAction" in st):
                raise PolicyError(f"{name}: statement {index}: exactly one of Action and NotAction")
            if not resource_based and ("Resource" in st) == ("NotResource" in st):
                raise PolicyError(f"{name}: statement {index}: exactly one of Resource and NotResource")
            if resource_based and ("Principal" in st) == ("NotPrincipal" in st):
                raise PolicyError(f"{name}: statement {index}: exactly one of Principal and NotPrincipal")
            statements.append(
                Statement(
                    policy=name,
                    index=index,
                    sid=st.get("Sid"),
                    effect=effect,
                    actions=tuple(_as_list(st.get("Action"))),
                    not_actions=tuple(_as_list(st["NotAction"])) if "NotAction" in st else None,
                    resources=tuple(_as_list(st.get("Resource", "*" if resource_based else None))),
                    not_resources=tuple(_as_list(st["NotResource"])) if "NotResource" in st else None,
                    principal=st.get("Principal"),
                    not_principal=st.get("NotPrincipal"),
                    condition=st.get("Condition") or {},
                )
            )
        return cls(name=name, statements=tuple(statements), resource_based=resource_based)


@dataclass
class Decision:
    """The outcome, which statement decided it, and how many statements were evaluated."""

    allowed: bool
    request: Request
    deciding: Statement | None = None
    explicit_deny: bool = False
    statements_evaluated: int = 0
    policies: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """AWS's wording for a denial (the end of an AccessDenied message)."""
        if self.allowed:
            return f"allowed by {self.deciding.label if self.deciding else '?'}"
        kind = "resource-based" if self.deciding and self.deciding.policy.startswith("resource:") else "identity-based"
        if self.explicit_deny:
            return f"with an explicit deny in a {kind} policy"
        if self.request.caller.service:
            return f"because no resource-based policy allows the {self.request.action} action"
        return f"because no identity-based policy allows the {self.request.action} action"

    def message(self) -> str:
        """`User: <arn> is not authorized to perform: <action> on resource: <arn> because ...`, as AWS says it."""
        return (
            f"User: {self.request.caller.arn} is not authorized to perform: {self.request.action} "
            f"on resource: {self.request.resource} {self.reason}"
        )


def evaluate(request: Request, identity_policies: Sequence[Policy], resource_policy: Policy | None = None) -> Decision:
    """AWS's decision for `request` under the caller's identity-based policies and the resource's policy."""
    decision = Decision(allowed=False, request=request)
    allow: Statement | None = None
    identity = () if request.caller.service else identity_policies
    for policy in (*identity, *([resource_policy] if resource_policy else [])):
        decision.policies.append(policy.name)
        for statement in policy.statements:
            decision.statements_evaluated += 1
            named = _principal_named(statement, request.caller) if policy.resource_based else "caller"
            if named is None or not _applies(statement, request):
                continue
            if statement.effect == "Deny":
                decision.explicit_deny, decision.deciding = True, statement
                return decision  # an explicit deny wins, whatever else allows
            if named == "caller" and allow is None:
                allow = statement
    if allow is not None:
        decision.allowed, decision.deciding = True, allow
    return decision


def _principal_named(statement: Statement, caller: Caller) -> str | None:
    """ "caller" when the statement's Principal names the caller, "account" when it names only the caller's
    account (a delegation: its Allow grants nothing by itself), None when it does not apply to the caller."""
    if statement.not_principal is not None:
        return None if _principal_match(statement.not_principal, caller) else "caller"
    return _principal_match(statement.principal, caller)


def _principal_match(principal: Any, caller: Caller) -> str | None:
    if principal == "*":
        return "caller"
    if not isinstance(principal, Mapping):
        raise PolicyError(f"Principal must be '*' or a map, got {principal!r}")
    found: str | None = None
    for kind, values in principal.items():
        for value in _as_list(values):
            if kind == "Service" and caller.service and value == caller.service:
                return "caller"
            if kind != "AWS" or caller.service:
                continue
            if value == "*" or value in caller.principal_arns:
                return "caller"
            if value in (caller.account, f"arn:aws:iam::{caller.account}:root"):
                found = "account"
    return found


def _applies(statement: Statement, request: Request) -> bool:
    if statement.not_actions is not None:
        if any(wildcard(a, ignore_case=True).fullmatch(request.action) for a in statement.not_actions):
            return False
    elif not any(wildcard(a, ignore_case=True).fullmatch(request.action) for a in statement.actions):
        return False
    if statement.not_resources is not None:
        if any(_resource_matches(r, request) for r in statement.not_resources):
            return False
    elif not any(_resource_matches(r, request) for r in statement.resources):
        return False
    return all(_operator_holds(op, keys, request.context) for op, keys in statement.condition.items())


def _resource_matches(pattern: str, request: Request) -> bool:
    resolved = substitute(pattern, request.context)
    return resolved is not None and arn_matches(resolved, request.resource)


def substitute(text: str, context: Context) -> str | None:
    """`text` with its policy variables replaced from the context (None: a variable cannot be resolved)."""
    if "${" not in text:
        return text
    failed = False

    def replace(match: re.Match[str]) -> str:
        nonlocal failed
        inner = match.group(1)
        if inner in _SPECIAL_VARIABLES:
            return _SPECIAL_VARIABLES[inner]
        key, _, default = inner.partition(",")
        values = context.get(key.strip())
        if values is not None and len(values) == 1:
            return values[0]
        if default.strip():
            return default.strip().strip("'")
        failed = True
        return ""

    result = _VARIABLE.sub(replace, text)
    return None if failed else result


def _split_operator(name: str) -> tuple[str | None, str, bool]:
    qualifier: str | None = None
    if ":" in name:
        qualifier, name = name.split(":", 1)
        if qualifier.lower() not in ("foranyvalue", "forallvalues"):
            raise PolicyError(f"unknown condition set operator {qualifier!r}")
        qualifier = qualifier.lower()
    base = name.lower()
    if_exists = base.endswith("ifexists")
    if if_exists:
        base = base[: -len("ifexists")]
    if base != "null" and _POSITIVE.get(_NEGATED.get(base, base)) is None:
        raise PolicyError(f"unknown condition operator {name!r}")
    return qualifier, base, if_exists


def _operator_holds(operator: str, keys: Mapping[str, Any], context: Context) -> bool:
    qualifier, base, if_exists = _split_operator(operator)
    return all(
        _key_holds(qualifier, base, if_exists, key, _as_list(expected), context) for key, expected in keys.items()
    )


def _key_holds(
    qualifier: str | None, base: str, if_exists: bool, key: str, expected: list[Any], context: Context
) -> bool:
    actual = context.get(key)
    if base == "null":
        absent = not actual
        return any(_text(v).lower() == ("true" if absent else "false") for v in expected)
    negated = base in _NEGATED
    if actual is None:
        if if_exists or qualifier == "forallvalues":
            return True
        if qualifier == "foranyvalue":
            return False
        return negated
    positive = _POSITIVE[_NEGATED.get(base, base)]
    values = [_text(v) for v in expected]
    if base.startswith(_VARIABLE_OPERATORS) or base.startswith(tuple(f"{p}not" for p in _VARIABLE_OPERATORS)):
        values = [v for v in (substitute(v, context) for v in values) if v is not None]

    def holds(value: str) -> bool:
        matched = any(positive(value, e) for e in values)
        return not matched if negated else matched

    if qualifier == "forallvalues":
        return all(holds(v) for v in actual)
    if qualifier == "foranyvalue":
        return any(holds(v) for v in actual)
    return all(holds(v) for v in actual) if negated else any(holds(v) for v in actual)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _date(text: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _compare(parse: Callable[[str], Any], test: Callable[[Any, Any], bool]) -> Callable[[str, str], bool]:
    def compare(actual: str, expected: str) -> bool:
        a, e = parse(actual), parse(expected)
        return a is not None and e is not None and bool(test(a, e))

    return compare


def _ip_in(actual: str, expected: str) -> bool:
    try:
        return ipaddress.ip_address(actual) in ipaddress.ip_network(expected, strict=False)
    except ValueError:
        return False


def _binary_equals(actual: str, expected: str) -> bool:
    try:
        return base64.b64decode(actual) == base64.b64decode(expected)
    except ValueError:
        return False


def _arn_like(actual: str, expected: str) -> bool:
    return arn_matches(expected, actual)  # ArnEquals and ArnLike behave the same (both take wildcards)


_POSITIVE: dict[str, Callable[[str, str], bool]] = {
    "stringequals": lambda a, e: a == e,
    "stringequalsignorecase": lambda a, e: a.lower() == e.lower(),
    "stringlike": lambda a, e: wildcard(e).fullmatch(a) is not None,
    "numericequals": _compare(_number, lambda a, e: a == e),
    "numericlessthan": _compare(_number, lambda a, e: a < e),
    "numericlessthanequals": _compare(_number, lambda a, e: a <= e),
    "numericgreaterthan": _compare(_number, lambda a, e: a > e),
    "numericgreaterthanequals": _compare(_number, lambda a, e: a >= e),
    "dateequals": _compare(_date, lambda a, e: a == e),
    "datelessthan": _compare(_date, lambda a, e: a < e),
    "datelessthanequals": _compare(_date, lambda a, e: a <= e),
    "dategreaterthan": _compare(_date, lambda a, e: a > e),
    "dategreaterthanequals": _compare(_date, lambda a, e: a >= e),
    "bool": lambda a, e: a.lower() == e.lower(),
    "binaryequals": _binary_equals,
    "ipaddress": _ip_in,
    "arnequals": _arn_like,
    "arnlike": _arn_like,
}
