"""The learning-rate finder: grow the lr every optimizer step until the loss blows up, then suggest an lr from the curve.

`LRFinderCB` does the growing and stopping; `lr_find(learn)` (also `Learner.lr_find`) runs it on a learner and
puts everything back as it was; the suggestion functions are pure functions of the recorded (lrs, losses).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checks import beside_model, check_count, check_not_in_fit, python_number, warn
from ..distributed import world_size
from ..utils import counted, keeps_workers, loss_reduction, tensors_in
from ..learner import Callback, CancelEpochException, CancelFitException, Learner
from .checkpoint import CheckpointCB
from .ddp import DDPCB
from .guards import EarlyStoppingCB
from ..weighting import batch_n_items
from .metrics import MetricsCB, no_row
from .progress import ProgressCB
from .scheduling import BaseSchedCB, lr_ratios
from .state import kept
from .swa import SWACB

__all__ = ["LRFinderCB", "LRFinderResult", "lr_find", "smooth_losses", "steepest_lr", "valley_lr"]


_WINDOW = 5  # the median of 5 ignores two outliers and lags two batches (lr ×1.7 at gamma 1.3)


class LRFinderCB(Callback):
    """Multiplies every param group's lr by `gamma` after each optimizer step; stops the fit once the typical loss
    (the median of the last `_WINDOW`) exceeds `max_mult` × its minimum so far, or a loss is NaN/inf (then
    `diverged` is True). Records `lrs` (the lr `fit` was given, as it grows: with param groups of their own lrs,
    the one `fit(lr=...)` takes) and `losses` (with gradient accumulation, the mean loss of each step's batches;
    a step a float16 scaler skipped for overflow is no step: its batch's loss joins the next step's mean).

    The stopping rule assumes a non-negative loss. It reads a median, not each loss: one noisy batch (a trained
    model's losses near 0 vary by far more than `max_mult`) must not end the search at its start, while a
    diverging loss, three batches of five, ends it a few batches past the divergence. Validation passes are
    skipped. Each batch's loss is read with `.item()`, a host sync per batch: the finder has to see the value to
    decide whether to stop. Like the
    schedulers it changes the lr at cleanup_batch, so every after_batch reader sees the lr the batch used; don't
    combine it with a scheduling callback, which would overwrite its lr.
    """
    order = 20  # with the schedulers, after MetricsCB
    handles_nonfinite_loss = True  # TerminateOnNaNCB stands aside: the finder stops on a NaN/inf loss itself
    peaks_at_fit_lr = True  # its lrs grow from the lr fit is given, also where opt_func takes none (lr_ratios)

    def __init__(self, gamma: float = 1.3, max_mult: float = 3.0) -> None:
        gamma, max_mult = python_number(gamma), python_number(max_mult)  # (a one-number tensor, a NumPy number)
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) and v > 1 for v in (gamma, max_mult)):
            raise ValueError(f"LRFinderCB needs gamma > 1 (lr growth per batch) and max_mult > 1 (stop when loss > "
                             f"max_mult × min), both finite numbers; got gamma={gamma!r}, max_mult={max_mult!r}")
        self.gamma, self.max_mult = gamma, max_mult
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.batches = 0  # training batches the last search ran: its steps' count, or more under accumulation
        self.diverged = False
        self.bad_batch = False  # whether the batch of a non-finite loss held NaN or inf (the data ended it)
        self._sum_loss = False  # a loss of reduction='sum': recorded per item, as MetricsCB and ProgressCB show it
        self._group_read = 0  # the param group whose lr is recorded
        self.beside: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tensor, its value at before_fit)

    def before_fit(self, learn: Learner) -> None:
        self.lrs, self.losses, self.min, self.batches = [], [], math.inf, 0  # (batches: the steps' under accumulation)
        self._grow, self._group, self._lr0, self.diverged, self.bad_batch = False, [], None, False, False
        # per item (a sum's short last batch would read as a dip)
        self._sum_loss = loss_reduction(getattr(learn, "loss_func", None)) == "sum"
        if not hasattr(learn.opt, "param_groups"):
            raise TypeError(f"LRFinderCB sets the lr in opt.param_groups, which {type(learn.opt).__name__} (opt_func) "
                            "has none: find the lr with a torch.optim optimizer (or one with param_groups)")
        # tensors the optimizer trains beside the model (a temperature), as they are now: lr_find puts them back
        model = getattr(learn, "model", None)  # (a stand-in learner of one's own may have none)
        self.beside = [] if model is None else [(p, p.detach().clone()) for p in beside_model(model, learn.opt)]
        # the lr read is of the first group that grows (one held at lr 0, a frozen body, never does), recorded as
        # the lr fit made the optimizer with (learn.fit_lr), of which that group may run a multiple: as fit and
        # fit_one_cycle take an lr (lr_ratios)
        groups = learn.opt.param_groups
        self._group_read = next((i for i, group in enumerate(groups) if group["lr"]), None)
        if self._group_read is None:
            raise ValueError(f"LRFinderCB grows the lr of the param groups, and every param group's is at lr 0 (as "
                             f"opt_func made them: {type(learn.opt).__name__}): nothing would train. Let opt_func give "
                             "the groups to train the lr it is called with")
        fit_lr = getattr(learn, "fit_lr", None)
        ratios = lr_ratios(learn, float(fit_lr)) if fit_lr and hasattr(learn, "opt_func") else []
        ratio = ratios[self._group_read] if len(ratios) == len(groups) else 0.0
        self._scale = 1.0 / ratio if ratio > 0 else 1.0
        if ratio > 0 and not math.isclose(groups[self._group_read]["lr"], fit_lr * ratio, rel_tol=1e-6):
            for group, group_ratio in zip(groups, ratios):  # opt_func ignores the lr it is given: the search
                _set_lr(group, fit_lr * group_ratio)  # starts at start_lr all the same, each group at its share

    def before_epoch(self, learn: Learner) -> None:
        if not learn.training:
            raise CancelEpochException()  # the finder only looks at training batches

    def after_batch(self, learn: Learner) -> None:
        self.batches += 1
        loss = float(learn.loss.detach().float().item())  # sync point, on purpose (see above)
        self._group.append(loss / batch_n_items(learn) if self._sum_loss else loss)
        if not learn.stepped and math.isfinite(self._group[-1]):
            return  # gradient accumulation: the lr grows per optimizer step, on the group's mean loss
        # (a non-finite loss ends the finder at once: an fp16 scaler skips that step, so none would come)
        loss, self._group = sum(self._group) / len(self._group), []
        if loss < 0:  # (max_mult × a negative minimum: every median above it, the search would stop at once)
            raise ValueError(f"lr_find's stopping rule (the loss's median passes max_mult × its lowest) needs a loss "
                             f">= 0, and this one is {loss:.4g}: shift it up (a constant changes no gradient), or "
                             "find the lr with a loss >= 0")
        lr = float(learn.opt.param_groups[self._group_read]["lr"])  # (a tensor lr: its value, not the tensor)
        if self._lr0 is not None and not math.isclose(lr, self._lr0 * self.gamma, rel_tol=1e-6):
            raise RuntimeError(f"LRFinderCB set lr={self._lr0 * self.gamma:.3g} but the batch ran with {lr:.3g}: "
                               "another callback (a scheduler such as BatchSchedCB?) overwrote it. Remove it from "
                               "the learner's callbacks while finding the lr.")
        self._lr0 = lr
        self.lrs.append(lr * self._scale)
        self.losses.append(loss)
        if len(self.losses) >= _WINDOW and math.isfinite(loss):
            typical = sorted(self.losses[-_WINDOW:])[_WINDOW // 2]
            self.min = min(self.min, typical)
        if not math.isfinite(loss) or self.min < math.inf and typical > self.max_mult * self.min:
            self.diverged = True
            batch = tensors_in(getattr(learn, "batch", None))  # (nested batches too: ((x1, x2), y))
            self.bad_batch = not math.isfinite(loss) and any(
                t.is_floating_point() and not bool(t.isfinite().all()) for t in batch)
            raise CancelFitException()
        self._grow = True  # only after a recorded batch, so lrs[i + 1] == lrs[i] * gamma

    def cleanup_batch(self, learn: Learner) -> None:
        if self._grow:
            for param_group in learn.opt.param_groups:
                _set_lr(param_group, float(param_group["lr"]) * self.gamma)
        self._grow = False


def _set_lr(group: dict[str, Any], lr: float) -> None:
    """Set a param group's lr; a tensor lr (torch's Adam takes one) stays a tensor, a new one: in place, `*=` would
    also grow the other groups sharing it (torch gives them all its default's) and whoever kept it."""
    group["lr"] = torch.full_like(group["lr"], lr) if isinstance(group["lr"], torch.Tensor) else lr


# ------------------------------------------------------------------------------------------------ suggestions

def _finite(lrs: Sequence[float], losses: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses need the same length, got {len(lrs)} and {len(losses)}")
    pairs = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss) and lr > 0]
    if not pairs:
        raise ValueError("no finite loss recorded: nothing to suggest from (is the training loader empty, or "
                         "start_lr already too large?)")
    return [lr for lr, _ in pairs], [loss for _, loss in pairs]


