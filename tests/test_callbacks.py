"""MetricsCB against a hand computation, DeviceCB on nested batches, ProgressCB in every output mode."""
import io
import math
from contextlib import redirect_stdout
from functools import partial
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from miniai.callbacks import Accuracy, DeviceCB, MetricsCB, ProgressCB
from miniai.callbacks.metrics import format_row
from miniai.data import DataLoaders, TensorLoader
from miniai.learner import Callback, TrainLearner
from tests.synth import LossLog, rows_metrics, tiny_learner


def fixed_classification():
    """4 classes, 10 train and 7 valid items in batches of 4 (so the last batch is short): known answers."""
    g = torch.Generator().manual_seed(1)
    x_train, x_valid = torch.randn(10, 3, generator=g), torch.randn(7, 3, generator=g)
    y_train, y_valid = torch.randint(0, 4, (10,), generator=g), torch.randint(0, 4, (7,), generator=g)
    batches = lambda x, y: [(x[i:i + 4], y[i:i + 4]) for i in range(0, len(x), 4)]
    return SimpleNamespace(train=batches(x_train, y_train), valid=batches(x_valid, y_valid)), (x_valid, y_valid)


def test_metrics_match_a_hand_computation():
    torch.manual_seed(0)
    dls, (xv, yv) = fixed_classification()
    model = nn.Linear(3, 4)
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    metrics.log_fn = lambda row: None
    learn = TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=[metrics])
    learn.fit(1)
    with torch.no_grad():
        logits = model(xv)
    # mean loss weighted by batch size == loss over the whole set; accuracy over the whole set
    assert metrics.last["valid_loss"] == pytest.approx(F.cross_entropy(logits, yv).item(), abs=1e-6)
    assert metrics.last["valid_accuracy"] == pytest.approx((logits.argmax(1) == yv).float().mean().item())
    assert [r["train"] for r in metrics.history] == ["train", "valid"]
    assert set(metrics.names) == {"train_accuracy", "train_loss", "valid_accuracy", "valid_loss"}
    assert learn.metrics is metrics


def test_metrics_over_batches_whose_shapes_differ_past_the_batch_dimension():
    # per-pixel classes on images of two sizes: the kept batches can't be concatenated, so each updates on its own
    from miniai.callbacks.metrics import Accuracy
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 1, h, h, generator=g), torch.randint(0, 3, (2, h, h), generator=g)) for h in (4, 6, 4)]
    model = nn.Conv2d(1, 3, 1)
    metrics = MetricsCB(accuracy=Accuracy())
    metrics.log_fn = lambda row: None
    learn = TrainLearner(model, SimpleNamespace(train=batches, valid=batches), F.cross_entropy, lr=0.0, cbs=[metrics])
    with pytest.warns(UserWarning, match="lr=0"):
        learn.fit(1)
    with torch.no_grad():
        preds = [model(x) for x, _ in batches]
    correct = sum(int((p.argmax(1) == y).sum()) for p, (_, y) in zip(preds, batches))
    assert metrics.last["valid_accuracy"] == pytest.approx(correct / sum(y.numel() for _, y in batches))
    # the loss over every pixel of the set, as the accuracy is (no longer each batch's mean weighted by its images)
    loss = sum(F.cross_entropy(p, y, reduction="sum").item() for p, (_, y) in zip(preds, batches))
    assert metrics.last["valid_loss"] == pytest.approx(loss / sum(y.numel() for _, y in batches), abs=1e-6)


def test_metrics_positional_metric_named_after_class_and_loss_name_reserved():
    assert list(MetricsCB(MulticlassAccuracy()).metrics) == ["MulticlassAccuracy"]
    with pytest.raises(ValueError, match="'loss' is a column MetricsCB logs itself"):
        MetricsCB(loss=MulticlassAccuracy())


def test_metrics_default_logger_prints_header_and_rows():
    out = io.StringIO()
    with redirect_stdout(out):
        tiny_learner(cbs=[MetricsCB()]).fit(2)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["loss", "epoch", "train", "time"]
    assert len(lines) == 5 and lines[1].split()[1:3] == ["0", "train"] and lines[4].split()[1:3] == ["1", "valid"]


def test_format_row_aligns_columns():
    row = {"accuracy": 0.81234, "loss": 0.5, "epoch": 0, "train": "train", "time": "00:01"}
    assert format_row(row, header=True) == "accuracy  loss      epoch     train     time"
    assert format_row(row) == "0.812     0.500     0         train     00:01"


class Recorder(Callback):
    order = 0

    def __init__(self): self.devices = []

    def before_batch(self, learn):
        self.devices.append(learn.batch[0]["a"][1].device)


def test_device_cb_moves_model_and_nested_batches():
    # 'meta' is a device every machine has: moving there proves tensors were moved, not left alone
    batch = ({"a": [torch.zeros(2), torch.ones(2)], "n": 3}, (torch.zeros(2),))
    cb = DeviceCB("meta", move_data=False)
    learn = SimpleNamespace(batch=batch, model=nn.Linear(1, 1), dls=None)
    cb.before_fit(learn)
    cb.before_batch(learn)
    assert learn.model.weight.device.type == "meta"
    assert learn.batch[0]["a"][1].device.type == "meta" and learn.batch[1][0].device.type == "meta"
    assert learn.batch[0]["n"] == 3 and isinstance(learn.batch[0]["a"], list)


