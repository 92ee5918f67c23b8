"""The nightly hygiene filter on generated shards and a real scan of them (local disk): kept keys, byte
identity, manifest, accounting, idempotency, dry run, refusals before any write."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.cli.filter_shards import main as filter_main
from pipeline.hygiene.policy import FilterConfig
from tests.support.hygiene import (
    BROKEN,
    DAY2,
    RULES,
    RUN_RECORDS,
    Corpus,
    good_shards,
    shared_scans,
    tree_bytes,
)
from tests.support.subproc import run_python

REPO = Path(__file__).resolve().parents[1]

# Independent reference for RULES (tests/support/hygiene.py), in SQL over the scan: first matching generator
# rule, else the calibrated is_fake column; error rows are kept (the default).
REFERENCE_SQL = """
SELECT shard, key,
  CASE WHEN status <> 'ok' THEN 'keep'
       WHEN top_generator = 'upconv' THEN CASE WHEN p_fake::DOUBLE >= 0.9 THEN 'quarantine' ELSE 'keep' END
       WHEN top_generator = 'unknown' THEN CASE WHEN is_fake THEN 'quarantine' ELSE 'keep' END
       WHEN is_fake THEN 'drop' ELSE 'keep' END AS action,
  status
FROM read_parquet('{scan}/scan_date=*/*.parquet', hive_partitioning = true)
WHERE status <> 'shard_error' AND CAST(scan_date AS VARCHAR) = '{day}' AND shard <> '{broken}'
"""


def tar_members(path: str | Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}


def read_wds(path: str | Path) -> list[dict]:
    """Samples of a shard as webdataset's own reader yields them (no decoding)."""
    ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    return list(ds)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_python(str(REPO / "jobs" / "filter_shards.py"), *args, timeout=300)


def run_main(capsys, *args: str) -> tuple[int, str]:
    """The CLI's main() in-process (fast); returns (exit code, stderr)."""
    capsys.readouterr()
    rc = filter_main(list(args))
    return rc, capsys.readouterr().err


def cli_args(scan: str | Path, src: str | Path, out: str | Path, *extra: str) -> list[str]:
    """The filter's command line: scan output, input shards, output folder, then any further flags."""
    return ["--scan", str(scan), "--input", str(src), "--output", str(out), *extra]


# a policy other than RULES: no generator rules, a stricter threshold
OTHER_POLICY = ("--threshold", "0.95", "--on-shard-error", "skip")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> tuple[Corpus, str]:
    shared = shared_scans(tmp_path_factory)
    return shared.corpus, shared.scan


@pytest.fixture(scope="module")
def filtered(scanned, tmp_path_factory) -> tuple[Corpus, str, Path, subprocess.CompletedProcess]:
    corpus, scan = scanned
    out = tmp_path_factory.mktemp("hygout") / "clean"
    proc = run_cli(*cli_args(scan, corpus.root, out), *RULES)
    return corpus, scan, out, proc


def expected_actions(scan: str) -> dict[tuple[str, str], str]:
    rows = duckdb.sql(REFERENCE_SQL.format(scan=scan, day=DAY2, broken=BROKEN)).fetchall()
    return {(shard, key): action for shard, key, action, _ in rows}


def test_filtered_shards_hold_exactly_the_kept_samples_byte_identical(filtered) -> None:
    corpus, scan, out, proc = filtered
    assert proc.returncode == 0, proc.stderr
    expected = expected_actions(scan)
    assert set(expected.values()) == {"keep", "drop", "quarantine"}, "fixture must exercise every action"
    assert not (out / f"{BROKEN}.tar").exists()
    for src in good_shards(corpus):
        rel = os.path.relpath(src, corpus.root)
        sid = rel.removesuffix(".tar").replace("/", "__")
        want_kept = [k for (s, k), a in expected.items() if s == sid and a == "keep"]
        got = read_wds(out / rel)
        assert [s["__key__"] for s in got] == want_kept
        # every member of a kept sample is in the output under its name with the same bytes, nothing else is
        src_members = tar_members(src)
        out_members = tar_members(out / rel)
        want_names = {n for n in src_members if n.split(".", 1)[0] in want_kept}
        assert set(out_members) == want_names
        assert all(out_members[n] == src_members[n] for n in want_names)
        # quarantine shard: exactly the quarantined samples, byte-identical too
        want_q = [k for (s, k), a in expected.items() if s == sid and a == "quarantine"]
        qpath = out / "_quarantine" / rel
        if want_q:
            q_members = tar_members(qpath)
            assert sorted({n.split(".", 1)[0] for n in q_members}) == sorted(want_q)
            assert all(q_members[n] == src_members[n] for n in q_members)
        else:
            assert not qpath.exists()


