"""Loggers: MetricsCB's rows to a CSV file (`CSVLoggerCB`), metrics, losses and activations to TensorBoard.

Both write only on rank 0 (`miniai.distributed.is_main_process`), stand aside during `lr_find` (its diverging run
is a look, not training), and start writing at the first training pass of a fit, so a fit without one
(`fit(train=False)`, used to evaluate) leaves what they wrote alone. A run resumed with `fit(resume=...)` keeps
what was logged before the checkpoint's epoch, drops what a run that went on from it wrote later, and continues, so
the log reads as that of a run never stopped; a log another run has written to since is refused (the CSV by its
rows, TensorBoard by the fits its `state_dict` names).
"""
from __future__ import annotations

import csv
import itertools
import importlib.util
import json
import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from ..checks import metrics_kept, own_place, warn
from ..distributed import is_main_process
from ..learner import Callback, Learner
from ..utils import claim_dir, link_target, loss_reduction, opt_lr, replaced_atomically
from .activations import ActivationStats
from .lr_finder import LRFinderCB
from ..weighting import batch_n_items

__all__ = ["CSVLoggerCB", "TensorBoardCB"]


def _logs_this_fit(learn: Learner) -> bool:
    """False on ranks other than 0 (every rank has the same rows) and in lr_find's fit."""
    return is_main_process() and not any(isinstance(cb, LRFinderCB) for cb in learn.cbs)


# ---------------------------------------------------------------- CSV

