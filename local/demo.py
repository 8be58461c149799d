"""`make demo`: the synthesized app end to end on the twin, with real Spark.

Starts the twin on 127.0.0.1, deploys `cdk.out`, drops the sample CSVs into the landing bucket
under `sales/` (the EMR Serverless pipeline) and `sales-cluster/` (the transient EMR-on-EC2
pipeline; `--prefixes` picks others), shows progress (event -> router -> execution -> job or
cluster and steps -> ledger) and ends with the runs table.
Exit 0 when every run SUCCEEDED; non-zero with the failed run's error otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autopilot_cli.ledger import RunRecord, read_runs
from autopilot_common.run_events import SOURCE as RUN_EVENT_SOURCE
from local.spark_runner import java_problem
from local.twin import Twin
from stacks.naming import arrivals_queue_name

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "jobs" / "sample-data"


class Progress:
    """Prints each step of each run once, as the twin sees it happen."""

    def __init__(self, twin: Twin, stacks: list[str] | None = None) -> None:
        self.twin = twin
        self.stacks = stacks or []
        self.seen_events = 0
        self.seen_deliveries = 0
        self.seen_invocations = 0
        self.started = time.monotonic()
        self.window_until: dict[str, float] = {}  # queue ARN -> when the window announced for it closes

    def line(self, text: str) -> None:
        print(f"  [{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def poll(self) -> None:
        events = self.twin.events[self.seen_events :]
        self.seen_events += len(events)
        for event in events:
            self._event(event)
        deliveries = self.twin.deliveries[self.seen_deliveries :]
        self.seen_deliveries += len(deliveries)
        for delivery in deliveries:
            self._batching(delivery.target_arn)
        invocations = self.twin.runtime.invocations[self.seen_invocations :]
        self.seen_invocations += len(invocations)
        for inv in invocations:
            status = "ok" if inv.error is None else f"error {inv.error}"
            self.line(f"λ {inv.function_name}: {status} ({inv.duration * 1000:.0f} ms)")

    def _batching(self, target_arn: str) -> None:
        """An arrival delivered to a queue whose event source mapping batches by window (its
        MaximumBatchingWindowInSeconds, as deployed): say the router waits, once per window."""
        mapping = next((m for m in self.twin.mappings if m.queue_arn == target_arn and m.window_seconds > 0), None)
        now = time.monotonic()
        if mapping is None or now < self.window_until.get(target_arn, 0.0):
            return
        twin_seconds = mapping.window_seconds * self.twin.time_scale
        self.window_until[target_arn] = now + twin_seconds
        self.line(
            f"waiting for {self._pipeline(target_arn)}'s batching window "
            f"(up to {twin_seconds:g} s twin time, {mapping.window_seconds:g} s on AWS)"
        )

    def _pipeline(self, queue_arn: str) -> str:
        """The pipeline of an arrivals queue (`stacks.naming.arrivals_queue_name`), else the queue's name."""
        queue = queue_arn.rsplit(":", 1)[-1]
        for stack in self.stacks:
            pipeline = queue.removeprefix(f"{stack}-").removesuffix("-arrivals")
            if arrivals_queue_name(stack, pipeline) == queue:
                return pipeline
        return f"queue {queue}"

    def _event(self, event: dict[str, Any]) -> None:
        detail = event["detail"]
        kind = event["detail-type"]
        if kind == "Object Created":
            self.line(f"event  s3://{detail['bucket']['name']}/{detail['object']['key']} ({detail['reason']})")
        elif kind == "Step Functions Execution Status Change":
            self.line(f"run    {detail['name']}: {detail['status']}")
        elif kind == "EMR Serverless Job Run State Change":
            self.line(f"job    {detail['jobRunId']}: {detail['state']} {detail.get('stateDetails') or ''}".rstrip())
        elif kind == "EMR Cluster State Change":
            self.line(f"cluster {detail['clusterId']}: {detail['state']}")
        elif kind == "EMR Step Status Change":
            self.line(f"step   {detail['clusterId']}/{detail['stepId']} {detail.get('name', '')}: {detail['state']}")
        elif event.get("source") == RUN_EVENT_SOURCE:  # the run's own event (what `trigger.after` rules react to)
            self.line(f"event  {kind}: {detail['pipeline']} {detail['run_id']}")


def format_table(records: list[RunRecord]) -> str:
    """A plain-text table for people."""
    header = ("RUN ID", "PIPELINE", "STATE", "WAITED", "DURATION", "ROWS IN", "ROWS OUT", "OUTPUT", "LEDGER")
    rows = [
        (
            r.run_id,
            r.pipeline,
            r.state,
            r.waited,
            f"{r.duration_seconds:.1f}s" if r.duration_seconds is not None else "-",
            str(r.rows_in) if r.rows_in is not None else "-",
            str(r.rows_out) if r.rows_out is not None else "-",
            r.output_uri or "-",
            r.ledger_uri,
        )
        for r in records
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)


DEFAULT_PREFIXES = ("sales/", "sales-cluster/")


TIME_SCALE = 0.1  # the demo's clock: AWS's waits (EMR .sync polls, windows, retries) 10x faster


