"""A new user's mistakes (a hostile probe's list): each one trained on, or logged a wrong number, without a word.
Each test fails on the code before its fix."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from miniai.callbacks import MetricsCB, RecorderCB
from miniai.callbacks.basic import LossInputError
from miniai.data import DataLoaders, TensorLoader
from miniai.learner import Callback, TrainLearner
from miniai.supervised import MomentumLearner
from tests.synth import linear_dls, tiny_learner


def class_dls(n_classes: int = 3, float_targets: bool = False, target_shape: str = "(N,)", n: int = 64,
              bs: int = 16) -> DataLoaders:
    """8 features, `n_classes` classes; the targets as class indices (N,), or as floats in the shape asked."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, 8, generator=g)  # the first n to train on, the others held out
    y = (x @ torch.randn(8, max(n_classes, 2), generator=g)).argmax(1) % max(n_classes, 2)
    if float_targets:
        y = y.float()
    if target_shape == "(N,1)":
        y = y.unsqueeze(1)
    return DataLoaders(TensorLoader(x[:n], y[:n], bs, shuffle=True, seed=0), TensorLoader(x[n:], y[n:], bs))


@pytest.mark.parametrize("out, flatten, float_targets, target_shape", [
    (1, False, True, "(N,1)"),   # softmax over one logit is 1: the loss was exactly 0 and nothing trained
    (1, True, True, "(N,)"),     # (N,) preds are ONE item of N classes to cross_entropy: the advice led here
    (1, False, False, "(N,)"),   # int targets: refused, but told to flatten the output (then the case above)
])
def test_cross_entropy_over_one_logit_is_refused_with_the_binary_fix(out, flatten, float_targets, target_shape):
    model = nn.Sequential(nn.Linear(8, out), *([nn.Flatten(0)] if flatten else []))
    learn = TrainLearner(model, class_dls(2, float_targets, target_shape), F.cross_entropy, lr=0.1)
    with pytest.raises(LossInputError, match=r"cross_entropy.*binary_cross_entropy_with_logits") as info:
        learn.fit(1)
    assert "nn.Flatten(0)" not in str(info.value)  # the elementwise losses' advice, wrong here


def test_nll_loss_of_raw_logits_is_refused():
    """nll_loss takes log-probabilities; on raw logits it logged a negative loss that kept falling."""
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.nll_loss, lr=0.1)
    with pytest.raises(LossInputError, match=r"log-probabilities.*log_softmax.*F.cross_entropy"):
        learn.fit(1)
    TrainLearner(nn.Sequential(nn.Linear(8, 3), nn.LogSoftmax(1)), class_dls(), F.nll_loss, lr=0.1).fit(1)


def warns_and_quiet(match: str, warned: TrainLearner, quiet: TrainLearner) -> None:
    """`warned.fit(1)` warns, matching `match`; `quiet.fit(1)` warns nothing."""
    with pytest.warns(UserWarning, match=match):
        warned.fit(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.fit(1)


def test_cross_entropy_of_probabilities_is_warned_of():
    """A model ending in Softmax under cross_entropy applies softmax twice: it trains, slowly, without a word."""
    warns_and_quiet(r"takes logits.*look like probabilities.*Softmax",
                    TrainLearner(nn.Sequential(nn.Linear(8, 3), nn.Softmax(1)), class_dls(), F.cross_entropy, lr=0.1),
                    TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1))


@pytest.mark.parametrize("loss_func", [F.binary_cross_entropy_with_logits, nn.BCEWithLogitsLoss()])
def test_binary_cross_entropy_with_logits_of_probabilities_is_warned_of(loss_func):
    """(probe P8) A model ending in a sigmoid under BCE-with-logits applies the sigmoid twice: it trained, and
    logged 0.647 where the probabilities' own BCE was 0.363, without a word (softmax into cross_entropy warns)."""
    dls = class_dls(2, float_targets=True)
    def learner(*head):
        return TrainLearner(nn.Sequential(nn.Linear(8, 1), nn.Flatten(0), *head), dls, loss_func, lr=0.1)
    warns_and_quiet(r"takes logits.*these preds all lie in \[0, 1\].*sigmoid would be applied twice.*Remove the "
                    r"model's final sigmoid", learner(nn.Sigmoid()), learner())
    zeros = learner()  # (regression round T2) a head initialized to zeros gives logits of 0: no sigmoid there
    nn.init.zeros_(zeros.model[0].weight), nn.init.zeros_(zeros.model[0].bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zeros.fit(1)
    saturated = learner(nn.Sigmoid())  # (regression round T3) a sigmoid gives exactly 1.0 past logits of ~17
    saturated.model[0].weight.data.mul_(100)
    with pytest.warns(UserWarning, match=r"sigmoid would be applied twice"):
        saturated.fit(1)


def test_an_optimizer_set_by_hand_before_a_fit_is_said_to_be_replaced():
    """(probe P8) learn.opt = Adam(..., lr=1e-3), PyTorch's habit: the fit made its own SGD at 0.1 from opt_func and
    trained with that, without a word."""
    learn = tiny_learner()
    learn.opt = optim.Adam(learn.model.parameters(), lr=1e-3)
    with pytest.warns(UserWarning, match=r"learn.opt was set by hand.*each fit makes its optimizer with opt_func.*"
                                         r"opt_func=partial\(optim.Adam"):
        learn.fit(1)
    assert isinstance(learn.opt, optim.SGD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1)  # its own, made by the last fit: no word
        learn.fit(1, train=False)
        del learn._fit_opt  # (regression round T2) a learner pickled by a miniai that kept no such record
        learn.fit(1)


def test_an_optimizer_set_by_hand_before_an_evaluation_fit_is_still_said_to_be_replaced_at_the_next_training():
    """(probe P8, left from session 21) learn.opt = Adam(...), then fit(1, train=False): the evaluation kept it (it
    trains nothing) and was taken for the fit that made it, so the training fit after replaced it without a word."""
    learn = tiny_learner()
    learn.opt = optim.Adam(learn.model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1, train=False)  # it keeps the optimizer, and trains nothing: no word yet
    with pytest.warns(UserWarning, match=r"learn.opt was set by hand \(Adam\)"):
        learn.fit(1)


@pytest.mark.parametrize("how", ["detached loss", "detached preds", "TrainCB", "MixedPrecisionCB"])
def test_a_loss_a_callback_cut_from_its_graph_is_named_at_the_backward(how):
    """(probe P12, session 22) learn.loss = learn.loss.detach() in after_loss (or preds detached in after_predict)
    ended in torch's bare "element 0 of tensors does not require grad", naming neither the loss nor the callback."""
    from miniai.callbacks import MixedPrecisionCB, TrainCB
    from miniai.learner import Learner

    class Cut(Callback):
        def after_predict(self, learn):
            if how == "detached preds":
                learn.preds = learn.preds.detach()

        def after_loss(self, learn):
            if how != "detached preds":
                learn.loss = learn.loss.detach()
    cbs = [Cut()] + {"TrainCB": [TrainCB()], "MixedPrecisionCB": [MixedPrecisionCB(dtype=torch.bfloat16)]}.get(how, [])
    learn = tiny_learner(cbs, learner_cls=Learner if how == "TrainCB" else TrainLearner)
    with pytest.raises(RuntimeError, match="does not require grad") as info:
        learn.fit(1)
    assert "learn.loss has no autograd graph at backward" in "".join(getattr(info.value, "__notes__", []))


def test_an_optimizer_a_callback_swaps_in_during_a_scheduled_fit_is_refused():
    """(probe P8) A callback setting learn.opt = Adam(...) at epoch 1 of fit_one_cycle(2): the schedule went on
    stepping the first optimizer, and epoch 1 trained at the new one's flat 1e-3, without a word."""
    class SwapOpt(Callback):
        def before_epoch(self, learn):
            if learn.training and learn.epoch == 1:
                learn.opt = optim.Adam(learn.model.parameters(), lr=1e-3)
    learn = tiny_learner([SwapOpt()])
    with pytest.raises(RuntimeError, match=r"learn.opt was replaced during the fit.*OneCycleLR steps the optimizer "
                                           r"it was built on"):
        learn.fit_one_cycle(2, max_lr=0.1)


def test_a_loss_func_that_is_no_function_is_named_at_the_learner_or_before_the_first_loss():
    """(probe P8) loss_func="cross_entropy" was accepted and failed at the first batch with "'str' object is not
    callable" under advice about output shapes; None (load_learner's when the loss didn't pickle) the same."""
    with pytest.raises(TypeError, match=r"loss_func must be a function or an nn loss .*got 'cross_entropy'"):
        TrainLearner(nn.Linear(8, 3), class_dls(), "cross_entropy")
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), None, lr=0.1)  # (an inference learner may have none)
    before = learn.model.weight.detach().clone()
    with pytest.raises(TypeError, match=r"the learner has no loss_func \(None.*learn.loss_func = F.cross_entropy"):
        learn.fit(1)
    assert torch.equal(learn.model.weight, before)
    learn.get_preds()  # predictions need no loss