class CSVLoggerCB(Callback):
    """Writes MetricsCB's row of each pass to the CSV file `path`, plus the lr: one line per pass, as it ends.

    Columns: `epoch`, `train` ('train' or 'valid'), each metric, `loss`, `time` (seconds) — the values of
    `learn.metrics.history`, unrounded — and `lr`, param group 0's lr that the pass's last training batch ran with
    (for a validation row, that of the training pass before it). Each line is flushed and fsynced as it is
    written, so a crash leaves a readable file.
    A fresh fit refuses a file that is there already (an earlier run's log, or an earlier fit's of this learner),
    before it trains: `append=True` keeps its rows and adds this fit's (same columns required), `overwrite=True`
    starts it anew (without reading it). A resumed fit (`fit(resume=...)`) keeps the rows of the epochs before
    the checkpoint's, drops any later ones (a run that went on from that checkpoint) and appends; a file whose last
    rows are another run's (appended after the one resumed) is refused, untouched. Needs a MetricsCB.
    """
    order = 35  # after MetricsCB (10), whose row it writes at after_epoch
    overwrite = False  # (a CSVLoggerCB pickled before there was overwrite= has none of its own)

    def __init__(self, path: str | os.PathLike, append: bool = False, overwrite: bool = False) -> None:
        if append and overwrite:
            raise ValueError("CSVLoggerCB(append=True, overwrite=True): append keeps the file's rows, overwrite "
                             "throws them away; pass one")
        self.path, self.append, self.overwrite = Path(path).expanduser(), append, overwrite
        _refuse_a_directory(self.path)
        self.columns: list[str] = []
        self._metrics: Any = None
        self._active = False  # this fit writes (rank 0, not lr_find)
        self._file: Any = None
        self._writer: Any = None
        self._lr: Any = None
        self._rows_before = 0  # len(metrics.history) when this pass began: a row is written only if one was added
        self._release: Any = None  # lets go of the file this fit logs to (claim_dir)

    def __getstate__(self) -> dict[str, Any]:
        # a copy (a learner copied mid-fit) has no open file: its own fit opens one
        return {**vars(self), "_file": None, "_writer": None, "_release": None}

    def before_fit(self, learn: Learner) -> None:
        self._close()
        _refuse_a_directory(self.path)  # again: one may have been made there since __init__
        self._metrics, self._lr = metrics_kept(learn), None
        if self._metrics is None:
            raise ValueError("CSVLoggerCB writes the rows MetricsCB logs, and this fit has no MetricsCB: add "
                             "MetricsCB() (it logs train_loss and valid_loss) to cbs")
        self.columns = ["epoch", "train", *self._metrics.metrics, "loss", "time", "lr"]
        self._active = _logs_this_fit(learn)
        if self._active and "train" in learn.passes:  # held while it logs: another run's fit into the same file
            self.path.parent.mkdir(parents=True, exist_ok=True)  # would find it free and write over this one's rows
            self._release = claim_dir(self.path.parent, f"CSVLoggerCB's file {self.path}", f".{self.path.name}.lock",
                                      kind="CSVLoggerCB")
        fresh = self._active and "train" in learn.passes and learn.resumed_from is None and not (
            self.append or self.overwrite)  # (an evaluation writes nothing)
        if fresh and self.path.exists() and not _replaceable(self.path):
            i = own_place(learn, self)  # (another logger passed to the fit would run beside this one)
            how = ("pass CSVLoggerCB(path, append=True) to add this fit's rows to it, overwrite=True to start it anew, "
                   "or log to another path") if i is None else (
                f"this CSVLoggerCB is the learner's own: learn.cbs[{i}].append = True adds this fit's rows to it, "
                f"learn.cbs[{i}].overwrite = True starts it anew, or learn.rm_cb(learn.cbs[{i}]) and log to another "
                "path")
            raise FileExistsError(f"{self.path} is there already (an earlier run's log, or an earlier fit's of this "
                                  f"learner), and a fresh fit would replace it: {how}")

    def before_epoch(self, learn: Learner) -> None:
        if self._active and self._file is None and learn.training:
            self._open(learn)
        self._rows_before = len(self._metrics.history)

    def _open(self, learn: Learner) -> None:
        resumed = learn.resumed_from is not None
        # a fresh fit without append throws the old rows away: it never reads them (the file may not even be a CSV)
        header, rows = _read_csv(self.path) if resumed or self.append else (None, [])
        if resumed:
            rows = _kept_rows(rows, header, learn.start_epoch, self.path, self._metrics.history)
        if rows and header != self.columns:
            fix = ("give the resumed fit the run's metrics, or log to another path" if resumed
                   else "log to another path, or pass overwrite=True instead of append=True to start the file anew")
            raise ValueError(f"{self.path} has the columns {header}, this fit logs {self.columns}: {fix}")
        _write_atomically(self.path, [self.columns, *rows])
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)

    def after_batch(self, learn: Learner) -> None:
        if learn.training and self._file is not None:
            self._lr = opt_lr(learn.opt)  # a dict read: no device sync

    def after_epoch(self, learn: Learner) -> None:
        if self._file is None or len(self._metrics.history) == self._rows_before:
            return
        row = self._metrics.history[-1]
        lr = self._lr if self._lr is not None else opt_lr(learn.opt)
        self._writer.writerow([row[name] for name in self.columns[:-1]] + [float(lr)])
        self._file.flush()
        os.fsync(self._file.fileno())  # once per pass: a crash or power loss keeps every finished row

    def cleanup_fit(self, learn: Learner) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._release is not None:
            self._release()
        self._file = self._writer = self._release = None


def _refuse_a_directory(path: Path) -> None:
    """Raise if `path` is a directory (taken for an earlier log, it failed late, naming a temporary file)."""
    if path.is_dir():
        raise IsADirectoryError(f"CSVLoggerCB writes one file; {path} is a directory: give a file in it, e.g. "
                                f"{path / 'log.csv'}")


def _replaceable(path: Path) -> bool:
    """Whether a fresh fit may replace the file there: an empty one, or a CSVLoggerCB header alone (a fit that
    failed at its start, maybe with other metrics). Anything else is a run's log or another program's file, to
    keep (any one-line file was taken for a header and replaced)."""
    if not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # (-sig: a byte-order mark, as Excel saves)
            lines = list(itertools.islice((line for line in csv.reader(f) if line), 2))  # (two say enough)
    except (UnicodeDecodeError, csv.Error):  # not a UTF-8 CSV: something else's
        return False
    header = lines[0] if len(lines) == 1 else []
    return not lines or header[:2] == ["epoch", "train"] and header[-3:] == ["loss", "time", "lr"]


