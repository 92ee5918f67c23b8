"""How learnable is each simulated fingerprint? Two measurements on the demo data [ours].

1. ``features``: 5-fold cross-validated ROC AUC of a logistic regression on `demo.fingerprint_features`
   (simple high-pass / spectral / colour statistics of the centre crop).
2. ``random_probe``: average precision, on a held-out seed, of a logistic regression on the frozen features of
   a random-init detector (default ``tiny-mole``: what its heads read before any adapter is trained), trained
   on centre crops and on grid-aligned random crops + flips (``UnivFDAugment(crop_grid=8)`` without
   blur/JPEG). This bounds what the heads alone can do; MoLE adapters only add to it.

    python -m pipeline.data.learnability --n 200 --out learnability.json

Prints/writes JSON; the figures quoted in docs/demo_data.md come from this module.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.augment import UnivFDAugment, center_crop
from pipeline.data.synthetic import fingerprint_features, list_families, make_image
from pipeline.logs import get_logger

log = get_logger("pipeline.data.learnability")


def _clf():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def _images(seed: int, family: str, n: int) -> list[tuple[np.ndarray, int]]:
    """n real then n generated demo images (128 px) of `family`, each with its label."""
    return [(make_image(seed, family, lab, i, 128), lab) for lab in (0, 1) for i in range(n)]


def feature_auc(family: str, n: int) -> float:
    x = np.stack([fingerprint_features(a, 96) for a, _ in _images(0, family, n)])
    y = np.repeat([0, 1], n)
    p = cross_val_predict(
        _clf(), x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba"
    )
    return float(roc_auc_score(y, p[:, 1]))


def random_probe_ap(family: str, n: int, *, config: str = "tiny-mole", views: int = 3) -> dict[str, float]:
    import torch

    from pipeline.models import DetectorConfig, create_detector
    from pipeline.models.preprocess import to_model_input

    cfg = DetectorConfig.load(config)
    torch.manual_seed(0)
    det = create_detector(cfg, pretrained=None).eval()
    s = cfg.image_size

    def feats(images: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), 64):
                batch = np.ascontiguousarray(np.stack(images[i : i + 64]))
                out.append(det(to_model_input(batch, cfg)).features.numpy())
        return np.concatenate(out)

    def centre(a: np.ndarray) -> np.ndarray:
        return np.asarray(center_crop(Image.fromarray(a), s))

    train, test = _images(0, family, n), _images(1, family, n)
    y_test = np.array([lab for _, lab in test])
    x_test = feats([centre(a) for a, _ in test])

    def held_out_ap(x: np.ndarray, y: np.ndarray) -> float:
        return float(average_precision_score(y_test, _clf().fit(x, y).decision_function(x_test)))

    aug = UnivFDAugment(crop_size=s, blur_prob=0.0, jpeg_prob=0.0, crop_grid=8)
    rng = np.random.default_rng(0)
    x_aug = feats([np.asarray(aug(Image.fromarray(a), rng)) for a, _ in train for _ in range(views)])
    y_aug = np.repeat([lab for _, lab in train], views)
    x_ctr = feats([centre(a) for a, _ in train])
    y_ctr = np.array([lab for _, lab in train])
    return {"centre": held_out_ap(x_ctr, y_ctr), "grid8_flip": held_out_ap(x_aug, y_aug)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="images per class and family")
    p.add_argument("--families", default=",".join(list_families()))
    p.add_argument("--config", default="tiny-mole", help="detector config for the random-feature probe")
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result: dict[str, dict] = {"n_per_class": args.n, "config": args.config, "families": {}}
    for fam in args.families.split(","):
        r = {"feature_auc_cv": feature_auc(fam, args.n)}
        r.update(
            {f"random_probe_ap_{k}": v for k, v in random_probe_ap(fam, args.n, config=args.config).items()}
        )
        result["families"][fam] = {k: round(v, 4) for k, v in r.items()}
        log.info("learnability", family=fam, **result["families"][fam])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
