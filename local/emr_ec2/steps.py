"""EMR-on-EC2 steps: what runs them (spark-submit on local Spark, s3-dist-cp, the rest not executed) and their
logs (docs/twin/emr-on-ec2.md)."""

from __future__ import annotations

import functools
import gzip
import re
import shlex
from typing import Any

from local.emr_ec2.lifecycle import LOG, ClusterLifecycle
from local.emr_ec2.model import ENDED_STEP_STATES, Cluster, Step
from local.emr_ec2.s3distcp import ClusterFiles, dist_cp
from local.spark_runner import (
    LOCAL_IRRELEVANT_OPTIONS,
    NOTE_PREFIX,
    VALUE_OPTIONS,
    SparkJob,
    SparkRunnerError,
    log_uris,
    parse_s3_uri,
)

_SPARK_FLAGS = frozenset({"--verbose", "-v", "--supervise"})
_SPARK_VALUE_OPTIONS = frozenset({"--conf", "-c"}) | LOCAL_IRRELEVANT_OPTIONS


def parse_spark_submit(args: list[str]) -> tuple[list[str], str, list[str]]:
    """(options, entry point, application arguments) of `spark-submit [options] <entry-point> [app args...]`."""
    tokens = args[1:] if args and args[0] == "spark-submit" else list(args)
    options: list[str] = []
    i = 0
    while i < len(tokens) and tokens[i].startswith("-"):
        token = tokens[i]
        takes_value = "=" not in token and token not in _SPARK_FLAGS
        takes_value = takes_value and (token in _SPARK_VALUE_OPTIONS or token in VALUE_OPTIONS)
        options.extend(tokens[i : i + 2] if takes_value else [token])
        i += 2 if takes_value else 1
    if i >= len(tokens):
        raise ValueError("spark-submit: no application given (expected [options] <entry-point> [arguments])")
    return options, tokens[i], tokens[i + 1 :]


def step_kind(config: dict[str, Any]) -> tuple[str, list[str]]:
    """("spark-submit" | "s3-dist-cp" | "other", the command's arguments)."""
    jar, args = str(config.get("Jar", "")), list(config.get("Args") or [])
    if jar.endswith("command-runner.jar") and args and args[0] in ("spark-submit", "s3-dist-cp"):
        return args[0], args[1:] if args[0] == "s3-dist-cp" else args
    if jar.endswith("s3-dist-cp.jar"):
        return "s3-dist-cp", args
    return "other", args


