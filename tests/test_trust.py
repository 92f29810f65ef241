"""Regression tests for the trust issue: each one reproduces a silent wrong result, a lost checkpoint or a buried
error that the code before it produced, and checks the fix."""
from __future__ import annotations

import functools
import math
import random
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, TensorDataset
from torcheval.metrics import MulticlassAccuracy

import miniai.callbacks.checkpoint as checkpoint_module
from miniai.callbacks import (ActivationStats, BatchSchedCB, CheckpointCB, MetricsCB, ProgressCB, RecorderCB, _lr,
                              load_checkpoint)
from miniai.callbacks.guards import EarlyStoppingCB, NonFiniteLossError
from miniai.data import DataLoaders, TensorLoader
from miniai.callbacks.basic import LossInputError
from miniai.learner import Callback, TrainLearner
from miniai.utils import set_seed
from tests.synth import LossLog, linear_dls, tiny_learner


def classes(n=96, seed=0):
    """4 features, 3 classes given by a fixed linear map: easy to learn, so accuracy means something."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x @ torch.randn(4, 3, generator=torch.Generator().manual_seed(99))).argmax(1)


def quiet_metrics(**metrics):
    cb = MetricsCB(**metrics)
    cb.log_fn = lambda row: None
    return cb


# ---------------------------------------------------------------- 1.1 one definition of inputs and targets

def test_a_batch_with_an_extra_item_is_refused_not_scored_on_the_wrong_target():
    """(x, y, ids) batches: the loss read y while the metric read ids, and accuracy was silently wrong."""
    x, y = classes()
    ids = torch.arange(len(x))
    dls = DataLoaders(DataLoader(TensorDataset(x, y, ids), 16), DataLoader(TensorDataset(x, y, ids), 16))
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1, cbs=[quiet_metrics(acc=MulticlassAccuracy())])
    with pytest.raises(LossInputError, match=r"batch has 2 items after its n_inp=1 inputs.*wrap the loss"):
        learn.fit(1)
    learn.loss_func = lambda preds, y, ids: F.cross_entropy(preds, y)  # the loss is told: the metric still refuses
    with pytest.raises(ValueError, match=r"MetricsCB compares the predictions with one target, but this batch has 2"):
        learn.fit(1)
    learn.loss_func = lambda preds, y, w: (F.cross_entropy(preds, y, reduction="none") * w).sum() / w.sum()
    with pytest.raises(ValueError, match=r"If they are the loss's \(loss_func\(preds, target, weights\): sample "
                                         r"weights\).*a callback of your own"):  # (it advised n_inp or collate_fn)
        learn.fit(1)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x1, x2):
        return self.a(x1) + self.b(x2)


def test_n_inp_inputs_go_to_the_model_and_the_rest_to_loss_and_metrics():
    x, y = classes()
    ds = TensorDataset(x, torch.zeros_like(x), y)
    dls = DataLoaders(DataLoader(ds, 16, shuffle=True), DataLoader(ds, 32))
    metrics = quiet_metrics(acc=MulticlassAccuracy())
    learn = TrainLearner(TwoInputs(), dls, F.cross_entropy, lr=0.5, cbs=[metrics], n_inp=2)
    learn.fit(3)
    with torch.no_grad():
        truth = (learn.model(x, torch.zeros_like(x)).argmax(1) == y).float().mean().item()
    assert metrics.last["valid_acc"] == pytest.approx(truth) and truth > 0.6


# ---------------------------------------------------------------- 1.2 step ownership

class EMA(Callback):
    """An exponential moving average of the weights, with a helper unluckily named `step`."""

    def __init__(self):
        self.avg = None

    def step(self, learn):
        self.avg = [p.detach().clone() for p in learn.model.parameters()]

    def after_batch(self, learn):
        if learn.training:
            self.step(learn)


def test_a_helper_named_like_a_step_is_an_error_with_the_fix():
    """It used to replace opt.step(): the model never trained, and nothing said so."""
    with pytest.raises(TypeError, match=r"EMA.step is named like the learner's 'step' step.*rename the method.*"
                                        r"owns_steps = \('step',\)"):
        tiny_learner(cbs=[EMA()])


def test_a_callback_declaring_a_step_does_it_on_a_train_learner_too():
    """TrainLearner took backward/step from callbacks but ignored predict/get_loss/zero_grad."""
    calls = []

    class Predict(Callback):
        owns_steps = ("predict", "zero_grad")

        def predict(self, learn):
            calls.append("predict")
            learn.preds = learn.model(*learn.xb)

        def zero_grad(self, learn):
            calls.append("zero_grad")
            learn.opt.zero_grad()
    tiny_learner(cbs=[Predict()]).fit(1, valid=False)
    assert calls == ["predict", "zero_grad"] * 3


def test_step_ownership_is_declared_and_exclusive():
    class Declared(Callback):
        owns_steps = ("step",)
    with pytest.raises(TypeError, match="lists 'step'.*needs a method step"):
        tiny_learner(cbs=[Declared()])

    class Stepper(Callback):
        owns_steps = ("step",)

        def step(self, learn):
            learn.opt.step()
    with pytest.raises(TypeError, match="Stepper and Stepper both own the 'step' step"):
        tiny_learner(cbs=[Stepper(), Stepper()])


# ---------------------------------------------------------------- 1.3 set_seed reproduces a run

@pytest.mark.parametrize("seed", [None, 7], ids=["global-rng", "own-seed"])
def test_same_seed_same_dls_fresh_model_gives_the_same_run(seed):
    """The loader used to carry its epoch counter from one fit to the next: the second run differed."""
    x, y = classes(256)
    dls = DataLoaders(TensorLoader(x, y, bs=16, shuffle=True, seed=seed), TensorLoader(x[:32], y[:32], bs=16))
    runs = []
    for _ in range(2):
        set_seed(42)
        log = LossLog()
        TrainLearner(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3)), dls, F.cross_entropy,
                     lr=0.1, cbs=[log]).fit(2)
        runs.append(log.losses)
    assert runs[0] == runs[1]


def test_a_learners_fits_walk_a_seeded_loaders_orders_on_as_one_fit_would():
    """With its own seed the loader replayed epoch 0's order in every fit: fit(1) k times trained on one order k
    times, and fit(1); fit(1) was not fit(2), against README (max weight difference 0.29)."""
    from miniai.learner import MomentumLearner
    x, y = classes(96)

    class Orders(Callback):
        def __init__(self):
            self.batches = []

        def before_batch(self, learn):
            if learn.training:
                self.batches.append(learn.batch[1].tolist())
    runs = []
    for fits in ([2], [1, 1], [1, 1, 1, 1]):
        set_seed(0)
        dls = DataLoaders(TensorLoader(x, y, bs=16, shuffle=True, seed=42), TensorLoader(x[:32], y[:32], bs=16))
        orders = Orders()
        learn = MomentumLearner(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), dls, F.cross_entropy,
                                lr=0.1, cbs=[orders])
        for n in fits:
            learn.fit(n)
        learn.fit(1, train=False)  # an evaluation walks no training order
        runs.append((orders.batches, [p.detach().clone() for p in learn.model.parameters()]))
    (two, w2), (ones, w1), (four, _) = runs
    assert ones == two and four[:len(two)] == two and four[len(two):] != two[:len(two) // 2]
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))


# ---------------------------------------------------------------- 1.5 empty validation

class Empty(IterableDataset):
    def __iter__(self):
        return iter([])


def test_an_empty_validation_loader_is_an_error_before_training():
    log = LossLog()
    learn = tiny_learner(cbs=[log])
    learn.dls.valid = DataLoader(TensorDataset(torch.zeros(0, 1), torch.zeros(0, 1)), 16)
    with pytest.raises(ValueError, match=r"dls.valid has no batches: its dataset is empty.*fit\(valid=False\)"):
        learn.fit(2)
    assert log.losses == []
    learn.fit(1, valid=False)  # says how to go on without it


def test_an_empty_iterable_validation_pass_is_an_error_at_its_end():
    learn = tiny_learner(cbs=[quiet_metrics()])
    learn.dls.valid = DataLoader(Empty(), 16)
    with pytest.raises(ValueError, match=r"dls.valid yielded no batches in epoch 0"):
        learn.fit(3)
    assert learn.epoch == 0


def test_an_empty_iterable_training_pass_points_at_fit_train_false_not_valid_false():
    learn = tiny_learner(cbs=[quiet_metrics()])
    learn.dls.train = DataLoader(Empty(), 16)
    with pytest.raises(ValueError, match=r"dls.train yielded no batches in epoch 0.*fit\(train=False\) to only validate"):
        learn.fit(1)


# ---------------------------------------------------------------- 1.7 broadcasting loss inputs

def test_a_loss_that_broadcasts_preds_against_targets_is_refused_at_the_first_batch():
    """F.mse_loss on (N,1) preds and (N,) targets computes an (N,N) loss and trains on it."""
    learn = tiny_learner()
    x, y = torch.randn(48, 1), torch.randn(48)
    learn.dls.train = learn.dls.valid = DataLoader(TensorDataset(x, y), 16)
    w0 = learn.model.weight.detach().clone()
    with pytest.raises(LossInputError, match=r"shape \(16, 1\) float32.*shape \(16,\) float32.*broadcast to "
                                             r"\(16, 16\)"):
        learn.fit(1)
    assert torch.equal(learn.model.weight, w0)


# ---------------------------------------------------------------- 1.8 an explicit lr on resume

def checkpointed(tmp_path, cbs=(), n=2, lr=0.1, **kwargs):
    learn = tiny_learner(cbs=[*cbs, CheckpointCB(tmp_path, **kwargs)], lr=lr)
    learn.fit(n)
    return learn


def test_an_lr_given_on_resume_replaces_the_checkpoints(tmp_path):
    """It was silently ignored, so "lower the lr and resume" replayed the same run."""
    checkpointed(tmp_path)
    rec = RecorderCB(lr=_lr)
    learn = tiny_learner(cbs=[rec, CheckpointCB(tmp_path)])
    learn.fit(3, lr=1e-4, resume=tmp_path)
    assert rec.recs["lr"] == [1e-4] * 3


def test_an_lr_given_on_resume_keeps_the_param_groups_ratios(tmp_path):
    """opt_func gave the weight lr/10 and the bias lr: fit(lr=0.02, resume=...) set both to 0.02 without a word."""
    def two_groups(params, lr):
        weight, bias = params
        return optim.SGD([{"params": [weight], "lr": lr / 10}, {"params": [bias]}], lr=lr)
    learn = TrainLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.1, opt_func=lambda p, lr: two_groups(list(p), lr),
                         cbs=[CheckpointCB(tmp_path)])
    learn.fit(2)
    learn.fit(3, lr=0.02, resume=tmp_path)
    assert [g["lr"] for g in learn.opt.param_groups] == pytest.approx([0.002, 0.02])


def test_an_lr_given_on_resume_with_a_schedule_is_refused_with_what_to_do(tmp_path):
    sched = partial(BatchSchedCB, partial(lr_scheduler.CosineAnnealingLR, T_max=30))  # (StepLR takes it: it scales)
    checkpointed(tmp_path, cbs=[sched()])
    learn = tiny_learner(cbs=[sched(), CheckpointCB(tmp_path)])
    w0 = learn.model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"BatchSchedCB_0: its schedule sets the lr.*Resume without lr="):
        learn.fit(3, lr=1e-4, resume=tmp_path)
    assert torch.equal(learn.model.weight, w0)


# ---------------------------------------------------------------- 1.9 the same callback twice

def test_the_same_callback_twice_is_an_error_and_changes_nothing():
    """Given to the Learner and to fit(cbs=...), it ran twice (a schedule stepped twice) and was then dropped."""
    rec = RecorderCB(lr=_lr)
    learn = tiny_learner(cbs=[rec])
    before = list(learn.cbs)
    with pytest.raises(ValueError, match="already one of the learner's callbacks"):
        learn.fit(1, cbs=[rec])
    assert learn.cbs == before
    learn.fit(1)
    assert len(rec.recs["lr"]) == 3


# ---------------------------------------------------------------- 1.10 optimizer state by name

class AB(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(1, 1), nn.Linear(1, 1)

    def forward(self, x):
        return self.a(x) + 2 * self.b(x)


class BA(AB):
    def __init__(self):
        nn.Module.__init__(self)
        self.b, self.a = nn.Linear(1, 1), nn.Linear(1, 1)  # the same names, defined in the other order


def test_optimizer_state_follows_parameter_names_not_positions(tmp_path):
    """A model whose attributes were reordered got Adam's moments of the wrong layers."""
    torch.manual_seed(0)
    learn = TrainLearner(AB(), linear_dls(), F.mse_loss, lr=0.1, opt_func=optim.Adam, cbs=[CheckpointCB(tmp_path)])
    learn.fit(1)
    saved = {name: learn.opt.state[p]["exp_avg"].clone() for name, p in learn.model.named_parameters()}
    other = TrainLearner(BA(), linear_dls(), F.mse_loss, lr=0.1, opt_func=optim.Adam)
    with pytest.warns(UserWarning, match="nothing left to train"):
        other.fit(1, resume=tmp_path)
    for name, p in other.model.named_parameters():
        assert torch.equal(other.opt.state[p]["exp_avg"], saved[name]), name


