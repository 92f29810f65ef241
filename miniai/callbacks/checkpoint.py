"""Checkpoints that resume exactly: what a checkpoint holds, writing files safely, `CheckpointCB`, the Ctrl-C note.

A checkpoint file holds everything the rest of a run depends on, so a run stopped after epoch k and resumed in
a new process (`learn.fit(n, resume=...)`, in resume.py) ends with bitwise the same weights (on the CPU) as the
run never stopped: model (weights and buffers) and any gradients it carries (MomentumLearner keeps them), the
optimizer with the name of each parameter (and the tensors it trains beside the model), `state_dict()` of every
callback that has one (schedulers, grad scaler, early stopping, ...), the RNG states (python, numpy, torch, cuda),
the loaders' shuffling state, the epochs done and MetricsCB's history. Files are written atomically (temporary
file, fsync, rename): a crash or Ctrl-C while saving leaves the previous newest checkpoint as it was.
"""
from __future__ import annotations

import collections
import contextlib
import dis
import dataclasses
import functools
import inspect
import io
import math
import os
import random
import re
import types
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.utils.data import DataLoader, TensorDataset

from ..checks import add_note, beside_model, check_count, own_place, warn
from ..data import TensorLoader
from ..distributed import all_gather, barrier, is_dist, is_main_process, world_size
from ..learner import Callback, CancelEpochException, CancelFitException, Learner
from ..utils import (byte_sums, checksums_match, claim_dir, counted, keeps_workers, len_or_none,
                     frames, map_tensors, tagged, tensors_in, nonfinite_weight)
from .augment import BatchTransformCB
from .guards import NonFiniteLossError, lower_lr_advice, nonfinite_cause, pass_args
from .metrics import MetricsCB
from .monitor import check_monitor, improves, monitor_mode, same_watch
from .records import keep_records, restore_if_refused
from .scheduling import BaseSchedCB

__all__ = ["CheckpointCB", "CheckpointMismatchError", "checkpoint_state", "save_checkpoint", "list_checkpoints",
           "find_checkpoint", "load_checkpoint", "interrupt_note", "has_state"]

_FORMAT, _VERSION = "miniai-checkpoint", 2  # version 2 adds the parameters' names to match optimizer state by
_NAME = re.compile(r"^epoch_(\d+)\.pt$")  # "after N epochs"; tmp files start with a dot, so never match
_TEMPORARY = re.compile(r"^\.epoch_\d+\.pt\.\d+\.tmp$")  # save_checkpoint's: .<file name>.<pid>.tmp


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit this learner (other model, optimizer); raised before anything is overwritten."""


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif compile_wrapper(model):
            model = model._orig_mod
        else:
            return model


def compile_wrapper(module: nn.Module) -> bool:
    """Whether `module` is torch.compile's wrapper of a module (the module is its `._orig_mod`)."""
    return isinstance(getattr(module, "_orig_mod", None), nn.Module)


def weights_call(learn: Learner, file: Any, quoted: bool = True) -> str:
    """The call, for a message's advice, that loads a checkpoint's weights into the learner's model: through
    `unwrap` for a wrapped one (torch.compile's, DDP's), whose keys a checkpoint's (the module's own) are not.
    `quoted=False`: `file` is a name in the call (`path`), not a file's."""
    model = "learn.model" if unwrap(learn.model) is learn.model else "unwrap(learn.model)"
    return (f"{model}.load_state_dict(load_checkpoint({repr(str(file)) if quoted else file})['model'])"
            + ("" if model == "learn.model" else " (unwrap and load_checkpoint: miniai.callbacks.checkpoint)"))


# ---------------------------------------------------------------- what goes in a checkpoint

def _keyed(learn: Learner) -> dict[str, Callback]:
    """The learner's callbacks keyed '<class name>_<i>' (i counts that class in cbs), as checkpoints name them."""
    cbs = learn.cbs
    return {f"{type(cb).__name__}_{sum(type(c) is type(cb) for c in cbs[:j])}": cb for j, cb in enumerate(cbs)}


