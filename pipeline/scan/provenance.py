"""Provenance evidence read from an image member's bytes, headers only (docs/provenance.md) [ours].

`ProvenanceReader(trust_anchors_pem).read(data) -> Provenance`: the declared origin of one image, never
raising. It walks the container's metadata segments (JPEG markers up to the first scan, PNG chunks, WebP RIFF
chunks) without decoding a pixel, and only parses what it finds:
- C2PA Content Credentials (JPEG APP11 JUMBF, PNG `caBX`, WebP `C2PA`): read and validated by c2pa-python
  (offline: no remote manifests, no OCSP). Kept: claim generator(s), signer, every `digitalSourceType` of the
  active manifest's actions, the number of ingredients, the validation state and failure codes.
- XMP (JPEG APP1, PNG iTXt `XML:com.adobe.xmp`, WebP `XMP `): IPTC `DigitalSourceType` and `xmp:CreatorTool`.
- Generator metadata: PNG text chunks of AUTOMATIC1111 (`parameters`), ComfyUI (`prompt` / `workflow`),
  InvokeAI (`invokeai_metadata`, `invokeai_graph`, `sd-metadata`, `Dream`), NovelAI (`Software` + `Source`);
  EXIF `Software` of a known generator and the A1111 `parameters` in EXIF `UserComment` (JPEG / WebP).
  The generator and, where written, the model name are kept; prompts never are.

The verdict (pipeline.output.PROVENANCE_VERDICTS) in this order: a readable C2PA manifest decides first
(validation state Invalid -> `invalid`; else its source types), then XMP DigitalSourceType, then a known
generator's own metadata; when none of them declares anything and some evidence could not be parsed ->
`unreadable` (the reason in `error`), else `none`. Digital source types: `trainedAlgorithmicMedia` ->
ai_declared, `compositeWithTrainedAlgorithmicMedia` -> ai_composite_declared, `digitalCapture` / film / print
-> capture_declared (others, e.g. `algorithmicMedia` or `digitalCreation`, declare no verdict). Signature
(`signature`): `trusted` only when the signer chains to the run's trust anchors; a good signature without that
is `valid_untrusted`, never trusted.

Bounds (bad input never breaks the read task): XMP packets, EXIF blocks and text chunks larger than
MAX_SEGMENT bytes, compressed text that inflates beyond it, and C2PA manifest stores larger than MAX_MANIFEST
bytes are `unreadable` without being parsed; the segment walk stops at the first truncated or inconsistent
segment. Formats other than JPEG, PNG and WebP are not read (verdict null).
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

MAX_SEGMENT = 1 << 20  # bytes of one XMP packet / EXIF block / text chunk (decompressed)
MAX_MANIFEST = 16 << 20  # bytes of a C2PA manifest store (all its JUMBF segments)
MAX_TEXT_CHUNKS = 256  # PNG text chunks looked at per image

# IPTC digital source types (the last path segment of http(s)://cv.iptc.org/newscodes/digitalsourcetype/<x>)
AI_TYPES = frozenset({"trainedAlgorithmicMedia"})
COMPOSITE_TYPES = frozenset({"compositeWithTrainedAlgorithmicMedia"})
CAPTURE_TYPES = frozenset({"digitalCapture", "negativeFilm", "positiveFilm", "print"})
_TYPE_VERDICTS = (
    (AI_TYPES, "ai_declared"),
    (COMPOSITE_TYPES, "ai_composite_declared"),
    (CAPTURE_TYPES, "capture_declared"),
)

# EXIF / PNG `Software` values written by image generators: (pattern, generator name)
KNOWN_SOFTWARE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), name)
    for p, name in (
        (r"^NovelAI", "NovelAI"),
        (r"midjourney", "Midjourney"),
        (r"^(stable[ _-]?diffusion|automatic1111|sd[ _-]?webui)", "Stable Diffusion"),
        (r"^ComfyUI", "ComfyUI"),
        (r"^InvokeAI", "InvokeAI"),
        (r"^Fooocus", "Fooocus"),
        (r"^Draw Things", "Draw Things"),
        (r"^DiffusionBee", "DiffusionBee"),
        (r"^DALL[·\-\s]?E", "DALL-E"),
        (r"^Adobe Firefly", "Adobe Firefly"),
    )
)
_INVOKE_KEYS = ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream")
# PNG text keywords that are read (others are skipped without being decompressed)
_TEXT_KEYS = frozenset({"parameters", "prompt", "workflow", "Software", "Source", *_INVOKE_KEYS})
_XMP_KEY = "XML:com.adobe.xmp"
_A1111_STEPS = re.compile(r"(?:^|\n|, )Steps: \d+")
_A1111_MODEL = re.compile(r"(?:^|\n|, )Model: ([^,\n]{1,200})")


@dataclass
class Provenance:
    """What one image declares about its origin (null fields: not declared / not applicable)."""

    # one of PROVENANCE_VERDICTS; None: not read (format not read, no bytes, reading off)
    verdict: str | None = None
    # the kinds of evidence found, in this order: "c2pa", "xmp", "png_text", "exif"
    kinds: list[str] = field(default_factory=list)
    basis: str | None = None  # the kind that gave the verdict; None for none / unreadable / not read
    generator: str | None = None  # claim generator / front-end / Software naming the generator
    model: str | None = None  # the model name, where the front-end writes it
    signer: str | None = None  # C2PA signing certificate: "<issuer> / <common name>"
    source_types: list[str] = field(default_factory=list)  # IPTC digital source type IRIs, as written
    signature: str | None = None  # C2PA: "trusted", "valid_untrusted" or "invalid"
    codes: list[str] = field(default_factory=list)  # C2PA validation failure codes
    ingredients: int | None = None  # C2PA: ingredients of the active manifest
    error: str | None = None  # why evidence could not be read (also when another kind decided)
    # a PNG text chunk was refused (bomb, oversized): the decoder gets the bytes without text chunks
    # (`without_text_chunks`), as Pillow refuses the whole image over such a chunk. Not a column.
    text_refused: bool = False


@dataclass
class _Segments:
    fmt: str
    c2pa: list[bytes] = field(default_factory=list)  # raw JUMBF payloads (presence + size)
    xmp: list[bytes] = field(default_factory=list)
    exif: list[bytes] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    text_refused: bool = False


# ------------------------------------------------------------------------------------------- container walks
def sniff(data: bytes) -> str | None:
    """The container from the magic bytes (never from a file name): JPEG, PNG, WEBP or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _jpeg(data: bytes, seg: _Segments) -> None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            seg.errors.append(f"JPEG: no marker at byte {i}")
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no metadata after this
            return
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2 or i + 2 + length > n:
            seg.errors.append(f"JPEG: segment 0x{marker:02X} at byte {i} runs past the end")
            return
        body = data[i + 4 : i + 2 + length]
        if marker == 0xE1:
            if body.startswith(b"Exif\x00\x00"):
                seg.exif.append(body[6:])
            elif body.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
                seg.xmp.append(body[29:])
        elif marker == 0xEB and body[:2] == b"JP":  # APP11 JUMBF (C2PA)
            seg.c2pa.append(body)
        i += 2 + length


