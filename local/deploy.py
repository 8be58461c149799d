"""Deploy a CDK cloud assembly (`cdk.out`) into the twin: same templates, same ASL, same handler code.

Resources are created in dependency order through the twin's AWS APIs; every resource type the
deployer does not model is listed in the report (never skipped silently).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local.assembly import AssemblyError, Resolver, Resource, StackTemplate, read_assembly
from local.function_logs import LOG_FORMATS
from local.lambda_runtime import LocalFunction, environment_problem
from local.validation import parameter_name_problem

if TYPE_CHECKING:
    from local.twin import Twin

LOG = logging.getLogger("twin.deploy")

# Types whose effect the twin has no use for (documented; listed separately from "not modelled").
RECORDED_ONLY = {
    "AWS::CDK::Metadata": "CDK analytics",
    "AWS::Lambda::Permission": "resource policies are not enforced by the twin",
    "AWS::SQS::QueuePolicy": "resource policies are not enforced by the twin",
    "AWS::SNS::TopicPolicy": "resource policies are not enforced by the twin",
    "Custom::S3AutoDeleteObjects": "only acts on stack deletion",
    # moto enforces bucket policies, and the app's deny every non-TLS request; the twin serves plain HTTP.
    "AWS::S3::BucketPolicy": "not applied: they deny non-TLS access and the twin serves HTTP on loopback",
}


@dataclass
class DeployReport:
    """What a deploy created, what it only recorded, and what it does not model."""

    stacks: list[str] = field(default_factory=list)
    created: dict[str, list[str]] = field(default_factory=dict)
    recorded: dict[str, list[str]] = field(default_factory=dict)
    not_modelled: dict[str, list[str]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)  # every deployed stack's exports, by export name
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"deployed {', '.join(self.stacks)}"]
        for kind, ids in sorted(self.created.items()):
            lines.append(f"  created   {len(ids):>3} {kind}")
        for kind, ids in sorted(self.recorded.items()):
            lines.append(f"  recorded  {len(ids):>3} {kind} ({RECORDED_ONLY.get(kind, '')})")
        for kind, ids in sorted(self.not_modelled.items()):
            lines.append(f"  NOT MODELLED {len(ids):>3} {kind}: {', '.join(ids)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def deploy_assembly(twin: Twin, cdk_out: Path) -> DeployReport:
    """Deploy every stack of the assembly into the running twin, each after the stacks it depends on; a stack's
    `Fn::ImportValue` reads the exports of those deployed before it."""
    report = DeployReport()
    for stack in read_assembly(cdk_out, account=twin.account, region=twin.region):
        _Deployer(twin, stack, report).run()
        report.stacks.append(stack.name)
    return report


class _Deployer:
    def __init__(self, twin: Twin, stack: StackTemplate, report: DeployReport) -> None:
        self.twin = twin
        self.stack = stack
        self.report = report
        self.resolver = Resolver(stack, account=twin.account, region=twin.region, exports=report.exports)
        self.layers: dict[str, Path] = {}
        self.handlers: dict[str, Callable[[Resource, dict[str, Any]], None]] = {
            "AWS::S3::Bucket": self._bucket,
            "AWS::DynamoDB::GlobalTable": self._table,
            "AWS::DynamoDB::Table": self._table,
            "AWS::SQS::Queue": self._queue,
            "AWS::SNS::Topic": self._topic,
            "AWS::SNS::Subscription": self._subscription,
            "AWS::IAM::Role": self._role,
            "AWS::IAM::Policy": self._policy,
            "AWS::IAM::InstanceProfile": self._instance_profile,
            "AWS::Logs::LogGroup": self._log_group,
            "AWS::Lambda::LayerVersion": self._layer,
            "AWS::Lambda::Function": self._function,
            "AWS::Lambda::EventSourceMapping": self._event_source_mapping,
            "AWS::Lambda::EventInvokeConfig": self._event_invoke_config,
            "AWS::CloudWatch::Alarm": self._alarm,
            "AWS::Events::Rule": self._rule,
            "AWS::Scheduler::Schedule": self._schedule,
            "AWS::StepFunctions::StateMachine": self._state_machine,
            "AWS::EMRServerless::Application": self._serverless_application,
            "AWS::EMRContainers::VirtualCluster": self._virtual_cluster,
            "AWS::EMR::SecurityConfiguration": self._security_configuration,
            "AWS::KMS::Key": self._kms_key,
            "AWS::SSM::Parameter": self._ssm_parameter,
            "Custom::S3BucketNotifications": self._bucket_notifications,
            # Resource-based policies: evaluated by the twin's IAM (local.iam), not handed to moto (which would
            # apply bucket policies without knowing that the twin's loopback HTTP stands for AWS's TLS).
            "AWS::S3::BucketPolicy": self._bucket_policy,
            "AWS::SQS::QueuePolicy": self._queue_policy,
            "AWS::SNS::TopicPolicy": self._topic_policy,
            "AWS::Lambda::Permission": self._lambda_permission,
            "Custom::CDKBucketDeployment": self._bucket_deployment,
        }

    def run(self) -> None:
        for logical_id in self.stack.deployment_order():
            resource = self.stack.resources[logical_id]
            if not self.resolver.is_enabled(resource):
                continue
            handler = self.handlers.get(resource.type)
            if handler is None:
                self._unhandled(resource)
                continue
            handler(resource, self.resolver.resolve_properties(resource))
            self.report.created.setdefault(resource.type, []).append(logical_id)
        outputs = self.resolver.resolve_outputs()
        exports = self.resolver.resolve_exports()
        taken = sorted(set(exports) & set(self.report.exports))
        if taken:  # CloudFormation: an export name is unique in an account and region
            raise AssemblyError(f"{self.stack.name}: exports {taken} are already exported by another stack")
        self.report.outputs.update(outputs)
        self.report.exports.update(exports)
        self._register_stack(outputs)

    def _register_stack(self, outputs: dict[str, Any]) -> None:
        """Register the stack in the twin's CloudFormation, so DescribeStacks answers with its outputs as in AWS
        (the operator CLI finds a deployment that way). The template only carries the outputs, as literal values;
        its one resource is conditioned off, since CloudFormation wants at least one."""
        template = {
            "Description": f"{self.stack.name}, deployed into the local twin (its resources are the twin's)",
            "Conditions": {"Never": {"Fn::Equals": ["twin", "aws"]}},
            "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle", "Condition": "Never"}},
            "Outputs": {key: {"Value": str(value)} for key, value in outputs.items()},
        }
        self.twin.client("cloudformation").create_stack(StackName=self.stack.name, TemplateBody=json.dumps(template))

    def _unhandled(self, resource: Resource) -> None:
        bucket = self.report.recorded if resource.type in RECORDED_ONLY else self.report.not_modelled
        bucket.setdefault(resource.type, []).append(resource.logical_id)
        # Give it a placeholder id so references to it still resolve.
        self._set(resource, f"{resource.logical_id}-{uuid.uuid4().hex[:8]}")

    # ------------------------------------------------------------------ helpers

    def _set(self, resource: Resource, ref: str, **attrs: Any) -> None:
        self.resolver.physical_ids[resource.logical_id] = ref
        for name, value in attrs.items():
            self.resolver.attributes[(resource.logical_id, name)] = value

    def _name(self, resource: Resource, given: str | None, max_len: int = 64, lower: bool = False) -> str:
        if given:
            return given
        base = f"{self.stack.name}-{resource.logical_id}"[: max_len - 9]
        name = f"{base}-{uuid.uuid4().hex[:8]}"
        return re.sub(r"[^a-z0-9-]", "-", name.lower()) if lower else name

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.twin.region}:{self.twin.account}:{resource}"

    # ------------------------------------------------------------------ resource types

    def _bucket(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("BucketName"), 63, lower=True)
        s3 = self.twin.client("s3")
        s3.create_bucket(Bucket=name)
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        self._set(resource, name, Arn=f"arn:aws:s3:::{name}", DomainName=f"{name}.s3.amazonaws.com",
                  RegionalDomainName=f"{name}.s3.{self.twin.region}.amazonaws.com")  # fmt: skip

    def _table(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("TableName"), 255)
        ddb = self.twin.client("dynamodb")
        ddb.create_table(
            TableName=name,
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
            BillingMode="PAY_PER_REQUEST",
        )
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        self._set(resource, name, Arn=self._arn("dynamodb", f"table/{name}"))

    def _queue(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("QueueName"), 80)
        attributes = {
            key: str(props[prop])
            for prop, key in (
                ("VisibilityTimeout", "VisibilityTimeout"),
                ("MessageRetentionPeriod", "MessageRetentionPeriod"),
                ("DelaySeconds", "DelaySeconds"),
            )
            if prop in props
        }
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        url = self.twin.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self._set(resource, url, Arn=self._arn("sqs", name), QueueName=name, QueueUrl=url)

    def _topic(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("TopicName"), 256)
        arn = self.twin.client("sns").create_topic(Name=name)["TopicArn"]
        self._set(resource, arn, TopicArn=arn, TopicName=name)

    def _subscription(self, resource: Resource, props: dict[str, Any]) -> None:
        arn = self.twin.client("sns").subscribe(
            TopicArn=props["TopicArn"], Protocol=props["Protocol"], Endpoint=props.get("Endpoint", "")
        )["SubscriptionArn"]
        self._set(resource, arn)

    def _role(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("RoleName"), 64)
        iam = self.twin.client("iam")
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]),
            Description=props.get("Description", ""),
        )["Role"]
        for policy in props.get("Policies", []):
            iam.put_role_policy(
                RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["PolicyDocument"])
            )
        for policy_arn in props.get("ManagedPolicyArns", []):  # AWS managed policies: moto ships their documents
            iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
        self._set(resource, name, Arn=role["Arn"], RoleId=role["RoleId"])

    def _policy(self, resource: Resource, props: dict[str, Any]) -> None:
        iam = self.twin.client("iam")
        for role in props.get("Roles", []):
            iam.put_role_policy(
                RoleName=role, PolicyName=props["PolicyName"], PolicyDocument=json.dumps(props["PolicyDocument"])
            )
        self._set(resource, props["PolicyName"])

    def _instance_profile(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("InstanceProfileName"), 128)
        iam = self.twin.client("iam")
        profile = iam.create_instance_profile(InstanceProfileName=name, Path=props.get("Path", "/"))["InstanceProfile"]
        for role in props.get("Roles", []):
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role)
        self._set(resource, name, Arn=profile["Arn"])

    def _log_group(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("LogGroupName"), 512)
        self.twin.client("logs").create_log_group(logGroupName=name)
        self._set(resource, name, Arn=self._arn("logs", f"log-group:{name}:*"))

    def _layer(self, resource: Resource, props: dict[str, Any]) -> None:
        asset = self.stack.asset_for_code(resource)
        name = props.get("LayerName") or resource.logical_id
        arn = self._arn("lambda", f"layer:{name}:1")
        self.layers[arn] = asset.path
        self._set(resource, arn)

    def _function(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("FunctionName"), 64)
        arn = self._arn("lambda", f"function:{name}")
        self._set(resource, name, Arn=arn)
        code = props.get("Code", {})
        if "ZipFile" in code:
            self.report.notes.append(f"{resource.logical_id}: inline-code function registered but not runnable")
            return
        asset = self.stack.asset_for_code(resource)
        layer_dirs = []
        for layer in props.get("Layers", []):
            if layer in self.layers:
                layer_dirs.append(self.layers[layer])
            elif ":017000801446:layer:AWSLambdaPowertoolsPython" in layer:
                pass  # the AWS-managed Powertools layer: the twin's own environment has the same pinned version
            else:
                self.report.notes.append(f"{name}: external layer {layer} is not available in the twin")
        logging_config = props.get("LoggingConfig") or {}
        log_format = logging_config.get("LogFormat", "Text")
        if log_format not in LOG_FORMATS:  # lambda LoggingConfig.LogFormat: an enum (botocore's lambda model)
            raise ValueError(f"{name}: LoggingConfig.LogFormat {log_format!r}; expected one of {LOG_FORMATS}")
        environment = {k: str(v) for k, v in props.get("Environment", {}).get("Variables", {}).items()}
        too_big = environment_problem(name, environment)
        if too_big is not None:  # CloudFormation's CREATE_FAILED, as Lambda refuses it
            raise ValueError(f"{resource.logical_id}: InvalidParameterValueException: {too_big}")
        self.twin.runtime.register(
            LocalFunction(
                name=name,
                arn=arn,
                handler=props.get("Handler", "index.handler"),
                code_dir=asset.path,
                layer_dirs=layer_dirs,
                environment=environment,
                timeout_seconds=int(props.get("Timeout", 3)),
                memory_mb=int(props.get("MemorySize", 128)),
                role_arn=props.get("Role"),
                reserved=None if (reserved := props.get("ReservedConcurrentExecutions")) is None else int(reserved),
                log_group=logging_config.get("LogGroup"),
                log_format=log_format,
            )
        )

    def _event_source_mapping(self, resource: Resource, props: dict[str, Any]) -> None:
        from local.twin import EventSourceMapping

        source = props["EventSourceArn"]
        if source.split(":")[2] != "sqs":
            self.report.not_modelled.setdefault("AWS::Lambda::EventSourceMapping (non-SQS)", []).append(
                resource.logical_id
            )
            return
        sqs = self.twin.client("sqs")
        url = sqs.get_queue_url(QueueName=source.split(":")[5])["QueueUrl"]
        self.twin.mappings.append(
            EventSourceMapping(
                queue_url=url,
                queue_arn=source,
                function_name=props["FunctionName"],
                batch_size=int(props.get("BatchSize", 10)),
                window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
                report_batch_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
                enabled=props.get("Enabled", True),
                max_concurrency=(props.get("ScalingConfig") or {}).get("MaximumConcurrency"),
            )
        )
        self._set(resource, str(uuid.uuid4()))

    def _rule(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("Name"), 64)
        events = self.twin.client("events")
        kwargs: dict[str, Any] = {"Name": name, "State": props.get("State", "ENABLED")}
        if "EventPattern" in props:
            kwargs["EventPattern"] = json.dumps(props["EventPattern"])
        if "ScheduleExpression" in props:
            kwargs["ScheduleExpression"] = props["ScheduleExpression"]
        arn = events.put_rule(**kwargs)["RuleArn"]
        targets = [
            {k: v for k, v in target.items() if k in {"Id", "Arn", "Input", "InputPath", "InputTransformer", "RoleArn"}}
            for target in props.get("Targets", [])
        ]
        if targets:
            events.put_targets(Rule=name, Targets=targets)
        self._set(resource, name, Arn=arn)

    def _schedule(self, resource: Resource, props: dict[str, Any]) -> None:
        """An EventBridge Scheduler schedule (moto's `scheduler`); `twin.scheduler.fire` fires it on demand."""
        name = self._name(resource, props.get("Name"), 64)
        optional = ("Description", "ScheduleExpressionTimezone", "StartDate", "EndDate", "KmsKeyArn")
        arn = self.twin.client("scheduler").create_schedule(
            Name=name,
            GroupName=props.get("GroupName", "default"),
            ScheduleExpression=props["ScheduleExpression"],
            FlexibleTimeWindow=props["FlexibleTimeWindow"],
            Target=props["Target"],
            State=props.get("State", "ENABLED"),
            **{key: props[key] for key in optional if key in props},
        )["ScheduleArn"]
        self._set(resource, arn, Arn=arn)

    def _state_machine(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("StateMachineName"), 80)
        definition = self.resolver.state_machine_definition(resource)
        arn = self.twin.client("stepfunctions").create_state_machine(
            name=name, definition=definition, roleArn=props["RoleArn"], type=props.get("StateMachineType", "STANDARD")
        )["stateMachineArn"]
        self._set(resource, arn, Arn=arn, Name=name)

    def _serverless_application(self, resource: Resource, props: dict[str, Any]) -> None:
        def camel(value: Any) -> Any:
            if isinstance(value, dict):
                return {k[0].lower() + k[1:]: camel(v) for k, v in value.items()}
            if isinstance(value, list):
                return [camel(v) for v in value]
            return value

        kwargs: dict[str, Any] = {
            "name": props.get("Name") or resource.logical_id,
            "releaseLabel": props["ReleaseLabel"],
            "type": props.get("Type", "Spark").upper(),
        }
        for prop in ("AutoStartConfiguration", "AutoStopConfiguration", "MaximumCapacity", "NetworkConfiguration",
                     "Architecture"):  # fmt: skip
            if prop in props:
                kwargs[prop[0].lower() + prop[1:]] = camel(props[prop])
        if "InitialCapacity" in props:
            kwargs["initialCapacity"] = {pair["Key"]: camel(pair["Value"]) for pair in props["InitialCapacity"]}
        app = self.twin.client("emr-serverless").create_application(**kwargs)
        self._set(resource, app["applicationId"], ApplicationId=app["applicationId"], Arn=app["arn"])

    def _virtual_cluster(self, resource: Resource, props: dict[str, Any]) -> None:
        tags = {t["Key"]: t["Value"] for t in props.get("Tags") or []}
        request = {"Name": props["Name"], "ContainerProvider": props["ContainerProvider"], "Tags": tags}
        created = self.twin.emr_containers.create_virtual_cluster(request)
        self._set(resource, created["id"], Id=created["id"], Arn=created["arn"])

    def _kms_key(self, resource: Resource, props: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {"Description": props.get("Description", resource.logical_id)}
        if "KeyPolicy" in props:
            kwargs["Policy"] = json.dumps(props["KeyPolicy"])
        for prop in ("KeyUsage", "KeySpec"):
            if prop in props:
                kwargs[prop] = props[prop]
        key = self.twin.client("kms").create_key(**kwargs)["KeyMetadata"]
        if props.get("EnableKeyRotation"):
            self.twin.client("kms").enable_key_rotation(KeyId=key["KeyId"])
        self._set(resource, key["KeyId"], Arn=key["Arn"], KeyId=key["KeyId"])

    def _security_configuration(self, resource: Resource, props: dict[str, Any]) -> None:
        name = self._name(resource, props.get("Name"), 256)
        configuration = props["SecurityConfiguration"]
        self.twin.client("emr").create_security_configuration(
            Name=name,
            SecurityConfiguration=configuration if isinstance(configuration, str) else json.dumps(configuration),
        )
        self._set(resource, name)

    def _ssm_parameter(self, resource: Resource, props: dict[str, Any]) -> None:
        """A parameter in moto's SSM (which refuses a Standard-tier value over 4,096 characters and a name prefixed
        with "aws" or "ssm", as SSM does; a parameter that already exists fails the create, as CloudFormation's does).
        A name too long or too deep for SSM fails the deploy (`parameter_name_problem`; moto takes it)."""
        name = self._name(resource, props.get("Name"), 1011)
        refused = parameter_name_problem(name, self.twin.region, self.twin.account)
        if refused is not None:  # CloudFormation's CREATE_FAILED, as SSM refuses it
            raise ValueError(f"{resource.logical_id}: {refused}")
        kwargs: dict[str, Any] = {"Name": name, "Value": props["Value"], "Type": props["Type"], "Overwrite": False}
        for prop in ("Description", "Tier", "AllowedPattern", "DataType", "Policies"):
            if prop in props:
                kwargs[prop] = props[prop]
        if props.get("Tags"):  # AWS::SSM::Parameter Tags: a JSON object of key -> value
            kwargs["Tags"] = [{"Key": k, "Value": str(v)} for k, v in props["Tags"].items()]
        self.twin.client("ssm").put_parameter(**kwargs)
        self._set(resource, name, Type=props["Type"], Value=props["Value"])

    def _bucket_policy(self, resource: Resource, props: dict[str, Any]) -> None:
        bucket = props["Bucket"]
        self.twin.iam.add_resource_policy(
            f"arn:aws:s3:::{bucket}", f"bucket policy of {bucket}", props["PolicyDocument"]
        )
        self._set(resource, f"{bucket}-policy")

    def _queue_policy(self, resource: Resource, props: dict[str, Any]) -> None:
        for url in props["Queues"]:
            name = url.rstrip("/").rsplit("/", 1)[-1]
            self.twin.iam.add_resource_policy(
                self._arn("sqs", name), f"queue policy of {name}", props["PolicyDocument"]
            )
        self._set(resource, f"{resource.logical_id}-{uuid.uuid4().hex[:8]}")

    def _topic_policy(self, resource: Resource, props: dict[str, Any]) -> None:
        for topic in props["Topics"]:
            self.twin.iam.add_resource_policy(topic, f"topic policy of {topic}", props["PolicyDocument"])
        self._set(resource, f"{resource.logical_id}-{uuid.uuid4().hex[:8]}")

    def _event_invoke_config(self, resource: Resource, props: dict[str, Any]) -> None:
        """Asynchronous invocation settings: retries, maximum event age, on-failure destination (SQS only: the
        app's one destination type; on-success destinations are reported as not modelled)."""
        function = self.twin.runtime.resolve(props["FunctionName"])
        if "MaximumRetryAttempts" in props:
            function.async_retries = int(props["MaximumRetryAttempts"])
        if "MaximumEventAgeInSeconds" in props:
            function.async_max_age_seconds = int(props["MaximumEventAgeInSeconds"])
        destinations = props.get("DestinationConfig", {})
        on_failure = destinations.get("OnFailure", {}).get("Destination")
        if on_failure and on_failure.split(":")[2] != "sqs":
            self.report.not_modelled.setdefault("EventInvokeConfig on-failure (non-SQS)", []).append(
                resource.logical_id
            )
        else:
            function.on_failure_destination = on_failure
        if destinations.get("OnSuccess"):
            self.report.not_modelled.setdefault("EventInvokeConfig on-success", []).append(resource.logical_id)
        self._set(resource, resource.logical_id)

    def _alarm(self, resource: Resource, props: dict[str, Any]) -> None:
        """A metric alarm, created in moto (local.cloudwatch evaluates it; its SNS actions are not executed)."""
        name = self._name(resource, props.get("AlarmName"), 255)
        keys = (
            "AlarmDescription", "ActionsEnabled", "AlarmActions", "OKActions", "InsufficientDataActions",
            "MetricName", "Namespace", "Statistic", "ExtendedStatistic", "Dimensions", "Period", "Unit",
            "EvaluationPeriods", "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
            "Metrics", "ThresholdMetricId",
        )  # fmt: skip
        self.twin.client("cloudwatch").put_metric_alarm(AlarmName=name, **{k: props[k] for k in keys if k in props})
        self._set(resource, name, Arn=self._arn("cloudwatch", f"alarm:{name}"))

    def _lambda_permission(self, resource: Resource, props: dict[str, Any]) -> None:
        """A Lambda permission is one statement of the function's resource-based policy."""
        function = props["FunctionName"]
        arn = function if function.startswith("arn:") else self._arn("lambda", f"function:{function}")
        principal = props["Principal"]
        statement: dict[str, Any] = {
            "Sid": resource.logical_id,
            "Effect": "Allow",
            "Principal": {"Service": principal} if principal.endswith(".amazonaws.com") else {"AWS": principal},
            "Action": props["Action"],
            "Resource": arn,
        }
        condition: dict[str, Any] = {}
        if "SourceArn" in props:
            condition["ArnLike"] = {"AWS:SourceArn": props["SourceArn"]}
        if "SourceAccount" in props:
            condition["StringEquals"] = {"AWS:SourceAccount": props["SourceAccount"]}
        if condition:
            statement["Condition"] = condition
        self.twin.iam.add_resource_policy(arn, f"permission {resource.logical_id}", {"Statement": [statement]})
        self._set(resource, resource.logical_id)

    def _bucket_notifications(self, resource: Resource, props: dict[str, Any]) -> None:
        config = props.get("NotificationConfiguration", {})
        self.twin.client("s3").put_bucket_notification_configuration(
            Bucket=props["BucketName"], NotificationConfiguration=config
        )
        self._set(resource, f"{props['BucketName']}-notifications")

    def _bucket_deployment(self, resource: Resource, props: dict[str, Any]) -> None:
        s3 = self.twin.client("s3")
        bucket = props["DestinationBucketName"]
        prefix = props.get("DestinationBucketKeyPrefix", "")
        copied = 0
        for asset in self.stack.bucket_deployment_sources(resource):
            root = asset.path
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for path in files:
                key = prefix + (path.name if root.is_file() else path.relative_to(root).as_posix())
                s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
                copied += 1
        self._set(resource, f"{bucket}/{prefix}")
        LOG.info("bucket deployment: %d files to s3://%s/%s", copied, bucket, prefix)
