"""Mixed precision: forward pass and loss under `torch.autocast`; fp16 gradients kept in range by a GradScaler."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..checks import loss_backward, python_number, warn
from ..learner import Callback, CancelStepException, Learner
from ..supervised import MomentumLearner
from .grad_accum import GradAccumCB
from ..utils import loss_reduction, model_device

__all__ = ["MixedPrecisionCB"]

_DTYPES = (torch.float16, torch.bfloat16)
_SCALER_SETTINGS = ("growth_factor", "backoff_factor", "growth_interval")  # GradScaler's, saved in its state


class MixedPrecisionCB(Callback):
    """Forward pass and loss under `torch.autocast(dtype)`; with float16, backward and step go through a GradScaler.

    `dtype=None` picks float16 with a `torch.amp.GradScaler` on CUDA, and bfloat16 without one elsewhere (the
    CPU). bfloat16 has float32's exponent range, so its gradients need no scaling; float16 ones underflow without
    it. Pass `dtype=torch.bfloat16` on a GPU that supports it to drop the scaler. `scaler_kwargs` go to the
    GradScaler (`init_scale`, `growth_interval`, ...). Under `GradAccumCB(k)` the default `init_scale` is torch's
    2**16 / k: the float16 gradients, and the steps skipped for overflow, are those of torch's recipe for
    accumulation, `scaler.scale(loss / k).backward()` (GradAccumCB divides the summed gradients instead; a loss of
    reduction='sum', which it does not divide, starts at 2**16, the recipe's `scaler.scale(loss)`). An
    `init_scale` you pass is taken as given: for the recipe's S, pass S / k.

    This callback owns the learner's `backward` (of the scaled loss) and `step` (`scaler.step(opt)`, then
    `scaler.update()`; plain ones without a scaler), so it can't be combined with another callback owning them. When the
    scaler finds inf/NaN gradients and skips the optimizer step, the gradients are zeroed and
    `CancelStepException` is raised, so per-batch schedulers do not step for it (the schedule counts optimizer
    steps taken), `after_step` readers see nothing, and torch never warns that the scheduler stepped first.
    `n_skipped` counts those steps in the last fit that trained (from the start of the run when resumed).
    `learn.loss` stays unscaled for metrics. The scaler is `self.scaler` (None without one): `GradClipCB` finds it
    there and unscales before clipping. `state_dict()` holds the scaler's state and `n_skipped`, which
    `CheckpointCB` saves. Note the scaler's skip check is one host-device sync per optimizer step.
    """
    owns_steps = ("backward", "step")
    inference = True  # predictions are made under the same autocast as validation
    _hooked: Any = None  # the optimizer whose steps it watches (a class default: one pickled before it has none)
    order = -5  # enter autocast after DeviceCB (-20) and batch transforms (-10) ran in float32; leave it at
    # after_loss before the other after_loss callbacks read the loss, so their work is not autocast

    def __init__(self, dtype: torch.dtype | None = None, **scaler_kwargs: Any) -> None:
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"MixedPrecisionCB dtype must be torch.float16, torch.bfloat16 or None (pick by "
                             f"device), got {dtype!r}")
        if scaler_kwargs.get("enabled") is True:  # (torch's default, taken as it is)
            del scaler_kwargs["enabled"]
        _check_scaler_kwargs(dtype, scaler_kwargs)
        # a NumPy or one-number tensor setting as a Python number: checkpoints hold the scaler's settings, and the
        # safe loader a resume reads them with refuses NumPy scalars
        self.dtype = dtype
        self.scaler_kwargs = {k: python_number(v) for k, v in scaler_kwargs.items()}
        self.scaler: torch.amp.GradScaler | None = None
        self._scaler_device = ""
        self.n_skipped = 0
        self._said_unused = False  # whether unused scaler settings were warned of
        self._tried = self._taken = 0  # this fit's scaled optimizer steps: tried, and taken
        self._autocast: torch.autocast | None = None
        self._in_autocast = False
        self._stepped = False
        self._hook: Any = None

    def before_fit(self, learn: Learner) -> None:
        if not learn._predicting and "train" in learn.passes:  # (a prediction pass, which it joins, has no passes)
            self.n_skipped = 0  # (a resumed fit gets its run's count back from the checkpoint)
            self._tried = self._taken = 0
        device_type = model_device(learn.model).type
        dtype = self.dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
        if device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bfloat16: use MixedPrecisionCB() (float16 with a scaler)")
        self._autocast = torch.autocast(device_type, dtype=dtype)
        for kind in (torch.float64, torch.float16, torch.bfloat16):  # autocast lowers float32 ops only: layers of
            other = [name for name, p in learn.model.named_parameters()  # other ones run as they are, not in mixed
                     if p.dtype == kind and (p.requires_grad or kind == torch.float64)]  # precision (frozen low ones:
            if not other or learn._predicting:  # kept so on purpose, and the scaler never sees their gradients)
                continue
            if kind == torch.float16 and dtype == torch.float16:  # torch: "Attempting to unscale FP16 gradients."
                trained = half_trained(learn) if "train" in learn.passes else []  # (the scaler unscales only those)
                if trained:
                    raise TypeError(f"MixedPrecisionCB: {_half_weights(trained)}")
                continue
            weights = (f"{len(other)} of the model's weights are {str(kind)[6:]} ({', '.join(other[:3])}"
                       f"{', ...' * (len(other) > 3)})")
            warn(f"MixedPrecisionCB: {weights}, which autocast leaves as they are (it lowers float32 ops only), "
                 f"so their layers run in {str(kind)[6:]} alone, not in mixed precision"
                 + (" (updates below its resolution are lost)" if kind != torch.float64 else "")
                 + ": make the model float32 first (model.float(), and float32 inputs), or leave MixedPrecisionCB "
                 "out")
        if dtype == torch.float16 and isinstance(learn, MomentumLearner):
            raise TypeError(f"{type(learn).__name__} keeps mom × the gradients of the last step, unscaled, and a float16 "
                            "GradScaler would add scaled ones and divide both by its scale (the momentum would "
                            "shrink by the scale): with float16 use TrainLearner and an optimizer with momentum "
                            "(opt_func=partial(optim.SGD, momentum=0.9)), or MixedPrecisionCB(torch.bfloat16)")
        if dtype == torch.float16:
            # kept across fits (its scale is learned); a new one only if the device changed
            if self.scaler is None or self._scaler_device != device_type:
                # GradAccumCB divides the k summed gradients at the step, where torch's recipe backwards
                # scale × loss / k: starting k× lower, the float16 values (and so the overflows) are the recipe's
                # (a loss of reduction='sum', which it does not divide: the recipe's scale × loss, at 2 ** 16)
                k = max([cb.n_steps for cb in learn.cbs if isinstance(cb, GradAccumCB)], default=1) \
                    if loss_reduction(learn.loss_func) != "sum" else 1
                kwargs = {"init_scale": 2.0 ** 16 / k} | self.scaler_kwargs  # (2 ** 16: GradScaler's default)
                self.scaler = torch.amp.GradScaler(device_type, **kwargs)
                self._scaler_device = device_type
        else:
            self.scaler = None
            if self.scaler_kwargs and not learn._predicting and "train" in learn.passes \
                    and not getattr(self, "_said_unused", False):  # (one pickled before it has none)
                self._said_unused = True  # (once)
                warn(f"MixedPrecisionCB trains in bfloat16 here ({device_type}), which uses no GradScaler: "
                     f"{', '.join(self.scaler_kwargs)} unused (MixedPrecisionCB(torch.float16, ...) scales)")
        if self.scaler is not None and "train" in learn.passes and not learn._predicting:  # (only steps to watch)
            self._hook_step(learn.opt)

    def _hook_step(self, opt: Any) -> None:
        """Hook `opt`: an optimizer post-step hook says whether scaler.step really stepped (public API, no sync)."""
        if not isinstance(opt, torch.optim.Optimizer):  # the scaler unscales and steps through its API
            raise TypeError(f"MixedPrecisionCB in float16 steps through a GradScaler, which needs a torch.optim."
                            f"Optimizer; learn.opt is a {type(opt).__name__}: subclass torch.optim.Optimizer, or use "
                            "MixedPrecisionCB(torch.bfloat16), which needs no scaler")
        if self._hook is not None:
            self._hook.remove()
            self._hook = self._hooked = None
        if hasattr(opt, "_optimizer_step_post_hooks"):  # (a subclass that never ran Optimizer.__init__: the scale says)
            self._hook, self._hooked = opt.register_step_post_hook(self._mark_stepped), opt

    def after_fit(self, learn: Learner) -> None:
        if self._tried and not self._taken and not learn._predicting:  # the weights never changed
            warn(f"MixedPrecisionCB: float16 skipped all {self._tried} optimizer steps of this fit (their "
                 "gradients had inf/NaN values), so the weights did not change. With a finite loss, the "
                 f"GradScaler's scale ({self.scaler.get_scale():.3g} now) began too high for this fit to "
                 "bring it down: pass a lower init_scale, or use bfloat16.")

    def cleanup_fit(self, learn: Learner) -> None:
        self._exit_autocast()
        if self._hook is not None and not learn._predicting:  # (a look during a fit: the fit's hook stays)
            self._hook.remove()
            self._hook = self._hooked = None

    def before_batch(self, learn: Learner) -> None:
        self._autocast.__enter__()
        self._in_autocast = True

    def after_loss(self, learn: Learner) -> None:
        self._exit_autocast()  # backward runs outside autocast, as torch recommends

    def cleanup_batch(self, learn: Learner) -> None:
        self._exit_autocast()  # predict or the loss raised, or a callback cancelled the batch

    def _exit_autocast(self) -> None:
        if self._in_autocast:
            self._in_autocast = False
            self._autocast.__exit__(None, None, None)

    def _mark_stepped(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._stepped = True

    def backward(self, learn: Learner) -> None:
        """Backward of the loss, scaled by the scaler's current scale (plain backward without a scaler)."""
        loss_backward(learn, None if self.scaler is None else self.scaler.scale(learn.loss))

    def step(self, learn: Learner) -> None:
        """`scaler.step(opt)` and `scaler.update()`; a skipped step zeroes the grads and cancels the step."""
        if self.scaler is None:
            learn.opt.step()
            return
        if learn.opt is not self._hooked and hasattr(learn.opt, "_optimizer_step_post_hooks"):  # a callback's
            self._hook_step(learn.opt)  # before_fit, after this one's, set its own optimizer
        self._stepped = False
        # fused optimizers skip on the device and are always "called", and a wrapper torch can't hook (Lookahead's,
        # set by a later before_fit) may step what is hooked or not: the scale dropping is then the sign of a skip
        by_scale = getattr(learn.opt, "_step_supports_amp_scaling", False) or learn.opt is not self._hooked
        before = self.scaler.get_scale() if by_scale else 0.0
        with half_grads_named(learn):  # (float16 weights unfrozen during the fit)
            self.scaler.step(learn.opt)  # unscales (unless GradClipCB did), then steps unless a grad is inf/NaN
        self.scaler.update()
        self._tried += 1
        if self.scaler.get_scale() < before if by_scale else not self._stepped:
            self.n_skipped += 1
            learn.opt.zero_grad()  # the inf/NaN grads must not leak into the next step
            learn.pass_steps += 1  # a step of the epoch still (a hand loop's): an epoch of only skips trained too
            raise CancelStepException()
        self._taken += 1

    def state_dict(self) -> dict[str, Any]:
        """`scaler`: the GradScaler's `state_dict()` (scale, growth tracker, factors; {} without a scaler),
        `n_skipped`, so a resumed run's count goes on from the start of the run, and the `dtype` the fit ran in."""
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else {}, "n_skipped": self.n_skipped,
                "dtype": self._fit_dtype()}

    def _fit_dtype(self) -> str | None:
        """The dtype this fit's autocast runs in, as checkpoints save it (None before the first before_fit)."""
        return None if self._autocast is None else str(self._autocast.fast_dtype)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (during a fit, once before_fit made the scaler: `fit(resume=...)` does)."""
        n_skipped, scaler = (state["n_skipped"], state["scaler"]) if "n_skipped" in state else (None, state)
        # (a checkpoint of before the count was saved holds the scaler's state alone)
        saved, ours = state.get("dtype"), self._fit_dtype()
        if saved is not None and ours is not None and saved != ours:  # (older files: none saved)
            raise ValueError(f"the checkpoint's run trained in {saved} autocast, this fit in {ours}: resume with "
                             f"MixedPrecisionCB({saved}), or start a new fit from the checkpoint's weights")
        if scaler and self.scaler is None:
            raise RuntimeError("MixedPrecisionCB makes its grad scaler at before_fit, and only for float16: load "
                               "its state during a float16 fit (learn.fit(n, resume=path) does)")
        ours = self.scaler.state_dict() if scaler else {}  # (the settings this one was given: not the scale,
        changed = [k for k in _SCALER_SETTINGS if scaler.get(k, ours.get(k)) != ours.get(k)]  # which is learned)
        if changed:  # load_state_dict would put the saved ones back over those given, without a word
            raise ValueError(f"the checkpoint's run scaled float16 gradients with "
                             f"{', '.join(f'{k}={scaler[k]}' for k in changed)}, this fit's GradScaler has "
                             f"{', '.join(f'{k}={ours[k]}' for k in changed)}: resume with the saved settings, or "
                             "start a new fit from the checkpoint's weights")
        if scaler:
            self.scaler.load_state_dict(scaler)
        if n_skipped is not None:
            self.n_skipped = n_skipped


_SCALER_KWARGS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")  # (GradScaler's settings)


def _check_scaler_kwargs(dtype: torch.dtype | None, kwargs: dict[str, Any]) -> None:
    """Refuse keywords that are no GradScaler setting (torch's `enabled=False`, Lightning's `precision`), and
    settings of a scaler that bfloat16 does not use."""
    if "enabled" in kwargs:  # (a scaler's enabled=False would keep float16 autocast, with unscaled gradients)
        raise ValueError("MixedPrecisionCB(enabled=False): to train in float32 leave MixedPrecisionCB out of the "
                         "callbacks (learn.rm_cb(cb))")
    if "precision" in kwargs:  # (Lightning's)
        meant = {"16-mixed": "MixedPrecisionCB(torch.float16)", "bf16-mixed": "MixedPrecisionCB(torch.bfloat16)"}
        raise ValueError(f"MixedPrecisionCB has no precision={kwargs['precision']!r}: "
                         + meant.get(str(kwargs["precision"]), "MixedPrecisionCB(torch.float16) or "
                                     "MixedPrecisionCB(torch.bfloat16); leave it out to train in float32"))
    unknown = [k for k in kwargs if k not in _SCALER_KWARGS]
    if unknown:
        raise TypeError(f"MixedPrecisionCB got {', '.join(unknown)}: its keywords go to torch's GradScaler, which "
                        f"takes {', '.join(_SCALER_KWARGS)}")
    if kwargs and dtype == torch.bfloat16:
        raise ValueError(f"bfloat16 trains without a GradScaler (its exponent range is float32's): "
                         f"{', '.join(kwargs)} would be unused. Leave them out, or use MixedPrecisionCB(torch.float16)")


def half_trained(learn: Learner) -> list[str]:
    """The float16 tensors learn.opt trains (their gradients float16's scaler can't unscale), by name."""
    names = {id(p): name for name, p in learn.model.named_parameters()}
    return [names.get(id(p), f"a {tuple(p.shape)} tensor beside the model") for group in
            getattr(learn.opt, "param_groups", ()) for p in group["params"]
            if p.requires_grad and p.dtype == torch.float16]


@contextlib.contextmanager
def half_grads_named(learn: Learner) -> Iterator[None]:
    """Turn torch's "Attempting to unscale FP16 gradients." (a scaler's step or unscale_) into the error that names
    the float16 tensors the optimizer trains, and the way."""
    try:
        yield
    except ValueError as e:
        trained = half_trained(learn) if "FP16 gradients" in str(e) else []  # (another ValueError: as it is)
        if not trained:
            raise
        raise TypeError(f"MixedPrecisionCB: {_half_weights(trained)}") from e


def _half_weights(names: list[str]) -> str:
    """What is wrong with trainable float16 weights under float16's scaler, and the way."""
    return (f"{len(names)} of the model's weights are float16 ({', '.join(names[:3])}{', ...' * (len(names) > 3)}), "
            "whose gradients float16's GradScaler can't unscale: keep the model float32 (autocast runs its layers in "
            "float16 and keeps float32 weights for the updates): model.float()")