def _inflate(blob: bytes, what: str) -> bytes:
    """zlib data, at most MAX_SEGMENT bytes of output (a ValueError beyond: decompression bomb)."""
    d = zlib.decompressobj()
    out = d.decompress(blob, MAX_SEGMENT)
    if d.unconsumed_tail:
        raise ValueError(f"{what} inflates beyond {MAX_SEGMENT} bytes")
    return out


def _png_text(kind: bytes, body: bytes, seg: _Segments) -> None:
    key_end = body.find(b"\x00", 0, 80)
    if key_end <= 0:
        seg.errors.append(f"PNG {kind.decode()}: no keyword")
        return
    key = body[:key_end].decode("latin-1")
    if key not in _TEXT_KEYS and key != _XMP_KEY:
        return
    try:
        if kind == b"tEXt":
            text = body[key_end + 1 :]
        elif kind == b"zTXt":
            text = _inflate(body[key_end + 2 :], f"zTXt {key!r}")
        else:  # iTXt: keyword \0 flag method lang \0 translated \0 text
            flag = body[key_end + 1 : key_end + 2]
            rest = body[key_end + 3 :]
            lang_end = rest.find(b"\x00")
            tr_end = rest.find(b"\x00", lang_end + 1)
            if lang_end < 0 or tr_end < 0:
                raise ValueError(f"iTXt {key!r}: truncated header")
            text = rest[tr_end + 1 :]
            if flag == b"\x01":
                text = _inflate(text, f"iTXt {key!r}")
    except (ValueError, zlib.error) as exc:
        seg.errors.append(f"PNG {exc}")
        seg.text_refused = True
        return
    if key == _XMP_KEY:
        seg.xmp.append(text)
    else:
        seg.texts[key] = text.decode("utf-8" if kind == b"iTXt" else "latin-1", "replace")


