"""Labelled image sources for training and evaluation, local or on object storage (fsspec: local, s3://, …).

Layouts (METHODS.md "Data layouts users have"):

* ``univfd``   UnivFD / CNNDetection [code]: ``<root>/<generator>/[<class>/]0_real|1_fake/*.<image>`` (image
  types and junk rules: ``pipeline.shards``).
               ``<root>`` may also be one generator folder itself (``<root>/0_real``, generator = its name).
* ``genimage`` GenImage [code]: ``<root>/<generator>/[<inner>/]train|val/ai|nature/*``.
* ``wds``      WebDataset shards (``*.tar`` under a folder/prefix, one ``.tar``, or a brace pattern) whose
               ``.json`` member carries ``{"label": 0|1, "generator": str}`` (the demo generator writes
               these).

Labels come only from the exact folder names ``0_real``/``1_fake`` and ``nature``/``ai`` (and the JSON
``label``), never from substrings. Listing reads no image: for folders it is one recursive listing; for shards
it reads the tar headers and the small JSON members and records each image member's byte range, so
:meth:`LabelledImage.read_bytes` is one ranged read.

``generator`` [ours]: for folder layouts it is the top-level generator folder (the evaluation *subset*; reals
in ``<root>/progan/0_real`` have generator ``progan``); for shards it is the JSON value (``"real"`` for
reals). :attr:`LabelledImage.attribution` is the attribution class: ``"real"`` for label 0, else
``generator``.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from pipeline import shards as shard_layer
from pipeline import storage
from pipeline.logs import get_logger
from pipeline.settings import ConfigError
from pipeline.shards import ShardReadError, labelled_samples
from pipeline.storage import filesystem, list_names, list_shards, names_shards, with_protocol

log = get_logger("pipeline.data.sources")

UNIVFD_CLASSES = {"0_real": 0, "1_fake": 1}
GENIMAGE_CLASSES = {"nature": 0, "ai": 1}
GENIMAGE_SPLITS = ("train", "val")


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image; the pixels are read only when asked for."""

    uri: str  # the image file, or the shard for `wds` (see `member`)
    label: int  # 0 real, 1 generated
    generator: str  # generator folder / JSON generator (see module docstring)
    source: str  # layout: "univfd" | "genimage" | "wds"
    split: str | None = None  # GenImage: "train" or "val"
    category: str | None = None  # CNNDetection's optional <class> folder (e.g. "airplane")
    member: str | None = None  # wds: image member name inside the tar
    offset: int | None = None  # wds: byte offset of the member's data in the tar
    size: int | None = None  # wds: member size in bytes
    key: str | None = None  # wds sample key
    occurrence: int = 1  # wds: 2, 3, … for a key repeated later in its shard (its own sample)

    @property
    def attribution(self) -> str:
        return "real" if self.label == 0 else self.generator

    @property
    def group(self) -> str | None:
        """The generator folder an evaluation scores the image in (None for shards: no folder)."""
        return None if self.source == "wds" else self.generator

    @property
    def name(self) -> str:
        """A stable, unique-per-source identifier (file URI, or shard URI + '#' + key)."""
        if self.member is None:
            return self.uri
        return f"{self.uri}#{self.key}" + (f"#{self.occurrence}" if self.occurrence > 1 else "")

    def read_bytes(self) -> bytes:
        if self.member is None:
            return storage.read_bytes(self.uri)
        if self.offset is None or self.size is None:
            raise ValueError(f"{self.name}: a tar member needs offset and size")
        fs, path = filesystem(self.uri)
        return fs.cat_file(path, start=self.offset, end=self.offset + self.size)

    def load(self) -> Image.Image:
        """The decoded image, opened and oriented by the shard layer's rule (`pipeline.shards.open_image` /
        `upright`: the scan's formats; an unreadable EXIF block is no orientation), RGB, fully loaded (the
        file is closed)."""
        with shard_layer.open_image(self.read_bytes()) as im:
            shown, _ = shard_layer.upright(im)
            return shown.convert("RGB")


