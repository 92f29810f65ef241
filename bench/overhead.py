"""How much miniai's loop costs over a hand-written PyTorch loop, and how fast its data path is.

    python bench/overhead.py --fresh --reps 7 # what users get: fresh processes, first and later epochs (fresh.py)
    python bench/overhead.py                  # one long-lived process: CUDA when present, else CPU; 5 reps
    python bench/overhead.py --device cpu --reps 7 --bs 1024,64
    python bench/overhead.py --quick          # a smoke run: 2 reps on a fraction of the data

One epoch (the training pass only, no validation) of the reference model: `get_model(GeneralRelu(leak=0.1,
sub=0.4), BatchNorm2d)` with leaky Kaiming init, AdamW, torch's OneCycleLR stepped every batch, cross-entropy,
on Fashion-MNIST held in memory, normalized once. Rows:

  1. hand    the floor: pre-normalized tensors on the device, a randperm per epoch, slicing, the same model,
             optimizer and scheduler; no metrics, no progress display, no recording.
  2. miniai  TrainLearner (with its default TerminateOnNaNCB) + DeviceCB + MetricsCB(accuracy) + ProgressCB
             + BatchSchedCB(OneCycleLR) + RecorderCB(lr, mom): also computes accuracy and the mean loss, draws
             the progress bar (terminal mode, into /dev/null) and records lr and momentum each batch.
  3. +acts   row 2 + ActivationStats on the GeneralRelu layers (mean, std, 40-bin histogram per layer per batch).
  4. +mp     row 2 + MixedPrecisionCB (bfloat16 on the CPU, float16 and a GradScaler on CUDA).
     +compile row 2 + learn.compile(): its first epoch (compilation included) is shown on its own; the reps
             after it reuse the compiled model (weights reset each rep).

Runs are paired: in every rep, each row runs right next to a run of row 1 (before it or after it, alternating),
so the load drifting on a shared machine hits both alike. Each cell is the median over the reps with the min-max;
the ratio is the median over reps of the row's time per batch over its paired row-1 run's (the ratio of epoch
times, except for rows run on fewer images: on the CPU, the mixed precision row, since bf16 convolutions are
several times slower than float32 on CPUs without native bf16).

On Linux the script fixes glibc malloc's thresholds first (`fix_malloc`; `--default-malloc` to skip): with glibc's
adaptive defaults, whether a run faults its activations' memory in anew every batch depends on the heap's layout
left by whatever ran before, which adds up to 30% to either row at random. The page faults per batch are printed.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, TensorDataset
from torcheval.metrics import MulticlassAccuracy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # handloop.py, next to this file

from handloop import hand_train_pass  # noqa: E402

from miniai.callbacks.activations import ActivationStats  # noqa: E402
from miniai.callbacks.basic import DeviceCB  # noqa: E402
from miniai.callbacks.metrics import MetricsCB  # noqa: E402
from miniai.callbacks.mixed_precision import MixedPrecisionCB  # noqa: E402
from miniai.callbacks.progress import ProgressCB  # noqa: E402
from miniai.callbacks.scheduling import BatchSchedCB, RecorderCB, _lr, _mom  # noqa: E402
from miniai.cache import clear_cache  # noqa: E402
from miniai.data import get_dls  # noqa: E402
from miniai.learner import TrainLearner  # noqa: E402
from miniai.models import GeneralRelu, get_model, init_weights  # noqa: E402

LR = 1e-2


def reference_model() -> nn.Module:
    """The course CNN 8-16-32-64 with GeneralRelu and BatchNorm, leaky Kaiming init."""
    act = partial(GeneralRelu, leak=0.1, sub=0.4)
    return get_model(act, norm=nn.BatchNorm2d).apply(partial(init_weights, leaky=0.1))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the rows

def hand_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
    """Row 1: one epoch written by hand; x, y are normalized and already on the model's device."""
    opt = optim.AdamW(model.parameters(), lr=LR)
    hand_train_pass(model, opt, x, y, bs, OneCycleLR(opt, max_lr=LR, total_steps=math.ceil(len(x) / bs)))


