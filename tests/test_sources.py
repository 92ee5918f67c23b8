"""Labelled sources over UnivFD/CNNDetection, GenImage and WebDataset layouts, local and on a real S3
server."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.sources import LabelledImage, load_labelled
from pipeline.data.synthetic import DemoConfig, generate
from pipeline.settings import ConfigError


def summarize(items: list[LabelledImage]) -> dict[str, dict[str, int]]:
    """{generator: {"real": n, "fake": n}}."""
    out: dict[str, dict[str, int]] = {}
    for it in items:
        out.setdefault(it.generator, {"real": 0, "fake": 0})["fake" if it.label else "real"] += 1
    return out


def _img_bytes(value: int, fmt: str = "PNG", size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _touch(root: Path, rel: str, value: int = 100, fmt: str = "PNG") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(_img_bytes(value, fmt))


def _demo(out: Path | str, **kw) -> None:
    cfg = {
        "out": str(out),
        "families": ["upconv", "diffusion"],
        "n_per_class": 3,
        "seed": 0,
        "image_size": 64,
    }
    cfg.update(kw)
    generate(DemoConfig.parse(cfg))


# ---- UnivFD / CNNDetection ---------------------------------------------------------------------------------
def test_univfd_demo_tree(tmp_path: Path) -> None:
    _demo(tmp_path)
    items = load_labelled(str(tmp_path))
    assert summarize(items) == {"diffusion": {"real": 3, "fake": 3}, "upconv": {"real": 3, "fake": 3}}
    assert {it.source for it in items} == {"univfd"}
    fake = next(it for it in items if it.label == 1 and it.generator == "upconv")
    real = next(it for it in items if it.label == 0 and it.generator == "upconv")
    assert fake.attribution == "upconv" and real.attribution == "real"
    assert "/upconv/1_fake/" in fake.uri and "/upconv/0_real/" in real.uri
    img = fake.load()
    assert img.mode == "RGB" and img.size == (64, 64)
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(fake.uri).convert("RGB")))
    # deterministic order
    assert [it.uri for it in load_labelled(str(tmp_path))] == [it.uri for it in items]


def test_cnndetection_class_level_and_formats(tmp_path: Path) -> None:
    _touch(tmp_path, "progan/airplane/0_real/a.png")
    _touch(tmp_path, "progan/airplane/1_fake/b.png")
    _touch(tmp_path, "progan/cat/0_real/c.jpg", fmt="JPEG")
    _touch(tmp_path, "progan/cat/1_fake/d.JPEG", fmt="JPEG")
    _touch(tmp_path, "stylegan/0_real/e.webp", fmt="WEBP")
    _touch(tmp_path, "stylegan/1_fake/f.png")
    (tmp_path / "progan/cat/1_fake/notes.txt").write_text("not an image")
    items = load_labelled(str(tmp_path))
    by_name = {Path(it.uri).name: it for it in items}
    assert set(by_name) == {"a.png", "b.png", "c.jpg", "d.JPEG", "e.webp", "f.png"}
    assert by_name["b.png"].category == "airplane" and by_name["b.png"].generator == "progan"
    assert by_name["c.jpg"].label == 0 and by_name["d.JPEG"].label == 1
    assert by_name["e.webp"].category is None and by_name["e.webp"].generator == "stylegan"
    assert by_name["e.webp"].load().size == (8, 8)


def test_labels_come_from_exact_folder_names_only(tmp_path: Path) -> None:
    _touch(tmp_path, "gan/0_real/real.png")
    _touch(tmp_path, "gan/1_fake/fake.png")
    # look-alikes that a substring match would mislabel
    _touch(tmp_path, "gan/1_fake_old/x.png")
    _touch(tmp_path, "gan/not_0_real/y.png")
    _touch(tmp_path, "gan/fake/z.png")
    _touch(tmp_path, "gan/1_FAKE/w.png")
    items = load_labelled(str(tmp_path))
    assert sorted((Path(it.uri).name, it.label) for it in items) == [("fake.png", 1), ("real.png", 0)]


def test_root_can_be_one_generator_folder_and_hidden_files_are_skipped(tmp_path: Path) -> None:
    gen = tmp_path / "biggan"
    _touch(gen, "0_real/a.png")
    _touch(gen, "1_fake/b.png")
    _touch(gen, "1_fake/.hidden.png")
    _touch(gen, "__MACOSX/1_fake/._b.png")
    items = load_labelled(str(gen))
    assert [(Path(it.uri).name, it.label, it.generator) for it in items] == [
        ("a.png", 0, "biggan"),
        ("b.png", 1, "biggan"),
    ]


def test_univfd_split_folder_is_its_own_source(tmp_path: Path) -> None:
    _touch(tmp_path, "train/progan/0_real/a.png")
    _touch(tmp_path, "train/progan/1_fake/b.png")
    _touch(tmp_path, "test/progan/0_real/c.png")
    _touch(tmp_path, "test/dalle/1_fake/d.png")
    test = load_labelled(str(tmp_path / "test"))
    assert sorted((it.generator, Path(it.uri).name) for it in test) == [
        ("dalle", "d.png"),
        ("progan", "c.png"),
    ]
    assert Path(test[0].uri).exists()
    with pytest.raises(FileNotFoundError, match="valid"):
        load_labelled(str(tmp_path / "valid"))


# ---- GenImage ----------------------------------------------------------------------------------------------
def test_genimage_layout(tmp_path: Path) -> None:
    _touch(tmp_path, "sdv4/imagenet_ai_0419_sdv4/train/ai/a.png")
    _touch(tmp_path, "sdv4/imagenet_ai_0419_sdv4/train/nature/b.JPEG", fmt="JPEG")
    _touch(tmp_path, "sdv4/imagenet_ai_0419_sdv4/val/ai/c.png")
    _touch(tmp_path, "midjourney/val/nature/d.png")
    _touch(tmp_path, "midjourney/val/ai/e.png")
    _touch(tmp_path, "midjourney/val/ai_backup/f.png")  # not a class folder
    items = load_labelled(str(tmp_path))
    assert {it.source for it in items} == {"genimage"}
    got = sorted((it.generator, it.split, Path(it.uri).name, it.label) for it in items)
    assert got == [
        ("midjourney", "val", "d.png", 0),
        ("midjourney", "val", "e.png", 1),
        ("sdv4", "train", "a.png", 1),
        ("sdv4", "train", "b.JPEG", 0),
        ("sdv4", "val", "c.png", 1),
    ]


@pytest.mark.parametrize(
    ("files", "error"),
    [
        (["gan/1_fake_old/x.png", "gan/ai_images/x.png"], "cannot recognise"),  # only look-alike folders
        (["a/0_real/x.png", "b/train/ai/y.png"], "mixes"),  # a UnivFD and a GenImage folder
    ],
    ids=["look-alikes-only", "mixed-layouts"],
)
def test_unrecognised_or_mixed_layouts_are_an_error(tmp_path: Path, files: list[str], error: str) -> None:
    for rel in files:
        _touch(tmp_path, rel)
    with pytest.raises(ConfigError, match=error):
        load_labelled(str(tmp_path))


# ---- errors ------------------------------------------------------------------------------------------------
def test_clear_errors_for_missing_empty_unrecognised(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_labelled(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        load_labelled(str(empty))
    (tmp_path / "txt" / "gan" / "0_real").mkdir(parents=True)
    (tmp_path / "txt" / "gan" / "0_real" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="txt"):
        load_labelled(str(tmp_path / "txt"))
    flat = tmp_path / "flat"
    _touch(flat, "img1.png")
    with pytest.raises(ConfigError, match="cannot recognise.*flat"):
        load_labelled(str(flat))
    _touch(tmp_path / "no_split_folder", "gen/ai/a.png")  # GenImage class folders need <generator>/train|val
    _touch(tmp_path / "no_split_folder", "train/ai/b.png")
    with pytest.raises(FileNotFoundError, match="no labelled images"):
        load_labelled(str(tmp_path / "no_split_folder"))


# ---- WebDataset --------------------------------------------------------------------------------------------
def test_shards_demo_shards(tmp_path: Path) -> None:
    import webdataset as wds

    _demo(tmp_path, layout="wds", shard_size=5)
    items = load_labelled(str(tmp_path))
    assert {it.source for it in items} == {"wds"}
    assert summarize(items) == {
        "real": {"real": 6, "fake": 0},
        "upconv": {"real": 0, "fake": 3},
        "diffusion": {"real": 0, "fake": 3},
    }
    by_key = {(Path(it.uri).name, it.key): it for it in items}
    assert len(by_key) == 12
    # byte-exact against webdataset's own reader
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    n = 0
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        it = by_key[(Path(sample["__url__"]).name, sample["__key__"])]
        assert it.read_bytes() == sample["png"]
        meta = json.loads(sample["json"])
        assert (it.label, it.generator) == (meta["label"], meta["generator"])
        n += 1
    assert n == 12
    assert items[0].load().size == (64, 64)
    # one shard, or a brace pattern
    assert len(load_labelled(str(tmp_path / "shard-000000.tar"))) == 5
    assert len(load_labelled(str(tmp_path / "shard-{000000..000001}.tar"))) == 10


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shards_unlabelled_samples_are_an_error(tmp_path: Path) -> None:
    shard = tmp_path / "s" / "shard-000000.tar"
    shard.parent.mkdir()
    good = json.dumps({"label": 1, "generator": "sd"}).encode()
    _write_tar(
        shard,
        {
            "dir/a.png": _img_bytes(1),
            "dir/a.json": good,
            "b.jpg": _img_bytes(2, "JPEG"),  # no json
            "c.png": _img_bytes(3),
            "c.json": b'{"label": "fake", "generator": "sd"}',
            "d.png": _img_bytes(4),
            "d.json": b"{not json",
            "e.png": _img_bytes(5),
            "e.json": json.dumps({"label": 0, "generator": "real"}).encode(),
            "f.txt": b"no image here",
        },
    )
    with pytest.raises(
        ConfigError, match=r"shard-000000\.tar: 3 sample\(s\) without a valid label.*b: no \.json"
    ):
        load_labelled(str(shard.parent))
    labelled = tmp_path / "labelled" / "shard-000000.tar"
    labelled.parent.mkdir()
    _write_tar(
        labelled,
        {
            "dir/a.png": _img_bytes(1),
            "dir/a.json": good,
            "e.png": _img_bytes(5),
            "e.json": json.dumps({"label": 0, "generator": "real"}).encode(),
            "f.txt": b"no image here",
        },
    )
    items = load_labelled(str(labelled.parent))
    assert [(it.key, it.label, it.generator) for it in items] == [("e", 0, "real"), ("dir/a", 1, "sd")]
    assert items[1].read_bytes() == _img_bytes(1)
    not_tar = tmp_path / "bad" / "x.tar"
    not_tar.parent.mkdir()
    not_tar.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError, match="x.tar"):
        load_labelled(str(not_tar))


# ---- S3 ----------------------------------------------------------------------------------------------------
def test_sources_on_s3(s3_server: dict[str, str], s3fs_client) -> None:
    s3fs_client.mkdir("train-data")
    _demo("s3://train-data/univfd", families=["vqgan"], n_per_class=2)
    _demo("s3://train-data/wds", layout="wds", families=["gan_color"], n_per_class=2, shard_size=3)
    s3fs_client.pipe("train-data/genimage/mj/train/ai/a.png", _img_bytes(7))
    s3fs_client.pipe("train-data/genimage/mj/train/nature/b.png", _img_bytes(8))

    uni = load_labelled("s3://train-data/univfd")
    assert summarize(uni) == {"vqgan": {"real": 2, "fake": 2}}
    assert all(it.uri.startswith("s3://train-data/univfd/vqgan/") for it in uni)
    assert uni[0].load().size == (64, 64)

    shards = load_labelled("s3://train-data/wds")
    assert summarize(shards) == {"real": {"real": 2, "fake": 0}, "gan_color": {"real": 0, "fake": 2}}
    assert all(it.uri.startswith("s3://train-data/wds/shard-") for it in shards)
    for it in shards:
        assert isinstance(it, LabelledImage) and it.load().size == (64, 64)

    gi = load_labelled("s3://train-data/genimage")
    assert [(it.label, np.asarray(it.load())[0, 0, 0]) for it in gi] == [(0, 8), (1, 7)]

    with pytest.raises(FileNotFoundError, match="s3://train-data/missing"):
        load_labelled("s3://train-data/missing")