def test_device_cb_moves_loaders_that_can_move():
    moved = []
    dls = SimpleNamespace(to=lambda device: moved.append(device))
    DeviceCB("cpu").before_fit(SimpleNamespace(model=nn.Linear(1, 1), dls=dls))
    assert moved == [torch.device("cpu")]


def test_device_cb_leaves_batches_of_a_loader_on_the_device_alone():
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    here = SimpleNamespace(dl=TensorLoader(x, y, bs=4))
    cb = DeviceCB("cpu")
    cb.before_epoch(here)
    here.batch = batch = next(iter(here.dl))
    cb.before_batch(here)
    assert here.batch is batch  # checked once per pass, not walked per batch
    # the same loader with another target device: every batch is moved
    cb = DeviceCB("meta")
    cb.before_epoch(here)
    cb.before_batch(here)
    assert here.batch[0].device.type == "meta" and here.batch[1].device.type == "meta"


@pytest.mark.parametrize("mode", ["plain", "terminal"])
def test_progress_keeps_every_train_loss_in_order(mode):
    progress, log = ProgressCB(mode=mode), LossLog()
    with redirect_stdout(io.StringIO()):
        tiny_learner(cbs=[progress, log]).fit(3)
    assert progress.losses == pytest.approx(log.losses) and len(log.losses) == 3 * 3


@pytest.mark.parametrize("mode", ["plain", "terminal"])
def test_progress_prints_table_rows_in_plain_and_terminal_mode(mode):
    out = io.StringIO()
    progress = ProgressCB(mode=mode)
    with redirect_stdout(out):
        tiny_learner(cbs=[MetricsCB(), progress]).fit(2)
    lines = [l for l in out.getvalue().splitlines() if l.strip() and not l.startswith("Epoch")]
    rows = [l for l in lines if l.split()[0] != "loss"]
    assert any(l.split() == ["loss", "epoch", "train", "time"] for l in lines)
    assert len([r for r in rows if r.split()[1:3] in (["0", "train"], ["0", "valid"], ["1", "train"],
                                                      ["1", "valid"])]) == 4
    assert len(progress.losses) == 2 * 3 and len(progress.valid_losses) == 2


def test_progress_without_metrics_and_restores_metrics_logger():
    metrics = MetricsCB()
    original = metrics.log_fn
    learn = tiny_learner(cbs=[metrics])
    with redirect_stdout(io.StringIO()):
        learn.fit(1, cbs=[ProgressCB(mode="plain")])
        tiny_learner(cbs=[ProgressCB(mode="terminal")]).fit(1)
    assert metrics.log_fn is original


def test_log_fn_is_an_argument_of_metricscb_not_a_metric():
    """MetricsCB(log_fn=None), as its docstring reads, took log_fn for a metric and advised log_fn=Accuracy()."""
    rows = []
    with redirect_stdout(io.StringIO()) as out:
        tiny_learner(cbs=[MetricsCB(log_fn=rows.append)]).fit(1)
        tiny_learner(cbs=[MetricsCB(log_fn=None)]).fit(1)
    assert [r["train"] for r in rows] == ["train", "valid"] and out.getvalue() == ""
    assert "log_fn" not in MetricsCB(log_fn=print).metrics


def test_a_log_fn_of_yours_gets_every_row_beside_a_progress_bar():
    """ProgressCB put its table printer in MetricsCB's log_fn for the fit: a logger of the user's there (README: rows
    reach `log_fn`) got none of the 4 rows, without a word. It gets them; MetricsCB's own printer gives way."""
    metrics, rows = MetricsCB(), []
    metrics.log_fn = rows.append
    out = io.StringIO()
    with redirect_stdout(out):
        tiny_learner(cbs=[metrics, ProgressCB(mode="plain")]).fit(2)
    assert [(r["epoch"], r["train"]) for r in rows] == [(0, "train"), (0, "valid"), (1, "train"), (1, "valid")]
    assert [r["loss"] for r in rows] == [h["loss"] for h in metrics.history]
    assert metrics.log_fn == rows.append  # put back after the fit
    printed = out.getvalue()
    assert printed.count("valid") == 2  # the table once: MetricsCB's printer did not print it too
    metrics.log_fn = None  # (rows silenced: the table alone; it failed on calling None, and None was not put back)
    with redirect_stdout(io.StringIO()):
        tiny_learner(cbs=[metrics, ProgressCB(mode="plain")]).fit(1)
    assert metrics.log_fn is None
    silent = io.StringIO()
    with redirect_stdout(silent):
        tiny_learner(cbs=[metrics]).fit(1)  # MetricsCB alone: None logs nothing too
    assert silent.getvalue() == "" and len(metrics.history) == 2
    metrics.log_fn = rows  # not callable (rows.append meant): an error before the fit, with or without a ProgressCB
    for cbs in ([metrics, ProgressCB(mode="plain")], [metrics]):
        with pytest.raises(TypeError, match=r"MetricsCB.log_fn is called with each row.*got a list: its .append\?"):
            tiny_learner(cbs=cbs).fit(1)
        assert len(metrics.history) == 2  # (refused at its start: nothing trained, the last fit's rows kept)


def test_progress_plot_losses_returns_figure():
    import matplotlib
    matplotlib.use("Agg")
    progress = ProgressCB(mode="plain")
    with redirect_stdout(io.StringIO()):
        tiny_learner(cbs=[MetricsCB(), progress]).fit(2)
    fig = progress.plot_losses()
    assert len(fig.axes[0].lines) == 2


