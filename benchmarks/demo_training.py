"""The figures of docs/training.md, "Measured on demo data": the doc's own pasteable commands, run as a user
runs them (`python jobs/<job>.py ...`, `--engine local` unless `--ray`), into a temporary folder, timed; then
the table read back from the evaluation JSON files.

    python benchmarks/demo_training.py [--out results] [--ray]

Writes <out>/demo_training.json and <out>/demo_training.md (default results/; `--quick` writes results/tmp/
with fewer images, a smoke run that never replaces the committed figures). Every figure is from this one run,
on this machine, with the date; they are for a randomly initialised tiny backbone on SIMULATED fingerprints
(docs/demo_data.md): they say the code paths work and learn, nothing about real generators."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's pipeline package and benchmarks._common
from benchmarks._common import parser, results_dir, timed_job, write_results  # noqa: E402

RUNS = {
    "mole": ["--config", "tiny-mole", "--method", "mole"],
    "linear": ["--config", "tiny-linear", "--method", "linear"],
    "mole + texture mask ρ=0.3": [
        *("--config", "tiny-mole", "--method", "mole"),
        *("--mask", "texture", "--mask-ratio", "0.3"),
    ],
}


def measure(work: Path, *, n_train: int, n_test: int, ray: bool) -> dict:
    engine = [] if ray else ["--engine", "local"]
    seconds: dict[str, float] = {}
    data = {"train": ("upconv", n_train, "0"), "test": ("upconv,vqgan", n_test, "1")}
    for split, (families, n, seed) in data.items():
        args = ["--out", str(work / split), "--families", families, "--n-per-class", str(n), "--seed", seed]
        seconds[f"make_demo_data {split}"] = timed_job("make_demo_data", *args)
    rows = []
    for label, args in RUNS.items():
        ckpt = work / "ckpt" / f"run{len(rows)}"
        data_args = ["--data", str(work / "train"), "--train-generators", "upconv", "--out", str(ckpt)]
        train_s = timed_job("train_detector", *data_args, *args, *engine)
        report = work / f"eval{len(rows)}.json"
        eval_s = timed_job(
            "evaluate", "--data", str(work / "test"), "--detector", str(ckpt), "--json", str(report)
        )
        rep = json.loads(report.read_text())
        summary = json.loads((ckpt / "train_summary.json").read_text())
        up, vq = rep["per_generator"]["upconv"], rep["per_generator"]["vqgan"]
        rows.append(
            {
                "run": label,
                "best_epoch": summary.get("best_epoch"),
                "epochs": summary.get("epochs"),
                "upconv_ap": up["ap"],
                "upconv_acc": up["acc"],
                "upconv_acc_05": up["acc_05"],
                "vqgan_ap_held_out": vq["ap"],
                "closed_set_attribution_acc": (rep.get("attribution") or {}).get("closed_set_accuracy"),
                "open_set_auroc": (rep.get("attribution") or {}).get("open_set_auroc"),
                "train_command_s": round(train_s, 1),
                "train_worker_s": summary.get("seconds"),
                "evaluate_command_s": round(eval_s, 1),
            }
        )
    return {"rows": rows, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def markdown(res: dict) -> str:
    lines = [
        "# Demo training figures (docs/training.md, 'Measured on demo data')",
        "",
        f"Measured {res['date']} on {res['machine']} by `benchmarks/demo_training.py`",
        f"({res['engine']}),",
        "one run: the doc's commands (make_demo_data, train_detector, evaluate) run as jobs;",
        f"train {res['n_train']} real + {res['n_train']} `upconv` images (20 % validation),",
        f"test {res['n_test']}",
        "real + fake per family (`vqgan` never seen in training). Rates in percent.",
        "A randomly initialised tiny backbone on SIMULATED fingerprints: the code paths work and learn,",
        "nothing about real generators.",
        "",
        "| run | best epoch / epochs | upconv AP | upconv acc (calibrated thr.) | upconv acc@0.5 "
        "| vqgan AP (held out) | closed-set attribution acc | open-set AUROC | train command s "
        "| of it in the worker s | evaluate s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['run']} | {r['best_epoch']} / {r['epochs']} | {_pct(r['upconv_ap'])} "
            f"| {_pct(r['upconv_acc'])} | {_pct(r['upconv_acc_05'])} | {_pct(r['vqgan_ap_held_out'])} "
            f"| {_pct(r['closed_set_attribution_acc'])} | {_pct(r['open_set_auroc'])} "
            f"| {r['train_command_s']} | {r['train_worker_s']} | {r['evaluate_command_s']} |"
        )
    lines += ["", "Demo data: " + ", ".join(f"{k} {v} s" for k, v in res["seconds"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, quick="a smoke run: 20 images per class")
    ap.add_argument(
        "--ray", action="store_true", help="train on a private local Ray (as the doc's commands do)"
    )
    args = ap.parse_args(argv)
    out = results_dir(args.out, args.quick)
    n_train, n_test = (20, 10) if args.quick else (120, 100)
    with tempfile.TemporaryDirectory(prefix="genscan-demo-training-") as tmp:
        res = measure(Path(tmp), n_train=n_train, n_test=n_test, ray=args.ray)
    res.update(
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{os.cpu_count()} cores, no GPU",
        engine="Ray Train, one CPU worker" if args.ray else "--engine local (in process, no Ray start-up)",
        n_train=n_train,
        n_test=n_test,
    )
    write_results(out, "demo_training", res, markdown(res))
    print(json.dumps({"out": str(out), "rows": len(res["rows"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
