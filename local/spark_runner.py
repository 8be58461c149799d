"""Run one EMR job run's Spark application locally, against the local twin's S3.

Stage, run, publish, upload the driver logs, clean up: docs/twin/spark.md.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import logging
import mimetypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEEP_WORKDIR_ENV = "AUTOPILOT_TWIN_KEEP_WORKDIR"
NOTE_PREFIX = "local-twin:"
JDK_HINT = "install a JDK 17+, e.g. apt-get install openjdk-17-jre-headless"
KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.1
ERROR_TAIL_BYTES = 256 * 1024
MAX_ERROR_CHARS = 2000

# Where the driver's stdout.gz / stderr.gz go under the log URI, per runtime (`application_id` is the EMR
# Serverless application id, the EMR on EC2 cluster id, or the EMR on EKS virtual cluster id):
#   emr-serverless: <logUri>/applications/<application-id>/jobs/<job-run-id>/SPARK_DRIVER/stdout.gz
#   emr-ec2 (step): <logUri>/<cluster-id>/steps/<step-id>/stdout.gz
#   emr-eks:        <logUri>/<virtual-cluster-id>/jobs/<job-run-id>/containers/spark-<job-run-id>/
#                   spark-<job-run-id>-driver/stdout.gz   (the Spark application id, then the driver pod name)
LOG_LAYOUTS: dict[str, str] = {
    "emr-serverless": "applications/{application_id}/jobs/{job_run_id}/SPARK_DRIVER/{name}",
    "emr-ec2": "{application_id}/steps/{job_run_id}/{name}",
    "emr-eks": "{application_id}/jobs/{job_run_id}/containers/spark-{job_run_id}/spark-{job_run_id}-driver/{name}",
}

# Spark settings that only size or place a cluster; meaningless for `local[N]` (the runner's driver memory and
# cores apply instead). Prefixes: a key starting with one is dropped.
LOCAL_IRRELEVANT_CONF = (
    "spark.master",
    "spark.submit.deployMode",
    "spark.driver.memory",
    "spark.driver.cores",
    "spark.executor.memory",  # also spark.executor.memoryOverhead(Factor)
    "spark.executor.cores",
    "spark.executor.instances",
    "spark.dynamicAllocation.",
    "spark.emr-serverless.",
    "spark.kubernetes.",
)
# spark-submit options that size or place a cluster: dropped, with their value.
LOCAL_IRRELEVANT_OPTIONS = frozenset(
    {
        "--master",
        "--deploy-mode",
        "--driver-memory",
        "--driver-cores",
        "--executor-memory",
        "--executor-cores",
        "--num-executors",
        "--total-executor-cores",
    }
)
# spark-submit options that take a value (so the value is not mistaken for the next option).
VALUE_OPTIONS = frozenset(
    {
        "--name",
        "--class",
        "--jars",
        "--packages",
        "--exclude-packages",
        "--repositories",
        "--py-files",
        "--files",
        "--archives",
        "--properties-file",
        "--driver-java-options",
        "--driver-library-path",
        "--driver-class-path",
        "--proxy-user",
        "--queue",
        "--principal",
        "--keytab",
    }
)
# Options and settings whose value is a comma-separated list of URIs that Spark fetches: s3:// ones are staged.
URI_LIST_OPTIONS = frozenset({"--jars", "--py-files", "--files", "--archives"})
URI_LIST_CONF = frozenset({"spark.jars", "spark.submit.pyFiles", "spark.files", "spark.archives"})

# Always set, after the job's own settings (the last --conf of a key wins).
FORCED_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    # No .crc sidecar files; also lets file:// paths contain ':' (see jobs/README.md).
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}

CONTENT_TYPES = {
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".gz": "application/gzip",
}

_ERROR_LINE = re.compile(r"^\S+: error: \S")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.$]*(Error|Exception|Exit|Interrupt)\b(: .*)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SparkRunnerError(Exception):
    """A run cannot be staged, submitted or published; the message is one line naming what is wrong."""


class _Stopped(Exception):
    """The run was cancelled or timed out before spark-submit finished."""


@dataclass(frozen=True)
class SparkJob:
    job_run_id: str
    entry_point: str  # s3://bucket/jobs/sales_etl.py, file:///… or a local path
    arguments: list[str]
    spark_submit_parameters: str = ""  # e.g. "--conf spark.executor.cores=2 --conf spark.executor.memory=4g"
    log_uri: str | None = None  # s3://logs/emr-serverless/<p>/<run>/ ; None = no log upload
    log_layout: str = "emr-serverless"  # a key of LOG_LAYOUTS
    application_id: str = "local"  # EMR Serverless application / EMR cluster id / EKS virtual cluster id
    timeout_seconds: int = 900
    # The role the job's S3 reads and writes (and its log upload) act as: the job execution role (EMR Serverless,
    # EMR on EKS) or the cluster's EC2 instance role (EMR on EC2). None: the runner's own client.
    role_arn: str | None = None


@dataclass(frozen=True)
class SparkResult:
    succeeded: bool
    exit_code: int | None  # None when killed (timeout / cancel) or when spark-submit never ran
    error: str | None  # one line; None on success
    duration_seconds: float
    published: list[str]  # s3:// URIs of the objects written back
    driver_log_uri: str | None  # s3:// URI of the uploaded stdout.gz (None without log_uri)


# ---------------------------------------------------------------------------------------------- pure helpers


def parse_s3_uri(uri: str, what: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`, the key raw (never URL-decoded)."""
    if not uri.startswith("s3://"):
        raise SparkRunnerError(f"{what}: {uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise SparkRunnerError(f"{what}: {uri!r} does not name a valid S3 bucket")
    return bucket, key


def unsafe_key_reason(key: str) -> str | None:
    """Why an S3 key cannot be staged as a path below the stage folder, or None when it can."""
    if not key:
        return "is empty"
    if key.startswith("/"):
        return "starts with '/'"
    if ".." in key.split("/"):
        return "has a '..' segment"
    if "\x00" in key:
        return "contains a NUL character"
    return None


def _conf_dropped(key: str) -> bool:
    return key.startswith(LOCAL_IRRELEVANT_CONF)


@dataclass
class SubmitParameters:
    """`spark_submit_parameters` made local: what is passed on and what was dropped (for the driver log)."""

    options: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def local_submit_parameters(parameters: str, localize: Callable[[str], str] | None = None) -> SubmitParameters:
    """Parse `spark_submit_parameters` (shlex) and keep what makes sense for local mode.

    `--conf k=v` (also `--conf=k=v`, `-c k=v`) is kept unless the key is in `LOCAL_IRRELEVANT_CONF` or set by the
    runner itself (`FORCED_CONF`); cluster sizing options (`--executor-memory`, `--num-executors`, …) are dropped;
    other options are kept. `localize` maps comma-separated URI lists (`--py-files`, `spark.jars`, …) to local ones.
    Raises SparkRunnerError for unparseable text or a `--conf` without `key=value`.
    """
    try:
        tokens = shlex.split(parameters)
    except ValueError as e:
        raise SparkRunnerError(f"spark_submit_parameters: cannot parse {parameters!r} ({e})") from None
    out = SubmitParameters()
    i = 0
    while i < len(tokens):
        option, value, i = _next_option(tokens, i)
        if option in ("--conf", "-c"):
            _add_conf(out, value, localize)
        elif option in LOCAL_IRRELEVANT_OPTIONS:
            out.dropped.append(f"{option} {value}".rstrip())
        elif value is None:
            out.options.append(option)
        else:
            if option in URI_LIST_OPTIONS and localize is not None:
                value = localize(value)
            out.options += [option, value]
    return out


def _next_option(tokens: list[str], i: int) -> tuple[str, str | None, int]:
    """(option, value or None, next index) at tokens[i]; `--opt=value` and `--opt value` forms."""
    token = tokens[i]
    if token.startswith("--") and "=" in token:
        option, _, value = token.partition("=")
        return option, value, i + 1
    takes_value = token in ("--conf", "-c") or token in VALUE_OPTIONS or token in LOCAL_IRRELEVANT_OPTIONS
    if takes_value:
        if i + 1 >= len(tokens):
            raise SparkRunnerError(f"spark_submit_parameters: {token} needs a value")
        return token, tokens[i + 1], i + 2
    return token, None, i + 1


def _add_conf(out: SubmitParameters, setting: str | None, localize: Callable[[str], str] | None) -> None:
    key, sep, value = (setting or "").partition("=")
    key = key.strip()
    if not sep or not key:
        raise SparkRunnerError(f"spark_submit_parameters: --conf {setting!r} is not key=value")
    if _conf_dropped(key):
        out.dropped.append(f"--conf {key}={value}")
        return
    if key in FORCED_CONF:
        out.dropped.append(f"--conf {key}={value} (the local twin sets {FORCED_CONF[key]})")
        return
    if key in URI_LIST_CONF and localize is not None:
        value = localize(value)
    out.options += ["--conf", f"{key}={value}"]


LOG_NAMES = ("stdout", "stderr")


def log_key(layout: str, application_id: str, job_run_id: str, name: str) -> str:
    """The relative location of a driver log file (`stdout.gz`, `stderr.gz`) under the log URI."""
    try:
        template = LOG_LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"log_layout: got {layout!r}; expected one of {', '.join(LOG_LAYOUTS)}") from None
    return template.format(application_id=application_id, job_run_id=job_run_id, name=name)


