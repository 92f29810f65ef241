"""Interpretation (confusion matrix, most confused, top losses, results grids) and the model summary."""
from __future__ import annotations

import re

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from miniai.callbacks.augment import BatchTransformCB
from miniai.callbacks.basic import DeviceCB
from miniai.data import DataLoaders, TensorLoader
from miniai.interpret import Interpretation
from miniai.learner import TrainLearner
from miniai.summary import ModelSummary, layer_macs
from tests.synth import SumOfInputs
from tests.test_inference import PIXELS
from tests.test_preds import assert_same, image_learner, snapshot

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def known() -> Interpretation:
    """Six items of 3 classes with known probabilities: items 1, 4 and 5 are wrong."""
    probs = torch.tensor([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .1, .8], [.6, .3, .1], [.5, .1, .4]])
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    losses = F.nll_loss(probs.log(), targets, reduction="none")
    return Interpretation(torch.zeros(6, 1, 4, 4), probs, targets, losses, ["a", "b", "c"])


def test_confusion_matrix_and_most_confused_by_hand():
    interp = known()
    assert interp.confusion_matrix().tolist() == [[1, 1, 0], [0, 1, 0], [2, 0, 1]]
    assert interp.most_confused() == [("c", "a", 2), ("a", "b", 1)]
    assert interp.most_confused(min_val=2) == [("c", "a", 2)]


def test_top_losses_are_the_most_confidently_wrong_items():
    losses, idx = known().top_losses(3)
    assert idx.tolist() == [4, 1, 5] and torch.allclose(losses, -torch.tensor([.1, .2, .4]).log())


def test_top_losses_rank_an_item_without_a_loss_last_either_way():
    """An item of a class weighted 0 has no loss of its own (NaN, as torch's loss of it): topk ranked NaN highest, so
    it led the 'most confidently wrong' items."""
    interp = known()
    interp.losses[4] = float("nan")
    assert known().top_losses(3)[1].tolist() == [4, 1, 5]
    assert interp.top_losses(2)[1].tolist() == [1, 5] and interp.top_losses()[1].tolist()[-1] == 4
    assert interp.top_losses(largest=False)[1].tolist()[-1] == 4


def test_from_learner_computes_the_predictions_once_through_get_preds():
    learn = image_learner()
    learn.fit(1)
    before = snapshot(learn)
    interp = Interpretation.from_learner(learn)
    assert_same(before, snapshot(learn))
    inputs, probs, targets, losses = learn.get_preds(with_input=True, with_loss=True, act=torch.softmax)
    assert torch.equal(interp.probs, probs) and torch.equal(interp.losses, losses)
    assert torch.equal(interp.inputs, inputs) and interp.classes == ["a", "b", "c"]
    assert int(interp.confusion_matrix().sum()) == len(targets)


def test_every_plot_returns_its_figure():
    learn = image_learner()
    interp = Interpretation.from_learner(learn)
    for fig in (interp.plot_confusion_matrix(), interp.plot_confusion_matrix(normalize=True),
                interp.plot_top_losses(4), interp.show_results(5), learn.show_results(20)):
        assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in learn.show_results(3).axes if ax.get_title()]
    predicted = learn.get_preds()[0][:3].argmax(1)
    assert titles == [f"{'abc'[t]} / {'abc'[p]}" for t, p in zip(learn.dls.valid.y[:3].tolist(), predicted.tolist())]
    notes = [ax.get_title().split("\n")[1] for ax in interp.plot_top_losses(2).axes if ax.get_title()]
    assert all(note.startswith("loss ") for note in notes)


def test_plots_of_inputs_need_images_and_interpretation_needs_class_targets():
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    learn = TrainLearner(nn.Linear(5, 2), DataLoaders(None, TensorLoader(x, y, 4)), F.cross_entropy)
    interp = Interpretation.from_learner(learn)
    assert interp.confusion_matrix().sum() == 8  # the tables work for any classifier
    with pytest.raises(ValueError, match="draws the inputs as images"):
        interp.plot_top_losses()
    with pytest.raises(ValueError, match="for classifiers"):
        Interpretation(x, torch.randn(8, 2), torch.randn(8), torch.zeros(8))



