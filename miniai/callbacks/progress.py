"""ProgressCB: progress bars and the metrics table in notebooks and terminals, plain lines in logs."""
from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

import torch

from ..checks import metrics_kept
from ..distributed import is_main_process
from ..learner import Callback, Learner
from ..utils import len_or_none, loss_reduction
from ..weighting import batch_n_items
from .metrics import format_row, format_value, no_row
from .records import keep_records, nothing_recorded, restore_if_refused

__all__ = ["ProgressCB", "ConsoleBar", "in_notebook"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where HTML progress bars and live plots can be displayed)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = shell.get_ipython()
    # Jupyter's kernel shell, and Colab's (a subclass of it; Spyder's console is one too, but shows no HTML)
    return type(ipython).__name__ == "ZMQInteractiveShell" or ipython is not None and "google.colab" in sys.modules


class _HostScalars:
    """Scalars read to the host in bulk, without making the CPU wait for the device.

    A CPU scalar is read as it comes (`item()` costs less than keeping a detached reference). Elsewhere each batch
    only keeps a reference to its loss (on CUDA `loss.item()` would make the CPU wait for the GPU): `flush` stacks
    the kept ones into one tensor and copies it to the host, on CUDA asynchronously into pinned memory with an
    event behind it, read once the event says it is done; `drain` moves what has arrived into `values`.
    """

    def __init__(self) -> None:
        self.values: list[float] = []
        self._kept: list[torch.Tensor] = []
        self._pending: deque[tuple[torch.Tensor, Any]] = deque()

    @property
    def count(self) -> int:
        """Every scalar pushed so far, arrived or not."""
        return len(self.values) + len(self._kept) + sum(len(host) for host, _ in self._pending)

    def push(self, value: torch.Tensor) -> None:
        if value.is_cpu and value.numel() == 1 and not self._kept and not self._pending:  # (kept in order)
            self.values.append(value.item())
            return
        value = value.detach()
        self._kept.append(value if value.numel() == 1 else value.float().mean())  # reduction='none': its mean

    def flush(self) -> None:
        """Start copying the kept scalars to the host (one stack, one copy)."""
        if not self._kept:
            return
        stacked = torch.stack([v.reshape(()) for v in self._kept]).float()
        self._kept = []
        if stacked.device.type == "cuda":
            with torch.cuda.device(stacked.device):  # the event goes on the copy's stream (cuda:1 need not be current)
                host = stacked.to("cpu", non_blocking=True)  # non_blocking to the CPU lands in pinned memory
                event = torch.cuda.Event()
                event.record()
            self._pending.append((host, event))
        else:  # on the CPU (and MPS, which has no cheap events) reading is the computation itself
            self.values.extend(stacked.tolist())

    def drain(self, wait: bool = False) -> list[float]:
        """Move every value that has arrived into `values` (with `wait`: flush and take all, a sync for pass ends)."""
        if wait:
            self.flush()
        while self._pending and (wait or self._pending[0][1].query()):
            host, event = self._pending.popleft()
            if wait:
                event.synchronize()
            self.values.extend(host.tolist())
        return self.values


_READ_EVERY = 0.2  # seconds between reads of the running loss (bar comment, live graph)


