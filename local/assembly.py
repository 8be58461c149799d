"""Read a CDK cloud assembly (`cdk.out`) and resolve CloudFormation intrinsics, for the local twin.

`read_assembly(cdk_out)` returns one `StackTemplate` per `aws:cloudformation:stack` artifact with its
resources, outputs, parameters, conditions and file assets. A `Resolver` turns template values into
plain JSON once the deployer has filled `physical_ids` (what `Ref` returns) and `attributes` (what
`Fn::GetAtt` returns) for the resources it has created.
"""

from __future__ import annotations

import base64
import heapq
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DEFAULT_ACCOUNT: Final = "123456789012"
DEFAULT_REGION: Final = "us-east-1"
# What SSM returns for CDK's `/cdk-bootstrap/<qualifier>/version` parameter (the template's Rules need >= 6).
BOOTSTRAP_VERSION: Final = "6"
STACK_ARTIFACT: Final = "aws:cloudformation:stack"
ASSET_MANIFEST_ARTIFACTS: Final = frozenset({"cdk:asset-manifest", "aws:cdk:asset-manifest"})
NESTED_ASSEMBLY_ARTIFACT: Final = "cdk:cloud-assembly"
SYNTH_HINT: Final = "run `make synth` first"

_URL_SUFFIX: Final = {"aws-cn": "amazonaws.com.cn"}
_SUB_PATTERN: Final = re.compile(r"\$\{([^}]*)\}")
_BOOTSTRAP_SSM: Final = re.compile(r"^/cdk-bootstrap/[^/]+/version$")
_CONDITION_FUNCTIONS: Final = frozenset({"Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"})
# Where each code-carrying resource keeps the S3 key of its asset.
_CODE_KEYS: Final = (("Code", "S3Key"), ("Content", "S3Key"), ("DefinitionS3Location", "Key"))


class AssemblyError(ValueError):
    """A cloud assembly or template the twin cannot use; the message names the file, stack, logical id or intrinsic."""


class UnresolvedReference(AssemblyError):
    """A `Ref`/`Fn::GetAtt` to something unknown, or not created yet (no physical id / attribute recorded)."""


class _NoValue:
    """`AWS::NoValue`: the enclosing key or list item is dropped."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE: Final = _NoValue()


@dataclass(frozen=True)
class Asset:
    """One `files` entry of `<stack>.assets.json`.

    `path` is absolute inside cdk.out: a directory for `zip` packaging (CDK zips it on publish), the file
    itself for `file` packaging. `bucket`/`object_key` come from the first destination, with
    `${AWS::AccountId}`, `${AWS::Region}` and `${AWS::Partition}` placeholders resolved.
    """

    asset_hash: str
    path: Path
    packaging: str
    bucket: str
    object_key: str
    display_name: str = ""


@dataclass
class Resource:
    """One entry of the template's `Resources` (properties still hold intrinsics)."""

    logical_id: str
    type: str
    properties: dict[str, Any]
    depends_on: list[str]
    metadata: dict[str, Any]
    condition: str | None
    deletion_policy: str | None = None
    update_replace_policy: str | None = None

    @property
    def cdk_path(self) -> str | None:
        """The construct path CDK records in `Metadata["aws:cdk:path"]`, e.g. `autopilot-dev/Platform/.../Resource`."""
        value = self.metadata.get("aws:cdk:path")
        return value if isinstance(value, str) else None