def has_state(obj: Any) -> bool:
    """Whether `obj` says what its state is: `state_dict` and `load_state_dict`, as checkpoints save and restore it."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def stateful_callbacks(learn: Learner) -> dict[str, Callback]:
    """The callbacks with `state_dict`/`load_state_dict`, keyed as `_keyed` does."""
    return {key: cb for key, cb in _keyed(learn).items() if has_state(cb)}


_GENERATORS = (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)
# what held_generators does not look into: numbers and text, what is saved on its own (tensors, the learner, whose
# model's layers run_generators searches), and modules and classes (a callback holding `np` would have it search
# all of NumPy); an nn.Module a callback holds is searched (a transform written as one: torchvision's, kornia's; a
# copy of the model, a Mean Teacher's), unless it is the model (`skip`)
_NOT_SEARCHED = (str, bytes, int, float, torch.Tensor, Learner, types.ModuleType, type)


# the global generators (Python's, behind random.randint and the like; NumPy's, behind np.random.rand; torch's CPU
# one) are saved as the RNG state
_GLOBAL_GENERATORS = (random.random.__self__, np.random.mtrand._rand, torch.default_generator)


def held_generators(*holders: Any, depth: int = 16, skip: Callable[[Any], bool] | None = None) -> list[Any]:
    """The random generators (torch's, NumPy's, Python's) callbacks (or other `holders`) hold of their own: in their
    attributes, in lists, tuples and dicts there and in the attributes of what they hold (a RandomFlip(generator=g)
    in a Compose inside BatchTransformCB), down to `depth` levels (composes nested a few deep: each takes two), each
    once, in a fixed order. Tensors, the learner, modules `skip` says (the model's layers, which `run_generators`
    searches) and long containers (recorded values, not settings) are not searched: what they hold is saved on its
    own, or nothing."""
    found: list[Any] = []
    seen: dict[int, int] = {}  # each object's id: the most levels left when it was looked into (met again with more,
    # by another path, it is looked into again, deeper)

    def walk(x: Any, level: int) -> None:
        try:
            if seen.get(id(x), -1) >= level or isinstance(x, _NOT_SEARCHED) \
                    or skip is not None and isinstance(x, nn.Module) and skip(x) \
                    or isinstance(x, (list, tuple, dict)) and len(x) > 100 or any(x is g for g in _GLOBAL_GENERATORS):
                return
            generator = isinstance(x, _GENERATORS) and not isinstance(x, random.SystemRandom)  # (the OS's: no state)
            held = list(_held_by(x)) if level and not generator else []
            named = list(_globals_used(x)) if level and isinstance(x, types.FunctionType) else []
        except Exception:  # noqa: BLE001  (what can't be looked at holds nothing we could save: a freed weakref.proxy)
            return
        if generator and id(x) not in seen:
            found.append(x)
        seen[id(x)] = level
        for v in held:
            walk(v, level - 1)
        for v in named:  # (a module's objects one level down only: not a whole tree a function reads from)
            walk(v, min(level - 1, 1))
    for holder in holders:
        walk(holder, depth)
    return found


def _held_by(x: Any) -> Iterable[Any]:
    """What `x` holds that may hold a generator: the items of a container; a partial's arguments; what a function
    closes over, its default arguments (`BatchTransformCB(partial(noise, generator=g))`), the module-level names it
    uses (`G` in `def flip(x): ... generator=G`, or `GENS["flip"]`) and the functions of its own module among them
    (a helper drawing from G); else its attributes."""
    if isinstance(x, dict):
        return x.values()
    if isinstance(x, (list, tuple, collections.deque)):
        return x
    if isinstance(x, functools.partial):
        return (x.func, *x.args, *x.keywords.values())
    if isinstance(x, types.MethodType):
        return (x.__self__, x.__func__)
    if isinstance(x, types.FunctionType):  # (the module-level names it uses: _globals_used)
        return (*map(_contents, x.__closure__ or ()), *(x.__defaults__ or ()), *(x.__kwdefaults__ or {}).values())
    if isinstance(x, nn.Module):  # its own attributes and its layers, not torch's hooks, parameters and buffers
        return [v for k, v in vars(x).items() if k not in _MODULE_OWN] + list(x._modules.values())
    return _attributes(x)


def _attributes(x: Any) -> list[Any]:
    """The values of `x`'s attributes, its slots' too, and the generators its classes hold (a class attribute); each
    that can be read (a property over a slot may raise, a __getattr__ may answer for __dict__)."""
    found = []
    with contextlib.suppress(Exception):
        found += vars(x).values()
    for name in _slots(type(x)):
        with contextlib.suppress(Exception):
            found.append(getattr(x, name))
    return found + _class_generators(type(x))


@functools.lru_cache(maxsize=256)
def _slots(cls: type) -> tuple[str, ...]:
    """The slots a class and its bases declare (`__slots__`, a name or several), but __dict__ and __weakref__."""
    declared = [vars(c).get("__slots__", ()) for c in cls.__mro__]
    return tuple(name for names in declared for name in ([names] if isinstance(names, str) else names)
                 if name not in ("__dict__", "__weakref__"))


def _class_generators(cls: type) -> list[Any]:
    """The generators `cls` and its bases hold as class attributes."""
    return [v for c in cls.__mro__[:-1] for v in vars(c).values() if isinstance(v, _GENERATORS)]


def _globals_used(f: types.FunctionType) -> Iterator[Any]:
    """The module-level names a function uses (its comprehensions', lambdas' and inner functions' too), but other
    modules' functions: not all of a library it calls."""
    codes = [f.__code__]
    for code in codes:
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in code.co_names:
            v = f.__globals__.get(name)
            if not isinstance(v, types.FunctionType) or v.__globals__ is f.__globals__:
                yield v


def _contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a name the function closes over that is not assigned yet
        return None


def generator_state(g: Any) -> Any:
    """The state of a torch, NumPy or Python generator, to give back with `set_generator_state`; NumPy's arrays in
    it (MT19937's key, Philox's counter) as tensors, which torch's safe loader reads back."""
    if isinstance(g, torch.Generator):
        return g.get_state()
    if isinstance(g, np.random.RandomState):
        return _plain(g.get_state(legacy=False))
    return _plain(g.bit_generator.state) if isinstance(g, np.random.Generator) else g.getstate()


def set_generator_state(g: Any, state: Any) -> None:
    """Put back a state from `generator_state`."""
    if isinstance(g, torch.Generator):
        g.set_state(state)
    elif isinstance(g, np.random.Generator):
        g.bit_generator.state = _numpy(state)
    elif isinstance(g, np.random.RandomState):
        g.set_state(_numpy(state))
    else:
        g.setstate(state)


def _plain(x: Any) -> Any:
    """NumPy's arrays and numbers inside a generator state as tensors and Python numbers."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):  # its bytes as signed ints of the same size (torch saves no uint64), and its dtype
        signed = x.view(f"i{x.itemsize}") if x.dtype.kind == "u" else x
        return {"ndarray": torch.from_numpy(signed.copy()), "dtype": x.dtype.str}
    return x.item() if isinstance(x, np.generic) else x


def _numpy(x: Any) -> Any:
    """`_plain`'s arrays back as NumPy arrays of their own dtype."""
    if isinstance(x, dict) and set(x) == {"ndarray", "dtype"}:
        return x["ndarray"].numpy().view(np.dtype(x["dtype"]))
    return {k: _numpy(v) for k, v in x.items()} if isinstance(x, dict) else x


_MODULE_OWN = frozenset(vars(nn.Module()))  # what torch keeps on every module: hooks, its dicts, the mode


def callback_generators(learn: Learner) -> dict[str, list[Any]]:
    """The generators every callback holds (`held_generators`), keyed '<class name>_<i>' as `stateful_callbacks`."""
    gens = {key: held_generators(cb, skip=_the_model(learn)) for key, cb in _keyed(learn).items()}
    return {key: found for key, found in gens.items() if found}


def _the_model(learn: Learner) -> Callable[[nn.Module], bool]:
    """Whether a module is the learner's model (a DDP or compile wrapper of it too) or one of its layers, whose
    generators `run_generators` searches as the model's (a copy of it is searched as its holder's: a Mean Teacher's
    draws in train mode)."""
    wrapped = getattr(learn, "model", None)
    layers = {id(wrapped), *map(id, unwrap(wrapped).modules())} if isinstance(wrapped, nn.Module) else set()
    return lambda module: id(module) in layers


def run_generators(learn: Learner) -> dict[str, list[Any]]:
    """`callback_generators`, and those the model's layers (4 levels down: a Compose a layer applies), the
    loaders' datasets (3) and samplers (3) hold (a noise layer's, a Dataset's drawing in __getitem__; a
    tensor-sized index there is not searched each save): what a checkpoint saves. A prediction pass leaves the
    model's and the datasets' moved (Monte Carlo sampling by repeated calls)."""
    gens = callback_generators(learn)
    layers = unwrap(learn.model).modules()  # (not a DDP wrapper's own attributes)
    model = held_generators(*(v for m in layers for k, v in vars(m).items() if k not in _MODULE_OWN), depth=4)
    data = {f"dls.{name}.dataset": held_generators(getattr(getattr(learn.dls, name, None), "dataset", None), depth=3)
            for name in ("train", "valid")}  # (a loader's own generators are its state: loader_generators)
    for name in ("train", "valid"):  # a sampler of one's own drawing from a generator under another name than
        dl = getattr(learn.dls, name, None)  # `generator` (a bucketing sampler's NumPy one): not its dataset's again
        known = {id(g) for found in [*gens.values(), model, *data.values(), loader_generators(dl)] for g in found}
        data[f"dls.{name}.sampler"] = [g for g in held_generators(
            getattr(dl, "sampler", None), getattr(dl, "batch_sampler", None), depth=3) if id(g) not in known]
    return {**gens, **{key: found for key, found in {"model": model, **data}.items() if found}}


def loader_generators(dl: Any) -> list[torch.Generator]:
    """The torch.Generators a torch DataLoader draws its order from (its own, its sampler's), each once."""
    found: list[torch.Generator] = []
    for owner in (dl, getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def _loader_state(dl: Any) -> dict[str, Any] | None:
    if has_state(dl):
        return {"state_dict": dl.state_dict()}  # miniai.data.TensorLoader: {seed, epoch}
    # a torch DataLoader without a generator draws from torch's global RNG, which is saved anyway
    state: dict[str, Any] = {"generators": [g.get_state() for g in loader_generators(dl)]}
    seed = getattr(getattr(dl, "sampler", None), "seed", None)
    if isinstance(seed, int):  # a DistributedSampler's order is its seed's (DDPCB draws it each fit) and the epoch
        state["sampler_seed"] = seed
    return state if state["generators"] or "sampler_seed" in state else None


def loader_size(dl: Any) -> dict[str, int | None]:
    """The batches and items a loader gives an epoch (None: unknown): on loaders of another size (another batch
    size, other data) a resumed run trains on, but can't end as the saved run would have.

    A TensorLoader sharded over ranks counts the batches of the one process with the global batch (bs × world size)
    that the ranks walk together: the same on every rank, and in a run on another number of processes that trains
    alike (a rank's own count differs by rank for a validation shard). DDPCB's contiguous split of a validation
    DataLoader (a `range` sampler) counts None batches, for the same reason."""
    if isinstance(dl, TensorLoader):
        w = dl.world_size
        n = len(dl.x) // w * w if dl.even else len(dl.x)  # (an even shard drops the remainder, as it walks)
        batches: int | None = n // (dl.bs * w) if dl.drop_last else -(-n // (dl.bs * w))
    else:
        batches = None if isinstance(getattr(dl, "sampler", None), range) else len_or_none(dl)
    return {"batches": batches, "items": len_or_none(getattr(dl, "dataset", getattr(dl, "x", None)))}


def rng_state() -> dict[str, Any]:
    """The state of every RNG a run draws from: Python's, NumPy's, torch's (and CUDA's once it is in use, MPS's)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             # numpy's keys as a tensor, so the file loads with torch.load(weights_only=True)
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    # only if CUDA is initialized: asking otherwise would start CUDA (seconds, memory) just to save a seed
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():  # dropout and augmentation on a Mac's GPU draw from it
        state["mps"] = torch.mps.get_rng_state()
    return state


def param_names(model: nn.Module, opt: torch.optim.Optimizer) -> list[list[str]]:
    """For each param group of `opt`, the names in `model` of its parameters, in the optimizer's order."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names.get(id(p), f"<unnamed {i}>") for i, p in enumerate(group["params"])] for group in opt.param_groups]


_SPEED_ONLY = ("foreach", "fused", "capturable", "differentiable")  # how torch computes the step, not what it is


def optimizer_settings(opt: torch.optim.Optimizer, learn: Learner | None = None) -> dict[str, Any]:
    """What the optimizer was built with (`opt.defaults`), but the lr (fit's own) and the choice of implementation:
    weight decay, betas, momentum..., compared on resume, where torch's load_state_dict would put the saved back;
    with `learn`, also its groups' own momentum, betas and lr ratio as opt_func makes them (`made_settings`)."""
    defaults = getattr(opt, "defaults", {})  # (an optimizer of one's own may have none)
    settings = {k: v for k, v in sorted(defaults.items()) if k not in ("lr", "initial_lr", *_SPEED_ONLY)
                and isinstance(v, (bool, int, float, str, tuple, type(None)))}
    # and each param group's own value of them (a group of biases without weight decay), but those a schedule
    # moves as it runs (OneCycleLR cycles momentum and betas)
    groups = {f"param group {i} {k}": group[k] for i, group in enumerate(getattr(opt, "param_groups", ()))
              for k in settings if k in group and k not in ("momentum", "betas")}
    return {**settings, **groups, **(made_settings(learn) if learn is not None else {})}


def made_settings(learn: Learner) -> dict[str, Any]:
    """Each param group's momentum, betas and lr over the fit's, as `opt_func` makes them for the fit's lr: read
    from a fresh optimizer, since schedules move them in the running one (OneCycleLR); none if it gives that one."""
    fit_lr, opt_func = getattr(learn, "fit_lr", None), getattr(learn, "opt_func", None)
    if not fit_lr or opt_func is None:
        return {}
    made_opt = opt_func(list(unwrap(learn.model).parameters()), fit_lr)
    if made_opt is learn.opt:  # an opt_func giving the same optimizer each fit: its groups are as schedules left them
        return {}
    groups = made_opt.param_groups
    made = {f"param group {i} {k}": tuple(group[k]) if k == "betas" else group[k]
            for i, group in enumerate(groups) for k in ("momentum", "betas") if k in group}
    # a body at a tenth of the fit's lr, or one group's scaled (SGD(p, lr=lr * 0.1)): load_state_dict would put the
    # saved lrs back
    made.update({f"param group {i} lr ratio": round(float(group["lr"]) / float(fit_lr), 9)
                 for i, group in enumerate(groups)})
    return made


def setup_of(learn: Learner) -> dict[str, Any]:
    """What the run holds outside every state_dict, as plain values to compare on resume: the settings of torch's
    and miniai's layers (Dropout's p, BatchNorm's momentum), the loss's and the batch transforms' (their function,
    or their class, plain attributes and buffers, and the passes and inputs they transform), and the training
    loader's sampler class. A layer class of one's own is left out: what its forward keeps (a rotary embedding's
    cache), maybe before the fit, looks like a setting there."""
    found: dict[str, Any] = {}
    for name, module in unwrap(learn.model).named_modules():  # (its persistent buffers are in the state_dict)
        ours = type(module).__module__.split(".")[0] in ("torch", "miniai")
        if ours and not isinstance(module, LazyModuleMixin):  # (a lazy one not run yet: no sizes until its forward)
            _plain_parts(found, f"model.{name}" if name else "model", module, module._non_persistent_buffers_set, 0)
    _plain_parts(found, "loss_func", learn.loss_func)
    for key, cb in _keyed(learn).items():
        if isinstance(cb, BatchTransformCB):  # (and which passes and inputs it transforms)
            _plain_parts(found, f"{key}.tfm", cb.tfm)
            found.update({f"{key}.{k}": getattr(cb, k) for k in ("on_train", "on_val", "inputs")})
        if isinstance(cb, MetricsCB):  # what each metric computes (top-2 accuracy resumed as top-1 under one name)
            for name, metric in cb.metrics.items():
                _metric_parts(found, f"{key}.{name}", metric)
    found["setup version"] = 7  # (files before it compared fewer values: one only here is no change for them)
    sampler = getattr(getattr(learn.dls, "train", None), "sampler", None)  # (a torch DataLoader's: shuffle or not)
    if sampler is not None:
        found["dls.train.sampler"] = type(sampler).__name__
    return found


def _defaults(f: Any) -> dict[str, Any]:
    """A Python function's parameters that have defaults, with them (none for anything else)."""
    if not isinstance(f, types.FunctionType):
        return {}
    code, defaults = f.__code__, f.__defaults__ or ()
    return {**dict(zip(code.co_varnames[code.co_argcount - len(defaults):code.co_argcount], defaults)),
            **(f.__kwdefaults__ or {})}


def held_tensors(dl: Any) -> list[torch.Tensor] | None:
    """The tensors a loader's data is (a TensorLoader's x and y, a torch DataLoader's TensorDataset's), to checksum;
    None for other loaders (what their datasets read is not looked at)."""
    if isinstance(dl, TensorLoader):
        return [dl.x, dl.y]
    dataset = getattr(dl, "dataset", None)
    return list(dataset.tensors) if isinstance(dl, DataLoader) and isinstance(dataset, TensorDataset) else None


def _plain_parts(found: dict[str, Any], name: str, x: Any, buffers: Iterable[str] | None = None,
                 depth: int = 2) -> None:
    """`x`'s function name, or its class name and its plain attributes and buffers (`buffers`: which; default all
    of a module's), into `found` under `name` and `name.<attribute>`; tensors as text with their checksum. Down to
    `depth` levels, the same of its submodules, of the objects in its short lists (a Compose's transforms) and of
    a bound method's object; a function's defaults, closure and the numbers and tensors it reads off its module's
    globals. The plain tensor attributes of a module with parameters of its own are left out: what torch keeps
    there is made from them before each forward (the weight of weight_norm, spectral_norm, prune)."""
    if isinstance(x, types.MethodType):  # (a loss that is a bound method: its object's settings are its own, but
        if not isinstance(x.__self__, nn.Module):  # a model's are compared as the model's, not what it caches)
            _plain_parts(found, name, x.__self__, depth=depth)
        found[name] = _named(x.__func__)
        parts = global_numbers(x.__func__)
    elif isinstance(x, functools.partial):  # (over what it wraps: partial(f) is f, the same settings)
        if isinstance(x.func, types.FunctionType):
            found[name] = _named(x.func)
            parts = {**_defaults(x.func), **dict(enumerate(x.args)), **x.keywords, **global_numbers(x.func)}
        else:  # a module's or an object's: its own settings
            _plain_parts(found, name, x.func, buffers, depth)
            parts = {**dict(enumerate(x.args)), **x.keywords}
    elif isinstance(x, types.FunctionType):  # and what it reads of its maker's (a factory's loss) or its defaults
        found[name] = _named(x)
        parts = _defaults(x)
        for var, cell in zip(x.__code__.co_freevars, x.__closure__ or ()):
            with contextlib.suppress(ValueError):  # (a cell not filled yet)
                parts[var] = cell.cell_contents
        parts.update(global_numbers(x))
    elif isinstance(x, (types.BuiltinFunctionType, type)):
        found[name] = _named(x)
        return
    else:
        found[name] = _named(type(x))
        parts = {k: v for k, v in vars(x).items() if k not in _MODULE_OWN} if hasattr(x, "__dict__") else {}
        if isinstance(x, nn.Module) and x._parameters:
            parts = {k: v for k, v in parts.items() if not isinstance(v, torch.Tensor)}
        if _own_class(type(x)):  # (what its forward or __call__ reads off its module's globals)
            parts.update(global_numbers(getattr(type(x), "forward" if isinstance(x, nn.Module) else "__call__", None)))
        if isinstance(x, nn.Module):
            parts.update((b, x._buffers[b]) for b in (x._buffers if buffers is None else buffers)
                         if x._buffers.get(b) is not None)
            parts.update(x._modules if depth else {})
    for key, value in parts.items():
        if isinstance(value, nn.Parameter):  # (a reference to a parameter: in the state_dict where it is registered)
            continue
        if depth and isinstance(value, nn.Module):
            _plain_parts(found, f"{name}.{key}", value, depth=depth - 1)
            continue
        if depth and isinstance(value, (list, tuple)) and 0 < len(value) <= 16 \
                and not any(isinstance(v, (*_PLAIN, torch.Tensor)) for v in value):  # (objects: transforms)
            for i, item in enumerate(value):
                _plain_parts(found, f"{name}.{key}.{i}", item, depth=depth - 1)
            continue
        if isinstance(value, torch.Tensor):
            value = _tensor_text(value)
        elif isinstance(value, (list, tuple)) and len(value) <= 16 and all(_python(v) is not _SKIP for v in value):
            value = tuple(map(_python, value))
        elif _python(value) is not _SKIP:
            value = _python(value)
        else:
            continue
        found[f"{name}.{key}"] = value


def global_numbers(f: Any, depth: int = 1) -> dict[str, Any]:
    """The numbers and tensors a function of one's own reads off its module's globals (a SCALE), by 'global NAME',
    and those the functions of its module it calls read (`depth` calls down)."""
    if not isinstance(f, types.FunctionType) or not _own_class(f):
        return {}
    found, codes = {}, [f.__code__]
    for code in codes:  # (and its lambdas', comprehensions' and inner functions')
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for n in {op.argval for op in dis.get_instructions(code) if op.opname in ("LOAD_GLOBAL", "LOAD_NAME")}:
            v = f.__globals__.get(n)  # (not co_names: an attribute's name, preds.size, is no global size)
            if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool):
                found[f"global {n}"] = v
            elif depth and isinstance(v, types.FunctionType) and v.__globals__ is f.__globals__ and v is not f:
                found.update(global_numbers(v, depth - 1))
    return found


def _own_class(x: Any) -> bool:
    """Whether a class or function is the user's, not torch's or miniai's (whose globals are no settings)."""
    return (getattr(x, "__module__", None) or "").split(".")[0] not in ("torch", "miniai", "torchvision", "torcheval")


def _metric_parts(found: dict[str, Any], name: str, metric: Any) -> None:
    """A metric's class (or function) and its settings, the plain values of the attributes named as its or its
    parents' constructors' arguments (torcheval's k, average, num_classes), not its running state (counts as
    attributes, which each pass resets), into `found` under `name`."""
    if isinstance(metric, (types.FunctionType, types.MethodType, functools.partial)):
        _plain_parts(found, name, metric)
        return
    found[name] = _named(type(metric))
    arguments = set()
    for k in type(metric).__mro__:  # (and its parents': a subclass passing topk on as its parent's k)
        with contextlib.suppress(TypeError, ValueError):  # (a constructor in C: no settings to read)
            arguments.update(inspect.signature(k.__init__).parameters)
    for key in sorted(arguments):
        value = vars(metric).get(key, _SKIP) if hasattr(metric, "__dict__") else _SKIP
        value = _tensor_text(value) if isinstance(value, torch.Tensor) else _python(value)  # (class weights)
        if key != "self" and value is not _SKIP:
            found[f"{name}.{key}"] = value


def _tensor_text(value: torch.Tensor) -> str:
    """A tensor setting as the text a message shows (NaN equals NaN), with its checksum."""
    crc = byte_sums([value])[1]
    return f"tensor {value.tolist()} (checksum {crc})" if value.numel() <= 8 else \
        f"a tensor of shape {tuple(value.shape)} (checksum {crc})"


_PLAIN = (int, float, str, bool, type(None))
_SKIP = object()  # (what _python leaves out)


def _python(value: Any) -> Any:
    """A plain value as torch's safe loader reads it back and as it compares, or _SKIP: NumPy's numbers as Python's
    (np.float64 is a float, and the safe loader refuses it), NaN as the text 'nan' (nan != nan); a value of another
    type, even a str or int subclass (np.str_, an Enum), is left out: the safe loader would refuse the file."""
    value = value.item() if isinstance(value, (np.number, np.bool_)) else value
    if type(value) not in _PLAIN:
        return _SKIP
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def _named(f: Any) -> str:
    """A function's or class's name, the same in every process and whichever module ran it (a class defined in a
    script run as __main__, then imported from it)."""
    return f.__name__ if isinstance(f, types.BuiltinFunctionType) else getattr(f, "__qualname__", type(f).__qualname__)


def generator_states(learn: Learner) -> dict[str, list[Any]]:
    """The states of the generators `run_generators` finds, keyed as it keys them."""
    return {key: [generator_state(g) for g in gens] for key, gens in run_generators(learn).items()}


def checkpoint_state(learn: Learner, epochs_done: int, rng_ranks: list[tuple[Any, Any]] | None = None,
                     setup_at_start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `fit(resume=...)` needs to continue `learn` exactly after `epochs_done` epochs, as one dict
    (`rng_ranks`: under torch.distributed, every rank's `rng_state()` and `generator_states`, so each resumes with
    its own;
    `setup_at_start`: `setup_of(learn)` at the fit's start, so that values that changed since, a counter or a
    cache or a setting a callback moves each epoch, are not compared on resume as settings)."""
    setup = setup_of(learn)
    moved = [k for k, v in setup.items() if setup_at_start is not None and setup_at_start.get(k, _SKIP) != v]
    model = unwrap(learn.model)
    metrics = getattr(learn, "metrics", None)
    keep_metrics = metrics is not None and not callable(getattr(metrics, "state_dict", None))
    return {
        "format": _FORMAT, "version": _VERSION, "torch_version": str(torch.__version__),
        "epoch": epochs_done, "n_epochs": learn.n_epochs, "epoch_offset": learn.epoch_offset,
        "fit_lr": getattr(learn, "fit_lr", None),  # the lr the run made its optimizer with: a resumed fit's too
        "model": model.state_dict(),
        # TrainLearner sets grads to None every step; MomentumLearner carries mom × grads into the next batch
        "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
        "frozen": [n for n, p in model.named_parameters() if not p.requires_grad],  # (a callback may unfreeze later)
        # the learner's class and MomentumLearner's mom: what the carried grads above are made with
        "learner": {"class": type(learn).__name__, "mom": getattr(learn, "mom", None)},
        "optimizer": learn.opt.state_dict(), "optimizer_class": type(learn.opt).__name__,
        "optimizer_settings": optimizer_settings(learn.opt, learn),
        "param_names": param_names(model, learn.opt),
        # each tensor the optimizer trains beside the model (a temperature): its value and gradient
        "beside_model": [(p.detach(), p.grad) for p in beside_model(model, learn.opt)],
        "callbacks": {key: cb.state_dict() for key, cb in stateful_callbacks(learn).items()},
        "generators": rng_ranks[0][1] if rng_ranks else generator_states(learn),
        "metrics": {"history": metrics.history, "last": metrics.last} if keep_metrics else None,
        "loaders": {name: _loader_state(getattr(learn.dls, name, None)) for name in ("train", "valid")},
        "loader_sizes": {name: loader_size(getattr(learn.dls, name, None)) for name in ("train", "valid")},
        # the tensors a loader holds (~12 ms per 50 MB): other data of the same size is said on resume too
        "loader_data": {name: byte_sums(held) for name in ("train", "valid")
                        if (held := held_tensors(getattr(learn.dls, name, None))) is not None},
        "rng": rng_state(), "rng_ranks": [rng for rng, _ in rng_ranks] if rng_ranks else None,
        "generator_ranks": [gens for _, gens in rng_ranks] if rng_ranks else None,
        "setup": {k: v for k, v in setup.items() if k not in moved}, "setup_moved": moved,
    }


# ---------------------------------------------------------------- files

def _write(obj: Any, f: Any) -> None:
    """Serialize `obj` into the open file `f` (a seam: tests make it fail midway)."""
    torch.save(obj, f)


def _tensors(state: dict[str, Any]) -> list[Any]:
    """Every tensor in a checkpoint's state, in a fixed order, its own checksum left out."""
    return list(tensors_in({k: v for k, v in state.items() if k != "checksum"}))


def _others(file: Path) -> str:
    """The other checkpoints beside `file`, for an error that refuses it: ': a, b' (or nothing)."""
    others = [str(f) for _, f in list_checkpoints(file.parent) if f != file]
    return f": {', '.join(others)}" if others else ""


def save_checkpoint(state: dict[str, Any], file: str | os.PathLike) -> Path:
    """Write `state` to `file` atomically: a temporary file in the same directory, fsync, rename, fsync the dir.
    The checksums of its tensors go with it (`byte_sums`): a flipped bit is found when it is loaded."""
    state = {**state, "checksum": byte_sums(_tensors(state))}
    file = Path(file).expanduser()  # ('~/ck': the home directory, as a shell reads it, never a folder named ~)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            _write(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)  # atomic: readers see the old file or the new one, never half of one
    except BaseException as e:  # also Ctrl-C: leave no temporary file behind
        tmp.unlink(missing_ok=True)
        if not isinstance(e, KeyboardInterrupt) and isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None  # torch's writer reports a Ctrl-C as "enforce fail at inline_container"
        raise
    if hasattr(os, "O_DIRECTORY"):  # the rename is durable once the directory entry is on disk (not on Windows)
        fd = os.open(file.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return file


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epochs done, file) for each checkpoint in `directory`, oldest first."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), f) for f in directory.iterdir() if (m := _NAME.match(f.name)) and f.is_file())


def find_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself if it is a file, else the newest (most epochs) checkpoint in the directory `path`."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        near = [f.name for _, f in list_checkpoints(path.parent)]  # a file name guessed wrong: the ones there
        near = near if len(near) <= 8 else near[:3] + [f"... ({len(near) - 6} more)"] + near[-3:]
        raise FileNotFoundError(f"no checkpoint at {path}: pass a checkpoint file or the directory given to "
                                "CheckpointCB(path)" + (f" ({path.parent} holds {', '.join(near)})" if near else "")
                                + (". Under DDP rank 0 alone writes checkpoints, into the path its CheckpointCB was "
                                   "given: resume every rank from that path (one for all ranks, not one per rank)"
                                   if world_size() > 1 else ""))
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path} holds no checkpoint (files named epoch_NNNN.pt, written by CheckpointCB)")
    return found[-1][1]


def _saved_callbacks(learn: Learner) -> dict[str, Any]:
    """The callbacks' states in the checkpoint this fit resumes from ({} when it resumes from none)."""
    from .resume import ResumeCB  # (here: resume.py imports this module)
    return next((cb.state for cb in learn.cbs if isinstance(cb, ResumeCB)), {}).get("callbacks") or {}


def _run_dirs(learn: Learner, resumed: Path) -> set[Path]:
    """The directories of the run resumed: the checkpoint's own, and each its CheckpointCBs saved into (a run with a
    second one, for its best, say)."""
    saved = _saved_callbacks(learn)
    return {Path(resumed).resolve().parent} | {Path(state["path"]) for state in _checkpointcb_states(saved)
                                               if "path" in state}


def _checkpointcb_states(saved: dict[str, Any]) -> list[dict[str, Any]]:
    """The states of a checkpoint's CheckpointCBs among its callbacks' (keyed by class name, `_keyed`)."""
    return [state for key, state in saved.items() if re.fullmatch(r"CheckpointCB(_\d+)?", key)
            and isinstance(state, dict)]


def _callback_states(file: Path) -> dict[str, Any]:
    """The callbacks' states a checkpoint file holds, read without its tensors (mmap; a file in torch's legacy
    format, which can't be mapped, is read whole); raises what torch.load raises."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        state = torch.load(file, map_location="cpu", weights_only=True)
    return state.get("callbacks") or {}


def _holds_the_run(learn: Learner, existing: list[tuple[int, Path]]) -> bool:
    """Whether the directory's checkpoints are of the resumed run, by the run id its CheckpointCBs saved (read from
    the newest the run keeps, its epoch or earlier, else the oldest): a directory the run once wrote may hold another
    run since (moved away, and a new run started there). True where either has no id (from before run ids)."""
    ours = {state.get("run") for state in _checkpointcb_states(_saved_callbacks(learn))} - {None}
    kept = [f for epochs, f in existing if epochs <= learn.start_epoch]
    if not ours or not existing:
        return True
    try:
        theirs = _callback_states(kept[-1] if kept else existing[0][1])
    except Exception:  # noqa: BLE001 -- a file that can't be read is no other run's either: pruning decides
        return True
    ids = {state.get("run") for state in _checkpointcb_states(theirs)} - {None}
    return not ids or bool(ids & ours)


def _is_export(file: Path) -> bool:
    """Whether `file` is a `learn.export` bundle: its pickle holds the export's format tag (read, not unpickled)."""
    from ..inference import _FORMAT as export_format  # (here: inference imports the callbacks)
    try:
        with zipfile.ZipFile(file) as archive:
            pickled = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
            return export_format.encode() in archive.read(pickled)
    except (OSError, zipfile.BadZipFile, StopIteration):
        return False


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint (a file, or the newest in a directory) onto the CPU, with torch's safe loader."""
    file = find_checkpoint(path)
    damaged = _damaged_record(file)
    if damaged is not None:  # (torch's reader checks no CRCs: a flipped bit of an lr would load as another lr)
        raise CheckpointMismatchError(f"checkpoint {file} is damaged: its record {damaged} is not the bytes that were "
                                      f"saved (its CRC-32 differs). Resume from another one{_others(file)}.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure to read means the file can't be used; say which and why
        if _is_export(file):  # (the safe loader refuses the model object it pickles: not a type to allow)
            raise CheckpointMismatchError(f"{file} is a learn.export file, not a checkpoint: it loads with "
                                          "miniai.load_learner(path); resume from a file CheckpointCB wrote") from e
        refused = refused_types(e, file)
        if refused:  # a sound file holding a type torch's safe loader does not know: say which, not "corrupt"
            raise CheckpointMismatchError(f"could not read checkpoint {file}, a sound file: "
                                          f"{safe_loader_advice(refused)}") from e
        raise CheckpointMismatchError(
            f"could not read checkpoint {file} ({type(e).__name__}: {str(e)[:300]}). If the file is truncated or "
            f"corrupt, resume from another one{_others(file)}. If it holds a "
            "callback state of a type the safe loader refuses, allow that type with "
            "torch.serialization.add_safe_globals([...]).") from e
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointMismatchError(f"{file} is not a miniai checkpoint (no format tag {_FORMAT!r}); "
                                      "pass a file written by CheckpointCB")
    if int(state.get("version", 0)) > _VERSION:  # (its keys may mean more than this one reads: some left out)
        raise CheckpointMismatchError(f"checkpoint {file} was written by a newer miniai (checkpoint version "
                                      f"{state['version']}; this one reads up to {_VERSION}): upgrade miniai")
    named = _NAME.match(file.name) if Path(path).expanduser().is_dir() else None  # (a file given is the one meant)
    if named and "epoch" in state and int(named.group(1)) != int(state["epoch"]):  # resume=dir picks by the name
        raise CheckpointMismatchError(f"checkpoint {file} holds the weights after epoch {int(state['epoch'])}, and "
                                      f"its name says {int(named.group(1))}: a renamed file? CheckpointCB names each "
                                      "by its epoch, and resume=dir takes the newest by name: name it "
                                      f"epoch_{int(state['epoch']):04d}.pt again")
    # (files before checksums have none; files of the older checksum still verify with it)
    if "checksum" in state and not checksums_match(state["checksum"], _tensors(state)):
        raise CheckpointMismatchError(f"checkpoint {file} is damaged: its tensors are not the bytes that were saved "
                                      f"(their checksums differ). Resume from another one{_others(file)}.")
    return state


def _damaged_record(file: Path) -> str | None:
    """The first record of the zip file torch wrote whose bytes fail the CRC-32 the zip holds for it (every byte
    of the checkpoint is in one: the pickled state, each tensor), or None; None too for what is no zip file."""
    try:
        with zipfile.ZipFile(file) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):  # not a zip, or truncated: torch.load says what it can
        return None


def refused_types(error: Exception, file: Any = None) -> list[str]:
    """The full names of the types torch's safe loader refused in `error` (and any others `file` holds), or []."""
    names = [a or b for a, b in re.findall(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>",
                                           str(error))]
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # (torch >= 2.5)
    if names and scan is not None and file is not None:
        try:  # all at once: else each retry would name one more
            names += scan(file)
        except Exception:  # noqa: BLE001 -- only a better message is lost
            pass
    return list(dict.fromkeys(names))


def safe_loader_advice(names: list[str]) -> str:
    """What a checkpoint holding types the safe loader refuses (`names`) means, and what to do."""
    dtype = " (a numpy number needs its dtype's class too, e.g. numpy.dtypes.Float64DType for a float64)" if any(
        n.startswith("numpy") for n in names) and not any(n.startswith("numpy.dtypes.") for n in names) else ""
    return (f"it holds {', '.join(names)} (in a callback's or a scheduler's saved state: a numpy number in an "
            "lr_lambda, say), which torch's safe loader refuses. If you trust the file, allow them before resuming: "
            f"torch.serialization.add_safe_globals([{', '.join(names)}]){dtype}; to avoid it, keep such values "
            "Python numbers (float(x)).")


# ---------------------------------------------------------------- the callback that writes them

def _not_best(file: Path, value: float, run: str | None) -> str | None:
    """Why the checkpoint `file` is not the one its run (`run`, its id) saved as its best, of `value`; None if it is
    (its CheckpointCB state names the file itself as the best: another run's file of the same name holds another)."""
    if not file.is_file():
        return "not there"
    try:
        saved = _callback_states(file)
    except Exception as e:  # noqa: BLE001 -- a file that can't be read is not the best to keep
        return f"can't be read ({type(e).__name__})"
    mine = any(isinstance(cb, dict) and cb.get("best") == value and Path(cb.get("best_file") or "").name == file.name
               and (run is None or cb.get("run") in (None, run))  # (a record from before run ids: value and name)
               for cb in saved.values())
    return None if mine else "another run's file"


class CheckpointCB(Callback):
    """Saves a checkpoint to `path/epoch_NNNN.pt` after every `every` epochs (and the last); keeps the newest `keep`.

    Args:
        path: a directory. A fresh fit, or one resumed from another directory, refuses one that already holds
            checkpoints, because they are another run's work; pass `overwrite=True` to delete them instead (once
            this fit has written its first checkpoint, so a fit that saves none, or stops before its first, leaves
            them). A fit resumed from this directory keeps what is there; checkpoints of later epochs than the one
            resumed from (a run that went on from it) are moved into `path/superseded_<k>/` at the fit's first
            save (a fit refused or stopped before it leaves them), so they are not overwritten and `resume=path`
            picks this run's newest.
        every: save after every `every`-th epoch, and always after the fit's last epoch (also the last of a fit
            a callback stops early: EarlyStoppingCB sets `learn.stop_requested`) and, with `monitor`, after each
            epoch that improves it.
        keep: how many of this fit's newest checkpoints stay (None: all); its older ones are deleted. Files this
            fit did not write are never deleted.
        monitor, mode: with `monitor` (a name MetricsCB logs, e.g. 'valid_loss'), the best checkpoint by it
            ('min' or 'max'; by default the way the name improves: a loss falls, an accuracy rises; a name that
            says neither needs it) is kept as well; its file is `best_path`.
    A checkpoint is written after the validation pass (or, in a fit without one, after the training pass), once
    every scheduler has stepped, and only if the weights and the validation loss are finite (else the fit stops
    with NonFiniteLossError naming the last good checkpoint). An epoch whose last pass a CancelFitException ended
    before every callback ordered before this one had run its `after_epoch` (MetricsCB's row, a plateau's step, a
    logger's row, EarlyStoppingCB's count) is not saved: a resume runs that epoch again. Only rank 0 writes under torch.distributed.
    Before training it saves the schedulers' states (and those of callbacks of your own) once: one that can't be
    pickled is refused then, not after an epoch; one torch's safe loader would refuse on resume is warned of.
    It warns when the run can't be resumed exactly: loaders with persistent workers (their RNG is not saved), and
    callbacks of your own whose attributes change during the fit but that have no `state_dict`.
    """
    order = 80  # its cleanup_epoch after MetricsCB's and the epoch schedulers' (EarlyStoppingCB, 70, has asked to stop)
    _metrics: Any = None  # the MetricsCB that logs `monitor` (check_monitor finds it each fit)

    def __init__(self, path: str | os.PathLike, every: int = 1, keep: int | None = 3, monitor: str | None = None,
                 mode: str | None = None, overwrite: bool = False) -> None:
        check_count("every", every, what=" (save after every N epochs)")
        if keep is not None:
            check_count("keep", keep, what=" or None (keep all)")
        mode = monitor_mode(monitor, mode, "CheckpointCB")
        self.path, self.every, self.keep, self.monitor, self.mode = Path(path).expanduser(), every, keep, monitor, mode
        self.overwrite = overwrite
        self.best: float | None = None
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self._written: list[Path] = []  # files this fit wrote, oldest first: the only ones pruning may delete
        self._pending: int | None = None
        self._train_cut = False  # whether this epoch's training pass was cut short
        self._replaced: list[Path] = []  # an earlier run's files that overwrite=True deletes at the first save
        self._superseded: list[Path] = []  # later epochs' files of the resumed run, moved aside at the first save
        self._release: Callable[[], None] | None = None  # lets go of path while this fit writes there (claim_dir)
        self._claimer: Learner | None = None  # the learner whose fit holds it
        self._resumed_from: Path | None = None
        self._resumed_epoch = 0
        self._watched: dict[str, tuple[Callback, dict[str, Any]]] = {}  # own callbacks without state_dict
        self._warned: set[str] = set()
        self._run: str | None = None  # the run's id, in each of its checkpoints: tells a directory's runs apart

    def __getstate__(self) -> dict[str, Any]:
        """What a copy (deepcopy, pickle) holds: no claim of the directory, which the fit that made it lets go."""
        return {**vars(self), "_release": None, "_claimer": None}

    def state_dict(self) -> dict[str, Any]:
        """{'best': best monitored value so far, 'best_file': its file's path, 'monitor', 'mode', 'path', 'run': the
        run's id}, so a resumed run keeps the best (unless it watches something else) and knows its directories, and
        its files in them, as its own."""
        return {"best": self.best, "best_file": str(self.best_path.resolve()) if self.best_path else None,
                "monitor": self.monitor, "mode": self.mode, "path": str(self.path.resolve()),
                "run": getattr(self, "_run", None)}  # (a CheckpointCB pickled before run ids has none)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; the best file is the one saved as this best, in `path` or beside the checkpoint
        resumed from (a run moved or copied with its files) or where it was saved, never another run's file of that
        name; if none is, the best is forgotten with its value (a warning says why), so the resumed run finds a new
        best."""
        state = self._own_record(state)
        self._run = state.get("run") or self._run  # (a checkpoint from before run ids has none: this fit's new one)
        if not same_watch(self, state, "CheckpointCB"):
            self.best, self.best_path = None, None
            return
        best = Path(state["best_file"]) if state["best_file"] else None
        if best is not None:  # in its directory now first (a moved run's), then beside the checkpoint (a copied
            # run's own copy), then where it was saved; not beside the checkpoint first: another CheckpointCB's
            # directory may hold a best of its own of that name and value
            places = [self.path / best.name] + ([self._resumed_from.parent / best.name] if self._resumed_from else [])
            places += [best]
            why: dict[Path, str] = {}
            found = None
            for place in dict.fromkeys(places):  # (each read once, and none after the best is found)
                no = _not_best(place, state["best"], state.get("run"))
                if no is None:
                    found = place
                    break
                why[place] = no
            if found is None:
                warn("the best checkpoint of the resumed run is not found: " + "; ".join(
                    f"{place}: {no}" for place, no in why.items()) + ". The best is looked for afresh from here on")
            best = found
        self.best, self.best_path = (state["best"], best) if best is not None else (None, None)

    def _own_record(self, state: dict[str, Any]) -> dict[str, Any]:
        """This callback's state as its own checkpoint of the epoch resumed from holds it, when the resumed file is
        another CheckpointCB's: both save as the epoch ends, and the other, saving first, took this one's state
        before it ranked that epoch (its best may be that epoch's file). Its own file has none if it saved none."""
        own, resumed = self.path / f"epoch_{self._resumed_epoch:04d}.pt", self._resumed_from
        if resumed is None or self.monitor is None or state.get("run") is None or own.resolve() == resumed.resolve() \
                or not own.is_file():
            return state
        try:
            saved = _callback_states(own)
        except Exception:  # noqa: BLE001 -- a file that can't be read: the resumed file's record stands
            return state
        return next((mine for mine in _checkpointcb_states(saved)
                     if all(mine.get(k) == state.get(k) for k in ("run", "path", "monitor", "mode"))), state)

    def before_fit(self, learn: Learner) -> None:
        if getattr(self, "_release", None) is not None:  # (held from a running fit's before_fit to its cleanup)
            raise RuntimeError("this CheckpointCB is writing for a running fit, from whose callbacks this fit runs: "
                               "give the inner fit a CheckpointCB of its own, in another directory")
        if any(cb is not self and isinstance(cb, CheckpointCB) and cb.path.resolve() == self.path.resolve()
               for cb in learn.cbs):  # each would delete the other's files as it keeps its own newest
            raise ValueError(f"two CheckpointCBs write into {self.path}: give each its own directory (one "
                             "CheckpointCB(path, keep=n, monitor=...) keeps the newest n and the best)")
        # (for load_state_dict, which runs after: the best file is looked for beside the resumed one)
        self._resumed_from, self._resumed_epoch = learn.resumed_from, learn.start_epoch
        if "train" not in learn.passes:  # an evaluation saves nothing: the run's best and newest stay as they were
            self._pending = None
            return
        if self.monitor is not None:
            self._metrics = check_monitor(learn, self.monitor, "CheckpointCB", self.order)
        keep_records(self, "best", "best_path", "last_path", "_run")  # (a fit refused at its start puts them back)
        self.best, self.best_path, self.last_path, self._pending, self._written = None, None, None, None, []
        self._setup_at_start = setup_of(learn)  # (what no state_dict holds: settings are what the fit left alone)
        self._replaced, self._superseded, self._release = [], [], None
        self._run = uuid.uuid4().hex  # a new run's (a resumed fit's load_state_dict, which runs after, sets its own)
        self._watch(learn)
        if "train" in learn.passes and learn.n_epochs > learn.start_epoch:
            _check_states(learn)  # on every rank: one refusing alone would leave the others waiting
        if not is_main_process() or "train" not in learn.passes or learn.n_epochs <= learn.start_epoch:
            return  # (a fit that trains no epoch saves nothing, so an earlier run's files are no concern of it)
        try:  # now, not after an epoch of training
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise type(e)(f"CheckpointCB can't make its directory {self.path} ({e.strerror or e}): give it a path "
                          "where a directory can be made") from e
        # held for the fit: a run started into it meanwhile would also find it free and write over this one's epochs
        try:  # (the CLI's --out claim of it lets it in; another CheckpointCB's, of a fit this one runs in, not)
            self._release = claim_dir(self.path, f"CheckpointCB's directory {self.path}", kind="CheckpointCB")
        except OSError as e:  # (its lock file: a read-only directory)
            raise type(e)(f"CheckpointCB can't write in its directory {self.path} ({e.strerror or e}): give it a "
                          "directory it can write in") from e
        self._claimer = learn  # (only that fit's cleanup lets go)
        for stale in self.path.glob(".epoch_*.pt.*.tmp"):
            if _TEMPORARY.match(stale.name):  # (save_checkpoint's own: none of the user's files)
                stale.unlink(missing_ok=True)  # left by a process killed while saving
        existing = list_checkpoints(self.path)
        resumed = learn.resumed_from
        own = resumed is not None and self.path.resolve() in _run_dirs(learn, resumed)
        if own and _holds_the_run(learn, existing):  # this run's own directory
            # moved at this fit's first save: until then a later check may refuse the fit, which must change nothing
            self._superseded = [f for epochs, f in existing if epochs > learn.start_epoch]
        elif existing:
            foreign = [f.name for _, f in existing if not tagged(f, _FORMAT)]
            if foreign:  # (a file of the user's: never resumed from, nor deleted by overwrite=True)
                raise FileExistsError(f"{self.path} holds files named like checkpoints that are no miniai checkpoints "
                                      f"({', '.join(foreign[:3])}{', ...' * (len(foreign) > 3)}; or damaged ones): "
                                      "CheckpointCB would take them for its own. Keep yours apart: move them, or give "
                                      "CheckpointCB another directory")
            if not self.overwrite:  # (a resumed run writing here would mix its files with another run's)
                whose = ("from an earlier run (each fit starts a run of its own, also this learner's next)"
                         if resumed is None else f"of another run than the one resumed ({resumed})")
                i = own_place(learn, self)  # (another CheckpointCB passed to the fit would run beside this one)
                over = ("pass CheckpointCB(..., overwrite=True) (deletes them) or another path" if i is None else
                        f"this CheckpointCB is the learner's own: learn.rm_cb(learn.cbs[{i}]).add_cb(CheckpointCB("
                        f"'<another directory>')) keeps them, learn.cbs[{i}].overwrite = True deletes them")
                raise FileExistsError(
                    f"{self.path} already holds checkpoints ({', '.join(f.name for _, f in existing[-3:])}) {whose}. "
                    f"To continue that run: learn.fit(n_epochs, resume={str(self.path)!r}). To start a new one, "
                    f"{over}.")
            self._replaced = [f for _, f in existing]  # deleted once this run has written a checkpoint

    def cleanup_fit(self, learn: Learner) -> None:
        restore_if_refused(self, learn)
        # (a CheckpointCB pickled by an older miniai has no _release; a fit refused above claimed nothing)
        if getattr(self, "_release", None) is not None and getattr(self, "_claimer", None) is learn:
            self._release()
            self._release = self._claimer = None

    def cleanup_epoch(self, learn: Learner) -> None:
        # Saved as its last pass's cleanups end (once every epoch scheduler has stepped, before the next epoch's
        # callbacks draw from the RNGs and before SWACB swaps in the average at after_fit). A pass that ran out,
        # or that a callback cut with CancelEpochException, is done (the schedulers count it too: the resumed run
        # cuts it the same way); a training pass a CancelFitException or an error stopped part way is not; after a
        # done training pass, a validation pass saves unless an error (or Ctrl-C) broke it off, or a
        # CancelFitException ended it before every callback counting the epoch (MetricsCB's row, a plateau's step,
        # EarlyStoppingCB's count) had counted it: saved, that epoch would resume without its validation ever
        # counted; unsaved, a resume runs it again, as the run never stopped did.
        stopped = learn.stopped_by
        if learn.training:
            self._train_cut = stopped is not None  # (a train_* monitor reads whether its pass logged)
            if stopped is None or isinstance(stopped, CancelEpochException) or "valid" not in learn.passes and \
                    isinstance(stopped, CancelFitException) and self._counted(learn, stopped):
                self._pending = learn.epoch + 1
            if "valid" in learn.passes:
                return
        elif stopped is not None and not isinstance(stopped, CancelEpochException) \
                and not (isinstance(stopped, CancelFitException) and self._counted(learn, stopped)):
            self._pending = None
            return
        if self._pending is not None:
            self._save(learn)

    def _counted(self, learn: Learner, cancel: CancelFitException) -> bool:
        """Whether `cancel` ended the epoch's last pass in its after_epoch once every callback before this one had
        run its after_epoch there (MetricsCB's row, a plateau's step, a logger's row, EarlyStoppingCB's count): the
        raiser's own, and those ordered before it."""
        if getattr(cancel, "event", None) != "after_epoch":
            return False  # broken off part way through the pass
        owners = [getattr(h, "__self__", None) for h in learn._handlers["after_epoch"]]
        raiser = getattr(cancel, "raised_by", None)
        ran = owners[:next((i for i, o in enumerate(owners) if o is raiser), -1) + 1]
        return all(any(o is r for r in ran) for o in owners if o is not self and getattr(o, "order", 0) < self.order)

    def _save(self, learn: Learner) -> None:
        done, self._pending = self._pending, None
        # the fit's last epoch is saved whatever `every` says: the planned last, or one after which a callback
        # (EarlyStoppingCB, order 70, before this one) has asked the fit to stop
        # and so is an epoch that improves the monitored value: the best file holds the best epoch's weights
        value = self._monitored(learn, done) if self.monitor is not None else None
        better = value is not None and improves(value, self.best, self.mode)
        if done % self.every and done != learn.n_epochs and not learn.stop_requested and not better:
            return
        self._check_finite(learn, done)
        file = self.path / f"epoch_{done:04d}.pt"
        kept = self.best, self.best_path  # (put back if the file can't be written)
        if better:  # (before the state is taken: the checkpoint names itself the best)
            self.best, self.best_path = value, file
        self._warn_unsaved(learn)
        # ranks may draw differently (own seeds, a layer's generator seeded by rank): every rank's draws are saved;
        # rank 0's file is the one written, also for a path of each rank's
        gathered = all_gather((rng_state(), generator_states(learn), str(file))) if is_dist() else None
        rng_ranks = [(rng, gens) for rng, gens, _ in gathered] if gathered else None
        if is_main_process():
            if self._superseded:
                self._set_aside(learn.start_epoch)
            try:
                save_checkpoint(checkpoint_state(learn, done, rng_ranks, self._setup_at_start), file)
            except BaseException as e:  # a full disk, say, or Ctrl-C: the half-written file is gone, nothing pruned
                self.best, self.best_path = kept
                if not isinstance(e, Exception):  # (Ctrl-C: fit's own note says how to continue)
                    raise
                add_note(e, f"(CheckpointCB could not write {file}; nothing was removed. "
                            + (f"The newest checkpoint of this run is {learn.last_checkpoint}; once the cause is "
                               "mended (room on the disk, a writable folder), continue the run with "
                               f"{resume_call(learn, learn.last_checkpoint)}.)"
                               if learn.last_checkpoint is not None else "No checkpoint of this run was written.)"))
                raise
            for old in self._replaced:  # the earlier run's, now that this one has a checkpoint of its own; not
                if old not in (file, self.best_path):  # the best a resumed state names: this run's own (kept)
                    old.unlink(missing_ok=True)
            self._written = [f for f in self._written if f != file] + [file]
            if self.keep is not None:
                for old in self._written[:-self.keep]:
                    if old != self.best_path:
                        old.unlink(missing_ok=True)
                        self._written.remove(old)
        # every rank knows the file (a NaN or Ctrl-C note on any of them names it), and none goes on before it
        # exists: a script resuming right after the fit must not find an older newest checkpoint on another rank
        file = Path(gathered[0][2]) if gathered else file
        if better:  # (rank 0's file, the one written: a rank's own path names none)
            self.best_path = file
        self.last_path, self._replaced = file, []
        learn.last_checkpoint = file
        barrier()

    def _set_aside(self, resumed_epoch: int) -> None:
        """Move the checkpoints of a run that went on from the one resumed into `superseded_<k>/`, with a warning."""
        later, self._superseded = self._superseded, []
        aside = next(self.path / f"superseded_{k}" for k in range(1, 10**6)
                     if not (self.path / f"superseded_{k}").exists())
        aside.mkdir()
        for f in later:
            f.rename(aside / f.name)
        # (the file resumed from, given by its path, may be one of them: a renamed file, its name a later epoch's)
        own = [f for f in later if self._resumed_from is not None and f.resolve() == self._resumed_from.resolve()]
        names = ", ".join(f.name for f in later if f not in own) + "".join(
            f"; and {f.name}, the file resumed from, which holds epoch {resumed_epoch}" for f in own)
        warn(f"resumed from epoch {resumed_epoch}: {self.path} held checkpoints of later epochs from a run "
             f"that went on from there ({names}); they were moved to {aside} rather than overwritten")

    def _monitored(self, learn: Learner, done: int) -> float | None:
        """This epoch's value of the monitored metric; None when a cancel cut short the pass that logs it (an older
        epoch's value must not rank this file)."""
        split = "train" if self.monitor.startswith("train_") else "valid"
        metrics = self._metrics  # (the MetricsCB that logs it: check_monitor's)
        logged = metrics is not None and self.monitor in metrics.last and any(
            row.get("epoch") == learn.epoch and row.get("train") == split for row in metrics.history[-2:])
        if logged:
            return metrics.last[self.monitor]
        cut = self._train_cut if split == "train" else learn.stopped_by is not None  # the pass that logs it
        if not cut:  # it ran to its end and logged no such value
            raise ValueError(f"CheckpointCB monitor {self.monitor!r} has no value after epoch {done} (a validation "
                             "metric in a fit without validation?); logged: "
                             f"{list(metrics.last) if metrics is not None else []}")
        if "unranked" not in self._warned:
            self._warned.add("unranked")
            which = "training" if split == "train" else "validation"
            warn(f"CheckpointCB: the {which} pass of epoch {done - 1} was cut short before it logged "
                 f"{self.monitor!r}, so it is not ranked for the best checkpoint (nor will any such "
                 "epoch be)")
        return None

    def _check_finite(self, learn: Learner, done: int) -> None:
        """Refuse to save non-finite weights or after a non-finite validation loss: resume would pick them."""
        model = unwrap(learn.model)
        bad = nonfinite_weight(model)  # (what training changes, as the NaN guard checks: not an inf mask)
        metrics = getattr(learn, "metrics", None)
        loss = metrics.last.get("valid_loss") if metrics is not None else None
        if bad is None and (loss is None or math.isfinite(loss)):
            return
        good = learn.last_checkpoint
        if bad is None:  # finite weights: the validation data, or weights trained too far (huge, yet finite)
            largest = max((float(p.detach().abs().max()) for p in model.parameters() if p.numel()), default=0.0)
            raise NonFiniteLossError(
                f"after epoch {done} the validation loss is {loss}, and the weights are finite (the largest "
                f"{largest:.3g}): either the validation data or the loss made it (look for non-finite values in "
                "dls.valid's inputs and targets, or a loss that divides by zero: a batch whose targets are all "
                "ignore_index), or training pushed the weights too far (then a lower lr or GradClipCB helps). No "
                "checkpoint was written for it" + (f"; the last good one is {good}." if good is not None else
                                                   ", nor for an earlier epoch of this run."))
        subject, cause = nonfinite_cause(model, bad)
        raise NonFiniteLossError(
            f"after epoch {done} {subject}, so no checkpoint was written for it" + (f": {cause}." if cause else ".")
            + (f" The last good checkpoint is {good}: {lower_lr_advice(learn, good)}" if good is not None
               else " No checkpoint of this run was written before it.")
            + " Try a lower lr (learn.lr_find()) or gradient clipping (GradClipCB).")

    # --- what a checkpoint can't bring back: say so ------------------------------------------------------------
    def _watch(self, learn: Learner) -> None:
        """Refuse, warn of or watch what a checkpoint of this fit could not save."""
        for cb in learn.cbs:  # built by now (order 20): saving it would fail only after the first epoch's training
            scheduler = getattr(cb, "scheduler", None) if isinstance(cb, BaseSchedCB) else None
            if scheduler is not None and not has_state(scheduler):
                raise TypeError(f"CheckpointCB saves every scheduler's state_dict() to resume it, and this "
                                f"{type(scheduler).__name__} has no state_dict/load_state_dict: give it both (torch's "
                                "LRScheduler has them; subclass it), or train without CheckpointCB")
        self._watched, self._warned = {}, set()
        for name in ("train", "valid"):
            dl = getattr(learn.dls, name, None)
            if keeps_workers(dl):
                warn(f"dls.{name} keeps persistent workers, whose random state a checkpoint can't save: a "
                     "resumed run's random transforms in the workers will differ from the run never stopped, and "
                     "so will everything drawn after (torch seeds such workers from the global RNG once, at the "
                     "first pass: a resumed run draws it again). persistent_workers=False resumes exactly")
        own = [cb for cb in learn.cbs if not type(cb).__module__.startswith("miniai.")]
        for cb in own:
            if not callable(getattr(cb, "state_dict", None)):
                self._watched[type(cb).__name__] = (cb, _fingerprints(cb, _model_tensors(learn)))
            if cb.order > self.order and callable(getattr(cb, "cleanup_epoch", None)):  # (saved at this one's)
                warn(f"{type(cb).__name__} (order {cb.order}) has a cleanup_epoch, which runs after CheckpointCB "
                     f"(order {self.order}) has saved the epoch: what it changes there, or draws from a random "
                     "generator, is not in the checkpoint, and a resumed run would differ from the run never stopped. "
                     f"Do that work at after_epoch (which runs before any cleanup_epoch), or give the callback an "
                     f"order below {self.order}")

    def _warn_unsaved(self, learn: Learner) -> None:
        for cls, (cb, before) in self._watched.items():
            now = _fingerprints(cb, _model_tensors(learn))
            changed = [k for k, v in now.items() if before.get(k, v) != v or k not in before]
            new = [f"{cls}.{k}" for k in changed if f"{cls}.{k}" not in self._warned]
            if new:
                self._warned.update(new)
                warn(f"{', '.join(new)} changed during the fit, but {cls} has no state_dict(), so the "
                     "checkpoint can't save it and a resumed run starts it afresh: give the callback "
                     "state_dict()/load_state_dict() to resume exactly")


def _check_states(learn: Learner) -> None:
    """Save the state of each scheduler and callback of the user's own once, now (they hold the user's objects: an
    lr_lambda): one that can't be saved would fail only after the first epoch's training; warn of one the safe
    loader would refuse on resume. (miniai's others hold known types, some big: SWACB's averaged model.)"""
    for key, cb in stateful_callbacks(learn).items():
        sched = isinstance(cb, BaseSchedCB)
        if not sched and type(cb).__module__.startswith("miniai.") or sched and cb.scheduler is None:
            continue
        buffer = io.BytesIO()
        try:
            # tensors' bytes always save, and a big state (an average of the weights) would cost its size twice
            state = map_tensors(cb.state_dict(), lambda t: t.detach().new_empty(0)
                                if t.layout == torch.strided and not t.is_nested else t)  # (sparse ones as they are)
        except Exception as e:  # noqa: BLE001 -- a scheduler's is built by now: its copy failed, as saving would
            if not sched:  # may not be ready yet (its own before_fit comes later): left to the first save
                continue
            error: Exception | None = e
        else:
            try:
                torch.save(state, buffer)
                error = None
            except Exception as e:  # noqa: BLE001 -- pickle's errors vary (AttributeError, TypeError, PicklingError)
                error = e
        if error is not None:
            held = f" ({type(cb.scheduler).__name__}.state_dict())" if sched else ""
            raise TypeError(
                f"CheckpointCB can't save {key}'s state{held}: {type(error).__name__}: {error}. Every checkpoint of "
                "this fit would fail. Keep what the state holds picklable (a LambdaLR keeps the attributes of an "
                "lr_lambda object: use a function defined at module level, not a lambda or a local function, or an "
                "object holding plain values), or train without CheckpointCB") from error
        try:
            buffer.seek(0)
            torch.load(buffer, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- only the safe loader's refusals are news here
            buffer.seek(0)
            refused = refused_types(e, buffer)
            if refused:
                warn(f"CheckpointCB: {key}'s state can be saved, but a resume will be refused: "
                     f"{safe_loader_advice(refused)}")


def _model_tensors(learn: Learner) -> set[int]:
    """The identities of the model's parameters and buffers, which the checkpoint saves."""
    model = unwrap(learn.model)
    return {id(t) for t in (*model.parameters(), *model.buffers())} if isinstance(model, nn.Module) else set()


def _fingerprints(cb: Callback, model: set[int]) -> dict[str, Any]:
    """A cheap summary of each attribute (private ones too), that changes when the attribute does; of a module,
    the tensors that are not the `model`'s (`_model_tensors`: the checkpoint saves those)."""
    return {k: _summary(v, model) for k, v in vars(cb).items()}


def _summary(value: Any, model: set[int], depth: int = 2) -> Any:
    """Plain values as they are; a tensor's identity and in-place version, and a module's of its weights and
    buffers, those that are not the `model`'s (an EMA's copy of the model; not a wrapper or body of the model); a
    NumPy array's identity and checksum; the items of small containers and the fields of a SimpleNamespace or
    dataclass (so an in-place `d['n'] += 1` shows), down to `depth` levels; anything else its identity and size."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return id(value), None if id(value) in model else value._version
    if isinstance(value, nn.Module):
        return id(value), tuple(t._version for t in (*value.parameters(), *value.buffers()) if id(t) not in model)
    if isinstance(value, np.ndarray):  # (no version count: its bytes; an array of objects by its identity)
        return id(value), value.shape, None if value.dtype.hasobject else zlib.crc32(np.ascontiguousarray(value))
    if isinstance(value, types.SimpleNamespace):  # (its fields: one level, as a dict's items)
        return id(value), _summary(vars(value), model, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return id(value), _summary({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, model, depth)
    if depth and isinstance(value, (dict, list, tuple)) and len(value) <= 100:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return id(value), tuple((k, _summary(v, model, depth - 1)) for k, v in items)
    return id(value), len_or_none(value)


# ---------------------------------------------------------------- Ctrl-C

def resume_call(learn: Learner, newest: Any) -> str:
    """The call that continues the fitting run from its checkpoint `newest` (fit_one_cycle's own, or fit's)."""
    call = getattr(learn, "_resume_call", None) or f"learn.fit({learn.n_epochs}{{passes}}, resume={{path!r}})"
    return call.format(path=str(newest), passes=pass_args(learn))


def interrupt_note(learn: Learner, temporary: list[Callback] | None = None,
                   error: BaseException | None = None) -> str:
    """What Ctrl-C (`error`) stopped (epoch, pass, batch) and the call that continues the run; `fit` attaches it."""
    if any(type(cb).__name__ == "LRFinderCB" for cb in temporary or []):  # (lr_finder imports this module)
        return "lr_find was interrupted; it puts back everything it changed, so the learner is as it was before."
    epoch = getattr(learn, "epoch", None)
    if epoch is None:
        where = "before the first epoch started"
    else:
        n_batches = len_or_none(learn.dl)
        # raised in the loop over the batches, or after it (the pass's after_epoch or cleanup_epoch)?
        in_loop = error is None or any(f.f_code is Learner._all_batches.__code__ for f in frames(error))
        at = "before its first batch" if learn.iter is None else \
            f"at batch {learn.iter} (from 0) of {'?' if n_batches is None else n_batches}" if in_loop else \
            f"after its last batch ({learn.iter}, from 0, of {'?' if n_batches is None else n_batches})"
        where = f"in epoch {epoch} (from 0), {'training' if learn.training else 'validation'} pass, {at}"
    note = (f"Training interrupted {where}. Every cleanup ran; the learner holds the weights of that moment and "
            "can fit again.")
    newest = getattr(learn, "last_checkpoint", None)
    saving = any(isinstance(cb, CheckpointCB) for cb in learn.cbs)
    if newest is not None:
        note += f" The newest checkpoint of this run is {newest}; continue the run with {resume_call(learn, newest)}"
        own = ("ResumeCB", "BatchSchedCB") if getattr(learn, "_resume_call", None) else ("ResumeCB",)  # re-made
        given = [type(cb).__name__ for cb in temporary or [] if type(cb).__name__ not in own]
        # callbacks given to the interrupted call only: without them the run goes on without (its CheckpointCB, say)
        note += f", giving it the same cbs=[...] as the interrupted call ({', '.join(given)})." if given else "."
    elif saving:  # (saved every `every` epochs and after the last; with a monitor, after the first: its best)
        cb = next(cb for cb in learn.cbs if isinstance(cb, CheckpointCB))
        first = 1 if cb.monitor is not None else min(cb.every, getattr(learn, "n_epochs", None) or cb.every)
        note += (f" No checkpoint was written yet (the first is saved once {counted(first, 'epoch')} "
                 f"{'is' if first == 1 else 'are'} done).")
    else:
        note += " To be able to resume, train with CheckpointCB(path) in the callbacks."
    return note
