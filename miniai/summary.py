"""A model summary: per layer, output shape, parameters and multiply-adds for one batch; a table anywhere.

It is made as the course made it, with forward hooks (`miniai.callbacks.activations.Hook`/`Hooks`) on the layers
during one batch of the learner's own predict path (so DeviceCB, validation transforms and autocast apply), not
with a dependency such as torchinfo: the hooks see the real output shapes, multiply-adds have closed forms for
the layers that dominate them (Conv, Linear), and miniai stays small.
"""
from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .callbacks.activations import Hook, Hooks, check_hooks_run
from .callbacks.checkpoint import unwrap
from .callbacks.preds import get_preds
from .callbacks.state import kept
from .learner import Learner

__all__ = ["SummaryRow", "ModelSummary", "layer_macs", "summary"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# layers with weights whose work is elementwise (small beside a Linear's or a Conv's) or a lookup: 0 MACs
_ELEMENTWISE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.EmbeddingBag, nn.PReLU)


def layer_macs(module: nn.Module, inputs: tuple, output: Any) -> int | None:
    """Multiply-adds of one call of a Linear or Conv layer, in closed form (bias adds not counted); 0 for layers
    without weights and for norms and embeddings; None (not counted) for other layers with weights of their own,
    which use them in ways of their own (attention, recurrent layers)."""
    if isinstance(module, nn.Linear):  # each output value is a dot product over in_features
        return output.numel() * module.in_features
    if isinstance(module, _CONVS):  # each output value sums over (in_channels/groups) × kernel
        return output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, _TRANSPOSED):  # each input value is spread over (out_channels/groups) × kernel
        return inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, _ELEMENTWISE) or not _own_params(module):
        return 0
    return None


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    """A layer's own parameters: those it holds, and those a parametrization (weight_norm, spectral_norm) computes
    its weight from, which live in `module.parametrizations`."""
    own = list(module.parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own += list(module.parametrizations.parameters())
    return own


def _is_row(name: str, module: nn.Module) -> bool:
    """A summary row: a layer (a module with no children but its parametrizations), or a module with parameters of
    its own; never a parametrization's own pieces, counted with their layer."""
    if "parametrizations" in name.split("."):
        return False
    children = [n for n, _ in module.named_children() if not (n == "parametrizations" and
                                                              parametrize.is_parametrized(module))]
    return not children or bool(_own_params(module))


def _layer_name(module: nn.Module) -> str:
    """A row's layer type: its class, or the class a TorchScript layer (scripted, traced) was made from."""
    scripted = isinstance(module, torch.jit.ScriptModule)
    return f"TorchScript {module.original_name}" if scripted else type(module).__name__


class SummaryRow(NamedTuple):
    """One layer: its path in the model, class, output shape (None if not called), own parameters, MACs."""
    name: str
    layer: str
    output_shape: tuple | None
    params: int
    macs: int | None  # None: not counted (see layer_macs)


def _row(name: str, module: nn.Module, hook: Hook | None) -> SummaryRow:
    """The row of `module`, from what its hook recorded (None: a TorchScript one, not hooked); a layer with weights
    the batch never called has no MACs it could count ('?': a parent may use its weights)."""
    own = _own_params(module)
    return SummaryRow(name, _layer_name(module), getattr(hook, "shape", None), sum(p.numel() for p in own),
                      getattr(hook, "macs", None if own else 0))


def _shape(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (tuple, list)):
        return tuple(_shape(o) for o in x)
    return type(x).__name__


def _record(hook: Hook, module: nn.Module, inputs: tuple, output: Any) -> None:
    if not hasattr(hook, "shape"):
        hook.shape = _shape(output)  # a layer called twice keeps its first output's shape, and adds up its MACs
    macs, before = layer_macs(module, inputs, output), getattr(hook, "macs", 0)
    hook.macs = None if macs is None or before is None else before + macs


@dataclass
class ModelSummary:
    """The rows of `summary`, with totals; prints as aligned text, shows as a table in a notebook."""
    rows: list[SummaryRow]
    input_shape: Any
    total_params: int  # every parameter once (shared ones too), = sum(p.numel() for p in model.parameters())
    trainable_params: int

    @property
    def total_macs(self) -> int:
        """Multiply-adds of the whole batch (Linear and Conv layers; the rows not counted left out)."""
        return sum(row.macs for row in self.rows if row.macs is not None)

    def _cells(self) -> list[list[str]]:
        return [[row.name or "(model)", row.layer, "-" if row.output_shape is None else str(row.output_shape),
                 f"{row.params:,}", "?" if row.macs is None else f"{row.macs:,}"] for row in self.rows]

    def _footer(self) -> list[str]:
        first = self.input_shape
        while isinstance(first, tuple) and first and isinstance(first[0], tuple):
            first = first[0]  # several inputs: the batch size is the first one's
        n = first[0] if isinstance(first, tuple) and first and isinstance(first[0], int) else None
        per_item = f" ({self.total_macs // n:,} per item)" if n else ""
        in_rows = sum(row.params for row in self.rows)  # (tied weights: each row counts its own)
        shared = f"; the rows add up to {in_rows:,}: layers that share parameters count them in each row" * (
            in_rows > self.total_params)
        return [f"Input: {self.input_shape}",
                f"Total params: {self.total_params:,} (trainable {self.trainable_params:,}, "
                f"non-trainable {self.total_params - self.trainable_params:,}){shared}",
                f"MACs for the batch: {self._at_least()}{self.total_macs:,}{per_item}{self._not_counted()}"]

    def _at_least(self) -> str:
        return "at least " if any(row.macs is None for row in self.rows) else ""

    def _not_counted(self) -> str:
        kinds = list(dict.fromkeys(row.layer for row in self.rows if row.macs is None))
        return f" (not counted: {', '.join(kinds)})" if kinds else ""

    _HEAD = ["layer", "type", "output shape", "params", "MACs"]

    def __str__(self) -> str:
        cells = [self._HEAD, *self._cells()]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self._HEAD))]
        lines = ["  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in cells]
        rule = "-" * len(lines[0])
        return "\n".join([lines[0], rule, *lines[1:], rule, *self._footer()])

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        rows = [self._HEAD, ["--", "--", "--", "--:", "--:"], *self._cells()]
        return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n\n" + "  \n".join(self._footer())

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self._cells())
        foot = "<br>".join(html.escape(line) for line in self._footer())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><p>{foot}</p>"


