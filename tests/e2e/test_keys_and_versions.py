"""Issue 13.2 and 13.6 end to end: odd keys under both encodings of S3's EventBridge events, and overwrites of one
key on the versioned landing bucket. Invariant: every object version landed is in exactly one run, under the key it
is stored as."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.deployment import Deployed

ODD_NAMES = ["Q1 report+final %20ü.csv", "a+b.csv", "a b.csv", "a%2Bb.csv", "日本語 データ.csv", "semi;colon=1.csv"]


def _manifests_under(env: Deployed, folder: str, before: set[str]) -> list[dict[str, Any]]:
    manifests = []
    for execution in env.executions():
        if execution["executionArn"] in before:
            continue
        described = env.sfn.describe_execution(executionArn=execution["executionArn"])
        uri = json.loads(described["input"]).get("manifest", "")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = json.loads(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        if any(o["key"].startswith(folder) for o in body["objects"]):
            manifests.append({**body, "status": described["status"]})
    return manifests


@pytest.mark.parametrize("encoding", ["raw", "url"])
def test_odd_keys_run_once_each_under_the_key_they_are_stored_as(env: Deployed, encoding: str) -> None:
    env.twin.s3_event_key_encoding = encoding
    try:
        folder = f"sales/keys-{uuid.uuid4().hex[:6]}/"
        before = {e["executionArn"] for e in env.executions()}
        etags = {}
        for name in ODD_NAMES:
            put = env.s3.put_object(Bucket=env.landing, Key=folder + name, Body=f"order_id\n{name}\n".encode())
            etags[folder + name] = (put["ETag"].strip('"'), put.get("VersionId"))

        def routed() -> list[dict[str, Any]] | None:
            found = _manifests_under(env, folder, before)
            listed = [o["key"] for m in found for o in m["objects"]]
            return found if sorted(listed) == sorted(etags) else None

        manifests = env.wait_for(routed, 60, f"runs listing every odd key ({encoding} event keys)")
    finally:
        env.twin.s3_event_key_encoding = "raw"
    objects = [o for m in manifests for o in m["objects"]]
    # each stored key once, pinned to its version and etag
    assert Counter(o["key"] for o in objects) == Counter(list(etags))
    assert {o["key"]: (o["etag"], o.get("version_id")) for o in objects} == etags
    decoded = {o["key"] for o in objects if o.get("key_form") == "url-decoded"}
    if encoding == "raw":
        assert decoded == set()
    else:  # every key that URL-encoding changes was resolved to its decoded (stored) form
        from urllib.parse import quote_plus

        assert decoded == {k for k in etags if quote_plus(k, safe="/") != k}
    for manifest in manifests:
        arn = env.state_machine_of("sales-daily").replace(":stateMachine:", ":execution:") + f":{manifest['run_id']}"
        assert env.finished(arn)["status"] == "SUCCEEDED"


def test_two_writes_of_one_key_run_each_version_once_and_never_list_a_key_twice(env: Deployed) -> None:
    folder = f"sales/overwrite-{uuid.uuid4().hex[:6]}/"
    before = {e["executionArn"] for e in env.executions()}
    key = folder + "daily.csv"
    first = env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id\n1\n")
    second = env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id\n1\n2\n")
    assert first["VersionId"] != second["VersionId"]  # the landing bucket is versioned

    def settled() -> list[dict[str, Any]] | None:
        found = _manifests_under(env, folder, before)
        seen = {o["version_id"] for m in found for o in m["objects"]} | {
            s["version_id"] for m in found for s in m.get("superseded", [])
        }
        return found if {first["VersionId"], second["VersionId"]} <= seen else None

    manifests = env.wait_for(settled, 60, "both versions routed")
    env.twin.wait_idle(timeout=60)
    for manifest in manifests:  # no manifest lists a key twice
        assert len({o["key"] for o in manifest["objects"]}) == len(manifest["objects"])
    read = [o["version_id"] for m in manifests for o in m["objects"]]
    superseded = [s["version_id"] for m in manifests for s in m.get("superseded", [])]
    # every version is in exactly one run: read by it, or superseded inside its window by the newer one
    assert Counter(read + superseded) == Counter([first["VersionId"], second["VersionId"]])
    assert second["VersionId"] in read
