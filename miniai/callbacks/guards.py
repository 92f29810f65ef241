"""Guards that stop or steady a run: a NaN/inf loss stops it, a stalled metric stops it, gradients are clipped."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checks import beside_model, check_count, check_number, own_place, python_number, warn
from ..distributed import all_reduce_sum, rank, world_size
from ..learner import Callback, CancelEpochException, CancelFitException, Learner
from ..utils import counted, nonfinite_weight, opt_lr, trained_parameters
from ..weighting import averages_over_targets, batch_parts, ignored_target, target_mask
from .mixed_precision import half_grads_named
from .monitor import check_monitor, improves, monitor_mode, note_cut_pass, note_unread, same_watch

__all__ = ["NonFiniteLossError", "TerminateOnNaNCB", "add_nan_guard", "EarlyStoppingCB", "GradClipCB",
           "lower_lr_advice", "pass_args"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch, batch and learning rate."""


_Bad = tuple[int | None, int, float]  # a non-finite loss: (the rank that met it, None outside DDP; batch; value)


def _lr(learn: Learner) -> float:
    return opt_lr(learn.opt)


class TerminateOnNaNCB(Callback):
    """Stops the fit with `NonFiniteLossError` when a training loss is NaN or infinite (on by default in TrainLearner).

    On the CPU each loss is checked as it is made (reading a CPU scalar costs nothing), so the fit stops at the
    bad batch, before its backward pass. On an accelerator, reading the loss would make the host wait for the
    device every batch; so the losses are kept (references to the device scalars, no kernel) and checked once
    at the end of the training pass, or every `every` batches if given (each check is one synchronisation).
    `immediate=True`/`False` forces either way.
    The message then still names the first bad batch and the lr it ran with, and says that the weights took
    the following steps too. Under torch.distributed (DDPCB) the ranks agree on each check with one all_reduce
    (per batch on the CPU, per check on an accelerator), so a NaN on one rank stops every rank with this error
    instead of leaving the others waiting in DDP's gradient all_reduce.

    A step after the last loss checked can still diverge (a too high lr): the weights are then non-finite though
    every loss was finite. So at the end of a fit that trained (in cleanup_fit: also a fit a callback cancelled)
    what training changes is checked once (`utils.nonfinite_weight`: the trained parameters and the norm layers'
    running statistics, not other buffers: an attention mask may hold -inf on purpose), and non-finite values
    raise `NonFiniteLossError`; earlier epochs need no such check, as the next training loss shows it. Validation
    losses are not checked: they never change the weights; a non-finite one with finite weights comes from the
    validation data or the loss, which MetricsCB reports (and CheckpointCB refuses to save after).

    Remove it with `learn.rm_cb(...)` or `TrainLearner(..., nan_guard=False)`. It stands aside for a fit in which
    a callback sets the class attribute `handles_nonfinite_loss = True` (the lr finder, which drives the loss to
    blow up on purpose).
    """
    order = 5  # at after_loss, before the backward; at after_epoch, before CheckpointCB saves a broken model

    def __init__(self, every: int | None = None, immediate: bool | None = None) -> None:
        if every is not None:
            check_count("every", every, what=" (batches between checks; None: at the end of the training pass)")
        self.every = every
        self.immediate = immediate  # None: check each loss at once on the CPU, deferred elsewhere
        self._losses: list[torch.Tensor] = []
        self._where: list[tuple[int, float, int]] = []  # (batch index, lr, steps of the pass before) of each loss
        self._checked = 0
        self._active = True
        self._world = 1  # processes that agree on each check (DDPCB, order -30, has joined their group by before_fit)

    def before_fit(self, learn: Learner) -> None:
        self._active = not any(getattr(cb, "handles_nonfinite_loss", False) for cb in learn.cbs)
        # the ranks agree only in a fit they all run: one whose model DDP wraps (DDPCB, order -30, has by now); a
        # plain fit on one rank, in a process group left by an earlier DDP fit, must not wait for the others
        self._world = world_size() if isinstance(learn.model, DistributedDataParallel) else 1

    def before_epoch(self, learn: Learner) -> None:
        self._losses, self._where, self._checked = [], [], 0

    def after_loss(self, learn: Learner) -> None:
        if not learn.training or not self._active:
            return
        loss = learn.loss
        if self.immediate or (self.immediate is None and loss.is_cpu):
            # item() of a CPU scalar is a read, not a sync; the sum covers losses with reduction='none'
            value = loss.item() if loss.numel() == 1 else float(loss.detach().float().sum())
            bad = None if math.isfinite(value) else (None, learn.iter, value)
            if self._world > 1:
                bad = self._agree(bad)
            if bad is not None:
                self._fail(learn, bad, _lr(learn), learn.pass_steps, delayed=False)
            return
        self._losses.append(loss.detach())
        self._where.append((learn.iter, _lr(learn), learn.pass_steps))  # python numbers: free to read
        if self.every is not None and len(self._losses) - self._checked >= self.every:
            self._check(learn)

    def after_epoch(self, learn: Learner) -> None:
        if learn.training and len(self._losses) > self._checked:
            self._check(learn)

    def cleanup_epoch(self, learn: Learner) -> None:
        # a failed pass is over on this rank only: the others wait in DDP's all_reduce, not the ranks' agreement
        failed = self._world > 1 and not isinstance(learn.stopped_by, (type(None), CancelEpochException,
                                                                      CancelFitException))
        try:  # a cancelled pass (SingleBatchCB, a time budget) skips after_epoch: its kept losses are checked here
            if learn.training and len(self._losses) > self._checked and not failed:
                self._check(learn)
        finally:
            self._losses = []  # don't keep device tensors alive between passes

    def _check(self, learn: Learner) -> None:
        start = self._checked
        kept = self._losses[start:]
        # one stack kernel for scalar losses; losses with reduction='none' are summed first (NaN/inf survive a sum)
        losses = torch.stack(kept if all(t.ndim == 0 for t in kept) else [t.sum() for t in kept]).float()
        bad_at = ~torch.isfinite(losses)
        self._checked = len(self._losses)
        bad = None
        if bool(bad_at.any()):  # the one synchronisation
            first = int(bad_at.nonzero()[0, 0])
            bad = (None, self._where[start + first][0], float(losses[first]))
        if self._world > 1:
            bad = self._agree(bad)
        if bad is not None:
            # the lr that batch ran with and the steps before it (the ranks run the same batches with the same lrs)
            lr, steps = next(((lr, steps) for batch, lr, steps in self._where if batch == bad[1]), (_lr(learn), 1))
            self._fail(learn, bad, lr, steps, delayed=True)

    def _agree(self, bad: _Bad | None) -> _Bad | None:
        """One all_reduce: (rank, batch, loss) of the first non-finite loss any rank found (the earliest batch, then
        the lowest rank), the same answer on every rank (None: all were finite), so all of them stop together."""
        rows = torch.zeros(self._world, 3, dtype=torch.float64)
        if bad is not None:
            rows[rank()] = torch.tensor([1.0, bad[1], bad[2]], dtype=torch.float64)
        all_reduce_sum(rows)  # (every other row is zeros: a NaN or inf stays in its own rank's row)
        found = [(int(row[1]), r) for r, row in enumerate(rows) if row[0]]
        if not found:
            return None
        batch, r = min(found)
        return r, batch, float(rows[r, 2])

    def cleanup_fit(self, learn: Learner) -> None:
        stopped = learn.stopped_by  # (after an error, that error is what the user sees; a cancel ends a fit well)
        if not self._active or "train" not in learn.passes or learn.epoch is None or not (
                stopped is None or isinstance(stopped, CancelFitException)):
            return
        # after SWACB's after_fit and DDPCB's cleanup: the model the user gets, the same on every rank (no
        # all_reduce); what training changes, not an attention mask of -inf (utils.nonfinite_weight)
        bad = nonfinite_weight(learn.model)  # (once per fit: a sync per tensor is fine)
        beside = beside_model(learn.model, learn.opt)  # (a temperature: what the optimizer trains beside the model)
        bad = bad or next((f"tensor {i} the optimizer trains beside the model, of shape {tuple(p.shape)}," for i, p
                           in enumerate(beside) if not bool(p.isfinite().all())), None)
        if bad is None:
            return
        when = (f"at the end of the fit, which ended in epoch {learn.epoch} (counted from 0, as in the metrics "
                f"table; lr={_lr(learn):.3g}), though every training loss was finite")
        subject, cause = nonfinite_cause(learn.model, bad)
        raise NonFiniteLossError(f"{subject} {when}: {cause}." + self._advice(learn))

    def _fail(self, learn: Learner, bad: _Bad, lr: float, steps_before: int, delayed: bool) -> None:
        bad_rank, batch, value = bad
        after = (f" It was detected at batch {learn.iter}: the steps in between used non-finite gradients, so the "
                 "weights are probably NaN now." if delayed and batch != learn.iter else "")
        where = f" on rank {bad_rank}" if bad_rank is not None else ""
        ignore = ignored_target(learn.loss_func)
        yb = batch_parts(learn)[1] if batch == learn.iter and bad_rank in (None, rank()) else None
        targets = yb[0] if yb else None  # (a dict batch, read by one's own steps, has none)
        by_targets = isinstance(targets, torch.Tensor) and not targets.is_floating_point() and targets.numel() \
            and averages_over_targets(learn.loss_func)
        mask = target_mask(targets, ignore) if by_targets else None
        if mask is not None and not bool(mask.any()):  # torch's cross-entropy over no target: 0 / 0
            raise NonFiniteLossError(
                f"training loss is {value}{where} at epoch {learn.epoch}, batch {batch}: every target of this batch "
                f"is the loss's ignore_index ({ignore}), and a mean over no target is NaN. Leave items without a "
                "label out of the data, or shuffle so that no batch holds only them (such a batch's gradients are "
                "0: TrainLearner(..., nan_guard=False) trains on past it, without the guard).")
        if learn.epoch == learn.start_epoch and not steps_before:  # no step of this fit ran before this loss (the
            # first batch, or gradient accumulation's first group): whatever the lr, it is not the cause
            sizes = [] if learn.pass_steps else [  # (no step of this fit has run: the weights it started from)
                float(p.detach().abs().max()) for p in trained_parameters(learn.model) if p.numel()]
            largest = math.nan if any(map(math.isnan, sizes)) else max(sizes, default=0.0)  # (max() skips a NaN)
            rebuild = ("Rebuild the model (or load a good checkpoint's weights: learn.model.load_state_dict("
                       "load_checkpoint(path)['model'])), then train with a lower lr (learn.lr_find()).")
            if not math.isfinite(largest):  # an earlier fit diverged: its weights, not the data, are to blame
                raise NonFiniteLossError(
                    f"training loss is {value}{where} before the fit's first step, and the model's weights reach "
                    f"{largest:.3g}: an earlier fit diverged and left them so (or they were loaded so). {rebuild}"
                    + self._advice(learn, first=True))
            large = (f" The model's weights reach {largest:.3g}: if an earlier fit diverged and left them so, "
                     f"{rebuild[0].lower()}{rebuild[1:]}" if largest >= 1e6 else
                     " Or the weights, if an earlier fit diverged.")  # (large on purpose, maybe: both are said)
            when = "the fit's first batch, before any optimizer step" if batch == 0 else \
                "before any optimizer step of this fit"
            raise NonFiniteLossError(
                f"training loss is {value}{where} at epoch {learn.epoch}, batch {batch}, {when}: the lr is not the "
                "cause. Check the data (NaN or inf in the batch's inputs or targets) and the loss function."
                f"{large}{after}" + self._advice(learn, data=True, first=True))
        raise NonFiniteLossError(f"training loss is {value}{where} at epoch {learn.epoch}, batch {batch} "
                                 f"(lr={lr:.3g}).{after}" + self._advice(learn, data=True))

    @staticmethod
    def _advice(learn: Learner, data: bool = False, first: bool = False) -> str:
        good = learn.last_checkpoint  # (before any step, the lr is not the cause: no lower lr advised)
        resume = (f" The last good checkpoint is {good}" + ("." if first else f": {lower_lr_advice(learn, good)}")
                  if good is not None else
                  " There is no checkpoint of this run to resume from (CheckpointCB(path) saves one after each epoch).")
        half = any(getattr(getattr(cb, "scaler", None), "is_enabled", lambda: False)() for cb in learn.cbs)
        fp16 = (" Under float16 autocast (MixedPrecisionCB) a forward that overflows (a value past 65504: large "
                "inputs?) gives such a loss too: check the inputs' range, or use MixedPrecisionCB(torch.bfloat16)."
                if data and half else "")
        if first:
            return fp16 + resume
        return (" Try a lower lr (learn.lr_find()) or gradient clipping (GradClipCB)"
                + (", or check the data and the loss for NaN/inf." if data else ".") + fp16 + resume)


