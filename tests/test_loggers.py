"""CSVLoggerCB and TensorBoardCB: rows equal MetricsCB's history, TensorBoard reads back what was logged, and a run
interrupted and resumed from a checkpoint logs what the run never stopped logs."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR

from miniai.callbacks.activations import ActivationStats
from miniai.callbacks.checkpoint import CheckpointCB
from miniai.callbacks.loggers import CSVLoggerCB, TensorBoardCB
from miniai.callbacks.metrics import MetricsCB
from miniai.callbacks.scheduling import BatchSchedCB, RecorderCB, _lr
from miniai.learner import Callback, CancelFitException, Learner
from tests.synth import LossLog, tiny_learner

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def quiet_metrics(**metrics) -> MetricsCB:
    cb = MetricsCB(**metrics)
    cb.log_fn = lambda row: None
    return cb


def read_rows(path: Path) -> list[dict]:
    """The CSV's rows with numbers parsed: epoch an int, train a string, the rest floats."""
    with open(path, newline="") as f:
        return [{k: int(v) if k == "epoch" else v if k == "train" else float(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def without(rows: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in keys} for row in rows]


def read_tb(log_dir: Path) -> dict:
    """{run: {tag: [(step, value or bucket counts)]}} for the 'epoch' and 'batch' runs under log_dir."""
    out = {}
    for run in ("epoch", "batch"):
        acc = EventAccumulator(str(log_dir / run), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        tags = acc.Tags()
        out[run] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]}
        out[run].update({tag: [(e.step, list(e.histogram_value.bucket), e.histogram_value.num)
                               for e in acc.Histograms(tag)] for tag in tags["histograms"]})
    return out


class StopAt(Callback):
    """Cancels the fit when pass (epoch, training) is about to start."""

    def __init__(self, epoch: int, training: bool) -> None:
        self.at = (epoch, training)

    def before_epoch(self, learn: Learner) -> None:
        if (learn.epoch, learn.training) == self.at:
            raise CancelFitException()


# ---------------------------------------------------------------- CSV

def test_csv_rows_equal_the_metrics_history_plus_the_lr_of_the_last_training_batch(tmp_path):
    from torcheval.metrics import MeanSquaredError
    metrics, rec = quiet_metrics(mse=MeanSquaredError()), RecorderCB(lr=_lr)
    sched = BatchSchedCB(partial(StepLR, step_size=2, gamma=0.5))  # the lr changes inside each epoch (3 batches)
    learn = tiny_learner([metrics, CSVLoggerCB(tmp_path / "sub" / "log.csv"), rec, sched])
    learn.fit(3)
    rows = read_rows(tmp_path / "sub" / "log.csv")
    assert list(rows[0]) == ["epoch", "train", "mse", "loss", "time", "lr"]
    assert without(rows, "lr") == metrics.history  # exact: floats are written unrounded
    last_lrs = [rec.recs["lr"][3 * e + 2] for e in range(3)]  # 3 training batches per epoch
    assert [r["lr"] for r in rows] == [lr for lr in last_lrs for _ in ("train", "valid")]


def test_a_log_through_a_symlink_is_written_where_the_link_points(tmp_path):
    """CSVLoggerCB(append=True) on a link to a shared log replaced the link with a plain file: the shared log never
    got the rows; a link to a file not there yet was replaced too, and the file never made."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "run").mkdir()
    learn = tiny_learner([quiet_metrics()])
    learn.fit(1, cbs=[CSVLoggerCB(tmp_path / "shared" / "log.csv")])
    (tmp_path / "run" / "log.csv").symlink_to(tmp_path / "shared" / "log.csv")
    learn.fit(1, cbs=[CSVLoggerCB(tmp_path / "run" / "log.csv", append=True)])
    assert (tmp_path / "run" / "log.csv").is_symlink() and len(read_rows(tmp_path / "shared" / "log.csv")) == 4
    (tmp_path / "run" / "new.csv").symlink_to(tmp_path / "shared" / "new.csv")  # (dangling: made by the fit)
    learn.fit(1, cbs=[CSVLoggerCB(tmp_path / "run" / "new.csv")])
    assert (tmp_path / "run" / "new.csv").is_symlink() and len(read_rows(tmp_path / "shared" / "new.csv")) == 2


def test_a_fresh_fit_refuses_an_earlier_log_unless_told_to_append_or_overwrite(tmp_path):
    """A fresh fit replaced the file without a word: a script run twice, or a learner's second fit, lost the first
    run's log."""
    learn = tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv")])
    learn.fit(2)
    before = (tmp_path / "log.csv").read_bytes()
    with pytest.raises(FileExistsError, match=r"log.csv is there already .*append = True.*overwrite = True"):
        learn.fit(1)
    with pytest.raises(FileExistsError, match=r"log.csv is there already"):
        tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv")]).fit(1)
    assert (tmp_path / "log.csv").read_bytes() == before
    with pytest.raises(ValueError, match=r"append=True, overwrite=True.*pass one"):
        CSVLoggerCB(tmp_path / "log.csv", append=True, overwrite=True)


@pytest.mark.parametrize("text", ["best_accuracy=0.931 (run of 3 Dec, keep!)\n", "a,b\nnotes\n",
                                  "epoch,train,loss,time,lr\n0,train\n"])
def test_a_fresh_fit_replaces_only_an_empty_file_or_its_own_header_alone(tmp_path, text):
    """Any one-line file was taken for a header alone (a fit that failed at its start) and replaced without a
    word, and so was a file whose lines had other lengths than its first."""
    (tmp_path / "log.csv").write_text(text)
    with pytest.raises(FileExistsError, match="is there already"):
        tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv")]).fit(1)
    assert (tmp_path / "log.csv").read_text() == text
    for kept in ("", "\n", "epoch,train,loss,time,lr\n",  # nothing, or the header a failed fit left: replaced,
                 "epoch,train,accuracy,loss,time,lr\n", "\ufeffepoch,train,loss,time,lr\r\n"):  # of other metrics too
        (tmp_path / "log.csv").write_text(kept)
        tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv")]).fit(1)
        assert len(read_rows(tmp_path / "log.csv")) == 2


def test_overwrite_starts_the_file_anew_and_append_keeps_it(tmp_path):
    learn = tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv", overwrite=True)])
    learn.fit(2)
    learn.fit(1)
    assert [(r["epoch"], r["train"]) for r in read_rows(tmp_path / "log.csv")] == [(0, "train"), (0, "valid")]
    learn = tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv", append=True)])
    learn.fit(1)
    assert len(read_rows(tmp_path / "log.csv")) == 4
    from torcheval.metrics import MeanSquaredError
    other = tiny_learner([quiet_metrics(mse=MeanSquaredError()), CSVLoggerCB(tmp_path / "log.csv", append=True)])
    with pytest.raises(ValueError, match=r"has the columns .* overwrite=True instead of append=True") as refused:
        other.fit(1)
    assert len(read_rows(tmp_path / "log.csv")) == 4  # refused before anything was written
    assert "drop append=True" not in str(refused.value)  # (its advice was that, and a fresh fit refuses the file)
    tiny_learner([quiet_metrics(mse=MeanSquaredError()), CSVLoggerCB(tmp_path / "log.csv", overwrite=True)]).fit(1)
    assert len(read_rows(tmp_path / "log.csv")) == 2


def test_a_log_saved_again_with_a_byte_order_mark_is_appended_to_and_resumed(tmp_path):
    """(probe P22, session 23) A log re-saved as UTF-8 with a BOM (Excel's "CSV UTF-8", pandas' 'utf-8-sig') was
    refused: append=True said its columns ['\\ufeffepoch', ...] differ and advised overwrite=True, and a resume said
    it has no 'epoch' column."""
    log = tmp_path / "log.csv"

    def learner(ck="ck", **kwargs):
        return tiny_learner([quiet_metrics(), CSVLoggerCB(log, **kwargs), CheckpointCB(tmp_path / ck, keep=None)])
    learner().fit(2)
    log.write_text(log.read_text(encoding="utf-8"), encoding="utf-8-sig")
    learner().fit(2, resume=tmp_path / "ck" / "epoch_0001.pt")
    assert [(r["epoch"], r["train"]) for r in read_rows(log)] == [(e, t) for e in (0, 1) for t in ("train", "valid")]
    log.write_text(log.read_text(encoding="utf-8"), encoding="utf-8-sig")
    learner("ck2", append=True).fit(1)
    with open(log, newline="", encoding="utf-8-sig") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_a_csv_path_that_is_a_directory_is_refused_naming_a_file_in_it(tmp_path):
    """A directory for path was taken for an earlier run's log (FileExistsError telling to pass append=True), and
    with append=True or overwrite=True the fit failed at its first pass, naming a temporary file next to it."""
    told = f"CSVLoggerCB writes one file; {tmp_path} is a directory: give a file in it, e.g. {tmp_path / 'log.csv'}"
    with pytest.raises(IsADirectoryError, match=re.escape(told)):
        CSVLoggerCB(tmp_path)
    loggers = [CSVLoggerCB(tmp_path / "logs", **kwargs) for kwargs in ({}, {"append": True}, {"overwrite": True})]
    (tmp_path / "logs").mkdir()  # made there after the callbacks: refused at the fit
    for logger in loggers:
        learn = tiny_learner([quiet_metrics(), logger])
        weights = [p.detach().clone() for p in learn.model.parameters()]
        with pytest.raises(IsADirectoryError, match=r"logs is a directory: give a file in it, e.g. .*logs/log.csv"):
            learn.fit(1)
        assert all(torch.equal(a, b) for a, b in zip(weights, learn.model.parameters()))  # refused before training
    assert [p.name for p in tmp_path.iterdir()] == ["logs"] and not any((tmp_path / "logs").iterdir())


def test_csv_needs_a_metrics_callback(tmp_path):
    with pytest.raises(ValueError, match="no MetricsCB: add MetricsCB()"):
        tiny_learner([CSVLoggerCB(tmp_path / "log.csv")]).fit(1)


def test_rows_written_before_a_crash_are_in_the_file(tmp_path):
    class Boom(Callback):
        def before_epoch(self, learn: Learner) -> None:
            if learn.epoch == 1 and not learn.training:
                raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv"), Boom()]).fit(3)
    assert [(r["epoch"], r["train"]) for r in read_rows(tmp_path / "log.csv")] == [(0, "train"), (0, "valid"),
                                                                                    (1, "train")]


def test_lr_find_validation_only_fits_and_other_ranks_leave_the_logs_alone(tmp_path, monkeypatch):
    csv_path, tb_dir = tmp_path / "log.csv", tmp_path / "tb"
    learn = tiny_learner([quiet_metrics(), CSVLoggerCB(csv_path), TensorBoardCB(tb_dir)])
    learn.fit(1)
    before = csv_path.read_text(), sorted(p.name for p in tb_dir.rglob("*"))
    learn.lr_find(plot=False, max_epochs=1)
    learn.fit(1, train=False)  # evaluating
    assert (csv_path.read_text(), sorted(p.name for p in tb_dir.rglob("*"))) == before
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)  # what torchrun sets: is_main_process() is False before a process group exists
    other = tmp_path / "rank1"
    tiny_learner([quiet_metrics(), CSVLoggerCB(other / "log.csv"), TensorBoardCB(other / "tb")]).fit(1)
    assert not other.exists()


