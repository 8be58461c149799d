"""A burst through the app deployed on the twin (IAM on, instant job runs), in this process: one scenario per run.

    python bench/twin_burst.py window 2500      # sales-daily (window batches): seconds from the last put until
                                                # every object is routed, and until every run finished
    python bench/twin_burst.py capped 1000      # sales-burst (one run per object) under max_concurrent_runs: 5:
                                                # wall time, DynamoDB items read from the admission table per
                                                # admitted run (by calling function), the process's peak memory
                                                # and threads (the twin runs in this process)

Prints one line. The config is config/dev.yaml with sales-burst's cap set to 5.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

CAP = 5
CSV = b"order_id,order_date,customer_id,amount\n1,2024-06-01,c1,9.5\n"
ADMISSION_TABLE = "autopilot-dev-admission"


class ItemsRead:
    """Counts the items the admission table's reads return to their callers, as DynamoDB charges them: a Query's
    ScannedCount (items examined, before any filter), a GetItem's item, a BatchGetItem's items, per calling function
    (`admission`, `guardrail`: the twin runs functions in this process). Counted at the client, after the call:
    moto's backend looks items up for transactional writes too, which are writes, not reads."""

    def __init__(self, table: str) -> None:
        from botocore.client import BaseClient

        from local import lambda_runtime

        self.by_function: dict[str, int] = {}
        original = BaseClient._make_api_call
        counter = self

        def counted(client: Any, operation: str, params: Any) -> Any:
            result = original(client, operation, params)
            if operation in ("Query", "Scan", "GetItem") and params.get("TableName") == table:
                items = int(result.get("ScannedCount", 0)) if operation != "GetItem" else int("Item" in result)
            elif operation == "BatchGetItem":
                items = len(result.get("Responses", {}).get(table, []))
            else:
                return result
            function = str(getattr(lambda_runtime._INVOKING, "function", None) or "twin")
            role = function.rsplit("-", 1)[-1]
            counter.by_function[role] = counter.by_function.get(role, 0) + items
            return result

        BaseClient._make_api_call = counted  # type: ignore[method-assign]

    @property
    def items(self) -> int:
        return sum(self.by_function.values())

    def reset(self) -> None:
        self.by_function.clear()


def synthesized(out: Path) -> Path:
    import aws_cdk as cdk

    from app import build_app, cli_context

    config: dict[str, Any] = yaml.safe_load((REPO / "config" / "dev.yaml").read_text())
    config["pipelines"]["sales-burst"]["limits"] = {"max_concurrent_runs": CAP}
    path = out / "dev.yaml"
    path.write_text(yaml.safe_dump(config))
    build_app("dev", cdk.App(outdir=str(out / "cdk.out"), context={**cli_context(), "config_path": str(path)}),
              nag=False).synth()  # fmt: skip
    return out / "cdk.out"


def succeeded(twin: Any, machine: str) -> int:
    """The machine's SUCCEEDED executions, counted in the twin's Step Functions backend (in this process): listing them
    through the API every half second cost the bench itself CPU that grew with the burst (7 % at 1,000 objects)."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    backend = stepfunctions_parser_backends[twin.account][twin.region]
    found = next(m for m in backend.state_machines if m.arn == machine)
    return sum(1 for execution in list(found.executions) if execution.status == "SUCCEEDED")


def router_queues_empty(twin: Any, sqs: Any) -> bool:
    """No message waits for or is being handled by the router (its queues' visible and in-flight counts are 0)."""
    for mapping in twin.mappings:
        if "router" not in mapping.function_name:
            continue
        attributes = sqs.get_queue_attributes(QueueUrl=mapping.queue_url, AttributeNames=["All"])["Attributes"]
        if int(attributes["ApproximateNumberOfMessages"]) or int(attributes["ApproximateNumberOfMessagesNotVisible"]):
            return False
    return True


def admission_seconds(twin: Any) -> float:
    """The admission function's invocations' total duration (the twin runs one invocation at a time)."""
    return sum(i.duration for i in twin.runtime.invocations if i.function_name.endswith("-admission"))


def main(scenario: str, objects: int) -> None:
    from local.twin import Twin

    with tempfile.TemporaryDirectory() as tmp:
        assembly = synthesized(Path(tmp))
        reads = ItemsRead(ADMISSION_TABLE)
        twin = Twin(workdir=Path(tmp) / "twin", spark=False, time_scale=0.05, retry_delay_seconds=0.5).start()
        try:
            report = twin.deploy(assembly)
            s3 = twin.client("s3")
            landing = str(report.outputs["LandingBucket"])
            pipeline, prefix = ("sales-daily", "sales/") if scenario == "window" else ("sales-burst", "burst/")
            machine = str(report.outputs[f"StateMachine{pipeline.replace('-', '')}"])
            sqs = twin.client("sqs")
            reads.reset()
            started = time.monotonic()
            at_start = resource.getrusage(resource.RUSAGE_SELF)
            cpu_at_start = at_start.ru_utime + at_start.ru_stime
            for i in range(objects):
                s3.put_object(Bucket=landing, Key=f"{prefix}bench/part-{i:05d}.csv", Body=CSV)
            last_put = time.monotonic()
            routed_at, peak_threads = None, threading.active_count()
            while True:
                peak_threads = max(peak_threads, threading.active_count())  # waiting executions hold one each
                done = succeeded(twin, machine)
                if routed_at is None and router_queues_empty(twin, sqs):
                    routed_at = time.monotonic()
                if scenario == "window" and routed_at is not None and not twin.busy():
                    break
                if scenario == "capped" and done >= objects:
                    break
                time.sleep(0.5)
            finished = time.monotonic()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            peak_mb, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime - cpu_at_start
            assert routed_at is not None
            if scenario == "window":
                print(f"  twin, {objects} objects (window): routed {routed_at - last_put:.1f} s after the last put, "
                      f"runs finished {finished - last_put:.1f} s after it ({done} runs); puts took "
                      f"{last_put - started:.1f} s")  # fmt: skip
            else:
                print(f"  twin, {objects} objects (per_object, cap {CAP}): {finished - started:.1f} s wall, "
                      f"{reads.items / max(1, done):.1f} admission items read per admitted run ("
                      + ", ".join(f"{f} {n / max(1, done):.1f}" for f, n in sorted(reads.by_function.items()))
                      + f"), {admission_seconds(twin) / max(1, done):.2f} s of admission invocations per admitted run,"
                      f" {cpu / max(1, done):.2f} s of twin CPU per run, peak memory {peak_mb:.0f} MB, peak"
                      f" {peak_threads} threads")  # fmt: skip
        finally:
            twin.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