def test_written_shards_are_the_bytes_webdataset_tarwriter_writes(filtered, tmp_path) -> None:
    """The copy writes tars with tarfile itself; webdataset's own TarWriter (PAX, mtime 0, its owner and mode)
    is the reference: the same samples, a non-UTF-8 member name among them, give the same bytes."""
    from pipeline.hygiene.copy import ShardWriter
    from pipeline.shards import iter_samples

    _, _, out, _ = filtered
    src = next(p for p in sorted(out.rglob("*.tar")) if "_quarantine" not in p.parts)
    odd = tmp_path / "odd.tar"
    with tarfile.open(odd, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in ((b"caf\xe9.jpg", b"jpeg"), (b"caf\xe9.json", b"{}"), (b"b.txt", b"x")):
            info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    for shard in (src, odd):
        samples = list(iter_samples(str(shard)))
        ours = tmp_path / f"ours-{shard.name}"
        writer = ShardWriter(str(ours))
        for sample in samples:
            writer.write(sample)
        writer.commit()
        ref = io.BytesIO()
        with wds.TarWriter(ref, encoder=False, mtime=0, format="PAX_FORMAT") as sink:
            for sample in samples:
                sink.write({"__key__": sample.raw_key, **{m.ext: m.data for m in sample.members}})
        assert ours.read_bytes() == ref.getvalue(), shard


def test_manifest_lists_every_removed_key_with_reason(filtered) -> None:
    corpus, scan, out, proc = filtered
    expected = expected_actions(scan)
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    removed = {(r["shard"], r["key"]): r["action"] for r in manifest if r["action"] != "keep"}
    assert removed == {sk: a for sk, a in expected.items() if a != "keep"}
    for r in manifest:
        if r["action"] == "drop":
            assert r["reason"] == "fake" and r["threshold"] is None
        elif r["action"] == "quarantine":
            assert r["reason"] in ("generator:upconv", "generator:unknown")
            if r["reason"] == "generator:upconv":
                assert r["p_fake"] >= 0.9 - 1e-6
    # error rows are kept and reported
    kept_errors = {(r["shard"], r["key"], r["reason"]) for r in manifest if r["action"] == "keep"}
    assert kept_errors == {
        ("shard-000000", "00_bad", "error:decode_error"),
        ("shard-000001", "01_noimg", "error:no_image"),
    }
    # per-shard JSONL manifests hold the same rows
    jsonl = [
        json.loads(line)
        for p in sorted((out / "_manifest").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert sorted((r["shard"], r["key"], r["action"]) for r in jsonl) == sorted(
        (r["shard"], r["key"], r["action"]) for r in manifest
    )


def test_accounting_reconciles_and_run_config_is_saved(filtered) -> None:
    corpus, scan, out, proc = filtered
    stats = json.loads((out / "_run" / "stats.json").read_text())
    assert stats["reconciled"] is True and stats["problems"] == []
    by_src = {s["source"]: s for s in stats["shards"]}
    assert set(by_src) == set(good_shards(corpus))
    assert stats["scan_date"] == DAY2  # the latest partition by default
    assert [s["shard"] for s in stats["skipped_shards"]] == [BROKEN]
    for src, samples in good_shards(corpus).items():
        s = by_src[src]
        assert s["kept"] + s["dropped"] + s["quarantined"] == s["samples"] == len(samples)
        marker = json.loads((out / "_shards" / f"{s['shard_id']}.json").read_text())
        assert marker == s
    expected = expected_actions(scan)
    assert stats["totals"]["kept"] == sum(a == "keep" for a in expected.values())
    assert stats["totals"]["samples"] == sum(len(v) for v in good_shards(corpus).values())
    assert (out / "_SUCCESS").exists()
    cfg = FilterConfig.from_file(out / "_run" / "config.json")
    assert [r.generator for r in cfg.policy.generator_rules] == ["upconv", "unknown"]
    assert cfg.policy.generator_rules[0].threshold == 0.9 and cfg.scan == scan
    summary = json.loads(proc.stdout)
    assert (
        summary["kept"] == stats["totals"]["kept"]
        and summary["shards"] == 3
        and summary["skipped_shards"] == 1
    )


def test_rerun_is_byte_identical_and_deterministic_across_outputs(filtered, tmp_path) -> None:
    corpus, scan, out, _ = filtered
    before = tree_bytes(out)
    assert filter_main(cli_args(scan, corpus.root, out, *RULES)) == 0
    assert tree_bytes(out) == before
    other = tmp_path / "again"
    assert filter_main(cli_args(scan, corpus.root, other, *RULES)) == 0
    a, b = tree_bytes(out), tree_bytes(other, skip=(*RUN_RECORDS, "_run/config.json"))
    a.pop("_run/config.json")
    assert a == b
    assert not [p for p in other.rglob("*") if p.name.endswith(".tmp")], "temp files left behind"


def test_dry_run_writes_nothing_and_predicts_the_counts(filtered, tmp_path, capsys) -> None:
    corpus, scan, out, _ = filtered
    target = tmp_path / "dry"
    assert filter_main(cli_args(scan, corpus.root, target, *RULES, "--dry-run")) == 0
    assert not target.exists()
    plan = json.loads(capsys.readouterr().out)
    stats = json.loads((out / "_run" / "stats.json").read_text())
    assert plan["totals"] == {
        "samples": stats["totals"]["samples"],
        "keep": stats["totals"]["kept"],
        "drop": stats["totals"]["dropped"],
        "quarantine": stats["totals"]["quarantined"],
    }


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--threshold", "1.5"], "threshold"),
        (["--rule", "upconv=explode"], "--rule #1 action"),
        (["--error-action", "ignore"], "--error-action"),
        (["--rule", "famA=drop@2"], "--rule #1 threshold"),
    ],
)
def test_bad_policy_flags_fail_fast_naming_the_field(scanned, tmp_path, capsys, args, field) -> None:
    corpus, scan = scanned
    target = tmp_path / "never"
    assert filter_main(cli_args(scan, corpus.root, target, *args)) == 2
    assert field in capsys.readouterr().err
    assert not target.exists()


def test_bad_policy_file_names_the_unknown_field(scanned, tmp_path, capsys) -> None:
    corpus, scan = scanned
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"threshold": 0.7, "generator_rule": []}))
    target = tmp_path / "never"
    proc = run_cli(*cli_args(scan, corpus.root, target), "--policy", str(policy))
    assert proc.returncode == 2 and "generator_rule" in proc.stderr and "Extra inputs" in proc.stderr
    assert not target.exists()
    rc, err = run_main(
        capsys, *cli_args(scan, corpus.root, target, "--policy", str(policy), "--threshold", "0.6")
    )
    assert rc == 2 and "exclusive" in err