# ---------------------------------------------------------------- TensorBoard

def test_tensorboard_reads_back_the_metrics_per_pass_and_the_loss_and_lr_per_batch(tmp_path):
    metrics, losses = quiet_metrics(), LossLog()
    sched = BatchSchedCB(partial(StepLR, step_size=2, gamma=0.5))
    rec = RecorderCB(lr=_lr)
    tiny_learner([metrics, TensorBoardCB(tmp_path / "tb"), losses, sched, rec]).fit(3)
    tb = read_tb(tmp_path / "tb")
    assert set(tb["epoch"]) == {"train_loss", "valid_loss"}
    for split in ("train", "valid"):
        assert tb["epoch"][f"{split}_loss"] == [(r["epoch"], pytest.approx(r["loss"], rel=1e-6))
                                                for r in metrics.history if r["train"] == split]
    assert tb["batch"]["loss"] == [(i, pytest.approx(v, rel=1e-6)) for i, v in enumerate(losses.losses)]
    assert tb["batch"]["lr"] == [(i, pytest.approx(v, rel=1e-6)) for i, v in enumerate(rec.recs["lr"])]


@pytest.mark.parametrize("on_valid", [False, True])
def test_tensorboard_histograms_of_the_activation_stats_per_training_pass(tmp_path, on_valid):
    """With ActivationStats(on_valid=True), epoch 1's "training pass" histogram held epoch 0's validation batches
    too (everything recorded since the last write)."""
    astats = ActivationStats(lambda m: isinstance(m, nn.ReLU), bins=10, range=(0, 2), on_valid=on_valid)
    learn = tiny_learner([TensorBoardCB(tmp_path / "tb", hist=True), astats])
    learn.model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    learn.fit(2)
    tb = read_tb(tmp_path / "tb")["epoch"]
    (means, stds, hists), = astats.stats  # 3 training batches an epoch (then the validation ones, on_valid)
    per_epoch = 3 + len(learn.dls.valid) * on_valid
    assert len(hists) == 2 * per_epoch
    for epoch in (0, 1):
        counts = hists[per_epoch * epoch:per_epoch * epoch + 3].sum(0)
        step, buckets, num = tb["activations/0_ReLU"][epoch]
        filled = counts.nonzero()
        assert step == epoch and num == counts.sum()
        assert buckets == counts[int(filled[0]):int(filled[-1]) + 1].tolist()  # from the first to the last filled bin
        this_pass = slice(per_epoch * epoch, per_epoch * epoch + 3)
        # named for what they are: a mean over the batches of each batch's mean and std (the tags mean and std
        # claimed the pass's, whose std also counts how far the batch means moved)
        assert tb["activations/0_ReLU/batch_mean"][epoch] == (epoch, pytest.approx(float(means[this_pass].mean())))
        assert tb["activations/0_ReLU/batch_std"][epoch] == (epoch, pytest.approx(float(stds[this_pass].mean())))