@dataclass
class StackTemplate:
    """One synthesized stack: its template, parsed, and the file assets of its asset manifest (by hash)."""

    name: str
    template_path: Path
    template: dict[str, Any]
    resources: dict[str, Resource]
    outputs: dict[str, Any]
    parameters: dict[str, Any]
    conditions: dict[str, Any]
    assets: dict[str, Asset]
    mappings: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    environment: str | None = None
    artifact_id: str = ""
    depends_on: tuple[str, ...] = ()  # artifact ids of the stacks it must follow (CDK's stack dependencies)

    def asset_for_code(self, resource: Resource) -> Asset:
        """The asset holding a resource's code or document: Lambda `Code`, layer `Content`, or a state
        machine's `DefinitionS3Location`; found by `Metadata["aws:asset:path"]`, else by S3 key.

        Raises AssemblyError when there is none (e.g. inline `Code.ZipFile`).
        """
        asset_path = resource.metadata.get("aws:asset:path")
        if isinstance(asset_path, str):
            wanted = (self.template_path.parent / asset_path).resolve()
            for asset in self.assets.values():
                if asset.path == wanted:
                    return asset
        for outer, inner in _CODE_KEYS:
            section = resource.properties.get(outer)
            if isinstance(section, dict) and isinstance(section.get(inner), str):
                return self.asset_for_key(section[inner], where=f"{self.name}/{resource.logical_id}")
        code = resource.properties.get("Code")
        if isinstance(code, dict) and "ZipFile" in code:
            raise AssemblyError(
                f"{self.name}/{resource.logical_id}: code is inline (Code.ZipFile), not an asset; "
                "resolve resource.properties['Code']['ZipFile'] instead"
            )
        raise AssemblyError(
            f"{self.name}/{resource.logical_id} ({resource.type}): no asset found "
            "(no aws:asset:path metadata and no Code/Content/DefinitionS3Location S3 key of a known asset)"
        )

    def asset_for_key(self, object_key: str, *, bucket: str | None = None, where: str = "") -> Asset:
        """The asset published as `object_key` (and to `bucket`, when given); AssemblyError if none."""
        for asset in self.assets.values():
            if asset.object_key == object_key and (bucket is None or asset.bucket == bucket):
                return asset
        raise AssemblyError(
            f"{where or self.name}: no asset of stack {self.name} has object key {object_key!r}"
            + (f" in bucket {bucket!r}" if bucket else "")
            + f" (known: {sorted(a.object_key for a in self.assets.values())})"
        )

    def bucket_deployment_sources(self, resource: Resource) -> list[Asset]:
        """The source assets of a `Custom::CDKBucketDeployment` (its `SourceObjectKeys`, in order)."""
        where = f"{self.name}/{resource.logical_id}"
        keys = resource.properties.get("SourceObjectKeys")
        if resource.type != "Custom::CDKBucketDeployment" or not isinstance(keys, list):
            raise AssemblyError(f"{where} ({resource.type}): not a CDK BucketDeployment with SourceObjectKeys")
        if not all(isinstance(key, str) for key in keys):
            raise AssemblyError(f"{where}: SourceObjectKeys must be plain strings, got {keys!r}")
        return [self.asset_for_key(key, where=where) for key in keys]

    def dependencies(self, logical_id: str) -> set[str]:
        """Logical ids `logical_id` needs first: its DependsOn plus every resource its Properties
        reference through `Ref`, `Fn::GetAtt` or `Fn::Sub` (both branches of an `Fn::If` count)."""
        resource = self._resource(logical_id)
        where = f"{self.name}/{logical_id}"
        result: set[str] = set()
        for target in resource.depends_on:
            if target not in self.resources:
                raise AssemblyError(f"{where}: DependsOn names unknown resource {target!r}")
            result.add(target)
        for name, _attribute in _references(resource.properties):
            if name in self.resources:
                result.add(name)
            elif name not in self.parameters and not name.startswith("AWS::"):
                raise AssemblyError(f"{where}: reference to unknown logical id {name!r}")
        return result

    def deployment_order(self) -> list[str]:
        """All logical ids, each after its `dependencies`; ties keep template order. AssemblyError names a cycle."""
        index = {logical_id: i for i, logical_id in enumerate(self.resources)}
        needs = {logical_id: self.dependencies(logical_id) for logical_id in self.resources}
        users: dict[str, list[str]] = {logical_id: [] for logical_id in self.resources}
        for logical_id, deps in needs.items():
            for dep in deps:
                users[dep].append(logical_id)
        waiting = {logical_id: len(deps) for logical_id, deps in needs.items()}
        ready = [(index[lid], lid) for lid, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, logical_id = heapq.heappop(ready)
            order.append(logical_id)
            for user in users[logical_id]:
                waiting[user] -= 1
                if waiting[user] == 0:
                    heapq.heappush(ready, (index[user], user))
        if len(order) < len(self.resources):
            cycle = _find_cycle({lid: needs[lid] for lid in self.resources if lid not in set(order)})
            raise AssemblyError(f"{self.name}: dependency cycle: {' -> '.join(cycle)}")
        return order

    def required_attributes(self) -> set[tuple[str, str]]:
        """Every (logical id, attribute) read by `Fn::GetAtt` or `${Id.Attr}` in Resources and Outputs."""
        found = _references(
            {"Resources": {k: r.properties for k, r in self.resources.items()}, "Outputs": self.outputs}
        )
        return {(name, attribute) for name, attribute in found if attribute is not None}

    def _resource(self, logical_id: str) -> Resource:
        try:
            return self.resources[logical_id]
        except KeyError:
            raise AssemblyError(f"{self.name}: no resource {logical_id!r}") from None


def _find_cycle(needs: Mapping[str, set[str]]) -> list[str]:
    """One cycle among nodes that all wait on each other (every node here has a dependency left in `needs`)."""
    start = next(iter(needs))
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(dep for dep in needs[node] if dep in needs)
    return [*path[seen[node] :], node]


def _references(value: Any) -> Iterator[tuple[str, str | None]]:
    """(name, attribute or None) for every Ref / Fn::GetAtt / Fn::Sub reference inside `value`."""
    if isinstance(value, list):
        for item in value:
            yield from _references(item)
        return
    if not isinstance(value, dict):
        return
    if len(value) == 1:
        key, arg = next(iter(value.items()))
        if key == "Ref" and isinstance(arg, str):
            yield arg, None
            return
        if key == "Fn::GetAtt":
            name, attribute = _split_get_att(arg, "Fn::GetAtt")
            yield name, attribute if isinstance(attribute, str) else None
            yield from _references(attribute)
            return
        if key == "Fn::Sub":
            yield from _sub_references(arg)
            return
    for item in value.values():
        yield from _references(item)


def _sub_references(arg: Any) -> Iterator[tuple[str, str | None]]:
    if isinstance(arg, str):
        template, variables = arg, {}
    elif _is_sub_pair(arg):
        template, variables = arg[0], arg[1]
    else:
        return
    yield from _references(variables)
    for match in _SUB_PATTERN.finditer(template):
        inner = match.group(1).strip()
        if inner.startswith("!") or inner in variables:
            continue
        name, _, attribute = inner.partition(".")
        yield (inner, None) if inner.startswith("AWS::") else (name, attribute or None)


def _is_sub_pair(arg: Any) -> bool:
    return isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and isinstance(arg[1], dict)


def _split_get_att(arg: Any, where: str) -> tuple[str, Any]:
    if isinstance(arg, str) and "." in arg:
        name, attribute = arg.split(".", 1)
        return name, attribute
    if isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str):
        return arg[0], arg[1]
    raise AssemblyError(f"{where}: Fn::GetAtt needs [LogicalId, Attribute] or 'LogicalId.Attribute', got {arg!r}")


