"""Policy mistakes are configuration errors: a generator rule naming a label the scan's detector does not have
(a misspelled generator would match nothing, silently) exits 2 naming the known labels, before anything is
written. The labels come from the scan's own `_run/<date>/detector.json` (a real in-process scan here)."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.cli.filter_shards import main as filter_main
from pipeline.hygiene.policy import FilterPolicy
from pipeline.settings import ConfigError
from tests.support.hygiene import GALLERY_DAY as DAY
from tests.support.hygiene import make_detector, scan_in_process, write_sidecar_corpus


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("policy")
    corpus = write_sidecar_corpus(str(base / "in"))
    scan_in_process(corpus, str(base / "scan"), make_detector(corpus, str(base / "detector")))
    det = json.loads((base / "scan" / "_run" / DAY / "detector.json").read_text())
    return {"base": base, "input": corpus.root, "scan": str(base / "scan"), "detector_id": det["detector_id"]}


def test_check_labels_accepts_the_detectors_labels_and_unknown() -> None:
    labels = ["real", "famA", "upconv"]
    ok = FilterPolicy.parse(
        {"generator_rules": [{"generator": g, "action": "drop"} for g in [*labels, "unknown"]]}
    )
    ok.check_labels(labels, where="the detector")
    bad = FilterPolicy.parse(
        {
            "generator_rules": [
                {"generator": "upcnv", "action": "drop", "threshold": 0.5},
                {"generator": "famA", "action": "drop"},
                {"generator": "Real", "action": "keep"},
            ]
        }
    )
    with pytest.raises(ConfigError) as info:
        bad.check_labels(labels, where="the detector")
    msg = str(info.value)
    assert msg.startswith("generator_rules: 'upcnv', 'Real' are not labels of the detector")
    assert msg.endswith("known labels: real, famA, upconv, unknown")


def run(capsys, *args: str) -> tuple[int, str]:
    rc = filter_main(list(args))
    return rc, capsys.readouterr().err


def test_misspelled_rule_is_a_config_error_naming_the_known_labels(scanned, tmp_path, capsys) -> None:
    out = tmp_path / "clean"
    base = ["--scan", scanned["scan"], "--input", scanned["input"], "--output", str(out)]
    rc, err = run(capsys, *base, "--rule", "upcnv=drop@0.5")
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0] == (
        "configuration error: generator_rules: 'upcnv' is not a label of the scan's detector "
        f"{scanned['detector_id']} (scan_date={DAY}); known labels: real, famA, upconv, unknown"
    )
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"generator_rules": [{"generator": "famB", "action": "quarantine"}]}))
    rc, err = run(capsys, *base, "--policy", str(policy))
    assert rc == 2 and "'famB' is not a label" in err
    assert not out.exists()
    # the same rules with real labels pass the check (a dry run writes nothing)
    rc, err = run(
        capsys,
        *base,
        "--rule",
        "upconv=drop@0.5",
        "--rule",
        "unknown=quarantine",
        "--on-shard-error",
        "skip",
        "--dry-run",
    )
    assert rc == 0, err
    assert not out.exists()


def test_scan_without_detector_json_is_not_refused(scanned, tmp_path, capsys) -> None:
    """A scan output not written by this project's scan has no detector.json: the labels cannot be checked,
    the run is not refused for it (a warning `policy_labels_unchecked` is logged)."""
    copy = tmp_path / "scan"
    shutil.copytree(scanned["scan"], copy)
    (copy / "_run" / DAY / "detector.json").unlink()
    rc, err = run(
        capsys,
        "--scan",
        str(copy),
        "--input",
        scanned["input"],
        "--output",
        str(tmp_path / "o"),
        "--rule",
        "upcnv=drop",
        "--on-shard-error",
        "skip",
        "--dry-run",
    )
    assert rc == 0, err
