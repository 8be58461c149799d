"""local/assembly.py: reading the product's cloud assembly and resolving CloudFormation intrinsics."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest

from app import build_app, cli_context
from local.assembly import (
    AssemblyError,
    Asset,
    Resolver,
    Resource,
    StackTemplate,
    UnresolvedReference,
    read_assembly,
)
from tests.conftest import REPO

ASL = REPO / "statemachines" / "rendered" / "emr_serverless_job.asl.json"
LAMBDA_FOLDERS = {p.name for p in (REPO / "lambdas").iterdir() if (p / "handler.py").is_file()}
ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = "autopilot-dev"
ASSET_BUCKET = f"cdk-hnb659fds-assets-{ACCOUNT}-{REGION}"


# --- the product's assembly (synthesized once) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdk_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("twin-cdk.out")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CDK_DEFAULT_ACCOUNT", ACCOUNT)
        env.setenv("CDK_DEFAULT_REGION", REGION)
        build_app("dev", cdk.App(outdir=str(outdir), context=cli_context()), nag=False).synth()
    return outdir


@pytest.fixture(scope="module")
def stacks(cdk_out: Path) -> list[StackTemplate]:
    """The platform stack first, then the pipeline stack(s) that import from it."""
    stacks = read_assembly(cdk_out)
    assert [s.name for s in stacks] == [STACK, f"{STACK}-pipelines-1"]
    return stacks


@pytest.fixture(scope="module")
def stack(stacks: list[StackTemplate]) -> StackTemplate:
    """The platform stack."""
    return stacks[0]


@pytest.fixture(scope="module")
def pipelines_stack(stacks: list[StackTemplate]) -> StackTemplate:
    return stacks[1]


def fake_id(logical_id: str) -> str:
    return f"phys-{logical_id}"


def fake_attribute(logical_id: str, attribute: str) -> str:
    return f"arn:aws:fake:{REGION}:{ACCOUNT}:{logical_id}/{attribute}"


@pytest.fixture(scope="module")
def filled(stack: StackTemplate) -> Resolver:
    """A resolver with a fake physical id for every resource and every attribute the template reads."""
    resolver = Resolver(stack, account=ACCOUNT, region=REGION)
    resolver.physical_ids.update({logical_id: fake_id(logical_id) for logical_id in stack.resources})
    resolver.attributes.update({(lid, attr): fake_attribute(lid, attr) for lid, attr in stack.required_attributes()})
    return resolver


@pytest.fixture(scope="module")
def pipelines_filled(pipelines_stack: StackTemplate, filled: Resolver) -> Resolver:
    """The pipeline stack's resolver: fake ids for its own resources, the platform's (fake) exports to import."""
    resolver = Resolver(pipelines_stack, account=ACCOUNT, region=REGION, exports=filled.resolve_exports())
    resolver.physical_ids.update({logical_id: fake_id(logical_id) for logical_id in pipelines_stack.resources})
    resolver.attributes.update(
        {(lid, attr): fake_attribute(lid, attr) for lid, attr in pipelines_stack.required_attributes()}
    )
    return resolver


def of_type(stack: StackTemplate, kind: str) -> list[Resource]:
    return [r for r in stack.resources.values() if r.type == kind]


def by_path(stack: StackTemplate, suffix: str) -> Resource:
    matches = [r for r in stack.resources.values() if (r.cdk_path or "").endswith(suffix)]
    assert len(matches) == 1, (suffix, [r.cdk_path for r in matches])
    return matches[0]


def no_intrinsics(value: Any) -> bool:
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in {"Ref", "Condition"} | {k for k in value if k.startswith("Fn::")}:
            return False
        return all(no_intrinsics(v) for v in value.values())
    if isinstance(value, list):
        return all(no_intrinsics(v) for v in value)
    return True


def test_stack_is_read_with_template_parameters_and_assets(stack: StackTemplate, cdk_out: Path) -> None:
    assert stack.template_path == (cdk_out / f"{STACK}.template.json").resolve()
    assert stack.template["Resources"].keys() == stack.resources.keys()
    assert stack.parameters["BootstrapVersion"]["Type"] == "AWS::SSM::Parameter::Value<String>"
    assert "CheckBootstrapVersion" in stack.rules
    assert stack.tags["autopilot:deployment"] == STACK
    assert stack.environment == f"aws://{ACCOUNT}/{REGION}"
    for asset in stack.assets.values():
        assert asset.bucket == ASSET_BUCKET
        assert asset.object_key.startswith(asset.asset_hash)
        assert asset.path.is_relative_to(cdk_out.resolve())
        assert asset.path.is_dir() if asset.packaging == "zip" else asset.path.is_file(), asset


def test_our_functions_resolve_to_their_source_folders(stack: StackTemplate) -> None:
    ours = {
        r.cdk_path: r
        for r in of_type(stack, "AWS::Lambda::Function")
        if (r.cdk_path or "").split("/")[-2].removesuffix("Function").lower() in LAMBDA_FOLDERS
    }
    assert sorted(ours) == [
        f"{STACK}/Guardrails/GuardrailFunction/Resource",
        f"{STACK}/Platform/Admission/AdmissionFunction/Resource",
        f"{STACK}/Platform/FinalizeFunction/Resource",
        f"{STACK}/Platform/PrepareFunction/Resource",
        f"{STACK}/Platform/RouterFunction/Resource",
        f"{STACK}/Scaling/ScalerFunction/Resource",
    ]
    for path, function in ours.items():
        name = path.split("/")[-2].removesuffix("Function").lower()
        asset = stack.asset_for_code(function)
        assert asset.packaging == "zip" and (asset.path / "handler.py").is_file()
        assert (asset.path / "handler.py").read_bytes() == (REPO / "lambdas" / name / "handler.py").read_bytes()
        assert asset.object_key == function.properties["Code"]["S3Key"]


def test_every_code_asset_exists_and_the_common_layer_holds_the_package(stack: StackTemplate) -> None:
    checked = 0
    for resource in of_type(stack, "AWS::Lambda::Function") + of_type(stack, "AWS::Lambda::LayerVersion"):
        if "ZipFile" in resource.properties.get("Code", {}):
            with pytest.raises(AssemblyError, match=rf"{resource.logical_id}.*inline \(Code.ZipFile\)"):
                stack.asset_for_code(resource)
            continue
        assert stack.asset_for_code(resource).path.exists(), resource.logical_id
        checked += 1
    # prepare, router, finalize, admission, guardrail, scaler, 2 CDK providers, common layer, 2 AWS CLI layers
    assert checked == 11
    common = stack.asset_for_code(by_path(stack, "/Platform/Functions/Common/Resource"))
    assert (common.path / "python" / "autopilot_common" / "__init__.py").is_file()


def test_asset_found_by_s3_key_without_metadata(stack: StackTemplate) -> None:
    router = by_path(stack, "/Platform/RouterFunction/Resource")
    bare = Resource(router.logical_id, router.type, router.properties, [], {}, None)
    assert stack.asset_for_code(bare) == stack.asset_for_code(router)
    missing = Resource("Nothing", "AWS::Lambda::Function", {"Code": {"S3Key": "nope.zip"}}, [], {}, None)
    with pytest.raises(AssemblyError, match=r"Nothing.*'nope.zip'"):
        stack.asset_for_code(missing)


def test_jobs_and_bootstrap_bucket_deployment_sources_hold_their_files(stack: StackTemplate) -> None:
    deployments = {r.logical_id: r for r in of_type(stack, "Custom::CDKBucketDeployment")}
    jobs, bootstrap = (
        next(r for k, r in deployments.items() if k.startswith(f"Storage{n}")) for n in ("JobCode", "Bootstrap")
    )
    [source] = stack.bucket_deployment_sources(jobs)
    assert source.packaging == "zip"
    assert (source.path / "sales_etl.py").read_bytes() == (REPO / "jobs" / "sales_etl.py").read_bytes()
    [scripts] = stack.bucket_deployment_sources(bootstrap)
    script = "install-python-packages.sh"
    assert (scripts.path / script).read_bytes() == (REPO / "bootstrap" / script).read_bytes()
    with pytest.raises(AssemblyError, match="not a CDK BucketDeployment"):
        stack.bucket_deployment_sources(by_path(stack, "/Platform/RouterFunction/Resource"))


def test_deployment_order_respects_every_dependency(stack: StackTemplate, pipelines_stack: StackTemplate) -> None:
    order = stack.deployment_order()
    assert sorted(order) == sorted(stack.resources)
    position = {logical_id: i for i, logical_id in enumerate(order)}
    for logical_id in order:
        for dep in stack.dependencies(logical_id):
            assert position[dep] < position[logical_id], (dep, logical_id)
    for policy in of_type(stack, "AWS::S3::BucketPolicy"):
        bucket = policy.properties["Bucket"]["Ref"]
        assert stack.resources[bucket].type == "AWS::S3::Bucket"
        assert position[bucket] < position[policy.logical_id]
    # The platform stack (prepare function) is deployed before the pipeline stack; in it, the role before the machine
    assert by_path(stack, "/Platform/PrepareFunction/Resource")
    order = pipelines_stack.deployment_order()
    machine = by_path(pipelines_stack, "/Pipeline-sales-daily/Workflow/Resource")
    role = by_path(pipelines_stack, "/Pipeline-sales-daily/WorkflowRole/Resource")
    assert order.index(role.logical_id) < order.index(machine.logical_id)


def test_state_machine_definition_is_the_asl_with_resolved_substitutions(
    stack: StackTemplate, pipelines_stack: StackTemplate, pipelines_filled: Resolver
) -> None:
    filled = pipelines_filled
    machine = by_path(pipelines_stack, "/Pipeline-sales-daily/Workflow/Resource")
    # The S3 object is the ASL file plus the run timeout as its top-level TimeoutSeconds (120 minutes).
    uploaded = json.loads(pipelines_stack.asset_for_code(machine).path.read_text(encoding="utf-8"))
    assert uploaded == {**json.loads(ASL.read_text(encoding="utf-8")), "TimeoutSeconds": 7200}
    substitutions = filled.resolve(machine.properties["DefinitionSubstitutions"])
    asl = ASL.read_text(encoding="utf-8")
    placeholders = set(re.findall(r"\$\{(\w+)\}", asl))
    assert placeholders == set(substitutions)
    expected_text = asl
    for key, value in substitutions.items():
        expected_text = expected_text.replace("${" + key + "}", value)

    text = filled.state_machine_definition(machine)

    assert "${" not in text
    assert json.loads(text) == {**json.loads(expected_text), "TimeoutSeconds": 7200}
    prepare = json.loads(text)["States"]["Prepare"]["Parameters"]
    prepare_function = by_path(stack, "/Platform/PrepareFunction/Resource").logical_id
    assert prepare["FunctionName"] == fake_attribute(prepare_function, "Arn")
    settings = prepare["Payload"]["settings"]
    assert json.loads(settings["arguments_json"]) == ["--date-column", "order_date"]
    assert (
        settings["entry_point"]
        == f"s3://{fake_id(by_path(stack, '/Storage/Artifacts/Resource').logical_id)}/jobs/sales_etl.py"
    )
    assert settings["application_id"] == fake_attribute(
        by_path(stack, "/App-shared-spark/Application").logical_id, "ApplicationId"
    )


def test_rule_input_template_carries_the_event_and_state_machine_arn(
    pipelines_stack: StackTemplate, pipelines_filled: Resolver
) -> None:
    rule = by_path(pipelines_stack, "/Trigger-sales-daily/ObjectCreated/Resource")
    machine = by_path(pipelines_stack, "/Pipeline-sales-daily/Workflow/Resource")
    template = pipelines_filled.resolve(rule.properties["Targets"][0]["InputTransformer"]["InputTemplate"])
    assert isinstance(template, str)
    assert '"event": <aws.events.event.json>}' in template
    assert f'"state_machine_arn": "{fake_id(machine.logical_id)}"' in template
    envelope = json.loads(template.replace("<aws.events.event.json>", "{}"))
    assert envelope["pipeline"] == "sales-daily" and envelope["trigger"]["prefix"] == "sales/"


def test_every_resource_and_output_resolves_once_ids_are_filled(stack: StackTemplate, filled: Resolver) -> None:
    for resource in stack.resources.values():
        assert filled.is_enabled(resource)
        properties = filled.resolve_properties(resource)
        assert no_intrinsics(properties), resource.logical_id
    outputs = filled.resolve_outputs()
    assert outputs["LandingBucket"] == fake_id(by_path(stack, "/Storage/Landing/Resource").logical_id)
    assert filled.resolve({"Ref": "BootstrapVersion"}) == "6"


def test_product_template_fails_clearly_before_ids_are_known(
    stack: StackTemplate, pipelines_stack: StackTemplate, filled: Resolver
) -> None:
    empty = Resolver(stack, account=ACCOUNT, region=REGION)
    dead_letters = by_path(stack, "/Platform/DeadLettersAlarm/Resource")
    with pytest.raises(UnresolvedReference, match=rf"{dead_letters.logical_id}.*Ref Platform\w+"):
        empty.resolve_properties(dead_letters)
    # The pipeline stack's machine, its own ids unknown, names its role; without the platform's exports, the import
    importer = Resolver(pipelines_stack, account=ACCOUNT, region=REGION, exports=filled.resolve_exports())
    machine = by_path(pipelines_stack, "/Pipeline-sales-daily/Workflow/Resource")
    with pytest.raises(UnresolvedReference, match=rf"{machine.logical_id}.*Fn::GetAtt Pipeline\w+\.Arn"):
        importer.resolve_properties(machine)
    alone = Resolver(pipelines_stack, account=ACCOUNT, region=REGION)
    with pytest.raises(AssemblyError, match=r"Fn::ImportValue 'autopilot-dev:ExportsOutput\w+': no deployed stack"):
        alone.resolve_properties(machine)


# --- intrinsics on small templates ------------------------------------------------------------------------------


def write_assembly(directory: Path, template: dict[str, Any], assets: dict[str, Any] | None = None) -> Path:
    """A minimal cloud assembly: manifest.json, one stack `demo` and (optionally) its asset manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "demo.template.json").write_text(json.dumps(template))
    artifacts: dict[str, Any] = {
        "demo": {
            "type": "aws:cloudformation:stack",
            "environment": "aws://unknown-account/unknown-region",
            "properties": {"templateFile": "demo.template.json"},
            "dependencies": ["demo.assets"] if assets is not None else [],
        }
    }
    if assets is not None:
        (directory / "demo.assets.json").write_text(json.dumps({"version": "55.0.0", "files": assets}))
        artifacts["demo.assets"] = {"type": "cdk:asset-manifest", "properties": {"file": "demo.assets.json"}}
    (directory / "manifest.json").write_text(json.dumps({"version": "55.0.0", "artifacts": artifacts}))
    return directory


