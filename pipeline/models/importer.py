"""Import a peer's released detector weights into a genscan checkpoint (``jobs/import_detector.py``).

The three formats [code, read from the peers' released files and loaders]:

* ``univfd`` (WisconsinAIVision/UniversalFakeDetect ``pretrained_weights/fc_weights.pth``): an OrderedDict
  ``weight`` (1, 768), ``bias`` (1,) for ``nn.Linear(768, 1)`` on OpenAI ViT-L/14 ``encode_image``;
* ``clipbased`` (grip-unina/ClipBased-SyntheticImageDetection
  ``weights/clipdet_latent10k[_plus]/weights.pth``): ``fc.weight`` (1, 1024), ``fc.bias`` (1,), nested like
  their ``load_weights`` reads it;
* ``rine`` (mever-team/rine ``ckpt/model_<variant>_trainable.pth``): ``alpha`` (1, 24, D), ``proj1.*``,
  ``proj2.*``, ``head.*`` (23 tensors). RINE's own loader builds Python statements from the key names and
  ``exec``s them; here every key is matched against a fixed table instead.

This module holds the ONLY unpickling in genscan: ``torch.load(f, weights_only=True, map_location="cpu")``
(weights_only refuses anything but tensors and plain containers; map_location because the released files'
storages are tagged ``cuda:0``). Every other loader refuses pickles by suffix and content.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from pipeline import storage
from pipeline.logs import get_logger
from pipeline.models.checkpoint import write_checkpoint
from pipeline.models.config import DetectorConfig, register_arch_configs
from pipeline.models.constants import META_FILE, WEIGHTS_FILE
from pipeline.models.detector import check_state_dict, head_shapes, resolve_pretrained, visual_keys
from pipeline.models.meta import CheckpointError, DetectorMeta, ImportedFrom
from pipeline.settings import ConfigError, StrictModel

log = get_logger("pipeline.models.importer")

RINE_VARIANTS = ("1class", "2class", "4class", "ldm")
_NESTINGS = ("model", "state_dict", "net")  # ClipBased's load_weights order; then the raw dict


class WeightsFileError(CheckpointError):
    """The peer's weights file cannot be read or does not match the detector kind."""


@dataclass(frozen=True)
class Kind:
    """One peer format: which genscan config it lands in (that config's method, head feature and normalisation
    are what the weights need) and how its keys map to genscan parameter names."""

    name: str
    names: tuple[tuple[str, str], ...]  # exact (source name, genscan name)
    origin: str
    file_hint: str
    licence: str
    paper: str
    prefixes: tuple[tuple[str, str], ...] = ()  # (source prefix, genscan prefix), tried after `names`

    def default_config(self, variant: str | None) -> str:
        if self.name == "rine":
            return f"rine-vitl14-{variant or '2class'}"
        return f"{self.name}-vitl14"

    def to_source(self, key: str) -> str | None:
        """The peer's name of genscan parameter `key`: the first name pair it equals, else the first prefix
        pair it starts with; None when no pair applies."""
        for src, dst in self.names:
            if key == dst:
                return src
        for src, dst in self.prefixes:
            if key.startswith(dst):
                return src + key[len(dst) :]
        return None


KINDS: dict[str, Kind] = {
    "univfd": Kind(
        name="univfd",
        names=(("weight", "head_fake.weight"), ("bias", "head_fake.bias")),
        origin="https://github.com/WisconsinAIVision/UniversalFakeDetect (pretrained_weights/fc_weights.pth)",
        file_hint="pretrained_weights/fc_weights.pth (4,083 bytes)",
        licence="MIT",
        paper="Ojha, Li, Lee. Towards Universal Fake Image Detectors that Generalize Across "
        "Generative Models. CVPR 2023. arXiv:2302.10174",
    ),
    "clipbased": Kind(
        name="clipbased",
        names=(("fc.weight", "head_fake.weight"), ("fc.bias", "head_fake.bias")),
        origin="https://github.com/grip-unina/ClipBased-SyntheticImageDetection "
        "(weights/clipdet_latent10k[_plus]/weights.pth)",
        file_hint="weights/clipdet_latent10k_plus/weights.pth",
        licence="Apache-2.0",
        paper="Cozzolino, Poggi, Corvi, Niessner, Verdoliva. Raising the Bar of AI-generated Image Detection "
        "with CLIP. CVPRW 2024. arXiv:2312.00195",
    ),
    "rine": Kind(
        name="rine",
        names=(("alpha", "neck.alpha"),),
        prefixes=(("proj1.", "neck.proj1."), ("proj2.", "neck.proj2."), ("head.", "head_fake.")),
        origin="https://github.com/mever-team/rine (ckpt/model_<variant>_trainable.pth)",
        file_hint="ckpt/model_2class_trainable.pth (1,139,686 bytes)",
        licence="Apache-2.0",
        paper="Koutlis, Papadopoulos. Leveraging Representations from Intermediate Encoder-blocks for "
        "Synthetic Image Detection (title and authors as in the repository README)",
    ),
}


