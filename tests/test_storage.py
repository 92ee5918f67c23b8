from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import storage


def test_list_shards_local_folder_sorted_and_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for name in ["shard-000001.tar", "shard-000000.tar", "a/shard-000002.tar", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    shards = storage.list_shards(str(tmp_path))
    assert [Path(s).name for s in shards] == ["shard-000002.tar", "shard-000000.tar", "shard-000001.tar"]
    ids = [storage.shard_id(s, str(tmp_path)) for s in shards]
    assert ids == ["a__shard-000002", "shard-000000", "shard-000001"]


def test_list_shards_brace_pattern() -> None:
    shards = storage.list_shards("s3://b/p/shard-{000000..000002}.tar")
    assert shards == [f"s3://b/p/shard-00000{i}.tar" for i in range(3)]
    assert storage.shard_id(shards[1], "s3://b/p/shard-{000000..000002}.tar") == "shard-000001"


def test_list_shards_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        storage.list_shards(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        storage.list_shards(str(tmp_path))


def test_s3_listing_atomic_write_and_cache(s3fs_client, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GENSCAN_CACHE", str(tmp_path / "cache"))
    s3fs_client.mkdir("bucket")
    storage.write_bytes_atomic("s3://bucket/in/x/shard-000000.tar", b"abc")
    storage.write_bytes_atomic("s3://bucket/in/shard-000001.tar", b"def")
    shards = storage.list_shards("s3://bucket/in/")
    assert shards == ["s3://bucket/in/shard-000001.tar", "s3://bucket/in/x/shard-000000.tar"]
    assert storage.shard_id(shards[1], "s3://bucket/in/") == "x__shard-000000"
    local = storage.fetch_to_cache("s3://bucket/in/shard-000001.tar")
    assert local.read_bytes() == b"def"
    assert storage.fetch_to_cache("s3://bucket/in/shard-000001.tar") == local
    # every direction of copy_object gives the same bytes (local -> store: one upload from the file)
    (tmp_path / "src.bin").write_bytes(b"ghi" * 1000)
    storage.copy_object(str(tmp_path / "src.bin"), "s3://bucket/copies/up.bin")
    storage.copy_object("s3://bucket/copies/up.bin", "s3://bucket/copies/server.bin")
    storage.copy_object("s3://bucket/copies/server.bin", str(tmp_path / "back" / "down.bin"))
    storage.copy_object(str(tmp_path / "back" / "down.bin"), str(tmp_path / "back" / "again.bin"))
    assert s3fs_client.cat_file("bucket/copies/up.bin") == b"ghi" * 1000
    assert (tmp_path / "back" / "again.bin").read_bytes() == b"ghi" * 1000
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["again.bin", "down.bin"]  # no temp left


def _checkpoint(fs, prefix: str, weights: bytes, claimed: bytes | None = None) -> str:
    import hashlib
    import json

    digest = hashlib.sha256(claimed if claimed is not None else weights).hexdigest()
    fs.pipe(f"{prefix}/detector.safetensors", weights)
    fs.pipe(f"{prefix}/detector.json", json.dumps({"detector_id": f"tiny@{digest[:12]}"}).encode())
    return f"s3://{prefix}"


def test_detector_cache_is_keyed_by_content_and_checked(s3fs_client, tmp_path: Path, monkeypatch) -> None:
    from pipeline.models.meta import check_detector_files

    cache = tmp_path / "cache"
    monkeypatch.setenv("GENSCAN_CACHE", str(cache))
    s3fs_client.mkdir("bucket")
    uri = _checkpoint(s3fs_client, "bucket/det", b"weights-one")
    first = storage.fetch_to_cache(uri, verify=check_detector_files)
    assert (first / "detector.safetensors").read_bytes() == b"weights-one"
    assert storage.fetch_to_cache(uri, verify=check_detector_files) == first  # reused
    # a detector overwritten at the same URI is a new entry: never the old bytes under the new id
    _checkpoint(s3fs_client, "bucket/det", b"weights-two")
    second = storage.fetch_to_cache(uri, verify=check_detector_files)
    assert second != first and (second / "detector.safetensors").read_bytes() == b"weights-two"
    # a cached copy damaged after the download is re-fetched, not trusted
    (second / "detector.safetensors").write_bytes(b"weights-tw0")
    assert (
        storage.fetch_to_cache(uri, verify=check_detector_files) / "detector.safetensors"
    ).read_bytes() == b"weights-two"
    # a killed download leaves only a private temp folder, which is never served
    leftover = second.parent / ".tmp-killed" / "det"
    leftover.mkdir(parents=True)
    (leftover / "detector.safetensors").write_bytes(b"weig")
    assert storage.fetch_to_cache(uri, verify=check_detector_files) == second
    assert not [p for p in cache.rglob("*") if ".tmp-" in str(p) and "killed" not in str(p)]


def test_detector_whose_weights_do_not_match_its_id_is_refused(
    s3fs_client, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("GENSCAN_CACHE", str(tmp_path / "cache"))
    s3fs_client.mkdir("bucket")
    uri = _checkpoint(s3fs_client, "bucket/bad", b"weights", claimed=b"other weights")
    from pipeline.models.meta import check_detector_files

    with pytest.raises(storage.CacheError, match="does not match"):
        storage.fetch_to_cache(uri, verify=check_detector_files)
    assert not list((tmp_path / "cache").rglob("detector.safetensors"))  # nothing half-trusted left in place


def test_markers_written_by_another_process_are_seen_after_a_listing(s3fs_client, s3_server) -> None:
    """The driver lists a date's markers at the start (resume) and again at the end, while writer actors in
    other processes write them: the second listing must not come from s3fs's cached folder listing
    (s3fs_client: a client of THIS server, not one cached from an earlier test)."""
    import boto3

    from pipeline.output import RunPaths, completed_shards

    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="markers")
    paths = RunPaths("s3://markers/scan", "2026-01-01")
    key = paths.marker("a").removeprefix("s3://markers/")
    s3.put_object(Bucket="markers", Key=key, Body=b"{}")
    assert completed_shards(paths) == {"a"}  # this listing is what s3fs caches
    s3.put_object(
        Bucket="markers", Key=key.replace("/a.json", "/b.json"), Body=b"{}"
    )  # another process writes
    assert completed_shards(paths) == {"a", "b"}