RESOURCES: dict[str, Any] = {
    "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "b"}},
    "Queue": {"Type": "AWS::SQS::Queue", "Properties": {}},
    "Db": {"Type": "AWS::RDS::DBInstance", "Properties": {}},
}
TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "Env": {"Type": "String", "Default": "dev", "AllowedValues": ["dev", "prod"]},
        "Count": {"Type": "Number", "Default": 3},
        "Subnets": {"Type": "CommaDelimitedList", "Default": "s-1,s-2"},
        "Required": {"Type": "String"},
        "Version": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/cdk-bootstrap/abc/version"},
        "Other": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/team/value"},
    },
    "Mappings": {"Sizes": {"dev": {"Memory": 128}}},
    "Conditions": {
        "IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]},
        "IsDev": {"Fn::Not": [{"Condition": "IsProd"}]},
        "DevAndThree": {"Fn::And": [{"Condition": "IsDev"}, {"Fn::Equals": [{"Ref": "Count"}, 3]}]},
        "ProdOrThree": {"Fn::Or": [{"Condition": "IsProd"}, {"Fn::Equals": ["3", {"Ref": "Count"}]}]},
        "Loop1": {"Fn::Not": [{"Condition": "Loop2"}]},
        "Loop2": {"Fn::Not": [{"Condition": "Loop1"}]},
    },
    "Resources": {**RESOURCES, "Extra": {"Type": "AWS::SNS::Topic", "Condition": "IsProd", "Properties": {}}},
}


