"""TerminateOnNaNCB, EarlyStoppingCB, GradClipCB, and the clear errors for wiring mistakes."""
import gzip
from functools import partial
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, TensorDataset

import miniai.sources as sources_module
from miniai.callbacks import MetricsCB, TrainCB
from miniai.callbacks.checkpoint import CheckpointCB
from miniai.callbacks.guards import EarlyStoppingCB, GradClipCB, NonFiniteLossError, TerminateOnNaNCB
from miniai.callbacks.scheduling import EpochSchedCB
from miniai.data import DataLoaders, TensorLoader, get_dls
from miniai.idx import IDXError, write_idx
from miniai.sources import DataNotFoundError
from miniai.callbacks.basic import LossInputError, _broadcast_shape
from miniai.learner import Callback, Learner, MomentumLearner, TrainLearner
from tests.synth import DictLearner, dict_dls, linear_dls, tiny_learner


class Steps(Callback):
    """Counts optimizer steps per epoch."""

    def __init__(self):
        self.steps = []

    def before_epoch(self, learn):
        if learn.training:
            self.steps.append(0)

    def after_step(self, learn):
        self.steps[-1] += 1


class PoisonLoss(Callback):
    """Replaces the training loss of batch `at` in `epoch` by `value` (before the NaN guard sees it)."""
    order = 1

    def __init__(self, at, value=float("nan"), epoch=0):
        self.at, self.value, self.epoch = at, value, epoch

    def after_loss(self, learn):
        if learn.training and learn.epoch == self.epoch and learn.iter == self.at:
            learn.loss = learn.loss * self.value


# ---------------------------------------------------------------- TerminateOnNaNCB

def test_nan_loss_at_batch_5_stops_there_with_epoch_batch_and_lr():
    steps = Steps()
    learn = tiny_learner(cbs=[steps, PoisonLoss(at=5)], n_train=160, lr=0.01)  # 10 batches per epoch
    weights = None

    class Snapshot(Callback):
        def after_step(self, learn):
            nonlocal weights
            weights = [p.detach().clone() for p in learn.model.parameters()]
    learn.add_cb(Snapshot())
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 0, batch 5 \(lr=0.01\)"):
        learn.fit(2)
    assert steps.steps == [5]  # batches 0-4 stepped; batch 5 stopped before its backward
    assert all(torch.equal(a, b) for a, b in zip(weights, learn.model.parameters()))  # and left the weights alone
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_a_nan_loss_of_dict_batches_read_by_the_learners_own_steps_is_reported_as_one():
    """The guard's message read learn.yb, which a dict batch has not: a TypeError telling to restructure the batches
    (or own predict and get_loss, as this learner does) replaced the NonFiniteLossError."""
    DictLearner(nn.Linear(4, 1), dict_dls(), F.mse_loss, lr=0.01).fit(1)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 0, batch 2"):
        DictLearner(nn.Linear(4, 1), dict_dls(nan_at=40), F.mse_loss, lr=0.01).fit(1)


def test_infinite_loss_stops_too():
    learn = tiny_learner(cbs=[PoisonLoss(at=1, value=float("inf"), epoch=1)])
    with pytest.raises(NonFiniteLossError, match="training loss is inf at epoch 1, batch 1"):
        learn.fit(3)


def test_deferred_check_names_the_first_bad_batch_and_warns_about_the_weights():
    """The accelerator path (no sync per batch), forced on the CPU: checked at the end of the training pass."""
    steps = Steps()
    learn = tiny_learner(cbs=[steps, PoisonLoss(at=2), TerminateOnNaNCB(immediate=False)], n_train=160,
                         learner_cls=lambda *a, **k: TrainLearner(*a, **k, nan_guard=False))
    with pytest.raises(NonFiniteLossError, match="at epoch 0, batch 2 .*detected at batch 9.*probably NaN"):
        learn.fit(2)
    assert steps.steps == [10]  # the whole pass ran: the check came at its end


def test_deferred_check_every_n_batches():
    steps = Steps()
    learn = tiny_learner(cbs=[steps, PoisonLoss(at=2), TerminateOnNaNCB(every=4, immediate=False)], n_train=160,
                         learner_cls=lambda *a, **k: TrainLearner(*a, **k, nan_guard=False))
    with pytest.raises(NonFiniteLossError, match="batch 2 .*detected at batch 3"):
        learn.fit(1)
    assert steps.steps == [3]  # batches 0-2 stepped; stopped at batch 3's after_loss (the 4th loss)


def test_nan_guard_is_on_by_default_and_can_be_turned_off_or_removed():
    learn = tiny_learner()
    guards = [cb for cb in learn.cbs if isinstance(cb, TerminateOnNaNCB)]
    assert len(guards) == 1
    assert MomentumLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.1).cbs[0].__class__ is TerminateOnNaNCB
    mine = TerminateOnNaNCB(every=3)
    assert [cb for cb in TrainLearner(nn.Linear(1, 1), linear_dls(), cbs=[mine]).cbs] == [mine]  # not doubled
    assert not TrainLearner(nn.Linear(1, 1), linear_dls(), nan_guard=False).cbs
    learn.rm_cb(guards[0]).add_cb(PoisonLoss(at=1))
    learn.fit(1)  # no guard: the NaN trains on
    assert not all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_nan_guard_stands_aside_for_a_callback_that_handles_nonfinite_losses():
    class Finder(Callback):
        handles_nonfinite_loss = True
    learn = tiny_learner(cbs=[PoisonLoss(at=1), Finder()])
    learn.fit(1)  # no error


# ---------------------------------------------------------------- EarlyStoppingCB

