"""Console pages of a run: its Step Functions execution, its EMR cluster or job run, its logs in S3.

One home for the console URL formats, used by the CLI (`show`), and by the workflow's functions for the links a
ledger entry and a notification carry. The URLs hold only ids (no credentials), so they stay valid as long as the
resources exist; the Spark UI, whose links expire, is produced on demand (`emr-autopilot ui`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

CONSOLE_DOMAINS = {
    "aws": "console.aws.amazon.com",
    "aws-us-gov": "console.amazonaws-us-gov.com",
    "aws-cn": "console.amazonaws.cn",
}


def console_base(region: str, partition: str = "aws") -> str:
    return f"https://{region}.{CONSOLE_DOMAINS.get(partition, CONSOLE_DOMAINS['aws'])}"


def partition_of(arn: str | None, default: str = "aws") -> str:
    """`aws`, `aws-cn`, `aws-us-gov`: the second field of an ARN."""
    parts = (arn or "").split(":")
    return parts[1] if len(parts) > 2 and parts[0] == "arn" and parts[1] else default


def run_links(entry: Mapping[str, Any], region: str, partition: str = "aws") -> dict[str, str]:
    """The run's console pages, from its ledger entry's ids: `execution`, `cluster` or `job run`, `logs`."""
    base = console_base(region, partition)
    links: dict[str, str] = {}
    if arn := entry.get("execution_arn"):
        links["execution"] = f"{base}/states/home?region={region}#/v2/executions/details/{arn}"
    if cluster_id := entry.get("cluster_id"):
        links["cluster"] = f"{base}/emr/home?region={region}#/clusterDetails/{cluster_id}"
    elif (app := entry.get("application_id")) and (job := entry.get("job_run_id")):
        links["job run"] = f"{base}/emr/home?region={region}#/serverless-applications/{app}/job-runs/{job}"
    elif (virtual := entry.get("virtual_cluster_id")) and (job := entry.get("job_run_id")):
        links["job run"] = f"{base}/emr/home?region={region}#/virtual-clusters/{virtual}/job-runs/{job}"
    if (log_uri := entry.get("log_uri")) and str(log_uri).startswith("s3://"):
        bucket, _, prefix = str(log_uri)[5:].partition("/")
        s3_base = base.replace(f"{region}.", "s3.", 1) if partition == "aws" else base
        links["logs"] = f"{s3_base}/s3/buckets/{bucket}?region={region}&prefix={quote(prefix.rstrip('/') + '/')}"
    return links
