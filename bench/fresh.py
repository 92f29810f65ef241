"""What users get: the first and later epochs of fresh processes, miniai against a hand-written loop.

    python bench/fresh.py --reps 7                      # bs 1024: the README's headline
    python bench/fresh.py --reps 7 --bs 64 --n-train 15000
    python bench/fresh.py --reps 7 --malloc default     # glibc's adaptive thresholds: the allocator lottery
    python bench/overhead.py --fresh ...                 # the same, from the long-lived benchmark's entry point

Each run is a new Python process, as `python -m miniai train` or a fresh notebook kernel is: it imports, loads
Fashion-MNIST with `get_dls()`, builds the reference CNN (conv 8-16-32-64, GeneralRelu, BatchNorm, leaky Kaiming
init) and trains `--epochs` epochs with AdamW at lr 2e-2; an epoch is a training pass and a validation pass.
Each epoch is timed on its own, and the minor page faults of its batches are counted. Runs come in pairs, the hand
loop and a miniai row in alternating order, so load drifting on a shared machine hits both; every ratio is the
median over the pairs of (miniai time / hand time).

Rows:
  hand    a hand-written loop: a randperm and slicing per epoch, forward, cross-entropy, backward, step,
          zero_grad; then a validation pass that computes the mean loss and the accuracy (what a user's loop prints)
  miniai  TrainLearner with the README's callbacks: DeviceCB, MetricsCB(accuracy=Accuracy()), ProgressCB
          (terminal bars, written into /dev/null), and the default NaN guard
  acts    miniai + ActivationStats on the GeneralRelu layers
  acts4   the same with ActivationStats(every=4): batches 0, 4, 8, ... recorded (an extra row, not a default)

Allocator (`--malloc`): `protected` (the default) is what users get: miniai's DeviceCB fixes glibc's malloc
thresholds (`miniai.utils.fix_malloc`), and the hand loop gets the same call, as a user following the README would
do; `default` leaves glibc's adaptive thresholds in both processes (MINIAI_MALLOC=default for miniai).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR = 2e-2


def page_faults() -> int:
    """Minor page faults of this process so far (memory the kernel had to map in); 0 where unknown."""
    try:
        import resource  # Unix only
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------- one fresh process

def child(row: str, bs: int, epochs: int, n_train: int | None, malloc: str) -> dict:
    """Train in this (fresh) process; return each epoch's seconds and page faults per batch."""
    start = time.perf_counter()
    import warnings
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")  # said by torcheval's import
    from functools import partial

    import torch
    import torch.nn.functional as F
    from torch import nn, optim

    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "bench"))
    from handloop import hand_train_pass
    from miniai.data import get_dls
    from miniai.models import GeneralRelu, get_model, init_weights
    from miniai.utils import fix_malloc
    if row != "hand":
        import contextlib

        from miniai.callbacks.activations import ActivationStats
        from miniai.callbacks.basic import DeviceCB
        from miniai.accuracy import Accuracy
        from miniai.callbacks.metrics import MetricsCB
        from miniai.callbacks.progress import ProgressCB
        from miniai.learner import Callback, TrainLearner
    imported = time.perf_counter() - start
    if row == "hand" and malloc == "protected":
        fix_malloc(force=True)  # what DeviceCB does for miniai
    torch.manual_seed(0)
    dls = get_dls(bs=bs, n_train=n_train)
    model = get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d).apply(
        partial(init_weights, leaky=0.1))
    n_batches = len(dls.train) + len(dls.valid)
    times, faults = [], []

    if row == "hand":
        opt = optim.AdamW(model.parameters(), lr=LR)
        x, y, vx, vy = dls.train.x, dls.train.y, dls.valid.x, dls.valid.y
        for _ in range(epochs):
            t0, f0 = time.perf_counter(), page_faults()
            hand_train_pass(model, opt, x, y, bs)
            model.eval()
            total, correct = 0.0, 0
            with torch.no_grad():
                for i in range(0, len(vx), bs):
                    preds = model(vx[i:i + bs])
                    total += F.cross_entropy(preds, vy[i:i + bs], reduction="sum").item()
                    correct += int((preds.argmax(1) == vy[i:i + bs]).sum())
            print(f"valid loss {total / len(vx):.3f} accuracy {correct / len(vx):.4f}", file=sys.stderr)
            times.append(time.perf_counter() - t0)
            faults.append((page_faults() - f0) / n_batches)
    else:
        class EpochTimes(Callback):
            order = 1000  # last at after_epoch: the whole epoch, validation included, is over

            def before_epoch(self, learn):
                if learn.training:
                    self.t0, self.f0 = time.perf_counter(), page_faults()

            def after_epoch(self, learn):
                if not learn.training:
                    times.append(time.perf_counter() - self.t0)
                    faults.append((page_faults() - self.f0) / n_batches)
        # on the CPU, as the hand loop: DeviceCB() would pick a GPU where there is one
        cbs = [DeviceCB("cpu"), MetricsCB(accuracy=Accuracy()), ProgressCB(mode="terminal"), EpochTimes()]
        if row in ("acts", "acts4"):
            cbs.append(ActivationStats(lambda m: isinstance(m, GeneralRelu), every=4 if row == "acts4" else 1))
        learn = TrainLearner(model, dls, F.cross_entropy, lr=LR, cbs=cbs, opt_func=optim.AdamW)
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            learn.fit(epochs)
    return {"row": row, "import_s": imported, "epoch_s": times, "faults_per_batch": faults}


