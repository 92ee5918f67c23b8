"""THE WebDataset shard layer: one set of rules for reading a `.tar` shard (local, file:// or s3://), consumed
three ways — samples-for-decode by the scan (`read_shard`), samples-as-bytes by the filter's byte-exact copy
(`iter_samples`, `index_shard`) and samples-with-labels by the training / evaluation sources
(`labelled_samples`). Every consumer sees the same samples, keys and image members.

Rules (docs/reliability.md) [ours where WebDataset is silent]:
- Grouping: WebDataset's key rule (`webdataset.tariterators.base_plus_ext`): key = directory + basename up to
  the first dot of the last path component, extension = the rest. A sample is a run of consecutive members
  with the same key (WebDataset's `group_by_keys`). A key that appears again after other keys, or a member
  whose extension repeats inside the run, starts a NEW sample with the same key (`Sample.occurrence` counts
  them): nothing is merged across occurrences and nothing is dropped; the later occurrence carries a note.
- Junk: directory entries, `__MACOSX/…` members and AppleDouble `._*` files are skipped, as are members
  without an extension (WebDataset skips those too; this covers every dot-file such as `.DS_Store`) and
  non-regular members (links, devices); each skip is listed with its reason, so they are counted but not
  samples.
- Member names that are not UTF-8 (tarfile decodes them with surrogateescape) become keys with the offending
  bytes written as `\\xNN` (`backslashreplace`): printable, valid UTF-8 for Parquet, and distinct. The raw
  name is kept (`Member.raw_name`, `Sample.raw_key`) so a copy writes the original bytes back.
- Image member (`choose_image`): the first present extension in IMAGE_EXTENSIONS order (by the last
  dot-suffix, case-insensitive) among the members not above `max_member_bytes`; other image members are named
  in the note. A 0-byte image member is kept so decoding reports it; a member above the limit is never the
  image. IMAGE_TYPES is the one list of image types (extension -> the Pillow format that reads it): the nine
  types of earlier releases first, in their old order (a sample holding several members still picks the same
  one), then the types Pillow 13 (pyproject: pillow>=13) also reads (AVIF, JPEG 2000, PGM/PNM/PBM, JFIF, APNG,
  ICO, TGA). HEIC/HEIF (no decoder is installed, see docs/reliability.md) and every other type is not an image
  member; a sample with only such members has no image (its note names the members, and says so for the
  image types listed in UNREAD_IMAGE_EXTENSIONS).
- Opening an image (`open_image`, `upright`): THE rule for every consumer that decodes pixels (scan decode,
  the device-decode check, training / evaluation sources, report thumbnails). Only IMAGE_FORMATS are tried
  (Pillow's `formats=`), TGA last as it has no signature. Orientation: EXIF Orientation 2-8 is applied as
  Pillow's `ImageOps.exif_transpose` applies it; an EXIF block that cannot be parsed (bad TIFF header, cut
  inside an IFD, garbage) means "no orientation", never "no image": the image is used as stored, with a note.
- JSON member (`json` last suffix): parsed; invalid JSON or a non-object value -> `meta=None` + note.
- Truncation: tarfile ends silently at EOF, at a truncated header and at garbage after a member: the reader
  checks that an end-of-archive block follows the last member. Samples before the cut are kept; a sample whose
  later member was cut is kept with a note (without that member).
- I/O: objects up to `max_in_memory_bytes` are fetched in ONE request; larger ones are read through fsspec's
  read-ahead block cache (`block_size`) — never small unbuffered reads (PLATFORM.md: ~92 requests/shard, 17x
  slower). s3fs retries transient errors itself (botocore standard retry mode + s3fs's retry loop); on top,
  `list_shard` retries the whole shard `attempts` times with bounded backoff and an overall `deadline_s`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Generic, NoReturn, TypeVar

from PIL import ExifTags, Image

from pipeline import storage
from pipeline.logs import get_logger

log = get_logger("pipeline.shards")

# THE image types: (extension, Pillow format that reads it), in member-choice order (module doc). Every format
# here is read by Pillow 13 (pyproject: pillow>=13; AVIF through the libavif in its wheels, JPEG 2000 through
# openjpeg); tests/test_image_formats.py checks that the installed build opens each one.
IMAGE_TYPES: tuple[tuple[str, str], ...] = (
    ("jpg", "JPEG"),
    ("jpeg", "JPEG"),
    ("png", "PNG"),
    ("webp", "WEBP"),
    ("gif", "GIF"),
    ("bmp", "BMP"),
    ("tif", "TIFF"),
    ("tiff", "TIFF"),
    ("ppm", "PPM"),
    ("avif", "AVIF"),
    ("jp2", "JPEG2000"),
    ("j2k", "JPEG2000"),
    ("pgm", "PPM"),
    ("pnm", "PPM"),
    ("pbm", "PPM"),
    ("jfif", "JPEG"),
    ("apng", "PNG"),
    ("ico", "ICO"),
    ("tga", "TGA"),
)
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(ext for ext, _ in IMAGE_TYPES)
# The Pillow formats an image member may hold, in the order Pillow tries them (whatever its extension says:
# the `format` column reports the real one). MPO is Pillow's name for a JPEG with a multi-picture extension
# (many camera files). TGA has no signature, so it comes last: a file with a real signature is never taken for
# one.
IMAGE_FORMATS: tuple[str, ...] = tuple(dict.fromkeys(["JPEG", "MPO", *(fmt for _, fmt in IMAGE_TYPES)]))
# Image types seen in the wild that are NOT read (no decoder installed): named in the sample's note.
UNREAD_IMAGE_EXTENSIONS: tuple[str, ...] = ("heic", "heif", "jxl", "svg")
JSON_EXTENSIONS: tuple[str, ...] = ("json",)

DEFAULT_MAX_IN_MEMORY = 256 * 2**20
DEFAULT_BLOCK_SIZE = 8 * 2**20
DEFAULT_MAX_MEMBER = 256 * 2**20

# s3fs / botocore settings for shard reads: bounded connect/read timeouts and botocore's standard retry mode
# (retries 5xx / throttling / connection errors with jittered backoff); s3fs adds its own retry loop
# (`S3FileSystem.retries`, 5 tries, backoff 0.1 * 1.7**i s) around each call. [ours]
S3_STORAGE_OPTIONS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 10,
        "read_timeout": 30,
        "retries": {"max_attempts": 4, "mode": "standard"},
    },
}

_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


# ------------------------------------------------------------------------------------------- the key rules
def safe_name(name: str) -> str:
    """A tar member name as valid UTF-8: surrogate-escaped raw bytes become `\\xNN` text (a name that is
    valid UTF-8 comes back unchanged). [ours]"""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def split_key(name: str) -> tuple[str, str] | None:
    """(key, extension) by WebDataset's rule, or None for a member without an extension. [code: webdataset]"""
    m = _KEY_RE.match(name)
    if m is None:
        return None
    return m.group(1), m.group(2)