# ---------------------------------------------------------------- 1.11 lr 0 and negative epochs

def test_negative_epochs_are_an_error_and_lr_zero_a_warning():
    learn = tiny_learner()
    with pytest.raises(ValueError, match="n_epochs must be an int >= 0, got -1"):
        learn.fit(-1)
    with pytest.warns(UserWarning, match="lr=0: the optimizer will not change the weights"):
        learn.fit(1, lr=0)
    learn.lr = 0.0  # an evaluation changes no weights whatever the lr: nothing to warn of (it did)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1, train=False)


def test_an_lr_of_one_element_array_is_refused_and_a_fraction_taken():
    """np.array([0.05]) passed the checks and failed at the first step in torch ("argument 'alpha' must be
    Number"); a Fraction or a Decimal failed the same way."""
    from decimal import Decimal
    from fractions import Fraction
    learn = tiny_learner()
    with pytest.raises(TypeError, match=r"lr must be one number, got an array of shape \(1,\)"):
        learn.fit(1, lr=np.array([0.05]))
    for lr in (Fraction(1, 20), Decimal("0.05")):
        learn.fit(1, lr=lr)
        assert learn.fit_lr == 0.05 and type(learn.opt.param_groups[0]["lr"]) is float
    learn.opt_func = optim.AdamW
    learn.fit(1, lr=torch.tensor([1e-3]))  # a one-element tensor: torch's Adam takes it, so do we
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):  # (it passed, then the NaN guard
        learn.fit(1, lr=torch.tensor([float("nan")]))  # failed formatting the tensor: a TypeError)
    with pytest.raises(TypeError, match=r"got an array of shape \(2,\)"):
        learn.fit(1, lr=torch.tensor([1e-3, 2e-3]))
    from miniai.callbacks.guards import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match=r"lr=1e\+30"):  # diverges: the guard's message, not a TypeError
        learn.opt_func = optim.SGD
        learn.fit(3, lr=torch.tensor([1e30]))


def test_an_lr_too_small_for_float32_warns_as_lr_zero_does():
    """lr=1e-50 (`--lr 1e-50`) is 0 in a float32 step: nothing trained, and nothing said."""
    learn = tiny_learner()
    before = [p.clone() for p in learn.model.parameters()]
    with pytest.warns(UserWarning, match="lr=1e-50 is below float32's smallest normal number"):
        learn.fit(1, lr=1e-50)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))  # what the warning says



@pytest.mark.parametrize("lr", [float("nan"), float("inf")])
def test_a_nan_or_infinite_lr_is_refused_before_training(lr):
    """It trained, and the NaN guard then stopped the fit on a NaN loss, the weights already NaN."""
    learn = tiny_learner()
    before = [p.clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match="lr must be a finite number"):
        learn.fit(1, lr=lr)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


def test_metricscb_refuses_a_metric_class_or_a_non_metric_when_made():
    """MetricsCB(accuracy=Accuracy) failed at before_fit with "Accuracy.to() missing 1 required argument"."""
    from miniai.callbacks.metrics import Accuracy, MetricsCB
    with pytest.raises(TypeError, match=r"'accuracy' is the class Accuracy: .*an instance, Accuracy\(\), not the class"):
        MetricsCB(accuracy=Accuracy)
    # a function said "is function ... an instance, not a class", which did not fit it
    with pytest.raises(TypeError, match=r"'acc' is a function \(<lambda>\).*can't be averaged.*wrap it in a class"):
        MetricsCB(acc=lambda p, t: (p.argmax(1) == t).float().mean())
    with pytest.raises(TypeError, match=r"'acc' is a str: .*update\(preds, targets\)"):
        MetricsCB(acc="accuracy")


