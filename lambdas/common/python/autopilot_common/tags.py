"""The tags the app puts on what it launches (EMR clusters, EMR Serverless and EMR on EKS job runs, alarms).

The one home of the tag keys: the stacks (`stacks.naming` re-exports them), prepare (a run's cluster tags),
the guardrails (orphans, CloudTrail reactions) and the scaler (whose cluster is it) all read them from here.
"""

from __future__ import annotations

from collections.abc import Mapping

TAG_PIPELINE = "autopilot:pipeline"
TAG_RUN_ID = "autopilot:run-id"
TAG_EXECUTION = "autopilot:execution"
TAG_DEPLOYMENT = "autopilot:deployment"
TAG_LONG_RUNNING = "autopilot:long-running"  # a cluster exempt from the unmanaged-cluster auto-termination


def run_tags(base: Mapping[str, str], *, run_id: str, execution: str) -> dict[str, str]:
    """A run's tags: the pipeline's (`base`: deployment, pipeline, the user's tags) plus run id and execution."""
    return {**base, TAG_RUN_ID: run_id, TAG_EXECUTION: execution}


def belongs_to(tags: Mapping[str, str], deployment: str) -> bool:
    """True when `tags` mark a resource one of this deployment's runs launched."""
    return tags.get(TAG_DEPLOYMENT) == deployment and TAG_EXECUTION in tags
