"""The Step Functions `elasticmapreduce:*` integrations on the twin's EMR-on-EC2 model
(docs/twin/step-functions-integrations.md)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from moto.stepfunctions.parser.asl.eval.environment import Environment

from local.cloudtrail import STATES_SERVICE
from local.emr_ec2.api import EmrEc2Twin
from local.emr_ec2.model import ENDED_CLUSTER_STATES, ENDED_STEP_STATES
from local.faults import TwinClientError
from local.sfn_integrations import Params, _TwinService


class TwinEmrService(_TwinService):
    """The optimized EMR (on EC2) integration (`elasticmapreduce:*`), backed by the twin's cluster model.

    Each action calls the EMR API operation it stands for (faults under service "emr" and that operation);
    `.sync` waits for the cluster to be ready (createCluster), the step to end (addStep) or the cluster to
    be gone (terminateCluster).
    """

    model: EmrEc2Twin  # set by install()
    time_scale = 1.0  # the twin's clock: AWS's poll intervals are multiplied by this (set by install())
    ERROR_PREFIX = "EMR"
    SERVICE = "emr"
    SYNC_RULES = {
        "createCluster": "StepFunctionsGetEventForEMRRunJobFlowRule",
        "addStep": "StepFunctionsGetEventForEMRAddJobFlowStepsRule",
        "terminateCluster": "StepFunctionsGetEventForEMRTerminateJobFlowsRule",
    }
    OPERATIONS = {
        "createCluster": "RunJobFlow",
        "addStep": "AddJobFlowSteps",
        "terminateCluster": "TerminateJobFlows",
        "cancelStep": "CancelSteps",
        "setClusterTerminationProtection": "SetTerminationProtection",
        "modifyInstanceFleetByName": "ModifyInstanceFleet",
        "modifyInstanceGroupByName": "ModifyInstanceGroups",
    }
    ACTIONS = frozenset(OPERATIONS)
    SYNC_ACTIONS = frozenset({"createCluster", "addStep", "terminateCluster"})

    def _eval_service_task(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> None:
        action, params = self.resource.api_action, normalised_parameters
        if action == "createCluster":
            _check_create_cluster(params)
        operation = self.OPERATIONS[action]
        try:
            request = self._request(action, params)
        except KeyError as missing:
            raise TwinClientError("ValidationException", f"The field {missing.args[0]} is required") from None
        try:
            self._authorize(env, operation, request)
            self.model.faults.check("emr", operation)
            response = self._call(operation, request)
        except TwinClientError as error:
            self._record(env, operation, request, None, error)
            raise
        except KeyError as missing:
            raise TwinClientError("ValidationException", f"The field {missing.args[0]} is required") from None
        self._record(env, operation, request, response, None)
        if action == "createCluster":
            env.stack.append({"ClusterId": response["JobFlowId"], "ClusterArn": response["ClusterArn"]})
        elif action == "addStep":
            env.stack.append({"StepId": response["StepIds"][0]})
        else:
            env.stack.append(response)

    def _record(self, env: Environment, operation: str, request: dict[str, Any], response: Any, error: Any) -> None:
        """The EMR call in CloudTrail, made by the state machine's role."""
        if self.trail is None:
            return
        execution_arn = env.states.context_object.context_object_data["Execution"]["Id"]
        identity = self.trail.state_machine_identity(env.aws_execution_details.role_arn, execution_arn)
        caller = (identity, STATES_SERVICE, STATES_SERVICE)
        self.trail.emr_call(operation, request, response, caller=caller, error=error)

    def _request(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """The EMR API request the integration `action` makes (KeyError for a missing field)."""
        model, cluster_id = self.model, params["ClusterId"] if action != "createCluster" else ""
        if action == "createCluster":
            return params
        if action == "addStep":
            request = {"JobFlowId": cluster_id, "Steps": [params["Step"]]}
            role = params.get("ExecutionRoleArn")
            return request | ({"ExecutionRoleArn": role} if role else {})
        if action == "terminateCluster":
            return {"JobFlowIds": [cluster_id]}
        if action == "cancelStep":
            return {"ClusterId": cluster_id, "StepIds": [params["StepId"]]} | _only(params, "StepCancellationOption")
        if action == "setClusterTerminationProtection":
            return {"JobFlowIds": [cluster_id], "TerminationProtected": params["TerminationProtected"]}
        if action == "modifyInstanceFleetByName":
            fleet_id = model.fleet_id_by_name(cluster_id, params["InstanceFleetName"])
            fleet = {**params.get("InstanceFleet", {}), "InstanceFleetId": fleet_id}
            return {"ClusterId": cluster_id, "InstanceFleet": fleet}
        group_id = model.group_id_by_name(cluster_id, params["InstanceGroupName"])
        group = {**params.get("InstanceGroup", {}), "InstanceGroupId": group_id}
        return {"ClusterId": cluster_id, "InstanceGroups": [group]}

    def _call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        """The EMR API operation on the twin's model."""
        model = self.model
        calls: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "RunJobFlow": model.run_job_flow,
            "AddJobFlowSteps": model.add_job_flow_steps,
            "TerminateJobFlows": model.terminate_job_flows,
            "CancelSteps": model.cancel_steps,
            "SetTerminationProtection": model.set_termination_protection,
            "ModifyInstanceFleet": model.modify_instance_fleet,
            "ModifyInstanceGroups": model.modify_instance_groups,
        }
        return calls[operation](request)

    def _wait_sync(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> bool:
        """Step Functions learns that an EMR step or cluster changed only when it polls: at `emr_poll_offsets`
        after the task started, on the twin's clock (`time_scale`), each poll a DescribeStep/DescribeCluster
        as the state machine's role. The step may have ended long before: the cluster idles until then."""
        self._authorize_sync_rule(env)
        poll = self._build_sync_resolver(env, resource_runtime_part, normalised_parameters, state_credentials)
        started = time.monotonic()
        for offset in emr_poll_offsets():
            if not _sleep_while_running(env, started + offset * self.time_scale):
                return False  # aborted, timed out, or the task's own timeout ended the wait
            result = poll()
            if result is not None:
                env.stack.append(result)
                return True
        return False  # pragma: no cover - emr_poll_offsets never ends

    def _build_sync_resolver(
        self, env: Environment, resource_runtime_part: Any, normalised_parameters: Params, state_credentials: Any
    ) -> Callable[[], Any]:
        """One poll of the `.sync` task: its result once the awaited state is reached, None before."""
        started = env.stack.pop()
        action = self.resource.api_action
        if action == "addStep":
            return functools.partial(self._step_ended, env, normalised_parameters["ClusterId"], started["StepId"])
        if action == "createCluster":
            return functools.partial(self._cluster_ready, env, started)
        return functools.partial(self._cluster_gone, env, normalised_parameters["ClusterId"])

    def _describe_cluster(self, env: Environment, cluster_id: str) -> dict[str, Any]:
        self._authorize(env, "DescribeCluster", {"ClusterId": cluster_id})
        return self.model.describe_cluster(cluster_id)

    def _cluster_ready(self, env: Environment, started: dict[str, Any]) -> Any:
        cluster = self._describe_cluster(env, started["ClusterId"])
        state = cluster["Status"]["State"]
        if state in ENDED_CLUSTER_STATES:
            raise self._states_task_failed(env, cluster)
        return started if state in ("RUNNING", "WAITING") else None

    def _cluster_gone(self, env: Environment, cluster_id: str) -> Any:
        return {} if self._describe_cluster(env, cluster_id)["Status"]["State"] in ENDED_CLUSTER_STATES else None

    def _step_ended(self, env: Environment, cluster_id: str, step_id: str) -> Any:
        self._authorize(env, "DescribeStep", {"ClusterId": cluster_id, "StepId": step_id})
        step = self.model.describe_step(cluster_id, step_id)
        if str(step["Status"]["State"]) not in ENDED_STEP_STATES:
            return None
        if step["Status"]["State"] != "COMPLETED":
            raise self._states_task_failed(env, {"Step": step})
        return {"Step": step}


class ScaledSleep:
    """`time` as moto's Retry evaluation sees it: sleeps last `TwinEmrService.time_scale` times as long."""

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds * TwinEmrService.time_scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def emr_poll_offsets() -> Iterator[float]:
    """Seconds after an EMR `.sync` task starts at which Step Functions polls EMR: every 60 s during the task's
    first 10 minutes, every 300 s after that ("Step Functions has hard-coded a 60 seconds job poll frequency for the
    first 10 minutes and 300 seconds after that", Step Functions developer guide, connect-emr.html)."""
    yield from range(60, 601, 60)
    offset = 600
    while True:
        offset += 300
        yield offset


def _sleep_while_running(env: Environment, until: float) -> bool:
    """Wait until the monotonic instant `until`; False as soon as the execution (or the task's wait) ends."""
    while env.is_running():
        remaining = until - time.monotonic()
        if remaining <= 0:
            return True
        time.sleep(min(remaining, 0.05))
    return False


def _check_create_cluster(params: dict[str, Any]) -> None:
    """What the Step Functions createCluster integration requires beyond RunJobFlow."""
    if params.get("Steps"):
        raise TwinClientError(
            "ValidationException",
            "The createCluster integration does not accept Steps: add steps with elasticmapreduce:addStep",
        )
    if (params.get("Instances") or {}).get("KeepJobFlowAliveWhenNoSteps") is not True:
        raise TwinClientError(
            "ValidationException",
            "The createCluster integration requires Instances.KeepJobFlowAliveWhenNoSteps to be true",
        )


def _only(params: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: params[k] for k in keys if k in params}