# ---------------------------------------------------------------- 2.1 a resumed run deletes nothing it did not write

def test_resuming_from_an_older_checkpoint_keeps_the_later_ones(tmp_path):
    """Pruning kept the highest epoch numbers, the abandoned run's, and deleted the new run's checkpoints."""
    checkpointed(tmp_path, n=5, keep=2)  # epoch_0004, epoch_0005
    first = {f.name: f.read_bytes() for f in tmp_path.glob("epoch_*.pt")}
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path, keep=2)])
    with pytest.warns(UserWarning, match="moved to .*superseded_1"):
        learn.fit(6, resume=tmp_path / "epoch_0004.pt")
    assert {f.name: f.read_bytes() for f in (tmp_path / "superseded_1").iterdir()} == \
        {"epoch_0005.pt": first["epoch_0005.pt"]}
    assert sorted(f.name for f in tmp_path.glob("epoch_*.pt")) == ["epoch_0004.pt", "epoch_0005.pt", "epoch_0006.pt"]
    assert (tmp_path / "epoch_0004.pt").read_bytes() == first["epoch_0004.pt"]  # not written by this fit: kept
    assert load_checkpoint(tmp_path)["epoch"] == 6


def test_a_refused_resume_leaves_the_checkpoint_directory_as_it_was(tmp_path):
    """A resume from an older checkpoint that a later check refused (an optimizer of other settings) had already
    moved the run's newer checkpoints to superseded_1/, so the next resume=<dir>, the fix made, went on from the
    older epoch without a word."""
    from miniai.callbacks.checkpoint import CheckpointMismatchError
    checkpointed(tmp_path, n=4)
    before = sorted(str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*"))
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])
    learn.opt_func = partial(optim.SGD, weight_decay=0.1)
    with pytest.raises(CheckpointMismatchError, match="weight_decay"):
        learn.fit(5, resume=tmp_path / "epoch_0002.pt")
    assert sorted(str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*")) == before


def test_ctrl_c_right_after_resuming_points_at_the_checkpoint_resumed_from(tmp_path):
    checkpointed(tmp_path, n=3)
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])

    class Stop(Callback):
        def before_epoch(self, learn):
            raise KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(4, resume=tmp_path / "epoch_0001.pt", cbs=[Stop()])
    assert f"learn.fit(4, resume='{tmp_path / 'epoch_0001.pt'}')" in info.value.__notes__[0]


# ---------------------------------------------------------------- 2.2 no checkpoint of non-finite weights

class PoisonAt(Callback):
    """After the last optimizer step of epoch `epoch`, make a weight NaN (the loss of that batch was finite)."""
    order = 50

    def __init__(self, epoch):
        self.epoch = epoch

    def after_step(self, learn):
        if learn.epoch == self.epoch and learn.iter == len(learn.dl) - 1:
            with torch.no_grad():
                learn.model.weight.fill_(float("nan"))


def test_non_finite_weights_are_never_saved_and_the_error_names_the_good_checkpoint(tmp_path):
    learn = tiny_learner(cbs=[quiet_metrics(), CheckpointCB(tmp_path), PoisonAt(1)])
    with pytest.raises(NonFiniteLossError, match=rf"after epoch 2 the weights are not finite.*"
                                                 rf"{tmp_path / 'epoch_0001.pt'}"):
        learn.fit(3)
    assert sorted(f.name for f in tmp_path.glob("epoch_*.pt")) == ["epoch_0001.pt"]
    assert torch.isfinite(load_checkpoint(tmp_path)["model"]["weight"]).all()


# ---------------------------------------------------------------- 2.3 / 2.4 one-cycle and resume

def test_extending_a_one_cycle_on_resume_is_refused_before_the_first_batch(tmp_path):
    """It crashed after a whole epoch of training: "Tried to step 9 times"."""
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])
    learn.fit_one_cycle(2, max_lr=0.1)
    log = LossLog()
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path), log])
    with pytest.raises(ValueError, match=r"resuming a OneCycleLR of total_steps=6 into a fit that takes 9 steps.*"
                                         r"can't be extended"):
        learn.fit_one_cycle(3, max_lr=0.1, resume=tmp_path)
    assert log.losses == []


def test_fit_one_cycle_resumes_on_a_learner_built_without_an_lr(tmp_path):
    """Its docstring says the checkpoint brings the lr on resume; a learner built with lr=None crashed inside torch
    (TypeError: unsupported operand type(s) for /: 'NoneType' and 'float')."""
    straight = tiny_learner(cbs=[CheckpointCB(tmp_path)], lr=0.05)
    straight.fit_one_cycle(3, 0.1)
    resumed = tiny_learner(lr=None)
    resumed.fit_one_cycle(3, resume=tmp_path / "epoch_0001.pt")
    assert torch.equal(resumed.model.weight, straight.model.weight)
    assert resumed.opt.param_groups[0]["lr"] == straight.opt.param_groups[0]["lr"]


def test_changing_the_batch_size_on_resume_is_refused_before_the_first_batch(tmp_path):
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path), BatchSchedCB(partial(lr_scheduler.StepLR, step_size=2))])
    learn.fit(2)
    log = LossLog()
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path), BatchSchedCB(partial(lr_scheduler.StepLR, step_size=2)), log],
                         bs=8)
    with pytest.raises(ValueError, match=r"took 3 optimizer steps per epoch, this fit takes 6"):
        learn.fit(3, resume=tmp_path)
    assert log.losses == []


def test_ctrl_c_during_fit_one_cycle_says_the_call_that_continues_it(tmp_path):
    class Stop(Callback):
        def after_batch(self, learn):
            if learn.epoch == 1:
                raise KeyboardInterrupt()
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])
    with pytest.raises(KeyboardInterrupt) as info:
        learn.fit_one_cycle(3, max_lr=0.1, cbs=[Stop()])
    call = f"learn.fit_one_cycle(3, max_lr=0.1, resume='{tmp_path / 'epoch_0001.pt'}')"
    assert call in info.value.__notes__[0]
    exec(call, {"learn": tiny_learner(cbs=[CheckpointCB(tmp_path)])})  # and it does continue it


# ---------------------------------------------------------------- 2.5 Ctrl-C while saving