def smooth_losses(losses: Sequence[float], window: int = 5) -> list[float]:
    """Centred moving average over `window` points (fewer at the ends); an even `window` is taken as window + 1,
    the odd number of points centred on each.

    Centred, not an exponential moving average: an EMA lags, and with the lr growing ×1.3 a batch, a lag of a
    few batches would move every feature of the curve to a several times larger lr.
    """
    half = max(window, 1) // 2
    return [sum(losses[max(0, i - half):i + half + 1]) / len(losses[max(0, i - half):i + half + 1])
            for i in range(len(losses))]


def _argmin(values: Sequence[float]) -> int:
    """Index of the smallest value (the first, if tied)."""
    return min(range(len(values)), key=values.__getitem__)


def steepest_lr(lrs: Sequence[float], losses: Sequence[float], window: int = 5) -> float:
    """The lr where the smoothed loss falls fastest per unit of log(lr), looking only before its minimum.

    Past the minimum the loss is rising (diverging), so no point there can be the one to pick. If the loss
    never fell, this is the smallest lr tried: start lower.
    """
    lrs, losses = _finite(lrs, losses)
    smooth = smooth_losses(losses, window)
    lowest = _argmin(smooth)
    if lowest == 0:
        return lrs[0]
    logs = [math.log(lr) for lr in lrs]
    # slope between neighbours i and i+1, credited to the lr where that step started (the lr that produced it)
    slopes = [(smooth[i + 1] - smooth[i]) / max(logs[i + 1] - logs[i], 1e-12) for i in range(lowest)]
    return lrs[min(range(lowest), key=slopes.__getitem__)]