def nonfinite_cause(model: torch.nn.Module, bad: str) -> tuple[str, str]:
    """For `bad`, the first tensor training changes that is not finite (`utils.nonfinite_weight`): what to say is
    not finite, and how that comes about (a norm layer's running statistic is set by batches' statistics, not by
    steps: its three causes are listed; the lower-lr advice that follows is for the first)."""
    if not bad.endswith(("running_mean", "running_var")):  # (parameters come first: a statistic means they are finite)
        return (f"the weights are not finite (NaN or inf: {bad} first)",
                "an optimizer step after the last loss checked diverged, its gradients too large for the lr")
    big = max((float(p.detach().abs().max()) for p in trained_parameters(model) if p.numel()), default=0.0)
    # (no threshold on the weights tells the causes apart: a deep model overflows with weights of 1e4)
    return (f"the running statistic {bad} is not finite (NaN or inf)",
            f"every weight is finite (the largest |weight| is {big:.3g}), and training batches' statistics set it, "
            "not steps directly, so one of three: steps that grew the weights until the activations overflowed (too "
            "high an lr), inputs that held NaN or inf, or a statistic not finite before this fit (once the cause is "
            "fixed, reset it with each norm layer's reset_running_stats())")


def lower_lr_advice(learn: Learner, good: Any) -> str:
    """How to go on from checkpoint `good` with a lower lr: a resume takes a new lr unless a schedule sets it."""
    from .scheduling import sets_lr_from_start  # here: scheduling imports this module's neighbours
    from .swa import SWACB
    schedules = [cb for cb in learn.cbs if isinstance(cb, SWACB) or sets_lr_from_start(cb)]
    if schedules:  # resume refuses lr= with a schedule that sets the lr from the run's start
        own = [type(cb).__name__ for cb in schedules if own_place(learn, cb) is not None]  # (it would refuse the next)
        from .checkpoint import weights_call  # (imported here: it imports this module)
        return (f"a schedule sets the lr, so start a new fit from its weights with a lower peak: "
                f"{weights_call(learn, good)}, then e.g. "
                + (f"learn.rm_cb(...) of the learner's own {', '.join(own)}, and " if own else "")
                + "learn.fit_one_cycle(n, max_lr=lower).")
    return (f"continue from it with a lower lr, learn.fit({learn.n_epochs}{pass_args(learn)}, lr=..., "
            f"resume={str(good)!r}) "
            "(the lr given replaces the checkpoint's).")


