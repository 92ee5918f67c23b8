"""Paper-format evaluation of a detector checkpoint on labelled data (UnivFD protocol) [code + ours].

Per generator: AP, AUC, accuracy at the checkpoint's calibrated threshold and at p_fake 0.5, real/fake
accuracy, balanced accuracy, image counts, plus an unweighted `mean` row. Grouping [code: UnivFD]: in the
UnivFD folder layout each generator folder is scored against ITS OWN reals (`<gen>/0_real`); where reals carry
no folder (WebDataset shards), each generator is scored against all reals. Robustness sweeps re-run everything
with the test images JPEG-compressed, blurred or resized before preprocessing. Attribution [ours]: closed-set
accuracy over ["real", *known generators] and open-set AUROC (known-generator fakes vs held-out-generator
fakes, score = max generator probability) when held-out generators are present.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from pipeline import storage
from pipeline.data.sources import LabelledImage, load_labelled
from pipeline.eval.markdown import render_markdown
from pipeline.logs import get_logger
from pipeline.metrics import closed_set_accuracy, detection_metrics, mean_row, open_set_auroc
from pipeline.settings import StrictModel
from pipeline.train.calibrate import max_generator_prob
from pipeline.train.feed import SkipCounter, listing_table, predict_table

log = get_logger(__name__)


class EvalConfig(StrictModel):
    data: str = Field(description="labelled test data (UnivFD folder or WebDataset shards)")
    detector: str = Field(description="checkpoint directory (local or s3://)")
    json_out: str = Field(description="report JSON path")
    markdown: str | None = Field(None, description="report Markdown path")
    plots: str | None = Field(None, description="folder for ROC/PR and robustness PNGs")
    train_generators: list[str] | None = Field(
        None, description="known generators; default: the checkpoint's meta.generators"
    )
    # each level is checked here, before any image is read: a level the perturbation refuses would otherwise
    # make every image of that sweep unreadable and end in "scores contain NaN" without naming the flag
    jpeg: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=list, description="JPEG qualities (1..100) for the robustness sweep"
    )
    blur: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=list, description="Gaussian blur sigmas (px, >= 0) for the robustness sweep"
    )
    resize: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=list, description="resize factors (> 0) for the robustness sweep"
    )
    batch_size: int = Field(32, ge=1, description="images per forward")
    max_per_class: int | None = Field(None, ge=1, description="cap per generator and class (UnivFD: 1000)")
    device: str = Field("cpu", description="torch device (cpu, cuda, cuda:1)")

    @field_validator("json_out", "markdown")
    @classmethod
    def _a_file_not_a_folder(cls, value: str | None) -> str | None:
        """The report files are written whole at the end: a folder there would fail only after the work."""
        if value and not storage.is_remote(value) and Path(value).is_dir():
            raise ValueError(f"{value} is a folder; name the file to write")
        return value

    @field_validator("device")
    @classmethod
    def _usable_device(cls, value: str) -> str:
        """A device torch can name and this machine has, so a typo or a missing GPU is the flag's one line."""
        import torch

        try:
            dev = torch.device(value)
        except RuntimeError as exc:
            raise ValueError(f"not a torch device: {value!r} (cpu, cuda, cuda:1)") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{value}: no CUDA device on this machine; use cpu")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{value}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return value


def group_records(records: Sequence[LabelledImage]) -> dict[str, list[int]]:
    """generator name -> indices of the records it is scored on (its fakes + the matching reals)."""
    fakes: dict[str, list[int]] = defaultdict(list)
    reals_by_group: dict[str, list[int]] = defaultdict(list)
    reals_no_group: list[int] = []
    for i, r in enumerate(records):
        if r.label == 1:
            fakes[r.generator].append(i)
        elif r.group:
            reals_by_group[r.group].append(i)
        else:
            reals_no_group.append(i)
    all_reals = reals_no_group + [i for v in reals_by_group.values() for i in v]
    groups: dict[str, list[int]] = {}
    for gen in sorted(set(fakes) | set(reals_by_group)):
        own = reals_by_group.get(gen)
        groups[gen] = fakes.get(gen, []) + (own if own else all_reals)
    return groups


def _cap(records: list[LabelledImage], per_class: int | None) -> list[LabelledImage]:
    if per_class is None:
        return records
    seen: dict[tuple[str, int], int] = defaultdict(int)
    out = []
    for r in records:
        key = (r.group or r.attribution, r.label)
        if seen[key] < per_class:
            seen[key] += 1
            out.append(r)
    return out


