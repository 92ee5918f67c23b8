"""Thumbnail galleries for the report [ours]: which scan rows an analyst should SEE, and their thumbnails read
back from the shards through the project's shard layer (`pipeline.shards`, the same samples, keys and image
members the scan scored).

Galleries (each at most `size` cards, chosen deterministically):
- `fakes:<generator>`: the most confident flagged images per top_generator (highest p_fake first);
- `borderline`: scored images closest to their threshold, on both sides;
- `kept`: a random sample (seeded, stable between runs) of scored images that were not flagged;
- `errors`: one example per error status, with its message;
plus the top-N flagged rows as a table.

Each shard is read ONCE, streamed sample by sample (memory: one sample at a time plus the wanted thumbnails);
a card's image must have the sha256 the scan recorded, so a shard that changed since the scan never shows
another image under the scanned key. Thumbnails are JPEGs of at most `THUMB_PX` px, written beside the page.
"""

from __future__ import annotations

import hashlib
import html
import io
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

import duckdb

from pipeline import shards as shard_layer
from pipeline import storage
from pipeline.limits import MAX_PIXELS
from pipeline.logs import get_logger

THUMB_PX = 256
THUMB_DIR = "thumbs"
MAX_THUMB_SOURCE_PIXELS = MAX_PIXELS  # what the scan decodes by default
MAX_TEXT = 240
ITEM_COLUMNS = "shard, shard_url, key, status, error, p_fake, is_fake, threshold, top_generator, sha256"


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

    @property
    def ident(self) -> tuple[str, str | None, str | None]:
        return (self.shard_url, self.key, self.sha256)


def _items(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[Item]:
    rel = con.execute(sql, params or [])
    cols = [d[0] for d in rel.description]
    out = []
    for row in rel.fetchall():
        d = dict(zip(cols, row, strict=True))
        out.append(Item(**{k: d[k] for k in ITEM_COLUMNS.split(", ")}))
    return out


def select(con: duckdb.DuckDBPyConnection, *, size: int, top_n: int, seed: int) -> dict[str, Any]:
    """The galleries' rows from the `scan` view (one scan date): {"galleries": [(name, title, items)],
    "top_flagged": items}."""
    galleries: list[tuple[str, str, list[Item]]] = []
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
            galleries.append((f"fakes:{gen}", f"Most confident fakes attributed to {gen}", by_gen[gen]))
        galleries.append(
            (
                "borderline",
                "Borderline: closest to the threshold (both sides)",
                _items(
                    con,
                    f"""
            SELECT {ITEM_COLUMNS} FROM scan WHERE status = 'ok' AND p_fake IS NOT NULL
            ORDER BY abs(p_fake - threshold), shard, key LIMIT ?""",
                    [size],
                ),
            )
        )
        galleries.append(
            (
                "kept",
                "Random sample of what is kept (not flagged)",
                _items(
                    con,
                    f"""
            SELECT {ITEM_COLUMNS} FROM scan WHERE status = 'ok' AND NOT is_fake
            ORDER BY md5(shard || '/' || key || '/' || ?), shard, key LIMIT ?""",
                    [str(seed), size],
                ),
            )
        )
        galleries.append(
            (
                "errors",
                "One example per error status",
                _items(
                    con,
                    f"""
            SELECT {ITEM_COLUMNS} FROM (
              SELECT *, row_number() OVER (PARTITION BY status ORDER BY shard, key NULLS FIRST) AS rn
              FROM scan WHERE status <> 'ok')
            WHERE rn = 1 ORDER BY status""",
                ),
            )
        )
    top = (
        _items(
            con,
            f"""
        SELECT {ITEM_COLUMNS} FROM scan WHERE status = 'ok' AND is_fake
        ORDER BY p_fake DESC, shard, key LIMIT ?""",
            [top_n],
        )
        if top_n > 0
        else []
    )
    return {"galleries": [g for g in galleries if g[2]], "top_flagged": top}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def thumbnail(data: bytes) -> bytes:
    """A JPEG of at most THUMB_PX x THUMB_PX px (aspect kept); raises for undecodable or oversized images."""
    with shard_layer.open_image(data) as im:  # the scan's formats and orientation rule (pipeline.shards)
        if im.width * im.height > MAX_THUMB_SOURCE_PIXELS:
            raise ValueError(f"{im.width}x{im.height} px is above the {MAX_THUMB_SOURCE_PIXELS}-pixel limit")
        im.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
        small = shard_layer.upright(im)[0].convert("RGB")
        small.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=85)
        return buf.getvalue()


def thumb_name(item: Item) -> str:
    digest = hashlib.sha256("\0".join(str(x) for x in item.ident).encode()).hexdigest()[:20]
    return f"{THUMB_DIR}/{digest}.jpg"


