"""Named recipes for the command line: lr schedules (`--sched cosine`) and whole training recipes (`--recipe five`).

A schedule recipe becomes a scheduling callback whose peak lr is the optimizer's lr (the CLI's `--lr`), read when
the scheduler is built, so it needs only the length of the fit. A training recipe (`Recipe`) fixes everything:
the model, batch size, optimizer, one-cycle schedule, augmentation, label smoothing and test-time augmentation;
`recipe_learner` builds its learner on any DataLoaders. The recipes were chosen on 10,000 images held out of the
training set (`get_dls(holdout=10_000)`), never on the test set (nbs/05_best_recipe.ipynb shows the comparison).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR

from .augment import RandomCrop, RandomErase, RandomFlip, batch_tfms
from .callbacks.augment import BatchTransformCB
from .callbacks.basic import DeviceCB
from .callbacks.scheduling import BaseSchedCB, BatchSchedCB, EpochSchedCB, check_one_cycle_room, steps_per_epoch
from .checks import warn
from .learner import Callback
from .supervised import TrainLearner
from .models import GeneralRelu, get_convnet, get_model, get_resnet, init_weights
from .schedulers import CosineAnnealing, CosineOneCycle, OneCycle, WarmupCosine
from .utils import def_device

__all__ = ["SCHEDULES", "check_one_cycle_room", "make_sched_cb", "Recipe", "RECIPES", "recipe_learner"]

SCHEDULES = {
    "none": "constant lr",
    "cosine": "cosine annealing from lr to 0 over the fit, per batch (ours)",
    "onecycle": "Smith's triangular one-cycle: 0 up to lr at mid-fit, back to 0, per batch (ours)",
    "onecycle-cosine": "torch's OneCycleLR policy (lr and momentum/beta1) from scratch, per batch (ours)",
    "onecycle-torch": "torch's OneCycleLR, max_lr=lr, with momentum/beta1 cycling, per batch",
    "warmup-cosine": "linear warmup over the first 10% of the steps, then cosine to 0, per batch (ours)",
    "step": "StepLR: lr × 0.1 every n_epochs // 3 epochs (every epoch below 6), per epoch",
    "plateau": "ReduceLROnPlateau on valid_loss: lr × 0.1 after 2 epochs in a row without improvement (patience 1; "
               "needs MetricsCB, and 4 epochs or more)",
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
    if name.startswith("onecycle"):
        check_one_cycle_room(f"schedule {name!r}", n_epochs, steps_per_epoch)
    if name == "step" and n_epochs < 2:  # (its lr would drop after the one epoch, when no batch trains with it)
        raise ValueError("schedule 'step' lowers the lr × 0.1 every n_epochs // 3 epochs (every epoch below 6), so "
                         "one epoch trains at the lr it starts with: train 2 epochs or more, or choose 'none'")
    if name == "plateau" and n_epochs < 4:  # (patience 1: 2 epochs no better than the first, then a lower lr)
        raise ValueError("schedule 'plateau' lowers the lr × 0.1 once valid_loss has not improved for 2 epochs "
                         "(patience 1), so the first epoch that can train at a lower lr is the 4th: train 4 epochs "
                         "or more, or choose 'none'")
    return recipes[name]()


# ---------------------------------------------------------------- whole training recipes

# Recipe.act -> (activation factory, the leak init_weights uses for it); Recipe.model -> model builder
_ACTS = {"general": (partial(GeneralRelu, leak=0.1, sub=0.4), 0.1), "relu": (nn.ReLU, 0.0)}
_MODELS = {"resnet": lambda act, nfs: get_resnet(nfs=nfs, act=act),
           "cnn": lambda act, nfs: get_model(act, nfs=nfs, norm=nn.BatchNorm2d),
           "convnet": lambda act, nfs: get_convnet(act, nfs=nfs)}


def _one_of(names: Any) -> str:
    names = [repr(n) for n in names]
    return f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class Recipe:
    """Everything a training run fixes; `recipe_learner(recipe, dls)` builds it."""
    description: str
    epochs: int
    bs: int
    max_lr: float
    nfs: tuple[int, ...] = (8, 16, 32, 64, 128)
    model: str = "resnet"  # get_resnet(nfs); "cnn": the course CNN get_model(nfs); "convnet": get_convnet(nfs)
    act: str = "general"  # GeneralRelu(leak=0.1, sub=0.4), the course's; or "relu"
    weight_decay: float = 0.01  # AdamW's
    label_smoothing: float = 0.0
    crop_padding: int = 0  # random crop after padding each side by this many pixels (0: no crop)
    flip: bool = False  # random horizontal flip
    erase: float = 0.0  # probability of random erasing
    pct_start: float = 0.25  # share of the one-cycle spent warming up
    tta: bool = False  # report test-time augmentation (the flip) as well
    channels_last: bool = True  # oneDNN's convolutions are faster in channels-last on CPUs (never used on MPS)

    def __post_init__(self) -> None:
        if self.act not in _ACTS or self.model not in _MODELS:
            raise ValueError(f"Recipe act is {_one_of(_ACTS)} (got {self.act!r}); model is {_one_of(_MODELS)} "
                             f"(got {self.model!r})")
        rules = {"epochs": ("an int >= 1", lambda v: isinstance(v, int) and v >= 1),
                 "bs": ("an int >= 1", lambda v: isinstance(v, int) and v >= 1),
                 "max_lr": ("a finite number > 0", lambda v: 0 < v < math.inf),
                 "nfs": ("a non-empty tuple of ints >= 1", lambda v: bool(v) and all(isinstance(n, int) and n >= 1
                                                                                    for n in v)),
                 "weight_decay": ("a number >= 0", lambda v: v >= 0),
                 "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
                 "crop_padding": ("an int >= 0", lambda v: isinstance(v, int) and v >= 0),
                 "erase": ("a probability in [0, 1]", lambda v: 0 <= v <= 1),
                 "pct_start": ("in (0, 1)", lambda v: 0 < v < 1)}
        for field_name, (what, ok) in rules.items():
            if not ok(getattr(self, field_name)):
                raise ValueError(f"Recipe {field_name} must be {what}; got {getattr(self, field_name)!r}")

    def augmentation(self) -> list:
        """The training-batch transforms this recipe uses."""
        tfms: list = [RandomCrop(28, padding=self.crop_padding)] if self.crop_padding else []
        return tfms + ([RandomFlip()] if self.flip else []) + ([RandomErase(p=self.erase)] if self.erase else [])


RECIPES = {  # chosen on 10,000 held-out training images (bench/recipe_search.py; nbs/05_best_recipe.ipynb)
    "fast": Recipe("the least wall time to 0.90 with a margin: three stride-2 convs 16-32-64 and a linear head "
                   "(get_convnet), ReLU, 4 epochs at bs 512, one-cycle to 5e-2, no augmentation", epochs=4, bs=512,
                   max_lr=5e-2, nfs=(16, 32, 64), model="convnet", act="relu"),
    "five": Recipe("0.93 in 5 epochs: ResNet 16-32-64-128-256 (1.2 M parameters), random crop (padding 1) and flip, "
                   "one-cycle, TTA", epochs=5, bs=256, max_lr=1e-2, nfs=(16, 32, 64, 128, 256), crop_padding=1,
                   flip=True, tta=True),
    "twenty": Recipe("20 epochs of the five recipe: ResNet 16-32-64-128-256, crop and flip, one-cycle, TTA",
                     epochs=20, bs=256, max_lr=1e-2, nfs=(16, 32, 64, 128, 256), crop_padding=1, flip=True,
                     tta=True),
}


def recipe_learner(recipe: Recipe, dls: Any, cbs: list[Callback] | None = None, device: Any = None) -> TrainLearner:
    """A TrainLearner set up as `recipe` says (model, AdamW, augmentation, loss, and a one-cycle over the optimizer
    steps of whatever fit it runs: `learn.fit(recipe.epochs)`), plus `cbs`; warns when the loaders' batch size is
    not the recipe's."""
    shape = getattr(dls, "item_shape", None)
    if shape is not None and tuple(shape) != (1, 28, 28):  # (its models and 28x28 crops would train on without a word)
        raise ValueError(f"recipe {_name(recipe)} is for 1x28x28 images (Fashion-MNIST's), and these loaders' items "
                         f"are {'x'.join(map(str, shape))}: its models and crops would not fit them (a crop to 28x28 "
                         "would train on smaller images than it validates on). Build a learner of their shape")
    act, leak = _ACTS[recipe.act]
    model = _MODELS[recipe.model](act, recipe.nfs).apply(partial(init_weights, leaky=leak))
    tfms = recipe.augmentation()
    loss = partial(F.cross_entropy, label_smoothing=recipe.label_smoothing) if recipe.label_smoothing \
        else F.cross_entropy
    bs = getattr(dls.train, "bs", None) or getattr(dls.train, "batch_size", None)
    if bs is not None and bs != recipe.bs:
        warn(f"recipe {_name(recipe)} was chosen at bs {recipe.bs}; these loaders have bs {bs}, so its lr and "
             "schedule may not suit them")
    device = torch.device(def_device if device is None else device)
    # not on MPS: channels-last convolutions there gave wrong gradients in torch releases we allow (pytorch#140902)
    extra = [DeviceCB(device, channels_last=recipe.channels_last and device.type != "mps")]
    if tfms:
        extra.append(BatchTransformCB(batch_tfms(*tfms)))
    learn = TrainLearner(model, dls, loss, lr=recipe.max_lr, cbs=[*extra, *(cbs or [])],
                         opt_func=partial(optim.AdamW, weight_decay=recipe.weight_decay))

    def one_cycle(opt: Optimizer) -> OneCycleLR:
        # over the fit's epochs (learn.fit(n)) in optimizer steps (fewer than batches under GradAccumCB)
        per_epoch = steps_per_epoch(learn)
        if per_epoch is None:  # a cycle of a guessed length would train at wrong lrs, then torch raises mid-fit
            raise TypeError(f"recipe {_name(recipe)}'s one-cycle needs len(dls.train) to count its steps; this train "
                            "loader has no length: give it __len__ (batches per epoch), or build a TrainLearner "
                            "with BatchSchedCB(partial(OneCycleLR, total_steps=...)) yourself")
        check_one_cycle_room(f"recipe {_name(recipe)}'s one-cycle", learn.n_epochs, per_epoch)
        total = learn.n_epochs * per_epoch
        # torch's OneCycleLR divides by zero when its warmup ends at step 0: keep at least 1.5 steps of it (tiny runs)
        return OneCycleLR(opt, max_lr=recipe.max_lr, pct_start=max(recipe.pct_start, 1.5 / total), total_steps=total)
    return learn.add_cb(BatchSchedCB(one_cycle))


def _name(recipe: Recipe) -> str:
    return next((name for name, r in RECIPES.items() if r == recipe), "(unnamed)")