def test_fastais_learn_predict_of_an_item_points_at_infer_and_get_preds():
    """(probe P8) learn.predict(x), fastai's call for one item: "TrainLearner.predict() takes 1 positional argument
    but 2 were given"; predict is the loop's step here."""
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy)
    with pytest.raises(TypeError, match=r"learn.predict is the loop's step .*takes no arguments.*learn.infer\(x\).*"
                                        r"learn.get_preds\(dl=\[\(x,\)\]\)"):
        learn.predict(torch.zeros(8))


def test_a_model_on_another_device_than_its_inputs_is_named_with_devicecb():
    """(probe P8) A model on the GPU fed CPU batches (DeviceCB forgotten; the meta device stands in for the GPU):
    torch's device error got a note of the inputs' shapes and dtypes, not of the devices, and no word of DeviceCB."""
    learn = TrainLearner(nn.Linear(8, 3, device="meta"), class_dls(), F.cross_entropy)
    with pytest.raises(RuntimeError) as info:
        learn.fit(1)
    assert any("the model's parameters are on meta, the inputs on cpu: add DeviceCB() to the learner's callbacks"
               in note for note in info.value.__notes__)


def test_an_optimizer_holding_none_of_the_models_parameters_is_refused():
    """opt_func built on an earlier model's parameters (a re-run notebook cell): three epochs trained nothing."""
    old = nn.Linear(8, 3)
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.5,
                         opt_func=lambda params, lr: optim.SGD(old.parameters(), lr=lr))
    before = learn.model.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"the optimizer holds none of the model's 2 trainable parameters"):
        learn.fit(1)
    assert torch.equal(before, learn.model.weight)



def test_an_optimizer_of_parameters_of_ones_own_says_to_freeze_the_model_and_a_stale_ones_of_any_shape_is_refused():
    """Temperature scaling, SGD([T]) beside a model left trainable, was refused blaming only "another model's"
    parameters; an optimizer of an earlier model of another width must be refused too (nothing of this one trains)."""
    temperature = nn.Parameter(torch.ones(()))
    model = nn.Linear(8, 3)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) / temperature
    own = TrainLearner(Scaled(), class_dls(), F.cross_entropy, lr=0.1,
                       opt_func=lambda params, lr: optim.SGD([temperature], lr=lr))
    with pytest.raises(RuntimeError, match=r"a temperature.*freeze the model first: model.requires_grad_\(False\)"):
        own.fit(1)
    model.requires_grad_(False)
    own.fit(1)
    assert temperature.item() != 1.0
    old = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    stale = TrainLearner(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)), class_dls(), F.cross_entropy,
                         lr=0.1, opt_func=lambda params, lr: optim.SGD(old.parameters(), lr=lr))
    with pytest.raises(RuntimeError, match=r"holds none of the model's 4 trainable parameters"):
        stale.fit(1)


def test_a_layer_frozen_between_momentum_learner_fits_stays_put():
    """MomentumLearner keeps mom × the gradients across fits; a layer frozen between fits kept its stale ones,
    and every step moved it."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = MomentumLearner(model, class_dls(), F.cross_entropy, lr=0.1)
    learn.fit(1)
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    learn.fit(1)
    assert torch.equal(frozen, model[0].weight)
    assert model[2].weight.grad is not None  # the trainable layer keeps its momentum



def test_a_layer_frozen_during_a_momentum_learner_fit_stays_put():
    """Frozen by a callback at an epoch's start (gradual unfreezing's reverse), the layer still held the momentum
    the last zero_grad had kept, and the next step moved it by 0.015."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    frozen = []

    class Freeze(Callback):
        def before_epoch(self, learn):
            if learn.training and learn.epoch == 1:
                model[0].requires_grad_(False)
                frozen.append(model[0].weight.detach().clone())
    MomentumLearner(model, class_dls(), F.cross_entropy, lr=0.1, cbs=[Freeze()]).fit(2)
    assert torch.equal(frozen[0], model[0].weight)


def test_a_layer_frozen_at_a_later_momentum_learner_fits_start_stays_put():
    """The hook dropping a frozen layer's kept momentum came with the fit's first zero_grad, after its first step:
    frozen at the second fit's first epoch, the layer moved by the first fit's momentum."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = MomentumLearner(model, class_dls(), F.cross_entropy, lr=0.1)
    learn.fit(1)
    before = model[0].weight.detach().clone()

    class Freeze(Callback):
        def before_epoch(self, learn):
            model[0].requires_grad_(False)
    learn.fit(1, cbs=[Freeze()])
    assert torch.equal(before, model[0].weight)



def test_a_momentum_learner_takes_a_callback_that_owns_get_loss():
    """Dropping a frozen layer's kept momentum in MomentumLearner.get_loss made a loss callback owning get_loss an
    error ("MomentumLearner.get_loss would never run")."""
    class OwnLoss(Callback):
        owns_steps = ("get_loss",)

        def get_loss(self, learn):
            learn.loss = F.cross_entropy(learn.preds, *learn.yb, label_smoothing=0.1)
    MomentumLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[OwnLoss()]).fit(1)

def test_a_second_momentum_in_any_param_group_is_warned_of():
    """The warning read param group 0 only: momentum=0.9 given to the head's group alone went unsaid."""
    def head_momentum(params, lr):
        weight, bias = list(params)
        return optim.SGD([{"params": [weight]}, {"params": [bias], "momentum": 0.9}], lr=lr)
    with pytest.warns(UserWarning, match=r"MomentumLearner.*momentum=0.9.*second.*plain SGD"):
        MomentumLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, opt_func=head_momentum).fit(1)

def test_a_second_momentum_a_schedule_cycles_into_plain_sgd_is_warned_of_with_the_fix_that_works():
    # torch's OneCycleLR cycles SGD's momentum by default: the warning's advice, "use plain SGD", was what the
    # user had; cycle_momentum=False is what works (probe)
    from functools import partial
    from torch.optim.lr_scheduler import OneCycleLR
    from miniai.callbacks import BatchSchedCB

    def learner(**kwargs):
        sched = BatchSchedCB(partial(OneCycleLR, max_lr=0.1, total_steps=4, **kwargs))
        return MomentumLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, opt_func=optim.SGD,
                               cbs=[sched])
    with pytest.warns(UserWarning, match=r"MomentumLearner.*second.*cycle_momentum=False") as caught:
        learner().fit(1)
    assert "opt_func=optim.SGD" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn = learner(cycle_momentum=False)
        learn.fit(1)
    assert learn.opt.param_groups[0]["momentum"] == 0


def test_momentum_learner_with_an_optimizers_own_momentum_is_warned_of():
    """The gradients' momentum and the optimizer's stack: 20 steps moved 5.3 against 0.97 for one momentum."""
    warns_and_quiet(r"MomentumLearner.*momentum=0.9.*second",
                    MomentumLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1,
                                    opt_func=lambda p, lr: optim.SGD(p, lr=lr, momentum=0.9)),
                    MomentumLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1))


def test_recorder_keeps_no_graph_of_a_tensor_it_records():
    """RecorderCB(loss=lambda cb: cb.learn.loss) kept each batch's live loss, and with it the batch's graph."""
    rec = RecorderCB(loss=lambda cb: cb.learn.loss)
    TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[rec]).fit(1)
    assert len(rec.recs["loss"]) == 4 and all(not v.requires_grad for v in rec.recs["loss"])
    rec.state_dict()  # (deepcopy refused a non-leaf tensor)


def test_a_dataset_given_where_a_loader_belongs_is_refused_before_it_trains_item_by_item():
    """(probe P8) DataLoaders(TensorDataset(x, y), TensorDataset(xv, yv)): without MetricsCB the fit trained 250
    optimizer steps on single items of shape (10,), unshuffled, without a word (a Linear takes one item, and
    cross_entropy an unbatched one)."""
    from torch.utils.data import TensorDataset
    x, y = torch.randn(20, 10), torch.randint(0, 3, (20,))
    learn = TrainLearner(nn.Linear(10, 3), DataLoaders(TensorDataset(x, y), TensorDataset(x, y)), F.cross_entropy)
    before = learn.model.weight.detach().clone()
    with pytest.raises(TypeError, match=r"dls.train is a TensorDataset, which gives one item at a time, not "
                                        r"batches: wrap it in a loader, DataLoader\(dataset, batch_size=64, "
                                        r"shuffle=True\).*items are whole batches already, DataLoader\(dataset, "
                                        r"batch_size=None\)"):
        learn.fit(1)
    assert torch.equal(learn.model.weight, before)


