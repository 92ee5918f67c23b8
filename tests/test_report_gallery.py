"""The report shows the images: galleries chosen from a real scan (checked against an independent selection in
Python over the Parquet files), thumbnails read back from the shards (checked pixel-wise against the images
the test wrote, each shard read once), url/caption from the .json sidecars, the last filter run's drops and
quarantines, and a real browser (headless Chromium) that loads every image of the page.

The corpus is img2dataset-style (jpg + json {url, caption} + txt per sample) with a corrupt image, an
image-less sample, a 600x400 image and a truncated shard; it is scanned in-process (the scan's local executor,
no Ray) with a tiny detector whose scores spread over the images."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli.filter_shards import main as filter_main
from pipeline.cli.report import main as report_main
from pipeline.report import gallery
from pipeline.report.render import render_html
from tests.support.hygiene import (
    BIG,
    GALLERY_DAY,
    Corpus,
    make_detector,
    scan_in_process,
    write_sidecar_corpus,
)
from tests.support.shards import Sample, image_bytes, tar_bytes, write_raw

DAY = GALLERY_DAY


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("gallery")
    corpus = write_sidecar_corpus(str(base / "in"))
    det = make_detector(corpus, str(base / "detector"))
    scan_in_process(corpus, str(base / "scan"), det)
    clean = base / "clean"
    assert (
        filter_main(
            [
                "--scan",
                str(base / "scan"),
                "--input",
                corpus.root,
                "--output",
                str(clean),
                "--on-shard-error",
                "skip",
                "--rule",
                "upconv=quarantine",
                "--error-action",
                "drop",
            ]
        )
        == 0
    )
    rows = [
        r
        for f in sorted((base / "scan" / f"scan_date={DAY}").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    return {
        "base": base,
        "corpus": corpus,
        "detector": det,
        "scan": str(base / "scan"),
        "clean": str(clean),
        "rows": rows,
    }


def source_image(corpus: Corpus, key: str) -> bytes:
    for samples in corpus.shards.values():
        for s in samples:
            if s.key == key:
                return s.files["jpg"]
    raise KeyError(key)


def sidecar(corpus: Corpus, key: str) -> dict:
    for samples in corpus.shards.values():
        for s in samples:
            if s.key == key and "json" in s.files:
                return json.loads(s.files["json"])
    return {}


@pytest.fixture(scope="module")
def report(world, tmp_path_factory) -> dict:
    """The report with every ok row in some gallery (gallery size above the row count), plus the filter."""
    out = tmp_path_factory.mktemp("report")
    reads: Counter[str] = Counter()
    real = gallery.shard_layer.iter_samples

    def counting(url: str, **kw):
        reads[url] += 1
        return real(url, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(gallery.shard_layer, "iter_samples", counting)
    try:
        rc = report_main(
            [
                "--scan",
                world["scan"],
                "--output",
                str(out),
                "--gallery-size",
                "32",
                "--top-n",
                "5",
                "--filter-output",
                world["clean"],
            ]
        )
    finally:
        mp.undo()
    assert rc == 0
    return {
        "out": out,
        "summary": json.loads((out / "summary.json").read_text()),
        "reads": reads,
        "html": (out / "report.html").read_text(),
    }


# ------------------------------------------------------------------ what is chosen


def test_galleries_are_the_rows_an_independent_selection_picks(world, report) -> None:
    rows, g = world["rows"], report["summary"]["galleries"]
    ok = [r for r in rows if r["status"] == "ok"]
    flagged = [r for r in ok if r["is_fake"]]
    by_gen: dict[str, list] = defaultdict(list)
    for r in sorted(flagged, key=lambda r: (-r["p_fake"], r["shard"], r["key"])):
        by_gen[r["top_generator"]].append(r["key"])
    assert {
        k.removeprefix("fakes:"): [it["key"] for it in v] for k, v in g.items() if k.startswith("fakes:")
    } == dict(by_gen)
    assert len(by_gen) >= 2
    border = sorted(ok, key=lambda r: (abs(r["p_fake"] - r["threshold"]), r["shard"], r["key"]))
    assert [it["key"] for it in g["borderline"]] == [r["key"] for r in border][:32]
    assert {it["key"] for it in g["kept"]} == {r["key"] for r in ok if not r["is_fake"]}
    errors = {it["status"]: it for it in g["errors"]}
    assert set(errors) == {"decode_error", "no_image", "shard_error"}
    for status, it in errors.items():
        assert it["error"] == next(r["error"] for r in rows if r["status"] == status) and it["thumb"] is None
    top = [r["key"] for r in sorted(flagged, key=lambda r: (-r["p_fake"], r["shard"], r["key"]))][:5]
    assert [it["key"] for it in report["summary"]["top_flagged"]] == top


def test_galleries_are_bounded_and_the_kept_sample_is_stable(world, tmp_path) -> None:
    picks = []
    for run in range(2):
        out = tmp_path / f"r{run}"
        assert (
            report_main(
                ["--scan", world["scan"], "--output", str(out), "--gallery-size", "2", "--top-n", "0"]
            )
            == 0
        )
        g = json.loads((out / "summary.json").read_text())["galleries"]
        assert (
            all(len(v) <= 2 for k, v in g.items() if k != "errors") and len(g["errors"]) == 3
        )  # one per status
        picks.append([it["key"] for it in g["kept"]])
    assert picks[0] == picks[1] and len(picks[0]) == 2
    assert (
        report_main(
            ["--scan", world["scan"], "--output", str(tmp_path / "n"), "--gallery-size", "0", "--top-n", "0"]
        )
        == 0
    )
    assert not (tmp_path / "n" / "thumbs").exists()


# ------------------------------------------------------------------ what is shown


def test_thumbnails_are_the_scanned_images_read_once_per_shard(world, report) -> None:
    out, s = report["out"], report["summary"]
    cards = [it for v in s["galleries"].values() for it in v] + s["top_flagged"]
    shown = [it for it in cards if it["status"] == "ok"]
    assert shown and all(it["thumb"] for it in shown)
    # every shard holding a card was read exactly once, whatever the number of its cards
    shard_urls = {it["shard_url"] for it in cards if it["key"] is not None}
    assert dict(report["reads"]) == {u: 1 for u in shard_urls}
    assert sum(1 for it in cards if it["key"] is not None) > len(shard_urls)
    files = {p.name for p in (out / "thumbs").iterdir()}
    assert files == {it["thumb"].removeprefix("thumbs/") for it in shown}
    for it in shown:
        thumb = Image.open(out / it["thumb"])
        assert thumb.format == "JPEG" and max(thumb.size) <= gallery.THUMB_PX
        ref = Image.open(io.BytesIO(source_image(world["corpus"], it["key"]))).convert("RGB")
        ref.thumbnail((gallery.THUMB_PX, gallery.THUMB_PX))
        assert thumb.size == ref.size
        diff = np.abs(np.asarray(thumb, np.float32) - np.asarray(ref, np.float32)).mean()
        assert diff < 20, (
            it["key"],
            diff,
        )  # the same picture (JPEG re-encoding only); random images differ by ~85
        meta = sidecar(world["corpus"], it["key"])
        assert (it["url"], it["caption"]) == (meta.get("url"), meta.get("caption"))
    big = next(it for it in shown if it["key"] == BIG)
    assert Image.open(out / big["thumb"]).size == (256, 171)


def test_page_header_filter_section_and_safe_links(world, report) -> None:
    page, s = report["html"], report["summary"]
    run = json.loads((Path(world["scan"]) / "_run" / DAY / "run.json").read_text())
    assert s["run_ids"] == [run["run_id"]] and s["inputs"] == [world["corpus"].root]
    assert f'data-metric="header.run_ids">{run["run_id"]}<' in page
    assert f'data-metric="header.detector">{world["detector"]}<' in page
    assert s["header"]["run_status"] == "succeeded" and s["header"]["detector"]["labels"] == [
        "real",
        "famA",
        "upconv",
    ]
    # javascript: from a sidecar is shown as text, never as a link; https links are links
    assert "javascript:alert(1)" in page and 'href="javascript' not in page
    assert 'href="https://example.com/img/000000.jpg"' in page
    # the last filter run, as its own files say
    stats = json.loads((Path(world["clean"]) / "_run" / "stats.json").read_text())
    f = s["filter"]
    assert f["totals"] == stats["totals"] and f["reconciled"] and f["same_scan_date"]
    assert f["totals"]["quarantined"] > 0 and f["totals"]["dropped"] > 0
    manifest = pq.read_table(Path(world["clean"]) / "manifest.parquet").to_pylist()
    assert {(r["action"], r["reason"]): r["samples"] for r in f["by_reason"]} == dict(
        Counter((r["action"], r["reason"]) for r in manifest)
    )
    assert {r["key"] for r in f["removed"]} == {r["key"] for r in manifest if r["action"] != "keep"}
    for k in ("kept", "dropped", "quarantined"):
        assert f'data-metric="filter.{k}">{stats["totals"][k]}<' in page
    assert [x["shard"] for x in f["skipped_shards"]] == ["shard-000009"]


class Texts(HTMLParser):
    """The text a reader sees in each data-metric cell and under each gallery's title, and the embedded
    JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self.titles: dict[str, str] = {}
        self.blob = ""
        self._into: tuple[dict, str] | None = None
        self._section = ""

    def handle_starttag(self, tag, attrs) -> None:
        a, into = dict(attrs), None
        if tag == "section":
            self._section = a["id"]
        if "data-metric" in a:
            into = (self.metrics, a["data-metric"])
        elif tag == "h3" and self._section:
            into = (self.titles, self._section)
        elif tag == "p" and a.get("class") == "note":
            into = (self.notes, self._section)
        elif tag == "script" and a.get("id") == "genscan-summary":
            into = (self.__dict__, "blob")
        if into:
            self._into = into
            into[0][into[1]] = ""

    def handle_data(self, data) -> None:
        if self._into:
            self._into[0][self._into[1]] += data

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "span", "h3", "p", "script"):
            self._into = None
        if tag == "section":
            self._section = ""


