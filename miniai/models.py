"""Model builders for 28×28 and 32×32 images: conv blocks, GeneralRelu, the course CNN, ResBlock, a small ResNet;
LSUV init."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_count, warn

__all__ = ["conv", "GeneralRelu", "get_model", "get_convnet", "init_weights", "ResBlock", "get_resnet", "act_gr",
           "lsuv_init"]

# A layer factory: a class such as nn.ReLU or nn.BatchNorm2d, or a partial such as partial(GeneralRelu, leak=0.1).
ActFactory = Callable[[], nn.Module]
NormFactory = Callable[[int], nn.Module]

_BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)  # BatchNorm1d/2d/3d, SyncBatchNorm, the lazy ones


def _is_batchnorm(norm: NormFactory | None) -> bool:
    """True when `norm` builds a BatchNorm layer (a class, or a functools.partial of one)."""
    norm = getattr(norm, "func", norm)  # look through functools.partial
    return isinstance(norm, type) and issubclass(norm, _BATCHNORMS)


def conv(ni: int, nf: int, ks: int = 3, stride: int = 2, act: ActFactory | bool | None = nn.ReLU,
         norm: NormFactory | None = None, bias: bool | None = None) -> nn.Sequential:
    """Conv2d(ni→nf, padding ks//2), then norm(nf) if given, then act() if given.

    (N,ni,H,W) → (N,nf,⌈H/stride⌉,⌈W/stride⌉) for an odd `ks`; an even one pads a pixel more than it takes:
    (H + 2·(ks//2) − ks) // stride + 1.

    `bias` defaults to True unless `norm` is a BatchNorm, whose own shift makes a conv bias redundant.
    """
    if act is True:  # the course's conv(..., act=True): a ReLU
        act = nn.ReLU
    if bias is None:
        bias = not _is_batchnorm(norm)
    layers: list[nn.Module] = [nn.Conv2d(ni, nf, kernel_size=ks, stride=stride, padding=ks // 2, bias=bias)]
    if norm:
        layers.append(norm(nf))
    if act:
        layers.append(act())
    return nn.Sequential(*layers)


class GeneralRelu(nn.Module):
    """ReLU (leaky if `leak`), shifted down by `sub`, clamped above at `maxv`: the course's tunable activation."""

    def __init__(self, leak: float | None = None, sub: float | None = None, maxv: float | None = None) -> None:
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise; any shape in, same shape out."""
        x = F.leaky_relu(x, self.leak) if self.leak else F.relu(x)
        if self.sub is not None:
            x = x - self.sub
        if self.maxv is not None:
            x = x.clamp_max(self.maxv)
        return x

    def extra_repr(self) -> str:
        return f"leak={self.leak}, sub={self.sub}, maxv={self.maxv}"


def get_model(act: ActFactory | None = nn.ReLU, nfs: Sequence[int] = (8, 16, 32, 64),
              norm: NormFactory | None = None) -> nn.Sequential:
    """The course CNN: (N,1,28,28) → (N,10) logits via five stride-2 convs (28→14→7→4→2→1), then Flatten.

    The first conv is 5×5 (1→nfs[0]); one 3×3 conv per consecutive pair of `nfs`; a last 3×3 conv to 10
    channels with bias and no norm or activation. With the default four `nfs` the map reaches 1×1 for inputs of
    up to 32 pixels a side; larger ones, or fewer `nfs`, leave a larger map and Flatten gives more than 10
    features.
    """
    layers = _stride2_convs(act, nfs, norm)
    layers += [conv(nfs[-1], 10, act=None, norm=None, bias=True), nn.Flatten()]
    return nn.Sequential(*layers)


def _stride2_convs(act: ActFactory | None, nfs: Sequence[int], norm: NormFactory | None) -> list[nn.Module]:
    """The course CNN's body: a 5×5 stride-2 conv 1→nfs[0], then a 3×3 stride-2 conv per consecutive pair."""
    layers = [conv(1, nfs[0], ks=5, act=act, norm=norm)]
    return layers + [conv(nfs[i], nfs[i + 1], act=act, norm=norm) for i in range(len(nfs) - 1)]


def get_convnet(act: ActFactory | None = nn.ReLU, nfs: Sequence[int] = (16, 32, 64),
                norm: NormFactory | None = nn.BatchNorm2d, size: int = 28, n_classes: int = 10) -> nn.Sequential:
    """The course CNN's stride-2 convs (5×5 first, then 3×3) for `nfs`, then Flatten and one Linear to the logits.

    (N,1,size,size) → (N,n_classes). The Linear reads the whole last map (4×4 for three `nfs` on 28×28), where
    `get_model` squeezes it down to 1×1 with two more convs: on Fashion-MNIST three convs and this head reach the
    accuracy of get_model's five in less time (convolutions on 2×2 and 1×1 maps are slow for their arithmetic).
    """
    side = size
    for _ in nfs:
        side = (side + 1) // 2  # a stride-2 conv with padding ks//2 halves the side, rounding up
    return nn.Sequential(*_stride2_convs(act, nfs, norm), nn.Flatten(), nn.Linear(nfs[-1] * side * side, n_classes))


def init_weights(m: nn.Module, leaky: float = 0.0) -> None:
    """Kaiming-normal init of Conv1d/2d/3d and Linear weights for a (leaky) ReLU of slope `leaky`; use with model.apply.

    Weight std becomes sqrt(2 / ((1 + leaky²) · fan_in)). Biases are left as PyTorch made them, as in the course.
    """
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, a=leaky)


class ResBlock(nn.Module):
    """Two convs plus a shortcut, then act: (N,ni,H,W) → (N,nf,⌈H/stride⌉,⌈W/stride⌉).

    Main path: conv(ni→nf, stride 1, act, norm), conv(nf→nf, `stride`, norm, no act). Shortcut: 2×2 average pool
    (ceil mode, so odd sizes match the conv) when stride is 2, then a 1×1 conv when ni ≠ nf.
    """

    def __init__(self, ni: int, nf: int, stride: int = 1, ks: int = 3, act: ActFactory | None = nn.ReLU,
                 norm: NormFactory | None = nn.BatchNorm2d) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResBlock supports stride 1 or 2 (the shortcut pools 2×2); got stride={stride}")
        if ks % 2 == 0:  # (padding ks//2 keeps the size only for an odd ks: the sum with the shortcut would fail)
            raise ValueError(f"ResBlock needs an odd ks, whose convs keep the size the shortcut keeps; got ks={ks}")
        self.convs = nn.Sequential(conv(ni, nf, ks=ks, stride=1, act=act, norm=norm),
                                   conv(nf, nf, ks=ks, stride=stride, act=None, norm=norm))
        self.idconv: nn.Module = nn.Identity() if ni == nf else conv(ni, nf, ks=1, stride=1, act=None)
        self.pool: nn.Module = nn.Identity() if stride == 1 else nn.AvgPool2d(2, ceil_mode=True)
        self.act: nn.Module = act() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.idconv(self.pool(x)))


def get_resnet(in_channels: int = 1, n_classes: int = 10, nfs: Sequence[int] = (16, 32, 64, 128, 256),
               act: ActFactory | None = nn.ReLU, norm: NormFactory | None = nn.BatchNorm2d,
               dropout: float = 0.0) -> nn.Sequential:
    """A small ResNet: (N,in_channels,H,W) → (N,n_classes) logits, e.g. (N,1,28,28) or (N,3,32,32).

    A 5×5 stem ResBlock (stride 1), one stride-2 ResBlock per consecutive pair of `nfs`, global average pool,
    optional dropout, a bias-free Linear and a BatchNorm1d on the logits (course style). Because of that last
    BatchNorm1d, training needs batches of at least 2.
    """
    layers: list[nn.Module] = [ResBlock(in_channels, nfs[0], stride=1, ks=5, act=act, norm=norm)]
    layers += [ResBlock(nfs[i], nfs[i + 1], stride=2, act=act, norm=norm) for i in range(len(nfs) - 1)]
    # Global pooling (not a flatten at 1×1) is what makes one model fit both 28×28 and 32×32 inputs.
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(nfs[-1], n_classes, bias=False), nn.BatchNorm1d(n_classes)]
    return nn.Sequential(*layers)