def summary(learn: Learner, xb: Any = None) -> ModelSummary:
    """Per layer of `learn.model`: output shape, own parameters and multiply-adds for one batch, with totals.

    The batch is the first of `learn.dls.valid`, or `xb` (the inputs: a tensor, or a tuple for n_inp > 1), run
    through the learner's predict path (`get_preds`). Rows are the leaf modules, and any other module with
    parameters of its own, in `named_modules()` order. MACs are counted for Linear and Conv layers (closed form,
    `layer_macs`); layers without weights, norms and embeddings count 0, their work being small beside them;
    other layers with weights of their own (attention, recurrent), and ones the batch never called (a parent may use
    their weights: MultiheadAttention's out_proj) or can't hook (a scripted one: no output shape) are not counted:
    '?', and the footer names them.
    The model is left as it was: modes, placement, no gradients, the hooks removed, the loader's state and the RNGs
    untouched.
    """
    # a torch.compile(model) wrapper's code, compiled before the hooks, would run without them (no shapes, no MACs):
    # the batch runs through the module inside it, as do the rows' names (no '_orig_mod.')
    model = unwrap(learn.model)
    mods = [(name, m) for name, m in model.named_modules() if _is_row(name, m)]
    hooked = [m for _, m in mods if not isinstance(m, torch.jit.ScriptModule)]  # (torch can't hook those)
    check_hooks_run(model, "summary", hooked)  # (a compiled part, or a model compiled in place: no hooks either)
    with Hooks(hooked, _record) as hooks, kept(learn, [getattr(learn.dls, "valid", None)]):
        learn.model = model  # (kept puts the learner's back)
        if xb is None:
            dl = getattr(learn.dls, "valid", None)
            if dl is None:
                raise ValueError("summary needs a batch: learn.dls has no valid loader, so pass one, summary(xb=...)")
            batches: Any = itertools.islice(dl, 1)
        else:
            batches = [(*xb,) if isinstance(xb, (tuple, list)) else (xb,)]
            if len(batches[0]) != learn.n_inp:  # (an item more would go in as a target, without a word)
                n = learn.n_inp
                raise ValueError(f"summary(xb=...) takes the learner's {n} input{'s' * (n > 1)} (n_inp={n}): a "
                                 f"tensor for one, a tuple of {n} for more; got {len(batches[0])}. For a batch of "
                                 f"the loaders, pass xb=batch[:{n}]; for a model that takes a list or tuple as "
                                 "one input, xb=((a, b),)")
        inputs = get_preds(learn, dl=batches, with_input=True)[0]
    hook_of = {id(m): h for m, h in zip(hooked, hooks)}
    rows = [_row(name, m, hook_of.get(id(m))) for name, m in mods]
    params = list(model.parameters())  # each shared parameter once
    return ModelSummary(rows, _shape(inputs), sum(p.numel() for p in params),
                        sum(p.numel() for p in params if p.requires_grad))
