"""Unit tests of the scan stages over dict batches — no Ray, no model: prepare (read+decode), score plumbing,
row collection, schema/table building, config validation, run planning (refuse / resume)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.output import SCHEMA, STATUSES, RunPaths, parquet_bytes, write_json
from pipeline.runner import commit_shard
from pipeline.scan.completion import RunRefused, plan_run
from pipeline.scan.config import ScanConfig
from pipeline.scan.decode import decode_image
from pipeline.scan.prepare import prepare_shard
from pipeline.scan.provenance_policy import apply_policy
from pipeline.scan.rows import ShardCollector, concat, shard_stats, to_table
from pipeline.scan.score import score_batch
from pipeline.settings import ConfigError
from tests.support.scan_batches import (
    IMAGE_SIZE,
    LABELS,
    MeanPredictor,
    check_table,
    concat_all,
    prepared,
    run_context,
    scored,
)
from tests.support.shards import (
    corrupt_image_sample,
    good_samples,
    no_image_sample,
    truncated_tar_bytes,
    write_raw,
)
from tests.support.shards import (
    write_shard as write_tar,
)


def test_prepare_accounts_for_every_sample(tmp_path):
    samples = good_samples(5, size=(48, 40)) + [corrupt_image_sample("bad"), no_image_sample("noimg")]
    url = write_tar(str(tmp_path / "a.tar"), samples)
    chunks = list(prepare_shard(url, "a", image_size=IMAGE_SIZE, chunk_rows=3))
    assert [len(c["key"]) for c in chunks] == [3, 3, 1]
    rows = concat(chunks)
    assert rows["_idx"].tolist() == list(range(7)) and set(rows["_expected"].tolist()) == {7}
    assert rows["status"].tolist() == ["ok"] * 5 + ["decode_error", "no_image"]
    assert rows["key"].tolist() == [s.key for s in samples]
    # pixels and metadata are exactly what decode_image gives for those bytes
    for i in range(5):
        img = samples[i].files["png"]
        ref = decode_image(img, image_size=IMAGE_SIZE)
        np.testing.assert_array_equal(rows["pixels"][i], ref.pixels)
        assert rows["sha256"][i] == hashlib.sha256(img).hexdigest() and rows["n_bytes"][i] == len(img)
        assert (rows["width"][i], rows["height"][i], rows["format"][i]) == (48, 40, "PNG")
    assert rows["error"][5] and rows["error"][6] and not rows["pixels"][5:].any()


def test_prepare_bad_shards_give_one_error_row(tmp_path):
    trunc = write_raw(str(tmp_path / "t.tar"), truncated_tar_bytes(good_samples(6), keep_fraction=0.6))
    rows = concat_all(prepare_shard(trunc, "t", image_size=IMAGE_SIZE))
    n = len(rows["status"])
    assert rows["status"].tolist()[-1] == "shard_error" and rows["key"][-1] == ""
    assert (rows["status"][:-1] == "ok").all() and n - 1 >= 1  # salvaged good samples before the cut
    assert set(rows["_expected"].tolist()) == {n}
    junk = write_raw(str(tmp_path / "j.tar"), b"definitely not a tar archive")
    rows = concat_all(prepare_shard(junk, "j", image_size=IMAGE_SIZE))
    assert rows["status"].tolist() == ["shard_error"] and rows["_expected"].tolist() == [1]
    missing = concat_all(prepare_shard(str(tmp_path / "missing.tar"), "m", image_size=IMAGE_SIZE))
    assert missing["status"].tolist() == ["shard_error"]


def test_score_batch_scores_only_ok_rows(tmp_path):
    batch = prepared(tmp_path)
    pred = MeanPredictor()
    out = score_batch(pred, batch, n_labels=3)
    assert "pixels" not in out
    assert pred.calls == [6]  # the 6 ok rows in one call, the corrupt one never reaches the model
    ref = batch["pixels"][:6].reshape(6, -1).mean(1) / 255.0
    np.testing.assert_allclose(out["p_fake"][:6], ref, rtol=1e-6)
    assert np.isnan(out["p_fake"][6]) and np.isnan(out["generator_scores"][6]).all()
    assert out["top_generator"][6] == "" and out["_infer_s"][6] == 0 and (out["_infer_s"][:6] > 0).all()
    assert out["key"].tolist() == batch["key"].tolist()


def test_collector_interleaved_duplicates_and_empty(tmp_path):
    a = score_batch(MeanPredictor(), prepared(tmp_path, "a", 5), n_labels=3)
    b = score_batch(MeanPredictor(), prepared(tmp_path, "b", 3), n_labels=3)
    take = lambda bt, ix: {k: v[np.asarray(ix)] for k, v in bt.items()}  # noqa: E731
    c = ShardCollector()
    assert c.add(concat([take(a, [4, 0]), take(b, [1])])) == []
    assert c.add(concat([take(b, [0, 1]), take(a, [2])])) == []  # b[1] is a duplicate (retried task)
    done = c.add(concat([take(a, [1, 3, 5]), take(b, [2, 3])]))
    assert [s for s, _ in done] == ["a", "b"]
    rows_a = dict(done)["a"]
    assert rows_a["_idx"].tolist() == list(range(6)) and rows_a["key"].tolist() == a["key"].tolist()
    assert len(dict(done)["b"]["key"]) == 4 and c.duplicates == 1 and not c.pending
    assert c.add(take(a, [0])) == [] and c.duplicates == 2  # late duplicate of a finished shard is dropped
    empty = {k: v[:1].copy() for k, v in b.items()}
    empty.update(shard=np.array(["e"], object), status=np.array(["_empty"], object), _expected=np.array([0]))
    ((shard, rows),) = c.add(empty)
    assert shard == "e" and rows == {} and to_table(rows, run_context()).num_rows == 0


def test_table_schema_nulls_and_parquet_duckdb_round_trip(tmp_path):
    rows = apply_policy(scored(prepared(tmp_path)), LABELS, run_context().provenance_policy)
    table = to_table(rows, run_context())
    check_table(table)
    assert table.schema.equals(SCHEMA) and table.num_rows == 7
    d = table.to_pylist()
    assert d[0]["status"] == "ok" and d[0]["threshold"] == pytest.approx(0.4)
    assert dict(d[0]["generator_scores"]).keys() == set(LABELS)
    assert dict(d[0]["generator_scores"])["famA"] == pytest.approx(float(rows["generator_scores"][0, 1]))
    bad = d[6]
    assert bad["status"] == "decode_error" and bad["p_fake"] is None and bad["is_fake"] is None
    assert bad["generator_scores"] is None and bad["width"] is None and bad["sha256"] is not None
    # round trip through a real Parquet file under a hive partition, read back by pyarrow and DuckDB
    paths = RunPaths(str(tmp_path / "out"), "2026-11-24")
    stats = shard_stats("a", "u", rows)
    commit_shard([(paths.parquet("a"), parquet_bytes(table))], paths.marker("a"), stats)
    back = pq.read_table(paths.parquet("a"))
    assert back.schema.equals(SCHEMA, check_metadata=False) and back.num_rows == 7
    con = duckdb.connect()
    q = con.execute(
        "SELECT scan_date, status, count(*) FROM read_parquet(?, hive_partitioning=true) GROUP BY "
        "ALL ORDER BY 2",
        [str(tmp_path / "out" / "scan_date=*" / "*.parquet")],
    ).fetchall()
    assert [(str(a), b, c) for a, b, c in q] == [("2026-11-24", "decode_error", 1), ("2026-11-24", "ok", 6)]
    marker = json.loads(Path(paths.marker("a")).read_text())
    assert marker["counts"] == {s: {"ok": 6, "decode_error": 1}.get(s, 0) for s in STATUSES}


def test_check_table_rejects_foreign_schema():
    with pytest.raises(ValueError):
        check_table(pa.table({"a": [1]}))
    with pytest.raises(ValueError, match="unknown status"):
        t = pa.Table.from_pylist(
            [
                {
                    "schema_version": 1,
                    "run_id": "r",
                    "source": "s",
                    "shard": "a",
                    "shard_url": "u",
                    "status": "weird",
                    "detector_id": "d",
                    "scanned_at": dt.datetime.now(dt.UTC),
                }
            ],
            schema=SCHEMA,
        )
        check_table(t)


def _cfg(tmp_path, **kw) -> ScanConfig:
    base = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "detector": str(tmp_path / "det")}
    return ScanConfig.parse({**base, **kw})


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="batch_sise"):
        _cfg(tmp_path, batch_sise=3)
    with pytest.raises(ConfigError, match="scan_date"):
        _cfg(tmp_path, scan_date="2026-13-01")
    with pytest.raises(ConfigError, match="actor_num_cpus"):
        _cfg(tmp_path, actor_num_cpus=0)
    with pytest.raises(ConfigError, match="float16"):
        _cfg(tmp_path, dtype="float16")
    assert _cfg(tmp_path, actor_num_gpus=1, dtype="float16").device == "cuda"


def test_output_in_the_input_folder_is_a_config_error(tmp_path, capsys):
    """It was a silent success that wrote the Parquet, markers and run records among the corpus' shards; the
    rule is the filter's (storage.writes_into_sources): the folder, inside it, or a pattern's folder."""
    from pipeline.cli.scan_bucket import main

    inp = tmp_path / "in"
    for kw in [
        {"output": str(inp)},
        {"output": str(inp / "scan")},
        {"input": str(inp / "shard-{000000..000003}.tar"), "output": str(inp)},
        {"input": "s3://b/shards/", "output": "s3://b/shards/scan/"},
    ]:
        with pytest.raises(ConfigError, match="output must not be the input folder or inside it"):
            _cfg(tmp_path, **kw)
    assert _cfg(
        tmp_path, input=str(inp / "shard-000000.tar"), output=str(inp / "scan")
    ).output  # not the folder
    assert _cfg(tmp_path, input="s3://b/shards/", output="s3://b/shards-scan/").output  # a sibling prefix
    argv = ["--input", str(inp), "--output", str(inp), "--detector", str(tmp_path / "det")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "output must not be the input folder" in err
    assert not inp.exists()


def test_cli_merges_file_and_flags(tmp_path):
    from pipeline.cli.scan_bucket import build_config, parse_args

    f = tmp_path / "scan.json"
    f.write_text(
        json.dumps({"input": "s3://b/in/", "output": "s3://b/out/", "detector": "d", "batch_size": 8})
    )
    cfg = build_config(parse_args(["--config-file", str(f), "--batch-size", "16", "--resume"]))
    assert cfg.batch_size == 16 and cfg.input == "s3://b/in/" and cfg.resume
    f.write_text(json.dumps({"input": "a", "output": "b", "detector": "c", "num_actor": 2}))
    with pytest.raises(ConfigError, match="num_actor"):
        build_config(parse_args(["--config-file", str(f)]))


@pytest.mark.parametrize(
    ("flags", "resume"),
    [([], False), (["--resume"], True), (["--resume", "false"], False), (["--resume=yes"], True)]
    + [(["--no-resume"], False), (["--resume", "maybe"], None), (["--no-resume", "true"], None)],
)
def test_bool_flag_forms_and_a_bad_value_is_one_configuration_line(flags, resume, capsys) -> None:
    """A bool field as `--x`, `--x true|false` or `--no-x`; a value that is neither (or one after `--no-x`)
    is the parser's one configuration-error line with exit code 2, never a traceback."""
    from pipeline.cli.scan_bucket import build_config, main, parse_args

    argv = ["--input", "a", "--output", "b", "--detector", "c", *flags]
    if resume is not None:
        assert build_config(parse_args(argv)).resume is resume
        return
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("configuration error: argument --resume/--no-resume: ") and len(err.splitlines()) == 1
    )