def act_gr(leak: float = 0.1, sub: float = 0.4, maxv: float | None = None) -> GeneralRelu:
    """GeneralRelu(leak=0.1, sub=0.4), the course's activation for its ResNets; a factory: `get_model(act_gr)`."""
    return GeneralRelu(leak=leak, sub=sub, maxv=maxv)


def lsuv_init(model: nn.Module, m: nn.Module, m_in: nn.Module, xb: torch.Tensor, tol: float = 1e-3,
              max_iters: int = 100) -> tuple[float, float]:
    """LSUV init of one layer: scale `m_in`'s weight and shift its bias until the output of `m` in `model(xb)` has
    mean 0 and std 1 (within `tol`); returns that output's final (mean, std).

    `m_in` is the layer with the weights and `m` the module whose output is measured, usually the activation after
    it; go through the layers first to last, `for m, m_in in zip(acts, convs): lsuv_init(model, m, m_in, xb)`, so
    each one sees inputs its predecessors already normalized (that zip pairs them in a plain CNN, get_model's; a
    ResNet's 1×1 shortcut convs break it: pair each activation with the conv before it yourself). Without a bias (a
    conv before BatchNorm) only the std is fixed. Each try is a forward pass of `xb` (on the model's device); after
    `max_iters` it warns and stops, or, when the output is further off than before the first try, raises and puts
    the model back.
    When it can't work (a dead layer; an output never negative, a plain ReLU's, which can't have mean 0: measure
    the layer itself, or use a shifted activation; a norm layer between `m_in` and `m`, which undoes any rescaling)
    it raises, and the model is left as it was. Only `m_in`'s weight and bias change: norm layers' running stats
    and the RNG (a Dropout draws in train mode, whose outputs are the ones measured) are put back.
    """
    check_count("lsuv_init: max_iters", max_iters, least=0, what=" (tries)")
    if not isinstance(getattr(m_in, "weight", None), torch.Tensor):
        raise TypeError(f"lsuv_init: m_in is the layer whose weight it scales (a Conv or Linear), and "
                        f"{type(m_in).__name__} has none: pass the layer before m")
    if all(m_in is not module for module in model.modules()):  # (a parametrized weight is no parameter itself)
        raise ValueError(f"lsuv_init: m_in ({type(m_in).__name__}) is not a layer of the model: pass one of "
                         "model's layers, the one before m")
    seen: dict[str, Any] = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["out"], seen["calls"] = output.detach().float(), seen["calls"] + 1

    weights = [(p, p.detach().clone()) for p in model.parameters()]
    buffers = [(b, b.clone()) for b in model.buffers()]  # BatchNorm's stats change too; non-persistent ones also
    handle = m.register_forward_hook(record)
    devices = [xb.device.index or 0] if xb.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # (the tries' dropout draws: put back)
            before = first = start = None
            for tries in range(max_iters + 1):
                seen["calls"] = 0
                model(xb)
                if seen["calls"] != 1:  # (a shared one: its last call's output would rescale m_in for another layer)
                    raise ValueError(f"lsuv_init: {type(m).__name__} is "
                                     + (f"called {seen['calls']} times in one model(xb) (one object at several places, "
                                        "an activation shared by layers), so its output is not m_in's alone: give "
                                        "each layer its own, or measure m_in itself." if seen["calls"] else
                                        "not called in model(xb): pass a module of this model.")
                                     + " The model is as it was.")
                mean, std = float(seen["out"].mean()), float(seen["out"].std())
                start = std if start is None else start
                if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                    raise ValueError(f"lsuv_init: the output of {type(m).__name__} has mean {mean} and std {std} on "
                                     "this batch, which no rescaling fixes (a dead layer, or non-finite values): check "
                                     "the batch and the layers before it")
                if m_in.bias is not None and float(seen["out"].min()) >= 0:  # mean 0 only if all were 0
                    raise ValueError(f"lsuv_init: the output of {type(m).__name__} is never negative, so no bias makes "
                                     "its mean 0 (each try would push the layer towards dead): measure the layer "
                                     f"itself (m={type(m_in).__name__}), or use an activation shifted below 0, "
                                     "GeneralRelu(sub=0.4) as the course does. The model is as it was.")
                undone = before is not None and abs(before - 1) > 0.05 and abs(std - before) <= 1e-4 * before
                if undone and std < 1e-4 <= start:  # (not undone: the tries pushed the output to a near-constant)
                    raise ValueError(
                        f"lsuv_init: the tries drove the std of {type(m).__name__}'s output to {std:.4g}, where "
                        "rescaling no longer moves it: the tries diverge (an activation whose mean 0 needs units "
                        "pushed dead, GeneralRelu with a small sub and no leak, say; give it a leak, or a larger sub, "
                        "or measure m_in itself). The model is as it was.")
                if undone:  # rescaled by 1/before, 5% or more, and the std did not move: something undoes it
                    raise ValueError(f"lsuv_init: dividing {type(m_in).__name__}'s weight by {before:.4g} left the "
                                     f"std of {type(m).__name__}'s output at {std:.4g}: something between them undoes "
                                     "the rescaling (a normalization layer, BatchNorm say, or one of the weight "
                                     "itself, weight_norm or spectral_norm: LSUV is for models without them), or the "
                                     "activation saturates. The model is as it was.")
                if abs(std - 1) <= tol and (m_in.bias is None or abs(mean) <= tol):
                    break
                off = abs(std - 1) + (abs(mean) if m_in.bias is not None else 0.0)  # from where it should be
                first = off if first is None else first
                if tries == max_iters:
                    if off > max(first, 0.1):  # (further off than before the first try: the tries drifted away)
                        raise ValueError(
                            f"lsuv_init: after {max_iters} tries the output of {type(m).__name__} has mean "
                            f"{mean:.4g} and std {std:.4g}, further from 0 and 1 than before them: the tries "
                            "diverge (an activation whose mean 0 needs units pushed dead, GeneralRelu with a small "
                            "sub and no leak, say; give it a leak, or a larger sub, or measure m_in itself). The "
                            "model is as it was.")
                    warn(f"lsuv_init: after {max_iters} tries the output of {type(m).__name__} has mean "
                         f"{mean:.4f} and std {std:.4f}, not within {tol} of 0 and 1")
                    break
                if m_in.bias is not None:
                    m_in.bias -= mean
                m_in.weight /= std
                before = std
    except BaseException:
        _put_back(weights + buffers)
        raise
    finally:
        handle.remove()
    _put_back(buffers)  # the tries' forwards updated norm layers' running stats: only m_in's weights change
    return mean, std


@torch.no_grad()
def _put_back(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for tensor, value in saved:
        tensor.copy_(value)