def test_show_results_on_two_inputs_names_table_calls_that_exist():
    """On a learner with n_inp=2, show_results advised the tables as if they were learner methods
    (learn.confusion_matrix() does not exist) and called the inputs just 'tuple'."""
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    dl = DataLoader(TensorDataset(x, x, y), 4)
    learn = TrainLearner(SumOfInputs(nn.Linear(4, 3)), DataLoaders(dl, dl), F.cross_entropy, lr=0.1, n_inp=2)
    with pytest.raises(ValueError, match=r"draws the inputs as images.*a tuple of 2 inputs") as err:
        learn.show_results(4)
    message = str(err.value)
    assert "interp = Interpretation.from_learner(learn)" in message and "learn.confusion_matrix" not in message
    named = re.findall(r"interp\.(\w+)\(\)", message)
    assert {"confusion_matrix", "most_confused", "top_losses", "plot_confusion_matrix"} <= set(named)
    interp = Interpretation.from_learner(learn)
    for name in named:  # every call the advice names works on this learner
        assert getattr(interp, name)() is not None


def test_interpretation_refuses_targets_or_names_that_do_not_fit_the_outputs():
    """Class 3 of a 3-output model broke confusion_matrix with "shape '[3, 3]' is invalid for input of size 12";
    4 names for 3 outputs labelled every plot from a list that is not the model's."""
    probs, losses = torch.full((4, 3), 1 / 3), torch.zeros(4)
    with pytest.raises(ValueError, match="targets hold class 3, but the model gives 3 outputs"):
        Interpretation(None, probs, torch.tensor([0, 1, 2, 3]), losses)
    with pytest.raises(ValueError, match="4 class names for 3 outputs"):
        Interpretation(None, probs, torch.tensor([0, 1, 2, 2]), losses, ["a", "b", "c", "d"])



def test_interpretation_refuses_losses_or_inputs_of_another_number_of_items():
    """(probe P21, session 23) Per-position losses (N·T,) for 4 items were taken: top_losses(2) gave items 19 and
    18, and plot_top_losses then failed with a bare IndexError."""
    probs, targets = torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"20 losses for 4 items: one loss per item"):
        Interpretation(torch.zeros(4, 1, 2, 2), probs, targets, torch.arange(20.0))
    with pytest.raises(ValueError, match=r"5 inputs for 4 items"):
        Interpretation(torch.zeros(5, 1, 2, 2), probs, targets, torch.zeros(4))


