"""Resuming from a checkpoint: `learn.fit(n, resume=path)` reads and checks it, then loads it after every before_fit.

Everything is checked before anything is overwritten: the model's keys and shapes, the optimizer's class and the
names of its parameters (its state is matched to parameters by name, so a model whose attributes were defined in
another order still gets each layer's own moments), the schedules' length, the loaders. A refused resume leaves
the learner as it was.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ..checks import beside_model, warn
from ..distributed import is_dist, rank, world_size
from ..learner import Callback, Learner
from ..utils import checksums_match, counted
from .checkpoint import (CheckpointCB, CheckpointMismatchError, find_checkpoint, held_tensors,
                         load_checkpoint, loader_generators, loader_size, optimizer_settings, param_names,
                         run_generators, set_generator_state, setup_of, stateful_callbacks, unwrap, weights_call)
from .guards import EarlyStoppingCB, GradClipCB
from .loggers import TensorBoardCB
from .records import forget_records
from .grad_accum import GradAccumCB
from .scheduling import SCALING, BaseSchedCB, BatchSchedCB, EpochSchedCB, RecorderCB, sets_lr_from_start
from .swa import SWACB, _described

__all__ = ["ResumeCB", "resume_cb", "add_resume"]


# what a resume reads of every checkpoint (files of every version hold them)
_RESUMED = ("epoch", "model", "optimizer", "optimizer_class", "callbacks", "loaders", "grads", "rng", "metrics")


def add_resume(learn: Learner, path: str | os.PathLike, lr: float | None, temporary: list) -> float | None:
    """`fit(resume=path)`'s set-up: read and check the checkpoint (`resume_cb`), add the callback that loads it at
    before_fit for this call only (listed in `temporary`, which fit removes), and return the saved run's lr."""
    cb = resume_cb(learn, path, lr)
    temporary.append(cb)
    learn.add_cb(cb)
    return cb.fit_lr


def resume_cb(learn: Learner, path: str | os.PathLike, lr: float | None = None) -> ResumeCB:
    """Read a checkpoint, check it against the model, set `learn.epochs`; return the callback that loads it.

    Called by `Learner.fit(resume=...)` before the optimizer is made or any callback runs, so a wrong file fails
    at once and changes nothing. `lr` is the lr given to that fit, which replaces the checkpoint's.
    """
    file = find_checkpoint(path)
    state = load_checkpoint(path if Path(path).expanduser().is_dir() else file)  # (a directory's: its name checked)
    missing = [key for key in _RESUMED if key not in state]
    if missing:  # (a file trimmed or made by hand: a KeyError met halfway through the loads left the weights loaded)
        raise CheckpointMismatchError(f"checkpoint {file} lacks {', '.join(map(repr, missing))}, which every file "
                                      "CheckpointCB writes holds: a resume needs all of them. Trimmed by hand? To go "
                                      "on from its weights alone, load them into a new fit: learn.model."
                                      f"load_state_dict(load_checkpoint({str(file)!r})['model'])")
    done, n_epochs = int(state["epoch"]), learn.n_epochs
    evaluation = "train" not in learn.passes
    if evaluation and n_epochs != done + 1:  # fewer: nothing to run; more: the same weights again, in rows
        # labelled as epochs the run had not trained (with the checkpoint's loss)
        again = (f"would validate them {n_epochs - done} times, in rows labelled as epoch"
                 f"{f's {done}-' if n_epochs > done + 2 else ' '}{n_epochs - 2} the run had not trained")
        raise ValueError(f"checkpoint {file} holds the weights after {counted(done, 'epoch')}; an evaluation resumed "
                         f"from it validates them once, labelled epoch {done - 1} as the run logged them, so n_epochs="
                         f"{n_epochs} {again if n_epochs > done else 'leaves no pass to run'}: "
                         f"learn.fit({done + 1}, train=False, resume=...)")
    if done > n_epochs:
        raise ValueError(f"checkpoint {file} is after epoch {done}, but fit asks for {counted(n_epochs, 'epoch')} in "
                         f"total: n_epochs counts from the start of the run, so pass n_epochs >= {done}")
    _check_model(unwrap(learn.model), state["model"], file)
    if done == n_epochs:
        warn(f"checkpoint {file} already finished {done} epochs: nothing left to train")
    learn.start_epoch, learn.resumed_from, learn.last_checkpoint = done, file, file
    # an evaluation's passes are labelled from the epoch whose weights they validate (done - 1, as the run logged
    # them): labelled `done`, a row said the next epoch, never trained, had the checkpoint's loss
    shift = 1 if evaluation else 0
    learn.epochs = range(done - shift, n_epochs - shift)
    learn.epoch_offset = int(state.get("epoch_offset", 0))  # the run's own (a checkpoint from before it was saved: 0)
    return ResumeCB(state, file, lr)