def _png(data: bytes, seg: _Segments) -> None:
    i, n, texts = 8, len(data), 0
    while i + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, i)
        end = i + 12 + length
        if end > n:
            seg.errors.append(f"PNG: chunk {kind!r} at byte {i} runs past the end")
            return
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            texts += 1
            if texts > MAX_TEXT_CHUNKS:
                seg.errors.append(f"PNG: more than {MAX_TEXT_CHUNKS} text chunks")
                return
            if length > MAX_SEGMENT:
                seg.errors.append(f"PNG {kind.decode()}: {length} bytes exceeds {MAX_SEGMENT}")
                seg.text_refused = True
            else:
                _png_text(kind, data[i + 8 : i + 8 + length], seg)
        elif kind == b"eXIf":
            seg.exif.append(data[i + 8 : i + 8 + length])
        elif kind == b"caBX":
            seg.c2pa.append(data[i + 8 : i + 8 + length])
        elif kind == b"IEND":
            return
        i = end


def _webp(data: bytes, seg: _Segments) -> None:
    i, n = 12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    while i + 8 <= n:
        kind, length = struct.unpack_from("<4sI", data, i)
        if i + 8 + length > n:
            seg.errors.append(f"WebP: chunk {kind!r} at byte {i} runs past the end")
            return
        body = data[i + 8 : i + 8 + length]
        if kind == b"EXIF":
            seg.exif.append(body[6:] if body.startswith(b"Exif\x00\x00") else body)
        elif kind == b"XMP ":
            seg.xmp.append(body)
        elif kind == b"C2PA":
            seg.c2pa.append(body)
        i += 8 + length + (length & 1)


def without_text_chunks(data: bytes) -> bytes:
    """A PNG without its tEXt / zTXt / iTXt chunks (the image data untouched); other bytes unchanged."""
    if sniff(data) != "PNG":
        return data
    parts, i, n = [data[:8]], 8, len(data)
    while i + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, i)
        end = min(i + 12 + length, n)
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            parts.append(data[i:end])
        i = end
    parts.append(data[i:])
    return b"".join(parts)


def segments(data: bytes) -> _Segments | None:
    """The metadata segments of a JPEG / PNG / WebP member; None for other formats. Never raises."""
    fmt = sniff(data)
    if fmt is None:
        return None
    seg = _Segments(fmt)
    try:
        {"JPEG": _jpeg, "PNG": _png, "WEBP": _webp}[fmt](data, seg)
    except (struct.error, IndexError) as exc:
        seg.errors.append(f"{fmt}: malformed container ({exc})")
    return seg


# ------------------------------------------------------------------------------------------- parsers
def _short(iri: str) -> str:
    return iri.rstrip("/").rsplit("/", 1)[-1]


def _verdict_of(source_types: list[str]) -> str | None:
    short = {_short(t) for t in source_types}
    return next((v for types, v in _TYPE_VERDICTS if short & types), None)


def _xmp(packet: bytes) -> tuple[list[str], str | None]:
    """(DigitalSourceType values, CreatorTool) of one XMP packet; ValueError when it does not parse."""
    if len(packet) > MAX_SEGMENT:
        raise ValueError(f"XMP packet of {len(packet)} bytes exceeds {MAX_SEGMENT}")
    if b"DigitalSourceType" not in packet:  # the common case: nothing to declare, no XML parse
        return [], None
    try:
        # expat (>= 2.4) limits entity expansion; ElementTree resolves no external entities
        root = ET.fromstring(packet)
    except ET.ParseError as exc:
        raise ValueError(f"XMP does not parse: {exc}") from exc
    types: list[str] = []
    tool = None
    for el in root.iter():
        for k, v in el.attrib.items():
            local = k.rsplit("}", 1)[-1]
            if local == "DigitalSourceType":
                types.append(v.strip())
            elif local == "CreatorTool":
                tool = v.strip()
        local = el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""
        if local == "DigitalSourceType":
            value = (el.text or "").strip() or next(
                (v for k, v in el.attrib.items() if k.endswith("}resource")), ""
            )
            if value:
                types.append(value)
        elif local == "CreatorTool" and (el.text or "").strip():
            tool = (el.text or "").strip()
    return types, tool


def _user_comment(raw: bytes) -> str:
    head, body = raw[:8], raw[8:]
    if head == b"UNICODE\x00":
        text = body.decode("utf-16-be", "replace")
        return text if "Steps:" in text else body.decode("utf-16-le", "replace")
    return body.decode("utf-8" if head != b"ASCII\x00\x00\x00" else "ascii", "replace")