class FakeMetrics(Callback):
    """Stands in for MetricsCB: logs valid_loss from a fixed sequence, one value per epoch."""
    order = 10

    def __init__(self, values):
        self.values, self.names, self.last = values, ["train_loss", "valid_loss"], {}

    def before_fit(self, learn):
        learn.metrics = self

    def after_epoch(self, learn):
        if not learn.training:
            self.last = {"valid_loss": self.values[learn.epoch]}


@pytest.mark.parametrize("values, kwargs, epochs_run", [
    ([5, 4, 4.5, 4.2, 4.1, 3, 2, 1], dict(patience=3), 5),                      # no new best in epochs 2, 3, 4
    ([5, 4, 3.9, 3.8, 3.7, 3.6, 3, 2], dict(patience=2, min_delta=0.5), 4),     # improvements < 0.5 don't count
    ([1, 2, 3, 2, 2, 2, 9, 9], dict(monitor="valid_accuracy", patience=2), 5),  # (read as 'max' from its name)
    ([5, 4, 3, 2, 1, 0, -1, -2], dict(patience=1), 8),                          # always improving: runs to the end
])
def test_early_stopping_stops_after_patience_epochs_without_improvement(values, kwargs, epochs_run):
    steps, early = Steps(), EarlyStoppingCB(**kwargs)
    tiny_learner(cbs=[steps, FakeAccuracy(values) if "monitor" in kwargs else FakeMetrics(values), early]).fit(8)
    assert len([s for s in steps.steps if s]) == epochs_run  # the next epoch is cancelled at its start
    assert early.stopped_epoch == (epochs_run - 1 if epochs_run < 8 else None)


class FakeAccuracy(FakeMetrics):
    """FakeMetrics logging valid_accuracy instead."""

    def __init__(self, values):
        super().__init__(values)
        self.names = ["train_accuracy", "train_loss", "valid_accuracy", "valid_loss"]

    def after_epoch(self, learn):
        if not learn.training:
            self.last = {"valid_accuracy": self.values[learn.epoch], "valid_loss": 0.0}


def test_early_stopping_on_accuracy_waits_for_it_to_stop_rising():
    """The default mode was 'min' whatever the monitor: on valid_accuracy every rise counted as no improvement,
    and an improving run was stopped after `patience` epochs."""
    steps, early = Steps(), EarlyStoppingCB("valid_accuracy", patience=2)
    tiny_learner(cbs=[steps, FakeAccuracy([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.91, 0.92]), early]).fit(8)
    assert len([s for s in steps.steps if s]) == 8 and early.stopped_epoch is None and early.mode == "max"


def test_a_monitor_whose_direction_the_name_does_not_tell_needs_a_mode():
    assert EarlyStoppingCB("valid_loss").mode == "min" and EarlyStoppingCB("train_mse").mode == "min"
    assert EarlyStoppingCB("valid_f1").mode == "max" and EarlyStoppingCB("valid_foo", mode="max").mode == "max"
    with pytest.raises(ValueError, match=r"monitor='valid_foo'\) can't tell .* pass mode='min' or mode='max'"):
        EarlyStoppingCB("valid_foo")


def test_early_stopping_unknown_monitor_lists_the_logged_names():
    with pytest.raises(ValueError, match=r"monitor='valid_acc'\): MetricsCB does not log that name; it logs "
                                         r"train_loss, valid_loss"):
        tiny_learner(cbs=[MetricsCB(), EarlyStoppingCB("valid_acc")]).fit(1)
    with pytest.raises(ValueError, match=r"has no MetricsCB: add MetricsCB\(\)"):
        tiny_learner(cbs=[EarlyStoppingCB()]).fit(1)


# ---------------------------------------------------------------- GradClipCB

def test_grad_clip_bounds_the_total_norm_at_every_step():
    norms = []

    class Norm(Callback):
        order = 30  # after GradClipCB

        def after_backward(self, learn):
            norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in learn.model.parameters()])))
    clip = GradClipCB(0.01)
    tiny_learner(cbs=[clip, Norm()]).fit(1)
    assert len(norms) == 3 and all(n <= 0.01 + 1e-6 for n in norms)
    assert float(clip.last_norm) > 0.01  # the unclipped norm was larger: clipping did something


def test_grad_clip_unscales_first_when_a_grad_scaler_is_in_use():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    loss = model(torch.randn(4, 3)).pow(2).mean()
    scaler.scale(loss).backward()  # grads are 1024 × the true ones
    holder = SimpleNamespace(scaler=scaler)  # as a mixed precision callback exposes it
    learn = SimpleNamespace(model=model, opt=opt, cbs=[holder])
    true_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])) / 1024
    GradClipCB(max_norm=1e6).after_backward(learn)  # a bound far above: only the unscaling shows
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert norm == pytest.approx(true_norm, rel=1e-5)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(opt)  # so scaler.step will not unscale twice


# ---------------------------------------------------------------- clear errors

def test_loss_shape_mismatch_shows_both_shapes_before_any_step():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    dls = DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x, y, bs=8))
    model = nn.Linear(4, 5)
    before = model.weight.detach().clone()
    learn = TrainLearner(model, dls, F.cross_entropy, lr=0.1)
    with pytest.raises(LossInputError, match=r"cross_entropy failed.*shape \(8, 5\) float32.*shape \(16,\) int64"):
        learn.fit(1, cbs=[_WrongTargets()])
    assert torch.equal(model.weight, before)
    with pytest.raises(RuntimeError, match=r"mse_loss failed on the model output \(preds, shape \(16, 1\)"):
        tiny_learner(cbs=[_WrongTargets()]).fit(1)  # still a RuntimeError for existing except clauses


