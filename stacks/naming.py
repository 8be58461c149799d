"""Names, tag keys and constants shared by the constructs (one place, so the handlers and the
twin agree with the infrastructure)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LAMBDAS_DIR = REPO_ROOT / "lambdas"
STATEMACHINES_DIR = REPO_ROOT / "statemachines"
JOBS_DIR = REPO_ROOT / "jobs"
BOOTSTRAP_DIR = REPO_ROOT / "bootstrap"

TAG_PIPELINE = "autopilot:pipeline"
TAG_RUN_ID = "autopilot:run-id"
TAG_EXECUTION = "autopilot:execution"
TAG_DEPLOYMENT = "autopilot:deployment"

JOBS_PREFIX = "jobs/"
BOOTSTRAP_PREFIX = "bootstrap/"
MANIFESTS_PREFIX = "manifests/"
LEDGER_PREFIX = "_runs/"
METRICS_NAMESPACE = "EmrAutopilot"

POWERTOOLS_LAYER_ACCOUNT = "017000801446"
POWERTOOLS_LAYER_NAME = "AWSLambdaPowertoolsPythonV3-python314-x86_64"


def deployment_name(project: str, env: str) -> str:
    """`autopilot-dev`: prefix of every physical name and the stack name."""
    return f"{project}-{env}"


def input_prefix(pipeline_name: str, trigger_prefix: str | None) -> str:
    """What a pipeline's job may read in the landing bucket: its trigger prefix, else `<pipeline>/`."""
    return trigger_prefix if trigger_prefix is not None else f"{pipeline_name}/"
