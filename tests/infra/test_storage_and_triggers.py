"""CDK assertions on the resources and properties that matter."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match

from config.loader import load_config
from local import eventbridge
from tests.conftest import load_event
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
        # An arrival run claims the logical dates of its partitions (what its arrival deadline looks for).
        "partition_template": "sales/dt={ds}/",
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


# --------------------------------------------------------------------------- trigger sources (CloudTrail)

TRAIL_PIPELINE = "sales-trail"


def _rules(synth: Synthesized) -> dict[str, dict[str, Any]]:
    rules = synth.resources("AWS::Events::Rule").values()
    return {r["Properties"]["Name"]: r["Properties"] for r in rules if "Name" in r["Properties"]}


def _routing(rule: dict[str, Any]) -> dict[str, Any]:
    template = rule["Targets"][0]["InputTransformer"]["InputTemplate"]
    parts = template["Fn::Join"][1] if isinstance(template, dict) else [template]
    text = "".join(p if isinstance(p, str) else "ARN" for p in parts)
    routing: dict[str, Any] = json.loads(text.replace("<aws.events.event.json>", "{}"))
    return routing


def _landing_name(synth: Synthesized) -> str:
    (logical_id,) = [k for k in synth.resources("AWS::S3::Bucket") if "Landing" in k]
    return logical_id


def test_only_cloudtrail_pipelines_get_a_data_event_rule(synth: Synthesized) -> None:
    rules = _rules(synth)
    assert sorted(n for n in rules if n.endswith("-data-event")) == [f"autopilot-dev-{TRAIL_PIPELINE}-data-event"]
    for name, pipeline in load_config("dev").pipelines.items():
        if pipeline.trigger is None:
            continue
        mine = sorted(n.removeprefix(f"autopilot-dev-{name}-") for n in rules if n.startswith(f"autopilot-dev-{name}-"))
        if pipeline.arrivals is None:  # runs `after` others: one rule, on their run events
            assert mine == ["upstream-runs"], name
            continue
        if pipeline.trigger.schedule is not None:
            assert mine == [], f"{name} runs by the clock: no arrival rule"
            continue
        expected = {
            ("eventbridge",): ["object-created"],
            ("eventbridge", "cloudtrail"): ["data-event", "object-created"],
        }
        assert mine == expected[tuple(pipeline.trigger.sources)], name
        if pipeline.trigger.sources == ["eventbridge"]:
            # Default pipelines keep today's envelope: no `sources`, so the router makes no S3 call for them
            assert "sources" not in _routing(rules[f"autopilot-dev-{name}-object-created"])["trigger"], name


def test_data_event_rule_matches_successful_object_writes_in_landing_under_the_prefix(synth: Synthesized) -> None:
    rule = _rules(synth)[f"autopilot-dev-{TRAIL_PIPELINE}-data-event"]
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.s3"]
    assert pattern["detail-type"] == ["AWS API Call via CloudTrail"]
    detail = pattern["detail"]
    assert detail["eventSource"] == ["s3.amazonaws.com"]
    assert detail["eventName"] == ["PutObject", "CopyObject", "CompleteMultipartUpload"]
    assert detail["errorCode"] == [{"exists": False}]
    assert detail["requestParameters"]["bucketName"] == [{"Ref": _landing_name(synth)}]
    # prefix and suffix on one field: EventBridge allows one of prefix/suffix per condition, so a wildcard
    assert detail["requestParameters"]["key"] == [{"wildcard": "sales-trail/*.csv"}]


def test_data_event_rule_pattern_selects_the_right_cloudtrail_events(synth: Synthesized) -> None:
    # Given the rule's pattern with the bucket name filled in, checked with AWS matching semantics
    pattern = json.loads(
        json.dumps(_rules(synth)[f"autopilot-dev-{TRAIL_PIPELINE}-data-event"]["EventPattern"]).replace(
            json.dumps({"Ref": _landing_name(synth)}), json.dumps("autopilot-dev-landing")
        )
    )
    eventbridge.validate_pattern(pattern)

    def event(key: str = "sales-trail/2024/a b+c.csv", **detail: Any) -> dict[str, Any]:
        sample = load_event("s3_put_object_cloudtrail.json")
        sample["detail"]["requestParameters"]["key"] = key
        sample["detail"].update(detail)
        return sample

    # Then
    assert eventbridge.matches(pattern, event())
    assert eventbridge.matches(pattern, event(eventName="CompleteMultipartUpload"))
    assert not eventbridge.matches(pattern, event(errorCode="AccessDenied"))
    assert not eventbridge.matches(pattern, event(eventName="GetObject"))
    assert not eventbridge.matches(pattern, event("sales-trail/readme.txt"))
    assert not eventbridge.matches(pattern, event("sales/2024/a.csv"))
    copied = load_event("s3_copy_object_cloudtrail.json")
    copied["detail"]["requestParameters"]["key"] = "sales-trail/x.csv"
    assert eventbridge.matches(pattern, copied)


def test_both_rules_of_a_pipeline_send_one_envelope_to_one_queue(synth: Synthesized) -> None:
    rules = _rules(synth)
    notified = rules[f"autopilot-dev-{TRAIL_PIPELINE}-object-created"]
    logged = rules[f"autopilot-dev-{TRAIL_PIPELINE}-data-event"]
    assert notified["Targets"][0]["Arn"] == logged["Targets"][0]["Arn"]
    assert notified["Targets"][0]["InputTransformer"] == logged["Targets"][0]["InputTransformer"]
    assert _routing(logged) == {
        "pipeline": TRAIL_PIPELINE,
        "state_machine_arn": "ARN",
        "trigger": {
            "mode": "per_object",
            "prefix": "sales-trail/",
            "suffixes": [".csv"],
            "marker_name": None,
            "ignore_zero_byte": True,
            "sources": ["eventbridge", "cloudtrail"],
        },
        "event": {},
    }
    # The queue accepts messages from both rules (one statement per rule, by source ARN)
    queue_policies = [
        p["Properties"]["PolicyDocument"]["Statement"]
        for p in synth.resources("AWS::SQS::QueuePolicy").values()
        if any(TRAIL_PIPELINE.replace("-", "") in str(q) for q in p["Properties"]["Queues"])
    ]
    (statements,) = queue_policies
    senders = [
        s["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0]
        for s in statements
        if "sqs:SendMessage" in s["Action"] and s["Effect"] == "Allow"
    ]
    assert sorted(senders) == sorted(
        k for k in synth.resources("AWS::Events::Rule") if k.startswith("Triggersalestrail")
    )
    assert len(senders) == 2


def _router_statements(synth: Synthesized) -> list[dict[str, Any]]:
    (policy,) = [
        p["Properties"]
        for k, p in synth.resources("AWS::IAM::Policy").items()
        if "router" in k.lower() and "FunctionRole" in k
    ]
    statements: list[dict[str, Any]] = policy["PolicyDocument"]["Statement"]
    return statements


def test_router_may_head_only_the_triggered_pipelines_input_prefixes(synth: Synthesized) -> None:
    """HeadObject resolves ambiguous keys (issue 13.6), reads markers and late objects (13.3) and CloudTrail
    arrivals: under the triggered pipelines' input prefixes only, with a version id too; never object data
    elsewhere."""
    reads = [s for s in _router_statements(synth) if "s3:GetObject" in json.dumps(s["Action"])]
    manifests, *landing = reads  # the router reads back its own manifests (to resume a run), nothing else there
    assert manifests["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert json.dumps(manifests["Resource"]).endswith('/manifests/*"]]}')
    prefixes = sorted(p.arrivals.landing_prefix for p in load_config("dev").pipelines.values() if p.arrivals)
    assert landing == [
        {
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Effect": "Allow",
            "Resource": [
                {"Fn::Join": ["", [{"Fn::GetAtt": [_landing_name(synth), "Arn"]}, f"/{p}*"]]} for p in prefixes
            ],
        }
    ]


def test_router_writes_skipped_entries_only_in_the_triggered_pipelines_ledgers(synth: Synthesized) -> None:
    (ledger,) = [s for s in _router_statements(synth) if s["Action"] == "s3:PutObject"]
    triggered = sorted(n for n, p in load_config("dev").pipelines.items() if p.trigger)
    assert [json.dumps(r).split("/_runs/")[1].split("/")[0] for r in ledger["Resource"]] == triggered


def test_the_landing_bucket_is_versioned_and_expires_noncurrent_versions(synth: Synthesized) -> None:
    landing = _bucket_by_id(synth, "Landing")
    assert landing["VersioningConfiguration"] == {"Status": "Enabled"}
    (rule,) = landing["LifecycleConfiguration"]["Rules"]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


def _ref(value: Any) -> str:
    """The logical id an intrinsic points at (`Ref` or `Fn::GetAtt`)."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
    return str(value)