def miniai_learner(dls, device: torch.device, extra: list | None = None) -> TrainLearner:
    """Row 2's learner (plus `extra` callbacks)."""
    cbs = [DeviceCB(device), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB(mode="terminal"),
           BatchSchedCB(partial(OneCycleLR, max_lr=LR, total_steps=len(dls.train))), RecorderCB(lr=_lr, mom=_mom),
           *(extra or [])]
    return TrainLearner(reference_model(), dls, F.cross_entropy, lr=LR, cbs=cbs, opt_func=optim.AdamW)


def quietly(fn: Callable[[], None]) -> None:
    """Run fn with stdout into /dev/null: the progress bar and metric rows are drawn, just not seen."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        fn()


def progress(line: str) -> None:
    """A line on stderr, so a long run shows where it is without mixing into the table on stdout."""
    print(line, file=sys.stderr, flush=True)


def page_faults() -> int:
    """Minor page faults of this process so far (memory the kernel had to map in); 0 where unknown."""
    try:
        import resource  # Unix only
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fix_malloc() -> str:
    """Fix glibc malloc's thresholds for this process (`miniai.utils.fix_malloc`); returns a line saying so."""
    from miniai.utils import fix_malloc as fix
    return ("allocator: glibc malloc with fixed thresholds (mmap 32 MiB, trim 1 GiB; miniai.utils.fix_malloc)"
            if fix(force=True) else "allocator: the platform's default (could not set glibc's malloc thresholds)")


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- data path

def time_get_dls(reps: int) -> dict[str, list[float]]:
    """get_dls() cold (no memory cache, an empty disk cache), from the disk cache, and warm (memory)."""
    times: dict[str, list[float]] = {"cold": [], "disk": [], "warm": []}
    saved = os.environ.get("MINIAI_CACHE")
    try:
        for _ in range(reps):
            with tempfile.TemporaryDirectory() as cache:
                os.environ["MINIAI_CACHE"] = cache
                clear_cache()
                for what in ("cold", "disk", "warm"):
                    if what == "disk":
                        clear_cache()
                    start = time.perf_counter()
                    get_dls()
                    times[what].append(time.perf_counter() - start)
    finally:
        if saved is None:
            os.environ.pop("MINIAI_CACHE", None)
        else:
            os.environ["MINIAI_CACHE"] = saved
        clear_cache()
    return times


def loader_throughput(bs: int, device: torch.device, reps: int) -> tuple[list[float], list[float]]:
    """Images/s over one shuffled epoch: miniai's TensorLoader vs DataLoader(TensorDataset), batches on `device`."""
    dls = get_dls(bs=bs, device=device)
    x, y = dls.train.x, dls.train.y
    torch_dl = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=bs, shuffle=True,
                          pin_memory=device.type == "cuda")

    def walk(dl, move: bool) -> None:
        for xb, yb in dl:
            if move:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    ours, theirs = [], []
    for _ in range(reps):
        ours.append(len(x) / timed(lambda: walk(dls.train, False), device))
        theirs.append(len(x) / timed(lambda: walk(torch_dl, True), device))
    return ours, theirs


# ---------------------------------------------------------------- reporting

