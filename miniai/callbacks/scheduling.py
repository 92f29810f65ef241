"""Schedulers as callbacks: step any lr scheduler (torch's or ours) per optimizer step or per epoch; record the lr.

`BatchSchedCB(factory)` and `EpochSchedCB(factory)` take a factory, `factory(opt) -> scheduler` (a scheduler
class, or a `functools.partial` of one with its arguments), and build the scheduler at `before_fit` on the
optimizer that fit just made. They step it exactly where a hand-written torch loop would, `opt.step();
scheduler.step()`, so every schedule gives each batch the lr torch documents:

- `BatchSchedCB` steps after each optimizer step that really happened (`learn.stepped`: the learner's `step`
  returned; `CancelStepException`, raised by gradient accumulation or a grad scaler that skipped a step, means no
  scheduler step). It steps at `cleanup_batch`, after every `after_batch` reader such as `RecorderCB`, so they see
  the lr the batch trained with.
- `EpochSchedCB` steps after the training pass (`cleanup_epoch`), or, for `ReduceLROnPlateau`, after the pass
  whose metric it monitors (`after_epoch`, once MetricsCB has logged it). Nothing steps during validation.
- As in a hand-written loop, the last step leaves in the optimizer the lr of the step after the fit. From epoch
  `learn.schedule_stop` on (set by SWACB, which drives the lr from there) they don't step.

`steps_per_epoch(learn)` is `len(learn.dls.train)`, adjusted by every callback that defines
`optimizer_steps(self, n_batches: int) -> int` (gradient accumulation: `math.ceil(n_batches / n)`); a schedule
that ends (a one-cycle, a cosine, a LinearLR to 0) is checked against the steps the fit takes before the first
batch, also on resume (a one-cycle too short for it is refused; a schedule longer than it is warned of).
"""
from __future__ import annotations

import bisect
import copy
import functools
import inspect
import math
import numbers
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (ChainedScheduler, ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts,
                                      CyclicLR, ExponentialLR, LambdaLR, LinearLR, MultiplicativeLR, MultiStepLR,
                                      OneCycleLR, PolynomialLR, ReduceLROnPlateau, SequentialLR, StepLR)
from torch.optim.swa_utils import SWALR

from ..checks import add_note, follows_lr, own_place, python_number, warn
from ..distributed import is_main_process, world_size
from ..learner import Callback, Learner
from ..supervised import MomentumLearner
from ..utils import counted, frames, without_graph
from .. import schedulers as _schedulers
from ..schedulers import CosineAnnealing, CosineOneCycle, OneCycle, WarmupCosine
from .monitor import check_monitor, name_mode, note_cut_pass, note_unread, same_watch
from .records import keep_records, nothing_recorded, restore_if_refused

__all__ = ["BaseSchedCB", "BatchSchedCB", "EpochSchedCB", "RecorderCB", "steps_per_epoch", "fit_one_cycle",
           "check_one_cycle_room",
           "_lr", "_mom", "_beta1"]

SchedulerFactory = Callable[[Optimizer], Any]
# schedules that end, and their length's name: stepped past it they rise again (cosines), run off their shape or
# stay at lr 0 (PolynomialLR, a LinearLR to 0; a LinearLR to another factor is a warmup that holds its end)
_ONE_CYCLES = (OneCycleLR, CosineOneCycle, OneCycle)  # (a too-short one is pointed to fit_one_cycle)
_COSINES = (CosineAnnealingLR, CosineAnnealing)  # (a too-short one may have wanted restarts)
_CLOSED_FORM = (CosineAnnealing, OneCycle, WarmupCosine, CosineOneCycle)  # ours: set the lr outright, don't chain
# (and torch's that set it outright from the initial lrs, not from the lr the last step left: not chainable either)
_OUTRIGHT = (*_CLOSED_FORM, OneCycleLR, CyclicLR, LambdaLR, CosineAnnealingWarmRestarts)
_GOES_ON = (StepLR, MultiStepLR, ExponentialLR, ConstantLR, LinearLR, CyclicLR, CosineAnnealingWarmRestarts,
            SWALR)  # (torch's schedules that go on without an end: not held to a fit's plan)
_ENDING = ((OneCycleLR, "total_steps"), (CosineOneCycle, "total_steps"), (WarmupCosine, "total_steps"),
           (OneCycle, "T_max"), (CosineAnnealing, "T_max"), (CosineAnnealingLR, "T_max"),
           (PolynomialLR, "total_iters"), (LinearLR, "total_iters"))


def steps_per_epoch(learn: Learner) -> int | None:
    """Optimizer steps one training pass takes: len(dls.train), as changed by callbacks' `optimizer_steps`."""
    try:
        n = len(learn.dls.train)
    except TypeError:  # a loader without a length: the count (and the checks using it) are unknown
        return None
    for cb in learn.cbs:
        if callable(getattr(cb, "optimizer_steps", None)):
            n = cb.optimizer_steps(n)
    return n


def _own_peaks(scheduler: Any) -> tuple[Any, list[float]] | None:
    """(scheduler or its part, its peak lrs) for one that takes its lrs from its own arguments (OneCycleLR's and
    CosineOneCycle's max_lr, CyclicLR's base_lr and max_lr: its max_lrs are the peaks), not from the lrs the
    optimizer was made with."""
    if isinstance(scheduler, (OneCycleLR, CosineOneCycle)):
        return scheduler, [group["max_lr"] for group in scheduler.optimizer.param_groups]
    if isinstance(scheduler, CyclicLR):
        return scheduler, list(scheduler.max_lrs)
    return next(filter(None, map(_own_peaks, getattr(scheduler, "_schedulers", []))), None)


def _check_fit_lr_used(learn: Learner, scheduler: Any, made: list[float], cb: Callback) -> str | None:
    """Refuse `fit(lr=x)` (an lr not the learner's) beside a schedule that peaks at lrs of its own: x would be
    ignored without a word (fit_one_cycle peaks at x); the warning for the learner's own lr (the usual way, at the
    peak) when it is none of the schedule's lrs (a sweep over Learner(lr=...) would run one fit)."""
    from .resume import ResumeCB  # (imported here: resume.py imports this module; a resume checks its lr itself)
    given, own = python_number(learn.fit_lr), python_number(learn.lr)
    if given is None or any(isinstance(cb, ResumeCB) for cb in learn.cbs) or (found := _own_peaks(scheduler)) is None:
        return None
    part, peaks = found
    for lrs in (peaks, part.base_lrs) if isinstance(part, CyclicLR) else (peaks,):  # it peaks at the lr given, or
        if all(math.isclose(x, m, rel_tol=1e-6) for x, m in zip(lrs, made)):  # cycles from it (CyclicLR's base_lr;
            return None  # a one-cycle's start, max_lr / div_factor, is no lr of the user's)
    who = type(cb).__name__
    if own is not None and math.isclose(given, own):  # the learner's own: warned of, not refused (the course gives
        # one beside a schedule, at its peak, or at a group's); 0.1 is the default, which can't be told from one given
        if own == 0.1 or any(math.isclose(given, p, rel_tol=1e-6) for p in [*peaks, *part.base_lrs]):
            return None
        return (f"{type(learn).__name__}(lr={given:g}) is not used: {who}'s {type(part).__name__} sets the lr from its "
                f"own arguments (peak {', '.join(f'{p:g}' for p in peaks)}) at every step, so a sweep over the "
                "learner's lr would run the same fit each time. Give the schedule the peak you mean (its max_lr), or "
                "use learn.fit_one_cycle(n, max_lr=...), which peaks at the lr it is given")
    fix = (f"learn.fit_one_cycle(n, max_lr={given}) peaks at the lr it is given" if own_place(learn, cb) is None else
           f"the {who} is the learner's own (in learn.cbs), so remove it first, learn.rm_cb(...), then e.g. "
           f"learn.fit_one_cycle(n, max_lr={given})")
    if isinstance(part, CyclicLR):  # (not a one-cycle: its own lrs are the way)
        fix = "give the CyclicLR the lrs it cycles between (base_lr=, max_lr=)"
    shown, lrs = ", ".join(f"{p:g}" for p in peaks), ", ".join(f"{m:g}" for m in made)
    peak = (f"peak {shown}) at every step: lr={given} would be ignored" if len(peaks) == 1 else
            f"peaks {shown} for the param groups) at every step: the lrs opt_func made of lr={given} for them "
            f"({lrs}) would be ignored (to keep them, give the schedule a peak per group, max_lr=[{lrs}])")
    raise ValueError(f"this fit's lr={given} (fit(lr=), or fit_one_cycle's max_lr) with {who}'s "
                     f"{type(part).__name__}, which sets the lr from its own arguments ({peak}. "
                     + ("Leave lr= out (the schedule sets the lr)" if own is not None else  # (none to leave it to)
                        f"Set learn.lr = {peaks[0]:g} and leave lr= out (the schedule sets the lr from its own)")
                     + f", or give the schedule the peak you want ({fix})")