@pytest.mark.parametrize("args", [(1, 1), (1, 0), (2, 3e-3), (1, slice(1e-4, 1e-2))])
def test_an_lr_given_in_fits_place_of_train_is_refused_with_how_to_give_one(args):
    """(probe P8) fastai's learn.fit(n, lr): fit(1, 1) trained at the learner's 0.1, fit(1, 0) only validated,
    fit(2, 3e-3) failed in the loop with "can't multiply sequence by non-int of type 'float'"."""
    learn = tiny_learner()
    before = learn.model.weight.detach().clone()
    with pytest.raises(TypeError, match=r"fit.s second argument is train \(True or False: whether to train\).*"
                                        r"fit\(n_epochs, lr=\.\.\.\)"):
        learn.fit(*args)
    assert torch.equal(learn.model.weight, before)
    with pytest.raises(TypeError, match=r"fit's valid is True or False"):
        learn.fit(1, valid=None)
    with pytest.raises(TypeError, match=r"fit's second argument is train"):  # (regression round T2) it crashed in
        learn.fit(1, np.True_)  # the loop, ("train",) * np.True_


def test_the_same_loader_for_training_and_validation_is_warned_of():
    dls = class_dls()
    with pytest.warns(UserWarning, match=r"dls.valid gives the same data as dls.train.*measures the training data"):
        TrainLearner(nn.Linear(8, 3), DataLoaders(dls.train, dls.train), F.cross_entropy, lr=0.1).fit(1)



class _Indices(torch.utils.data.Sampler):
    """A sampler of one's own over some indices: a part of the dataset."""

    def __init__(self, indices):
        self.indices = list(indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)

def test_two_loaders_of_the_same_data_are_warned_of_too():
    """Only the same loader object was: two loaders over one dataset, the usual way to make the mistake, passed."""
    from torch.utils.data import DataLoader, TensorDataset
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    ds = TensorDataset(x, y)
    from torch.utils.data import BatchSampler, RandomSampler, WeightedRandomSampler
    for train, valid in [(DataLoader(ds, 16, shuffle=True), DataLoader(ds, 32)),
                         (DataLoader(TensorDataset(x, y), 16), DataLoader(TensorDataset(x, y), 32)),
                         (TensorLoader(x, y, 16, shuffle=True), TensorLoader(x, y, 32)),
                         (DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 16, False)), DataLoader(ds)),
                         (DataLoader(ds, 16, sampler=WeightedRandomSampler(torch.ones(64), 64)), DataLoader(ds))]:
        with pytest.warns(UserWarning, match=r"dls.valid gives the same data as dls.train"):
            TrainLearner(nn.Linear(8, 3), DataLoaders(train, valid), F.cross_entropy, lr=0.1).fit(1)
    # (probe P25, session 23) copies of the same data: a test split that is a copy of the training files
    for train, valid in [(TensorLoader(x, y, 16), TensorLoader(x.clone(), y.clone(), 32)),
                         (DataLoader(TensorDataset(x, y), 16), DataLoader(TensorDataset(x.clone(), y.clone()), 32))]:
        with pytest.warns(UserWarning, match=r"dls.valid gives the same data as dls.train"):
            TrainLearner(nn.Linear(8, 3), DataLoaders(train, valid), F.cross_entropy, lr=0.1).fit(1)
    from torch.utils.data import SubsetRandomSampler
    held_out = [  # held-out data, also one dataset split by samplers, or the same inputs with other targets
        (TensorLoader(x[:48], y[:48], 16), TensorLoader(x[48:], y[48:], 16)),
        (DataLoader(ds, 16, sampler=SubsetRandomSampler(range(48))), DataLoader(ds, 16, sampler=range(48, 64))),
        (DataLoader(TensorDataset(x, y), 16), DataLoader(TensorDataset(x, (y + 1) % 3), 16)),
        (DataLoader(ds, 16, sampler=np.arange(48)), DataLoader(ds, 16, sampler=torch.arange(48, 64))),
        (DataLoader(ds, 16, sampler=_Indices(range(48))), DataLoader(ds, 16, sampler=_Indices(range(48, 64)))),
        # (regression round T2) k-fold: a copy of one dataset per loader, split by samplers; and the same tensors so
        (DataLoader(TensorDataset(x.clone(), y.clone()), 16, sampler=SubsetRandomSampler(range(48))),
         DataLoader(TensorDataset(x.clone(), y.clone()), 16, sampler=SubsetRandomSampler(range(48, 64)))),
        (DataLoader(TensorDataset(x, y), 16, sampler=SubsetRandomSampler(range(48))),
         DataLoader(TensorDataset(x, y), 16, sampler=SubsetRandomSampler(range(48, 64))))]
    for train, valid in held_out:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            TrainLearner(nn.Linear(8, 3), DataLoaders(train, valid), F.cross_entropy, lr=0.1).fit(1)


