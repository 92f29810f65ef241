"""Stochastic Weight Averaging (Izmailov et al. 2018) as a callback, on `torch.optim.swa_utils`.

From epoch `swa_start` on, `SWALR` drives the lr (annealing it to `swa_lr`) and `AveragedModel` keeps the running
mean of the weights at the end of each training epoch (one a callback cut short with CancelEpochException too: it
counts as done, as the schedulers count it). After the last epoch the BatchNorm statistics of the
averaged weights are recomputed on the training data (as `update_bn` does), the averaged model is validated once
more, and it becomes `learn.model`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import SWALR, AveragedModel

from ..checks import check_count, check_number, warn
from ..learner import Callback, CancelEpochException, CancelFitException, Learner
from ..utils import counted, lazy_tensors
from .checkpoint import compile_wrapper, unwrap
from .preds import prediction_pass
from .scheduling import lr_ratios
from .state import kept

__all__ = ["SWACB"]


class SWACB(Callback):
    """Average the weights of epochs `swa_start`, ..., last; at the end make the average (BN refreshed) `learn.model`.

    Args:
        swa_start: the first epoch (0-based) whose weights are averaged; from it on SWALR drives the lr, and every
            scheduling callback (BatchSchedCB, EpochSchedCB) stops stepping (SWACB sets `learn.schedule_stop`).
            So a schedule runs for epochs
            0..swa_start-1: a one-cycle for those epochs is `partial(OneCycleLR, total_steps=swa_start *
            len(dls.train))`, which `fit_one_cycle` builds itself: its cycle ends at `swa_start`.
        swa_lr: the lr SWALR anneals to: one per param group, or one float, the fit's lr's counterpart (each
            group at the ratio to it that `opt_func` gives it: a body at a tenth anneals to a tenth).
        anneal_epochs: epochs the anneal takes. Epoch `swa_start` trains with the lr the schedule before left
            (a schedule that ends there, a one-cycle, leaves the last lr it trained with, not the one past its end),
            epoch `swa_start + k` with SWALR's k-th value; from `swa_start + anneal_epochs` on it is `swa_lr`.
            0 jumps to `swa_lr` at `swa_start`.
        anneal_strategy: 'cos' or 'linear' (SWALR's).

    After the fit: `swa_model` (the `AveragedModel`), `raw_model` (the model as trained, also `learn.raw_model`)
    and `learn.model`, the averaged network itself (the same class as the raw model). Its validation is logged
    by MetricsCB as epoch 'swa', and `metrics` keeps that row's values. BatchNorm statistics are recomputed from
    the training inputs as a prediction pass sees them, through the callbacks that take part in one (DeviceCB,
    the validation transforms `BatchTransformCB(on_val=True)`, autocast, your own `inference = True` ones: e.g. a
    normalization), not the train-only augmentations. A fit stopped by CancelFitException (EarlyStoppingCB) skips
    after_fit and keeps the raw model (with a warning once an epoch was averaged). Checkpoints hold the average so
    far and SWALR's state (`state_dict`), so a fit resumed past `swa_start` goes on as if never stopped; their
    weights, and CheckpointCB's best file, are epochs' raw weights: the average with its BatchNorm refreshed is
    `learn.model` after the fit (`learn.export(...)` keeps it). In a fit without validation (`fit(valid=False)`)
    the average is not validated either.
    """
    # before_fit: after DeviceCB (-20) moved the model, before HooksCallback (0) hooks it (the copy must not carry
    # the hooks), and before the schedulers (20) count their steps (they stop at swa_start)
    order = -15

    def __init__(self, swa_start: int, swa_lr: float | Sequence[float], anneal_epochs: int = 1,
                 anneal_strategy: str = "cos") -> None:
        check_count("swa_start", swa_start, least=0, what=" (the first epoch to average)")
        check_count("anneal_epochs", anneal_epochs, least=0, what=" (0: go straight to swa_lr)")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear'; got {anneal_strategy!r}")
        try:  # (SWALR anneals the lr to it from swa_start on: a negative one would train uphill)
            for lr in swa_lr if isinstance(swa_lr, (list, tuple)) and swa_lr else [swa_lr]:
                check_number("swa_lr", lr)
        except ValueError:
            raise ValueError(f"swa_lr must be a number >= 0 or one per param group, got {swa_lr!r}") from None
        self.swa_start, self.swa_lr = swa_start, swa_lr
        self.anneal_epochs, self.anneal_strategy = anneal_epochs, anneal_strategy
        self.swa_model: AveragedModel | None = None
        self.swa_scheduler: SWALR | None = None
        self.raw_model: nn.Module | None = None
        self.metrics: dict[str, float] = {}
        self._opt: torch.optim.Optimizer | None = None
        self._lrs: list[float] = []  # each param group's swa_lr in this fit (set at before_fit)
        self._on = False  # whether this fit trains (an evaluation leaves the average and the records alone)

    def before_fit(self, learn: Learner) -> None:
        self._on = "train" in learn.passes
        if not self._on:
            return
        if isinstance(learn.model, DistributedDataParallel):  # DDPCB (order -30) wrapped it
            raise RuntimeError("SWACB does not run under DDP yet: the average would stay wrapped in "
                               "DistributedDataParallel and each process would refresh its BatchNorm statistics on "
                               "its own shard, leaving the processes with different models. Run SWA in one process.")
        if self.swa_start >= learn.n_epochs:
            raise ValueError(f"SWACB(swa_start={self.swa_start}) averages from epoch {self.swa_start} on, but this fit "
                             f"has epochs 0..{learn.n_epochs - 1}: use swa_start < n_epochs (e.g. the last quarter "
                             f"of them) or fit more epochs")
        if isinstance(self.swa_lr, (list, tuple)) and len(self.swa_lr) != len(learn.opt.param_groups):
            raise ValueError(f"SWACB has {len(self.swa_lr)} swa_lr values, the optimizer {len(learn.opt.param_groups)} "
                             "param group(s): give one swa_lr, or one per param group")
        self.raw_model, self.swa_scheduler, self.metrics, self._opt = learn.model, None, {}, learn.opt
        # one swa_lr is of the fit's lr: each group at the ratio opt_func gives it (a body at 0 stays at 0)
        self._lrs = list(self.swa_lr) if isinstance(self.swa_lr, (list, tuple)) else [
            self.swa_lr * ratio for ratio in lr_ratios(learn, learn.fit_lr)]
        # the module inside a torch.compile wrapper: the average's keys are the model's own (no '_orig_mod.'),
        # so a run resumes with or without the wrapper
        self.swa_model = AveragedModel(unwrap(learn.model))
        learn.schedule_stop = self.swa_start  # the schedulers (order 20) stop stepping there

    def before_epoch(self, learn: Learner) -> None:
        lazy = lazy_tensors(self.swa_model.module) if learn.training and learn.epoch == learn.start_epoch else []
        if lazy:  # (the copy never makes them: only the model runs forward; a resume has loaded them by now)
            raise ValueError(f"SWACB copies the model at the fit's start to average it, and its {', '.join(lazy[:4])} "
                             "is not made yet (a lazy layer makes its weights at its first forward): run one batch "
                             "through the model first, learn.summary() or learn.model(xb)")
        if learn.training and learn.epoch == self.swa_start:
            # built now, on the lr the schedule left: SWALR anneals from the lr it finds to swa_lr
            self.swa_scheduler = self._swalr(learn.opt)

    def cleanup_epoch(self, learn: Learner) -> None:
        # cleanup, not after_epoch: a pass cut short (CancelEpochException, a time budget) is an epoch done, as the
        # schedulers count it, so it is averaged too. Not a pass that took no step (a fit ended at its first batch,
        # EarlyStoppingCB's way)
        if not (learn.training and learn.pass_steps and self._averaging(learn)):
            return
        if learn.stopped_by is None or isinstance(learn.stopped_by, (CancelEpochException, CancelFitException)):
            self.swa_model.update_parameters(unwrap(learn.model))  # (not after an error: half-stepped weights)
        # also after the fit's last epoch: a checkpoint of it then holds the lr the next epoch trains with
        self.swa_scheduler.step()

    def _averaging(self, learn: Learner) -> bool:
        return isinstance(learn.epoch, int) and learn.epoch >= self.swa_start and self.swa_scheduler is not None

    def after_fit(self, learn: Learner) -> None:
        if not self._on:
            return
        if int(self.swa_model.n_averaged) == 0:
            warn(f"SWACB: no epoch from swa_start={self.swa_start} on was trained in this fit, so nothing "
                 "was averaged; learn.model is the raw model")
            return
        self._refresh_bn(learn)
        learn.model = self.swa_model.module
        learn.raw_model = self.raw_model
        if any(compile_wrapper(m) or getattr(m, "_compiled_call_impl", None) is not None
               for m in (self.raw_model, unwrap(self.raw_model))):  # (not DataParallel's wrapper)
            warn("SWACB: the model was compiled, and its average, learn.model now, is not (AveragedModel's copy "
                 "runs eagerly): call learn.compile() again for fits and predictions as fast")
        if "valid" in learn.passes:  # fit(valid=False): no validation of it either
            self._validate(learn)

    def cleanup_fit(self, learn: Learner) -> None:
        averaged = int(self.swa_model.n_averaged) if self._on and self.swa_model is not None else 0
        if averaged and isinstance(learn.stopped_by, CancelFitException) and learn.model is self.raw_model:
            warn(f"SWACB: the fit was stopped ({type(getattr(learn.stopped_by, 'raised_by', None)).__name__}'s "
                 f"CancelFitException) after {counted(averaged, 'epoch')} averaged, so the average was not made "
                 "the model: learn.model is the raw model. The average so far, its BatchNorm statistics not "
                 "refreshed, is this callback's swa_model.module")

    def state_dict(self) -> dict[str, Any]:
        """The average so far (`swa_model`'s state, with `n_averaged`) and SWALR's state once it runs."""
        return {"swa_model": self.swa_model.state_dict(), "settings": self._settings(),
                "swa_scheduler": None if self.swa_scheduler is None else self.swa_scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`, during a fit (after before_fit, as `fit(resume=...)` does); an evaluation,
        which builds no average, validates the checkpoint's raw weights and says so if it holds one."""
        if not self._on:
            averaged = int(state["swa_model"].get("n_averaged", 0))
            if averaged:
                warn(f"SWACB: this evaluation validates the checkpoint's raw weights, not the average of "
                     f"{counted(averaged, 'epoch')} it also holds, which SWACB uses only in a fit that trains: "
                     "learn.fit(n_epochs, resume=...) to finish the run (the average is learn.model then)")
            return
        saved = state.get("settings")  # (older checkpoints: none)
        began = self.began(state)
        if began and isinstance(saved, dict) and saved != self._settings():  # the average and SWALR's state are of those
            raise ValueError(f"the checkpoint's run averaged with SWACB({_described(saved)}), this fit's is {self!r}: "
                             "its average so far and SWALR's state are the saved settings'. To continue it, resume "
                             "with that SWACB; for the new settings start a new fit from the checkpoint's weights")
        # (files written before the average was of the module inside a torch.compile wrapper: its keys were the
        # wrapper's)
        own, old = self.swa_model.state_dict(), "module._orig_mod."
        self.swa_model.load_state_dict({"module." + k[len(old):] if k.startswith(old) and k not in own else k: v
                                        for k, v in state["swa_model"].items()})
        if state["swa_scheduler"] is not None:  # resumed past swa_start: SWALR goes on where it was
            self.swa_scheduler = self._swalr(self._opt)
            self.swa_scheduler.load_state_dict(state["swa_scheduler"])

    def _swalr(self, opt: torch.optim.Optimizer) -> SWALR:
        return SWALR(opt, self._lrs, anneal_epochs=self.anneal_epochs, anneal_strategy=self.anneal_strategy)

    def _refresh_bn(self, learn: Learner) -> None:
        """torch's update_bn for the averaged model, on the training inputs as a prediction pass sees them: through
        the same inference callbacks (DeviceCB, validation transforms, autocast, the user's `inference = True`
        ones), so the statistics are those of the inputs the model is validated and used on."""
        model = self.swa_model.module
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        momenta, was_training = [bn.momentum for bn in bns], model.training
        for bn in bns:  # as update_bn: a cumulative average over the pass, every batch weighing the same
            bn.reset_running_stats()
            bn.momentum = None
        dl = learn.dls.train  # (its order does not matter; kept puts back its shuffle counter and the RNGs)
        try:
            with kept(learn, [dl]):
                learn.model = model
                prediction_pass(learn, dl, [_TrainMode()], who="SWACB's BatchNorm refresh",
                                warn_draws=False)  # (dropout runs in train mode, as in torch's update_bn)
        finally:
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
            model.train(was_training)

    def _validate(self, learn: Learner) -> None:
        """One more validation pass, of the averaged model, with every callback's epoch and batch events."""
        last_epoch = learn.epoch
        learn.epoch = "swa"  # MetricsCB logs the row as epoch 'swa'; schedulers and SWACB ignore the pass
        try:
            # the Learner's own validation pass (a private method: the loop has no public one-pass entry, and it
            # runs under no_grad itself), so MetricsCB, ProgressCB and friends see it like any other
            learn._one_epoch(False)
        finally:
            learn.epoch = last_epoch
        metrics = getattr(learn, "metrics", None)
        if metrics is not None:
            self.metrics = {k: v for k, v in metrics.last.items() if k.startswith("valid_")}
            if not self.metrics:  # (a callback cut the pass: a validation budget, say)
                warn("SWACB: the average's validation pass (epoch 'swa') was cut short, so it logged no row: the "
                     "average was not validated (swa.metrics is empty); the model is the average all the same")

    @staticmethod
    def began(state: dict[str, Any] | None) -> bool:
        """Whether a checkpoint's SWACB state (None: it had none) holds an average begun: SWALR built, or epochs
        averaged."""
        return state is not None and (state["swa_scheduler"] is not None
                                      or int(state["swa_model"].get("n_averaged", 0)) > 0)

    def _settings(self) -> dict[str, Any]:
        """What the average and SWALR's state depend on, as plain numbers (0.05, [0.05] and 5e-2 alike)."""
        return {"swa_start": int(self.swa_start), "swa_lr": [float(lr) for lr in self._lrs],
                "anneal_epochs": int(self.anneal_epochs), "anneal_strategy": self.anneal_strategy}

    def __repr__(self) -> str:
        return (f"SWACB(swa_start={self.swa_start}, swa_lr={self.swa_lr}, anneal_epochs={self.anneal_epochs}, "
                f"anneal_strategy={self.anneal_strategy!r})")


def _described(settings: dict[str, Any]) -> str:
    """A checkpoint's SWACB settings as the arguments that make them."""
    lrs = settings["swa_lr"]
    return ", ".join(f"{k}={v!r}" for k, v in {**settings, "swa_lr": lrs[0] if len(set(lrs)) == 1 else lrs}.items())


class _TrainMode(Callback):
    """Puts the model in training mode for a prediction pass (which starts it in eval mode): BatchNorm layers then
    update their statistics, as in update_bn."""

    def before_epoch(self, learn: Learner) -> None:
        learn.model.train()