def test_a_model_that_ends_in_softmax_has_its_probabilities_taken_as_they_are():
    """(probe P21) A model ending in nn.Softmax had a second softmax taken of its probabilities: plot_top_losses
    said p 0.42 where the model gave 0.59."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g), torch.randint(0, 3, (16,), generator=g)
    model = nn.Sequential(nn.Linear(3, 3), nn.Softmax(1))
    dl = TensorLoader(x, y, 4)

    def nll_of_probs(p, t, reduction="mean"):
        return F.nll_loss(p.log(), t, reduction=reduction)
    learn = TrainLearner(model, DataLoaders(dl, dl), nll_of_probs)
    interp = Interpretation.from_learner(learn, dl)
    with torch.no_grad():
        torch.testing.assert_close(interp.probs, model(x))
    logits = TrainLearner(nn.Linear(3, 3), DataLoaders(dl, dl), F.cross_entropy)
    with torch.no_grad():
        logits.model.weight.copy_(torch.eye(3) * 0.1)
        logits.model.bias.copy_(torch.tensor([0.2, 0.3, 0.5]))
    torch.testing.assert_close(Interpretation.from_learner(logits, dl).probs, torch.softmax(logits.model(x), 1),
                               msg="logits are still softmaxed, even where they look like probabilities somewhere")
    # (regression rounds T2, T4) logits of one item that fall in [0, 1] and sum to 1 within 3e-3 are logits: one row
    # alone can't tell (a model that ends in nn.Softmax can)
    from miniai.interpret import class_probs
    for logits in (torch.tensor([[0.30, 0.705]]), torch.tensor([[0.40, 0.6025]])):
        torch.testing.assert_close(class_probs(logits), torch.softmax(logits, 1))
    one = model(x[:1]).detach()
    torch.testing.assert_close(class_probs(one, model), one)
    # (probe P66) one item of a model whose softmax is no Sequential's last layer (an attribute of a module of one's
    # own, or F.softmax in forward): infer of one image softmaxed it again (top probability 0.70 -> 0.18). A float32
    # row that sums to 1 within 1e-5 is taken as probabilities; those logits above don't
    for row in (torch.softmax(torch.randn(1, 10, generator=g) * 3, 1), torch.softmax(torch.randn(1, 1000), 1)):
        torch.testing.assert_close(class_probs(row), row)
    # (regression round T3) one bfloat16 or float16 softmax row sums to 1 within its grid's rounding only
    for dtype in (torch.bfloat16, torch.float16):
        row = torch.softmax(torch.randn(1, 10, generator=g) * 3, 1).to(dtype).float()
        torch.testing.assert_close(class_probs(row), row)
    # (regression round T3) an ensemble's average of bfloat16 softmaxes, in float32, sums to 1 within 2e-3 only
    members = torch.softmax(torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(0)) * 5, -1).bfloat16()
    average = members.float().mean(0)
    assert (average.sum(1) - 1).abs().max() > 1e-4
    torch.testing.assert_close(class_probs(average), average)
    # (regression round T1) a bfloat16 softmax's rows sum to 1 within 2.4e-3 only: they were softmaxed again
    learn.model = nn.Sequential(nn.Linear(3, 3), nn.Softmax(1)).to(torch.bfloat16)
    learn.dls = DataLoaders(TensorLoader(x.bfloat16(), y, 4), TensorLoader(x.bfloat16(), y, 4))
    with torch.no_grad():
        torch.testing.assert_close(Interpretation.from_learner(learn).probs, learn.model(x.bfloat16()).float())


# ---------------------------------------------------------------- summary

def test_summary_counts_every_parameter_and_closed_form_macs():
    learn = image_learner()
    learn.model.train()
    before = snapshot(learn)
    summary = learn.summary()
    assert_same(before, snapshot(learn))  # modes, placement, loaders, RNG: all as they were
    assert all(not m._forward_hooks for m in learn.model.modules())
    assert all(p.grad is None for p in learn.model.parameters())
    assert isinstance(summary, ModelSummary)
    assert summary.total_params == sum(p.numel() for p in learn.model.parameters())
    assert summary.total_params == sum(r.params for r in summary.rows)
    conv, linear = summary.rows[0], summary.rows[-1]
    assert conv.output_shape == (16, 4, 8, 8) and conv.macs == 16 * 4 * 8 * 8 * 1 * 9
    assert linear.output_shape == (16, 3) and linear.macs == 16 * 3 * 256
    assert summary.input_shape == (16, 1, 8, 8) and summary.total_macs == conv.macs + linear.macs


def test_summary_takes_an_explicit_batch_and_sees_the_validation_transforms():
    flatten = BatchTransformCB(lambda x: x.flatten(1), on_val=True)
    learn = TrainLearner(nn.Sequential(nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 3)), image_learner().dls,
                         F.cross_entropy, cbs=[flatten])
    summary = learn.summary(xb=torch.zeros(5, 1, 8, 8))
    assert summary.input_shape == (5, 64) and [r.output_shape for r in summary.rows] == [(5, 10), (5, 10), (5, 3)]


def test_shared_and_own_parameters_are_counted_once_in_the_total():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))  # a parameter of a module with children
            self.lin = nn.Linear(4, 4)
            self.again = self.lin  # the same layer twice

        def forward(self, x):
            return self.again(self.lin(x)) * self.scale
    model = Tied()
    learn = TrainLearner(model, DataLoaders(None, None), F.mse_loss)
    summary = learn.summary(xb=torch.zeros(2, 4))
    assert summary.total_params == sum(p.numel() for p in model.parameters()) == 21
    # the model's own scale: a parameter summary can't tell the use of (not counted: None, '?')
    assert [(r.name, r.params, r.macs) for r in summary.rows] == [("", 1, None), ("lin", 20, 2 * 2 * 4 * 4)]



@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
def test_summary_counts_a_parametrized_layer_and_its_macs(norm):
    """A weight_norm or spectral_norm Linear without bias has no parameter of its own (its weight is computed from
    those in `parametrizations`): it had no row, its multiply-adds were left out of the total without a word, and
    the parametrization's pieces had rows instead."""
    wrap = getattr(nn.utils.parametrizations, norm)
    model = nn.Sequential(wrap(nn.Linear(4, 3, bias=False)), nn.ReLU(), nn.Linear(3, 2))
    learn = TrainLearner(model, DataLoaders(None, None), F.mse_loss)
    summary = learn.summary(xb=torch.zeros(5, 4))
    assert [(r.name, r.layer, r.macs) for r in summary.rows] == [
        ("0", "ParametrizedLinear", 5 * 3 * 4), ("1", "ReLU", 0), ("2", "Linear", 5 * 2 * 3)]
    assert summary.total_params == sum(r.params for r in summary.rows) == sum(p.numel() for p in model.parameters())
    assert summary.total_macs == 5 * 3 * 4 + 5 * 2 * 3

