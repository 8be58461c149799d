"""CDK assertions on the resources and properties that matter."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match

from tests.infra.conftest import Synthesized


def _bucket_by_id(synth: Synthesized, fragment: str) -> dict[str, Any]:
    matches = [v for k, v in synth.resources("AWS::S3::Bucket").items() if fragment in k]
    assert len(matches) == 1, f"expected one bucket with {fragment!r} in its id"
    return matches[0]["Properties"]


def test_four_buckets_are_private_encrypted_and_logged(synth: Synthesized) -> None:
    buckets = synth.resources("AWS::S3::Bucket")
    assert len(buckets) == 4
    for logical_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, logical_id
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert sse["SSEAlgorithm"] == "AES256", logical_id
        if "Logs" not in logical_id:
            assert "LoggingConfiguration" in props, f"{logical_id} has no server access logging"


def test_every_bucket_policy_denies_plain_http(synth: Synthesized) -> None:
    policies = synth.resources("AWS::S3::BucketPolicy")
    assert len(policies) == 4
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in statements
        )


def test_outputs_versioned_logs_lifecycle_landing_eventbridge(synth: Synthesized) -> None:
    assert _bucket_by_id(synth, "Outputs")["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = _bucket_by_id(synth, "Logs")["LifecycleConfiguration"]["Rules"]
    assert rules[0]["ExpirationInDays"] == 90
    assert rules[0]["Transitions"][0] == {"StorageClass": "STANDARD_IA", "TransitionInDays": 30}
    synth.template.has_resource_properties(
        "Custom::S3BucketNotifications",
        {"NotificationConfiguration": {"EventBridgeConfiguration": {}}},
    )


def test_job_code_is_uploaded_to_artifacts(synth: Synthesized) -> None:
    synth.template.has_resource_properties("Custom::CDKBucketDeployment", {"DestinationBucketKeyPrefix": "jobs/"})


def test_trigger_rule_filters_bucket_prefix_and_suffix(synth: Synthesized) -> None:
    rule = synth.template.find_resources(
        "AWS::Events::Rule", {"Properties": {"Name": "autopilot-dev-sales-daily-object-created"}}
    )
    (props,) = [r["Properties"] for r in rule.values()]
    pattern = props["EventPattern"]
    assert pattern["source"] == ["aws.s3"]
    assert pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"]["key"] == [{"wildcard": "sales/*.csv"}]
    assert "Ref" in pattern["detail"]["bucket"]["name"][0]


def test_trigger_envelope_carries_full_event_and_routing(synth: Synthesized) -> None:
    (rule,) = synth.template.find_resources(
        "AWS::Events::Rule", {"Properties": {"Name": "autopilot-dev-sales-daily-object-created"}}
    ).values()
    target = rule["Properties"]["Targets"][0]
    template = target["InputTransformer"]["InputTemplate"]
    parts = template["Fn::Join"][1] if isinstance(template, dict) else [template]
    text = "".join(p if isinstance(p, str) else "ARN" for p in parts)
    # `<aws.events.event>` would drop `detail`; the router needs the full event.
    assert text.endswith(', "event": <aws.events.event.json>}')
    routing = json.loads(text.replace("<aws.events.event.json>", "{}"))
    assert routing["pipeline"] == "sales-daily"
    assert routing["trigger"] == {
        "mode": "window",
        "prefix": "sales/",
        "suffixes": [".csv"],
        "marker_name": None,
        "ignore_zero_byte": True,
    }


def test_window_batching_maps_to_event_source(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "BatchSize": 1000,
            "MaximumBatchingWindowInSeconds": 30,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        },
    )


def test_trigger_queue_redrives_to_dlq(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "QueueName": "autopilot-dev-sales-daily-arrivals",
            "RedrivePolicy": {"maxReceiveCount": 5, "deadLetterTargetArn": Match.any_value()},
            "SqsManagedSseEnabled": True,
            "VisibilityTimeout": 1830,
        },
    )


def test_functions_use_managed_powertools_layer_and_tracing(synth: Synthesized) -> None:
    functions = {
        v["Properties"]["FunctionName"]: v["Properties"]
        for v in synth.resources("AWS::Lambda::Function").values()
        if "FunctionName" in v["Properties"]
    }
    for name in ("autopilot-dev-prepare", "autopilot-dev-router"):
        props = functions[name]
        assert props["Runtime"] == "python3.14"
        assert props["TracingConfig"] == {"Mode": "Active"}
        layer = json.dumps(props["Layers"])
        assert "017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-x86_64:" in layer
        assert "AWS::Region" in layer, "the layer ARN must be built with the region token"
    assert functions["autopilot-dev-router"]["Environment"]["Variables"]["IDEMPOTENCY_TABLE"]


def test_idempotency_table(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::DynamoDB::GlobalTable",
        {
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "TimeToLiveSpecification": {"AttributeName": "expiration", "Enabled": True},
        },
    )


def test_serverless_application(synth: Synthesized) -> None:
    synth.template.has_resource_properties(
        "AWS::EMRServerless::Application",
        {
            "Name": "autopilot-dev-shared-spark",
            "ReleaseLabel": "emr-7.5.0",
            "Type": "Spark",
            "AutoStartConfiguration": {"Enabled": True},
            "AutoStopConfiguration": {"Enabled": True, "IdleTimeoutMinutes": 15},
            "MaximumCapacity": {"Cpu": "64 vCPU", "Memory": "256 GB", "Disk": "500 GB"},
        },
    )


def test_everything_is_tagged_with_the_deployment(synth: Synthesized) -> None:
    for kind in ("AWS::S3::Bucket", "AWS::SQS::Queue", "AWS::StepFunctions::StateMachine", "AWS::Lambda::Function"):
        for logical_id, resource in synth.resources(kind).items():
            if logical_id.startswith("Custom"):
                continue  # CDK's own provider handlers (raw CfnResource) take no tags from the Tags aspect
            tags = {t["Key"]: t["Value"] for t in resource["Properties"].get("Tags", [])}
            assert tags.get("autopilot:deployment") == "autopilot-dev", logical_id
    for machine in synth.resources("AWS::StepFunctions::StateMachine").values():
        tags = {t["Key"]: t["Value"] for t in machine["Properties"]["Tags"]}
        name = machine["Properties"]["StateMachineName"]
        assert name == f"autopilot-dev-{tags['autopilot:pipeline']}"