def _read_csv(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    """(header, rows) of a CSV file; (None, []) if there is none. A row cut short by a crash is left out."""
    if not path.is_file():
        return None, []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # (as _replaceable: a BOM, as Excel saves)
            lines = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 CSV file ({e}), so its rows can't be kept: log to another path "
                         "(or start the file anew: overwrite=True instead of append=True)") from None
    if not lines:
        return None, []
    header = lines[0]
    return header, [row for row in lines[1:] if len(row) == len(header)]


def _kept_rows(rows: list[list[str]], header: list[str] | None, start_epoch: int, path: Path,
               history: list[dict] | None = None) -> list[list[str]]:
    """The rows a run resumed at `start_epoch` keeps: those of its earlier epochs; earlier runs' rows (append=True).
    With the run's `history` (MetricsCB's rows, as the checkpoint restored them), its rows must be the file's last."""
    if not rows:
        return []
    if header is None or "epoch" not in header:
        raise ValueError(f"{path} has no 'epoch' column, so the rows before the resumed epoch can't be told apart: "
                         "pass CSVLoggerCB a new path, or the file the run being resumed wrote")
    # SWACB's 'swa' row ends a run: it counts as after every epoch
    epochs = [int(e) if e.isdigit() else math.inf for e in (row[header.index("epoch")] for row in rows)]
    # the run being resumed is the last stretch of rows whose epochs never go down; rows before it are older runs
    start = max([i for i in range(1, len(epochs)) if epochs[i] < epochs[i - 1]], default=0)
    own = [row for row, epoch in zip(rows[start:], epochs[start:]) if epoch < start_epoch]
    if history is not None:
        logged = [[str(row.get(c)) for c in header if c != "lr"] for row in history
                  if isinstance(row.get("epoch"), int) and row["epoch"] < start_epoch]
        if (own or logged) and not _runs_rows([[cell for c, cell in zip(header, row) if c != "lr"] for row in own],
                                              logged):
            raise ValueError(f"{path}: its last run's rows (lines {start + 2} on) are not those of the run resumed, "
                             f"which logged {len(logged)} row(s) before epoch {start_epoch}: they are another run's. "
                             "Log the resumed run to another path (CSVLoggerCB(new_path)); the file is kept")
    return rows[:start] + own


def _runs_rows(file_rows: list[list[str]], logged: list[list[str]]) -> bool:
    """Whether a file's last stretch of rows (lr aside) is the resumed run's, whose rows its checkpoint restored
    (`logged`): it ends with them (rows before them: an earlier run's that ended at epoch 0) or is some of them in a
    row (the logger was left out of some of the run's fits). A run that restored none (checkpointed without a
    MetricsCB) logged none: no rows are its own."""
    if not (file_rows and logged):
        return False
    if len(file_rows) >= len(logged):
        return file_rows[len(file_rows) - len(logged):] == logged
    return any(logged[i:i + len(file_rows)] == file_rows for i in range(len(logged) - len(file_rows) + 1))


def _write_atomically(path: Path, lines: list[list[Any]]) -> None:
    """Write a CSV file through a temporary file and a rename: a crash leaves the old file or the new one."""
    link_target(path).parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)


# ---------------------------------------------------------------- TensorBoard