def test_a_policy_file_that_cannot_be_read_is_one_line_naming_the_flag(tmp_path, capsys) -> None:
    """A missing file, a folder, a binary or a JSON list given as --policy: ONE configuration line naming
    --policy (it said `config file:`; a folder or a binary was a traceback before that). The policy is read
    before anything else, so no scan is needed."""
    binary = tmp_path / "policy.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xf1\xff")
    listed = tmp_path / "policy.json"
    listed.write_text("[1]")
    target = tmp_path / "never"
    for policy, says in [
        (tmp_path / "missing.json", "not found"),
        (tmp_path, "cannot read"),
        (binary, "is not valid JSON"),
        (listed, "must hold a JSON object"),
    ]:
        args = cli_args(tmp_path / "scan", tmp_path / "in", target, "--policy", str(policy))
        rc, err = run_main(capsys, *args)
        assert rc == 2 and err.count("\n") == 1, err
        assert err.startswith("configuration error: --policy: ") and str(policy) in err and says in err, err
    assert not target.exists()


def test_an_input_without_shards_is_refused_in_one_line(scanned, tmp_path, capsys) -> None:
    """A folder with no .tar under it (e.g. a UnivFD image folder) was storage.list_shards' FileNotFoundError
    traceback with exit 1; it is the plan's refusal (3), nothing written."""
    corpus, scan = scanned
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"not a shard")
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(scan, images, target))
    # the only line: the status line comes once the plans are checked (it came first)
    assert rc == 3 and err == f"refused: input: no .tar shards under {images}\n", err
    assert not target.exists()