def fmt_cell(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, device: {device} ({dev})")


def main() -> None:
    if "--fresh" in sys.argv:  # the fresh-process mode lives in fresh.py, next to this file
        sys.argv.remove("--fresh")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from fresh import main as fresh_main
        fresh_main()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of every row (>= 5 for the README)")
    parser.add_argument("--bs", default="1024,64", help="comma-separated batch sizes")
    parser.add_argument("--small-fraction", type=float, default=0.25,
                        help="share of the 60,000 training images used at batch sizes below 256 (time budget)")
    parser.add_argument("--mp-images", type=int, default=6144,
                        help="on the CPU, images the MixedPrecisionCB row trains on (bf16 is slow without native "
                             "support); its ratio is then per batch")
    parser.add_argument("--no-compile", action="store_true", help="skip the learn.compile() row")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 reps, 1/10 of the data, no compile")
    parser.add_argument("--fresh", action="store_true", help="fresh processes, first and later epochs (fresh.py)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's adaptive malloc thresholds alone (see fix_malloc: rows then draw a "
                             "page-fault-heavy heap state by chance)")
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = 2 if args.quick else args.reps
    sizes = [int(b) for b in args.bs.split(",")]
    command = "python bench/overhead.py " + " ".join(sys.argv[1:])
    torch.manual_seed(0)

    if args.default_malloc:
        os.environ["MINIAI_MALLOC"] = "default"  # or DeviceCB would fix the thresholds in the miniai rows
    allocator = "allocator: glibc's adaptive default (--default-malloc)" if args.default_malloc else fix_malloc()
    out = [f"Machine: {machine(device)}", f"Command: `{command.strip()}`", allocator, ""]
    get_dls()  # decode (or read the disk cache) once before anything is timed

    # ---- training rows
    out += ["| row | bs | images | batches | median s (min-max) | ratio to 1 | overhead / batch "
            "| page faults / batch |",
            "|---|---|---|---|---|---|---|---|"]
    slow_mp = device.type == "cpu" and not args.quick  # bf16 convolutions: native only on CPUs with AVX512-BF16/AMX
    for bs in sizes:
        fraction = 0.1 if args.quick else (args.small_fraction if bs < 256 else 1.0)
        n_train = round(60_000 * fraction)
        dls = get_dls(bs=bs, n_train=n_train, device=device, seed=0)
        n_mp = min(n_train, args.mp_images) if slow_mp else n_train
        mp_dls = get_dls(bs=bs, n_train=n_mp, device=device, seed=0) if n_mp < n_train else dls
        x, y = dls.train.x, dls.train.y

        def hand() -> Callable[[], None]:
            model = reference_model().to(device)
            return lambda: hand_epoch(model, x, y, bs)

        def learner(extra: Callable[[], list], data) -> Callable[[], Callable[[], None]]:
            def make() -> Callable[[], None]:
                learn = miniai_learner(data, device, extra())
                return lambda: quietly(lambda: learn.fit(1, valid=False))
            return make
        # the miniai rows: name -> (the callbacks added to row 2's, the data)
        extras: dict[str, tuple[Callable[[], list], object]] = {
            "2. miniai": (list, dls),
            "3. miniai + ActivationStats": (lambda: [ActivationStats(lambda m: isinstance(m, GeneralRelu))], dls),
            "4. miniai + MixedPrecisionCB": (lambda: [MixedPrecisionCB()], mp_dls)}
        # name -> (factory of a timed run, its data); a run's factory builds its model untimed
        rows: dict[str, tuple[Callable[[], Callable[[], None]], object]] = {
            "1. hand loop": (hand, dls),
            **{name: (learner(extra, data), data) for name, (extra, data) in extras.items()}}
        compiled = None
        if not (args.quick or args.no_compile):
            compiled = miniai_learner(dls, device)
            compiled.compile()
            initial = {k: v.clone() for k, v in compiled.model.state_dict().items()}
            first = timed(lambda: quietly(lambda: compiled.fit(1, valid=False)), device)
            progress(f"bs {bs}: learn.compile() first epoch {first:.2f} s")

            def again() -> Callable[[], None]:
                compiled.model.load_state_dict(initial)
                return lambda: quietly(lambda: compiled.fit(1, valid=False))
            rows["4. miniai + learn.compile()"] = (again, dls)
        names = list(rows)
        warm_dls = get_dls(bs=bs, n_train=3 * bs, device=device, seed=0)
        for name in names:  # untimed: lazy initialisation (kernels, allocator, imports) is not per-epoch cost
            if name.startswith("1."):
                hand_epoch(reference_model().to(device), warm_dls.train.x, warm_dls.train.y, bs)
            elif name in extras:  # not the compiled learner: it has just run a whole epoch
                quietly(lambda: miniai_learner(warm_dls, device, extras[name][0]()).fit(1, valid=False))
        hand_name, others = names[0], names[1:]
        times: dict[str, list[float]] = {name: [] for name in rows}
        faults: dict[str, list[int]] = {name: [] for name in rows}
        paired: dict[str, list[float]] = {name: [] for name in others}  # the hand loop run next to each row
        for rep in range(reps):
            for i, name in enumerate(others[rep % len(others):] + others[:rep % len(others)]):  # rotated
                # a pair: the hand loop right before or after the row (alternating), under the same load
                pair = [hand_name, name] if (rep + i) % 2 == 0 else [name, hand_name]
                for run in pair:
                    timed_run, before = rows[run][0](), page_faults()
                    times[run].append(timed(timed_run, device))
                    faults[run].append(page_faults() - before)
                    progress(f"bs {bs} rep {rep + 1}/{reps}: {run} {times[run][-1]:.2f} s")
                paired[name].append(times[hand_name][-1])
        floor = statistics.median(times[hand_name]) / len(dls.train)  # seconds per batch
        for name in names:
            data = rows[name][1]
            n_batches = len(data.train)
            # paired: each run's time per batch over that of the hand loop run next to it, then the median of
            # those ratios; on a shared machine the load drifts more between reps than between neighbouring runs
            ratio = 1.0 if name == hand_name else statistics.median(
                t / n_batches / (h / len(dls.train)) for t, h in zip(times[name], paired[name]))
            extra_ms = (ratio - 1) * floor * 1e3
            out.append(f"| {name} | {bs} | {len(data.train.x)} | {n_batches} | {fmt_cell(times[name])} | "
                       f"{ratio:.3f} | {'' if name.startswith('1.') else f'{extra_ms:+.2f} ms'} | "
                       f"{statistics.median(faults[name]) / n_batches:,.0f} |")
        if compiled is not None:
            out.append(f"| 4. learn.compile(), first epoch | {bs} | {n_train} | {len(dls.train)} | {first:.2f} | "
                       f"{first / len(dls.train) / floor:.3f} | compilation included | |")
        print("\n".join(out[-len(names) - (compiled is not None):]), flush=True)

    # ---- data path
    dls_times = time_get_dls(1 if args.quick else 3)
    out += ["", "| get_dls() | median s (min-max) |", "|---|---|",
            f"| cold (empty disk cache, decode the IDX files) | {fmt_cell(dls_times['cold'])} |",
            f"| from the disk cache | {fmt_cell(dls_times['disk'])} |",
            f"| warm (in memory) | {fmt_cell(dls_times['warm'])} |",
            "", "| loader, one shuffled epoch | bs | images/s, median (min-max) | ratio |", "|---|---|---|---|"]
    for bs in sizes:
        ours, theirs = loader_throughput(bs, device, reps)
        out += [f"| miniai TensorLoader | {bs} | {statistics.median(ours):,.0f} ({min(ours):,.0f}-{max(ours):,.0f}) | "
                f"{statistics.median(ours) / statistics.median(theirs):.1f}x |",
                f"| DataLoader(TensorDataset) | {bs} | {statistics.median(theirs):,.0f} "
                f"({min(theirs):,.0f}-{max(theirs):,.0f}) | 1 |"]
    notes = ["", f"Each row: one training epoch (no validation), {reps} reps after an untimed warm-up, each run next "
             "to a run of row 1; ratio = the median over reps of (time per batch / that row-1 run's time per batch), "
             "a paired ratio, since the load on a shared machine drifts between reps; overhead / batch = "
             "(ratio - 1) x row 1's median time per batch.",
             "Row 1 computes no metrics, draws no progress bar and records nothing; row 2 does all three (accuracy and "
             "mean loss, a terminal progress bar written to /dev/null, lr and momentum) plus TrainLearner's NaN guard."]
    if any(bs < 256 for bs in sizes) and not args.quick and args.small_fraction < 1:
        notes.append(f"Batch sizes below 256 use the first {args.small_fraction:.0%} of the training set "
                     "(time budget); the per-batch overhead is what they show.")
    if slow_mp:
        notes.append(f"On the CPU the MixedPrecisionCB row (bfloat16) trains on the first {args.mp_images} images: "
                     "CPUs without native bf16 (AVX512-BF16/AMX) run its convolutions on a slow generic path.")
    if args.quick:
        notes.append("--quick: 2 reps on 10% of the data; not for the README.")
    print("\n" + "\n".join(out + notes))


if __name__ == "__main__":
    main()
