"""Checkpoints and backbone sources: safetensors round trips (local + real S3 server), key/shape errors,
pickles refused, pretrained from a local .safetensors file, an s3:// URI and an open_clip tag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.models import (
    CheckpointError,
    DetectorConfig,
    DetectorMeta,
    create_detector,
    load_detector,
    save_detector,
)
from pipeline.models.checks import randomize_adapters
from pipeline.models.config import register_arch_configs
from pipeline.settings import ConfigError
from pipeline.storage import sha256_file

GENS = ["gan", "diffusion"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSCAN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in these paths may unpickle."""

    def boom(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", boom)


def _trained_like(config: str = "tiny-mole", **kw):
    torch.manual_seed(0)
    det = create_detector(config, pretrained=None, generators=GENS, **kw)
    randomize_adapters(det, seed=3)
    with torch.no_grad():
        det.head_fake.weight.normal_()
        det.head_gen.weight.normal_()
    return det


def _rewrite(ckpt: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace detector.safetensors and keep detector_id consistent, so the key/shape check is what fails."""
    save_file(tensors, str(ckpt / "detector.safetensors"))
    meta = json.loads((ckpt / "detector.json").read_text())
    meta["detector_id"] = (
        meta["detector_id"].split("@")[0] + "@" + sha256_file(ckpt / "detector.safetensors")[:12]
    )
    (ckpt / "detector.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("config", ["tiny-mole", "tiny-linear"])
def test_round_trip_bit_exact(tmp_path: Path, config: str) -> None:
    det = _trained_like(config)
    meta = save_detector(
        det, tmp_path / "ck", DetectorMeta(threshold=0.37, unknown_threshold=0.6, notes={"ap": 0.9})
    )
    assert (tmp_path / "ck" / "detector.safetensors").is_file() and (
        tmp_path / "ck" / "detector.json"
    ).is_file()
    assert meta.detector_id == f"{config}@{sha256_file(tmp_path / 'ck' / 'detector.safetensors')[:12]}"
    on_disk = json.loads((tmp_path / "ck" / "detector.json").read_text())
    assert on_disk["backbone"] == {
        "arch": "ViT-Tiny-16-96",
        "pretrained": None,
        "kind": "none",
        "sha256": None,
        "stored_in_checkpoint": True,
    }
    assert on_disk["generators"] == GENS and on_disk["config"]["name"] == config and on_disk["created_at"]

    det2, meta2 = load_detector(tmp_path / "ck")
    assert meta2 == meta and meta2.threshold == 0.37 and meta2.labels == ["real", *GENS]
    sd1, sd2 = det.state_dict(), det2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        a, b = det(x), det2(x)
    assert torch.equal(a.logit, b.logit) and torch.equal(a.gen_logits, b.gen_logits)
    assert torch.equal(a.features, b.features)
    det2.set_fused(True)  # fused weights are built from the loaded parameters
    with torch.no_grad():
        c = det2(x)
    assert torch.allclose(c.gen_logits, a.gen_logits, rtol=1e-5, atol=1e-6)


def test_checkpoint_holds_only_adapters_and_heads_when_backbone_is_pretrained(tmp_path: Path) -> None:
    """A pretrained backbone (here a local file) is not copied into the checkpoint; loading rebuilds it from
    the recorded source and verifies its sha256."""
    register_arch_configs()
    import open_clip

    torch.manual_seed(1)
    clip = open_clip.create_model("ViT-Tiny-16-96", pretrained=None)
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    det = create_detector("tiny-mole", pretrained=str(weights), generators=GENS)
    randomize_adapters(det)
    save_detector(det, tmp_path / "ck")
    keys = set(load_file(str(tmp_path / "ck" / "detector.safetensors")))
    assert keys == set(det.adapter_param_names()) | set(det.head_param_names())
    det2, meta = load_detector(tmp_path / "ck")
    assert meta.backbone.kind == "file" and meta.backbone.sha256 == sha256_file(weights)
    assert all(torch.equal(v, det2.state_dict()[k]) for k, v in det.state_dict().items())
    # the weights file changed since training -> refused
    save_file({k: v.contiguous() + 1 for k, v in clip.state_dict().items()}, str(weights))
    with pytest.raises(CheckpointError, match="sha256"):
        load_detector(tmp_path / "ck")


def test_wrong_shape_unknown_and_missing_keys_are_named(tmp_path: Path) -> None:
    det = _trained_like()
    save_detector(det, tmp_path / "ck")
    good = load_file(str(tmp_path / "ck" / "detector.safetensors"))
    b = "visual.transformer.resblocks.3.mlp.experts.1.up.weight"

    bad = dict(good)
    bad[b] = torch.zeros(128, 4)
    _rewrite(tmp_path / "ck", bad)
    with pytest.raises(
        CheckpointError,
        match=r"wrong shapes \(1\): .*experts\.1\.up\.weight: expected \(128, 8\), got \(128, 4\)",
    ):
        load_detector(tmp_path / "ck")

    bad = dict(good)
    bad["visual.extra_adapter.weight"] = torch.zeros(3)
    del bad["head_gen.bias"]
    _rewrite(tmp_path / "ck", bad)
    with pytest.raises(CheckpointError) as exc:
        load_detector(tmp_path / "ck")
    msg = str(exc.value)
    assert (
        "missing keys (1): head_gen.bias" in msg and "unexpected keys (1): visual.extra_adapter.weight" in msg
    )


def test_a_meta_file_that_is_not_an_object_names_the_checkpoint(tmp_path: Path) -> None:
    """detector.json holding a JSON list (or not JSON) is the checkpoint's fault, named so, not a `config
    file`'s."""
    save_detector(_trained_like(), tmp_path / "ck")
    meta = tmp_path / "ck" / "detector.json"
    for text, says in [("[1]", "must hold a JSON object"), ("{", "is not valid JSON")]:
        meta.write_text(text)
        with pytest.raises(CheckpointError, match=rf"^checkpoint: {meta} {says}"):
            load_detector(tmp_path / "ck")


def test_tampered_weights_do_not_match_detector_id(tmp_path: Path) -> None:
    det = _trained_like()
    save_detector(det, tmp_path / "ck")
    tensors = load_file(str(tmp_path / "ck" / "detector.safetensors"))
    tensors["head_fake.bias"] = tensors["head_fake.bias"] + 1
    save_file(tensors, str(tmp_path / "ck" / "detector.safetensors"))
    with pytest.raises(CheckpointError, match="does not match detector_id"):
        load_detector(tmp_path / "ck")


def test_pickles_are_refused(tmp_path: Path) -> None:
    det = _trained_like()
    ck = tmp_path / "ck"
    ck.mkdir()
    import io
    import pickle

    buf = io.BytesIO()
    pickle.dump({k: v.numpy() for k, v in det.state_dict().items()}, buf)
    (ck / "detector.pt").write_bytes(buf.getvalue())
    for target in (ck / "detector.pt", ck):
        with pytest.raises(CheckpointError, match="never unpickled"):
            load_detector(target)
    with pytest.raises(CheckpointError, match="never unpickled"):
        create_detector("tiny-mole", pretrained=str(ck / "detector.pt"))
    (ck / "w.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"'\.bin' files are Python pickles"):
        create_detector("tiny-mole", pretrained=str(ck / "w.bin"))


def test_weights_header_is_read_without_torch_and_refuses_what_is_not_safetensors(
    s3fs_client, tmp_path: Path
) -> None:
    """read_weights_header (what the scan's driver checks before any Ray work) lists the same tensors, dtypes
    and shapes as safetensors' own reader, locally and on S3; a renamed pickle, a truncated file and a
    non-JSON header are refused naming the file."""
    import pickle

    from safetensors import safe_open

    from pipeline.models.meta import read_weights_header

    det = _trained_like()
    save_detector(det, tmp_path / "ck")
    weights = tmp_path / "ck" / "detector.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        names = list(f.keys())
        ref = {k: (str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())) for k in names}
    s3fs_client.mkdir("hdr")
    s3fs_client.put(str(weights), "hdr/detector.safetensors")
    for uri in (str(weights), "s3://hdr/detector.safetensors"):
        got = read_weights_header(uri)
        assert {k: (v["dtype"], v["shape"]) for k, v in got.items()} == ref

    data = weights.read_bytes()
    bad = {
        "pickle": pickle.dumps({"w": [1.0] * 64}),
        "truncated": data[: len(data) // 2],
        "short": b"\x10\x00",
        "not json": (8).to_bytes(8, "little") + b"not json" + b"\0" * 64,
    }
    for name, payload in bad.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(payload)
        with pytest.raises(CheckpointError, match=rf"{path}(:| is not a safetensors file)") as exc:
            read_weights_header(str(path))
        assert ("truncated" in str(exc.value)) == (name == "truncated"), (name, exc.value)


def test_pretrained_local_file_loads_visual_weights(tmp_path: Path) -> None:
    register_arch_configs()
    import open_clip

    torch.manual_seed(5)
    clip = open_clip.create_model("ViT-Tiny-16-96", pretrained=None)
    # whole-CLIP state dict (visual.* + text keys) and a vision-tower-only one both load
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in clip.visual.state_dict().items()}, str(tmp_path / "visual.safetensors")
    )
    for name in ("clip.safetensors", "visual.safetensors"):
        det = create_detector("tiny-linear", pretrained=str(tmp_path / name))
        assert det.backbone.kind == "file" and det.backbone.sha256 == sha256_file(tmp_path / name)
        assert torch.equal(det.visual.conv1.weight, clip.visual.conv1.weight)
        assert torch.equal(det.visual.proj, clip.visual.proj)
    # a state dict of another architecture fails naming the shapes
    sd = {k: v.contiguous() for k, v in clip.visual.state_dict().items()}
    sd["proj"] = torch.zeros(128, 32)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"proj: expected \(128, 64\), got \(128, 32\)"):
        create_detector("tiny-linear", pretrained=str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="not found"):
        create_detector("tiny-linear", pretrained=str(tmp_path / "missing.safetensors"))


def test_pretrained_s3_uri_and_checkpoint_on_s3(s3fs_client, tmp_path: Path) -> None:
    register_arch_configs()
    import open_clip

    s3fs_client.mkdir("models")
    torch.manual_seed(7)
    clip = open_clip.create_model("ViT-Tiny-16-96", pretrained=None)
    local = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(local))
    s3fs_client.put(str(local), "models/backbones/clip.safetensors")

    uri = "s3://models/backbones/clip.safetensors"
    det = create_detector("tiny-mole", pretrained=uri, generators=GENS)
    assert det.backbone.pretrained == uri and det.backbone.sha256 == sha256_file(local)
    assert torch.equal(det.visual.conv1.weight, clip.visual.conv1.weight)
    randomize_adapters(det)

    meta = save_detector(det, "s3://models/ckpt/run1")
    assert sorted(s3fs_client.ls("models/ckpt/run1")) == [
        "models/ckpt/run1/detector.json",
        "models/ckpt/run1/detector.safetensors",
    ]
    det2, meta2 = load_detector("s3://models/ckpt/run1")
    assert meta2.detector_id == meta.detector_id
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(det(x).logit, det2(x).logit)


def test_openai_tag_needs_quickgelu_and_the_right_open_clip_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tags are downloaded by open_clip (not possible here): assert the call our factory makes."""
    import open_clip

    cfg = DetectorConfig.load("vitb32-mole")
    bad = {**cfg.model_dump(), "arch": "ViT-B-32"}
    with pytest.raises(ConfigError, match="'ViT-B-32-quickgelu'"):
        DetectorConfig.parse(bad)
    with pytest.raises(ConfigError, match="-quickgelu"):
        create_detector(DetectorConfig.parse({**bad, "pretrained": None}), pretrained="openai")
    with pytest.raises(ConfigError, match="tags: .*openai"):
        create_detector(cfg, pretrained="no-such-tag")

    calls = []
    real = open_clip.create_model

    def fake(arch, pretrained=None, **kw):
        calls.append((arch, pretrained))
        return real(arch, pretrained=None, **kw)  # random init instead of the download

    monkeypatch.setattr(open_clip, "create_model", fake)
    det = create_detector(cfg)
    assert calls == [("ViT-B-32-quickgelu", "openai")]
    assert det.backbone.kind == "tag" and det.backbone.pretrained == "openai"
    assert type(det.visual.transformer.resblocks[0].mlp[1]).__name__ == "QuickGELU"
    assert det.mole_blocks == [9, 10, 11]
    lin = DetectorConfig.load("vitl14-linear")
    assert (lin.arch, lin.pretrained, lin.preprocess) == (
        "ViT-L-14",
        "commonpool_xl_s13b_b90k",
        "resize_crop",
    )
    assert lin.head.feature == "pre_proj" and lin.head.normalize


def test_the_same_weights_always_get_the_same_detector_id(tmp_path) -> None:
    """The id is the sha256 of the weights file: saving the same tensors again (a recalibration, a copy) gives
    the same bytes. safetensors writes its `__metadata__` in hash-map order, which changes between saves; the
    header is written with sorted keys and the file still reads back through safetensors."""
    import json

    from safetensors.torch import load_file

    from pipeline.models import DetectorConfig, create_detector, save_detector

    torch.manual_seed(0)
    det = create_detector(DetectorConfig.load("tiny-linear"), pretrained=None)
    ids = {save_detector(det, tmp_path / f"c{i}").detector_id for i in range(8)}
    assert len(ids) == 1
    blob = (tmp_path / "c0" / "detector.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == ["detector", "format"]
    back = load_file(str(tmp_path / "c0" / "detector.safetensors"))
    state = det.state_dict()
    assert back and all(torch.equal(v, state[k]) for k, v in back.items())