class ConsoleBar:
    """A one-line terminal progress bar redrawn in place, and lines written above it.

    What fastprogress's console bar shows, drawn by ProgressCB a few times a second, with no per-batch work and
    no import cost (fastprogress takes a quarter of a second to import; it still draws the notebook bars).
    """

    def __init__(self, n_epochs: int, out: Any = None) -> None:
        self.n_epochs, self.out = n_epochs, out
        self._width = 0  # characters of the bar on screen now
        self._start = time.perf_counter()

    def start(self) -> None:
        """A new pass begins: its elapsed time and estimate count from now."""
        self._start = time.perf_counter()

    def show(self, epoch: int | str, split: str, done: int, total: int | None, comment: str = "") -> None:
        """Redraw the bar: `done` of `total` batches of this pass (of epoch `epoch`, from 0, or SWACB's 'swa')."""
        elapsed = time.perf_counter() - self._start
        if total:
            filled = round(20 * done / total)
            left = elapsed / done * (total - done) if done else 0.0
            bar = f"|{'█' * filled}{'-' * (20 - filled)}| {done}/{total} [{_clock(elapsed)}<{_clock(left)}]"
        else:
            bar = f"{done} batches [{_clock(elapsed)}]"
        which = f"{epoch + 1}/{self.n_epochs}" if isinstance(epoch, int) else epoch
        self._draw(f"epoch {which} {split} {bar} {comment}".rstrip())

    def write(self, line: str) -> None:
        """Print a line above the bar (the bar is redrawn at its next update)."""
        self._draw(line, end="\n")

    def close(self) -> None:
        """Clear the bar from the screen."""
        self._draw("")

    def _draw(self, text: str, end: str = "") -> None:
        out = self.out or sys.stdout
        out.write("\r" + text.ljust(self._width) + end)
        out.flush()
        self._width = 0 if end else len(text)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class ProgressCB(Callback):
    """Shows progress: a bar with the running loss and the metrics table; with `plot=True` a live loss graph (in a
    notebook; in a script draw it after the fit with `plot_losses()`).

    In a notebook it uses fastprogress's HTML bars (and graph); in a terminal, a one-line bar of its own
    (`ConsoleBar`); when stdout is not a terminal (CI logs, `| tee`), no bars at all, just a header and one plain
    line per pass; `mode` ('notebook', which needs a Jupyter kernel, 'terminal' or 'plain') picks one. Train losses
    per batch are kept in `losses` and valid losses per epoch in `valid_losses` (after `valid_at` training batches)
    for `plot_losses()`; `losses` is
    filled in bulk (a few times a second, and complete at the end of each validation pass and of the fit), since
    reading each loss as it comes costs more than the rest of this callback. Under DDP, rank 0 alone shows and
    keeps them: the per-batch losses are its own part of each global batch's; the rows are the whole set's.
    """
    order = 30  # after MetricsCB, whose rows it shows
    _fitted = True  # (a ProgressCB pickled before there was _fitted has none of its own: taken for one fitted)

    def __init__(self, plot: bool = False, mode: str | None = None, graph_every: float = 1.0) -> None:
        if mode not in (None, "notebook", "terminal", "plain"):
            raise ValueError(f"mode must be 'notebook', 'terminal', 'plain' or None (detect), got {mode!r}")
        self.plot, self.mode, self.graph_every = plot, mode, graph_every
        self.losses: list[float] = []
        self.valid_losses: list[float] = []
        self.valid_at: list[int] = []  # the training batches seen before each valid loss: its x in the plots
        self._start = 0  # the run's batch index of this fit's first batch (resumed fits start later)
        self._fitted = False  # whether it has been in a fit (a plot with no losses says why)
        # every attribute is set here, so cleanup_fit works whatever failed before it (another before_fit, say)
        self._train_losses = _HostScalars()
        self._curves = True  # whether this fit draws the loss curves (not an evaluation, fit(train=False))
        self._mode, self._main, self._header_done = "plain", True, False
        self._last_graph = self._last_read = 0.0
        self._metrics: Any = None
        self._taken: tuple | None = None  # (MetricsCB's `_log` of its instance, if any, its log_fn): put back after
        self._forward: Any = None  # the `_log` MetricsCB had: a subclass's (the course's WandBCB), or its own
        self.mbar: Any = None
        self.pbar: Any = None
        self._pass_length: int | None = None
        self._sum_loss = False  # (set each fit: the loss's reduction is 'sum', its curve drawn per item)
        self._graphs = False  # (set each fit: whether it draws the live graph)
        self._epochs_begun: list = []  # this fit's epochs whose first pass began (the notebook's epochs bar)

    def before_fit(self, learn: Learner) -> None:
        bars = [cb for cb in learn.cbs if isinstance(cb, ProgressCB)]
        if len(bars) > 1:  # each takes over MetricsCB's rows: they would reach one bar, or one that was removed
            raise ValueError(f"this fit has {len(bars)} ProgressCBs (the learner's, and one given to fit(cbs=...)?): "
                             "keep one, e.g. learn.rm_cb() the learner's, or set its plot/mode instead of adding "
                             "another")
        self._sum_loss = loss_reduction(learn.loss_func) == "sum"
        self._fitted = True
        tty = sys.stdout is not None and sys.stdout.isatty()  # (None: stdout closed)
        self._mode = self.mode or ("notebook" if in_notebook() else "terminal" if tty else "plain")
        self._main = is_main_process()
        if not self._main:  # under DDP only rank 0 draws bars and prints rows (all ranks log the same rows)
            self._mode = "plain"
        if self._mode == "notebook" and not in_notebook():  # fastprogress's HTML bars would fail at the first update
            raise ValueError("ProgressCB(mode='notebook') needs a running Jupyter kernel to draw its HTML bars, and "
                             "this is a script or a plain Python/IPython shell: pass mode='terminal', or leave mode "
                             "unset to pick the display by itself")
        self._curves = "train" in learn.passes  # an evaluation leaves the curves of the last fit that trained
        if self._curves:
            keep_records(self, "_train_losses", "losses", "valid_losses", "valid_at", "_start")
            self._train_losses = _HostScalars()
            self.losses, self.valid_losses, self.valid_at = self._train_losses.values, [], []
            # a resumed run's batches are counted from the start of the run, like RecorderCB's (a guess without len)
            self._start = learn.start_epoch * (len_or_none(getattr(learn.dls, "train", None)) or 0)
        self._header_done, self._last_graph, self._last_read = False, 0.0, 0.0
        self._give_back()  # (a copy of the learner made during a fit holds what that fit took)
        self._metrics = metrics = metrics_kept(learn)  # (set by this fit's MetricsCB, order 10; not an old one)
        if self._metrics is not None:  # its rows come here first (as the course's ProgressCB took them), then go
            # on to its `_log`: a subclass's, or log_fn's; MetricsCB's own printer gives way to this table
            self._taken = vars(metrics).get("_log"), metrics.log_fn
            self._forward, metrics._log = metrics._log, self._log
            if metrics.log_fn is metrics._printer:
                metrics.log_fn = no_row  # (not None: a subclass's _log may call it)
        self.mbar = None
        if self._mode == "terminal":
            self.mbar = ConsoleBar(learn.n_epochs)  # counted from the start of the run, also when resumed
        elif self._mode == "notebook":  # (its bars are moved by hand, as the terminal's: learn.epochs and learn.dl
            # stay what learner.py's table says, not bars wrapping them, which have no len)
            from fastprogress.fastprogress import NBMasterBar  # here: a quarter of a second to import
            self.mbar = NBMasterBar(learn.epochs)
        self._graphs, self._epochs_begun = self.plot and self._mode == "notebook", []  # (lr_find: no graph)

    def _give_back(self) -> None:
        """Put back MetricsCB's `_log` and `log_fn` as they were before this fit took its rows."""
        if self._taken is not None:
            own_log, self._metrics.log_fn = self._taken
            vars(self._metrics).pop("_log", None)
            if own_log is not None:
                self._metrics._log = own_log
            self._taken = self._forward = None

    def _log(self, row: dict[str, Any]) -> None:
        if self._curves and row.get("train") == "valid" and "loss" in row and isinstance(row.get("epoch"), int):
            # (not SWACB's pass, epoch 'swa')
            self.valid_losses.append(row["loss"])
            self.valid_at.append(self._start + self._train_losses.count)
        self._show(row)
        self._forward(row)

    def _show(self, row: dict[str, Any]) -> None:
        if not self._main:
            return
        if self._mode == "notebook":
            if not self._header_done:
                self.mbar.write(list(row), table=True)
            self.mbar.write([format_value(v) for v in row.values()], table=True)
        else:
            lines = ([format_row(row, header=True)] if not self._header_done else []) + [format_row(row)]
            for line in lines:
                if self.mbar is not None:
                    self.mbar.write(line)
                else:
                    print(line, flush=True)
        self._header_done = True

    def before_epoch(self, learn: Learner) -> None:
        if self._mode == "terminal":
            self._pass_length = len_or_none(learn.dl)
            self.mbar.start()
            self.mbar.show(learn.epoch, "train" if learn.training else "valid", 0, self._pass_length)
        elif self.mbar is not None:
            if learn.epoch in learn.epochs and learn.epoch not in self._epochs_begun:  # (not SWACB's 'swa')
                self.mbar.update(len(self._epochs_begun))  # epochs begun before: the first shows the bars
                self._epochs_begun.append(learn.epoch)
            if len_or_none(learn.dl) is not None:  # a bar needs the length; else no bar
                from fastprogress.fastprogress import NBProgressBar
                self.pbar = NBProgressBar(range(len(learn.dl)), leave=False, parent=self.mbar)
                self.pbar.update(0)

    def after_batch(self, learn: Learner) -> None:
        if self.pbar is not None:  # (fastprogress redraws a few times a second)
            self.pbar.update(learn.iter + 1)
        if learn.training:  # (a summed loss per item, as MetricsCB logs it and the valid points are)
            self._train_losses.push(learn.loss / batch_n_items(learn) if self._sum_loss else learn.loss)
        now = time.perf_counter()
        if now - self._last_read < _READ_EVERY:  # the bar redraws a few times a second: read losses as often
            return
        self._last_read = now
        if not learn.training:  # the terminal bar of a validation pass moves too (the notebook bar moved above)
            if self._mode == "terminal" and self.mbar is not None:
                self.mbar.show(learn.epoch, "valid", learn.iter + 1, self._pass_length)
            return
        self._train_losses.flush()
        if self.mbar is None:
            return
        values = self._train_losses.drain()
        comment = f"loss {values[-1]:.3f}" if values else ""
        if self._mode == "terminal":
            self.mbar.show(learn.epoch, "train", learn.iter + 1, self._pass_length, comment)
        elif values and self.pbar is not None:
            self.pbar.comment = comment
        if self._graphs and now - self._last_graph > self.graph_every:
            self._update_graph(learn)

    def after_epoch(self, learn: Learner) -> None:
        if learn.training:
            self._train_losses.flush()  # starts the copy; the validation pass runs while it lands
        else:
            self._train_losses.drain(wait=True)
            if self._graphs:
                self._update_graph(learn)

    def cleanup_epoch(self, learn: Learner) -> None:
        self.pbar = None

    def cleanup_fit(self, learn: Learner) -> None:
        self._train_losses.drain(wait=True)
        if self._graphs and self._last_graph and self.mbar is not None:  # the graph ends with every loss (valid=False
            # redraws it nowhere else); no bar: this fit was refused before it made one
            self._update_graph(learn)
        restore_if_refused(self, learn)  # (a fit refused before its first batch leaves the last one's curves)
        self._give_back()
        if isinstance(self.mbar, ConsoleBar):
            self.mbar.close()
        elif self.mbar is not None:
            self.mbar.on_iter_end()
        self.mbar = None

    def _update_graph(self, learn: Learner) -> None:
        train = [list(range(self._start, self._start + len(self.losses))), self.losses]
        # fastprogress draws each graph as ax.plot(*graph): the format string marks each valid loss, so one alone
        # (fit(1), a resume with one epoch left) shows, where a line through a single point draws nothing
        valid = [self.valid_at, self.valid_losses, "o-"]
        self.mbar.update_graph([train, valid])
        self._last_graph = time.perf_counter()

    def plot_losses(self, ax: Any = None) -> Any:
        """Train loss per batch and valid loss per epoch against the batch index; returns the Figure."""
        if not (self.losses or self.valid_losses):  # (valid losses alone are drawn: training passes cancelled)
            raise nothing_recorded("ProgressCB", self._fitted, "learn.fit(1, cbs=[progress])",
                                   "it records the train loss of each training batch and the valid loss MetricsCB "
                                   "logs each epoch: an evaluation fit(train=False) (which keeps the last training "
                                   "fit's losses), or a fit whose training passes were cancelled before a batch ended "
                                   "and that has no MetricsCB, records none. Plot after a fit that trains "
                                   "(learn.fit(1))")
        from ..plotting import plot_losses  # plotting imports matplotlib: only when asked for
        return plot_losses(self.losses, self.valid_losses, self.valid_at, ax=ax, start=self._start)