@pytest.fixture
def demo(tmp_path: Path) -> StackTemplate:
    [stack] = read_assembly(write_assembly(tmp_path / "cdk.out", TEMPLATE))
    return stack


@pytest.fixture
def resolver(demo: StackTemplate) -> Resolver:
    resolver = Resolver(demo, account=ACCOUNT, region="eu-west-1", parameters={"Required": "given"})
    resolver.physical_ids.update({"Bucket": "my-bucket", "Queue": "https://sqs/q"})
    resolver.attributes.update(
        {("Bucket", "Arn"): "arn:aws:s3:::my-bucket", ("Queue", "Arn"): "arn:q", ("Db", "Endpoint.Address"): "db.host"}
    )
    return resolver


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AWS::AccountId", ACCOUNT),
        ("AWS::Region", "eu-west-1"),
        ("AWS::Partition", "aws"),
        ("AWS::URLSuffix", "amazonaws.com"),
        ("AWS::StackName", "demo"),
        ("AWS::NotificationARNs", []),
    ],
)
def test_pseudo_parameters(resolver: Resolver, name: str, expected: Any) -> None:
    assert resolver.resolve({"Ref": name}) == expected


def test_stack_id_is_a_stable_arn(resolver: Resolver, demo: StackTemplate) -> None:
    stack_id = resolver.resolve({"Ref": "AWS::StackId"})
    assert re.fullmatch(rf"arn:aws:cloudformation:eu-west-1:{ACCOUNT}:stack/demo/[0-9a-f-]{{36}}", stack_id)
    assert (
        Resolver(demo, account=ACCOUNT, region="eu-west-1", parameters={}).resolve({"Ref": "AWS::StackId"}) == stack_id
    )
    china = Resolver(demo, account=ACCOUNT, region="cn-north-1", partition="aws-cn")
    assert china.resolve({"Ref": "AWS::URLSuffix"}) == "amazonaws.com.cn"


