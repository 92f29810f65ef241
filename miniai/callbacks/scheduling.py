"""Schedulers as callbacks: step any lr scheduler (torch's or ours) per optimizer step or per epoch; record the lr.

`BatchSchedCB(factory)` and `EpochSchedCB(factory)` take a factory, `factory(opt) -> scheduler` (a scheduler
class, or a `functools.partial` of one with its arguments), and build the scheduler at `before_fit` on the
optimizer that fit just made. Two rules hold for every scheduler:

- **A batch trains with the lr its schedule says, during the whole batch.** `BatchSchedCB` steps the scheduler
  between batches (at `cleanup_batch`, after every `after_batch` reader such as `RecorderCB`), and only for
  batches whose optimizer really stepped (those that reached `after_step`: `CancelStepException`, raised by
  gradient accumulation or a grad scaler that skipped a step, means no scheduler step). `EpochSchedCB` steps
  after the training pass (`cleanup_epoch`), or, for `ReduceLROnPlateau`, after the pass whose metric it
  monitors (`after_epoch`, once MetricsCB has logged it). Nothing steps during validation.
- **The lr left after the fit is the schedule's last value, not one past it.** The scheduler is not stepped
  after the fit's final optimizer step (or final epoch), because nothing would train with that lr, and torch's
  `OneCycleLR` stepped once more extrapolates (a linear anneal goes negative). The final step is known by
  counting: a fit takes `n_epochs * steps_per_epoch(learn)` optimizer steps.

`steps_per_epoch(learn)` is `len(learn.dls.train)`, adjusted by every callback that defines
`optimizer_steps(self, n_batches: int) -> int` (gradient accumulation: `math.ceil(n_batches / n)`). That method is
the seam for callbacks that change how many optimizer steps a training pass takes; it is asked at `before_fit`.
"""
from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from ..distributed import is_main_process
from ..learner import Callback, Learner
from ..schedulers import CosineOneCycle

__all__ = ["BaseSchedCB", "BatchSchedCB", "EpochSchedCB", "RecorderCB", "steps_per_epoch", "_lr", "_mom", "_beta1"]

SchedulerFactory = Callable[[Optimizer], Any]
_ONE_CYCLES = (OneCycleLR, CosineOneCycle)  # schedules that end: running past total_steps is a mistake


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