def run_child(row: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.malloc == "default":
        env["MINIAI_MALLOC"] = "default"
    cmd = [sys.executable, __file__, "--child", row, "--bs", str(args.bs), "--epochs", str(args.epochs),
           "--malloc", args.malloc] + (["--n-train", str(args.n_train)] if args.n_train else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the pairs and the table

def cell(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="pairs per row (>= 7 for the README)")
    parser.add_argument("--bs", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per process: the first, then the later ones")
    parser.add_argument("--n-train", type=int, default=None, help="train on the first N images (small batch sizes)")
    parser.add_argument("--rows", default="miniai,acts", help="miniai rows to pair with the hand loop")
    parser.add_argument("--malloc", choices=["protected", "default"], default="protected")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.bs, args.epochs, args.n_train, args.malloc)))
        return
    rows = args.rows.split(",")
    runs: dict[str, list[dict]] = {row: [] for row in rows}
    hands: dict[str, list[dict]] = {row: [] for row in rows}
    for rep in range(args.reps):
        for i, row in enumerate(rows):
            order = ["hand", row] if (rep + i) % 2 == 0 else [row, "hand"]
            result = {name: run_child(name, args) for name in order}
            runs[row].append(result[row])
            hands[row].append(result["hand"])
            print(f"rep {rep + 1}/{args.reps} {row}: first epoch {result[row]['epoch_s'][0]:.2f} s vs "
                  f"{result['hand']['epoch_s'][0]:.2f} s (hand)", file=sys.stderr, flush=True)
    command = "python bench/fresh.py " + " ".join(a for a in sys.argv[1:])
    lines = [f"Command: `{command.strip()}`; {args.reps} pairs of fresh processes per row; bs {args.bs}; "
             f"allocator: {args.malloc}", "",
             "| row | import s | first epoch s | later epochs s | first / hand | later / hand "
             "| page faults / batch, first | later |",
             "|---|---|---|---|---|---|---|---|"]

    def later(run: dict) -> float:
        return statistics.mean(run["epoch_s"][1:])
    all_hands = [h for row in rows for h in hands[row]]
    lines.append(f"| hand loop | {cell([h['import_s'] for h in all_hands])} | "
                 f"{cell([h['epoch_s'][0] for h in all_hands])} | {cell([later(h) for h in all_hands])} | 1 | 1 | "
                 f"{cell([h['faults_per_batch'][0] for h in all_hands], '{:,.0f}')} | "
                 f"{cell([f for h in all_hands for f in h['faults_per_batch'][1:]], '{:,.0f}')} |")
    for row in rows:
        first = statistics.median(r["epoch_s"][0] / h["epoch_s"][0] for r, h in zip(runs[row], hands[row]))
        rest = statistics.median(later(r) / later(h) for r, h in zip(runs[row], hands[row]))
        lines.append(f"| {row} | {cell([r['import_s'] for r in runs[row]])} | "
                     f"{cell([r['epoch_s'][0] for r in runs[row]])} | {cell([later(r) for r in runs[row]])} | "
                     f"**{first:.3f}** | **{rest:.3f}** | "
                     f"{cell([r['faults_per_batch'][0] for r in runs[row]], '{:,.0f}')} | "
                     f"{cell([f for r in runs[row] for f in r['faults_per_batch'][1:]], '{:,.0f}')} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