def test_progress_plot_losses_needs_a_loss_recorded_and_still_draws_valid_losses_alone():
    """plot_losses() drew empty axes before any fit and after fits that recorded no loss."""
    import matplotlib
    matplotlib.use("Agg")
    from miniai.learner import CancelEpochException

    class SkipTraining(Callback):
        def before_epoch(self, learn) -> None:
            if learn.training:
                raise CancelEpochException()
    progress = ProgressCB(mode="plain")
    with pytest.raises(ValueError, match=r"ProgressCB: nothing recorded yet: .*cbs=\[progress\]\)\), then plot"):
        progress.plot_losses()
    for cbs, fit_kwargs in (([MetricsCB()], {"train": False}), ([SkipTraining()], {})):  # no MetricsCB: no valid
        with redirect_stdout(io.StringIO()):
            tiny_learner(cbs=[*cbs, progress]).fit(2, **fit_kwargs)
        with pytest.raises(ValueError, match=r"ProgressCB: its fits recorded no batch: .*fit\(train=False\)"):
            progress.plot_losses()
    with redirect_stdout(io.StringIO()):  # training cancelled, validation logged: the valid losses are drawn
        tiny_learner(cbs=[MetricsCB(), SkipTraining(), progress]).fit(2)
    train, valid = progress.plot_losses().axes[0].lines
    assert len(train.get_xdata()) == 0 and list(valid.get_ydata()) == progress.valid_losses != []


def test_the_terminal_bar_counts_epochs_from_the_start_of_a_resumed_run(tmp_path, capsys):
    """fit(5, resume=<epoch 2>) showed 'epoch 3/3', 'epoch 5/3': the epochs left, not the run's."""
    from miniai.callbacks import CheckpointCB
    tiny_learner(cbs=[CheckpointCB(tmp_path)]).fit(2)
    capsys.readouterr()
    tiny_learner(cbs=[CheckpointCB(tmp_path), ProgressCB(mode="terminal")]).fit(5, resume=tmp_path)
    out = capsys.readouterr().out
    assert "epoch 3/5 train" in out and "epoch 5/5 valid" in out and "epoch 3/3" not in out


def test_valid_losses_are_plotted_after_the_batches_trained_also_without_a_loader_length():
    """With a train loader without len the valid losses were drawn at x = 1, 2, 3 instead of 10, 20, 30."""
    import matplotlib
    matplotlib.use("Agg")

    class NoLen:
        def __init__(self, dl):
            self.dl = dl

        def __iter__(self):
            return iter(self.dl)
    progress = ProgressCB(mode="plain")
    learn = tiny_learner(cbs=[MetricsCB(), progress])
    learn.dls.train = NoLen(learn.dls.train)
    with redirect_stdout(io.StringIO()):
        learn.fit(3)
    assert progress.valid_at == [3, 6, 9]
    assert list(progress.plot_losses().axes[0].lines[1].get_xdata()) == [3, 6, 9]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(2, 6), st.booleans()), min_size=1, max_size=5),
       st.integers(0, 2**31))
def test_accuracy_equals_torcheval_multiclass_accuracy(batches, seed):
    """miniai's dependency-free Accuracy against torcheval's, on logits and on label predictions."""
    import warnings

    from miniai.callbacks.metrics import Accuracy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torcheval.metrics import MulticlassAccuracy
    g = torch.Generator().manual_seed(seed)
    ours, theirs = Accuracy(), MulticlassAccuracy()
    for n, classes, labels in batches:
        target = torch.randint(0, classes, (n,), generator=g)
        preds = torch.randint(0, classes, (n,), generator=g) if labels else torch.randn(n, classes, generator=g)
        ours.update(preds, target)
        theirs.update(preds, target)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-7)
    assert torch.isnan(ours.reset().compute())


@pytest.mark.parametrize("preds, target, hint", [
    (torch.randn(8, 10), torch.randint(0, 10, (8, 1)), r"squeeze"),  # targets kept as a column: 0.0 before
    (torch.rand(8), torch.randint(0, 2, (8,)), r"binary"),  # a binary model's probabilities: ~0.0 before
    (torch.randn(8, 1), torch.randint(0, 2, (8, 1)).float(), r"binary"),  # BCE-shaped logits and targets
    (torch.randn(8, 10), F.one_hot(torch.randint(0, 10, (8,)), 10).float(), r"argmax\(1\)"),  # one-hot targets
    (torch.randn(8, 10), F.one_hot(torch.randint(0, 10, (8,)), 10), r"argmax\(1\)"),  # int one-hot: multi-label advice
    (torch.randn(8, 1), torch.randint(0, 2, (8,)), r"one score per item.*binary"),  # argmax of 1: the share of 0s
])
def test_accuracy_refuses_preds_and_targets_it_would_compare_wrongly(preds, target, hint):
    """Shapes or dtypes that broadcast or compare scores with labels gave a wrong accuracy without a word."""
    from miniai.callbacks.metrics import Accuracy
    with pytest.raises(ValueError, match=hint) as info:
        Accuracy().update(preds, target)
    assert str(tuple(preds.shape)) in str(info.value) and str(tuple(target.shape)) in str(info.value)


