"""Static IAM checks of the synthesized template against AWS's Service Authorization Reference.

Three parts, each usable on its own (tests/infra/test_iam_static.py drives them):
- `Resolver`: renders the CloudFormation intrinsics of policy documents (`Ref`, `Fn::GetAtt`, `Fn::Join`,
  `Fn::Sub`, pseudo parameters) into realistic ARNs per referenced resource type; anything it does not know
  raises `Unresolvable` (it never guesses).
- `collect_policies` + `action_violations` / `resource_violations` / `condition_violations`: every identity,
  resource-based and trust policy of the template, and what in each statement the reference does not allow.
- `HandlerCalls`: the AWS API operations a Lambda function's code calls, found with `ast` in
  `lambdas/<fn>/*.py` and in the parts of `autopilot_common` it reaches, mapped to operation names with botocore.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import botocore.session
from botocore import xform_name

from local.iam.operations import Authorization, authorizations
from local.iam.policy import Policy, Statement, wildcard
from local.iam.reference import Action, UnknownAction, reference

ACCOUNT = "123456789012"
REGION = "us-east-1"
PARTITION = "aws"
ROOT = Path(__file__).resolve().parents[2]
LAMBDAS = ROOT / "lambdas"
COMMON_PACKAGE = "autopilot_common"
COMMON = LAMBDAS / "common" / "python" / COMMON_PACKAGE
FUNCTIONS = sorted(p.name for p in LAMBDAS.iterdir() if (p / "handler.py").is_file())


class Unresolvable(ValueError):
    """An intrinsic, resource type or attribute the static resolver does not know."""


# ------------------------------------------------------------------------------------------------- the resolver


def _arn(service: str, resource: str, *, region: str = REGION, account: str = ACCOUNT) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{account}:{resource}"


def _name(props: Mapping[str, Any], prop: str | None, logical_id: str) -> str:
    """The resource's physical name: its name property when the template sets one as a plain string."""
    value = props.get(prop) if prop else None
    return value if isinstance(value, str) else logical_id


@dataclass(frozen=True)
class _Kind:
    """How one resource type renders: its `Ref` value and its `Fn::GetAtt` attributes."""

    ref: str
    attributes: Mapping[str, str]


def _kind(type_: str, logical_id: str, props: Mapping[str, Any]) -> _Kind:  # noqa: C901 - one row per type
    """`Ref` and attributes of one resource, with realistic values (unknown type: `Unresolvable`)."""
    if type_ == "AWS::S3::Bucket":
        name = _name(props, "BucketName", logical_id.lower())
        arn = f"arn:{PARTITION}:s3:::{name}"
        return _Kind(name, {"Arn": arn, "DomainName": f"{name}.s3.amazonaws.com"})
    if type_ in {"AWS::DynamoDB::Table", "AWS::DynamoDB::GlobalTable"}:
        name = _name(props, "TableName", logical_id)
        arn = _arn("dynamodb", f"table/{name}")
        return _Kind(name, {"Arn": arn, "StreamArn": f"{arn}/stream/2026-01-01T00:00:00.000"})
    if type_ == "AWS::SQS::Queue":
        name = _name(props, "QueueName", logical_id)
        url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        return _Kind(url, {"Arn": _arn("sqs", name), "QueueName": name, "QueueUrl": url})
    if type_ == "AWS::SNS::Topic":
        name = _name(props, "TopicName", logical_id)
        return _Kind(_arn("sns", name), {"TopicArn": _arn("sns", name), "TopicName": name})
    if type_ == "AWS::Lambda::Function":
        name = _name(props, "FunctionName", logical_id)
        return _Kind(name, {"Arn": _arn("lambda", f"function:{name}")})
    if type_ == "AWS::Lambda::LayerVersion":
        return _Kind(_arn("lambda", f"layer:{_name(props, 'LayerName', logical_id)}:1"), {})
    if type_ == "AWS::IAM::Role":
        name, path = _name(props, "RoleName", logical_id), props.get("Path", "/")
        return _Kind(name, {"Arn": _arn("iam", f"role{path}{name}", region=""), "RoleId": f"AROA{logical_id}"})
    if type_ == "AWS::IAM::InstanceProfile":
        name = _name(props, "InstanceProfileName", logical_id)
        return _Kind(name, {"Arn": _arn("iam", f"instance-profile/{name}", region="")})
    if type_ == "AWS::IAM::ManagedPolicy":
        return _Kind(_arn("iam", f"policy/{_name(props, 'ManagedPolicyName', logical_id)}", region=""), {})
    if type_ == "AWS::StepFunctions::StateMachine":
        name = _name(props, "StateMachineName", logical_id)
        arn = _arn("states", f"stateMachine:{name}")
        return _Kind(arn, {"Arn": arn, "Name": name})
    if type_ == "AWS::EMRServerless::Application":
        app_id = logical_id.lower()
        return _Kind(app_id, {"Arn": _arn("emr-serverless", f"/applications/{app_id}"), "ApplicationId": app_id})
    if type_ == "AWS::EMRContainers::VirtualCluster":
        vc_id = logical_id.lower()
        return _Kind(vc_id, {"Id": vc_id, "Arn": _arn("emr-containers", f"/virtualclusters/{vc_id}")})
    if type_ == "AWS::KMS::Key":
        key_id = logical_id.lower()
        return _Kind(key_id, {"Arn": _arn("kms", f"key/{key_id}"), "KeyId": key_id})
    if type_ == "AWS::Events::Rule":
        name, bus = _name(props, "Name", logical_id), props.get("EventBusName")
        rule = f"rule/{bus}/{name}" if isinstance(bus, str) and bus != "default" else f"rule/{name}"
        return _Kind(name, {"Arn": _arn("events", rule)})
    if type_ == "AWS::Logs::LogGroup":
        name = _name(props, "LogGroupName", logical_id)
        return _Kind(name, {"Arn": _arn("logs", f"log-group:{name}:*")})
    if type_ == "AWS::CloudTrail::Trail":
        name = _name(props, "TrailName", logical_id)
        return _Kind(name, {"Arn": _arn("cloudtrail", f"trail/{name}")})
    if type_ == "AWS::CloudWatch::Alarm":
        name = _name(props, "AlarmName", logical_id)
        return _Kind(name, {"Arn": _arn("cloudwatch", f"alarm:{name}")})
    if type_ == "AWS::EMR::SecurityConfiguration":
        return _Kind(_name(props, "Name", logical_id), {})
    raise Unresolvable(f"{logical_id}: the static resolver does not know the resource type {type_}")