def test_page_escapes_what_came_from_data_and_explains_the_disagreeing_heads(report) -> None:
    """Strings from the data (run ids, shard names, sidecar captions and URLs) reach the reader exactly as
    they are, escaped (never as markup), and the embedded JSON round-trips; the gallery of images the binary
    head flags but the attribution head calls 'real' says so in words."""
    evil = "<script>alert('x\"y')</script> & </td>"
    summary = json.loads(json.dumps(report["summary"]))
    summary["run_ids"] = [evil]
    summary["shards"][0]["shard"] = evil
    cards = [gallery.Item(**it) for it in summary["top_flagged"][:2]]
    cards[0].caption, cards[0].url = evil, "javascript:alert(1)"
    cards[1].url = 'https://example.com/a"onmouseover="alert(1)'
    page = render_html(summary, [], [gallery.fakes_gallery("real", cards)], cards)
    assert "<script>alert" not in page and 'href="javascript' not in page and '"onmouseover' not in page
    seen = Texts()
    seen.feed(page)
    assert seen.metrics["header.run_ids"] == evil and seen.metrics[f"shards.{evil}.samples"] == str(
        summary["shards"][0]["samples"]
    )
    assert json.loads(seen.blob) == summary
    section = "gallery-fakes:real"
    assert seen.titles[section].startswith("Flagged fake, but attributed to no known generator")
    assert "the two heads disagree" in seen.notes[section] and "look at them" in seen.notes[section]


