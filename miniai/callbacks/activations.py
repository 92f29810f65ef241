"""Looking inside the model while it trains: forward hooks, and per-layer activation statistics.

`Hook`/`Hooks` work on any model, with or without a Learner; `HooksCallback` registers hooks for one fit and
always removes them (cleanup_fit runs after a cancel or an error too); `ActivationStats` records, per chosen
layer and training batch, the activations' mean, std and a histogram of their absolute values.
"""
from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_count, warn
from ..learner import Callback, CancelBatchException, CancelEpochException, CancelFitException, Learner
from .checkpoint import compile_wrapper
from .records import keep_records, nothing_recorded, restore_if_refused

__all__ = ["Hook", "Hooks", "append_stats", "get_hist", "get_min", "HooksCallback", "ActivationStats"]

_CANCELS = (CancelEpochException, CancelFitException)  # what may end a pass early without an error

# fn(hook, module, inputs, output): the course's hook signature, with the Hook first so fn can keep state on it
HookFn = Callable[["Hook", nn.Module, tuple, Any], None]


HOOK_IDS: set[int] = set()
"""The handle ids of the hooks registered through `Hook` and not yet removed: the fit's, not the model's own (a
pruning mask's or spectral norm's pre-hook), which `export` leaves out of the file."""


class Hook:
    """A forward hook on `module` that calls `fn(hook, module, inputs, output)`; remove it with `remove()` or `with`."""

    def __init__(self, module: nn.Module, fn: HookFn) -> None:
        self.module = module
        self.handle = module.register_forward_hook(partial(fn, self))
        HOOK_IDS.add(self.handle.id)

    def remove(self) -> None:
        """Unregister the hook (safe to call twice); whatever `fn` stored on the hook stays readable."""
        self.handle.remove()
        HOOK_IDS.discard(self.handle.id)

    def __enter__(self) -> Hook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Hooks(list):
    """One `Hook` per module, as a list; a context manager that removes them all on exit.

    `modules` is a sequence of modules, or a model, in which case its direct children are hooked (what iterating
    an `nn.Sequential` gives, as in the course's `Hooks(model, append_stats)`).
    """

    def __init__(self, modules: nn.Module | Iterable[nn.Module], fn: HookFn) -> None:
        if isinstance(modules, nn.Module):
            modules = modules.children()
        super().__init__()
        for i, m in enumerate(modules):
            try:
                self.append(Hook(m, fn))
            except Exception as e:  # (a ScriptModule): those registered already must not stay on the model
                self.remove()
                raise RuntimeError(f"could not hook modules[{i}] ({type(m).__name__}): {e}. Leave it out (mod_filter, "
                                   "or mods=[...] of the modules to hook)") from e

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # a hook taken out of the list, however, must not stay registered on its module
    def _unregister(self, i: Any) -> None:
        for hook in (self[i] if isinstance(i, slice) else [self[i]]):
            hook.remove()

    def __delitem__(self, i: Any) -> None:
        self._unregister(i)
        super().__delitem__(i)

    def __setitem__(self, i: Any, value: Any) -> None:
        self._unregister(i)
        super().__setitem__(i, value)

    def pop(self, i: Any = -1) -> Hook:
        """Take out hook `i` (the last by default), unregistered."""
        hook = super().pop(i)
        hook.remove()
        return hook

    def remove(self, hook: Hook | None = None) -> None:  # type: ignore[override]
        """Unregister every hook (the Hook objects, and what they stored, stay in the list); with `hook`, take
        that one out of the list, unregistered, as `list.remove` does."""
        if hook is not None:
            super().remove(hook)
            hook.remove()
            return
        for h in self:
            h.remove()

    def clear(self) -> None:
        """Unregister every hook and empty the list."""
        self.remove()
        super().clear()


