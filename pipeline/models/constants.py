"""Preprocessing constants, in one place. [code]: the CLIP normalisation constants are OpenAI CLIP's
(identical to ``open_clip.constants.OPENAI_DATASET_MEAN/STD``; a test asserts they stay equal)."""

from __future__ import annotations

from typing import Literal, get_args

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# The attribution labels that name no generator: the head's class 0 (gen_logits over ["real", *generators]),
# and a fake of no known label (its attribution confidence under the checkpoint's unknown threshold, or a
# declared generator that maps to none of the detector's labels). Neither may be a generator's name.
REAL_LABEL = "real"
UNKNOWN_LABEL = "unknown"
RESERVED_LABELS = (REAL_LABEL, UNKNOWN_LABEL)

# Checkpoint files written by save_detector.
WEIGHTS_FILE = "detector.safetensors"
META_FILE = "detector.json"

# File suffixes that are (or usually are) Python pickles: never unpickled here.
PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

# Preprocessing modes: pipeline.models.preprocess describes and implements each (the scan's decode accepts
# these).
PreprocessMode = Literal["center_crop", "center_crop_pad", "resize_crop"]
PREPROCESS_MODES: tuple[str, ...] = get_args(PreprocessMode)

# Decision rules: pipeline.models.decision describes and implements each.
DecisionRule = Literal["p_fake_ge", "logit_gt"]
DECISION_RULES: tuple[str, ...] = get_args(DecisionRule)
