"""The provenance evidence as row columns: the read stage's internal `prov_*` columns (numpy sentinels: "" for
null, lists joined by newlines, -1 for a missing count) and the names of their schema-v3 output columns
(`pipeline.output.SCHEMA`: `provenance_*`, built by `pipeline.scan.rows`) [ours]."""

from __future__ import annotations

from typing import Any

from pipeline.scan.provenance import Provenance, ProvenanceReader, without_text_chunks

SEP = "\n"  # joins list values in the internal string columns (IRIs and codes hold no newline)
# internal column -> output column (the same order as in the schema); list-valued ones split on SEP
PROVENANCE_STR_COLS = (
    "prov_verdict",
    "prov_basis",
    "prov_kinds",
    "prov_generator",
    "prov_model",
    "prov_signer",
    "prov_source_types",
    "prov_signature",
    "prov_codes",
    "prov_error",
)
PROVENANCE_INT_COLS = ("prov_ingredients",)
LIST_COLS = frozenset({"prov_kinds", "prov_source_types", "prov_codes"})
OUTPUT = {c: "provenance_" + c.removeprefix("prov_") for c in (*PROVENANCE_STR_COLS, *PROVENANCE_INT_COLS)}
NO_PROVENANCE: dict[str, Any] = {**{c: "" for c in PROVENANCE_STR_COLS}, "prov_ingredients": -1}


def provenance_values(
    reader: ProvenanceReader | None, data: bytes | None
) -> tuple[dict[str, Any], bytes | None]:
    """(the internal columns of one member, the bytes for the decoder). Columns all empty when reading is off
    or there are no bytes. The decoder gets the member's bytes, except a PNG whose text chunk the reader
    refused (a decompression bomb, an oversized chunk): Pillow refuses the whole image over such a chunk, so
    the decoder gets it without its text chunks and the image is still scored (the reason is in the
    provenance error)."""
    if reader is None or not data:
        return NO_PROVENANCE, data
    p = reader.read(data)
    if p.text_refused:
        p.error = f"{p.error}; the image was decoded without its PNG text chunks"
        return to_values(p), without_text_chunks(data)
    return to_values(p), data


def to_values(p: Provenance) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for col in PROVENANCE_STR_COLS:
        v = getattr(p, col.removeprefix("prov_"))
        values[col] = SEP.join(v) if col in LIST_COLS else (v or "")
    values["prov_ingredients"] = -1 if p.ingredients is None else int(p.ingredients)
    return values