def log_uris(job: SparkJob) -> dict[str, str]:
    """{"stdout": uri, "stderr": uri} of the driver logs of `job` ({} without a log URI)."""
    if not job.log_uri:
        return {}
    base = job.log_uri if job.log_uri.endswith("/") else job.log_uri + "/"  # as EMR does for a logUri without "/"
    return {n: base + log_key(job.log_layout, job.application_id, job.job_run_id, f"{n}.gz") for n in LOG_NAMES}


def check_java(env: Mapping[str, str]) -> str:
    """The java that spark-submit will use (JAVA_HOME's, else the one on PATH); SparkRunnerError when missing."""
    java_home = env.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK):
            return str(java)
        raise SparkRunnerError(f"JAVA_HOME={java_home} has no bin/java: {JDK_HINT} and point JAVA_HOME at it")
    found = shutil.which("java", path=env.get("PATH", ""))
    if found is None:
        raise SparkRunnerError(f"java not found (no JAVA_HOME, no java on PATH): the local twin runs Spark; {JDK_HINT}")
    return found


def java_problem(env: Mapping[str, str] | None = None) -> str | None:
    """None when spark-submit will find a Java 17+ runtime, else one line saying what to install."""
    env = os.environ if env is None else env
    try:
        java = check_java(env)
    except SparkRunnerError as exc:
        return str(exc)
    banner = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, env=dict(env)).stderr
    version = banner.split('"')[1] if banner.count('"') >= 2 else ""
    major = version.split(".")[1] if version.startswith("1.") else version.split(".")[0]
    if not major.isdigit() or int(major) < 17:
        return f"{java} is Java {version or 'of an unknown version'}; Spark 4 needs 17 or newer: {JDK_HINT}"
    return None


