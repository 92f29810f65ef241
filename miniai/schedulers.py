"""Learning-rate schedules: closed-form functions of the step, and thin torch `LRScheduler`s over them.

Each schedule is first a pure function `f(step, ...) -> lr` that can be unit-tested and plotted without an
optimizer. Each class then sets every param group's lr to `f(last_epoch, ..., base_lr)`, where `base_lr` is that
group's own initial lr, so the classes work wherever torch schedulers do (`SequentialLR`, `state_dict`, the
scheduling callbacks). Because the lr depends only on `last_epoch` and the configuration, torch's default
`state_dict` (every attribute but the optimizer) resumes a schedule exactly.

Like torch's `OneCycleLR`, these schedulers are not chainable: each step sets the lr outright rather than scaling
the current one, so in a `ChainedScheduler` one of ours discards what the others did (`BatchSchedCB` and
`EpochSchedCB` refuse such a chain). Use `SequentialLR` to put schedules one after another.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from .checks import check_count

__all__ = ["cosine_lr", "triangular_lr", "warmup_cosine_lr", "cosine_one_cycle",
           "CosineAnnealing", "OneCycle", "WarmupCosine", "CosineOneCycle", "lr_trajectory"]

_STEPS = " (a number of scheduler steps)"  # what the counts checked here count


# ---- pure schedules: functions of the step ----

def cosine_lr(step: int, total: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Cosine from base_lr at step 0 to min_lr at step `total`; past it the curve continues (period 2*total)."""
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * step / total)) / 2


