"""The learners that do the steps themselves: `TrainLearner` (the usual supervised steps) and `MomentumLearner`.

The loop in learner.py calls each step on the callback that owns it, else on the learner: these classes give the
learner its own `predict`, `get_loss`, `backward`, `step` and `zero_grad`, as the course's learner module did.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn, optim

from .checks import all_params, call_model, loss_backward, warn
from .learner import Callback, Learner

__all__ = ["TrainLearner", "MomentumLearner"]


class TrainLearner(Learner):
    """A Learner with the usual supervised steps: `model(*xb)`, `loss_func(preds, *yb)`, backward, step, zero_grad.

    A `TerminateOnNaNCB` is added unless `nan_guard=False` (or one is already in `cbs`): a NaN or infinite loss
    stops the fit with a message. A callback may own any step instead (`MixedPrecisionCB` owns backward and step).
    """

    def __init__(self, model: nn.Module, dls: Any = (0,), loss_func: Callable = F.mse_loss, lr: float | None = 0.1,
                 cbs: Iterable[Callback] | None = None, opt_func: Callable[..., optim.Optimizer] = optim.SGD,
                 nan_guard: bool = True, n_inp: int = 1) -> None:
        super().__init__(model, dls, loss_func, lr, cbs, opt_func, n_inp)
        # imported here: the callbacks import this module (scheduling and mixed precision ask for MomentumLearner)
        from .callbacks.basic import SupervisedLoss  # loss_func(preds, *yb), refusing shapes that give a wrong loss
        from .callbacks.guards import add_nan_guard
        self._supervised_loss = SupervisedLoss()
        if nan_guard:
            add_nan_guard(self)

    def predict(self, *items: Any) -> None:
        """`preds = model(*xb)`."""
        if items:  # (fastai's learn.predict(item))
            raise TypeError("learn.predict is the loop's step (preds = model(*xb), for the batch in the loop) and "
                            "takes no arguments: to predict items, use learn.infer(x) (raw images: class, name, "
                            "probabilities) or learn.get_preds(dl=[(x,)]) (a batch of prepared inputs)")
        self.preds = call_model(self)  # (an error gets a note of the inputs it was given)

    def get_loss(self) -> None:
        """`loss = loss_func(preds, *yb)`."""
        self.loss = self._supervised_loss(self)

    def backward(self) -> None:
        """Gradients of the loss."""
        loss_backward(self)

    def step(self) -> None:
        """The optimizer step."""
        self.opt.step()

    def zero_grad(self) -> None:
        """Reset the gradients."""
        self.opt.zero_grad()


class MomentumLearner(TrainLearner):
    """TrainLearner that keeps `mom` × the old gradients instead of zeroing them (momentum, the course's way)."""
    keeps_grads = True  # the momentum lives in .grad: fit(1); fit(1) trains as fit(2) does
    _opt: Any = None
    _checked_opt: Any = None  # the optimizer whose own momentum step() looked at

    def __init__(self, model: nn.Module, dls: Any, loss_func: Callable, lr: float | None = None,
                 cbs: Iterable[Callback] | None = None, opt_func: Callable[..., optim.Optimizer] = optim.SGD,
                 mom: float = 0.85, nan_guard: bool = True, n_inp: int = 1) -> None:
        self.mom = mom
        super().__init__(model, dls, loss_func, lr, cbs, opt_func, nan_guard, n_inp)

    @property
    def opt(self) -> Any:
        """The optimizer of the fit; each one set gets a step pre-hook dropping the kept momentum of parameters frozen
        since (`_drop_frozen_grads`), before its first step, whoever steps (the learner, MixedPrecisionCB's scaler)."""
        return self._opt

    @opt.setter
    def opt(self, opt: Any) -> None:
        self._opt = opt
        hooks = getattr(opt, "_optimizer_step_pre_hooks", {})  # (torch's; a copy of an optimizer has none)
        if hasattr(opt, "register_step_pre_hook") and _drop_frozen_grads not in hooks.values():
            opt.register_step_pre_hook(_drop_frozen_grads)  # (once: an opt_func may give the same one each fit)

    def __getstate__(self) -> dict[str, Any]:
        # the momentum lives in the parameters' .grad, which a copy of a Parameter (deepcopy, pickle) leaves out;
        # kept with the parameters themselves, not by name: a copy reached through the model (a hook holding the
        # learner) is made while the model's copy is not built yet
        momentum = [(p, p.grad) for p in all_params(self.model, self.opt) if p.grad is not None]
        return {**super().__getstate__(), "_momentum": momentum}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "opt" in state:  # pickled before opt was a property (its optimizer under that name)
            state["_opt"] = state.pop("opt")
        momentum = state.pop("_momentum", [])
        vars(self).update(state)
        for p, grad in momentum:
            p.grad = grad
        with contextlib.suppress(AttributeError):  # (an optimizer whose copy is not built yet: its next fit's is)
            self.opt = self._opt  # a copied optimizer has no hooks (torch leaves them out): hooked again

    @torch.no_grad()
    def zero_grad(self) -> None:
        """Scale the gradients by `mom` instead of zeroing them (a frozen parameter's are dropped: kept, every step
        would move it). After each fit's first step: a warning if the optimizer has momentum of its own."""
        if self.opt is not self._checked_opt:
            self._checked_opt = self.opt
            _warn_optimizer_clashes(self)
        for p in all_params(self.model, self.opt):  # (a tensor the optimizer trains beside the model too)
            if p.grad is not None:
                if p.requires_grad:
                    p.grad *= self.mom
                else:
                    p.grad = None


def _drop_frozen_grads(opt: optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Before each step: no gradient for a parameter frozen since zero_grad kept its momentum (a callback froze it
    at an epoch's start, say), which the step would move."""
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None and not p.requires_grad:
                p.grad = None


def _warn_optimizer_clashes(learn: MomentumLearner) -> None:
    """MomentumLearner's momentum is in .grad: one in the optimizer too (in any param group) stacks a second; and
    SGD's weight decay, added to a copy of the gradient, never enters it."""
    decay = next((g["weight_decay"] for g in getattr(learn.opt, "param_groups", []) if g.get("weight_decay")), 0)
    if decay and learn.mom and isinstance(learn.opt, optim.SGD):  # (mom 0: no momentum to leave it out of)
        warn(f"MomentumLearner keeps its momentum in .grad, and SGD adds weight_decay={decay} to a copy of each "
             "gradient, not to .grad: the decay stays out of the momentum, about (1 - mom) × the decay of torch's "
             f"SGD(momentum={learn.mom}) with it. For torch's, use TrainLearner with an opt_func of SGD with "
             f"momentum={learn.mom} and the same weight_decay (per param group, as yours has it)")
    for group in getattr(learn.opt, "param_groups", []):
        own = f"momentum={group['momentum']}" if group.get("momentum") else \
            f"betas[0]={group['betas'][0]}" if group.get("betas", (0,))[0] else None
        if own:
            # plain SGD's momentum, set by a schedule that cycles it (torch's OneCycleLR, CyclicLR)
            cycled = not getattr(learn.opt, "defaults", {}).get("momentum") and any(
                getattr(getattr(cb, "scheduler", None), "cycle_momentum", False) for cb in learn.cbs)
            fix = ("Build the schedule with cycle_momentum=False (torch's OneCycleLR and CyclicLR cycle the "
                   "optimizer's momentum unless told not to)" if cycled else
                   "Use MomentumLearner with plain SGD (opt_func=optim.SGD)")
            warn(f"MomentumLearner keeps mom={learn.mom} × the gradients as its momentum, and the optimizer "
                 f"has {own} of its own: a second momentum on top, which makes steps several times larger. "
                 f"{fix}, or TrainLearner with the optimizer's momentum")
            return