def test_changed_shard_never_shows_another_image(world, tmp_path) -> None:
    """A shard rewritten after the scan (same keys, other pixels): its cards say so instead of showing an
    image the scan did not score."""
    src = next(u for u in world["corpus"].shards if u.endswith("shard-000002.tar"))
    saved = Path(src).read_bytes()
    rng = np.random.default_rng(99)
    changed = [
        Sample(s.key, {**s.files, "jpg": image_bytes(rng, (64, 48), "jpg")})
        for s in world["corpus"].shards[src]
    ]
    try:
        write_raw(src, tar_bytes(changed))
        assert (
            report_main(["--scan", world["scan"], "--output", str(tmp_path / "r"), "--gallery-size", "32"])
            == 0
        )
    finally:
        write_raw(src, saved)
    cards = [
        it
        for v in json.loads((tmp_path / "r" / "summary.json").read_text())["galleries"].values()
        for it in v
    ]
    mine = [it for it in cards if it["shard"] == "shard-000002"]
    assert mine and all(it["thumb"] is None and "changed since the scan" in it["note"] for it in mine)
    assert any(it["thumb"] for it in cards if it["shard"] != "shard-000002")


def test_unknown_filter_output_is_refused(world, tmp_path, capsys) -> None:
    empty = tmp_path / "not-a-filter-run"
    empty.mkdir()
    (empty / "x").write_text("")
    assert (
        report_main(["--scan", world["scan"], "--output", str(tmp_path / "r"), "--filter-output", str(empty)])
        == 3
    )
    assert "no _run/stats.json" in capsys.readouterr().err