def test_parameters_defaults_overrides_lists_and_ssm(resolver: Resolver, demo: StackTemplate) -> None:
    assert resolver.resolve({"Ref": "Env"}) == "dev"
    assert resolver.resolve({"Ref": "Count"}) == "3"
    assert resolver.resolve({"Ref": "Subnets"}) == ["s-1", "s-2"]
    assert resolver.resolve({"Ref": "Required"}) == "given"
    assert resolver.resolve({"Ref": "Version"}) == "6"
    with pytest.raises(UnresolvedReference, match=r"Ref Other: SSM parameter '/team/value'"):
        resolver.resolve({"Ref": "Other"})
    ssm = Resolver(demo, account=ACCOUNT, region=REGION, ssm_parameters={"/team/value": "v"})
    assert ssm.resolve({"Ref": "Other"}) == "v"
    with pytest.raises(UnresolvedReference, match=r"Ref Required: parameter has no default"):
        ssm.resolve({"Ref": "Required"})
    with pytest.raises(AssemblyError, match=r"Env='test' not in AllowedValues"):
        Resolver(demo, account=ACCOUNT, region=REGION, parameters={"Env": "test"}).resolve({"Ref": "Env"})
    with pytest.raises(AssemblyError, match=r"unknown parameters \['Typo'\]"):
        Resolver(demo, account=ACCOUNT, region=REGION, parameters={"Typo": "x"})