def pyspark_home() -> Path:
    """The installed pyspark package folder (its bin/spark-submit and jars); SparkRunnerError when missing."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise SparkRunnerError("pyspark is not installed: pip install pyspark==4.3.0 (the project's 'spark' extra)")
    return Path(spec.origin).parent


def error_line(*logs: str) -> str | None:
    """The line that explains a failed run: the last `prog: error: …` line, else the last exception line.

    `logs` are searched in order for each kind. Pass stdout first: spark-submit's PythonRunner merges a PySpark
    driver's stderr into its stdout (as on EMR, where a Python job's errors are in SPARK_DRIVER/stdout.gz), while
    stderr holds Spark's own log4j output and a JVM job's errors.
    """
    for pattern in (_ERROR_LINE, _EXCEPTION_LINE):
        for text in logs:
            for line in reversed(text.splitlines()):
                if pattern.match(line.strip()):
                    return line.strip()[:MAX_ERROR_CHARS]
    return None


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_ERROR_CHARS]


def _client_error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


# ---------------------------------------------------------------------------------------------- one run


@dataclass
class _Run:
    """The state of one run: its folders, the output mapping and notes for the driver log."""

    job: SparkJob
    root: Path
    deadline: float
    cancel: threading.Event | None
    notes: list[str] = field(default_factory=list)
    output: tuple[str, str] | None = None  # (bucket, prefix without trailing "/") of --output
    exit_code: int | None = None
    published: list[str] = field(default_factory=list)

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr"

    def note(self, text: str) -> None:
        self.notes.append(f"{NOTE_PREFIX} {text}")

    def check_stop(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _Stopped("cancelled")
        if time.monotonic() >= self.deadline:
            raise _Stopped(f"timed out after {self.job.timeout_seconds} s")


class SparkRunner:
    """Runs EMR job runs' Spark applications with a local Spark, reading and writing the twin's S3 through `s3`.

    `submit_command` replaces pyspark's `spark-submit` (tests use a fake); the Java check is only made for
    pyspark's. Thread-safe: runs share nothing but the (thread-safe) boto3 client.
    """

    def __init__(
        self,
        s3: Any,
        *,
        workdir: Path,
        driver_memory: str = "1g",
        cores: int = 2,
        submit_command: Sequence[str] | None = None,
        s3_for_role: Callable[[str, str], Any] | None = None,
    ) -> None:
        if cores < 1:
            raise ValueError(f"cores: got {cores}; expected at least 1")
        self.s3 = s3
        # (role ARN, session name) -> an S3 client acting as that role: the twin's IAM then authorizes the job's
        # S3 calls as AWS authorizes them (the job role must read its inputs and write its outputs and logs).
        self.s3_for_role = s3_for_role
        self._current = threading.local()
        self.workdir = Path(workdir).resolve()
        self.driver_memory = driver_memory
        self.cores = cores
        self.submit_command = list(submit_command) if submit_command is not None else None

    # ------------------------------------------------------------------------------------------ run

    def run(self, job: SparkJob, cancel: threading.Event | None = None) -> SparkResult:
        """Stage, submit, publish and upload the logs of one job run. Every failure of the run is reported in the
        result (`error`, one line); ValueError only for an invalid `job` (job_run_id, log_layout)."""
        started = time.monotonic()
        if not job.job_run_id or "/" in job.job_run_id or job.job_run_id in (".", ".."):
            raise ValueError(f"job_run_id: got {job.job_run_id!r}; expected a single path segment")
        log_targets = log_uris(job)  # validates log_layout before anything runs
        root = self.workdir / job.job_run_id
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        run = _Run(job, root, started + job.timeout_seconds, cancel)
        self._current.s3 = self.s3_for_role(job.role_arn, job.job_run_id) if job.role_arn and self.s3_for_role else None
        error: str | None = None
        try:
            error = self._run(run)  # the job's own error line when it failed
        except (_Stopped, SparkRunnerError) as e:
            error = _one_line(str(e))
            run.note(f"error: {error}")
        except Exception as e:  # an S3 or OS failure of the twin itself: still a failed run, with the cause
            log.exception("job run %s: unexpected failure", job.job_run_id)
            error = _one_line(f"{type(e).__name__}: {e}")
            run.note(f"error: {error}")
        driver_log = self._upload_logs(run, log_targets)
        self._current.s3 = None
        self._clean(root)
        return SparkResult(
            succeeded=error is None,
            exit_code=run.exit_code,
            error=error,
            duration_seconds=round(time.monotonic() - started, 3),
            published=run.published,
            driver_log_uri=driver_log,
        )

    def _run(self, run: _Run) -> str | None:
        env = self._env()
        command = self._command(env)
        entry = self._stage_entry_point(run)
        options = local_submit_parameters(run.job.spark_submit_parameters, lambda v: self._localize_list(run, v))
        for dropped in options.dropped:
            run.note(f"dropped {dropped} (no meaning for local[{self.cores}])")
        arguments = self._stage_arguments(run)
        argv = [
            *command,
            "--master",
            f"local[{self.cores}]",
            "--driver-memory",
            self.driver_memory,
            *options.options,
            *(x for k, v in FORCED_CONF.items() for x in ("--conf", f"{k}={v}")),
            "--conf",
            f"spark.local.dir={run.root / 'tmp'}",
            str(entry),
            *arguments,
        ]
        run.note(f"spark-submit {shlex.join(argv[len(command) :])}")
        run.exit_code = self._submit(run, argv, env)
        if run.exit_code != 0:
            job_error = error_line(_tail(run.stdout, ERROR_TAIL_BYTES), _tail(run.stderr, ERROR_TAIL_BYTES))
            if job_error is None:
                job_error = f"spark-submit exited with code {run.exit_code} (see the driver log)"
                run.note(f"error: {job_error}")
            return job_error
        self._publish(run)
        return None

    # ------------------------------------------------------------------------------------------ environment

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYSPARK_PYTHON"] = sys.executable
        env["PYSPARK_DRIVER_PYTHON"] = sys.executable
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYSPARK_SUBMIT_ARGS", None)
        return env

    def _command(self, env: dict[str, str]) -> list[str]:
        if self.submit_command is not None:
            return list(self.submit_command)
        check_java(env)
        home = pyspark_home()
        env["SPARK_HOME"] = str(home)  # never another Spark installation's SPARK_HOME
        return [str(home / "bin" / "spark-submit")]

    # ------------------------------------------------------------------------------------------ staging

    def _stage_entry_point(self, run: _Run) -> Path:
        entry = run.job.entry_point
        if not entry.startswith("s3://"):
            path = Path(entry.removeprefix("file://"))
            if not path.is_file():
                raise SparkRunnerError(f"entry point {entry}: no such file")
            return path
        bucket, key = parse_s3_uri(entry, "entry point")
        name = key.rsplit("/", 1)[-1]
        if not name or name in (".", ".."):
            raise SparkRunnerError(f"entry point {entry}: not an object key")
        target = run.code / name
        if not self._download(bucket, key, target):
            raise SparkRunnerError(f"entry point {entry}: no such object")
        return target

    def _stage_arguments(self, run: _Run) -> list[str]:
        """The job arguments with s3:// URIs replaced by staged local ones, plus --object-root when missing."""
        args = list(run.job.arguments)
        out: list[str] = []
        has_object_root = False
        i = 0
        while i < len(args):
            token = args[i]
            name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
            if eq:  # --name=value
                out.append(f"{name}={self._stage_value(run, name, inline, i)}")
                has_object_root |= name == "--object-root"
                i += 1
            elif token.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
                out += [token, self._stage_value(run, token, args[i + 1], i + 1)]
                has_object_root |= token == "--object-root"
                i += 2
            else:
                out.append(self._stage_value(run, None, token, i))
                i += 1
        if not has_object_root:
            out += ["--object-root", f"file://{run.stage}/"]
        return out

    def _stage_value(self, run: _Run, option: str | None, value: str, index: int) -> str:
        if option == "--object-root":
            if value == "s3://":
                return f"file://{run.stage}/"
            if value.startswith("s3://"):
                raise SparkRunnerError(f"argument --object-root {value}: only 's3://' can be staged locally")
            return value
        if not value.startswith("s3://"):
            return value
        what = f"argument {option} {value}" if option else f"argument {value}"
        if option == "--manifest":
            return self._stage_manifest(run, value)
        if option == "--output":
            bucket, prefix = parse_s3_uri(value, what)
            run.output = (bucket, prefix.rstrip("/"))
            return f"file://{run.out}"
        return self._stage_other(run, what, value, run.root / "args" / str(index))

    def _stage_manifest(self, run: _Run, uri: str) -> str:
        bucket, key = parse_s3_uri(uri, "--manifest")
        local = run.root / "manifest" / (key.rsplit("/", 1)[-1] or "manifest.json")
        if not self._download(bucket, key, local):
            raise SparkRunnerError(f"--manifest {uri}: no such object")
        objects = _manifest_objects(local.read_bytes(), uri)
        staged, missing, size = 0, [], 0
        for obj_bucket, obj_key in objects:
            run.check_stop()
            target = run.stage / obj_bucket / obj_key
            if obj_key.endswith("/"):  # a folder placeholder: no file to stage; the job refuses such keys itself
                missing.append(f"s3://{obj_bucket}/{obj_key}")
                continue
            try:
                found = self._download(obj_bucket, obj_key, target)
            except OSError as e:
                raise SparkRunnerError(
                    f"--manifest {uri}: cannot stage bucket={obj_bucket!r} key={obj_key!r} at {target} ({e})"
                ) from None
            if found:
                staged, size = staged + 1, size + target.stat().st_size
            else:
                missing.append(f"s3://{obj_bucket}/{obj_key}")
        run.note(f"staged {staged} of {len(objects)} manifest objects ({size} bytes) under {run.stage}/")
        if missing:
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            listed = ", ".join(missing[:20]) + more
            run.note(f"not staged (not in S3, or a folder), left for the job to report: {listed}")
        return f"file://{local}"

    def _stage_other(self, run: _Run, what: str, uri: str, folder: Path) -> str:
        """An s3:// object argument becomes a local file path; an s3:// prefix (ending in '/') a local folder."""
        bucket, key = parse_s3_uri(uri, what)
        if key == "" or key.endswith("/"):
            count = 0
            for obj_key in self._list(bucket, key):
                run.check_stop()
                relative = obj_key[len(key) :]
                if reason := unsafe_key_reason(relative):
                    raise SparkRunnerError(f"{what}: cannot stage key {obj_key!r} safely: it {reason}")
                if not relative.endswith("/"):
                    count += self._download(bucket, obj_key, folder / relative)
            folder.mkdir(parents=True, exist_ok=True)
            run.note(f"{what}: staged {count} objects into {folder}/")
            return f"{folder}/"
        target = folder / key.rsplit("/", 1)[-1]
        if not self._download(bucket, key, target):
            raise SparkRunnerError(f"{what}: no such object (other s3:// arguments are staged as files)")
        return str(target)

    def _localize_list(self, run: _Run, value: str) -> str:
        """A comma-separated URI list (`--py-files`, `spark.jars`, …) with s3:// objects downloaded to code/."""
        local: list[str] = []
        for n, item in enumerate(value.split(",")):
            uri, hash_sign, alias = item.strip().partition("#")
            if uri.startswith("s3://"):
                bucket, key = parse_s3_uri(uri, "spark_submit_parameters")
                target = run.code / "deps" / str(n) / (key.rsplit("/", 1)[-1] or "file")
                if not self._download(bucket, key, target):
                    raise SparkRunnerError(f"spark_submit_parameters: {uri}: no such object")
                uri = str(target)
            local.append(f"{uri}{hash_sign}{alias}")
        return ",".join(local)

    # ------------------------------------------------------------------------------------------ S3

    def _s3(self) -> Any:
        """The S3 client of the run on this thread (its role's), else the runner's own."""
        return getattr(self._current, "s3", None) or self.s3

    def _download(self, bucket: str, key: str, target: Path) -> bool:
        """Copy one object to `target`; False when it does not exist. Refuses keys that would leave the folder."""
        if reason := unsafe_key_reason(key):
            raise SparkRunnerError(f"cannot stage s3://{bucket}/{key} (key {key!r}) safely: the key {reason}")
        try:
            response = self._s3().get_object(Bucket=bucket, Key=key)
        except Exception as e:
            if _client_error_code(e) in _NOT_FOUND:
                return False
            raise
        target.parent.mkdir(parents=True, exist_ok=True)
        body = response["Body"]
        try:
            with target.open("wb") as f:
                shutil.copyfileobj(body, f, 1024 * 1024)
        finally:
            body.close()
        return True

    def _list(self, bucket: str, prefix: str) -> Iterator[str]:
        for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield str(item["Key"])

    # ------------------------------------------------------------------------------------------ spark-submit

    def _submit(self, run: _Run, argv: list[str], env: dict[str, str]) -> int:
        """Run spark-submit in its own process group; its exit code, or _Stopped after killing it."""
        run.check_stop()
        with run.stdout.open("wb") as out, run.stderr.open("ab") as err:
            err.write("".join(f"{n}\n" for n in run.notes).encode())
            err.flush()
            run.notes.clear()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=run.root, start_new_session=True
            )
            log.info("job run %s: spark-submit started (pid %d)", run.job.job_run_id, proc.pid)
            try:
                while True:
                    try:
                        return proc.wait(timeout=POLL_SECONDS)
                    except subprocess.TimeoutExpired:
                        pass
                    run.check_stop()
            except BaseException:
                _kill_group(proc)
                raise

    # ------------------------------------------------------------------------------------------ publish

    def _publish(self, run: _Run) -> None:
        if run.output is None:
            return
        bucket, prefix = run.output
        if not run.out.is_dir():
            run.note(f"the job wrote nothing to its output; nothing published to s3://{bucket}/{prefix}/")
            return
        skipped: list[str] = []
        written: set[str] = set()
        for path in sorted(p for p in run.out.rglob("*") if p.is_file()):
            relative = path.relative_to(run.out).as_posix()
            if path.name.endswith(".crc") or path.name == "_SUCCESS" or "_temporary" in relative.split("/"):
                skipped.append(relative)
                continue
            key = f"{prefix}/{relative}" if prefix else relative
            try:
                self._s3().upload_file(str(path), bucket, key, ExtraArgs={"ContentType": content_type(path)})
            except Exception as e:
                raise SparkRunnerError(f"publish: cannot upload {path} to s3://{bucket}/{key}: {e}") from None
            written.add(key)
            run.published.append(f"s3://{bucket}/{key}")
        # Replace the run's output like the job's overwrite mode on EMR; never a whole bucket.
        stale = [k for k in self._list(bucket, f"{prefix}/") if k not in written] if prefix else []
        for start in range(0, len(stale), 1000):
            batch = [{"Key": k} for k in stale[start : start + 1000]]
            self._s3().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        run.note(
            f"published {len(written)} objects to s3://{bucket}/{prefix}/"
            + (f"; removed {len(stale)} objects of an earlier run" if stale else "")
            + (f"; not published: {', '.join(skipped[:20])}" if skipped else "")
        )

    # ------------------------------------------------------------------------------------------ logs, cleanup

    def _upload_logs(self, run: _Run, targets: dict[str, str]) -> str | None:
        if run.notes:  # notes after the process (or instead of it) go to the end of stderr
            with run.stderr.open("a", encoding="utf-8") as err:
                err.write("".join(f"{n}\n" for n in run.notes))
            run.notes.clear()
        if not targets:
            return None
        try:
            for name, uri in targets.items():
                source = run.root / name
                if not source.exists():
                    source.touch()
                packed = run.root / f"{name}.gz"
                with source.open("rb") as src, gzip.open(packed, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
                bucket, key = parse_s3_uri(uri, "log_uri")
                self._s3().upload_file(str(packed), bucket, key, ExtraArgs={"ContentType": "application/gzip"})
        except Exception:
            log.exception("job run %s: cannot upload the driver logs to %s", run.job.job_run_id, run.job.log_uri)
            return None
        return targets["stdout"]

    def _clean(self, root: Path) -> None:
        if os.environ.get(KEEP_WORKDIR_ENV) == "1":
            log.info("keeping %s (%s=1)", root, KEEP_WORKDIR_ENV)
            return
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- helpers


def _manifest_objects(data: bytes, uri: str) -> list[tuple[str, str]]:
    """(bucket, key) of each object of an input manifest (autopilot_common.manifest, version 1), deduplicated."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SparkRunnerError(f"--manifest {uri}: not valid JSON ({e})") from None
    objects = body.get("objects") if isinstance(body, dict) else None
    if not isinstance(objects, list):
        raise SparkRunnerError(f"--manifest {uri}: expected a JSON object with an 'objects' list")
    found: dict[tuple[str, str], None] = {}
    for i, obj in enumerate(objects):
        bucket = obj.get("bucket") if isinstance(obj, dict) else None
        key = obj.get("key") if isinstance(obj, dict) else None
        if not isinstance(bucket, str) or not _BUCKET.match(bucket) or not isinstance(key, str):
            raise SparkRunnerError(f"--manifest {uri}: objects[{i}] needs a valid 'bucket' and a string 'key'")
        if reason := unsafe_key_reason(key):
            raise SparkRunnerError(
                f"--manifest {uri}: objects[{i}] key {key!r} (bucket {bucket!r}) cannot be staged safely: it {reason}"
            )
        found[(bucket, key)] = None
    return list(found)


def _tail(path: Path, size: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the run's process group (spark-submit, its JVM and Python workers), SIGKILL after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # also any child that outlived the leader
    proc.wait()


__all__ = [
    "LOG_LAYOUTS",
    "SparkJob",
    "SparkResult",
    "SparkRunner",
    "SparkRunnerError",
    "check_java",
    "error_line",
    "local_submit_parameters",
    "log_key",
    "log_uris",
    "unsafe_key_reason",
]
