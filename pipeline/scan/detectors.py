"""The detectors of a scan, as the driver reads them (metas only, no weights) [ours].

One checkpoint (`--detector CKPT`) or several (`--detector A,B,C --fusion RULE`): several detectors score
every image in one scan (`pipeline.models.ensemble.DetectorSet`: one backbone pass per shared backbone), each
keeps its own threshold and decision rule, and the row's p_fake / logit / is_fake are the fused ones
(`pipeline.models.fusion`, fake when the fused logit > 0, i.e. fused p_fake > FUSED_THRESHOLD). The row's
detector_id is then the SET's id (`set_id`), and top_generator / generator_scores are those of the
attributing detector (`attributor`: the first listed one that has generator labels, else the first listed);
its labels are the run's labels, which the filter policy's generator rules are checked against.

The CPU decode stage produces one uint8 input per distinct (image_size, preprocess) the detectors need
(`inputs`, in first-use order = `DetectorSet.inputs`); `_run/<date>/detector.json` (`record`) lists every
member and the fusion rule, and a `--resume` with a different detector list or fusion is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.models.fusion import FUSED_THRESHOLD, attributor
from pipeline.scan.config import ScanConfig
from pipeline.settings import ConfigError


@dataclass(frozen=True)
class DetectorInfo:
    detector_id: str
    threshold: float
    labels: list[str]
    image_size: int
    resize_mode: str
    meta: dict[str, Any]


def detector_info(uri: str) -> DetectorInfo:
    """Read the checkpoint's meta and its weights file's header on the driver (cheap: no weights, no torch),
    failing fast before any Ray work when the checkpoint is missing, its meta is invalid or its weights file
    is not safetensors; gives the preprocessing constants the CPU decode stage needs.
    The actors then load the weights, checking hash, keys and shapes (pipeline.models.load_detector)."""
    from pipeline.models import read_meta
    from pipeline.models.constants import WEIGHTS_FILE
    from pipeline.models.meta import CheckpointError, read_weights_header, refuse_pickle
    from pipeline.storage import join

    try:
        refuse_pickle(uri)  # a pickle file named as the detector: refused by name, never opened
        meta = read_meta(uri)
    except (OSError, ConfigError, ValueError) as exc:  # OSError: not found, not a directory, permission
        raise ConfigError(f"detector: cannot read checkpoint {uri}: {exc}") from exc
    if meta.config is None:
        raise ConfigError(f"detector: checkpoint {uri} has no config in its meta")
    # a missing, renamed-pickle or truncated weights file fails here, in one line, not in every scoring actor
    try:
        read_weights_header(join(uri, WEIGHTS_FILE))
    except FileNotFoundError as exc:
        raise ConfigError(f"detector: checkpoint {uri} has no {WEIGHTS_FILE}") from exc
    except (OSError, CheckpointError) as exc:
        raise ConfigError(f"detector: {exc}") from exc
    return DetectorInfo(
        detector_id=str(meta.detector_id),
        threshold=float(meta.threshold),
        labels=meta.labels,
        image_size=int(meta.config.image_size),
        resize_mode=str(meta.config.preprocess),
        meta=meta.model_dump(mode="json"),
    )


def set_id(member_ids: list[str], fusion: str) -> str:
    """The detector_id of a set: its fusion rule and a digest of its members' ids, in order."""
    digest = hashlib.sha256("\n".join([fusion, *member_ids]).encode()).hexdigest()[:12]
    return f"set-{len(member_ids)}-{fusion}@{digest}"


@dataclass(frozen=True)
class RunDetectors:
    uris: list[str]
    members: list[DetectorInfo]
    fusion: str | None  # None: one detector, nothing fused
    inputs: list[tuple[int, str]]  # distinct (image_size, preprocess), first-use order

    @property
    def detector_id(self) -> str:
        if self.fusion is None:
            return self.members[0].detector_id
        return set_id(self.member_ids, self.fusion)

    @property
    def threshold(self) -> float:
        return self.members[0].threshold if self.fusion is None else FUSED_THRESHOLD

    @property
    def attributing(self) -> DetectorInfo:
        return self.members[attributor([m.labels for m in self.members])]

    @property
    def labels(self) -> list[str]:
        return self.attributing.labels

    @property
    def member_ids(self) -> list[str]:
        return [m.detector_id for m in self.members]

    def record(self) -> dict[str, Any]:
        """`_run/<date>/detector.json`: the v1 keys (uri, detector_id, threshold, labels, image_size,
        resize_mode, meta — of the one detector, or of the set / its attributing member), every member, the
        fusion."""
        return {
            "uri": ",".join(self.uris),
            "detector_id": self.detector_id,
            "threshold": self.threshold,
            "labels": self.labels,
            "image_size": self.inputs[0][0],
            "resize_mode": self.inputs[0][1],
            "meta": self.attributing.meta,
            "fusion": self.fusion,
            "inputs": [{"image_size": s, "preprocess": p} for s, p in self.inputs],
            "members": [{"uri": u, **asdict(m)} for u, m in zip(self.uris, self.members, strict=True)],
        }


def run_detectors(cfg: ScanConfig) -> RunDetectors:
    """Every checkpoint's meta (ConfigError naming the one that is wrong) and the inputs the decode makes."""
    uris = cfg.detectors
    members = [detector_info(u) for u in uris]
    ids = [m.detector_id for m in members]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"detector: the same detector is listed twice ({', '.join(dup)}): list each once")
    if cfg.features is not None and all(
        (m.meta.get("config") or {}).get("method") == "mole" for m in members
    ):
        raise ConfigError(
            "features: a MoLE detector adapts the backbone's blocks, so its pass does not give the frozen "
            "backbone's features; add a linear, UnivFD, ClipBased or RINE detector on the same backbone "
            "(--detector A,B) or scan without --features"
        )
    if len(members) == 1:
        inputs = [(members[0].image_size, cfg.resize_mode or members[0].resize_mode)]
        return RunDetectors(uris, members, None, inputs)
    inputs = list(dict.fromkeys((m.image_size, m.resize_mode) for m in members))
    if cfg.decode_on == "gpu" and len(inputs) > 1:
        raise ConfigError(
            "decode_on: gpu decode supports detectors that share one preprocessing; these need "
            f"{', '.join(f'{p}@{s}' for s, p in inputs)} (use decode_on cpu)"
        )
    return RunDetectors(uris, members, cfg.fusion, inputs)
