"""How a row's final `is_fake` / `top_generator` use its provenance evidence (docs/provenance.md) [ours].

The detectors score every image whatever the evidence; their scores (p_fake, logit, generator_scores, the
detector_* maps) are never changed. A policy (ScanConfig.provenance_policy, POLICIES) only decides when an
`ai_declared` verdict makes an ok row fake:
- `declared` (default): any `ai_declared` verdict: a C2PA manifest whose signature validates (trusted or
  valid_untrusted: an unanchored signer still proves the file is unchanged since that key signed it), an XMP
  DigitalSourceType, or a known generator's own metadata (PNG text chunks, EXIF);
- `signed`: only an `ai_declared` C2PA manifest whose signature validates;
- `trusted`: only an `ai_declared` C2PA manifest whose signer chains to --c2pa-trust-anchors;
- `report`: never; the evidence is only reported.
Never decided by the evidence: `ai_composite_declared` (part of the image may be real), `capture_declared` (a
capture claim never clears a detector's flag), `invalid` (what a manifest that fails validation claims is
not believed), `unreadable`, `none`.

When the policy decides, `is_fake` is true and `top_generator` names the detector label the declared generator
maps to (`label_for`), or "unknown" when it maps to none (the declared name stays in provenance_generator /
provenance_model); `decided_by` says "provenance". Otherwise the row keeps the detectors' decision
(`decided_by` "detector").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from pipeline.models.constants import REAL_LABEL, UNKNOWN_LABEL

POLICIES = ("declared", "signed", "trusted", "report")


def decides(policy: str, verdict: str, basis: str, signature: str) -> bool:
    """Whether this evidence makes the row fake under `policy`."""
    if policy not in POLICIES:
        raise ValueError(f"provenance policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if verdict != "ai_declared" or policy == "report":
        return False
    signed = basis == "c2pa" and signature in ("trusted", "valid_untrusted")
    if policy == "trusted":
        return basis == "c2pa" and signature == "trusted"
    if policy == "signed":
        return signed
    return basis != "c2pa" or signed


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def label_for(generator: str, model: str, labels: Sequence[str]) -> str:
    """The detector label (of `labels`, "real" excluded) whose letters and digits (lower case) occur in the
    declared generator or model name, the longest such label first; "unknown" when none does. E.g. label
    `sdxl` for model `sd_xl_base_1.0.safetensors`, `midjourney` for Software `Midjourney`."""
    names = (_norm(generator or ""), _norm(model or ""))
    for label in sorted((x for x in labels if x != REAL_LABEL), key=len, reverse=True):
        key = _norm(label)
        if key and any(key in name for name in names):
            return label
    return UNKNOWN_LABEL


def apply_policy(rows: dict[str, np.ndarray], labels: Sequence[str], policy: str) -> dict[str, np.ndarray]:
    """`rows` (scored) with is_fake / top_generator set by the evidence where `policy` decides (ok rows only)
    and `_decided_by` ("detector" / "provenance"; "" for rows not ok). Rows whose evidence was not read (the
    read stage's empty verdict: reading off) keep the detectors' decision."""
    if not rows:  # an empty shard
        return rows
    status = np.asarray(rows["status"], dtype=object)
    decided = np.where(status == "ok", "detector", "").astype(object)
    is_fake = np.asarray(rows["is_fake"], bool).copy()
    top = np.asarray(rows["top_generator"], dtype=object).copy()
    for i in np.flatnonzero(status == "ok"):
        if decides(
            policy, str(rows["prov_verdict"][i]), str(rows["prov_basis"][i]), str(rows["prov_signature"][i])
        ):
            is_fake[i] = True
            top[i] = label_for(str(rows["prov_generator"][i]), str(rows["prov_model"][i]), labels)
            decided[i] = "provenance"
    out = dict(rows)
    out.update(is_fake=is_fake, top_generator=top, _decided_by=decided)
    return out