def _predict(
    predictor: Any, table: Any, batch_size: int, skips: SkipCounter, perturb: tuple[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Predict every listed image through the streaming feed's decode stage (`pipeline.train.feed`), one batch
    in memory at a time, optionally perturbed before preprocessing -> p_fake / generator scores per listing
    row (NaN rows: unreadable, counted in `skips`)."""
    pred = predict_table(predictor, table, batch_size=batch_size, perturb=perturb, skips=skips)
    n = table.num_rows
    p_fake, gen = np.full(n, np.nan), np.full((n, pred["generator_scores"].shape[1]), np.nan)
    p_fake[pred["row"]] = pred["p_fake"]
    gen[pred["row"]] = pred["generator_scores"]
    return {"p_fake": p_fake, "generator_scores": gen}


def _detection_table(
    labels: np.ndarray, groups: dict[str, list[int]], p_fake: np.ndarray, threshold: float
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    per = {g: detection_metrics(labels[idx], p_fake[idx], threshold) for g, idx in groups.items() if idx}
    return per, mean_row(per)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation, write JSON (+ Markdown, + plots) and return the report."""
    from pipeline.models import Predictor, load_detector

    det, meta = load_detector(cfg.detector)
    predictor = Predictor(det, meta, device=cfg.device, dtype="float32")
    records = _cap(load_labelled(cfg.data), cfg.max_per_class)
    if not records:
        raise ValueError(f"no labelled images found in {cfg.data}")
    threshold = float(meta.threshold)
    log.info("eval_start", detector=meta.detector_id, n_images=len(records))
    table = listing_table(records)
    skips = SkipCounter()
    clean = _predict(predictor, table, cfg.batch_size, skips)
    readable = np.flatnonzero(np.isfinite(clean["p_fake"]))
    if readable.size < len(records):  # unreadable images: counted, reported, left out of every metric
        records = [records[i] for i in readable]
        table = table.take(readable)
        clean = {k: v[readable] for k, v in clean.items()}
        if not records:
            raise ValueError(f"none of the images in {cfg.data} could be read (e.g. {skips.examples[:1]})")
    groups = group_records(records)
    labels = np.array([r.label for r in records])
    per, mean = _detection_table(labels, groups, clean["p_fake"], threshold)

    report: dict[str, Any] = {
        "detector": cfg.detector,
        "detector_id": meta.detector_id,
        "data": cfg.data,
        "threshold": threshold,
        "protocol": "UnivFD: each generator folder vs its own reals (all reals where reals carry no folder); "
        "AP/AUC on p_fake; acc at the stored threshold, acc_05 at p_fake 0.5",
        "per_generator": per,
        "mean": mean,
        "skipped": skips.record(),
        "attribution": _attribution(records, clean["generator_scores"], meta, cfg.train_generators),
    }

    robustness: dict[str, dict[str, Any]] = {}
    for kind, levels in (("jpeg", cfg.jpeg), ("blur", cfg.blur), ("resize", cfg.resize)):
        for level in levels:
            # the readable images only (the clean pass counted the others): a counter of its own
            pred = _predict(predictor, table, cfg.batch_size, SkipCounter(), (kind, float(level)))
            p, m = _detection_table(labels, groups, pred["p_fake"], threshold)
            robustness.setdefault(kind, {})[str(level)] = {
                "per_generator": {g: {"ap": v["ap"], "acc": v["acc"]} for g, v in p.items()},
                "mean": m,
            }
            log.info("robustness", kind=kind, level=level, mean_ap=m["ap"], mean_acc=m["acc"])
    report["robustness"] = robustness

    plots: list[str] = []
    if cfg.plots:
        from pipeline.eval.plots import plot_curves, plot_robustness

        curves = {g: (labels[idx], clean["p_fake"][idx]) for g, idx in groups.items() if idx}
        out_dir = Path(cfg.plots)
        plots += [str(p) for p in plot_curves(curves, out_dir)]
        plots += [str(p) for p in plot_robustness(robustness, mean, out_dir, per)]
    report["plots"] = plots

    storage.write_bytes_atomic(cfg.json_out, json.dumps(_clean_nans(report), indent=2).encode())
    if cfg.markdown:
        storage.write_bytes_atomic(cfg.markdown, render_markdown(report).encode())
    storage.write_bytes_atomic(
        storage.join(storage.parent(cfg.json_out), "eval_config.json"), cfg.to_json().encode()
    )
    log.info("eval_done", mean_ap=mean["ap"], mean_acc=mean["acc"], json=cfg.json_out)
    return report


def _attribution(
    records: Sequence[LabelledImage], gen_scores: np.ndarray, meta: Any, train_generators: list[str] | None
) -> dict[str, Any] | None:
    labels = list(meta.generators)
    if not labels:
        return None
    known = [g for g in (train_generators or labels) if g in labels]
    fake_gens = sorted({r.generator for r in records if r.label == 1})
    held_out = [g for g in fake_gens if g not in known]
    closed_idx = [i for i, r in enumerate(records) if r.label == 0 or r.generator in known]
    true = [0 if records[i].label == 0 else 1 + labels.index(records[i].generator) for i in closed_idx]
    mgp = max_generator_prob(gen_scores)
    known_f = np.array([mgp[i] for i, r in enumerate(records) if r.label == 1 and r.generator in known])
    held_f = np.array([mgp[i] for i, r in enumerate(records) if r.label == 1 and r.generator in held_out])
    unk = float(meta.unknown_threshold)
    return {
        "known_generators": known,
        "held_out_generators": held_out,
        "closed_set_accuracy": closed_set_accuracy(true, gen_scores[closed_idx])
        if closed_idx
        else float("nan"),
        "n_closed_set": len(closed_idx),
        "open_set_auroc": open_set_auroc(known_f, held_f),
        "n_known_fakes": int(known_f.size),
        "n_held_out_fakes": int(held_f.size),
        "unknown_threshold": unk,
        "known_called_unknown": float(np.mean(known_f < unk)) if known_f.size else float("nan"),
        "held_out_called_unknown": float(np.mean(held_f < unk)) if held_f.size else float("nan"),
        "open_set_score": "max of the softmax over [real, *generators] (the Predictor's "
        "attribution confidence)",
    }


def _clean_nans(obj: Any) -> Any:
    """JSON has no NaN: write null where a metric is undefined (e.g. AP of a one-class group)."""
    if isinstance(obj, float):
        return None if not np.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean_nans(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_nans(v) for v in obj]
    return obj
