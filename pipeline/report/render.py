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

from pipeline.report.gallery import Gallery, Item, provenance_line, short_text
from pipeline.report.summary import MAX_FILTER_ROWS, _shards_line


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
    named = (fmt, safe_href, provenance_line)  # filters under their function's name
    env.filters.update({f.__name__: f for f in named}, short=short_text, shards_line=_shards_line)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": str}
    return env


def render_html(
    summary: dict[str, Any], images: list[str], galleries: list[Gallery] = (), top: list[Item] = ()
) -> str:
    """The page for `summary` (pipeline.report.summary), its plot files `images` (names beside the page) and
    the chosen galleries / top-flagged rows (pipeline.report.gallery, thumbnails already filled)."""
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            summary=summary,
            images=list(images),
            galleries=list(galleries),
            top=list(top),
            max_filter_rows=MAX_FILTER_ROWS,
        )
    )