@pytest.mark.parametrize(
    ("job", "required"),
    [
        ("scan_bucket", ["--input", "--output", "--detector"]),
        ("rescore", ["--scan", "--detector", "--output"]),
        ("report", ["--scan", "--output"]),
        ("filter_shards", ["--scan", "--input", "--output"]),
        ("calibrate", ["--detector", "--data"]),
    ],
)
def test_a_missing_setting_is_named_by_its_flag(job, required, capsys) -> None:
    """Every job names a required setting nobody gave by the flag that gives it, as it names a bad flag."""
    import importlib

    assert importlib.import_module(f"pipeline.cli.{job}").main([]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith("configuration error: ") and all(
        f"{flag}: Field required" in err for flag in required
    )


def test_a_setting_from_the_config_file_is_named_as_its_field(tmp_path, capsys) -> None:
    from pipeline.cli.scan_bucket import main

    f = tmp_path / "scan.json"
    f.write_text(json.dumps({"input": "a", "batch_size": 0}))
    assert main(["--config-file", str(f), "--output", "b"]) == 2
    err = capsys.readouterr().err
    assert "--detector: Field required" in err and "batch_size: Input should be greater" in err
    assert main(["--config-file", str(f), "--output", "b", "--detector", "d", "--batch-size", "0"]) == 2
    assert "--batch-size: Input should be greater" in capsys.readouterr().err  # the flag overrode the file


def test_a_resume_with_nothing_to_continue_is_said_only_once_the_inputs_are_checked(tmp_path):
    """`--resume` of a date with no earlier run says it starts fresh, but only after the listing and the
    detectors are checked: a mistake in either stays the only stderr line (it followed the --resume line)."""
    from pipeline.scan.job import run_scan

    (tmp_path / "in").mkdir()
    said: list[str] = []
    with pytest.raises(ConfigError, match="input: no .tar shards under"):
        run_scan(_cfg(tmp_path, resume=True, scan_date="2026-11-20"), announce=said.append)
    write_raw(str(tmp_path / "in" / "shard-000000.tar"), b"")
    with pytest.raises(ConfigError, match="detector: cannot read checkpoint"):
        run_scan(_cfg(tmp_path, resume=True, scan_date="2026-11-20"), announce=said.append)
    assert said == [] and not (tmp_path / "out").exists()


def test_plan_refuses_existing_run_and_resumes_latest_unfinished(tmp_path):
    cfg = _cfg(tmp_path, scan_date="2026-11-20")
    plan = plan_run(cfg)
    assert not plan.resumed and plan.run_id.startswith("2026-11-20-")
    write_json(
        plan.paths.run_file("run.json"),
        {"status": "succeeded", "run_id": plan.run_id, "config": cfg.model_dump()},
    )
    # the re-score's wording for the same mistake (pipeline.output.check_new_run; tests/test_features.py)
    with pytest.raises(RunRefused) as refused:
        plan_run(cfg)
    assert str(refused.value) == (
        f"output: {cfg.output} already has scan_date=2026-11-20 (run.json, markers or Parquet); "
        "pass --resume to continue it, or choose another --output or --scan-date. Nothing was deleted."
    )
    later = RunPaths(cfg.output, "2026-11-21")
    write_json(
        later.run_file("run.json"), {"status": "failed", "run_id": "keep-me", "config": cfg.model_dump()}
    )
    resumed = plan_run(_cfg(tmp_path, resume=True))
    assert resumed.resumed and resumed.paths.scan_date == "2026-11-21" and resumed.run_id == "keep-me"
    with pytest.raises(
        RunRefused, match="^input: --resume of scan_date=2026-11-21 in .* with a different input"
    ):
        plan_run(_cfg(tmp_path, resume=True, input="s3://elsewhere/"))
    # the same input with or without a trailing slash is the same run
    assert plan_run(_cfg(tmp_path, resume=True, input=cfg.input + "/")).run_id == "keep-me"
    # a partition with Parquet but no run.json is also refused (never overwrite user data)
    other = RunPaths(cfg.output, "2026-11-22")
    write_raw(other.parquet("x"), b"PAR1")
    with pytest.raises(RunRefused):
        plan_run(_cfg(tmp_path, scan_date="2026-11-22"))


def test_parquet_bytes_are_readable():
    from pipeline.output import parquet_bytes

    t = SCHEMA.empty_table()
    assert pq.read_table(io.BytesIO(parquet_bytes(t))).schema.equals(SCHEMA, check_metadata=False)


def test_scorer_with_real_tiny_detector_matches_direct_forward(tmp_path):
    """Scorer (the actor class) on a prepared batch equals the detector's own forward on the same pixels."""
    import torch

    from pipeline.models import DetectorConfig, create_detector, save_detector
    from pipeline.models.preprocess import to_model_input
    from pipeline.scan.score import Scorer

    torch.manual_seed(0)
    cfg = DetectorConfig.load("tiny-mole")
    det = create_detector(cfg, pretrained=None)
    meta = save_detector(det, tmp_path / "det")
    samples = good_samples(5, size=(120, 110)) + [corrupt_image_sample("bad")]
    url = write_tar(str(tmp_path / "a.tar"), samples)
    batch = concat_all(prepare_shard(url, "a", image_size=cfg.image_size))
    scorer = Scorer(str(tmp_path / "det"), torch_threads=1)
    out = scorer(batch)
    with torch.inference_mode():
        det.eval().set_fused(False)  # the unfused reference path
        ref = det(to_model_input(batch["pixels"][:5], cfg)).logit.float().numpy()
    np.testing.assert_allclose(out["logit"][:5], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["p_fake"][:5], 1 / (1 + np.exp(-ref)), rtol=1e-4, atol=1e-6)
    assert (out["is_fake"][:5] == (out["p_fake"][:5] >= meta.threshold)).all()
    assert np.isnan(out["logit"][5]) and out["generator_scores"].shape == (6, 1 + len(meta.generators))


def test_list_input_folder_brace_and_missing(tmp_path):
    from pipeline.scan.job import list_input_objects

    for i in range(3):
        write_tar(str(tmp_path / "in" / f"shard-{i:06d}.tar"), good_samples(1, seed=i))
    folder = list_input_objects(_cfg(tmp_path))
    assert [s for _, s, _ in folder] == ["shard-000000", "shard-000001", "shard-000002"]
    brace = list_input_objects(_cfg(tmp_path, input=str(tmp_path / "in" / "shard-{000001..000002}.tar")))
    assert [s for _, s, _ in brace] == ["shard-000001", "shard-000002"]
    assert len(list_input_objects(_cfg(tmp_path, max_shards=2))) == 2
    with pytest.raises(ConfigError, match="input"):
        list_input_objects(_cfg(tmp_path, input=str(tmp_path / "nowhere")))


@pytest.mark.gpu
def test_scorer_gpu_fp16_matches_cpu_fp32(tmp_path):
    """GPU variant of the scorer (model on cuda, fp16 autocast, decode stays on CPU); skipped without CUDA."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from pipeline.models import DetectorConfig, create_detector, save_detector
    from pipeline.scan.score import Scorer

    save_detector(create_detector(DetectorConfig.load("tiny-mole"), pretrained=None), tmp_path / "det")
    url = write_tar(str(tmp_path / "a.tar"), good_samples(8, size=(120, 110)))
    batch = concat_all(prepare_shard(url, "a", image_size=96))
    cpu = Scorer(str(tmp_path / "det"))(batch)
    gpu = Scorer(str(tmp_path / "det"), device="cuda", dtype="float16")(batch)
    np.testing.assert_allclose(gpu["p_fake"], cpu["p_fake"], atol=2e-2)


def test_local_paths_given_relatively_travel_as_absolute_ones(tmp_path, monkeypatch) -> None:
    """Ray workers do not share the driver's working directory: the jobs resolve a relative local path before
    it reaches them (each member of --detector A,B too); remote URIs are kept as written."""
    from pipeline.cli import rescore, scan_bucket

    monkeypatch.chdir(tmp_path)
    args = ["--input", "shards/", "--output", "s3://b/scan", "--detector", "ckpt/a,s3://b/d,file://ckpt/c"]
    cfg = scan_bucket.build_config(scan_bucket.parse_args(args))
    assert cfg.input == str(tmp_path / "shards") and cfg.output == "s3://b/scan"
    assert cfg.detector.split(",") == [str(tmp_path / "ckpt" / "a"), "s3://b/d", str(tmp_path / "ckpt" / "c")]
    re_cfg = rescore.build_config(rescore.parse_args(["--scan", "scan", "--detector", "d", "--output", "o"]))
    assert (re_cfg.scan, re_cfg.detector, re_cfg.output) == tuple(
        str(tmp_path / n) for n in ("scan", "d", "o")
    )
