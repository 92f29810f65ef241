"""Putting a learner back as it was after a look at it: `kept`, for lr_find (a fit) and prediction passes.

Both run the learner's own loop, which changes the model, the learner's and callbacks' attributes, the loaders and
the RNGs; `kept` snapshots all of it cheaply and restores it on exit, also after an error.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import types
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import warn
from ..data import TensorLoader
from ..learner import Learner
from ..utils import byte_sums, keeps_workers, lazy_tensors, map_tensors, rngs_kept
from .checkpoint import (callback_generators, generator_state, global_numbers, has_state, held_generators,
                         loader_generators, run_generators, set_generator_state)
from .metrics import MetricsCB

__all__ = ["kept"]


def _shallow(obj: Any) -> tuple[dict, list]:
    """A copy of `vars(obj)`, and of the contents of the lists, deques and dicts in it (appended to in place):
    Python's own, not a subclass of one's own (Hooks, whose items are registered hooks, means more than a list)."""
    saved = dict(vars(obj))
    return saved, [(v, dict(v) if isinstance(v, dict) else list(v)) for v in saved.values() if type(v) in _PLAIN]


_PLAIN = (list, dict, collections.deque, collections.OrderedDict, collections.defaultdict, collections.Counter)


def _clone(obj: Any) -> Any:
    """A copy of a metric's state_dict that its in-place updates can't reach: tensors and NumPy arrays copied, lists,
    tuples (named ones too) and dicts rebuilt; anything else, which the state only refers to, kept as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        copied = copy.copy(obj)  # (an OrderedDict, a defaultdict stays one)
        for k, v in obj.items():
            copied[k] = _clone(v)
        return copied
    if type(obj) in (list, tuple):
        return type(obj)(_clone(v) for v in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_clone(v) for v in obj))
    return obj


def _user_state(cb: Any) -> Any:
    """A deep copy of a user's callback's state_dict (whatever it holds: a deque, a module), or None when it has
    none to give yet (one made at its before_fit, before the first fit)."""
    try:  # (detached: deepcopy refuses a tensor that is not a leaf of the graph)
        return copy.deepcopy(map_tensors(cb.state_dict(), torch.Tensor.detach))
    except Exception:  # noqa: BLE001 -- then its attributes, put back as for any callback, are all there is
        return None


def _put_back(obj: Any, state: tuple[dict, list]) -> None:
    saved, contents = state
    obj.__dict__.clear()
    obj.__dict__.update(saved)
    for container, content in contents:
        container.clear()
        if isinstance(container, dict):
            container.update(content)
        else:
            container.extend(content)


_NO_STATE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial, type)


def _held_tensors(cbs: list[Any], loss: Any, losses: list[Any]) -> list[tuple[str, torch.Tensor]]:
    """The tensors `cbs` and the loss hold directly, named: their tensor attributes, and the parameters, buffers
    and tensor attributes of the modules they hold as attributes (an EMA model); a loss's through a partial's
    arguments, its objects (`losses`: `_loss_objects(loss)`) and the module-level tensors it reads too. (Not deeper,
    in lists, dicts or other objects: a callback keeping state there gives it a state_dict.)"""
    found: dict[int, tuple[str, torch.Tensor]] = {}

    def add(name: str, x: Any, module: bool = True) -> None:  # (module: one held directly is looked into)
        if isinstance(x, nn.parameter.UninitializedTensorMixin):
            return  # (a lazy layer's, not made yet: nothing to change)
        if isinstance(x, torch.Tensor):
            found.setdefault(id(x), (name, x))
        elif module and isinstance(x, nn.Module):
            for key, t in [*x.named_parameters(), *x.named_buffers(), *_attributes(x)]:
                add(f"{name}.{key}", t, module=False)

    def holder(name: str, x: Any) -> None:  # a callback or a loss object: what it holds as attributes
        add(name, x)
        if not isinstance(x, (torch.Tensor, nn.Module, Learner, type, *_NO_STATE)):
            for key, v in _attributes(x):
                add(f"{name}.{key}", v)
    for cb in cbs:
        holder(type(cb).__name__, cb)
    name = getattr(getattr(loss, "func", loss), "__name__", type(loss).__name__)  # (a partial's: its function's)
    given = [*loss.args, *loss.keywords.values()] if isinstance(loss, functools.partial) else []
    for part in (*given, *losses):
        holder(f"loss_func {name}", part)
    for key, value in global_numbers(getattr(loss, "func", loss)).items():  # (a module-level tensor it reads)
        add(f"loss_func {name}: {key}", value)
    return list(found.values())