class InterruptingFile:
    """A file whose third write raises KeyboardInterrupt, as Ctrl-C inside torch.save would."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, b):
        self.n += 1
        if self.n == 3:
            raise KeyboardInterrupt()
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_ctrl_c_while_a_checkpoint_is_written_shows_the_note_not_torchs_enforce_error(tmp_path, monkeypatch):
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])
    monkeypatch.setattr(checkpoint_module, "_write", lambda obj, f: torch.save(obj, InterruptingFile(f)))
    with pytest.raises(KeyboardInterrupt) as info:
        learn.fit(2)
    assert "Training interrupted in epoch 0" in info.value.__notes__[0]
    assert list(tmp_path.iterdir()) == []  # the half-written file is gone


# ---------------------------------------------------------------- 2.6 / 2.8 lr_find

def test_lr_find_never_checkpoints_and_the_fit_after_it_is_not_refused(tmp_path):
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])
    learn.lr_find(plot=False, max_epochs=2)
    assert list(tmp_path.iterdir()) == [] and any(isinstance(cb, CheckpointCB) for cb in learn.cbs)
    learn.fit(1)
    assert [f.name for f in tmp_path.iterdir()] == ["epoch_0001.pt"]


def test_lr_find_restores_python_numpy_and_sampler_rngs():
    def draws(learn):
        sampler = learn.dls.train.sampler
        return random.random(), np.random.rand(), torch.randperm(8, generator=sampler.generator).tolist()

    def learner():
        learn = tiny_learner()
        x, y = torch.randn(48, 1), torch.randn(48, 1)
        sampler = RandomSampler(TensorDataset(x, y), generator=torch.Generator().manual_seed(5))
        learn.dls.train = DataLoader(TensorDataset(x, y), 16, sampler=sampler)

        class Augment(Callback):  # draws from Python's and NumPy's RNGs, as augmentations do
            def before_batch(self, learn):
                random.random(), np.random.rand()
        learn.add_cb(Augment())
        return learn
    random.seed(1), np.random.seed(1)
    expected = draws(learner())
    random.seed(1), np.random.seed(1)
    learn = learner()
    learn.lr_find(plot=False, max_epochs=1)
    assert draws(learn) == expected


# ---------------------------------------------------------------- 2.7 what a checkpoint can't bring back

def test_unsaved_state_is_named_in_a_warning(tmp_path):
    class Counter(Callback):
        def __init__(self):
            self.count, self.seen = 0, []

        def after_batch(self, learn):
            self.count += 1
    dl = DataLoader(TensorDataset(torch.randn(32, 1), torch.randn(32, 1)), 16, num_workers=1, persistent_workers=True)
    learn = tiny_learner(cbs=[Counter(), CheckpointCB(tmp_path)])
    learn.dls.train = dl
    with pytest.warns(UserWarning) as record:
        learn.fit(1)
    messages = " | ".join(str(w.message) for w in record)
    assert "dls.train keeps persistent workers" in messages
    assert "Counter.count changed during the fit, but Counter has no state_dict()" in messages
    assert "Counter.seen" not in messages


def test_unsaved_private_or_in_place_state_is_named_too(tmp_path):
    """A warmup counting in self._n, or in self.state['n'], changed without a warning: attributes starting with _
    were skipped and a dict was summarized by its identity and length."""
    class Warmup(Callback):
        def __init__(self):
            self._n, self.state, self.history = 0, {"n": 0}, []

        def after_batch(self, learn):
            self._n += 1
            self.state["n"] += 1
    with pytest.warns(UserWarning) as record:
        tiny_learner(cbs=[Warmup(), CheckpointCB(tmp_path)]).fit(1)
    messages = " | ".join(str(w.message) for w in record)
    assert "Warmup._n, Warmup.state changed during the fit" in messages and "history" not in messages


def test_unsaved_state_in_an_array_or_a_namespace_changed_in_place_is_named_too(tmp_path):
    """A NumPy array changed in place kept its identity and size, and a SimpleNamespace or dataclass was summarized by
    its identity: their state was lost on resume without a warning."""
    import dataclasses
    import types

    @dataclasses.dataclass
    class Stats:
        n: int = 0

    class Keeper(Callback):
        def __init__(self):
            self.counts, self.ns, self.stats = np.zeros(3), types.SimpleNamespace(n=0), Stats()
            self.fixed, self.table = np.ones(3), types.SimpleNamespace(lr=0.1)

        def after_batch(self, learn):
            self.counts[learn.iter % 3] += 1
            self.ns.n += 1
            self.stats.n += 1
    with pytest.warns(UserWarning) as record:
        tiny_learner(cbs=[Keeper(), CheckpointCB(tmp_path)]).fit(1)
    messages = " | ".join(str(w.message) for w in record)
    assert "Keeper.counts, Keeper.ns, Keeper.stats changed during the fit" in messages
    assert "fixed" not in messages and "table" not in messages


def test_unsaved_weights_of_a_module_a_callback_keeps_are_named_but_not_the_models_own(tmp_path):
    """(session 22's T5, left then) An EMA callback without state_dict, whose copy of the model changed in place each
    step, was summarized by the module's identity and length: a resume started its average afresh, silently. A
    callback that keeps the learner's model itself (saved by the checkpoint) must not be named."""
    import copy

    class EMA(Callback):
        def before_fit(self, learn):
            self.ema, self.frozen, self.model = copy.deepcopy(learn.model), copy.deepcopy(learn.model), learn.model
            self.layers = [learn.model]
            # (regression round T1) new modules of the model's own weights: its body, a wrapper
            self.body, self.wrapped = nn.Sequential(*list(learn.model.children())), nn.Sequential(learn.model)
            self.weight = next(learn.model.parameters())

        def after_step(self, learn):
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), learn.model.parameters()):
                    e.mul_(0.9).add_(p, alpha=0.1)
    with pytest.warns(UserWarning) as record:
        tiny_learner(cbs=[EMA(), CheckpointCB(tmp_path)]).fit(1)
    said = [str(w.message) for w in record if "changed during the fit" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("EMA.ema changed during the fit"), said


# ---------------------------------------------------------------- 3.1 cleanups run; the first error surfaces

def test_a_before_fit_error_is_not_buried_by_progress_cleanup():
    """ProgressCB.cleanup_fit failed with AttributeError: _train_losses, hiding the clear message."""
    too_short = BatchSchedCB(partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=2))
    learn = tiny_learner(cbs=[too_short, ProgressCB(mode="plain")])
    with pytest.raises(ValueError, match="OneCycleLR has total_steps=2 but this fit takes 3 steps"):
        learn.fit(1)


def test_a_loader_without_len_trains_with_progress():
    class Stream(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                x = torch.randn(16, 1, generator=g)
                yield x, 2 * x + 3
    learn = tiny_learner(cbs=[ProgressCB(mode="terminal", plot=True)])
    learn.dls.train = DataLoader(Stream(), None)
    learn.fit(1)
    assert len(next(cb for cb in learn.cbs if isinstance(cb, ProgressCB)).losses) == 3


def test_a_failing_cleanup_does_not_skip_the_others_nor_replace_the_error():
    class Boom(Callback):
        def after_batch(self, learn):
            raise ZeroDivisionError("the first error")

    class BadCleanup(Callback):
        order = -100  # its cleanup runs before ActivationStats'

        def cleanup_fit(self, learn):
            raise RuntimeError("a cleanup that fails")
    stats = ActivationStats()
    learn = tiny_learner(cbs=[BadCleanup(), stats, Boom()])
    with pytest.raises(ZeroDivisionError, match="the first error") as info:
        learn.fit(1)
    assert any("BadCleanup.cleanup_fit also raised RuntimeError: a cleanup that fails" in n
               for n in info.value.__notes__)
    assert not learn.model._forward_hooks  # ActivationStats' cleanup still ran


def test_a_cleanup_handler_without_a_qualname_that_raises_second_leaves_the_first_error_on_top():
    """A cleanup given as a functools.partial (any callable attribute is a handler) that raised after another's
    error buried that first error under AttributeError: 'functools.partial' object has no attribute '__qualname__'
    (regression round 24, an older bug)."""
    def cleanup(error, learn):
        raise error

    first, second = Callback(), Callback()
    first.cleanup_fit = functools.partial(cleanup, ZeroDivisionError("the first error"))
    second.cleanup_fit = functools.partial(cleanup, IndexError("a second error"))
    learn = tiny_learner(cbs=[first, second])
    with pytest.raises(ZeroDivisionError, match="the first error") as info:
        learn.fit(1)
    assert any("functools.partial" in n and "also raised IndexError: a second error" in n
               for n in info.value.__notes__)


def test_a_failing_cleanup_alone_is_raised_after_the_other_cleanups():
    class BadCleanup(Callback):
        order = -100

        def cleanup_fit(self, learn):
            raise RuntimeError("a cleanup that fails")
    stats = ActivationStats()
    learn = tiny_learner(cbs=[BadCleanup(), stats])
    with pytest.raises(RuntimeError, match="a cleanup that fails"):
        learn.fit(1)
    assert not learn.model._forward_hooks


def test_fit_one_cycle_with_lr_says_it_takes_max_lr():
    """fit_one_cycle(2, lr=0.01) failed with "fit() got multiple values for keyword argument 'lr'"."""
    with pytest.raises(TypeError, match=r"takes the cycle's peak as max_lr: fit_one_cycle\(2, max_lr=0.01\)"):
        tiny_learner().fit_one_cycle(2, lr=0.01)


def test_two_owners_of_a_step_are_told_how_to_combine_them():
    """Learner + TrainCB + MixedPrecisionCB said only that both own 'backward'."""
    from miniai.callbacks.basic import TrainCB
    from miniai.callbacks.mixed_precision import MixedPrecisionCB
    from miniai.learner import Learner
    with pytest.raises(TypeError, match="both own the 'backward' step.*use TrainLearner"):
        Learner(nn.Linear(1, 1), linear_dls(), F.mse_loss, cbs=[TrainCB(), MixedPrecisionCB()])


# ---------------------------------------------------------------- what a learner is given

def test_a_single_callback_is_taken_as_a_list_of_one():
    """The course's cbs=DeviceCB() (fastcore's L) failed with "'DeviceCB' object is not iterable"."""
    from miniai.callbacks.basic import DeviceCB, SingleBatchCB
    log = LossLog()
    learn = TrainLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.1, cbs=DeviceCB("cpu"))
    learn.fit(1, cbs=log)
    learn.fit(1, cbs=SingleBatchCB())
    assert len(log.losses) == 3 and len(learn.cbs) == 2  # DeviceCB and the NaN guard