def test_tensorboard_hist_needs_activation_stats(tmp_path):
    with pytest.raises(ValueError, match=r"add ActivationStats\(...\) to cbs"):
        tiny_learner([TensorBoardCB(tmp_path, hist=True)]).fit(1)
    # one recording validation batches only left every epoch's histograms unwritten, without a word
    with pytest.raises(ValueError, match=r"records no training batch \(on_train=False\)"):
        tiny_learner([TensorBoardCB(tmp_path, hist=True), ActivationStats(on_train=False, on_valid=True)]).fit(1)


def test_a_fresh_fit_starts_the_tensorboard_run_anew(tmp_path):
    """...and says so: the earlier fit's curves were hidden without a word (CSVLoggerCB refuses an existing file;
    probe U)."""
    learn = tiny_learner([quiet_metrics(), TensorBoardCB(tmp_path / "tb")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit(2)
    assert not any("TensorBoard" in str(w.message) for w in caught)
    with pytest.warns(UserWarning, match=r"TensorBoardCB: .*tb holds the log of an earlier fit, which TensorBoard "
                                         r"hides from now on.*its own log_dir"):
        learn.fit(1)
    tb = read_tb(tmp_path / "tb")
    assert [step for step, _ in tb["epoch"]["train_loss"]] == [0]
    assert tb["epoch"]["train_loss"][0][1] == pytest.approx(learn.metrics.history[0]["loss"], rel=1e-6)
    assert [step for step, _ in tb["batch"]["loss"]] == [0, 1, 2]


def test_missing_tensorboard_is_an_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what find_spec reports for a package not installed
    with pytest.raises(ModuleNotFoundError,
                       match=r"pip install tensorboard \(or, in a checkout of miniai, pip install -e '\.\[tensorboard\]'\)"):
        TensorBoardCB("runs/x")


def test_importing_and_building_the_loggers_imports_no_tensorboard():
    code = ("import sys; from miniai.callbacks.loggers import CSVLoggerCB, TensorBoardCB; TensorBoardCB('x'); "
            "CSVLoggerCB('y'); print([m for m in sys.modules if 'tensorboard' in m])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- resuming

def logged_run(root: Path, n_epochs: int = 4, stop: tuple[int, bool] | None = None, resume: Path | None = None
               ) -> Learner:
    """A fit logging to root/log.csv and root/tb, checkpointing every epoch; cancelled before pass `stop`."""
    cbs = [quiet_metrics(), CSVLoggerCB(root / "log.csv"), TensorBoardCB(root / "tb", hist=True),
           ActivationStats(lambda m: isinstance(m, nn.Linear)), CheckpointCB(root / "ckpt", keep=None),
           BatchSchedCB(partial(StepLR, step_size=2, gamma=0.5))]
    learn = tiny_learner(cbs + ([StopAt(*stop)] if stop else []))
    learn.fit(n_epochs, resume=resume)
    return learn


@pytest.mark.parametrize("stop, resume_from", [
    ((2, False), 2),  # stopped inside epoch 2 (its training pass logged, not checkpointed): from the newest checkpoint
    ((3, False), 2),  # from an older checkpoint than the newest: what the run logged after it is dropped
])
def test_an_interrupted_and_resumed_run_logs_what_the_uninterrupted_run_logs(tmp_path, stop, resume_from):
    whole = logged_run(tmp_path / "whole")
    logged_run(tmp_path / "cut", stop=stop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CheckpointCB says it moved later checkpoints aside
        resumed = logged_run(tmp_path / "cut", resume=tmp_path / "cut" / "ckpt" / f"epoch_{resume_from:04d}.pt")
    rows = read_rows(tmp_path / "cut" / "log.csv")
    assert without(rows, "lr") == resumed.metrics.history  # the kept rows and the restored history agree
    assert without(rows, "time") == without(read_rows(tmp_path / "whole" / "log.csv"), "time")
    assert len(rows) == 8 and whole.metrics.history[-1]["loss"] == resumed.metrics.history[-1]["loss"]
    assert read_tb(tmp_path / "cut" / "tb") == read_tb(tmp_path / "whole" / "tb")


def test_a_resume_logging_other_columns_is_told_to_log_the_runs_metrics_not_to_drop_append(tmp_path):
    """A resumed fit with a metric the run did not log was told to 'drop append=True', which it had not given and
    which a resume ignores (it keeps the run's rows)."""
    from torcheval.metrics import MeanSquaredError
    learn = tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv"), CheckpointCB(tmp_path / "ckpt")])
    learn.fit(2)
    other = tiny_learner([quiet_metrics(mse=MeanSquaredError()), CSVLoggerCB(tmp_path / "log.csv"),
                          CheckpointCB(tmp_path / "ckpt")])
    with pytest.raises(ValueError, match="has the columns .*: give the resumed fit the run's metrics") as info, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the resume names the state it drops)
        other.fit(3, resume=tmp_path / "ckpt")
    assert "append" not in str(info.value)


def test_a_new_event_file_sorts_after_one_made_in_the_same_second(tmp_path):
    """Readers take a run's files in name order; names start with the creation second, then compare '10' < '9'."""
    import time

    from miniai.callbacks.loggers import _wait_past_newest
    stamp = int(time.time())
    (tmp_path / f"events.out.tfevents.{stamp:010d}.host.1.9").touch()
    _wait_past_newest(tmp_path)
    assert int(time.time()) > stamp


def test_resuming_keeps_earlier_runs_rows_of_an_appended_file():
    from miniai.callbacks.loggers import _kept_rows
    header = ["epoch", "train", "loss"]
    first = [[str(e), s, "1.0"] for e in (0, 1) for s in ("train", "valid")]
    second = [[str(e), s, "2.0"] for e in (0, 1, 2) for s in ("train", "valid")]
    assert _kept_rows(first + second, header, 1, Path("log.csv")) == first + second[:2]
    assert _kept_rows(second, header, 0, Path("log.csv")) == []


def test_overwrite_replaces_a_file_that_is_not_utf8_without_reading_it(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes("epoch,note\n0,caf\xe9\n".encode("latin-1"))  # not UTF-8: reading it would fail
    tiny_learner([quiet_metrics(), CSVLoggerCB(path, overwrite=True)]).fit(1)
    assert [(r["epoch"], r["train"]) for r in read_rows(path)] == [(0, "train"), (0, "valid")]


def test_appending_to_a_file_that_is_not_utf8_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes("epoch,note\n0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="log.csv is not a UTF-8 CSV file.*another path.*overwrite=True instead of "
                                         "append=True"):
        tiny_learner([quiet_metrics(), CSVLoggerCB(path, append=True)]).fit(1)


# ---------------------------------------------------------------- found by a hostile read: copies and sum losses

def _copy_at(event, fit_kwargs_fn, learn):
    """A deepcopy of `learn` made by a callback at `event` of a fit with the given extra arguments."""
    import copy

    from miniai.learner import Callback
    got = {}

    class Snap(Callback):
        pass
    setattr(Snap, event, lambda self, lrn: got.setdefault("copy", copy.deepcopy(lrn)))
    learn.fit(**fit_kwargs_fn(Snap()))
    return got["copy"]


def test_a_copy_made_mid_fit_keeps_only_the_learners_own_callbacks(tmp_path):
    """It kept the fit's temporary callbacks, resume's ResumeCB too: the copy's next fit reloaded the checkpoint
    over weights the user had set (or failed with KeyError: 'model')."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from miniai.callbacks.checkpoint import CheckpointCB
    from miniai.data import DataLoaders, TensorLoader
    from miniai.supervised import TrainLearner
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    y = (x.sum(1) > 0).long()
    dls = DataLoaders(TensorLoader(x, y, 8, shuffle=True, seed=1), TensorLoader(x[:16].clone(), y[:16].clone(), 8))
    TrainLearner(nn.Linear(4, 2), dls, F.cross_entropy, lr=0.1).fit(1, cbs=[CheckpointCB(tmp_path)])
    for event in ("before_fit", "after_epoch"):
        learn = TrainLearner(nn.Linear(4, 2), dls, F.cross_entropy, lr=0.1)
        own = [type(cb).__name__ for cb in learn.cbs]
        copied = _copy_at(event, lambda snap: {"n_epochs": 2, "resume": tmp_path, "cbs": [snap]}, learn)
        assert [type(cb).__name__ for cb in copied.cbs] == own
        copied.model.weight.data.zero_()
        copied.fit(1, lr=0.0)  # lr 0: the weights the user set stay, not the checkpoint's
        assert torch.equal(copied.model.weight, torch.zeros_like(copied.model.weight))


def test_a_copy_made_mid_fit_of_a_learner_with_file_loggers_works(tmp_path):
    """deepcopy/pickle mid-fit failed: cannot pickle '_io.TextIOWrapper' (CSVLoggerCB), '_thread.lock' (TensorBoard)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from miniai.callbacks.loggers import CSVLoggerCB, TensorBoardCB
    from miniai.callbacks.metrics import MetricsCB
    from miniai.data import DataLoaders, TensorLoader
    from miniai.supervised import TrainLearner
    x = torch.randn(40, 4)
    dls = DataLoaders(TensorLoader(x, x.argmax(1), 8), TensorLoader(x, x.argmax(1), 8))
    for logger in (CSVLoggerCB(tmp_path / "log.csv", overwrite=True), TensorBoardCB(tmp_path / "tb")):
        metrics = MetricsCB()
        metrics.log_fn = lambda row: None
        learn = TrainLearner(nn.Linear(4, 4), dls, F.cross_entropy, lr=0.1, cbs=[metrics, logger])
        copied = _copy_at("after_epoch", lambda snap: {"n_epochs": 1, "cbs": [snap]}, learn)
        assert copied.cbs[-1] is not logger and len(learn.metrics.history) == 2
        copied.fit(1)  # the copy opens its own file or writers
        assert len(copied.metrics.history) == 2


def test_the_loss_curve_of_a_summed_loss_is_per_item_as_the_valid_points_are():
    """ProgressCB kept each batch's sum (8x the valid points' per-item mean at bs 8, same weights and data)."""
    import contextlib
    import io

    import numpy as np
    import torch
    from torch import nn

    from miniai.callbacks.metrics import MetricsCB
    from miniai.callbacks.progress import ProgressCB
    from miniai.data import DataLoaders, TensorLoader
    from miniai.supervised import TrainLearner
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    dls = DataLoaders(TensorLoader(x, (x.sum(1) > 0).long(), 8), TensorLoader(x, (x.sum(1) > 0).long(), 8))
    metrics, progress = MetricsCB(), ProgressCB(mode="plain")
    learn = TrainLearner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss(reduction="sum"), lr=0.0, cbs=[metrics, progress])
    with contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1)
    train, valid = progress.plot_losses().axes[0].lines
    assert float(np.mean(train.get_ydata())) == pytest.approx(metrics.last["valid_loss"], rel=1e-5)


def test_tensorboards_batch_losses_of_a_summed_loss_are_per_item(tmp_path):
    """TensorBoardCB's per-batch 'loss' was each batch's sum, beside per-item epoch losses."""
    import contextlib
    import io

    import torch
    from torch import nn

    from miniai.callbacks.loggers import TensorBoardCB
    from miniai.callbacks.metrics import MetricsCB
    from miniai.data import DataLoaders, TensorLoader
    from miniai.supervised import TrainLearner
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    dls = DataLoaders(TensorLoader(x, (x.sum(1) > 0).long(), 8), TensorLoader(x, (x.sum(1) > 0).long(), 8))
    metrics = MetricsCB()
    learn = TrainLearner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss(reduction="sum"), lr=0.0,
                         cbs=[metrics, TensorBoardCB(tmp_path / "tb")])
    with contextlib.redirect_stdout(io.StringIO()):
        learn.fit(1)
    batch = [v for _, v in read_tb(tmp_path / "tb")["batch"]["loss"]]
    assert sum(batch) / len(batch) == pytest.approx(metrics.last["train_loss"], rel=1e-5)


def test_resuming_a_run_that_is_not_the_last_in_an_appended_file_is_refused_and_the_file_kept(tmp_path):
    """Two runs appended to one CSV, the first cut short, the second run to its end, then the first resumed: the
    resume took the second run's rows for its own (the last stretch of rising epochs), dropped its epoch-1 rows,
    and went on after its epoch 0, so the file read as one run with another's epochs and lost rows, silently."""
    log = tmp_path / "log.csv"

    def run(ckpt, seed):
        learn = tiny_learner([quiet_metrics(), CSVLoggerCB(log, append=True), CheckpointCB(tmp_path / ckpt)])
        learn.model.weight.data.fill_(seed)
        return learn
    run("a", 0).fit(3, cbs=[StopAt(2, True)])
    run("b", 1).fit(2)
    before = log.read_bytes()
    for resume in (tmp_path / "a", tmp_path / "a" / "epoch_0001.pt"):
        with pytest.raises(ValueError, match=r"log.csv: its last run's rows \(lines 6 on\) are not those of the "
                                             r"run resumed, which logged (4|2) row\(s\) before epoch (2|1)"):
            run("a", 0).fit(3, resume=resume)
        assert log.read_bytes() == before


def test_resuming_keeps_a_file_whose_earlier_run_ended_at_epoch_0_or_whose_log_has_a_gap(tmp_path):
    """The check that the file's last rows are the resumed run's refused two good resumes: an earlier run of one
    epoch (its rows, epoch 0, and the run's read as one stretch that never goes down), and a run resumed once without
    the logger (the file lacks those epochs: a gap, not another run)."""
    log = tmp_path / "log.csv"
    tiny_learner([quiet_metrics(), CSVLoggerCB(log)]).fit(1)

    def run(**kwargs):
        return tiny_learner([quiet_metrics(), CheckpointCB(tmp_path / "ckpt"), *(
            [CSVLoggerCB(log, append=True)] if kwargs.pop("logged", True) else [])])
    run().fit(6, cbs=[StopAt(2, True)])
    run().fit(6, resume=tmp_path / "ckpt")
    assert [r["epoch"] for r in read_rows(log)] == [0, 0] + [e for e in range(6) for _ in range(2)]
    shutil.rmtree(tmp_path / "ckpt")
    log.unlink()
    run().fit(6, cbs=[StopAt(2, True)])
    run(logged=False).fit(6, resume=tmp_path / "ckpt", cbs=[StopAt(4, True)])
    run().fit(6, resume=tmp_path / "ckpt")
    assert [r["epoch"] for r in read_rows(log)] == [0, 0, 1, 1, 4, 4, 5, 5]


def test_resuming_a_run_that_logged_no_metrics_into_another_runs_file_is_refused(tmp_path):
    """A run checkpointed without a MetricsCB restores no rows to check the file's against: resumed with a
    CSVLoggerCB on another run's file, it cut that run's rows at its epoch and went on after them, silently."""
    log = tmp_path / "log.csv"
    tiny_learner([quiet_metrics(), CSVLoggerCB(log)]).fit(4)
    tiny_learner([CheckpointCB(tmp_path / "ckpt")]).fit(4, cbs=[StopAt(2, True)])
    before = log.read_bytes()
    for append in (False, True):
        with pytest.raises(ValueError, match=r"are not those of the run resumed, which logged 0 row\(s\) before "
                                             r"epoch 2"):
            tiny_learner([quiet_metrics(), CSVLoggerCB(log, append=append), CheckpointCB(tmp_path / "ckpt")]).fit(
                4, resume=tmp_path / "ckpt")
        assert log.read_bytes() == before


def test_a_fit_refused_at_its_first_pass_leaves_the_last_fits_records_optimizer_and_tensorboard_run(tmp_path):
    """CSVLoggerCB refuses a file of other columns (append=True) at the first before_epoch, after every before_fit:
    MetricsCB's history, RecorderCB's curves and ProgressCB's losses were gone, and a TensorBoardCB listed before
    it had already started its run anew, hiding the last fit's curves."""
    from miniai.callbacks import ProgressCB
    (tmp_path / "other.csv").write_text("epoch,train,accuracy,loss,time,lr\n0,train,0.5,1.0,1.0,0.1\n")
    metrics, recorder, progress = quiet_metrics(), RecorderCB(lr=_lr), ProgressCB(mode="plain")
    learn = tiny_learner([metrics, recorder, progress, TensorBoardCB(tmp_path / "tb")])
    learn.fit(2)
    before = (list(metrics.history), list(recorder.recs["lr"]), list(progress.losses))
    tb = read_tb(tmp_path / "tb")
    with pytest.raises(ValueError, match="has the columns"):
        learn.fit(1, cbs=[CSVLoggerCB(tmp_path / "other.csv", append=True)])
    assert (metrics.history, recorder.recs["lr"], progress.losses) == before
    assert read_tb(tmp_path / "tb") == tb


@pytest.mark.parametrize("broken", ["model", "loss", "nan"])
def test_a_fit_whose_first_batch_fails_in_the_model_or_the_loss_leaves_the_last_fits_records(broken):
    """(probe P1) Data the model can't take (or a loss that can't take its output) failed the new fit's very first
    forward: nothing trained, but MetricsCB's history, RecorderCB's and ProgressCB's curves and ActivationStats'
    were gone, and their plots blamed an evaluation fit or cancelled passes. So with a first loss that is NaN."""
    from miniai.callbacks import ProgressCB
    from miniai.callbacks.guards import NonFiniteLossError
    metrics, recorder, progress = quiet_metrics(), RecorderCB(lr=_lr), ProgressCB(mode="plain")
    stats = ActivationStats(lambda m: isinstance(m, nn.Linear))
    learn = tiny_learner([metrics, recorder, progress, stats])
    learn.fit(2)
    before = (list(metrics.history), list(recorder.recs["lr"]), list(progress.losses), stats.stats)
    if broken == "model":
        learn.model = nn.Sequential(nn.Linear(2, 1))  # the data has 1 feature
    elif broken == "loss":
        learn.loss_func = lambda preds, target: preds[:, 5].mean()  # the model's output has 1 column
    else:  # (regression round T1) the NaN guard stops the fit at its first loss, before any step
        learn.loss_func = lambda preds, target: preds.mean() * float("nan")
    with pytest.raises((RuntimeError, IndexError, NonFiniteLossError)):
        learn.fit(1)
    assert (metrics.history, recorder.recs["lr"], progress.losses, stats.stats) == before


def test_a_resume_into_a_log_dir_another_run_wrote_to_since_is_refused_untouched(tmp_path):
    """Run A checkpointed, a fresh run B logged to the same log_dir, then A resumed from epoch 2: TensorBoard drew
    B's epochs 0-1 and A's epochs 2-3 as one curve, without a word (the CSV logger refuses such a file). So did a
    branch of A (resumed from its epoch 4 at another lr) followed by A resumed from its epoch 5: the branch's epoch
    4 among A's."""
    def run(name: str, lr: float) -> Learner:
        return tiny_learner([quiet_metrics(), TensorBoardCB(tmp_path / "tb"), CheckpointCB(tmp_path / name, keep=None)],
                           lr=lr)
    run("a", 0.1).fit(6)
    run("a2", 0.1).fit(6, resume=tmp_path / "a" / "epoch_0004.pt")  # a run goes on over its own curve
    run("a3", 0.1).fit(6, resume=tmp_path / "a" / "epoch_0004.pt")  # from the same checkpoint again
    run("branch", 0.001).fit(6, resume=tmp_path / "a" / "epoch_0004.pt")
    tb = read_tb(tmp_path / "tb")
    learn = run("a4", 0.1)
    weights = [p.detach().clone() for p in learn.model.parameters()]
    refused = (r"tb holds the TensorBoard log of another run than the one resumed from .*epoch_{:04d}.pt"
               r".*another log_dir")
    with pytest.raises(ValueError, match=refused.format(5)):
        learn.fit(6, resume=tmp_path / "a" / "epoch_0005.pt")
    assert all(torch.equal(a, b) for a, b in zip(weights, learn.model.parameters()))  # refused before loading
    assert read_tb(tmp_path / "tb") == tb
    run("a5", 0.1).fit(6, resume=tmp_path / "a" / "epoch_0003.pt")  # before the branch: A's own again
    run("b", 0.01).fit(4)
    tb = read_tb(tmp_path / "tb")
    with pytest.raises(ValueError, match=refused.format(2)):
        run("a6", 0.1).fit(4, resume=tmp_path / "a" / "epoch_0002.pt")
    assert read_tb(tmp_path / "tb") == tb


def test_a_log_dir_that_cant_be_a_folder_is_refused_before_training(tmp_path):
    (tmp_path / "tb").write_text("a file")
    learn = tiny_learner([quiet_metrics(), TensorBoardCB(tmp_path / "tb")])
    weights = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(FileExistsError):
        learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(weights, learn.model.parameters()))