def test_every_asynchronously_invoked_function_fails_into_the_alarmed_dead_letter_queue(synth: Synthesized) -> None:
    """EventBridge (and S3 / SNS) invoke functions asynchronously: after Lambda's two retries, a failed event goes
    with its error to the dead-letter queue, whose depth alarms the notification topic. Without an on-failure
    destination Lambda drops the event (issue 13.4)."""
    functions = set(synth.resources("AWS::Lambda::Function"))
    invoked_async = {
        _ref(target["Arn"])
        for rule in synth.resources("AWS::Events::Rule").values()
        for target in rule["Properties"].get("Targets", [])
        if _ref(target["Arn"]) in functions
    }
    invoked_async |= {
        _ref(sub["Properties"]["Endpoint"])
        for sub in synth.resources("AWS::SNS::Subscription").values()
        if sub["Properties"]["Protocol"] == "lambda"
    }
    assert len(invoked_async) >= 2  # the guardrail and the scaler at least
    dead_letters = next(k for k, v in synth.resources("AWS::SQS::Queue").items() if "trigger-dlq" in str(v))
    configs = {
        _ref(c["Properties"]["FunctionName"]): c["Properties"]
        for c in synth.resources("AWS::Lambda::EventInvokeConfig").values()
    }
    for function in sorted(invoked_async):
        config = configs.get(function)
        assert config, f"{function} is invoked asynchronously and has no on-failure destination"
        assert _ref(config["DestinationConfig"]["OnFailure"]["Destination"]) == dead_letters
        assert config["MaximumRetryAttempts"] == 2
    alarms = [
        a["Properties"]
        for a in synth.resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("Namespace") == "AWS/SQS"
        and any(_ref(d["Value"]) == dead_letters for d in a["Properties"].get("Dimensions", []))
    ]
    assert len(alarms) == 1
    alarm = alarms[0]
    assert (alarm["MetricName"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "ApproximateNumberOfMessagesVisible",
        1,
        "GreaterThanOrEqualToThreshold",
    )
    topics = set(synth.resources("AWS::SNS::Topic"))
    assert [_ref(a) for a in alarm["AlarmActions"]] and all(_ref(a) in topics for a in alarm["AlarmActions"])


# ------------------------------------------------------------------------------------- trigger.after (dependencies)

SUMMARY = "sales-summary"  # dev.yaml: runs after sales-east and sales-west


def _upstream_pattern(synth: Synthesized, pipeline: str = SUMMARY) -> dict[str, Any]:
    pattern: dict[str, Any] = _rules(synth)[f"autopilot-dev-{pipeline}-upstream-runs"]["EventPattern"]
    return pattern


def test_the_upstream_rule_matches_only_its_upstreams_run_events_in_this_deployment(synth: Synthesized) -> None:
    pattern = _upstream_pattern(synth)
    assert pattern == {
        "source": ["emr-autopilot"],
        "detail-type": ["Autopilot Run Failed", "Autopilot Run Succeeded"],
        "detail": {"deployment": ["autopilot-dev"], "pipeline": ["sales-east", "sales-west"]},
    }
    eventbridge.validate_pattern(pattern)

    def event(**detail: Any) -> dict[str, Any]:
        sample = load_event("autopilot_run_succeeded.json")
        sample["detail"].update({"pipeline": "sales-east", **detail})
        return sample

    assert eventbridge.matches(pattern, event())
    assert eventbridge.matches(pattern, event(pipeline="sales-west") | {"detail-type": "Autopilot Run Failed"})
    assert not eventbridge.matches(pattern, event(pipeline="sales-daily"))  # not an upstream
    assert not eventbridge.matches(pattern, event(deployment="autopilot-prod"))  # another deployment's run
    assert not eventbridge.matches(pattern, event() | {"source": "someone.else"})


def test_the_upstream_envelope_is_what_the_router_parses(synth: Synthesized) -> None:
    from upstream import parse_upstream_envelope  # the router's module (lambdas/router on the path: tests/conftest)

    rule = _rules(synth)[f"autopilot-dev-{SUMMARY}-upstream-runs"]
    routing = _routing(rule)
    assert routing["upstream"] == {
        "after": ["sales-east", "sales-west"],
        "output_prefixes": {"sales-east": "sales-east", "sales-west": "sales-west"},
        "suffixes": [".parquet"],
        "ignore_zero_byte": True,
    }
    # The transformer's template with the matched event in place, as EventBridge delivers it to the queue
    event = load_event("autopilot_run_succeeded.json")
    run_id = event["detail"]["run_id"]
    event["detail"].update(pipeline="sales-east", outputs={"prefix": f"s3://outputs/sales-east/run_id={run_id}/"})
    body = json.dumps({**routing, "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:x"})
    parsed = parse_upstream_envelope(body.replace('"event": {}', f'"event": {json.dumps(event)}'), "outputs")
    assert (parsed.pipeline, parsed.state, parsed.run.pipeline, parsed.run.run_id) == (
        SUMMARY, "SUCCEEDED", "sales-east", run_id
    )  # fmt: skip


def test_a_pipeline_run_after_others_has_no_arrival_rule_and_batches_of_ten(synth: Synthesized) -> None:
    rules = _rules(synth)
    assert not [n for n in rules if n.startswith(f"autopilot-dev-{SUMMARY}-") and not n.endswith("-upstream-runs")]
    synth.template.has_resource_properties(
        "AWS::SQS::Queue",
        {"QueueName": f"autopilot-dev-{SUMMARY}-arrivals", "RedrivePolicy": {"maxReceiveCount": 5,
                                                                             "deadLetterTargetArn": Match.any_value()}},
    )  # fmt: skip


def test_the_router_lists_only_the_upstreams_run_output_folders(synth: Synthesized) -> None:
    statements = _router_statements(synth)
    (listing,) = [s for s in statements if s["Action"] == "s3:ListBucket" and "Condition" in s]
    assert listing["Condition"] == {
        "StringLike": {"s3:prefix": ["sales-east/run_id=*", "sales-west/run_id=*"]}
    }  # fmt: skip
    assert "Outputs" in json.dumps(listing["Resource"])
    (table,) = [s for s in statements if "dynamodb:GetItem" in s["Action"]]  # the fan-in state: read, then put
    assert table["Action"] == ["dynamodb:BatchGetItem", "dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem"]
    assert "PlatformIdempotency" in json.dumps(table["Resource"])


def test_a_downstream_job_reads_its_upstreams_run_outputs_and_nothing_else_there(synth: Synthesized) -> None:
    def reads(role_fragment: str) -> str:
        policies = [p["Properties"] for k, p in synth.resources("AWS::IAM::Policy").items() if role_fragment in k]
        return json.dumps(
            [s for p in policies for s in p["PolicyDocument"]["Statement"] if s["Action"] == "s3:GetObject"]
        )

    summary = reads("PipelinesalessummaryJobRole")
    assert '/sales-east/*"' in summary and '/sales-west/*"' in summary
    assert "Outputs" not in reads("PipelinesalesdailyJobRole")  # a pipeline without upstreams reads no outputs