def append_stats(hook: Hook, module: nn.Module, inputs: tuple, output: Any,
                 bins: int = 40, range: tuple[float, float] = (0.0, 10.0)) -> None:
    """Record the output's mean, std and `histc` of |output| (`bins` bins over `range`) in `hook.stats`.

    `hook.stats` is the course's `([means], [stds], [hists])`, one entry per recorded batch, every entry a tensor
    on the model's device. Nothing here waits for the GPU (no `.item()`, no `.cpu()`): stack and move them when
    you read them (`ActivationStats.stats` does, once). Values of |output| outside `range` are not counted.

    The entries are views of one buffer per hook (`hook.record`, a row per batch: mean, std, histogram), grown by
    doubling: three small tensors of their own kept per batch would sit between the large temporaries in the heap
    and make the allocator take fresh pages for those every batch (thousands of page faults a batch on the CPU).
    """
    if not isinstance(output, Tensor):
        raise TypeError(f"append_stats needs a module whose output is a tensor; {type(module).__name__} returned "
                        f"{type(output).__name__}. Choose other modules (mod_filter) or write your own hook fn.")
    flat = output.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):  # half and bfloat16 outputs are summarized in float32,
        flat = flat.float()  # float64 ones in float64 (a spread far from 0 that float32's spacing would round away)
    mean = flat.mean()
    std = _std(flat, mean)
    if flat.dtype == torch.float64:
        mean, std = mean.float(), std.float()  # (the record is float32)
    record, n = getattr(hook, "record", None), getattr(hook, "n_recorded", 0)
    if record is None or n == len(record) or record.device != flat.device or record.shape[1] != bins + 2:
        grown = torch.empty(max(64, 2 * n), bins + 2, device=flat.device)
        if record is not None and n:
            grown[:n] = record[:n]
        record = hook.record = grown
    torch.cat([mean.view(1), std.view(1), _abs_histc(flat, bins, *range)], out=record[n])
    hook.n_recorded = n + 1
    if n == 0 or not hasattr(hook, "stats"):
        hook.stats, hook.sizes = ([], [], []), []
    hook.sizes.append(flat.numel())  # the share of dead units is of all of them, not of those inside the range
    for entries, view in zip(hook.stats, (record[n, 0], record[n, 1], record[n, 2:])):
        entries.append(view)


def _shift(module: nn.Module) -> float | None:
    """How far down a module shifts its output, its `sub` (GeneralRelu's), when that is a number above 0; a block
    (nn.Sequential) by its last layer's, whose output is the block's (get_model's conv blocks end in their act)."""
    while isinstance(module, nn.Sequential) and len(module) and getattr(module, "sub", None) is None:
        module = module[-1]
    sub = getattr(module, "sub", None)
    if not isinstance(sub, numbers.Real) and callable(getattr(sub, "item", None)):  # a tensor's, a NumPy array's
        try:
            sub = sub.item()
        except (ValueError, RuntimeError):  # (of more than one value: not a shift this warning can name)
            return None
    return float(sub) if isinstance(sub, numbers.Real) and not isinstance(sub, bool) and sub > 0 else None


def _std(flat: Tensor, mean: Tensor) -> Tensor:
    """`flat.std()` (NaN for fewer than two values), from its `mean`, on `flat`'s device without waiting for it.

    On the CPU: the deviations' dot product with themselves (a vectorized BLAS sum of squares in float32, a relative
    error near 1e-5 over millions of values, plenty for a plot), far faster than std's one-pass Welford loop, which
    is not vectorized. Its squares overflow float32 for deviations past 1e19 in all and underflow below 1e-19, just
    where a layer explodes or dies: reading the sum costs nothing on the CPU, so one outside (1e-30, 1e37) is done
    again with the deviations scaled by their largest first, as it is on a GPU (where reading it would wait)."""
    n = flat.numel()
    if n < 2:
        return torch.full((), math.nan, device=flat.device)
    dev = flat - mean
    if flat.device.type == "cpu":
        squares = torch.dot(dev, dev)
        if 1e-30 < float(squares) < 1e37 or not dev.any():  # (all equal: 0, exactly)
            return squares.div_(n - 1).sqrt_()
    scale = dev.abs().amax().clamp_(min=torch.finfo(dev.dtype).tiny)  # (all equal: dev / tiny is 0, still)
    return torch.linalg.vector_norm(dev.div_(scale)).mul_(scale).div_(math.sqrt(n - 1))


def get_hist(hook: Hook) -> Tensor:
    """log(1 + count) of |activations| per histogram bin (rows) and recorded batch (columns), on the CPU: the
    course's "colorful dimension" image of one layer (`show_image(get_hist(h), origin='lower')`)."""
    return torch.stack(hook.stats[2]).t().float().cpu().log1p()


def get_min(hook: Hook) -> Tensor:
    """Per recorded batch, the share of the |activations| in the lowest bin (near zero), on the CPU: of all of them
    when `append_stats` recorded them (the course divided by those inside the histogram's range)."""
    counts = torch.stack(hook.stats[2]).t().float().cpu()
    sizes = getattr(hook, "sizes", None)
    return counts[0] / (torch.tensor(sizes, dtype=torch.float32) if sizes is not None else counts.sum(0))