def test_accuracy_takes_labels_logits_per_pixel_logits_and_float_class_ids():
    from miniai.callbacks.metrics import Accuracy
    target = torch.tensor([0, 1, 2, 1])
    logits = F.one_hot(torch.tensor([0, 1, 1, 1]), 3).float()
    assert Accuracy().update(logits, target).compute().item() == 0.75
    assert Accuracy().update(logits, target.float()).compute().item() == 0.75  # class ids stored as floats
    assert Accuracy().update(torch.tensor([0, 1, 1, 1]), target).compute().item() == 0.75
    pixels = torch.randn(2, 3, 4, 4)
    assert Accuracy().update(pixels, pixels.argmax(1)).compute().item() == 1.0


def test_metricscb_names_a_metric_that_computes_more_than_one_number():
    """torcheval's MulticlassAccuracy(average=None) ended in "only one element tensors can be converted"."""
    class PerClass:
        def update(self, preds, target):
            pass

        def compute(self):
            return torch.tensor([0.5, 0.7])

        def reset(self):
            pass

        def to(self, device):
            return self
    with pytest.raises(ValueError, match=r"'per_class' computed a tensor of shape \(2,\).*average='macro'"):
        tiny_learner(cbs=[MetricsCB(per_class=PerClass())]).fit(1)


@pytest.mark.parametrize("value", [(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.5])), [0.5], None],
                         ids=["tuple", "list", "None"])
def test_metricscb_names_a_metric_whose_value_is_no_number(value):
    """A metric computing a tuple (torcheval's BinaryPrecisionRecallCurve) ended the pass in a bare "float() argument
    must be ... not 'tuple'", naming no metric."""
    class Curve:
        def update(self, preds, target):
            pass

        def compute(self):
            return value

        def reset(self):
            pass
    with pytest.raises(TypeError, match=rf"'curve' computed a {type(value).__name__}.*one number"):
        tiny_learner(cbs=[MetricsCB(curve=Curve())]).fit(1)


def test_one_metric_object_in_two_metricscbs_of_a_run_is_refused_with_the_fix():
    """Two MetricsCBs holding one metric object both fed it every batch: a count metric read 74 for 37 items."""
    import copy

    class Items:
        def update(self, preds, target):
            self.n += len(target)

        def compute(self):
            return float(self.n)

        def reset(self):
            self.n = 0
    shared = Items()
    for cbs, fit_cbs in [([MetricsCB(n=shared), MetricsCB(items=shared)], []), ([MetricsCB(a=shared, b=shared)], []),
                         ([MetricsCB(n=shared)], [MetricsCB(n=shared)])]:
        learn = tiny_learner(cbs=cbs)
        with pytest.raises(ValueError, match=r"holds? one Items object as metric '(n|a)'") as e, \
                redirect_stdout(io.StringIO()):
            learn.fit(1, cbs=fit_cbs)
        assert "copy.deepcopy" in str(e.value) and shared.__dict__ == {}  # refused before any pass
    own = MetricsCB(n=copy.deepcopy(shared))
    learn = tiny_learner(cbs=[MetricsCB(n=shared), own])
    with redirect_stdout(io.StringIO()):
        learn.fit(1)
        n_valid = sum(len(b[1]) for b in learn.dls.valid)
        assert learn.cbs[0].last["valid_n"] == own.last["valid_n"] == n_valid
        learn.get_preds(cbs=[MetricsCB(n=shared)])  # the learner's MetricsCB takes no part in the pass: fine
    assert shared.n == n_valid


def test_metricscb_refuses_two_metrics_under_one_name_or_a_name_of_its_own_columns():
    """MetricsCB(F1(average='macro'), F1(average='micro')) logged one of them; a metric named 'time' was printed
    as the elapsed time and lost from the CSV; MetricsCB(Accuracy(), Accuracy=other) dropped one silently."""
    from miniai.callbacks.metrics import Accuracy
    with pytest.raises(ValueError, match=r"two metrics named 'Accuracy'.*name them.*MetricsCB\(name=metric"):
        MetricsCB(Accuracy(), Accuracy())
    with pytest.raises(ValueError, match="two metrics named 'Accuracy'"):
        MetricsCB(Accuracy(), Accuracy=MulticlassAccuracy())
    for name in ("loss", "time", "epoch", "train"):
        with pytest.raises(ValueError, match=f"'{name}' is a column MetricsCB logs itself"):
            MetricsCB(**{name: Accuracy()})
    with pytest.raises(ValueError, match="'lr' is a column CSVLoggerCB writes beside the row"):  # (two lr columns:
        MetricsCB(lr=Accuracy())  # csv.DictReader read the optimizer's lr as the metric's)
    assert list(MetricsCB(Accuracy(), top=MulticlassAccuracy()).metrics) == ["Accuracy", "top"]


def test_a_metric_with_update_compute_and_reset_but_no_to_works():
    """The README promises any metric with update/compute/reset; one without .to failed at the first epoch."""
    class MeanPred:
        def __init__(self): self.total, self.n = 0.0, 0
        def update(self, preds, target): self.total, self.n = self.total + float(preds.sum()), self.n + preds.numel()
        def compute(self): return self.total / self.n
        def reset(self): self.total, self.n = 0.0, 0
    metrics = MetricsCB(mean=MeanPred())
    metrics.log_fn = lambda row: None
    learn = tiny_learner(cbs=[metrics])
    learn.fit(1)
    preds = learn.get_preds()[0]
    assert metrics.last["valid_mean"] == pytest.approx(preds.mean().item(), rel=1e-5)
    with pytest.raises(TypeError, match="'half' is a MeanPredNoReset: pass a metric object with update, compute and "
                                        "reset"):
        MetricsCB(half=type("MeanPredNoReset", (), {"update": MeanPred.update, "compute": MeanPred.compute})())