def valley_lr(lrs: Sequence[float], losses: Sequence[float], window: int = 5, frac: float = 2 / 3) -> float:
    """The lr where the smoothed loss, on its way down into the valley, has covered `frac` of its fall.

    The fall runs from the highest smoothed loss before the minimum to the minimum itself; we return the first
    lr past that peak whose smoothed loss is at most `peak - frac × (peak - min)`. Well inside the descent, it
    is safer than the minimum (where the lr is already close to diverging) and, unlike the steepest point,
    does not depend on the slope of a noisy curve. If the loss never fell, the smallest lr tried.
    """
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    lrs, losses = _finite(lrs, losses)
    smooth = smooth_losses(losses, window)
    lowest = _argmin(smooth)
    peak = max(range(lowest + 1), key=smooth.__getitem__)
    if peak == lowest:
        return lrs[0]
    level = smooth[peak] - frac * (smooth[peak] - smooth[lowest])
    return lrs[next(i for i in range(peak, lowest + 1) if smooth[i] <= level)]


@dataclass(repr=False)
class LRFinderResult:
    """What `lr_find` saw: the lr and loss of every batch, and two suggested learning rates."""
    lrs: list[float]
    losses: list[float]
    valley: float = field(default=math.nan)
    steepest: float = field(default=math.nan)
    figure: Any = field(default=None, repr=False, compare=False)  # lr_find's plot (plot=True), to save or close

    @classmethod
    def from_curve(cls, lrs: Sequence[float], losses: Sequence[float]) -> LRFinderResult:
        """Compute the suggestions (valley_lr, steepest_lr) from a recorded curve."""
        return cls(list(lrs), list(losses), valley_lr(lrs, losses), steepest_lr(lrs, losses))

    @property
    def suggestions(self) -> dict[str, float]:
        """{'valley': ..., 'steepest': ...}."""
        return {"valley": self.valley, "steepest": self.steepest}

    def plot(self, ax: Any = None) -> Any:
        """Loss against lr (log axis) with the suggestions marked; returns the Figure."""
        from ..plotting import plot_lr_find  # matplotlib is imported only when a plot is asked for
        return plot_lr_find(self.lrs, self.losses, self.suggestions, ax=ax)

    def __repr__(self) -> str:
        return f"LRFinderResult(valley={self.valley:.3g}, steepest={self.steepest:.3g}, {len(self.lrs)} batches)"