def test_the_advice_for_a_learners_own_logger_whose_file_is_there_works_when_followed(tmp_path):
    """The advice was to pass CSVLoggerCB(path, append=True): given to the next fit, the learner's own logger still
    refused the file, with the same error."""
    learn = tiny_learner([quiet_metrics(), CSVLoggerCB(tmp_path / "log.csv")])
    learn.fit(2)
    with pytest.raises(FileExistsError, match=r"learner's own.*learn\.cbs\[\d\]\.append = True") as e:
        learn.fit(1)
    exec(re.search(r"learn\.cbs\[\d\]\.append = True", str(e.value)).group(0), {"learn": learn})
    learn.fit(1)
    assert len(list(csv.DictReader(open(tmp_path / "log.csv")))) == 3 * 2


def test_tensorboard_hist_takes_the_activationstats_that_records_training_batches(tmp_path):
    # the first ActivationStats in cbs was taken: one recording validation batches only, listed before the one
    # recording training batches, got the fit refused ("records no training batch") (probe)
    on_valid, on_train = ActivationStats(on_train=False, on_valid=True), ActivationStats()
    board = TensorBoardCB(tmp_path, hist=True)
    tiny_learner([quiet_metrics(), on_valid, on_train, board]).fit(1)
    assert board._stats is on_train