def test_small_values_keep_their_digits_and_every_fit_prints_its_header():
    """A regression loss of 1.3e-4 printed as 0.000; a second fit printed rows without a header."""
    assert format_row({"loss": 1.3e-4}) == "1.30e-04" and format_row({"loss": 0.25}) == "0.250"
    assert format_row({"loss": 0.0}) == "0.000" and format_row({"x": -1.3e-4}) == "-1.3e-04"  # 8 wide
    out = io.StringIO()
    learn = tiny_learner(cbs=[MetricsCB()])
    with redirect_stdout(out):
        learn.fit(1)
        learn.fit(1)
    assert out.getvalue().count("epoch") == 2


def test_channels_last_leaves_inputs_that_are_not_image_tensors_alone():
    """DeviceCB(channels_last=True) read batch[0].ndim: a dict or tuple input ended in AttributeError."""
    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, d):
            return self.lin(d["a"])
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    batches = [({"a": x[i:i + 4]}, y[i:i + 4]) for i in (0, 4)]
    learn = TrainLearner(DictModel(), SimpleNamespace(train=batches, valid=batches), F.mse_loss, lr=0.1,
                         cbs=[DeviceCB("cpu", channels_last=True)])
    learn.fit(1)


def test_a_resumed_fits_loss_curve_counts_batches_from_the_start_of_the_run(tmp_path):
    """After fit(resume=<epoch 1>) the train losses were drawn from x=0 and epoch 1's valid loss at batch 3, not 6."""
    from miniai.callbacks import CheckpointCB
    tiny_learner(cbs=[MetricsCB(), CheckpointCB(tmp_path)]).fit(1)
    progress = ProgressCB(mode="plain")
    with redirect_stdout(io.StringIO()):
        tiny_learner(cbs=[MetricsCB(), CheckpointCB(tmp_path), progress]).fit(3, resume=tmp_path)
    assert progress.valid_at == [6, 9]
    import matplotlib
    matplotlib.use("Agg")
    train = progress.plot_losses().axes[0].lines[0]
    assert list(train.get_xdata()) == list(range(3, 9))


def test_huge_values_keep_the_columns_aligned_and_notebook_tables_format_like_the_terminals():
    assert format_row({"loss": 12345.678}) == "1.23e+04" and format_row({"loss": -12345.0}) == "-1.2e+04"


def test_metricscb_with_a_model_returning_a_tuple_logs_the_loss_and_says_what_metrics_need():
    """A model returning (logits, aux) with a loss that takes the tuple: even a loss-only MetricsCB() failed with
    AttributeError: 'tuple' object has no attribute 'detach'."""
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            out = self.body(x)
            return out, out.pow(2).mean()

    def loss(preds, y):
        return F.cross_entropy(preds[0], y) + 0.01 * preds[1]
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    metrics = MetricsCB()
    metrics.log_fn = lambda row: None
    TrainLearner(WithAux(), dls, loss, lr=0.1, cbs=[metrics]).fit(1)
    assert math.isfinite(metrics.last["valid_loss"])
    with pytest.raises(TypeError, match=r"MetricsCB's metric 'accuracy' takes a tensor.*a tuple.*metric of your own"):
        TrainLearner(WithAux(), dls, loss, lr=0.1, cbs=[MetricsCB(accuracy=Accuracy())]).fit(1)
    class FirstOutputAccuracy(Accuracy):  # the fix the message gives
        def update(self, preds, targets):
            super().update(preds[0], targets)
    ok = MetricsCB(accuracy=FirstOutputAccuracy())
    ok.log_fn = lambda row: None
    TrainLearner(WithAux(), dls, loss, lr=0.1, cbs=[ok]).fit(1)
    assert 0 <= ok.last["valid_accuracy"] <= 1


def test_an_evaluation_fit_leaves_the_curves_of_the_training_fit_before_it():
    """fit(train=False), the documented way to evaluate, emptied RecorderCB, ProgressCB's losses and ActivationStats:
    every plot drew an empty figure afterwards."""
    from miniai.callbacks import ActivationStats, RecorderCB, _lr
    learn = tiny_learner()
    stats, rec = ActivationStats(lambda m: isinstance(m, nn.Linear)), RecorderCB(lr=_lr)
    progress = ProgressCB(mode="plain")
    for cb in (stats, rec, progress, MetricsCB()):
        learn.add_cb(cb)
    with redirect_stdout(io.StringIO()):
        learn.fit(2)
        kept = (len(stats.stats[0][0]), list(rec.recs["lr"]), list(progress.losses), list(progress.valid_losses))
        learn.fit(1, train=False)
    assert kept[0] > 0 and kept[1] and kept[2] and kept[3]
    assert (len(stats.stats[0][0]), rec.recs["lr"], progress.losses, progress.valid_losses) == kept