# ------------------------------------------------------------------------------------------------ lr_find

_REAL_FIT_ONLY = (CheckpointCB, BaseSchedCB, SWACB, EarlyStoppingCB)  # callbacks lr_find leaves out


def lr_find(learn: Learner, gamma: float = 1.3, max_mult: float = 3.0, start_lr: float = 1e-5,
            max_epochs: int = 10, plot: bool = True) -> LRFinderResult:
    """Train from `start_lr`, ×`gamma` per optimizer step, until the loss (a median of 5 batches: `LRFinderCB`)
    exceeds `max_mult` × its minimum (or is NaN, or `max_epochs` end); return the curve and suggestions. The model,
    optimizer, learner, loss (a module's buffers, an object's attributes), data loaders' epoch counters (their
    samplers' own too), the generators they draw from and the RNGs (torch's, Python's, NumPy's) are left exactly as
    they were: lr_find is a look, not a training run. The arguments come in the
    course's order (`lr_find(1.2)` is gamma).

    The learner's own callbacks run as in any fit (DeviceCB must; MetricsCB shows no table), and what they record
    of it (MetricsCB's history, its metrics' counts when they have a `state_dict` as miniai's and torcheval's do,
    ActivationStats, and a callback of yours through its `state_dict` if it has one) is put back afterwards too
    (`miniai.callbacks.state.kept`);
    CheckpointCB is left out: the finder's diverging run is never saved. Left out as well, as they belong to the
    real fit: scheduling callbacks (they would set the lr the finder sets), SWACB and EarlyStoppingCB, and (no
    validation pass is run) callbacks watching a validation metric.
    """
    check_not_in_fit(learn, "lr_find", "its own fit would remove the running fit's hooks and close its log files")
    if world_size() > 1 and any(isinstance(cb, DDPCB) for cb in learn.cbs):  # each process would stop on its own
        # loss, and the others would wait for it forever
        raise RuntimeError("lr_find runs in one process: run it before launching torchrun (python script.py), "
                           "then train with the lr it suggests under torchrun")
    if start_lr <= 0:
        raise ValueError(f"start_lr must be > 0 (the lr grows by multiplication), got {start_lr}")
    check_count("lr_find: max_epochs", max_epochs, what=" (passes over dls.train the search may take)")
    if keeps_workers(getattr(learn.dls, "train", None)):
        warn("lr_find draws batches from dls.train's persistent workers, whose random state it can't put "
             "back: the random transforms of the next fit will differ from a fit without lr_find (build the "
             "loaders with persistent_workers=False, or again after lr_find)")
    finder = LRFinderCB(gamma, max_mult)
    with kept(learn, weights=True):
        # left out (and put back by kept): the finder's run is never saved, and has no validation pass to watch
        for cb in [cb for cb in learn.cbs if isinstance(cb, _REAL_FIT_ONLY)
                   or str(getattr(cb, "monitor", None)).startswith("valid_")]:
            learn.rm_cb(cb)
        try:
            learn.fit(max_epochs, train=True, valid=False, cbs=[finder, _NoTable()], lr=start_lr)
        finally:  # (kept puts back the model's parameters; these are the optimizer's alone)
            with torch.no_grad():
                for p, value in finder.beside:
                    p.copy_(value)
                    p.grad = None
        stopper = getattr(learn.stopped_by, "raised_by", None) or finder  # (read before kept puts the learner back)
    if stopper is not finder and not finder.diverged:  # a callback of the learner's ended the finder's fit
        cut = (f"lr_find: {type(stopper).__name__} ended the search (a CancelFitException) after "
               f"{counted(len(finder.losses), 'optimizer step')}: remove it from learn.cbs while finding the lr")
        if not finder.losses:
            raise RuntimeError(cut)
        warn(cut + ", the suggestions are read from a curve it cut short")  # (the warnings below: not its)
    if finder.losses and not math.isfinite(finder.losses[0]):  # before any step: no lr can have caused it
        raise ValueError(f"lr_find: the first loss, computed before any optimizer step, is {finder.losses[0]}: the lr "
                         "is not the cause, and no start_lr helps. Check the data (NaN or inf in a batch's inputs or "
                         "targets), the model's weights (an earlier run that diverged?) and the loss function.")
    result = LRFinderResult.from_curve(finder.lrs, finder.losses)
    finite_lrs, finite = _finite(finder.lrs, finder.losses)
    smooth = smooth_losses(finite)
    diverged = finder.diverged
    steps = f"{len(finite)} optimizer steps" + (f" ({finder.batches} batches)" if finder.batches != len(finder.losses)
                                                else "")  # (gradient accumulation: several batches a step)
    if finder.bad_batch:  # (a diverging lr ends the search too: only a batch that holds NaN or inf is the data's)
        after = f", straight after {finite[-1]:.4g}," if finite else ""
        warn(f"lr_find: the search ended on a {finder.losses[-1]} loss at step {len(finder.losses)}{after} and that "
             "batch holds NaN or inf in its inputs or targets: the data ended it, not the lr, and the suggestions "
             "are read from the curve before it. Check the data, or run lr_find again on other batches.")
    elif diverged and _argmin(smooth) < 3:  # no descent to read a suggestion from
        warn(f"lr_find: the loss rose from the start ({steps}, lowest within the first 3): "
             f"start_lr={start_lr:g} is probably already too large, and the suggestions mean little. "
             f"Try lr_find(start_lr={start_lr / 1000:g}).")
    elif not diverged and len(finite) >= 10 and smooth[0] - min(smooth) <= 0.01 * abs(smooth[0]):
        # (a flat curve's suggestions are start_lr, or wherever its noise dips: either would look like an answer)
        warn(f"lr_find: the loss neither fell (by 1% at most, from {smooth[0]:.4g}) nor diverged over "
             f"{steps}, lr {finite_lrs[0]:.3g} to {finite_lrs[-1]:.3g}: the suggestions mean "
             "nothing. Does the model train at all? (parameters frozen or missing from the optimizer, a "
             "loss that does not depend on the output, targets that cannot be learned)")
    elif not diverged and len(finite) < 10 and stopper is finder:
        warn(f"lr_find: only {steps} before the data ran out (max_epochs={max_epochs}), "
             "too few for the suggestions to mean much: raise max_epochs or use more data.")
    elif not diverged and stopper is finder and _argmin(smooth) >= len(smooth) - 3:
        warn(f"lr_find: the loss still fell when the data ran out (max_epochs={max_epochs}; {steps}, lr "
             f"{finite_lrs[0]:.3g} to {finite_lrs[-1]:.3g}): the search never reached the lrs where it rises, so "
             "the suggestions may be too low. Raise max_epochs or use more data (or a larger gamma).")
    if plot:  # (pyplot's current figure, as any plot's: plt.savefig after it saves it; plt.close it in a sweep)
        result.figure = result.plot()
    return result


class _NoTable(Callback):
    """Keeps MetricsCB's tables and ProgressCB's live loss graph of the finder's passes off the screen: their rows,
    labelled epochs 0, 1, ..., read as epochs of training, its graph as a training run (`kept` puts the loggers
    back; ProgressCB decides again at each fit's before_fit)."""
    order = 31  # after ProgressCB (30) has put its own logger in place

    def before_fit(self, learn: Learner) -> None:
        for cb in learn.cbs:
            if isinstance(cb, ProgressCB):
                cb._graphs = False
            if isinstance(cb, MetricsCB):
                cb._log = no_row  # (on the instance: also over a subclass's own _log, the course's WandBCB)