def test_ref_and_get_att(resolver: Resolver) -> None:
    assert resolver.resolve({"Ref": "Bucket"}) == "my-bucket"
    assert resolver.resolve({"Fn::GetAtt": ["Bucket", "Arn"]}) == "arn:aws:s3:::my-bucket"
    assert resolver.resolve({"Fn::GetAtt": "Bucket.Arn"}) == "arn:aws:s3:::my-bucket"
    assert resolver.resolve({"Fn::GetAtt": "Db.Endpoint.Address"}) == "db.host"
    assert resolver.resolve({"Fn::GetAtt": ["Queue", {"Fn::Join": ["", ["A", "rn"]]}]}) == "arn:q"


def test_unresolved_references_name_the_logical_id_and_attribute(resolver: Resolver) -> None:
    with pytest.raises(UnresolvedReference, match=r"X\.Prop: Ref Ghost: no parameter or resource"):
        resolver.resolve({"Prop": {"Ref": "Ghost"}}, where="X")
    with pytest.raises(UnresolvedReference, match=r"Ref Db: physical id not known yet"):
        resolver.resolve({"Ref": "Db"})
    with pytest.raises(UnresolvedReference, match=r"Fn::GetAtt Queue\.QueueName: attribute not known yet"):
        resolver.resolve({"Fn::GetAtt": ["Queue", "QueueName"]})
    with pytest.raises(UnresolvedReference, match=r"Fn::GetAtt Ghost\.Arn: no resource with logical id Ghost"):
        resolver.resolve({"Fn::Sub": "${Ghost.Arn}"})
    with pytest.raises(UnresolvedReference, match=r"Ref AWS::Nope: unknown pseudo parameter"):
        resolver.resolve({"Ref": "AWS::Nope"})


def test_sub_string_form(resolver: Resolver) -> None:
    value = {
        "Fn::Sub": "arn:${AWS::Partition}:x:${AWS::Region}:${AWS::AccountId}:"
        "${Bucket}/${Db.Endpoint.Address}/${!Literal}"
    }
    assert resolver.resolve(value) == f"arn:aws:x:eu-west-1:{ACCOUNT}:my-bucket/db.host/${{Literal}}"
    assert resolver.resolve({"Fn::Sub": "${Env}-${Count}"}) == "dev-3"
    assert resolver.resolve({"Fn::Sub": "no placeholders"}) == "no placeholders"


def test_sub_with_variables_that_are_intrinsics(resolver: Resolver) -> None:
    value = {
        "Fn::Sub": [
            "${Name}:${Bucket}:${Arn}:${AWS::Region}:${!Name}",
            {
                "Name": {"Fn::Join": ["-", ["a", {"Ref": "Env"}]]},
                "Bucket": "shadowed",
                "Arn": {"Fn::GetAtt": "Queue.Arn"},
            },
        ]
    }
    assert resolver.resolve(value) == "a-dev:shadowed:arn:q:eu-west-1:${Name}"
    with pytest.raises(AssemblyError, match=r"Fn::Sub needs a string or \[template"):
        resolver.resolve({"Fn::Sub": ["only template"]})
    with pytest.raises(AssemblyError, match="expected a string"):
        resolver.resolve({"Fn::Sub": ["${L}", {"L": ["a", "list"]}]})


def test_join_select_split_nested(resolver: Resolver) -> None:
    assert resolver.resolve({"Fn::Join": [",", ["a", {"Ref": "Bucket"}, 7, True]]}) == "a,my-bucket,7,true"
    assert resolver.resolve({"Fn::Join": ["", {"Ref": "Subnets"}]}) == "s-1s-2"
    assert resolver.resolve({"Fn::Select": ["1", ["x", {"Ref": "Bucket"}]]}) == "my-bucket"
    assert resolver.resolve({"Fn::Split": [":", {"Fn::GetAtt": ["Bucket", "Arn"]}]}) == [
        "arn",
        "aws",
        "s3",
        "",
        "",
        "my-bucket",
    ]
    nested = {
        "Fn::Select": [5, {"Fn::Split": [":", {"Fn::Join": [":", ["arn", "aws", "s3", "", "", {"Ref": "Bucket"}]]}]}]
    }
    assert resolver.resolve(nested) == "my-bucket"
    with pytest.raises(AssemblyError, match=r"Fn::Select index 2 out of range"):
        resolver.resolve({"Fn::Select": [2, ["a", "b"]]})
    with pytest.raises(AssemblyError, match=r"Fn::Join needs \[delimiter, \[values\]\]"):
        resolver.resolve({"Fn::Join": ["a", "b", "c"]})
    with pytest.raises(AssemblyError, match=r"Fn::Split source must be a string"):
        resolver.resolve({"Fn::Split": [",", ["not", "a string"]]})