def triangular_lr(step: int, total: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Smith's triangular cycle: min_lr at step 0, base_lr at total/2, min_lr at `total`, then it repeats."""
    position = (step % total) / total  # where we are in the current cycle, in [0, 1)
    return min_lr + (base_lr - min_lr) * (1 - abs(2 * position - 1))


def warmup_cosine_lr(step: int, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float = 0.0,
                     start_factor: float = 0.0) -> float:
    """Linear from start_factor*base_lr to base_lr over warmup_steps, cosine to min_lr at total_steps, then min_lr."""
    if step < warmup_steps:
        return base_lr * (start_factor + (1 - start_factor) * step / warmup_steps)
    if step >= total_steps:
        return min_lr
    return cosine_lr(step - warmup_steps, total_steps - warmup_steps, base_lr, min_lr)


def _anneal(start: float, end: float, pct: float, strategy: str) -> float:
    """From start (pct=0) to end (pct=1), by half a cosine or a straight line; the same float ops as torch."""
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def cosine_one_cycle(step: int, total_steps: int, max_lr: float, pct_start: float = 0.3,
                     anneal_strategy: Literal["cos", "linear"] = "cos", base_momentum: float = 0.85,
                     max_momentum: float = 0.95, div_factor: float = 25.0, final_div_factor: float = 1e4,
                     three_phase: bool = False) -> tuple[float, float]:
    """(lr, momentum) after `step` steps of torch's OneCycleLR policy; from step total_steps-1 on, the final values.

    lr rises from max_lr/div_factor to max_lr over the first pct_start of the steps while momentum falls from
    max_momentum to base_momentum, then both go back (to max_lr/div_factor/final_div_factor and max_momentum).
    three_phase=True makes the descent mirror the rise and adds a third phase down to the final lr.
    """
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    # torch's phase boundaries, float arithmetic included: a phase ends on the step whose lr is its end value.
    warmup_end = float(pct_start * total_steps) - 1
    if three_phase:
        phases = [(warmup_end, initial_lr, max_lr, max_momentum, base_momentum),
                  (float(2 * pct_start * total_steps) - 2, max_lr, initial_lr, base_momentum, max_momentum),
                  (total_steps - 1, initial_lr, min_lr, max_momentum, max_momentum)]
    else:
        phases = [(warmup_end, initial_lr, max_lr, max_momentum, base_momentum),
                  (total_steps - 1, max_lr, min_lr, base_momentum, max_momentum)]
    # Unlike torch (which extrapolates one step, then raises), hold the final values: a training loop that steps
    # the scheduler after its last batch must leave the schedule's final lr in the optimizer, not a negative one.
    step = min(step, total_steps - 1)
    start_step = 0.0
    for i, (end_step, lr_start, lr_end, momentum_start, momentum_end) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            # A phase of length 0 (pct_start*total_steps == 1) is already over; torch divides by zero here.
            pct = 1.0 if end_step == start_step else (step - start_step) / (end_step - start_step)
            return (_anneal(lr_start, lr_end, pct, anneal_strategy),
                    _anneal(momentum_start, momentum_end, pct, anneal_strategy))
        start_step = end_step
    raise AssertionError("unreachable: the last phase always matches")


# ---- torch-compatible schedulers ----
# torch calls the step counter `last_epoch`; it counts scheduler steps (batches, under a per-batch callback).
# Attributes are set before super().__init__ because torch's constructor already takes the first step.

def _per_group(name: str, value: float | Sequence[float], optimizer: Optimizer) -> list[float]:
    """One value per param group: a single float is shared, a sequence (a NumPy array or tensor of one dim too)
    must match the groups."""
    n_groups = len(optimizer.param_groups)
    if getattr(value, "ndim", 0) > 1:
        raise ValueError(f"{name} is an array of shape {tuple(value.shape)}: give one value per param group, or a "
                         "single float for all")
    if getattr(value, "ndim", 0) == 1:  # (one lr each: an array in every group's lr would fail inside the optimizer)
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(f"{name} has {len(value)} values but the optimizer has {n_groups} param groups; "
                             f"pass one value per group or a single float for all")
        return list(value)
    return [value] * n_groups


class CosineAnnealing(LRScheduler):
    """Each param group follows cosine_lr from its own initial lr: torch's CosineAnnealingLR as a closed form.

    The same lrs as CosineAnnealingLR alone or in a SequentialLR, but not chainable: in a ChainedScheduler it sets
    the lr outright and discards what the others did (the scheduling callbacks refuse that; use CosineAnnealingLR).
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        check_count("T_max", T_max, what=_STEPS)
        self.T_max, self.eta_min = T_max, eta_min  # torch's names, so the classes swap freely
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The lr of each group after `last_epoch` steps."""
        return [cosine_lr(self.last_epoch, self.T_max, base, self.eta_min) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


class OneCycle(LRScheduler):
    """Smith's triangular policy: each group climbs from min_lr to its initial lr at T_max/2, back by T_max, repeats."""

    def __init__(self, optimizer: Optimizer, T_max: int, min_lr: float = 0.0, last_epoch: int = -1) -> None:
        check_count("T_max", T_max, least=2, what=_STEPS)  # a cycle of 1 step never leaves min_lr
        self.T_max, self.min_lr = T_max, min_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The lr of each group after `last_epoch` steps."""
        return [triangular_lr(self.last_epoch, self.T_max, base, self.min_lr) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


class WarmupCosine(LRScheduler):
    """Linear warmup from 0 to each group's initial lr, cosine down to min_lr at total_steps, then constant min_lr.

    The warmup starts at `start_factor` times the initial lr (0 by default, so the very first step has lr 0 and
    the initial lr is reached exactly at step warmup_steps); warmup_steps=0 skips the warmup.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                 last_epoch: int = -1, *, start_factor: float = 0.0) -> None:
        check_count("total_steps", total_steps, what=_STEPS)
        if check_count("warmup_steps", warmup_steps, least=0, what=_STEPS) > total_steps:
            raise ValueError(f"warmup_steps must be an int from 0 to total_steps={total_steps}, got {warmup_steps!r}")
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"start_factor is the fraction of the initial lr to warm up from, in [0, 1]; "
                             f"got {start_factor!r}")
        self.warmup_steps, self.total_steps, self.min_lr, self.start_factor = (warmup_steps, total_steps, min_lr,
                                                                               start_factor)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The lr of each group after `last_epoch` steps."""
        return [warmup_cosine_lr(self.last_epoch, self.warmup_steps, self.total_steps, base, self.min_lr,
                                 self.start_factor) for base in self.base_lrs]

    _get_closed_form_lr = get_lr


class CosineOneCycle(LRScheduler):
    """torch's OneCycleLR as a closed form (lr and momentum/beta1), holding its final values past total_steps.

    For the same arguments it gives torch's lr and momentum at steps 0..total_steps-1, and sets the same
    `initial_lr`, `max_lr`, `min_lr` (and, when cycling, `max_momentum`, `base_momentum`) keys in each param group.
    It cycles `momentum`, or `betas[0]` when the optimizer has `betas` (Adam family), as torch does.
    Differences: stepping past total_steps keeps the final lr (torch extrapolates one step, which can make a
    linear anneal's lr negative, then raises ValueError); pct_start*total_steps == 1 works (torch divides by zero);
    there is no epochs/steps_per_epoch shortcut: pass total_steps=epochs*steps_per_epoch.

    `state_dict()` is torch's default, every attribute except the optimizer, all plain Python data:
      - `last_epoch`: scheduler steps taken so far; the only entry that changes while training.
      - `total_steps`, `pct_start`, `anneal_strategy`, `three_phase`, `div_factor`, `final_div_factor`: the
        arguments, which with `last_epoch` fix every lr and momentum of the schedule.
      - `max_lrs`, `max_momentums`, `base_momentums`: `max_lr`, `max_momentum`, `base_momentum`, one per group.
      - `cycle_momentum`: whether momentum is cycled; `use_beta1`: whether that is `betas[0]` (not `momentum`).
      - `base_lrs`: each group's `initial_lr` (= max_lr/div_factor), torch's starting-lr record.
      - `_last_lr`: the lrs the last step set, what `get_last_lr()` returns.
      - `_step_count`, `_get_lr_called_within_step`, `_is_initial`: torch's bookkeeping for its warnings.
    The param-group keys live in the optimizer's own `state_dict`.
    """

    def __init__(self, optimizer: Optimizer, max_lr: float | Sequence[float], total_steps: int,
                 pct_start: float = 0.3, anneal_strategy: Literal["cos", "linear"] = "cos",
                 cycle_momentum: bool = True, base_momentum: float | Sequence[float] = 0.85,
                 max_momentum: float | Sequence[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, last_epoch: int = -1) -> None:
        check_count("total_steps", total_steps, what=_STEPS)
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start is the fraction of total_steps spent raising the lr, in [0, 1]; "
                             f"got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.use_beta1 = "betas" in optimizer.defaults
        if cycle_momentum and not (self.use_beta1 or "momentum" in optimizer.defaults):
            raise ValueError(f"cycle_momentum=True needs an optimizer with `momentum` or `betas`; "
                             f"{type(optimizer).__name__} has neither: pass cycle_momentum=False")
        self.total_steps, self.pct_start, self.anneal_strategy = total_steps, pct_start, anneal_strategy
        self.three_phase, self.div_factor, self.final_div_factor = three_phase, div_factor, final_div_factor
        self.cycle_momentum = cycle_momentum
        self.max_lrs = _per_group("max_lr", max_lr, optimizer)
        self.max_momentums = _per_group("max_momentum", max_momentum, optimizer)
        self.base_momentums = _per_group("base_momentum", base_momentum, optimizer)
        # The keys torch's OneCycleLR adds, so code reading them works with either class. We write them even when
        # resuming (last_epoch != -1): they follow from the arguments, and torch's constructor needs initial_lr.
        for group, max_lr_, max_m, base_m in zip(optimizer.param_groups, self.max_lrs, self.max_momentums,
                                                 self.base_momentums):
            group["initial_lr"] = max_lr_ / div_factor
            group["max_lr"] = max_lr_
            group["min_lr"] = group["initial_lr"] / final_div_factor
            if cycle_momentum:
                group["max_momentum"], group["base_momentum"] = max_m, base_m
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The lr of each group after `last_epoch` steps; also sets each group's momentum (or beta1) for that step."""
        lrs = []
        for group, max_lr, max_m, base_m in zip(self.optimizer.param_groups, self.max_lrs, self.max_momentums,
                                                self.base_momentums):
            lr, momentum = cosine_one_cycle(self.last_epoch, self.total_steps, max_lr, self.pct_start,
                                            self.anneal_strategy, base_m, max_m, self.div_factor,
                                            self.final_div_factor, self.three_phase)
            # Momentum is set here, as torch does, because get_lr is the one hook that both step() and
            # SequentialLR's jump to a milestone go through.
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum
            lrs.append(lr)
        return lrs

    _get_closed_form_lr = get_lr


# ---- previewing a schedule ----

def lr_trajectory(make_scheduler: Callable[..., LRScheduler], opt: Optimizer, n_steps: int,
                  **kwargs: Any) -> list[float]:
    """The lr param group 0 runs with at each of n_steps steps under make_scheduler(opt, **kwargs), without training.

    `make_scheduler` is a scheduler class (ours or torch's) or any callable taking the optimizer, e.g.
    `lr_trajectory(CosineAnnealing, opt, 120, T_max=100)`. Use a fresh optimizer: the scheduler changes its lrs.
    """
    if any(p.grad is not None for group in opt.param_groups for p in group["params"]):
        raise ValueError("lr_trajectory calls opt.step() and this optimizer's parameters have gradients, so they "
                         "would change; pass a fresh optimizer or call opt.zero_grad(set_to_none=True) first")
    scheduler = make_scheduler(opt, **kwargs)
    if isinstance(scheduler, ReduceLROnPlateau):
        raise TypeError("ReduceLROnPlateau follows a validation metric, so it has no lr trajectory without training")
    lrs = []
    for _ in range(n_steps):
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()  # changes no parameter (none has a .grad), but torch warns if a scheduler steps before its optimizer
        scheduler.step()
    return lrs
