"""Per-epoch training state: what a resumed run needs to continue exactly where the last epoch ended.

A state directory holds `state.safetensors` (the trainable parameters — adapters, routers, heads —, the best
epoch's copy of them, the optimizer's tensors, torch's RNG state) and `state.json` (completed epoch, per-epoch
history, scheduler and optimizer hyper-parameters, numpy/python RNG states, the split record, resume events).
Never a pickle: reading a state back runs no code (safetensors + JSON).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
STATE_VERSION = 1


@dataclass
class TrainState:
    epoch: int  # completed epochs
    history: list[dict[str, Any]]
    params: dict[str, torch.Tensor]  # trainable parameters by name
    best: tuple[tuple[float, float], int, dict[str, torch.Tensor]] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    split: dict[str, Any]
    resumes: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> tuple[dict[str, Any], torch.Tensor]:
    py = random.getstate()
    # MT19937: {"bit_generator", "state": {"key": uint32[624], "pos"}, ...}
    npy = np.random.get_state(legacy=False)
    npy = {**npy, "state": {"key": npy["state"]["key"].tolist(), "pos": int(npy["state"]["pos"])}}
    return {"python": [py[0], list(py[1]), py[2]], "numpy": npy}, torch.get_rng_state()


def restore_rng(rng: dict[str, Any], torch_state: torch.Tensor) -> None:
    v, st, g = rng["python"]
    random.setstate((v, tuple(st), g))
    npy = rng["numpy"]
    key = np.asarray(npy["state"]["key"], dtype=np.uint32)
    np.random.set_state({**npy, "state": {"key": key, "pos": int(npy["state"]["pos"])}})
    torch.set_rng_state(torch_state)


def write_state(path: Path, state: TrainState) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"param/{k}": v.detach().cpu().contiguous() for k, v in state.params.items()
    }
    if state.best is not None:
        tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in state.best[2].items()})
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state.optimizer.get("state", {}).items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt/{idx}/{name}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(idx), {})[name] = value
    rng, torch_rng = capture_rng()
    tensors["rng/torch"] = torch_rng
    save_file(tensors, str(path / STATE_TENSORS))
    doc = {
        "version": STATE_VERSION,
        "epoch": state.epoch,
        "history": state.history,
        "best": None if state.best is None else {"key": list(state.best[0]), "epoch": state.best[1]},
        "optimizer": {"param_groups": state.optimizer.get("param_groups", []), "scalars": opt_scalars},
        "scheduler": state.scheduler,
        "split": state.split,
        "resumes": state.resumes,
        "skipped": state.skipped,
        "rng": rng,
    }
    (path / STATE_JSON).write_text(json.dumps(doc, default=float))


def read_state(path: Path) -> TrainState:
    doc = json.loads((path / STATE_JSON).read_text())
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training state version {doc.get('version')!r}, expected {STATE_VERSION}")
    tensors = load_file(str(path / STATE_TENSORS))
    params = {k[len("param/") :]: v for k, v in tensors.items() if k.startswith("param/")}
    best = None
    if doc["best"] is not None:
        bt = {k[len("best/") :]: v for k, v in tensors.items() if k.startswith("best/")}
        best = (tuple(doc["best"]["key"]), int(doc["best"]["epoch"]), bt)
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, idx, name = k.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    for idx, scalars in doc["optimizer"]["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    restore_rng(doc["rng"], tensors["rng/torch"])
    return TrainState(
        epoch=int(doc["epoch"]),
        history=doc["history"],
        params=params,
        best=best,  # type: ignore[arg-type]
        optimizer={"state": opt_state, "param_groups": doc["optimizer"]["param_groups"]},
        scheduler=doc["scheduler"],
        split=doc["split"],
        resumes=doc["resumes"],
        skipped=doc["skipped"],
    )