def pass_args(learn: Learner) -> str:
    """The fit arguments for the passes the fit left out (', valid=False'), for the calls that continue it."""
    return "".join(f", {p}=False" for p in ("train", "valid") if p not in getattr(learn, "passes", (p,)))


def add_nan_guard(learn: Learner) -> None:
    """Add a `TerminateOnNaNCB` to `learn` unless it has one (TrainLearner's default guard)."""
    if not any(isinstance(cb, TerminateOnNaNCB) for cb in learn.cbs):
        learn.add_cb(TerminateOnNaNCB())


class EarlyStoppingCB(Callback):
    """Stops the fit when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    `monitor` is any name MetricsCB logs (`learn.metrics.names`, e.g. 'valid_loss', 'valid_accuracy'), read from
    its `last` after its pass (of the MetricsCB that logs it, when the fit has two); `mode` ('min' or 'max')
    defaults to the way its name improves (a loss or
    error falls, an accuracy, F1 or AUC rises), and must be given for a name that says neither. The decision is
    made at after_epoch, but the fit is cancelled only at the next epoch's first training batch: by then
    CheckpointCB has saved the last epoch (with this callback's counters), also in a fit without validation, where
    it saves when the next epoch begins. Each fit that trains starts its count afresh, as Keras' and fastai's do
    (the next fit may be another phase: unfrozen, another lr): `for _ in range(10): learn.fit(1)` never stops;
    fit(10) does. A resumed fit goes on with the saved run's count.
    """
    order = 70  # after MetricsCB (10), which fills learn.metrics.last; before CheckpointCB (80) saves its state
    _metrics: Any = None  # the MetricsCB that logs `monitor` (check_monitor finds it each fit)

    def __init__(self, monitor: str = "valid_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str | None = None) -> None:
        mode = monitor_mode(monitor, mode, "EarlyStoppingCB")
        check_count("patience", patience, least=0, what=" (epochs without improvement before stopping)")
        check_number("min_delta", min_delta, what=" (the least change that counts as an improvement)")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._on = True  # this fit trains (an evaluation leaves the count alone)

    def state_dict(self) -> dict[str, Any]:
        """{'best', 'wait', 'stopped_epoch', 'monitor', 'mode'}: the best value seen, epochs without improvement,
        where it stopped, and what it watched."""
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch, "monitor": self.monitor,
                "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; saved while watching another metric (or way), it is not taken: the wait starts
        afresh, with a warning (a best accuracy compared with losses would stop the fit at once)."""
        if not same_watch(self, state, "EarlyStoppingCB"):
            self.best, self.wait, self.stopped_epoch = None, 0, None
            return
        self.best, self.wait = state["best"], state["wait"]
        # a stop is this patience's decision: a larger one than the saved run's trains on, the wait so far kept
        self.stopped_epoch = state["stopped_epoch"] if self.wait >= self.patience else None

    def before_fit(self, learn: Learner) -> None:
        self._on = "train" in learn.passes  # an evaluation stops nothing: the run's count and best stay
        if self._on:
            self._metrics = check_monitor(learn, self.monitor, "EarlyStoppingCB", self.order)
            self.best, self.wait, self.stopped_epoch = None, 0, None
        self._read, self._read_any, self._cut = False, False, []  # (passes cut before a value was read: note_unread)

    def before_batch(self, learn: Learner) -> None:
        if not learn.training:
            return
        resumed = learn.resumed_from is not None and learn.epoch == learn.start_epoch
        if resumed and (self.stopped_epoch is not None or self.wait >= max(self.patience, 1)):
            waited = counted(self.wait, "epoch")
            if self.stopped_epoch is not None:  # a stopped run, resumed
                why = (f"the run resumed from {learn.resumed_from} had stopped early after epoch {self.stopped_epoch} "
                       f"({self.monitor} did not improve for {waited})")
            else:  # a smaller patience than the saved run's: it stops where it would have stopped that run
                self.stopped_epoch = learn.epoch - 1
                why = (f"in the run resumed from {learn.resumed_from}, {self.monitor} did not improve for {waited} up "
                       f"to epoch {self.stopped_epoch}, which patience={self.patience} counts as a stop")
            warn(f"EarlyStoppingCB: {why}, so this fit trains nothing. To train on, resume with a patience above "
                 f"{self.wait} (the wait so far is kept), or without EarlyStoppingCB.")
        if self.stopped_epoch is not None:
            raise CancelFitException()

    def after_epoch(self, learn: Learner) -> None:
        if not self._on or learn.training != self.monitor.startswith("train_") or not isinstance(learn.epoch, int):
            return  # an evaluation, not the pass that logs the monitored value, or SWACB's of the average ('swa')
        value, self._read = self._metrics.last[self.monitor], True
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = learn.epoch
            learn.stop_requested = True  # CheckpointCB saves this epoch, whatever its `every`

    def cleanup_epoch(self, learn: Learner) -> None:
        if self._on:
            note_cut_pass(self, learn)

    def cleanup_fit(self, learn: Learner) -> None:
        if self._on:
            note_unread(self, learn, "EarlyStoppingCB")


class GradClipCB(Callback):
    """Clips the model's gradients' total norm to `max_norm` after each backward, as a hand loop's
    `clip_grad_norm_(model.parameters(), max_norm)` (a tensor the optimizer trains beside the model is not clipped).

    No host sync: the norm stays on the device (`last_norm`). With a grad scaler (fp16 on CUDA), gradients are
    scaled by the loss scale until unscaled, so clipping them as they are would clip at `max_norm × scale`.
    GradClipCB therefore calls `scaler.unscale_(learn.opt)` first when it finds an enabled `torch.amp.GradScaler`
    as `learn.scaler` or as the `scaler` attribute of a callback (the mixed precision callback); `scaler.step`
    then knows not to unscale again. It runs after gradient accumulation (which cancels the step on the
    batches in between), so it clips the summed gradients once per optimizer step.
    """
    order = 25  # at after_backward: after GradAccumCB's CancelStepException, so only real steps are clipped

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        check_number("max_norm", max_norm, strict=True, what=" (the gradients' largest total norm)")
        if norm_type != "inf":  # (torch takes the string too)
            check_number("norm_type", norm_type, strict=True, what=" (the p of the p-norm; float('inf'): the max)")
        # (NumPy numbers as Python's, which checkpoints' safe loader reads: a sweep's np.logspace values)
        self.max_norm, self.norm_type = python_number(max_norm, tensors=False), python_number(norm_type, tensors=False)
        self.last_norm: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """Its settings: a checkpoint keeps them, so a resume with other ones (or without it) is told."""
        return {"max_norm": self.max_norm, "norm_type": self.norm_type}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Warn when the saved run clipped otherwise; this fit's settings are kept."""
        if state != self.state_dict():
            warn(f"resuming: the saved run clipped with GradClipCB({state}), this fit with GradClipCB("
                 f"{self.state_dict()}): the run goes on with this fit's, so it won't end as the saved run "
                 "would have")

    def before_fit(self, learn: Learner) -> None:
        if learn.keeps_grads and getattr(learn, "mom", None) != 0 and "train" in learn.passes:  # (MomentumLearner:
            # .grad holds mom × the earlier ones too; with mom 0, the gradient alone)
            raise TypeError(f"GradClipCB clips .grad, and {type(learn).__name__} keeps its momentum in .grad "
                            "(mom × the earlier gradients, plus this batch's): it would clip the momentum, not the "
                            "gradient, which no hand loop with clipping does. Use TrainLearner with the optimizer's "
                            f"momentum, opt_func=partial(optim.SGD, momentum={getattr(learn, 'mom', 0.9)}), beside "
                            "GradClipCB")

    def after_backward(self, learn: Learner) -> None:
        scaler = _find_scaler(learn)
        if scaler is not None:
            with half_grads_named(learn):  # (float16 weights unfrozen during the fit: named, with the way)
                scaler.unscale_(learn.opt)
        self.last_norm = torch.nn.utils.clip_grad_norm_(learn.model.parameters(), self.max_norm, self.norm_type)


def _find_scaler(learn: Learner) -> Any:
    candidates = [getattr(learn, "scaler", None)] + [getattr(cb, "scaler", None) for cb in learn.cbs]
    for scaler in candidates:
        if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled():
            return scaler
    return None