def _schedules(cb: Callback) -> bool:
    """Whether `cb` sets the lr by a schedule counted from the run's start: a scheduling callback, but for a
    plateau's, which only scales the lr it finds when the metric stalls."""
    return isinstance(cb, BaseSchedCB) and not isinstance(cb.scheduler, ReduceLROnPlateau)


class ResumeCB(Callback):
    """Loads a checkpoint into the learner after every other `before_fit`: model, optimizer, callbacks, loaders, RNG.

    Made by `learn.fit(n, resume=path)` through `add_resume`. Running last at before_fit is what makes it work:
    schedulers build their scheduler there, DeviceCB moves the model there (and DDP or compile may wrap it), and
    only now is the optimizer final. An `lr` given to that fit replaces the checkpoint's (refused when a
    scheduling callback would overwrite it at its next step).
    """
    order = math.inf  # after every other before_fit, whatever its order (else a later one could reset what it loads)

    def __init__(self, state: dict[str, Any], file: Path, lr: float | None = None) -> None:
        self.state, self.file, self.lr = state, file, lr
        # the lr fit makes the optimizer with: the one given, else the saved run's (callbacks that add param groups
        # at before_fit read it as learn.fit_lr, as they did in the run); a checkpoint older than it has none
        self.fit_lr: float | None = lr if lr is not None else state.get("fit_lr")
        self._seedless: list[Any] = []  # loaders built without a seed, which take the saved run's for this fit

    def cleanup_fit(self, learn: Learner) -> None:
        for dl in self._seedless:  # their own again: a later resume from another run is not refused for it
            dl.seed = None

    def before_fit(self, learn: Learner) -> None:
        state, file = self.state, self.file
        model = unwrap(learn.model)
        # --- checks: nothing is changed until all of them pass
        _check_model(model, state["model"], file, dtypes_too=False)  # again: a callback may have changed the model
        opt_state = _optimizer_state(learn, model, state, file, ratios=self.lr is None)
        beside = beside_model(model, learn.opt)  # tensors the optimizer trains beside the model (a temperature)
        saved_beside = state.get("beside_model")  # (older files: none)
        shapes = [f"tensor {i} the optimizer trains beside the model: {tuple(value.shape)} saved, {tuple(p.shape)} here"
                  for i, (p, (value, _)) in enumerate(zip(beside, saved_beside or ())) if value.shape != p.shape]
        if shapes:
            raise CheckpointMismatchError(f"checkpoint {file}: {'; '.join(shapes)}: build them as the run that saved "
                                          "it did; nothing was changed.")
        if beside and saved_beside is None:
            warn(f"{file} predates saving the tensors an optimizer trains beside the model ({len(beside)} "
                 "here): they go on from their values now, so the run will not continue exactly")
        # which parameters train: a fit's before_fit may freeze what a callback unfroze at a later epoch of the run
        frozen, params = state.get("frozen"), dict(model.named_parameters())  # (older files: none saved)
        flipped = [] if frozen is None else [n for n, p in params.items() if p.requires_grad == (n in frozen)]
        saved_learner = state.get("learner")  # (older files: none)
        here = {"class": type(learn).__name__, "mom": getattr(learn, "mom", None)}
        if saved_learner is not None and saved_learner != here:  # the saved grads are mom x grads of that learner's
            def named(learner: dict[str, Any]) -> str:
                return learner["class"] + ("" if learner["mom"] is None else f"(mom={learner['mom']})")
            raise CheckpointMismatchError(
                f"checkpoint {file} was saved by a {named(saved_learner)}, this is a {named(here)}: resume with the "
                "learner the run was saved with, or start a new fit from the checkpoint's weights; nothing was changed.")
        stateful, saved, training = stateful_callbacks(learn), state["callbacks"], "train" in learn.passes
        # SWALR, once running (resumed past swa_start), sets the lr each epoch too
        schedulers = [k for k, cb in stateful.items() if sets_lr_from_start(cb)
                      or isinstance(cb, SWACB) and learn.start_epoch > cb.swa_start]
        if self.lr is not None and schedulers and training:
            raise ValueError(
                f"fit(lr={self.lr}, resume=...) with {', '.join(schedulers)}: its schedule sets the lr at every step "
                "from where the run began, so the lr given would be overwritten (a schedule that only scales the lr "
                f"it finds, as {', '.join(c.__name__ for c in SCALING)} do, goes on from it). "
                "Resume without lr= to continue the saved schedule, or start a new fit from the checkpoint's weights "
                f"({weights_call(learn, file)}, then e.g. learn.fit_one_cycle(n, max_lr=lower)).")
        late = [k for k, cb in stateful.items() if isinstance(cb, SWACB) and training
                and learn.start_epoch > cb.swa_start and not SWACB.began(saved.get(k))]
        if late:  # SWALR is built at epoch swa_start, which this fit starts past: it would average nothing
            raise ValueError(f"this fit resumes at epoch {learn.start_epoch}, past {late[0]}'s swa_start="
                             f"{stateful[late[0]].swa_start}, and the run saved in {file} had not begun averaging (or "
                             f"had no SWACB): resume with the saved run's SWACB, or one of swa_start >= "
                             f"{learn.start_epoch}; nothing was changed.")
        # CheckpointCB's and TensorBoardCB's own states are bookkeeping (best so far, the log's run): resuming
        # without one is normal; so is an evaluation without what only trains (the run's schedule, clipping, ...)
        skipped = (CheckpointCB, TensorBoardCB) + (() if training else _TRAINING_ONLY)
        names = {c.__name__ for c in skipped}  # (a saved state's key: '<class name>_<i>')
        lost = [k for k in saved if k not in stateful and k.rpartition("_")[0] not in names]
        new = [k for k in stateful if k not in saved and not isinstance(stateful[k], skipped)]
        # a schedule counts its steps from the start of the run: begun mid-run it runs another shape (and torch's
        # keys it wrote into the param groups are replaced by the saved optimizer's)
        counted = [k for k in new if _schedules(stateful[k])]
        if counted and training and learn.start_epoch < learn.n_epochs:
            raise ValueError(
                f"resuming with {', '.join(counted)} ({type(stateful[counted[0]].scheduler).__name__}), but the run "
                f"saved in {file} had no such schedule: a schedule counts from the start of a run and can't begin "
                "mid-run. Resume with the same callbacks as the run that saved it (fit_one_cycle only for a run "
                f"saved by fit_one_cycle), or start a new fit from the checkpoint's weights "
                f"({weights_call(learn, file)}, then e.g. learn.fit_one_cycle(n, max_lr)); nothing was changed.")
        if flipped:
            froze = [n for n in flipped if not params[n].requires_grad]  # (here; trainable in the saved run)
            thawed = [n for n in flipped if n not in froze]
            warn(f"resuming from {file}: parameters frozen here, trainable in the saved run: "
                 f"{froze or 'none'}; trainable here, frozen in the saved run: {thawed or 'none'}. "
                 "They are set as the saved run had them, so it continues exactly; to train with others "
                 "frozen, start a new fit from the checkpoint's weights.")
        if lost or new:
            warn(f"resuming from {file}: " + (f"its state for {lost} has no callback here (dropped"
                 f"{_without(learn, saved, lost, opt_state, self.lr)})"
                 if lost else "") + ("; " if lost and new else "") + (f"{new} start fresh (not in the "
                 "checkpoint)" if new else "") + ". Pass the same callbacks as the saved run to continue "
                 "it exactly.")
        loaders = {name: getattr(learn.dls, name) for name in state["loaders"] if hasattr(learn.dls, name)}
        for name, dl in loaders.items():
            _check_loader(dl, state["loaders"][name], name)
            size, now = state.get("loader_sizes", {}).get(name), loader_size(dl)  # (older files: none saved)
            # (validation batches train nothing: another size of them, a run on another number of processes whose
            # validation batch is each rank's, ends as the saved run would have)
            counts = ("batches", "items") if name == "train" else ("items",)
            if size is not None and any(size[k] != now[k] for k in counts if size.get(k) is not None and
                                        now[k] is not None):  # (None: a count not known, or not alike on every rank)
                known = {k: "?" if v is None else v for k, v in now.items()}  # (printed, not "None")
                was = {k: "?" if v is None else v for k, v in size.items()}
                warn(f"resuming from {file}: dls.{name} gives {known['batches']} batches of {known['items']} "
                     f"items an epoch, the saved run's {was['batches']} of {was['items']} (another batch "
                     "size, or other data): the run trains on, but won't end as the saved run would have. "
                     "Resume with the saved run's loaders to continue it exactly.")
            data = state.get("loader_data", {}).get(name)  # (older files, other loaders: none saved)
            if data is not None and (held := held_tensors(dl)) is not None and not checksums_match(data, held):
                warn(f"resuming from {file}: dls.{name} holds other data than the saved run's (the checksums "
                     "of its inputs and targets differ): the run trains on, but not as it "
                     "began. Resume with the saved run's data to continue it exactly (another dataset, or "
                     "another holdout split, is a new run: start it from the checkpoint's weights).")
        # schedulers check their saved state against this fit as they load it (length, steps per epoch); an
        # evaluation (fit(train=False)) builds and steps none, and the saved lr comes with the optimizer state
        given = [group["lr"] for group in learn.opt.param_groups]  # fit built the optimizer with the lr given
        for key in sorted(stateful, key=lambda k: not isinstance(stateful[k], BaseSchedCB)):
            if key in saved and (training or not isinstance(stateful[key], (BaseSchedCB, CheckpointCB,
                                                                             EarlyStoppingCB, RecorderCB))):
                stateful[key].load_state_dict(saved[key])
        # --- everything is checked: load
        learn._epochs_trained = learn.epoch_offset + int(state["epoch"])  # the next fit goes on from here (even if
        model.load_state_dict(state["model"])  # this one trains none); a refused resume left the learner's own
        for name, p in model.named_parameters():
            grad = state["grads"].get(name)
            p.grad = None if grad is None else grad.to(p.device, p.dtype)
        for name in flipped:
            params[name].requires_grad_(name not in frozen)
        with torch.no_grad():
            for p, (value, grad) in zip(beside, saved_beside or ()):
                p.copy_(value)
                p.grad = None if grad is None else grad.to(p.device, p.dtype)
        _load_optimizer(learn.opt, opt_state)
        if self.lr is not None:  # each group's as opt_func made it from that lr (groups may have their own ratios)
            for group, lr in zip(learn.opt.param_groups, given):
                group["lr"] = lr
        metrics = getattr(learn, "metrics", None)
        # (an evaluation's history is its own row, as fit(train=False)'s: the run's would hold that epoch's twice)
        if state["metrics"] is not None and metrics is not None and training \
                and not callable(getattr(metrics, "state_dict", None)):
            metrics.history, metrics.last = list(state["metrics"]["history"]), dict(state["metrics"]["last"])
        forget_records(learn.cbs)  # a fit that ends before its first batch now leaves the run's, not the last fit's
        self._seedless = [dl for dl in loaders.values() if getattr(dl, "seed", 0) is None and not is_dist()]
        for name, dl in loaders.items():
            _load_loader_state(dl, state["loaders"][name])
        ranks, gen_ranks = state.get("rng_ranks"), state.get("generator_ranks")  # every rank's own, saved under DDP
        now = world_size() if is_dist() else 1  # (older files: no generator_ranks, or no generators at all)
        mine = rank() if ranks and is_dist() and len(ranks) == now else None  # resumed by as many processes
        saved_gens = gen_ranks[mine] if mine is not None and gen_ranks else state.get("generators", {})
        for key, gens in run_generators(learn).items():
            if len(saved_gens.get(key, ())) == len(gens):
                for g, g_state in zip(gens, saved_gens[key]):
                    set_generator_state(g, g_state)
            elif training and key not in saved_gens:  # (an evaluation continues no run)
                warn(f"resuming from {file}: {key} holds {len(gens)} random generators the checkpoint has none for "
                     "(it held none when saved, or an older miniai did not look for them there): they go on from "
                     "where they are, so if they draw during the fit, the run will not continue exactly")
            elif training:
                warn(f"resuming from {file}: {key} holds {len(gens)} random generators, the checkpoint has "
                     f"{len(saved_gens[key])} for it: they go on from where they are, so the run will not continue "
                     "exactly")
        own = ranks[mine] if mine is not None else state["rng"]
        # torch's generators (dropout, augmentation; Python's and NumPy's differ in any unseeded script), and those
        # callbacks, layers and data hold
        torch_draws = {_plain_bytes(({k: v for k, v in r.items() if k not in ("python", "numpy")},
                                     gen_ranks[i] if gen_ranks else None)) for i, r in enumerate(ranks or ())}
        if ranks and len(ranks) != now and training and len(torch_draws) > 1:
            warn(f"resuming from {file}, saved by {len(ranks)} processes whose random draws differ (torch's: "
                 f"dropout, augmentation; or generators of their own), resumed by {now}: each process's draws go "
                 f"on from rank 0's, so "
                 "the run will not continue exactly")
        if training:  # after the loads: a tensor made from the weights, or a setting a callback's state sets back
            _warn_setup_changes(learn, state.get("setup"), state.get("setup_moved", []), file)
        _set_rng_state(own)  # last: nothing may draw random numbers between this and the first batch
        self.state = {}  # let the checkpoint's tensors be freed