def test_get_azs_base64_find_in_map(resolver: Resolver) -> None:
    assert resolver.resolve({"Fn::GetAZs": ""}) == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert resolver.resolve({"Fn::GetAZs": {"Ref": "AWS::Region"}}) == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert resolver.resolve({"Fn::GetAZs": "us-west-2"})[2] == "us-west-2c"
    encoded = resolver.resolve({"Fn::Base64": {"Fn::Sub": "#!/bin/sh\necho ${Bucket}"}})
    assert base64.b64decode(encoded).decode() == "#!/bin/sh\necho my-bucket"
    assert resolver.resolve({"Fn::FindInMap": ["Sizes", {"Ref": "Env"}, "Memory"]}) == 128
    with pytest.raises(AssemblyError, match=r"Fn::FindInMap \['Sizes', 'prod', 'Memory'\]"):
        resolver.resolve({"Fn::FindInMap": ["Sizes", "prod", "Memory"]})


def test_no_value_removes_keys_and_list_items(resolver: Resolver) -> None:
    value = {
        "Keep": "k",
        "Drop": {"Ref": "AWS::NoValue"},
        "List": ["a", {"Ref": "AWS::NoValue"}, {"Fn::If": ["IsProd", "prod-only", {"Ref": "AWS::NoValue"}]}, "b"],
        "Nested": {"Inner": {"Fn::If": ["IsDev", {"Ref": "AWS::NoValue"}, "x"]}},
    }
    assert resolver.resolve(value) == {"Keep": "k", "List": ["a", "b"], "Nested": {}}
    assert resolver.resolve({"Ref": "AWS::NoValue"}) is None


def test_conditions(resolver: Resolver, demo: StackTemplate) -> None:
    assert resolver.condition("IsProd") is False
    assert resolver.condition("IsDev") is True
    assert resolver.condition("DevAndThree") is True
    assert resolver.condition("ProdOrThree") is True
    assert resolver.resolve({"Fn::If": ["IsProd", "big", {"Fn::If": ["IsDev", {"Ref": "Bucket"}, "x"]}]}) == "my-bucket"
    assert resolver.resolve({"Fn::Equals": [{"Ref": "Env"}, "dev"]}) is True
    assert not resolver.is_enabled(demo.resources["Extra"]) and resolver.is_enabled(demo.resources["Bucket"])
    prod = Resolver(demo, account=ACCOUNT, region=REGION, parameters={"Env": "prod", "Count": "4"})
    assert (prod.condition("IsProd"), prod.condition("DevAndThree"), prod.condition("ProdOrThree")) == (
        True,
        False,
        True,
    )
    assert prod.is_enabled(demo.resources["Extra"])
    with pytest.raises(AssemblyError, match=r"Conditions\.Loop1: circular conditions Loop1 -> Loop2 -> Loop1"):
        resolver.condition("Loop1")
    with pytest.raises(AssemblyError, match=r"Conditions\.Nope: no such condition"):
        resolver.resolve({"Fn::If": ["Nope", 1, 2]})


def test_unsupported_and_unmodeled_intrinsics_are_named(resolver: Resolver) -> None:
    with pytest.raises(AssemblyError, match=r"R\.Props\.Value: unsupported intrinsic Fn::Frobnicate"):
        resolver.resolve({"Props": {"Value": {"Fn::Frobnicate": [1]}}}, where="R")
    with pytest.raises(AssemblyError, match=r"Fn::ImportValue 'shared-vpc': no deployed stack exports it"):
        resolver.resolve({"Fn::ImportValue": "shared-vpc"})


