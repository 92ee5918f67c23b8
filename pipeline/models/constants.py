"""Preprocessing constants, in one place. [code]: the CLIP normalisation constants are OpenAI CLIP's
(identical to ``open_clip.constants.OPENAI_DATASET_MEAN/STD``; a test asserts they stay equal)."""

from __future__ import annotations

from typing import Literal, get_args

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Checkpoint files written by save_detector.
WEIGHTS_FILE = "detector.safetensors"
META_FILE = "detector.json"

# File suffixes that are (or usually are) Python pickles: never unpickled here.
PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

# Preprocessing modes (pipeline.models.preprocess.prepare_image implements each; the scan's decode accepts
# these):
#   center_crop      center crop; an image smaller than S is first resized (bicubic, shorter side) to S
#                    [genscan]
#   center_crop_pad  torchvision CenterCrop(S) exactly: no resize, zero padding when smaller [UnivFD / RINE
#                    test]
#   resize_crop      torchvision Resize(S, BICUBIC) on the shorter side + CenterCrop(S) [seed 001 / ClipBased]
PreprocessMode = Literal["center_crop", "center_crop_pad", "resize_crop"]
PREPROCESS_MODES: tuple[str, ...] = get_args(PreprocessMode)

# Decision rules (pipeline.models.decision.is_fake):
#   p_fake_ge   sigmoid(logit) >= threshold            [genscan's trained detectors]
#   logit_gt    logit > logit(threshold), i.e. > 0 at 0.5, computed on the logit (no float rounding of p near
#               0.5)
#               [UnivFD / RINE evaluate `sigmoid(logit) > 0.5`, ClipBased `LLR > 0`]
DecisionRule = Literal["p_fake_ge", "logit_gt"]
DECISION_RULES: tuple[str, ...] = get_args(DecisionRule)