def fill(items: list[Item], output: str) -> dict[str, Any]:
    """Read each shard of `items` once; write a thumbnail per item beside the report and set url/caption from
    the sample's JSON sidecar. Items of error rows get their message as the note. Returns read statistics."""
    log = get_logger("hygiene.gallery")
    wanted: dict[str, dict[str | None, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        if it.key is None:
            it.note = "shard could not be read (no sample key)"
            continue
        wanted[it.shard_url][it.key].append(it)
    stats = {"shards_read": 0, "thumbnails": 0, "missing": 0}
    written: dict[str, str] = {}
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
    written: dict[str, str],
    stats: dict[str, int],
) -> None:
    if not samples:
        it.note = f"sample not found in its shard{f' ({read_error})' if read_error else ''}"
        stats["missing"] += 1
        return
    chosen, image = None, None
    for s in samples:
        member = s.image_member()
        data = member.data if member is not None else None
        if it.sha256 is None or (data is not None and hashlib.sha256(data).hexdigest() == it.sha256):
            chosen, image = s, data
            break
    if chosen is None:
        it.note = "the shard changed since the scan (no sample with the scanned image's sha256)"
        stats["missing"] += 1
        return
    meta, _ = shard_layer.parse_meta(chosen.json_member())
    if meta:
        it.url = _text(meta.get("url"))
        it.caption = _text(meta.get("caption") or meta.get("text"))
    if it.status != "ok":
        it.note = it.error or it.status
        return
    if image is None:
        it.note = "no image member"
        return
    name = thumb_name(it)
    if name not in written:
        try:
            storage.write_bytes_atomic(storage.join(output, *name.split("/")), thumbnail(image))
        except Exception as exc:  # noqa: BLE001 - one bad image must not fail the report
            it.note = f"no thumbnail: {type(exc).__name__}: {exc}"
            return
        written[name] = name
        stats["thumbnails"] += 1
    it.thumb = name


# ---------------------------------------------------------------------------------------------- HTML


def _safe_href(url: str | None) -> str | None:
    """Only http(s) links are clickable (a sidecar is untrusted: no javascript: or data: URLs)."""
    if not url:
        return None
    return url if urlparse(url).scheme in ("http", "https") else None


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def card(it: Item, gallery: str) -> str:
    e = html.escape
    img = (
        f'<img src="{e(it.thumb)}" alt="{e(str(it.key))}">'
        if it.thumb
        else f'<div class="noimg">{e(it.note if it.status == "ok" else "no image: " + it.status)}</div>'
    )
    href = _safe_href(it.url)
    url = f'<a href="{e(href)}" rel="noreferrer nofollow">{e(it.url or "")}</a>' if href else e(it.url or "")
    key = "(whole shard)" if it.key is None else it.key
    if it.status == "ok":
        side = " flagged" if it.is_fake else " kept"
        lines = [
            f'<b>{e(key)}</b> <span class="shard">{e(it.shard)}</span>',
            f"p_fake {_num(it.p_fake)} · thr {_num(it.threshold)}{side} · {e(str(it.top_generator))}",
        ]
    else:
        lines = [
            f'<b>{e(key)}</b> <span class="shard">{e(it.shard)}</span>',
            f'<span class="err">{e(it.status)}: {e(_text(it.error) or "")}</span>',
        ]
    if it.url:
        lines.append(f'<span class="url">{url}</span>')
    if it.caption:
        lines.append(f'<span class="cap">{e(it.caption)}</span>')
    return (
        f'<figure class="card" data-gallery="{e(gallery)}" data-shard="{e(it.shard)}" '
        f'data-key="{e(key)}">{img}<figcaption>{"<br>".join(lines)}</figcaption></figure>'
    )


def _mini(it: Item) -> str:
    return f'<img class="mini" src="{html.escape(it.thumb)}" alt="thumbnail">' if it.thumb else ""


def render(galleries: list[tuple[str, str, list[Item]]], top: list[Item]) -> str:
    e = html.escape
    parts = ["<h2>Galleries</h2>"]
    if not galleries:
        parts.append("<p>No galleries (none requested, or no rows to show).</p>")
    for name, title, items in galleries:
        parts.append(
            f'<section class="gallery" id="gallery-{e(name)}"><h3>{e(title)} '
            f'<small>({len(items)})</small></h3><div class="grid">'
            + "".join(card(it, name) for it in items)
            + "</div></section>"
        )
    rows = "".join(
        f"<tr><td>{i}</td><td>{e(it.shard)}</td><td>{e(str(it.key))}</td><td>{_num(it.p_fake)}</td>"
        f"<td>{e(str(it.top_generator))}</td>"
        f"<td>{_mini(it)}</td>"
        f"<td>{e(it.url or '')}</td><td>{e(it.caption or '')}</td></tr>"
        for i, it in enumerate(top, 1)
    )
    parts.append(
        f'<h2>Top {len(top)} flagged</h2><table class="top"><tr><th>#</th><th>shard</th><th>key</th>'
        f"<th>p_fake</th><th>top_generator</th><th>image</th><th>url</th><th>caption</th></tr>{rows}</table>"
    )
    return "\n".join(parts)


def as_json(items: list[Item]) -> list[dict[str, Any]]:
    return [asdict(it) for it in items]