class _WrongTargets(Callback):
    """Gives the batch targets of an incompatible shape."""

    def before_batch(self, learn):
        xb, yb = learn.batch
        learn.batch = (xb, torch.cat([yb, yb]))


def test_loss_shape_mismatch_with_train_cb_on_a_plain_learner():
    learn = tiny_learner(cbs=[TrainCB(), _WrongTargets()], learner_cls=Learner)
    with pytest.raises(LossInputError, match=r"\(preds, shape \(16, 1\) float32\) and the targets \(shape \(32, 1\)"):
        learn.fit(1)


@pytest.mark.parametrize("train_dl, why", [
    (TensorLoader(torch.zeros(0, 1), torch.zeros(0, 1), bs=4), "its dataset is empty"),
    (DataLoader(TensorDataset(torch.zeros(3, 1), torch.zeros(3, 1)), batch_size=4, drop_last=True),
     "3 items with bs=4 and drop_last=True make no full batch"),
])
def test_empty_train_loader_is_an_error_before_anything_runs(train_dl, why):
    started = []

    class Started(Callback):
        def before_fit(self, learn):
            started.append(True)
    learn = TrainLearner(nn.Linear(1, 1), DataLoaders(train_dl, linear_dls().valid), cbs=[Started()])
    with pytest.raises(ValueError, match=f"dls.train has no batches: {why}"):
        learn.fit(1)
    assert not started
    learn.fit(1, train=False)  # validating alone is fine


def test_no_learning_rate_anywhere_is_an_error():
    with pytest.raises(ValueError, match=r"No learning rate: pass lr= .*learn.fit\(3, lr=1e-2\)"):
        tiny_learner(lr=None).fit(1)


def test_misspelled_event_is_an_error_when_the_callback_is_added():
    class Typo(Callback):
        def after_btach(self, learn):
            pass
    with pytest.raises(TypeError, match=r"Typo.after_btach is not an event \(did you mean 'after_batch'\?\)\. "):
        tiny_learner(cbs=[Typo()])
    with pytest.raises(TypeError, match="after_btach is not an event"):
        tiny_learner().add_cb(Typo())


def _fake_fashion_dir(d, n=6):
    d.mkdir()
    for split, m in (("train", n), ("t10k", n)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", torch.zeros(m, 28, 28, dtype=torch.uint8))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", torch.zeros(m, dtype=torch.uint8))


def test_data_directory_with_a_truncated_file_names_it_and_the_expected_size(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIAI_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "fmnist"
    _fake_fashion_dir(d)
    raw = gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(IDXError, match=r"train-images-idx3-ubyte.gz: header says 6x28x28 uint8 = 4704 data bytes, "
                                       r"found 4604 \(truncated\)"):
        get_dls(path=d)


def test_data_directory_with_missing_files_names_them_and_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIAI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources_module, "SYSTEM_DATA_DIR", tmp_path / "no-system-dir")
    d = tmp_path / "fmnist"
    _fake_fashion_dir(d)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"(?s)lacks t10k-labels-idx1-ubyte.*Looked there for the four IDX"):
        get_dls(path=d)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nan_guard_does_not_synchronize_inside_the_batch_loop_on_cuda():
    """Sync debug mode 'error' around every batch: the guard keeps losses on the device; checks at the pass end."""
    class NoSync(Callback):
        order = -100

        def before_batch(self, learn):
            torch.cuda.set_sync_debug_mode("error")

        def cleanup_batch(self, learn):
            torch.cuda.set_sync_debug_mode("default")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    dls = DataLoaders(TensorLoader(x, x.sum(1, keepdim=True), bs=16, shuffle=True, seed=0),
                      TensorLoader(x[:32], x[:32].sum(1, keepdim=True), bs=16)).to("cuda")
    learn = TrainLearner(nn.Linear(4, 1).cuda(), dls, F.mse_loss, lr=0.01, cbs=[NoSync()])
    try:
        learn.fit(2)  # finite losses: no error, and no synchronisation in any batch
        with pytest.raises(NonFiniteLossError, match="at epoch 0, batch 5 .*detected at batch 15"):
            learn.fit(1, cbs=[PoisonLoss(at=5)])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_lr_find_runs_into_an_infinite_loss_with_the_nan_guard_on():
    """LRFinderCB sets handles_nonfinite_loss: it stops on inf itself, the default guard stands aside."""
    learn = tiny_learner(n_train=480)
    result = learn.lr_find(start_lr=0.1, gamma=30.0, max_mult=1e300, plot=False)
    assert result.losses[-1] == float("inf")


@pytest.mark.parametrize("make", [lambda: EarlyStoppingCB("valid_loss", patience=1),
                                  lambda: EpochSchedCB(partial(ReduceLROnPlateau, patience=0), "valid_loss")],
                         ids=["EarlyStoppingCB", "ReduceLROnPlateau"])
def test_a_monitor_of_a_pass_the_fit_does_not_run_is_refused(make):
    """fit(valid=False) with a callback watching valid_loss: it never got a value, so it silently never acted."""
    with pytest.raises(ValueError, match=r"monitor='valid_loss'\) watches the valid pass, and this fit runs none "
                                         r"\(fit\(\.\.\., valid=False\)\)"):
        tiny_learner(cbs=[MetricsCB(), make()]).fit(2, valid=False)
    tiny_learner(cbs=[MetricsCB(), make()]).fit(2)  # with the pass it watches: fine


