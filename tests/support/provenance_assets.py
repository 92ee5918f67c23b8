"""Provenance test artifacts, produced at test time by the real libraries (nothing binary is committed).

- `make_chain()`: an EC P-256 root CA + leaf signing certificate made with `cryptography` (leaf: CA=false,
  KeyUsage digitalSignature critical, EKU emailProtection, SKI/AKI: what c2pa accepts for signing).
- `c2pa_sign(image, mime, chain, source_type)`: the image with a C2PA manifest signed by c2pa-python, whose
  `c2pa.created` action carries the IPTC digital source type.
- PNG text chunks as AUTOMATIC1111 (`parameters`) and ComfyUI (`prompt` / `workflow`) write them, XMP with a
  DigitalSourceType, EXIF Software; and the malformed variants (bombs, truncations, lies).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC + "trainedAlgorithmicMedia"
COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"
CAPTURE = IPTC + "digitalCapture"

A1111_PARAMETERS = (
    "a photo of a cat on a sofa, highly detailed\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.7.0"
)
COMFY_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a secret prompt", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "model": ["4", 0]}},
}
COMFY_WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 4, "type": "CheckpointLoaderSimple"}]}


def pixels(w: int = 96, h: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth image (compresses like a photo, so re-encodes stay small)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1)
    return np.clip(base + rng.integers(-8, 9, size=(h, w, 3)), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------- certificates and C2PA signing
@dataclass(frozen=True)
class Chain:
    leaf_pem: bytes  # leaf + root (the chain the signer embeds)
    key_pem: bytes  # the leaf's private key (PKCS#8)
    root_pem: bytes  # the trust anchor


def make_chain(name: str = "genscan test signer") -> Chain:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genscan test root")])

    def issued(subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.CertificateBuilder:
        """What both certificates hold: subject, issuer (the root), key, serial, a 30-day validity."""
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )

    root = (
        issued(root_name, root_key, ca=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genscan tests"),
        ]
    )
    leaf = (
        issued(leaf_name, leaf_key, ca=False)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Chain(
        leaf_pem=leaf.public_bytes(pem) + root.public_bytes(pem),
        key_pem=leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        root_pem=root.public_bytes(pem),
    )


def c2pa_sign(
    data: bytes,
    mime: str,
    chain: Chain,
    source_type: str = TRAINED,
    claim_generator: str = "genscan-test-generator/1.0",
    ingredient: bytes | None = None,
) -> bytes:
    """`data` with an embedded C2PA manifest signed by `chain` (c2pa-python); the `c2pa.created` action
    declares `source_type`; `ingredient` (same mime) is added as a parent ingredient when given."""
    import c2pa

    manifest = {
        "claim_generator_info": [{"name": claim_generator.split("/")[0], "version": "1.0"}],
        "title": "test asset",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": source_type}]},
            }
        ],
    }
    info = c2pa.C2paSignerInfo(b"es256", chain.leaf_pem, chain.key_pem, None)
    signer = c2pa.Signer.from_info(info)
    builder = c2pa.Builder(json.dumps(manifest))
    if ingredient is not None:
        builder.add_ingredient(
            json.dumps({"title": "parent", "relationship": "parentOf"}), mime, io.BytesIO(ingredient)
        )
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def alter_pixels_jpeg(signed: bytes) -> bytes:
    """Flip bytes inside the entropy-coded data of a JPEG (after SOS): the manifest stays, the hash breaks."""
    sos = signed.rfind(b"\xff\xda")
    pos = sos + 40
    out = bytearray(signed)
    for i in range(pos, pos + 8):
        out[i] ^= 0x55 if out[i] not in (0xFF, 0x00, 0xAA) else 0x00
    return bytes(out)


def reencode(data: bytes, fmt: str) -> bytes:
    """Decode and save again (what img2dataset does): all metadata is dropped."""
    with Image.open(io.BytesIO(data)) as im:
        return encode(np.asarray(im.convert("RGB")), fmt)


# ---------------------------------------------------------------- generator metadata
def png_with_text(arr: np.ndarray, text: dict[str, str], compressed: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        if compressed:
            info.add_itxt(k, v, zip=True)
        else:
            info.add_text(k, v)
    return encode(arr, "PNG", pnginfo=info)


def a1111_png(arr: np.ndarray) -> bytes:
    return png_with_text(arr, {"parameters": A1111_PARAMETERS})


def comfyui_png(arr: np.ndarray) -> bytes:
    return png_with_text(arr, {"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(COMFY_WORKFLOW)})


def xmp_packet(source_type: str, pad: int = 0) -> bytes:
    body = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'Iptc4xmpExt:DigitalSourceType="{source_type}"/></rdf:RDF></x:xmpmeta>'
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>' + body + " " * pad + '<?xpacket end="w"?>'
    ).encode()


def jpeg_with_xmp(arr: np.ndarray, packet: bytes) -> bytes:
    return encode(arr, "JPEG", quality=90, xmp=packet)


def png_with_xmp(arr: np.ndarray, packet: bytes) -> bytes:
    """XMP in a PNG iTXt chunk (keyword XML:com.adobe.xmp, as Adobe writes it); no size limit, unlike JPEG's
    64 KiB APP1."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet.decode())
    return encode(arr, "PNG", pnginfo=info)


def jpeg_with_software(arr: np.ndarray, software: str) -> bytes:
    exif = Image.Exif()
    exif[0x0131] = software
    return encode(arr, "JPEG", quality=90, exif=exif.tobytes())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def insert_png_chunk(png: bytes, chunk: bytes) -> bytes:
    """`chunk` right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + chunk + png[33:]


def ztxt_bomb(png: bytes, expands_to: int = 64 * 2**20) -> bytes:
    """A zTXt `parameters` chunk of ~64 KiB that inflates to `expands_to` bytes."""
    blob = zlib.compress(b"A" * expands_to, 9)
    return insert_png_chunk(png, png_chunk(b"zTXt", b"parameters\x00\x00" + blob))


def jpeg_with_app1(arr: np.ndarray, payload: bytes) -> bytes:
    """A JPEG with a raw APP1 segment (EXIF / XMP, malformed on purpose) right after SOI."""
    base = encode(arr, "JPEG", quality=90)
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + base[2:]


def mutations(data: bytes, n: int, seed: int = 0):
    """`n` damaged copies of `data`: bit flips, cuts, zeroed runs and splices at random places."""
    import random

    rng = random.Random(seed)
    for _ in range(n):
        d = bytearray(data)
        kind = rng.choice(("flip", "cut", "zero", "splice"))
        if kind == "flip":
            for _ in range(rng.randint(1, 20)):
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            d = d[: rng.randrange(len(d))]
        elif kind == "zero":
            a, k = rng.randrange(len(d)), rng.randint(1, 500)
            d[a : a + k] = bytes(len(d[a : a + k]))
        else:
            a, b = sorted(rng.randrange(len(d)) for _ in range(2))
            d = d[:a] + d[b:] + d[a:b]
        yield bytes(d)