def _copy_scan(scan: str, dest: Path) -> Path:
    shutil.copytree(scan, dest)
    return dest


def test_refuses_when_a_shard_is_not_covered_before_any_write(scanned, tmp_path, capsys) -> None:
    corpus, scan = scanned
    partial = _copy_scan(scan, tmp_path / "scan")
    (partial / "scan_date=2026-11-23" / "shard-000001.parquet").unlink()
    (partial / "_shards" / "2026-11-23" / "shard-000001.json").unlink()
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(partial, corpus.root, target))
    assert rc == 3
    assert "shard-000001.tar: not covered by the scan" in err and "nothing was written" in err
    assert not target.exists()


def test_refuses_a_scan_without_completion_marker(scanned, tmp_path, capsys) -> None:
    corpus, scan = scanned
    partial = _copy_scan(scan, tmp_path / "scan")
    (partial / "_shards" / "2026-11-23" / "part__shard-000002.json").unlink()
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(partial, corpus.root, target))
    assert rc == 3 and "no completion marker" in err
    assert not target.exists()


def test_refuses_partial_coverage_sample_count_mismatch(scanned, tmp_path, capsys) -> None:
    corpus, scan = scanned
    partial = _copy_scan(scan, tmp_path / "scan")
    f = partial / "scan_date=2026-11-23" / "shard-000000.parquet"
    table = pq.read_table(f)
    keys = table.column("key").to_pylist()
    pq.write_table(table.slice(0, len(keys) - 1), f)  # the scan lost the shard's last row
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(partial, corpus.root, target))
    assert rc == 3
    assert "only partially" in err and f"{len(keys) - 1} scan rows vs {len(keys)} samples" in err
    assert repr(keys[-1]) in err
    assert not target.exists()


def test_refuses_when_the_source_gained_samples_after_the_scan(scanned, tmp_path, capsys) -> None:
    corpus, scan = scanned
    src = tmp_path / "in"
    shutil.copytree(corpus.root, src)
    with tarfile.open(src / "shard-000001.tar", "a") as tf:
        payload = b'{"late": true}'
        info = tarfile.TarInfo("01_late.json")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(scan, src, target))
    assert rc == 3 and "not in the scan: '01_late'" in err
    assert err.startswith("refused: the scan (scan_date=2026-11-23) does not cover the input exactly; ")
    assert not target.exists()


def test_missing_scan_and_bad_scan_date(scanned, tmp_path, capsys) -> None:
    corpus, scan = scanned
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(tmp_path / "nope", corpus.root, target))
    assert rc == 3 and "scan output not found" in err
    rc, err = run_main(capsys, *cli_args(scan, corpus.root, target), "--scan-date", "2026-01-01")
    assert rc == 3 and "scan_date=2026-01-01 not found" in err and "2026-11-23" in err
    assert not target.exists()


def test_output_inside_input_is_a_config_error(scanned, capsys) -> None:
    corpus, scan = scanned
    rc, err = run_main(capsys, *cli_args(scan, corpus.root, corpus.root + "/clean"))
    assert rc == 2 and "output must not be the input" in err


