"""What each callback costs per batch: every event handler of the benchmark's row-2 learner, timed on its own.

    python bench/callback_costs.py                 # bs 64, a linear model (so the loop's own cost is not hidden)
    python bench/callback_costs.py --model reference --bs 1024

A `TrainLearner` subclass times each handler call with `time.perf_counter` (the timer itself adds ~1 µs a call,
and handlers run with cold caches right after the model's kernels, so treat the numbers as upper bounds that rank
the callbacks, not as their exact cost). Handlers called at least once per batch are listed, most expensive first,
in µs per call. The torch scheduler's own `step()`, which a hand-written loop pays too, is timed on its own and
taken out of BatchSchedCB's row: the last line, the framework's own time per batch, leaves it out.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py, next to this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from overhead import miniai_learner, quietly, reference_model  # noqa: E402

from miniai.data import get_dls  # noqa: E402
from miniai.learner import Callback, Learner, TrainLearner  # noqa: E402


def timed_emit(totals: dict[tuple[str, str], list[float]]):
    """Replacements for `Learner._emit` and `Learner._cleanup` that add each handler's time and calls to `totals`."""
    def timed(self: Learner, event: str) -> None:
        for handler in self._handlers[event]:
            start = time.perf_counter()
            handler(self)
            cell = totals[(event, handler.__qualname__)]
            cell[0] += time.perf_counter() - start
            cell[1] += 1

    def _cleanup(self: Learner, name: str, error: BaseException | None) -> None:
        timed(self, f"cleanup_{name}")  # nothing raises here: no need for the real one's error handling
    return timed, _cleanup


def timed_scheduler_steps(learn: Learner, totals: dict[tuple[str, str], list[float]]) -> None:
    """Time the torch scheduler's own step() apart (a hand-written loop pays it too)."""
    from miniai.callbacks.scheduling import BaseSchedCB

    class Timing(Callback):
        order = 21  # right after the scheduling callbacks built their scheduler

        def before_fit(self, learn: Learner) -> None:
            for cb in learn.cbs:
                if isinstance(cb, BaseSchedCB):
                    step = cb.scheduler.step

                    def timed_step(*args, step=step):
                        start = time.perf_counter()
                        step(*args)
                        cell = totals[("(inside)", "the scheduler's own step()")]
                        cell[0] += time.perf_counter() - start
                        cell[1] += 1
                    cb.scheduler.step = timed_step
    learn.add_cb(Timing())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--model", choices=["linear", "reference"], default="linear")
    parser.add_argument("--n-train", type=int, default=15_000)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after an untimed one)")
    args = parser.parse_args()
    device = torch.device("cpu")
    dls = get_dls(bs=args.bs, n_train=args.n_train, device=device, seed=0)
    make_model = reference_model if args.model == "reference" else lambda: nn.Sequential(nn.Flatten(),
                                                                                         nn.Linear(784, 10))
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])

    class TimedLearner(TrainLearner):
        _emit, _cleanup = timed_emit(totals)

    def run() -> None:
        learn = miniai_learner(dls, device)
        learn.__class__ = TimedLearner  # the benchmark's learner as it is, with its events timed
        learn.model = make_model()
        timed_scheduler_steps(learn, totals)
        quietly(lambda: learn.fit(1, valid=False))

    run()  # untimed: imports, allocator, first-call costs
    totals.clear()
    for _ in range(args.epochs):
        run()
    n_batches = len(dls.train) * args.epochs
    rows = sorted(((t / n, event, name) for (event, name), (t, n) in totals.items() if n >= n_batches),
                  reverse=True)
    print(f"bs {args.bs}, {args.model} model, {args.epochs} epochs of {len(dls.train)} batches; µs per call")
    scheduler = sum(us for us, event, _ in rows if event == "(inside)")
    for us, event, name in rows:
        if name.startswith("BatchSchedCB.cleanup_batch"):
            us -= scheduler
            name += " (less the scheduler's own step)"
        if name != "Timing.before_fit":
            print(f"{us * 1e6:8.1f}  {event:14s} {name}")
    print(f"{(sum(us for us, _, _ in rows) - 2 * scheduler) * 1e6:8.1f}  in all, per batch: the framework's own handlers")


if __name__ == "__main__":
    main()