def test_a_callback_class_or_a_non_callback_is_refused_when_added():
    """cbs=[DeviceCB] failed at before_fit with "missing 1 required positional argument: 'learn'"."""
    from miniai.callbacks.basic import DeviceCB
    with pytest.raises(TypeError, match=r"DeviceCB is a class: pass an instance, DeviceCB\(\)"):
        tiny_learner(cbs=[DeviceCB])
    with pytest.raises(TypeError, match="callbacks subclass miniai.learner.Callback; got a Duck"):
        tiny_learner().fit(1, cbs=[type("Duck", (), {"before_fit": lambda self, learn: None})()])


def test_loaders_that_are_missing_or_not_loaders_are_refused_before_training():
    """Without dls.valid all training batches ran, then "no attribute 'valid'"; dls=(train, valid) gave
    "'tuple' object has no attribute 'train'"."""
    from types import SimpleNamespace
    dls = linear_dls()
    log = LossLog()
    learn = TrainLearner(nn.Linear(1, 1), SimpleNamespace(train=dls.train), F.mse_loss, lr=0.1, cbs=[log])
    with pytest.raises(ValueError, match=r"dls has no valid loader.*fit\(valid=False\)"):
        learn.fit(1)
    assert log.losses == []
    learn.fit(1, valid=False)  # the fix the message gives
    with pytest.raises(ValueError, match=r"dls has no train loader.*DataLoaders\(train_dl, valid_dl\)"):
        TrainLearner(nn.Linear(1, 1), (dls.train, dls.valid), F.mse_loss, lr=0.1).fit(1)


def test_a_batch_that_is_not_a_tuple_is_refused_at_the_first_batch():
    """A DataLoader over a bare tensor gave batch[:1] = the first row as the input, the other rows as targets."""
    x = torch.randn(16, 1)
    dl = DataLoader(x, 4)
    learn = TrainLearner(nn.Linear(1, 1), DataLoaders(dl, dl), lambda p, *y: p.mean(), lr=0.1)
    with pytest.raises(TypeError, match=r"a batch is a tuple \(\*inputs, \*targets\); the loader gave a Tensor.*"
                                        r"TensorDataset\(x, y\)"):
        learn.fit(1)


def test_train_cb_n_inp_stays_on_the_learner_for_infer_and_export():
    """TrainCB(n_inp=2) sets learn.n_inp for good, as the course's did: infer and export read it after the fit."""
    from miniai.callbacks.basic import TrainCB
    from miniai.learner import Learner
    x = torch.randn(16, 1)
    dl = DataLoader(TensorDataset(x, x, 2 * x), 4)
    learn = Learner(nn.Bilinear(1, 1, 1), DataLoaders(dl, dl), F.mse_loss, lr=0.1, cbs=[TrainCB(n_inp=2)])
    learn.fit(1)
    assert learn.n_inp == 2
    with pytest.raises(ValueError, match="n_inp=2"):
        learn.infer(x[:2])


def test_train_cb_n_inp_is_the_learners_before_any_other_callbacks_before_fit():
    """TrainCB(n_inp=2) set learn.n_inp at its before_fit (order 0), after BatchTransformCB (order -10) had read it:
    the first fit transformed one input of two with inputs='all', and ran half-transformed with inputs=None instead
    of being refused; the second fit was right."""
    from miniai.callbacks.augment import BatchTransformCB
    from miniai.callbacks.basic import TrainCB
    from miniai.learner import Learner
    x = torch.randn(16, 1)
    dl = DataLoader(TensorDataset(x, x, 2 * x), 4)
    seen = []

    class Inputs(Callback):
        def after_predict(self, learn):
            seen.append(learn.xb)
    learn = Learner(nn.Bilinear(1, 1, 1), DataLoaders(dl, dl), F.mse_loss, lr=0.1,
                    cbs=[TrainCB(n_inp=2), BatchTransformCB(lambda x: x + 100, inputs="all"), Inputs()])
    learn.fit(1, valid=False)
    assert all(bool((inp >= 90).all()) for xb in seen for inp in xb)  # both inputs of every batch
    bare = Learner(nn.Bilinear(1, 1, 1), DataLoaders(dl, dl), F.mse_loss, lr=0.1,
                   cbs=[TrainCB(n_inp=2), BatchTransformCB(lambda x: x + 100)])
    with pytest.raises(ValueError, match="n_inp=2 inputs: say which BatchTransformCB transforms"):
        bare.fit(1)


# ---------------------------------------------------------------- the advice in messages works

def test_the_nan_message_with_a_schedule_does_not_advise_a_resume_with_lr(tmp_path):
    """'learn.fit(n, lr=..., resume=...)' was advised to a learner with a BatchSchedCB, and that call is refused."""
    from miniai.callbacks.guards import NonFiniteLossError

    class Poison(Callback):
        def after_loss(self, learn):
            if learn.epoch == 1 and learn.iter == 1:
                learn.loss = learn.loss * float("nan")
    sched = BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=30))
    learn = tiny_learner(cbs=[sched, Poison(), CheckpointCB(tmp_path)])
    with pytest.raises(NonFiniteLossError, match=r"a schedule sets the lr, so start a new fit from its weights.*"
                                                  r"load_checkpoint\(.*learn.rm_cb\(...\) of the learner's own "
                                                  r"BatchSchedCB, and learn.fit_one_cycle"):
        learn.fit(3)  # (fit_one_cycle beside the learner's own schedule would be refused: the advice says so)
    learn = tiny_learner(cbs=[Poison(), CheckpointCB(tmp_path / "b")])
    with pytest.raises(NonFiniteLossError, match=r"\['model'\]\), then e.g. learn.fit_one_cycle"):
        learn.fit(3, cbs=[BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=30))])  # (this fit's only)
    # a schedule that scales the lr it finds goes on from an lr given on resume: the advice is that resume, and works
    learn = tiny_learner(cbs=[BatchSchedCB(partial(lr_scheduler.StepLR, step_size=2)), Poison(),
                              CheckpointCB(tmp_path / "c")])
    with pytest.raises(NonFiniteLossError, match=r"continue from it with a lower lr, learn.fit\(3, lr=\.\.\., resume="):
        learn.fit(3)
    learn.rm_cb(next(cb for cb in learn.cbs if isinstance(cb, Poison)))
    learn.fit(3, lr=0.01, resume=tmp_path / "c")


def test_the_ctrl_c_note_names_the_callbacks_given_to_the_interrupted_call(tmp_path):
    """Resuming with the call the note gave dropped the CheckpointCB passed to fit(cbs=...): no more checkpoints."""
    class Interrupt(Callback):
        def before_epoch(self, learn):
            if learn.epoch == 1:
                raise KeyboardInterrupt
    learn = tiny_learner(cbs=[Interrupt()])
    with pytest.raises(KeyboardInterrupt) as info:
        learn.fit(3, cbs=[CheckpointCB(tmp_path)])
    assert "giving it the same cbs=[...] as the interrupted call (CheckpointCB)" in " ".join(info.value.__notes__)


def test_a_partial_of_a_several_target_loss_is_that_loss():
    """partial(F.gaussian_nll_loss, eps=...) was named 'partial' and refused as a one-target loss."""
    x, y, var = torch.randn(32, 3), torch.randn(32, 1), torch.rand(32, 1) + 0.5
    dl = DataLoader(TensorDataset(x, y, var), 8)
    TrainLearner(nn.Linear(3, 1), DataLoaders(dl, dl), partial(F.gaussian_nll_loss, eps=1e-3), lr=0.01).fit(1)


# ---------------------------------------------------------------- found by the probes of stop 21

class _InterruptAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_epoch(self, learn) -> None:
        if learn.epoch == self.epoch and learn.training:
            raise KeyboardInterrupt()


def test_the_ctrl_c_note_continues_a_fit_without_validation_without_validation(tmp_path):
    """The note said learn.fit(4, resume=...): a validation pass the run never had then drew from the RNGs."""
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])
    with pytest.raises(KeyboardInterrupt) as info:
        learn.fit(4, valid=False, cbs=[_InterruptAt(2)])
    assert "learn.fit(4, valid=False, resume=" in "\n".join(info.value.__notes__)
    with pytest.raises(KeyboardInterrupt) as info:
        tiny_learner(cbs=[CheckpointCB(tmp_path / "cycle")]).fit_one_cycle(4, 0.1, valid=False, cbs=[_InterruptAt(2)])
    assert "learn.fit_one_cycle(4, max_lr=0.1, valid=False, resume=" in "\n".join(info.value.__notes__)