# ------------------------------------------------------------------------------------------------------------
def load_labelled(uri: str) -> list[LabelledImage]:
    """List the labelled images under `uri` (sorted, deterministic). The layout is detected: shards → wds;
    else the folder names decide; a mix is an error. A shard sample without a valid JSON label is an error
    naming shard + key.

    Raises FileNotFoundError for a missing or empty root, ConfigError for an unrecognised layout.
    """
    if _looks_like_shards(uri):
        items = [it for shard in list_shards(uri) for it in _list_shard(shard)]
        source = "wds"
    else:
        files, root = _list_files(uri)
        source = _detect(files, uri)
        items = _load_univfd(files, root, uri) if source == "univfd" else _load_genimage(files, root, uri)
    if not items:
        raise FileNotFoundError(f"no labelled images under {uri} (layout {source})")
    items.sort(key=lambda it: (it.generator, it.label, it.name))
    counts = Counter((it.generator, it.label) for it in items)
    log.info(
        "labelled_source",
        uri=uri,
        layout=source,
        n=len(items),
        counts={f"{g}/{lab}": n for (g, lab), n in sorted(counts.items())},
    )
    return items


# ------------------------------------------------------------------------------------------------------------
def _is_image_file(rel: str) -> bool:
    """The shard layer's member rules applied to a file path: an image type under a WebDataset key (never a
    dot-file: `.hidden.png`, `.DS_Store`), and no macOS litter (`__MACOSX/`, `._*`)."""
    split = shard_layer.split_key(rel.rsplit("/", 1)[-1])
    is_image = split is not None and shard_layer.is_image_extension(split[1])
    return is_image and shard_layer.junk_reason(rel) is None