# --- reading the assembly -------------------------------------------------------------------------------------


def read_assembly(
    cdk_out: Path, *, account: str = DEFAULT_ACCOUNT, region: str = DEFAULT_REGION
) -> list[StackTemplate]:
    """Every stack of the cloud assembly in `cdk_out` (nested assemblies of stages included), in manifest order.

    `account`/`region` (default 123456789012 / us-east-1) fill the `${AWS::AccountId}`/`${AWS::Region}`
    placeholders of asset destinations. AssemblyError if `cdk_out` is missing or holds no stack.
    """
    cdk_out = Path(cdk_out)
    if not cdk_out.is_dir():
        raise AssemblyError(f"{cdk_out}: no cloud assembly here (directory missing); {SYNTH_HINT}")
    stacks = list(_read_stacks(cdk_out.resolve(), account=account, region=region))
    if not stacks:
        raise AssemblyError(f"{cdk_out / 'manifest.json'}: no {STACK_ARTIFACT} artifact; {SYNTH_HINT}")
    return _dependency_order(stacks)


def _dependency_order(stacks: list[StackTemplate]) -> list[StackTemplate]:
    """Each stack after the stacks it depends on (as `cdk deploy --all` deploys them); ties keep manifest order."""
    by_id = {s.artifact_id: s for s in stacks}
    ordered: list[StackTemplate] = []
    placed: set[str] = set()
    pending = list(stacks)
    while pending:
        ready = [s for s in pending if all(d in placed or d not in by_id for d in s.depends_on)]
        if not ready:
            names = ", ".join(s.name for s in pending)
            raise AssemblyError(f"stacks {names}: their dependencies form a cycle; CloudFormation cannot order them")
        for stack in ready:
            ordered.append(stack)
            placed.add(stack.artifact_id)
            pending.remove(stack)
    return ordered


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise AssemblyError(f"{path}: {what} missing; {SYNTH_HINT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AssemblyError(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AssemblyError(f"{path}: {what} must be a JSON object")
    return data


def _read_stacks(directory: Path, *, account: str, region: str) -> Iterator[StackTemplate]:
    manifest_path = directory / "manifest.json"
    manifest = _read_json(manifest_path, "cloud assembly manifest")
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict):
        raise AssemblyError(f"{manifest_path}: not a cloud assembly manifest (no artifacts); {SYNTH_HINT}")
    for artifact_id, artifact in artifacts.items():
        kind = artifact.get("type")
        properties = artifact.get("properties") or {}
        if kind == NESTED_ASSEMBLY_ARTIFACT:
            yield from _read_stacks(directory / properties["directoryName"], account=account, region=region)
        elif kind == STACK_ARTIFACT:
            assets: dict[str, Asset] = {}
            for dep in artifact.get("dependencies", []):
                dep_artifact = artifacts.get(dep, {})
                if dep_artifact.get("type") in ASSET_MANIFEST_ARTIFACTS:
                    file_name = dep_artifact["properties"]["file"]
                    assets.update(_read_assets(directory / file_name, account=account, region=region))
            yield _read_stack(directory, artifact_id, artifact, assets)