# ---------------------------------------------------------------------------------------------- reading
def read_torch_file(path: Path) -> Any:
    """The one ``torch.load`` in genscan: tensors and plain containers only, every storage mapped to CPU."""
    try:
        with open(path, "rb") as f:
            return torch.load(f, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsFileError(
            f"{path}: refused, it holds more than tensors and plain containers (weights_only: {first[:200]})"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise WeightsFileError(
            f"{path}: not a readable torch weights file ({type(exc).__name__}: {str(exc).strip()[:200]})"
        ) from exc


def unwrap_state_dict(dat: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """ClipBased's nesting rule for every kind: ``dat["model"]`` (a leading ``module.`` stripped when every
    key carries it), else ``dat["state_dict"]``, else ``dat["net"]``, else the dict itself."""
    if not isinstance(dat, Mapping):
        raise WeightsFileError(
            f"{path}: holds a {type(dat).__name__}, not a state dict (a mapping of tensors)"
        )
    nesting = "raw"
    for key in _NESTINGS:
        if isinstance(dat.get(key), Mapping):
            dat, nesting = dat[key], key
            break
    sd = dict(dat)
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
        nesting += " (module. stripped)"
    bad = sorted(str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise WeightsFileError(f"{path}: entries that are not named tensors: {', '.join(bad[:8])}")
    return sd, nesting


# ---------------------------------------------------------------------------------------------- checks
def _check_config(kind: Kind, cfg: DetectorConfig) -> None:
    default = DetectorConfig.load(kind.default_config(None))
    method, feature, normalize = default.method, default.head.feature, default.head.normalize
    if (cfg.method, cfg.head.feature, cfg.head.normalize) != (method, feature, normalize):
        raise ConfigError(
            f"config {cfg.name}: method {cfg.method} / feature {cfg.head.feature} / normalize "
            f"{cfg.head.normalize} does not express a {kind.name} detector (needs {method} / {feature} / "
            f"{normalize}); use {kind.default_config(None)} or a config like it"
        )
    if cfg.generators:
        raise ConfigError(f"config {cfg.name}: imported detectors are binary; generators must be empty")


def _expected_source(kind: Kind, cfg: DetectorConfig) -> dict[str, tuple[str, torch.Size]]:
    """The peer's key of every head parameter but the attribution head's -> (genscan name, shape)."""
    out = {}
    for name, shape in head_shapes(cfg).items():
        if name.startswith("head_gen."):
            continue
        src = kind.to_source(name)
        if src is None:  # a config/kind mismatch that _check_config let through: a bug, not an operator error
            raise RuntimeError(f"{kind.name}: no source key for {name}")
        out[src] = (name, shape)
    return out


def _variant_hint(sd: dict[str, torch.Tensor]) -> str:
    fits = []
    for v in RINE_VARIANTS:
        exp = _expected_source(KINDS["rine"], DetectorConfig.load(f"rine-vitl14-{v}"))
        if set(exp) == set(sd) and all(tuple(sd[k].shape) == tuple(s) for k, (_, s) in exp.items()):
            fits.append(v)
    return f"; the file's shapes fit --variant {' or '.join(fits)}" if fits else ""


def _check_backbone_file(cfg: DetectorConfig, path: Path) -> None:
    """Key and shape check of a backbone .safetensors against the architecture, built on the meta device
    (no memory, no download): catches a wrong backbone file at import time instead of at the first scan."""
    import open_clip
    from safetensors import safe_open

    register_arch_configs()
    with torch.device("meta"):
        visual = open_clip.create_model(cfg.arch, pretrained=None, device="meta").visual
    expected = {k: v.shape for k, v in visual.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            got = {
                name: torch.empty(f.get_slice(key).get_shape(), device="meta")
                for name, key in visual_keys(f.keys()).items()
            }
    except Exception as exc:  # safetensors raises its own error types for a malformed header
        raise ConfigError(f"--backbone-weights {path}: not a readable .safetensors file ({exc})") from exc
    check_state_dict(expected, got, what=f"--backbone-weights {path} ({cfg.arch})")


# ---------------------------------------------------------------------------------------------- import
class ImportConfig(StrictModel):
    """What `jobs/import_detector.py` imports, and where to (its flags are these fields). Kind and variant are
    checked by `import_detector`, which names the allowed values."""

    kind: str = Field(description="univfd | clipbased | rine")
    weights: str = Field(description="the peer's released weights file (.pth)")
    out: str = Field(description="checkpoint directory to write (local or s3://)")
    variant: str | None = Field(
        None, description="RINE checkpoint: 1class | 2class | 4class | ldm (default 2class)"
    )
    backbone_weights: str | None = Field(
        None, description="local .safetensors of the CLIP backbone (default: the tag)"
    )
    config: str | None = Field(
        None, description="detector config name or JSON (default: the kind's shipped config)"
    )
    force: bool = Field(False, description="overwrite an existing checkpoint at --out")


def import_detector(
    kind: str,
    weights: str | Path,
    out: str | Path,
    *,
    variant: str | None = None,
    config: str | None = None,
    backbone_weights: str | None = None,
    force: bool = False,
) -> DetectorMeta:
    """Read ``weights`` (a peer's file of ``kind``), check every key and shape, write a genscan checkpoint
    to ``out``. The backbone is not stored: it is the config's open_clip tag, or ``backbone_weights`` (a
    .safetensors file, sha256 recorded and checked by load_detector)."""
    if kind not in KINDS:
        raise ConfigError(f"--kind: {kind!r} is not one of {', '.join(KINDS)}")
    k = KINDS[kind]
    if variant is not None and kind != "rine":
        raise ConfigError(f"--variant is only for --kind rine (got --kind {kind})")
    if variant is not None and variant not in RINE_VARIANTS:
        raise ConfigError(f"--variant: {variant!r} is not one of {', '.join(RINE_VARIANTS)}")
    cfg = DetectorConfig.load(config or k.default_config(variant), field="--config")
    _check_config(k, cfg)
    if backbone_weights is not None:
        if not storage.is_remote(backbone_weights) and not backbone_weights.startswith("file://"):
            backbone_weights = str(Path(backbone_weights).resolve())  # the scan may run from another cwd
        cfg = DetectorConfig.parse(
            {**cfg.model_dump(), "pretrained": backbone_weights}, source="--backbone-weights"
        )
    source, local = resolve_pretrained(cfg.arch, cfg.pretrained)
    if source.kind == "none":
        raise ConfigError(
            f"config {cfg.name} has no default backbone weights; pass --backbone-weights FILE.safetensors"
        )
    if local is not None:
        _check_backbone_file(cfg, local)

    path = storage.fetch_to_cache(str(weights))  # an s3:// file is read from the local cache
    if not path.is_file():
        raise ConfigError(f"--weights: no such file: {weights} (expected the {kind} file {k.file_hint})")
    out_s = str(out)
    if not force and storage.exists(storage.join(out_s, META_FILE)):
        raise ConfigError(
            f"--out {out_s} already holds a checkpoint ({META_FILE}); pass --force to overwrite it"
        )

    sd, nesting = unwrap_state_dict(read_torch_file(path), path)
    expected = _expected_source(k, cfg)
    try:
        check_state_dict({s: shape for s, (_, shape) in expected.items()}, sd, what=f"{kind} weights {path}")
    except CheckpointError as exc:
        hint = _variant_hint(sd) if kind == "rine" and config is None else ""
        raise WeightsFileError(f"{exc}{hint}") from exc

    keymap = {src: expected[src][0] for src in sd}  # sd's keys are the expected ones (checked above)
    tensors = {dst: sd[src].detach().to(torch.float32) for src, dst in keymap.items()}
    # binary detectors: the attribution head over ["real"] is a constant (softmax of one logit = 1)
    for name, shape in head_shapes(cfg).items():
        if name.startswith("head_gen."):
            tensors[name] = torch.zeros(shape)
    provenance = ImportedFrom(
        kind=kind,
        variant=variant,  # None unless --kind rine (checked above)
        file=str(weights),
        sha256=storage.sha256_file(path),
        bytes=os.path.getsize(path),
        nesting=nesting,
        keys=keymap,
        origin=k.origin,
        licence=k.licence,
        paper=k.paper,
    )
    meta = DetectorMeta(threshold=0.5, imported_from=provenance)
    meta = write_checkpoint(tensors, cfg, source, out_s, meta)
    log.info(
        "detector_imported",
        kind=kind,
        weights=str(weights),
        sha256=provenance.sha256,
        out=out_s,
        detector_id=meta.detector_id,
        tensors=len(sd),
        nesting=nesting,
        weights_file=WEIGHTS_FILE,
    )
    return meta
