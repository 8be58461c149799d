"""The pipelines' settings parameters as the shared functions read them (autopilot_common.pipeline_settings): one
parameter per pipeline, cached for a max age, a missing one meaning "not deployed", listing only by a catalog."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from autopilot_common.admission import Caps, Limit
from autopilot_common.pipeline_settings import (
    CAPS,
    PipelineSection,
    PipelineSettingsCatalog,
    PipelineSettingsError,
    PipelineSettingsStore,
    settings_parameter_name,
    settings_value,
)

DEPLOYMENT = "autopilot-test"


class CountingSsm:
    """moto's SSM client, counting the calls made through it."""

    def __init__(self, region: str) -> None:
        self.client = boto3.client("ssm", region_name=region)
        self.calls: list[str] = []

    def get_parameter(self, **kwargs: Any) -> Any:
        self.calls.append("GetParameter")
        return self.client.get_parameter(**kwargs)

    def get_parameters_by_path(self, **kwargs: Any) -> Any:
        self.calls.append("GetParametersByPath")
        assert kwargs["Recursive"] is False and kwargs["MaxResults"] <= 10
        return self.client.get_parameters_by_path(**kwargs)

    def put(self, pipeline: str, sections: dict[str, Any]) -> None:
        self.client.put_parameter(
            Name=settings_parameter_name(DEPLOYMENT, pipeline), Value=settings_value(sections), Type="String",
            Overwrite=True,
        )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ssm(moto: str) -> CountingSsm:
    return CountingSsm(moto)


def test_a_pipeline_s_settings_are_read_once_per_max_age_and_a_deploy_is_seen_after_it(ssm: CountingSsm) -> None:
    # Given a deployed pipeline, and a store whose cache lasts 60 s
    ssm.put("sales", {"caps": {"runs": 2}})
    clock = Clock()
    store = PipelineSettingsStore(lambda: ssm, DEPLOYMENT, max_age_seconds=60, clock=clock)
    # When it is read twice within the max age
    assert store.get("sales") == {"caps": {"runs": 2}}
    assert store.get("sales") == {"caps": {"runs": 2}}
    # Then SSM was asked once; a pipeline-stack deploy changing the parameter is seen only after the max age
    assert ssm.calls == ["GetParameter"]
    ssm.put("sales", {"caps": {"runs": 5}})
    clock.now += 59
    assert store.get("sales") == {"caps": {"runs": 2}}
    clock.now += 1
    assert store.get("sales") == {"caps": {"runs": 5}} and ssm.calls == ["GetParameter"] * 2


def test_a_missing_parameter_is_a_pipeline_not_deployed_and_is_cached_too(ssm: CountingSsm) -> None:
    clock = Clock()
    store = PipelineSettingsStore(lambda: ssm, DEPLOYMENT, clock=clock)
    assert store.get("gone") is None and store.get("gone") is None
    assert ssm.calls == ["GetParameter"]
    caps = Caps.from_env({"ADMISSION_CAPS": json.dumps({"deployment": {"runs": 3}})}, store)
    assert caps.pipeline("gone") == Limit() and caps.deployment == Limit(runs=3)  # uncapped, as an unlisted one was
    assert "" not in caps.pipelines and "Not/A name" not in caps.pipelines  # impossible names: SSM is not asked
    assert ssm.calls == ["GetParameter"]


def test_a_catalog_lists_every_pipeline_in_pages_of_ten_and_fills_the_cache(ssm: CountingSsm) -> None:
    # Given 23 pipelines, 8 of them capped, and a parameter of another deployment beside them
    for i in range(23):
        ssm.put(f"p{i:02d}", {"guardrail": {"runtime": "emr-ec2"}, **({"caps": {"runs": i}} if i % 3 == 0 else {})})
    ssm.client.put_parameter(Name="/autopilot-other/pipelines/p00", Value="{}", Type="String")
    catalog = PipelineSettingsCatalog(lambda: ssm, DEPLOYMENT, clock=Clock())
    caps = PipelineSection(catalog, CAPS, lambda _name, raw: Limit.from_json(raw))
    # When every pipeline's caps are read
    listed = dict(caps)
    # Then one paginated listing found them all, and no pipeline was read one by one
    assert len(catalog.names()) == 23 and sorted(listed) == [f"p{i:02d}" for i in range(0, 23, 3)]
    assert listed["p21"] == Limit(runs=21)
    assert ssm.calls == ["GetParametersByPath"] * 3
    assert caps["p03"] == Limit(runs=3) and "p04" not in caps and ssm.calls == ["GetParametersByPath"] * 3


def test_a_store_reads_by_name_only_and_caps_looked_up_by_name_may_have_budgets(ssm: CountingSsm) -> None:
    """The admission and scaler functions may not list parameters (their roles are not granted it)."""
    store = PipelineSettingsStore(lambda: ssm, DEPLOYMENT)
    caps = Caps.from_env({}, store)
    with pytest.raises(PipelineSettingsError, match="by name only"):
        dict(caps.pipelines)
    assert caps.any_budget  # cannot know without a listing: a budget notifier is ready
    assert not Caps(pipelines={"p": Limit(runs=1)}).any_budget and ssm.calls == []


def test_a_malformed_parameter_names_itself(ssm: CountingSsm) -> None:
    ssm.client.put_parameter(Name=settings_parameter_name(DEPLOYMENT, "bad"), Value="not json", Type="String")
    with pytest.raises(PipelineSettingsError, match="SSM parameter /autopilot-test/pipelines/bad is not valid JSON"):
        PipelineSettingsStore(lambda: ssm, DEPLOYMENT).get("bad")
    ssm.put("odd", {"caps": {"over_budget": "maybe"}})
    caps = Caps.from_env({}, PipelineSettingsStore(lambda: ssm, DEPLOYMENT))
    with pytest.raises(PipelineSettingsError, match="pipelines/odd: section 'caps': over_budget: got 'maybe'"):
        caps.pipeline("odd")


def test_the_max_age_comes_from_the_environment() -> None:
    env = {"DEPLOYMENT": DEPLOYMENT, "PIPELINE_SETTINGS_MAX_AGE_SECONDS": "2"}
    store = PipelineSettingsStore.from_env(env)
    assert (store.deployment, store.max_age_seconds) == (DEPLOYMENT, 2)
    assert PipelineSettingsStore.from_env({"DEPLOYMENT": DEPLOYMENT}).max_age_seconds == 60
    assert isinstance(PipelineSettingsCatalog.from_env(env), PipelineSettingsCatalog)
