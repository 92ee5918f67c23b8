"""Streaming feed of labelled images for training, calibration and evaluation (no Ray here).

The driver LISTS the labelled source (`pipeline.data.sources.load_labelled`: UnivFD / GenImage folders or
WebDataset shards, local or s3://) without decoding, keeps the training generators, makes the seeded
stratified train/validation split and records it (`TrainPlan.split`). Images are read, decoded and augmented
by the stage functions below, which work on plain `dict[str, np.ndarray]` batches:

- `listing_chunk(table, chunk_ids, ...)`: chunk ids -> listing rows (an epoch's seeded permutation applied);
- `DecodeStage(spec)(rows)`: read + decode + (UnivFD augmentation | centre crop | robustness perturbation) ->
  `{"image": uint8 (N, S, S, 3), "label", "cls", "row", "ok", "error"}`. An unreadable image is a row with
  `ok=False` (zero pixels) and its error, never an exception: the consumer counts and reports it
  (`SkipCounter`).

`pipeline.engine.train` runs these stages as CPU Ray Data tasks feeding `ray.train.get_dataset_shard(...)`;
`iter_local` runs the very same stages in-process (a small thread pool) for `--engine local`, calibration and
evaluation. Per-sample augmentation randomness is seeded from (run seed, epoch, sample key), so a run's images
do not depend on which task or worker decoded them. Normalisation happens on the training device
(`to_device`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.logs import get_logger
from pipeline.models.constants import REAL_LABEL

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

LISTING_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # LabelledImage.name: unique per source, the seed of per-sample randomness
        ("uri", pa.string()),
        ("member", pa.string()),  # WebDataset: image member in the tar (null for files)
        ("offset", pa.int64()),  # WebDataset: byte range of the member (-1 for files)
        ("size", pa.int64()),
        ("source", pa.string()),  # univfd | genimage | wds
        ("generator", pa.string()),  # LabelledImage.generator (folder / JSON value)
        ("label", pa.int64()),  # 0 real, 1 fake
        ("cls", pa.int64()),  # attribution class index into ["real", *generators] (0 for reals and unknowns)
    ]
)


def listing_table(items: list[Any], classes: list[str] | None = None) -> pa.Table:
    """`pipeline.data.sources.LabelledImage`s -> the listing table (no image read). `classes` =
    ["real", *generators]: a fake's `cls` is its generator's index there (0 when absent)."""
    index = {c: i for i, c in enumerate(classes or [])}
    cols: dict[str, list[Any]] = {n: [] for n in LISTING_SCHEMA.names}
    for it in items:
        cols["key"].append(it.name)
        cols["uri"].append(it.uri)
        cols["member"].append(it.member)
        cols["offset"].append(-1 if it.offset is None else int(it.offset))
        cols["size"].append(-1 if it.size is None else int(it.size))
        cols["source"].append(it.source)
        cols["generator"].append(it.generator)
        cols["label"].append(int(it.label))
        cols["cls"].append(index.get(it.attribution, 0) if it.label == 1 else 0)
    return pa.table(cols, schema=LISTING_SCHEMA)


def _row_image(row: dict[str, Any]) -> Any:
    from pipeline.data.sources import LabelledImage

    member = row["member"]
    return LabelledImage(
        uri=str(row["uri"]),
        label=int(row["label"]),
        generator=str(row["generator"]),
        source=str(row["source"]),
        member=None if member is None or member == "" else str(member),
        offset=None if int(row["offset"]) < 0 else int(row["offset"]),
        size=None if int(row["size"]) < 0 else int(row["size"]),
        key=str(row["key"])[len(str(row["uri"])) + 1 :] if member else None,  # name = uri + "#" + key
    )


# ---- the train/validation plan -----------------------------------------------------------------------------
@dataclass
class TrainPlan:
    """What the driver decides before training: generators, the listing of each split, counts, split
    record."""

    generators: list[str]
    train: pa.Table
    val: pa.Table
    counts: dict[str, dict[str, int]]
    split: dict[str, Any]

    @property
    def n_train(self) -> int:
        return self.train.num_rows

    @property
    def n_val(self) -> int:
        return self.val.num_rows

    def meta(self) -> dict[str, Any]:
        """The JSON-able part the workers and the checkpoint need (the tables travel separately)."""
        return {
            "generators": self.generators,
            "counts": self.counts,
            "split": self.split,
            "n_train": self.n_train,
            "n_val": self.n_val,
        }


def _digest(keys: Iterable[str]) -> str:
    return hashlib.sha256("".join(f"{k}\n" for k in keys).encode()).hexdigest()


def make_plan(cfg: Any) -> TrainPlan:
    """List `cfg.data` (no decoding), keep the training generators' fakes and the reals that go with them, and
    split them (seeded, stratified by real / generator). Bad sources raise the same clear errors as before
    (FileNotFoundError for missing or empty sources, ValueError / ConfigError for missing classes)."""
    from pipeline.data.sources import load_labelled
    from pipeline.train.data import check_classes, stratified_split

    items = load_labelled(cfg.data)
    fake_gens = check_classes(cfg, [(it.label, it.generator) for it in items])
    gens = fake_gens if cfg.train_generators is None else list(cfg.train_generators)
    groups_with_reals = {it.generator for it in items if it.label == 0 and it.source != "wds"}

    def keep(it: Any) -> bool:
        if it.label == 1:
            return it.generator in gens
        # UnivFD folders: a generator folder's own reals; reals without a folder (WebDataset): all of them
        if it.source != "wds" and groups_with_reals & set(gens):
            return it.generator in gens
        return True

    kept = [it for it in items if keep(it)]
    strata = [it.generator if it.label == 1 else REAL_LABEL for it in kept]
    tr, va = stratified_split(strata, cfg.val_fraction, cfg.seed)
    table = listing_table(kept, [REAL_LABEL, *gens])
    train, val = table.take(pa.array(tr)), table.take(pa.array(va))
    counts = {"train": dict(Counter(strata[i] for i in tr)), "val": dict(Counter(strata[i] for i in va))}
    split = {
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "rule": "stratified by real / generator; pipeline.train.data.stratified_split over the "
        "sorted listing",
        "n_train": int(tr.size),
        "n_val": int(va.size),
        "train_keys_sha256": _digest(train.column("key").to_pylist()),
        "val_keys_sha256": _digest(val.column("key").to_pylist()),
    }
    log.info("train_plan", data=cfg.data, generators=gens, train=counts["train"], val=counts["val"])
    return TrainPlan(generators=gens, train=train, val=val, counts=counts, split=split)


# ---- stage 1: listing rows of a chunk ----------------------------------------------------------------------
@lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch `epoch` (a seeded permutation of range(n)); epoch < 0 = listing order."""
    if epoch < 0:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed % 2**32, epoch]).permutation(n).astype(np.int64)