def _factory_class(factory: Any) -> Any:
    """The class a factory builds when that can be told without calling it (a class or a partial of one)."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory if isinstance(factory, type) else None


def _is_plateau(factory: Any) -> bool:
    cls = _factory_class(factory)
    return cls is not None and issubclass(cls, ReduceLROnPlateau)


class BaseSchedCB(Callback):
    """Builds `factory(learn.opt)` at before_fit; subclasses decide when it steps (see the module docstring).

    Attributes: `scheduler` (built at before_fit, kept after the fit), `n_steps` (optimizer steps, or epochs, seen
    in this fit; the scheduler has stepped once for each but the fit's last) and `total_steps` (how many this fit
    takes, or None when the train loader has no length).

    `stand_down(epoch)` hands the lr over to another callback from that epoch on (SWACB calls it with `swa_start`
    before this callback's before_fit): the scheduler stops stepping there, and the fit's step count (and a one
    cycle's `total_steps` check) ends there too. `stop_epoch` holds that epoch, None when the schedule runs on.
    """
    order = 20  # after MetricsCB (10): ReduceLROnPlateau reads the metric it just logged

    def __init__(self, factory: SchedulerFactory) -> None:
        if not callable(factory):
            raise TypeError(f"{type(self).__name__} takes a factory, callable(opt) -> scheduler, e.g. "
                            f"partial(lr_scheduler.StepLR, step_size=2); got {factory!r}")
        self.factory = factory
        self.scheduler: Any = None
        self._opt: Optimizer | None = None  # the optimizer it was built on (not every scheduler exposes it)
        self.n_steps = 0
        self.total_steps: int | None = None
        self._in_fit = False
        self._pending_state: dict[str, Any] | None = None
        self._skipped: list[float] | None = None  # arguments of the fit's last step, which _advance leaves out
        self.stop_epoch: int | None = None

    def stand_down(self, epoch: int | None) -> None:
        """Stop stepping from the start of `epoch` (another callback drives the lr from there); None: run to the end.

        Call it before this callback's before_fit (order 20) so the fit's step count ends at `epoch` too.
        """
        if epoch is not None and epoch < 0:
            raise ValueError(f"stand_down takes the epoch the schedule stops at (>= 0) or None; got {epoch}")
        self.stop_epoch = epoch

    def _epochs_scheduled(self, learn: Learner) -> int:
        """How many of the fit's epochs this schedule drives (all of them unless it stands down earlier)."""
        return learn.n_epochs if self.stop_epoch is None else min(learn.n_epochs, self.stop_epoch)

    def _scheduling(self, learn: Learner) -> bool:
        """Whether this epoch is the schedule's (False from stop_epoch on, and in passes with no epoch number)."""
        # SWACB validates the averaged model after the fit as epoch 'swa': no schedule covers that pass
        return self.stop_epoch is None or (isinstance(learn.epoch, int) and learn.epoch < self.stop_epoch)

    def _steps_in_fit(self, learn: Learner) -> int | None:
        raise NotImplementedError

    def _check(self, learn: Learner) -> None:
        """Subclass checks, run at before_fit once the scheduler is built."""

    def before_fit(self, learn: Learner) -> None:
        scheduler = self.factory(learn.opt)
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"{type(self).__name__}'s factory returned {scheduler!r}, which has no step(); "
                            f"the factory must return a scheduler built on the optimizer it is given")
        self.scheduler, self._opt, self.n_steps, self._skipped = scheduler, learn.opt, 0, None
        self.total_steps = self._steps_in_fit(learn)
        self._check(learn)
        self._check_one_cycle(learn)
        self._in_fit = True
        if self._pending_state is not None:  # load_state_dict was called before the fit: apply it now
            self._load(self._pending_state)
            self._pending_state = None

    def cleanup_fit(self, learn: Learner) -> None:
        self._in_fit = False

    def _check_one_cycle(self, learn: Learner) -> None:
        capacity = self.scheduler.total_steps if isinstance(self.scheduler, _ONE_CYCLES) else None
        if capacity is None or self.total_steps is None or capacity >= self.total_steps:
            return
        name = type(self.scheduler).__name__
        if isinstance(self, EpochSchedCB):
            how = f"{self._epochs_scheduled(learn)} epochs, and EpochSchedCB steps once per epoch"
        else:
            epochs = self._epochs_scheduled(learn)
            how = (f"{epochs} epochs × {self.total_steps // max(1, epochs)} optimizer steps per epoch, i.e. "
                   f"len(dls.train) * n_epochs without gradient accumulation")
        raise ValueError(f"{name} has total_steps={capacity} but this fit takes {self.total_steps} steps ({how}): "
                         f"build it with total_steps={self.total_steps}, or call learn.fit_one_cycle(n_epochs, "
                         f"max_lr), which computes it.")

    def _advance(self, *metric: float) -> None:
        """Count one interval; step the scheduler unless it was the fit's last (nothing would use the next lr)."""
        self.n_steps += 1
        if self.total_steps is None or self.n_steps < self.total_steps:
            self.scheduler.step(*metric)
        else:
            self._skipped = list(metric)  # a longer fit resumed from this state takes the step (see _load)

    # --- checkpointing -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A copy of: `scheduler` (its own state_dict), `n_steps`, `param_groups` (each group's lr and
        momentum/betas, which the scheduler sets but keeps in the optimizer), and `skipped_step` (None, or the
        arguments of the fit's last step, left out; a longer fit loading this state takes it)."""
        if self.scheduler is None:
            raise RuntimeError(f"{type(self).__name__} builds its scheduler at before_fit; call state_dict() "
                               f"during or after a fit")
        groups = [{key: group[key] for key in ("lr", "momentum", "betas") if key in group}
                  for group in self._opt.param_groups]
        return copy.deepcopy({"scheduler": self.scheduler.state_dict(), "n_steps": self.n_steps,
                              "param_groups": groups, "skipped_step": self._skipped})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`: now if a fit is running (call it after this callback's before_fit, i.e. from an
        order above 20), else at the next before_fit, once the scheduler is built."""
        if self._in_fit:
            self._load(state)
        else:
            self._pending_state = state

    def _load(self, state: dict[str, Any]) -> None:
        groups = self._opt.param_groups
        if len(state["param_groups"]) != len(groups):
            raise ValueError(f"the saved state has {len(state['param_groups'])} param groups but the optimizer has "
                             f"{len(groups)}; load it into a learner built the same way")
        self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
        self.n_steps = state["n_steps"]
        for group, saved in zip(groups, state["param_groups"]):
            group.update(saved)
        skipped = state.get("skipped_step")
        if skipped is not None and (self.total_steps is None or self.n_steps < self.total_steps):
            # saved at the end of a shorter fit, which left its last step out; this fit goes on, so take it now.
            # The saved run's optimizer did step for it, so torch's "step() before optimizer.step()" is wrong here.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                self.scheduler.step(*skipped)


class BatchSchedCB(BaseSchedCB):
    """Step the scheduler once per optimizer step, between training batches: `BatchSchedCB(partial(OneCycleLR, ..))`."""

    def __init__(self, factory: SchedulerFactory) -> None:
        if _is_plateau(factory):
            raise TypeError(_PLATEAU_PER_BATCH)
        super().__init__(factory)
        self._stepped = False

    def _steps_in_fit(self, learn: Learner) -> int | None:
        per_epoch = steps_per_epoch(learn)
        return None if per_epoch is None else self._epochs_scheduled(learn) * per_epoch

    def _check(self, learn: Learner) -> None:
        if isinstance(self.scheduler, ReduceLROnPlateau):
            raise TypeError(_PLATEAU_PER_BATCH)
        self._stepped = False

    def after_step(self, learn: Learner) -> None:
        self._stepped = True  # only emitted when the optimizer really stepped

    def cleanup_batch(self, learn: Learner) -> None:
        # here rather than at after_step, so every after_batch reader sees the lr this batch trained with
        if self._stepped:
            self._stepped = False
            if self._scheduling(learn):
                self._advance()


_PLATEAU_PER_BATCH = ("ReduceLROnPlateau steps once per epoch with a metric, not per batch: use "
                      "EpochSchedCB(partial(ReduceLROnPlateau, ...), monitor='valid_loss')")


class EpochSchedCB(BaseSchedCB):
    """Step the scheduler once per epoch, after the training pass; `ReduceLROnPlateau` needs `monitor=`.

    `monitor` is a name MetricsCB logs (`valid_loss`, `valid_accuracy`, `train_loss`, ...): the scheduler is then
    stepped with `learn.metrics.last[monitor]` after the pass that logs it.
    """

    def __init__(self, factory: SchedulerFactory, monitor: str | None = None) -> None:
        if _is_plateau(factory) and monitor is None:
            raise TypeError(_PLATEAU_NO_MONITOR)
        super().__init__(factory)
        self.monitor = monitor

    def _steps_in_fit(self, learn: Learner) -> int | None:
        return self._epochs_scheduled(learn)

    def _check(self, learn: Learner) -> None:
        plateau = isinstance(self.scheduler, ReduceLROnPlateau)
        if plateau and self.monitor is None:
            raise TypeError(_PLATEAU_NO_MONITOR)
        if self.monitor is None:
            return
        if not plateau:
            raise TypeError(f"monitor={self.monitor!r} is for ReduceLROnPlateau, but the factory built a "
                            f"{type(self.scheduler).__name__}, whose step() takes no metric: drop monitor=")
        metrics = getattr(learn, "metrics", None)
        if metrics is None or all(cb is not metrics for cb in learn.cbs):
            raise ValueError(f"EpochSchedCB(monitor={self.monitor!r}) reads the metric MetricsCB logs, and this "
                             f"learner has no MetricsCB: add MetricsCB() (it logs train_loss and valid_loss) to cbs")
        if self.monitor not in metrics.names:
            raise ValueError(f"EpochSchedCB(monitor={self.monitor!r}): MetricsCB does not log that name; it logs "
                             f"{', '.join(metrics.names)}")

    def after_epoch(self, learn: Learner) -> None:
        logs_monitor = self.monitor is not None and learn.training == self.monitor.startswith("train_")
        if logs_monitor and self._scheduling(learn):
            self._advance(learn.metrics.last[self.monitor])

    def cleanup_epoch(self, learn: Learner) -> None:
        # cleanup, not after_epoch: a training pass cut short (CancelEpochException) is still an epoch
        if self.monitor is None and learn.training and self._scheduling(learn):
            self._advance()


_PLATEAU_NO_MONITOR = ("ReduceLROnPlateau needs the metric it watches: pass monitor=, a name MetricsCB logs, e.g. "
                       "EpochSchedCB(partial(ReduceLROnPlateau, mode='min', patience=2), monitor='valid_loss')")


# --- recording ---------------------------------------------------------------------------------------------------
class RecorderCB(Callback):
    """Record `fn(self)` for each `name=fn` after every training batch: `RecorderCB(lr=_lr, mom=_mom)`.

    The functions read `self.pg` (the optimizer's first param group, a dict with `lr`, `momentum` or `betas`, ...)
    and `self.learn`. `recs[name]` is the list of values, one per training batch of the last fit; recorded at
    `after_batch`, which still sees the hyperparameters the batch trained with (schedulers step after it).
    """
    order = 25  # after the scheduling callbacks (20), so their after_* work is done; they step later anyway

    def __init__(self, **fns: Callable[[RecorderCB], Any]) -> None:
        self.fns = fns
        self.recs: dict[str, list[Any]] = {name: [] for name in fns}
        self.learn: Learner | None = None
        self._in_fit = False
        self._pending_state: dict[str, Any] | None = None

    @property
    def pg(self) -> dict[str, Any]:
        """The optimizer's first param group, looked up on each read (loading an optimizer state replaces it)."""
        return self.learn.opt.param_groups[0]

    def before_fit(self, learn: Learner) -> None:
        self.learn = learn
        self.recs = {name: [] for name in self.fns}
        self._in_fit = True
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def cleanup_fit(self, learn: Learner) -> None:
        self._in_fit = False

    def after_batch(self, learn: Learner) -> None:
        if learn.training:
            for name, fn in self.fns.items():
                self.recs[name].append(fn(self))

    def state_dict(self) -> dict[str, Any]:
        """A copy of `recs`, so a resumed fit's recording continues the interrupted one's."""
        return {"recs": copy.deepcopy(self.recs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `recs` (at the next before_fit when called outside a fit, since before_fit starts afresh)."""
        if not self._in_fit:
            self._pending_state = state
            return
        self.recs = {name: list(state["recs"].get(name, [])) for name in self.fns}
        self._pending_state = None

    def plot(self, path: str | None = None) -> Any:
        """One panel per recorded quantity against the batch index; saved as an image when `path` is given."""
        from ..plotting import plot_recorder  # here: matplotlib is slow to import and only plots need it
        fig = plot_recorder(self.recs)
        if path is not None and is_main_process():  # under DDP every rank records the same values; rank 0 writes
            fig.savefig(path, dpi=100)
        return fig


def _lr(cb: RecorderCB) -> float:
    """The learning rate of the first param group."""
    return float(cb.pg["lr"])


def _beta1(cb: RecorderCB) -> float:
    """Adam-family beta1 of the first param group (the momentum one-cycle schedules cycle)."""
    return float(cb.pg["betas"][0])


def _mom(cb: RecorderCB) -> float:
    """SGD momentum, or beta1 for the Adam family: whichever the optimizer has."""
    if "betas" in cb.pg:
        return _beta1(cb)
    if "momentum" in cb.pg:
        return float(cb.pg["momentum"])
    raise KeyError("the optimizer's param group has neither 'momentum' nor 'betas': record _lr only")