def test_the_deferred_nan_check_runs_also_when_the_pass_is_cancelled():
    """On a GPU the guard checks the kept losses at after_epoch, which a cancel skips: SingleBatchCB or an early
    CancelFitException ended with NaN weights and no error."""
    from miniai.callbacks import SingleBatchCB
    learn = tiny_learner(cbs=[PoisonLoss(at=0), TerminateOnNaNCB(immediate=False)])  # the GPU's way, on the CPU
    with pytest.raises(NonFiniteLossError, match="training loss is nan at epoch 0, batch 0"):
        learn.fit(1, cbs=[SingleBatchCB()])


def test_the_direction_of_a_score_is_read_only_where_the_name_tells_it():
    """'score' counted as higher-is-better: EarlyStoppingCB('valid_brier_score') stopped a run whose Brier score
    kept falling, keeping the worst value as the best."""
    assert EarlyStoppingCB("valid_brier_score").mode == "min" and EarlyStoppingCB("valid_fid_score").mode == "min"
    assert EarlyStoppingCB("valid_MulticlassF1Score").mode == "max" and EarlyStoppingCB("valid_r2_score").mode == "max"
    with pytest.raises(ValueError, match="can't tell from the name"):
        EarlyStoppingCB("valid_score")


@pytest.mark.parametrize("name", ["valid_neg_recall", "valid_neg_precision", "valid_neg_class_accuracy",
                                  "valid_neg_class_loss", "valid_neg_mean_squared_error", "valid_false_accept_rate",
                                  "valid_accuracy_gap", "valid_one_minus_accuracy", "valid_inverse_loss"])
def test_a_name_whose_last_word_or_a_negation_leaves_the_direction_open_asks_for_mode(name):
    """(probe P11, session 22) 'neg' flipped every name (valid_neg_recall, a specificity, rising: read 'min', so
    EarlyStoppingCB stopped at epoch 3 of 10 while it improved), and words were matched anywhere in the name and by
    their start (false_accept_rate: 'acc', max; accuracy_gap: max). The last word says the direction, and 'neg',
    which may negate the metric (scikit-learn's) or name the negative class, leaves it to mode."""
    with pytest.raises(ValueError, match="can't tell from the name"):
        EarlyStoppingCB(name)
    assert EarlyStoppingCB(name, mode="max").mode == "max"


@pytest.mark.parametrize("name, mode", [("valid_DiceBCELoss", "min"), ("valid_error_rate", "min"),
                                        ("valid_acc5", "max"), ("valid_BalancedAccuracy", "max"),
                                        ("train_loss", "min"), ("valid_jaccard", "max"),
                                        # (regression round T1: names the first fix refused, the words that qualify
                                        # the last one or a number after it)
                                        ("valid_accuracy_multi", "max"), ("valid_RocAucBinary", "max"),
                                        ("valid_CorpusBLEUMetric", "max"), ("valid_LossMetric", "min"),
                                        ("valid_f1_macro", "max"), ("valid_auc_roc", "max"), ("valid_dice_coef", "max"),
                                        ("valid_accuracy_top5", "max"), ("valid_acc@1", "max"),
                                        ("valid_recall_at_5", "max"), ("valid_precision_at_k", "max"),
                                        ("valid_error_rate_top5", "min"), ("valid_loss_2", "min"),
                                        ("valid_NegativeLogLikelihoodLoss", "min")])
def test_the_last_word_of_the_name_says_the_direction(name, mode):
    """(probe P11) DiceBCELoss read as 'dice' (max) for a loss: the name's last word is what it measures."""
    assert EarlyStoppingCB(name).mode == mode


def test_one_minus_a_metric_asks_for_mode_and_what_is_measured_comes_before_at():
    """(session 22's T3, left then) `valid_1-acc` (an error rate, falling) read as 'acc': max, and
    `valid_loss_at_best_acc` (a loss) read as its last word, 'acc': max. "1-" negates what follows it; what comes
    after "at" is when the value was taken (recall_at_5: still max), not what it measures."""
    for name in ("valid_1-acc", "valid_1 - accuracy", "1-error"):
        with pytest.raises(ValueError, match="can't tell from the name"):
            EarlyStoppingCB(name)
    assert EarlyStoppingCB("valid_loss_at_best_acc").mode == "min"
    assert EarlyStoppingCB("valid_recall_at_precision_90").mode == "max"
    assert EarlyStoppingCB("valid_top1-acc").mode == "max" and EarlyStoppingCB("valid_acc_top1-5").mode == "max"
    # (regression round T1: "1-" before a word that is no metric, or after a dash, is no negation)
    for name, mode in [("valid_top-1-acc", "max"), ("top-1-accuracy", "max"), ("valid_top-1-error", "min"),
                       ("valid_1-shot-acc", "max"), ("valid_5-way-1-shot-acc", "max")]:
        assert EarlyStoppingCB(name).mode == mode, name
    # (regression round T2) metric words with digits, and other separators before the 1, negate too
    for name in ("valid_1-f1", "valid_1-r2", "valid_1-f1_macro", "valid_1 - f1", "valid_1-F1", "valid/1-acc",
                 "valid.1-acc", "valid_1-acc5"):
        with pytest.raises(ValueError, match="can't tell from the name"):
            EarlyStoppingCB(name)


@pytest.mark.parametrize("make", [lambda: EarlyStoppingCB("valid_accuracy", mode="min"),
                                  lambda: CheckpointCB("unused_dir", monitor="valid_loss", mode="max")])