def _one_cycle_peak(opt_func, max_lr: float, cbs=()):
    """The param groups' lrs at the peak of fit_one_cycle(2, max_lr) on a tiny learner with `opt_func` and `cbs`,
    and the learner."""
    learn = tiny_learner(cbs=cbs)
    learn.opt_func = opt_func
    lrs = []

    class Lrs(Callback):
        order = 30

        def after_batch(self, learn) -> None:
            lrs.append([g["lr"] for g in learn.opt.param_groups])
    learn.fit_one_cycle(2, max_lr=max_lr, cbs=[Lrs()])
    return max(lrs), learn


def test_fit_one_cycle_keeps_the_lr_ratio_of_the_param_groups_as_fit_does():
    """opt_func built groups at (lr, lr/10); fit_one_cycle(max_lr) ran both at max_lr."""
    def two_groups(params, lr):
        params = list(params)
        return optim.SGD([{"params": params[:1], "lr": lr}, {"params": params[1:], "lr": lr / 10}], lr=lr)
    top, _ = _one_cycle_peak(two_groups, 0.05)
    assert top[0] == pytest.approx(0.05, rel=0.2) and top[1] == pytest.approx(top[0] / 10)


def test_fit_one_cycle_peaks_where_fit_would_run_a_group_above_fits_lr():
    """opt_func gave the head 10 × the lr fit takes: fit(lr=X) ran the body at X and the head at 10X, lr_find's
    suggestion is such an X, but fit_one_cycle(max_lr=X) peaked the head at X and the body at X/10: every group
    trained at a tenth of the lr found."""
    def head_10x(params, lr):
        weight, bias = list(params)
        return optim.SGD([{"params": [weight]}, {"params": [bias], "lr": 10 * lr}], lr=lr)
    top, _ = _one_cycle_peak(head_10x, 0.01)
    assert top[0] == pytest.approx(0.01, rel=0.2) and top[1] == pytest.approx(10 * top[0])


def test_fit_one_cycle_and_the_finder_read_the_lr_fit_gives_opt_func_not_the_optimizers_defaults():
    """opt_func set every group's lr itself and built Adam without lr= (defaults lr 1e-3): fit_one_cycle(max_lr=0.01)
    peaked the head at 0.097 (max_lr / defaults' lr × the head's), and LRFinderCB recorded 1e-3 for fit(lr=1e-5)."""
    from miniai.callbacks.lr_finder import LRFinderCB

    def own_lrs(params, lr):
        weight, bias = list(params)
        return optim.Adam([{"params": [weight], "lr": lr / 10}, {"params": [bias], "lr": lr}])
    top, learn = _one_cycle_peak(own_lrs, 0.01)
    assert top[1] == pytest.approx(0.01, rel=0.02) and top[0] == pytest.approx(top[1] / 10)
    finder = LRFinderCB()
    learn.fit(1, lr=1e-5, valid=False, cbs=[finder])
    assert finder.lrs[0] == pytest.approx(1e-5) and finder.lrs[1] == pytest.approx(1.3e-5)


def test_fit_one_cycle_and_the_finder_take_param_groups_a_callback_adds():
    """A callback adding a param group at before_fit (a temperature): fit_one_cycle failed in torch ("max_lr must
    have the same length as optimizer.param_groups") and LRFinderCB recorded lrs 10 times too low."""
    from miniai.callbacks.lr_finder import LRFinderCB
    temperature = nn.Parameter(torch.ones(()))

    class AddGroup(Callback):
        order = 5

        def before_fit(self, learn):
            learn.opt.add_param_group({"params": [temperature], "lr": learn.fit_lr})

    def body_tenth(params, lr):
        weight, bias = list(params)
        return optim.SGD([{"params": [weight], "lr": lr / 10}, {"params": [bias], "lr": lr}], lr=lr)
    top, learn = _one_cycle_peak(body_tenth, 0.01, cbs=[AddGroup()])
    assert top[1] == pytest.approx(0.01, rel=0.02) and top[2] == pytest.approx(top[1])
    finder = LRFinderCB()
    learn.fit(1, lr=1e-3, valid=False, cbs=[finder])
    assert finder.lrs[0] == pytest.approx(1e-3)
    from miniai.callbacks.scheduling import lr_ratios
    assert lr_ratios(tiny_learner(), 0.1) == [1.0]  # before any fit (it failed on learn.opt, None)


def test_a_metricscb_of_an_earlier_fit_is_not_read_by_a_later_one(tmp_path):
    """learn.metrics stayed after a fit(cbs=[MetricsCB()]); a later fit's CheckpointCB read its NaN valid_loss and
    stopped a healthy fit, and saved its history in the checkpoints."""
    learn = tiny_learner()
    metrics = MetricsCB()
    metrics.log_fn = lambda row: None
    learn.fit(1, cbs=[metrics])
    metrics.last["valid_loss"] = float("nan")
    checkpoints = CheckpointCB(tmp_path)
    learn.fit(1, cbs=[checkpoints])
    assert learn.metrics is None
    assert torch.load(checkpoints.last_path, weights_only=True)["metrics"] is None


def test_get_preds_refuses_a_callback_the_learner_already_has():
    """get_preds(cbs=[norm]) with norm in the learner ran the transform twice."""
    class Double(Callback):
        inference = True

        def before_batch(self, learn) -> None:
            learn.batch = (learn.batch[0] * 2, *learn.batch[1:])
    double = Double()
    learn = tiny_learner(cbs=[double])
    with pytest.raises(ValueError, match="takes part in prediction passes already"):
        learn.get_preds(cbs=[double])


def test_get_preds_refuses_a_recording_callback_of_the_learners_whose_records_it_would_put_back():
    """get_preds(cbs=[metrics]) with the learner's own MetricsCB logged the pass's row, then put the callback's
    state back: metrics.last showed the fit's validation values again, without a word."""
    metrics = MetricsCB(log_fn=None)
    learn = tiny_learner(cbs=[metrics])
    learn.fit(1)
    with pytest.raises(ValueError, match=r"MetricsCB is one of the learner's callbacks.*get_preds puts their state "
                                         r"back.*cbs=\[MetricsCB\(...\)\]"):
        learn.get_preds(cbs=[metrics])
    fresh = MetricsCB(log_fn=None)
    learn.get_preds(cbs=[fresh], with_loss=True)
    assert fresh.last["valid_loss"] == pytest.approx(metrics.last["valid_loss"])  # (the same weights and loader)


def test_fit_trains_under_an_outer_no_grad_and_says_so_under_inference_mode():
    learn = tiny_learner()
    with torch.no_grad():
        learn.fit(1)  # was torch's bare "element 0 of tensors does not require grad"
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        learn.fit(1)


def test_a_callback_that_is_also_an_nn_module_is_not_taken_for_a_step_owner():
    """nn.Module's own zero_grad was refused as 'named like the learner's step': the fix the message gave (owns_steps)
    would have made the module's zero_grad the learner's, and the model's gradients were never zeroed."""
    class EMA(Callback, nn.Module):
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.shadow = nn.Linear(1, 1)

        def after_step(self, learn) -> None:
            pass
    learn = tiny_learner(cbs=[EMA()])
    learn.fit(1)
    assert learn._handlers["zero_grad"] == []


@pytest.mark.parametrize("where, cancel", [("after_loss", "CancelStepException"),
                                           ("before_epoch", "CancelBatchException")])
def test_a_cancel_raised_outside_its_stage_says_so(where, cancel):
    import miniai.learner as learner_module
    exc = getattr(learner_module, cancel)

    class Raise(Callback):
        pass
    setattr(Raise, where, lambda self, learn: (_ for _ in ()).throw(exc()))
    with pytest.raises(exc) as info:
        tiny_learner(cbs=[Raise()]).fit(1)
    assert f"{cancel} was raised in {where}" in "\n".join(getattr(info.value, "__notes__", []))


def test_parameters_a_callback_adds_after_the_optimizer_was_made_are_refused():
    """A callback giving the model a new head at before_fit: the head got gradients but was not in learn.opt, so it
    never trained, without a word."""
    class NewHead(Callback):
        def before_fit(self, learn) -> None:
            learn.model = nn.Sequential(learn.model, nn.Linear(1, 1))
    with pytest.raises(RuntimeError, match=r"not in the optimizer.*1\.weight"):
        tiny_learner(cbs=[NewHead()]).fit(1)


