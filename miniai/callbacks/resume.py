"""Resuming from a checkpoint: `learn.fit(n, resume=path)` checks it, then loads it after every other before_fit.

Also what Ctrl-C says: where training stopped and how to resume it (`Learner.fit` attaches it to the interrupt).
"""
from __future__ import annotations

import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..learner import Callback, Learner
from .checkpoint import (CheckpointCB, CheckpointMismatchError, list_checkpoints, _generators, _stateful_callbacks,
                         _unwrap, find_checkpoint, load_checkpoint)

__all__ = ["ResumeCB", "start_resume", "interrupt_note", "report_interrupt"]


# ---------------------------------------------------------------- checks, then restore

def _check_model(model: nn.Module, saved: dict[str, torch.Tensor], file: Path) -> None:
    """Raise CheckpointMismatchError naming every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in saved and saved[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return

    def listing(what: str, items: list[str]) -> str:
        shown = items[:10] + ([f"... {len(items) - 10} more"] if len(items) > 10 else [])
        return f"\n  {what} ({len(items)}): " + "; ".join(shown)
    raise CheckpointMismatchError(
        f"checkpoint {file} was saved from a different model:"
        + (listing("missing from the checkpoint", missing) if missing else "")
        + (listing("unexpected in the checkpoint", unexpected) if unexpected else "")
        + (listing("shape mismatch", shapes) if shapes else "")
        + "\nBuild the same model as the run that saved it (same architecture and arguments); nothing was changed.")


def _check_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any], file: Path) -> None:
    saved_groups = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
    own_groups = [len(g["params"]) for g in opt.param_groups]
    if state["optimizer_class"] != type(opt).__name__ or saved_groups != own_groups:
        raise CheckpointMismatchError(
            f"checkpoint {file} was saved with {state['optimizer_class']} over param groups of sizes {saved_groups}; "
            f"this fit made {type(opt).__name__} with {own_groups}: pass the same opt_func (and param groups) as "
            "the run that saved it; nothing was changed.")


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`opt.load_state_dict(state)`, keeping the param group dicts themselves (callbacks hold references to them)."""
    groups = list(opt.param_groups)
    opt.load_state_dict(state)  # makes new group dicts: copy their values into the old ones and put those back
    for old, new in zip(groups, opt.param_groups):
        old.clear()
        old.update(new)
    opt.param_groups[:] = groups


class ResumeCB(Callback):
    """Loads a checkpoint into the learner after every other `before_fit`: model, optimizer, callbacks, loaders, RNG.

    Made by `learn.fit(n, resume=path)` through `start_resume`, which already checked the model's keys and set
    `learn.epochs`. Running last at before_fit is what makes it work: schedulers build their scheduler there,
    DeviceCB moves the model there (and DDP or compile may wrap it), and only now is the optimizer final.
    """
    order = 1000  # after every other before_fit

    def __init__(self, state: dict[str, Any], file: Path) -> None:
        self.state, self.file = state, file

    def before_fit(self, learn: Learner) -> None:
        state, file = self.state, self.file
        model = _unwrap(learn.model)
        _check_model(model, state["model"], file)  # again: a callback may have changed the model since fit began
        _check_optimizer(learn.opt, state, file)
        stateful = _stateful_callbacks(learn)
        saved = state["callbacks"]
        # CheckpointCB's own state is bookkeeping (best so far): resuming without one is normal
        lost = [k for k in saved if k not in stateful and not k.startswith("CheckpointCB_")]
        new = [k for k in stateful if k not in saved and not isinstance(stateful[k], CheckpointCB)]
        if lost or new:
            warnings.warn(f"resuming from {file}: " + (f"its state for {lost} has no callback here (dropped)"
                          if lost else "") + ("; " if lost and new else "") + (f"{new} start fresh (not in the "
                          "checkpoint)" if new else "") + ". Pass the same callbacks as the saved run to continue "
                          "it exactly.", stacklevel=2)
        loaders = {name: getattr(learn.dls, name) for name in state["loaders"] if hasattr(learn.dls, name)}
        for name, dl in loaders.items():
            _check_loader(dl, state["loaders"][name], name)
        # everything is checked: only from here on is anything overwritten
        model.load_state_dict(state["model"])
        for name, p in model.named_parameters():
            grad = state["grads"].get(name)
            p.grad = None if grad is None else grad.to(p.device, p.dtype)
        _load_optimizer(learn.opt, state["optimizer"])
        for key, cb in stateful.items():
            if key in saved:
                cb.load_state_dict(saved[key])
        metrics = getattr(learn, "metrics", None)
        if state["metrics"] is not None and metrics is not None and not callable(getattr(metrics, "state_dict", None)):
            metrics.history, metrics.last = list(state["metrics"]["history"]), dict(state["metrics"]["last"])
        for name, dl in loaders.items():
            _load_loader_state(dl, state["loaders"][name])
        _set_rng_state(state["rng"])  # last: nothing may draw random numbers between this and the first batch
        self.state = {}  # let the checkpoint's tensors be freed


