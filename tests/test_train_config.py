"""TrainConfig / CLI parsing and the data split: fast, no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.train_detector import main, parse
from pipeline.settings import ConfigError
from pipeline.train.config import TrainConfig
from pipeline.train.data import stratified_split


def test_cli_overrides_only_explicit_flags(tmp_path: Path) -> None:
    f = tmp_path / "train.json"
    f.write_text(json.dumps({"data": "d", "out": "o", "epochs": 7, "lr": 0.5, "mask": "texture"}))
    cfg, args = parse(["--config-file", str(f), "--lr", "0.1", "--train-generators", "a,b"])
    assert (cfg.epochs, cfg.lr, cfg.mask) == (7, 0.1, "texture")  # file kept, flag overrode
    assert cfg.train_generators == ["a", "b"]
    assert cfg.batch_size == TrainConfig.model_fields["batch_size"].default  # untouched default
    assert args.engine == "ray"


def test_unknown_field_in_config_file_is_named(tmp_path: Path) -> None:
    f = tmp_path / "train.json"
    f.write_text(json.dumps({"data": "d", "out": "o", "epoch": 3}))
    with pytest.raises(ConfigError, match="epoch"):
        parse(["--config-file", str(f)])


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--data", "d"], "out"),
        (["--data", "d", "--out", "o", "--mask-ratio", "1.5"], "--mask-ratio"),
        (["--data", "d", "--out", "o", "--method", "linear", "--mask", "texture"], "mask"),
        (["--data", "d", "--out", "o", "--train-generators", "real"], "--train-generators"),
        (["--data", "d", "--out", "o", "--train-generators", "a,unknown"], "--train-generators"),
    ],
)
def test_bad_values_fail_fast_naming_the_field(
    argv: list[str], field: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 2
    assert field in capsys.readouterr().err


def test_empty_and_missing_data_give_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    for data in (tmp_path / "empty", tmp_path / "missing"):
        rc = main(["--data", str(data), "--out", str(tmp_path / "ck"), "--engine", "local"])
        err = capsys.readouterr().err
        assert rc == 2
        assert str(data) in err and "error:" in err
    assert not (tmp_path / "ck").exists()


def test_outputs_and_s3_data_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage preflight (README "Exit codes"): a file where --out goes is 3, an s3:// --data or --out
    behind an endpoint nobody answers 7, one line each, before the data is listed; they were "train failed:
    FileExistsError" (exit 1) and a 200-line NoCredentialsError traceback."""
    from pipeline.data.synthetic import DemoConfig, generate
    from tests.support.s3 import free_port

    data = tmp_path / "data"
    generate(DemoConfig(out=str(data), families=["upconv"], n_per_class=2, image_size=32))
    capsys.readouterr()  # generate's own JSON log lines
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: refused
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    quick = ["--engine", "local", "--config", "tiny-linear", "--method", "linear", "--pretrained", "none"]
    for io, code, says in [
        (["--data", str(data), "--out", str(blocker)], 3, "output not usable: " + str(blocker)),
        (["--data", "s3://bkt/data", "--out", str(tmp_path / "ck")], 7, "data unreachable"),
        (
            ["--data", str(data), "--out", "s3://bkt/ck"],
            7,
            "output unreachable (cannot connect): s3://bkt/ck",
        ),
        # an s3:// backbone file: probed with the rest (it was "train failed: EndpointConnectionError", 1)
        (
            ["--data", str(data), "--out", str(tmp_path / "ck"), "--pretrained", "s3://bkt/bb.safetensors"],
            7,
            "pretrained unreachable (cannot connect): s3://bkt/bb.safetensors",
        ),
    ]:
        assert main([*quick, *io]) == code, io
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"storage error: {says}"), err
    assert blocker.read_text() == "x" and not (tmp_path / "ck").exists()