def test_a_mode_the_name_contradicts_is_refused_as_reducelronplateaus_is(make, tmp_path, monkeypatch):
    """(probe P11) EarlyStoppingCB('valid_accuracy', mode='min') stopped a run at its first rising accuracy; the
    plateau scheduler refused the same contradiction, the other two took it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"mode='(min|max)'\): .* improves as it (rises|falls), so mode='\1' would "
                                         r"take its worst"):
        make()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 2, 3]), max_size=4), st.lists(st.sampled_from([0, 1, 2, 3]), max_size=4))
def test_the_loss_check_broadcasts_shapes_as_torch_does(a, b):
    # the loss check's own broadcast (torch.broadcast_shapes raising for a classifier's shapes cost 40 µs a batch)
    try:
        expected = tuple(torch.broadcast_shapes(torch.Size(a), torch.Size(b)))
    except RuntimeError:
        expected = None
    assert _broadcast_shape(torch.Size(a), torch.Size(b)) == expected


def test_integer_targets_that_would_broadcast_are_refused_too():
    """The broadcast check ran for float targets only: Poisson counts (int64, (N,)) against (N,1) preds trained
    on an (N,N) loss."""
    x = torch.randn(32, 3)
    y = torch.poisson(torch.full((32,), 2.0)).long()
    learn = TrainLearner(nn.Linear(3, 1), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)),
                         F.poisson_nll_loss, lr=0.01)
    with pytest.raises(LossInputError, match=r"broadcast to \(8, 8\)"):
        learn.fit(1)


def test_torch_losses_that_take_several_targets_get_them():
    """gaussian_nll_loss(preds, y, var) was refused: "torch's losses take one target"; cross_entropy still refuses
    a batch with an extra item (it would take it as class weights)."""
    x, y, var = torch.randn(32, 3), torch.randn(32, 1), torch.rand(32, 1) + 0.5
    dl = DataLoader(TensorDataset(x, y, var), 8)
    learn = TrainLearner(nn.Linear(3, 1), DataLoaders(dl, dl), F.gaussian_nll_loss, lr=0.01)
    learn.fit(1)
    ids = torch.arange(32)
    dl = DataLoader(TensorDataset(x, torch.randint(0, 3, (32,)), ids), 8)
    with pytest.raises(LossInputError, match=r"cross_entropy takes 1 target, but the batch has 2 items"):
        TrainLearner(nn.Linear(3, 3), DataLoaders(dl, dl), F.cross_entropy, lr=0.01).fit(1)


@pytest.mark.parametrize("name, mode", [
    ("valid_answer_exact_match", None), ("valid_fidelity", None), ("valid_confidence", None),
    ("valid_evidence_lower_bound", None), ("valid_power", None),  # 'wer', 'fid' inside other words: ask
    ("valid_wer", "min"), ("valid_fid", "min"), ("valid_top5_accuracy", "max"), ("validMeanAbsError", "min"),
    ("valid_BinaryAUROC", "max"), ("valid_r2_score", "max")])
def test_the_direction_is_read_from_whole_parts_of_the_name(name, mode):
    """'wer' and 'fid' were looked for anywhere in the name: exact_match (ans-wer), lower_bound (lo-wer) and
    fidelity fell to 'min', so EarlyStoppingCB stopped a rising metric and CheckpointCB kept the worst file."""
    if mode is None:
        with pytest.raises(ValueError, match="can't tell from the name"):
            EarlyStoppingCB(name)
    else:
        assert EarlyStoppingCB(name).mode == mode



class _FlatTargetsFrom(Callback):
    """From batch `at` of each pass on, the targets become (N,) against the model's (N, 1) preds (they broadcast)."""

    def __init__(self, at):
        self.at = at

    def before_batch(self, learn):
        if learn.iter >= self.at:
            learn.batch = (learn.batch[0], learn.batch[1][:, 0])


def test_the_loss_check_runs_again_when_the_shapes_change_part_way_through_a_fit():
    """The loss's input check is skipped while the shapes are those it passed (it cost 8 µs a batch): shapes that
    change on a later batch, or a loss changed between fits, are checked afresh, not trained on."""
    learn = tiny_learner(cbs=[_FlatTargetsFrom(at=1)])
    with pytest.raises(LossInputError, match=r"shape \(16, 1\) float32.*shape \(16,\) float32.*broadcast"):
        learn.fit(1)
    assert learn.iter == 1
    learn = tiny_learner(cbs=[_FlatTargetsFrom(at=0)])
    learn.loss_func = lambda p, y: F.mse_loss(p[:, 0], y)
    with pytest.warns(UserWarning, match="If it reshapes them itself"):
        learn.fit(1)  # a loss of the user's own, which reshapes the (N, 1) preds itself
    learn.loss_func = F.mse_loss  # the same shapes, now broadcast
    with pytest.raises(LossInputError, match="mse_loss failed.*broadcast"):
        learn.fit(1)


def test_a_train_cb_pickled_before_it_kept_its_loss_check_still_trains():
    """Exports and pickles written before TrainCB kept a SupervisedLoss held TrainCBs without one: loaded, their
    get_loss raised AttributeError: 'TrainCB' object has no attribute '_loss'. The function supervised_loss, the
    name those versions exported, still works too."""
    import pickle
    from miniai.callbacks.basic import supervised_loss
    old = TrainCB()
    old.__dict__.pop("_loss", None)  # what unpickling an older TrainCB gives (made at the first loss now)
    loaded = pickle.loads(pickle.dumps(old))
    learn = tiny_learner(cbs=[loaded], learner_cls=Learner)
    learn.fit(1)
    learn.batch = (torch.zeros(4, 1), torch.zeros(4))
    learn.preds = torch.zeros(4, 1)
    with pytest.raises(LossInputError, match="broadcast"):
        supervised_loss(learn)


