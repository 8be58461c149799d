"""The `emr-eks` runtime: the pipeline's Spark job on an existing EKS cluster through an EMR virtual cluster.

Either an existing virtual cluster (by id), or an EKS cluster name + namespace for which the app
creates the virtual cluster. The EKS side the app cannot do itself (namespace RBAC for EMR, the
`aws-auth`/access-entry identity mapping, the cluster's IAM OIDC provider) is a documented
prerequisite (docs/runtimes/emr-on-eks.md, "Prerequisites").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from config.base import StrictModel
from config.job_retry import EKS_RETRY_RELEASE, JobRunRetry, RetriedJobRunTimeouts, retry_release_problem

EKS_RELEASE_LABEL_PATTERN = r"^emr-\d+\.\d+\.\d+-(latest|\d{8})$"
NAMESPACE_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class JobRole(StrictModel):
    """The job execution role: imported by ARN, or created with a trust policy for the namespace's service accounts."""

    existing_role_arn: Annotated[str, StringConstraints(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] | None = None
    oidc_issuer: (
        Annotated[str, StringConstraints(pattern=r"^oidc\.eks\.[a-z0-9-]+\.amazonaws\.com/id/[A-F0-9]+$")] | None
    ) = Field(
        default=None,
        description="The EKS cluster's OIDC issuer without `https://` (from `aws eks describe-cluster "
        "--query cluster.identity.oidc.issuer`); needed when the app creates the role (IRSA trust).",
    )

    @model_validator(mode="after")
    def _one_way(self) -> JobRole:
        if (self.existing_role_arn is None) == (self.oidc_issuer is None):
            raise ValueError("set either existing_role_arn, or oidc_issuer (the app then creates the role)")
        return self


class EksRuntime(RetriedJobRunTimeouts, StrictModel):
    """Run the pipeline's Spark job on EMR on EKS (an EMR virtual cluster on an existing EKS cluster)."""

    type: Literal["emr-eks"]
    virtual_cluster_id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{25}$")] | None = Field(
        default=None, description="An existing virtual cluster; else set eks_cluster_name and namespace."
    )
    eks_cluster_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")] | None = None
    namespace: Annotated[str, StringConstraints(pattern=NAMESPACE_PATTERN)] | None = Field(
        default=None, description="Kubernetes namespace the virtual cluster runs jobs in."
    )
    release_label: Annotated[str, StringConstraints(pattern=EKS_RELEASE_LABEL_PATTERN)] = Field(
        default="emr-7.5.0-latest", description="EMR on EKS release, e.g. `emr-7.5.0-latest`."
    )
    job_role: JobRole
    entry_point: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.(py|jar)$")] = Field(
        description="Job file relative to `jobs/`."
    )
    arguments: list[str] = Field(default_factory=list, description="After `--manifest`, `--output`, `--run-id`.")
    spark_submit_parameters: str = Field(default="", max_length=10240)
    driver_pod_template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.ya?ml$")] | None = Field(
        default=None, description="Pod template under `jobs/` for the driver."
    )
    executor_pod_template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.ya?ml$")] | None = None
    execution_timeout_minutes: int = Field(
        default=60, ge=1, le=10080, description="The workflow cancels the job after this."
    )
    retry: JobRunRetry = Field(
        default_factory=JobRunRetry,
        description="EMR on EKS restarts a failed job driver (`retryPolicyConfiguration`); "
        "`execution_timeout_minutes` applies per attempt.",
    )

    @model_validator(mode="after")
    def _virtual_cluster(self) -> EksRuntime:
        create = self.eks_cluster_name is not None or self.namespace is not None
        if (self.virtual_cluster_id is not None) == create:
            raise ValueError("set either virtual_cluster_id, or eks_cluster_name with namespace (not both)")
        if create and (self.eks_cluster_name is None or self.namespace is None):
            raise ValueError("eks_cluster_name and namespace go together")
        return self

    @model_validator(mode="after")
    def _retry_release(self) -> EksRuntime:
        problem = retry_release_problem(self.retry, self.release_label, EKS_RETRY_RELEASE, "EMR on EKS")
        if problem:
            raise ValueError(problem)
        return self

    @property
    def spark_parameters(self) -> str:
        """spark-submit parameters including the pod templates' locations (filled with the artifacts bucket)."""
        extra = []
        for role, template in (("driver", self.driver_pod_template), ("executor", self.executor_pod_template)):
            if template is not None:
                extra.append(f"--conf spark.kubernetes.{role}.podTemplateFile=s3://{{artifacts}}/jobs/{template}")
        return " ".join([self.spark_submit_parameters, *extra]).strip()
