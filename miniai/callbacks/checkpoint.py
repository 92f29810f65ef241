"""Checkpoints that resume exactly: `CheckpointCB` writes them (here), `learn.fit(n, resume=...)` reads them (resume.py).

A checkpoint file holds everything the rest of a run depends on, so a run stopped after epoch k and resumed in
a new process ends with bitwise the same weights (on the CPU) as the run never stopped:
  model (weights and buffers) and any gradients it carries (MomentumLearner keeps them), the optimizer,
  `state_dict()` of every callback that has one (schedulers, grad scaler, early stopping, ...), the RNG states
  (python, numpy, torch, cuda), the loaders' shuffling state, the epochs done and MetricsCB's history.
Files are written atomically (temporary file, fsync, rename, fsync of the directory): a crash or Ctrl-C while
saving leaves the previous newest checkpoint as it was.
"""
from __future__ import annotations

import math
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..learner import Callback, Learner

__all__ = ["CheckpointCB", "CheckpointMismatchError", "is_main_process", "checkpoint_state", "save_checkpoint",
           "list_checkpoints",
           "find_checkpoint", "load_checkpoint"]

_FORMAT, _VERSION = "miniai-checkpoint", 1
_NAME = re.compile(r"^epoch_(\d+)\.pt$")  # "after N epochs"; tmp files start with a dot, so never match


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit this learner (other model, optimizer); raised before anything is overwritten."""


def is_main_process() -> bool:
    """True unless torch.distributed is initialized and this is not rank 0 (only rank 0 writes files)."""
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------- what goes in a checkpoint

def _callback_key(learn: Learner, cb: Callback) -> str:
    """'<class name>_<i>': i counts callbacks of the same class in `learn.cbs` (insertion order)."""
    same = [c for c in learn.cbs if type(c) is type(cb)]
    return f"{type(cb).__name__}_{next(i for i, c in enumerate(same) if c is cb)}"


def _stateful_callbacks(learn: Learner) -> dict[str, Callback]:
    return {_callback_key(learn, cb): cb for cb in learn.cbs
            if callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None))}


def _generators(dl: Any) -> list[torch.Generator]:
    """The torch.Generators a torch DataLoader draws its order from (its own, its sampler's), each once."""
    found: list[torch.Generator] = []
    sampler = getattr(dl, "sampler", None)
    batch_sampler = getattr(dl, "batch_sampler", None)
    for owner in (dl, sampler, getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def _loader_state(dl: Any) -> dict[str, Any] | None:
    if callable(getattr(dl, "state_dict", None)) and callable(getattr(dl, "load_state_dict", None)):
        return {"state_dict": dl.state_dict()}  # miniai.data.TensorLoader: {seed, epoch}
    gens = _generators(dl)
    # a torch DataLoader without a generator draws from torch's global RNG, which is saved anyway
    return {"generators": [g.get_state() for g in gens]} if gens else None


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             # numpy's keys as a tensor, so the file loads with torch.load(weights_only=True)
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    # only if CUDA is initialized: asking otherwise would start CUDA (seconds, memory) just to save a seed
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def checkpoint_state(learn: Learner, epochs_done: int) -> dict[str, Any]:
    """Everything `ResumeCB` needs to continue `learn` exactly after `epochs_done` epochs, as one dict."""
    model = _unwrap(learn.model)
    metrics = getattr(learn, "metrics", None)
    keep_metrics = metrics is not None and not callable(getattr(metrics, "state_dict", None))
    return {
        "format": _FORMAT, "version": _VERSION, "torch_version": str(torch.__version__),
        "epoch": epochs_done, "n_epochs": learn.n_epochs,
        "model": model.state_dict(),
        # TrainLearner sets grads to None every step; MomentumLearner carries mom × grads into the next batch
        "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
        "optimizer": learn.opt.state_dict(), "optimizer_class": type(learn.opt).__name__,
        "callbacks": {key: cb.state_dict() for key, cb in _stateful_callbacks(learn).items()},
        "metrics": {"history": metrics.history, "last": metrics.last} if keep_metrics else None,
        "loaders": {name: _loader_state(getattr(learn.dls, name, None)) for name in ("train", "valid")},
        "rng": _rng_state(),
    }


# ---------------------------------------------------------------- files

def _fsync_dir(directory: Path) -> None:
    # the rename is durable only once the directory entry is on disk; not possible on Windows
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(obj: Any, f: Any) -> None:
    """Serialize `obj` into the open file `f` (a seam: tests make it fail midway)."""
    torch.save(obj, f)


def save_checkpoint(state: dict[str, Any], file: str | os.PathLike) -> Path:
    """Write `state` to `file` atomically: a temporary file in the same directory, fsync, rename, fsync the dir."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            _write(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)  # atomic: readers see the old file or the new one, never half of one
    except BaseException:  # also Ctrl-C: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(file.parent)
    return file


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epochs done, file) for each checkpoint in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in directory.iterdir() if (m := _NAME.match(f.name))]
    return sorted(found)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself if it is a file, else the newest (most epochs) checkpoint in the directory `path`."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a checkpoint file or the directory given to "
                                "CheckpointCB(path)")
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path} holds no checkpoint (files named epoch_NNNN.pt, written by CheckpointCB)")
    return found[-1][1]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint (a file, or the newest in a directory) onto the CPU, with torch's safe loader."""
    file = find_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure to read means the file can't be used; say which and why
        others = [str(f) for _, f in list_checkpoints(file.parent) if f != file]
        raise CheckpointMismatchError(
            f"could not read checkpoint {file} ({type(e).__name__}: {str(e)[:300]}). If the file is truncated or "
            "corrupt, resume from another one" + (f": {', '.join(others)}" if others else "") + ". If it holds a "
            "callback state of a type the safe loader refuses, allow that type with "
            "torch.serialization.add_safe_globals([...]).") from e
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointMismatchError(f"{file} is not a miniai checkpoint (no format tag {_FORMAT!r}); "
                                      "pass a file written by CheckpointCB")
    return state


# ---------------------------------------------------------------- the callback that writes them

class CheckpointCB(Callback):
    """Saves a checkpoint to `path/epoch_NNNN.pt` after every `every` epochs (and the last); keeps the newest `keep`.

    Args:
        path: a directory. A fresh (not resumed) fit refuses one that already holds checkpoints, because
            pruning would delete an earlier run's work; pass `overwrite=True` to delete them instead.
        every: save after every `every`-th epoch, and always after the fit's last epoch.
        keep: how many of the newest checkpoints stay (None: all); older ones are deleted.
        monitor, mode: with `monitor` (a name MetricsCB logs, e.g. 'valid_loss'), the best checkpoint by it
            ('min' or 'max') is kept as well; its file is `best_path`.
    A checkpoint is written after the validation pass (or, in a fit without one, after the training pass), once
    every scheduler has stepped. Only rank 0 writes when torch.distributed is initialized.
    """
    order = 80  # after MetricsCB and the epoch schedulers (their after_epoch), before EarlyStoppingCB stops the fit

    def __init__(self, path: str | os.PathLike, every: int = 1, keep: int | None = 3, monitor: str | None = None,
                 mode: str = "min", overwrite: bool = False) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 (save after every N epochs), got {every}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None (keep all), got {keep}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.path, self.every, self.keep, self.monitor, self.mode = Path(path), every, keep, monitor, mode
        self.overwrite = overwrite
        self.best: float | None = None
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self._pending: int | None = None

    def state_dict(self) -> dict[str, Any]:
        """{'best': best monitored value so far, 'best_file': its file name}, so a resumed run keeps the best."""
        return {"best": self.best, "best_file": self.best_path.name if self.best_path else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
        self.best = state["best"]
        self.best_path = self.path / state["best_file"] if state["best_file"] else None

    def before_fit(self, learn: Learner) -> None:
        if self.monitor is not None:
            metrics = getattr(learn, "metrics", None)
            if metrics is None:
                raise ValueError(f"CheckpointCB(monitor={self.monitor!r}) needs a MetricsCB in the learner's cbs")
            if self.monitor not in metrics.names:
                raise ValueError(f"CheckpointCB monitor {self.monitor!r} is not logged by MetricsCB; "
                                 f"choose one of {metrics.names}")
        self.best, self.best_path, self.last_path, self._pending = None, None, None, None
        if not is_main_process():
            return
        for stale in self.path.glob(".epoch_*.tmp") if self.path.is_dir() else []:
            stale.unlink(missing_ok=True)  # left by a process killed while saving
        existing = list_checkpoints(self.path)
        from .resume import ResumeCB  # imported here: resume.py imports this module
        resumer = next((cb for cb in learn.cbs if isinstance(cb, ResumeCB)), None)
        if resumer is not None:
            later = [f.name for done, f in existing if done > int(resumer.state["epoch"])]
            if later:
                warnings.warn(f"resuming from epoch {resumer.state['epoch']}, but {self.path} also holds the later "
                              f"{', '.join(later)}: they are overwritten as this run reaches their epoch, and "
                              "resume= on the directory picks the newest", stacklevel=2)
        elif existing:
            if not self.overwrite:
                raise FileExistsError(
                    f"{self.path} already holds checkpoints ({', '.join(f.name for _, f in existing[-3:])}) from an "
                    f"earlier run. To continue it: learn.fit(n_epochs, resume='{self.path}'). To start over, pass "
                    "CheckpointCB(..., overwrite=True) (deletes them) or another path.")
            for _, f in existing:
                f.unlink()

    def after_epoch(self, learn: Learner) -> None:
        if learn.training:
            self._pending = learn.epoch + 1  # saved after validation, or when the next epoch starts if none runs
        elif self._pending is not None:
            self._save(learn)

    def before_epoch(self, learn: Learner) -> None:
        if learn.training and self._pending is not None:
            self._save(learn)  # the last epoch had no validation pass

    def after_fit(self, learn: Learner) -> None:
        if self._pending is not None:
            self._save(learn)

    def _save(self, learn: Learner) -> None:
        done, self._pending = self._pending, None
        if done % self.every and done != learn.n_epochs:
            return
        file = self.path / f"epoch_{done:04d}.pt"
        if self.monitor is not None:
            if self.monitor not in learn.metrics.last:
                raise ValueError(f"CheckpointCB monitor {self.monitor!r} has no value after epoch {done} (a "
                                 f"validation metric in a fit without validation?); logged: {list(learn.metrics.last)}")
            value = learn.metrics.last[self.monitor]
            better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
            if better and not math.isnan(value):
                self.best, self.best_path = value, file
        if not is_main_process():
            return
        save_checkpoint(checkpoint_state(learn, done), file)
        self.last_path = file
        self._prune()

    def _prune(self) -> None:
        if self.keep is None:
            return
        found = list_checkpoints(self.path)
        for _, f in found[:-self.keep]:
            if f != self.best_path:
                f.unlink(missing_ok=True)