def start_resume(learn: Learner, path: str | os.PathLike) -> ResumeCB:
    """Read a checkpoint, check it against the model, set `learn.epochs`; return the callback that loads it.

    Called by `Learner.fit(resume=...)` after it set `n_epochs`, before the optimizer is made or any callback
    runs, so a wrong file fails at once and changes nothing.
    """
    file = find_checkpoint(path)
    state = load_checkpoint(file)
    done, n_epochs = int(state["epoch"]), learn.n_epochs
    if done > n_epochs:
        raise ValueError(f"checkpoint {file} is after epoch {done}, but fit asks for {n_epochs} epochs in total: "
                         f"n_epochs counts from the start of the run, so pass n_epochs >= {done}.")
    _check_model(_unwrap(learn.model), state["model"], file)
    learn.epochs = range(done, n_epochs)
    if done == n_epochs:
        warnings.warn(f"checkpoint {file} already finished {done} epochs: nothing left to train", stacklevel=3)
    return ResumeCB(state, file)


def _check_loader(dl: Any, state: dict[str, Any] | None, name: str) -> None:
    """Raise CheckpointMismatchError if `dl` can't take the loader state saved for dls.<name>."""
    if state is None:
        return
    if "state_dict" in state:
        if not callable(getattr(dl, "load_state_dict", None)):
            raise CheckpointMismatchError(f"the checkpoint holds a state_dict for dls.{name} but this loader "
                                          f"({type(dl).__name__}) has none: use the same loader type as the saved run")
    elif len(_generators(dl)) != len(state["generators"]):
        raise CheckpointMismatchError(f"dls.{name} draws from {len(_generators(dl))} torch.Generator(s), the "
                                      f"checkpoint saved {len(state['generators'])}: build the loader as in the "
                                      "saved run")


def _load_loader_state(dl: Any, state: dict[str, Any] | None) -> None:
    if state is None:
        return
    if "state_dict" in state:
        dl.load_state_dict(state["state_dict"])  # miniai.data.TensorLoader: {seed, epoch}
        return
    for g, saved in zip(_generators(dl), state["generators"]):
        g.set_state(saved)


def _set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(f"the checkpoint has RNG states for {len(state['cuda'])} CUDA devices, this machine "
                          f"{torch.cuda.device_count()}; CUDA random numbers will differ from the saved run",
                          stacklevel=3)


# ---------------------------------------------------------------- Ctrl-C

def interrupt_note(learn: Learner) -> str:
    """What Ctrl-C stopped (epoch, pass, batch) and how to resume; `Learner.fit` adds it to the KeyboardInterrupt."""
    epoch = getattr(learn, "epoch", None)
    if epoch is None:
        where = "before the first epoch started"
    else:
        n_batches = len(learn.dl) if hasattr(learn.dl, "__len__") else "?"
        at = "before its first batch" if learn.iter is None else f"at batch {learn.iter} (from 0) of {n_batches}"
        where = f"in epoch {epoch} (from 0), {'training' if learn.training else 'validation'} pass, {at}"
    note = (f"Training interrupted {where}. Every cleanup ran; the learner holds the weights of that moment and "
            "can fit again.")
    saver = next((cb for cb in learn.cbs if isinstance(cb, CheckpointCB)), None)
    newest = list_checkpoints(saver.path)[-1][1] if saver is not None and list_checkpoints(saver.path) else None
    if newest is not None:
        note += (f" The newest checkpoint is {newest}; continue the run with "
                 f"learn.fit({learn.n_epochs}, resume='{saver.path}').")
    elif saver is not None:
        note += " No checkpoint was written yet (the first is saved after the first epoch)."
    else:
        note += " To be able to resume, train with CheckpointCB(path) in the callbacks."
    return note


def report_interrupt(learn: Learner, error: KeyboardInterrupt) -> None:
    """Attach `interrupt_note` to the KeyboardInterrupt (shown under its traceback); print it before 3.11."""
    note = interrupt_note(learn)
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        print(note, file=sys.stderr)