# these only scale the lr they find at their steps: an lr given on resume is the lr from there on, which they go on from
SCALING = (ExponentialLR, StepLR, MultiStepLR, MultiplicativeLR, ReduceLROnPlateau)


def scales_only(scheduler: Any) -> bool:
    """Whether `scheduler` (every part of a ChainedScheduler) only scales the lr it finds at its steps (SCALING); a
    SequentialLR does not: it starts its next part at a milestone from that part's base_lrs, the run's first."""
    if isinstance(scheduler, ChainedScheduler):
        return all(map(scales_only, scheduler._schedulers))
    return isinstance(scheduler, SCALING)


def sets_lr_from_start(cb: Callback) -> bool:
    """Whether `cb` is a scheduling callback whose schedule sets the lr from where the run began (not one that only
    scales the lr it finds): an lr given on resume would be overwritten."""
    return isinstance(cb, BaseSchedCB) and not scales_only(getattr(cb, "scheduler", None))


def _sets_outright(scheduler: Any) -> bool:
    """Whether `scheduler`, or a part of it, sets the lr outright at each step (_OUTRIGHT)."""
    return isinstance(scheduler, _OUTRIGHT) or any(_sets_outright(p) for p in getattr(scheduler, "_schedulers", []))


def check_one_cycle_room(what: str, n_epochs: int, per_epoch: int) -> None:
    """Raise ValueError when a one-cycle over `n_epochs` × `per_epoch` optimizer steps has no room for its peak."""
    total = n_epochs * per_epoch
    if total < 2:  # its peak in the middle needs a step before and after (one step trains at max_lr / 25 / 1e4)
        raise ValueError(f"{what} needs at least 2 optimizer steps, and this fit has {total} ({counted(n_epochs, 'epoch')} "
                         f"of {counted(per_epoch, 'batch', 'batches')}): train more epochs or use smaller batches")


def _is_plateau(factory: Any) -> bool:
    """Whether the factory (a class or a partial of one) builds a ReduceLROnPlateau, when that can be told."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return isinstance(factory, type) and issubclass(factory, ReduceLROnPlateau)


def _chained_outright(scheduler: Any, chained: bool = False) -> Any:
    """A scheduler that sets the lr outright (_OUTRIGHT) under a ChainedScheduler with other parts, at any depth (a
    chain inside a SequentialLR, a SequentialLR inside a chain), or None; `chained`: `scheduler` is under a chain."""
    parts = getattr(scheduler, "_schedulers", [])
    chained = chained or isinstance(scheduler, ChainedScheduler) and len(parts) > 1
    if chained and isinstance(scheduler, _OUTRIGHT):
        return scheduler
    return next((found for p in parts for found in [_chained_outright(p, chained)] if found is not None), None)


def _started_at_a_milestone(scheduler: Any) -> tuple[Any, int] | None:
    """A SequentialLR or ChainedScheduler that a SequentialLR starts at one of its milestones (a part after its
    first), at any depth, with that milestone: torch starts such a part with its get_lr(), which these have none of."""
    parts = getattr(scheduler, "_schedulers", [])
    if isinstance(scheduler, SequentialLR):
        late = next(((p, m) for p, m in zip(parts[1:], scheduler._milestones)
                     if isinstance(p, (SequentialLR, ChainedScheduler))), None)
        if late is not None:
            return late
    return next((found for p in parts for found in [_started_at_a_milestone(p)] if found is not None), None)


def _course_name(attribute: str) -> property:
    """The course's name for `attribute`, read and set as it."""
    return property(lambda self: getattr(self, attribute), lambda self, value: setattr(self, attribute, value),
                    doc=f"The course's name for `{attribute}`.")


