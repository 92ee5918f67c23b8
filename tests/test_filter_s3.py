"""The filter against a real S3 server (moto over HTTP): scan, source shards and output all on s3://; the
output is byte-identical to a local run of the same policy, and a refused run writes nothing to the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import s3fs

from pipeline.cli.filter_shards import main as filter_main
from tests.support.hygiene import RULES, RUN_RECORDS, good_shards, shared_scans, tree_bytes


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_scans(tmp_path_factory)


def test_filter_on_s3_matches_local_run_and_refuses_without_writing(
    shared, s3fs_client, tmp_path, capsys
) -> None:
    fs: s3fs.S3FileSystem = s3fs_client
    fs.mkdir("corpus")
    fs.put(shared.corpus.root + "/", "corpus/in/", recursive=True)
    fs.put(shared.scan + "/", "corpus/scan/", recursive=True)
    assert len(fs.find("corpus/in")) == len(shared.corpus.shards)

    local = tmp_path / "local"
    assert (
        filter_main(["--scan", shared.scan, "--input", shared.corpus.root, "--output", str(local), *RULES])
        == 0
    )
    capsys.readouterr()

    # dry run on S3: the plan, nothing written
    args = ["--scan", "s3://corpus/scan", "--input", "s3://corpus/in/", "--output", "s3://corpus/clean"]
    assert filter_main([*args, *RULES, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not fs.exists("corpus/clean")

    assert filter_main([*args, *RULES]) == 0
    fs.invalidate_cache()
    remote = {p.removeprefix("corpus/clean/"): fs.cat_file(p) for p in fs.find("corpus/clean")}
    want = tree_bytes(local, skip=(*RUN_RECORDS, "_run/config.json"))
    for name in RUN_RECORDS:  # records of one run (timestamps), not outputs
        remote.pop(name, None)
    cfg = json.loads(remote.pop("_run/config.json"))
    assert cfg["output"] == "s3://corpus/clean" and cfg["input"] == "s3://corpus/in/"
    # stats and markers name the sources; everything else (shards, quarantine, manifests) is byte-identical
    stats = json.loads(remote.pop("_run/stats.json"))
    local_stats = json.loads(want.pop("_run/stats.json"))
    assert (
        stats["totals"]
        == local_stats["totals"]
        == {
            "samples": plan["totals"]["samples"],
            "kept": plan["totals"]["keep"],
            "dropped": plan["totals"]["drop"],
            "quarantined": plan["totals"]["quarantine"],
            "kept_error_rows": 2,
        }
    )
    assert all(s["source"].startswith("s3://corpus/in/") for s in stats["shards"])
    for name in [k for k in want if k.startswith(("_shards/", "_manifest/", "manifest.parquet"))]:
        a, b = want.pop(name), remote.pop(name)
        if name.endswith(".jsonl"):  # same rows, sources differ only by the storage prefix
            strip = [{**json.loads(x), "source": None} for x in a.decode().splitlines()]
            assert strip == [{**json.loads(x), "source": None} for x in b.decode().splitlines()]
    assert remote == want
    assert len([k for k in remote if k.endswith(".tar") and not k.startswith("_")]) == len(
        good_shards(shared.corpus)
    )

    # a scan that misses a shard: refused, and the refused run wrote nothing
    fs.rm("corpus/scan/scan_date=2026-11-23/shard-000001.parquet")
    rc = filter_main(
        ["--scan", "s3://corpus/scan", "--input", "s3://corpus/in/", "--output", "s3://corpus/other", *RULES]
    )
    assert rc == 3 and "not covered by the scan" in capsys.readouterr().err
    assert not fs.exists("corpus/other")
    assert not list(Path(tmp_path).glob("**/*.tmp"))