def test_a_second_run_logging_to_the_file_a_running_fit_logs_to_is_refused(tmp_path):
    """Run B started while run A's log held its header alone: B's check took the file for a replaceable header, B
    wrote it anew, A went on appending to the old, unlinked file, and A's rows were lost without a word."""
    from miniai.utils import DirInUseError
    log = tmp_path / "log.csv"
    code = textwrap.dedent(f"""
        import sys
        from miniai.callbacks.loggers import CSVLoggerCB
        from miniai.callbacks.metrics import MetricsCB
        from miniai.learner import Callback
        from tests.synth import tiny_learner

        class Wait(Callback):
            def after_epoch(self, learn):
                if not learn.training and learn.epoch == 0:
                    print("logging", flush=True)
                    sys.stdin.readline()
        metrics = MetricsCB()
        metrics.log_fn = None
        tiny_learner([metrics, CSVLoggerCB({str(log)!r}), Wait()]).fit(2)
    """)
    a = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).parent.parent)
    try:
        assert a.stdout.readline().strip() == "logging"
        metrics = MetricsCB()
        metrics.log_fn = None
        with pytest.raises(DirInUseError, match=rf"CSVLoggerCB's file {re.escape(str(log))} is in use by another run "
                                                rf"\(process {a.pid}\): wait for it to end, or choose another file"):
            tiny_learner([metrics, CSVLoggerCB(log, overwrite=True)]).fit(2)
    finally:
        a.communicate("\n", timeout=120)
    assert a.returncode == 0
    assert [row[:2] for row in csv.reader(open(log))][1:] == [["0", "train"], ["0", "valid"], ["1", "train"],
                                                              ["1", "valid"]]