# a BatchTransformCB's passes and inputs, which files written before they were compared don't hold
_TRANSFORM_PASSES = (".on_train", ".on_val", ".inputs")


def _warn_setup_changes(learn: Learner, saved: dict[str, Any] | None, moved: list[str], file: Path) -> None:
    """Warn of each value of `setup_of` (what no state_dict holds) that differs from the saved run's `saved`; those
    the saved fit changed as it ran (`moved`: a counter, a setting a callback moves) are no settings to compare."""
    if saved is None:  # (older files: none saved)
        return
    here = setup_of(learn)
    # (before version 7 a partial over a loss module recorded none of the module's settings)
    unread_loss = saved.get("setup version", 0) < 7 and not any(k.startswith("loss_func.") for k in saved)
    # (a module one side lacks: the model check names those with weights; a lazy one not run yet has no settings)
    keys = [k for k in {**saved, **here} if k not in moved and (not k.startswith("model") or k in saved and k in here)
            and not (k not in saved and k.endswith(_TRANSFORM_PASSES) and k.rsplit(".", 1)[0] + ".tfm" in saved)
            and (k in saved or saved.get("setup version", 0) >= (6 if k.startswith("loss_func.") else 4))
            and not (k.startswith("loss_func.") and k not in saved and unread_loss) and k != "setup version"
            and (".global " not in k or saved.get("setup version", 0) >= 5)]  # (older files recorded fewer values:
    # metrics and closures before 4, a partial's function's defaults before 6; a key only here is no change for
    # them; version 4 read a loss's globals otherwise)
    changed = [f"{k}: {_shown(saved, k)} saved, {_shown(here, k)} here" for k in keys
               if saved.get(k) != here.get(k)]
    if changed:
        warn(f"resuming from {file}: settings kept outside every state_dict differ from the saved run's "
             f"({'; '.join(changed[:8])}{f'; and {len(changed) - 8} more' if len(changed) > 8 else ''}): "
             "the run goes on with the values here, so it will not continue as the saved run would have "
             "(unless a callback of yours sets them back). Set them up as the saved run had them; to train "
             "with the new ones, start a new fit from the checkpoint's weights.")


