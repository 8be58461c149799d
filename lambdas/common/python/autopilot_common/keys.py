"""Which landing objects a pipeline ignores, and why (every skip is logged with its reason)."""

from __future__ import annotations

from collections.abc import Sequence

TEMP_SEGMENTS = ("_temporary", ".spark-staging", ".hive-staging")
TEMP_SUFFIXES = (".crc", ".tmp", ".temp", "_$folder$", ".part", ".inprogress")


def skip_reason(
    key: str,
    size: int,
    *,
    suffixes: Sequence[str] = (),
    ignore_zero_byte: bool = True,
    marker_name: str | None = None,
) -> str | None:
    """Why `key` is not pipeline input, or None when it is.

    The marker file itself (e.g. `_SUCCESS`) is not data: callers check `is_marker` first.
    """
    if key.endswith("/"):
        return "folder placeholder"
    parts = key.split("/")
    name = parts[-1]
    if in_temporary_folder(key):
        return "inside a temporary folder"
    if name.endswith(TEMP_SUFFIXES):
        return "temporary or checksum file"
    if marker_name is not None and name == marker_name:
        return "marker file"
    if name.startswith(("_", ".")):
        return "hidden file"
    if suffixes and not name.endswith(tuple(suffixes)):
        return f"suffix not in {list(suffixes)}"
    if ignore_zero_byte and size == 0:
        return "zero-byte object"
    return None


def in_temporary_folder(key: str) -> bool:
    """True when a folder of `key` (not its file name) is a writer's staging folder such as `_temporary/`."""
    return any(seg.startswith(TEMP_SEGMENTS) for seg in key.split("/")[:-1])


def is_marker(key: str, marker_name: str) -> bool:
    return key.rsplit("/", 1)[-1] == marker_name


def folder_of(key: str) -> str:
    """`a/b/_SUCCESS` -> `a/b/`; a key at the bucket root -> ``."""
    head, sep, _ = key.rpartition("/")
    return head + sep
