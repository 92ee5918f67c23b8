"""The report's thumbnail galleries [ours]: which scan rows an analyst should SEE, and their thumbnails read
back from the shards through the project's shard layer (`pipeline.shards`, the same samples, keys and image
members the scan scored).

Galleries (each at most `size` cards, chosen deterministically):
- `fakes:<generator>`: the most confident flagged images per top_generator (highest p_fake first); under
  `fakes:real` the images the binary head flags but the attribution head calls real (the heads disagree);
- `borderline`: scored images closest to their threshold, on both sides;
- `kept`: a random sample (seeded, stable between runs) of scored images that were not flagged;
- `errors`: one example per error status, with its message;
plus the top-N flagged rows as a table.

Each shard is read ONCE, streamed sample by sample (memory: one sample at a time plus the wanted thumbnails);
a card's image must have the sha256 the scan recorded, so a shard that changed since the scan never shows
another image under the scanned key. Thumbnails are JPEGs of at most `THUMB_PX` px, written beside the page.
The cards' HTML is the report's template (pipeline/report/templates/_galleries.html.j2).
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import duckdb

from pipeline import shards as shard_layer
from pipeline import storage
from pipeline.limits import MAX_PIXELS
from pipeline.logs import get_logger
from pipeline.models.constants import REAL_LABEL, UNKNOWN_LABEL
from pipeline.report.summary import query_rows

THUMB_PX = 256
THUMB_DIR = "thumbs"
MAX_TEXT = 240
# verdicts shown in the "declared" gallery (pipeline.output.PROVENANCE_VERDICTS)
DECLARED_VERDICTS = ("ai_declared", "ai_composite_declared")


@dataclass
class Item:
    """One card: a scan row, and what was found for it in its shard."""

    shard: str
    shard_url: str
    key: str | None
    status: str
    error: str | None
    p_fake: float | None
    is_fake: bool | None
    threshold: float | None
    top_generator: str | None
    sha256: str | None
    thumb: str | None = None  # file name relative to the report folder
    url: str | None = None  # from the sample's .json sidecar
    caption: str | None = None
    note: str | None = None  # why there is no thumbnail
    # provenance evidence (scan schema v3; null for older scans)
    provenance_verdict: str | None = None
    provenance_generator: str | None = None
    provenance_model: str | None = None
    provenance_signature: str | None = None


# the fields `fill` finds in the shard; every other Item field is a column of the scan
ITEM_COLUMNS = ", ".join(f.name for f in fields(Item) if f.name not in ("thumb", "url", "caption", "note"))


class Gallery(NamedTuple):
    """One section of cards: `name` is its id on the page (`gallery-<name>`) and its key in summary.json."""

    name: str
    title: str
    items: list[Item]
    note: str = ""  # one sentence under the title: what the reader is looking at and what to do with it


def fakes_gallery(generator: str, items: list[Item]) -> Gallery:
    """The most confident fakes of one top_generator. Under 'real' the binary head flags the image but the
    attribution head's top label is 'real': the two heads disagree, which is said on the page in words."""
    if generator == REAL_LABEL:
        return Gallery(
            f"fakes:{generator}",
            "Flagged fake, but attributed to no known generator ('real' is the attribution head's top label)",
            items,
            "The binary head says generated (p_fake at or above the threshold) while the attribution "
            "head's top label is 'real': the two heads disagree. These are the borderline and "
            "unknown-generator cases — look at them: a generator the detector was not trained on, or a "
            "false positive.",
        )
    if generator == UNKNOWN_LABEL:
        return Gallery(
            f"fakes:{generator}",
            "Flagged fake, generator not recognised",
            items,
            "The binary head says generated, but no known generator's attribution score passed the "
            "detector's unknown threshold: a new generator, or one the detector confuses with another.",
        )
    return Gallery(f"fakes:{generator}", f"Most confident fakes attributed to {generator}", items)