def test_summary_says_which_layers_it_counts_no_macs_for():
    """Attention and recurrent layers use their weights themselves (MultiheadAttention calls F.linear, its out_proj
    is never called): they counted 0, and the total was half the transformer layer's, with no hint."""
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.lstm, self.norm = nn.MultiheadAttention(8, 2, batch_first=True), nn.LSTM(8, 8), \
                nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.lstm(self.attn(x, x, x)[0])[0])
    learn = TrainLearner(Seq(), DataLoaders(None, None), F.mse_loss)
    summary = learn.summary(xb=torch.zeros(2, 5, 8))
    macs = {r.name: r.macs for r in summary.rows}
    assert macs["attn"] is None and macs["lstm"] is None and macs["norm"] == 0
    # out_proj is never called (attention uses its weight): its row said 0 MACs, not "?"
    assert macs["attn.out_proj"] is None and "| attn.out_proj | NonDynamicallyQuantizableLinear | - | 72 | ? |" in (
        summary._repr_markdown_())
    assert ("MACs for the batch: at least 0 (0 per item) (not counted: MultiheadAttention, "
            "NonDynamicallyQuantizableLinear, LSTM)") in str(summary)
    assert "| attn | MultiheadAttention | ((2, 5, 8), (2, 5, 5)) | 216 | ? |" in summary._repr_markdown_()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_summary_of_a_model_with_a_scripted_part_shows_the_rest():
    """torch can't hook a ScriptModule: summary failed, with advice about mod_filter and mods=[...], which it has
    not."""
    scripted = torch.jit.script(nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
    learn = TrainLearner(nn.Sequential(nn.Linear(4, 8), scripted, nn.Linear(8, 2)), DataLoaders(None, None), F.mse_loss)
    summary = learn.summary(xb=torch.zeros(3, 4))
    rows = {r.name: r for r in summary.rows}
    assert rows["0"].output_shape == (3, 8) and rows["0"].macs == 3 * 8 * 4 and rows["2"].macs == 3 * 2 * 8
    assert rows["1.0"] == ("1.0", "TorchScript Linear", None, 72, None) and rows["1.1"].macs == 0
    assert "(not counted: TorchScript Linear)" in str(summary)


def test_summary_takes_as_many_inputs_in_xb_as_the_learner_has_and_says_so_otherwise():
    """(probe P1) With n_inp=2, summary(xb=x) blamed the learner's n_inp, and summary(xb=(a, b, c)) dropped c as a
    target without a word: the model's layer for a third input showed as never called."""
    class TwoOrThree(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(2, 3), nn.Linear(5, 3)

        def forward(self, x, z, w=None):
            return self.a(x) + self.b(z) + (0 if w is None else self.c(w))
    learn = TrainLearner(TwoOrThree(), DataLoaders(None, None), F.mse_loss, n_inp=2)
    with pytest.raises(ValueError, match=r"summary\(xb=\.\.\.\) takes the learner's 2 inputs \(n_inp=2\).*got 1\. "
                                         r"For a batch of the loaders, pass xb=batch\[:2\]"):
        learn.summary(xb=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"takes the learner's 2 inputs \(n_inp=2\).*got 3"):
        learn.summary(xb=(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(3, 5)))
    rows = {r.name: r for r in learn.summary(xb=(torch.zeros(3, 4), torch.zeros(3, 2))).rows}
    assert rows["a"].output_shape == rows["b"].output_shape == (3, 3) and rows["c"].output_shape is None


def test_summary_says_when_layers_share_parameters_that_each_of_their_rows_counts():
    """(probe P1) With tied weights (out.weight = emb.weight) the rows added up to more than the total, unsaid."""
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.out = nn.Embedding(8, 2), nn.Linear(2, 8, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, x):
            return self.out(self.emb(x))
    learn = TrainLearner(Tied(), DataLoaders(None, None), F.cross_entropy)
    summary = learn.summary(xb=torch.zeros(3, dtype=torch.long))
    assert [r.params for r in summary.rows] == [16, 16] and summary.total_params == 16
    assert "the rows add up to 32: layers that share parameters count them in each row" in str(summary)
    assert "add up" not in str(TrainLearner(nn.Linear(2, 2), DataLoaders(None, None)).summary(xb=torch.zeros(1, 2)))


def test_summary_shows_as_aligned_text_and_as_a_table_in_a_notebook():
    summary = image_learner().summary()
    text = str(summary)
    table = text.splitlines()[:len(summary.rows) + 3]
    assert table[0].split() == ["layer", "type", "output", "shape", "params", "MACs"]
    assert len({len(line) for line in table[2:-1]}) == 1  # right-aligned numbers end in one column
    assert repr(summary) == text and "Total params: 819" in text
    assert summary._repr_markdown_().startswith("| layer | type |") and "<table>" in summary._repr_html_()


def test_layer_macs_of_a_transposed_conv_count_from_its_input():
    conv = nn.ConvTranspose2d(2, 3, 3, stride=2, groups=1)
    x = torch.zeros(1, 2, 4, 4)
    assert layer_macs(conv, (x,), conv(x)) == 1 * 2 * 4 * 4 * 3 * 9


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
def test_the_confusion_matrix_counts_small_integer_targets_right(dtype):
    """targets * n_classes overflowed in the targets' dtype: uint8 gave a wrong matrix, int8 a bincount error."""
    g = torch.Generator().manual_seed(0)
    n_classes = 30
    targets = torch.randint(0, n_classes, (500,), generator=g)
    probs = torch.rand(500, n_classes, generator=g).softmax(1)
    interp = Interpretation(None, probs, targets.to(dtype), torch.zeros(500))
    expected = torch.zeros(n_classes, n_classes, dtype=torch.int64)
    for t, p in zip(targets.tolist(), probs.argmax(1).tolist()):
        expected[t, p] += 1
    assert torch.equal(interp.confusion_matrix(), expected)


def test_class_names_given_as_an_array_work():
    """An ndarray of class names failed with 'truth value of an array is ambiguous' in every title."""
    import numpy as np
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    interp = Interpretation(None, probs, torch.tensor([0, 0]), torch.zeros(2), classes=np.array(["cat", "dog"]))
    assert interp.most_confused() == [("cat", "dog", 1)]


def test_from_learner_with_a_loss_that_gives_no_per_item_losses_names_the_call_made():
    """A lambda loss made from_learner fail with an error about a get_preds(with_loss=True) call never made."""
    learn = image_learner()
    learn.loss_func = lambda p, t: F.cross_entropy(p, t)
    with pytest.raises(TypeError, match=r"Interpretation.from_learner.*one loss per item.*<lambda>.*reduction"):
        Interpretation.from_learner(learn)


def test_ignored_targets_are_named_as_such_not_blamed_on_the_model():
    """A target of -100 (the loss's ignore_index) was reported as 'class -100 ... check the model's head'."""
    probs, losses = torch.full((3, 3), 1 / 3), torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 negative target\(s\), e.g. -100, are no class: the loss's ignore_index.*leave those items "
                                         r"out"):
        Interpretation(None, probs, torch.tensor([0, -100, 2]), losses)


@pytest.mark.parametrize("k", [-1, 2.5, True, "3"])
def test_counts_of_items_to_show_must_be_whole_and_positive(k):
    """-1 gave 'selected index k out of range', 2.5 topk's TypeError, -3 in show_results a range error."""
    interp = known()
    for call in (interp.top_losses, interp.plot_top_losses, interp.show_results):
        bad = rf"(top_losses: k|show_results: n) must be a whole number >= 1 \(items\), got {re.escape(repr(k))}"
        with pytest.raises(ValueError, match=bad):
            call(k)
    with pytest.raises(ValueError, match=r"show_results: n must be a whole number >= 1"):
        image_learner().show_results(k)


@pytest.mark.parametrize("model, shape", [(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), r"\(1,\) per item"),
                                          (nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Unflatten(1, (3, 1))),
                                           r"\(3, 1\) per item")])
