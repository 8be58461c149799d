"""local/spark_runner.py: one EMR job run's Spark application run locally against the twin's (moto) S3.

Pure tests use a fake `spark-submit` (a Python script that records its arguments and, depending on FAKE_MODE,
writes output, fails, or sleeps). The two `spark` tests run the real `jobs/sales_etl.py` with pyspark's
spark-submit, with arguments shaped exactly as the workflow builds them (`preparation._run_record`).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from autopilot_common.manifest import InputManifest, ManifestObject
from local.spark_runner import (
    FORCED_CONF,
    KEEP_WORKDIR_ENV,
    SparkJob,
    SparkResult,
    SparkRunner,
    SparkRunnerError,
    check_java,
    error_line,
    local_submit_parameters,
    log_uris,
    unsafe_key_reason,
)
from tests.conftest import REPO

JOB = REPO / "jobs" / "sales_etl.py"
SAMPLE = REPO / "jobs" / "sample-data" / "sales"
SAMPLE_FILES = ("2024-06-01.csv", "2024-06-02.csv", "2024-06-03 late+orders.csv")
BUCKETS = ("artifacts", "landing", "outputs", "logs")
ENTRY_POINT = "s3://artifacts/jobs/sales_etl.py"
OUTPUT = "s3://outputs/sales-daily/run_id=r1"
LOG_URI = "s3://logs/emr-serverless/sales-daily/r1/"
APP_ID = "00fabcdefghij123"
DRIVER_LOGS = f"{LOG_URI}applications/{APP_ID}/jobs/r1/SPARK_DRIVER"

FAKE_SUBMIT = r"""
import json, os, pathlib, subprocess, sys, time

argv = sys.argv[1:]
pathlib.Path(os.environ["FAKE_RECORD"]).write_text(json.dumps({
    "argv": argv,
    "cwd": os.getcwd(),
    "pyspark_python": os.environ.get("PYSPARK_PYTHON"),
    "pyspark_driver_python": os.environ.get("PYSPARK_DRIVER_PYTHON"),
}))
print("fake driver stdout", flush=True)
mode = os.environ.get("FAKE_MODE", "ok")


def output_dir():
    return pathlib.Path(argv[argv.index("--output") + 1].removeprefix("file://"))


def write_output():
    out = output_dir()
    files = {
        "order_date=2024-06-01/part-00000-abc.c000.snappy.parquet": b"PAR1 fake",
        "order_date=2024-06-01/.part-00000-abc.c000.snappy.parquet.crc": b"crc",
        "order_date=2024-06-02/part-00001-abc.c000.snappy.parquet": b"PAR1 fake 2",
        "_metrics.json": b'{"rows_out": 2}',
        "_SUCCESS": b"",
        "._SUCCESS.crc": b"crc",
        "_temporary/0/leftover": b"x",
    }
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)


if mode == "write":
    write_output()
elif mode == "fail":
    write_output()  # written, but a failed run publishes nothing
    print("Traceback (most recent call last):\nValueError: not this one", file=sys.stderr)
    print("x: error: boom", file=sys.stderr)
    sys.exit(1)
elif mode == "crash":
    print("26/01/01 00:00:00 ERROR SparkContext: stopped\nValueError: bad input", file=sys.stderr)
    sys.exit(3)
elif mode == "silent":
    sys.exit(7)
elif mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    pathlib.Path(os.environ["FAKE_CHILD"]).write_text(str(child.pid))
    time.sleep(120)
"""


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def s3(moto: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Moto S3 with the four buckets, the sample job in artifacts and the sample CSVs under landing/sales/."""
    monkeypatch.delenv(KEEP_WORKDIR_ENV, raising=False)
    # Path-style: with virtual-hosted addressing, moto routes "logs.s3.amazonaws.com" to CloudWatch Logs.
    client = boto3.client("s3", region_name=moto, config=Config(s3={"addressing_style": "path"}))
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="artifacts", Key="jobs/sales_etl.py", Body=JOB.read_bytes())
    for name in SAMPLE_FILES:
        client.put_object(Bucket="landing", Key=f"sales/{name}", Body=(SAMPLE / name).read_bytes())
    return client


