"""s3-dist-cp steps: the copy between S3 and a cluster's HDFS (docs/twin/emr-on-ec2.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.spark_runner import NOTE_PREFIX, SparkRunnerError, parse_s3_uri


def parse_dist_cp(args: list[str]) -> dict[str, str]:
    """s3-dist-cp options as {name: value} (`--src=X` and `--src X` forms; flags get "")."""
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        name, sep, value = token.lstrip("-").partition("=")
        if sep:
            i += 1
        elif token.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 2
        else:
            i += 1
        options[name] = value
    return options


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3n://", "s3a://"))


def s3_scheme(uri: str) -> str:
    return re.sub(r"^s3[na]://", "s3://", uri)


@dataclass
class ClusterFiles:
    """The files a cluster's s3-dist-cp sees: S3 through the cluster's client, HDFS in a local folder."""

    client: Callable[[], Any]  # the cluster's S3 client (None: the twin has no S3), asked for when S3 is touched
    hdfs_root: Path

    def hdfs_path(self, uri: str) -> Path:
        """The local file standing for an hdfs:// (or bare absolute) path of the cluster."""
        path = re.sub(r"^hdfs://[^/]*", "", uri) if uri.startswith("hdfs://") else uri
        parts = [p for p in path.split("/") if p]
        if ".." in parts:
            raise SparkRunnerError(f"s3-dist-cp: {uri} has a '..' segment")
        return self.hdfs_root / Path(*parts) if parts else self.hdfs_root

    def s3(self) -> Any:
        """The cluster's S3 client (SparkRunnerError when the twin has none)."""
        client = self.client()
        if client is None:
            raise SparkRunnerError("s3-dist-cp: the twin model has no S3 client")
        return client

    def list_files(self, uri: str) -> list[tuple[str, str]]:
        """(path relative to `uri`, full URI) of every file under `uri` (or `uri` itself when it is a file)."""
        if not is_s3(uri):
            root = self.hdfs_path(uri)
            if root.is_file():
                return [(root.name, uri)]
            base = uri.rstrip("/")
            return [(p.relative_to(root).as_posix(), f"{base}/{p.relative_to(root).as_posix()}")
                    for p in sorted(root.rglob("*")) if p.is_file()]  # fmt: skip
        bucket, key = parse_s3_uri(s3_scheme(uri), "s3-dist-cp")
        prefix = key.rstrip("/") + "/" if key else ""
        found: list[tuple[str, str]] = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.extend((o["Key"][len(prefix) :], f"s3://{bucket}/{o['Key']}") for o in page.get("Contents", []))
        found = [(rel, full) for rel, full in found if rel and not rel.endswith("/")]
        if not found and key:
            try:
                self.s3().head_object(Bucket=bucket, Key=key)
                return [(key.rsplit("/", 1)[-1], f"s3://{bucket}/{key}")]
            except Exception:
                return []
        return found

    def read_file(self, uri: str) -> bytes:
        if not is_s3(uri):
            return self.hdfs_path(uri).read_bytes()
        bucket, key = parse_s3_uri(s3_scheme(uri), "s3-dist-cp")
        body: bytes = self.s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def write_file(self, uri: str, data: bytes) -> None:
        if not is_s3(uri):
            path = self.hdfs_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        bucket, key = parse_s3_uri(s3_scheme(uri), "s3-dist-cp")
        self.s3().put_object(Bucket=bucket, Key=key, Body=data)

    def delete_file(self, uri: str) -> None:
        if not is_s3(uri):
            self.hdfs_path(uri).unlink(missing_ok=True)
            return
        bucket, key = parse_s3_uri(s3_scheme(uri), "s3-dist-cp")
        self.s3().delete_object(Bucket=bucket, Key=key)


def dist_cp(args: list[str], fs: ClusterFiles) -> str:
    """Copy every file under --src to the same relative path under --dest (s3:// and hdfs://): the step's log note.

    SparkRunnerError, re.error or OSError when the copy fails.
    """
    options = parse_dist_cp(args)
    src, dest = options.get("src", ""), options.get("dest", "")
    if not src or not dest:
        raise SparkRunnerError("s3-dist-cp: --src and --dest are required")
    pattern = re.compile(options["srcPattern"]) if options.get("srcPattern") else None
    files = [(rel, uri) for rel, uri in fs.list_files(src) if pattern is None or pattern.fullmatch(uri)]
    if not files:
        raise SparkRunnerError(f"s3-dist-cp: no files found under {src}")
    for rel, uri in files:
        fs.write_file(dest.rstrip("/") + "/" + rel, fs.read_file(uri))
    if "deleteOnSuccess" in options:
        for _, uri in files:
            fs.delete_file(uri)
    ignored = sorted(set(options) - {"src", "dest", "srcPattern", "deleteOnSuccess"})
    return f"{NOTE_PREFIX} s3-dist-cp copied {len(files)} files from {src} to {dest}\n" + (
        f"{NOTE_PREFIX} options not modelled (ignored): {', '.join(ignored)}\n" if ignored else ""
    )