def test_plain_values_and_multi_key_dicts_pass_through(resolver: Resolver) -> None:
    value = {"Ref": "Bucket", "Other": 1}  # not an intrinsic: two keys
    assert resolver.resolve(value) == value
    iam = {"Effect": "Allow", "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}
    assert resolver.resolve(iam)["Condition"]["StringEquals"]["aws:SourceAccount"] == ACCOUNT


def test_resolve_properties_and_outputs_name_the_resource(tmp_path: Path) -> None:
    template = {
        "Conditions": {"Never": {"Fn::Equals": ["a", "b"]}},
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic", "Properties": {"Name": {"Fn::GetAtt": ["Topic", "Nope"]}}}},
        "Outputs": {"Hidden": {"Condition": "Never", "Value": {"Ref": "Ghost"}}, "Name": {"Value": "literal"}},
    }
    [stack] = read_assembly(write_assembly(tmp_path / "cdk.out", template))
    resolver = Resolver(stack, account=ACCOUNT, region=REGION)
    assert resolver.resolve_outputs() == {"Name": "literal"}
    with pytest.raises(UnresolvedReference, match=r"demo/Topic\.Properties\.Name\.Fn::GetAtt: Fn::GetAtt Topic\.Nope"):
        resolver.resolve_properties(stack.resources["Topic"])


# --- ordering ---------------------------------------------------------------------------------------------------


def ordered(tmp_path: Path, resources: dict[str, Any]) -> StackTemplate:
    [stack] = read_assembly(
        write_assembly(tmp_path / "cdk.out", {"Parameters": {"P": {"Type": "String"}}, "Resources": resources})
    )
    return stack


def test_deployment_order_follows_ref_get_att_sub_and_depends_on(tmp_path: Path) -> None:
    stack = ordered(
        tmp_path,
        {
            "Policy": {"Type": "T", "Properties": {"Bucket": {"Ref": "Bucket"}}},
            "Fn": {"Type": "T", "Properties": {"Role": {"Fn::GetAtt": "Role.Arn"}}, "DependsOn": "Policy"},
            "Machine": {"Type": "T", "Properties": {"X": {"Fn::Sub": ["${Fn}-${V}", {"V": {"Ref": "Queue"}}]}}},
            "Role": {"Type": "T", "Properties": {"P": {"Fn::Sub": "${P}${AWS::Region}${!Machine}"}}},
            "Bucket": {"Type": "T", "Properties": {}},
            "Queue": {"Type": "T", "Properties": {"S": {"Fn::Sub": "${Role.Arn}"}}},
        },
    )
    assert stack.dependencies("Machine") == {"Fn", "Queue"}
    assert stack.dependencies("Role") == set()
    assert stack.deployment_order() == ["Role", "Bucket", "Policy", "Fn", "Queue", "Machine"]


def test_deployment_order_names_the_cycle(tmp_path: Path) -> None:
    stack = ordered(
        tmp_path,
        {
            "Free": {"Type": "T"},
            "A": {"Type": "T", "Properties": {"X": {"Ref": "B"}}},
            "B": {"Type": "T", "Properties": {"X": {"Fn::GetAtt": ["C", "Arn"]}}},
            "C": {"Type": "T", "DependsOn": ["A"]},
        },
    )
    with pytest.raises(AssemblyError, match=r"demo: dependency cycle: A -> B -> C -> A"):
        stack.deployment_order()


def test_dependencies_reject_unknown_names(tmp_path: Path) -> None:
    stack = ordered(
        tmp_path, {"A": {"Type": "T", "DependsOn": "Ghost"}, "B": {"Type": "T", "Properties": {"X": {"Ref": "Nope"}}}}
    )
    with pytest.raises(AssemblyError, match=r"demo/A: DependsOn names unknown resource 'Ghost'"):
        stack.dependencies("A")
    with pytest.raises(AssemblyError, match=r"demo/B: reference to unknown logical id 'Nope'"):
        stack.dependencies("B")


# --- multi-stack assemblies: dependency order and exports --------------------------------------------------------


def write_stacks(directory: Path, templates: dict[str, tuple[dict[str, Any], list[str]]]) -> Path:
    """A cloud assembly of several stacks: name -> (template, the stacks it depends on), in the given order."""
    directory.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Any] = {}
    for name, (template, depends_on) in templates.items():
        (directory / f"{name}.template.json").write_text(json.dumps(template))
        artifacts[name] = {
            "type": "aws:cloudformation:stack",
            "environment": "aws://unknown-account/unknown-region",
            "properties": {"templateFile": f"{name}.template.json"},
            "dependencies": depends_on,
        }
    (directory / "manifest.json").write_text(json.dumps({"version": "55.0.0", "artifacts": artifacts}))
    return directory


PLATFORM = {
    "Resources": {"Topic": {"Type": "AWS::SNS::Topic", "Properties": {}}},
    "Outputs": {"TopicArn": {"Value": {"Ref": "Topic"}, "Export": {"Name": {"Fn::Sub": "${AWS::StackName}:Topic"}}}},
}
PIPELINES = {
    "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {"Tag": {"Fn::ImportValue": "platform:Topic"}}}}
}


def test_stacks_are_read_in_dependency_order(tmp_path: Path) -> None:
    # Given an assembly whose manifest lists the importing stack first
    cdk_out = write_stacks(tmp_path, {"pipelines": (PIPELINES, ["platform"]), "platform": (PLATFORM, [])})
    # Then the exporting stack comes first
    assert [s.name for s in read_assembly(cdk_out)] == ["platform", "pipelines"]


def test_stacks_that_depend_on_each_other_are_refused(tmp_path: Path) -> None:
    cdk_out = write_stacks(tmp_path, {"a": (PLATFORM, ["b"]), "b": (PIPELINES, ["a"])})
    with pytest.raises(AssemblyError, match=r"stacks a, b: their dependencies form a cycle"):
        read_assembly(cdk_out)


def test_import_value_reads_an_earlier_stacks_export_and_refuses_a_missing_one(tmp_path: Path) -> None:
    platform, pipelines = read_assembly(
        write_stacks(tmp_path, {"platform": (PLATFORM, []), "pipelines": (PIPELINES, ["platform"])})
    )
    # Given the platform stack deployed (its topic has a physical id)
    exporter = Resolver(platform, account=ACCOUNT, region=REGION)
    exporter.physical_ids["Topic"] = "arn:aws:sns:us-east-1:123456789012:platform-topic"
    exports = exporter.resolve_exports()
    assert exports == {"platform:Topic": "arn:aws:sns:us-east-1:123456789012:platform-topic"}
    # When the pipelines stack resolves its import, Then it reads the export
    importer = Resolver(pipelines, account=ACCOUNT, region=REGION, exports=exports)
    assert importer.resolve_properties(pipelines.resources["Queue"]) == {"Tag": exports["platform:Topic"]}
    # And without the export (the platform not deployed) it is refused, as CloudFormation refuses it
    alone = Resolver(pipelines, account=ACCOUNT, region=REGION)
    with pytest.raises(AssemblyError, match=r"Fn::ImportValue 'platform:Topic': no deployed stack exports it"):
        alone.resolve_properties(pipelines.resources["Queue"])


