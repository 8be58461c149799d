"""Application UIs of the twin's EMR job runs and clusters: the links EMR Serverless' GetDashboardForJobRun and EMR's
persistent application UI (CreatePersistentAppUI, DescribePersistentAppUI, GetPersistentAppUIPresignedURL) hand out,
and the pages they point at.

The twin runs local Spark with its UI off, so it starts no Spark UI or history server: a link points at the twin's
own small HTTP server (127.0.0.1, a port of its own), which answers with a page about that job run (or that cluster's
steps) as the twin's model has it when the page is fetched: ids, state, state details, entry point and arguments,
times, where its logs are. A link expires as AWS's do: GetDashboardForJobRun's "The URL is valid for one hour after you
generate it" (botocore emr-serverless 2021-07-13, GetDashboardForJobRun), on the twin's clock (`time_scale`).
What the twin decides where AWS documents nothing: docs/twin/fidelity.md ("Spark UI links").
"""

from __future__ import annotations

import html
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from local.faults import TwinClientError

if TYPE_CHECKING:
    from local.twin import Twin

LOG = logging.getLogger("twin.app-ui")
LINK_SECONDS = 3600.0  # GetDashboardForJobRun: "The URL is valid for one hour after you generate it"
# A new persistent application UI is not ready at once (GetPersistentAppUIPresignedURL answers PresignedURLReady
# false meanwhile): the twin makes it ready this long (on its clock) after CreatePersistentAppUI.
PERSISTENT_UI_SETUP_SECONDS = 5.0
# botocore emr 2009-03-31: PersistentAppUIType enum. The twin serves the Spark History Server (SHS) only; TEZ and YTS
# (Tez UI, YARN timeline) have nothing behind them in the twin, so it refuses them rather than hand out a dead link.
PERSISTENT_UI_TYPES = ("SHS", "TEZ", "YTS")
APP_UI_ACTIONS = ("CreatePersistentAppUI", "DescribePersistentAppUI", "GetPersistentAppUIPresignedURL")
NOT_YET_STATES = ("SUBMITTED", "PENDING", "SCHEDULED", "QUEUED")  # EMR Serverless: no application has started yet

Rows = list[tuple[str, str]]


@dataclass
class _Link:
    title: str
    page: Callable[[], list[Rows]]  # the page's sections, read when it is fetched
    expires_at: float  # time.monotonic()


@dataclass
class PersistentAppUi:
    """One persistent application UI: its target (an EMR cluster, or an EMR on EKS virtual cluster and job run)."""

    id: str
    target_arn: str
    job_run_id: str | None
    created: datetime
    ready_at: float  # time.monotonic()
    tags: list[dict[str, str]] = field(default_factory=list)