def test_metricscb_keeps_dict_and_namedtuple_preds_detached_and_of_their_own_type():
    """Dict preds (torchvision segmentation's {'out', 'aux'}, a Hugging Face ModelOutput) were kept with their
    autograd graphs, up to 256 batches of them; a namedtuple became a plain tuple, so preds.logits broke."""
    from collections import namedtuple
    Out = namedtuple("Out", "logits aux")
    seen = []

    class Looks(Accuracy):
        def update(self, preds, targets):
            seen.append((type(preds), [t.requires_grad for t in (preds.values() if isinstance(preds, dict) else preds)]))
            super().update(preds["out"] if isinstance(preds, dict) else preds.logits, targets)

    for wrap in (lambda out: {"out": out, "aux": out.sum(1)}, lambda out: Out(out, out.sum(1))):
        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Linear(4, 3)

            def forward(self, x):
                return wrap(self.body(x))

        def loss(preds, y):
            return F.cross_entropy(preds["out"] if isinstance(preds, dict) else preds.logits, y)
        x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        metrics = MetricsCB(accuracy=Looks())
        metrics.log_fn = lambda row: None
        TrainLearner(Model(), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), loss, lr=0.1,
                     cbs=[metrics]).fit(1)
        assert 0 <= metrics.last["valid_accuracy"] <= 1
    assert {kind for kind, _ in seen} == {dict, Out} and not any(any(grads) for _, grads in seen)


def test_accuracy_leaves_out_the_targets_cross_entropy_ignores():
    """Items marked -100 (padding, unlabelled: what F.cross_entropy skips) counted as misses: two right answers and
    two padding tokens gave 0.5; a padded tagger's accuracy read 0.346 for 0.657 over its real tokens."""
    acc = Accuracy()
    preds = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    acc.update(preds, torch.tensor([0, 1, -100, -100]))
    assert float(acc.compute()) == 1.0
    tokens = Accuracy()  # (N, C, L) outputs of a tagger, targets (N, L) padded with -100
    tokens.update(torch.tensor([[[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]]), torch.tensor([[0, 1, -100]]))
    assert float(tokens.compute()) == 0.5


def test_metricscb_logs_the_loss_of_a_two_headed_model_with_a_tuple_of_targets():
    """Batches (x, (y1, y2)) for a two-headed model: even a loss-only MetricsCB failed with AttributeError: 'tuple'
    object has no attribute 'shape', so no valid_loss, EarlyStoppingCB or CheckpointCB(monitor=...)."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 1)

        def forward(self, x):
            return self.a(x), self.b(x)

    def loss(preds, targets):
        return F.cross_entropy(preds[0], targets[0]) + F.mse_loss(preds[1], targets[1])
    x = torch.randn(32, 4)
    batches = [(x[i:i + 8], (torch.randint(0, 3, (8,)), torch.randn(8, 1))) for i in range(0, 32, 8)]
    metrics = MetricsCB()
    metrics.log_fn = lambda row: None
    TrainLearner(TwoHeads(), SimpleNamespace(train=batches, valid=batches), loss, lr=0.1, cbs=[metrics]).fit(1)
    assert math.isfinite(metrics.last["valid_loss"])


@pytest.mark.parametrize("n", [48, 40])  # equal batches; a short last one
def test_metricscb_logs_the_mean_of_a_loss_with_reduction_none(n):
    """A loss of per-item values (reduction='none', in an evaluation fit) was logged as their sum × the batch size
    (242.9 for a true 15.2), or, with a short last batch, raised a bare 'stack expects each tensor to be equal
    size'. ProgressCB and the NaN guard already took such losses; the batch's loss is the mean of its items'."""
    torch.manual_seed(0)
    x = torch.randn(n, 1)
    y = 2 * x + 3
    dls = DataLoaders(TensorLoader(x, y, bs=16), TensorLoader(x, y, bs=16))
    metrics = MetricsCB()
    learn = TrainLearner(nn.Linear(1, 1), dls, lambda p, t: F.mse_loss(p, t, reduction="none"), cbs=[metrics])
    with redirect_stdout(io.StringIO()):
        learn.fit(1, train=False)
    with torch.no_grad():
        truth = F.mse_loss(learn.model(x), y).item()
    assert metrics.last["valid_loss"] == pytest.approx(truth, rel=1e-6)


class _DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        out = self.lin(x)
        return {"cls": out[:, :3], "reg": out[:, 3]}


def _dict_loss(p, t):
    if not isinstance(t, dict):  # a tuple of one dict per item (torchvision's detection style)
        t = {key: torch.stack([d[key] for d in t]) for key in ("cls", "reg")}
    return F.cross_entropy(p["cls"], t["cls"]) + F.mse_loss(p["reg"], t["reg"])


@pytest.mark.parametrize("per_item", [False, True])
def test_metricscb_weights_each_batch_by_its_items_when_targets_are_dicts(per_item):
    """The batch's size was read as len(target): a dict's number of keys, or the first item's dict's, so a pass of
    batches of 16 and 4 logged the plain mean of the two batch losses (3.18 for a true 3.34)."""
    from torch.utils.data import DataLoader
    torch.manual_seed(0)
    x, y, z = torch.randn(20, 4), torch.randint(0, 3, (20,)), torch.randn(20)
    items = [(x[i], {"cls": y[i], "reg": z[i]}) for i in range(20)]
    collate = (lambda b: (torch.stack([i[0] for i in b]), tuple(i[1] for i in b))) if per_item else None
    dl = DataLoader(items, batch_size=16, collate_fn=collate)
    metrics = MetricsCB()
    learn = TrainLearner(_DictNet(), DataLoaders(dl, dl), _dict_loss, cbs=[metrics])
    with redirect_stdout(io.StringIO()):
        learn.fit(1, train=False)
    with torch.no_grad():
        p = learn.model(x)
    truth = (F.cross_entropy(p["cls"], y, reduction="none") + (p["reg"] - z) ** 2).mean().item()
    assert metrics.last["valid_loss"] == pytest.approx(truth, rel=1e-6)


def test_metricscb_sums_losses_kept_on_a_device_as_it_sums_cpu_ones():
    """CPU losses are read as they come and summed in Python; a GPU's stay tensors, summed on the device in runs of
    equal batch sizes. The second path runs only off the CPU, so it is driven here with the same kept batches."""
    torch.manual_seed(0)
    sizes = [16, 16, 16, 5, 16, 3]
    losses = torch.rand(len(sizes), dtype=torch.float32)
    learn = SimpleNamespace(model=nn.Linear(1, 1), loss_func=F.mse_loss, training=False)
    results = []
    for as_tensor in (False, True):
        cb = MetricsCB()
        cb.before_epoch(learn)
        cb._pending = [(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), loss if as_tensor else loss.item(), n)
                       for loss, n in zip(losses, sizes)]
        cb._count = sum(sizes)
        cb._flush()
        results.append(float(cb._loss_sum) / cb._count)
    truth = float((losses.double() * torch.tensor(sizes, dtype=torch.float64)).sum() / sum(sizes))
    assert results == pytest.approx([truth, truth], rel=1e-12)


