"""The EMR-on-EC2 workflows as synthesized from config/dev.yaml: cluster shape, teardown paths, roles."""

from __future__ import annotations

import json
from typing import Any

from tests.infra.conftest import Synthesized
from tests.infra.test_workflow import _graph, _role_statements, _tasks, state_machine

TRANSIENT = "sales-cluster"
EXISTING = "sales-adhoc"


def _definition(synth: Synthesized, name: str) -> dict[str, Any]:
    definition: dict[str, Any] = synth.stack.pipelines[name].definition  # type: ignore[attr-defined]
    return definition


def _create_cluster(synth: Synthesized) -> dict[str, Any]:
    params: dict[str, Any] = _definition(synth, TRANSIENT)["States"]["CreateCluster"]["Parameters"]
    return params


def test_create_cluster_fleets_put_spot_only_on_task_nodes(synth: Synthesized) -> None:
    fleets = {f["InstanceFleetType"]: f for f in _create_cluster(synth)["Instances"]["InstanceFleets"]}
    assert set(fleets) == {"MASTER", "CORE", "TASK"}
    primary, core, task = fleets["MASTER"], fleets["CORE"], fleets["TASK"]
    # Seed guidance: a large primary below 50 nodes, on-demand primary and core.
    assert (primary["TargetOnDemandCapacity"], primary["TargetSpotCapacity"]) == (1, 0)
    assert [c["InstanceType"] for c in primary["InstanceTypeConfigs"]] == ["m5.large"]
    assert (core["TargetOnDemandCapacity"], core["TargetSpotCapacity"]) == (2, 0)
    assert "SpotSpecification" not in core["LaunchSpecifications"]
    assert (task["TargetOnDemandCapacity"], task["TargetSpotCapacity"]) == (0, 4)
    assert len(task["InstanceTypeConfigs"]) == 3
    assert task["LaunchSpecifications"]["SpotSpecification"] == {
        "TimeoutDurationMinutes": 10,
        "TimeoutAction": "SWITCH_TO_ON_DEMAND",
        "AllocationStrategy": "price-capacity-optimized",
    }
    assert all(c["EbsConfiguration"]["EbsBlockDeviceConfigs"] for c in task["InstanceTypeConfigs"])
    # Names let the scaler use modifyInstanceFleetByName.
    assert [f["Name"] for f in fleets.values()] == ["primary", "core", "task"]