def test_two_fits_of_one_process_logging_to_one_file_at_once_are_refused(tmp_path):
    """Two CSVLoggerCBs of one file in a fit, or another learner's fit run from a callback into the same file: the
    lock let this thread claim it again (as the CLI's --out and a CheckpointCB there share a directory), and the
    outer fit's rows were lost."""
    from miniai.utils import DirInUseError

    def logged():
        metrics = MetricsCB()
        metrics.log_fn = None
        return metrics
    with pytest.raises(DirInUseError, match=r"log.csv is in use by another fit of this process"):
        tiny_learner([logged(), CSVLoggerCB(tmp_path / "log.csv"), CSVLoggerCB(tmp_path / "log.csv")]).fit(1)

    class Inner(Callback):
        def after_epoch(self, learn):
            if not learn.training:
                tiny_learner([logged(), CSVLoggerCB(tmp_path / "log2.csv", overwrite=True)]).fit(1)
    with pytest.raises(DirInUseError, match=r"log2.csv is in use by another fit of this process"):
        tiny_learner([logged(), CSVLoggerCB(tmp_path / "log2.csv"), Inner()]).fit(1)
    tiny_learner([logged(), CSVLoggerCB(tmp_path / "log2.csv", overwrite=True)]).fit(1)  # (let go after each)