class TensorBoardCB(Callback):
    """Logs to TensorBoard: MetricsCB's values per pass, the train loss and lr per batch, activation histograms.

    Two runs under `log_dir`, because each TensorBoard run has one step axis to cut back on resume:
    - `log_dir/epoch`, step = epoch: `train_loss`, `valid_loss`, `valid_<metric>`... (MetricsCB's `last` names;
      only with a MetricsCB); with `hist=True`, per layer of the learner's ActivationStats, the histogram of
      |activations| over the training pass (`activations/<i>_<Layer>`), and the mean over its batches of each
      batch's mean and std (`.../batch_mean`, `.../batch_std`: plot_stats's curves, one point per pass; a pass's
      own std would also count how far the batch means moved).
    - `log_dir/batch`, step = batch number from the start of the run (epoch × len(dls.train) + batch index, so a
      resumed run continues the curve): `loss` (each training batch's, rank 0's under DDP) and `lr` (group 0).
    Losses are kept as device tensors and read in one transfer at the end of each training pass (no sync per batch).
    A fresh fit starts both runs anew: TensorBoard hides what earlier fits wrote to `log_dir`, with a warning (use
    one log_dir per run to keep them). A resumed fit hides what was written at or after the resumed epoch
    (`purge_step`), and is refused before it loads the checkpoint if `log_dir` shows another run's epochs before that
    one (a fresh run logged there since, or another branch of the run): the curve would join them to this fit's.
    Each fit names its part of the log, and the log's parts are in the checkpoint (`state_dict`) and in
    `log_dir/miniai_run`.
    Needs the tensorboard package: `pip install tensorboard` (miniai's extra: `pip install -e '.[tensorboard]'`).
    """
    order = 35  # after MetricsCB (10), whose row it writes at after_epoch

    def __init__(self, log_dir: str | os.PathLike, hist: bool = False) -> None:
        if importlib.util.find_spec("tensorboard") is None:  # torch.utils.tensorboard needs it, and imports it late
            raise ModuleNotFoundError("TensorBoardCB needs the tensorboard package, which is an optional extra of "
                                      "miniai: pip install tensorboard (or, in a checkout of miniai, "
                                      "pip install -e '.[tensorboard]')")
        self.log_dir, self.hist = Path(log_dir).expanduser(), hist
        self.writers: dict[str, Any] = {}  # 'epoch', 'batch' -> SummaryWriter, during a fit
        self._active = False
        self._metrics: Any = None
        self._stats: ActivationStats | None = None
        self._per_epoch: int | None = None
        self._losses: list[torch.Tensor] = []
        self._sum_loss = False  # (set each fit: the loss's reduction is 'sum', written per item as MetricsCB logs it)
        self._lrs: list[float] = []
        self._steps: list[int] = []
        self._written: list[int] = []  # per hooked layer: its batches already written
        self._n_batches = 0
        self._rows_before = 0  # len(metrics.history) when this pass began
        self.parts: list[list[Any]] = []  # [fit's name, first epoch] of each fit whose epochs the log shows, in order
        self._resumed: tuple[Path, int] | None = None  # (checkpoint, epoch) a training fit resumes from

    def __getstate__(self) -> dict[str, Any]:
        # a copy (a learner copied mid-fit) has no open writer: its own fit opens them
        return {**vars(self), "writers": {}}

    def state_dict(self) -> dict[str, Any]:
        """The fits whose epochs the log shows: a fit resumed from the checkpoint checks that `log_dir` shows them."""
        return {"parts": [list(part) for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the saved log's parts, refusing a `log_dir` that shows others before the epoch resumed from
        (`fit(resume=...)` calls this after before_fit, before it loads anything into the learner)."""
        parts = [list(part) for part in state["parts"]]
        marker = self.log_dir / "miniai_run"
        if self._resumed is not None and marker.is_file():
            file, start = self._resumed
            try:
                shown = json.loads(marker.read_text())
            except ValueError:  # (not ours to read: nothing to compare)
                shown = None
            if shown is not None and _before(shown, start) != _before(parts, start):
                raise ValueError(f"{self.log_dir} holds the TensorBoard log of another run than the one resumed from "
                                 f"{file} (or of another branch of it), written there since: TensorBoard would draw "
                                 f"its epochs before {start} and this fit's after as one curve. Resume with "
                                 "TensorBoardCB(another log_dir); the learner and the log are as they were.")
        self.parts = parts

    def before_fit(self, learn: Learner) -> None:
        self._close()
        self._sum_loss = loss_reduction(learn.loss_func) == "sum"
        self._metrics = metrics_kept(learn)
        stats = [cb for cb in learn.cbs if isinstance(cb, ActivationStats)]  # (one recording training batches)
        self._stats = next((cb for cb in stats if cb.on_train), stats[0] if stats else None)
        if self.hist and self._stats is None:
            raise ValueError("TensorBoardCB(hist=True) writes the histograms an ActivationStats records, and this fit "
                             "has none: add ActivationStats(...) to cbs, or pass hist=False")
        if self.hist and not self._stats.on_train:  # it would write nothing, every epoch, without a word
            raise ValueError("TensorBoardCB(hist=True) writes the training passes' histograms, and this fit's "
                             "ActivationStats records no training batch (on_train=False): let it (on_train=True), "
                             "or pass hist=False")
        try:
            self._per_epoch = len(learn.dls.train)
        except TypeError:  # a loader without a length: batches are counted as they come
            self._per_epoch = None
            if learn.resumed_from is not None:
                warn("TensorBoardCB: dls.train has no length, so the batch steps of this resumed fit can't "
                     "continue the run's: they start again at 0")
        self._losses, self._lrs, self._steps, self._n_batches = [], [], [], 0
        self._active = _logs_this_fit(learn)
        training = self._active and "train" in learn.passes
        self._resumed = (learn.resumed_from, learn.start_epoch) if training and learn.resumed_from else None
        self.parts = []  # (a resume loads the run's)
        if training:  # now: a path that can't be a folder fails before anything trains
            self.log_dir.mkdir(parents=True, exist_ok=True)

    def before_epoch(self, learn: Learner) -> None:
        if self._active and learn.training and self._stats is not None:  # the pass's histograms start here (not
            # at the last write: ActivationStats(on_valid=True) records the validation batches in between)
            self._written = [len(getattr(hook, "stats", ([], [], []))[2]) for hook in self._stats.hooks]
        self._rows_before = len(self._metrics.history) if self._metrics is not None else 0

    def _open(self, learn: Learner) -> None:
        from torch.utils.tensorboard import SummaryWriter  # here: an optional extra, imported only to write
        start, marker = learn.start_epoch, self.log_dir / "miniai_run"
        if learn.resumed_from is None and marker.is_file():  # (the files stay: TensorBoard reads past their events)
            warn(f"TensorBoardCB: {self.log_dir} holds the log of an earlier fit, which TensorBoard hides from now "
                 "on: this fit is a run of its own, drawn in its place. To see both, give each fit its own log_dir")
        self.parts = _before(self.parts, start) + [[uuid.uuid4().hex, start]]  # this fit's part, from its epoch
        marker.write_text(json.dumps(self.parts) + "\n")
        for name, purge_step in (("epoch", start), ("batch", start * (self._per_epoch or 0))):
            directory = self.log_dir / name
            _wait_past_newest(directory)
            # purge_step: readers drop this run's earlier events at steps >= it (a fresh fit: all of them)
            self.writers[name] = SummaryWriter(str(directory), purge_step=purge_step)

    def after_batch(self, learn: Learner) -> None:
        if not (self._active and learn.training):
            return
        if not self.writers:  # opened at the first batch, not before: a fit refused before it (another callback's
            self._open(learn)  # before_epoch) hides none of the last fit's events
        loss = learn.loss.detach() / batch_n_items(learn) if self._sum_loss else learn.loss.detach()
        self._losses.append(loss)  # a reference: reading it now would make the CPU wait
        self._lrs.append(opt_lr(learn.opt))
        self._steps.append(learn.epoch * self._per_epoch + learn.iter if self._per_epoch else self._n_batches)
        self._n_batches += 1

    def after_epoch(self, learn: Learner) -> None:
        if not self.writers or self._metrics is None or len(self._metrics.history) == self._rows_before:
            return
        row, split = self._metrics.history[-1], "train" if learn.training else "valid"
        # SWACB's pass of the averaged model (epoch 'swa'): as swa_valid_<name>, at the step after the last epoch
        step, prefix = (learn.epoch, "") if isinstance(learn.epoch, int) else (learn.n_epochs, f"{learn.epoch}_")
        for name, value in row.items():
            if name not in ("epoch", "train", "time"):
                self.writers["epoch"].add_scalar(f"{prefix}{split}_{name}", value, step)

    def cleanup_epoch(self, learn: Learner) -> None:
        if not (self.writers and learn.training):
            return
        self._write_batches()
        if self.hist:
            self._write_activations(learn.epoch)
        for writer in self.writers.values():
            writer.flush()

    def cleanup_fit(self, learn: Learner) -> None:
        self._close()

    def _write_batches(self) -> None:
        if not self._losses:
            return
        losses = [loss.reshape(()) if loss.numel() == 1 else loss.float().mean() for loss in self._losses]
        values = torch.stack(losses).float().tolist()  # one transfer (and sync) per pass
        writer = self.writers["batch"]
        for step, loss, lr in zip(self._steps, values, self._lrs):
            writer.add_scalar("loss", loss, step)
            writer.add_scalar("lr", float(lr), step)
        self._losses, self._lrs, self._steps = [], [], []

    def _write_activations(self, epoch: int) -> None:
        """Per hooked layer, the |activation| histogram summed over the training pass's batches."""
        stats, writer = self._stats, self.writers["epoch"]
        low, high = stats.range
        edges = torch.linspace(low, high, stats.bins + 1, dtype=torch.float64)
        centers = (edges[:-1] + edges[1:]) / 2
        for i, hook in enumerate(stats.hooks):
            means, stds, hists = getattr(hook, "stats", ([], [], []))
            new = slice(self._written[i], len(hists))
            self._written[i] = len(hists)
            if new.start >= new.stop:
                continue
            # one transfer per layer: [histogram summed over the pass, mean of the means, mean of the stds]
            summary = torch.cat([torch.stack(hists[new]).sum(0), torch.stack(means[new]).mean()[None],
                                 torch.stack(stds[new]).mean()[None]]).cpu().double()  # MPS has no float64
            counts, mean, std = summary[:-2], float(summary[-2]), float(summary[-1])
            tag = f"activations/{i}_{type(hook.module).__name__}"
            writer.add_scalar(f"{tag}/batch_mean", mean, epoch)  # (not the pass's mean and std: the means of the
            writer.add_scalar(f"{tag}/batch_std", std, epoch)  # batches' own, what plot_stats draws per batch)
            filled = counts.nonzero()
            if len(filled) == 0:  # every value fell outside the histogram's range
                continue
            first, last = int(filled[0]), int(filled[-1]) + 1
            # TensorBoard reads bucket i as [limit i-1, limit i], the first from `min`: so from the first filled bin to
            # the last. The histogram holds bin counts, not values: min, max and the sums come from edges and centres
            counts, mid = counts[first:last], centers[first:last]
            writer.add_histogram_raw(tag, min=float(edges[first]), max=float(edges[last]), num=float(counts.sum()),
                                     sum=float((mid * counts).sum()), sum_squares=float((mid**2 * counts).sum()),
                                     bucket_limits=edges[first + 1:last + 1].tolist(), bucket_counts=counts.tolist(),
                                     global_step=epoch)

    def _close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
        self._losses, self._lrs, self._steps = [], [], []


def _before(parts: list[list[Any]], epoch: int) -> list[list[Any]]:
    """The parts of a log that show its epochs before `epoch` (each part shows from its first epoch on)."""
    return [part for part in parts if part[1] < epoch]


_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(\d+)\.")


def _wait_past_newest(directory: Path) -> None:
    """Sleep until the clock is past the second in which the newest event file in `directory` was created (<= 1 s).

    Why: readers take a run's files in name order, and a name starts with its creation second, then the pid and a
    counter compared as text ('10' < '9'); a resumed fit's file must come after the one it purges.
    """
    stamps = [int(m.group(1)) for f in directory.glob("events.out.tfevents.*") if (m := _EVENT_FILE.match(f.name))]
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)