def _exif(raw: bytes) -> tuple[str | None, str | None]:
    """(Software, UserComment text) of an EXIF block; ValueError when it is malformed."""
    from PIL import Image

    if len(raw) > MAX_SEGMENT:
        raise ValueError(f"EXIF block of {len(raw)} bytes exceeds {MAX_SEGMENT}")
    exif = Image.Exif()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif.load(raw)
            software = exif.get(0x0131)
            comment = exif.get_ifd(0x8769).get(0x9286)
        except Exception as exc:  # Pillow raises SyntaxError / struct.error / ValueError on bad TIFF data
            raise ValueError(f"EXIF does not parse: {type(exc).__name__}: {exc}") from exc
    bad = [str(w.message) for w in caught if "EXIF" in str(w.message)]
    if bad and software is None and comment is None:
        raise ValueError(f"EXIF does not parse: {bad[0]}")
    sw = software.strip("\x00 ").strip() if isinstance(software, str) else None
    if isinstance(comment, bytes):
        comment = _user_comment(comment)
    return sw or None, comment if isinstance(comment, str) else None


def _each_parsed(blocks: Iterable[bytes], parse: Callable[[bytes], T], errors: list[str]) -> Iterator[T]:
    """`parse(block)` of each block in order; a block `parse` rejects (ValueError) adds its reason to `errors`
    and is passed over, so one malformed block never hides the evidence in the others."""
    for block in blocks:
        try:
            parsed = parse(block)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        yield parsed


def _known_software(software: str | None) -> str | None:
    if not software:
        return None
    return next((name for pat, name in KNOWN_SOFTWARE if pat.search(software)), None)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _comfy_model(prompt: Any) -> str | None:
    if not isinstance(prompt, dict):
        return None
    for node in prompt.values():
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            inputs = node["inputs"]
            for key in ("ckpt_name", "unet_name", "model_name"):
                if isinstance(inputs.get(key), str):
                    return inputs[key]
    return None


def _invoke_model(texts: dict[str, str]) -> str | None:
    meta = _json(texts.get("invokeai_metadata", ""))
    if isinstance(meta, dict) and isinstance(meta.get("model"), dict):
        model = meta["model"]
        return model.get("name") or model.get("model_name")
    meta = _json(texts.get("sd-metadata", ""))
    if isinstance(meta, dict):
        return meta.get("model_weights")
    return None


def _a1111(text: str | None) -> tuple[str, str | None] | None:
    """("AUTOMATIC1111", model) when `text` is A1111's generation parameters; else None."""
    if not text or not _A1111_STEPS.search(text):
        return None
    m = _A1111_MODEL.search(text)
    return "AUTOMATIC1111", m.group(1).strip() if m else None


def generator_metadata(texts: dict[str, str]) -> tuple[str, str | None] | None:
    """(generator, model) declared by a known front-end's PNG text chunks; None when there is none."""
    if a1111 := _a1111(texts.get("parameters")):
        return a1111
    prompt = _json(texts["prompt"]) if "prompt" in texts else None
    workflow = _json(texts["workflow"]) if "workflow" in texts else None
    comfy_prompt = isinstance(prompt, dict) and any(
        isinstance(v, dict) and "class_type" in v for v in prompt.values()
    )
    if comfy_prompt or (isinstance(workflow, dict) and "nodes" in workflow):
        return "ComfyUI", _comfy_model(prompt)
    if any(k in texts for k in _INVOKE_KEYS):
        return "InvokeAI", _invoke_model(texts)
    software = _known_software(texts.get("Software"))
    if software:
        source = texts.get("Source")
        return software, (source.strip()[:200] if source and software == "NovelAI" else None)
    return None


# ------------------------------------------------------------------------------------------- C2PA
def _signer(info: Any) -> str | None:
    if not isinstance(info, dict):
        return None
    names = [str(info[k]).strip() for k in ("issuer", "common_name") if info.get(k)]
    names = list(dict.fromkeys(n for n in names if n))
    return " / ".join(names) or None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list):
        names = [
            " ".join(str(x) for x in (i.get("name"), i.get("version")) if x)
            for i in info
            if isinstance(i, dict) and i.get("name")
        ]
        if names:
            return ", ".join(names)
    gen = manifest.get("claim_generator")
    return str(gen) if gen else None


def _source_types(manifest: dict[str, Any]) -> list[str]:
    types: list[str] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data") or {}
        for action in data.get("actions") or [] if isinstance(data, dict) else []:
            if isinstance(action, dict):
                dst = action.get("digitalSourceType") or (action.get("parameters") or {}).get(
                    "digitalSourceType"
                )
                if isinstance(dst, str) and dst not in types:
                    types.append(dst)
    return types