def junk_reason(name: str) -> str | None:
    """Why a regular member belongs to no sample by name (macOS litter), else None."""
    parts = name.split("/")
    if "__MACOSX" in parts:
        return "macOS resource fork folder (__MACOSX)"
    if parts[-1].startswith("._"):
        return "AppleDouble file (._*)"
    return None


def last_suffix(ext: str) -> str:
    """The member type an extension names: its last dot-suffix, lower case (`cls.JPG` -> `jpg`)."""
    return ext.rsplit(".", 1)[-1].lower()


def is_image_extension(ext: str) -> bool:
    return last_suffix(ext) in IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------- opening images
# Pillow's own table in `ImageOps.exif_transpose`: EXIF orientation -> the transposition that displays the
# image
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# where Pillow finds an orientation: the EXIF block (JPEG, WebP, PNG eXIf, AVIF), PNG's text form of it, XMP
_EXIF_INFO_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def describe(exc: BaseException) -> str:
    """An exception in one line: `Type: message`, or the type alone when the message is empty."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_image(data: bytes, formats: Sequence[str] = IMAGE_FORMATS) -> Image.Image:
    """THE way an image member is opened: Pillow reads the header only, trying `formats` (IMAGE_FORMATS unless
    a caller needs fewer; names Pillow opens through another plugin, such as MPO through JPEG, are skipped) in
    order. Raises what Pillow raises (UnidentifiedImageError, DecompressionBombError for a header above
    Pillow's own pixel limit, …). Pillow's warnings while reading the header (DecompressionBombWarning,
    "Corrupt EXIF data") are silenced: callers apply their own pixel limit to `im.size`, and `upright` notes
    a damaged EXIF block."""
    Image.init()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.open(io.BytesIO(data), formats=[f for f in formats if f in Image.OPEN])


def exif_orientation(im: Image.Image) -> tuple[int, str | None]:
    """(EXIF orientation 1-8, note): 1 when there is none. A block that cannot be parsed, or a value outside
    1-8, is 1 (no orientation) with a note saying why; a block Pillow reads only in part (cut inside an IFD)
    gives the entries read whole, with a note. Never raises."""
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = im.info.get("exif")
            if isinstance(raw, bytes | bytearray):
                # parsed on its own: Pillow's JPEG reader may already have swallowed this error at open and
                # cached an empty result, so `getexif` alone would not tell a damaged block from a missing one
                Image.Exif().load(bytes(raw))
            value = im.getexif().get(ExifTags.Base.Orientation, 1)
        notes += sorted({f"EXIF block damaged: {str(w.message).strip()}" for w in caught})
    except Exception as exc:  # Pillow raises SyntaxError, struct.error, ValueError, … for broken blocks
        return 1, f"EXIF block unreadable, orientation ignored: {describe(exc)}"
    if not isinstance(value, int) or not 1 <= value <= 8:
        notes.append(f"EXIF orientation {value!r} is not 1-8; ignored")
        value = 1
    return value, "; ".join(notes) or None


def upright(im: Image.Image) -> tuple[Image.Image, str | None]:
    """THE orientation rule: (`im` as displayed, note). EXIF orientation 2-8 is applied as Pillow's
    `ImageOps.exif_transpose` applies it; an unreadable block leaves the pixels as stored (see
    `exif_orientation`). The result carries no EXIF/XMP block, so a later step (`prepare_image`, a copy, a
    convert) never re-reads the block: applying `upright` twice is applying it once. An image without any such
    block is returned as it is (no copy); otherwise the result is a new image and `im` is left unchanged.
    Loads `im` first (a PNG's eXIf chunk may follow its pixel data)."""
    im.load()
    if not any(k in im.info for k in _EXIF_INFO_KEYS) and not hasattr(im, "tag_v2"):  # tag_v2: a TIFF's tags
        return im, None
    orientation, note = exif_orientation(im)
    method = _TRANSPOSE.get(orientation)
    out = im.transpose(method) if method is not None else im.copy()
    for key in _EXIF_INFO_KEYS:
        out.info.pop(key, None)
    return out, note


# ------------------------------------------------------------------------------------------- samples
@dataclass
class Member:
    """One member of a sample. `data` is None when it was not read (header-only listing, above the limit)."""

    name: str  # valid UTF-8 (see safe_name)
    raw_name: str  # as tarfile decoded it (surrogateescape): writing it back gives the original bytes
    ext: str  # extension as in the name (original case), e.g. "jpg", "cls.txt"
    size: int
    offset: int  # byte offset of the member's data in the tar
    data: bytes | None = None


@dataclass
class Sample:
    """One sample: consecutive members with one key, in tar order."""

    key: str  # valid UTF-8 key (non-UTF-8 bytes as \\xNN): the scan's row key
    raw_key: str  # as in the tar
    occurrence: int = 1  # 2, 3, … for a key seen again in this shard
    members: list[Member] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def image_member(self, max_member_bytes: int = DEFAULT_MAX_MEMBER) -> Member | None:
        return choose_image(self.members, max_member_bytes)

    def image_sha256(self) -> str | None:
        """The hex sha256 of the image member's bytes (what the scan records as `sha256`); None when there is
        no image member or its bytes were not read."""
        image = self.image_member()
        return None if image is None or image.data is None else hashlib.sha256(image.data).hexdigest()

    def json_member(self) -> Member | None:
        return next((m for m in self.members if last_suffix(m.ext) in JSON_EXTENSIONS), None)


def choose_image(members: list[Member], max_member_bytes: int = DEFAULT_MAX_MEMBER) -> Member | None:
    """THE image-member rule: first present extension in IMAGE_EXTENSIONS order among members not above
    `max_member_bytes` (a member above the limit is never read, so never the image)."""
    eligible = [m for m in members if is_image_extension(m.ext) and m.size <= max_member_bytes]
    return min(eligible, key=_image_rank, default=None)  # the first of equal rank: tar order


def _image_rank(member: Member) -> int:
    return IMAGE_EXTENSIONS.index(last_suffix(member.ext))


def parse_meta(member: Member | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object, a note when it is unusable) of a sample's JSON member."""
    if member is None or member.data is None:
        return None, None
    try:
        value = json.loads(member.data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{member.name!r} is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"{member.name!r} holds a JSON {type(value).__name__}, not an object; ignored"
    return value, None


# What a listing reads: all member data, none, or only some (by extension and size).
WantData = Callable[[str, int], bool]


def want_none(ext: str, size: int) -> bool:
    return False


def want_json(ext: str, size: int) -> bool:
    return last_suffix(ext) in JSON_EXTENSIONS and size <= DEFAULT_MAX_MEMBER


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class End:
    """The last item of `iter_tar`: `error` says why the shard could not be read to its end (None: it was)."""

    error: str | None


class _Grouper:
    """Members in tar order -> Samples by the rules in the module doc."""

    def __init__(self, max_member_bytes: int) -> None:
        self.max_member_bytes = max_member_bytes
        self.current: Sample | None = None
        self._seen: dict[str, int] = {}

    def add(self, key: str, member: Member) -> Sample | None:
        """Add a member with its raw `key` (`split_key`); returns the sample it completed (if any)."""
        done = None
        cur = self.current
        if cur is None or cur.raw_key != key or any(m.ext == member.ext for m in cur.members):
            done = self.flush()
            n = self._seen.get(key, 0) + 1
            self._seen[key] = n
            cur = self.current = Sample(key=safe_name(key), raw_key=key, occurrence=n)
            if n > 1:
                cur.notes.append(f"key {cur.key!r} occurrence {n} in this shard, kept as its own sample")
        if member.size > self.max_member_bytes:
            cur.notes.append(
                f"member {member.name!r} is {member.size} bytes, above the "
                f"{self.max_member_bytes}-byte limit; not read"
            )
        cur.members.append(member)
        return done

    def mark_incomplete(self, key: str, name: str) -> None:
        """The shard ended inside member `name`: the pending sample (if it is `key`'s) lacks that member."""
        if self.current is not None and key == self.current.raw_key:
            self.current.notes.append(
                f"member {name!r} truncated (shard ended inside it); sample may be incomplete"
            )

    def flush(self) -> Sample | None:
        s, self.current = self.current, None
        if s is None:
            return None
        images = [m for m in s.members if is_image_extension(m.ext)]
        chosen = choose_image(s.members, self.max_member_bytes)
        if chosen is not None:
            others = [m.name for m in sorted(images, key=_image_rank) if m is not chosen]
            if others:
                s.notes.append(f"{len(images)} image members; used {chosen.name!r}, ignored {others!r}")
        elif not images:
            s.notes.append(f"no image member (members: {[m.name for m in s.members]!r})")
            unread = [m.name for m in s.members if last_suffix(m.ext) in UNREAD_IMAGE_EXTENSIONS]
            if unread:
                s.notes.append(f"{unread!r}: an image type genscan does not read (docs/reliability.md)")
        return s


def iter_tar(
    fileobj: IO[bytes], *, want: WantData, max_member_bytes: int = DEFAULT_MAX_MEMBER
) -> Iterator[Sample | Skipped | End]:
    """Samples and skipped members of the tar in `fileobj`, in tar order, then ONE `End` saying whether the
    archive was read to its end (not a tar, ended early, no end-of-archive marker: `End.error`). Never raises
    for bad data; I/O errors of the underlying stream propagate (callers retry them)."""
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r:", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except tarfile.ReadError as exc:
        yield End(f"not a tar archive: {exc}" if str(exc) else "not a tar archive")
        return
    except (EOFError, ValueError, UnicodeError) as exc:
        yield End(f"not a tar archive: {type(exc).__name__}: {exc}")
        return
    grouper = _Grouper(max_member_bytes)
    n_members = 0
    last = "the start"
    error: str | None = None
    with tf:
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as exc:
                error = f"tar ended early after {n_members} members (last {last}): {exc}"
                break
            except (EOFError, ValueError, UnicodeError) as exc:
                error = (
                    f"tar ended early after {n_members} members (last {last}): {type(exc).__name__}: {exc}"
                )
                break
            if info is None:
                break
            n_members += 1
            name = safe_name(info.name)
            if info.isdir():
                yield Skipped(name, "directory")
                continue
            reason = junk_reason(name)
            if reason is None and not info.isreg():
                reason = f"not a regular file (tar type {info.type!r})"
            split = split_key(info.name) if reason is None else None
            if reason is None and split is None:
                reason = "member name has no extension (not part of a WebDataset sample)"
            if reason is not None:
                yield Skipped(name, reason)
                continue
            key, ext = split  # type: ignore[misc]
            member = Member(name=name, raw_name=info.name, ext=ext, size=info.size, offset=info.offset_data)
            if want(ext, info.size):
                extracted = tf.extractfile(info)
                try:
                    data = extracted.read() if extracted is not None else b""
                except tarfile.TarError as exc:
                    data, detail = b"", str(exc)
                else:
                    detail = ""
                if detail or len(data) != info.size:
                    grouper.mark_incomplete(key, name)
                    error = (
                        f"tar truncated inside member {name!r} "
                        f"({detail or f'{len(data)} of {info.size} bytes'}) "
                        f"after {n_members - 1} complete members"
                    )
                    break
                member.data = data
            done = grouper.add(key, member)
            if done is not None:
                yield done
            last = repr(name)
        if error is None:
            # check that an end-of-archive block really follows the last member (POSIX writes two zero
            # blocks; one is accepted); a header-only listing learns here that the last member was cut too
            fileobj.seek(tf.offset)
            tail = fileobj.read(tarfile.BLOCKSIZE)
            if not tail:
                error = (
                    f"tar has no end-of-archive marker after {n_members} members (last {last}): truncated?"
                )
            elif tail.count(0) != len(tail) or len(tail) < tarfile.BLOCKSIZE:
                error = f"unreadable tar header after {n_members} members (last {last}): truncated or corrupt"
    done = grouper.flush()
    if done is not None:
        yield done
    yield End(error)


# ------------------------------------------------------------------------------------------- writing
TAR_OWNER, TAR_MODE, TAR_MTIME = "bigdata", 0o444, 0  # webdataset.TarWriter's owner and mode, a fixed mtime


def tar_writer(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A tar stream written to `fileobj` (not closed with it) in the layout `write_sample` fills: PAX format
    (a non-UTF-8 or long member name is kept exactly), plain ustar headers for short ASCII names."""
    return tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT)


def write_sample(tar: tarfile.TarFile, key: str, members: dict[str, bytes]) -> None:
    """Add one sample to `tar`: a member `key.ext` per entry, sorted by extension, written the way
    webdataset's TarWriter writes them at a fixed mtime, so the same samples always give the same bytes.
    tarfile itself, not TarWriter: importing webdataset imports torch (~2 CPU-s and ~600 MB in a process
    that runs no model). `key` may hold surrogate escapes (a non-UTF-8 name read by tarfile): written back
    as its bytes."""
    for ext in sorted(members):
        data = members[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), TAR_MTIME, TAR_MODE
        info.uname = info.gname = TAR_OWNER
        tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------- I/O
class ShardReadError(RuntimeError):
    """A shard that could not be read to its end (strict consumers: the filter's copy)."""


class _TransientReadError(Exception):
    """An I/O failure that is worth retrying the whole shard for."""


def is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    text = str(exc)
    return "NoSuchKey" in text or "NoSuchBucket" in text or "Not Found" in text


def _is_permanent(exc: BaseException) -> bool:
    return is_missing(exc) or isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError)


def _retry_or_raise(exc: Exception, what: str) -> NoReturn:
    """Raise `exc` itself when it is permanent (or already transient), else as a _TransientReadError."""
    if isinstance(exc, _TransientReadError) or _is_permanent(exc):
        raise exc
    raise _TransientReadError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


_EMPTY = "empty shard (0 bytes)"


def _open(shard_url: str, *, max_in_memory_bytes: int, block_size: int) -> IO[bytes] | None:
    """The shard open for reading; None for an empty object (`_EMPTY`). ONE GET into memory when it is at most
    `max_in_memory_bytes` (0: never), else fsspec's read-ahead block cache, with the bounded S3
    timeouts/retries above. Raises _TransientReadError for I/O failures worth a retry and the original
    exception for permanent ones (missing object, permissions, a directory)."""
    fs, path = storage.tuned_filesystem(shard_url, S3_STORAGE_OPTIONS)
    try:
        info = fs.info(path)
    except Exception as exc:
        _retry_or_raise(exc, "stat")
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{shard_url} is a directory")
    size = info.get("size")
    n_bytes = int(size) if size is not None else None
    if n_bytes == 0:
        return None
    try:
        if n_bytes is not None and n_bytes <= max_in_memory_bytes:
            data = fs.cat_file(path)
            if len(data) != n_bytes:
                raise _TransientReadError(f"short read: {len(data)} of {n_bytes} bytes")
            return io.BytesIO(data)
        return fs.open(path, "rb", block_size=block_size, cache_type="readahead")
    except Exception as exc:
        _retry_or_raise(exc, "read")


S = TypeVar("S")


@dataclass
class Listing(Generic[S]):
    """What a read of a shard found, in tar order (`Sample`s; `RawSample`s in the scan's `ShardContents`).
    `error` is set when the shard could not be read to its end."""

    samples: list[S] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason), not samples
    error: str | None = None
    attempts: int = 0  # whole-shard read attempts made


def _list_once(
    shard_url: str,
    want: WantData,
    *,
    max_member_bytes: int,
    max_in_memory_bytes: int,
    block_size: int,
    out: Listing[Sample],
) -> str | None:
    fileobj = _open(shard_url, max_in_memory_bytes=max_in_memory_bytes, block_size=block_size)
    if fileobj is None:
        return _EMPTY
    try:
        with fileobj as f:
            for item in iter_tar(f, want=want, max_member_bytes=max_member_bytes):
                if isinstance(item, Sample):
                    out.samples.append(item)
                elif isinstance(item, Skipped):
                    out.skipped.append((item.name, item.reason))
                else:
                    return item.error
    except Exception as exc:
        _retry_or_raise(exc, "read")
    return None


def list_shard(
    shard_url: str,
    *,
    want: WantData | None = None,
    max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_member_bytes: int = DEFAULT_MAX_MEMBER,
    attempts: int = 3,
    backoff_s: float = 0.5,
    deadline_s: float = 300.0,
) -> Listing[Sample]:
    """Every sample of the shard at `shard_url` in tar order, reading the member data `want` asks for
    (default: every member up to `max_member_bytes`). Never raises for bad data or storage failures: `error`
    says why the shard could not be read to its end, and the samples read before that are kept. Transient
    failures are retried (whole shard, at most `attempts` times, backoff `backoff_s * 2**i`, no new attempt
    after `deadline_s`); if every attempt fails the longest partial read is kept. [ours]"""
    want = want or (lambda ext, size: size <= max_member_bytes)
    if want is want_none or want is want_json:
        max_in_memory_bytes = 0  # headers or JSON members alone: streamed, never the whole shard fetched
    start = time.monotonic()
    best: Listing[Sample] | None = None
    error: str | None = None
    n_attempts = 0
    for attempt in range(attempts):
        n_attempts = attempt + 1
        listing: Listing[Sample] = Listing()
        try:
            error = _list_once(
                shard_url,
                want,
                max_member_bytes=max_member_bytes,
                max_in_memory_bytes=max_in_memory_bytes,
                block_size=block_size,
                out=listing,
            )
            best = listing
            break
        except _TransientReadError as exc:
            error = f"read failed after {attempt + 1} attempt(s): {exc}"
            if best is None or len(listing.samples) > len(best.samples):
                best = listing
        except Exception as exc:  # permanent: missing object, permission, a directory, a bad URL
            error = (
                f"shard not found: {shard_url}"
                if is_missing(exc)
                else f"cannot read shard: {type(exc).__name__}: {exc}"
            )
            best = None
            break
        pause = backoff_s * 2**attempt
        if attempt + 1 >= attempts or time.monotonic() - start + pause > deadline_s:
            break
        log.warning("shard_read_retry", shard_url=shard_url, attempt=attempt + 1, error=error, pause_s=pause)
        time.sleep(pause)
    result: Listing[Sample] = best or Listing()
    result.error, result.attempts = error, n_attempts
    if result.error:
        log.warning(
            "shard_read_error",
            shard_url=shard_url,
            error=result.error,
            salvaged=len(result.samples),
            attempts=result.attempts,
        )
    return result


# ------------------------------------------------------------------------------------------- consumer: scan
@dataclass
class RawSample:
    """One sample for the scan: its key, the chosen image member and the parsed JSON member."""

    key: str
    image_name: str | None
    image: bytes | None
    meta: dict[str, Any] | None
    note: str | None = None


ShardContents = Listing[RawSample]  # what `read_shard` could read


def _meta_and_note(sample: Sample) -> tuple[dict[str, Any] | None, str | None]:
    """The sample's parsed JSON meta, and its notes with why that meta is unusable (if it is)."""
    meta, why = parse_meta(sample.json_member())
    return meta, "; ".join([*sample.notes, *([why] if why else [])]) or None


def read_shard(shard_url: str, *, max_member_bytes: int = DEFAULT_MAX_MEMBER) -> ShardContents:
    """The scan's view: every sample with its image bytes and JSON meta, in tar order (see `list_shard`)."""
    listing = list_shard(shard_url, max_member_bytes=max_member_bytes)
    samples = []
    for s in listing.samples:
        image = s.image_member(max_member_bytes)
        samples.append(RawSample(s.key, image and image.name, image and image.data, *_meta_and_note(s)))
    return ShardContents(**{**vars(listing), "samples": samples})


# ------------------------------------------------------------------------------------------- consumer: filter
def index_shard(shard_url: str) -> Listing[Sample]:
    """The samples of a shard (and the members that belong to no sample) from its tar headers alone: no member
    data is read. Raises ShardReadError when the shard cannot be read to its end (the filter must not plan a
    copy of a broken shard)."""
    listing = list_shard(shard_url, want=want_none)
    if listing.error:
        raise ShardReadError(f"{shard_url}: {listing.error}")
    return listing


def iter_samples(shard_url: str) -> Iterator[Sample]:
    """Samples with EVERY member's bytes (sidecars and members above the image limit too), in tar order,
    streamed (one pass, the read-ahead block cache), for a byte-exact copy. Raises ShardReadError when the
    shard cannot be read to its end, after yielding the samples before the failure."""
    try:
        fileobj = _open(shard_url, max_in_memory_bytes=0, block_size=DEFAULT_BLOCK_SIZE)
    except Exception as exc:
        raise ShardReadError(f"{shard_url}: cannot read shard: {type(exc).__name__}: {exc}") from exc
    if fileobj is None:
        raise ShardReadError(f"{shard_url}: {_EMPTY}")
    with fileobj as f:
        for item in iter_tar(f, want=lambda ext, size: True, max_member_bytes=DEFAULT_MAX_MEMBER):
            if isinstance(item, Sample):
                yield item
            elif isinstance(item, End) and item.error:
                raise ShardReadError(f"{shard_url}: {item.error}")


# ------------------------------------------------------------------------------------------- consumer: labels
@dataclass(frozen=True)
class LabelledSample:
    """A sample's image member (by byte range, not read) and its parsed JSON meta, for labelled sources."""

    key: str
    occurrence: int
    image: Member | None
    meta: dict[str, Any] | None
    note: str | None


def labelled_samples(shard_url: str) -> list[LabelledSample]:
    """Every sample of a shard with its image member's byte range and its own JSON meta (only JSON members are
    read). Raises FileNotFoundError for a missing shard and ShardReadError for one that cannot be read to its
    end."""
    listing = list_shard(shard_url, want=want_json)
    if listing.error:
        if listing.error.startswith("shard not found"):
            raise FileNotFoundError(listing.error)
        raise ShardReadError(f"{shard_url}: {listing.error}")
    return [
        LabelledSample(s.key, s.occurrence, s.image_member(), *_meta_and_note(s)) for s in listing.samples
    ]