def test_an_s3_backbone_pickle_is_refused_by_name_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, s3fs_client
) -> None:
    """An s3:// `--pretrained` that the store serves but that is a pickle (.pth) is ONE configuration-error
    line before the job announces itself: judged by its name, never fetched or opened."""
    from pipeline.data.synthetic import DemoConfig, generate

    generate(DemoConfig(out=str(tmp_path / "d"), families=["upconv"], n_per_class=2, image_size=32))
    s3fs_client.mkdir("bkt")
    s3fs_client.pipe("bkt/bb.pth", b"not read")
    capsys.readouterr()
    args = ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "ck"), "--engine", "local"]
    assert main([*args, "--pretrained", "s3://bkt/bb.pth"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("configuration error: "), err
    assert "'.pth' files are Python pickles" in err, err
    assert not (tmp_path / "ck").exists()


def test_stratified_split_keeps_class_shares() -> None:
    strata = ["real"] * 50 + ["a"] * 30 + ["b"] * 20
    tr, va = stratified_split(strata, 0.2, seed=3)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 100
    counts = {s: sum(strata[i] == s for i in va) for s in ("real", "a", "b")}
    assert counts == {"real": 10, "a": 6, "b": 4}
    tr2, va2 = stratified_split(strata, 0.2, seed=3)
    assert np.array_equal(va, va2)  # deterministic given the seed
    _, none = stratified_split(strata, 0.0, seed=0)
    assert none.size == 0


def test_data_problems_fail_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from pipeline.data.synthetic import DemoConfig, generate

    generate(DemoConfig(out=str(tmp_path / "d"), families=["upconv"], n_per_class=2, seed=0))
    base = ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "ck"), "--engine", "local"]
    assert main([*base, "--train-generators", "vqgan"]) == 2
    err = capsys.readouterr().err
    assert "train_generators" in err and "vqgan" in err and "found: upconv" in err
    shutil.rmtree(tmp_path / "d" / "upconv" / "1_fake")
    assert main(base) == 2
    assert "no fake images" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def test_a_mistake_found_while_planning_is_the_only_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The data, the detector config and a local / tag backbone are checked before the job announces itself:
    each mistake is ONE stderr line (they came after one or two `train: …` status lines)."""
    from pipeline.data.synthetic import DemoConfig, generate

    generate(DemoConfig(out=str(tmp_path / "d"), families=["upconv"], n_per_class=2, image_size=32))
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    base = ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "ck"), "--engine", "local"]
    for extra, says in [
        (["--train-generators", "vqgan"], "train_generators: vqgan not found"),
        (["--data", str(tmp_path / "empty")], str(tmp_path / "empty")),
        (["--config", str(tmp_path / "none.json")], f"--config: not found: {tmp_path / 'none.json'}"),
        (["--config", "no-such-config"], "--config: unknown detector config 'no-such-config'; shipped: "),
        (["--pretrained", str(tmp_path / "bb.pth")], "'.pth' files are Python pickles"),
        (["--pretrained", str(tmp_path / "bb.safetensors")], "pretrained: weights file not found"),
        (["--pretrained", "no-such-tag"], "pretrained: 'no-such-tag' is neither"),
    ]:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("configuration error: ") and says in err, err
    assert not (tmp_path / "ck").exists()


def test_shipped_univfd_recipe_is_the_paper_protocol() -> None:
    """`--config-file univfd` names the recipe shipped in the package: UnivFD's batch, lr, augmentation and
    patience; flags still override it."""
    cfg, _ = parse(
        ["--config-file", "univfd", "--data", "s3://b/train", "--out", "s3://b/ckpt", "--epochs", "3"]
    )
    assert (cfg.batch_size, cfg.lr, cfg.plateau_patience) == (256, 1e-4, 5)
    assert cfg.augment and (cfg.augment_blur_prob, cfg.augment_jpeg_prob, cfg.augment_resize) == (
        0.5,
        0.5,
        256,
    )
    assert cfg.crop_grid == "pixel" and cfg.config == "vitl14-mole" and cfg.use_gpu and cfg.epochs == 3