def write_manifest(s3: Any, keys: list[str], run_id: str = "r1") -> str:
    """The router's input manifest for landing objects (sizes from S3; a missing key gets size 0)."""
    objects = []
    for key in keys:
        try:
            size = int(s3.head_object(Bucket="landing", Key=key)["ContentLength"])
        except s3.exceptions.ClientError:
            size = 0
        objects.append(ManifestObject(bucket="landing", key=key, size=size))
    return InputManifest(pipeline="sales-daily", run_id=run_id, objects=objects).write(s3, "artifacts")


def workflow_arguments(manifest_uri: str, run_id: str = "r1") -> list[str]:
    """`job.arguments` exactly as preparation._run_record builds them (plus the pipeline's config arguments)."""
    output = f"s3://outputs/sales-daily/run_id={run_id}/".rstrip("/")
    return ["--manifest", manifest_uri, "--output", output, "--run-id", run_id, "--date-column", "order_date"]


def sample_job(s3: Any, **changes: Any) -> SparkJob:
    manifest = write_manifest(s3, [f"sales/{n}" for n in SAMPLE_FILES])
    fields: dict[str, Any] = {
        "job_run_id": "r1",
        "entry_point": ENTRY_POINT,
        "arguments": workflow_arguments(manifest),
        "log_uri": LOG_URI,
        "application_id": APP_ID,
    }
    return SparkJob(**(fields | changes))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fake spark-submit; FAKE_RECORD receives its argv, FAKE_CHILD the pid of the child it starts (sleep)."""
    script = tmp_path / "fake_spark_submit.py"
    script.write_text(FAKE_SUBMIT, encoding="utf-8")
    paths = {"script": script, "record": tmp_path / "record.json", "child": tmp_path / "child.pid"}
    monkeypatch.setenv("FAKE_RECORD", str(paths["record"]))
    monkeypatch.setenv("FAKE_CHILD", str(paths["child"]))
    return paths


def fake_runner(s3: Any, tmp_path: Path, fake: dict[str, Path]) -> SparkRunner:
    return SparkRunner(s3, workdir=tmp_path / "work", submit_command=[sys.executable, str(fake["script"])])


def recorded_argv(fake: dict[str, Path]) -> list[str]:
    argv: list[str] = json.loads(fake["record"].read_text())["argv"]
    return argv


def value_after(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def read_gz(s3: Any, uri: str) -> str:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).decode("utf-8")


def assert_driver_logs(s3: Any, result: SparkResult) -> tuple[str, str]:
    """Both driver logs are in the EMR Serverless layout; returns (stdout, stderr)."""
    assert result.driver_log_uri == f"{DRIVER_LOGS}/stdout.gz"
    assert keys(s3, "logs") == [
        f"emr-serverless/sales-daily/r1/applications/{APP_ID}/jobs/r1/SPARK_DRIVER/stderr.gz",
        f"emr-serverless/sales-daily/r1/applications/{APP_ID}/jobs/r1/SPARK_DRIVER/stdout.gz",
    ]
    return read_gz(s3, f"{DRIVER_LOGS}/stdout.gz"), read_gz(s3, f"{DRIVER_LOGS}/stderr.gz")


# ---------------------------------------------------------------------------------------------- pure helpers


def test_local_submit_parameters_keeps_only_what_means_something_locally() -> None:
    params = local_submit_parameters(
        "--conf spark.executor.cores=2 --conf spark.executor.memory=4g --conf spark.executor.instances=3 "
        "--conf spark.executor.memoryOverhead=1g --conf spark.dynamicAllocation.enabled=true "
        "--conf spark.emr-serverless.driverEnv.X=1 --conf spark.kubernetes.container.image=img "
        "--conf spark.driver.memory=8g --conf spark.sql.adaptive.enabled=true "
        "--conf 'spark.driver.extraJavaOptions=-Da=1 -Db=2' --conf=spark.sql.session.timeZone=UTC "
        "--num-executors 3 --executor-memory=4g --conf spark.sql.shuffle.partitions=200 --name nightly"
    )
    assert params.options == [
        "--conf", "spark.sql.adaptive.enabled=true",
        "--conf", "spark.driver.extraJavaOptions=-Da=1 -Db=2",
        "--conf", "spark.sql.session.timeZone=UTC",
        "--name", "nightly",
    ]  # fmt: skip
    assert params.dropped == [
        "--conf spark.executor.cores=2",
        "--conf spark.executor.memory=4g",
        "--conf spark.executor.instances=3",
        "--conf spark.executor.memoryOverhead=1g",
        "--conf spark.dynamicAllocation.enabled=true",
        "--conf spark.emr-serverless.driverEnv.X=1",
        "--conf spark.kubernetes.container.image=img",
        "--conf spark.driver.memory=8g",
        "--num-executors 3",
        "--executor-memory 4g",
        "--conf spark.sql.shuffle.partitions=200 (the local twin sets 4)",
    ]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("--conf spark.x", "not key=value"),
        ("--conf =1", "not key=value"),
        ("--conf 'spark.x=1", "cannot parse"),
        ("--conf", "needs a value"),
    ],
)
def test_local_submit_parameters_errors(parameters: str, message: str) -> None:
    with pytest.raises(SparkRunnerError, match=message):
        local_submit_parameters(parameters)


def test_local_submit_parameters_localizes_uri_lists() -> None:
    params = local_submit_parameters(
        "--py-files s3://a/deps.zip,local.py --conf spark.archives=s3://a/env.tar.gz#env",
        localize=lambda v: v.replace("s3://a/", "/staged/"),
    )
    assert params.options == [
        "--py-files",
        "/staged/deps.zip,local.py",
        "--conf",
        "spark.archives=/staged/env.tar.gz#env",
    ]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../escape.csv", "'..' segment"),
        ("sales/../../escape.csv", "'..' segment"),
        ("/etc/passwd", "starts with '/'"),
        ("", "empty"),
    ],
)
def test_unsafe_keys(key: str, reason: str) -> None:
    assert reason in (unsafe_key_reason(key) or "")


@pytest.mark.parametrize("key", ["sales/2024-06-03 late+orders.csv", "a/b%20c/ü[1]:x.csv", "a/..b/c..", "a/./b"])
def test_safe_keys(key: str) -> None:
    assert unsafe_key_reason(key) is None


def test_log_layouts() -> None:
    def uris(layout: str, log_uri: str, app: str) -> dict[str, str]:
        return log_uris(SparkJob("run-1", "x.py", [], log_uri=log_uri, log_layout=layout, application_id=app))

    assert uris("emr-serverless", "s3://logs/p/", "app1") == {
        "stdout": "s3://logs/p/applications/app1/jobs/run-1/SPARK_DRIVER/stdout.gz",
        "stderr": "s3://logs/p/applications/app1/jobs/run-1/SPARK_DRIVER/stderr.gz",
    }
    assert uris("emr-serverless", "s3://logs/p", "app1")["stdout"].startswith("s3://logs/p/applications/")
    assert uris("emr-ec2", "s3://logs/emr/", "j-ABC")["stderr"] == "s3://logs/emr/j-ABC/steps/run-1/stderr.gz"
    assert uris("emr-eks", "s3://logs/eks/", "vc1")["stdout"] == (
        "s3://logs/eks/vc1/jobs/run-1/containers/spark-run-1/spark-run-1-driver/stdout.gz"
    )
    assert log_uris(SparkJob("run-1", "x.py", [])) == {}
    with pytest.raises(ValueError, match="log_layout"):
        uris("emr-fargate", "s3://logs/", "a")


def test_error_line_prefers_the_jobs_error_line() -> None:
    stderr = (
        "26/01/01 00:00:00 WARN NativeCodeLoader: Unable to load native-hadoop library\n"
        "Traceback (most recent call last):\n"
        "pyspark.errors.exceptions.captured.AnalysisException: [PATH_NOT_FOUND] Path does not exist\n"
        "sales_etl: error: run r1 failed: java.io.FileNotFoundException: gone\n"
        "26/01/01 00:00:01 INFO ShutdownHookManager: Shutdown hook called\n"
    )
    assert error_line(stderr) == "sales_etl: error: run r1 failed: java.io.FileNotFoundException: gone"
    assert error_line("Traceback (most recent call last):\n  File x\nValueError: boom\n") == "ValueError: boom"
    assert error_line("26/01/01 00:00:00 ERROR Executor: lost\n") is None
    # stdout (where PySpark's PythonRunner sends the Python driver's stderr) is searched first, for each kind
    assert (
        error_line("job: error: from stdout\n", "ValueError: x\nother: error: from stderr\n")
        == "job: error: from stdout"
    )
    assert error_line("no errors\n", "ValueError: x\nother: error: from stderr\n") == "other: error: from stderr"
    assert error_line("KeyError: 'k'\n", "ValueError: x\n") == "KeyError: 'k'"


def test_check_java(tmp_path: Path) -> None:
    with pytest.raises(SparkRunnerError, match=r"java not found.*apt-get install openjdk-17-jre-headless"):
        check_java({"PATH": str(tmp_path)})
    with pytest.raises(SparkRunnerError, match=r"JAVA_HOME=.* has no bin/java: install a JDK 17\+"):
        check_java({"JAVA_HOME": str(tmp_path), "PATH": os.environ["PATH"]})
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    assert check_java({"JAVA_HOME": str(tmp_path / "jdk"), "PATH": ""}) == str(java)
    assert check_java({"PATH": str(java.parent)}) == str(java)


# ---------------------------------------------------------------------------------------------- fake spark-submit


def test_arguments_are_staged_and_rewritten(
    s3: Any, tmp_path: Path, fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEEP_WORKDIR_ENV, "1")  # inspect what was staged
    s3.put_object(Bucket="artifacts", Key="conf/settings.json", Body=b'{"a": 1}')
    s3.put_object(Bucket="artifacts", Key="conf/lookup.csv", Body=b"k,v\n")
    s3.put_object(Bucket="artifacts", Key="deps/helpers.zip", Body=b"PK")
    base = sample_job(s3)
    job = dataclasses.replace(
        base,
        arguments=[*base.arguments, "--settings", "s3://artifacts/conf/settings.json"]
        + ["--lookup=s3://artifacts/conf/lookup.csv", "--mode", "full"],
        spark_submit_parameters="--conf spark.executor.memory=4g --conf spark.sql.adaptive.enabled=true "
        "--py-files s3://artifacts/deps/helpers.zip",
    )
    result = fake_runner(s3, tmp_path, fake).run(job)
    assert result.succeeded, result.error
    root = tmp_path / "work" / "r1"
    argv = recorded_argv(fake)

    assert argv[:4] == ["--master", "local[2]", "--driver-memory", "1g"]
    for key, value in FORCED_CONF.items():
        assert f"{key}={value}" in argv
    assert "spark.sql.adaptive.enabled=true" in argv
    assert not any("spark.executor.memory" in a for a in argv)
    assert Path(value_after(argv, "--py-files")).read_bytes() == b"PK"

    entry = root / "code" / "sales_etl.py"
    job_args = argv[argv.index(str(entry)) + 1 :]
    assert entry.read_bytes() == JOB.read_bytes()
    manifest = value_after(job_args, "--manifest")
    assert manifest == f"file://{root}/manifest/r1.json"
    assert Path(manifest.removeprefix("file://")).read_bytes() == (
        s3.get_object(Bucket="artifacts", Key="manifests/sales-daily/r1.json")["Body"].read()
    )
    for name in SAMPLE_FILES:  # raw keys: the space and '+' are kept
        assert (root / "stage" / "landing" / "sales" / name).read_bytes() == (SAMPLE / name).read_bytes()
    assert value_after(job_args, "--output") == f"file://{root}/out"
    assert value_after(job_args, "--run-id") == "r1"
    assert value_after(job_args, "--date-column") == "order_date"
    assert value_after(job_args, "--mode") == "full"
    assert Path(value_after(job_args, "--settings")).read_bytes() == b'{"a": 1}'
    lookup = next(a for a in job_args if a.startswith("--lookup="))
    assert Path(lookup.removeprefix("--lookup=")).read_bytes() == b"k,v\n"
    assert job_args.count("--object-root") == 1
    assert value_after(job_args, "--object-root") == f"file://{root}/stage/"
    record = json.loads(fake["record"].read_text())
    assert record["cwd"] == str(root)  # spark-warehouse, derby.log etc. land in the job dir
    assert record["pyspark_python"] == record["pyspark_driver_python"] == sys.executable
    _, stderr = assert_driver_logs(s3, result)
    assert "local-twin: dropped --conf spark.executor.memory=4g" in stderr


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["--object-root", "file:///elsewhere/"], ["--object-root", "file:///elsewhere/"]),
        (["--object-root=file:///elsewhere/"], ["--object-root=file:///elsewhere/"]),
        (["--object-root", "s3://"], ["--object-root", "STAGE"]),
    ],
)
def test_object_root_is_added_only_when_missing(
    s3: Any, tmp_path: Path, fake: dict[str, Path], given: list[str], expected: list[str]
) -> None:
    base = sample_job(s3)
    result = fake_runner(s3, tmp_path, fake).run(dataclasses.replace(base, arguments=base.arguments + given))
    assert result.succeeded, result.error
    stage = f"file://{tmp_path / 'work' / 'r1' / 'stage'}/"
    argv = recorded_argv(fake)
    assert argv[-len(expected) :] == [stage if e == "STAGE" else e for e in expected]
    assert sum(a.startswith("--object-root") for a in argv) == 1


def test_publish_skips_markers_and_replaces_the_run_output(
    s3: Any, tmp_path: Path, fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "write")
    # An earlier attempt of the same run, and a neighbour whose prefix starts the same way.
    s3.put_object(Bucket="outputs", Key="sales-daily/run_id=r1/order_date=2024-05-01/part-old.parquet", Body=b"x")
    s3.put_object(Bucket="outputs", Key="sales-daily/run_id=r1/_SUCCESS", Body=b"")
    s3.put_object(Bucket="outputs", Key="sales-daily/run_id=r10/_SUCCESS", Body=b"")
    result = fake_runner(s3, tmp_path, fake).run(sample_job(s3))
    assert result.succeeded, result.error
    assert result.exit_code == 0
    expected = [
        "sales-daily/run_id=r1/_metrics.json",
        "sales-daily/run_id=r1/order_date=2024-06-01/part-00000-abc.c000.snappy.parquet",
        "sales-daily/run_id=r1/order_date=2024-06-02/part-00001-abc.c000.snappy.parquet",
    ]
    assert result.published == [f"s3://outputs/{k}" for k in expected]
    assert keys(s3, "outputs") == [*expected, "sales-daily/run_id=r10/_SUCCESS"]
    assert s3.head_object(Bucket="outputs", Key=expected[0])["ContentType"] == "application/json"
    assert s3.head_object(Bucket="outputs", Key=expected[1])["ContentType"] == "application/vnd.apache.parquet"
    stdout, stderr = assert_driver_logs(s3, result)
    assert stdout == "fake driver stdout\n"
    assert "published 3 objects to s3://outputs/sales-daily/run_id=r1/; removed 2 objects" in stderr
    assert "not published: ._SUCCESS.crc, _SUCCESS, _temporary/0/leftover" in stderr
    assert not (tmp_path / "work" / "r1").exists()  # cleaned without AUTOPILOT_TWIN_KEEP_WORKDIR=1


@pytest.mark.parametrize(
    ("mode", "exit_code", "error"),
    [
        ("fail", 1, "x: error: boom"),
        ("crash", 3, "ValueError: bad input"),
        ("silent", 7, "spark-submit exited with code 7 (see the driver log)"),
    ],
)
def test_failed_job_publishes_nothing_and_reports_its_error_line(
    s3: Any,
    tmp_path: Path,
    fake: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    exit_code: int,
    error: str,
) -> None:
    monkeypatch.setenv("FAKE_MODE", mode)
    result = fake_runner(s3, tmp_path, fake).run(sample_job(s3))
    assert (result.succeeded, result.exit_code, result.error) == (False, exit_code, error)
    assert result.published == []
    assert keys(s3, "outputs") == []
    stdout, stderr = assert_driver_logs(s3, result)
    assert stdout == "fake driver stdout\n"
    assert error in stderr


@pytest.mark.parametrize("key", ["../escape.csv", "/abs.csv", "sales/../../escape.csv"])
def test_unsafe_manifest_key_is_refused_with_the_key_named(
    s3: Any, tmp_path: Path, fake: dict[str, Path], key: str
) -> None:
    objects = [ManifestObject("landing", "sales/2024-06-01.csv", 1), ManifestObject("landing", key, 1)]
    manifest = InputManifest(pipeline="sales-daily", run_id="r1", objects=objects).write(s3, "artifacts")
    job = SparkJob("r1", ENTRY_POINT, workflow_arguments(manifest), log_uri=LOG_URI, application_id=APP_ID)
    result = fake_runner(s3, tmp_path, fake).run(job)
    assert not result.succeeded
    assert result.exit_code is None
    assert repr(key) in (result.error or "") and "cannot be staged safely" in (result.error or "")
    assert not fake["record"].exists()  # spark-submit never ran
    assert not (tmp_path / "work" / "escape.csv").exists() and not (tmp_path / "escape.csv").exists()
    _, stderr = assert_driver_logs(s3, result)
    assert f"local-twin: error: {result.error}" in stderr


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            {"entry_point": "s3://artifacts/jobs/missing.py"},
            "entry point s3://artifacts/jobs/missing.py: no such object",
        ),
        ({"entry_point": "/nonexistent/job.py"}, "entry point /nonexistent/job.py: no such file"),
        ({"arguments": ["--manifest", "s3://artifacts/manifests/none.json"]}, "--manifest s3://artifacts/manifests/"),
        ({"arguments": ["--settings", "s3://artifacts/conf/none.json"]}, "argument --settings s3://artifacts/conf/"),
        ({"arguments": ["--output", "s3://Not_A_Bucket/x"]}, "does not name a valid S3 bucket"),
        ({"spark_submit_parameters": "--conf spark.x"}, "spark_submit_parameters: --conf 'spark.x' is not key=value"),
    ],
)
def test_staging_errors_fail_the_run_with_one_line(
    s3: Any, tmp_path: Path, fake: dict[str, Path], change: dict[str, Any], error: str
) -> None:
    result = fake_runner(s3, tmp_path, fake).run(sample_job(s3, **change))
    assert not result.succeeded and result.exit_code is None
    assert error in (result.error or "") and "\n" not in (result.error or "")
    assert not fake["record"].exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _assert_group_killed(fake: dict[str, Path]) -> None:
    child = int(fake["child"].read_text())
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the fake's child process outlived the run"


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists()


def test_timeout_kills_the_process_group(
    s3: Any, tmp_path: Path, fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "sleep")
    result = fake_runner(s3, tmp_path, fake).run(sample_job(s3, timeout_seconds=2))
    assert (result.succeeded, result.exit_code, result.error) == (False, None, "timed out after 2 s")
    assert 2 <= result.duration_seconds < 4
    _assert_group_killed(fake)
    assert_driver_logs(s3, result)


def test_cancel_kills_the_process_group(
    s3: Any, tmp_path: Path, fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "sleep")
    runner, job, cancel = fake_runner(s3, tmp_path, fake), sample_job(s3), threading.Event()
    results: list[SparkResult] = []
    worker = threading.Thread(target=lambda: results.append(runner.run(job, cancel)))
    worker.start()
    _wait_for(fake["child"])  # the fake is running
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - cancelled_at < 2
    (result,) = results
    assert (result.succeeded, result.exit_code, result.error) == (False, None, "cancelled")
    _assert_group_killed(fake)
    _, stderr = assert_driver_logs(s3, result)
    assert "local-twin: error: cancelled" in stderr


def test_cancel_before_submit(s3: Any, tmp_path: Path, fake: dict[str, Path]) -> None:
    cancel = threading.Event()
    cancel.set()
    result = fake_runner(s3, tmp_path, fake).run(sample_job(s3), cancel)
    assert (result.succeeded, result.exit_code, result.error) == (False, None, "cancelled")
    assert not fake["record"].exists()


def test_missing_java_fails_with_one_line(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_java = tmp_path / "bin"
    no_java.mkdir()
    monkeypatch.setenv("PATH", str(no_java))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    result = SparkRunner(s3, workdir=tmp_path / "work").run(sample_job(s3))  # pyspark's spark-submit
    assert not result.succeeded and result.exit_code is None
    assert result.error == (
        "java not found (no JAVA_HOME, no java on PATH): the local twin runs Spark; "
        "install a JDK 17+, e.g. apt-get install openjdk-17-jre-headless"
    )
    _, stderr = assert_driver_logs(s3, result)
    assert result.error in stderr


def test_invalid_job_is_a_value_error(s3: Any, tmp_path: Path) -> None:
    runner = SparkRunner(s3, workdir=tmp_path)
    with pytest.raises(ValueError, match="job_run_id"):
        runner.run(SparkJob("../r1", ENTRY_POINT, []))
    with pytest.raises(ValueError, match="log_layout"):
        runner.run(SparkJob("r1", ENTRY_POINT, [], log_uri=LOG_URI, log_layout="yarn"))


# ---------------------------------------------------------------------------------------------- real Spark


@pytest.fixture
def spark_runner(s3: Any, tmp_path: Path) -> SparkRunner:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark tests need Java 17+")
    return SparkRunner(s3, workdir=tmp_path / "work", driver_memory="1g", cores=2)


@pytest.mark.spark
def test_sales_etl_runs_and_publishes(s3: Any, spark_runner: SparkRunner) -> None:
    job = sample_job(
        s3,
        spark_submit_parameters="--conf spark.executor.cores=4 --conf spark.executor.memory=16g "
        "--conf spark.dynamicAllocation.enabled=true --conf spark.sql.session.timeZone=UTC",
    )
    result = spark_runner.run(job)
    assert result.succeeded, result.error
    assert result.exit_code == 0 and result.error is None

    published = keys(s3, "outputs")
    assert [f"s3://outputs/{k}" for k in published] == sorted(result.published)
    assert not any(k.endswith(".crc") or k.rsplit("/", 1)[-1] == "_SUCCESS" for k in published)
    parquet = [k for k in published if k.endswith(".parquet")]
    partitions = sorted({k.split("/")[2] for k in parquet})
    assert partitions == [f"order_date=2024-0{d}" for d in ("5-31", "6-01", "6-02", "6-03")]
    assert all(k.startswith("sales-daily/run_id=r1/order_date=") for k in parquet)
    assert set(published) == {*parquet, "sales-daily/run_id=r1/_metrics.json"}
    metrics = json.loads(s3.get_object(Bucket="outputs", Key="sales-daily/run_id=r1/_metrics.json")["Body"].read())
    assert (metrics["run_id"], metrics["rows_in"], metrics["rows_out"]) == ("r1", 158, 144)
    assert metrics["partitions"] == partitions
    head = s3.head_object(Bucket="outputs", Key=parquet[0])
    assert head["ContentType"] == "application/vnd.apache.parquet"
    assert s3.get_object(Bucket="outputs", Key=parquet[0])["Body"].read(4) == b"PAR1"

    stdout, stderr = assert_driver_logs(s3, result)
    assert "sales_etl: wrote 144 rows in 4 partitions" in stdout
    assert "local-twin: staged 3 of 3 manifest objects" in stderr
    assert "local-twin: dropped --conf spark.executor.memory=16g" in stderr
    print(f"spark happy path: {result.duration_seconds:.1f} s")


@pytest.mark.spark
def test_sales_etl_missing_object_fails_with_the_jobs_error(s3: Any, spark_runner: SparkRunner) -> None:
    manifest = write_manifest(s3, ["sales/2024-06-01.csv", "sales/missing day.csv"])
    job = SparkJob("r1", ENTRY_POINT, workflow_arguments(manifest), log_uri=LOG_URI, application_id=APP_ID)
    result = spark_runner.run(job)
    assert not result.succeeded
    assert result.exit_code == 1
    error = result.error or ""
    assert error.startswith("sales_etl: error: --manifest: input object not found: bucket='landing' ")
    assert "key='sales/missing day.csv'" in error and "\n" not in error
    assert result.published == [] and keys(s3, "outputs") == []
    stdout, stderr = assert_driver_logs(s3, result)
    assert "left for the job to report: s3://landing/sales/missing day.csv" in stderr
    assert error in stdout  # PySpark: the Python driver's stderr is merged into the driver's stdout
    print(f"spark failing run: {result.duration_seconds:.1f} s")


@pytest.mark.parametrize(
    ("banner", "problem"),
    [
        ('openjdk version "17.0.15" 2025-04-15', None),
        ('openjdk version "21" 2023-09-19', None),
        ('openjdk version "11.0.2" 2019-01-15', "is Java 11.0.2; Spark 4 needs 17 or newer"),
        ('java version "1.8.0_392"', "is Java 1.8.0_392; Spark 4 needs 17 or newer"),
    ],
)
def test_java_problem_names_the_version_and_what_to_install(tmp_path: Path, banner: str, problem: str | None) -> None:
    from local.spark_runner import java_problem

    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    fake.chmod(0o755)
    result = java_problem({"JAVA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result and "openjdk-17" in result


def test_java_problem_when_java_is_missing(tmp_path: Path) -> None:
    from local.spark_runner import java_problem

    result = java_problem({"PATH": str(tmp_path)})
    assert result is not None and result.startswith("java not found")