def _items(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[Item]:
    """The Items of `sql`, a query that selects ITEM_COLUMNS."""
    return [Item(**row) for row in query_rows(con, sql, params)]


def _scan_items(con: duckdb.DuckDBPyConnection, where_order: str, params: list[Any]) -> list[Item]:
    """`SELECT ITEM_COLUMNS FROM scan WHERE <where_order> LIMIT ?` as Items (`params` end with the limit)."""
    return _items(con, f"SELECT {ITEM_COLUMNS} FROM scan WHERE {where_order} LIMIT ?", params)


def select(con: duckdb.DuckDBPyConnection, *, size: int, top_n: int, seed: int) -> dict[str, Any]:
    """The galleries' rows from the `scan` view (one scan date):
    {"galleries": [Gallery], "top_flagged": items}."""
    galleries: list[Gallery] = []
    if size > 0:
        fakes = _items(
            con,
            f"""
            SELECT {ITEM_COLUMNS} FROM (
              SELECT *, row_number() OVER (PARTITION BY top_generator ORDER BY p_fake DESC, shard, key) AS rn
              FROM scan WHERE status = 'ok' AND is_fake)
            WHERE rn <= ? ORDER BY top_generator, rn""",
            [size],
        )
        by_gen: dict[str, list[Item]] = defaultdict(list)
        for it in fakes:
            by_gen[str(it.top_generator)].append(it)
        for gen in sorted(by_gen, key=lambda g: (-len(by_gen[g]), g)):
            galleries.append(fakes_gallery(gen, by_gen[gen]))
        declared = ", ".join(f"'{v}'" for v in DECLARED_VERDICTS)
        sections = [  # (name, title, WHERE ... ORDER BY, its parameters)
            (
                "declared",
                "Declared generated by their own provenance (C2PA, XMP, generator metadata), generator named",
                f"""provenance_verdict IN ({declared})
                ORDER BY provenance_verdict, provenance_generator NULLS LAST, shard, key""",
                [],
            ),
            (
                "provenance-invalid",
                "C2PA manifests that fail validation (what they claim is not believed)",
                "provenance_verdict = 'invalid' ORDER BY shard, key",
                [],
            ),
            (
                "borderline",
                "Borderline: closest to the threshold (both sides)",
                "status = 'ok' AND p_fake IS NOT NULL ORDER BY abs(p_fake - threshold), shard, key",
                [],
            ),
            (
                "kept",
                "Random sample of what is kept (not flagged)",
                "status = 'ok' AND NOT is_fake ORDER BY md5(shard || '/' || key || '/' || ?), shard, key",
                [str(seed)],
            ),
        ]
        for name, title, where_order, params in sections:
            galleries.append(Gallery(name, title, _scan_items(con, where_order, [*params, size])))
        galleries.append(
            Gallery(
                "errors",
                "One example per error status",
                _items(
                    con,
                    f"""
            SELECT {ITEM_COLUMNS} FROM (
              SELECT *, row_number() OVER (PARTITION BY status ORDER BY shard, key NULLS FIRST) AS rn
              FROM scan WHERE status <> 'ok')
            WHERE rn = 1 ORDER BY status""",
                    [],
                ),
            )
        )
    flagged = "status = 'ok' AND is_fake ORDER BY p_fake DESC, shard, key"
    top = _scan_items(con, flagged, [top_n]) if top_n > 0 else []
    return {"galleries": [g for g in galleries if g.items], "top_flagged": top}


def short_text(value: Any) -> str | None:
    """`value` on one line (whitespace runs collapsed), cut to MAX_TEXT characters with an ellipsis."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def thumbnail(data: bytes) -> bytes:
    """A JPEG of at most THUMB_PX x THUMB_PX px (aspect kept); raises for undecodable or oversized images."""
    with shard_layer.open_image(data) as im:  # the scan's formats and orientation rule (pipeline.shards)
        if im.width * im.height > MAX_PIXELS:  # what the scan decodes by default
            raise ValueError(f"{im.width}x{im.height} px is above the {MAX_PIXELS}-pixel limit")
        im.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
        small = shard_layer.upright(im)[0].convert("RGB")
        small.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


def thumb_name(item: Item) -> str:
    ident = (item.shard_url, item.key, item.sha256)
    digest = hashlib.sha256("\0".join(str(x) for x in ident).encode()).hexdigest()[:20]
    return f"{THUMB_DIR}/{digest}.jpg"


def fill(items: list[Item], output: str) -> dict[str, Any]:
    """Read each shard of `items` once; write a thumbnail per item beside the report and set url/caption from
    the sample's JSON sidecar. Items of error rows get their message as the note. Returns read statistics."""
    log = get_logger("report.gallery")
    wanted: dict[str, dict[str | None, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        if it.key is None:
            it.note = "shard could not be read (no sample key)"
            continue
        wanted[it.shard_url][it.key].append(it)
    stats = {"shards_read": 0, "thumbnails": 0, "missing": 0}
    written: set[str] = set()
    for shard_url, by_key in sorted(wanted.items()):
        stats["shards_read"] += 1
        found: dict[str, list[shard_layer.Sample]] = defaultdict(list)
        read_error: str | None = None
        try:
            for sample in shard_layer.iter_samples(shard_url):
                if sample.key in by_key:
                    found[sample.key].append(sample)
        except shard_layer.ShardReadError as exc:  # keep what was read before the failure
            read_error = str(exc)
        except OSError as exc:
            read_error = f"{type(exc).__name__}: {exc}"
        for key, its in by_key.items():
            for it in its:
                _fill_one(it, found.get(key, []), read_error, output, written, stats)
    log.info("gallery_thumbnails", **stats)
    return stats


def _fill_one(
    it: Item,
    samples: list[shard_layer.Sample],
    read_error: str | None,
    output: str,
    written: set[str],
    stats: dict[str, int],
) -> None:
    if not samples:
        it.note = f"sample not found in its shard{f' ({read_error})' if read_error else ''}"
        stats["missing"] += 1
        return
    chosen = next((s for s in samples if it.sha256 is None or s.image_sha256() == it.sha256), None)
    if chosen is None:
        it.note = "the shard changed since the scan (no sample with the scanned image's sha256)"
        stats["missing"] += 1
        return
    meta, _ = shard_layer.parse_meta(chosen.json_member())
    if meta:
        it.url = short_text(meta.get("url"))
        it.caption = short_text(meta.get("caption") or meta.get("text"))
    if it.status != "ok":
        it.note = it.error or it.status
        return
    image = chosen.image_member()
    if image is None or image.data is None:
        it.note = "no image member"
        return
    name = thumb_name(it)
    if name not in written:
        try:
            storage.write_bytes_atomic(storage.join(output, *name.split("/")), thumbnail(image.data))
        except Exception as exc:  # noqa: BLE001 - one bad image must not fail the report
            it.note = f"no thumbnail: {type(exc).__name__}: {exc}"
            return
        written.add(name)
        stats["thumbnails"] += 1
    it.thumb = name