class _TwoHeadsSeqFirst(nn.Module):
    """Inputs (T, N, F), as nn.LSTM takes them by default; two heads: logits and a regression."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, xs):
        out = self.lin(xs).mean(0)
        return out[:, :2], out[:, 2]


def test_metricscb_counts_a_two_head_target_s_items_whatever_the_inputs_layout():
    """Counting the items in the first input (for dict targets) miscounted sequence-first inputs (T, N, F) and an
    (x, lengths) tuple: a tuple of targets, one per head, is counted in its first tensor, as before."""
    from torch.utils.data import DataLoader
    torch.manual_seed(0)
    x, y1, y2 = torch.randn(20, 7, 3), torch.randint(0, 2, (20,)), torch.randn(20)
    items = [(x[i], y1[i], y2[i]) for i in range(20)]

    def collate(b):
        return torch.stack([i[0] for i in b], 1), (torch.stack([i[1] for i in b]), torch.stack([i[2] for i in b]))
    dl = DataLoader(items, batch_size=16, collate_fn=collate)  # batches of 16 and 4
    metrics = MetricsCB()
    learn = TrainLearner(_TwoHeadsSeqFirst(), DataLoaders(dl, dl),
                         lambda p, t: F.cross_entropy(p[0], t[0]) + F.mse_loss(p[1], t[1]), cbs=[metrics])
    with redirect_stdout(io.StringIO()):
        learn.fit(1, train=False)
    with torch.no_grad():
        p = learn.model(x.transpose(0, 1))
    truth = (F.cross_entropy(p[0], y1) + F.mse_loss(p[1], y2)).item()
    assert metrics.last["valid_loss"] == pytest.approx(truth, rel=1e-6)


def test_metricscb_counts_a_tuple_of_per_item_targets_by_the_batchs_inputs():
    """A `tuple(zip(*batch))` collate gives each item's 5 labels as its own tensor: a tuple of 4 tensors of 5 rows,
    counted as heads over 5 items, weighted the 4-4-2 batches alike (0.82387 logged for the set's 0.82210). The
    inputs, a tuple of 4 images, say the batch holds 4; real heads (y_a, y_b) still count their rows."""
    from torch.utils.data import DataLoader
    from miniai.weighting import n_items

    class OfImages(nn.Module):  # takes a tuple of images, as torchvision's detection models do
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 5)

        def forward(self, xs):
            return self.lin(torch.stack(list(xs)).flatten(1))
    torch.manual_seed(0)
    x, y = torch.randn(10, 1, 4, 4), (torch.rand(10, 5) > 0.5).float()
    dl = DataLoader(list(zip(x, y)), batch_size=4, collate_fn=lambda b: tuple(zip(*b)))  # 4, 4 and 2 items
    metrics = MetricsCB()
    metrics.log_fn = None
    learn = TrainLearner(OfImages(), DataLoaders(dl, dl), lambda p, ys: F.binary_cross_entropy_with_logits(
        p, torch.stack(ys)), lr=0.1, cbs=[metrics])
    learn.fit(1, train=False)
    with torch.no_grad():
        truth = F.binary_cross_entropy_with_logits(learn.model(tuple(x)), y).item()
    assert metrics.last["valid_loss"] == pytest.approx(truth, rel=1e-6)
    assert n_items((torch.zeros(4), torch.zeros(4)), inputs=4) == 4 and n_items((torch.zeros(4),) * 2, inputs=2) == 2


def test_metricscb_counts_items_of_targets_given_one_per_item():
    """A list of per-item targets of their own lengths (OCR, CTC) was counted as the first one's length (a valid
    loss of 0.50 for a true 0.38); strings, numbers and NumPy arrays raised RecursionError, TypeError, ValueError."""
    import numpy as np
    from miniai.weighting import n_items
    lengths = [torch.zeros(7), torch.zeros(3), torch.zeros(5), torch.zeros(2)]
    assert n_items(lengths) == 4 and n_items(["a cat", "dog", "x", "yy"]) == 4 and n_items((1, 2, 3, 4)) == 4
    assert n_items(np.zeros((4, 2))) == 4 and n_items({"boxes": [torch.zeros(5, 4), torch.zeros(1, 4)]}) == 2
    assert n_items((torch.zeros(4), torch.zeros(4, 3))) == 4  # two heads

    from torch.utils.data import DataLoader
    torch.manual_seed(0)
    x, lens = torch.randn(20, 3), torch.randint(1, 30, (20,))
    ys = [torch.randn(int(n)) for n in lens]
    dl = DataLoader(list(zip(x, ys)), batch_size=16, collate_fn=lambda b: (torch.stack([i[0] for i in b]),
                                                                          [i[1] for i in b]))

    def loss(p, t):
        return torch.stack([(p[i] - t[i].mean()) ** 2 for i in range(len(t))]).mean()
    metrics = MetricsCB()
    learn = TrainLearner(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), DataLoaders(dl, dl), loss, cbs=[metrics])
    with redirect_stdout(io.StringIO()):
        learn.fit(1, train=False)
    with torch.no_grad():
        truth = loss(learn.model(x), ys).item()
    assert metrics.last["valid_loss"] == pytest.approx(truth, rel=1e-6)


def test_a_metricscb_subclass_overriding_log_gets_every_row_as_the_courses_did():
    """The course's MetricsCB sent rows to `self._log(d)`, which its WandBCB(MetricsCB) overrides and its ProgressCB
    replaces on the instance; ours only called `log_fn`, so a ported subclass's `_log` was never called, silently."""
    rows = rows_metrics()
    tiny_learner([rows]).fit(2)
    assert [(r["epoch"], r["train"]) for r in rows.rows] == [(0, "train"), (0, "valid"), (1, "train"), (1, "valid")]
    metrics, seen = MetricsCB(), []
    metrics._log = seen.append  # (the course's ProgressCB did learn.metrics._log = self._log)
    tiny_learner([metrics]).fit(1)
    assert [r["train"] for r in seen] == ["train", "valid"]


