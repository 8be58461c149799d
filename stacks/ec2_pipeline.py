"""One pipeline on EMR on EC2: a transient cluster per run (roles, instance profile, security
configuration, KMS key) or steps on a long-running cluster; and its workflow."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_emr as emr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from config.ec2 import Ec2Runtime
from stacks.alarm_scaling import alarm_prefix, alarm_specs, grant_alarm_lifecycle
from stacks.arns import Allow, format_arn, grant, service_principal
from stacks.asl import compose_once
from stacks.emr_ec2_spec import cluster_request, launch_settings, managed_tags, step_templates
from stacks.nag import suppress
from stacks.naming import (
    BOOTSTRAP_PREFIX,
    JOBS_PREFIX,
    TAG_DEPLOYMENT,
    TAG_PIPELINE,
    instance_profile_name,
)
from stacks.workflow import PipelineProps, PipelineWorkflow, asl_string

# Managed rules Step Functions creates to learn when a .sync EMR call has finished (steps are noticed from their
# own events instead: autopilot_common.step_notices).
EMR_SYNC_RULES = {
    "addStep.sync": "StepFunctionsGetEventForEMRAddJobFlowStepsRule",
    "terminateCluster.sync": "StepFunctionsGetEventForEMRTerminateJobFlowsRule",
    "createCluster.sync": "StepFunctionsGetEventForEMRRunJobFlowRule",
}
SERVICE_POLICY = "service-role/AmazonEMRServicePolicy_v2"
# cdk-nag `appliesTo` for `cluster/*` (the partition is a token, or literal when the CLI knows the region).
ANY_CLUSTER_ARN = "regex:/^Resource::arn:(<AWS::Partition>|aws[a-z-]*):elasticmapreduce:.*:cluster\\/\\*$/g"
SCALING_ALARMS_ARN = "regex:/^Resource::arn:[^:]+:cloudwatch:.*:alarm:.*-scaling-.*\\*$/g"
# What the finalize function reads for the ledger (and CancelSteps for a failed run on a shared cluster).
FINALIZE_ACTIONS = [
    "elasticmapreduce:DescribeCluster",
    "elasticmapreduce:ListInstanceFleets",
    "elasticmapreduce:ListInstanceGroups",
    "elasticmapreduce:ListInstances",
    "elasticmapreduce:ListSteps",
    "elasticmapreduce:CancelSteps",
]
# RunStep's submission (autopilot_common.step_notices.submit_step): a step already added under its name is reused
# (ListSteps, above), else added; DescribeStep tells whether it ended before its token was stored.
SUBMIT_STEP_ACTIONS = ["elasticmapreduce:AddJobFlowSteps", "elasticmapreduce:DescribeStep"]
GLUE_ACTIONS = [
    "glue:GetDatabase",
    "glue:GetDatabases",
    "glue:CreateDatabase",
    "glue:GetTable",
    "glue:GetTables",
    "glue:CreateTable",
    "glue:UpdateTable",
    "glue:DeleteTable",
    "glue:GetPartition",
    "glue:GetPartitions",
    "glue:CreatePartition",
    "glue:UpdatePartition",
    "glue:DeletePartition",
    "glue:BatchCreatePartition",
    "glue:BatchGetPartition",
    "glue:BatchDeletePartition",
    "glue:GetUserDefinedFunctions",
]


@cache
def _service_policy() -> iam.IManagedPolicy:
    """AmazonEMRServicePolicy_v2 (an imported managed policy is a value: every transient pipeline's service role shares
    it rather than import it through the jsii bridge again)."""
    return iam.ManagedPolicy.from_aws_managed_policy_name(SERVICE_POLICY)


def cluster_arn(stack: Stack, cluster_id: str = "*") -> str:
    return format_arn(stack, service="elasticmapreduce", resource="cluster", resource_name=cluster_id)


class Ec2Pipeline(PipelineWorkflow):
    """The workflow of one EMR-on-EC2 pipeline.

    Transient (default): per pipeline an EMR service role (AmazonEMRServicePolicy_v2), an EC2 instance
    role + profile that reads only the pipeline's inputs, job code, bootstrap scripts and manifests and
    writes only its outputs and logs (plus the Glue Data Catalog when it is the metastore), a security
    configuration (encryption at rest with a rotating KMS key; in transit with the given certificates;
    IMDSv2 only), and the workflow `emr_ec2_transient` (`statemachines/fragments/`) whose createCluster
    parameters are filled from config. Existing cluster: only the workflow `emr_ec2_existing`. Either way the
    finalize function adds the steps (RunStep) and reads, or cancels, the steps of this pipeline's clusters (by id,
    or any cluster carrying the configured tag): the workflow itself never touches a long-running cluster.
    """

    def __init__(
        self, scope: Construct, construct_id: str, props: PipelineProps, *, extra_tags: dict[str, str]
    ) -> None:
        super().__init__(scope, construct_id, props)
        name, prefix, platform = props.name, props.prefix, props.platform
        runtime = props.runtime_of(Ec2Runtime)
        assert platform.finalize is not None
        self.runtime = runtime
        self.prefix = prefix
        self.cluster_tags = {**extra_tags, TAG_DEPLOYMENT: prefix, TAG_PIPELINE: name, **managed_tags()}
        self.cluster_substitutions: dict[str, str] = {}
        if runtime.existing_cluster is None:
            self.cluster_substitutions = self._transient_resources(prefix, name)
        self.build()

    def runtime_definition(self) -> dict[str, Any]:
        if self.runtime.existing_cluster is not None:
            return compose_once("emr_ec2_existing")
        definition = compose_once("emr_ec2_transient")
        definition["States"]["CreateCluster"]["Parameters"].update(cluster_request(self.runtime))
        definition["States"]["PlanScalingAlarms"]["Result"] = alarm_specs(self.name, self.runtime)
        return definition

    def runtime_substitutions(self) -> dict[str, str]:
        runtime = self.runtime
        assert self.platform.finalize is not None
        substitutions = {
            "Transient": "true" if runtime.transient else "false",
            "StepsJson": asl_string(json.dumps(step_templates(runtime, self.storage.artifacts_ref.name))),
            "ClusterTagsJson": asl_string(json.dumps(self.cluster_tags)),
            "LaunchJson": asl_string(json.dumps(launch_settings(runtime))),
        }
        if runtime.existing_cluster is None:
            return {
                **substitutions,
                "ScalingAlarmPrefix": alarm_prefix(self.prefix, self.name),
                **self.cluster_substitutions,
            }
        existing = runtime.existing_cluster.model_dump(exclude_none=True)
        return {**substitutions, "ExistingClusterJson": asl_string(json.dumps(existing))}

    def runtime_wildcards(self) -> tuple[str, list[str]]:
        return (
            "RunJobFlow, which has no resource type (only '*' can allow it; the request must tag the cluster "
            "with this pipeline); EMR's service-linked cleanup role (its path and name as the EMR guide gives them); "
            "clusters of this pipeline (ids are unknown until run time; scoped by the "
            "autopilot:pipeline tag); "
            "scaling alarms of this pipeline's clusters (named by prefix).",
            [ANY_CLUSTER_ARN, SCALING_ALARMS_ARN, "regex:/^Resource::arn:.*:role\\/aws-service-role\\/.*$/g"],
        )

    # ------------------------------------------------------------------ transient cluster resources

    def _transient_resources(self, prefix: str, name: str) -> dict[str, str]:
        runtime = self.runtime
        self.instance_role = self._instance_role(name)
        self.instance_profile = iam.CfnInstanceProfile(
            self,
            "InstanceProfile",
            instance_profile_name=instance_profile_name(prefix, name),
            roles=[self.instance_role.role_name],
        )
        self.service_role = iam.Role(
            self,
            "ServiceRole",
            assumed_by=service_principal("elasticmapreduce.amazonaws.com", this_account=True),
            managed_policies=[_service_policy()],
            description=f"EMR Autopilot: EMR service role of pipeline {name}",
        )
        # The managed v2 policy may pass only roles named EMR_EC2_DefaultRole; ours needs its own grant.
        grant(
            self.service_role,
            Allow(
                ["iam:PassRole"],
                [self.instance_role.role_arn],
                {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            ),
        )
        suppress(
            self.service_role,
            "AwsSolutions-IAM4",
            "AmazonEMRServicePolicy_v2 is the scoped EMR service policy: it acts only on resources tagged "
            "for-use-with-amazon-emr-managed-policies=true, which every cluster of this pipeline carries.",
            [f"Policy::arn:<AWS::Partition>:iam::aws:policy/{SERVICE_POLICY}"],
        )
        security = runtime.security
        if security.existing_configuration_name is not None:
            configuration_name = security.existing_configuration_name
        else:
            configuration_name = f"{prefix}-{name}"
            emr.CfnSecurityConfiguration(
                self,
                "SecurityConfiguration",
                name=configuration_name,
                security_configuration=self._security_configuration(),
            )
        return {
            "ServiceRole": self.service_role.role_name,
            "InstanceProfile": self.instance_profile.ref,
            "SecurityConfiguration": configuration_name,
        }

    def _security_configuration(self) -> dict[str, Any]:
        security = self.runtime.security
        encryption: dict[str, Any] = {
            "EnableAtRestEncryption": security.encryption_at_rest,
            "EnableInTransitEncryption": security.in_transit_certificates_s3_uri is not None,
        }
        if security.encryption_at_rest:
            key = kms.Key(
                self,
                "LocalDiskKey",
                enable_key_rotation=True,
                description=f"EMR Autopilot: local disk and EBS encryption of pipeline {self.name}'s clusters",
            )
            key.grant_encrypt_decrypt(self.instance_role)
            # EMR attaches encrypted EBS volumes through grants created with its service role.
            key.grant(self.service_role, "kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant", "kms:DescribeKey")
            key.grant_encrypt_decrypt(self.service_role)
            for role in (self.instance_role, self.service_role):
                suppress(
                    role,
                    "AwsSolutions-IAM5",
                    "CDK's KMS encrypt/decrypt grant (ReEncrypt*/GenerateDataKey*) on this pipeline's own key only.",
                    ["Action::kms:ReEncrypt*", "Action::kms:GenerateDataKey*"],
                )
            encryption["AtRestEncryptionConfiguration"] = {
                "S3EncryptionConfiguration": {"EncryptionMode": "SSE-S3"},
                "LocalDiskEncryptionConfiguration": {
                    "EncryptionKeyProviderType": "AwsKms",
                    "AwsKmsKey": key.key_arn,
                    "EnableEbsEncryption": True,
                },
            }
        if security.in_transit_certificates_s3_uri is not None:
            encryption["InTransitEncryptionConfiguration"] = {
                "TLSCertificateConfiguration": {
                    "CertificateProviderType": "PEM",
                    "S3Object": security.in_transit_certificates_s3_uri,
                }
            }
        return {
            "EncryptionConfiguration": encryption,
            "InstanceMetadataServiceConfiguration": {
                "MinimumInstanceMetadataServiceVersion": 2,
                "HttpPutResponseHopLimit": 1,
            },
        }

    def _instance_role(self, name: str) -> iam.Role:
        glue: list[Allow] = []
        if self.runtime.glue_catalog:
            stack = self.stack
            glue.append(
                Allow(
                    GLUE_ACTIONS,
                    [
                        format_arn(stack, service="glue", resource="catalog"),
                        format_arn(stack, service="glue", resource="database", resource_name="*"),
                        format_arn(stack, service="glue", resource="table", resource_name="*/*"),
                        format_arn(stack, service="glue", resource="userDefinedFunction", resource_name="*/*"),
                    ],
                )
            )
        return self.job_data_role(
            "InstanceRole",
            assumed_by=service_principal("ec2.amazonaws.com"),
            description=f"EMR Autopilot: EC2 instance role of pipeline {name}'s clusters",
            logs_prefix=f"emr-ec2/{name}/",
            code_prefixes=(JOBS_PREFIX, BOOTSTRAP_PREFIX),
            extra_statements=glue,
            wildcards=(
                "Object wildcards are limited to this pipeline's input, output, manifest, log, job-code and bootstrap "
                "prefixes; Glue Data Catalog databases/tables are created by the jobs at run time.",
                ["regex:/^Resource::.*\\/\\*$/g", "regex:/^Resource::arn:.*:glue:.*\\*.*$/g"],
            ),
        )

    # ------------------------------------------------------------------ workflow role

    def grant_runtime(self) -> None:
        role, stack, name = self.role, self.stack, self.name
        if self.runtime.existing_cluster is None:
            own = {"StringEquals": {f"aws:ResourceTag/{TAG_PIPELINE}": name}}
            created_with_tag = {"StringEquals": {f"aws:RequestTag/{TAG_PIPELINE}": name}}
            # RunJobFlow has no resource type (Service Authorization Reference): only "*" can allow it; the
            # request-tag condition still limits the role to clusters tagged with this pipeline.
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="CreateTaggedCluster",
                    actions=["elasticmapreduce:RunJobFlow"],
                    resources=["*"],
                    conditions=created_with_tag,
                )
            )
            # An account's first cluster makes EMR create its service-linked role AWSServiceRoleForEMRCleanup,
            # which the caller must be allowed to (EMR management guide, "service-linked roles for cleanup").
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="CreateEmrServiceLinkedRole",
                    actions=["iam:CreateServiceLinkedRole"],
                    resources=[
                        format_arn(
                            stack,
                            service="iam",
                            region="",
                            resource="role",
                            resource_name="aws-service-role/elasticmapreduce.amazonaws.com*/AWSServiceRoleForEMRCleanup*",
                        )
                    ],
                    conditions={"StringLike": {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com*"}},
                )
            )
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="TagOwnClusters",
                    actions=["elasticmapreduce:AddTags"],
                    resources=[cluster_arn(stack)],
                    conditions=created_with_tag,
                )
            )
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="ManageOwnClusters",
                    # terminateCluster(.sync): TerminateJobFlows, then DescribeCluster until it is gone (steps are
                    # added by the finalize function: RunStep).
                    actions=["elasticmapreduce:TerminateJobFlows", "elasticmapreduce:DescribeCluster"],
                    resources=[cluster_arn(stack)],
                    conditions=own,
                )
            )
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="PassClusterRoles",
                    actions=["iam:PassRole"],
                    resources=[self.service_role.role_arn, self.instance_role.role_arn],
                    conditions={
                        "StringEquals": {"iam:PassedToService": ["elasticmapreduce.amazonaws.com", "ec2.amazonaws.com"]}
                    },
                )
            )
        asl = json.dumps(self.definition)
        rules = sorted({rule for api, rule in EMR_SYNC_RULES.items() if f"states:::elasticmapreduce:{api}" in asl})
        if rules:
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="SyncRules",
                    actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                    resources=[format_arn(stack, service="events", resource="rule", resource_name=r) for r in rules],
                )
            )
        self._grant_functions(name)
        if self.runtime.existing_cluster is None:
            # Every transient workflow has the scaling-alarm states (CreateScalingAlarms maps over the planned alarms,
            # every teardown path looks for leftovers): without alarm scaling they find none, under this prefix.
            grant_alarm_lifecycle(role, stack, self.prefix, name)

    def _grant_functions(self, name: str) -> None:
        """Finalize reads (and on failure cancels steps of) this pipeline's clusters; prepare resolves a target."""
        platform = self.platform
        finalize, prepare = platform.finalize, platform.prepare
        assert finalize is not None
        if self.runtime.existing_cluster is None:
            # The deployment's tag (every transient cluster carries it): one statement for every transient pipeline,
            # so the shared finalize role does not grow per pipeline.
            resource = cluster_arn(self.stack)
            conditions: dict[str, Any] | None = {"StringEquals": {f"aws:ResourceTag/{TAG_DEPLOYMENT}": self.prefix}}
        else:
            resource, conditions = self.existing_cluster_scope()
            platform.grant_shared(prepare, Allow(["elasticmapreduce:ListClusters"], ["*"]))
            platform.grant_shared(prepare, Allow(["elasticmapreduce:DescribeCluster"], [resource], conditions))
            platform.suppress_shared(
                prepare,
                "AwsSolutions-IAM5",
                "ListClusters supports no resource-level permissions (it finds the long-running cluster by tag); "
                "DescribeCluster is limited to clusters carrying that tag.",
                ["Resource::*", ANY_CLUSTER_ARN],
            )
        platform.grant_shared(finalize, Allow(FINALIZE_ACTIONS + SUBMIT_STEP_ACTIONS, [resource], conditions))
        platform.suppress_shared(
            finalize,
            "AwsSolutions-IAM5",
            "Cluster ids are known only at run time: reads are limited to clusters tagged with the deployment "
            "(or the long-running target); X-Ray and ec2:DescribeSpotPriceHistory support no resource-level "
            "permissions.",
            ["Resource::*", ANY_CLUSTER_ARN],
        )

    def existing_cluster_scope(self, stack: Stack | None = None) -> tuple[str, dict[str, Any] | None]:
        """The long-running cluster's ARN, or every cluster carrying its tag (as an IAM condition); ARNs formatted
        by `stack` (default: this pipeline's), so another stack's policy does not refer to this one."""
        target = self.runtime.existing_cluster
        assert target is not None
        stack = stack or self.stack
        if target.cluster_id is not None:
            return cluster_arn(stack, target.cluster_id), None
        return cluster_arn(stack), {"StringEquals": {f"aws:ResourceTag/{target.tag_key}": target.tag_value}}
