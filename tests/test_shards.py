"""The shard layer (`pipeline.shards`): its three consumers — the scan (`read_shard`), the filter
(`index_shard`, `iter_samples`) and the labelled sources (`load_labelled`) — see the same samples, keys and
image members, including on the bad-input corpus; regression tests for the three ways they used to
disagree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline import shards as shard_layer
from pipeline.data.sources import load_labelled
from pipeline.hygiene.copy import ShardWriter
from pipeline.settings import ConfigError
from tests.support import badinputs as bi


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _label(label: int, generator: str) -> bytes:
    return json.dumps({"label": label, "generator": generator}).encode()


def test_oversized_first_image_member_is_skipped_by_scan_and_filter_alike(tmp_path: Path) -> None:
    """Regression: the scan hashed the NEXT image when the first was over max_member_bytes, the filter the
    first one, so the filter refused a valid unchanged shard (SourceChangedError)."""
    big, small = bi.jpeg_bytes(200, 200), bi.png_bytes()
    members = [("a.jpg", big), ("a.png", small), ("a.json", bi.meta(0)), ("b.png", bi.png_bytes(seed=3))]
    url = _write(tmp_path, "s.tar", bi.tar_bytes(members))
    limit = len(big) - 1
    scan = shard_layer.read_shard(url, max_member_bytes=limit)
    copied = list(shard_layer.iter_samples(url))
    assert scan.samples[0].image_name == "a.png" and scan.samples[0].image == small
    chosen = copied[0].image_member(limit)
    assert chosen is not None and chosen.name == "a.png" and chosen.data == small
    # the copy still carries every member, the oversized one included, byte-exact
    assert {m.name: m.data for m in copied[0].members} == {"a.jpg": big, "a.png": small, "a.json": bi.meta(0)}
    # the default limit: both pick by priority (jpg before png)
    assert shard_layer.read_shard(url).samples[0].image_name == copied[0].image_member().name == "a.jpg"


def test_repeated_key_pairs_each_label_with_its_own_image(tmp_path: Path) -> None:
    """Regression: sources kept the first image of a repeated key but the last .json."""
    img1, img2 = bi.png_bytes(seed=1), bi.png_bytes(seed=2)
    members = [
        ("a.png", img1),
        ("a.json", _label(0, "real")),
        ("b.png", bi.png_bytes(seed=3)),
        ("b.json", _label(0, "real")),
        ("a.png", img2),
        ("a.json", _label(1, "famA")),
    ]
    url = _write(tmp_path, "dup.tar", bi.tar_bytes(members))
    items = [it for it in load_labelled(url) if it.key == "a"]
    by_label = {it.label: it for it in items}
    assert sorted(by_label) == [0, 1] and len({it.name for it in items}) == 2
    assert by_label[0].read_bytes() == img1 and by_label[0].generator == "real"
    assert by_label[1].read_bytes() == img2 and by_label[1].generator == "famA"
    scan = shard_layer.read_shard(url)
    assert [(s.key, s.image, s.meta["label"]) for s in scan.samples if s.key == "a"] == [
        ("a", img1, 0),
        ("a", img2, 1),
    ]


def test_sources_know_every_image_type_and_the_same_junk_as_the_scan(tmp_path: Path) -> None:
    """Regression: sources knew 4 image extensions (the scan 9) and hid every dot-path (the scan only macOS
    litter and names without a key)."""
    members: list[bi.Member] = []
    for i, ext in enumerate(shard_layer.IMAGE_EXTENSIONS):
        members += [(f"x_{ext}.{ext}", bi.png_bytes(seed=i)), (f"x_{ext}.json", _label(1, "famA"))]
    members += [
        (".cache/in_dot_folder.png", bi.png_bytes(seed=20)),
        (".cache/in_dot_folder.json", _label(0, "real")),
        (".DS_Store", b"junk"),
        ("._x_jpg.jpg", b"appledouble"),
    ]
    url = _write(tmp_path, "types.tar", bi.tar_bytes(members))
    scan = [(s.key, s.image_name) for s in shard_layer.read_shard(url).samples]
    sources = [(it.key, it.member) for it in load_labelled(url)]
    assert sorted(sources) == sorted(scan) and len(scan) == len(shard_layer.IMAGE_EXTENSIONS) + 1
    assert (".cache/in_dot_folder", ".cache/in_dot_folder.png") in sources
    # folder layouts use the same types and junk rules
    for ext in shard_layer.IMAGE_EXTENSIONS:
        (tmp_path / "fam" / "1_fake").mkdir(parents=True, exist_ok=True)
        (tmp_path / "fam" / "1_fake" / f"i.{ext}").write_bytes(bi.png_bytes())
    (tmp_path / "fam" / "1_fake" / ".hidden.png").write_bytes(bi.png_bytes())
    (tmp_path / "fam" / "0_real").mkdir()
    (tmp_path / "fam" / "0_real" / "r.TIFF").write_bytes(bi.png_bytes())
    folder = load_labelled(str(tmp_path / "fam"))
    assert sorted(Path(it.uri).name for it in folder) == sorted(
        [f"i.{e}" for e in shard_layer.IMAGE_EXTENSIONS] + ["r.TIFF"]
    )


def _scan_view(url: str) -> tuple[list[tuple[str, str | None, str | None]], str | None]:
    c = shard_layer.read_shard(url)
    return [
        (s.key, s.image_name, hashlib.sha256(s.image).hexdigest() if s.image is not None else None)
        for s in c.samples
    ], c.error


def _filter_view(url: str) -> list[tuple[str, str | None, str | None]]:
    out = []
    for s in shard_layer.iter_samples(url):
        m = s.image_member()
        out.append(
            (
                s.key,
                m.name if m else None,
                hashlib.sha256(m.data).hexdigest() if m and m.data is not None else None,
            )
        )
    return out


def _labels_view(url: str) -> list[tuple[str, str | None, str | None]]:
    out = []
    for s in shard_layer.labelled_samples(url):
        data = Path(url).read_bytes()[s.image.offset : s.image.offset + s.image.size] if s.image else None
        out.append(
            (
                s.key,
                s.image.name if s.image else None,
                hashlib.sha256(data).hexdigest() if data is not None else None,
            )
        )
    return out


def test_the_three_consumers_see_the_same_samples_on_the_bad_input_corpus(tmp_path: Path) -> None:
    corpus = bi.e2e_corpus()
    checked_readable = checked_broken = 0
    for case in corpus:
        url = _write(tmp_path, f"{case.name}.tar", case.data)
        scan, error = _scan_view(url)
        assert [(k, None) for k, _ in case.expected] == [(k, None) for k, _, _ in scan], case.name
        assert (error is not None) == case.shard_error, case.name
        if error is None:
            index = shard_layer.index_shard(url)
            assert [s.key for s in index.samples] == [k for k, _, _ in scan]
            assert _filter_view(url) == scan
            assert _labels_view(url) == scan
            # the labelled source: every labelled sample is one of the scan's samples with the same image
            # member; a shard with image samples that carry no valid label is refused, naming how many and
            # the first of them
            images = [s for s in shard_layer.labelled_samples(url) if s.image is not None]
            unlabelled = [s.key for s in images if s.meta is None or s.meta.get("label") not in (0, 1)]
            labelled = len(images) - len(unlabelled)
            if unlabelled:
                count = rf"{len(unlabelled)} sample\(s\) without a valid label"
                with pytest.raises(ConfigError, match=count) as refused:
                    load_labelled(url)
                assert all(f"{key}: " in str(refused.value) for key in unlabelled[:3]), case.name
            else:
                try:
                    items = load_labelled(url)
                except FileNotFoundError:
                    items = []
                scan_members = {(k, name) for k, name, _ in scan if name is not None}
                assert {(it.key, it.member) for it in items} <= scan_members
                assert len(items) == labelled
            checked_readable += 1
        else:
            # strict consumers refuse a broken shard (the filter must not copy half a shard)
            with pytest.raises(shard_layer.ShardReadError):
                shard_layer.index_shard(url)
            with pytest.raises(shard_layer.ShardReadError):
                list(shard_layer.iter_samples(url))
            checked_broken += 1
    assert checked_readable >= 3 and checked_broken >= 3


def test_copy_of_every_sample_is_byte_exact_including_sidecars_and_raw_names(tmp_path: Path) -> None:
    bad = bi.bad_input_shard()
    url = _write(tmp_path, "bad.tar", bad.data)
    out = str(tmp_path / "copy.tar")
    w = ShardWriter(out)
    for s in shard_layer.iter_samples(url):
        w.write(s)
    w.commit()
    before = [(s.raw_key, [(m.raw_name, m.data) for m in s.members]) for s in shard_layer.iter_samples(url)]
    after = [
        (s.raw_key, sorted((m.raw_name, m.data) for m in s.members)) for s in shard_layer.iter_samples(out)
    ]
    assert [(k, sorted(ms)) for k, ms in before] == after
    assert [s.key for s in shard_layer.read_shard(out).samples] == [k for k, _ in bad.expected]