def test_a_metricscb_subclass_overriding_log_beside_a_progress_bar_gives_both_their_rows():
    """ProgressCB took MetricsCB's rows through log_fn, which a subclass's `_log` (the course's WandBCB) never calls:
    no table, and no validation curve (valid_losses []), without a word. Both get every row now, on the instance's
    own `_log` too; after the fit the metrics callback is as it was."""
    rows, progress, out = rows_metrics(), ProgressCB(mode="plain"), io.StringIO()
    with redirect_stdout(out):
        tiny_learner([rows, progress]).fit(2)
    assert [(r["epoch"], r["train"]) for r in rows.rows] == [(0, "train"), (0, "valid"), (1, "train"), (1, "valid")]
    assert progress.valid_losses == [h["loss"] for h in rows.history if h["train"] == "valid"]
    assert out.getvalue().count("valid") == 2 and "_log" not in vars(rows)
    metrics, seen = MetricsCB(), []
    metrics._log = seen.append
    with redirect_stdout(io.StringIO()) as out:
        tiny_learner([metrics, progress]).fit(1)
    assert [r["train"] for r in seen] == ["train", "valid"] and out.getvalue().count("valid") == 1
    assert metrics._log == seen.append and len(progress.valid_losses) == 1


def test_a_metricscb_subclass_whose_log_calls_log_fn_runs_beside_a_progress_bar():
    # (regression probe) ProgressCB set log_fn to None for the fit (its table replaces MetricsCB's printer): a
    # subclass's _log calling self.log_fn(row) failed at the first row
    class Tagged(MetricsCB):
        def _log(self, row):
            self.log_fn({**row, "tag": "x"})
    metrics, out = Tagged(), io.StringIO()
    with redirect_stdout(out):
        tiny_learner([metrics, ProgressCB(mode="plain")]).fit(1)
    assert out.getvalue().count("valid") == 1 and metrics.log_fn is metrics._printer


def test_a_learner_copied_during_a_fit_fits_again_with_its_progress_bar(tmp_path):
    # (probe) a callback keeping the best epoch's learner (copy.deepcopy(learn)) copied ProgressCB's hold on
    # MetricsCB's rows with it: the copy's next fit took its own hold as the rows' next stop, RecursionError
    import copy

    class KeepBest(Callback):
        order = 50
        def after_epoch(self, learn):
            if not learn.training:
                self.best = copy.deepcopy(learn)
    keep = KeepBest()
    with redirect_stdout(io.StringIO()):
        tiny_learner(cbs=[MetricsCB(), ProgressCB(mode="plain")]).fit(1, cbs=[keep])
    best, out = keep.best, io.StringIO()
    with redirect_stdout(out):
        best.fit(1)
    assert out.getvalue().count("valid") == 1 and "_log" not in vars(best.metrics)
    assert best.metrics.log_fn is best.metrics._printer


def test_a_sum_loss_of_dict_batches_is_shown_per_item_by_the_progress_bar_and_lr_find():
    """ProgressCB and lr_find divide a 'sum' loss by the batch's items, which they counted from learn.yb: with dict
    batches read by the learner's own steps both failed ('a batch is a tuple ...'). Their first batch's loss is its
    sum over 16 items divided by 16."""
    from tests.synth import DictLearner, dict_dls
    dls, loss_func = dict_dls(), partial(F.mse_loss, reduction="sum")
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    with torch.no_grad():
        first = loss_func(model(dls.train[0]["x"]), dls.train[0]["y"]).item() / 16
    progress = ProgressCB()
    learn = DictLearner(model, dls, loss_func, lr=0.001, cbs=[progress])
    found = learn.lr_find(start_lr=1e-6, max_epochs=1, plot=False)
    assert found.losses[0] == pytest.approx(first, rel=1e-5)
    learn.fit(1)
    assert progress.losses[0] == pytest.approx(first, rel=1e-5)