def _notice_report(s3: Any, outputs: str, runs: list[Any]) -> str:
    """Per EMR step: how long after EMR ended it the workflow noticed (its cluster idled meanwhile), in AWS seconds."""
    lines = []
    for run in runs:
        key = run.ledger_uri.removeprefix(f"s3://{outputs}/")
        entry = json.loads(s3.get_object(Bucket=outputs, Key=key)["Body"].read())
        for step in entry.get("steps") or []:
            if step.get("notice_delay_seconds") is not None:
                delay = step["notice_delay_seconds"] / TIME_SCALE
                lines.append(f"  {run.run_id} step {step['name']!r}: noticed {delay:.0f} s (AWS time) after it ended")
    if not lines:
        return "no EMR step notices recorded"
    return "EMR steps (the cluster idles until Step Functions' next poll):\n" + "\n".join(lines)


def _cost_report(runs: list[RunRecord]) -> str:
    """What each run cost (its ledger's `cost`: usage x the shipped price table) and how it was computed."""
    lines = []
    for run in runs:
        cost = run.raw.get("cost")
        if not isinstance(cost, dict):
            lines.append(f"  {run.run_id}: no cost recorded")
            continue
        if cost.get("usd") is None:
            lines.append(f"  {run.run_id}: unknown ({cost.get('reason')})")
            continue
        lines.append(f"  {run.run_id}: ${cost['usd']:.6f} (list prices as of {cost.get('prices_as_of')})")
        lines += [
            f"    {line['item']}: {line['quantity']:g} {line['unit']} x ${line['rate_usd']:g} = ${line['usd']:.6f}"
            for line in cost.get("breakdown") or []
        ]
        lines += [f"    note: {note}" for note in cost.get("notes") or []]
    return "What each run cost:\n" + "\n".join(lines)


def run_demo(
    cdk_out: Path, *, spark: bool = True, timeout: float = 240.0, prefixes: tuple[str, ...] = DEFAULT_PREFIXES
) -> int:
    problem = java_problem() if spark else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="autopilot-twin-") as tmp:
        twin = Twin(workdir=Path(tmp), spark=spark, time_scale=TIME_SCALE).start()
        try:
            print(f"twin listening on {twin.endpoint}; IAM enforced as AWS does")
            print(
                f"the twin's clock runs x{1 / TIME_SCALE:g}: Step Functions polls EMR every {60 * TIME_SCALE:g} s "
                f"(AWS: 60 s, then 300 s after 10 minutes), batching windows and retries are {TIME_SCALE:g}x as long"
            )
            report = twin.deploy(cdk_out)
            print(report.summary())
            landing, outputs = report.outputs["LandingBucket"], report.outputs["OutputsBucket"]
            s3 = twin.client("s3")
            files = sorted((SAMPLES / "sales").glob("*.csv"))
            for prefix in prefixes:
                print(f"dropping {len(files)} sample files into s3://{landing}/{prefix}")
                for path in files:
                    s3.put_object(Bucket=landing, Key=f"{prefix}{path.name}", Body=path.read_bytes())
            progress = Progress(twin, report.stacks)
            deadline = time.monotonic() + timeout
            quiet = 0
            while time.monotonic() < deadline and quiet < 3:
                time.sleep(0.5)
                progress.poll()
                quiet = quiet + 1 if not twin.busy() and read_runs(s3, outputs) else 0
            progress.poll()
            runs = read_runs(s3, outputs)
            print()
            print(format_table(runs) if runs else "no runs recorded")
            if quiet < 3:
                print(f"error: the demo did not finish within {timeout:.0f} s", file=sys.stderr)
                return 1
            failed = [r for r in runs if r.state != "SUCCEEDED"]
            if not runs or failed:
                for run in failed:
                    print(f"error: run {run.run_id} {run.state}: {run.error}: {run.cause}", file=sys.stderr)
                return 1
            print(f"\n{len(runs)} run(s) SUCCEEDED in {time.monotonic() - progress.started:.1f} s")
            print(_notice_report(s3, outputs, runs))
            print(_cost_report(runs))
            stats = twin.iam.stats.snapshot()
            print(
                f"IAM: {stats['calls']} calls of the app's principals authorized ({stats['operations']} operations, "
                f"{stats['statements_evaluated']} statements evaluated), {stats['denials']} refused"
            )
            return 0
        finally:
            twin.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__)
    parser.add_argument("--cdk-out", type=Path, default=REPO / "cdk.out", help="cloud assembly (default: cdk.out)")
    parser.add_argument("--no-spark", action="store_true", help="complete job runs without Spark")
    parser.add_argument(
        "--prefixes",
        nargs="+",
        default=list(DEFAULT_PREFIXES),
        help="landing prefixes to drop the sample CSVs under (default: sales/ sales-cluster/)",
    )
    args = parser.parse_args(argv)
    if not (args.cdk_out / "manifest.json").is_file():
        print(f"error: {args.cdk_out} is not a cloud assembly; run `make synth` first", file=sys.stderr)
        return 2
    prefixes = tuple(p if p.endswith("/") else p + "/" for p in args.prefixes)
    return run_demo(args.cdk_out, spark=not args.no_spark, prefixes=prefixes)


if __name__ == "__main__":
    sys.exit(main())