class DivergeAt(Callback):
    """Makes the optimizer step of training batch `at` of `epoch` diverge: it leaves a weight infinite (the loss of
    that batch, computed before the step, was finite)."""
    order = 50

    def __init__(self, at, epoch=0):
        self.at, self.epoch = at, epoch

    def after_step(self, learn):
        if learn.epoch == self.epoch and learn.iter == self.at:
            with torch.no_grad():
                learn.model.weight.fill_(float("inf"))


@pytest.mark.parametrize("guard, fit_kwargs", [
    (TerminateOnNaNCB(), {}), (TerminateOnNaNCB(), {"valid": False}), (TerminateOnNaNCB(immediate=False), {})],
    ids=["immediate", "no validation", "deferred"])
def test_a_fit_whose_last_step_diverges_does_not_end_silently_with_non_finite_weights(guard, fit_kwargs):
    """`python -m miniai train --lr 1e6` exited 0 and saved model.pt full of NaN: every training loss was finite, the
    last optimizer step was not (the validation loss was NaN, which the guard does not read)."""
    learn = tiny_learner(cbs=[guard, DivergeAt(at=2, epoch=1)],
                         learner_cls=lambda *a, **k: TrainLearner(*a, **k, nan_guard=False))  # 3 batches a pass
    # (epochs counted from 0, as the guard's other messages and the metrics table count them: it said "epoch 2
    # (counted from 1)", where they say "epoch 1" of the same epoch; probe B)
    with pytest.raises(NonFiniteLossError, match=r"the weights are not finite .* ended in epoch 1 \(counted from 0, "
                                                 r"as in the metrics table; lr=.*every training loss was finite.* Try "
                                                 r"a lower lr"):
        learn.fit(2, **fit_kwargs)


def test_a_tensor_trained_beside_the_model_that_diverged_at_the_last_step_is_named_too():
    """(probe P23, session 23) The end-of-fit check read the model's parameters only: a temperature the optimizer
    trains beside the model, made -inf by the fit's last step (every loss finite), ended the fit without a word."""
    extra = nn.Parameter(torch.tensor(0.0))

    def opt_func(params, lr):
        return torch.optim.SGD(list(params) + [extra], lr=lr)

    class Diverge(Callback):
        def after_step(self, learn):
            if learn.iter == 2:  # the pass's last batch
                with torch.no_grad():
                    extra.fill_(float("-inf"))
    learn = tiny_learner(cbs=[Diverge()])
    learn.loss_func, learn.opt_func = (lambda p, t: F.mse_loss(p, t) + extra), opt_func
    with pytest.raises(NonFiniteLossError, match=r"not finite \(NaN or inf: tensor 0 the optimizer trains beside the "
                                                 r"model, of shape \(\), first\)"):
        learn.fit(1, valid=False)


def test_a_nan_before_any_step_says_so_under_gradient_accumulation_and_after_a_deferred_check_that_steps_ran():
    """(probe P23) Under GradAccumCB(4), a NaN at batch 2 came before any step, and the message advised a lower lr;
    with the deferred check, a NaN at the first batch found at the end of the pass said "before any optimizer step"
    and left out that the pass's steps ran on NaN gradients since (the weights were NaN)."""
    from miniai.callbacks import GradAccumCB
    learn = tiny_learner(cbs=[PoisonLoss(at=2), GradAccumCB(4)], n_train=160)
    with pytest.raises(NonFiniteLossError, match=r"batch 2, before any optimizer step of this fit: the lr is not "
                                                 r"the cause(?!.*lower lr)"):
        learn.fit(1)
    learn = tiny_learner(cbs=[PoisonLoss(at=0), TerminateOnNaNCB(immediate=False)], n_train=160,
                         learner_cls=lambda *a, **k: TrainLearner(*a, **k, nan_guard=False))
    with pytest.raises(NonFiniteLossError, match=r"batch 0, the fit's first batch, before any optimizer step: the lr "
                                                 r"is not the cause.*detected at batch 9.*probably NaN now"):
        learn.fit(1)


def test_a_nan_at_a_resumed_fits_first_batch_names_the_checkpoint_without_advising_a_lower_lr(tmp_path):
    """(regression round T1) "before any optimizer step: the lr is not the cause", then "The last good checkpoint
    is ...: continue from it with a lower lr": the advice contradicted the diagnosis."""
    tiny_learner(cbs=[CheckpointCB(tmp_path)]).fit(1)
    learn = tiny_learner(cbs=[PoisonLoss(at=0, epoch=1), CheckpointCB(tmp_path)])
    with pytest.raises(NonFiniteLossError, match=r"before any optimizer step: the lr is not the cause.*The last good "
                                                 r"checkpoint is .*epoch_0001.pt\.$") as error:
        learn.fit(2, resume=tmp_path)
    assert "lower lr" not in str(error.value)


def test_a_non_finite_running_statistic_is_named_not_blamed_on_a_diverged_step():
    """A BatchNorm running_var that was NaN before the fit (training uses batch statistics, so every loss stays
    finite) ended the fit with "the weights are not finite ... an optimizer step after the last loss checked
    diverged": no step diverged, and no weight was named. Now the tensor is named, and what sets it."""
    learn = tiny_learner()
    learn.model = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    learn.model[1].running_var[2] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"the running statistic 1\.running_var is not finite .*every weight "
                                                 r"is "
                                                 r"finite \(the largest \|weight\| is \d.*not steps directly.*before "
                                                 r"this fit") as info:
        learn.fit(1)
    assert "Try a lower lr" in str(info.value)  # (for the first of the three causes)
    # a step that diverged to huge but finite weights overflows the statistic: the message says how that happens
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3
    learn = TrainLearner(model, DataLoaders(TensorLoader(x, y, 16), TensorLoader(x[:32], y[:32], 32)),
                         F.cross_entropy, lr=0.1, opt_func=lambda params, lr: torch.optim.SGD(
                             [{"params": model[0].parameters(), "lr": 1e24},
                              {"params": [*model[1].parameters(), *model[3].parameters()]}], lr=lr))
    with pytest.raises(NonFiniteLossError, match=r"running statistic 1\.running_var.*the largest \|weight\| is "
                                                 r"\d\.\d+e\+2\d.*steps that grew the weights until the activations "
                                                 r"overflowed.*Try a lower lr"):
        learn.fit(1)
    from miniai.callbacks import SingleBatchCB
    with pytest.raises(NonFiniteLossError, match=r"the weights are not finite \(NaN or inf: weight first\)"):
        tiny_learner(cbs=[DivergeAt(at=0)]).fit(1, cbs=[SingleBatchCB()])