def test_from_learner_errors_name_what_from_learner_takes(model, shape):
    """A binary model's one score per item got get_preds' advice, act=torch.sigmoid, which from_learner does not
    take."""
    def score_loss(preds, y, reduction="mean"):
        return F.mse_loss(preds.reshape(len(preds), -1).mean(1), y.float(), reduction=reduction)
    learn = TrainLearner(model, image_learner().dls, score_loss, lr=0.1)
    with pytest.raises(ValueError, match=rf"Interpretation is for classifiers with one output per class.*{shape}"
                                         r"(?!.*act=)"):
        Interpretation.from_learner(learn)


def test_show_results_on_a_binary_model_says_what_it_shows_as_from_learner_does():
    """learn.show_results on a binary model (one logit per item, binary_cross_entropy_with_logits) advised
    get_preds(act=torch.sigmoid), which show_results does not take, and which would give no classes to show."""
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16, 1)).float()
    dls = DataLoaders(TensorLoader(x, y, 8), TensorLoader(x, y, 8))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), dls, F.binary_cross_entropy_with_logits)
    calls = {"show_results": learn.show_results, "Interpretation": lambda: Interpretation.from_learner(learn)}
    for what, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{what} is for classifiers with one output per class.*\(1,\) per item"
                                             r".*binary model.*learn\.get_preds\((?!.*act=)"):
            call()
    assert learn.get_preds(with_input=True, with_loss=True)[1].shape == (16, 1)  # the call advised works


