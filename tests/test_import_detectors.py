"""jobs/import_detector.py: the peers' released weight formats (torch zip pickles of OrderedDicts, storages
tagged cuda:0, ClipBased's nestings and ``module.`` prefixes) imported into genscan checkpoints; strict key
and shape checks; operator mistakes as one line + exit code; pickles that hold code refused without running
it."""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.cli import import_detector as job
from pipeline.exitcodes import ExitCode
from pipeline.models import load_detector
from pipeline.models.config import DetectorConfig
from pipeline.models.constants import META_FILE, WEIGHTS_FILE
from pipeline.storage import sha256_file
from tests.support.peer_detectors import TINY, peer_state, save_backbone, save_peer, tiny_clip


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSCAN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights file (safetensors) of a tiny CLIP visual tower, the backbone the tiny configs use."""
    return save_backbone(tiny_clip(), tmp_path_factory.mktemp("bb") / "tiny.safetensors")


def run_job(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    rc = job.main(list(args))
    cap = capsys.readouterr()
    errors = [
        ln for ln in cap.err.splitlines() if ln.startswith(("configuration error:", "weights file refused:"))
    ]
    assert "Traceback" not in cap.err
    return rc, cap.out, errors


def import_args(
    kind: str, weights: Path, out: Path, *extra: str, config: str | None = None, backbone: Path | None = None
) -> list[str]:
    """The import command line: a peer's weights file of `kind` into `out`; a tiny config needs its backbone
    file (nothing is downloaded)."""
    args = ["--kind", kind, "--weights", str(weights), "--out", str(out), *extra]
    if config is not None:
        args += ["--config", config]
    if backbone is not None:
        args += ["--backbone-weights", str(backbone)]
    return args


# ---------------------------------------------------------------------------------------------- round trips
def test_cuda_tagged_file_needs_map_location(tmp_path: Path) -> None:
    """The test files really are in the released layout: without map_location a CPU host cannot read them."""
    f = save_peer(tmp_path / "fc_weights.pth", peer_state("univfd"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(f, weights_only=True)
    assert set(torch.load(f, weights_only=True, map_location="cpu")) == {"weight", "bias"}


@pytest.mark.parametrize(
    "kind,config", [("univfd", "univfd-tiny"), ("clipbased", "clipbased-tiny"), ("rine", "rine-tiny")]
)
def test_import_round_trip_records_provenance(
    kind: str,
    config: str,
    backbone: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sd = peer_state(kind)
    f = save_peer(tmp_path / "weights.pth", sd)
    out = tmp_path / "ckpt"
    rc, stdout, errors = run_job(*import_args(kind, f, out, config=config, backbone=backbone), capsys=capsys)
    assert rc == 0, errors
    printed = json.loads(stdout)
    meta_json = json.loads((out / META_FILE).read_text())
    assert printed["detector_id"] == meta_json["detector_id"]
    src = meta_json["imported_from"]
    assert src["sha256"] == sha256_file(f) and src["bytes"] == f.stat().st_size
    assert (
        src["kind"] == kind
        and src["licence"] in ("MIT", "Apache-2.0")
        and src["origin"].startswith("https://")
    )
    assert set(src["keys"]) == set(sd)
    assert meta_json["backbone"] == {
        "arch": TINY,
        "pretrained": str(backbone),
        "kind": "file",
        "sha256": sha256_file(backbone),
        "stored_in_checkpoint": False,
    }
    stored = load_file(str(out / WEIGHTS_FILE))
    for k, v in sd.items():
        assert torch.equal(stored[src["keys"][k]], v)
    det, meta = load_detector(out)  # the loader every job uses: hash, keys, shapes, backbone sha256
    assert meta.config.decision == "logit_gt" and meta.threshold == 0.5
    state = det.state_dict()
    for k, v in sd.items():
        assert torch.equal(state[src["keys"][k]], v)


@pytest.mark.parametrize(
    "nesting,module",
    [("raw", False), ("model", False), ("model", True), ("state_dict", False), ("net", False)],
)
def test_clipbased_nestings(
    nesting: str,
    module: bool,
    backbone: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sd = peer_state("clipbased")
    f = save_peer(tmp_path / "weights.pth", sd, nesting=nesting, module=module)
    out = tmp_path / "ckpt"
    rc, _, errors = run_job(
        *import_args("clipbased", f, out, config="clipbased-tiny", backbone=backbone), capsys=capsys
    )
    assert rc == 0, errors
    meta = json.loads((out / META_FILE).read_text())
    assert meta["imported_from"]["nesting"] == nesting + (" (module. stripped)" if module else "")
    stored = load_file(str(out / WEIGHTS_FILE))
    assert torch.equal(stored["head_fake.weight"], sd["fc.weight"])
    assert torch.equal(stored["head_fake.bias"], sd["fc.bias"])


@pytest.mark.parametrize(
    "kind,variant,shapes",
    [
        ("univfd", None, {"weight": (1, 768), "bias": (1,)}),
        ("clipbased", None, {"fc.weight": (1, 1024), "fc.bias": (1,)}),
        ("rine", "2class", None),
    ],
)
def test_vitl14_shaped_files_import_with_default_configs(
    kind: str, variant: str | None, shapes: dict | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The released files' exact ViT-L/14 shapes against the shipped configs (keys and shapes only: no
    backbone is built and nothing is downloaded; the backbone stays the config's open_clip tag)."""
    if shapes is None:
        sd = peer_state("rine", width=1024, depth=24, nproj=4, dim=128)
    else:
        sd = collections.OrderedDict((k, torch.randn(s)) for k, s in shapes.items())
    f = save_peer(tmp_path / "w.pth", sd)
    args = import_args(kind, f, tmp_path / "ckpt", *(["--variant", variant] if variant else []))
    rc, _, errors = run_job(*args, capsys=capsys)
    assert rc == 0, errors
    meta = json.loads((tmp_path / "ckpt" / META_FILE).read_text())
    expected_cfg = {"univfd": "univfd-vitl14", "clipbased": "clipbased-vitl14", "rine": "rine-vitl14-2class"}[
        kind
    ]
    assert meta["config"]["name"] == expected_cfg
    assert meta["backbone"]["kind"] == "tag" and meta["backbone"]["stored_in_checkpoint"] is False
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS_FILE))
    assert len(stored) == len(sd) + 2  # + the constant attribution head over ["real"]
    if kind == "rine":
        assert len(sd) == 23 and tuple(stored["neck.alpha"].shape) == (1, 24, 128)
        assert f.stat().st_size > 1_000_000  # the released 2class file is 1,139,686 bytes