class ProvenanceReader:
    """Reads `Provenance` from image bytes; one per read task (the C2PA context is built once)."""

    def __init__(self, trust_anchors_pem: str | None = None) -> None:
        self.trust_anchors_pem = trust_anchors_pem
        self._context: Any = None

    def _reader(self, mime: str, data: bytes) -> Any:
        import c2pa

        if self._context is None:
            # offline validation: no remote manifests, no OCSP; trust only the given anchors (none: none is)
            settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
            if self.trust_anchors_pem:
                settings["trust"] = {"trust_anchors": self.trust_anchors_pem}
            self._context = c2pa.Context(c2pa.Settings.from_dict(settings))
        return c2pa.Reader(mime, io.BytesIO(data), context=self._context)

    def _c2pa(self, fmt: str, data: bytes, seg: _Segments, out: Provenance) -> str | None:
        """Fill out's C2PA fields; the verdict it gives (None: no decision, see `out.error`)."""
        import c2pa

        size = sum(len(s) for s in seg.c2pa)
        if size > MAX_MANIFEST:
            out.error = f"C2PA manifest store of {size} bytes exceeds {MAX_MANIFEST}"
            return None
        try:
            with self._reader(f"image/{fmt.lower()}", data) as reader:  # frees the native reader at once
                store = json.loads(reader.json())
        except c2pa.C2paError.ManifestNotFound:
            return None  # a JUMBF box that is no C2PA manifest store
        except Exception as exc:  # the store does not parse (C2paError.Verify "expected JUMD", Decoding, …):
            # nothing it claims can be read. A manifest that parses but fails validation (hash mismatch, bad
            # signature) is NOT an exception: its validation state is Invalid (below)
            out.kinds.append("c2pa")
            out.error = f"C2PA manifest unreadable: {type(exc).__name__.lstrip('_')}: {str(exc)[:200]}"
            return None
        out.kinds.append("c2pa")
        manifests = store.get("manifests") or {}
        manifest = manifests.get(store.get("active_manifest")) or {}
        out.generator = _claim_generator(manifest)
        out.signer = _signer(manifest.get("signature_info"))
        out.source_types = _source_types(manifest)
        out.ingredients = len(manifest.get("ingredients") or [])
        results = (store.get("validation_results") or {}).get("activeManifest") or {}
        failures = [f.get("code") for f in results.get("failure") or [] if isinstance(f, dict)]
        failures += [s.get("code") for s in store.get("validation_status") or [] if isinstance(s, dict)]
        out.codes = list(dict.fromkeys(str(c) for c in failures if c))
        # Invalid (or a state this version does not know): nothing it claims is believed
        state = str(store.get("validation_state") or "")
        out.signature = {"Trusted": "trusted", "Valid": "valid_untrusted"}.get(state, "invalid")
        return "invalid" if out.signature == "invalid" else _verdict_of(out.source_types)

    def read(self, data: bytes | None) -> Provenance:
        """The image's provenance; never raises (an unexpected failure is verdict `unreadable`)."""
        if not data:
            return Provenance()
        try:
            return self._read(data)
        except Exception as exc:  # a bug or an input nobody foresaw: the row still gets its other columns
            return Provenance(verdict="unreadable", error=f"provenance: {type(exc).__name__}: {exc}"[:300])

    def _read(self, data: bytes) -> Provenance:
        seg = segments(data)
        if seg is None:
            return Provenance()
        out = Provenance(text_refused=seg.text_refused)
        errors = list(seg.errors)
        verdict = None
        if seg.c2pa:
            verdict = self._c2pa(seg.fmt, data, seg, out)
            out.basis = "c2pa" if verdict else None
            if out.error:
                errors.append(out.error)
        for types, tool in _each_parsed(seg.xmp, _xmp, errors):
            if types:
                if "xmp" not in out.kinds:
                    out.kinds.append("xmp")
                if verdict is None and _verdict_of(types):
                    verdict, out.basis = _verdict_of(types), "xmp"
                    out.source_types = list(dict.fromkeys([*out.source_types, *types]))
                    out.generator = out.generator or tool
        declared = generator_metadata(seg.texts) if seg.texts else None
        declared_kind = "png_text" if declared else None
        if declared:
            out.kinds.append("png_text")
        for software, comment in _each_parsed(seg.exif, _exif, errors):
            known = _known_software(software)
            from_exif = _a1111(comment) or ((known, None) if known else None)
            if from_exif:
                out.kinds.append("exif")
                if not declared:
                    declared, declared_kind = from_exif, "exif"  # type: ignore[assignment]
        if verdict is None and declared:
            verdict, out.basis = "ai_declared", declared_kind
            out.generator, out.model = declared
        out.verdict = verdict or ("unreadable" if errors else "none")
        out.error = "; ".join(errors)[:500] if errors else None
        return out