def _abs_histc(flat: Tensor, bins: int, low: float, high: float) -> Tensor:
    """`torch.histc(flat.abs(), bins, low, high)`; on the CPU, when every |x| lies in [0, high] (the usual case), a
    bincount of bin indices, faster than histc (a serial loop per element); else histc itself.

    The indices are histc's own, in its float arithmetic: |x| * bins / high, with high in the input's dtype (a
    range like (0, 0.7) is not exact in float32), truncated; |x| == high counts in the last bin.
    """
    if flat.device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        return torch.histc(flat.abs(), bins, low, high)  # fast on GPUs, where a bincount would also sync
    if flat.device.type != "cpu":  # MPS (whose histc waits for the GPU each call) and deterministic CUDA (refused)
        return _abs_histc_scatter(flat, bins, low, high)
    pos = flat.abs()
    hi = torch.tensor(high, dtype=flat.dtype)
    # reading a CPU max costs no sync; NaN makes it NaN
    if low or not pos.numel() or not float(pos.max()) <= float(hi):  # values to leave out: histc's own rule
        return torch.histc(pos, bins, low, high)
    # divided by a full tensor: torch divides by a scalar as a product with its reciprocal, histc does not
    index = pos.mul_(bins).div_(hi.expand_as(pos)).clamp_(max=bins - 1).to(torch.int32)  # |x| == high: last bin
    return _bincount(index, bins).to(flat.dtype)


def _bincount(index: Tensor, bins: int) -> Tensor:
    """`torch.bincount(index, minlength=bins)` of indices in [0, bins), about twice as fast on a large `index`.

    bincount is a serial loop, a step per value, and the bulk of the histogram's cost: a large input is counted
    in pairs instead, the first half's index with the second half's as one index `a * bins + b`, in half as many
    steps; a pair's count goes to both of its bins (the pair table's row and column sums)."""
    n = index.numel()
    if n < 32768 or bins > 64:  # (small: the extra ops cost what they save; many bins: the pair table is too large)
        return torch.bincount(index, minlength=bins)
    half = n // 2
    pairs = torch.bincount(torch.add(index[half:2 * half], index[:half], alpha=bins), minlength=bins * bins)
    pairs = pairs.view(bins, bins)  # row a, column b: the pairs of a first-half a and a second-half b
    counts = pairs.sum(1).add_(pairs.sum(0))
    if n % 2:  # the last index, in no pair
        counts[index[-1]] += 1
    return counts


def _abs_histc_scatter(flat: Tensor, bins: int, low: float, high: float) -> Tensor:
    """`_abs_histc` without reading anything back to the host: histc's index, then one scatter_add of ones."""
    lo, hi = (torch.tensor(v, dtype=flat.dtype, device=flat.device) for v in (low, high))
    value = flat.abs()
    inside = (value >= lo) & (value <= hi)
    pos = (value - lo).mul_(bins).div_((hi - lo).expand_as(value)).nan_to_num_(0.0).clamp_(0, bins - 1)
    index = torch.where(inside, pos.long(), bins)  # outside [low, high] and NaN: an extra bin, dropped
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=flat.device).scatter_add_(0, index,
                                                                                    torch.ones_like(index))
    return counts[:bins].to(flat.dtype)


def check_hooks_run(model: nn.Module, who: str, hooked: Iterable[nn.Module]) -> None:
    """Refuse hooks on modules whose compiled code would run without them (empty records, no word): inside a
    torch.compile wrapper (the model's, or a part's: torch.compile(body)), or a module compiled in place with
    torch's default of not watching module hooks."""
    dynamo = sys.modules.get("torch._dynamo")  # (imported by any compile; not imported here: a second)
    unwatched = dynamo is not None and dynamo.config.skip_nnmodule_hook_guards
    hooked = {id(m) for m in hooked}
    for name, m in model.named_modules():
        wrapper = compile_wrapper(m)
        # (compiled in place: model.compile(), or its forward compiled, torch.compile(m.forward) or a decorator)
        in_place = (getattr(m, "_compiled_call_impl", None) is not None
                    or hasattr(m.forward, "_torchdynamo_orig_callable"))
        if not (wrapper or unwatched and in_place):
            continue
        if not any(id(inner) in hooked for inner in (m._orig_mod.modules() if wrapper else m.modules())):
            continue  # (the hooks are on layers outside it, or on the wrapper itself, which runs them)
        part = "learn.model" if m is model else f"its part {name!r}"
        if not wrapper:
            how = "compile with learn.compile(), or set torch._dynamo.config.skip_nnmodule_hook_guards = False first"
        elif m is model:
            how = "give the learner the model uncompiled (model._orig_mod), and compile it with learn.compile()"
        else:
            how = "build the model with that part uncompiled (part._orig_mod), and compile it with learn.compile()"
        kind = "a torch.compile wrapper" if wrapper else "compiled in place"
        raise RuntimeError(f"{who}: the compiled code of {part} ({kind}) would not run hooks added after it was "
                           f"traced: the records would be empty, without a word. To record, {how} (which makes a "
                           "change of hooks recompile)")