def test_create_cluster_safety_net_security_and_metastore(synth: Synthesized) -> None:
    params = _create_cluster(synth)
    assert params["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert params["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True  # required by the integration
    assert params["Instances"]["TerminationProtected"] is False
    assert params["SecurityConfiguration"] == "${SecurityConfiguration}"
    assert params["Tags.$"] == "$.run.cluster.tags" and params["LogUri.$"] == "$.run.cluster.log_uri"
    classifications = {c["Classification"]: c["Properties"] for c in params["Configurations"]}
    glue = "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
    assert classifications["hive-site"]["hive.metastore.client.factory.class"] == glue
    assert classifications["spark-hive-site"]["hive.metastore.client.factory.class"] == glue
    assert classifications["spark-defaults"] == {"spark.sql.adaptive.enabled": "true"}
    (bootstrap,) = params["BootstrapActions"]
    assert bootstrap["ScriptBootstrapAction"]["Path"] == "s3://${ArtifactsBucket}/bootstrap/install-python-packages.sh"
    assert "Steps" not in params  # steps are added one by one with addStep.sync


def test_cluster_tags_carry_deployment_pipeline_and_managed_policy_tag(synth: Synthesized) -> None:
    subs = state_machine(synth, "autopilot-dev-sales-cluster")["DefinitionSubstitutions"]
    tags = json.loads(_text(subs["ClusterTagsJson"]))
    assert tags["autopilot:pipeline"] == "sales-cluster"
    assert tags["autopilot:deployment"] == "autopilot-dev"
    assert tags["for-use-with-amazon-emr-managed-policies"] == "true"
    assert tags["owner"] == "data-platform"
    steps = json.loads(_text(subs["StepsJson"]))
    (step,) = steps
    args = step["hadoop_jar_step"]["Args"]
    assert step["hadoop_jar_step"]["Jar"] == "command-runner.jar"
    assert args[:3] == ["spark-submit", "--deploy-mode", "cluster"]
    assert {"{{manifest}}", "{{output}}", "{{run_id}}"} <= set(args)
    assert step["timeout_seconds"] == 60 * 60  # its own; RunSteps adds the launch's start-up to a cluster's first step
    launch = json.loads(_text(subs["LaunchJson"]))
    assert launch == {"attempt": 1, "max_attempts": 2, "resume_from": 0, "startup_seconds": 30 * 60,
                      "retry_when": ["bootstrap_failure"], "earlier": []}  # fmt: skip


def test_security_configuration_encrypts_at_rest_and_requires_imdsv2(synth: Synthesized) -> None:
    configs = synth.resources("AWS::EMR::SecurityConfiguration").values()
    assert len(configs) == 2  # one per transient pipeline (sales-cluster, sales-chain)
    (config,) = [c for c in configs if c["Properties"]["Name"].endswith(f"-{TRANSIENT}")]
    body = config["Properties"]["SecurityConfiguration"]
    encryption = body["EncryptionConfiguration"]
    assert encryption["EnableAtRestEncryption"] is True
    local = encryption["AtRestEncryptionConfiguration"]["LocalDiskEncryptionConfiguration"]
    assert local["EncryptionKeyProviderType"] == "AwsKms" and local["EnableEbsEncryption"] is True
    assert body["InstanceMetadataServiceConfiguration"]["MinimumInstanceMetadataServiceVersion"] == 2
    keys = synth.resources("AWS::KMS::Key").values()
    assert keys and all(key["Properties"]["EnableKeyRotation"] is True for key in keys)


def test_every_failure_in_the_transient_workflow_terminates_the_cluster_first(synth: Synthesized) -> None:
    definition = _definition(synth, TRANSIENT)
    for name, state in _tasks(definition).items():
        if name in {"Prepare", "ReadJobMetrics", "FinalizeSucceeded", "FinalizeFailed"}:
            continue
        if name in {"RunStep", "ClassifyStepFailure", "PutScalingAlarm"}:
            continue  # (Map iterations: their Map catches; a step's own failure path ends in its Fail state)
        if name in {"TerminateAfterFailure", "RecordFailed", "NotifyFailure", "ReleaseRunSlot", "ReleaseAfterFailure"}:
            continue
        if name in {"NotifySucceeded", "RecordSpend", "RecordSpendAfterFailure"}:  # after the ledger: never fails
            continue
        if name in {"PublishRunSucceeded", "PublishRunFailed"}:  # the run's event: never fails the run either
            continue
        if "ScalingAlarms" in name:  # after the cluster is gone: never fails the run (the sweeper deletes leftovers)
            catches = {c["Next"] for c in state["Catch"] if "States.ALL" in c["ErrorEquals"]}
            after = {"ScalingAlarms": "ReleaseRunSlot", "AfterFailure": "ReleaseAfterFailure"}
            after["BeforeRelaunch"] = "NextCluster"
            assert catches == {next(v for k, v in after.items() if name.endswith(k))}, name
            continue
        catches = {c["Next"] for c in state.get("Catch", []) if "States.ALL" in c["ErrorEquals"]}
        assert catches == {"TerminateIfCreated"}, name
    run_steps = definition["States"]["RunSteps"]
    assert run_steps["MaxConcurrency"] == 1
    assert run_steps["Catch"][0]["Next"] == "ClusterAttemptsLeft"  # then TerminateIfCreated, or a new cluster
    step = run_steps["ItemProcessor"]["States"]["RunStep"]
    classify = run_steps["ItemProcessor"]["States"]["ClassifyStepFailure"]
    assert {c["Next"] for c in classify["Catch"]} == {"StepFailed"}  # cannot classify: the step fails as before
    assert run_steps["ItemProcessor"]["States"]["StepFailed"]["Type"] == "Fail"
    assert step["Resource"].endswith(":::lambda:invoke.waitForTaskToken")  # its EMR event answers it
    assert step["Parameters"]["Payload"]["action"] == "submit_step"
    assert step["Parameters"]["Payload"]["step"]["ActionOnFailure"] == "CONTINUE"
    assert step["TimeoutSecondsPath"] == "$.timeout_seconds"
    # The success path also ends with the cluster gone before the ledger says SUCCEEDED, terminated as soon as the
    # last step's end is noticed (nothing in between: an idle cluster is billed).
    edges = _graph(definition)
    assert edges["RunSteps"] >= {"TerminateCluster"} and edges["TerminateCluster"] >= {"HasScalingAlarms"}
    assert "ReleaseRunSlot" in edges["HasScalingAlarms"]
    assert edges["ReleaseRunSlot"] == {"ReadJobMetrics"}  # the run slot goes back once the cluster is gone
    assert definition["States"]["TerminateCluster"]["Resource"].endswith("elasticmapreduce:terminateCluster.sync")


def test_a_failed_step_is_resubmitted_only_with_attempts_left_and_never_after_a_timeout(synth: Synthesized) -> None:
    for name in (TRANSIENT, EXISTING):
        run_steps = _definition(synth, name)["States"]["RunSteps"]
        states = run_steps["ItemProcessor"]["States"]
        assert run_steps["ItemSelector"]["attempt"] == 1
        timeout, other = states["RunStep"]["Catch"]
        assert (timeout["ErrorEquals"], timeout["Next"]) == (["States.Timeout"], "StepFailed")
        assert (other["ErrorEquals"], other["Next"]) == (["States.ALL"], "AttemptsLeft")
        (left,) = states["AttemptsLeft"]["Choices"]
        assert left == {"Variable": "$.attempt", "NumericLessThanPath": "$.step.max_attempts",
                        "Next": "ClassifyStepFailure"}  # fmt: skip
        assert states["AttemptsLeft"]["Default"] == "StepFailed"
        assert states["ClassifyStepFailure"]["Parameters"]["Payload"]["action"] == "classify_step_failure"
        assert (
            states["RetryStep"]["Choices"][0]["Next"] == "NextAttempt"
            and states["RetryStep"]["Default"] == "StepFailed"
        )
        assert states["NextAttempt"]["Parameters"]["attempt.$"] == "States.MathAdd($.attempt, 1)"
        # The only way back to RunStep is one attempt later: the loop is bounded by max_attempts.
        back = {n for n, st in states.items() if st.get("Next") == "RunStep"}
        assert back == {"NextAttempt", "AllowStartup"}  # AllowStartup: only from StepPlan, before the first attempt
        assert {n for n, st in states.items() if st.get("Next") == "AllowStartup"} == set()
        assert (states["StepFailed"]["ErrorPath"], states["StepFailed"]["CausePath"]) == (
            "$.error.Error",
            "$.error.Cause",
        )


def test_a_failed_cluster_is_replaced_only_with_launches_left_and_resumes_where_it_stopped(synth: Synthesized) -> None:
    states = _definition(synth, TRANSIENT)["States"]
    (left,) = states["ClusterAttemptsLeft"]["Choices"]
    assert left == {"Variable": "$.run.launch.attempt", "NumericLessThanPath": "$.run.launch.max_attempts",
                    "Next": "ClassifyClusterFailure"}  # fmt: skip
    assert states["ClusterAttemptsLeft"]["Default"] == "TerminateIfCreated"
    assert states["ClassifyClusterFailure"]["Parameters"]["Payload"]["action"] == "classify_cluster_failure"
    assert states["RelaunchCluster"]["Default"] == "TerminateIfCreated"
    # the failed cluster is gone (terminateCluster.sync) before the next is created: a run never holds two
    assert states["TerminateBeforeRelaunch"]["Resource"].endswith("elasticmapreduce:terminateCluster.sync")
    next_cluster = states["NextCluster"]
    assert (next_cluster["InputPath"], next_cluster["ResultPath"], next_cluster["Next"]) == (
        "$.relaunch.launch", "$.run.launch", "CreateCluster")  # fmt: skip
    # The only way back to CreateCluster is one launch later: bounded by launch.max_attempts.
    assert {n for n, st in states.items() if st.get("Next") == "CreateCluster"} == {"RecordStarted", "NextCluster"}
    run_steps = states["RunSteps"]
    assert run_steps["ItemSelector"]["launch.$"] == "$.run.launch"
    plan = run_steps["ItemProcessor"]["States"]["StepPlan"]
    assert [(c["NumericLessThanPath" if "NumericLessThanPath" in c else "NumericEqualsPath"], c["Next"])
            for c in plan["Choices"]] == [("$.launch.resume_from", "CompletedEarlier"),
                                          ("$.launch.resume_from", "AllowStartup")]  # fmt: skip


def test_existing_cluster_workflow_never_creates_or_terminates_clusters(synth: Synthesized) -> None:
    definition = _definition(synth, EXISTING)
    resources = {s["Resource"].rsplit(":::", 1)[-1] for s in _tasks(definition).values()}
    assert not {r for r in resources if "createCluster" in r or "terminateCluster" in r}
    statements = _role_statements(synth, "PipelinesalesadhocWorkflowRole")
    text = json.dumps(statements)
    assert "RunJobFlow" not in text and "TerminateJobFlows" not in text and "iam:PassRole" not in text
    # The workflow never touches the shared cluster: the finalize function adds the run's steps there, and only there.
    assert "elasticmapreduce:" not in text
    finalize = _role_statements(synth, "FinalizeFunctionRole")
    (steps,) = [s for s in finalize if "elasticmapreduce:AddJobFlowSteps" in s["Action"] and "Condition" in s
                and "team-cluster" in json.dumps(s["Condition"])]  # fmt: skip
    assert steps["Condition"] == {"StringEquals": {"aws:ResourceTag/team-cluster": "analytics"}}


def test_transient_workflow_may_only_touch_clusters_of_its_pipeline(synth: Synthesized) -> None:
    statements = _role_statements(synth, "PipelinesalesclusterWorkflowRole")
    by_sid = {s.get("Sid"): s for s in statements}
    assert by_sid["CreateTaggedCluster"]["Condition"] == {
        "StringEquals": {"aws:RequestTag/autopilot:pipeline": "sales-cluster"}
    }
    assert by_sid["ManageOwnClusters"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/autopilot:pipeline": "sales-cluster"}
    }
    pass_role = by_sid["PassClusterRoles"]
    assert len(pass_role["Resource"]) == 2
    rules = json.dumps(by_sid["SyncRules"]["Resource"])
    assert "StepFunctionsGetEventForEMRAddJobFlowStepsRule" not in rules  # steps are noticed from their own events
    assert "StepFunctionsGetEventForEMRTerminateJobFlowsRule" in rules
    assert "RunJobFlowRule" not in rules  # createCluster is request-response


def test_instance_role_reads_its_prefixes_and_writes_only_its_outputs_and_logs(synth: Synthesized) -> None:
    statements = _role_statements(synth, "PipelinesalesclusterInstanceRole")
    writes = [s for s in statements if {"s3:PutObject", "s3:DeleteObject"} & set(_flat(s["Action"]))]
    targets = json.dumps([s["Resource"] for s in writes])
    assert "/sales-cluster/*" in targets and "/emr-ec2/sales-cluster/*" in targets
    reads = json.dumps(statements)
    assert "/sales-cluster/*" in reads and "/bootstrap/*" in reads and "/manifests/sales-cluster/*" in reads
    assert '"s3:*"' not in reads and "glue:GetTable" in reads
    service = [
        r
        for r in synth.resources("AWS::IAM::Role").values()
        if "elasticmapreduce.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])
    ]
    assert len(service) == 2  # one per transient pipeline
    (service_role,) = [r for r in service if TRANSIENT in r["Properties"].get("Description", "")]
    assert "AmazonEMRServicePolicy_v2" in json.dumps(service_role["Properties"]["ManagedPolicyArns"])


def _text(value: Any) -> str:
    """A substitution value as text (CloudFormation references become `BUCKET`), unescaped from ASL."""
    if isinstance(value, dict):
        value = "".join(p if isinstance(p, str) else "BUCKET" for p in value["Fn::Join"][1])
    return str(value).replace('\\"', '"')


def _flat(action: Any) -> list[str]:
    return action if isinstance(action, list) else [action]
