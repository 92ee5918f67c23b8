"""Moved: the shard reader is `pipeline.wds` (one shard layer for the scan, the filter and the sources).

This name stays importable for code written against it; new code imports `pipeline.wds`."""

from pipeline.wds import (  # noqa: F401
    IMAGE_EXTENSIONS,
    JSON_EXTENSIONS,
    RawSample,
    ShardContents,
    read_shard,
    safe_name,
    split_key,
)