def test_predictions_a_callback_makes_during_a_validation_pass_are_not_recorded_as_its_batches():
    from miniai.callbacks import ActivationStats

    class PredsNow(Callback):
        order = 50

        def after_batch(self, learn) -> None:
            if not learn.training:
                learn.get_preds()
    x = torch.randn(32, 4)
    dls = DataLoaders(TensorLoader(x, x.sum(1, keepdim=True), 8), TensorLoader(x[:16], x[:16].sum(1, keepdim=True), 8))
    stats = ActivationStats(lambda m: isinstance(m, nn.Linear), on_train=False, on_valid=True)
    TrainLearner(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)), dls, F.mse_loss, lr=0.01,
                 cbs=[stats, PredsNow()]).fit(1)  # was "Linear ran 2 times per training batch" (from after_batch)
    assert [len(h.stats[0]) for h in stats.hooks] == [2, 2]  # the 2 validation batches, not the predictions'


def test_checkpointcb_lets_a_fit_that_saves_nothing_run_beside_an_earlier_runs_files(tmp_path):
    """An evaluation-only fit(1, train=False) with CheckpointCB in the learner was refused with FileExistsError."""
    learn = tiny_learner(cbs=[CheckpointCB(tmp_path)])
    learn.fit(1)
    learn.fit(1, train=False)
    learn.fit(0)
    with pytest.raises(FileExistsError):
        learn.fit(1)


def test_a_generator_used_up_by_its_first_epoch_is_named_as_such():
    def batches():
        for _ in range(2):
            x = torch.randn(4, 1)
            yield x, 2 * x
    learn = TrainLearner(nn.Linear(1, 1), DataLoaders(batches(), [(torch.randn(4, 1), torch.randn(4, 1))]),
                         F.mse_loss, lr=0.01)
    with pytest.raises(ValueError, match="can be walked only once"):
        learn.fit(2)


def test_the_ctrl_c_note_of_an_interrupted_lr_find_says_the_learner_is_as_it_was():
    class Interrupt(Callback):
        def after_batch(self, learn) -> None:
            if learn.iter == 1:
                raise KeyboardInterrupt()
    learn = tiny_learner(cbs=[Interrupt()])
    with pytest.raises(KeyboardInterrupt) as info:
        learn.lr_find(plot=False)
    note = "\n".join(info.value.__notes__)
    assert "lr_find was interrupted" in note and "holds the weights of that moment" not in note


def test_fit_one_cycle_peaks_at_max_lr_whatever_lr_opt_func_sets():
    """An opt_func that ignores the lr it is given (AdamW(p, lr=3e-4)) made fit_one_cycle(max_lr=1e-2) peak at 3e-4."""
    learn = tiny_learner()
    learn.opt_func = lambda params, lr: optim.SGD(params, lr=3e-4)
    peaks = []

    class Peak(Callback):
        order = 30

        def after_batch(self, learn) -> None:
            peaks.append(learn.opt.param_groups[0]["lr"])
    learn.fit_one_cycle(2, max_lr=1e-2, cbs=[Peak()])
    assert max(peaks) == pytest.approx(1e-2, rel=0.2)


def test_a_loss_of_your_own_that_reshapes_its_inputs_trains_with_a_warning_not_an_error():
    """The broadcast check refused a correct custom loss, lambda p, y: F.binary_cross_entropy_with_logits(p[:, 0], y),
    whose preds (N, 1) and targets (N,) it never broadcasts; torch's own losses are still refused."""
    x = torch.randn(32, 4)
    y = (x.sum(1) > 0).float()
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x, y, 16))
    own = lambda p, y: F.binary_cross_entropy_with_logits(p[:, 0], y)  # noqa: E731
    with pytest.warns(UserWarning, match=r"\(16, 1\).*\(16,\).*If it reshapes them itself"):
        TrainLearner(nn.Linear(4, 1), dls, own, lr=0.1).fit(1)
    with pytest.raises(LossInputError, match="broadcast to"):
        TrainLearner(nn.Linear(4, 1), dls, F.binary_cross_entropy_with_logits, lr=0.1).fit(1)



def test_hooks_record_in_a_subclass_with_its_own_before_batch_and_a_forward_run_by_get_loss():
    """Regressions of this stop, caught before they landed: recording had been switched on in before_batch and off
    at after_predict, so a subclass's own before_batch (no super()) or a model run inside get_loss recorded nothing."""
    from miniai.callbacks import ActivationStats

    class Mine(ActivationStats):
        def before_batch(self, learn) -> None:
            self.seen = True

    class LossRunsTheModel(Callback):  # a model that computes its own loss: predict does nothing
        owns_steps = ("predict", "get_loss")

        def predict(self, learn) -> None:
            learn.preds = None

        def get_loss(self, learn) -> None:
            learn.loss = F.mse_loss(learn.model(learn.batch[0]), learn.batch[1])
    for cbs in ([Mine(lambda m: isinstance(m, nn.Linear))],
                [ActivationStats(lambda m: isinstance(m, nn.Linear)), LossRunsTheModel()]):
        learn = tiny_learner(cbs=cbs)
        learn.fit(1)
        assert len(cbs[0].stats[0][0]) == 3


def test_a_process_group_without_ddp_refuses_nothing(monkeypatch):
    """lr_find, SWACB and get_preds mid-fit were refused under any process group, DDPCB or not."""
    import socket
    import torch.distributed as dist
    from miniai.callbacks import SWACB
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        learn = tiny_learner()
        learn.lr_find(plot=False)
        learn.fit(2, cbs=[SWACB(swa_start=1, swa_lr=0.01), _During(lambda learn: learn.get_preds())])
    finally:
        dist.destroy_process_group()


class _During(Callback):
    def __init__(self, action) -> None:
        self.action = action

    def after_epoch(self, learn) -> None:
        if learn.training:
            self.action(learn)


def test_a_validation_only_fit_runs_under_inference_mode():
    learn = tiny_learner()
    with torch.inference_mode():
        learn.fit(1, train=False)


def test_a_validation_loader_that_drops_items_is_refused():
    """MetricsCB scored 96 of 100 validation items (drop_last=True on a hand-built valid loader), while get_preds
    on the same loader walked all 100: the two disagreed, without a word."""
    from torch.utils.data import DataLoader, TensorDataset

    from miniai.data import DataLoaders
    x, y = torch.randn(100, 3), torch.randn(100, 1)
    dls = DataLoaders(DataLoader(TensorDataset(x, y), 32), DataLoader(TensorDataset(x, y), 32, drop_last=True))
    learn = TrainLearner(nn.Linear(3, 1), dls, F.mse_loss, lr=0.1)
    with pytest.raises(ValueError, match=r"dls.valid drops its last items.*without drop_last"):
        learn.fit(1)
    learn.fit(1, valid=False)  # training may drop them


class _ValidScore:
    """A metric that rises as the loss falls here (1 - MSE), named as an accuracy is."""

    def __init__(self):
        self.reset()

    def update(self, preds, target):
        self.sum, self.n = self.sum + float(((preds - target) ** 2).sum()), self.n + len(target)

    def compute(self):
        return 1 - self.sum / max(self.n, 1)

    def reset(self):
        self.sum, self.n = 0.0, 0


def test_a_resume_watching_another_metric_looks_for_the_best_afresh(tmp_path):
    """Resumed with EarlyStoppingCB and CheckpointCB watching valid_loss where the run watched valid_accuracy,
    the saved best accuracy was compared with losses: the fit stopped at once while the loss improved, and the
    best-by-accuracy file was named best by loss."""
    def cbs(monitor):
        return [quiet_metrics(accuracy=_ValidScore()), EarlyStoppingCB(monitor, patience=1),
                CheckpointCB(tmp_path, monitor=monitor)]
    tiny_learner(cbs=cbs("valid_accuracy"), lr=0.01).fit(2)
    learn = tiny_learner(cbs=cbs("valid_loss"), lr=0.01)
    with pytest.warns(UserWarning, match=r"watched 'valid_accuracy' \(max\).*watches 'valid_loss' \(min\)"):
        learn.fit(5, resume=tmp_path)
    stopper = next(cb for cb in learn.cbs if isinstance(cb, EarlyStoppingCB))
    saver = next(cb for cb in learn.cbs if isinstance(cb, CheckpointCB))
    assert stopper.stopped_epoch is None and learn.epoch == 4  # the loss kept improving: no stop
    assert saver.best_path.name == "epoch_0005.pt" and saver.best == learn.metrics.history[-1]["loss"]