def test_shown_images_are_pixels_on_one_scale_not_normalized_values():
    """Normalized images were drawn as they were, each stretched to its own range: a flat 0.2 image and a flat 0.9
    one looked the same, and colours shifted per channel (means 0.48/0.10/0.29 drawn as 0.48/0.51/0.57)."""
    from miniai.data import Normalize
    norm = Normalize([0.3], [0.2])
    pixels = torch.tensor([0.2, 0.9]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    interp = Interpretation((pixels - 0.3) / 0.2, torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]),
                            torch.zeros(2), normalize=norm)
    fig = interp.show_results(2)
    drawn = [ax.images[0] for ax in fig.axes if ax.images]
    assert [float(im.get_array().mean()) for im in drawn] == pytest.approx([0.2, 0.9])
    assert all(im.get_clim() == (0.0, 1.0) for im in drawn)



class NearTie(nn.Module):
    """Logits (0, 1e-8, -1) for every item: class 1 by 1e-8, which float32's softmax rounds away (both 0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1e-8, -1.0]).expand(len(x), 3) + self.w


def test_the_predicted_class_is_the_models_argmax_that_accuracy_counts_even_on_a_near_tie():
    """predicted was probs.argmax(1): the softmax rounded the tie to two equal probabilities, and the confusion
    matrix put every item in class 0, while Accuracy, on the logits, counted class 1."""
    learn = TrainLearner(NearTie(), image_learner().dls, F.cross_entropy, lr=0.1, cbs=[DeviceCB("cpu")])
    logits, targets = learn.get_preds()
    assert logits.argmax(1).eq(1).all() and torch.softmax(logits, 1).argmax(1).eq(0).all()  # the premise
    interp = Interpretation.from_learner(learn)
    assert interp.predicted.eq(1).all()
    assert interp.confusion_matrix()[:, 1].sum() == len(targets)
    assert learn.infer(PIXELS).index.eq(1).all() and learn.infer(PIXELS[0]).index == 1


def test_show_results_on_dict_batches_says_why_as_from_learner_does():
    """learn.show_results() on dict batches ended in a bare KeyError: 0."""
    from tests.test_preds import _DictSteps
    x, y = torch.randn(6, 1, 4, 4), torch.randint(0, 3, (6,))
    dl = [{"x": x[:3], "label": y[:3]}, {"x": x[3:], "label": y[3:]}]
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), DataLoaders(dl, dl), F.cross_entropy,
                         cbs=[_DictSteps()])
    for call in (learn.show_results, lambda: Interpretation.from_learner(learn)):
        with pytest.raises(TypeError, match=r"compares predictions with targets, and these batches are dicts"):
            call()
    from collections import UserDict  # (Hugging Face's BatchEncoding is one)
    learn.dls = DataLoaders([UserDict(b) for b in dl], [UserDict(b) for b in dl])
    with pytest.raises(TypeError, match=r"these batches are dicts"):
        learn.show_results()


def test_outputs_that_are_not_finite_are_no_class_in_the_tables_and_plots():
    """(probe S25 interp) Items whose outputs were NaN (NaN inputs) were counted as class 0 by argmax: the
    confusion matrix said 1 of 12 right (1 of 9 finite), most_confused led with a pair of them, show_results drew
    them 'b / a'; infer refuses them."""
    x, y = torch.randn(12, 5), torch.arange(12) % 3
    x[[1, 4, 7]] = float("nan")
    learn = TrainLearner(nn.Linear(5, 3), DataLoaders(None, TensorLoader(x, y, 4)), F.cross_entropy)
    with pytest.raises(ValueError, match=r"Interpretation: the model's outputs are not finite \(NaN or inf\) for 3 "
                                         r"of 12 items \(the first: item 1\)"):
        Interpretation.from_learner(learn)
    learn.dls.valid = TensorLoader(x[:6], y[:6], 4)
    with pytest.raises(ValueError, match=r"show_results: the model's outputs are not finite .* for 2 of 6 items"):
        learn.show_results(6)


def test_a_multilabel_model_is_told_interpretation_is_for_one_class_per_item():
    """(probe S25 interp) show_results of a multilabel model (float (N, C) targets) said 'Interpretation is for
    classifiers', naming neither the call made nor the way."""
    x, y = torch.randn(8, 5), (torch.rand(8, 3) > 0.5).float()
    learn = TrainLearner(nn.Linear(5, 3), DataLoaders(None, TensorLoader(x, y, 4)), F.binary_cross_entropy_with_logits)
    for call, name in [(lambda: learn.show_results(4), "show_results"),
                       (lambda: Interpretation.from_learner(learn), "Interpretation")]:
        with pytest.raises(ValueError, match=rf"{name} is for classifiers.*multilabel.*get_preds\(act=torch.sigmoid\)"):
            call()