class StepRunner(ClusterLifecycle):
    """Runs each step of a cluster in its own thread and ends it with its state, failure details and logs."""

    def _run_step(self, c: Cluster, s: Step) -> None:
        try:
            state, failure = self._execute(c, s)
        except Exception as exc:  # a twin defect must still end the step
            LOG.exception("step %s crashed in the twin", s.id)
            state, failure = "FAILED", {"Reason": f"local-twin error: {exc}", "Message": f"local-twin error: {exc}"}
        with self._cond:
            if s.state in ENDED_STEP_STATES:
                return
            if s.cancel.is_set():
                state, failure = ("CANCELLED" if s.user_cancelled else "INTERRUPTED"), None
            self._end_step(c, s, state, failure)

    def _execute(self, c: Cluster, s: Step) -> tuple[str, dict[str, str] | None]:
        """Run one step: an injected job fault, spark-submit on the runner, s3-dist-cp, or "not executed"."""
        if self.faults.take_spot_reclaim():
            return self._spot_reclaimed(c, s)
        fault = self.faults.next_job_fault()
        if fault is not None and fault.kind == "hang":
            s.cancel.wait()  # runs until cancelled or the cluster terminates
            return "CANCELLED", None
        if fault is not None and fault.kind == "run":
            if s.cancel.wait(fault.seconds * self.time_scale):  # a long step, on the twin's clock
                return "CANCELLED", None
            self._write_step_logs(c, s, f"{NOTE_PREFIX} injected run of {fault.seconds} s\n", "")
            return "COMPLETED", None
        if fault is not None:
            self._write_step_logs(c, s, "", f"{NOTE_PREFIX} injected fault: {fault.message}\n")
            return "FAILED", self._failure(c, s, fault.message, fault.message)
        kind, args = step_kind(s.config)
        if kind == "s3-dist-cp":
            return self._dist_cp(c, s, args)
        if kind == "spark-submit":
            return self._spark(c, s, args) if self.runner is not None else ("COMPLETED", None)
        what = f"jar {s.config['Jar']}" + (f" {args[0]}" if args else "")
        self._write_step_logs(
            c, s, "",
            f"{NOTE_PREFIX} step not executed ({what}): the twin runs spark-submit and s3-dist-cp steps only; "
            "this step is reported COMPLETED\n",
        )  # fmt: skip
        return "COMPLETED", None

    def _spark(self, c: Cluster, s: Step, args: list[str]) -> tuple[str, dict[str, str] | None]:
        assert self.runner is not None
        try:
            options, entry, arguments = parse_spark_submit(args)
        except ValueError as exc:
            self._write_step_logs(c, s, "", f"{NOTE_PREFIX} {exc}\n")
            return "FAILED", self._failure(c, s, str(exc), str(exc))
        job = SparkJob(
            job_run_id=s.id,
            entry_point=entry,
            arguments=arguments,
            spark_submit_parameters=shlex.join(options),
            log_uri=self._log_uri(c, s),
            log_layout="emr-ec2",
            application_id=c.id,
            timeout_seconds=self.step_timeout_seconds,
            role_arn=self.instance_role_arn(c),
        )
        result = self.runner.run(job, s.cancel)
        if s.cancel.is_set():
            return "CANCELLED", None
        if result.succeeded:
            return "COMPLETED", None
        error = result.error or "Unknown Error."
        code = f"spark-submit exited with code {result.exit_code}: " if result.exit_code is not None else ""
        return "FAILED", self._failure(c, s, error, code + error)

    def _spot_reclaimed(self, c: Cluster, s: Step) -> tuple[str, dict[str, str]]:
        """EC2 reclaims the cluster's spot task instances under the running step, which fails as Spark does when it
        loses its executors; EMR then launches replacements up to the fleet's or group's target."""
        with self._cond:
            lost = self.reclaim_spot_task_instances(c)
        note = f"{len(lost)} spot task instance(s) reclaimed: {', '.join(lost) or 'none were running'}"
        message = f"Job aborted: executors lost when Amazon EC2 reclaimed spot capacity ({note})"
        self._write_step_logs(c, s, "", f"{NOTE_PREFIX} injected spot interruption: {message}\n")
        return "FAILED", self._failure(c, s, "Unknown Error.", message)

    def _failure(self, c: Cluster, s: Step, reason: str, message: str) -> dict[str, str]:
        details = {"Reason": reason, "Message": message}
        log = self._step_log_uris(c, s).get("stderr")
        if log:
            details["LogFile"] = log
        return details

    def _log_uri(self, c: Cluster, s: Step) -> str | None:
        uri = s.log_uri or c.log_uri
        return re.sub(r"^s3[na]://", "s3://", uri) if uri else None

    def _step_log_uris(self, c: Cluster, s: Step) -> dict[str, str]:
        uri = self._log_uri(c, s)
        if not uri or not uri.startswith("s3://"):
            return {}
        job = SparkJob(job_run_id=s.id, entry_point="", arguments=[], log_uri=uri, log_layout="emr-ec2",
                       application_id=c.id)  # fmt: skip
        return log_uris(job)

    def _write_step_logs(self, c: Cluster, s: Step, stdout: str, stderr: str) -> None:
        """stdout.gz and stderr.gz in the step's log folder (when the cluster or step has an s3:// LogUri)."""
        if self._cluster_s3(c) is None:
            return
        texts = {"stdout": stdout, "stderr": stderr}
        try:
            for name, uri in self._step_log_uris(c, s).items():
                bucket, key = parse_s3_uri(uri, "log_uri")
                body = gzip.compress(texts[name].encode("utf-8"))
                self._cluster_s3(c).put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip")
        except Exception:
            LOG.exception("step %s: cannot upload its logs", s.id)

    # ------------------------------------------------------------------ s3-dist-cp
    def _dist_cp(self, c: Cluster, s: Step, args: list[str]) -> tuple[str, dict[str, str] | None]:
        """s3-dist-cp as the cluster's instance role; the cluster's HDFS is its folder under the workdir."""
        files = ClusterFiles(functools.partial(self._cluster_s3, c), self.workdir / "hdfs" / c.id)
        try:
            note = dist_cp(args, files)
        except (SparkRunnerError, re.error, OSError) as exc:
            self._write_step_logs(c, s, "", f"{NOTE_PREFIX} {exc}\n")
            return "FAILED", self._failure(c, s, str(exc), str(exc))
        self._write_step_logs(c, s, "", note)
        return "COMPLETED", None
