"""What each callback costs per batch: every event handler of the README's learner, timed on its own; and what the
whole loop costs over a hand-written one.

    python bench/callback_costs.py                 # bs 64, a linear model (so the loop's own cost is not hidden)
    python bench/callback_costs.py --model reference --bs 1024

The learner is the README's (DeviceCB, MetricsCB(accuracy=Accuracy()), ProgressCB, the NaN guard) plus a OneCycleLR
BatchSchedCB and a RecorderCB. Every handler in the learner's dispatch table (events, cleanups and step owners) is
wrapped in a timer with `time.perf_counter` (the timer itself adds ~1 µs a call, and handlers run with cold caches
right after the model's kernels, so treat the numbers as upper bounds that rank the callbacks, not as their exact
cost). Each handler is listed with its time per training batch: per-batch handlers per call, per-epoch ones
(MetricsCB's after_epoch, which updates the metrics in bulk) spread over the epoch's batches; per-fit ones
(before_fit, after_fit, cleanup_fit) are left out. What a hand-written loop with the same schedule, reporting the
same training accuracy, pays too is timed on its own and taken out of the row of the handler it ran in: the torch
scheduler's own `step()` (BatchSchedCB's cleanup_batch) and the metrics' own `update()` and `compute()`
(MetricsCB's after_epoch, which updates them in bulk); the totals leave them out. The timer's own cost is
measured too (an empty handler, timed the same way) and shown; the last line takes it out of the total (a little
too much: the empty handler's call, which real dispatch pays too, is part of it).

First, before any timer is in place, the whole loop: `--pairs` paired training passes of the hand-written loop
(`bench/handloop.py`: randperm, slicing, the five steps and the same OneCycleLR, no metrics or display) and of the
learner above (same model, optimizer and schedule), in alternating order; the median over pairs of the
difference per batch is what a user pays per batch for everything miniai does (dispatch, callbacks, its loader),
with no timer in the way. With a linear model at bs 64 that is a third or more of the batch's time, so it shows.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim.lr_scheduler import OneCycleLR

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py, next to this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from handloop import hand_train_pass  # noqa: E402
from overhead import LR, quietly, reference_model  # noqa: E402

import miniai.learner  # noqa: E402
from miniai.callbacks import (Accuracy, BatchSchedCB, DeviceCB, MetricsCB, ProgressCB, RecorderCB, _lr,  # noqa: E402
                              _mom)
from miniai.data import get_dls  # noqa: E402
from miniai.learner import Callback, Learner, TrainLearner  # noqa: E402

_PER_FIT = ("before_fit", "after_fit", "cleanup_fit")


_running: list[tuple[str, str]] = []  # the handler being timed (event, name), for the costs measured inside it


def time_every_handler(totals: dict[tuple[str, str], list[float]]) -> None:
    """Make the learner's dispatch tables (built by `build_handlers` whenever the callbacks change) hold timed
    wrappers of every handler, each adding its time and calls to `totals`."""
    real = miniai.learner.build_handlers

    def timed(handler: Callable[[Learner], None], event: str) -> Callable[[Learner], None]:
        def call(learn: Learner) -> None:
            _running.append((event, handler.__qualname__))
            start = time.perf_counter()
            try:
                handler(learn)
            finally:
                cell = totals[_running.pop()]
                cell[0] += time.perf_counter() - start
                cell[1] += 1
        call.__qualname__, call.__self__ = handler.__qualname__, handler.__self__
        return call

    def build(cbs):
        return {event: [timed(h, event) for h in handlers] for event, handlers in real(cbs).items()}
    miniai.learner.build_handlers = build


def _timed_inside(fn: Callable, what: str, totals: dict[tuple[str, str], list[float]],
                  inside: dict[tuple[str, str], float]) -> Callable:
    """`fn`, its time added to `totals[('(inside)', what)]` and to `inside[the handler it ran in]`."""
    def call(*args: object) -> object:
        start = time.perf_counter()
        out = fn(*args)
        spent = time.perf_counter() - start
        cell = totals[("(inside)", what)]
        cell[0] += spent
        cell[1] += 1
        if _running:
            inside[_running[-1]] += spent
        return out
    return call


def time_what_a_hand_loop_pays_too(learn: Learner, totals: dict[tuple[str, str], list[float]],
                                   inside: dict[tuple[str, str], float]) -> None:
    """Time apart the torch scheduler's own step() and the metrics' own update() and compute(): a hand-written loop
    with the same schedule, reporting the same training accuracy, pays them too."""
    from miniai.callbacks.scheduling import BaseSchedCB

    class Timing(Callback):
        order = 21  # right after the scheduling callbacks built their scheduler

        def before_fit(self, learn: Learner) -> None:
            for cb in learn.cbs:
                if isinstance(cb, BaseSchedCB):
                    cb.scheduler.step = _timed_inside(cb.scheduler.step, "the scheduler's own step()", totals, inside)
                if isinstance(cb, MetricsCB):
                    for metric in cb.metrics.values():
                        for method in ("update", "compute"):
                            setattr(metric, method, _timed_inside(getattr(metric, method),
                                                                  "the metrics' own update() and compute()",
                                                                  totals, inside))
    learn.add_cb(Timing())


def readme_learner(dls, device: torch.device, model: nn.Module) -> TrainLearner:
    """The README's learner, plus a per-batch OneCycleLR and a RecorderCB."""
    cbs = [DeviceCB(device), MetricsCB(accuracy=Accuracy()), ProgressCB(mode="terminal"),
           BatchSchedCB(partial(OneCycleLR, max_lr=LR, total_steps=len(dls.train))), RecorderCB(lr=_lr, mom=_mom)]
    return TrainLearner(model, dls, F.cross_entropy, lr=LR, cbs=cbs, opt_func=optim.AdamW)


