"""One pipeline on EMR on EKS: its virtual cluster (or an existing one), job execution role and workflow."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import aws_emrcontainers as emrc
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.eks import EksRuntime
from stacks.arns import ACCOUNT_ID, PARTITION, Allow, virtual_cluster_arn
from stacks.asl import compose_once
from stacks.naming import JOBS_PREFIX, eks_job_role_name, virtual_cluster_name
from stacks.workflow import PipelineProps, PipelineWorkflow, asl_string

BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(text: str) -> str:
    """EMR on EKS names a job's service accounts with the base36 encoding of the role name's bytes."""
    number = int.from_bytes(text.encode("utf-8"), "big")
    digits = ""
    while number:
        number, rest = divmod(number, 36)
        digits = BASE36[rest] + digits
    return digits or "0"


class EksVirtualCluster(Construct):
    """Virtual cluster `<prefix>-<pipeline>` on the configured EKS cluster and namespace. It lives in the platform
    stack (as EMR Serverless applications do): the deployment-wide guardrail needs its generated id."""

    def __init__(self, scope: Construct, construct_id: str, *, prefix: str, name: str, runtime: EksRuntime) -> None:
        super().__init__(scope, construct_id)
        assert runtime.eks_cluster_name is not None and runtime.namespace is not None
        self.resource = emrc.CfnVirtualCluster(
            self,
            "VirtualCluster",
            name=virtual_cluster_name(prefix, name),
            container_provider=emrc.CfnVirtualCluster.ContainerProviderProperty(
                id=runtime.eks_cluster_name,
                type="EKS",
                info=emrc.CfnVirtualCluster.ContainerInfoProperty(
                    eks_info=emrc.CfnVirtualCluster.EksInfoProperty(namespace=runtime.namespace)
                ),
            ),
        )
        self.virtual_cluster_id = self.resource.attr_id


class EksPipeline(PipelineWorkflow):
    """The workflow of one EMR-on-EKS pipeline.

    - Runs on its `EksVirtualCluster` (platform stack) or an existing virtual cluster.
    - Job execution role: imported, or created trusting exactly the service accounts EMR on EKS creates for
      this role in the namespace (IRSA, what `aws emr-containers update-role-trust-policy` writes); reads and
      writes the same prefixes as the other runtimes' job roles.
    - State machine composed from `statemachines/fragments/emr_eks_job.json` (see `PipelineWorkflow`).
    """

    def __init__(
        self, scope: Construct, construct_id: str, props: PipelineProps, *, virtual_cluster_id: str | None = None
    ) -> None:
        """`virtual_cluster_id`: the one `EksVirtualCluster` created in the platform stack (else the configured one)."""
        super().__init__(scope, construct_id, props)
        name, prefix = props.name, props.prefix
        runtime = props.runtime_of(EksRuntime)
        self.runtime = runtime
        cluster_id = virtual_cluster_id or runtime.virtual_cluster_id
        if cluster_id is None:
            raise TypeError(f"pipeline {name}: no virtual cluster: expected an EksVirtualCluster's id")
        self.virtual_cluster_id = cluster_id
        self.virtual_cluster_arn = virtual_cluster_arn(self.stack, self.virtual_cluster_id)
        self.job_role_arn = self._job_role(prefix, name)
        self.build()

    def runtime_definition(self) -> dict[str, Any]:
        # StartJobRun retryPolicyConfiguration (botocore emr-containers): not sent at max_attempts 1, the
        # service's default, so a pipeline without retries deploys the reviewed snapshot unchanged.
        retry = self.runtime.retry
        policy = {"RetryPolicyConfiguration": {"MaxAttempts": retry.max_attempts}}
        return compose_once("emr_eks_job", {"JobRunRetry": policy} if retry.retries else None)

    def runtime_substitutions(self) -> dict[str, str]:
        runtime, artifacts = self.runtime, self.storage.artifacts_ref.name
        return {
            "EntryPoint": f"s3://{artifacts}/{JOBS_PREFIX}{runtime.entry_point}",
            "JobArgumentsJson": asl_string(json.dumps(runtime.arguments)),
            "SparkSubmitParameters": asl_string(runtime.spark_parameters.replace("{artifacts}", artifacts)),
            "ExecutionTimeoutMinutes": str(runtime.execution_timeout_minutes),
            "MaxAttempts": str(runtime.retry.max_attempts),
            "VirtualClusterId": self.virtual_cluster_id,
            "JobRoleArn": self.job_role_arn,
            "ReleaseLabel": runtime.release_label,
        }

    def runtime_wildcards(self) -> tuple[str, list[str]]:
        return "job runs of its virtual cluster (ids are unknown until run time).", []

    def _job_role(self, prefix: str, name: str) -> str:
        spec = self.runtime.job_role
        if spec.existing_role_arn is not None:
            return spec.existing_role_arn
        role_name = eks_job_role_name(prefix, name)  # config validation keeps it within 64
        namespace = self.runtime.namespace or "*"
        issuer = spec.oidc_issuer
        provider = f"arn:{PARTITION}:iam::{ACCOUNT_ID}:oidc-provider/{issuer}"
        subject = f"system:serviceaccount:{namespace}:emr-containers-sa-*-*-{ACCOUNT_ID}-{base36(role_name)}"
        role = self.job_data_role(
            "JobRole",
            role_name=role_name,
            assumed_by=iam.FederatedPrincipal(
                provider, {"StringLike": {f"{issuer}:sub": subject}}, "sts:AssumeRoleWithWebIdentity"
            ),
            description=f"EMR Autopilot job execution role of pipeline {name} (EMR on EKS, IRSA)",
            logs_prefix=f"emr-eks/{name}/",
        )
        return role.role_arn

    def grant_runtime(self) -> None:
        role = self.role
        role.add_to_policy(
            iam.PolicyStatement(
                sid="StartJobRun",
                actions=["emr-containers:StartJobRun"],
                resources=[self.virtual_cluster_arn],
                # EMR on EKS authorizes the job role through this condition key instead of iam:PassRole.
                conditions={"StringEquals": {"emr-containers:ExecutionRoleArn": self.job_role_arn}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ManageJobRuns",
                actions=["emr-containers:DescribeJobRun", "emr-containers:CancelJobRun"],
                resources=[f"{self.virtual_cluster_arn}/jobruns/*"],
            )
        )
        # The finalize function reads the run's job run: state, timings and the job's requested resources (its cost).
        self.platform.grant_shared(
            self.platform.finalize, Allow(["emr-containers:DescribeJobRun"], [f"{self.virtual_cluster_arn}/jobruns/*"])
        )