def _attributes(x: Any) -> list[tuple[str, Any]]:
    """`vars(x)`'s items, or none (an object with __slots__, or whose __getattr__ raises)."""
    try:
        return list(vars(x).items())
    except Exception:  # noqa: BLE001 -- no __dict__ to read: not watched
        return []


def _fingerprint(t: torch.Tensor) -> int | None:
    """A checksum of a tensor's bytes (its shape and dtype too), or None for one whose bytes can't be read."""
    if t.layout != torch.strided or t.is_nested:
        return None  # (sparse: byte_sums reads no bytes of it; watched by its version alone)
    try:
        return hash((t.shape, t.dtype, byte_sums([t])[1]))
    except Exception:  # noqa: BLE001 -- sparse, quantized, ...: watched by its version alone
        return None


def _storage(t: torch.Tensor) -> int | None:
    """Where a tensor's data lives (its storage's address), or None for one without a plain storage (sparse)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _loss_objects(loss: Any) -> list[Any]:
    """The objects a loss may keep state in: itself, a partial's function, a bound method's object, or what a
    function's closure holds (a lambda around a loss module, a tensor)."""
    loss = getattr(loss, "func", loss)  # (a partial's function)
    loss = getattr(loss, "__self__", loss) if isinstance(loss, types.MethodType) else loss
    if not isinstance(loss, types.FunctionType):
        return [loss]
    held = []
    for cell in loss.__closure__ or ():
        with contextlib.suppress(ValueError):  # (a cell not filled yet)
            held.append(cell.cell_contents)
    return [x for x in held if isinstance(x, torch.Tensor) or hasattr(x, "__dict__") and not isinstance(x, _NO_STATE)]


