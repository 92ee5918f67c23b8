"""The report's page [ours]: `report.html` from the Jinja2 templates in pipeline/report/templates/
(package data, shipped in the wheel). Autoescape is on, so every value that came from data (keys, URLs and
captions from the shards' sidecars, error messages, generator names) is escaped; nothing from data is marked
safe. The only hrefs are http(s) URLs (`safe_href`); the embedded summary JSON goes through Jinja's `tojson`,
which escapes `<`, `>`, `&` and `'` so a string in it cannot close the <script> element."""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import urlparse

import jinja2

from pipeline.report.gallery import Gallery, Item, short_text
from pipeline.report.summary import MAX_FILTER_ROWS


def fmt(value: Any) -> str:
    """A table cell's or a card's text: "—" for none, a float with 4 decimals, anything else as str()."""
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def safe_href(url: str | None) -> str | None:
    """Only http(s) links are clickable (a sidecar is untrusted: no javascript: or data: URLs)."""
    if not url:
        return None
    return url if urlparse(url).scheme in ("http", "https") else None


def provenance_line(it: Item) -> str | None:
    """ "declared ai_declared: ComfyUI (model …) · C2PA signature valid_untrusted" for a row with
    provenance evidence."""
    if it.provenance_verdict in (None, "none"):
        return None
    text = f"declared {it.provenance_verdict}"
    if it.provenance_generator:
        text += f": {it.provenance_generator}"
    if it.provenance_model:
        text += f" (model {it.provenance_model})"
    if it.provenance_signature:
        text += f" · C2PA signature {it.provenance_signature}"
    return text


def shards_line(sh: dict[str, Any] | None) -> str:
    """'12 scanned, 88 carried from 2026-03-01, 3 removed since' (an incremental night) or '100 scanned'."""
    if not sh:
        return "—"
    text = f"{sh['scanned']} scanned"
    if sh.get("carried_from"):
        removed = sh.get("removed_since") or 0
        text += f", {sh['carried']} carried from {sh['carried_from']}, {removed} removed since"
    elif sh.get("full_scan_reason"):
        text += f" (incremental, full scan: {sh['full_scan_reason']})"
    return text


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field is an error, never an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    named = (fmt, safe_href, provenance_line, shards_line)  # filters under their function's name
    env.filters.update({f.__name__: f for f in named}, short=short_text)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": str}
    return env


def render_html(summary: dict[str, Any], images: list[str], galleries: list[Gallery], top: list[Item]) -> str:
    """The page for `summary` (pipeline.report.summary), its plot files `images` (names beside the page) and
    the chosen galleries / top-flagged rows (pipeline.report.gallery, thumbnails already filled)."""
    return (
        environment()
        .get_template("report.html.j2")
        .render(summary=summary, images=images, galleries=galleries, top=top, max_filter_rows=MAX_FILTER_ROWS)
    )