def test_the_weights_are_checked_also_after_a_fit_a_callback_cancelled():
    """SingleBatchCB's CancelFitException skips after_fit: the check runs in cleanup_fit."""
    from miniai.callbacks import SingleBatchCB
    with pytest.raises(NonFiniteLossError, match="the weights are not finite"):
        tiny_learner(cbs=[DivergeAt(at=0)]).fit(1, cbs=[SingleBatchCB()])


def test_no_weight_check_where_the_guard_stands_aside_or_the_fit_does_not_train():
    class Finder(Callback):
        handles_nonfinite_loss = True
    tiny_learner(cbs=[DivergeAt(at=2), Finder()]).fit(1)  # the lr finder's way: no error
    learn = tiny_learner(cbs=[DivergeAt(at=2)], learner_cls=lambda *a, **k: TrainLearner(*a, **k, nan_guard=False))
    learn.fit(1)
    learn.add_cb(TerminateOnNaNCB())
    learn.fit(1, train=False)  # an evaluation of a broken model: no training of this fit to blame


def test_a_buffer_holding_inf_on_purpose_is_no_divergence():
    """The end-of-fit check of the weights looked at buffers too: a causal mask of -inf failed every fit."""
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)
            self.register_buffer("mask", torch.tensor([0.0, float("-inf")]))

        def forward(self, x):
            return self.lin(x) + self.mask[0]
    torch.manual_seed(0)
    TrainLearner(Masked(), linear_dls(), F.mse_loss, lr=0.1).fit(1)


def test_the_end_of_fit_check_looks_only_at_what_the_optimizer_trains():
    """It checked every parameter: a frozen one holding -inf (a mask) failed the fit, an unused lazy layer's
    uninitialized parameter crashed it, and fit(0) of a NaN model raised though nothing trained."""
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.aux = nn.Linear(1, 1), nn.LazyLinear(2)  # aux: never called
            self.mask = nn.Parameter(torch.tensor([0.0, float("-inf")]), requires_grad=False)

        def forward(self, x):
            return self.lin(x) + self.mask[0]
    torch.manual_seed(0)
    TrainLearner(Masked(), linear_dls(), F.mse_loss, lr=0.1).fit(1)
    broken = nn.Linear(1, 1)
    with torch.no_grad():
        broken.weight.fill_(float("nan"))
    TrainLearner(broken, linear_dls(), F.mse_loss, lr=0.1).fit(0)


@pytest.mark.parametrize("build, match", [
    (lambda: EarlyStoppingCB(min_delta=float("nan")), r"min_delta must be a number >= 0 .*, got nan"),
    (lambda: EarlyStoppingCB(min_delta=-0.1), r"min_delta must be a number >= 0 .*, got -0.1"),
    (lambda: EarlyStoppingCB(patience=2.5), r"patience must be a whole number >= 0 .*, got 2.5"),
    (lambda: EarlyStoppingCB(patience=True), r"patience must be a whole number >= 0 .*, got True"),
    (lambda: EarlyStoppingCB(patience=-1), r"patience must be a whole number >= 0 .*, got -1"),
    (lambda: GradClipCB(float("nan")), r"max_norm must be a number > 0 .*, got nan"),
    (lambda: GradClipCB(0), r"max_norm must be a number > 0 .*, got 0"),
    (lambda: GradClipCB(1.0, norm_type=float("nan")), r"norm_type must be a number > 0 .*, got nan"),
    (lambda: TerminateOnNaNCB(every=1.5), r"every must be a whole number >= 1 .*, got 1.5"),
    (lambda: TerminateOnNaNCB(every=0), r"every must be a whole number >= 1 .*, got 0"),
])
def test_the_guards_refuse_settings_that_would_silently_misbehave(build, match):
    """EarlyStoppingCB(min_delta=nan) stopped a run that improved every epoch (nothing beats a NaN margin);
    patience=2.5, GradClipCB(nan) (NaN gradients) and TerminateOnNaNCB(every=1.5) were taken without a word."""
    with pytest.raises(ValueError, match=match):
        build()


def test_the_guards_take_the_numbers_torch_takes():
    """GradClipCB(torch.tensor(1.0)), norm_type='inf' and a tensor min_delta trained before the checks came."""
    import numpy as np
    GradClipCB(torch.tensor(1.0), norm_type="inf")
    GradClipCB(np.float32(1.0), norm_type=float("inf"))
    EarlyStoppingCB(patience=np.int64(2), min_delta=torch.tensor(0.01))
    from miniai.callbacks import SWACB
    SWACB(1, torch.tensor(0.05))
    SWACB(1, np.array(0.05))