def n_chunks(n_rows: int, chunk_rows: int) -> int:
    return (n_rows + chunk_rows - 1) // chunk_rows


def listing_chunk(
    table: pa.Table, chunk_ids: np.ndarray, *, chunk_rows: int, seed: int, epoch: int
) -> dict[str, np.ndarray]:
    """Listing rows of the given chunks of epoch `epoch`'s order (`epoch=-1`: listing order), plus "row" (the
    row's index in the listing) and "epoch"."""
    order = epoch_order(table.num_rows, seed, epoch)
    pos = np.concatenate(
        [order[int(c) * chunk_rows : (int(c) + 1) * chunk_rows] for c in np.asarray(chunk_ids).ravel()]
        or [np.zeros(0, np.int64)]
    )
    rows = table.take(pa.array(pos))
    out = {name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names}
    out["row"] = pos
    out["epoch"] = np.full(pos.size, epoch, dtype=np.int64)
    return out


# ---- stage 2: read + decode + augment ----------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeSpec:
    """How a stage turns listing rows into uint8 model-input images."""

    det_cfg: Any  # pipeline.models.DetectorConfig (image_size, preprocess)
    augment: dict[str, Any] | None = None  # AugmentConfig fields (crop_size = the detector's input size)
    crop_grid: str = "patch"  # "patch": crop offsets on the backbone's patch grid [ours]; "pixel": free
    patch_size: int = 16
    seed: int = 0
    perturb: tuple[str, float] | None = None  # evaluation robustness transform before preprocessing