def test_shard_error_refused_by_default_or_skipped_by_policy(scanned, tmp_path, capsys) -> None:
    corpus, scan = scanned
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(scan, corpus.root, target))
    assert rc == 3 and f"{BROKEN}.tar: the scan could not read this shard" in err
    assert not target.exists()
    rc, err = run_main(
        capsys, *cli_args(scan, corpus.root, target, "--on-shard-error", "skip", "--error-action", "drop")
    )
    assert rc == 0, err
    stats = json.loads((target / "_run" / "stats.json").read_text())
    assert [s["shard"] for s in stats["skipped_shards"]] == [BROKEN]
    assert "tar" in stats["skipped_shards"][0]["scan_error"]
    assert not (target / f"{BROKEN}.tar").exists()
    assert len(stats["shards"]) == 3
    # error rows dropped by policy: gone from the output, listed in the manifest as drops
    manifest = pq.read_table(target / "manifest.parquet").to_pylist()
    drops = {
        r["key"]: r["reason"] for r in manifest if r["action"] == "drop" and r["reason"].startswith("error:")
    }
    assert drops == {"00_bad": "error:decode_error", "01_noimg": "error:no_image"}
    assert "00_bad" not in {s["__key__"] for s in read_wds(target / "shard-000000.tar")}


def test_policy_change_rewrites_and_removes_stale_quarantine(filtered, tmp_path) -> None:
    corpus, scan, out, _ = filtered
    target = tmp_path / "out"
    shutil.copytree(out, target)
    assert any((target / "_quarantine").rglob("*.tar"))
    assert filter_main(cli_args(scan, corpus.root, target, *OTHER_POLICY)) == 0
    assert not any((target / "_quarantine").rglob("*.tar"))
    stats = json.loads((target / "_run" / "stats.json").read_text())
    p = duckdb.sql(
        f"SELECT count(*) FILTER (WHERE p_fake::DOUBLE >= 0.95) "
        f"FROM read_parquet('{scan}/scan_date={DAY2}/*.parquet') WHERE shard <> '{BROKEN}'"
    )
    assert stats["totals"]["dropped"] == p.fetchall()[0][0]
    assert stats["totals"]["quarantined"] == 0


def test_sha_of_kept_images_matches_the_scan(filtered) -> None:
    """The scan's sha256 of each kept image equals the image member copied into the cleaned shard."""
    corpus, scan, out, _ = filtered
    sha = dict(
        duckdb.sql(
            f"SELECT key, sha256 FROM read_parquet('{scan}/scan_date={DAY2}/*.parquet') "
            "WHERE sha256 IS NOT NULL"
        ).fetchall()
    )
    n = 0
    for src in good_shards(corpus):
        for s in read_wds(out / os.path.relpath(src, corpus.root)):
            img = s.get("png") or s.get("jpg")
            if img is not None:
                assert hashlib.sha256(img).hexdigest() == sha[s["__key__"]]
                n += 1
    assert n > 0


def test_a_replaced_source_image_fails_the_run_without_committing_that_shard(
    scanned, tmp_path, capsys
) -> None:
    """Same keys, different image bytes: the scan's decision is about another image. Exit 4, the shard's
    output and marker are not written, no _SUCCESS."""
    corpus, scan = scanned
    src = tmp_path / "in"
    shutil.copytree(corpus.root, src)
    shard = src / "shard-000001.tar"
    members = []
    with tarfile.open(shard) as tf:
        for m in tf.getmembers():
            data = tf.extractfile(m).read()
            if m.name == "01_000003.png":
                data = data[:-1] + bytes([data[-1] ^ 1])
            members.append((m, data))
    with tarfile.open(shard, "w") as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data))
    target = tmp_path / "out"
    rc, err = run_main(capsys, *cli_args(scan, src, target), *RULES)
    assert rc == 4 and "'01_000003' is not the one the scan scored" in err
    assert (
        not (target / "shard-000001.tar").exists() and not (target / "_shards" / "shard-000001.json").exists()
    )
    assert not (target / "_SUCCESS").exists()
    assert not [p for p in target.rglob("*") if p.name.endswith(".tmp")]