def test_one_hot_or_soft_targets_are_told_to_be_class_indices_not_multilabel():
    """(regression round T8) A softmax classifier trained on one-hot (or mixup's soft) float targets, which
    cross_entropy takes, was called multilabel and told to read sigmoid probabilities."""
    x, y = torch.randn(8, 5), F.one_hot(torch.arange(8) % 3, 3).float()
    learn = TrainLearner(nn.Linear(5, 3), DataLoaders(None, TensorLoader(x, y, 4)), F.cross_entropy)
    with pytest.raises(ValueError, match=r"class probabilities \(one-hot or soft labels\).*argmax\(1\)") as e:
        Interpretation.from_learner(learn)
    assert "sigmoid" not in str(e.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_one_hot_targets_of_any_float_dtype_get_the_advice(dtype):
    """(regression round T10) float64 one-hot targets (numpy's np.eye) failed with 'Double did not match Float'."""
    probs = torch.softmax(torch.randn(6, 3), 1)
    targets = F.one_hot(torch.arange(6) % 3, 3).to(dtype)
    with pytest.raises(ValueError, match=r"class probabilities \(one-hot or soft labels\)"):
        Interpretation(None, probs, targets, torch.zeros(6))


def test_summary_of_a_model_the_user_compiled_shows_its_layers_shapes_and_macs():
    """(probe S26 compile) summary() of torch.compile(model), once its code was compiled (a fit), showed no output
    shapes and 'MACs for the batch: at least 0' (the compiled code ran without the hooks), rows named '_orig_mod.0'."""
    from tests.synth import linear_dls
    model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    learn = TrainLearner(torch.compile(model, backend="eager"), linear_dls(), F.mse_loss, lr=0.1)
    learn.fit(1)
    compiled = learn.summary()
    assert str(compiled) == str(TrainLearner(model, linear_dls(), F.mse_loss).summary())
    assert "(16, 4)" in str(compiled) and "MACs for the batch: 128" in str(compiled)
    assert learn.model._orig_mod is model  # (the learner's model put back)
