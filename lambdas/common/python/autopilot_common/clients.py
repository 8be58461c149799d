"""The boto3 clients every function uses: one retry policy, built on first use, typed for the type checker.

The policy: botocore's `standard` mode, 5 attempts in all. It retries throttling (EMR's control plane and Step
Functions throttle bursts of List/Describe and StartExecution calls) and transient errors with exponential
backoff and jitter (base 1 s doubling, at most 20 s: https://boto3.amazonaws.com/v1/documentation/api/latest/guide/
retries.html), so the worst case, about 15 s of waiting, stays inside every function's timeout; 8 attempts could
wait about 70 s, past a 60 s function's end. Beyond that the caller's own retry takes over: SQS redelivers the
router's messages, Lambda retries asynchronous invocations twice, Step Functions retries the task.

Domain modules take clients as arguments (tests pass moto or fakes); handlers get them from `Clients`, whose
properties create each client once per execution environment, so importing a handler needs no credentials.
The types come from the `mypy_boto3_*` stubs, imported only when type checking (never at run time).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.client import CloudWatchClient as CloudWatchClient
    from mypy_boto3_dynamodb.client import DynamoDBClient as DynamoDBClient
    from mypy_boto3_ec2.client import EC2Client as EC2Client
    from mypy_boto3_emr.client import EMRClient as EMRClient
    from mypy_boto3_emr_containers.client import EMRContainersClient as EMRContainersClient
    from mypy_boto3_emr_serverless.client import EMRServerlessClient as EMRServerlessClient
    from mypy_boto3_events.client import EventBridgeClient as EventBridgeClient
    from mypy_boto3_s3.client import S3Client as S3Client
    from mypy_boto3_sns.client import SNSClient as SNSClient
    from mypy_boto3_stepfunctions.client import SFNClient as SFNClient
else:
    CloudWatchClient = DynamoDBClient = EC2Client = EMRClient = EMRContainersClient = EMRServerlessClient = Any
    S3Client = SFNClient = SNSClient = EventBridgeClient = Any

RETRY_POLICY = Config(retries={"mode": "standard", "total_max_attempts": 5})


def aws_client(service: str, config: Config = RETRY_POLICY) -> Any:
    """A boto3 client for `service` with the app's retry policy."""
    import boto3  # deferred: importing a handler must not need AWS credentials or a region

    return boto3.client(service, config=config)


class Clients:
    """The AWS clients of one execution environment, each created on first use.

    `Clients(emr=..., s3=...)` hands in ready clients instead (tests pass moto, twin or fake ones); a
    client not handed in is still created on first use.
    """

    def __init__(self, **given: Any) -> None:
        unknown = sorted(set(given) - {n for n, v in vars(Clients).items() if isinstance(v, cached_property)})
        if unknown:
            raise TypeError(f"Clients: unknown client(s) {unknown}")
        self.__dict__.update(given)  # cached_property reads the instance dict first

    @cached_property
    def s3(self) -> S3Client:
        return cast(S3Client, aws_client("s3"))

    @cached_property
    def sfn(self) -> SFNClient:
        return cast(SFNClient, aws_client("stepfunctions"))

    @cached_property
    def dynamodb(self) -> DynamoDBClient:
        return cast(DynamoDBClient, aws_client("dynamodb"))

    @cached_property
    def sns(self) -> SNSClient:
        return cast(SNSClient, aws_client("sns"))

    @cached_property
    def events(self) -> EventBridgeClient:
        return cast(EventBridgeClient, aws_client("events"))

    @cached_property
    def ec2(self) -> EC2Client:
        return cast(EC2Client, aws_client("ec2"))

    @cached_property
    def emr(self) -> EMRClient:
        return cast(EMRClient, aws_client("emr"))

    @cached_property
    def emr_serverless(self) -> EMRServerlessClient:
        return cast(EMRServerlessClient, aws_client("emr-serverless"))

    @cached_property
    def emr_containers(self) -> EMRContainersClient:
        return cast(EMRContainersClient, aws_client("emr-containers"))

    @cached_property
    def cloudwatch(self) -> CloudWatchClient:
        return cast(CloudWatchClient, aws_client("cloudwatch"))

    @cached_property
    def ssm(
        self,
    ) -> Any:  # no mypy_boto3_ssm stubs pinned: its two calls are read in autopilot_common.pipeline_settings
        return aws_client("ssm")