def test_index_splits_of_one_dataset_that_overlap_are_warned_of():
    """Two samplers over the same indices, an off-by-one split, or a training part validated on the whole dataset:
    validation read training items, without a word (only whole-dataset readers on both sides were caught)."""
    from torch.utils.data import DataLoader, Subset, SubsetRandomSampler, TensorDataset, random_split
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    ds = TensorDataset(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a split that shares nothing: nothing said
        train, valid = random_split(ds, [48, 16], generator=torch.Generator().manual_seed(0))
        TrainLearner(nn.Linear(8, 3), DataLoaders(DataLoader(train, 16), DataLoader(valid, 16)), F.cross_entropy,
                     lr=0.1).fit(1)
    part = lambda indices: DataLoader(ds, 16, sampler=SubsetRandomSampler(indices))  # noqa: E731
    cases = [(part(range(48)), part(list(range(48))), "the same data as dls.train"),
             (part(range(48)), DataLoader(ds, 16, sampler=range(47, 64)), "1 of its 17 items"),
             (part(range(48)), DataLoader(ds, 16), "48 of its 64 items"),
             (DataLoader(ds, 16, shuffle=True), DataLoader(ds, 16, sampler=np.arange(48, 64)), "16 of its 16 items"),
             (part(list(np.arange(48))), DataLoader(ds, 16, sampler=list(torch.arange(40, 64))), "8 of its 24 items"),
             (DataLoader(Subset(ds, range(48)), 16, shuffle=True), DataLoader(Subset(ds, range(40, 64)), 16),
              "8 of its 24 items"),  # (random_split's kind of split)
             (DataLoader(Subset(ds, range(48)), 16), DataLoader(ds, 16), "48 of its 64 items"),
             (DataLoader(Subset(ds, range(48)), 16), DataLoader(Subset(ds, range(-20, 0)), 16), "4 of its 20 items"),
             (DataLoader(Subset(ds, range(48)), 16), DataLoader(Subset(ds, list(range(48))), 16),
              "the same data as dls.train")]
    for train, valid, says in cases:
        with pytest.warns(UserWarning, match=f"dls.valid .*{says}"):
            TrainLearner(nn.Linear(8, 3), DataLoaders(train, valid), F.cross_entropy, lr=0.1).fit(1)


def test_slices_of_one_tensor_that_overlap_are_warned_of():
    """`TensorLoader(x[:80], ...)` and `TensorLoader(x[79:], ...)`, an off-by-one split of the tensors themselves (or
    the whole trained on, a slice validated on): no word, while the same split by indices was warned of."""
    from torch.utils.data import DataLoader, TensorDataset
    x, y = torch.randn(100, 8), torch.randint(0, 3, (100,))
    cases = [(TensorLoader(x[:80], y[:80], 10, shuffle=True), TensorLoader(x[79:], y[79:], 10), "1 of its 21"),
             (TensorLoader(x, y, 10, shuffle=True), TensorLoader(x[80:], y[80:], 10), "20 of its 20"),
             (DataLoader(TensorDataset(x[:80], y[:80]), 10), DataLoader(TensorDataset(x[70:], y[70:]), 10),
              "10 of its 30"),
             (TensorLoader(x[:80], y[:80].clone(), 10), TensorLoader(x[70:], y[70:].clone(), 10), "10 of its 30")]
    from miniai import checks  # (channels-last images, a target of another dtype, NaN in a target: missed)
    images = torch.randn(100, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    targets = torch.randn(100, 1)
    targets[75] = float("nan")
    assert checks._shared_items(TensorLoader(images[:80], targets[:80], 10),
                                TensorLoader(images[70:], targets[70:].clone(), 10)) == (10, 30)
    assert checks._shared_items(TensorLoader(x[:80], y[:80], 10), TensorLoader(x[70:], y[70:].int(), 10)) == (10, 30)
    for train, valid, says in cases:
        with pytest.warns(UserWarning, match=f"dls.valid reads {says} items from those dls.train trains on"):
            TrainLearner(nn.Linear(8, 3), DataLoaders(train, valid), F.cross_entropy, lr=0.1).fit(1)
    sparse = torch.eye(100).to_sparse()  # (not strided: no rows to compare; fit started with a crash)
    TrainLearner(nn.Linear(100, 3), DataLoaders(DataLoader(TensorDataset(sparse, y), 10),
                                                DataLoader(TensorDataset(sparse, y), 10)), F.cross_entropy, lr=0.1)
    assert checks._shared_items(DataLoader(TensorDataset(sparse, y), 10), DataLoader(TensorDataset(sparse, y), 10)
                                ) is None and not checks._same_data(DataLoader(TensorDataset(sparse, y), 10),
                                                                   DataLoader(TensorDataset(sparse, y), 10))
    with warnings.catch_warnings():  # slices that share nothing, or rows taken every other one: nothing said
        warnings.simplefilter("error")
        for train, valid in [(TensorLoader(x[:80], y[:80], 10), TensorLoader(x[80:], y[80:], 10)),
                             (TensorLoader(x[::2], y[::2], 10), TensorLoader(x[1::2], y[1::2], 10)),
                             (TensorLoader(x[:80], y[:80], 10), TensorLoader(x[70:], (y[70:] + 1) % 3, 10))]:
            TrainLearner(nn.Linear(8, 3), DataLoaders(train, valid), F.cross_entropy, lr=0.1).fit(1)


def test_samplers_of_keys_that_are_not_indices_are_neither_refused_nor_warned_of():
    """The overlap check read samplers of string keys (fit failed: "too many dimensions 'str'"), of an object
    array (a TypeError), and of tuple keys, flattened into numbers that seemed to overlap (a false warning)."""
    from torch.utils.data import DataLoader, Dataset

    class Keyed(Dataset):
        def __getitem__(self, key):
            return torch.full((8,), float(len(str(key)))), torch.tensor(len(str(key)) % 3)

        def __len__(self):
            return 10
    ds = Keyed()
    for train, valid in [(["a", "b"], ["c", "d"]), ([(0, 1), (1, 1)], [(2, 1), (3, 1)]),
                         (np.array([0, 1], dtype=object), np.array([2, 3], dtype=object))]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dls = DataLoaders(DataLoader(ds, 2, sampler=train), DataLoader(ds, 2, sampler=valid))
            TrainLearner(nn.Linear(8, 3), dls, F.cross_entropy, lr=0.1).fit(1)


def test_metrics_cb_logs_the_loss_of_batches_with_an_extra_item():
    """(x, y, ids) batches with a loss that takes the ids too: the loss error's advice; MetricsCB() then refused
    to log even the loss alone."""
    from torch.utils.data import DataLoader, TensorDataset
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    ds = TensorDataset(x, y, torch.arange(64))
    dls = DataLoaders(DataLoader(ds, 16, shuffle=True), DataLoader(ds, 16))
    metrics = MetricsCB()
    TrainLearner(nn.Linear(8, 3), dls, lambda p, y, ids: F.cross_entropy(p, y), lr=0.1, cbs=[metrics]).fit(1)
    assert metrics.last["valid_loss"] > 0


def test_an_opt_func_that_sets_its_own_lr_is_refused_saying_where_the_lr_goes():
    """partial(optim.SGD, lr=0.5) failed in torch ("multiple values for argument 'lr'"), or, with lr=None, was told
    there was no learning rate."""
    from functools import partial
    for lr in (0.1, None):
        with pytest.raises(TypeError, match=r"opt_func sets lr=0.5 itself.*lr=0.5 to the learner"):
            TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=lr, opt_func=partial(optim.SGD, lr=0.5))


def test_a_loss_class_is_refused_however_it_was_given():
    """Only a bare class given to the learner was caught: a partial of one, or one assigned later, failed in the
    loss check with "Boolean value of Tensor with more than one value is ambiguous"."""
    from functools import partial
    with pytest.raises(TypeError, match=r"loss_func is a partial of the class CrossEntropyLoss: pass an instance"):
        TrainLearner(nn.Linear(8, 3), class_dls(), partial(nn.CrossEntropyLoss, label_smoothing=0.1))
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy)
    learn.loss_func = nn.CrossEntropyLoss
    with pytest.raises(TypeError, match=r"loss_func is the class CrossEntropyLoss: pass an instance"):
        learn.fit(1)


def test_an_lr_finder_result_given_as_the_lr_says_which_number_to_take():
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy)
    res = learn.lr_find()
    with pytest.raises(TypeError, match=r"lr must be a number, got LRFinderResult.*res.valley or res.steepest"):
        learn.fit(1, lr=res)


def test_an_epoch_scheduler_class_without_its_arguments_says_to_use_a_partial():
    from torch.optim.lr_scheduler import StepLR
    from miniai.callbacks import EpochSchedCB
    with pytest.raises(TypeError, match=r"StepLR.*partial\(StepLR, step_size=\.\.\.\)"):
        TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, cbs=[EpochSchedCB(StepLR)]).fit(1)


# ---------------------------------------------------------------- what the checks above must let through

def test_nll_of_log_probabilities_with_an_epsilon_trains_and_log_sigmoid_scores_are_refused():
    """log(softmax + 1e-6) reaches 1e-6 above 0 on a confident item: it was refused as raw logits, mid-run."""
    class LogProbs(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(torch.softmax(x * 100, 1) + 1e-6)  # (× 100: items whose top class has p ≈ 1)
    TrainLearner(nn.Sequential(nn.Linear(8, 3), LogProbs()), class_dls(), F.nll_loss, lr=0.1).fit(1)

    class Shifted(nn.Module):  # <= 0, but not a distribution's logs (their exps sum to e^-3)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(x, 1) - 3
    with pytest.raises(LossInputError, match=r"log-probabilities.*exps summing to 0.0498"):
        TrainLearner(nn.Sequential(nn.Linear(8, 3), Shifted()), class_dls(), F.nll_loss, lr=0.1).fit(1)



def test_nll_loss_of_a_zero_initialised_binary_heads_logits_is_refused():
    """A two-class head initialised at zero gives logits 0 at the first batch: their exps summed to 2, inside the
    band the check allowed, and it never looked again; the loss then fell to -820 without a word."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    with pytest.raises(LossInputError, match=r"log-probabilities.*exps summing to 2"):
        TrainLearner(model, class_dls(2), F.nll_loss, lr=0.1).fit(1)



def test_nll_loss_leaves_positions_of_ignore_index_out_of_its_check():
    """Sequence tagging with padding: (N, 2, L) log-probabilities masked to 0 where the targets are ignore_index
    (whose exps sum to 2 there) were refused as raw logits, though the loss never reads those positions."""
    class Padded(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scores = torch.stack([x[:, :6], -x[:, :6]], 1).log_softmax(1)  # (N, 2, 6)
            return scores.masked_fill(torch.arange(6) >= 4, 0.0)  # the last 2 positions: padding
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :6] > 0).long()
    y[:, 4:] = -100
    dls = DataLoaders(TensorLoader(x[:48], y[:48], 16), TensorLoader(x[48:], y[48:], 16))
    TrainLearner(nn.Sequential(nn.Linear(8, 8), Padded()), dls, F.nll_loss, lr=0.1).fit(1)

@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_nll_loss_of_log_sigmoid_scores_is_refused_once_they_drift(n_classes):
    """log_sigmoid's exps sum to about C/2 at the start, which for 2-4 classes passed the check, made once: NLL
    then pushes every class's sigmoid up. The check is made again at each epoch's start."""
    model = nn.Sequential(nn.Linear(8, n_classes), nn.LogSigmoid())
    with pytest.raises(LossInputError, match=r"log-probabilities.*log_sigmoid"):
        TrainLearner(model, class_dls(n_classes, n=256), F.nll_loss, lr=0.5).fit(10)


def test_nll_loss_of_log_sigmoid_scores_is_refused_once_they_drift_in_fits_of_one_epoch():
    """(probe P43) fit(3) refused at epoch 1; fit(1) three times, the course's way, trained to the end (exps summing
    to 1.12..1.86): each fit's epoch 0 hit the first fit's cached check."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).long()
    dls = DataLoaders(TensorLoader(x, y, 32), TensorLoader(x[:64] + 0.1, y[:64], 32))
    model = nn.Sequential(nn.Linear(4, 2), nn.LogSigmoid())
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)  # log(0.5) twice: passes at the start
    learn = TrainLearner(model, dls, F.nll_loss, lr=1.0)
    with pytest.raises(LossInputError, match=r"log-probabilities.*log_sigmoid"):
        for _ in range(3):
            learn.fit(1)

