"""What ActivationStats' hook costs per batch on its own: `append_stats` on activations of the reference CNN's four
GeneralRelu outputs at one batch size, and each of the histogram's parts on the largest of them.

    python bench/acts_hook.py            # bs 64: 64×8×14×14, 64×16×7×7, 64×32×4×4, 64×64×2×2 values
    python bench/acts_hook.py --bs 1024

With glibc's malloc thresholds fixed first, as DeviceCB fixes them in a CPU fit (`miniai.utils.fix_malloc`): without
that, each of the hook's temporaries of a bs 1024 layer (6 MB) is a fresh mapping, faulted in page by page at every
call, and the parts that allocate look 30-100 times slower than they are in a fit.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from miniai.callbacks.activations import _bincount, append_stats
from miniai.utils import fix_malloc


def per_call_us(fn: Callable[[], object], reps: int) -> float:
    """Median over 5 rounds of the mean time of `reps` calls, in µs (after a warm-up)."""
    for _ in range(10):
        fn()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - start) / reps * 1e6)
    return sorted(rounds)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    fix_malloc(force=True)  # what a fit on the CPU runs under (DeviceCB)
    torch.manual_seed(0)
    shapes = [(args.bs, 8, 14, 14), (args.bs, 16, 7, 7), (args.bs, 32, 4, 4), (args.bs, 64, 2, 2)]
    acts = [torch.randn(s).relu_() for s in shapes]  # (values in [0, 10): the histogram's fast path)
    hooks = [SimpleNamespace() for _ in acts]

    def batch() -> None:
        for hook, x in zip(hooks, acts):
            append_stats(hook, None, (), x)
    n = sum(x.numel() for x in acts)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bs {args.bs}, {n:,} values a batch")
    print(f"append_stats, four layers: {per_call_us(batch, args.reps):8.1f} µs a batch")
    x = acts[0].reshape(-1)
    index = x.abs().mul_(40).div_(torch.tensor(10.0).expand_as(x)).clamp_(max=39).to(torch.int32)
    parts = {"mean": lambda: x.mean(), "deviations and their dot product": lambda: torch.dot(x - 0.5, x - 0.5),
             "abs": lambda: x.abs(), "max": lambda: float(x.max()),
             "bin index (mul, div, clamp, to int32)": lambda: x.abs().mul_(40).div_(
                 torch.tensor(10.0).expand_as(x)).clamp_(max=39).to(torch.int32),
             "bincount": lambda: torch.bincount(index, minlength=40),
             "bincount in pairs (append_stats' _bincount)": lambda: _bincount(index, 40),
             "histc (for scale)": lambda: torch.histc(x, 40, 0, 10)}
    print(f"its parts on the largest layer ({x.numel():,} values):")
    for name, fn in parts.items():
        print(f"  {name:44s} {per_call_us(fn, args.reps):8.1f} µs")


if __name__ == "__main__":
    main()