_PSEUDO = {
    "AWS::Partition": PARTITION,
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
}
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class Resolver:
    """Renders intrinsics to strings: `render` keeps plain values, replaces each intrinsic by its value."""

    def __init__(self, template: Mapping[str, Any]) -> None:
        self._resources: Mapping[str, Any] = template.get("Resources", {})
        self._parameters: Mapping[str, Any] = template.get("Parameters", {})

    def render(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.render(v) for v in value]
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, argument),) = value.items()
                if key == "Ref" or key.startswith("Fn::"):
                    return self._intrinsic(key, argument)
            return {k: self.render(v) for k, v in value.items()}
        return value

    def text(self, value: Any) -> str:
        rendered = self.render(value)
        if not isinstance(rendered, str):
            raise Unresolvable(f"expected a string, got {json.dumps(value)}")
        return rendered

    def _intrinsic(self, key: str, argument: Any) -> str:
        if key == "Ref":
            return self.ref(str(argument))
        if key == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else str(argument).split(".", 1)
            return self.get_att(logical_id, attribute)
        if key == "Fn::Join":
            separator, parts = argument
            return str(separator).join(self.text(part) for part in self.render(parts))
        if key == "Fn::Sub":
            return self._sub(argument)
        raise Unresolvable(f"the static resolver does not handle {key}: {json.dumps(argument)}")

    def ref(self, name: str) -> str:
        if name in _PSEUDO:
            return _PSEUDO[name]
        if name in self._parameters:
            default = self._parameters[name].get("Default")
            if default is None:
                raise Unresolvable(f"parameter {name} has no Default to render")
            return str(default)
        return self._kind_of(name).ref

    def get_att(self, logical_id: str, attribute: str) -> str:
        kind = self._kind_of(logical_id)
        if attribute not in kind.attributes:
            type_ = self._resources[logical_id]["Type"]
            raise Unresolvable(f"{logical_id}: the static resolver does not know {type_}.{attribute}")
        return kind.attributes[attribute]

    def _kind_of(self, logical_id: str) -> _Kind:
        if logical_id not in self._resources:
            raise Unresolvable(f"Ref/GetAtt of {logical_id}: no such resource, parameter or pseudo parameter")
        resource = self._resources[logical_id]
        return _kind(resource["Type"], logical_id, resource.get("Properties", {}))

    def _sub(self, argument: Any) -> str:
        template, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {k: self.text(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return values[name]
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return self.ref(name)

        return _SUB_VARIABLE.sub(replace, template).replace("${!", "${")


# ------------------------------------------------------------------------------------------- the policies


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


# One statement model for the static check and the twin's evaluator (`local.iam.policy`).
StaticStatement = Statement


@dataclass(frozen=True)
class StaticPolicy:
    """One policy document of the template, with the logical id of the resource that holds it."""

    logical_id: str
    name: str
    kind: str  # identity | resource | trust
    roles: tuple[str, ...]  # identity and trust policies: the logical ids of the roles they belong to
    statements: tuple[StaticStatement, ...]


RESOURCE_POLICY_TYPES = {
    "AWS::S3::BucketPolicy": "bucket",
    "AWS::SQS::QueuePolicy": "queue",
    "AWS::SNS::TopicPolicy": "topic",
    "AWS::Lambda::Permission": "lambda-permission",
    "AWS::KMS::Key": "kms-key",
}
# Every resource type that holds a policy document, and where: `test_every_policy_document_is_collected` fails
# on a type (or property) with a "Statement" that is not listed here.
POLICY_HOLDERS = {
    "AWS::IAM::Policy": {"PolicyDocument"},
    "AWS::IAM::ManagedPolicy": {"PolicyDocument"},
    "AWS::IAM::Role": {"AssumeRolePolicyDocument", "Policies"},
    "AWS::S3::BucketPolicy": {"PolicyDocument"},
    "AWS::SQS::QueuePolicy": {"PolicyDocument"},
    "AWS::SNS::TopicPolicy": {"PolicyDocument"},
    "AWS::KMS::Key": {"KeyPolicy"},
}


def parse_statements(name: str, document: Any, resolver: Resolver) -> tuple[StaticStatement, ...]:
    """A policy document's statements, their Resource / NotResource, Condition and Principal rendered by
    `resolver`, parsed as the twin's evaluator parses them (a document whose statements name a Principal is a
    resource-based or trust policy)."""
    rendered = []
    for raw in as_list(document["Statement"]):
        statement = dict(raw)
        for key in ("Resource", "NotResource"):
            if key in statement:
                statement[key] = [resolver.text(r) for r in as_list(statement[key])]
        for key in ("Condition", "Principal", "NotPrincipal"):
            if key in statement:
                statement[key] = resolver.render(statement[key])
        rendered.append(statement)
    resource_based = any("Principal" in st or "NotPrincipal" in st for st in rendered)
    return Policy.parse(name, {"Statement": rendered}, resource_based=resource_based).statements


def _role_refs(props: Mapping[str, Any]) -> tuple[str, ...]:
    roles = []
    for role in as_list(props.get("Roles")):
        if not (isinstance(role, dict) and set(role) == {"Ref"}):
            raise Unresolvable(f"a policy attached to a role that is not a Ref of this template: {json.dumps(role)}")
        roles.append(role["Ref"])
    return tuple(roles)


def _lambda_permission(logical_id: str, props: Mapping[str, Any], resolver: Resolver) -> StaticPolicy:
    """A Lambda permission as the one-statement resource policy it adds to the function."""
    function = resolver.text(props["FunctionName"])
    if not function.startswith("arn:"):
        function = _arn("lambda", f"function:{function}")
    principal = props["Principal"]
    kind = "Service" if principal.endswith(".amazonaws.com") else "AWS"
    statement = {"Effect": "Allow", "Action": props["Action"], "Resource": function, "Principal": {kind: principal}}
    document = {"Statement": [statement]}
    return StaticPolicy(logical_id, logical_id, "resource", (), parse_statements(logical_id, document, resolver))


def collect_policies(template: Mapping[str, Any], resolver: Resolver | None = None) -> list[StaticPolicy]:
    """Every policy document of the template: identity (IAM policies, inline role policies), resource-based
    (bucket, queue, topic, key policies and Lambda permissions) and trust (roles' assume-role policies)."""
    resolver = resolver or Resolver(template)
    out: list[StaticPolicy] = []
    for logical_id, resource in template["Resources"].items():
        type_, props = resource["Type"], resource.get("Properties", {})
        if type_ in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            statements = parse_statements(logical_id, props["PolicyDocument"], resolver)
            out.append(StaticPolicy(logical_id, logical_id, "identity", _role_refs(props), statements))
        elif type_ == "AWS::IAM::Role":
            for inline in props.get("Policies", []):
                name = f"{logical_id}/{inline['PolicyName']}"
                statements = parse_statements(name, inline["PolicyDocument"], resolver)
                out.append(StaticPolicy(logical_id, name, "identity", (logical_id,), statements))
            trust = parse_statements(f"{logical_id}/trust", props["AssumeRolePolicyDocument"], resolver)
            out.append(StaticPolicy(logical_id, f"{logical_id}/trust", "trust", (logical_id,), trust))
        elif type_ == "AWS::Lambda::Permission":
            out.append(_lambda_permission(logical_id, props, resolver))
        elif type_ in RESOURCE_POLICY_TYPES:
            document = props["KeyPolicy" if type_ == "AWS::KMS::Key" else "PolicyDocument"]
            out.append(
                StaticPolicy(logical_id, logical_id, "resource", (), parse_statements(logical_id, document, resolver))
            )
    return out


def policy_documents(template: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(logical id, type, top-level property) of every property holding a "Statement", wherever it is."""
    for logical_id, resource in template["Resources"].items():
        for prop, value in resource.get("Properties", {}).items():
            if '"Statement"' in json.dumps(value):
                yield logical_id, resource["Type"], prop


# ------------------------------------------------------------------------------------------- the checks


def is_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def expand(pattern: str) -> list[Action]:
    """The reference's actions one Action entry names ([] for an unknown action or a pattern matching none)."""
    if is_wildcard(pattern):
        return reference().actions_matching(pattern)
    try:
        return [reference().action(pattern)]
    except UnknownAction:
        return []


def action_violations(policy: StaticPolicy) -> list[str]:
    """Actions the reference does not list, wildcards that match none, and `*` alone outside a Deny."""
    out = []
    for statement in policy.statements:
        for entry in statement.actions + (statement.not_actions or ()):
            if entry == "*":
                if statement.effect != "Deny" or statement.not_actions:
                    out.append(f"{statement.label}: Action '*' (every action of every service) outside a Deny")
            elif not expand(entry):
                what = "matches no action" if is_wildcard(entry) else "is not an action"
                out.append(f"{statement.label}: {entry} {what} of the Service Authorization Reference")
    return out


def grantable(action: Action, resources: Iterable[str]) -> bool:
    """Whether a statement's resources can grant `action`: `*`, or an ARN of one of its resource types
    (an action without resource types: only `*`)."""
    resources = list(resources)
    if "*" in resources:
        return True
    return any(rt.could_match(r) for r in resources for rt, _ in action.resource_types)


def _resource_types(action: Action) -> str:
    if not action.has_resource_types:
        return "it has no resource type, so only Resource '*' can grant it"
    formats = ", ".join(f"{rt.name} ({rt.arn_format})" for rt, _ in action.resource_types)
    return f"its resource types are {formats}"


def resource_violations(policy: StaticPolicy) -> list[str]:
    """Allow statements naming an action none of their resources can grant (per the reference's ARN formats)."""
    out = []
    for statement in policy.statements:
        if statement.effect != "Allow" or policy.kind == "trust" or statement.not_resources is not None:
            continue  # no Resource to check
        for entry in statement.actions:
            if entry == "*":
                continue  # action_violations reports it
            actions = expand(entry)
            if actions and not any(grantable(a, statement.resources) for a in actions):
                shown = ", ".join(statement.resources)
                why = (
                    _resource_types(actions[0])
                    if len(actions) == 1
                    else f"none of the {len(actions)} actions it names has a resource type these ARNs match"
                )
                out.append(f"{statement.label}: {entry} on [{shown}] grants nothing: {why}")
    return out


def condition_keys(statement: StaticStatement) -> list[str]:
    return [key for block in statement.condition.values() for key in block]


# Keys an OIDC identity provider adds to AssumeRoleWithWebIdentity, as `<provider url>:<claim>` (IAM User Guide,
# "Available keys for AWS OIDC federation"); the reference lists them only for a few named providers.
OIDC_CLAIMS = ("amr", "aud", "azp", "email", "oaud", "sub")


def federation_keys(statement: StaticStatement) -> set[str]:
    """The OIDC keys of the providers a trust statement's `Federated` principal names (lower case)."""
    principal = statement.principal if isinstance(statement.principal, dict) else {}
    keys = set()
    for provider in as_list(principal.get("Federated")):
        match = re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:oidc-provider/(.+)", str(provider))
        if match and "sts:AssumeRoleWithWebIdentity" in statement.actions:
            keys |= {f"{match.group(1)}:{claim}".lower() for claim in OIDC_CLAIMS}
    return keys


def condition_violations(policy: StaticPolicy) -> list[str]:
    """Condition keys neither global nor supported by any of the statement's (expanded) actions (in a trust
    policy, also an OIDC claim of the provider its Federated principal names)."""
    out = []
    for statement in policy.statements:
        if statement.not_actions or "*" in statement.actions:
            continue  # every action (but some): any key of any service may apply
        actions = [a for entry in statement.actions for a in expand(entry)]
        if not actions:
            continue  # action_violations reports the unknown actions
        federated = federation_keys(statement)
        for key in condition_keys(statement):
            if key.lower() not in federated and not any(a.supports_condition_key(key) for a in actions):
                names = ", ".join(statement.actions)
                out.append(f"{statement.label}: condition key {key} is not global and none of [{names}] supports it")
    return out


# ----------------------------------------------------------------------------------------- roles and grants


def action_allowed(action: str, statements: Iterable[StaticStatement]) -> bool:
    """By action name only: an Allow statement whose Action (wildcards, any case) names it, or whose NotAction
    does not."""
    for statement in statements:
        if statement.effect != "Allow":
            continue
        if statement.actions and any(wildcard(p, ignore_case=True).fullmatch(action) for p in statement.actions):
            return True
        if statement.not_actions and not any(
            wildcard(p, ignore_case=True).fullmatch(action) for p in statement.not_actions
        ):
            return True
    return False


@functools.cache
def _aws_managed_policies() -> dict[str, Any]:
    """AWS managed policies as the twin's IAM (moto) holds them, by name."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    data: dict[str, Any] = json.loads(aws_managed_policies_data)
    return data


def managed_policy(arn: str) -> StaticPolicy:
    """An AWS managed policy by ARN (`Unresolvable` for one the twin's data does not hold)."""
    match = re.fullmatch(r"arn:aws[\w-]*:iam::aws:policy/(?:.*/)?([^/]+)", arn)
    if match is None or match.group(1) not in _aws_managed_policies():
        raise Unresolvable(f"{arn}: not an AWS managed policy the twin's IAM data holds")
    document = _aws_managed_policies()[match.group(1)]["Document"]
    return StaticPolicy(arn, arn, "identity", (), parse_statements(arn, document, Resolver({})))


def role_statements(template: Mapping[str, Any], role_id: str, policies: list[StaticPolicy]) -> list[StaticStatement]:
    """What a role is allowed: the identity policies attached to it and its AWS managed policies."""
    resolver = Resolver(template)
    out = [s for p in policies if p.kind == "identity" and role_id in p.roles for s in p.statements]
    for arn in template["Resources"][role_id].get("Properties", {}).get("ManagedPolicyArns", []):
        out.extend(managed_policy(resolver.text(arn)).statements)
    return out


def function_role(template: Mapping[str, Any], function: str) -> str:
    """The logical id of the role of the app's function `lambdas/<function>` (its name ends with `-<function>`)."""
    found = [
        r["Properties"]["Role"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
        and str(r["Properties"].get("FunctionName", "")).endswith(f"-{function}")
    ]
    if len(found) != 1 or set(found[0]) != {"Fn::GetAtt"}:
        raise Unresolvable(f"lambdas/{function}: expected one function named *-{function} with a role of this template")
    return str(found[0]["Fn::GetAtt"][0])


# --------------------------------------------------------------------------------------- the handlers' calls

# Powertools' idempotency utility (DynamoDBPersistenceLayer) reads, claims, updates and deletes its records.
IDEMPOTENCY_DECORATORS = {"idempotent", "idempotent_function"}
IDEMPOTENCY_OPERATIONS = {("dynamodb", op) for op in ("GetItem", "PutItem", "UpdateItem", "DeleteItem")}
TRANSACT_KINDS = {"Put", "Update", "Delete", "ConditionCheck"}


@functools.cache
def _operations(service: str) -> dict[str, str]:
    """snake_case method name -> API operation name, for one botocore service."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


@functools.cache
def _botocore_services() -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_available_services())


@dataclass
class _Module:
    name: str
    tree: ast.Module
    defs: dict[str, ast.stmt] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)

    @classmethod
    def parse(cls, name: str, path: Path) -> _Module:
        module = cls(name, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for node in module.tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                module.defs[node.name] = node
        for imported in ast.walk(module.tree):
            if isinstance(imported, ast.ImportFrom) and imported.module:
                for alias in imported.names:
                    module.imports[alias.asname or alias.name] = (imported.module, alias.name)
        return module

    def roots(self) -> list[ast.stmt]:
        """The module-level statements that are not definitions (run on import)."""
        return [n for n in self.tree.body if n not in self.defs.values()]


class HandlerCalls:
    """The AWS API operations one function's code calls (see the module docstring)."""

    def __init__(self, function: str, lambdas: Path = LAMBDAS) -> None:
        self.function = function
        own = [_Module.parse(p.stem, p) for p in sorted((lambdas / function).glob("*.py"))]
        if not own:
            raise Unresolvable(f"{lambdas / function}: no Python module")
        common = lambdas / COMMON.relative_to(LAMBDAS)
        self._common = {p.stem: _Module.parse(p.stem, p) for p in sorted(common.glob("*.py"))}
        self.nodes: list[ast.AST] = [m.tree for m in own] + self._reached_common(own)

    def _reached_common(self, own: list[_Module]) -> list[ast.AST]:
        """The definitions of autopilot_common the function's modules reach, through names, transitively."""
        pending = [(name[len(COMMON_PACKAGE) + 1 :], attr) for m in own for name, attr in m.imports.values()]
        pending = [(mod, attr) for mod, attr in pending if mod in self._common]
        seen: set[tuple[str, str]] = set()
        modules_seen: set[str] = set()
        nodes: list[ast.AST] = []
        while pending:
            module_name, name = pending.pop()
            if (module_name, name) in seen:
                continue
            seen.add((module_name, name))
            module = self._common[module_name]
            reached: list[ast.AST] = []
            if module_name not in modules_seen:
                modules_seen.add(module_name)
                reached.extend(module.roots())
            if name in module.defs:
                reached.append(module.defs[name])
            nodes.extend(reached)
            pending.extend(self._names_in(module, reached))
        return nodes

    def _names_in(self, module: _Module, nodes: list[ast.AST]) -> list[tuple[str, str]]:
        found = []
        for node in nodes:
            for name in (n.id for n in ast.walk(node) if isinstance(n, ast.Name)):
                if name in module.defs:
                    found.append((module.name, name))
                elif name in module.imports and module.imports[name][0].startswith(f"{COMMON_PACKAGE}."):
                    target, attr = module.imports[name]
                    found.append((target.split(".", 1)[1], attr))
        return found

    def _walk(self) -> Iterator[ast.AST]:
        for node in self.nodes:
            yield from ast.walk(node)

    @functools.cached_property
    def services(self) -> frozenset[str]:
        """The services the code creates clients for: `boto3.client("s3")`, `aws_client("emr")`, `_client(...)`."""
        found = set()
        for node in self._walk():
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if callee.endswith("client") and node.args[0].value in _botocore_services():
                    found.add(str(node.args[0].value))
        return frozenset(found)

    @functools.cached_property
    def uses_idempotency(self) -> bool:
        return any(isinstance(n, ast.Name) and n.id in IDEMPOTENCY_DECORATORS for n in self._walk())

    def paginated(self) -> set[str]:
        """Method names given to `get_paginator`, literal or passed in by every caller of a helper."""
        names: set[str] = set()
        for function in (n for n in self._walk() if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            params = [a.arg for a in function.args.args]
            for call in (n for n in ast.walk(function) if _is_call_of(n, "get_paginator")):
                argument = call.args[0]
                if isinstance(argument, ast.Constant):
                    names.add(str(argument.value))
                elif isinstance(argument, ast.Name) and argument.id in params:
                    names |= self._arguments_of(function.name, argument.id, params.index(argument.id))
                else:
                    raise Unresolvable(f"lambdas/{self.function}: get_paginator({ast.unparse(argument)}) in "
                                       f"{function.name}: cannot tell the operation statically")  # fmt: skip
        return names

    def _arguments_of(self, function: str, param: str, position: int) -> set[str]:
        values = set()
        calls = [n for n in self._walk() if _is_call_of(n, function)]
        for call in calls:
            keyword = {k.arg: k.value for k in call.keywords}
            argument = call.args[position] if position < len(call.args) else keyword.get(param)
            if not isinstance(argument, ast.Constant):
                raise Unresolvable(f"lambdas/{self.function}: a call of {function} passes {param} "
                                   "as something other than a literal")  # fmt: skip
            values.add(str(argument.value))
        if not calls:
            raise Unresolvable(
                f"lambdas/{self.function}: {function} pages with its parameter {param}; nothing calls it"
            )
        return values

    def operations(self) -> set[tuple[str, str]]:
        """(service, operation): every attribute (called or passed on) named after an operation of a service
        the code has a client of, every paginated operation, and powertools idempotency's DynamoDB calls."""
        attributes = {n.attr for n in self._walk() if isinstance(n, ast.Attribute)}
        paginated = self.paginated()
        found = {
            (service, _operations(service)[name])
            for service in self.services
            for name in attributes | paginated
            if name in _operations(service)
        }
        for name in paginated:
            if not any(name in _operations(s) for s in self.services):
                raise Unresolvable(
                    f"lambdas/{self.function}: get_paginator({name!r}) is no operation of {self.services}"
                )
        return found | (IDEMPOTENCY_OPERATIONS if self.uses_idempotency else set())

    def transact_kinds(self) -> set[str]:
        """The kinds of TransactWriteItems items the code builds (`{"Put": {...}}`, `{"Update": ...}`, ...)."""
        return {
            key.value
            for node in self._walk()
            if isinstance(node, ast.Dict)
            for key in node.keys
            if isinstance(key, ast.Constant) and key.value in TRANSACT_KINDS
        }


def _is_call_of(node: ast.AST, name: str) -> TypeGuard[ast.Call]:
    if not isinstance(node, ast.Call):
        return False
    callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    return callee == name


# ------------------------------------------------------------------------------------ the twin's IAM table


class SampleLookups:
    """What the twin's table asks beyond the request, answered with sample ARNs."""

    account = ACCOUNT
    region = REGION

    def role_arn(self, name_or_arn: str) -> str:
        return name_or_arn if name_or_arn.startswith("arn:") else f"arn:aws:iam::{ACCOUNT}:role/{name_or_arn}"

    def instance_profile_roles(self, name_or_arn: str) -> list[str]:
        return [f"arn:aws:iam::{ACCOUNT}:role/{name_or_arn.rsplit('/', 1)[-1]}-role"]

    def role_exists(self, name: str) -> bool:
        return False  # a fresh account: no service-linked role exists yet (the strictest case)


_SAMPLE_MEMBERS: dict[str, Any] = {
    "Bucket": "bucket", "Key": "key", "Prefix": "prefix/", "TableName": "table",
    "QueueUrl": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/queue", "QueueName": "queue",
    "TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:topic", "FunctionName": "function",
    "stateMachineArn": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:machine",
    "executionArn": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:machine:run",
    "ClusterId": "j-1", "JobFlowId": "j-1", "JobFlowIds": ["j-1"], "StepId": "s-1", "ResourceId": "j-1",
    "applicationId": "app", "jobRunId": "run", "virtualClusterId": "vc", "id": "run",
    "executionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/job", "AlarmName": "alarm", "AlarmNames": ["alarm"],
    "AlarmNamePrefix": "alarm-", "Name": "rule", "Rule": "rule", "CopySource": "bucket/source", "Path": "/path",
}  # fmt: skip


def sample_params(service: str, operation: str, transact_kinds: Iterable[str] = ()) -> dict[str, Any]:
    """Representative request parameters for the twin's table (the members its row reads)."""
    if (service, operation) == ("dynamodb", "TransactWriteItems"):
        kinds = sorted(transact_kinds)
        if not kinds:
            raise Unresolvable("TransactWriteItems: the code builds no Put/Update/Delete/ConditionCheck item")
        return {"TransactItems": [{kind: {"TableName": "table"}} for kind in kinds]}
    if (service, operation) == ("dynamodb", "TransactGetItems"):
        return {"TransactItems": [{"Get": {"TableName": "table"}}]}
    if (service, operation) in {("dynamodb", "BatchGetItem"), ("dynamodb", "BatchWriteItem")}:
        body = {"Keys": [{}]} if operation == "BatchGetItem" else [{"PutRequest": {}}]
        return {"RequestItems": {"table": body}}
    if (service, operation) == ("events", "PutEvents"):
        return {"Entries": [{"Source": "autopilot", "DetailType": "Run", "Detail": "{}"}]}
    if (service, operation) == ("s3", "DeleteObjects"):
        return {"Bucket": "bucket", "Delete": {"Objects": [{"Key": "key"}]}}
    return dict(_SAMPLE_MEMBERS)


def needed_actions(service: str, operation: str, params: Mapping[str, Any]) -> list[Authorization]:
    """The twin's table's authorizations for one call (UnmappedOperation for an operation it does not know)."""
    return authorizations(service, operation, params, SampleLookups())


# ------------------------------------------------------------------------------------------ the ASL's tasks

# Optimized integrations -> the API operation Step Functions calls (AWS "Call other AWS services" pages), and
# the ASL parameters named differently from the API's members.
OPTIMIZED_INTEGRATIONS = {
    "lambda:invoke": ("lambda", "Invoke"),
    "sns:publish": ("sns", "Publish"),
    "events:putEvents": ("events", "PutEvents"),
    "emr-serverless:startJobRun": ("emr-serverless", "StartJobRun"),
    "emr-serverless:cancelJobRun": ("emr-serverless", "CancelJobRun"),
    "emr-serverless:startApplication": ("emr-serverless", "StartApplication"),
    "emr-serverless:stopApplication": ("emr-serverless", "StopApplication"),
    "emr-containers:startJobRun": ("emr-containers", "StartJobRun"),
    "emr-containers:cancelJobRun": ("emr-containers", "CancelJobRun"),
    "elasticmapreduce:createCluster": ("emr", "RunJobFlow"),
    "elasticmapreduce:addStep": ("emr", "AddJobFlowSteps"),
    "elasticmapreduce:cancelStep": ("emr", "CancelSteps"),
    "elasticmapreduce:terminateCluster": ("emr", "TerminateJobFlows"),
    "elasticmapreduce:modifyInstanceFleetByName": ("emr", "ModifyInstanceFleet"),
    "elasticmapreduce:modifyInstanceGroupByName": ("emr", "ModifyInstanceGroups"),
}
ASL_RENAMED = {
    ("emr", "AddJobFlowSteps"): {"ClusterId": "JobFlowId"},
    ("emr", "TerminateJobFlows"): {"ClusterId": "JobFlowIds"},
    ("emr", "CancelSteps"): {"StepId": "StepIds"},
}
SDK_SERVICES = {"sfn": "stepfunctions", "emrserverless": "emr-serverless", "emrcontainers": "emr-containers"}
TASK_PREFIX = "arn:${Partition}:states:::"


def _sample_shape(shape: Any, depth: int = 0) -> Any:
    """A value of a botocore shape (every member of a structure, up to a few levels deep)."""
    kind = shape.type_name
    if kind == "structure":
        return {n: _sample_shape(m, depth + 1) for n, m in shape.members.items()} if depth < 3 else {}
    if kind == "list":
        return [_sample_shape(shape.member, depth + 1)]
    if kind == "map":
        return {"key": _sample_shape(shape.value, depth + 1)}
    return {"integer": 1, "long": 1, "float": 1.0, "double": 1.0, "boolean": True}.get(kind, "x")


def task_call(state: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(service, operation, request) of the API call one Task state makes; `.$` parameters get sample values,
    literal ones keep theirs (`Unresolvable` for an integration this table does not know)."""
    integration = re.sub(r"\.(sync(:2)?|waitForTaskToken)$", "", state["Resource"].removeprefix(TASK_PREFIX))
    if integration.startswith("aws-sdk:"):
        _, sdk_service, api = integration.split(":")
        service, operation = SDK_SERVICES.get(sdk_service, sdk_service), api[0].upper() + api[1:]
    elif integration in OPTIMIZED_INTEGRATIONS:
        service, operation = OPTIMIZED_INTEGRATIONS[integration]
    else:
        raise Unresolvable(f"{state['Resource']}: an integration the static table does not know")
    model = botocore.session.get_session().get_service_model(service)
    members = model.operation_model(operation).input_shape.members
    by_lower = {name.lower(): name for name in members}
    renamed = ASL_RENAMED.get((service, operation), {})
    request: dict[str, Any] = {}
    for key, value in state.get("Parameters", {}).items():
        name = renamed.get(key.removesuffix(".$"), key.removesuffix(".$"))
        member = by_lower.get(name.lower())
        if member is not None:
            request[member] = _sample_shape(members[member]) if key.endswith(".$") else value
    return service, operation, request


# ------------------------------------------------------------------------------------------ grouping for tests

PIPELINE_TAG = "autopilot:pipeline"


def _role_group(template: Mapping[str, Any], role_id: str) -> str:
    """`pipeline:<name>` for a role tagged with its pipeline, `function:<fn>` for the role of an app function,
    `cdk-provider` for the roles of CDK's own provider functions."""
    tags = {t["Key"]: t["Value"] for t in template["Resources"][role_id].get("Properties", {}).get("Tags", [])}
    if PIPELINE_TAG in tags:
        return f"pipeline:{tags[PIPELINE_TAG]}"
    users = [
        str(r["Properties"].get("FunctionName", ""))
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Role") == {"Fn::GetAtt": [role_id, "Arn"]}
    ]
    functions = {f for f in FUNCTIONS for user in users if user.endswith(f"-{f}")}
    if len(functions) == 1:
        return f"function:{functions.pop()}"
    return "cdk-provider" if users and not functions else f"unassigned role {role_id}"


def policy_group(template: Mapping[str, Any], policy: StaticPolicy) -> str:
    """The group a policy is tested in: its role's (identity and trust policies) or its resource type's."""
    if policy.kind == "resource":
        return f"resource:{RESOURCE_POLICY_TYPES[template['Resources'][policy.logical_id]['Type']]}"
    groups = {_role_group(template, role) for role in policy.roles}
    return groups.pop() if len(groups) == 1 else f"{policy.name}: roles of several groups {sorted(groups)}"