def test_report_of_an_s3_scan_reads_thumbnails_from_s3(world, s3fs_client, tmp_path, capsys) -> None:
    """Corpus, scan and report all on S3 (moto): the same cards with the same thumbnails as locally."""
    fs = s3fs_client
    fs.mkdir("bkt")
    fs.put(world["corpus"].root + "/", "bkt/in/", recursive=True)
    corpus = Corpus(root="s3://bkt/in/", shards={})
    scan_in_process(corpus, "s3://bkt/scan", world["detector"])
    assert (
        report_main(["--scan", "s3://bkt/scan", "--output", "s3://bkt/report", "--gallery-size", "32"]) == 0
    )
    assert (
        report_main(["--scan", world["scan"], "--output", str(tmp_path / "local"), "--gallery-size", "32"])
        == 0
    )
    capsys.readouterr()
    fs.invalidate_cache()
    remote = json.loads(fs.cat_file("bkt/report/summary.json"))
    local = json.loads((tmp_path / "local" / "summary.json").read_text())

    def thumbs(summary: dict, read) -> dict:
        return {
            (name, it["shard"], it["key"]): read(it["thumb"])
            for name, v in summary["galleries"].items()
            for it in v
            if it["thumb"]
        }

    got = thumbs(remote, lambda t: fs.cat_file(f"bkt/report/{t}"))
    want = thumbs(local, lambda t: (tmp_path / "local" / t).read_bytes())
    assert got == want and len(got) > 10
    assert all(it["shard_url"].startswith("s3://bkt/in/") for v in remote["galleries"].values() for it in v)


# ------------------------------------------------------------------ a real browser


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


PROBE = (
    '<script>window.addEventListener("load",()=>{for(const i of document.images){'
    'i.setAttribute("data-natural-width",String(i.naturalWidth));i.setAttribute("data-complete",String(i.complete));}'
    'document.body.setAttribute("data-probe","done");});</script>'
)


def test_report_renders_in_headless_chromium(report, tmp_path) -> None:
    """Every image of the page (plots, gallery thumbnails, table minis) loads in Chromium: complete with a
    natural width > 0 after the load event (a broken image has naturalWidth 0)."""
    exe = chromium()
    if exe is None:  # fail, never skip: `make test` installs it (tests/support/ensure_chromium.sh)
        pytest.fail(
            "chromium is missing: run tests/support/ensure_chromium.sh (Debian: apt-get install chromium)"
        )
    out = report["out"]
    probe = out / "_browser_check.html"  # beside report.html: the same relative image paths
    probe.write_text(report["html"].replace("</body>", PROBE + "</body>"))
    try:
        flags = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
            f"--user-data-dir={tmp_path / 'profile'}",
        ]
        dom = subprocess.run(
            [*flags, "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(tmp_path)},
        ).stdout
        shot = tmp_path / "report.png"
        subprocess.run(
            [*flags, "--window-size=1300,3000", f"--screenshot={shot}", (out / "report.html").as_uri()],
            capture_output=True,
            timeout=120,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    finally:
        probe.unlink()
    assert 'data-probe="done"' in dom, dom[-2000:]
    imgs = re.findall(r"<img [^>]*>", dom)
    srcs = [re.search(r'src="([^"]+)"', i).group(1) for i in imgs]
    assert sum(s.startswith("thumbs/") for s in srcs) >= 10 and sum(s.endswith(".png") for s in srcs) == 5
    broken = [
        i
        for i in imgs
        if 'data-complete="true"' not in i or 'data-natural-width="0"' in i or "data-natural-width" not in i
    ]
    assert not broken, broken[:3]
    widths = [int(re.search(r'data-natural-width="(\d+)"', i).group(1)) for i in imgs]
    assert max(w for w, s in zip(widths, srcs, strict=True) if s.startswith("thumbs/")) == 256
    # the screenshot is a real rendering (not blank)
    assert np.asarray(Image.open(shot).convert("L")).std() > 10