# ---------------------------------------------------------------------------------------------- mistakes
def _one_error(errors: list[str]) -> str:
    assert len(errors) == 1, errors
    return errors[0]


def test_wrong_kind_names_keys(backbone: Path, tmp_path: Path, capsys) -> None:
    f = save_peer(tmp_path / "fc_weights.pth", peer_state("univfd", embed=128))
    rc, _, errors = run_job(
        *import_args("clipbased", f, tmp_path / "c", config="clipbased-tiny", backbone=backbone),
        capsys=capsys,
    )
    msg = _one_error(errors)
    assert rc == ExitCode.NOT_FOUND
    assert "missing keys (2): fc.bias, fc.weight" in msg and "unexpected keys (2): bias, weight" in msg
    assert not (tmp_path / "c").exists()


def test_wrong_shape_and_variant_hint(tmp_path: Path, capsys) -> None:
    f = save_peer(
        tmp_path / "model_2class_trainable.pth", peer_state("rine", width=1024, depth=24, nproj=4, dim=128)
    )
    rc, _, errors = run_job(*import_args("rine", f, tmp_path / "c", "--variant", "4class"), capsys=capsys)
    msg = _one_error(errors)
    assert rc == ExitCode.NOT_FOUND
    assert "alpha: expected (1, 24, 1024), got (1, 24, 128)" in msg
    assert "unexpected keys" in msg and "proj1.10.weight" in msg  # 2 projections expected, 4 found
    assert "fit --variant 2class" in msg


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--kind", "dire"], "--kind: 'dire' is not one of univfd, clipbased, rine"),
        (["--kind", "univfd", "--variant", "2class"], "--variant is only for --kind rine"),
        (["--kind", "rine", "--variant", "3class"], "--variant: '3class' is not one of"),
        (["--kind", "univfd", "--config", "tiny-mole"], "does not express a univfd detector"),
        (["--kind", "univfd", "--config", "univfd-tiny"], "pass --backbone-weights"),
        (["--kind", "univfd", "--config", "no-such-config.json"], "--config: not found: no-such-config.json"),
        (["--kind", "univfd", "--backbone-weights", "bb.pth"], "bb.pth: '.pth' files are Python pickles"),
    ],
)
def test_operator_mistakes_one_line_exit_2(args: list[str], needle: str, tmp_path: Path, capsys) -> None:
    f = save_peer(tmp_path / "w.pth", peer_state("univfd", embed=768))
    rc, _, errors = run_job(*args, "--weights", str(f), "--out", str(tmp_path / "c"), capsys=capsys)
    assert rc == ExitCode.CONFIG
    assert needle in _one_error(errors)