def test_cross_entropy_of_bfloat16_probabilities_is_warned_of_too():
    from miniai.callbacks import MixedPrecisionCB
    learn = TrainLearner(nn.Sequential(nn.Linear(8, 3), nn.Softmax(1)), class_dls(), F.cross_entropy, lr=0.1,
                         cbs=[MixedPrecisionCB(torch.bfloat16)])
    with pytest.warns(UserWarning, match=r"look like probabilities"):
        learn.fit(1)


def test_optimizing_a_tensor_outside_a_frozen_model_trains_it():
    """An input perturbation learned through a frozen classifier was refused as 'nothing to train'."""
    delta = torch.zeros(1, 8, requires_grad=True)

    class Perturbed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 3).requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x + delta)
    TrainLearner(Perturbed(), class_dls(), F.cross_entropy, lr=0.1,
                 opt_func=lambda params, lr: optim.SGD([delta], lr=lr)).fit(1)
    assert delta.abs().sum() > 0


def test_parameters_a_callback_adds_while_freezing_the_rest_are_named():
    """A LoRA-style callback's before_fit freezes the base and adds adapters: the error named a stale optimizer
    (an earlier model's), not the adapters added after the optimizer was made."""

    class Adapted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base, self.extra = nn.Linear(8, 3), None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + (0 if self.extra is None else self.extra(x))

    class AddAdapter(Callback):
        def before_fit(self, learn: TrainLearner) -> None:
            learn.model.base.requires_grad_(False)
            learn.model.extra = nn.Linear(8, 3)
    with pytest.raises(RuntimeError, match=r"parameters not in the optimizer.*extra.weight"):
        TrainLearner(Adapted(), class_dls(), F.cross_entropy, lr=0.1, cbs=[AddAdapter()]).fit(1)


def test_a_step_that_raises_leaves_its_epoch_uncounted():
    """The step counted before it ran: an error in the first step counted the epoch, and a retry walked the seeded
    loader's next order instead of replaying the run."""
    from miniai.learner import Callback

    class BadStep(Callback):
        owns_steps = ("step",)

        def step(self, learn: TrainLearner) -> None:
            raise RuntimeError("the optimizer failed")
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1)
    with pytest.raises(RuntimeError, match="the optimizer failed"):
        learn.fit(1, cbs=[BadStep()])
    assert learn._epochs_trained == 0


def test_an_n_inp_a_numpy_integer_serves_every_fit():
    import numpy as np
    from miniai.callbacks import TrainCB
    from miniai.learner import Learner
    learn = Learner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[TrainCB(n_inp=np.int64(1))])
    learn.fit(1)
    learn.fit(1)


# ---------------------------------------------------------------- a long notebook session (a probe's list)

def test_a_loaded_learner_trains_on_with_the_nan_guard():
    """load_learner built it without the guard: a diverging fit ended with infinite weights and no word."""
    from miniai.callbacks.guards import NonFiniteLossError
    from miniai.inference import load_learner
    import tempfile
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1)
    learn.fit(1)
    with tempfile.TemporaryDirectory() as d:
        learn.export(f"{d}/model.pkl")
        loaded = load_learner(f"{d}/model.pkl")
    x = torch.randn(32, 8)
    x[5] = float("nan")  # (a NaN in the data: the guard stops at its batch)
    loaded.dls = DataLoaders(TensorLoader(x, torch.zeros(32, dtype=torch.long), 16), TensorLoader(x, x[:, 0], 16))
    with pytest.raises(NonFiniteLossError):
        loaded.fit(1, lr=0.1)


def test_two_progress_bars_in_one_fit_are_refused():
    """The learner's ProgressCB and one given to fit(cbs=...) chained MetricsCB's log_fn out of order: one bar got
    no validation losses, and the other kept receiving rows after it was removed."""
    from miniai.callbacks import ProgressCB
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[MetricsCB(), ProgressCB()])
    with pytest.raises(ValueError, match=r"2 ProgressCBs.*one"):
        learn.fit(1, cbs=[ProgressCB(plot=True)])


def test_an_evaluation_leaves_checkpoint_and_early_stopping_state_alone_and_they_stand_aside(tmp_path):
    """An evaluation fit reset CheckpointCB's best and last paths and EarlyStoppingCB's count; one watching a train_
    metric refused every evaluation."""
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.guards import EarlyStoppingCB
    ckpt, stop = CheckpointCB(tmp_path, monitor="train_loss"), EarlyStoppingCB("train_loss", patience=5)
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[MetricsCB(), ckpt, stop])
    learn.fit(2)
    kept = (ckpt.best, ckpt.best_path, ckpt.last_path, stop.best, stop.wait)
    assert ckpt.best_path is not None
    learn.fit(1, train=False)
    assert (ckpt.best, ckpt.best_path, ckpt.last_path, stop.best, stop.wait) == kept
    assert ckpt.best_path.exists() and ckpt.last_path.exists()


def test_an_evaluation_resumed_from_a_checkpoint_that_validates_nothing_is_refused(tmp_path):
    """fit(n, train=False, resume=ckpt) with n the checkpoint's epoch validated nothing, warned only that nothing
    was left to train, and had already replaced the learner's model with the checkpoint's."""
    from miniai.callbacks import CheckpointCB
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[MetricsCB()])
    learn.fit(2, cbs=[CheckpointCB(tmp_path)])
    learn.fit(1)  # (a later fit: the session's weights are newer than the checkpoint's)
    before = learn.model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"holds the weights after 2 epochs; an evaluation resumed from it validates "
                                         r"them once.*learn.fit\(3, train=False"):
        learn.fit(2, train=False, resume=tmp_path)
    with pytest.raises(ValueError, match=r"n_epochs=1 leaves no pass to run: learn.fit\(3, train=False"):
        learn.fit(1, train=False, resume=tmp_path)
    assert torch.equal(before, learn.model.weight)
    learn.fit(3, train=False, resume=tmp_path)  # the checkpoint's weights, validated once
    assert [row["epoch"] for row in learn.metrics.history] == [1]  # its own row, labelled as the run logged it


def test_an_evaluation_resumed_from_a_checkpoint_validates_its_weights_once_and_no_more(tmp_path):
    """fit(5, train=False, resume=the file after 2 epochs) validated the same weights three times, in rows labelled
    epochs 1, 2 and 3, as if epochs 2 and 3 had been trained and had the checkpoint's loss."""
    from miniai.callbacks import CheckpointCB
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[MetricsCB()])
    learn.fit(2, cbs=[CheckpointCB(tmp_path)])
    rows = len(learn.metrics.history)
    with pytest.raises(ValueError, match=r"validates them once, labelled epoch 1 as the run logged them.*n_epochs=5 "
                                         r"would validate them 3 times, in rows labelled as epochs 2-3 the run had "
                                         r"not trained.*learn.fit\(3, train=False, resume=...\)"):
        learn.fit(5, train=False, resume=tmp_path)
    assert len(learn.metrics.history) == rows  # nothing ran


def test_a_recorder_function_that_fails_says_which():
    """RecorderCB(mom=_beta1) with SGD failed with a bare KeyError: 'betas', naming nothing."""
    from miniai.callbacks import _beta1
    rec = RecorderCB(mom=_beta1)
    with pytest.raises(KeyError) as info:
        TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[rec]).fit(1)
    assert "RecorderCB's function for 'mom' (_beta1) raised" in "".join(getattr(info.value, "__notes__", []))


def test_recorder_keeps_no_graph_of_tensors_inside_what_it_records():
    rec = RecorderCB(losses=lambda cb: (cb.learn.loss, {"x2": cb.learn.loss * 2}))
    TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[rec]).fit(1)
    loss, more = rec.recs["losses"][0]
    assert not loss.requires_grad and not more["x2"].requires_grad
    rec.state_dict()


def test_a_fit_after_a_divergence_blames_the_weights_not_the_data():
    """After a NaN stop the next fit's first loss is NaN too: its error led with 'Check the data'."""
    from miniai.callbacks.guards import NonFiniteLossError
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1)
    learn.fit(1)
    with torch.no_grad():
        learn.model.weight[0, 0] = float("inf")  # what a diverged fit leaves
    with pytest.raises(NonFiniteLossError, match=r"weights reach inf: an earlier fit diverged.*Rebuild the model"):
        learn.fit(1)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))  # a finite body listed before a NaN head (max() of
    with torch.no_grad():  # [finite, nan] is the finite one), in a fresh learner (weights loaded so)
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"weights reach nan: an earlier fit diverged.*loaded so"):
        TrainLearner(model, class_dls(), F.cross_entropy, lr=0.1).fit(1)