def test_a_training_batch_of_ignored_targets_alone_is_named_not_blamed_on_nan_data():
    """A batch whose targets are all -100: the NaN message said to check the data for NaN or inf, which it held
    none of; torch's mean over no target is the NaN."""
    from miniai.callbacks.guards import NonFiniteLossError
    x, y = torch.randn(16, 3), torch.arange(16) % 2
    y[:8] = -100
    learn = TrainLearner(nn.Linear(3, 2), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), F.cross_entropy,
                         lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"batch 0: every target of this batch is the loss's ignore_index "
                                                 r"\(-100\).*Leave items without a label out.*nan_guard=False"):
        learn.fit(1)
    # (probe) such a batch's gradients are 0: a hand loop trains on past it, and so does the advice's last option
    torch.manual_seed(0)
    learn = TrainLearner(nn.Linear(3, 2), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), F.cross_entropy,
                         lr=0.1, nan_guard=False, cbs=[MetricsCB(log_fn=None)])
    learn.fit(2)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters()) and learn.metrics.history[-1]["loss"] > 0

    l1 = TrainLearner(nn.Linear(3, 1), DataLoaders(TensorLoader(x * float("nan"), y, 8), TensorLoader(x, y, 8)),
                      lambda p, t: F.l1_loss(p[:, 0], t.float()), lr=0.1)  # a loss that knows no ignore_index
    with pytest.raises(NonFiniteLossError, match="Check the data") as info:
        l1.fit(1)
    assert "ignore_index" not in str(info.value)


def test_grad_clipping_on_a_learner_that_keeps_its_momentum_in_the_gradients_is_refused():
    """(probe P65) MomentumLearner keeps mom × the earlier gradients in .grad: GradClipCB clipped that momentum,
    not the batch's gradient (loss 5.48 where SGD(momentum=0.9) with clipping reached 0.136), without a word."""
    from miniai.learner import MomentumLearner
    from tests.synth import linear_dls
    learn = MomentumLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.05, cbs=[GradClipCB(0.5)])
    with pytest.raises(TypeError, match=r"GradClipCB.*MomentumLearner keeps its momentum in \.grad.*clip the "
                                        r"momentum.*TrainLearner.*momentum=0.85"):
        learn.fit(1)


def test_weight_decay_beside_a_learner_that_keeps_its_momentum_in_the_gradients_is_warned_of():
    """(probe P65) MomentumLearner with opt_func=partial(SGD, weight_decay=0.5): SGD adds the decay to a copy of the
    gradient, so it never entered the momentum in .grad: about (1 - mom) × torch's SGD momentum's decay, silently."""
    from miniai.learner import MomentumLearner
    from tests.synth import linear_dls
    learn = MomentumLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.02, mom=0.9,
                            opt_func=partial(torch.optim.SGD, weight_decay=0.5))
    with pytest.warns(UserWarning, match=r"weight_decay=0.5.*stays out of the momentum.*TrainLearner.*"
                                         r"momentum=0.9 and the same weight_decay"):
        learn.fit(1)
    # (regression round T3) with mom 0 .grad holds the gradient alone: nothing said, nothing refused
    import warnings
    plain = MomentumLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.02, mom=0.0,
                            opt_func=partial(torch.optim.SGD, weight_decay=0.5), cbs=[GradClipCB(1.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.fit(1)


def test_watchers_say_when_a_cut_pass_left_them_nothing_to_read():
    """(probe P68) A callback cutting every validation pass (a limit on validation batches): EarlyStoppingCB and a
    plateau never read valid_loss, never acted, and said nothing, while the loss exploded."""
    from miniai.callbacks.scheduling import EpochSchedCB
    from miniai.learner import CancelEpochException
    from tests.synth import tiny_learner

    class FirstValidBatchOnly(Callback):
        def after_batch(self, learn):
            if not learn.training:
                raise CancelEpochException()
    plateau = EpochSchedCB(partial(ReduceLROnPlateau, patience=0), monitor="valid_loss")
    learn = tiny_learner(cbs=[MetricsCB(log_fn=None), EarlyStoppingCB("valid_loss", patience=1), plateau,
                              FirstValidBatchOnly()])
    with pytest.warns(UserWarning) as record:
        learn.fit(3)
    said = [str(w.message) for w in record if "cut short" in str(w.message)]
    assert len(said) == 2 and any(s.startswith("EarlyStoppingCB watches 'valid_loss'") for s in said) \
        and any(s.startswith("EpochSchedCB's ReduceLROnPlateau watches 'valid_loss'") for s in said), said
    assert all("all 3 validation passes of this fit were cut short" in s for s in said), said

    class ValidateEvery2(Callback):  # (regression round T6) Lightning's check_val_every_n_epoch: warned of at once
        def before_epoch(self, learn):
            if not learn.training and learn.epoch % 2 == 0:
                raise CancelEpochException()
    plateau = EpochSchedCB(partial(ReduceLROnPlateau, patience=0), monitor="valid_loss")
    learn = tiny_learner(cbs=[MetricsCB(log_fn=None), EarlyStoppingCB("valid_loss", patience=2), plateau,
                              ValidateEvery2()])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(4)


def test_a_metricscb_ordered_after_its_watcher_is_named_with_both_orders():
    """(probe P68) A MetricsCB of order 75: EarlyStoppingCB said 'this learner has no MetricsCB', then, a fit later,
    a bare KeyError 'valid_loss'."""
    from tests.synth import tiny_learner

    class LateMetrics(MetricsCB):
        order = 75
    learn = tiny_learner(cbs=[LateMetrics(log_fn=None), EarlyStoppingCB("valid_loss")])
    with pytest.raises(ValueError, match=r"LateMetrics \(order 75\) runs after EarlyStoppingCB \(order 70\).*"
                                         r"previous epoch's"):
        learn.fit(1)