def _read_stack(directory: Path, artifact_id: str, artifact: dict[str, Any], assets: dict[str, Asset]) -> StackTemplate:
    properties = artifact.get("properties") or {}
    name = properties.get("stackName") or artifact_id
    template_file = properties.get("templateFile")
    if not isinstance(template_file, str):
        raise AssemblyError(f"{directory / 'manifest.json'}: stack {name} has no templateFile")
    template_path = directory / template_file
    template = _read_json(template_path, f"template of stack {name}")
    raw_resources = template.get("Resources")
    if not isinstance(raw_resources, dict):
        raise AssemblyError(f"{template_path}: stack {name} has no Resources")
    return StackTemplate(
        name=name,
        template_path=template_path,
        template=template,
        resources={lid: _resource(template_path, lid, body) for lid, body in raw_resources.items()},
        outputs=template.get("Outputs", {}),
        parameters=template.get("Parameters", {}),
        conditions=template.get("Conditions", {}),
        assets=assets,
        mappings=template.get("Mappings", {}),
        rules=template.get("Rules", {}),
        tags=dict(properties.get("tags", {})),
        environment=artifact.get("environment"),
        artifact_id=artifact_id,
        depends_on=tuple(str(d) for d in artifact.get("dependencies", [])),
    )


def _resource(template_path: Path, logical_id: str, body: Any) -> Resource:
    if not isinstance(body, dict) or not isinstance(body.get("Type"), str):
        raise AssemblyError(f"{template_path}: resource {logical_id} has no Type")
    depends_on = body.get("DependsOn", [])
    return Resource(
        logical_id=logical_id,
        type=body["Type"],
        properties=body.get("Properties", {}),
        depends_on=[depends_on] if isinstance(depends_on, str) else list(depends_on),
        metadata=body.get("Metadata", {}),
        condition=body.get("Condition"),
        deletion_policy=body.get("DeletionPolicy"),
        update_replace_policy=body.get("UpdateReplacePolicy"),
    )


def _read_assets(path: Path, *, account: str, region: str) -> dict[str, Asset]:
    manifest = _read_json(path, "asset manifest")
    placeholders = {"${AWS::AccountId}": account, "${AWS::Region}": region, "${AWS::Partition}": "aws"}

    def fill(text: str) -> str:
        for placeholder, value in placeholders.items():
            text = text.replace(placeholder, value)
        return text

    assets: dict[str, Asset] = {}
    for asset_hash, entry in manifest.get("files", {}).items():
        destinations = list(entry.get("destinations", {}).values())
        if not destinations:
            raise AssemblyError(f"{path}: asset {asset_hash} has no destination")
        try:
            source = entry["source"]
            assets[asset_hash] = Asset(
                asset_hash=asset_hash,
                path=(path.parent / source["path"]).resolve(),
                packaging=source.get("packaging", "file"),
                bucket=fill(destinations[0]["bucketName"]),
                object_key=fill(destinations[0]["objectKey"]),
                display_name=entry.get("displayName", ""),
            )
        except KeyError as exc:
            raise AssemblyError(f"{path}: asset {asset_hash} lacks {exc}") from None
    return assets