_NOT_SET = object()


def _shown(setup: dict[str, Any], key: str) -> str:
    """`setup[key]` (a value of `setup_of`) for a message (a tensor's is its text already); '(not set)' for a key
    it lacks (not 'none', which reads as a value: reduction='none')."""
    value = setup.get(key, _NOT_SET)
    return "(not set)" if value is _NOT_SET else value if isinstance(value, str) else repr(value)


def _plain_bytes(x: Any) -> Any:
    """An RNG state (dicts, tuples, tensors, arrays) as plain values and bytes, to compare two of them."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return (x.numpy(force=True) if isinstance(x, torch.Tensor) else x).tobytes()
    if isinstance(x, dict):
        return tuple((k, _plain_bytes(v)) for k, v in sorted(x.items()))
    return tuple(map(_plain_bytes, x)) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------- checks

_TRAINING_ONLY = (BatchSchedCB, EpochSchedCB, GradAccumCB, GradClipCB, EarlyStoppingCB, RecorderCB)  # (not evaluating)


def _without(learn: Learner, saved: dict[str, Any], lost: list[str], opt_state: dict[str, Any],
             lr: float | None) -> str:
    """What a fit that trains on loses with the saved schedules and SWA it leaves out (for the dropped warning):
    nothing for a schedule an SWACB here has stopped already (`schedule_stop`)."""
    trains = "train" in learn.passes and learn.start_epoch < learn.n_epochs
    stopped = learn.schedule_stop is not None and learn.start_epoch >= learn.schedule_stop
    lrs = [float(group["lr"]) for group in opt_state["param_groups"]]
    # (not the last batch's: a schedule's last step sets the next one's, past a one-cycle's end a bounce back up)
    at = "the lr given" if lr is not None else f"the lr its schedule's last step set, {lrs[0]:.3g}" if len(lrs) == 1 \
        else f"the lrs its schedule's last step set, {', '.join(f'{x:.3g}' for x in lrs)} (by param group)"
    said = []
    for key in lost if trains else ():
        state = saved[key] if isinstance(saved[key], dict) else {}
        if "scheduler_class" in state and not stopped:  # (a BaseSchedCB's)
            said.append(f"without {key}'s {state['scheduler_class']} this fit trains on at {at}, unscheduled" + (
                ": a fit_one_cycle run continues with learn.fit_one_cycle(n, max_lr, resume=...)"
                if state["scheduler_class"] == "OneCycleLR" else ""))
        elif "swa_model" in state:  # (it stopped the schedule at swa_start, SWALR set the lr from there)
            settings = state.get("settings")  # (older files: none saved)
            call = f"SWACB({_described(settings) if settings else '...'})"
            scheduled = any(isinstance(cb, BaseSchedCB) for cb in learn.cbs)
            if settings and learn.start_epoch < settings["swa_start"]:  # (SWA had not begun: what it would do is gone)
                what = (f"its epochs from swa_start={settings['swa_start']} on train " + (
                    "under this fit's schedule" if scheduled else "on at the lr they find") +
                    " instead of SWA's anneal to swa_lr, and no average is made")
            else:
                what = ("its average so far is lost, and " if SWACB.began(state) else "") + (
                    "the schedule goes on" if scheduled else "the fit trains on") + f" from {at} (SWA's)"
            said.append(f"without {key} {what}: resume with {call} to continue the run")
    return "".join(f"; {s}" for s in said)


def _check_model(model: nn.Module, saved: dict[str, torch.Tensor], file: Path, dtypes_too: bool = True) -> None:
    """Raise CheckpointMismatchError naming every missing, unexpected and mis-shaped key; warn of other dtypes."""
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    # (a lazy layer's parameters before its first forward have no shape: loading the checkpoint gives them its own)
    lazy = {k for k, t in own.items() if isinstance(t, nn.parameter.UninitializedTensorMixin)}
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in saved and k not in lazy and saved[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        dtypes = [f"{k}: checkpoint {saved[k].dtype} vs model {own[k].dtype}"
                  for k in own if k not in lazy and saved[k].dtype != own[k].dtype]
        if dtypes and dtypes_too:  # load_state_dict casts without a word: the resumed run computes in another precision
            warn(f"checkpoint {file} holds other dtypes than the model ({'; '.join(dtypes[:3])}"
                 + (f"; {len(dtypes) - 3} more" if len(dtypes) > 3 else "") + "): the weights are cast, and "
                 "the resumed run differs from the saved one. Build the model in the saved dtype to "
                 "continue it exactly.")
        return

    def listing(what: str, items: list[str]) -> str:
        shown = items[:10] + ([f"... {len(items) - 10} more"] if len(items) > 10 else [])
        return f"\n  {what} ({len(items)}): " + "; ".join(shown)
    raise CheckpointMismatchError(
        f"checkpoint {file} was saved from a different model:"
        + (listing("missing from the checkpoint", missing) if missing else "")
        + (listing("unexpected in the checkpoint", unexpected) if unexpected else "")
        + (listing("shape mismatch", shapes) if shapes else "")
        + ("\nThey differ only by torch.compile's '_orig_mod.' (a part compiled in one run and not in the other): "
           "compile the same parts as the run that saved it (or load its weights by hand, renaming the keys)"
           if sorted(k.replace("_orig_mod.", "") for k in missing) == sorted(k.replace("_orig_mod.", "")
                                                                            for k in unexpected) and missing
           else "\nBuild the same model as the run that saved it (same architecture and arguments)")
        + "; nothing was changed.")


def _optimizer_state(learn: Learner, model: nn.Module, state: dict[str, Any], file: Path, ratios: bool = True
                     ) -> dict[str, Any]:
    """The saved optimizer state, its parameters put in this optimizer's order by name; raise if they don't fit
    (`ratios`: the groups' lr ratios too, unless fit was given an lr, which the resumed groups get at theirs)."""
    opt, saved = learn.opt, state["optimizer"]
    saved_groups = [len(g["params"]) for g in saved["param_groups"]]
    own_groups = [len(g["params"]) for g in opt.param_groups]
    if state["optimizer_class"] != type(opt).__name__ or saved_groups != own_groups:
        raise CheckpointMismatchError(
            f"checkpoint {file} was saved with {state['optimizer_class']} over param groups of sizes {saved_groups}; "
            f"this fit made {type(opt).__name__} with {own_groups}: pass the same opt_func (and param groups) as "
            "the run that saved it; nothing was changed.")
    saved_settings = state.get("optimizer_settings") or {}  # (older files: none; or without the groups' own)
    own_settings = {k: v for k, v in optimizer_settings(opt, learn).items() if ratios or not k.endswith("lr ratio")}
    # the settings both have (a newer torch adds some, which load_state_dict fills with their defaults)
    def follows_default(settings: dict[str, Any], key: str) -> bool:  # a group's value that is its default's
        return key.startswith("param group ") and settings[key] == settings.get(key.split(" ", 3)[-1])
    changed = [f"{k}: {saved_settings[k]} saved, {own_settings[k]} here"
               for k in sorted(set(saved_settings) & set(own_settings), key=lambda k: (k.startswith("param"), k))
               if saved_settings[k] != own_settings[k]  # (a changed default is named once, not for each group)
               and not (follows_default(saved_settings, k) and follows_default(own_settings, k))]
    if changed:  # load_state_dict would put the saved values back over the ones this opt_func was given
        raise CheckpointMismatchError(
            f"checkpoint {file} was saved by an optimizer with other settings ({'; '.join(changed)}): resuming would "
            "train with the saved ones. Pass the same opt_func as the run that saved it (or start a new run with "
            "the new settings from the saved weights: "
            f"{weights_call(learn, file)}); "
            "nothing was changed.")
    saved_names, own_names = state.get("param_names"), param_names(model, opt)
    if saved_names is None:  # a version-1 checkpoint: no names saved
        warn(f"{file} predates parameter names in checkpoints: the optimizer state is matched to the "
             "parameters by position, which is right only if the model defines them in the same order")
        return saved
    if saved_names == own_names:
        return saved
    differ = [i for i, (a, b) in enumerate(zip(saved_names, own_names)) if sorted(a) != sorted(b)]
    if differ:
        i = differ[0]
        raise CheckpointMismatchError(
            f"checkpoint {file}: the optimizer's param group {i} holds other parameters than this one's "
            f"(saved: {sorted(set(saved_names[i]) - set(own_names[i]))[:5]}, here: "
            f"{sorted(set(own_names[i]) - set(saved_names[i]))[:5]}): build the param groups as the saved run did.")
    # the same parameters in another order (attributes defined in another order): torch pairs saved and current
    # parameters by position, so list the saved ids in this optimizer's order
    saved_id = {name: pid for names, g in zip(saved_names, saved["param_groups"]) for name, pid in zip(names, g["params"])}
    groups = [{**g, "params": [saved_id[name] for name in names]} for g, names in zip(saved["param_groups"], own_names)]
    return {**saved, "param_groups": groups}


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`opt.load_state_dict(state)`, keeping the param group dicts themselves (callbacks hold references to them)."""
    groups = list(opt.param_groups)
    opt.load_state_dict(state)  # makes new group dicts: copy their values into the old ones and put those back
    for old, new in zip(groups, opt.param_groups):
        old.clear()
        old.update(new)
    opt.param_groups[:] = groups


def _check_loader(dl: Any, state: dict[str, Any] | None, name: str) -> None:
    """Raise CheckpointMismatchError if `dl` can't take the loader state saved for dls.<name>."""
    if state is None:
        return
    if "state_dict" in state:
        if not callable(getattr(dl, "load_state_dict", None)):
            raise CheckpointMismatchError(f"the checkpoint holds a state_dict for dls.{name} but this loader "
                                          f"({type(dl).__name__}) has none: use the same loader type as the saved run")
        for key in ("shuffle", "drop_last"):  # (not in checkpoints of before they were saved)
            if key in state["state_dict"] and getattr(dl, key, None) != state["state_dict"][key]:
                raise CheckpointMismatchError(
                    f"dls.{name} has {key}={getattr(dl, key, None)}, the run resumed had {key}="
                    f"{state['state_dict'][key]}: an exact resume walks the saved run's batches. Build the loader "
                    f"with {key}={state['state_dict'][key]}, or start a new fit from the checkpoint's weights")
        saved, given = state["state_dict"].get("seed"), getattr(dl, "seed", None)
        # a seed given to this loader that differs from the saved run's (under DDP, DDPCB may have drawn one now)
        if given is not None and given != saved and not is_dist():
            what = f"shuffled with seed={saved}" if saved is not None else "drew its orders from torch's RNG"
            raise CheckpointMismatchError(f"dls.{name} has seed={given}, and the run resumed from {what}: an exact "
                                          f"resume walks the saved run's order. Build the loader with seed={saved}"
                                          f"{' (or None)' * (saved is not None)}, or start a new fit for another "
                                          "order")
    elif len(loader_generators(dl)) != len(state["generators"]):
        raise CheckpointMismatchError(f"dls.{name} draws from {len(loader_generators(dl))} torch.Generator(s), the "
                                      f"checkpoint saved {len(state['generators'])}: build the loader as in the "
                                      "saved run")


# ---------------------------------------------------------------- loading

def _load_loader_state(dl: Any, state: dict[str, Any] | None) -> None:
    if state is None:
        return
    if "state_dict" in state:
        saved = state["state_dict"]  # miniai.data.TensorLoader: {seed, epoch}
        if "seed" in saved and saved["seed"] is None and getattr(dl, "seed", None) is not None:
            saved = {**saved, "seed": dl.seed}  # a run without a seed resumed under DDP keeps the seed DDPCB shared
            warn(f"the saved run's loader had no seed and drew its orders from torch's RNG, and under DDPCB the "
                 f"ranks walk one order, of seed={dl.seed}: the data order from here on is not the saved run's, so "
                 "this is not an exact resume (give the loader a seed, TensorLoader(..., seed=0), for runs that "
                 "move between one process and several)")
        dl.load_state_dict(saved)
        return
    for g, saved in zip(loader_generators(dl), state["generators"]):
        g.set_state(saved)
    sampler = getattr(dl, "sampler", None)
    if "sampler_seed" in state and isinstance(getattr(sampler, "seed", None), int):
        sampler.seed = state["sampler_seed"]  # DDPCB's DistributedSampler: the saved run's order


def _set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warn(f"the checkpoint has RNG states for {len(state['cuda'])} CUDA devices, this machine "
                 f"{torch.cuda.device_count()}; CUDA random numbers will differ from the saved run")
