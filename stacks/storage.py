"""Storage: landing, outputs, artifacts and logs buckets (created, or imported by name)."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from config.model import BucketSpec, Storage
from stacks.nag import suppress
from stacks.naming import BOOTSTRAP_DIR, BOOTSTRAP_PREFIX, JOBS_DIR, JOBS_PREFIX


@dataclass(frozen=True)
class BucketRef:
    """A bucket's name and ARN as read from CDK once: the same deploy-time tokens the bucket would give each time
    (they resolve in whichever stack uses them), without a jsii round trip per pipeline that uses them."""

    name: str
    arn: str

    @classmethod
    def of(cls, bucket: s3.IBucket) -> BucketRef:
        return cls(bucket.bucket_name, bucket.bucket_arn)

    def objects(self, key_pattern: str) -> str:
        """`<bucket ARN>/<key_pattern>`, as `IBucket.arn_for_objects` builds it."""
        return f"{self.arn}/{key_pattern}"


class AutopilotStorage(Construct):
    """The deployment's four buckets.

    Created buckets: public access blocked, SSL enforced, SSE-S3 encryption, server access logs to
    the logs bucket. Outputs is versioned (the ledger and results are records). Landing is versioned (each
    object version is one arrival, pinned by its run's manifest) and expires noncurrent versions after
    `noncurrent_version_expiration_days`. Logs has a
    lifecycle (STANDARD_IA after `infrequent_access_after_days`, expiry after `expiration_days`).
    The landing bucket sends EventBridge notifications. Job code from `jobs/` is uploaded to
    `s3://<artifacts>/jobs/` on deploy, and bootstrap scripts from `bootstrap/` to
    `s3://<artifacts>/bootstrap/`. `landing_ref`, `outputs_ref`, `artifacts_ref` and `logs_ref` are their names and
    ARNs (`BucketRef`).
    """

    def __init__(self, scope: Construct, construct_id: str, *, storage: Storage) -> None:
        super().__init__(scope, construct_id)
        self.logs = self._logs_bucket(storage)
        self.landing = self._bucket(
            "Landing",
            storage.landing,
            event_bridge=True,
            versioned=True,
            noncurrent_days=storage.landing.noncurrent_version_expiration_days,
        )
        self.outputs = self._bucket("Outputs", storage.outputs, versioned=True)
        self.artifacts = self._bucket("Artifacts", storage.artifacts)
        self.landing_ref, self.outputs_ref = BucketRef.of(self.landing), BucketRef.of(self.outputs)
        self.artifacts_ref, self.logs_ref = BucketRef.of(self.artifacts), BucketRef.of(self.logs)

        self.jobs_deployment = s3deploy.BucketDeployment(
            self,
            "JobCode",
            sources=[s3deploy.Source.asset(str(JOBS_DIR), exclude=["sample-data/**", "README.md", "__pycache__/**"])],
            destination_bucket=self.artifacts,
            destination_key_prefix=JOBS_PREFIX,
            prune=True,
            retain_on_delete=False,
            memory_limit=256,
        )
        # EMR-on-EC2 bootstrap scripts from `bootstrap/` to `s3://<artifacts>/bootstrap/`.
        self.bootstrap_deployment = s3deploy.BucketDeployment(
            self,
            "BootstrapScripts",
            sources=[s3deploy.Source.asset(str(BOOTSTRAP_DIR), exclude=["README.md"])],
            destination_bucket=self.artifacts,
            destination_key_prefix=BOOTSTRAP_PREFIX,
            prune=True,
            retain_on_delete=False,
            memory_limit=256,
        )

    def _logs_bucket(self, storage: Storage) -> s3.IBucket:
        spec = storage.logs
        if spec.existing_bucket_name:
            return s3.Bucket.from_bucket_name(self, "Logs", spec.existing_bucket_name)
        bucket = s3.Bucket(
            self,
            "Logs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # server access logging requires SSE-S3 on the target
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            removal_policy=_removal(spec),
            auto_delete_objects=spec.removal_policy == "destroy",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="tier-then-expire",
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                            transition_after=Duration.days(spec.infrequent_access_after_days),
                        )
                    ]
                    if spec.infrequent_access_after_days < spec.expiration_days
                    else [],
                    expiration=Duration.days(spec.expiration_days),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
        )
        suppress(bucket, "AwsSolutions-S1", "This is the access-log target bucket; logging it to itself would loop.")
        return bucket

    def _bucket(
        self,
        construct_id: str,
        spec: BucketSpec,
        *,
        event_bridge: bool = False,
        versioned: bool = False,
        noncurrent_days: int | None = None,
    ) -> s3.IBucket:
        if spec.existing_bucket_name:
            return s3.Bucket.from_bucket_name(self, construct_id, spec.existing_bucket_name)
        return s3.Bucket(
            self,
            construct_id,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=versioned,
            event_bridge_enabled=event_bridge,
            server_access_logs_bucket=self.logs,
            server_access_logs_prefix=f"s3-access/{construct_id.lower()}/",
            removal_policy=_removal(spec),
            auto_delete_objects=spec.removal_policy == "destroy",
            lifecycle_rules=[
                s3.LifecycleRule(
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                    noncurrent_version_expiration=Duration.days(noncurrent_days) if noncurrent_days else None,
                )
            ],
        )


def _removal(spec: BucketSpec) -> RemovalPolicy:
    return RemovalPolicy.DESTROY if spec.removal_policy == "destroy" else RemovalPolicy.RETAIN


def state_table(
    scope: Construct,
    construct_id: str,
    *,
    table_name: str,
    partition_key: str,
    sort_key: str | None = None,
    ttl_attribute: str | None = None,
) -> dynamodb.TableV2:
    """A table of the app's own state (claims, run slots): string keys, on-demand, point-in-time recovery,
    removed with the stack (it holds nothing that outlives the deployment)."""
    return dynamodb.TableV2(
        scope,
        construct_id,
        table_name=table_name,
        partition_key=dynamodb.Attribute(name=partition_key, type=dynamodb.AttributeType.STRING),
        sort_key=dynamodb.Attribute(name=sort_key, type=dynamodb.AttributeType.STRING) if sort_key else None,
        billing=dynamodb.Billing.on_demand(),
        time_to_live_attribute=ttl_attribute,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        removal_policy=RemovalPolicy.DESTROY,
    )