# --- resolving intrinsics ---------------------------------------------------------------------------------------


class Resolver:
    """Resolves a stack's intrinsics to plain JSON values.

    The deployer fills `physical_ids` (logical id -> what `Ref` returns) and `attributes`
    ((logical id, attribute) -> what `Fn::GetAtt` returns) as it creates resources. `parameters`
    override template defaults; SSM-typed parameters read `ssm_parameters` (CDK's bootstrap version
    parameter defaults to "6"). Partition defaults to "aws".

    As in CloudFormation, `{"Condition": name}` is read only inside condition expressions, so IAM
    `Condition` blocks pass through; `Fn::Equals`/`Not`/`And`/`Or` resolve to booleans anywhere.
    """

    def __init__(
        self,
        stack: StackTemplate,
        *,
        account: str,
        region: str,
        partition: str = "aws",
        parameters: dict[str, str] | None = None,
        ssm_parameters: Mapping[str, str] | None = None,
        exports: Mapping[str, Any] | None = None,
    ) -> None:
        self.stack = stack
        self.exports: Mapping[str, Any] = exports if exports is not None else {}
        self.account = account
        self.region = region
        self.partition = partition
        self.physical_ids: dict[str, str] = {}
        self.attributes: dict[tuple[str, str], Any] = {}
        self._parameters = dict(parameters or {})
        self._ssm = dict(ssm_parameters or {})
        self._conditions: dict[str, bool] = {}
        self._evaluating: list[str] = []
        unknown = sorted(set(self._parameters) - set(stack.parameters))
        if unknown:
            raise AssemblyError(f"{stack.name}: unknown parameters {unknown} (template has {sorted(stack.parameters)})")
        self._functions: dict[str, Callable[[Any, str], Any]] = {
            "Ref": self._ref,
            "Fn::GetAtt": self._get_att,
            "Fn::Sub": self._sub,
            "Fn::Join": self._join,
            "Fn::Select": self._select,
            "Fn::Split": self._split,
            "Fn::If": self._if,
            "Fn::GetAZs": self._get_azs,
            "Fn::Base64": self._base64,
            "Fn::FindInMap": self._find_in_map,
            "Fn::ImportValue": self._import_value,
        }

    # public ---------------------------------------------------------------------------------------------------

    @property
    def pseudo_parameters(self) -> dict[str, Any]:
        """`AWS::*` values: account, region, partition, URL suffix, stack name/id, notification ARNs (none)."""
        stack_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.account}/{self.region}/{self.stack.name}")
        return {
            "AWS::AccountId": self.account,
            "AWS::Region": self.region,
            "AWS::Partition": self.partition,
            "AWS::URLSuffix": _URL_SUFFIX.get(self.partition, "amazonaws.com"),
            "AWS::StackName": self.stack.name,
            "AWS::StackId": f"arn:{self.partition}:cloudformation:{self.region}:{self.account}:stack/"
            f"{self.stack.name}/{stack_uuid}",
            "AWS::NotificationARNs": [],
        }

    def resolve(self, value: Any, *, where: str = "") -> Any:
        """`value` with every intrinsic resolved (deep); `AWS::NoValue` drops its key or list item and is None
        at the top. `where` (default: the stack name) prefixes error messages."""
        result = self._resolve(value, where or self.stack.name)
        return None if result is NO_VALUE else result

    def resolve_properties(self, resource: Resource) -> dict[str, Any]:
        """A resource's Properties, resolved; errors name the stack and logical id."""
        resolved = self.resolve(resource.properties, where=f"{self.stack.name}/{resource.logical_id}.Properties")
        return resolved if isinstance(resolved, dict) else {}

    def condition(self, name: str) -> bool:
        """The value of the template condition `name` (cached); AssemblyError if unknown or circular."""
        if name in self._conditions:
            return self._conditions[name]
        where = f"{self.stack.name}: Conditions.{name}"
        if name not in self.stack.conditions:
            raise AssemblyError(f"{where}: no such condition (known: {sorted(self.stack.conditions)})")
        if name in self._evaluating:
            raise AssemblyError(f"{where}: circular conditions {' -> '.join([*self._evaluating, name])}")
        self._evaluating.append(name)
        try:
            value = self._evaluate(self.stack.conditions[name], where)
        finally:
            self._evaluating.pop()
        self._conditions[name] = value
        return value

    def is_enabled(self, resource: Resource) -> bool:
        """False when the resource has a `Condition` that evaluates to false (the deployer skips it)."""
        return resource.condition is None or self.condition(resource.condition)

    def resolve_outputs(self) -> dict[str, Any]:
        """Output name -> resolved Value, leaving out outputs whose Condition is false."""
        result: dict[str, Any] = {}
        for name, output in self.stack.outputs.items():
            if "Condition" in output and not self.condition(output["Condition"]):
                continue
            result[name] = self.resolve(output.get("Value"), where=f"{self.stack.name}: Outputs.{name}")
        return result

    def state_machine_definition(self, resource: Resource) -> str:
        """The ASL text CloudFormation would hand Step Functions: `DefinitionString`, `Definition` (as JSON) or the
        `DefinitionS3Location` asset file, with each `${Name}` of `DefinitionSubstitutions` replaced by its
        resolved value (other `${...}` are left as they are, as CloudFormation does)."""
        where = f"{self.stack.name}/{resource.logical_id}"
        if resource.type != "AWS::StepFunctions::StateMachine":
            raise AssemblyError(f"{where} ({resource.type}): not a state machine")
        props = resource.properties
        if "DefinitionString" in props:
            text = self._string(props["DefinitionString"], f"{where}.DefinitionString", "DefinitionString")
        elif "Definition" in props:
            text = json.dumps(self.resolve(props["Definition"], where=f"{where}.Definition"))
        elif "DefinitionS3Location" in props:
            asset = self.stack.asset_for_code(resource)
            if not asset.path.is_file():
                raise AssemblyError(f"{where}: definition asset {asset.path} is not a file")
            text = asset.path.read_text(encoding="utf-8")
        else:
            raise AssemblyError(f"{where}: no DefinitionString, Definition or DefinitionS3Location")
        substitutions = self.resolve(props.get("DefinitionSubstitutions", {}), where=f"{where}.DefinitionSubstitutions")
        values = {
            key: _scalar_text(value, f"{where}.DefinitionSubstitutions.{key}") for key, value in substitutions.items()
        }

        def replace(match: re.Match[str]) -> str:
            return values.get(match.group(1), match.group(0))

        return _SUB_PATTERN.sub(replace, text)

    # resolution -----------------------------------------------------------------------------------------------

    def _resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            items = (self._resolve(item, f"{where}[{i}]") for i, item in enumerate(value))
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            key, arg = next(iter(value.items()))
            if key == "Ref" or key.startswith("Fn::"):
                return self._intrinsic(key, arg, where)
        resolved = {key: self._resolve(item, f"{where}.{key}") for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}

    def _intrinsic(self, key: str, arg: Any, where: str) -> Any:
        if key in _CONDITION_FUNCTIONS:
            return self._evaluate({key: arg}, where)
        function = self._functions.get(key)
        if function is None:
            raise AssemblyError(f"{where}: unsupported intrinsic {key} (not modeled by the local twin)")
        return function(arg, f"{where}.{key}" if key != "Ref" else where)

    def _ref(self, name: Any, where: str) -> Any:
        if not isinstance(name, str):
            raise AssemblyError(f"{where}: Ref needs a name, got {name!r}")
        if name == "AWS::NoValue":
            return NO_VALUE
        if name.startswith("AWS::"):
            pseudo = self.pseudo_parameters
            if name not in pseudo:
                raise UnresolvedReference(f"{where}: Ref {name}: unknown pseudo parameter")
            return pseudo[name]
        if name in self.stack.parameters:
            return self._parameter(name, where)
        if name not in self.stack.resources:
            raise UnresolvedReference(f"{where}: Ref {name}: no parameter or resource with that logical id")
        if name not in self.physical_ids:
            raise UnresolvedReference(f"{where}: Ref {name}: physical id not known yet (resource not created)")
        return self.physical_ids[name]

    def _parameter(self, name: str, where: str) -> Any:
        spec = self.stack.parameters[name]
        kind = str(spec.get("Type", "String"))
        if name in self._parameters:
            value = self._parameters[name]
        elif kind.startswith("AWS::SSM::Parameter::Value<"):
            value = self._ssm_value(name, str(spec.get("Default", "")), where)
        elif "Default" in spec:
            value = spec["Default"]
        else:
            raise UnresolvedReference(f"{where}: Ref {name}: parameter has no default and no value was given")
        allowed = spec.get("AllowedValues")
        if allowed is not None and value not in allowed:
            raise AssemblyError(f"{where}: parameter {name}={value!r} not in AllowedValues {allowed}")
        if "List<" in kind or "CommaDelimitedList" in kind:
            return value if isinstance(value, list) else str(value).split(",")
        return str(value) if isinstance(value, int | float) else value

    def _ssm_value(self, name: str, ssm_name: str, where: str) -> str:
        if ssm_name in self._ssm:
            return self._ssm[ssm_name]
        if _BOOTSTRAP_SSM.match(ssm_name):
            return BOOTSTRAP_VERSION
        raise UnresolvedReference(f"{where}: Ref {name}: SSM parameter {ssm_name!r} has no value (pass ssm_parameters)")

    def _get_att(self, arg: Any, where: str) -> Any:
        name, attribute = _split_get_att(arg, where)
        attribute = self._string(attribute, where, "Fn::GetAtt attribute")
        return self._attribute(name, attribute, where)

    def _attribute(self, name: str, attribute: str, where: str) -> Any:
        if name not in self.stack.resources:
            raise UnresolvedReference(f"{where}: Fn::GetAtt {name}.{attribute}: no resource with logical id {name}")
        if (name, attribute) not in self.attributes:
            raise UnresolvedReference(f"{where}: Fn::GetAtt {name}.{attribute}: attribute not known yet")
        return self.attributes[(name, attribute)]

    def _sub(self, arg: Any, where: str) -> str:
        if isinstance(arg, str):
            template, variables = arg, {}
        elif _is_sub_pair(arg):
            template = arg[0]
            variables = {
                key: _scalar_text(self._resolve(v, f"{where}.{key}"), f"{where}.{key}") for key, v in arg[1].items()
            }
        else:
            raise AssemblyError(f"{where}: Fn::Sub needs a string or [template, {{variables}}], got {arg!r}")

        def replace(match: re.Match[str]) -> str:
            inner = match.group(1).strip()
            if inner.startswith("!"):
                return "${" + inner[1:] + "}"
            if inner in variables:
                return variables[inner]
            if inner.startswith("AWS::") or "." not in inner:
                return _scalar_text(self._ref(inner, where), f"{where} ${{{inner}}}")
            name, attribute = inner.split(".", 1)
            return _scalar_text(self._attribute(name, attribute, where), f"{where} ${{{inner}}}")

        return _SUB_PATTERN.sub(replace, template)

    def _join(self, arg: Any, where: str) -> str:
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str)):
            raise AssemblyError(f"{where}: Fn::Join needs [delimiter, [values]], got {arg!r}")
        items = self._resolve(arg[1], where)
        if not isinstance(items, list):
            raise AssemblyError(f"{where}: Fn::Join values must be a list, got {items!r}")
        return arg[0].join(_scalar_text(item, f"{where}[{i}]") for i, item in enumerate(items))

    def _select(self, arg: Any, where: str) -> Any:
        if not (isinstance(arg, list) and len(arg) == 2):
            raise AssemblyError(f"{where}: Fn::Select needs [index, [values]], got {arg!r}")
        index, items = self._resolve(arg[0], where), self._resolve(arg[1], where)
        try:
            position = int(index)
        except (TypeError, ValueError):
            raise AssemblyError(f"{where}: Fn::Select index {index!r} is not an integer") from None
        if not isinstance(items, list) or not 0 <= position < len(items):
            raise AssemblyError(f"{where}: Fn::Select index {position} out of range for {items!r}")
        return items[position]

    def _split(self, arg: Any, where: str) -> list[str]:
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str) and arg[0]):
            raise AssemblyError(f"{where}: Fn::Split needs [delimiter, string], got {arg!r}")
        return self._string(arg[1], where, "Fn::Split source").split(arg[0])

    def _if(self, arg: Any, where: str) -> Any:
        if not (isinstance(arg, list) and len(arg) == 3 and isinstance(arg[0], str)):
            raise AssemblyError(f"{where}: Fn::If needs [condition, value_if_true, value_if_false], got {arg!r}")
        chosen = arg[1] if self.condition(arg[0]) else arg[2]
        return self._resolve(chosen, where)

    def _get_azs(self, arg: Any, where: str) -> list[str]:
        region = self._resolve(arg, where) or self.region
        return [f"{region}{zone}" for zone in "abc"]

    def _base64(self, arg: Any, where: str) -> str:
        return base64.b64encode(self._string(arg, where, "Fn::Base64 value").encode("utf-8")).decode("ascii")

    def _find_in_map(self, arg: Any, where: str) -> Any:
        if not (isinstance(arg, list) and len(arg) == 3):
            raise AssemblyError(f"{where}: Fn::FindInMap needs [map, top key, second key], got {arg!r}")
        keys = [self._string(item, where, "Fn::FindInMap key") for item in arg]
        try:
            return self.stack.mappings[keys[0]][keys[1]][keys[2]]
        except KeyError:
            raise AssemblyError(f"{where}: Fn::FindInMap {keys}: no such entry in Mappings") from None

    def _import_value(self, arg: Any, where: str) -> Any:
        """An earlier stack's export; CloudFormation refuses an import no deployed stack exports."""
        name = self._resolve(arg, where)
        if name not in self.exports:
            raise AssemblyError(
                f"{where}: Fn::ImportValue {name!r}: no deployed stack exports it (exports: "
                f"{', '.join(sorted(self.exports)) or 'none'}); deploy the exporting stack first"
            )
        return self.exports[name]

    def resolve_exports(self) -> dict[str, Any]:
        """Export name -> value of this stack's exported outputs (after `resolve_outputs` can resolve them)."""
        exports: dict[str, Any] = {}
        for name, output in self.stack.outputs.items():
            export = output.get("Export")
            if export is None or ("Condition" in output and not self.condition(output["Condition"])):
                continue
            where = f"{self.stack.name}: Outputs.{name}.Export"
            exports[str(self.resolve(export.get("Name"), where=where))] = self.resolve(output.get("Value"), where=where)
        return exports

    def _string(self, value: Any, where: str, what: str) -> str:
        resolved = self._resolve(value, where)
        if not isinstance(resolved, str):
            raise AssemblyError(f"{where}: {what} must be a string, got {resolved!r}")
        return resolved

    # conditions -----------------------------------------------------------------------------------------------

    def _evaluate(self, expression: Any, where: str) -> bool:
        if isinstance(expression, dict) and len(expression) == 1:
            key, arg = next(iter(expression.items()))
            if key == "Condition" and isinstance(arg, str):
                return self.condition(arg)
            if key in _CONDITION_FUNCTIONS:
                return self._condition_function(key, arg, f"{where}.{key}")
        value = self._resolve(expression, where)
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return bool(value == "true")
        raise AssemblyError(f"{where}: not a condition: {expression!r}")

    def _condition_function(self, key: str, arg: Any, where: str) -> bool:
        if not isinstance(arg, list):
            raise AssemblyError(f"{where}: {key} needs a list, got {arg!r}")
        if key == "Fn::Equals":
            if len(arg) != 2:
                raise AssemblyError(f"{where}: Fn::Equals needs two values, got {arg!r}")
            left, right = (self._resolve(item, where) for item in arg)
            return bool(_comparable(left) == _comparable(right))
        if key == "Fn::Not":
            if len(arg) != 1:
                raise AssemblyError(f"{where}: Fn::Not needs one condition, got {arg!r}")
            return not self._evaluate(arg[0], where)
        results = [self._evaluate(item, f"{where}[{i}]") for i, item in enumerate(arg)]
        return all(results) if key == "Fn::And" else any(results)


def _scalar_text(value: Any, where: str) -> str:
    """A string, number or boolean as CloudFormation writes it into a string (booleans lower case)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise AssemblyError(f"{where}: expected a string, got {value!r}")


def _comparable(value: Any) -> Any:
    # Fn::Equals compares values as CloudFormation sees them: "1" equals 1, "true" equals true.
    return _scalar_text(value, "") if isinstance(value, str | bool | int | float) else value
