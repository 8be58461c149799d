"""local/app_ui.py: the twin's Spark UI links through the boto3 APIs (EMR Serverless GetDashboardForJobRun; EMR's
persistent application UI for an EMR on EKS job run), and the pages they point at. No Spark, no deployment: job runs
complete at once."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.twin import Twin

ROLE = "arn:aws:iam::123456789012:role/job"
PROVIDER = {"id": "eks-main", "type": "EKS", "info": {"eksInfo": {"namespace": "emr"}}}
DRIVER = {"sparkSubmitJobDriver": {"entryPoint": "s3://b/app.py", "entryPointArguments": ["--day", "1"]}}


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    started = Twin(workdir=tmp_path_factory.mktemp("app-ui"), spark=False, time_scale=0.05).start()
    yield started
    started.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the twin's own http:// page)
            return int(response.status), response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def _error(call: Any, **params: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call(**params)
    return raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"]


def test_a_serverless_dashboard_link_answers_with_the_job_run_until_it_expires(twin: Twin) -> None:
    api = twin.client("emr-serverless")
    app = api.create_application(name="ui", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
    driver = {"sparkSubmit": {"entryPoint": "s3://b/sales_etl.py", "entryPointArguments": ["--run-id", "r1"]}}
    run = twin.emr_serverless.start_job_run({"ApplicationId": app, "ExecutionRoleArn": ROLE, "JobDriver": driver})
    assert twin.emr_serverless.wait(app, run["JobRunId"], 10)
    url = api.get_dashboard_for_job_run(applicationId=app, jobRunId=run["JobRunId"])["url"]
    status, page = _get(url)
    assert status == 200 and run["JobRunId"] in page and "SUCCESS" in page and "s3://b/sales_etl.py" in page
    token = url.rstrip("/").rsplit("/", 1)[-1]
    twin.app_uis.server._links[token].expires_at -= 3600 * twin.time_scale  # an hour later, on the twin's clock
    assert _get(url)[0] == 403
    assert _get(url.replace(token, "not-a-token"))[0] == 404
    missing = _error(api.get_dashboard_for_job_run, applicationId=app, jobRunId="00nope")
    assert missing[0] == "ResourceNotFoundException"
    attempt = _error(api.get_dashboard_for_job_run, applicationId=app, jobRunId=run["JobRunId"], attempt=2)
    assert attempt == ("ValidationException", f"Job run {run['JobRunId']} has no attempt 2 (attempts: 1-1)")
    # A job run not started yet (StartJobRun called directly reaches moto's record; here as EMR has it scheduled)
    queued = api.start_job_run(applicationId=app, executionRoleArn=ROLE, jobDriver=driver)["jobRunId"]
    twin.emr_serverless.backend.get_job_run(app, queued).state = "SCHEDULED"
    code, message = _error(api.get_dashboard_for_job_run, applicationId=app, jobRunId=queued)
    assert code == "ValidationException" and "its application UI is not available yet" in message


def test_a_persistent_ui_of_an_eks_job_run_is_ready_after_its_setup(twin: Twin) -> None:
    containers, emr = twin.client("emr-containers"), twin.client("emr")
    vc = containers.create_virtual_cluster(name="ui-vc", containerProvider=PROVIDER)
    run = twin.emr_containers.start_job_run({"name": "r2", "virtualClusterId": vc["id"], "executionRoleArn": ROLE,
                                             "releaseLabel": "emr-7.5.0-latest", "jobDriver": DRIVER})  # fmt: skip
    created = emr.create_persistent_app_ui(TargetResourceArn=vc["arn"], EMRContainersConfig={"JobRunId": run["id"]})
    ui_id = created["PersistentAppUIId"]
    again = emr.create_persistent_app_ui(TargetResourceArn=vc["arn"], EMRContainersConfig={"JobRunId": run["id"]})
    assert again["PersistentAppUIId"] == ui_id  # one UI per target and job run
    assert emr.describe_persistent_app_ui(PersistentAppUIId=ui_id)["PersistentAppUI"]["PersistentAppUIStatus"] in (
        "CREATING", "ATTACHED")  # fmt: skip
    twin.app_uis.persistent[ui_id].ready_at = time.monotonic() + 60  # still setting up, however loaded the machine
    first = emr.get_persistent_app_ui_presigned_url(PersistentAppUIId=ui_id, PersistentAppUIType="SHS")
    assert first["PresignedURLReady"] is False and "PresignedURL" not in first
    twin.app_uis.persistent[ui_id].ready_at = 0.0  # set up
    ready = emr.get_persistent_app_ui_presigned_url(PersistentAppUIId=ui_id, PersistentAppUIType="SHS")
    assert ready["PresignedURLReady"] is True
    status, page = _get(ready["PresignedURL"])
    assert status == 200 and run["id"] in page and vc["id"] in page
    assert emr.describe_persistent_app_ui(PersistentAppUIId=ui_id)["PersistentAppUI"]["PersistentAppUIStatus"] == (
        "ATTACHED")  # fmt: skip
    tez = _error(emr.get_persistent_app_ui_presigned_url, PersistentAppUIId=ui_id, PersistentAppUIType="TEZ")
    assert tez[0] == "InvalidRequestException"
    bad = _error(emr.get_persistent_app_ui_presigned_url, PersistentAppUIId=ui_id, PersistentAppUIType="SPARK")
    assert bad[0] == "ValidationException" and "[SHS, TEZ, YTS]" in bad[1]
    no_job = _error(emr.create_persistent_app_ui, TargetResourceArn=vc["arn"])
    assert no_job == ("InvalidRequestException", "an EMR on EKS target needs EMRContainersConfig.JobRunId")
    other = _error(emr.create_persistent_app_ui, TargetResourceArn=vc["arn"], EMRContainersConfig={"JobRunId": "x1"})
    assert other[0] == "InvalidRequestException" and "x1" in other[1]
    unknown = _error(emr.describe_persistent_app_ui, PersistentAppUIId="p-0000000000404")
    assert unknown == ("InvalidRequestException", "Persistent application UI p-0000000000404 does not exist")
    cluster = _error(emr.create_persistent_app_ui, TargetResourceArn=f"arn:aws:elasticmapreduce:{twin.region}:"
                     f"{twin.account}:cluster/j-NOPE")  # fmt: skip
    assert cluster == ("InvalidRequestException", "Cluster id 'j-NOPE' is not valid.")
    assert Path(twin.workdir).is_dir()