def test_missing_file_and_existing_checkpoint(backbone, tmp_path: Path, capsys) -> None:
    base = ["--kind", "univfd", "--config", "univfd-tiny", "--backbone-weights", str(backbone)]
    rc, _, errors = run_job(
        *base, "--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "c"), capsys=capsys
    )
    assert rc == ExitCode.CONFIG and "--weights: no such file" in _one_error(errors)
    f = save_peer(tmp_path / "w.pth", peer_state("univfd"))
    assert run_job(*base, "--weights", str(f), "--out", str(tmp_path / "c"), capsys=capsys)[0] == 0
    rc, _, errors = run_job(*base, "--weights", str(f), "--out", str(tmp_path / "c"), capsys=capsys)
    assert rc == ExitCode.CONFIG and "pass --force" in _one_error(errors)
    assert run_job(*base, "--weights", str(f), "--out", str(tmp_path / "c"), "--force", capsys=capsys)[0] == 0


def test_s3_weights_import_and_a_store_that_refuses_them_is_one_storage_line(
    backbone, s3fs_client, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An s3:// --weights is read from the store (moto); without credentials or behind an endpoint nobody
    answers it (or an s3:// --out) is the storage preflight's one line with its exit code (6 / 7), before any
    work: it was "--weights: no such file" (exit 2) whatever the store said."""
    from tests.support.s3 import free_port

    s3fs_client.mkdir("bkt")
    s3fs_client.put(str(save_peer(tmp_path / "w.pth", peer_state("univfd"))), "bkt/peer/w.pth")
    base = ["--kind", "univfd", "--config", "univfd-tiny", "--backbone-weights", str(backbone)]
    assert job.main([*base, "--weights", "s3://bkt/peer/w.pth", "--out", str(tmp_path / "c")]) == 0
    assert (
        json.loads((tmp_path / "c" / META_FILE).read_text())["imported_from"]["file"] == "s3://bkt/peer/w.pth"
    )
    capsys.readouterr()

    def refused(weights: str, out: str) -> tuple[int, str]:
        rc = job.main([*base, "--weights", weights, "--out", out])
        return rc, capsys.readouterr().err

    with monkeypatch.context() as m:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            m.delenv(k, raising=False)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
        m.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
        m.setenv("AWS_EC2_METADATA_DISABLED", "true")
        rc, err = refused("s3://bkt/peer/w.pth", str(tmp_path / "c2"))
        assert rc == ExitCode.NO_CREDENTIALS and err.count("\n") == 1, err
        assert err.startswith(
            "storage error: weights not accessible without credentials: s3://bkt/peer/w.pth"
        )
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens: refused
    for weights, out, says in [
        (
            "s3://bkt/peer/w.pth",
            str(tmp_path / "c2"),
            "weights unreachable (cannot connect): s3://bkt/peer/w.pth",
        ),
        (str(tmp_path / "w.pth"), "s3://bkt/c2", "output unreachable (cannot connect): s3://bkt/c2"),
    ]:
        rc, err = refused(weights, out)
        assert rc == ExitCode.CANNOT_CONNECT and err.count("\n") == 1, err
        assert err.startswith(f"storage error: {says}"), err
    assert not (tmp_path / "c2").exists()


def test_backbone_file_of_another_arch_is_refused(tmp_path: Path, capsys) -> None:
    """A ViT-B/16 safetensors given for a tiny config: named at import time, before any weights are
    written."""
    wrong = {"visual.conv1.weight": torch.zeros(768, 3, 16, 16), "visual.proj": torch.zeros(768, 512)}
    save_file(wrong, str(tmp_path / "b16.safetensors"))
    f = save_peer(tmp_path / "w.pth", peer_state("univfd"))
    rc, _, errors = run_job(
        *import_args(
            "univfd", f, tmp_path / "c", config="univfd-tiny", backbone=tmp_path / "b16.safetensors"
        ),
        capsys=capsys,
    )
    msg = _one_error(errors)
    assert rc == ExitCode.CONFIG and "conv1.weight: expected (128, 3, 16, 16), got (768, 3, 16, 16)" in msg
    assert "missing keys" in msg and not (tmp_path / "c").exists()


class _Payload:
    """Unpickling this would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("style", ["torch_zip", "legacy_pickle", "garbage", "list"])
def test_code_and_junk_are_refused_without_running(style: str, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    f = tmp_path / "w.pth"
    if style == "torch_zip":
        torch.save({"weight": torch.zeros(1, 768), "bias": _Payload(marker)}, f)
    elif style == "legacy_pickle":
        f.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    elif style == "garbage":
        f.write_bytes(b"\x00not a torch file" * 10)
    else:
        torch.save([torch.zeros(1)], f)
    assert not marker.exists()
    rc, _, errors = run_job(*import_args("univfd", f, tmp_path / "c"), capsys=capsys)
    msg = _one_error(errors)
    assert rc == ExitCode.NOT_FOUND and str(f) in msg
    assert not marker.exists() and not (tmp_path / "c").exists()


def test_scan_and_train_loaders_still_refuse_pickles(tmp_path: Path) -> None:
    """Only the importer opens a pickle: a checkpoint directory holding the peer's .pth is refused by name."""
    from pipeline.models import CheckpointError

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_peer(ckpt / "fc_weights.pth", peer_state("univfd"))
    with pytest.raises(CheckpointError, match="never unpickled"):
        load_detector(ckpt)
    with pytest.raises(CheckpointError, match="never unpickled"):
        load_detector(ckpt / "fc_weights.pth")


def test_shipped_configs_express_each_detector() -> None:
    u, c, r = (DetectorConfig.load(n) for n in ("univfd-vitl14", "clipbased-vitl14", "rine-vitl14-2class"))
    assert (u.arch, u.pretrained, u.head.feature, u.head.normalize, u.preprocess) == (
        "ViT-L-14-quickgelu",
        "openai",
        "embedding",
        False,
        "center_crop_pad",
    )
    assert (c.arch, c.pretrained, c.head.feature, c.head.normalize, c.preprocess) == (
        "ViT-L-14",
        "commonpool_xl_s13b_b90k",
        "pre_proj",
        True,
        "resize_crop",
    )
    assert (r.method, r.head.feature, r.rine.nproj, r.rine.proj_dim, r.preprocess) == (
        "rine",
        "block_cls",
        4,
        128,
        "center_crop_pad",
    )
    dims = {v: DetectorConfig.load(f"rine-vitl14-{v}").rine for v in ("1class", "2class", "4class", "ldm")}
    assert {v: (d.nproj, d.proj_dim) for v, d in dims.items()} == {
        "1class": (4, 1024),
        "2class": (4, 128),
        "4class": (2, 1024),
        "ldm": (4, 1024),
    }
    assert {x.decision for x in (u, c, r)} == {"logit_gt"}


def test_read_torch_file_is_the_only_torch_load() -> None:
    """Source check (AST): the one torch.load call in pipeline/ and jobs/ passes weights_only=True and
    map_location="cpu", and sits in the importer."""
    import ast

    root = Path(__file__).resolve().parents[1]
    calls = []
    for p in [*(root / "pipeline").rglob("*.py"), *(root / "jobs").glob("*.py")]:
        for node in ast.walk(ast.parse(p.read_text())):
            f = getattr(node, "func", None)
            torch_load = (
                isinstance(f, ast.Attribute) and f.attr == "load" and getattr(f.value, "id", "") == "torch"
            )
            if isinstance(node, ast.Call) and torch_load:
                kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
                calls.append((p.relative_to(root).as_posix(), kw))
    assert calls == [("pipeline/models/importer.py", {"weights_only": True, "map_location": "cpu"})], calls


def test_evaluate_and_calibrate_accept_an_imported_detector(
    backbone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The training helper's jobs, unchanged, on an imported RINE checkpoint (UnivFD folder layout data)."""
    import numpy as np
    from PIL import Image

    from pipeline.cli import calibrate as calibrate_job
    from pipeline.cli import evaluate as evaluate_job

    f = save_peer(tmp_path / "model_2class_trainable.pth", peer_state("rine"))
    ckpt = tmp_path / "ckpt"
    assert (
        run_job(*import_args("rine", f, ckpt, config="rine-tiny", backbone=backbone), capsys=capsys)[0] == 0
    )
    rng = np.random.default_rng(0)
    for label in ("0_real", "1_fake"):
        d = tmp_path / "data" / "gan" / label
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (80 + 12 * i, 110, 3), dtype=np.uint8)).save(d / f"{i}.png")
    data = str(tmp_path / "data")
    assert (
        evaluate_job.main(["--data", data, "--detector", str(ckpt), "--json", str(tmp_path / "ev.json")]) == 0
    )
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["per_generator"]["gan"]["n_real"] == 4 and ev["per_generator"]["gan"]["n_fake"] == 4
    assert calibrate_job.main(["--detector", str(ckpt), "--data", data, "--out", str(tmp_path / "cal")]) == 0
    meta = json.loads((tmp_path / "cal" / META_FILE).read_text())
    assert meta["imported_from"]["kind"] == "rine" and meta["config"]["decision"] == "logit_gt"
    assert load_detector(tmp_path / "cal")[1].threshold == meta["threshold"]


def test_config_rules_for_the_new_fields() -> None:
    from pipeline.settings import ConfigError

    base = DetectorConfig.load("rine-tiny").model_dump()
    with pytest.raises(ConfigError, match="rine: required"):
        DetectorConfig.parse({**base, "rine": None})
    with pytest.raises(ConfigError, match="block_cls"):
        DetectorConfig.parse({**base, "method": "linear", "rine": None})
    with pytest.raises(ConfigError, match="decision"):
        DetectorConfig.parse({**base, "decision": "p_gt"})
    with pytest.raises(ConfigError, match="preprocess"):
        DetectorConfig.parse({**base, "preprocess": "pad"})
    lin = DetectorConfig.load("univfd-tiny").model_dump()
    with pytest.raises(ConfigError, match="block_cls"):
        DetectorConfig.parse({**lin, "head": {"feature": "block_cls", "normalize": False}})
