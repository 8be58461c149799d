"""The EMR-on-EKS workflow as synthesized from config/dev.yaml: virtual cluster, IRSA job role, workflow IAM."""

from __future__ import annotations

import json

from stacks.eks_pipeline import base36
from tests.infra.conftest import Synthesized
from tests.infra.test_workflow import _role_statements, state_machine

ISSUER = "oidc.eks.us-east-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"


def test_virtual_cluster_is_on_the_configured_eks_cluster_and_namespace(synth: Synthesized) -> None:
    (cluster,) = synth.resources("AWS::EMRContainers::VirtualCluster").values()
    props = cluster["Properties"]
    assert props["Name"] == "autopilot-dev-sales-eks"
    assert props["ContainerProvider"] == {
        "Id": "data-platform",
        "Type": "EKS",
        "Info": {"EksInfo": {"Namespace": "emr-jobs"}},
    }


def test_job_role_trusts_only_emr_service_accounts_for_this_role_in_the_namespace(synth: Synthesized) -> None:
    (role,) = [
        r["Properties"]
        for r in synth.resources("AWS::IAM::Role").values()
        if r["Properties"].get("RoleName") == "autopilot-dev-sales-eks-eks-job"
    ]
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    text = json.dumps(statement)
    assert f"oidc-provider/{ISSUER}" in text
    assert "system:serviceaccount:emr-jobs:emr-containers-sa-*-*-" in text
    assert base36("autopilot-dev-sales-eks-eks-job") in text
    # The role name's UTF-8 bytes as one big-endian integer, in base 36 (as `update-role-trust-policy` does):
    # "a" = 97 = 2*36 + 25, "ab" = 0x6162 = 24930 = (19*36 + 8)*36 + 18.
    assert base36("a") == "2p" and base36("ab") == "j8i"


def test_workflow_starts_jobs_only_with_its_job_role_on_its_virtual_cluster(synth: Synthesized) -> None:
    statements = {s.get("Sid"): s for s in _role_statements(synth, "PipelinesaleseksWorkflowRole")}
    start = statements["StartJobRun"]
    assert "emr-containers:ExecutionRoleArn" in json.dumps(start["Condition"])
    assert "/virtualclusters/" in json.dumps(start["Resource"])
    assert "/jobruns/*" in json.dumps(statements["ManageJobRuns"]["Resource"])
    subs = state_machine(synth, "autopilot-dev-sales-eks")["DefinitionSubstitutions"]
    assert subs["ReleaseLabel"] == "emr-7.5.0-latest"