class BaseSchedCB(Callback):
    """Builds `factory(learn.opt)` at before_fit; subclasses decide when it steps (see the module docstring).

    Attributes: `scheduler` (built at before_fit, kept after the fit; the course calls it `schedo`, and `factory`
    `sched`: both read alike; a subclass's own before_fit calls super's, which builds it), `n_steps` (how often it
    stepped, counting from the start of the run when resumed).
    """
    order = 20  # after MetricsCB (10): ReduceLROnPlateau reads the metric it just logged

    def __init__(self, factory: SchedulerFactory) -> None:
        if not callable(factory):
            raise TypeError(f"{type(self).__name__} takes a factory, callable(opt) -> scheduler, e.g. "
                            f"partial(lr_scheduler.StepLR, step_size=2); got {factory!r}")
        self.factory = factory
        self.scheduler: Any = None
        self._groups = 0  # the optimizer's param groups when the schedule was built
        self.n_steps = 0
        self._opt: Optimizer | None = None  # the optimizer it was built on (not every scheduler exposes it)
        self._per_epoch: int | None = None  # optimizer steps per training pass in this fit
        self._learn: Learner | None = None  # the learner of the running fit (None outside a fit)

    @property
    def schedo(self) -> Any:
        """The course's name for `scheduler`, which before_fit builds (set, it says to call that instead)."""
        return self.scheduler

    @schedo.setter
    def schedo(self, scheduler: Any) -> None:  # (the course's subclasses built it in their own before_fit)
        raise TypeError(f"{type(self).__name__} sets schedo (the course's BaseSchedCB way), and BaseSchedCB builds "
                        "its scheduler itself at before_fit, from factory (the course's sched), with the checks "
                        "that keep two schedules from fighting: in your before_fit, call super().before_fit(learn) "
                        "instead; a subclass chooses when it steps (after_batch or after_epoch: self._step(learn))")

    sched = _course_name("factory")

    @property
    def peaks_at_fit_lr(self) -> bool:
        """Whether the schedule peaks at the lr fit is given (fit_one_cycle's), where opt_func takes none."""
        return getattr(self.factory, "peaks_at_fit_lr", False)

    def before_fit(self, learn: Learner) -> None:
        if "train" not in learn.passes:  # an evaluation steps nothing: the last training fit's scheduler stays
            return
        self._read, self._read_any, self._cut = False, False, []  # (passes cut before a value was read: note_unread)
        if not hasattr(learn.opt, "param_groups"):  # (the course's own SGD class)
            raise TypeError(f"{type(self).__name__} steps an lr schedule through the optimizer's param_groups, as "
                            f"torch's schedulers do, and learn.opt ({type(learn.opt).__name__}) has none: make it "
                            "with one of torch.optim's (opt_func=optim.SGD), or a subclass of torch.optim.Optimizer; "
                            "or set your optimizer's lr yourself, in a callback's before_batch")
        # the lrs opt_func made of the fit's lr, as numbers: the scheduler built below fills a tensor lr in place
        made = [float(group["lr"]) for group in learn.opt.param_groups]
        try:
            scheduler = self.factory(learn.opt)
        except TypeError as e:  # a scheduler class given bare, its own arguments missing: say how to pass them
            if not isinstance(self.factory, type):
                raise
            needed = [f"{name}=..." for name, p in list(inspect.signature(self.factory).parameters.items())[1:]
                      if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            cls = self.factory.__name__
            raise TypeError(f"{type(self).__name__} calls its factory with the optimizer alone, and the class {cls} "
                            f"needs more ({e}): give it the rest with a partial, e.g. {type(self).__name__}(partial("
                            f"{cls}, {', '.join(needed) or '...'}))") from e
        except ZeroDivisionError as e:  # torch's OneCycleLR steps once when built: a first phase of no steps
            if not _raised_in(e, OneCycleLR):  # (a user's own lambda dividing by zero is theirs to see)
                raise
            raise ValueError(f"{type(self).__name__}'s factory failed building a OneCycleLR: {_ONE_CYCLE_PHASE}") from e
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"{type(self).__name__}'s factory returned {scheduler!r}, which has no step(); "
                            f"the factory must return a scheduler built on the optimizer it is given")
        if getattr(scheduler, "optimizer", learn.opt) is not learn.opt:  # it would leave learn.opt's lr alone
            raise ValueError(f"{type(self).__name__}'s factory returned a {type(scheduler).__name__} built on another "
                             "optimizer than learn.opt: fit makes a new optimizer each time, so the factory must "
                             "build the scheduler on the optimizer it is given, e.g. partial(OneCycleLR, max_lr=0.1, "
                             "total_steps=n)")
        outright = _chained_outright(scheduler)
        if outright is not None:  # each step would discard what the others did
            raise ValueError(f"{type(self).__name__}'s ChainedScheduler holds {type(outright).__name__}, which is not "
                             "chainable: it sets the lr outright from each group's initial lr at every step, so it "
                             "discards the other schedulers' changes. For a cosine use torch's CosineAnnealingLR, "
                             "which chains; or run schedules one after another with SequentialLR")
        started = _started_at_a_milestone(scheduler)
        if started is not None:  # (it fails there, mid-fit, with a bare NotImplementedError)
            part = type(started[0]).__name__
            raise ValueError(f"{type(self).__name__}'s SequentialLR starts {part} at its milestone {started[1]}, "
                             f"which torch can't do (it starts a part there with get_lr(), which {part} has none "
                             "of). Put the schedules one after another in one SequentialLR, each with its "
                             "milestone, or nest it as the first part only")
        other = next((cb for cb in learn.cbs if isinstance(cb, BaseSchedCB) and cb is not self and cb._learn is learn),
                     None)  # (another scheduling callback of this fit, built before this one)
        if other is not None and (_sets_outright(scheduler) or _sets_outright(other.scheduler)):
            names = f"{type(other.scheduler).__name__} and {type(scheduler).__name__}"
            raise ValueError(f"two scheduling callbacks set the lr in this fit ({names}), and one sets it outright at "
                             "every step, discarding the other's change (fit_one_cycle adds one of its own): keep one "
                             "(learn.rm_cb(...)), or run them one after another in a SequentialLR")
        # (fit_one_cycle's peaks at the fit's lr; the warning comes after the checks: a fit refused says one thing)
        unused = None if self.peaks_at_fit_lr else _check_fit_lr_used(learn, scheduler, made, self)
        self.scheduler, self._opt, self.n_steps, self._per_epoch = scheduler, learn.opt, 0, steps_per_epoch(learn)
        self._groups = len(learn.opt.param_groups)  # (a group added since fails some schedules' step: _advance)
        self._check(learn)
        self._check_length(learn)
        self._check_last_phase(learn)
        self._learn = learn
        if unused:
            warn(unused)

    def cleanup_fit(self, learn: Learner) -> None:
        self._learn = None

    def _check(self, learn: Learner) -> None:
        """Subclass checks, run at before_fit once the scheduler is built."""

    def _total_steps(self, learn: Learner) -> int | None:
        """Steps this fit will take the scheduler through, from the start of the run (None if unknown)."""
        return None  # (a subclass of the course's kind, stepping with _step, says nothing of its length)

    def _check_length(self, learn: Learner) -> None:
        total = self._total_steps(learn)
        if total == 0 and learn.schedule_stop == 0 and "train" in learn.passes:  # (swa_start=0)
            warn(f"{type(self.scheduler).__name__} never steps in this fit: SWACB drives the lr from epoch 0 "
                 "(swa_start=0), and schedules run only before it, so it schedules nothing (its first lr is "
                 "at most where SWALR anneals from). Leave the scheduling callback out, or start SWA later.")
        if not total:  # unknown, or a fit of no epochs, which steps no schedule (torch builds none of length 0)
            return
        name, epochs = type(self.scheduler).__name__, _epochs_scheduled(learn)
        how = (f"{counted(epochs, 'epoch')}, and EpochSchedCB steps once per epoch" if isinstance(self, EpochSchedCB)
               else f"{counted(epochs, 'epoch')} × {self._per_epoch} optimizer steps per epoch")
        for part, runs in _ending_parts(self.scheduler, total):  # (of a SequentialLR the last part, of a chain all)
            field, capacity = _length(part)
            if field is None and isinstance(part, LinearLR) and part.end_factor != part.start_factor:
                field, capacity = "total_iters", part.total_iters  # (to a floor, not 0: _length leaves it out)
            if field is not None and capacity > runs:
                # legitimate for a trial run, but usually a length counted wrong: the lr never comes down
                where = "" if part is self.scheduler else f" (in {name}, running the last {runs} steps)"
                warn(f"{type(part).__name__}{where} has {field}={capacity} but this fit takes {counted(total, 'step')} "
                     f"({how}): the fit ends before the schedule does, with the lr it has at step {runs}, "
                     f"not at its end. If that is not on purpose, build it with {field}={runs}"
                     + (" (under DDP, len(dls.train) read before the fit counts every process's batches: "
                        "fit_one_cycle counts this process's)" if world_size() > 1 else "") + ".")
        sched = self.scheduler
        # (the last batch trains after total - 1 steps: a decay of that length ends at it)
        if isinstance(sched, LinearLR) and 0 < sched.end_factor < sched.start_factor and sched.total_iters < total - 1:
            warn(f"LinearLR decays the lr to {sched.end_factor:g} × over total_iters={sched.total_iters} steps, and "
                 f"this fit takes {counted(total, 'step')} ({how}): the rest train at that end lr. If that is not on "
                 f"purpose, build it with total_iters={total - 1} (the last batch then trains at the end lr)")
        rise = round(sched.total_size * sched.step_ratio) if isinstance(sched, CyclicLR) else 0
        if rise >= total:
            warn(f"CyclicLR rises for step_size_up={rise} steps, and this fit takes {counted(total, 'step')} ({how}): "
                 "its lr never reaches max_lr. If that is not on purpose, count step_size_up in this fit's steps "
                 "(CyclicLR is stepped per batch: BatchSchedCB)")
        if isinstance(self, BatchSchedCB):  # (a step_size or gamma meant per epoch: the lr gone to nothing)
            decay = _decay(sched, total)
            if decay is not None and decay < 1e-6:
                warn(f"{name} takes the lr down to {decay:.1e} × its start by this fit's last batch ({how}): a "
                     f"step_size, milestones or gamma meant per epoch? Step it once per epoch with EpochSchedCB, or "
                     f"count them in optimizer steps ({self._per_epoch} an epoch)")
        # (the lr set at the last scheduled step is where SWALR anneals from, when SWACB takes over: one there is
        # used; with anneal_epochs=0 SWALR sets swa_lr at once)
        from .swa import SWACB  # (here: swa.py's users import this module first)
        anneals = any(isinstance(cb, SWACB) and cb.anneal_epochs for cb in learn.cbs)
        used = total + (learn.schedule_stop is not None and anneals)  # steps whose lr a batch (or SWALR) takes up
        from .checkpoint import CheckpointCB  # (here: checkpoint.py imports this module)
        # its one step comes after every batch (a checkpoint keeps the lr it sets, for a resume to go on with)
        one_epoch = used == 1 and isinstance(self, EpochSchedCB) and not any(isinstance(cb, CheckpointCB)
                                                                              for cb in learn.cbs)
        if one_epoch:
            swa = learn.schedule_stop is not None  # (SWACB takes over after the first epoch)
            warn(f"EpochSchedCB steps {name} after each epoch, and this fit schedules one ("
                 + ("SWACB takes over after it" if swa else "it trains one") + "): every batch trains with the lr "
                 "the schedule starts at, and none with an lr a step sets. "
                 + ("Start SWA later, or step it per batch with BatchSchedCB." if swa else "Each fit builds its "
                    "schedule anew, so fit(1) three times is not fit(3): fit for more epochs, or step it per batch "
                    "with BatchSchedCB."))
        # (a schedule that never ends, counted in other steps: len(dls.train) under DDP, or per batch)
        for late in () if one_epoch else _steps_past(self.scheduler, used):
            warn(f"{late}this fit's {counted(total, 'step')} ({how}): no batch trains with the lr it "
                 "sets there. If that is not on purpose, count it in this fit's steps"
                 + (" (under DDP, len(dls.train) read before the fit counts every process's batches)"
                    if world_size() > 1 else "") + ".")
        if isinstance(self.scheduler, (SequentialLR, ChainedScheduler)):
            for part, start, end in _spans(self.scheduler, total):
                field, capacity = _length(part)
                if field and capacity < end - start:
                    raise ValueError(f"{type(part).__name__} (in {type(self.scheduler).__name__}, from step {start}) "
                                     f"has {field}={capacity} but runs {end - start} steps there, to the end of this "
                                     f"fit's {total}: build it with {field}={end - start}")
            return
        field, capacity = _length(self.scheduler)
        # one step short, the last batch (under EpochSchedCB the whole last epoch) trains with the schedule's end
        # value, often lr 0; a one-cycle would even step past its end, which torch refuses
        if field is None or capacity >= total:
            return
        if learn.resumed_from is not None:
            raise ValueError(f"resuming a {name} of {field}={capacity} into a fit that takes {total} steps "
                             f"({how}): a schedule that ends can't be extended. Resume with the saved run's length "
                             "to finish it, then start a new fit (e.g. learn.fit_one_cycle(n, max_lr)) for more. (A "
                             "run with SWACB scheduled only its epochs before swa_start: resume it with the same "
                             "SWACB, which the checkpoint's warning names if it is left out.)")
        hint = ""  # what the schedule may have been meant for, and the way to it
        if isinstance(self.scheduler, _ONE_CYCLES):
            hint = ", or call learn.fit_one_cycle(n_epochs, max_lr), which computes it"
            if isinstance(self.scheduler, OneCycle):  # (ours is a triangle, which repeats past T_max)
                hint += " (torch's policy), or for repeated triangles on purpose CyclicLR(..., cycle_momentum=False)"
        elif isinstance(self.scheduler, _COSINES):
            hint = ", or for restarts on purpose CosineAnnealingWarmRestarts"
        elif isinstance(self.scheduler, WarmupCosine) and self.scheduler.min_lr > 0:  # (it holds min_lr past its end)
            hint = (", or to hold min_lr past it on purpose, follow it with ConstantLR(factor=min_lr / lr, "
                    f"total_iters={total - capacity}) in a SequentialLR")
        raise ValueError(f"{name} has {field}={capacity} but this fit takes {total} steps ({how}): build it "
                         f"with {field}={total}{hint}.")

    def _check_last_phase(self, learn: Learner) -> None:
        """Refuse a OneCycleLR whose last phase has no steps (pct_start=1.0) when this fit would step into it.

        torch divides by the length of the phase a step lands in: a first phase of no steps fails when it is built
        (caught in before_fit), a last one at step `total_steps`, the step after the fit's last batch, so the last
        epoch's validation and checkpoint would be lost (SWACB, which skips that step, never gets there).
        """
        total = self._total_steps(learn)
        if total is None or learn.schedule_stop is not None:
            return
        for sched, reached in _parts_reached(self.scheduler, total):
            ends = [phase["end_step"] for phase in sched._schedule_phases] if isinstance(sched, OneCycleLR) else []
            if ends and ends[-1] == ends[-2] and reached >= sched.total_steps:
                raise ValueError(f"{_ONE_CYCLE_PHASE} (This one: total_steps={sched.total_steps}, phases ending at "
                                 f"steps {[round(e, 6) for e in ends]}; this fit steps it {reached} times.)")

    def _step(self, learn: Learner) -> None:
        """Step the scheduler if training (the course's `_step`, for subclasses that choose their own event)."""
        if learn.training:
            self._advance(learn)

    def _advance(self, learn: Learner, *metric: float) -> None:
        if learn.opt is not self._opt:  # (each fit makes one: a callback replaced it during this one)
            raise RuntimeError(f"learn.opt was replaced during the fit, and {type(self).__name__}'s "
                               f"{type(self.scheduler).__name__} steps the optimizer it was built on: the new one's lr "
                               "would stay as it was made. Change the optimizer between fits (learn.opt_func = ...), "
                               "not during one")
        stop = learn.schedule_stop
        if stop is not None and not (isinstance(learn.epoch, int) and learn.epoch < stop):
            return
        if stop is not None and self._last_step_ends(learn):
            self._held = True  # (a later step of the scheduled epochs is one past the plan: cleanup_batch)
            return  # the next epochs (SWA's) train with the lr this step sets: one past a cycle's end, even < 0
        try:
            self.scheduler.step(*metric)
        except ZeroDivisionError as e:  # a OneCycleLR's empty last phase, unseen before the fit without len(dls)
            if not _raised_in(e, OneCycleLR):
                raise
            raise ValueError(f"{type(self).__name__}'s OneCycleLR failed at step {self.n_steps + 1}: "
                             f"{_ONE_CYCLE_PHASE}") from e
        except (KeyError, ValueError, IndexError) as e:  # (torch's own, naming neither the schedule nor the group;
            # schedules that scale each group's lr take a new one, and a schedule of one's own raises its own errors)
            if len(learn.opt.param_groups) <= self._groups or not _raised_in_library_schedule(e):
                raise
            raise ValueError(f"the optimizer has {len(learn.opt.param_groups)} param groups, its schedule "
                             f"({type(self.scheduler).__name__}) was built for {self._groups}, and a group added "
                             "since has no lr in it. Add param groups before the schedule is built (in a callback's "
                             f"before_fit, one of order < {type(self).order})") from e
        self.n_steps += 1

    def _last_step_ends(self, learn: Learner) -> bool:
        """Whether this is the last step of the scheduled epochs, of a schedule that ends there."""
        total = self._total_steps(learn)
        return total is not None and self.n_steps + 1 >= total and _ends_at(self.scheduler, total)

    # --- checkpointing -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A copy of: `scheduler` (its own state_dict) and its class (with its parts'), `n_steps`, `steps_per_epoch`,
        and `param_groups` (each group's lr and momentum/betas, which the scheduler sets but keeps in the optimizer)."""
        if self.scheduler is None:
            raise RuntimeError(f"{type(self).__name__} builds its scheduler at before_fit; call state_dict() "
                               f"during or after a fit")
        groups = [{key: group[key] for key in ("lr", "momentum", "betas", *_SCHEDULE_KEYS) if key in group}
                  for group in self._opt.param_groups]  # (the keys it wrote there: to name those changed on resume)
        return copy.deepcopy({"scheduler": self.scheduler.state_dict(), "n_steps": self.n_steps,
                              "steps_per_epoch": self._per_epoch, "param_groups": groups,
                              "scheduler_class": _structure(self.scheduler)})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`, during a fit (after this callback's before_fit, as `fit(resume=...)` does).

        The state is first checked against this fit: the same scheduler class, the same optimizer steps per
        epoch, and a one-cycle long enough for it; nothing is changed if it is refused.
        """
        learn = self._learn
        if self.scheduler is None or learn is None:
            raise RuntimeError(f"{type(self).__name__} builds its scheduler at before_fit: load its state during "
                               "a fit, after that (learn.fit(n, resume=path) does)")
        saved_class, ours = state.get("scheduler_class"), _structure(self.scheduler)
        if saved_class is not None and "(" not in saved_class:  # (saved before the parts were: the class alone)
            ours = type(self.scheduler).__name__
        if saved_class is not None and saved_class != ours:  # its state would make a hybrid of the two schedules
            raise ValueError(f"the checkpoint's {type(self).__name__} ran a {saved_class}, this fit's builds a {ours}: "
                             f"resume with the saved run's scheduler, or start a new fit from its weights")
        groups = self._opt.param_groups
        if len(state["param_groups"]) != len(groups):
            raise ValueError(f"the saved state has {len(state['param_groups'])} param groups but the optimizer has "
                             f"{len(groups)}; load it into a learner built the same way")
        saved_per_epoch = state.get("steps_per_epoch")
        if isinstance(self, BatchSchedCB) and None not in (saved_per_epoch, self._per_epoch) \
                and saved_per_epoch != self._per_epoch:
            raise ValueError(f"the checkpoint's schedule took {saved_per_epoch} optimizer steps per epoch, this fit "
                             f"takes {self._per_epoch} (another batch size, dataset or accumulation): the schedule "
                             "would run out of step with the epochs. Resume with the saved run's settings.")
        fresh = self.scheduler.state_dict()
        self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
        try:
            self._check_length(learn)
            # (SWACB's SWALR sets the lr only after this schedule's last step, whose lr _last_lr holds)
            alone = not any(isinstance(cb, BaseSchedCB) and cb is not self for cb in learn.cbs)
            _check_lambdas(self.scheduler, alone)
        except ValueError:
            self.scheduler.load_state_dict(fresh)
            raise
        # what the schedule wrote into the param groups when built (OneCycleLR's max_lr, its first and last lr from
        # div_factor; older checkpoints kept none), then its own settings
        # (a schedule that only scales the lr it finds goes on from the lr it finds, a resume's lr= too: the lr it
        # was built from, initial_lr, is no setting of its shape)
        keys = [k for k in _SCHEDULE_KEYS if k != "initial_lr" or not scales_only(self.scheduler)]
        changed = [f"param group {i} {k}: {old[k]} saved, {now[k]} here" for i, (old, now) in
                   enumerate(zip(state["param_groups"], groups)) for k in keys
                   if k in old and k in now and old[k] != now[k]]
        changed += _settings_changed(state["scheduler"], fresh)
        if changed:  # torch's load_state_dict puts the saved settings back: say so, never silently
            warn(f"resuming {type(self).__name__}: its {ours} was built with other settings than the saved "
                 f"run's ({'; '.join(changed)}): the saved ones are kept, so the run continues as it was. "
                 "To train with the new ones, start a new fit from the checkpoint's weights.")
        self.n_steps = state["n_steps"]
        for group, saved in zip(groups, state["param_groups"]):
            group.update(saved)


_ONE_CYCLE_PHASE = ("OneCycleLR has a phase of no steps (pct_start=1.0, or pct_start × total_steps = 1, or for "
                    "three_phase 2 × pct_start × total_steps = total_steps + 1): torch divides by each phase's "
                    "length, so it fails with ZeroDivisionError when a step lands there. Use a pct_start with "
                    "pct_start × total_steps > 1 and pct_start < 1 (fit_one_cycle's default is 0.3), or more steps")


def _raised_in_library_schedule(error: BaseException) -> bool:
    """Whether `error` was raised in torch's lr_scheduler module or in miniai.schedulers, with no code of one's own
    between the step and it (a LambdaLR's lambda that calls `cosine_lr` raises its own errors)."""
    library = (torch.optim.lr_scheduler.__file__, _schedulers.__file__)
    inside = [frame.f_code.co_filename in library for frame in frames(error)]
    return True in inside and all(inside[inside.index(True):])


def _raised_in(error: BaseException, cls: type) -> bool:
    """Whether `error` was raised inside a method of a `cls` object (a frame of its traceback has such a `self`)."""
    return any(isinstance(frame.f_locals.get("self"), cls) for frame in frames(error))


def _parts_reached(scheduler: Any, reached: int) -> Iterator[tuple[Any, int]]:
    """`(scheduler, the step count it reaches)` when it is stepped `reached` times, then the same for each part of a
    SequentialLR (a part runs from its milestone, and stops one short of the next, where the next part takes over)
    or a ChainedScheduler (every part runs every step)."""
    yield scheduler, reached
    parts = getattr(scheduler, "_schedulers", [])
    if isinstance(scheduler, SequentialLR):
        bounds = [0, *scheduler._milestones]
        for i, part in enumerate(parts):
            if bounds[i] > reached:
                break
            handed_on = i + 1 < len(bounds) and bounds[i + 1] <= reached
            yield from _parts_reached(part, (bounds[i + 1] - 1 if handed_on else reached) - bounds[i])
    else:
        for part in parts:
            yield from _parts_reached(part, reached)


_SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")  # a schedule's own, in groups
_COUNTERS = {"last_epoch", "best", "num_bad_epochs", "cooldown_counter", "base_lrs", "lr_lambdas", "total_steps",
             "T_i", "T_cur"}
# (what a scheduler counts as it steps, warm restarts' cycle and step in it too; base_lrs follow the lr given; a
# length, total_steps, is checked on its own; lr_lambdas, functions torch does not save, by _check_lambdas)
# (OneCycleLR's pct_start, three_phase and anneal_strategy; SequentialLR's milestones)
_PRIVATE_SETTINGS = {"_schedule_phases", "_anneal_func_type", "_milestones"}


def _settings_changed(saved: dict[str, Any], fresh: dict[str, Any], part: str = "") -> list[str]:
    """The settings of a scheduler's state (gamma, T_max, patience...) that differ between the saved run's and this
    fit's, each as 'name saved (saved) vs new (here)'; the parts of a SequentialLR or ChainedScheduler too."""
    changed = []
    for key, value in fresh.items():
        if key == "_schedulers":
            for i, (old, new) in enumerate(zip(saved.get(key, []), value)):
                changed += _settings_changed(old, new, f"{part}part {i}'s ")
        elif (not key.startswith("_") or key in _PRIVATE_SETTINGS) and key not in _COUNTERS and key in saved \
                and saved[key] != value:
            (name, old), (_, new) = _as_argument(key, saved), _as_argument(key, fresh)
            if old != new:  # (a OneCycleLR's phases follow its length, which is named on its own: pct_start alike)
                changed.append(f"{part}{name} {old} (saved) vs {new} (here)")
    return changed


def _as_argument(key: str, state: dict[str, Any]) -> tuple[str, str]:
    """A scheduler's setting as the argument that set it: OneCycleLR's private phases as its pct_start."""
    if key == "_schedule_phases":  # (torch's: the first phase ends at step pct_start x total_steps - 1)
        phases = state[key]
        return "pct_start", f"{(phases[0]['end_step'] + 1) / state['total_steps']:.6g}" + (
            " (three_phase=True)" if len(phases) == 3 else "")
    return {"_anneal_func_type": "anneal_strategy", "_milestones": "milestones"}.get(key, key), repr(state[key])


def _check_lambdas(scheduler: Any, alone: bool) -> None:
    """Raise if a LambdaLR's or MultiplicativeLR's function (a function, a method, a partial: torch saves none of
    them, where it restores a callable object's attributes) gives, at the loaded step, another lr than the saved
    run's gave (`_last_lr`, in the saved state): the resumed run would follow another schedule (a closure over
    another run length). A LambdaLR anywhere in the schedule (a part a SequentialLR has not started yet aside); a
    MultiplicativeLR, which scales the lr it finds, only when it is the fit's one schedule (`alone`): another one's
    steps are in the lr too. Saving calls nothing."""
    for part in [scheduler, *getattr(scheduler, "_schedulers", [])]:
        multiplies = isinstance(part, MultiplicativeLR)
        if not isinstance(part, LambdaLR) and not (multiplies and alone and part is scheduler) or part.last_epoch < 0:
            continue
        step = part.last_epoch
        for i, (fn, base, saved) in enumerate(zip(part.lr_lambdas, part.base_lrs, part._last_lr)):
            if not isinstance(fn, (types.FunctionType, types.MethodType, functools.partial)):
                continue
            try:  # torch's own arithmetic: base × f(step), or base × f(1) × ... × f(step)
                lr = base * fn(step) if not multiplies else base
                for k in range(1, step + 1) if multiplies else ():
                    lr = lr * fn(k)
                lr = float(lr)
            except Exception:  # noqa: BLE001 -- (it fails at the next step then, with its own error)
                continue
            if not math.isclose(lr, float(saved), rel_tol=1e-6, abs_tol=1e-12):
                raise ValueError(f"the saved run's {type(part).__name__} set param group {i}'s lr to {saved:.6g} at "
                                 f"its step {step}, and this fit's lr_lambda gives {lr:.6g} there: torch saves no "
                                 "function, so the resumed run would follow another schedule. Resume with the saved "
                                 "run's lr_lambda (built for the same run length), or start a new fit from the "
                                 "checkpoint's weights.")


def _structure(scheduler: Any) -> str:
    """The scheduler's class, and its parts' in a SequentialLR or ChainedScheduler: `SequentialLR(LinearLR, StepLR)`."""
    parts = getattr(scheduler, "_schedulers", None)
    name = type(scheduler).__name__
    return name if parts is None else f"{name}({', '.join(_structure(p) for p in parts)})"


def _length(scheduler: Any) -> tuple[str | None, int]:
    """The name and value of the length of a schedule that ends (see _ENDING), or (None, 0)."""
    if isinstance(scheduler, LinearLR) and scheduler.end_factor != 0:
        return None, 0
    field = next((f for cls, f in _ENDING if isinstance(scheduler, cls)), None)
    return (field, getattr(scheduler, field)) if field else (None, 0)


def _spans(scheduler: SequentialLR | ChainedScheduler, total: int) -> Iterator[tuple[Any, int, int]]:
    """Each part of a SequentialLR or ChainedScheduler stepped `total` times, with the steps it runs from and to."""
    if isinstance(scheduler, SequentialLR):  # each part runs from its milestone to the next (one may lie past them)
        bounds = [0, *(min(m, total) for m in scheduler._milestones), total]
        yield from zip(scheduler._schedulers, bounds, bounds[1:])
    else:  # every part runs all the fit
        yield from ((part, 0, total) for part in scheduler._schedulers)


def _steps_past(scheduler: Any, total: int, within: str = "") -> Iterator[str]:
    """Milestones of a MultiStepLR or SequentialLR, a StepLR's step_size, at or past the `total` steps it runs
    (its parts' too, from where each starts), as words: the lr changes there after the fit's last batch trained."""
    name = type(scheduler).__name__
    milestones = scheduler.milestones if isinstance(scheduler, MultiStepLR) else scheduler._milestones if isinstance(
        scheduler, SequentialLR) else ()
    late = sorted(m for m in milestones if m >= total)
    past = f"at or past its {total} steps, of " if within else "at or past "
    if late:
        yield f"{name}'s milestone{'s' * (len(late) > 1)} {', '.join(map(str, late))}{within} lie" \
              f"{'s' * (len(late) == 1)} {past}"
    if isinstance(scheduler, StepLR) and scheduler.step_size >= total:
        yield f"{name}'s step_size={scheduler.step_size}{within} lies {past}"
    if isinstance(scheduler, (SequentialLR, ChainedScheduler)):
        for part, start, end in _spans(scheduler, total):
            if end > start:  # (a part that never runs: its SequentialLR's milestone is warned of)
                yield from _steps_past(part, end - start, f" (in {name}{f', from step {start}' if start else ''})")


def _decay(scheduler: Any, total: int) -> float | None:
    """The factor a StepLR, MultiStepLR or ExponentialLR stepped `total` times has multiplied the lr by when the
    last batch trains (after `total - 1` steps), or None for another schedule."""
    if isinstance(scheduler, StepLR):
        return scheduler.gamma ** ((total - 1) // scheduler.step_size)
    if isinstance(scheduler, MultiStepLR):
        return scheduler.gamma ** sum(n for m, n in scheduler.milestones.items() if m <= total - 1)
    if isinstance(scheduler, ExponentialLR):
        return scheduler.gamma ** (total - 1)
    return None


def _ending_parts(scheduler: Any, steps: int) -> Iterator[tuple[Any, int]]:
    """The schedules that set the lr when `scheduler` has stepped `steps` times, each with the steps it has run by
    then: the scheduler itself; of a SequentialLR, the part running then; of a ChainedScheduler, every part."""
    parts = getattr(scheduler, "_schedulers", None)
    if not parts:
        yield scheduler, steps
    elif isinstance(scheduler, SequentialLR):
        i = bisect.bisect_right(scheduler._milestones, steps)
        yield from _ending_parts(parts[i], steps - (scheduler._milestones[i - 1] if i else 0))
    else:
        for part in parts:
            yield from _ending_parts(part, steps)


def _ends_at(scheduler: Any, steps: int) -> bool:
    """Whether a schedule that sets the lr after `steps` steps (see _ENDING) ends there."""
    return any(_length(part)[0] for part, _ in _ending_parts(scheduler, steps))


def _epochs_scheduled(learn: Learner) -> int:
    """How many of the fit's epochs schedules drive (all of them, unless SWACB takes over earlier)."""
    return learn.n_epochs if learn.schedule_stop is None else min(learn.n_epochs, learn.schedule_stop)


class BatchSchedCB(BaseSchedCB):
    """Step the scheduler once per optimizer step, between training batches: `BatchSchedCB(partial(OneCycleLR, ..))`."""

    def __init__(self, factory: SchedulerFactory) -> None:
        if _is_plateau(factory):
            raise TypeError(_PLATEAU_PER_BATCH)
        super().__init__(factory)
        self._trained_lr = math.nan  # the lr of the fit's last optimizer step
        self._total: int | None = None  # the steps it was planned for (each fit)
        self._held = False  # whether SWACB's stop held its last planned step (each fit)

    def _total_steps(self, learn: Learner) -> int | None:
        return None if self._per_epoch is None else _epochs_scheduled(learn) * self._per_epoch

    def _check(self, learn: Learner) -> None:
        if isinstance(self.scheduler, ReduceLROnPlateau):
            raise TypeError(_PLATEAU_PER_BATCH)
        self._total, self._held = self._total_steps(learn), False  # (the plan, and whether its last step is held)

    def cleanup_batch(self, learn: Learner) -> None:
        # here rather than at after_step, so every after_batch reader sees the lr this batch trained with; and
        # learn.stepped, not an after_step handler, which a callback before this one may cancel after the step
        if learn.stepped and self._learn is not None:
            if self._total is not None and (self.n_steps >= self._total or self._held):  # a step past the plan
                self._check_past_plan(learn)
            # (for after_fit's word: the step below moves it on, a tensor lr in place; copied, not read, which on a
            # GPU would wait for it every batch)
            lr = self._opt.param_groups[0]["lr"]
            self._trained_lr = lr.detach().clone() if isinstance(lr, torch.Tensor) else lr
            self._advance(learn)

    def _check_past_plan(self, learn: Learner) -> None:
        """The fit's scheduled epochs took more steps than the schedule was planned for (passes of other lengths
        than len(dls.train) may sum to it: no matter): refused, unless the part that runs the next step is one of
        torch's that go on without an end (StepLR: over an IterableDataset read by workers, whose len() is torch's
        estimate, a pass may run longer), not at its own end; a schedule that ends or a function of the step (a
        lambda, a class of one's own) would run off its plan (a cosine climbs back)."""
        stop = learn.schedule_stop  # (past it SWACB's SWALR drives the lr, and schedules stand down)
        if stop is not None and not (isinstance(learn.epoch, int) and learn.epoch < stop):
            return
        steps = self.n_steps + 1
        if not _ends_at(self.scheduler, steps) and all(
                isinstance(part, _GOES_ON) for part, _ in _ending_parts(self.scheduler, steps)):
            return
        raise ValueError(f"{type(self.scheduler).__name__} was planned for {self._total} optimizer steps "
                         f"({self._per_epoch} a training pass, from len(dls.train) when the fit began), and this fit's "
                         "training passes took more (a callback's learn.dl of another length, a loader whose length "
                         "changed or is an estimate: an IterableDataset read by workers): the schedule would run off "
                         "its plan (a cosine climbs back, a one-cycle fails, a lambda of the step goes on). Keep the "
                         "training loader's length through the fit, or change the data between fits")

    def after_fit(self, learn: Learner) -> None:
        total = self._total_steps(learn)
        if self._learn is None or total is None or not _ends_at(self.scheduler, total):
            return  # an evaluation, a loader without a length, or a schedule that never ends
        # the schedule steps with the optimizer: steps that did not happen leave it short of its end (1%: a few
        # float16 overflow skips at the start of a long run leave the lr at its end, near enough)
        if total - self.n_steps > max(1, total // 100):
            warn(f"{type(self.scheduler).__name__} took {self.n_steps} of the {total} steps this fit planned "
                 f"for it: {total - self.n_steps} optimizer steps did not happen (passes cut short or batches "
                 "skipped by a callback, float16 overflows MixedPrecisionCB skipped, batches dropped before "
                 "their step under GradAccumCB, a CancelStepException: a callback of yours that skips steps on "
                 "purpose gives schedules the steps a pass takes with optimizer_steps(self, n_batches)), and the "
                 "schedule steps with the optimizer, so it ended short of its end: "
                 + (f"the last batch trained at lr {float(self._trained_lr):.3g}." if self.n_steps else
                    "it never stepped."))


_PLATEAU_PER_BATCH = ("ReduceLROnPlateau steps once per epoch with a metric, not per batch: use "
                      "EpochSchedCB(partial(ReduceLROnPlateau, ...), monitor='valid_loss')")


class EpochSchedCB(BaseSchedCB):
    """Step the scheduler once per epoch, after the training pass; `ReduceLROnPlateau` needs `monitor=`.

    `monitor` is a name MetricsCB logs (`valid_loss`, `valid_accuracy`, `train_loss`, ...): the scheduler is then
    stepped with `learn.metrics.last[monitor]` after the pass that logs it (the MetricsCB's that logs it, when a fit
    has two).
    """
    _metrics: Any = None  # the MetricsCB that logs `monitor` (check_monitor finds it each fit)

    def __init__(self, factory: SchedulerFactory, monitor: str | None = None) -> None:
        if _is_plateau(factory) and monitor is None:
            raise TypeError(_PLATEAU_NO_MONITOR)
        super().__init__(factory)
        self.monitor = monitor

    def _total_steps(self, learn: Learner) -> int | None:
        return _epochs_scheduled(learn)

    def _check(self, learn: Learner) -> None:
        plateau = isinstance(self.scheduler, ReduceLROnPlateau)
        if plateau and self.monitor is None:
            raise TypeError(_PLATEAU_NO_MONITOR)
        if self.monitor is None:
            return
        if not plateau:
            raise TypeError(f"monitor={self.monitor!r} is for ReduceLROnPlateau, but the factory built a "
                            f"{type(self.scheduler).__name__}, whose step() takes no metric: drop monitor=")
        self._metrics = check_monitor(learn, self.monitor, type(self).__name__, self.order)
        way = name_mode(self.monitor)
        if way is None:  # the name says neither way: the scheduler's mode stands, if it was chosen
            chosen = "mode" in getattr(self.factory, "keywords", {}) or self.scheduler.mode != "min"
            if not chosen:  # torch's default 'min' would cut the lr while a score that rises improves
                raise ValueError(f"ReduceLROnPlateau watches {self.monitor!r}, whose name doesn't say whether it "
                                 "falls or rises as the model improves, and no mode was given (torch's default is "
                                 "'min'): pass mode='min' or mode='max', partial(ReduceLROnPlateau, mode=...)")
            return
        if self.scheduler.mode != way:  # torch's default is 'min', whatever is watched
            raise ValueError(f"ReduceLROnPlateau(mode={self.scheduler.mode!r}) watches {self.monitor!r}, which "
                             f"{'falls' if way == 'min' else 'rises'} as it improves: it would cut the lr while the "
                             f"model gets better. Pass mode={way!r} to ReduceLROnPlateau")

    @property
    def mode(self) -> str | None:
        """Whether the metric watched improves as it falls ('min') or rises ('max'): its ReduceLROnPlateau's."""
        return getattr(self.scheduler, "mode", None)

    def state_dict(self) -> dict[str, Any]:
        """BaseSchedCB's, with what a ReduceLROnPlateau watches: `monitor` and `mode`."""
        return {**super().state_dict(), "monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """BaseSchedCB's; a plateau that watched another metric (or way) in the saved run looks for its best afresh,
        with a warning, as EarlyStoppingCB and CheckpointCB do (its saved best is of another metric)."""
        if self.monitor is None or same_watch(self, state, f"EpochSchedCB's {type(self.scheduler).__name__}"):
            return super().load_state_dict(state)
        fresh = self.scheduler.state_dict()
        watch = {key: fresh[key] for key in ("mode", "mode_worse", "best", "num_bad_epochs")}
        super().load_state_dict({**state, "scheduler": {**state["scheduler"], **watch}})

    def after_epoch(self, learn: Learner) -> None:
        if self._learn is None:  # an evaluation: the last training fit's scheduler is kept as it was
            return
        if self.monitor is not None and learn.training == self.monitor.startswith("train_"):
            self._read = True
            self._advance(learn, self._metrics.last[self.monitor])

    def cleanup_epoch(self, learn: Learner) -> None:
        # cleanup, not after_epoch: a training pass cut short (CancelEpochException) is still an epoch, if it
        # trained (a fit ended at its first batch, EarlyStoppingCB's way, took no step: nor does the schedule)
        if self.monitor is None and learn.training and learn.pass_steps:
            self._advance(learn)
        elif self.monitor is not None and self._learn is not None:
            note_cut_pass(self, learn)

    def cleanup_fit(self, learn: Learner) -> None:
        if self.monitor is not None and self._learn is not None:
            note_unread(self, learn, f"EpochSchedCB's {type(self.scheduler).__name__}")
        super().cleanup_fit(learn)


_PLATEAU_NO_MONITOR = ("ReduceLROnPlateau needs the metric it watches: pass monitor=, a name MetricsCB logs, e.g. "
                       "EpochSchedCB(partial(ReduceLROnPlateau, mode='min', patience=2), monitor='valid_loss')")


def lr_ratios(learn: Learner, lr: float) -> list[float]:
    """Each of `learn.opt`'s param groups' lr over the lr fit takes, as `opt_func` makes them for `lr` (a body at a
    tenth: 0.1; a group it gives a fixed lr: that over `lr`); over the highest group's when opt_func ignores the lr
    it is given (the groups' lrs the same for 2 × `lr`); a group a callback added since: its lr over
    `learn.fit_lr`. fit_one_cycle's max_lr and lr_find's lrs are that lr, as in `fit`."""
    params = list(learn.model.parameters())
    made = [float(group["lr"]) for group in learn.opt_func(params, lr).param_groups]
    added = [float(group["lr"]) / learn.fit_lr if getattr(learn, "fit_lr", 0.0) else 1.0
             for group in getattr(learn.opt, "param_groups", [])[len(made):]]  # (no optimizer yet: none)
    top = max(made, default=0.0)
    if not lr or top <= 0:
        return [1.0] * len(made) + added
    follows = follows_lr(learn.opt_func, params, lr, made)
    return [made_lr / (lr if follows else top) for made_lr in made] + added


def fit_one_cycle(learn: Learner, n_epochs: int, max_lr: float | None = None, *, pct_start: float = 0.3,
                  div_factor: float = 25.0, final_div_factor: float = 1e4, base_momentum: float = 0.85,
                  max_momentum: float = 0.95, cycle_momentum: bool | None = None, cbs: Any = None,
                  **fit_kwargs: Any) -> None:
    """Fit with torch's OneCycleLR stepped per optimizer step: lr up to `max_lr` and down, momentum/beta1 inverse.

    `max_lr` is the peak of the lr `fit(lr=...)` takes: each param group peaks at the lr `opt_func` gives it for
    `max_lr` (a body at a tenth of it at `max_lr / 10`, a head at 10 × at `10 * max_lr`), so the lr `lr_find`
    suggests means the same here as in `fit` (`lr_ratios`; an opt_func that ignores the lr it is given has its
    highest group peak at `max_lr`).

    The total steps are counted at before_fit (`n_epochs` × optimizer steps per epoch, fewer than batches under
    gradient accumulation), so the cycle ends exactly on the fit's last step. `cycle_momentum=None` cycles
    momentum (SGD) or beta1 (Adam family), between `max_momentum` and `base_momentum`, as torch's OneCycleLR does:
    plain SGD (momentum 0) then trains with momentum too, except on a `MomentumLearner`, which carries its own;
    `cycle_momentum=False` leaves it as it is (bounds given then, or where nothing cycles, are refused). Other keyword
    arguments go to `fit` (`resume=path` continues a saved one-cycle run: the checkpoint then brings the lr).
    """
    for name in ("lr", "lr_max"):  # fit's lr would clash with the one fit_one_cycle passes; lr_max is fastai's
        if name in fit_kwargs:
            raise TypeError(f"fit_one_cycle takes the cycle's peak as max_lr: fit_one_cycle({n_epochs}, "
                            f"max_lr={fit_kwargs[name]!r})")
    if "wd" in fit_kwargs:  # (fastai's)
        kind = getattr(learn.opt_func, "__name__", "optim.AdamW")
        raise TypeError(f"fit_one_cycle has no wd: weight decay is the optimizer's: opt_func=partial("
                        f"{'optim.' * (kind in vars(torch.optim))}{kind}, weight_decay={fit_kwargs['wd']!r}) for the "
                        "learner")
    div = fit_kwargs.get("div", div_factor)
    fastais = {  # (fastai's names for torch's)
        "div": (f"div_factor={div!r}", ""),
        "div_final": (f"final_div_factor={fit_kwargs.get('div_final', 1) / div!r}", ": the final lr, max_lr / "
                      "div_final in fastai, is max_lr / (div_factor × final_div_factor) in torch's OneCycleLR"),
        "moms": ("max_momentum={!r}, base_momentum={!r}".format(*tuple(fit_kwargs.get("moms") or (0.95, 0.85))[:2]),
                 "")}
    for name, (meant, why) in fastais.items():
        if name in fit_kwargs:
            raise TypeError(f"fit_one_cycle has no {name} (fastai's): fit_one_cycle({n_epochs}, {meant}){why}")
    fit_names = inspect.signature(learn.fit).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in fit_names.values())  # (a subclass's wrapper)
    unknown = next((name for name in fit_kwargs if name not in fit_names and not takes_any), None)
    if unknown is not None:  # (named as fit_one_cycle's, not as fit's, a call the user did not make)
        raise TypeError(f"fit_one_cycle() got an unexpected keyword argument {unknown!r}: it takes max_lr, "
                        "pct_start, div_factor, final_div_factor, base_momentum, max_momentum, cycle_momentum, cbs "
                        f"and fit's {', '.join(n for n in fit_names if n not in ('n_epochs', 'cbs', 'lr'))}")
    max_lr = learn.lr if max_lr is None else max_lr
    if isinstance(max_lr, torch.Tensor) and max_lr.numel() == 1:  # (fit takes one as its number)
        max_lr = max_lr.item()
    max_lr = python_number(max_lr)  # (a NumPy one: no checkpoint could be loaded)
    if max_lr is not None and (isinstance(max_lr, bool) or not isinstance(max_lr, numbers.Real)):
        raise TypeError(f"fit_one_cycle's max_lr is one number, the peak of the lr fit takes (the param groups "
                        f"keep the ratios to it that opt_func gives them); got {max_lr!r}. For peaks of your own per "
                        "group use BatchSchedCB(partial(OneCycleLR, max_lr=[...], total_steps=...))")

    def one_cycle(opt: Optimizer) -> OneCycleLR:
        per_epoch = steps_per_epoch(learn)
        if per_epoch is None:
            raise TypeError("fit_one_cycle needs len(dls.train) to count the steps of the cycle; this train "
                            "loader has no length: use BatchSchedCB(partial(OneCycleLR, total_steps=...))")
        # (a MomentumLearner carries its own momentum in the gradients: plain SGD's would be a second one)
        own = set(getattr(opt, "defaults", {}))  # (an optimizer of one's own may have no defaults)
        cycle = cycle_momentum if cycle_momentum is not None else bool({"momentum", "betas"} & own) \
            and not (isinstance(learn, MomentumLearner) and "momentum" in own)
        if not cycle and (base_momentum, max_momentum) != (0.85, 0.95):  # bounds asked for, and nothing cycled
            fix = "Leave them out, or (cycle_momentum=True) cycle an optimizer's own"
            why = ("cycle_momentum=False" if cycle_momentum is False else
                   f"a MomentumLearner carries its own momentum (mom={learn.mom}) in the gradients, so the optimizer's "
                   "is not cycled: set learn.mom, or use TrainLearner with SGD(momentum=...)"
                   if isinstance(learn, MomentumLearner) and "momentum" in own else
                   f"{type(opt).__name__} has no momentum or betas to cycle")
            if not {"momentum", "betas"} & own:  # (torch's OneCycleLR refuses cycle_momentum=True for it)
                fix = "Leave them out, or use an optimizer with momentum or betas (SGD(momentum=...), Adam)"
            raise ValueError(f"fit_one_cycle(base_momentum={base_momentum}, max_momentum={max_momentum}) would not be "
                             f"used: {why}. {fix}")
        if max_lr is not None:  # (on resume as in the saved run, so the peaks compare with the checkpoint's)
            peaks = [max_lr * ratio for ratio in lr_ratios(learn, max_lr)]
        elif resuming:  # a learner built without an lr: the saved run's peaks (the checkpoint brings them anyway),
            from .resume import ResumeCB  # from the checkpoint fit(resume=...) has read already
            saved = next(cb for cb in learn.cbs if isinstance(cb, ResumeCB)).state["optimizer"]["param_groups"]
            peaks = [g.get("max_lr", 1.0) for g in saved]
        else:
            raise ValueError("fit_one_cycle needs max_lr, the cycle's peak: this learner was built without an lr")
        check_one_cycle_room("fit_one_cycle" + (" before SWACB's start" if learn.schedule_stop is not None else ""),
                             _epochs_scheduled(learn), per_epoch)
        try:
            return OneCycleLR(opt, max_lr=peaks, total_steps=_epochs_scheduled(learn) * per_epoch,
                              pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor,
                              cycle_momentum=cycle, base_momentum=base_momentum, max_momentum=max_momentum)
        except ZeroDivisionError as e:  # (it steps once when built)
            raise ValueError(_ONE_CYCLE_PHASE) from e
    one_cycle.peaks_at_fit_lr = True  # type: ignore[attr-defined]  # (fit's lr is max_lr: not one it ignores)
    resuming = fit_kwargs.get("resume") is not None
    settings = dict(pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor,
                    base_momentum=base_momentum, max_momentum=max_momentum, cycle_momentum=cycle_momentum)
    defaults = inspect.signature(fit_one_cycle).parameters
    given = "".join(f", {k}={v!r}" for k, v in settings.items() if v != defaults[k].default)  # (the note repeats them)
    learn._resume_call = f"learn.fit_one_cycle({n_epochs}, max_lr={max_lr!r}{given}{{passes}}, resume={{path!r}})"
    try:
        # an lr given to fit on resume replaces the checkpoint's; here it is only the cycle's peak, so leave it out
        # (an evaluation, train=False, needs none either)
        training = fit_kwargs.get("train", True)
        learn.fit(n_epochs, cbs=[*(cbs or []), BatchSchedCB(one_cycle)],
                  lr=None if resuming or not training else max_lr, **fit_kwargs)
    finally:
        learn._resume_call = None


# --- recording ---------------------------------------------------------------------------------------------------
class RecorderCB(Callback):
    """Record `fn(self)` for each `name=fn` after every training batch: `RecorderCB(lr=_lr, mom=_mom)`.

    The functions read `self.pg` (the optimizer's first param group, a dict with `lr`, `momentum` or `betas`, ...)
    and `self.learn`. `recs[name]` is the list of values, one per training batch of the last fit that trained (an
    evaluation, fit(train=False), leaves them); recorded at `after_batch`, which still sees the hyperparameters the
    batch trained with (schedulers step after it), so a batch whose `after_batch` a cancel skipped is left out,
    even one that stepped (`CancelBatchException` raised in `after_step`).
    """
    order = 25  # after the scheduling callbacks (20), so their after_* work is done; they step later anyway

    def __init__(self, **fns: Callable[[RecorderCB], Any]) -> None:
        self.fns = fns
        self.recs: dict[str, list[Any]] = {name: [] for name in fns}
        self.learn: Learner | None = None

    d = _course_name("fns")

    @property
    def pg(self) -> dict[str, Any]:
        """The optimizer's first param group, looked up on each read (loading an optimizer state replaces it)."""
        return self.learn.opt.param_groups[0]

    @pg.setter
    def pg(self, group: dict[str, Any]) -> None:  # (the course's before_fit sets it: it is looked up each read)
        pass

    def before_fit(self, learn: Learner) -> None:
        self.learn = learn
        if "train" in learn.passes:  # an evaluation (fit(train=False)) records nothing: the last fit's stay
            keep_records(self, "recs")  # (a fit refused before its first batch puts them back)
            self.recs = {name: [] for name in self.fns}

    def cleanup_fit(self, learn: Learner) -> None:
        restore_if_refused(self, learn)

    def after_batch(self, learn: Learner) -> None:
        if learn.training:
            for name, fn in self.fns.items():
                try:
                    value = fn(self)
                except Exception as e:
                    add_note(e, f"(RecorderCB's function for {name!r} ({getattr(fn, '__name__', fn)}) raised it: "
                                "it reads self.pg, the optimizer's first param group, and self.learn; _mom reads "
                                "momentum or Adam's beta1, _beta1 only Adam's)")
                    raise
                # (tensors of the batch, its loss say, would keep the batch's whole graph alive; a tensor lr
                # or a weight's view, kept as it is, would show the fit's last value at every batch)
                self.recs[name].append(without_graph(value, copy=True))

    def state_dict(self) -> dict[str, Any]:
        """A copy of `recs`, so a resumed fit's recording continues the interrupted one's."""
        return {"recs": copy.deepcopy(self.recs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `recs` (during a fit: before_fit starts them afresh); a name new here starts with NaN (not drawn)
        for each batch the saved run recorded, so its values stay at their batches; a state recording none of this
        callback's names is refused."""
        if state["recs"] and self.fns and not set(state["recs"]) & set(self.fns):  # another RecorderCB's records
            raise ValueError(f"this RecorderCB records {', '.join(self.fns)}, and the state given to it recorded "
                             f"{', '.join(state['recs'])}: resuming, give the RecorderCBs in the order of the run "
                             "resumed from (checkpoints match callbacks of a class by their order)")
        done = max(map(len, state["recs"].values()), default=0)
        self.recs = {name: list(state["recs"].get(name, [math.nan] * done)) for name in self.fns}

    def plot(self, path: str | None = None) -> Any:
        """One panel per recorded quantity against the batch index; saved as an image when `path` is given."""
        if not self.fns:
            raise ValueError("RecorderCB() records no quantity, so there is nothing to plot: give it name=function "
                             "pairs, e.g. RecorderCB(lr=_lr, mom=_mom)")
        if not any(self.recs.values()):
            raise nothing_recorded("RecorderCB", self.learn is not None, "learn.fit(1, cbs=[rec])",
                                   "it records each training batch, as the batch ends: an evaluation fit(train=False) "
                                   "(which keeps the last training fit's records), or a fit whose training passes were "
                                   "cancelled before a batch ended, records nothing. Plot after a fit that trains "
                                   "(learn.fit(1, cbs=[rec]))")
        from ..plotting import plot_recorder  # here: matplotlib is slow to import and only plots need it
        fig = plot_recorder(self.recs)
        if path is not None and is_main_process():  # under DDP every rank records the same values; rank 0 writes
            fig.savefig(os.path.expanduser(path), dpi=100)
        return fig


def _lr(cb: RecorderCB) -> float:
    """The learning rate of the first param group."""
    return float(cb.pg["lr"])


def _beta1(cb: RecorderCB) -> float:
    """Adam-family beta1 of the first param group (the momentum one-cycle schedules cycle)."""
    return float(cb.pg["betas"][0])


def _mom(cb: RecorderCB) -> float:
    """SGD momentum, or beta1 for the Adam family: whichever the optimizer has; a MomentumLearner's `mom` when the
    optimizer has none (it carries its momentum in the gradients)."""
    if "betas" in cb.pg:
        return _beta1(cb)
    if "momentum" in cb.pg:
        own, carried = float(cb.pg["momentum"]), getattr(cb.learn, "mom", None)
        return float(carried) if not own and isinstance(carried, (int, float)) else own
    raise KeyError("the optimizer's param group has neither 'momentum' nor 'betas': record _lr only")