class AppUiServer:
    """The twin's application UI pages: `issue()` a link, the server answers it until it expires."""

    def __init__(self, host: str = "127.0.0.1", time_scale: float = 1.0) -> None:
        self.host = host
        self.time_scale = time_scale
        self._links: dict[str, _Link] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""

    def start(self) -> AppUiServer:
        server = ThreadingHTTPServer((self.host, 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self.endpoint = f"http://{self.host}:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, name="twin-app-ui", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def issue(self, title: str, page: Callable[[], list[Rows]], kind: str) -> str:
        """A new link to `page`, valid for an hour on the twin's clock."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._links[token] = _Link(title, page, time.monotonic() + LINK_SECONDS * self.time_scale)
        return f"{self.endpoint}/{kind}/{token}/"

    def render(self, path: str) -> tuple[int, str]:
        """(status, HTML) for a GET of `path`."""
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        token = parts[1] if len(parts) >= 2 else ""
        with self._lock:
            link = self._links.get(token)
        if link is None:
            return 404, _html("Not found", [[("error", "no such application UI link")]])
        if time.monotonic() >= link.expires_at:
            return 403, _html("Link expired", [[("error", "this link has expired; generate a new one")]])
        try:
            sections = link.page()
        except TwinClientError as error:
            return 404, _html(link.title, [[("error", error.message)]])
        return 200, _html(link.title, sections)


def _html(title: str, sections: list[Rows]) -> str:
    body = "".join(
        "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>"
        for rows in sections
    )  # fmt: skip
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>The EMR Autopilot twin's application UI (the twin runs local Spark "
        f"without its web UI; this page is the twin's record of the run).</p>{body}</body></html>"
    )


def _handler(server: AppUiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            status, page = server.render(self.path)
            data = page.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            LOG.debug("app UI: " + format, *args)

    return Handler


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return "-" if value is None or value == "" else str(value)


def _rows(shape: dict[str, Any], keys: tuple[tuple[str, str], ...]) -> Rows:
    return [(label, _text(shape.get(key))) for key, label in keys if shape.get(key) not in (None, "", [], {})]


_SPARK_SUBMIT = ("entryPoint", "EntryPoint", "entryPointArguments", "EntryPointArguments")


def _spark_submit_rows(job_driver: Any) -> Rows:
    driver = job_driver if isinstance(job_driver, dict) else {}
    spark = driver.get("sparkSubmit") or driver.get("SparkSubmit") or driver.get("sparkSubmitJobDriver") or {}
    out: Rows = []
    for key in _SPARK_SUBMIT:
        if spark.get(key):
            out.append(("arguments" if "rguments" in key else "entry point", _text(spark[key])))
    return out


# ---------------------------------------------------------------------------------------------------- the APIs


class AppUis:
    """The application UI APIs of the twin's EMR services, for EMR Serverless job runs, EMR clusters and EMR on EKS
    job runs."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin
        self.server = AppUiServer(twin.host, twin.time_scale)
        self.persistent: dict[str, PersistentAppUi] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------- EMR Serverless

    def dashboard_for_job_run(self, application_id: str, job_run_id: str, attempt: Any = None) -> dict[str, Any]:
        """GetDashboardForJobRun: `{"url": ...}` for a job run of the twin (ResourceNotFoundException otherwise)."""
        shape = self._serverless_run(application_id, job_run_id)
        if attempt is not None:
            attempts = int(shape.get("Attempt") or 1)
            try:
                wanted = int(attempt)
            except (TypeError, ValueError):
                raise TwinClientError("ValidationException", f"attempt {attempt!r} is not a number") from None
            if not 1 <= wanted <= attempts:
                raise TwinClientError(
                    "ValidationException", f"Job run {job_run_id} has no attempt {wanted} (attempts: 1-{attempts})"
                )
        if shape["State"] in NOT_YET_STATES:
            raise TwinClientError(
                "ValidationException",
                f"Job run {job_run_id} is in state {shape['State']}: its application UI is not available yet",
            )

        def page() -> list[Rows]:
            now = self._serverless_run(application_id, job_run_id)
            keys = (("JobRunId", "job run"), ("ApplicationId", "application"), ("Name", "name"),
                    ("State", "state"), ("StateDetails", "state details"), ("ReleaseLabel", "release"),
                    ("TotalExecutionDurationSeconds", "duration (s)"))  # fmt: skip
            return [_rows(now, keys) + [("attempt", _text(attempt or now.get("Attempt") or 1))],
                    _spark_submit_rows(now.get("JobDriver"))]  # fmt: skip

        title = f"Spark UI: EMR Serverless job run {job_run_id}"
        return {"url": self.server.issue(title, page, "sparkui")}

    def _serverless_run(self, application_id: str, job_run_id: str) -> dict[str, Any]:
        """The job run as the twin's model has it (started by Step Functions), else moto's record (StartJobRun called
        directly: moto keeps it SUBMITTED)."""
        serverless = self.twin.emr_serverless
        try:
            return serverless.describe(application_id, job_run_id)
        except TwinClientError:
            pass
        try:
            run = serverless.backend.get_job_run(application_id, job_run_id)
        except Exception:  # moto's ResourceNotFoundException (application or job run)
            raise TwinClientError("ResourceNotFoundException", f"Job run {job_run_id} does not exist") from None
        return {
            "ApplicationId": application_id, "JobRunId": run.id, "Name": run.name, "State": run.state,
            "StateDetails": run.state_details, "ReleaseLabel": run.release_label, "JobDriver": run.job_driver,
        }  # fmt: skip

    # -------------------------------------------------------------------------------- EMR (on EC2, on EKS)

    def handle_api(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """One of `APP_UI_ACTIONS` of the `emr` API (the JSON body)."""
        if action == "CreatePersistentAppUI":
            return self._create(params)
        ui = self._ui(params)
        if action == "DescribePersistentAppUI":
            return {"PersistentAppUI": self._describe(ui)}
        return self._presigned_url(ui, params)

    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        target = str(params.get("TargetResourceArn") or "")
        if not target:
            raise TwinClientError("ValidationException", "1 validation error detected: TargetResourceArn is required")
        job_run_id = (params.get("EMRContainersConfig") or {}).get("JobRunId")
        self._target_page(target, job_run_id)  # the target exists (and an EKS target names its job run)
        with self._lock:
            for ui in self.persistent.values():  # one UI per target (and job run): a second create returns it
                if ui.target_arn == target and ui.job_run_id == job_run_id:
                    return {"PersistentAppUIId": ui.id, "RuntimeRoleEnabledCluster": False}
            ui_id = f"p-{next(self._ids):013d}"
            ready_at = time.monotonic() + PERSISTENT_UI_SETUP_SECONDS * self.twin.time_scale
            self.persistent[ui_id] = PersistentAppUi(
                ui_id, target, job_run_id, datetime.now(UTC), ready_at, list(params.get("Tags") or [])
            )
        return {"PersistentAppUIId": ui_id, "RuntimeRoleEnabledCluster": False}

    def _ui(self, params: dict[str, Any]) -> PersistentAppUi:
        ui_id = str(params.get("PersistentAppUIId") or "")
        if not ui_id:
            raise TwinClientError("ValidationException", "1 validation error detected: PersistentAppUIId is required")
        with self._lock:
            ui = self.persistent.get(ui_id)
        if ui is None:
            raise TwinClientError("InvalidRequestException", f"Persistent application UI {ui_id} does not exist")
        return ui

    def _describe(self, ui: PersistentAppUi) -> dict[str, Any]:
        ready = time.monotonic() >= ui.ready_at
        return {
            "PersistentAppUIId": ui.id,
            "PersistentAppUITypeList": ["SHS"],
            "PersistentAppUIStatus": "ATTACHED" if ready else "CREATING",
            "CreationTime": ui.created.timestamp(),
            "LastModifiedTime": ui.created.timestamp(),
            "Tags": ui.tags,
        }

    def _presigned_url(self, ui: PersistentAppUi, params: dict[str, Any]) -> dict[str, Any]:
        kind = params.get("PersistentAppUIType")
        if kind is not None and kind not in PERSISTENT_UI_TYPES:
            raise TwinClientError(
                "ValidationException",
                f"1 validation error detected: Value '{kind}' at 'persistentAppUIType' failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{', '.join(PERSISTENT_UI_TYPES)}]",
            )
        if kind not in (None, "SHS"):
            raise TwinClientError("InvalidRequestException", f"the twin serves SHS only, not {kind}")
        if time.monotonic() < ui.ready_at:
            return {"PresignedURLReady": False}
        title, page = self._target_page(ui.target_arn, ui.job_run_id)
        return {"PresignedURLReady": True, "PresignedURL": self.server.issue(title, page, "shs")}

    def _target_page(self, target: str, job_run_id: str | None) -> tuple[str, Callable[[], list[Rows]]]:
        """(title, page) of a persistent UI's target; InvalidRequestException when it does not exist."""
        resource = target.split(":", 5)[-1] if target.startswith("arn:") and target.count(":") >= 5 else ""
        service = target.split(":")[2] if resource else ""
        if service == "elasticmapreduce" and resource.startswith("cluster/"):
            if job_run_id:
                raise TwinClientError("InvalidRequestException", "EMRContainersConfig is for EMR on EKS targets only")
            return self._cluster_page(resource.removeprefix("cluster/"))
        if service == "emr-containers" and resource.startswith("/virtualclusters/"):
            if not job_run_id:
                raise TwinClientError(
                    "InvalidRequestException", "an EMR on EKS target needs EMRContainersConfig.JobRunId"
                )
            return self._containers_page(resource.removeprefix("/virtualclusters/"), job_run_id)
        raise TwinClientError(
            "InvalidRequestException", f"TargetResourceArn {target!r} is neither an EMR cluster nor a virtual cluster"
        )

    def _cluster_page(self, cluster_id: str) -> tuple[str, Callable[[], list[Rows]]]:
        emr = self.twin.emr_ec2
        emr.describe_cluster(cluster_id)  # InvalidRequestException when there is no such cluster

        def page() -> list[Rows]:
            cluster = emr.describe_cluster(cluster_id)
            state = cluster.get("Status", {}).get("State")
            sections = [[("cluster", cluster_id), ("name", _text(cluster.get("Name"))), ("state", _text(state)),
                         ("release", _text(cluster.get("ReleaseLabel")))]]  # fmt: skip
            for step in emr.list_steps({"ClusterId": cluster_id}).get("Steps", []):
                status = step.get("Status", {})
                config = step.get("Config", {})
                sections.append(
                    [("step", f"{step.get('Id')} {step.get('Name')}"), ("state", _text(status.get("State"))),
                     ("command", _text(config.get("Args"))),
                     ("failure", _text((status.get("FailureDetails") or {}).get("Message")))]
                )  # fmt: skip
            return sections

        return f"Spark History Server: EMR cluster {cluster_id}", page

    def _containers_page(self, virtual_cluster_id: str, job_run_id: str) -> tuple[str, Callable[[], list[Rows]]]:
        eks = self.twin.emr_containers
        try:
            eks.describe_job_run(virtual_cluster_id, job_run_id)
        except TwinClientError as error:  # the emr API's error for a target that does not exist
            raise TwinClientError("InvalidRequestException", error.message) from None

        def page() -> list[Rows]:
            run = eks.describe_job_run(virtual_cluster_id, job_run_id)
            keys = (("id", "job run"), ("virtualClusterId", "virtual cluster"), ("name", "name"), ("state", "state"),
                    ("stateDetails", "state details"), ("failureReason", "failure"), ("releaseLabel", "release"),
                    ("createdAt", "created"), ("finishedAt", "finished"))  # fmt: skip
            return [_rows(run, keys), _spark_submit_rows(run.get("jobDriver"))]

        return f"Spark History Server: EMR on EKS job run {job_run_id}", page