def test_large_finite_weights_and_bad_data_are_not_called_a_divergence():
    """Weights of 2e7 a regression on large targets reached on purpose, then a batch with a NaN input: the message
    said an earlier fit had diverged and told the user to rebuild the model, not to check the data."""
    from miniai.callbacks.guards import NonFiniteLossError
    x = torch.randn(32, 1, generator=torch.Generator().manual_seed(0))
    learn = TrainLearner(nn.Linear(1, 1), DataLoaders(TensorLoader(x, x, 8), TensorLoader(x, x, 8)), F.mse_loss,
                         lr=0.1)
    learn.fit(1)
    with torch.no_grad():
        learn.model.weight.fill_(2e7)  # large, finite
    bad = x.clone()
    bad[0, 0] = float("nan")
    learn.dls = DataLoaders(TensorLoader(bad, x, 8), TensorLoader(x, x, 8))
    with pytest.raises(NonFiniteLossError, match=r"Check the data.*weights reach 2e\+07: if an earlier fit diverged"):
        learn.fit(1)


def test_the_first_batch_nan_message_blames_the_data_for_a_frozen_inf_or_an_unused_lazy_layer():
    """The weights scan read frozen parameters (an attention mask's -inf) and failed on an uninitialized lazy one."""
    from miniai.callbacks.guards import NonFiniteLossError

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.unused = nn.Linear(8, 3), nn.LazyLinear(2)
            self.mask = nn.Parameter(torch.tensor([0.0, 0.0, -float("inf")]), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + self.mask.clamp(min=-1e4)
    x = torch.randn(32, 8)
    x[0] = float("nan")
    dls = DataLoaders(TensorLoader(x, torch.zeros(32, dtype=torch.long), 16), TensorLoader(x, x[:, 0].long(), 16))
    learn = TrainLearner(Masked(), dls, F.cross_entropy, lr=0.1)
    for _ in range(2):  # a first fit, and one after it
        with pytest.raises(NonFiniteLossError, match=r"Check the data"):
            learn.fit(1)


def test_nll_of_many_classes_with_an_epsilon_trains():
    class LogProbs(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(torch.softmax(x, 1) + 1e-4)  # 1000 classes: their exps sum to 1.1
    TrainLearner(nn.Sequential(nn.Linear(8, 1000), LogProbs()), class_dls(), F.nll_loss, lr=0.1).fit(1)


def test_an_evaluation_resumed_from_an_older_checkpoint_leaves_the_runs_best_alone(tmp_path):
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.guards import EarlyStoppingCB
    ckpt, stop = CheckpointCB(tmp_path, keep=None, monitor="valid_loss"), EarlyStoppingCB(patience=5)
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[MetricsCB(), ckpt, stop])
    learn.fit(4)
    kept = (ckpt.best, ckpt.best_path, stop.best, stop.wait)
    learn.fit(3, train=False, resume=tmp_path / "epoch_0002.pt")
    assert (ckpt.best, ckpt.best_path, stop.best, stop.wait) == kept


def test_an_evaluation_resumed_from_a_checkpoint_logs_its_row_alone_as_an_evaluation_does(tmp_path):
    """The run's rows came back from the checkpoint and the evaluation's was added: its epoch's validation row twice,
    where an evaluation's history is its own row."""
    from miniai.callbacks import CheckpointCB
    metrics = MetricsCB(log_fn=None)
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1,
                         cbs=[metrics, CheckpointCB(tmp_path, keep=None)])
    learn.fit(3)
    saved = [row for row in metrics.history if row["epoch"] == 1 and row["train"] == "valid"]
    learn.fit(3, train=False, resume=tmp_path / "epoch_0002.pt")
    assert [{k: v for k, v in row.items() if k != "time"} for row in metrics.history] == \
        [{k: v for k, v in row.items() if k != "time"} for row in saved]


def test_a_log_holding_only_a_header_is_no_earlier_run(tmp_path):
    """A fit that failed at its first batch left a header: the fixed re-run was refused as 'there already'."""
    from miniai.callbacks.loggers import CSVLoggerCB
    (tmp_path / "log.csv").write_text("epoch,train,loss,time,lr\n")
    TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1,
                 cbs=[MetricsCB(), CSVLoggerCB(tmp_path / "log.csv")]).fit(1)


# ---------------------------------------------------------------- the callback contract (a probe's list)

def test_a_refused_resume_leaves_the_next_fits_loader_order_alone(tmp_path):
    """resume set the learner's epoch count before its checks: refused ('nothing was changed'), the next fit
    walked the checkpoint's epoch order, not this learner's."""
    from miniai.callbacks import CheckpointCB
    from miniai.callbacks.checkpoint import CheckpointMismatchError
    TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1).fit(3, cbs=[CheckpointCB(tmp_path)])
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, opt_func=optim.AdamW)
    learn.fit(1)
    with pytest.raises(CheckpointMismatchError):
        learn.fit(4, resume=tmp_path)  # saved with SGD
    assert learn._epochs_trained == 1


def test_a_cancel_of_a_whole_prediction_pass_is_an_error_not_missing_predictions():
    """An inference callback's CancelEpochException cut get_preds' output short without a word; CancelFitException
    at before_fit ended in an IndexError. (A cancelled batch is left out with its targets, as the table says.)"""
    from miniai.learner import Callback, CancelEpochException, CancelFitException

    class Skip(Callback):
        inference = True

        def __init__(self, cancel: type, event: str) -> None:
            self.cancel = cancel
            setattr(self, event, self.raise_it)

        def raise_it(self, learn: TrainLearner) -> None:
            if learn.iter in (None, 1):
                raise self.cancel()
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1)
    for cancel, event in ((CancelEpochException, "before_batch"), (CancelFitException, "before_fit")):
        with pytest.raises(ValueError, match=rf"{cancel.__name__} .* cut the pass of get_preds short"):
            learn.get_preds(cbs=[Skip(cancel, event)])


def test_fit_add_cb_and_rm_cb_are_refused_inside_a_prediction_pass():
    from miniai.learner import Callback

    class Meddle(Callback):
        def __init__(self, call: str) -> None:
            self.call = call

        def after_predict(self, learn: TrainLearner) -> None:
            {"fit": lambda: learn.fit(1), "add_cb": lambda: learn.add_cb(Callback()),
             "rm_cb": lambda: learn.rm_cb(learn.cbs[0])}[self.call]()
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1)
    before = learn.model.weight.detach().clone()
    for call in ("fit", "add_cb", "rm_cb"):
        with pytest.raises(RuntimeError, match=rf"learn.{call} was called during a prediction pass"):
            learn.get_preds(cbs=[Meddle(call)])
    assert torch.equal(before, learn.model.weight)


def test_a_prediction_pass_says_it_validates_only():
    from miniai.learner import Callback
    seen = []

    class Look(Callback):
        inference = True

        def before_fit(self, learn: TrainLearner) -> None:
            seen.append(learn.passes)
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, cbs=[Look()])
    learn.get_preds()
    learn.fit(1)
    learn.get_preds()
    assert seen == [("valid",), ("train", "valid"), ("valid",)]


def test_a_fit_of_no_pass_and_a_callback_order_that_is_no_number_are_refused():
    with pytest.raises(ValueError, match=r"train=False, valid=False\) runs no pass.*nothing"):
        TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1).fit(2, train=False, valid=False)
    from miniai.learner import Callback
    for order in (None, "10", float("nan")):
        cb = Callback()
        cb.order = order
        with pytest.raises(TypeError, match=r"Callback.order must be a number"):
            TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, cbs=[cb])


def test_a_recipe_refuses_images_of_another_shape():
    """Recipe 'five' on 32x32 images trained on 28x28 crops and validated on the whole 32x32 images."""
    from miniai.recipes import RECIPES, recipe_learner
    x = torch.randn(16, 1, 32, 32)
    dls = DataLoaders(TensorLoader(x, torch.zeros(16, dtype=torch.long), 8), TensorLoader(x, x[:, 0, 0, 0], 8))
    with pytest.raises(ValueError, match=r"recipe five is for 1x28x28 images.*1x32x32"):
        recipe_learner(RECIPES["five"], dls, device="cpu")


def test_recorder_records_a_momentum_learners_momentum():
    """RecorderCB(mom=_mom) recorded the plain SGD's momentum, 0.0, while the steps ran with MomentumLearner's 0.85."""
    from miniai.callbacks import RecorderCB, _lr, _mom
    recorder = RecorderCB(lr=_lr, mom=_mom)
    MomentumLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1, mom=0.85, cbs=[recorder]).fit(1)
    assert set(recorder.recs["mom"]) == {0.85}


