"""The course names whose meaning differs from miniai's own name-alikes, defined here with the course's meaning.

`miniai._course` serves them to code written for the course's package (`from miniai.init import *`), so a course
notebook gets what it was written for; miniai's own code and notebooks use `miniai.models` and `miniai.utils`,
whose `conv`, `init_weights`, `get_model`, `to_cpu` and `BatchTransformCB` differ as their docstrings say (a
Sequential always, as the course's `init.conv`; Linear layers initialized too; `nfs` without the input channel and a
5×5 first conv; dtypes kept; the inputs transformed, not the whole batch).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import models
from .learner import Callback, Learner
from .utils import map_tensors

__all__ = ["conv", "init_weights", "get_model", "inplace", "to_cpu", "BatchTransformCB"]


def conv(ni: int, nf: int, ks: int = 3, stride: int = 2, act: bool = True) -> nn.Module:
    """The course's `conv.conv` (lesson 07): a Conv2d (padding ks//2), in an nn.Sequential with a ReLU when `act`;
    without, the Conv2d itself (so its checkpoints' keys are the course's: `4.weight`, not `4.0.weight`)."""
    layer = nn.Conv2d(ni, nf, kernel_size=ks, stride=stride, padding=ks // 2)
    return nn.Sequential(layer, nn.ReLU()) if act else layer


def init_weights(m: nn.Module, leaky: float = 0.0) -> None:
    """The course's `init.init_weights`: Kaiming-normal weights for Conv1d/2d/3d only (Linear layers keep torch's)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(m.weight, a=leaky)


def get_model(act: Callable[[], nn.Module] = nn.ReLU, nfs: Sequence[int] | None = None,
              norm: Callable[[int], nn.Module] | None = None) -> nn.Sequential:
    """The course's `init.get_model`: a 3×3 stride-2 conv per consecutive pair of `nfs` (input channel first,
    default [1, 8, 16, 32, 64]), a last conv to 10 channels, Flatten."""
    nfs = [1, 8, 16, 32, 64] if nfs is None else list(nfs)
    layers = [models.conv(nfs[i], nfs[i + 1], act=act, norm=norm) for i in range(len(nfs) - 1)]
    return nn.Sequential(*layers, models.conv(nfs[-1], 10, act=None, norm=None, bias=True), nn.Flatten())


def inplace(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The course's decorator: a function that changes its argument in place becomes one that also returns it."""
    def _f(b: Any) -> Any:
        f(b)
        return b
    return _f


def to_cpu(x: Any) -> Any:
    """The course's `to_cpu`: detached, on the CPU, and float16 made float32 (nested containers too)."""
    return map_tensors(x, _cpu_float)


def _cpu_float(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return t.float() if t.dtype == torch.float16 else t


class BatchTransformCB(Callback):
    """The course's `init.BatchTransformCB`: `learn.batch = tfm(learn.batch)`, the whole batch (inputs and targets),
    before each batch of the passes it is on (training: `on_train`; validation, and prediction passes: `on_val`)."""

    def __init__(self, tfm: Callable[[Any], Any], on_train: bool = True, on_val: bool = True) -> None:
        self.tfm, self.on_train, self.on_val = tfm, on_train, on_val
        self.inference = on_val  # (get_preds and tta run it as they run a validation pass)

    def before_batch(self, learn: Learner) -> None:
        if self.on_train if learn.training else self.on_val:
            batch = learn.batch
            bare = isinstance(batch, (tuple, list)) and len(batch) == learn.n_inp  # infer's: the inputs alone
            if bare:  # (a course tfm reads b[1]: None stands for the target; a list stays a list, for in-place tfms)
                batch = [*batch, None] if isinstance(batch, list) else (*batch, None)
            out = self.tfm(batch)
            learn.batch = out[:learn.n_inp] if bare else out
