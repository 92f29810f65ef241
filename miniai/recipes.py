"""Named schedule recipes for the command line (`--sched cosine`): each name becomes a scheduling callback.

The peak lr of every recipe is the optimizer's lr (the CLI's `--lr`), read from the optimizer when the scheduler
is built, so a recipe needs only the length of the fit.
"""
from __future__ import annotations

from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR

from .callbacks.scheduling import BaseSchedCB, BatchSchedCB, EpochSchedCB
from .schedulers import CosineAnnealing, CosineOneCycle, OneCycle, WarmupCosine

__all__ = ["SCHEDULES", "make_sched_cb"]

SCHEDULES = {
    "none": "constant lr",
    "cosine": "cosine annealing from lr to 0 over the fit, per batch (ours)",
    "onecycle": "Smith's triangular one-cycle: 0 up to lr at mid-fit, back to 0, per batch (ours)",
    "onecycle-cosine": "torch's OneCycleLR policy (lr and momentum/beta1) from scratch, per batch (ours)",
    "onecycle-torch": "torch's OneCycleLR, max_lr=lr, with momentum/beta1 cycling, per batch",
    "warmup-cosine": "linear warmup over the first 10% of the steps, then cosine to 0, per batch (ours)",
    "step": "StepLR: lr × 0.1 every third of the epochs, per epoch",
    "plateau": "ReduceLROnPlateau on valid_loss: lr × 0.1 after 1 epoch without improvement (needs MetricsCB)",
}


def _max_lrs(opt: Optimizer) -> list[float]:
    return [float(group["lr"]) for group in opt.param_groups]


def _torch_one_cycle(opt: Optimizer, total_steps: int) -> OneCycleLR:
    return OneCycleLR(opt, max_lr=_max_lrs(opt), total_steps=total_steps)


def _our_one_cycle(opt: Optimizer, total_steps: int) -> CosineOneCycle:
    return CosineOneCycle(opt, max_lr=_max_lrs(opt), total_steps=total_steps)


def make_sched_cb(name: str, n_epochs: int, steps_per_epoch: int) -> BaseSchedCB | None:
    """The scheduling callback for recipe `name` (see SCHEDULES) over n_epochs × steps_per_epoch optimizer steps."""
    total = max(1, n_epochs * steps_per_epoch)
    recipes = {
        "none": lambda: None,
        "cosine": lambda: BatchSchedCB(partial(CosineAnnealing, T_max=total)),
        "onecycle": lambda: BatchSchedCB(partial(OneCycle, T_max=total)),
        "onecycle-cosine": lambda: BatchSchedCB(partial(_our_one_cycle, total_steps=total)),
        "onecycle-torch": lambda: BatchSchedCB(partial(_torch_one_cycle, total_steps=total)),
        "warmup-cosine": lambda: BatchSchedCB(partial(WarmupCosine, warmup_steps=total // 10, total_steps=total)),
        "step": lambda: EpochSchedCB(partial(StepLR, step_size=max(1, n_epochs // 3), gamma=0.1)),
        "plateau": lambda: EpochSchedCB(partial(ReduceLROnPlateau, mode="min", factor=0.1, patience=1),
                                        monitor="valid_loss"),
    }
    assert recipes.keys() == SCHEDULES.keys()
    if name not in recipes:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return recipes[name]()