@contextlib.contextmanager
def kept(learn: Learner, loaders: Iterable[Any] = (), weights: bool = False,
         tfms: Iterable[Any] = ()) -> Iterator[None]:
    """On exit, also after an error, put back everything a prediction pass (or, `weights=True`, a fit) may change.

    That is: the model's parameter and buffer objects, where their data lives (DeviceCB may move it), gradients
    and train/eval modes (a loss module's too); the attributes of the learner and of each of its callbacks (what
    they recorded too), of a loss that is an object, of the in-memory loaders (`TensorLoader`: epoch counter, data
    moved by DeviceCB) in `learn.dls` and `loaders` and of the samplers of the others; the generators of torch
    DataLoaders, the callbacks' GradScalers; and the RNGs (torch's, CUDA's and MPS's, Python's, NumPy's), and the
    generators the transforms `tfms` hold (tta's). Lazy layers a pass
    initializes stay initialized; `weights=True` refuses a model with lazy layers not initialized yet.
    Normalization layers' statistics (which a callback's train mode would change) are copied and put back too;
    other buffers are watched, and one the pass changes in place is warned of; with `weights=True`, so are the
    tensors the user's callbacks without a `state_dict` and the loss hold (`_held_tensors`; by version and
    checksum, not copied: large ones are common). Other values, and the states of
    MetricsCB's metrics and of the user's callbacks that have a `state_dict` (whatever they change in place: the
    attribute copies are one level deep), are copied only with `weights=True` (lr_find trains: eval mode and
    `no_grad` leave the weights alone, and no metric runs), so a prediction pass costs next to nothing here.
    """
    model = learn.model
    lazy = lazy_tensors(model) if weights else []  # (before a first forward)
    if lazy:  # (a prediction pass initializes them, for good: a forward is what they wait for)
        raise ValueError(f"the model has lazy layers not initialized yet ({', '.join(lazy[:3])}): this call would "
                         "initialize them and can't put that back. Initialize them first with one forward pass, "
                         "learn.model(xb) on a batch of dls.train, or one fit.")
    clones: dict[int, torch.Tensor] = {}  # one copy per tensor, however often it is shared
    # normalization statistics always (a callback may put BatchNorm in train mode for the pass); other buffers are
    # watched, not copied (causal masks, tables: a copy per call would cost more than the pass): one the pass
    # changes in place (a quantization observer calibrating) is warned of
    # a loss module's tensors as the model's: one keeping a running mean of past losses (loss balancing) must not
    # start the next fit moved
    losses = _loss_objects(getattr(learn, "loss_func", None))
    in_model = {id(m) for m in model.modules()}
    modules = [*model.modules(), *{id(m): m for loss in losses if isinstance(loss, nn.Module)
                                   for m in loss.modules() if id(m) not in in_model}.values()]
    trained = {id(p): p for m in modules for p in m.parameters(recurse=False)}
    slots = [(m, name, t, t.data, clones.setdefault(id(t), t.detach().clone())
              if weights or isinstance(m, nn.modules.batchnorm._NormBase) else None)
             for m in modules
             for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
             if not isinstance(t, nn.parameter.UninitializedTensorMixin)]
    watched = [(m, name, t, t._version) for m, name, t, _, value in slots if value is None and id(t) not in trained]
    grads = [(p, p.grad if p.grad is None or not weights else p.grad.detach().clone()) for p in trained.values()]
    modes = [(m, m.training) for m in modules]
    dls = getattr(learn, "dls", None)
    all_loaders = [getattr(dls, "train", None), getattr(dls, "valid", None), *loaders]
    # the attributes of: the learner, its callbacks, in-memory loaders, a loss that is an object of the user's (a
    # count of its calls), and the samplers of torch's loaders (one counting its own epochs to seed its order)
    objects = [dl for dl in all_loaders if isinstance(dl, TensorLoader)] + [x for x in losses
                                                                            if not isinstance(x, torch.Tensor)]
    for dl in all_loaders:
        if dl is not None and not isinstance(dl, TensorLoader):
            batches = getattr(dl, "batch_sampler", None)
            objects += [getattr(dl, "sampler", None), batches, getattr(batches, "sampler", None)]
    holders = [learn, *learn.cbs, *{id(obj): obj for obj in objects
                                    if hasattr(obj, "__dict__") and not isinstance(obj, _NO_STATE)}.values()]
    saved = [(obj, _shallow(obj)) for obj in holders]
    # tensors the user's callbacks (those without a state_dict) and the loss hold, which a fit may change in place
    # (a running mean, self.avg.lerp_(...), an EMA model's weights): watched, not copied (by version and checksum),
    # and one whose value moved is warned of (not the model's own, through an alias or a view: put back with it)
    model_data = {_storage(t) for _, _, t, _, _ in slots}
    users = [cb for cb in learn.cbs if not (has_state(cb) or type(cb).__module__.startswith("miniai."))]
    held = _held_tensors(users, getattr(learn, "loss_func", None), losses) if weights else []
    plain = [(name, t, t._version, _fingerprint(t)) for name, t in held
             if not t.is_inference() and _storage(t) not in model_data]
    # a fit's metrics reset and update their counts in place, and a callback of the user's may change tensors or
    # nested containers in place (an average of the weights): copies of the states of those that say what it is
    # (the others keep the finder's counts: see lr_find); miniai's own callbacks are put back by their attributes
    states = [(m, _clone(m.state_dict())) for cb in learn.cbs if weights and isinstance(cb, MetricsCB)
              for m in cb.metrics.values() if has_state(m)]  # (miniai's and torcheval's)
    states += [(cb, state) for cb in learn.cbs if weights and has_state(cb)
               and not type(cb).state_dict.__module__.startswith("miniai.")
               for state in [_user_state(cb)] if state is not None]
    generators = [(g, generator_state(g)) for dl in all_loaders for g in loader_generators(dl)]
    # (the model's and datasets' own after a look at training only: a prediction pass leaves them moved, Monte Carlo
    # sampling by repeated calls)
    held = run_generators(learn) if weights else callback_generators(learn)
    generators += [(g, generator_state(g)) for gens in held.values() for g in gens]
    generators += [(g, generator_state(g)) for tfm in tfms for g in held_generators(tfm)]
    # a GradScaler (MixedPrecisionCB's) changes its scale in place: a diverging lr_find would leave it collapsed
    scalers = [(s, s.state_dict()) for obj in holders for s in vars(obj).values()
               if isinstance(s, torch.amp.GradScaler) and s.is_enabled()]
    # CUDA's generators once CUDA is in use or about to be (a DeviceCB moving the model there: lr_find before any fit)
    to_cuda = any(getattr(getattr(cb, "device", None), "type", None) == "cuda" for cb in learn.cbs)
    # torch seeds a loader's persistent workers once, with a draw from its RNG, when they start: a pass that starts
    # the fit's own loaders' takes that draw from the next fit, which put back RNGs can't undo (lr_find warns of
    # dls.train's itself; a copy of a loader, walked in order, or a loader of the call's own, the fit never walks)
    idle = {name: dl for name in ("train", "valid") for dl in [getattr(dls, name, None)]
            if keeps_workers(dl) and getattr(dl, "_iterator", False) is None and not weights}
    learn._in_fit = False  # the learner's own calls work in here (put back on exit): everything they change is kept
    try:
        with rngs_kept(cuda=to_cuda):
            yield
    finally:
        with torch.no_grad():
            for m, name, t, data, value in slots:
                if getattr(m, name) is not t:  # model.to() replaces buffer objects
                    setattr(m, name, t)
                if (t.device, t.dtype, t.shape, t.data_ptr()) != (data.device, data.dtype, data.shape, data.data_ptr()):
                    t.data = data  # model.to() gives parameters new data: point them back at the old
                # the values the pass changed in place, only (NaN equal to NaN: a NaN running statistic left alone):
                # an unchanged one written back would fail the backward of a fit's batch that called this
                if value is not None and not torch.allclose(t, value, rtol=0, atol=0, equal_nan=True):
                    t.copy_(value)
        changed = [f"{name} of {type(m).__name__}" for m, name, t, version in watched if t._version != version]
        for p, grad in grads:
            p.grad = grad
        for m, mode in modes:
            m.training = mode
        for obj, state in saved:
            _put_back(obj, state)
        for g, state in generators:
            set_generator_state(g, state)
        for scaler, state in scalers:
            scaler.load_state_dict(state)
        refused = []
        for obj, state in states:  # last: a user's metric or callback refusing its own state must not stop the rest
            try:
                obj.load_state_dict(state)
            except Exception as e:
                refused.append(f"{type(obj).__name__} ({type(e).__name__}: {e})")
        # (after the states: a tensor a callback's load_state_dict wrote back, or one written with the same value)
        moved = [name for name, t, version, crc in plain if t._version != version and (
            crc is None or _fingerprint(t) != crc)]
        # the warnings after everything is put back: under -W error they raise
        if refused:
            warn(f"could not put back all the state of {refused[0]}: some may be the finder's")
        if moved:
            warn(f"lr_find changed {moved[0]} in place, and the next fit starts from that unless your code resets "
                 "it: lr_find puts back a callback's state through its state_dict and load_state_dict (give it "
                 "those), and a loss module's through its buffers (self.register_buffer)")
        if changed:
            warn(f"the prediction pass changed the buffer {changed[0]} in place (a running statistic of "
                 "its own, a quantization observer calibrating?): the model is not as it was before the call")
        started = [name for name, dl in idle.items() if dl._iterator is not None]
        if started:
            warn(f"this call started the persistent workers of dls.{started[0]}, and torch seeds them with a draw from "
                 "its random state that the next fit's first pass over that loader would have taken: the random "
                 "draws of the next fit (shuffling, dropout, augmentation) will differ from a fit without this call. "
                 "Build the loader with persistent_workers=False, or make this call after a fit")
