"""A new user's mistakes (a hostile probe's list): each one trained on, or logged a wrong number, without a word.
Each test fails on the code before its fix."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from miniai.callbacks import MetricsCB, RecorderCB
from miniai.callbacks.basic import LossInputError
from miniai.data import DataLoaders, TensorLoader
from miniai.learner import TrainLearner
from miniai.supervised import MomentumLearner


def class_dls(n_classes: int = 3, float_targets: bool = False, target_shape: str = "(N,)", n: int = 64,
              bs: int = 16) -> DataLoaders:
    """8 features, `n_classes` classes; the targets as class indices (N,), or as floats in the shape asked."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x @ torch.randn(8, max(n_classes, 2), generator=g)).argmax(1) % max(n_classes, 2)
    if float_targets:
        y = y.float()
    if target_shape == "(N,1)":
        y = y.unsqueeze(1)
    return DataLoaders(TensorLoader(x, y, bs, shuffle=True, seed=0), TensorLoader(x, y, bs))


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


def test_an_optimizer_holding_none_of_the_models_parameters_is_refused():
    """opt_func built on an earlier model's parameters (a re-run notebook cell): three epochs trained nothing."""
    old = nn.Linear(8, 3)
    learn = TrainLearner(nn.Linear(8, 3), class_dls(), F.cross_entropy, lr=0.5,
                         opt_func=lambda params, lr: optim.SGD(old.parameters(), lr=lr))
    before = learn.model.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"the optimizer holds none of the model's 2 trainable parameters"):
        learn.fit(1)
    assert torch.equal(before, learn.model.weight)


def test_a_model_with_no_trainable_parameter_is_refused_before_training():
    model = nn.Linear(8, 3).requires_grad_(False)
    with pytest.raises(RuntimeError, match=r"no parameter of the model requires grad"):
        TrainLearner(model, class_dls(), F.cross_entropy, lr=0.5).fit(1)
    TrainLearner(model, class_dls(), F.cross_entropy, lr=0.5).fit(1, train=False)  # evaluating it is fine


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


def test_the_same_loader_for_training_and_validation_is_warned_of():
    dls = class_dls()
    with pytest.warns(UserWarning, match=r"dls.valid is dls.train.*validation measures the training data"):
        TrainLearner(nn.Linear(8, 3), DataLoaders(dls.train, dls.train), F.cross_entropy, lr=0.1).fit(1)


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