def every_module(module: nn.Module) -> bool:
    """The default `mod_filter`: every module (a function, not a lambda, so a learner holding it pickles)."""
    return True


class HooksCallback(Callback):
    """Registers `hookfunc` as a forward hook on chosen modules for one fit; the hooks are always removed.

    The modules are `mods` if given, else every module of `learn.model` (model included, in `modules()` order)
    for which `mod_filter(module)` is true, chosen at before_fit. `hookfunc(hook, module, inputs, output)` is
    called for training batches when `on_train` and validation batches when `on_valid`, in every pass's batches
    0, `every`, 2 × `every`, ... (counted from 0 in each pass: fewer records, less cost; a batch a callback
    cancels after its forward, `CancelBatchException` at after_loss, is recorded: its activations were computed,
    though RecorderCB and the loss curves leave it out). The hooks are removed in
    cleanup_fit, which runs after a normal end, a cancel or an error. After the fit, `hooks` keeps the Hook
    objects (and whatever `hookfunc` stored on them); the next fit with a pass it records registers fresh ones (one
    without, `fit(train=False)` for training records or `valid=False` for validation ones, leaves them: they are
    of the weights before it), and a resumed fit records from its epoch on (a checkpoint holds no hook records).
    """

    def __init__(self, hookfunc: HookFn, mod_filter: Callable[[nn.Module], bool] = every_module,
                 on_train: bool = True, on_valid: bool = False, mods: Sequence[nn.Module] | None = None,
                 every: int = 1) -> None:
        if isinstance(mod_filter, type):  # called on a module, a class would build an object, always truthy
            raise TypeError(f"mod_filter is a function of a module, true for those to hook; got the class "
                            f"{mod_filter.__name__}: pass lambda m: isinstance(m, {mod_filter.__name__}) (or "
                            f"fastcore's risinstance({mod_filter.__name__}))")
        check_count("every", every, what=" (the step between recorded batches; 1: every batch)")
        if not (on_train or on_valid):
            raise ValueError(f"{type(self).__name__}(on_train=False, on_valid=False) records nothing: set on_train "
                             "(training batches) or on_valid (validation batches)")
        self.hookfunc, self.mod_filter, self.every = hookfunc, mod_filter, every
        self.mods = None if mods is None else list(mods)  # a generator would serve only the first fit
        self.on_train, self.on_valid = on_train, on_valid
        self.hooks = Hooks([], self._hookfunc)
        self._active = False  # whether this pass records (on_train / on_valid)
        self._ended: int | None = None  # the index of the pass's last batch that ended (its cleanup_batch ran)
        self._training = True  # the mode of this pass: a forward in the other mode is not of the pass
        self._model: nn.Module | None = None  # the fit's model, whose mode tells a pass's forwards apart
        self._learn: Learner | None = None  # the fit's learner: is a prediction pass running?
        self.other_mode_calls = 0  # this pass's forwards of hooked modules made in the other mode, left alone
        self._fitted = False  # whether it has been in a fit (a plot with no records says why)

    def before_fit(self, learn: Learner) -> None:
        self.hooks.remove()  # never two sets of hooks on a model, whatever happened before
        self._fitted = True
        if "train" in learn.passes:
            records = self.on_train or self.on_valid and "valid" in learn.passes
        else:  # an evaluation, fit(train=False): the last training fit's records stay, unless only validation is
            records = self.on_valid and not self.on_train  # recorded (what such a callback is for)
        if not records:
            return
        mods = list(self.mods) if self.mods is not None else [m for m in learn.model.modules() if self.mod_filter(m)]
        ours = {id(m) for m in learn.model.modules()}
        stray = next((i for i, m in enumerate(mods) if id(m) not in ours), None)
        if stray is not None:  # hooked, never called: no stats, and no word of why
            raise ValueError(f"{type(self).__name__}: mods[{stray}] ({type(mods[stray]).__name__}) is not a module of "
                             "learn.model (of another model, or of one since replaced?): pass modules of learn.model, "
                             "or a mod_filter")
        if not mods:
            raise ValueError(f"{type(self).__name__}: mod_filter matched no module of {type(learn.model).__name__}; "
                             "check the filter (e.g. fastcore's risinstance(nn.ReLU)) or pass mods=[...].")
        check_hooks_run(learn.model, type(self).__name__, mods)
        keep_records(self, "hooks")  # (removed, they keep their stats: a fit refused before its first batch puts
        self.hooks = Hooks(mods, self._hookfunc)  # them back)
        self._model, self._learn = learn.model, learn

    def before_epoch(self, learn: Learner) -> None:
        self._active = self.on_train if learn.training else self.on_valid
        self._training = learn.training
        self.other_mode_calls, self._ended = 0, None
        for hook in self.hooks:  # the batch each last ran in, and its runs in a batch it had run in already
            hook.iter, hook.repeats = None, 0

    def cleanup_batch(self, learn: Learner) -> None:
        self._ended = learn.iter  # forwards from here to the next batch (a callback's at after_epoch) are not its

    def cleanup_epoch(self, learn: Learner) -> None:
        self._active = False  # forward passes outside a pass (e.g. in after_fit) are not recorded

    def cleanup_fit(self, learn: Learner) -> None:
        self.hooks.remove()
        self._model = self._learn = None
        restore_if_refused(self, learn)

    def _hookfunc(self, hook: Hook, module: nn.Module, inputs: tuple, output: Any) -> None:
        # not a forward of a prediction pass a callback runs during the fit (get_preds, summary), nor one outside
        # the pass's batches (a callback's at before_epoch or after_epoch), nor one in the other mode; the model's
        # mode, not the module's: a frozen layer kept in eval mode is still recorded
        learn = self._learn
        if self._in_recorded_batch(learn):
            if self._model.training == self._training:
                if getattr(hook, "iter", None) == learn.iter:  # run again in this batch: shared, recomputed in
                    hook.repeats = getattr(hook, "repeats", 0) + 1  # backward, or a callback's second forward
                hook.iter = learn.iter
                self.hookfunc(hook, module, inputs, output)
            else:
                self.other_mode_calls += 1  # (ActivationStats says so when that was all the pass had)

    def _in_recorded_batch(self, learn: Learner) -> bool:
        return (self._active and not learn._predicting and learn.iter is not None and learn.iter != self._ended
                and learn.iter % self.every == 0)

    def __iter__(self) -> Any:
        if not self._fitted:  # (fastcore's L(astats) of one callback iterates it: an empty list, the callback lost)
            raise TypeError(f"{type(self).__name__} has no hooks before its first fit (they are made at its start): "
                            "iterate it after a fit; to pass it alone where a list of callbacks goes, put it in one, "
                            "[astats] (fastcore's L(astats) iterates it)")
        return iter(self.hooks)

    def __len__(self) -> int:
        """How many hooks this fit registered (the course's `len(astats)`, for one plot per layer)."""
        return len(self.hooks)

    def __bool__(self) -> bool:
        # always true: with __len__, a callback with no hooks yet (before its first fit) would be falsy
        return True


