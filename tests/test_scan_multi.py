"""Several detectors in one scan (schema v2): a real Ray scan (`ray job submit` of jobs/scan_bucket.py) with
an imported UnivFD, an imported RINE and a MoLE detector on ONE tiny backbone file. Each detector's column
equals that detector's own single scan, the fused columns equal pipeline.models.fusion over them, row
accounting is unchanged; detector.json lists the members; --resume refuses a changed set; v1 + v2 histories
read together (pyarrow, DuckDB, the filter's and the report's readers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import output
from pipeline.models.fusion import fuse
from pipeline.scan.completion import RunRefused, plan_run
from pipeline.scan.config import ScanConfig
from pipeline.scan.detectors import set_id
from pipeline.scan.job import run_scan
from tests.support.features import read_features
from tests.support.peer_detectors import imported_set
from tests.support.ray_cluster import SMALL_SCAN, submit_job
from tests.support.shards import corrupt_image_sample, good_samples, no_image_sample, write_shard

REPO = Path(__file__).resolve().parents[1]
SCAN = [sys.executable, str(REPO / "jobs" / "scan_bucket.py")]
FAST = ["--batch-size", "8", *SMALL_SCAN]
NAMES = ("univfd", "rine", "mole")
ATTR = "univfd"  # none of the three has generator labels: the first listed attributes


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Imported UnivFD / RINE / ClipBased + a MoLE detector on one tiny backbone file."""
    return imported_set(tmp_path_factory.mktemp("set"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two shards of JPEGs/PNGs: sides >= 96 (all crops agree) and a side < 96 (center_crop_pad pads, the MoLE
    detector's center_crop resizes), plus a corrupt image and a sample without one."""
    root = tmp_path_factory.mktemp("multi") / "shards"
    a = good_samples(5, seed=1, prefix="a", size=(112, 104), fmt="jpg") + [corrupt_image_sample("a_bad")]
    b = good_samples(4, seed=2, prefix="b", size=(80, 120)) + [no_image_sample("b_noimg")]
    b += good_samples(3, seed=3, prefix="c", size=(96, 130), fmt="jpg")
    write_shard(str(root / "shard-000000.tar"), a)
    write_shard(str(root / "shard-000001.tar"), b)
    return root


def _single(corpus: Path, ckpt: Path, out: Path, **extra: str) -> dict[tuple[str, str | None], dict]:
    """One detector's own scan (in-process executor: the same read/decode/score/write code)."""
    cfg = ScanConfig.parse(
        {
            "input": str(corpus),
            "output": str(out),
            "detector": str(ckpt),
            "scan_date": "2026-12-01",
            "batch_size": 8,
            **extra,
        }
    )
    assert run_scan(cfg)["status"] == "succeeded"
    rows = output.read_scan(str(out)).to_pylist()
    return {(r["shard"], r["key"]): r for r in rows}


@pytest.fixture(scope="module")
def singles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("singles")


@pytest.fixture(scope="module")
def singles(corpus: Path, ckpts: dict[str, Path], singles_dir: Path) -> dict[str, dict]:  # noqa: F811
    # UnivFD's own scan keeps its frozen features: the set's, tapped from its pass, must be the same
    features = {ATTR: {"features": "embedding"}}
    return {n: _single(corpus, ckpts[n], singles_dir / n, **features.get(n, {})) for n in NAMES}


@pytest.fixture(scope="module")
def multi(corpus: Path, ckpts: dict[str, Path], shared_s3_ray, tmp_path_factory) -> dict:  # noqa: F811
    out = tmp_path_factory.mktemp("multiscan") / "scan"
    uris = [str(ckpts[n]) for n in NAMES]
    # the repeated flag and the comma form together: --detector A --detector B,C
    args = [
        *SCAN,
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--detector",
        uris[0],
        "--detector",
        f"{uris[1]},{uris[2]}",
        "--fusion",
        "mean_prob",
        "--scan-date",
        "2026-12-01",
        "--features",
        "embedding",
        *FAST,
    ]
    res = submit_job(shared_s3_ray["head"], args, timeout_s=300)
    assert res.status == "SUCCEEDED", res.logs[-5000:]
    return {"out": out, "uris": uris, "rows": output.read_scan(str(out)).to_pylist()}


def test_each_detector_equals_its_own_scan_and_fusion_is_the_rule(multi, singles) -> None:
    rows = multi["rows"]
    ids = [next(iter(singles[n].values()))["detector_id"] for n in NAMES]
    # row accounting unchanged: the same (shard, key, status) rows as every single scan
    for n in NAMES:
        assert sorted((r["shard"], r["key"], r["status"]) for r in rows) == sorted(
            (k[0], k[1], r["status"]) for k, r in singles[n].items()
        ), n
    assert sorted(r["status"] for r in rows) == ["decode_error", "no_image"] + ["ok"] * 12
    for n in NAMES:  # a one-detector scan writes v2 as well: its maps hold that one detector, no fusion
        for r in singles[n].values():
            assert r["schema_version"] == output.SCHEMA_VERSION and r["fusion"] is None
            if r["status"] == "ok":
                assert dict(r["detector_logit"]) == {r["detector_id"]: r["logit"]}
                assert dict(r["detector_p_fake"]) == {r["detector_id"]: r["p_fake"]}
                assert dict(r["detector_is_fake"]) == {r["detector_id"]: r["is_fake"]}
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        assert r["schema_version"] == output.SCHEMA_VERSION and r["fusion"] == "mean_prob"
        assert r["detector_id"] == set_id(ids, "mean_prob")
        if r["status"] != "ok":
            assert r["detector_logit"] is None and r["p_fake"] is None
    for r in ok:
        logit = dict(r["detector_logit"])
        assert list(logit) == ids  # the map's keys in the listed order
        member = np.array([logit[i] for i in ids], np.float64)
        for n, did in zip(NAMES, ids, strict=True):
            own = singles[n][(r["shard"], r["key"])]
            np.testing.assert_allclose(logit[did], own["logit"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(dict(r["detector_p_fake"])[did], own["p_fake"], rtol=1e-5, atol=1e-6)
            assert dict(r["detector_is_fake"])[did] == own["is_fake"], (n, r["key"])
        fused = float(fuse(member, "mean_prob"))
        np.testing.assert_allclose(r["logit"], fused, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["p_fake"], 1 / (1 + np.exp(-fused)), rtol=1e-5, atol=1e-7)
        assert r["is_fake"] == (fused > 0) and r["threshold"] == 0.5
        # attribution: the first member with generator labels, else the first (here: no member has any)
        attr = singles[ATTR][(r["shard"], r["key"])]
        assert dict(r["generator_scores"]).keys() == dict(attr["generator_scores"]).keys()
        np.testing.assert_allclose(
            list(dict(r["generator_scores"]).values()),
            list(dict(attr["generator_scores"]).values()),
            rtol=1e-5,
            atol=1e-6,
        )
        assert r["top_generator"] == (
            "unknown" if r["is_fake"] else "real"
        )  # no generators: by the fused call
    det = json.loads((multi["out"] / "_run" / "2026-12-01" / "detector.json").read_text())
    assert det["fusion"] == "mean_prob" and det["detector_id"] == set_id(ids, "mean_prob")
    assert [m["detector_id"] for m in det["members"]] == ids
    assert [m["uri"] for m in det["members"]] == multi["uris"]
    # the attributing member's labels (the filter policy's generator rules are checked against them)
    assert (
        det["labels"]
        == list(dict(next(r for r in singles[ATTR].values() if r["status"] == "ok")["generator_scores"]))
        == ["real"]
    )
    assert [(i["preprocess"], i["image_size"]) for i in det["inputs"]] == [
        ("center_crop_pad", 96),
        ("center_crop", 96),
    ]


def test_the_sets_stored_features_are_its_univfd_members_own(multi, singles, singles_dir: Path) -> None:
    """`--features` on a set keeps the frozen features of its first member that adapts no block (UnivFD),
    row for row as UnivFD's own scan stores them: the corpus has rows where the members' preprocessings agree
    and rows where they differ, so its chunks run as several passes."""
    got, own = read_features(str(multi["out"])), read_features(str(singles_dir / ATTR))
    assert got.keys() == own.keys() == {(r["shard"], r["key"]) for r in multi["rows"] if r["status"] == "ok"}
    for k in own:
        np.testing.assert_allclose(got[k], own[k], rtol=2e-3, atol=1e-3, err_msg=str(k))  # float16 storage


def test_resume_refuses_a_changed_detector_set(multi, corpus: Path) -> None:
    base = {"input": str(corpus), "output": str(multi["out"]), "scan_date": "2026-12-01", "resume": True}
    base["features"] = "embedding"  # as the set's scan kept them
    uris = multi["uris"]
    same = ScanConfig.parse({**base, "detector": ",".join(u + "/" for u in uris), "fusion": "mean_prob"})
    assert plan_run(same).resumed
    for change in (
        {"detector": ",".join(uris[:2]), "fusion": "mean_prob"},
        {"detector": ",".join(reversed(uris)), "fusion": "mean_prob"},
        {"detector": ",".join(uris), "fusion": "soft_or_prob"},
    ):
        cfg = same.model_copy(update=change)
        with pytest.raises(RunRefused, match="detector|fusion"):
            plan_run(cfg)


def test_v1_and_v2_history_read_together(multi, singles, tmp_path: Path) -> None:
    """A scan output whose older date was written in schema v1 (the v1 columns, version 1) and a newer one in
    v2: open_scan / read_scan, DuckDB's documented glob, the filter's and the report's readers."""
    from pipeline.hygiene.plan import SCAN_COLUMNS
    from pipeline.report.summary import COLUMNS as REPORT_COLUMNS

    out = tmp_path / "scan"
    v2 = pq.read_table(next((multi["out"] / "scan_date=2026-12-01").glob("*.parquet")))
    v1 = v2.select(list(output.V1_COLUMNS))
    v1 = v1.set_column(0, "schema_version", pa.array(np.ones(v1.num_rows, np.int16), pa.int16()))
    (out / "scan_date=2026-11-30").mkdir(parents=True)
    (out / "scan_date=2026-12-01").mkdir()
    pq.write_table(v1, out / "scan_date=2026-11-30" / "shard-000000.parquet")
    pq.write_table(v2, out / "scan_date=2026-12-01" / "shard-000000.parquet")
    both = output.read_scan(str(out))
    assert both.num_rows == 2 * v2.num_rows
    now = output.SCHEMA_VERSION  # what the scan writes today (v2's columns and more)
    by_version = {v: [r for r in both.to_pylist() if r["schema_version"] == v] for v in (1, now)}
    by_version[2] = by_version.pop(now)
    assert all(r["scan_date"] == "2026-11-30" and r["detector_logit"] is None for r in by_version[1])
    assert sum(r["detector_logit"] is not None for r in by_version[2]) == sum(
        r["status"] == "ok" for r in by_version[2]
    )
    for cols in (SCAN_COLUMNS, REPORT_COLUMNS):  # what the filter and the report read, from either date
        for day in ("2026-11-30", "2026-12-01"):
            t = output.read_scan(str(out), scan_date=day, columns=list(cols))
            assert (
                t.num_rows == v2.num_rows
                and t.column("p_fake").to_pylist() == v2.column("p_fake").to_pylist()
            )
    glob = output.parquet_glob(str(out))
    con = duckdb.connect()
    q = con.execute(
        f"SELECT scan_date, schema_version, count(*), sum(is_fake::INT), "
        f"count(detector_logit) FROM read_parquet('{glob}', hive_partitioning = true, "
        f"union_by_name = true) GROUP BY ALL ORDER BY 1"
    ).fetchall()
    n_ok = sum(r["status"] == "ok" for r in by_version[2])
    n_fake = sum(bool(r["is_fake"]) for r in by_version[2])
    assert [(str(d), v, n, f, c) for d, v, n, f, c in q] == [
        ("2026-11-30", 1, v2.num_rows, n_fake, 0),
        ("2026-12-01", now, v2.num_rows, n_fake, n_ok),
    ]
    # a v1-columns query (docs/queries.md style) needs no union_by_name
    q1 = con.execute(
        f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true) "
        "WHERE status = 'ok' AND p_fake >= threshold"
    ).fetchall()
    assert q1 == [(2 * sum(bool(r["is_fake"]) for r in by_version[2]),)]
    # per-detector scores from SQL: element_at on the map
    did = next(iter(singles["rine"].values()))["detector_id"]
    rine = con.execute(
        f"SELECT key, detector_logit['{did}'] FROM read_parquet('{glob}', hive_partitioning = "
        f"true, union_by_name = true) WHERE schema_version = {now} AND status = 'ok'"
    ).fetchall()
    for key, value in rine:
        got = value[0] if isinstance(value, list) else value
        np.testing.assert_allclose(got, singles["rine"][("shard-000000", key)]["logit"], rtol=1e-5, atol=1e-5)


def test_detector_list_and_fusion_operator_mistakes(ckpts: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: F811
    from pipeline.cli import scan_bucket
    from pipeline.scan.detectors import run_detectors
    from pipeline.settings import ConfigError

    base = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    a, b = str(ckpts["univfd"]), str(ckpts["mole"])
    assert ScanConfig.parse({**base, "detector": [a, b]}).detector == f"{a},{b}"  # config-file list form
    assert ScanConfig.parse({**base, "detector": f" {a} , {b}"}).detectors == [a, b]
    for bad, needle in (
        ({"detector": f"{a},,{b}"}, "empty checkpoint"),
        ({"detector": f"{a},{a}"}, "twice"),
        ({"detector": f"{a},{b}", "fusion": "vote"}, "fusion"),
        ({"detector": f"{a},{b}", "resize_mode": "center_crop"}, "resize_mode"),
    ):
        with pytest.raises(ConfigError, match=needle):
            ScanConfig.parse({**base, **bad})
    gpu = ScanConfig.parse({**base, "detector": f"{a},{b}", "decode_on": "gpu", "actor_num_gpus": 1})
    with pytest.raises(
        ConfigError, match="decode_on: gpu decode supports detectors that share one preprocessing"
    ):
        run_detectors(gpu)  # UnivFD pads, MoLE resizes: two inputs
    with pytest.raises(ConfigError, match=f"cannot read checkpoint {tmp_path / 'nope'}"):
        run_detectors(ScanConfig.parse({**base, "detector": f"{a},{tmp_path / 'nope'}"}))
    rc = scan_bucket.main(
        [
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
            "--detector",
            a,
            "--detector",
            b,
            "--fusion",
            "vote",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fusion" in err[0] and "Traceback" not in err[0]