def test_a_fit_refused_at_its_start_leaves_the_last_fits_records(tmp_path):
    """A second fit refused by a later callback's before_fit (a CSV log already there) had already started
    MetricsCB's history, RecorderCB's curves, ProgressCB's losses and ActivationStats' hooks afresh: the first fit's
    records were gone, though nothing ran."""
    from miniai.callbacks import ActivationStats, CSVLoggerCB, MetricsCB, ProgressCB, RecorderCB, _lr
    metrics, recorder, progress = MetricsCB(), RecorderCB(lr=_lr), ProgressCB(mode="plain")
    stats = ActivationStats(lambda m: isinstance(m, nn.Linear))
    logger = CSVLoggerCB(tmp_path / "log.csv")
    learn = TrainLearner(nn.Sequential(nn.Linear(8, 3)), class_dls(), F.cross_entropy, lr=0.1,
                         cbs=[metrics, recorder, progress, stats, logger])
    learn.fit(2)
    before = (list(metrics.history), list(recorder.recs["lr"]), list(progress.losses), len(stats.stats[0][0]))
    assert all(before)
    with pytest.raises(FileExistsError):
        learn.fit(2)
    assert (metrics.history, recorder.recs["lr"], progress.losses, len(stats.stats[0][0])) == before
    learn.rm_cb(logger)
    learn.fit(1)  # a fit that runs starts them afresh
    assert len(metrics.history) == 2 and len(recorder.recs["lr"]) == len(before[1]) // 2


def test_a_fit_ended_at_its_first_before_batch_leaves_the_last_fits_records():
    """A batch transform failing at the first before_batch (nothing predicted, nothing trained) left MetricsCB's
    history, RecorderCB's curves and ProgressCB's losses of the last fit emptied."""
    from miniai.callbacks import MetricsCB, ProgressCB, RecorderCB, _lr
    metrics, recorder, progress = MetricsCB(), RecorderCB(lr=_lr), ProgressCB(mode="plain")
    learn = TrainLearner(nn.Sequential(nn.Linear(8, 3)), class_dls(), F.cross_entropy, lr=0.1,
                         cbs=[metrics, recorder, progress])
    learn.fit(1)
    before = (list(metrics.history), list(recorder.recs["lr"]), list(progress.losses))

    class BadTransform(Callback):
        def before_batch(self, learn):
            raise ValueError("a transform that can't take this batch")
    with pytest.raises(ValueError, match="can't take this batch"):
        learn.fit(1, cbs=[BadTransform()])
    assert (metrics.history, recorder.recs["lr"], progress.losses) == before


def test_a_momentum_learner_hooks_its_optimizer_once_and_loads_from_an_older_pickle():
    """An opt_func giving the same optimizer each fit got one more frozen-gradient hook per fit (such an opt_func is
    refused since, at its second fit); a MomentumLearner pickled before opt became a property lost its optimizer
    (learn.opt None, the AdamW hidden in __dict__)."""
    model = nn.Linear(8, 3)
    same = optim.SGD(model.parameters(), lr=0.1)
    learn = MomentumLearner(model, class_dls(), F.cross_entropy, lr=0.1, opt_func=lambda params, lr: same)
    learn.fit(1)
    learn.fit(1, train=False)  # (an evaluation keeps it)
    with pytest.raises(ValueError, match="handed back an optimizer an earlier fit trained"):
        learn.fit(1)
    from miniai.supervised import _drop_frozen_grads
    assert list(same._optimizer_step_pre_hooks.values()).count(_drop_frozen_grads) == 1
    state = learn.__getstate__()
    state["opt"] = state.pop("_opt")  # as an older pickle holds it
    older = MomentumLearner.__new__(MomentumLearner)
    older.__setstate__(state)
    assert older.opt is same


def test_a_copy_of_a_momentum_learner_keeps_its_momentum():
    """copy.deepcopy and pickle leave a Parameter's .grad out, where MomentumLearner keeps its momentum: a copy's
    next fit differed from the original's."""
    import copy
    import pickle
    from miniai.utils import set_seed
    learn = MomentumLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.1)
    learn.fit(1)
    copies = [copy.deepcopy(learn), pickle.loads(pickle.dumps(learn))]
    set_seed(0)
    learn.fit(1)
    for other in copies:
        set_seed(0)
        other.fit(1)
        assert torch.equal(other.model.weight, learn.model.weight)


def test_a_momentum_learners_model_copied_during_a_fit_with_activation_stats():
    """ActivationStats' hooks hold the learner during a fit: a copy of the model (a best-model callback's
    deepcopy, torch.save) copied the learner through them, whose restore looked the model's parameters up by name
    in a model copy not built yet (AttributeError); the copy's optimizer lost its frozen-gradient hook."""
    import copy
    from miniai.callbacks import ActivationStats
    copies = []

    class BestCopy(Callback):
        def after_epoch(self, learn):
            copies.append(copy.deepcopy(learn.model))
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = MomentumLearner(model, class_dls(), F.cross_entropy, lr=0.1,
                            cbs=[ActivationStats(lambda m: isinstance(m, nn.ReLU)), BestCopy()])
    learn.fit(1)
    assert len(copies) == 2 and torch.equal(copies[-1][0].weight, model[0].weight)
    other = copy.deepcopy(learn)
    assert len(other.opt._optimizer_step_pre_hooks) == 1


def test_two_loaders_over_one_iterable_dataset_are_warned_of():
    from torch.utils.data import DataLoader, IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            return iter([(torch.randn(8, generator=g), torch.tensor(i % 3)) for i in range(32)])
    stream = Stream()
    with pytest.warns(UserWarning, match=r"dls.valid gives the same data as dls.train"):
        TrainLearner(nn.Linear(8, 3), DataLoaders(DataLoader(stream, 16), DataLoader(stream, 16)), F.cross_entropy,
                     lr=0.1).fit(1)


@pytest.mark.parametrize("model, said", [
    (nn.Linear, r"model is the class Linear: pass an instance, Linear\(...\)"),
    (lambda: nn.Linear(1, 1), r"model is a function \(<lambda>\), not a module: call it to build the model"),
    ("model", r"model must be an nn.Module, got str"),
])
def test_a_model_class_or_factory_is_refused_when_the_learner_is_built(model, said):
    """TrainLearner(nn.Linear, ...) failed at fit with "parameters() missing 1 required positional argument: 'self'",
    and a factory get_model with "'function' object has no attribute 'parameters'", deep in the optimizer."""
    with pytest.raises(TypeError, match=said):
        TrainLearner(model, linear_dls(), F.mse_loss, lr=0.1)
    learn = tiny_learner()
    learn.model = model  # (assigned since: refused at fit, before anything runs)
    with pytest.raises(TypeError, match=said):
        learn.fit(1)


def test_a_learner_built_without_a_model_takes_one_assigned_later_and_a_callable_object_is_no_function():
    """Learner(None, ...) then learn.model = ... worked before the model check of bbf1ad4 and should still; an object
    with __call__ and parameters was told it was a function to call."""
    class Wrapper:
        def __call__(self, x):
            return x

        def parameters(self):
            return iter(())
    with pytest.raises(TypeError, match="model must be an nn.Module, got Wrapper"):
        TrainLearner(Wrapper(), linear_dls(), F.mse_loss, lr=0.1)
    learn = TrainLearner(None, linear_dls(), F.mse_loss, lr=0.1)
    with pytest.raises(TypeError, match=r"the learner has no model \(None\): set learn.model"):
        learn.fit(1)
    learn.model = nn.Linear(1, 1)
    learn.fit(1)