def test_recorders_given_in_another_order_on_resume_are_refused_not_emptied(tmp_path):
    """Checkpoint states are matched to callbacks by class and order: two RecorderCBs swapped on resume each got
    the other's records, kept none of them, and recorded only the resumed epochs, without a word."""
    from miniai.callbacks.scheduling import RecorderCB, _lr

    def loss_of(cb):
        return float(cb.learn.loss)
    tiny_learner(cbs=[RecorderCB(lr=_lr), RecorderCB(loss=loss_of), CheckpointCB(tmp_path)]).fit(2)
    learn = tiny_learner(cbs=[RecorderCB(loss=loss_of), RecorderCB(lr=_lr)])
    with pytest.raises(ValueError, match=r"records loss, and the state given to it recorded lr.*in the order"):
        learn.fit(3, resume=tmp_path)
    learn = tiny_learner(cbs=[RecorderCB(lr=_lr), RecorderCB(loss=loss_of)])
    learn.fit(3, resume=tmp_path)
    assert [len(cb.recs[name]) for cb, name in zip(learn.cbs, ("lr", "loss"))] == [9, 9]


def test_two_checkpoint_callbacks_in_one_directory_are_refused(tmp_path):
    """CheckpointCB(d, keep=1) and CheckpointCB(d, keep=1, monitor='valid_loss') each deleted the other's files:
    the best checkpoint went, while best_path still named it."""
    learn = tiny_learner(cbs=[quiet_metrics(), CheckpointCB(tmp_path, keep=1),
                              CheckpointCB(tmp_path / ".", keep=1, monitor="valid_loss")])
    with pytest.raises(ValueError, match="two CheckpointCBs write into"):
        learn.fit(2)
    assert list(tmp_path.iterdir()) == []


def test_a_loader_seed_the_resume_would_replace_is_refused(tmp_path):
    """Resumed with TensorLoader(seed=7) where the run shuffled with seed=0, the loader's seed was silently set back
    to 0, for this fit and the next ones; resumed with a seed where the run had none, it walked another order."""
    def learner(seed, run=None):
        torch.manual_seed(0)
        x = torch.randn(48, 1)
        dls = DataLoaders(TensorLoader(x, 2 * x + 3, 16, shuffle=True, seed=seed), TensorLoader(x, 2 * x + 3, 16))
        return TrainLearner(nn.Linear(1, 1), dls, F.mse_loss, lr=0.1,
                            cbs=[CheckpointCB(tmp_path / str(run))] if run is not None else [])
    learner(0, run="a").fit(2)
    learn = learner(7)
    with pytest.raises(checkpoint_module.CheckpointMismatchError,
                       match=r"seed=7, and the run resumed from shuffled with seed=0"):
        learn.fit(3, resume=tmp_path / "a")
    assert learn.dls.train.seed == 7
    learn = learner(None)
    learn.fit(3, resume=tmp_path / "a")  # no seed of its own: it walks the saved run's order, then has none again
    assert learn.dls.train.seed is None
    learner(5, run="b").fit(2)
    learn.fit(3, resume=tmp_path / "b")  # so a resume from another run is no mismatch of a seed it never gave
    learner(None, run="c").fit(2)  # a run that drew its orders from torch's RNG, resumed with a seed of its own
    with pytest.raises(checkpoint_module.CheckpointMismatchError, match=r"seed=7, and the run resumed from drew"):
        learner(7).fit(3, resume=tmp_path / "c")


def test_a_recorder_recording_one_more_name_resumes_with_it_at_the_batches_it_recorded(tmp_path):
    """Refusing RecorderCBs swapped on resume must not refuse one that records a name more than the saved run. The
    new name's values were drawn from batch 0, beside the other names' values of the saved run's first batches
    (probe): it starts with NaN (not drawn) for those."""
    from miniai.callbacks.scheduling import RecorderCB, _lr, _mom
    tiny_learner(cbs=[RecorderCB(lr=_lr), CheckpointCB(tmp_path)]).fit(2)
    rec = RecorderCB(lr=_lr, mom=_mom)
    tiny_learner(cbs=[rec]).fit(3, resume=tmp_path)
    assert len(rec.recs["lr"]) == len(rec.recs["mom"]) == 9
    assert all(math.isnan(v) for v in rec.recs["mom"][:6]) and rec.recs["mom"][6:] == [0.0] * 3
    xs, ys = rec.plot().axes[1].get_lines()[0].get_data()
    assert list(xs[~np.isnan(ys)]) == [6, 7, 8]


def test_a_loss_class_an_optimizer_instance_or_a_string_lr_is_refused_with_the_fix():
    """Keras habits: each failed deep inside torch ('Boolean value of Tensor ... ambiguous', 'SGD object is not
    callable', a TypeError from sgd.py) without saying what to pass instead."""
    model = nn.Linear(1, 1)
    with pytest.raises(TypeError, match=r"pass an instance, MSELoss\(\)"):
        TrainLearner(model, linear_dls(), nn.MSELoss)
    with pytest.raises(TypeError, match="pass the class, e.g. optim.AdamW"):
        TrainLearner(model, linear_dls(), F.mse_loss, opt_func=optim.SGD(model.parameters(), lr=0.1))
    learn = TrainLearner(model, linear_dls(), F.mse_loss, lr="0.1")
    before = model.weight.detach().clone()
    with pytest.raises(TypeError, match="lr must be a number, got '0.1'"):
        learn.fit(1)
    with pytest.raises(TypeError, match="lr must be a number"):
        learn.fit(1, lr="1e-2")
    assert torch.equal(model.weight, before)
    TrainLearner(model, linear_dls(), F.mse_loss, lr=np.float32(0.01)).fit(1)  # numbers of any kind still train


def test_a_tensor_lr_is_never_changed_in_place_by_a_schedule():
    """A tensor lr became the param group's own lr, which torch's schedulers fill in place: after a cosine fit the
    learner's lr (and the user's tensor) read 0, and the next fit trained nothing; fit_one_cycle left it at its
    last lr. fit_one_cycle refused a one-number tensor, Decimal or 0-dim array as max_lr ("max_lr is one number")."""
    from decimal import Decimal
    from torch.optim import lr_scheduler
    from miniai.callbacks import BatchSchedCB
    learn = tiny_learner()
    learn.lr = lr = torch.tensor(0.05)
    learn.fit(2, cbs=[BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=2 * len(learn.dls.train)))])
    mine = torch.tensor([0.05])
    learn.fit(2, lr=mine, cbs=[BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=2 * len(learn.dls.train)))])
    learn.fit_one_cycle(2)
    assert lr.item() == mine.item() == learn.lr.item() == torch.tensor(0.05).item()
    for max_lr in (torch.tensor(0.05), torch.tensor([0.05]), Decimal("0.05"), np.array(0.05)):
        learn.fit_one_cycle(1, max_lr=max_lr)
        assert max(g["max_lr"] for g in learn.opt.param_groups) == pytest.approx(0.05)


def test_fit_lr_is_the_number_the_optimizer_was_made_with_not_its_scheduled_tensor(tmp_path):
    """With a tensor lr, learn.fit_lr was the param group's own tensor, which the schedule filled in place: each
    checkpoint saved the lr scheduled then (0.15, 0.05, 0) as the run's, and a resume with the same callbacks made its
    optimizer with that, warning falsely of "other settings" (initial_lr 0.2 saved, 0.15 here)."""
    from torch.optim import lr_scheduler
    from miniai.callbacks import BatchSchedCB, CheckpointCB
    def cosine():
        return BatchSchedCB(partial(lr_scheduler.CosineAnnealingLR, T_max=3 * len(learn.dls.train)))
    learn = tiny_learner([CheckpointCB(tmp_path)])
    learn.fit(3, lr=torch.tensor(0.2), cbs=[cosine()])
    assert learn.fit_lr == torch.tensor(0.2).item() and learn.fit_lr is not learn.opt.param_groups[0]["lr"]
    resumed = tiny_learner([CheckpointCB(tmp_path / "resumed")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.fit(3, resume=tmp_path / "epoch_0001.pt", cbs=[cosine()])
    assert all(torch.equal(a, b) for a, b in zip(learn.model.parameters(), resumed.model.parameters()))
