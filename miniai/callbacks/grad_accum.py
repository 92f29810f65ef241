"""Gradient accumulation: one optimizer step per `n_steps` training batches, on the mean of their gradients (as one
batch n_steps× larger when the batches are the same size; a short last batch weighs as much as a full one)."""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from ..checks import all_params, check_count, warn
from ..learner import Callback, CancelBatchException, CancelStepException, Learner
from ..utils import loss_reduction

__all__ = ["GradAccumCB"]


class GradAccumCB(Callback):
    """Step the optimizer every `n_steps` training batches, on the mean of their gradients (on their sum for a loss
    of reduction='sum'): the gradient of one batch `n_steps`× larger either way (of a mean over the items alone:
    below). (The reduction is an nn loss's or a partial's `reduction`; a function of your own that sums says so with
    `my_loss.reduction = 'sum'`.) A loss that divides by what it counts, a class-weighted or `ignore_index`
    cross-entropy, is each batch's own mean, weighed alike, as in a hand loop's `(loss / k).backward()` and under
    DDP: the bigger batch's would weigh each batch by its targets' weights or counted targets (a slightly different
    objective).

    Between steps it raises `CancelStepException` from after_backward: the gradients add up in `.grad`, and
    schedulers, `after_step` readers and `zero_grad` wait for the real step. At a step it divides the summed
    gradients by the number of batches summed, k. Gradients are linear in the loss, so this is scaling each batch's
    loss by 1/k (exactly for k a power of 2; to float rounding otherwise; under float16 MixedPrecisionCB's scaler
    starts k× lower, so its gradients overflow as the recipe's do), but `learn.loss` stays each batch's true loss
    for MetricsCB and progress bars, and nothing has to change between the loss and the backward. The last group
    of a training pass also steps, even when it has fewer than `n_steps` batches (it is then their mean), so every
    epoch ends on a step.

    `optimizer_steps(n_batches)` = ceil(n_batches / n_steps) is what the scheduling callbacks and
    `fit_one_cycle` ask (through `miniai.callbacks.scheduling.steps_per_epoch`), so a one-cycle still ends
    exactly on the fit's last step. Gradients already in `.grad` when a group begins (MomentumLearner keeps mom ×
    the old ones instead of zeroing) are kept as they are: only the group's own are averaged. Tensors the optimizer
    trains beside the model (a temperature) are averaged with the model's parameters.

    Groups are counted by position in the pass: a batch dropped before its backward (`CancelBatchException` at
    after_loss) leaves its group a batch short; if it was the group's last, the group goes on into the next one,
    one optimizer step fewer (BatchSchedCB says so at the end of the fit when the steps missing leave a schedule
    short of its end by more than one step and 1% of them); if it was the pass's last batch, the group's gradients
    are dropped, with a warning. A group a pass cut short (`CancelEpochException`) left is dropped. With a train
    loader that has no length the last batch can't be told apart: groups then run across passes (a cut one too),
    `n_steps` backwards each, and one not stepped when the fit ends is dropped with a warning, as is a pass's last
    group when the loader gives fewer batches than its len() says. So is, silently, a group a fit broken off left
    (SingleBatchCB, an error): the next fit's first step never adds its gradients. One GradAccumCB per learner.
    """
    order = 15  # at after_backward, before GradClipCB (25): only the summed gradients of real steps get clipped
    _model: Any = None  # the fit's model, set at before_fit
    _trained = False
    _divide = True  # (set at before_fit: False for a loss of reduction="sum")

    def __init__(self, n_steps: int) -> None:
        self.n_steps = check_count("GradAccumCB n_steps", n_steps, what=" (batches per optimizer step)")
        self._summed = 0  # batches whose gradients are in .grad since the last step
        self._carried: list[torch.Tensor | None] = []  # per parameter, its .grad before the group (MomentumLearner)
        self._n_batches: int | None = None

    def state_dict(self) -> dict[str, Any]:
        """{'summed': batches whose gradients are in .grad, 'carried': the gradients there before them} (a group
        may cross epochs when the loader has no length; the checkpoint restores .grad itself)."""
        return {"summed": self._summed, "carried": [None if g is None else g.clone() for g in self._carried],
                "n_steps": self.n_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; a run saved with another `n_steps` is refused (its groups would not continue)."""
        saved = state.get("n_steps", self.n_steps)  # (not in checkpoints of before it was saved)
        if saved != self.n_steps:
            raise ValueError(f"the checkpoint's run accumulated GradAccumCB({saved}), this fit GradAccumCB("
                             f"{self.n_steps}): resume with GradAccumCB({saved}), or start a new fit from its weights")
        self._summed, self._carried = state["summed"], [None if g is None else g.clone() for g in state["carried"]]

    def optimizer_steps(self, n_batches: int) -> int:
        """Optimizer steps a training pass of `n_batches` batches takes."""
        return math.ceil(n_batches / self.n_steps)

    def before_fit(self, learn: Learner) -> None:
        others = [cb for cb in learn.cbs if isinstance(cb, GradAccumCB)]
        if len(others) > 1:
            raise ValueError(f"this learner has {len(others)} GradAccumCB callbacks ("
                             + ", ".join(f"n_steps={cb.n_steps}" for cb in others)
                             + "): each would cancel steps and divide the summed gradients by its own count, garbling "
                               "them. Accumulate with one GradAccumCB: keep one and learn.rm_cb() the others")
        self._model = learn.model  # the one trained (SWACB puts its average in learn.model before cleanup_fit)
        self._divide = loss_reduction(learn.loss_func) != "sum"  # a bigger batch's summed loss: the summed grads
        self._trained = False  # whether this fit summed a batch (a resumed fit may have none left to train)

    def before_epoch(self, learn: Learner) -> None:
        if not learn.training:
            return
        try:
            self._n_batches = len(learn.dls.train)
        except TypeError:  # no length: a partial last group joins the next pass's first one
            self._n_batches = None
            return
        self._drop_group(learn)  # a pass cut short (CancelEpochException) left a partial group

    def after_epoch(self, learn: Learner) -> None:
        if learn.training and self._summed and self._n_batches is not None:  # the pass's last batch never came
            warn(f"GradAccumCB: training pass {learn.epoch} gave {learn.iter + 1} batches, and the train loader's "
                 f"len() says {self._n_batches}: the last group's {self._summed} batch(es) took no optimizer step, "
                 "their gradients are dropped. Give the loader its true length (an IterableDataset's __len__), "
                 "or none")
            self._drop_group(learn)

    def cleanup_fit(self, learn: Learner) -> None:
        if self._summed and self._trained and self._n_batches is None and learn.stopped_by is None:  # (SingleBatchCB's:
            # an error's: no word) a loader without length: its last batch can't be told, its last group never stepped
            warn(f"GradAccumCB: the fit ended with {self._summed} batch(es) summed in a group that took no "
                 "optimizer step (the train loader has no length, so its last batch can't be told): their "
                 "gradients are dropped, not carried into the next fit")
        self._drop_group(learn)  # a group not stepped (SingleBatchCB, an error) must not reach the next fit's step

    def _drop_group(self, learn: Learner) -> None:
        """Drop a partial group's gradients, keeping what was in .grad before it (MomentumLearner's momentum; for
        others nothing, as zero_grad), and start afresh."""
        params = all_params(learn.model if self._model is None else self._model, learn.opt)
        if self._summed and any(p.grad is not None for p in params):  # (none: the learner dropped them, an error)
            for param, carried in zip(params, self._carried or itertools.repeat(None)):
                param.grad = None if carried is None else carried.to(param.device)  # (a checkpoint's: on the CPU)
        self._summed, self._carried = 0, []

    def after_loss(self, learn: Learner) -> None:
        if learn.training and self._summed and all(p.grad is None for p in all_params(learn.model, learn.opt)):
            self._summed, self._carried = 0, []  # the learner dropped the group's gradients (a fit that ended inside
            # a batch after its backward): a group carried over from it starts afresh
        if learn.training and not self._summed:
            # a group starts: gradients already in .grad (MomentumLearner keeps mom x the old ones) are not this
            # group's, and must come through the division below as they are; usually there are none (zero_grad).
            # One entry per parameter (None: no gradient), so they pair up whatever gains a gradient meanwhile
            grads = [p.grad for p in all_params(learn.model, learn.opt)]
            self._carried = [None if g is None else g.clone() for g in grads] if any(
                g is not None for g in grads) else []

    def after_backward(self, learn: Learner) -> None:
        if self._n_batches is not None and learn.iter >= self._n_batches:  # (every batch past it would step alone)
            raise ValueError(f"GradAccumCB: training pass {learn.epoch} gave a batch past the {self._n_batches} the "
                             "train loader's len() says, which its groups were planned for (a callback's learn.dl of "
                             "another length, a loader whose length changed or is an estimate: an IterableDataset read "
                             "by workers): keep the training loader's length through the fit, or give the loader its "
                             "true length (or none)")
        self._summed += 1
        self._trained = True
        # groups of n_steps from each pass's start; without a length (no last batch to step on) they run across
        # passes, n_steps batches each (counted by position, a short pass would never reach its step)
        full = (learn.iter + 1) % self.n_steps == 0 if self._n_batches is not None else self._summed >= self.n_steps
        if not full and not self._last_batch(learn):
            raise CancelStepException()  # keep adding gradients up
        self._average(learn)

    def cleanup_batch(self, learn: Learner) -> None:
        if learn.training and self._summed and self._last_batch(learn) and \
                isinstance(learn.stopped_by, CancelBatchException):  # it never reached after_backward, the step
            warn(f"GradAccumCB: the last batch of training pass {learn.epoch} was dropped before its backward "
                 f"(CancelBatchException), so the {self._summed} batch(es) summed before it in its group "
                 "took no optimizer step: their gradients are dropped, as a hand loop skipping its stepping "
                 "batch would. Drop batches before a group's last one to keep a pass's last step.")
            self._drop_group(learn)

    def _last_batch(self, learn: Learner) -> bool:
        return self._n_batches is not None and learn.iter + 1 >= self._n_batches

    def _average(self, learn: Learner) -> None:
        """Divide the group's summed gradients by the number of batches summed (carried ones stay as they are)."""
        if self._summed > 1 and self._divide:
            params = all_params(learn.model, learn.opt)
            carried = self._carried or [None] * len(params)
            pairs = [(p.grad, c) for p, c in zip(params, carried) if p.grad is not None]
            plain = [g for g, c in pairs if c is None]
            if plain:
                torch._foreach_div_(plain, float(self._summed))  # one fused op per step (what clip_grad_norm_ uses)
            kept = [(g, c.to(g.device)) for g, c in pairs if c is not None]  # carried + (sum - carried) / k
            if kept:
                grads, olds = [g for g, _ in kept], [c for _, c in kept]
                torch._foreach_sub_(grads, olds)
                torch._foreach_div_(grads, float(self._summed))
                torch._foreach_add_(grads, olds)
        self._summed, self._carried = 0, []