def test_targets_past_the_models_class_scores_get_the_loss_error_with_the_fix():
    """A model of 5 outputs for labels 0..9: a bare IndexError("Target 6 is out of bounds") from torch, where every
    other mismatch of preds and targets gets LossInputError with what to change."""
    from miniai.callbacks.basic import LossInputError
    x, y = torch.randn(32, 4), torch.arange(32) % 10
    learn = TrainLearner(nn.Linear(4, 5), DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8)), F.cross_entropy,
                         lr=0.1)
    with pytest.raises(LossInputError, match=r"this batch's targets go up to 7 but the model gives 5 class scores in "
                                             r"dim 1, where the loss reads them: give it one output per class, 8 at "
                                             r"least"):
        learn.fit(1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_device_the_machine_lacks_is_named_before_anything_moves():
    """DeviceCB('cuda') on a machine without a GPU failed with torch's "Found no NVIDIA driver" from deep inside."""
    from miniai.callbacks import DeviceCB
    learn = tiny_learner([DeviceCB("cuda")])
    with pytest.raises(RuntimeError, match=r"DeviceCB\('cuda'\): this machine has no CUDA device: use one it "
                                           r"has, 'cpu'"):
        learn.fit(1)


def test_the_class_scores_hint_is_for_a_class_losss_index_error_only():
    """The hint of bbf1ad4 came with every failure: int targets of a binary loss were told to give the model 2
    outputs (the fix is float targets), (N, T, C) preds were told the model gives T class scores; and an IndexError
    of a loss of one's own came out as a LossInputError, past the caller's `except IndexError`."""
    from miniai.callbacks.basic import LossInputError
    x = torch.randn(16, 4)
    dls = DataLoaders(TensorLoader(x, torch.arange(16) % 2, 8), TensorLoader(x, torch.arange(16) % 2, 8))
    with pytest.raises(LossInputError) as info:
        TrainLearner(nn.Linear(4, 1), dls, F.binary_cross_entropy_with_logits, lr=0.1).fit(1)
    assert "class scores" not in str(info.value)

    seg = DataLoaders(TensorLoader(torch.randn(8, 4, 2, 2), torch.full((8, 2, 2), 4), 4),
                      TensorLoader(torch.randn(8, 4, 2, 2), torch.full((8, 2, 2), 4), 4))
    with pytest.raises(LossInputError, match=r"go up to 4 but the model gives 3 class scores in dim 1"):
        TrainLearner(nn.Conv2d(4, 3, 1), seg, F.cross_entropy, lr=0.1).fit(1)  # (N, C, H, W) scores: hinted too

    def own_loss(preds, y):
        return [preds.mean()][3]
    with pytest.raises(IndexError, match="list index out of range") as info:
        TrainLearner(nn.Linear(4, 1), dls, own_loss, lr=0.1).fit(1)
    assert "class scores" not in "".join(getattr(info.value, "__notes__", []))

    def wrapped(preds, y):  # a cross-entropy inside a loss of one's own: its IndexError as it is, with a note
        return F.cross_entropy(preds, y)
    wide = DataLoaders(TensorLoader(x, torch.arange(16) % 10, 8), TensorLoader(x, torch.arange(16) % 10, 8))
    with pytest.raises(IndexError, match="out of bounds") as info:
        TrainLearner(nn.Linear(4, 3), wide, wrapped, lr=0.1).fit(1)
    assert "this batch's targets go up to 7 but the model gives 3 class scores" in "".join(info.value.__notes__)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_load_learner_on_a_device_the_machine_lacks_says_so(tmp_path):
    """load_learner(path, device='cuda') without a GPU gave torch's raw "Found no NVIDIA driver"."""
    from miniai.inference import load_learner
    path = tiny_learner().export(tmp_path / "m.pkl")
    with pytest.raises(RuntimeError, match=r"load_learner\(device='cuda'\): this machine has no CUDA device"):
        load_learner(path, device="cuda")


def test_an_lr_given_to_an_evaluation_is_said_to_be_unused():
    """fit(train=False, lr=0.5) after a training fit kept the optimizer and its lr without a word (on a fresh
    learner it built the optimizer with 0.5): an evaluation trains nothing, and the lr given goes nowhere."""
    learn = TrainLearner(nn.Linear(8, 3), DataLoaders(TensorLoader(torch.randn(32, 8), torch.randint(0, 3, (32,)), 8),
                                                      TensorLoader(torch.randn(16, 8), torch.randint(0, 3, (16,)), 8)),
                         F.cross_entropy, lr=0.1)
    learn.fit(1)
    with pytest.warns(UserWarning, match=r"fit\(train=False, lr=0.5\): an evaluation trains nothing, so the lr is not "
                                         r"used"):
        learn.fit(1, train=False, lr=0.5)
    assert learn.fit_lr == 0.1


def _warned_by(run) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return caught


@pytest.mark.parametrize("case", ["callback's before_fit", "fit's own check", "a resume", "a plot after the fit",
                                  "the learner's step"])
def test_a_warning_points_at_the_users_line_not_at_a_line_inside_miniai(case, tmp_path):
    # a warning shown at learner.py's `handler(self)` says nothing of which call of the user's it is about (and
    # Python shows one per place: a second fit with the same mistake would say nothing)
    from functools import partial
    from miniai.callbacks import ActivationStats, BatchSchedCB, CheckpointCB
    from miniai.schedulers import CosineAnnealing
    learn, stats = tiny_learner(), ActivationStats(range=(0, 1e-3))
    runs = {
        "callback's before_fit": lambda: learn.fit(1, cbs=[BatchSchedCB(partial(CosineAnnealing, T_max=100))]),
        "fit's own check": lambda: learn.fit(1, lr=0.1, train=False),
        "a resume": lambda: (learn.fit(1, cbs=[CheckpointCB(tmp_path)]),
                             learn.fit(2, cbs=[RecorderCB(lr=lambda cb: 1)], resume=tmp_path)),
        "a plot after the fit": lambda: (learn.fit(1, cbs=[stats]), stats.dead_chart()),
        "the learner's step": lambda: MomentumLearner(nn.Linear(1, 1), linear_dls(), F.mse_loss, lr=0.1,
                                                      opt_func=partial(optim.SGD, momentum=0.9)).fit(1),
    }
    caught = _warned_by(runs[case])
    assert caught, "the setup warns"
    assert [w.filename for w in caught] == [__file__] * len(caught), [(w.filename, w.lineno) for w in caught]


def test_a_warning_of_a_command_line_run_points_at_the_command_lines_call_not_at_pythons_runpy():
    # walking out of miniai's frames went past the CLI's own, to "<frozen runpy>", under `python -m miniai train`
    import miniai.__main__ as cli
    import miniai.callbacks.basic as library
    from miniai.checks import warn
    namespace = {"warn": warn}  # (functions as if written in __main__.py, and in a callback of the library's)
    exec(compile("def run():\n    helper()\n", cli.__file__, "exec"), namespace)
    exec(compile("def helper():\n    warn('a word')\n", library.__file__, "exec"), namespace)
    (caught,) = _warned_by(namespace["run"])
    assert caught.filename == cli.__file__ and caught.lineno == 2


class _Counting(nn.Linear):
    """Counts its forwards in a buffer: a buffer a prediction pass changes in place, warned of as the pass ends."""

    def __init__(self):
        super().__init__(1, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_miniais_warnings_are_a_category_of_their_own_to_filter_and_a_context_managers_point_at_the_user():
    # (regression probe) pointing at the user's line, warnings no longer matched filterwarnings(module="miniai"):
    # they are MiniaiWarning (a UserWarning), to filter by category. And one raised as a context manager of
    # miniai's exits (get_preds' kept()) was shown at contextlib's frame
    from functools import partial
    from miniai import MiniaiWarning
    from miniai.callbacks import BatchSchedCB
    from miniai.schedulers import CosineAnnealing
    learn = tiny_learner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=MiniaiWarning)
        learn.fit(1, cbs=[BatchSchedCB(partial(CosineAnnealing, T_max=100))])
    assert caught == [] and issubclass(MiniaiWarning, UserWarning)

    learn.model = _Counting()
    (warned,) = _warned_by(learn.get_preds)
    assert "changed the buffer calls" in str(warned.message) and warned.filename == __file__


def test_a_warning_made_an_error_as_a_prediction_pass_ends_leaves_the_learner_put_back():
    # (probe) under -W error, kept()'s warning of a buffer the pass changed raised before the modes, the learner's
    # attributes and the generators were put back: the model left in eval mode, learn._predicting left True
    learn = tiny_learner()
    learn.model = _Counting().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="changed the buffer calls"):
            learn.get_preds()
    assert learn.model.training and not learn._predicting


def test_a_fit_of_binary_logits_shows_no_warning_of_torchs_in_a_fresh_process():
    """The logits check read float(preds.min()) of preds that require grad: torch 2.14 warns once a process
    ("Converting a tensor with requires_grad=True to a scalar"), a warning of ours in the user's log."""
    code = ("import torch, torch.nn.functional as F; from torch import nn; from miniai import *; "
            "from miniai.data import TensorLoader; x = torch.randn(64, 5); y = (x[:, 0] > 0).float(); "
            "dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(torch.randn(32, 5), y[:32], 16)); "
            "TrainLearner(nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)), dls, F.binary_cross_entropy_with_logits, "
            "cbs=[MetricsCB(log_fn=None)]).fit(1)")
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("lr", [[1e-3, 1e-2], (1e-3, 1e-2), slice(1e-4, 1e-2)])
def test_an_lr_per_group_given_to_fit_says_where_per_group_lrs_go(lr):
    """(probe P51) fastai's lr=slice(...) or a list per group: a bare "float() argument must be a string or a real
    number, not 'list'" from inside fit."""
    with pytest.raises(TypeError, match=r"lr must be one number.*opt_func.*param groups"):
        tiny_learner().fit(1, lr=lr)