def test_the_products_pipeline_stacks_import_only_the_platforms_exports(
    stack: StackTemplate, pipelines_stack: StackTemplate
) -> None:
    assert pipelines_stack.depends_on and stack.artifact_id in pipelines_stack.depends_on
    filled = Resolver(stack, account=ACCOUNT, region=REGION)
    filled.physical_ids.update({logical_id: fake_id(logical_id) for logical_id in stack.resources})
    filled.attributes.update({(lid, attr): fake_attribute(lid, attr) for lid, attr in stack.required_attributes()})
    importer = Resolver(pipelines_stack, account=ACCOUNT, region=REGION, exports=filled.resolve_exports())
    importer.physical_ids.update({logical_id: fake_id(logical_id) for logical_id in pipelines_stack.resources})
    importer.attributes.update(
        {(lid, attr): fake_attribute(lid, attr) for lid, attr in pipelines_stack.required_attributes()}
    )
    for resource in pipelines_stack.resources.values():
        assert no_intrinsics(importer.resolve_properties(resource)), resource.logical_id


# --- reading assemblies and state machine definitions ----------------------------------------------------------


def test_read_assembly_errors_say_to_synth(tmp_path: Path) -> None:
    with pytest.raises(AssemblyError, match=r"missing.*make synth"):
        read_assembly(tmp_path / "absent")
    with pytest.raises(AssemblyError, match=r"manifest.json: cloud assembly manifest missing.*make synth"):
        read_assembly(tmp_path)
    (tmp_path / "manifest.json").write_text(
        json.dumps({"version": "55.0.0", "artifacts": {"Tree": {"type": "cdk:tree"}}})
    )
    with pytest.raises(AssemblyError, match=r"no aws:cloudformation:stack artifact.*make synth"):
        read_assembly(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(AssemblyError, match=r"manifest.json: cloud assembly manifest is not valid JSON"):
        read_assembly(tmp_path)
    write_assembly(tmp_path, {"Resources": {"Bad": {"Properties": {}}}})
    with pytest.raises(AssemblyError, match=r"demo.template.json: resource Bad has no Type"):
        read_assembly(tmp_path)


def test_state_machine_definition_from_string_and_asset(tmp_path: Path) -> None:
    (tmp_path / "cdk.out").mkdir()
    (tmp_path / "cdk.out" / "asset.abc.json").write_text('{"A": "${Fn}", "B": "${Unknown}", "C": ${Num}}')
    assets = {
        "abc": {
            "source": {"path": "asset.abc.json", "packaging": "file"},
            "destinations": {
                "d": {"bucketName": "cdk-assets-${AWS::AccountId}-${AWS::Region}", "objectKey": "abc.json"}
            },
        }
    }
    substitutions = {"Fn": {"Fn::GetAtt": ["Fn", "Arn"]}, "Num": 5}
    template = {
        "Resources": {
            "Fn": {"Type": "AWS::Lambda::Function", "Properties": {}},
            "FromFile": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "DefinitionS3Location": {"Bucket": "x", "Key": "abc.json"},
                    "DefinitionSubstitutions": substitutions,
                },
            },
            "FromString": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "DefinitionString": {"Fn::Join": ["", ['{"A": "', {"Ref": "Fn"}, '", "B": "${Fn}"}']]},
                    "DefinitionSubstitutions": substitutions,
                },
            },
            "Inline": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {"Definition": {"X": {"Ref": "Fn"}}}},
        }
    }
    [stack] = read_assembly(
        write_assembly(tmp_path / "cdk.out", template, assets), account="111122223333", region="eu-west-1"
    )
    assert stack.assets["abc"] == Asset(
        "abc",
        (tmp_path / "cdk.out" / "asset.abc.json").resolve(),
        "file",
        "cdk-assets-111122223333-eu-west-1",
        "abc.json",
    )
    resolver = Resolver(stack, account=ACCOUNT, region=REGION)
    resolver.physical_ids["Fn"] = "fn-name"
    resolver.attributes[("Fn", "Arn")] = "arn:fn"
    assert json.loads(resolver.state_machine_definition(stack.resources["FromFile"])) == {
        "A": "arn:fn",
        "B": "${Unknown}",
        "C": 5,
    }
    assert json.loads(resolver.state_machine_definition(stack.resources["FromString"])) == {
        "A": "fn-name",
        "B": "arn:fn",
    }
    assert json.loads(resolver.state_machine_definition(stack.resources["Inline"])) == {"X": "fn-name"}
    with pytest.raises(AssemblyError, match=r"demo/Fn \(AWS::Lambda::Function\): not a state machine"):
        resolver.state_machine_definition(stack.resources["Fn"])