class _Empty(Callback):
    """A handler that does nothing, timed like the others: the timer's own cost per call."""
    order = 99

    def after_batch(self, learn: Learner) -> None:
        pass


def whole_loop_cost(dls, make_model: Callable[[], nn.Module], pairs: int) -> tuple[list[float], list[float]]:
    """Per-batch seconds of `pairs` paired training passes: the hand loop's and the learner's, alternating order."""
    x, y, bs = dls.train.x, dls.train.y, dls.train.bs
    n_batches = math.ceil(len(x) / bs)

    def hand() -> None:
        model = make_model()
        opt = optim.AdamW(model.parameters(), lr=LR)
        hand_train_pass(model, opt, x, y, bs, OneCycleLR(opt, max_lr=LR, total_steps=n_batches))

    def ours() -> None:
        learn = readme_learner(dls, torch.device("cpu"), make_model())
        quietly(lambda: learn.fit(1, valid=False))
    hand(), ours()  # untimed: first-call costs
    times: dict[str, list[float]] = {"hand": [], "miniai": []}
    for i in range(pairs):
        for name, fn in (("hand", hand), ("miniai", ours))[::1 if i % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / n_batches)
    return times["hand"], times["miniai"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--model", choices=["linear", "reference"], default="linear")
    parser.add_argument("--n-train", type=int, default=15_000)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after an untimed one)")
    parser.add_argument("--pairs", type=int, default=41, help="paired passes for the whole-loop cost (0: skip it)")
    args = parser.parse_args()
    device = torch.device("cpu")
    dls = get_dls(bs=args.bs, n_train=args.n_train, device=device, seed=0)
    make_model = reference_model if args.model == "reference" else lambda: nn.Sequential(nn.Flatten(),
                                                                                         nn.Linear(784, 10))
    if args.pairs:
        hand, ours = whole_loop_cost(dls, make_model, args.pairs)
        diffs = [(m - h) * 1e6 for h, m in zip(hand, ours)]
        print(f"bs {args.bs}, {args.model} model, {len(dls.train)} batches a pass, {args.pairs} pairs; µs per batch, "
              f"median (min-max): hand loop {statistics.median(hand) * 1e6:.0f}, miniai "
              f"{statistics.median(ours) * 1e6:.0f}; miniai - hand {statistics.median(diffs):.1f} "
              f"({min(diffs):.1f} to {max(diffs):.1f}): the whole loop's cost per batch, no timers\n")
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    inside: dict[tuple[str, str], float] = defaultdict(float)
    time_every_handler(totals)

    def run() -> None:
        learn = readme_learner(dls, device, make_model())
        learn.add_cb(_Empty())
        time_what_a_hand_loop_pays_too(learn, totals, inside)
        quietly(lambda: learn.fit(1, valid=False))

    run()  # untimed: imports, allocator, first-call costs
    totals.clear(), inside.clear()
    for _ in range(args.epochs):
        run()
    n_batches = len(dls.train) * args.epochs
    timer = totals.pop(("after_batch", "_Empty.after_batch"))[0] / n_batches
    print(f"bs {args.bs}, {args.model} model, {args.epochs} epochs of {len(dls.train)} batches; µs per training "
          "batch (per call)")
    own_rows = []
    for (event, name), (t, n) in totals.items():
        if event in _PER_FIT or name.startswith("Timing.") or event == "(inside)":
            continue
        t -= inside.get((event, name), 0.0)
        note = " (less the time inside it measured apart, below)" if (event, name) in inside else ""
        own_rows.append((t / n_batches, t / n, event, name + note))
    for per_batch, per_call, event, name in sorted(own_rows, reverse=True):
        print(f"{per_batch * 1e6:8.1f}  ({per_call * 1e6:7.1f})  {event:14s} {name}")
    for (event, name), (t, n) in totals.items():
        if event == "(inside)":
            print(f"{t / n_batches * 1e6:8.1f}  ({t / n * 1e6:7.1f})  {name}, which a hand-written loop doing the same "
                  "pays too: left out of the total")
    total = sum(row[0] for row in own_rows)
    per_batch_handlers = sum(1 for row in own_rows if abs(row[0] - row[1]) < 1e-12)
    print(f"{total * 1e6:8.1f}  in all, per batch: the framework's own handlers, timers included")
    print(f"{timer * 1e6:8.1f}  (an empty handler timed the same way: the timer's own cost a call; the "
          f"{per_batch_handlers} per-batch handlers above carry about {per_batch_handlers * timer * 1e6:.1f} of it)")
    print(f"{(total - per_batch_handlers * timer) * 1e6:8.1f}  in all, less the timers' own cost")


if __name__ == "__main__":
    main()
