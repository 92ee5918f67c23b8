"""jobs/evaluate.py on small demo corpora with a saved (random-init) tiny detector: the report's numbers are
checked against an independent computation, and the grouping follows the UnivFD protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.cli.evaluate import main as evaluate_main
from pipeline.data.sources import LabelledImage
from pipeline.data.synthetic import DemoConfig, generate
from pipeline.eval.evaluate import group_records
from pipeline.models import DetectorMeta, Predictor, create_detector, load_detector, save_detector
from pipeline.models.preprocess import prepare_image

N = 6  # per class and family


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    generate(DemoConfig(out=str(root / "univfd"), families=["upconv", "vqgan"], n_per_class=N, seed=5))
    generate(
        DemoConfig(
            out=str(root / "wds"),
            layout="wds",
            families=["upconv", "vqgan"],
            n_per_class=N,
            seed=6,
            shard_size=10,
        )
    )
    det = create_detector("tiny-mole", pretrained=None, generators=["upconv"])
    save_detector(
        det, root / "ckpt", DetectorMeta(generators=["upconv"], threshold=0.3, unknown_threshold=0.6)
    )
    return {"root": root, "univfd": root / "univfd", "wds": root / "wds", "ckpt": root / "ckpt"}


def _evaluate_args(corpus: dict[str, Path], json_out: Path) -> list[str]:
    """evaluate's required flags on the corpus's UnivFD folder and checkpoint."""
    return ["--data", str(corpus["univfd"]), "--detector", str(corpus["ckpt"]), "--json", str(json_out)]


def _rec(label: int, gen: str, group: str | None) -> LabelledImage:
    """A listed image: a fake of `gen`, or a real of folder `group` (None: a shard's real, no folder)."""
    source = "wds" if group is None else "univfd"
    generator = gen if label == 1 else group or "real"
    return LabelledImage(uri=f"{source}/{generator}/{label}", label=label, generator=generator, source=source)


def test_grouping_follows_univfd_protocol() -> None:
    folders = [
        _rec(0, "real", "a"),
        _rec(1, "a", "a"),
        _rec(0, "real", "b"),
        _rec(1, "b", "b"),
        _rec(0, "real", "b"),
    ]
    assert group_records(folders) == {"a": [1, 0], "b": [3, 2, 4]}  # each folder with ITS OWN reals
    shards = [_rec(0, "real", None), _rec(1, "a", None), _rec(1, "b", None), _rec(0, "real", None)]
    assert group_records(shards) == {"a": [1, 0, 3], "b": [2, 0, 3]}  # no folders: every real


def test_report_matches_independent_computation(corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    rc = evaluate_main(
        [
            *_evaluate_args(corpus, out / "r.json"),
            "--markdown",
            str(out / "r.md"),
            "--plots",
            str(out / "plots"),
            "--jpeg",
            "75",
            "--blur",
            "1",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "r.json").read_text())
    assert set(rep["per_generator"]) == {"upconv", "vqgan"}

    det, meta = load_detector(corpus["ckpt"])
    pred = Predictor(det, meta)
    for gen, row in rep["per_generator"].items():
        assert (row["n_real"], row["n_fake"]) == (N, N)
        paths = sorted((corpus["univfd"] / gen / "0_real").iterdir()) + sorted(
            (corpus["univfd"] / gen / "1_fake").iterdir()
        )
        y = np.array([0] * N + [1] * N)
        imgs = np.stack([prepare_image(Image.open(p).convert("RGB"), det.config) for p in paths])
        p = pred.predict(imgs)["p_fake"].astype(np.float64)
        assert row["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
        assert row["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
        assert row["real_acc"] == pytest.approx(np.mean(p[:N] < 0.3))
        assert row["fake_acc"] == pytest.approx(np.mean(p[N:] >= 0.3))
        assert row["acc_05"] == pytest.approx(np.mean((p >= 0.5) == (y == 1)))
    mean_ap = np.mean([r["ap"] for r in rep["per_generator"].values()])
    assert rep["mean"]["ap"] == pytest.approx(mean_ap)
    att = rep["attribution"]
    assert att["known_generators"] == ["upconv"] and att["held_out_generators"] == ["vqgan"]
    assert att["n_known_fakes"] == N and att["n_held_out_fakes"] == N and att["n_closed_set"] == 3 * N
    assert 0.0 <= att["open_set_auroc"] <= 1.0
    assert set(rep["robustness"]) == {"jpeg", "blur"} and "75" in rep["robustness"]["jpeg"]
    md = (out / "r.md").read_text()
    assert "| upconv |" in md and "open-set AUROC" in md and "jpeg 75" in md
    for name in ("roc.png", "pr.png", "robustness_jpeg.png", "robustness_blur.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "eval_config.json").read_text())["jpeg"] == [75]


def test_webdataset_source_scores_each_generator_against_all_reals(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    rc = evaluate_main(
        ["--data", str(corpus["wds"]), "--detector", str(corpus["ckpt"]), "--json", str(tmp_path / "r.json")]
    )
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert {g: (r["n_real"], r["n_fake"]) for g, r in rep["per_generator"].items()} == {
        "upconv": (2 * N, N),
        "vqgan": (2 * N, N),
    }


def test_missing_data_or_checkpoint_fail_clearly(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        evaluate_main(
            [
                "--data",
                str(tmp_path / "nope"),
                "--detector",
                str(corpus["ckpt"]),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err
    assert (
        evaluate_main(
            [
                "--data",
                str(corpus["univfd"]),
                "--detector",
                str(tmp_path / "nockpt"),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    assert "nockpt" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--jpeg", "500", "--jpeg #1: Input should be less than or equal to 100"),
        ("--blur", "1,-1", "--blur #2: Input should be greater than or equal to 0"),
        ("--resize", "0", "--resize #1: Input should be greater than 0"),
        ("--resize", "nan", "--resize #1: Input should be a finite number"),
        ("--device", "bogus", "--device: Value error, not a torch device: 'bogus'"),
        ("--markdown", "{tmp}", "--markdown: Value error, {tmp} is a folder; name the file to write"),
    ],
)
def test_a_bad_sweep_level_or_device_is_the_flags_one_line(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str, named: str
) -> None:
    """Checked before any image is read: a level the perturbation refuses made every image of its sweep a
    skip and ended in "scores contain NaN or inf" (or, blur -1, in a silent success); an unknown device was
    torch's traceback."""
    argv = _evaluate_args(corpus, tmp_path / "r.json")
    value, named = value.format(tmp=tmp_path), named.format(tmp=tmp_path)  # a folder where a file goes
    assert evaluate_main([*argv, flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("configuration error: ") and named in err
    assert not (tmp_path / "r.json").exists()


def test_outputs_and_s3_inputs_are_checked_before_any_work(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage preflight of calibrate and evaluate (README "Exit codes"): a file where an output folder
    goes is 3, an s3:// input behind an endpoint nobody answers 7, one line each; they were tracebacks
    (FileExistsError, EndpointConnectionError) with exit 1. A missing LOCAL input keeps its configuration
    error (2, test_missing_data_or_checkpoint_fail_clearly)."""
    from pipeline.cli.calibrate import main as calibrate_main
    from tests.support.s3 import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: refused
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    data, ckpt = str(corpus["univfd"]), str(corpus["ckpt"])
    report = ["--json", str(tmp_path / "r.json")]
    cases = [
        (calibrate_main, ["--detector", ckpt, "--data", data, "--out", str(blocker)], 3, "output not usable"),
        (calibrate_main, ["--detector", ckpt, "--data", "s3://bkt/held-out"], 7, "data unreachable"),
        (
            evaluate_main,
            ["--detector", ckpt, "--data", data, *report, "--plots", str(blocker)],
            3,
            "plots not",
        ),
        (evaluate_main, ["--detector", "s3://bkt/ckpt", "--data", data, *report], 7, "detector unreachable"),
    ]
    for main, argv, code, says in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"storage error: {says}"), err
    assert blocker.read_text() == "x" and sorted(tmp_path.iterdir()) == [blocker]


def test_unreadable_image_is_a_counted_skip(corpus: dict[str, Path], tmp_path: Path) -> None:
    """A corrupt file in the test set: evaluation and re-calibration stream on, count it, leave it out."""
    import shutil

    from pipeline.cli.calibrate import main as calibrate_main

    data = tmp_path / "univfd"
    shutil.copytree(corpus["univfd"], data)
    victim = sorted((data / "upconv" / "1_fake").iterdir())[0]
    victim.write_bytes(b"\x89PNG truncated")
    assert (
        evaluate_main(
            [
                "--data",
                str(data),
                "--detector",
                str(corpus["ckpt"]),
                "--json",
                str(tmp_path / "r.json"),
                "--jpeg",
                "75",
            ]
        )
        == 0
    )
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["skipped"]["n"] == 1 and str(victim) in rep["skipped"]["examples"][0]
    assert rep["per_generator"]["upconv"]["n_fake"] == N - 1 and rep["per_generator"]["vqgan"]["n_fake"] == N
    assert (
        calibrate_main(["--detector", str(corpus["ckpt"]), "--data", str(data), "--out", str(tmp_path / "c")])
        == 0
    )
    calib = json.loads((tmp_path / "c" / "calibration.json").read_text())
    assert calib["skipped"]["n"] == 1 and calib["n_real"] == 2 * N