def train_spec(cfg: Any, det_cfg: Any) -> DecodeSpec:
    """The training stage of a TrainConfig: UnivFD augmentation with its parameters when `cfg.augment`, crop
    offsets on the grid of the backbone's patches."""
    from pipeline.train.data import patch_size

    aug = None
    if cfg.augment:
        aug = {
            "crop_size": det_cfg.image_size,
            "resize": cfg.augment_resize,
            "blur_prob": cfg.augment_blur_prob,
            "jpeg_prob": cfg.augment_jpeg_prob,
        }
    return DecodeSpec(
        det_cfg=det_cfg, augment=aug, crop_grid=cfg.crop_grid, patch_size=patch_size(det_cfg), seed=cfg.seed
    )


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """Per-sample randomness: the same (seed, epoch, key) always gives the same augmentation."""
    k = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed % 2**32, max(epoch, 0), k])


def augment_image(img: Any, aug: Any, rng: np.random.Generator, *, crop_grid: str, patch: int) -> Any:
    """UnivFD augmentation of one PIL image; with crop_grid="patch" [ours] the random crop offset is a
    multiple of the backbone's patch size, so the ViT patch grid keeps its alignment with the pixel grid and
    pixel-periodic generator traces (up-sampling checkerboards, 8x8 codebook blocks) keep their phase relative
    to the tokens. "pixel" = the published recipe's free crop position."""
    params = aug.sample(rng)
    if crop_grid == "patch":
        c, resize = aug.config.crop_size, aug.config.resize
        w, h = img.size
        if resize is not None:
            scale = resize / min(w, h)
            w, h = round(w * scale), round(h * scale)
        if min(w, h) >= c:
            fx, fy = w - c, h - c
            kx = int(rng.integers(0, fx // patch + 1)) * patch
            ky = int(rng.integers(0, fy // patch + 1)) * patch
            # AugmentConfig maps u in [0,1) to int(u * (free + 1)); pick u at the middle of cell kx
            params = dataclasses.replace(params, crop_u=(kx + 0.5) / (fx + 1), crop_v=(ky + 0.5) / (fy + 1))
    return aug.apply(img, params)


@dataclass(eq=False)
class DecodeStage:
    """Callable stage over listing-row batches (see module docstring). Picklable; builds its helpers
    lazily."""

    spec: DecodeSpec

    @cached_property
    def _perturb(self) -> Any:
        from pipeline.data.augment import perturbation

        return perturbation(*self.spec.perturb)  # type: ignore[misc]

    @cached_property
    def _aug(self) -> Any:
        from pipeline.data.augment import UnivFDAugment

        return UnivFDAugment(**self.spec.augment)  # type: ignore[arg-type]

    def _one(self, row: dict[str, Any]) -> np.ndarray:
        from pipeline.models.preprocess import prepare_image

        spec = self.spec
        img = _row_image(row).load()
        if spec.perturb is not None:
            img = self._perturb(img)
        if spec.augment is None:
            return prepare_image(img, spec.det_cfg)
        rng = sample_rng(spec.seed, int(row["epoch"]), str(row["key"]))
        out = np.asarray(augment_image(img, self._aug, rng, crop_grid=spec.crop_grid, patch=spec.patch_size))
        return out.astype(np.uint8, copy=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.spec.det_cfg.image_size
        n = len(batch["key"])
        images = np.zeros((n, s, s, 3), dtype=np.uint8)
        ok = np.ones(n, dtype=bool)
        errors = np.full(n, "", dtype=object)
        for i in range(n):
            row = {k: v[i] for k, v in batch.items()}
            try:
                images[i] = self._one(row)
            except Exception as exc:  # noqa: BLE001 - an unreadable image is a counted skip, never a crash
                ok[i] = False
                errors[i] = f"{row['key']}: {type(exc).__name__}: {exc}"[:300]
        return {
            "image": images,
            "label": np.asarray(batch["label"], dtype=np.int64),
            "cls": np.asarray(batch["cls"], dtype=np.int64),
            "row": np.asarray(batch["row"], dtype=np.int64),
            "ok": ok,
            "error": errors.astype(str),
        }


# ---- local executor ----------------------------------------------------------------------------------------
def iter_local(
    table: pa.Table,
    stage: DecodeStage,
    *,
    batch_size: int,
    seed: int = 0,
    epoch: int = -1,
) -> Iterator[dict[str, np.ndarray]]:
    """The same two stages in-process: chunks of `batch_size` rows of epoch `epoch`'s order, decoded by a
    small thread pool (PIL and zlib release the GIL), in order."""
    ids = range(n_chunks(table.num_rows, batch_size))

    def work(c: int) -> dict[str, np.ndarray]:
        return stage(listing_chunk(table, np.array([c]), chunk_rows=batch_size, seed=seed, epoch=epoch))

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="feed") as pool:
        # bounded read-ahead of 3 chunks: memory stays a few batches, whatever the listing size
        futures = deque(pool.submit(work, c) for c in ids[:3])
        for c in ids[3:]:
            out = futures.popleft().result()
            futures.append(pool.submit(work, c))
            yield out
        while futures:
            yield futures.popleft().result()


# ---- consumer side -----------------------------------------------------------------------------------------
@dataclass
class SkipCounter:
    """Counts rows a stage could not read (ok=False) and keeps a few examples for the summary."""

    n: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        ok = np.asarray(batch["ok"], dtype=bool)
        bad = np.flatnonzero(~ok)
        if bad.size:
            self.n += int(bad.size)
            self.examples += [str(batch["error"][i]) for i in bad[: 5 - len(self.examples)]]
            log.warning("unreadable_images_skipped", n=int(bad.size), example=str(batch["error"][bad[0]]))
        return ok

    def record(self) -> dict[str, Any]:
        return {"n": self.n, "examples": self.examples}


def to_device(images: np.ndarray, det_cfg: Any, device: torch.device) -> torch.Tensor:
    """uint8 NHWC batch -> CLIP-normalised float NCHW on `device`; on CUDA through pinned host memory with a
    non-blocking copy, the normalisation done on the device."""
    import torch  # on the training side only: the read tasks use this module without torch

    from pipeline.models.preprocess import to_model_input

    x = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        x = x.pin_memory()
    return to_model_input(x, det_cfg, device)


def predict_table(
    predictor: Any,
    table: pa.Table,
    *,
    batch_size: int,
    skips: SkipCounter,
    perturb: tuple[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Stream a listing through the decode stage (optionally perturbed) into `predictor.predict`, one batch in
    memory at a time -> {"row", "p_fake", "generator_scores"} for the readable rows (listing order);
    unreadable rows are counted in `skips` and left out."""
    stage = DecodeStage(DecodeSpec(det_cfg=predictor.cfg, perturb=perturb))
    parts: dict[str, list[np.ndarray]] = {"row": [], "p_fake": [], "generator_scores": []}
    for b in iter_local(table, stage, batch_size=batch_size):
        if (ok := skips.add(b)).any():
            res = predictor.predict(np.ascontiguousarray(b["image"][ok]))
            parts["row"].append(b["row"][ok])
            parts["p_fake"].append(np.asarray(res["p_fake"], np.float64))
            parts["generator_scores"].append(np.asarray(res["generator_scores"], np.float64))
    if not parts["row"]:
        return {"row": np.zeros(0, np.int64), "p_fake": np.zeros(0), "generator_scores": np.zeros((0, 1))}
    return {k: np.concatenate(v) for k, v in parts.items()}