class ActivationStats(HooksCallback):
    """Per chosen layer and training batch (validation batches too with `on_valid`): mean, std and histogram of
    |activations| (`bins` over `range`). `stats` holds every record in the order run, `stats_of(split)` one pass's.

    `every=k` records batches 0, k, 2k, ... of each pass only: on the CPU the histogram costs about as much as
    a layer's forward (bs 64: ~1.25-1.35× the epoch with every batch recorded); `every=4` costs a quarter of that.

    Statistics stay on the training device during the fit (no host sync per batch) and are moved to the CPU
    once, when first read after new batches (`stats`). Plots: `color_dim()` (log-histogram image per layer over
    batches, the "colorful dimension"), `dead_chart()` (share of activations in the lowest bin, i.e. near zero),
    `plot_stats()` (means and stds per layer). Each returns its Figure.

    A hooked layer runs once in every recorded batch, or in none (one used twice in a batch, skipped in some, or
    run in some passes only is refused at that batch's end: one record per batch, drawn at its batch's place, is
    what the plots show).
    """

    def __init__(self, mod_filter: Callable[[nn.Module], bool] = every_module, bins: int = 40,
                 range: tuple[float, float] = (0.0, 10.0), on_train: bool = True, on_valid: bool = False,
                 mods: Sequence[nn.Module] | None = None, every: int = 1) -> None:
        if bins < 1 or not range[0] < range[1] or not all(math.isfinite(v) for v in range):
            raise ValueError(f"need bins >= 1 and a finite range=(low, high) with low < high; got bins={bins}, "
                             f"range={range}")
        self.bins, self.range = bins, (float(range[0]), float(range[1]))
        super().__init__(partial(append_stats, bins=bins, range=self.range), mod_filter, on_train, on_valid, mods,
                         every)
        self._cache: tuple[Hooks, tuple[int, ...], list[tuple[Tensor, Tensor, Tensor]]] | None = None
        self._recorded_before: list[int] = []
        self._ran: list[bool] | None = None  # which hooked layers ran in the fit's first batch that recorded any
        self._predicted: int | None = None  # the last recorded batch whose predict step ran (after_predict)

    def before_fit(self, learn: Learner) -> None:
        super().before_fit(learn)
        self._ran = self._predicted = None
        self._recorded_before = [getattr(h, "n_recorded", 0) for h in self.hooks]

    def after_predict(self, learn: Learner) -> None:
        # the forward ran, even where a hooked layer alone did not (cleanup_batch checks the hooked model's only)
        if self._in_recorded_batch(learn) and learn.model.training == self._training:
            self._predicted = learn.iter

    def before_epoch(self, learn: Learner) -> None:
        super().before_epoch(learn)
        self._recorded_before = [getattr(h, "n_recorded", 0) for h in self.hooks]
        self._predicted = None  # (a batch index of the last pass is not this one's)

    def cleanup_batch(self, learn: Learner) -> None:
        stopped = learn.stopped_by  # (after an error, no check: that error is the one to see)
        # (not a pass of another model: SWACB's of its average, in after_fit, whose layers are not hooked)
        if self._active and learn.model is self._model and (stopped is None or isinstance(stopped, _CANCELS + (
                CancelBatchException,))):
            self._check_batch(learn)
        super().cleanup_batch(learn)

    def _check_batch(self, learn: Learner) -> None:
        """Refuse a hooked layer that ran more than once in this batch, or ran where it did not in the fit's first
        recorded batch, or the other way: the plots draw a layer's records, one per batch, at x = 0, 1, ..."""
        for hook in self.hooks:  # its statistics would interleave the places it runs, one entry each per batch
            if hook.repeats:
                raise ValueError(f"ActivationStats: {type(hook.module).__name__} ran more than once in "
                                 f"one batch (batch {learn.iter}): it is used in more than one "
                                 "place in forward (as torchvision's shared self.relu), activation checkpointing "
                                 "(torch.utils.checkpoint) runs its forward again during backward, or a callback runs "
                                 "the model again in the batch (a second forward for a loss), "
                                 "so its statistics would mix those runs. Hook modules that run once per batch (give "
                                 "each place its own module, choose modules outside the checkpointed parts with "
                                 "mod_filter), or make other forwards of your own through learn.get_preds or "
                                 "outside the fit.")
        ran = [getattr(hook, "iter", None) == learn.iter for hook in self.hooks]
        if not (any(ran) or self._predicted == learn.iter):  # (a batch not recorded, or cancelled before its forward)
            return
        if self._ran is None:
            self._ran = ran
        elif ran != self._ran:  # one skipped in some batches (or run in some only): its records at other batches' x
            i = next(i for i, (now, first) in enumerate(zip(ran, self._ran)) if now != first)
            module = self.hooks[i].module
            name = next((n for n, m in learn.model.named_modules() if m is module), "?") or "the model"
            raise ValueError(f"ActivationStats: layer {i} ({name!r}, {type(module).__name__}) "
                             f"{'did not run' if self._ran[i] else 'ran'} in batch {learn.iter} of this "
                             f"{'training' if learn.training else 'validation'} pass, where it "
                             f"{'ran' if self._ran[i] else 'did not'} in the fit's first recorded batch: it is skipped "
                             "in some batches (LayerDrop, stochastic depth, a mixture of experts' routing, a head used "
                             "in training only, a block switched on mid-fit), so its plots would draw its statistics "
                             "at other batches' places. Hook modules that run in every recorded batch (mod_filter, or "
                             "mods=[...]).")

    def cleanup_epoch(self, learn: Learner) -> None:
        # here, not at after_epoch: a pass a cancel cut short (SingleBatchCB) is checked too; after an error, no
        # check: that error is the one to see
        stopped = learn.stopped_by
        recorded = [getattr(hook, "n_recorded", 0) - before for hook, before in zip(self.hooks, self._recorded_before)]
        if self._active and learn.iter is not None and (stopped is None or isinstance(stopped, _CANCELS)) \
                and not any(recorded) and self.other_mode_calls:  # a callback put the model in eval mode (BatchNorm)?
            warn(f"ActivationStats recorded nothing in this {'training' if learn.training else 'validation'} "
                 f"pass of {learn.iter + 1} batches: it records the forwards made in the pass's mode (model."
                 f"{'train' if learn.training else 'eval'}()), and the model was not in it. To freeze "
                 "BatchNorm while training, put only those layers in eval mode.")
        for hook, n in zip(self.hooks, recorded):  # which pass each record is of (the plots draw one pass)
            hook.passes = getattr(hook, "passes", []) + ["train" if learn.training else "valid"] * n
        # (counted from here: a pass cancelled before this callback's before_epoch records nothing)
        self._recorded_before = [getattr(h, "n_recorded", 0) for h in self.hooks]
        super().cleanup_epoch(learn)

    @property
    def stats(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per hooked layer, CPU tensors `(means [n], stds [n], hists [n, bins])` over the n recorded batches."""
        counts = tuple(len(h.stats[0]) if hasattr(h, "stats") else 0 for h in self.hooks)
        if self._cache is None or self._cache[0] is not self.hooks or self._cache[1] != counts:
            # the one place the recorded tensors cross to the host: a single sync, when someone looks
            self._cache = (self.hooks, counts, [self._layer_stats(h) for h in self.hooks])
        return self._cache[2]

    def stats_of(self, split: str) -> list[tuple[Tensor, Tensor, Tensor]]:
        """`stats` of one pass's batches, `split` 'train' or 'valid' (with `on_valid`, `stats` holds both, in the
        order they ran)."""
        _check_split(split)
        return [(m[rows], s[rows], h[rows]) for (m, s, h), rows in zip(self.stats, self._rows(split))]

    def _rows(self, split: str) -> list[Tensor]:
        """Per layer, which records are of `split`'s batches (those of a pass still running: of its split)."""
        now = "train" if self._training else "valid"
        return [torch.tensor([p == split for p in passes + [now] * (n - len(passes))], dtype=torch.bool)
                for passes, n in ((getattr(h, "passes", []), getattr(h, "n_recorded", 0)) for h in self.hooks)]

    def _split(self, split: str | None) -> str:
        """The pass a plot draws: `split`, else the training batches when any were recorded."""
        if split is None:
            return "train" if any(bool(rows.any()) for rows in self._rows("train")) or not self.on_valid else "valid"
        _check_split(split)
        return split

    def _layer_stats(self, hook: Hook) -> tuple[Tensor, Tensor, Tensor]:
        n = getattr(hook, "n_recorded", 0)
        if not n:
            return torch.zeros(0), torch.zeros(0), torch.zeros(0, self.bins)
        rows = hook.record[:n].cpu()  # the one copy to the host
        return rows[:, 0], rows[:, 1], rows[:, 2:]

    def _recorded(self, split: str | None = None) -> list[tuple[Tensor, Tensor, Tensor]]:
        """`stats` (of `split`'s batches, if given), for a plot: an error when nothing was recorded (an empty figure
        would say nothing of why)."""
        stats = self.stats if split is None else self.stats_of(split)
        if any(len(means) for means, _, _ in stats):
            return stats
        raise nothing_recorded("ActivationStats", self._fitted, "learn.fit(1, cbs=[stats])",
                               f"it records the batches of training passes (on_train={self.on_train}: training "
                               f"batches) and validation passes (on_valid={self.on_valid}) made with the model in the "
                               "pass's mode (model.train() for training): an evaluation fit(train=False) of a training "
                               "recorder, a fit cancelled before its first batch, or a model kept in eval mode while "
                               "training (freeze only the BatchNorm layers) records nothing")

    @property
    def labels(self) -> list[str]:
        """One name per hooked layer, for legends and titles: its index and class."""
        return [f"{i}: {type(h.module).__name__}" for i, h in enumerate(self.hooks)]

    def dead_fractions(self, split: str | None = None) -> list[Tensor]:
        """Per layer, per batch (of `split`'s batches, if given): share of all its activations in the lowest histogram
        bin (|x| near 0)."""
        if self.range[0] != 0:  # zeros are not in the lowest bin: a dead layer would show NaN (or 0.0), not 1.0
            raise ValueError(f"dead units are the activations at 0, which are counted in the lowest bin only when the "
                             f"histogram starts at 0, and this one starts at {self.range[0]:g} (range={self.range}): "
                             f"record with range=(0, {self.range[1]:g})")
        return [hists[:, 0] / sizes for (_, _, hists), sizes in zip(self._recorded(split), self._sizes(split))]

    def _sizes(self, split: str | None = None) -> list[Tensor]:
        """Per layer, the number of activations in each recorded batch (the histograms count those in range)."""
        sizes = [torch.tensor(getattr(h, "sizes", [])[:getattr(h, "n_recorded", 0)], dtype=torch.float32)
                 for h in self.hooks]
        return sizes if split is None else [n[rows] for n, rows in zip(sizes, self._rows(split))]

    def _warn_out_of_range(self, split: str) -> None:
        """Warn about the layers whose histograms miss much: values beyond the range (or NaN) are not counted, so
        an exploded layer shows an empty image, and its few small values look like all of it."""
        for label, (_, _, hists), sizes in zip(self.labels, self._recorded(split), self._sizes(split)):
            outside = float((1 - hists.sum(1) / sizes).max()) if len(sizes) else 0.0
            if outside > 0.1:
                warn(f"{label}: up to {outside:.0%} of the activations fell outside range={self.range} "
                     f"(or were NaN) and are not in its histograms: record with a wider range, "
                     f"ActivationStats(range=(0, ...))")

    # Each plot draws one pass's batches, `split`: the training ones, unless only validation ones were recorded
    # (with on_valid, split='valid'): an eval-mode batch beside the training ones would look like a jump.
    def color_dim(self, figsize: tuple[float, float] | None = None, split: str | None = None) -> Any:
        """The log-histogram of |activations| per layer (bins up, batches right): the "colorful dimension"."""
        from ..plotting import plot_color_dim  # matplotlib is imported only when a plot is asked for
        split = self._split(split)
        self._warn_out_of_range(split)
        return plot_color_dim([h for _, _, h in self._recorded(split)], self.range, self.labels, figsize=figsize,
                              xlabel=_XLABELS[split])

    def dead_chart(self, ax: Any = None, figsize: tuple[float, float] = (6, 4), split: str | None = None) -> Any:
        """Share of activations in the lowest bin (|x| below its upper edge: 0.25 with the default range and bins) per
        layer over batches, the course's chart: after a ReLU 1.0 means every unit is dead; a tanh's small values
        count too."""
        from ..plotting import plot_dead_chart
        split = self._split(split)
        self._warn_out_of_range(split)
        shifted: dict[str, list[str]] = {}  # each sub as shown -> the labels of the layers shifting by it, in order
        for label, hook in zip(self.labels, self.hooks):
            sub = _shift(hook.module)
            if sub is not None:
                shifted.setdefault(f"{sub:g}", []).append(label)
        if shifted:  # (GeneralRelu's: its dead units sit at -sub, in no bin near 0) one warning names them all
            groups = [f"{', '.join(labels)} (sub={sub})" for sub, labels in shifted.items()]
            names = groups[0] if len(groups) == 1 else ", ".join(groups[:-1]) + " and " + groups[-1]
            verb = "shifts its" if sum(map(len, shifted.values())) == 1 else "shift their"
            warn(f"{names} {verb} output down by sub: an inactive unit gives -sub or below, not 0, so the lowest "
                 "bin counts activations near 0 (units at their kink), not dead units; dead units show in color_dim "
                 "at |activation| >= sub instead")
        return plot_dead_chart(self.dead_fractions(split), self.labels, ax=ax, figsize=figsize, xlabel=_XLABELS[split])

    def plot_stats(self, figsize: tuple[float, float] = (10, 4), split: str | None = None) -> Any:
        """Means (left) and stds (right) of the activations per layer over batches."""
        from ..plotting import plot_act_stats
        split = self._split(split)
        stats = self._recorded(split)
        return plot_act_stats([m for m, _, _ in stats], [s for _, s, _ in stats], self.labels,
                              figsize=figsize, xlabel=_XLABELS[split])


_XLABELS = {"train": "recorded training batch", "valid": "recorded validation batch"}


def _check_split(split: str) -> None:
    if split not in _XLABELS:
        raise ValueError(f"split is 'train' or 'valid', got {split!r}")