def test_job_checks_accounting_itself_before_reporting_success(scanned, tmp_path) -> None:
    """A worker that reports counts that do not add up (simulated by corrupting one result on its way back)
    makes the run fail: ReconcileError, stats.json says why, no _SUCCESS."""
    from dataclasses import replace

    from pipeline.hygiene.run import ReconcileError, ShardResult, run_filter
    from pipeline.runner import local_map

    def lossy_map(fn, items):
        for i, result in local_map(fn, items):
            if i == 0 and isinstance(result, ShardResult):
                result = replace(result, kept=result.kept - 1)
            yield i, result

    corpus, scan = scanned
    cfg = FilterConfig.parse(
        {
            "scan": scan,
            "input": corpus.root,
            "output": str(tmp_path / "out"),
            "policy": {"on_shard_error": "skip"},
        }
    )
    with pytest.raises(ReconcileError, match="does not reconcile"):
        run_filter(cfg, lossy_map)
    stats = json.loads((tmp_path / "out" / "_run" / "stats.json").read_text())
    assert stats["reconciled"] is False and len(stats["problems"]) == 1
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.tar")}


def test_resume_rewrites_only_unfinished_shards_and_refuses_another_policy(
    filtered, tmp_path, capsys
) -> None:
    corpus, scan, out, _ = filtered
    target = tmp_path / "out"
    shutil.copytree(out, target)
    markers = sorted((target / "_shards").glob("*.json"))
    lost = json.loads(markers[0].read_text())
    (target / lost["output"]).unlink()  # an interrupted run: one shard's output and marker never written
    markers[0].unlink()
    (target / "_SUCCESS").unlink()
    before = {k: v for k, v in _mtimes(target).items() if k != lost["quarantine"]}  # the lost shard's own
    args = cli_args(scan, corpus.root, target, *RULES)
    rc, err = run_main(capsys, *args, "--resume")
    assert rc == 0, err
    skip = (*RUN_RECORDS, "_run/config.json")  # config.json names the output folder
    assert tree_bytes(target, skip) == tree_bytes(out, skip)  # the same bytes as the uninterrupted run
    after = _mtimes(target)
    assert {k: v for k, v in after.items() if k in before} == before  # finished shards were not rewritten
    run = json.loads((target / "_run" / "run.json").read_text())
    assert run["resumed"] is True and lost["shard_id"] not in run["shards_skipped"]
    assert len(run["shards_skipped"]) == len(markers) - 1
    # --resume with another policy would mix two policies in one output: refused, nothing written
    (target / "_SUCCESS").unlink()
    before = tree_bytes(target)
    rc, err = run_main(
        capsys,
        *cli_args(scan, corpus.root, target, *OTHER_POLICY, "--resume"),
    )
    assert rc == 3 and "policy" in err and "Nothing was written" in err and err.count("\n") == 1, err
    assert tree_bytes(target) == before


def test_outputs_of_shards_no_longer_in_the_input_are_removed(filtered, tmp_path, capsys) -> None:
    corpus, scan, out, _ = filtered
    target = tmp_path / "out"
    shutil.copytree(out, target)
    src = Path(corpus.root)
    gone = sorted(u for u in good_shards(corpus))[0]
    rel = Path(gone).relative_to(src)
    smaller = tmp_path / "input"
    shutil.copytree(src, smaller, ignore=lambda d, names: [n for n in names if Path(d, n) == Path(gone)])
    assert not (smaller / rel).exists()
    # the scan names shards by their path under the input root, unchanged by the copy
    rc, err = run_main(capsys, *cli_args(scan, smaller, target), *RULES)
    assert rc == 0, err
    sid = next(
        json.loads(m.read_text())["shard_id"]
        for m in (out / "_shards").glob("*.json")
        if json.loads(m.read_text())["output"] == str(rel)
    )
    assert not (target / rel).exists() and not (target / "_shards" / f"{sid}.json").exists()
    assert not (target / "_manifest" / f"{sid}.jsonl").exists()
    run = json.loads((target / "_run" / "run.json").read_text())
    assert run["stale_removed"] == [sid] and (target / "_SUCCESS").exists()
    stats = json.loads((target / "_run" / "stats.json").read_text())
    assert sid not in {s["shard_id"] for s in stats["shards"]}
