"""Command line: `python -m miniai train --epochs 3 --lr 2e-2 [--out DIR]` trains the reference CNN on Fashion-MNIST;
`python -m miniai train --recipe five` runs a whole training recipe (see miniai.recipes) and prints its accuracy,
with test-time augmentation where the recipe uses it, and the wall time since the process started."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import math
import os
import re
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "train", "positive_int", "positive_float", "data_dir", "out_dir", "device",
           "claimed"]


def seed(text: str) -> int:
    """argparse type: a seed `set_seed` takes, an integer in 0..2**32-1 (torch's CPU generator and NumPy's read 32
    bits: seeds 2**32 apart would be the same run)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..2**32-1 (torch and NumPy read 32 bits of a seed: "
                                         f"larger ones would repeat smaller ones' runs), got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (epochs, batch size, item counts), else argparse's usage and the reason."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


TINY = 1.1754943508222875e-38  # float32's smallest normal number, torch.finfo(torch.float32).tiny (no torch import)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (the learning rate), else argparse's usage and the reason."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    if value > 1e30:  # (AdamW's float32 arithmetic overflows on an lr near 3e38, in a traceback)
        raise argparse.ArgumentTypeError(f"must be at most 1e30, got {text!r}")
    if value < TINY:  # (the step's float32 arithmetic makes it 0: a run that trains nothing, and says it's done)
        raise argparse.ArgumentTypeError(f"must be at least {TINY:.1e} (float32's smallest normal number; an lr "
                                         f"below it is 0 in the step), got {text!r}")
    return value


def data_dir(text: str) -> str:
    """argparse type: a directory holding Fashion-MNIST, checked before any training (no file is read)."""
    from .sources import DataNotFoundError, check_data_dir
    try:
        check_data_dir(text, given_as="--data")
    except DataNotFoundError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def out_dir(text: str) -> str:
    """argparse type: a directory for the run's files, not a file (made, with its parents, before training)."""
    if not text:  # (a script's unset $OUTDIR): the run would save nothing
        raise argparse.ArgumentTypeError("must name a directory, got ''")
    text = os.path.expanduser(text)  # (--out=~/runs, which the shell leaves as it is: the home directory's)
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; --out names a directory for the run's files")
    for path in (Path(text), *Path(text).parents):  # (mkdir would say "File exists" of a dangling link on the way)
        if path.is_symlink() and not path.exists():
            raise argparse.ArgumentTypeError(f"{path} is a link to {os.path.realpath(path)}, which does not exist (a "
                                             "disk not mounted?): make that folder, remove the link, or choose "
                                             "another --out")
    return text


def device(text: str) -> str:
    """argparse type: a device torch knows and this machine has (cpu, cuda, cuda:1, mps)."""
    import torch
    try:
        dev = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:N or mps)") from e
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(dev.type, False) or (dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine")
    return text


_OUTPUTS = ("model.pt", "result.json", "log.csv", "loss.png", "schedule.png")  # what train writes to --out


class _UsageError(Exception):
    """A bad argument found by `train` (flags that don't combine; --n-train larger than the dataset); `main` shows
    it as argparse's usage error, so a caller of `train` gets the same refusal."""


_FLAGS = {"n_train": "--n-train", "n_valid": "--n-valid", "holdout": "--holdout"}  # get_dls's parameter -> the flag


def _as_flags(message: str) -> str:
    """get_dls's refusal in the command's words: 'n_train must ...' -> '--n-train must ...', 'holdout=5' ->
    '--holdout 5' (only in its own phrases: a path in a message may hold the same words)."""
    message = re.sub(r"^(n_train|n_valid|holdout) must", lambda m: f"{_FLAGS[m[1]]} must", message)
    return re.sub(r"(: |with )holdout=(\d+) ", r"\1--holdout \2 ", message)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m miniai` argument parser (one sub-command per job)."""
    parser = argparse.ArgumentParser(prog="python -m miniai", description=__doc__)
    jobs = parser.add_subparsers(dest="job", metavar="{train}", required=True)
    t = jobs.add_parser("train", help="train the reference CNN on Fashion-MNIST and print a metrics table")
    from .recipes import RECIPES, SCHEDULES  # the names only; the recipe itself is built in train()
    t.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help="a whole training recipe: " + "; ".join(f"{n}: {r.description}" for n, r in RECIPES.items())
                   + " (--epochs, --lr, --bs override its values)")
    t.add_argument("--epochs", type=positive_int, default=None,
                   help="number of epochs (default 3, or the recipe's)")
    t.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default 2e-2; with --recipe, the one-cycle's peak, default the recipe's)")
    t.add_argument("--bs", type=positive_int, default=None, help="batch size (default 1024, or the recipe's)")
    t.add_argument("--seed", type=seed, default=42, help="random seed (default 42)")
    t.add_argument("--device", type=device, default=None, help="cpu, cuda, mps (default: cuda, else mps, else cpu)")
    t.add_argument("--data", type=data_dir, default=None,
                   help="directory with the four Fashion-MNIST IDX files (.gz or plain) or a saved DatasetDict")
    t.add_argument("--out", type=out_dir, default=None,
                   help="directory for the run's files: the weights (model.pt), the result (result.json), the "
                        "metrics of each training and validation pass (log.csv), the loss curve (loss.png) and the "
                        "lr/momentum curves (schedule.png); a leading ~ is your home directory, even quoted")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier run in --out (without it, such a directory is refused)")
    t.add_argument("--n-train", type=positive_int, default=None, help="train on the first N images only (quick runs)")
    t.add_argument("--n-valid", type=positive_int, default=None, help="validate on the first N images only")
    t.add_argument("--holdout", type=positive_int, default=None,
                   help="validate on N training images held out of training (a fixed split) instead of the test set")
    t.add_argument("--sched", choices=list(SCHEDULES), default=None,
                   # argparse %-formats help strings: escape the recipes' own percent signs
                   help="lr schedule: " + "; ".join(f"{n}: {what}" for n, what in SCHEDULES.items()).replace("%", "%%")
                   + " (default none; not with --recipe, which has its own; with --out, its lr and momentum/beta1 "
                   "curves go to schedule.png; a per-batch curve is read once a step, so a fit of a few steps "
                   "skips over its peak and its warmup)")
    parser.train_parser = t  # (main shows train's own usage with the errors train() finds)
    return parser


def train(args: argparse.Namespace) -> float:
    """Run the `train` job; returns the final validation accuracy."""
    from dataclasses import replace

    import torch.nn.functional as F
    from torch import nn, optim

    from .callbacks import Accuracy, DeviceCB, MetricsCB, ProgressCB
    from .callbacks.ddp import DDPCB
    from .callbacks.scheduling import RecorderCB, _lr, _mom
    from .cache import valid_split
    from .data import get_dls
    from .distributed import is_main_process, rank, world_size
    from .supervised import TrainLearner
    from .models import GeneralRelu, get_model, init_weights
    from .recipes import RECIPES, check_one_cycle_room, make_sched_cb, recipe_learner
    from .utils import def_device, fix_malloc, model_device, set_seed

    if args.recipe and args.sched:  # else the recipe's one-cycle would silently replace the schedule asked for
        raise _UsageError(f"--sched {args.sched} does not combine with --recipe {args.recipe}, which has its own "
                          "one-cycle schedule: drop one of them")
    if args.overwrite and not args.out:  # the user meant to keep this run, and nothing would be saved
        raise _UsageError("--overwrite replaces the files of an earlier run in --out, and there is no --out: add "
                          "--out DIR to save this run")
    earlier = [name for name in _OUTPUTS if args.out and (Path(args.out) / name).exists()]
    links = [Path(args.out) / name for name in _OUTPUTS if args.out and (Path(args.out) / name).is_symlink()]
    broken = [link for link in links if not Path(os.path.realpath(link)).parent.is_dir()]
    if broken:  # a link into a folder that is not there: writing through it fails after training, the outputs
        # after it not saved (a link to a file not there yet, in a folder that is, is written through)
        raise _UsageError(f"--out {args.out}: {broken[0].name} is a link to {os.readlink(broken[0])}, whose folder "
                          "does not exist: make that folder, remove the link, or choose another --out")
    folders = [name for name in earlier if not (Path(args.out) / name).is_file()]
    if folders:  # --overwrite replaces files; it would stop at this one, the files before it already deleted
        raise _UsageError(f"--out {args.out}: {folders[0]} is a directory, not a file of an earlier run: move it "
                          "away, or choose another --out")
    # (rank 0's alone: under torchrun it may have moved the earlier run's files aside already, a moment ago)
    stale = sorted(Path(args.out).glob(".miniai-overwritten.*")) if args.out and is_main_process() else []
    for folder in stale:  # a killed --overwrite run (SIGKILL, or a power cut) could not put them back
        with contextlib.suppress(OSError):
            folder.rmdir()  # (empty, once they were moved back: nothing left to say)
        if folder.exists():  # nothing else knows of them
            raise _UsageError(f"--out {args.out} holds {folder.name}, the files of an earlier run that an --overwrite "
                              "run moved aside and, killed, could not put back: move them back "
                              f"(mv {shlex.quote(str(folder))}/* "
                              f"{shlex.quote(str(args.out))}/) or delete that folder, then run again")
    if earlier and not args.overwrite:  # else a second run with the same --out silently replaces the first one's
        raise _UsageError(f"--out {args.out} already holds a run ({', '.join(earlier)}): choose another directory, "
                          "or pass --overwrite to replace those files")
    device = args.device or def_device
    if device.startswith("cpu"):
        fix_malloc()  # before anything is allocated: see fix_malloc (MINIAI_MALLOC=default opts out)
    recipe = RECIPES[args.recipe] if args.recipe else None
    if recipe is not None:  # flags given explicitly override the recipe's values
        recipe = replace(recipe, **{field: value for field, value in (("epochs", args.epochs), ("bs", args.bs),
                                                                      ("max_lr", args.lr)) if value is not None})
        epochs, bs = recipe.epochs, recipe.bs
    else:
        epochs, bs, lr = args.epochs or 3, args.bs or 1024, args.lr or 2e-2
    set_seed(args.seed)
    try:
        dls = get_dls(bs=bs, path=args.data, n_train=args.n_train, n_valid=args.n_valid, holdout=args.holdout or 0)
    except (ValueError, KeyError) as e:  # e.g. --n-train larger than the dataset; a dataset without 'image'
        raise _UsageError(_as_flags(str(e).strip('"'))) from e
    shape, n_classes = dls.item_shape, len(dls.classes or ())
    unfit = (f"its images have {shape[0]} channels" if shape is not None and shape[0] != 1 else
             f"its images are {shape[1]}x{shape[2]}" if shape is not None and tuple(shape[1:]) != (28, 28) else
             f"it has {n_classes} classes" if n_classes > 10 else None)  # (another size: the CNN's output isn't 10
    # scores, and a recipe's crop is 28x28: it would train on without a word)
    if unfit:  # else a torch traceback part way into training
        raise _UsageError(f"--data {args.data}: {unfit}, and the command trains a 1-channel model with 10 outputs "
                          "for 28x28 images (Fashion-MNIST's shape): train other data from a script with a model "
                          "of its shape")
    if world_size() > 1:  # started by torchrun with several processes: train data-parallel
        dls.train.shard(rank(), world_size())  # now, so the schedule counts this rank's batches (DDPCB keeps it)
    metrics, progress, recorder = MetricsCB(accuracy=Accuracy()), ProgressCB(), RecorderCB(lr=_lr, mom=_mom)
    cbs = [metrics, progress, recorder] + ([DDPCB()] if world_size() > 1 else [])
    if args.out:
        from .callbacks.loggers import CSVLoggerCB
        cbs.append(CSVLoggerCB(Path(args.out) / "log.csv"))
    if recipe is not None:
        try:  # its one-cycle is built at fit: refuse now, before --overwrite removes anything
            check_one_cycle_room(f"recipe {args.recipe}'s one-cycle", epochs, len(dls.train))
        except ValueError as e:
            raise _UsageError(str(e)) from e
        learn = recipe_learner(recipe, dls, cbs, device=device)
    else:
        act = partial(GeneralRelu, leak=0.1, sub=0.4)
        model = get_model(act, norm=nn.BatchNorm2d).apply(partial(init_weights, leaky=0.1))
        try:
            sched_cb = make_sched_cb(args.sched or "none", epochs, len(dls.train))
        except ValueError as e:  # a one-cycle with no room for its peak: before --overwrite removes anything
            raise _UsageError(str(e)) from e
        cbs += [DeviceCB(device)] + ([sched_cb] if sched_cb else [])
        learn = TrainLearner(model, dls, F.cross_entropy, lr=lr, cbs=cbs, opt_func=optim.AdamW)
    one = [stop - start for start, stop in dls.train._spans()][-1:] == [1]  # a last batch of one image
    if one and not _trains_on_one(learn.model, shape):  # else BatchNorm's error after an epoch
        raise _UsageError(f"the {len(dls.train.x)} training images in batches of {bs} leave a last batch of 1 image "
                          "(on each process), on which the model's BatchNorm layers can't train: change --bs or "
                          "--n-train")
    if earlier and is_main_process():  # --overwrite: moved aside now (no mix of two runs), deleted once this run has
        args.aside = _move_aside(Path(args.out), earlier)  # saved its outputs, put back if it fails or is stopped
    # named now, while the data is there (get_dls cached it): after the fit, before model.pt, a --data folder moved
    # meanwhile would cost the trained model
    split = valid_split("fashion_mnist", args.data)  # (a DatasetDict's may be 'validation')
    record = _run_record(args, recipe, lr if recipe is None else recipe.max_lr, model_device(learn.model).type)
    fit_start = time.perf_counter()
    learn.fit(epochs)
    fit_s = time.perf_counter() - fit_start
    if not math.isfinite(metrics.last["valid_loss"]):  # weights huge but finite pass the NaN guard's check
        from .callbacks.guards import NonFiniteLossError
        raise NonFiniteLossError(f"the validation loss is {metrics.last['valid_loss']} after epoch {epochs - 1}: the "
                                 "weights blew up (the training loss was still finite), so no model is saved.")
    n_valid = len(dls.valid.y)  # what was validated on: --n-valid cuts the test set or the held-out images
    images = "test images" if split == "test" else f"images of split {split!r}"
    valid_on = (f"{n_valid} held-out training images" if args.holdout else f"the first {n_valid} {images}"
                if args.n_valid is not None else "the test set" if split == "test" else f"split {split!r}")
    result = {"command": getattr(args, "command", None),
              "recipe": args.recipe, "seed": args.seed, "epochs": epochs, "bs": bs,
              "world_size": world_size(),  # bs is per process: under torchrun the global batch is bs × world_size
              "accuracy": metrics.last["valid_accuracy"], "accuracy_tta": None, "valid_on": valid_on,
              **record}
    what = f"held-out ({n_valid} training images)" if args.holdout else "validation"
    on = f" (on {valid_on})" if not args.holdout and valid_on != "the test set" else ""
    if is_main_process():  # every rank has the same (all-reduced) metrics; one prints and writes
        print(f"{what} accuracy: {result['accuracy']:.4f}{on}", flush=True)
        if recipe is not None and recipe.tta:
            probs, targets = learn.tta()
            result["accuracy_tta"] = (probs.argmax(1) == targets).float().mean().item()
            print(f"{what} accuracy with TTA (the flip averaged in): {result['accuracy_tta']:.4f}{on}", flush=True)
        result.update(wall_s=process_seconds(), run_s=time.perf_counter() - getattr(args, "started", fit_start),
                      fit_s=fit_s, s_per_epoch=fit_s / epochs)
        print(f"wall time: {result['wall_s']:.1f} s since the process started (imports and data included); "
              f"{result['s_per_epoch']:.1f} s an epoch", flush=True)
    if args.out and is_main_process():
        import json

        import torch
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        args.saved = []  # (for the Ctrl-C and disk-full messages: what is on disk, complete)
        # on the CPU, so the file loads on a machine without the GPU it was trained on; the model first: a
        # result.json never reports a run whose model.pt is not there
        weights = {k: v.cpu() for k, v in learn.model.state_dict().items()}
        _write_whole(out / "model.pt", lambda part: torch.save(weights, part))
        args.saved.append("model.pt")
        _write_whole(out / "result.json", lambda part: part.write_text(json.dumps(result, indent=1) + "\n"))
        args.saved.append("result.json")
        _write_whole(out / "loss.png", lambda part: progress.plot_losses().savefig(part, dpi=100, format="png"))
        args.saved.append("loss.png")
        print(f"saved {out / 'model.pt'} and {out / 'loss.png'}", flush=True)
        _write_whole(out / "schedule.png", lambda part: recorder.plot().savefig(part, dpi=100, format="png"))
        print(f"saved {out / 'schedule.png'} (lr and momentum/beta1 against batch)", flush=True)
    return result["accuracy"]


def _write_whole(path: Path, write: Any) -> None:
    """`write(part)` a part file beside `path`, renamed to it once complete: a full disk or Ctrl-C never leaves a
    truncated output (a loss.png cut at 12 KB was said 'not written')."""
    part = path.with_name(f".{path.name}.part")
    try:
        write(part)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def _trains_on_one(model: Any, shape: tuple[int, ...]) -> bool:
    """Whether `model` trains on a batch of one item of `shape`: a BatchNorm of one value per channel (a
    BatchNorm1d of the logits) can't. Tried on a copy, on the CPU, the RNGs put back."""
    import copy

    import torch
    probe = copy.deepcopy(model).cpu().train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            probe(torch.zeros(1, *shape))
    except ValueError as e:
        if "Expected more than 1 value per channel" not in str(e):
            raise
        return False
    return True


def _move_aside(out: Path, names: list[str]) -> Path:
    """Move the earlier run's files `names` in `out` into a folder there, all or (if one won't move) none, and
    return the folder: `_settle_earlier` deletes it once this run has saved, or puts the files back."""
    aside = Path(tempfile.mkdtemp(prefix=".miniai-overwritten.", dir=out))  # (a new one: a pid can come again)
    moved: list[str] = []
    try:
        for name in names:
            (out / name).rename(aside / name)
            moved.append(name)
    except OSError as e:
        for back in moved:
            (aside / back).rename(out / back)
        aside.rmdir()
        raise _UsageError(f"--overwrite can't remove {out / name} ({e.strerror or e}), so it removed nothing: make "
                          "the earlier run's files removable, or choose another --out") from e
    return aside


def _settle_earlier(args: argparse.Namespace, saved: bool) -> None:
    """After an --overwrite run: delete the earlier run's files it moved aside if this run saved its outputs; else
    (an error, a NaN, Ctrl-C) put them back in place of this run's partial ones, so nothing of either is lost."""
    import shutil
    aside = getattr(args, "aside", None)
    if aside is None:
        return
    if not saved:
        for name in _OUTPUTS:  # this run's, partial: no mix of two runs
            (aside.parent / name).unlink(missing_ok=True)
        for f in aside.iterdir():
            f.rename(aside.parent / f.name)
        args.restored_earlier = True
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def claimed(out: str | None) -> Iterator[None]:
    """Make the directory `out` and hold it for this run (`miniai.utils.claim_dir`): a run started into it meanwhile
    is refused, where both would pass the check for an earlier run and write there. Directories made here are
    removed again when the run is refused (a usage error), if they stayed empty."""
    from .distributed import is_main_process
    from .utils import DirInUseError, claim_dir
    if not out or not is_main_process():  # (under torchrun, rank 0 writes the files)
        yield
        return
    try:  # now, not after the training: a parent that is a file, or no permission, would lose the whole run
        made = [d for d in (Path(out), *Path(out).parents) if not d.exists()]  # deepest first
        Path(out).mkdir(parents=True, exist_ok=True)
        release = claim_dir(Path(out), f"--out {out}")
    except DirInUseError as e:
        raise _UsageError(str(e)) from None
    except OSError as e:
        what = "write in the directory" if Path(out).is_dir() else "make the directory"  # (read-only: its lock file)
        raise _UsageError(f"--out {out}: can't {what} ({e.strerror or e})") from e
    try:
        yield
    except _UsageError:
        release()
        for d in made:
            with contextlib.suppress(OSError):  # (not empty: left as it is)
                d.rmdir()
        raise
    finally:
        release()


_STARTED = time.perf_counter()  # where /proc can't tell when the process started: when this module was imported


def process_seconds() -> float:
    """Seconds since this process started (from /proc on Linux, which counts the interpreter's own start-up)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: start time
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _STARTED


def _again(args: argparse.Namespace) -> str:
    """How a failed or stopped run is run again: with --overwrite when it left partial files in --out (its log.csv),
    which a plain run refuses as an earlier run's."""
    left = [name for name in _OUTPUTS if args.out and not args.overwrite and (Path(args.out) / name).exists()]
    return f" with --overwrite (--out {args.out} holds this run's partial {', '.join(left)})" if left else ""


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, a job scheduler, torchrun passing it on), raised as Ctrl-C is: every cleanup runs, and an
    --overwrite run puts the earlier run's files back."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises `_Terminated` in the main thread (elsewhere, or off Unix, torch's default stays)."""
    def stop(signum: int, frame: Any) -> None:
        raise _Terminated()
    try:
        before = signal.signal(signal.SIGTERM, stop)
    except (ValueError, AttributeError, OSError):  # not the main thread, or no SIGTERM here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


class _PipeSafe:
    """stdout (or stderr) that goes on when its reader has gone (`miniai train | head`) or it can't be written (a
    full disk): the run keeps training and saving, its printing goes to /dev/null, where the OSError would end it
    and lose it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _quiet(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:  # a gone reader (BrokenPipeError), a full disk
            self._quiet()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:  # a gone reader (BrokenPipeError), a full disk
            self._quiet()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m miniai` and the `miniai` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = "miniai" if argv is None and Path(sys.argv[0]).name == "miniai" else "python -m miniai"  # (the script)
    args.command = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else argv)  # pasted into a shell: the same
    args.started = time.perf_counter()  # (this run's own time: a script may call main several times)
    if args.job == "train":
        if args.data is None:  # --data was checked as it was parsed; $MINIAI_DATA names a directory just as firmly
            from .sources import DataNotFoundError, find_source
            try:
                find_source("fashion_mnist")
            except DataNotFoundError as e:
                parser.train_parser.error(str(e))
        from .callbacks.guards import NonFiniteLossError
        from .learner import CancelBatchException, CancelEpochException, CancelFitException, CancelStepException
        cancels = (CancelBatchException, CancelEpochException, CancelFitException, CancelStepException)
        stdout = sys.stdout
        if stdout is None:  # closed (`>&-`): the printing goes nowhere, the run trains and saves
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- (closed with the run, below)
        elif not isinstance(stdout, _PipeSafe):
            sys.stdout = _PipeSafe(stdout)
        stderr = sys.stderr  # (its reader gone too, `2>&1 | head`: a stop's message must not change the exit status)
        if stderr is not None and not isinstance(stderr, _PipeSafe):
            sys.stderr = _PipeSafe(stderr)
        try:
            with _sigterm_as_interrupt(), claimed(args.out):
                try:
                    train(args)
                except BaseException:
                    _settle_earlier(args, saved=False)
                    raise
                _settle_earlier(args, saved=True)
        except _UsageError as e:
            parser.train_parser.error(str(e))
        except NonFiniteLossError as e:  # its advice is for scripts (lr_find, GradClipCB, a checkpoint to resume)
            print(_diverged(parser, args, e), file=sys.stderr)
            return 1
        except OSError as e:
            if getattr(args, "saved", None) is None:  # not while saving: an error of the run, with its traceback
                raise
            kept = (f"--out {args.out} holds the earlier run's files again" if getattr(args, "restored_earlier", False)
                    else _saved_note(args))
            print(f"{parser.train_parser.prog}: error while saving the outputs: {e}. The training was over: {kept}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt as e:  # the fit's own note tells a script how to resume, which a command can't
            how, code = ("stopped (SIGTERM)", 143) if isinstance(e, _Terminated) else ("interrupted", 130)
            failed = e.__context__  # (Ctrl-C in a cleanup after the run failed: the learner's context, the cause)
            if isinstance(failed, NonFiniteLossError):
                print(_diverged(parser, args, failed), file=sys.stderr)
            elif isinstance(failed, Exception) and not isinstance(failed, cancels):
                print(f"{parser.train_parser.prog}: error: {type(failed).__name__}: {failed}", file=sys.stderr)
            if getattr(args, "restored_earlier", False):
                print(f"\n{how}: nothing of this run was kept, and --out {args.out} holds the earlier run's "
                      "files again (the command keeps no checkpoints: run it again to train from the start)",
                      file=sys.stderr)
                return code
            if getattr(args, "saved", None) is not None:  # the training was over: say what is on disk
                print(f"\n{how} while saving the outputs: {_saved_note(args)}", file=sys.stderr)
                return code
            again = _again(args)
            print(f"\n{how}: the command keeps no checkpoints, so nothing of this run was saved"
                  + (f" (--out {args.out} holds only what was written so far)" if args.out else "")
                  + f"; run it again{again} to train from the start", file=sys.stderr)
            return code  # what a shell reports for a command stopped by Ctrl-C (130) or SIGTERM (143)
        finally:
            if stdout is None:
                sys.stdout.close()
            sys.stdout, sys.stderr = stdout, stderr
    return 0


def _diverged(parser: Any, args: argparse.Namespace, e: Exception) -> str:
    """The command's message for a run whose loss went NaN: the guard's advice is for scripts (lr_find, GradClipCB, a
    checkpoint to resume), a command's is a lower --lr."""
    what = str(e).split(" Try a lower lr")[0].split(" The last good checkpoint")[0]
    kept = f" --out {args.out} holds the earlier run's files again." if getattr(args, "restored_earlier", False) else ""
    return (f"{parser.train_parser.prog}: error: {what} Run the command again{_again(args)} with a lower --lr (it "
            f"keeps no checkpoints, so it starts over).{kept}")


def _run_record(args: argparse.Namespace, recipe: Any, lr: float, device: str) -> dict[str, Any]:
    """What result.json needs beside the command to tell the run apart: the data read (a $MINIAI_DATA folder is in
    no command), the lr and schedule in effect, the cuts of the data, the device and the versions."""
    import platform

    import torch

    from . import __version__
    from .sources import find_source
    source = find_source("fashion_mnist", args.data)
    where = source.where if source.kind == "hub" else str(Path(source.where).resolve())
    data = {"idx": "IDX files in", "saved": "saved DatasetDict", "hub": "hub dataset"}[source.kind] + f" {where}"
    sched = "the recipe's one-cycle" if recipe is not None else args.sched or "none"
    return {"data": data + (" ($MINIAI_DATA)" if args.data is None and os.environ.get("MINIAI_DATA") else ""),
            "lr": lr, "sched": sched, "n_train": args.n_train, "n_valid": args.n_valid, "holdout": args.holdout,
            "device": device, "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                           "miniai": __version__}}


def _saved_note(args: argparse.Namespace) -> str:
    """Which outputs a run stopped while saving them wrote whole (log.csv, written during the fit: its rows)."""
    missing = [n for n in _OUTPUTS if n not in args.saved and n != "log.csv"]
    if not args.saved:
        return (f"none of this run's outputs is complete ({', '.join(missing)} not written); run it again"
                f"{_again(args)} to train from the start")
    return (f"{', '.join(args.saved)} in --out {args.out} are this run's, complete"
            + (f"; {', '.join(missing)} not written" if missing else ""))


def cli() -> int:
    """The `miniai` command (and `python -m miniai`): `main`, in a process that ends right after it."""
    # when the process ends, leave its objects (millions, with torch's compiler, which any torch optimizer imports)
    # to the OS, not to a last collection (0.7 s); at exit, so a script running this (runpy) goes on collecting
    atexit.register(gc.freeze)
    return main()


if __name__ == "__main__":
    sys.exit(cli())