def _list_files(uri: str) -> tuple[list[tuple[str, ...]], str]:
    """Relative path parts of every image file under uri (hidden files / __MACOSX skipped), and the root
    path. The root is a folder (`_looks_like_shards` looked first)."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    rels = []
    for p in fs.find(root):
        rel = posixpath.relpath(p, root) if not p.startswith(root + "/") else p[len(root) + 1 :]
        if _is_image_file(rel):
            rels.append(tuple(rel.split("/")))
    if not rels:
        types = ", ".join(f".{ext}" for ext in shard_layer.IMAGE_EXTENSIONS)
        raise FileNotFoundError(f"no image files ({types}) under {uri}")
    return rels, with_protocol(fs, root)


def _univfd_label(parts: tuple[str, ...]) -> int | None:
    return UNIVFD_CLASSES.get(parts[-2]) if len(parts) >= 2 else None


def _genimage_label(parts: tuple[str, ...]) -> int | None:
    if len(parts) >= 3 and parts[-3] in GENIMAGE_SPLITS:
        return GENIMAGE_CLASSES.get(parts[-2])
    return None


def _detect(files: list[tuple[str, ...]], uri: str) -> Literal["univfd", "genimage"]:
    n_u = sum(_univfd_label(p) is not None for p in files)
    n_g = sum(_genimage_label(p) is not None for p in files)
    if n_u and n_g:
        raise ConfigError(
            f"layout: {uri} mixes UnivFD (0_real/1_fake: {n_u} files) and GenImage (train|val/ai|nature: "
            f"{n_g} files) folders; point it at a folder of one layout"
        )
    if n_u:
        return "univfd"
    if n_g:
        return "genimage"
    example = "/".join(files[0])
    raise ConfigError(
        f"layout: cannot recognise the folders under {uri} (e.g. {example!r}); expected "
        "<generator>/[<class>/]0_real|1_fake/*, <generator>/train|val/ai|nature/* or WebDataset .tar shards"
    )


def _load_univfd(files: list[tuple[str, ...]], root: str, uri: str) -> list[LabelledImage]:
    items, ignored = [], 0
    for parts in files:
        label = _univfd_label(parts)
        if label is None:
            ignored += 1
            continue
        if len(parts) == 2:  # root is itself a generator folder
            generator, category = posixpath.basename(root.rstrip("/")) or root, None
        else:
            generator = parts[0]
            category = "/".join(parts[1:-2]) or None
        items.append(
            LabelledImage(
                uri=f"{root}/{'/'.join(parts)}",
                label=label,
                generator=generator,
                source="univfd",
                category=category,
            )
        )
    if ignored:
        log.warning(
            "unlabelled_files_ignored", uri=uri, n=ignored, reason="not inside a 0_real/1_fake folder"
        )
    return items


def _load_genimage(files: list[tuple[str, ...]], root: str, uri: str) -> list[LabelledImage]:
    items, ignored = [], 0
    for parts in files:
        label = _genimage_label(parts)
        if label is None or len(parts) < 4:
            ignored += 1
            continue
        items.append(
            LabelledImage(
                uri=f"{root}/{'/'.join(parts)}",
                label=label,
                generator=parts[0],
                source="genimage",
                split=parts[-3],
            )
        )
    if ignored:
        log.warning("unlabelled_files_ignored", uri=uri, n=ignored, reason="not inside train|val/ai|nature")
    return items


# ------------------------------------------------------------------------------------------------------------
def _looks_like_shards(uri: str) -> bool:
    """Shards (a name or pattern, a folder of .tar without label folders) or else a folder; nothing else."""
    if names_shards(uri.rstrip("/")):
        return True
    fs, root = filesystem(uri)
    if not fs.exists(root):
        raise FileNotFoundError(f"data source not found: {uri}")
    if not fs.isdir(root):
        raise ConfigError(f"data source {uri} is a file, not a folder of generator folders or shards")
    names = list_names(uri)
    return any(n.endswith(".tar") for n in names) and not any(
        n in UNIVFD_CLASSES or n in GENIMAGE_SPLITS for n in names
    )


def _list_shard(shard: str) -> list[LabelledImage]:
    """The shard's labelled images by the shard layer's rules (`pipeline.shards`): the same samples, keys and
    image members as the scan; each sample's label comes from ITS OWN JSON member (a key repeated later in the
    shard is another sample, with its own label). Samples without an image member are not images; they are
    counted in the log."""
    try:
        samples = labelled_samples(shard)
    except ShardReadError as exc:
        raise ConfigError(f"{shard} is not a readable tar shard: {exc}") from exc
    items, problems, no_image = [], [], 0
    for s in samples:
        if s.image is None:
            no_image += 1
            continue
        label, generator, why = _parse_meta(s.meta, s.note)
        if why is not None:
            problems.append(f"{s.key}: {why}")
            continue
        items.append(
            LabelledImage(
                uri=shard,
                label=label,  # type: ignore[arg-type]
                generator=generator,  # type: ignore[arg-type]
                source="wds",
                member=s.image.name,
                offset=s.image.offset,
                size=s.image.size,
                key=s.key,
                occurrence=s.occurrence,
            )
        )
    if no_image:
        log.info("samples_without_image", shard=shard, n=no_image)
    if problems:
        raise ConfigError(
            f"{shard}: {len(problems)} sample(s) without a valid label, e.g. {problems[:3]}; "
            "give each sample a json label or leave it out of the data"
        )
    return items


def _parse_meta(meta: dict | None, note: str | None) -> tuple[int | None, str | None, str | None]:
    if meta is None:
        if note and "JSON" in note:
            return None, None, note
        return None, None, "no .json member"
    label = meta.get("label")
    if isinstance(label, bool) or label not in (0, 1):
        return None, None, f"label must be 0 or 1, got {label!r}"
    generator = meta.get("generator")
    if not isinstance(generator, str) or not generator:
        return None, None, f"generator must be a non-empty string, got {generator!r}"
    if label == 1 and generator == "real":
        return None, None, "label 1 with generator 'real'"
    return int(label), generator, None
