"""Hooks, HooksCallback and ActivationStats: hooks never outlive a fit, stats are counted per training batch."""
import io
from functools import partial

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from miniai.callbacks.activations import ActivationStats, Hook, Hooks, HooksCallback, append_stats  # noqa: E402
from miniai.learner import (Callback, CancelBatchException, CancelEpochException, CancelFitException,  # noqa: E402
                            TrainLearner)
from tests.synth import linear_dls  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


class Zero(nn.Module):
    """A layer whose every unit is dead: outputs exactly 0 (but keeps the graph, so training still works)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0


def mlp(dead: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), Zero() if dead else nn.ReLU(), nn.Linear(8, 1))


def learner(model: nn.Module, cbs=()) -> TrainLearner:
    """3 training batches and 2 validation batches per epoch."""
    return TrainLearner(model, linear_dls(n_train=48, n_valid=32, bs=16), F.mse_loss, lr=0.01, cbs=list(cbs))


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def record_calls(hook, module, inputs, output):
    hook.calls = getattr(hook, "calls", 0) + 1


# ------------------------------------------------------------------------------------------------ hooks

def test_hooks_context_manager_records_then_removes_every_hook():
    model = mlp()
    with Hooks(model, record_calls) as hooks:
        assert len(hooks) == 5 and n_hooks(model) == 5  # a model means its direct children
        model(torch.randn(4, 1))
        model(torch.randn(4, 1))
    assert n_hooks(model) == 0
    assert [h.calls for h in hooks] == [2] * 5  # what the hooks stored survives their removal
    model(torch.randn(4, 1))
    assert [h.calls for h in hooks] == [2] * 5


def test_hook_context_manager_and_deleting_from_hooks_unregisters():
    model = mlp()
    with Hook(model[0], record_calls) as hook:
        model(torch.randn(2, 1))
    assert hook.calls == 1 and n_hooks(model) == 0
    hooks = Hooks([model[1], model[3]], record_calls)
    del hooks[0]
    assert len(hooks) == 1 and len(model[1]._forward_hooks) == 0 and len(model[3]._forward_hooks) == 1
    hooks.remove()
    assert n_hooks(model) == 0


def test_append_stats_matches_a_direct_computation():
    x = torch.randn(64, 5) * 4
    ident = nn.Identity()
    with Hook(ident, append_stats) as hook:
        ident(x)
    means, stds, hists = hook.stats
    assert torch.allclose(means[0], x.mean())
    assert torch.allclose(stds[0], x.std())
    assert torch.equal(hists[0], x.abs().histc(40, 0, 10))


@pytest.mark.parametrize("scale, shape", [(1e18, (16, 1000)), (1e30, (8, 5)), (1e-30, (64, 5)), (1.0, (1,)),
                                          (1.0, (0, 3))])
@pytest.mark.filterwarnings("ignore:std... degrees of freedom")  # (torch.std of one value, expected)
def test_append_stats_std_of_huge_tiny_single_and_empty_activations_is_torchs(scale, shape):
    """A float32 sum of squares overflowed: exploding but finite activations (std 1e18) were recorded as std inf,
    so the curve left the plot as the layer blew up; one value gave std 0, none -0.0 (torch.std: NaN)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * scale
    ident = nn.Identity()
    with Hook(ident, append_stats) as hook:
        ident(x)
    expected = x.double().std().float()
    assert torch.allclose(hook.stats[1][0], expected, rtol=1e-4, atol=0, equal_nan=True)


def test_append_stats_of_float64_activations_far_from_0_keeps_their_spread():
    """float64 outputs were summarized in float32, whose spacing near 1e6 (0.0625) rounded a std of 0.006 to 0: the
    plot showed the layer's std flat at 0 (probe diag, s27). float64 is summarized in float64, stored in float32."""
    x = 1e6 + 0.01 * torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ident = nn.Identity()
    with Hook(ident, append_stats) as hook:
        ident(x)
    assert torch.allclose(hook.stats[1][0].double(), x.std(), rtol=1e-4)
    assert hook.stats[0][0] == x.mean().float()


# values on and around bin edges, beyond the range, below a positive low, inf and NaN: histc's rules at each
_EDGY = st.one_of(st.sampled_from([0.0, 0.25, 2.5, 9.75, 10.0, 10.25, 1e30, float("inf"), float("nan")]),
                  st.integers(-44, 44).map(lambda k: k / 4), st.floats(-12, 12, width=32))


@settings(max_examples=60, deadline=None)
@given(st.lists(_EDGY, min_size=2, max_size=40), st.sampled_from([(0.0, 10.0), (0.5, 3.0), (2.0, 2.5)]),
       st.integers(1, 41), st.booleans())
def test_append_stats_histogram_is_histc_of_abs_on_edges_nan_and_inf(values, range_, bins, half):
    x = torch.tensor(values, dtype=torch.float32).reshape(-1, 1)
    x = x.half() if half else x  # half outputs (autocast) are summarized in float32
    ident = nn.Identity()
    with Hook(ident, partial(append_stats, bins=bins, range=range_)) as hook:
        ident(x)
    expected = x.float().abs().histc(bins, *range_)
    assert torch.equal(hook.stats[2][0], expected)
    finite = x.float()
    assert torch.equal(hook.stats[0][0].isnan(), finite.mean().isnan())


@settings(max_examples=60, deadline=None)
@given(st.lists(_EDGY, min_size=2, max_size=40), st.sampled_from([(0.0, 10.0), (0.5, 3.0), (2.0, 2.5)]),
       st.integers(1, 41))
def test_the_histogram_for_mps_and_deterministic_cuda_is_histc_of_abs_too(values, range_, bins):
    """Off the CPU, MPS's histc waits for the GPU every call and CUDA's refuses deterministic mode: the scatter
    path replaces it there, and must count as histc does (run here on CPU tensors)."""
    from miniai.callbacks.activations import _abs_histc_scatter
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(_abs_histc_scatter(x, bins, *range_), x.abs().histc(bins, *range_))


def test_append_stats_rejects_a_module_with_tuple_output():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x
    pair = Pair()
    with Hook(pair, append_stats), pytest.raises(TypeError, match="Pair returned tuple"):
        pair(torch.ones(2))


# ------------------------------------------------------------------------------------------------ HooksCallback

def test_hooks_removed_after_a_normal_fit():
    model = mlp()
    cb = HooksCallback(record_calls, mod_filter=lambda m: isinstance(m, nn.Linear))
    learner(model, [cb]).fit(2)
    assert n_hooks(model) == 0
    assert [h.calls for h in cb] == [6, 6, 6]  # 2 epochs × 3 training batches; validation not recorded


def test_hooks_removed_after_cancel_fit():
    class StopAfterTwo(Callback):
        def after_batch(self, learn):
            if learn.iter == 1:
                raise CancelFitException()
    model = mlp()
    cb = HooksCallback(record_calls, mod_filter=lambda m: isinstance(m, nn.ReLU))
    learner(model, [cb, StopAfterTwo()]).fit(3)
    assert n_hooks(model) == 0 and [h.calls for h in cb] == [2, 2]


def test_hooks_removed_after_an_exception_in_a_batch():
    class Boom(Callback):
        def after_loss(self, learn):
            raise RuntimeError("boom in batch")
    model = mlp()
    learn = learner(model, [HooksCallback(record_calls)])
    with pytest.raises(RuntimeError, match="boom in batch"):
        learn.fit(1, cbs=[Boom()])
    assert n_hooks(model) == 0


def test_hooks_callback_on_valid_records_validation_batches_too():
    cb = HooksCallback(record_calls, mod_filter=lambda m: isinstance(m, nn.ReLU), on_train=False, on_valid=True)
    learner(mlp(), [cb]).fit(1)
    assert [h.calls for h in cb] == [2, 2]


def test_every_records_batches_0_k_2k_of_each_pass_and_the_stats_are_those_batches():
    model = mlp()
    every, all_ = ActivationStats(lambda m: isinstance(m, nn.ReLU), every=2), ActivationStats(
        lambda m: isinstance(m, nn.ReLU))
    # 5 training batches a pass, 2 epochs: batches 0, 2, 4 of each pass are recorded, 6 in all
    TrainLearner(model, linear_dls(n_train=80, n_valid=32, bs=16), F.mse_loss, lr=0.01, cbs=[every, all_]).fit(2)
    for (means, stds, hists), (all_means, all_stds, all_hists) in zip(every.stats, all_.stats):
        assert len(means) == 6 and len(all_means) == 10
        picked = [0, 2, 4, 5, 7, 9]  # (both record the same forwards)
        assert torch.equal(means, all_means[picked]) and torch.equal(stds, all_stds[picked])
        assert torch.equal(hists, all_hists[picked])


def test_a_layer_class_as_mod_filter_is_refused_with_the_predicate_to_write():
    """ActivationStats(nn.Linear) failed in before_fit with Linear.__init__'s missing-argument TypeError."""
    with pytest.raises(TypeError, match=r"lambda m: isinstance\(m, Linear\)"):
        ActivationStats(nn.Linear)


def test_every_is_a_whole_number_of_at_least_1():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"every must be a whole number >= 1 \(the step between recorded batches"):
            ActivationStats(every=bad)


def test_a_module_run_twice_a_batch_is_caught_with_every_too():
    relu = nn.ReLU()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.relu = nn.Linear(1, 1), relu

        def forward(self, x):
            return self.relu(self.lin(self.relu(x)))
    stats = ActivationStats(mods=[relu], every=2)
    with pytest.raises(ValueError, match="ran more than once in one batch"):
        TrainLearner(Twice(), linear_dls(n_train=80, bs=16), F.mse_loss, lr=0.01, cbs=[stats]).fit(1)


def test_filter_matching_nothing_is_an_error_and_leaves_no_hooks():
    model = mlp()
    with pytest.raises(ValueError, match="mod_filter matched no module of Sequential"):
        learner(model, [ActivationStats(lambda m: isinstance(m, nn.Conv2d))]).fit(1)
    assert n_hooks(model) == 0


# ------------------------------------------------------------------------------------------------ ActivationStats

def test_activation_stats_shapes_and_counts_match_training_batches():
    astats = ActivationStats(lambda m: isinstance(m, nn.ReLU), bins=20, range=(0, 5))
    learner(mlp(), [astats]).fit(2)
    assert len(astats.stats) == 2
    for means, stds, hists in astats.stats:
        assert means.shape == (6,) and stds.shape == (6,) and hists.shape == (6, 20)
        assert means.device.type == "cpu"
        # every batch holds 16 items × 8 units, all non-negative after a ReLU and below 5 here
        assert torch.equal(hists.sum(1), torch.full((6,), 128.0))
    assert astats.labels == ["0: ReLU", "1: ReLU"]


def test_a_second_fit_starts_fresh_stats():
    astats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learn = learner(mlp(), [astats])
    learn.fit(2)
    assert astats.stats[0][0].shape == (6,)
    learn.fit(1)
    assert astats.stats[0][0].shape == (3,)


def test_dead_chart_is_one_for_a_layer_that_outputs_zeros():
    astats = ActivationStats(lambda m: isinstance(m, (nn.ReLU, Zero)))
    learner(mlp(dead=True), [astats]).fit(1)
    relu, zero = astats.dead_fractions()
    assert torch.equal(zero, torch.ones(3))
    assert (relu < 1).all()
    fig = astats.dead_chart()
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["0: ReLU", "1: Zero"]
    assert list(lines[1].get_ydata()) == [1.0, 1.0, 1.0]


def test_the_dead_chart_of_a_shifted_activation_says_it_counts_values_near_zero_not_dead_units():
    """GeneralRelu(sub=0.4) puts an inactive unit at -0.4 or below: never in the lowest bin of |activation|, so a
    layer of dead units charted 0.0, 'healthy' (notebook 01 read the chart as dead units; probe N)."""
    import warnings
    from miniai.models import GeneralRelu
    model = nn.Sequential(nn.Linear(1, 8), GeneralRelu(leak=0.1, sub=0.4), nn.Linear(8, 1))
    astats = ActivationStats(lambda m: isinstance(m, GeneralRelu))
    learner(model, [astats]).fit(1)
    with pytest.warns(UserWarning, match=r"0: GeneralRelu \(sub=0.4\) shifts its output down by sub: an inactive unit "
                                         r"gives -sub or below.*not dead units"):
        astats.dead_chart()
    relu = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learner(mlp(), [relu]).fit(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*shifts its output")
        relu.dead_chart()


def test_the_dead_chart_of_conv_blocks_ending_in_a_shifted_activation_says_so_too():
    """(probe P18) get_model's blocks, Sequential(conv, GeneralRelu(sub=0.4)), hooked whole (the course hooks
    them): every unit dead, charted 0.0, and no word: the warning read `sub` off the hooked module only."""
    from miniai.models import GeneralRelu
    model = nn.Sequential(nn.Sequential(nn.Linear(1, 8), GeneralRelu(sub=0.4)), nn.Linear(8, 1))
    astats = ActivationStats(lambda m: isinstance(m, nn.Sequential) and m is not model)
    learner(model, [astats]).fit(1)
    with pytest.warns(UserWarning, match=r"0: Sequential \(sub=0.4\) shifts its output down by sub"):
        astats.dead_chart()


def test_the_dead_chart_warns_once_naming_every_shifted_layer():
    """Notebook 01's four GeneralRelu layers gave four near-identical warnings, one per layer: one says it."""
    from miniai.models import GeneralRelu
    model = nn.Sequential(nn.Linear(1, 8), GeneralRelu(leak=0.1, sub=0.4), nn.Linear(8, 8), GeneralRelu(sub=0.4),
                          nn.Linear(8, 8), GeneralRelu(sub=0.2), nn.Linear(8, 1))
    astats = ActivationStats(lambda m: isinstance(m, GeneralRelu))
    learner(model, [astats]).fit(1)
    with pytest.warns(UserWarning) as record:
        astats.dead_chart()
    said = [str(w.message) for w in record if "shift" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith("0: GeneralRelu, 1: GeneralRelu (sub=0.4) and 2: GeneralRelu (sub=0.2) shift their "
                              "output"), said[0]
    # subs equal to the digit shown are one group, in the layers' order; a tensor or NumPy sub is one too (probe T)
    import numpy as np
    for layer, sub in zip(model[1::2], (0.1 + 0.2, torch.tensor(0.3), np.array(0.5))):
        layer.sub = sub
    with pytest.warns(UserWarning) as record:
        astats.dead_chart()
    said = [str(w.message) for w in record if "shift" in str(w.message)]
    assert said[0].startswith("0: GeneralRelu, 1: GeneralRelu (sub=0.3) and 2: GeneralRelu (sub=0.5) shift their "
                              "output"), said[0]


def test_figures_are_drawn_headless():
    astats = ActivationStats(lambda m: isinstance(m, (nn.ReLU, nn.Linear)))
    learner(mlp(), [astats]).fit(1)
    figs = [astats.color_dim(), astats.dead_chart(), astats.plot_stats()]
    assert all(isinstance(fig, Figure) for fig in figs)
    assert sum(1 for ax in figs[0].axes if ax.images) == 5  # one image per hooked layer
    assert [len(ax.get_lines()) for ax in figs[2].axes] == [5, 5]  # means and stds, one line per layer
    for fig in figs:
        fig.savefig(io.BytesIO(), format="png")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_append_stats_never_syncs_with_the_gpu():
    """Recording stays on the device: no .item()/.cpu() per batch (torch's sync debug mode would raise)."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU()).cuda()
    x = torch.randn(64, 1, 28, 28, device="cuda")
    with Hooks(model, append_stats) as hooks:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert all(t.is_cuda for h in hooks for stats in h.stats for t in stats)
    assert [len(h.stats[2]) for h in hooks] == [3] * 4


def test_hooks_on_modules_that_are_not_the_models_are_refused():
    """mods of another model (a copy, or a model since replaced) were hooked, never called: no stats, no word."""
    other = mlp()
    cb = ActivationStats(mods=[other[1]])
    with pytest.raises(ValueError, match=r"mods\[0\] \(ReLU\) is not a module of learn.model"):
        learner(mlp(), [cb]).fit(1)
    assert n_hooks(other) == 0


def test_every_way_of_taking_a_hook_out_of_hooks_unregisters_it():
    """pop(), clear(), remove(h) and hooks[i] = ... left the hooks registered on the model."""
    model = mlp()
    hooks = Hooks(model, record_calls)
    hooks.pop()
    assert n_hooks(model) == 4
    hooks.remove(hooks[0])  # list.remove(value): that hook only
    assert n_hooks(model) == 3 and len(hooks) == 3
    hooks[0] = Hook(model[4], record_calls)
    assert n_hooks(model) == 3 and len(model[4]._forward_hooks) == 1
    hooks.clear()
    assert n_hooks(model) == 0 and len(hooks) == 0
    with pytest.raises(ValueError, match="not in list"):
        hooks.remove(Hook(model[0], record_calls))


def test_predictions_made_during_a_training_pass_are_not_recorded():
    """get_preds from a callback in the training pass added its eval-mode batches to the training statistics."""
    class PeekEachEpoch(Callback):
        def after_epoch(self, learn):
            if learn.training:
                learn.get_preds()
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learner(mlp(), [stats, PeekEachEpoch()]).fit(2)
    assert [len(means) for means, _, _ in stats.stats] == [6, 6]  # 2 epochs x 3 training batches


def test_a_module_that_runs_twice_per_batch_is_refused():
    """A ReLU module used twice in forward (torchvision's self.relu) gave interleaved statistics, 2 per batch."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.relu = nn.Linear(1, 8), nn.Linear(8, 8), nn.Linear(8, 1), nn.ReLU()

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))
    with pytest.raises(ValueError, match=r"ReLU ran more than once in one batch.*used in more than one place"):
        learner(Shared(), [ActivationStats(lambda m: isinstance(m, nn.ReLU))]).fit(1)
    # a pass a cancel cut short (SingleBatchCB, the course's quick check) skipped the check, which ran at after_epoch
    from miniai.callbacks import SingleBatchCB
    with pytest.raises(ValueError, match=r"ReLU ran more than once in one batch"):
        learner(Shared(), [ActivationStats(lambda m: isinstance(m, nn.ReLU)), SingleBatchCB()]).fit(1)


def test_a_module_run_twice_in_some_batches_and_not_in_others_is_refused_too():
    """The check divided the pass's records by its batches: a module run twice in every other batch and not at all
    in the rest averaged once a batch, and its records, one a batch to look at, alternated between its two places."""
    class Sometimes(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.relu, self.c, self.calls = nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1), 0

        def forward(self, x):
            self.calls += self.training
            h = self.a(x)
            return self.c(self.relu(self.relu(h)) if self.calls % 2 else h)
    dls = linear_dls(n_train=64, n_valid=32, bs=16)  # 4 training batches: twice, none, twice, none
    with pytest.raises(ValueError, match=r"ReLU ran more than once in one batch.*used in more than one place"):
        TrainLearner(Sometimes(), dls, F.mse_loss, lr=0.01, cbs=[ActivationStats(lambda m: isinstance(m, nn.ReLU))]
                     ).fit(1)


def test_a_module_recomputed_by_activation_checkpointing_is_named_as_such():
    """torch.utils.checkpoint runs the checkpointed forward again in backward: the refusal said the module was
    used in more than one place and advised giving each place its own module, advice that could not be followed."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.relu, self.b, self.c = nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 1)

        def forward(self, x):  # (the recomputation stops once it has what backward needs: b's input, past relu)
            return self.c(checkpoint(lambda t: self.b(self.relu(self.a(t))), x, use_reentrant=False))
    with pytest.raises(ValueError, match=r"ReLU ran more than once in one batch.*activation checkpointing.*outside the "
                                         r"checkpointed parts"):
        learner(Checkpointed(), [ActivationStats(lambda m: isinstance(m, nn.ReLU))]).fit(1)


def test_dead_fractions_need_a_range_that_counts_zeros():
    """With range=(0.5, 3) a fully dead ReLU counted nothing: dead_fractions was NaN (an empty dead_chart) where the
    docstring promises 1.0 for every unit dead."""
    for low in (0.5, -1.0):  # (from -1, zeros fell in a bin above the lowest: a dead layer showed 0.0)
        stats = ActivationStats(lambda m: isinstance(m, nn.ReLU), range=(low, 3.0))
        learner(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)), [stats]).fit(1)
        with pytest.raises(ValueError, match=rf"activations at 0.*starts at {low:g}.*range=\(0, 3\)"):
            stats.dead_fractions()


def test_mods_given_as_a_generator_serve_every_fit():
    """mods=model.children() was used up by the first fit; the second said the mod_filter matched nothing."""
    model = mlp()
    stats = ActivationStats(mods=(m for m in model.children() if isinstance(m, nn.ReLU)))
    learn = learner(model, [stats])
    learn.fit(1)
    learn.fit(1)
    assert len(stats.hooks) == 2


def test_a_layer_kept_in_eval_mode_during_training_is_still_recorded():
    """The check against recording prediction passes read each module's own mode: a frozen layer in eval mode
    (fine-tuning) was never recorded."""
    class FreezeFirst(Callback):
        def before_epoch(self, learn):
            learn.model[1].eval()
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learner(mlp(), [stats, FreezeFirst()]).fit(1)
    assert [len(means) for means, _, _ in stats.stats] == [3, 3]


@settings(max_examples=40, deadline=None)
@given(st.integers(32760, 40000), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_counting_in_pairs_is_bincount(n, bins, seed):
    """A large input's histogram is counted in pairs of indices (twice as fast): every bin's count must still be
    bincount's, odd lengths (the index in no pair) and bins above the pairs' limit included."""
    from miniai.callbacks.activations import _bincount
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, bins, (n,), generator=g, dtype=torch.int32)
    index[: n // 3] = torch.randint(0, bins, (1,), generator=g, dtype=torch.int32)  # runs of one bin, as after a ReLU
    assert torch.equal(_bincount(index, bins), torch.bincount(index, minlength=bins))


def test_a_large_layers_histogram_is_histc_of_abs():
    """The pairs path (inputs of 32,768 values and more) on activations with values at and around every bin edge."""
    g = torch.Generator().manual_seed(0)
    edges = torch.linspace(0, 10, 41)
    x = torch.cat([torch.randn(60_001, generator=g) * 3, edges, -edges, torch.nextafter(edges, torch.tensor(-1.0)),
                   torch.nextafter(edges, torch.tensor(11.0))[:-1]])
    x = x[x.abs() <= 10]  # all inside the range: the bincount path, not histc's
    ident = nn.Identity()
    with Hook(ident, append_stats) as hook:
        ident(x.view(1, -1))
    assert x.numel() > 32768 and torch.equal(hook.stats[2][0], x.abs().histc(40, 0, 10))


@pytest.mark.parametrize("range_, bins", [((0.0, 0.7), 7), ((0.1, 0.7), 40), ((0.0, 1 / 3), 10), ((-0.1, 0.6), 25)])
def test_the_histogram_is_histc_s_on_ranges_not_exact_in_float32(range_, bins):
    """With high - low not exact in float32, |x| == high (a saturated activation: Hardtanh(-0.7, 0.7)) fell out
    of the histogram (14 of 900 counted) and values at inner bin edges went to the next bin."""
    from miniai.callbacks.activations import _abs_histc, _abs_histc_scatter
    low, high = range_
    edges = torch.linspace(low, high, bins + 1)
    x = torch.cat([edges, torch.nextafter(edges, torch.tensor(9.0)), torch.nextafter(edges, torch.tensor(-9.0)),
                   torch.full((900,), float(torch.tensor(high))), torch.rand(100)])
    for histogram in (_abs_histc, _abs_histc_scatter):
        assert torch.equal(histogram(x.clone(), bins, low, high), x.abs().histc(bins, low, high))


def test_a_training_pass_run_with_the_model_in_eval_mode_says_it_recorded_nothing():
    """A callback putting the whole model in eval mode for training (to freeze BatchNorm) left ActivationStats with
    nothing recorded and no word: it records the forwards made in the pass's mode."""
    class Frozen(Callback):
        def before_epoch(self, learn):
            learn.model.eval()
    stats = ActivationStats(mod_filter=lambda m: isinstance(m, nn.ReLU))
    with pytest.warns(UserWarning, match=r"recorded nothing in this training pass of \d+ batches.*eval mode"):
        learner(mlp(), [stats, Frozen()]).fit(1)
    assert all(len(h.stats[0]) == 0 if hasattr(h, "stats") else True for h in stats.hooks)
    # a plot then said "fit with it in the learner's callbacks", which it was
    with pytest.raises(ValueError, match=r"its fits recorded no batch.*model\.train\(\)"):
        stats.plot_stats()


def test_an_infinite_range_is_refused_as_histc_refuses_it():
    """range=(0, inf) was accepted: every finite value counted in bin 0, an inf activation crashed in bincount."""
    with pytest.raises(ValueError, match="finite range"):
        ActivationStats(range=(0.0, float("inf")))


# ---------------------------------------------------------------- found by a hostile read of the diagnostics

def test_an_evaluation_keeps_the_last_training_fits_records_when_validation_is_recorded_too():
    """With on_valid=True, fit(train=False) replaced two epochs' 10 records by its own 2, against the README."""
    cb = ActivationStats(lambda m: isinstance(m, nn.Linear), on_valid=True)
    learn = learner(mlp(), [cb])
    learn.fit(2)
    before = [s[0].clone() for s in cb.stats]
    learn.fit(1, train=False)
    assert [len(m) for m in before] == [10] * 3 and all(torch.equal(a, s[0]) for a, s in zip(before, cb.stats))
    only_valid = ActivationStats(lambda m: isinstance(m, nn.Linear), on_train=False, on_valid=True)
    learner(mlp(), [only_valid]).fit(1, train=False)  # a callback recording validation only: what it is for
    assert [len(s[0]) for s in only_valid.stats] == [2] * 3


def test_plots_of_both_passes_records_draw_one_pass_and_say_which():
    """(probe P45) With on_valid=True the plots drew training and validation batches as one line over 'recorded
    batch': a BatchNorm's std seemed to jump from 1.0 to 2.0 and back each epoch (the eval-mode batches)."""
    cb = ActivationStats(lambda m: isinstance(m, nn.Linear), on_valid=True)
    learn = learner(mlp(), [cb])
    learn.fit(2)
    n_train, n_valid = len(learn.dls.train), len(learn.dls.valid)
    assert [len(m) for m, _, _ in cb.stats] == [2 * (n_train + n_valid)] * 3
    for split, n in (("train", n_train), ("valid", n_valid)):
        assert [len(m) for m, _, _ in cb.stats_of(split)] == [2 * n] * 3
    rows = torch.cat([torch.arange(n_train), n_train + n_valid + torch.arange(n_train)])  # the training rows
    assert torch.equal(cb.stats_of("train")[0][0], cb.stats[0][0][rows])
    for fig, split, label in ((cb.plot_stats(), "train", "recorded training batch"),
                              (cb.plot_stats(split="valid"), "valid", "recorded validation batch")):
        ax = fig.axes[0]
        assert ax.get_xlabel() == label
        assert torch.equal(torch.as_tensor(ax.lines[0].get_ydata()), cb.stats_of(split)[0][0])
    assert cb.dead_chart(split="valid").axes[0].lines[0].get_ydata().shape == (2 * n_valid,)
    assert cb.color_dim().axes[0].get_images()[0].get_array().shape[1] == 2 * n_train
    with pytest.raises(ValueError, match=r"split is 'train' or 'valid'"):
        cb.plot_stats(split="validation")

    class ValidEveryOther(Callback):  # (regression round T2) a pass cancelled at before_epoch, before ActivationStats'
        order = -1

        def before_epoch(self, learn):
            if not learn.training and learn.epoch % 2:
                raise CancelEpochException()
    cb = ActivationStats(lambda m: isinstance(m, nn.Linear), on_valid=True)
    learn = learner(mlp(), [cb, ValidEveryOther()])
    learn.fit(4)
    assert [len(m) for m, _, _ in cb.stats_of("train")] == [4 * n_train] * 3
    assert [len(m) for m, _, _ in cb.stats_of("valid")] == [2 * n_valid] * 3
    cb.plot_stats()


def test_hooks_that_fail_to_register_leave_none_behind_and_name_the_module():
    """A ScriptModule in the model: Hooks registered the modules before it, then torch refused it; those hooks
    stayed on the model for good (neither `with` nor cleanup_fit could reach them), in summary and ActivationStats."""
    model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), torch.jit.script(nn.ReLU()), nn.Linear(8, 1))
    plain = [m for m in model.modules() if not isinstance(m, torch.jit.ScriptModule)]
    with pytest.raises(RuntimeError, match=r"could not hook modules\[3\] \(RecursiveScriptModule\).*mod_filter"):
        Hooks(model.modules(), record_calls)
    assert sum(len(m._forward_hooks) for m in plain) == 0
    with pytest.raises(RuntimeError, match="could not hook"):
        learner(model, [ActivationStats()]).fit(1)
    assert sum(len(m._forward_hooks) for m in plain) == 0


def test_activation_stats_that_can_record_nothing_is_refused_and_plots_need_records():
    """on_train=False, on_valid=False fitted without a word; every plot drew an empty figure, before any fit too."""
    with pytest.raises(ValueError, match="records nothing.*on_train.*on_valid"):
        ActivationStats(on_train=False, on_valid=False)
    cb = ActivationStats()
    for plot in (cb.color_dim, cb.dead_chart, cb.plot_stats):
        with pytest.raises(ValueError, match="nothing recorded yet: fit with it in the learner's callbacks"):
            plot()
    learner(mlp(), [cb]).fit(1)
    assert all(isinstance(plot(), Figure) for plot in (cb.color_dim, cb.dead_chart, cb.plot_stats))
    plt.close("all")


def test_a_single_batch_check_is_seen_by_every_recorder():
    """SingleBatchCB (order 1) cancelled before RecorderCB (25) read the batch: its lr record was empty while
    ActivationStats held the batch, though the callbacks' table said it cancelled 'once the others have seen it'."""
    from miniai.callbacks import RecorderCB, SingleBatchCB
    from miniai.callbacks.scheduling import _lr
    stats, rec = ActivationStats(lambda m: isinstance(m, nn.Linear)), RecorderCB(lr=_lr)
    learner(mlp(), [stats, rec]).fit(1, cbs=[SingleBatchCB()])
    assert [len(s[0]) for s in stats.stats] == [1] * 3 and rec.recs["lr"] == [0.01]


def test_a_fit_of_no_epochs_leaves_every_record_as_it_was():
    """fit(0) trained nothing but reset ActivationStats, RecorderCB and MetricsCB.history."""
    from miniai.callbacks import MetricsCB, RecorderCB
    from miniai.callbacks.scheduling import _lr
    stats, rec, metrics = ActivationStats(lambda m: isinstance(m, nn.Linear)), RecorderCB(lr=_lr), MetricsCB()
    metrics.log_fn = lambda row: None
    learn = learner(mlp(), [stats, rec, metrics])
    learn.fit(1)
    before = ([len(s[0]) for s in stats.stats], list(rec.recs["lr"]), list(metrics.history))
    learn.fit(0)
    assert ([len(s[0]) for s in stats.stats], rec.recs["lr"], metrics.history) == before


class Exploded(nn.Module):
    """A layer whose outputs are mostly far beyond the histogram's range, a few of them near zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.full_like(x, 1e6)
        big[:, :1] = 0.0  # one unit in eight at zero, the rest at 1e6
        return x * 0 + big


class Tapped(nn.Module):
    """A small regression whose Exploded layer is only looked at (its outputs would make the loss diverge)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.exploded, self.out = nn.Linear(1, 8), Exploded(), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.lin(x)
        self.exploded(hidden)
        return self.out(hidden)


def test_dead_fractions_count_every_activation_not_only_those_in_range():
    """An exploded layer, 7 in 8 outputs at 1e6 and 1 in 8 at 0, read 1.0 dead: the share was taken of the values
    inside the histogram's range only. It is 1/8 of all, and the charts say most values fell outside the range."""
    stats = ActivationStats(lambda m: isinstance(m, Exploded))
    learner(Tapped(), [stats]).fit(1)
    (dead,) = stats.dead_fractions()
    assert torch.allclose(dead, torch.full_like(dead, 1 / 8))
    for chart in (stats.dead_chart, stats.color_dim):
        with pytest.warns(UserWarning, match=r"0: Exploded: up to 88% of the activations fell outside "
                                             r"range=\(0.0, 10.0\).*wider range"):
            chart()


def test_charts_of_activations_inside_the_range_do_not_warn():
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learner(mlp(), [stats]).fit(1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats.dead_chart(), stats.color_dim()


def test_a_hookscallback_subclass_that_sets_its_pass_itself_still_records():
    """A subclass whose before_epoch set `_active` itself without calling super() crashed on the hook's new
    per-batch count (`'Hook' object has no attribute 'iter'`)."""
    calls = []

    class Mine(HooksCallback):
        def before_epoch(self, learn):
            self._active, self._training = learn.training, learn.training
    cb = Mine(lambda hook, module, inputs, output: calls.append(1), mods=None,
              mod_filter=lambda m: isinstance(m, nn.ReLU))
    learner(mlp(), [cb]).fit(1)
    assert len(calls) == 2 * 3  # two ReLUs, three training batches


def test_forwards_a_callback_makes_outside_a_batch_are_not_recorded_and_a_second_forward_is_named():
    """A forward in before_epoch (learn.iter None, as a fresh hook's) counted as 'ran more than once in one batch';
    a callback's second forward within a batch (a consistency loss) was told of shared modules and checkpointing."""
    class Peek(Callback):
        def before_epoch(self, learn):
            if learn.training:
                learn.model(torch.randn(4, 1))
        def after_epoch(self, learn):  # (a look at the model's outputs after each epoch: a usual callback)
            if learn.training:
                learn.model(torch.randn(4, 1))
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learner(mlp(), [stats, Peek()]).fit(2)
    assert [len(means) for means, _, _ in stats.stats] == [6, 6]  # the batches', not the peeks'

    class Again(Callback):
        def after_loss(self, learn):
            if learn.training:
                learn.model(learn.xb[0])
    with pytest.raises(ValueError, match=r"ran more than once in one batch.*or a callback runs the model again"):
        learner(mlp(), [ActivationStats(lambda m: isinstance(m, nn.ReLU)), Again()]).fit(1)


def test_a_plot_after_fits_that_recorded_nothing_says_why_whatever_the_fit():
    """After an evaluation fit (a training recorder records nothing there) a plot said 'fit with it in the
    learner's callbacks', which it was."""
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    learner(mlp(), [stats]).fit(1, train=False)
    with pytest.raises(ValueError, match=r"its fits recorded no batch.*on_train=True.*training batches"):
        stats.plot_stats()


class LayerDrop(nn.Module):
    """A residual ReLU block skipped on every other training batch (LayerDrop, stochastic depth), and a layer the
    forward never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.relu, self.block, self.c = nn.Linear(1, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), \
            nn.Linear(8, 1)
        self.unused, self.calls = nn.ReLU(), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        h = self.relu(self.a(x))
        return self.c(h + self.block(h) if self.calls % 2 else h)


@pytest.mark.parametrize("mod_filter", [lambda m: isinstance(m, nn.ReLU), lambda m: m.__class__ is nn.Sequential],
                         ids=["beside a layer run every batch", "alone"])
def test_a_layer_skipped_in_some_batches_is_refused_not_drawn_at_other_batches_places(mod_filter):
    """Its records, one per batch it ran in, were plotted at x = 0, 1, ...: batch 2's statistics at batch 1's
    place, and so on, beside layers that ran every batch, without a word."""
    dls = linear_dls(n_train=64, n_valid=32, bs=16)  # 4 training batches: run, skipped, run, skipped
    learn = TrainLearner(LayerDrop(), dls, F.mse_loss, lr=0.01, cbs=[ActivationStats(mod_filter)])
    with pytest.raises(ValueError, match=r"layer (1 \('block.1', ReLU|0 \('block', Sequential)\) did not run in "
                                         r"batch 1 of this training pass.*LayerDrop.*mod_filter"):
        learn.fit(1)


def test_a_layer_never_run_and_batches_a_callback_skips_are_not_a_skipped_layer():
    """What every layer misses (a batch cancelled before the forward), and a layer the forward never uses, leave
    the records of the others in step: no error."""
    class SkipBatch1(Callback):
        def before_batch(self, learn):
            if learn.iter == 1:
                raise CancelBatchException()
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    model = LayerDrop()
    model.forward = lambda x: model.c(model.relu(model.a(x)))  # the block never runs either
    TrainLearner(model, linear_dls(n_train=64, n_valid=32, bs=16), F.mse_loss, lr=0.01,
                 cbs=[stats, SkipBatch1()]).fit(1)
    assert [len(means) for means, _, _ in stats.stats] == [3, 0, 0]


class _AuxHead(nn.Module):
    """A head used in training mode only (deep supervision), and a block switched on from the second epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.aux = nn.Sequential(nn.Linear(1, 8), nn.ReLU()), nn.Linear(8, 1), nn.Linear(8, 1)
        self.extra, self.use_extra = nn.Sequential(nn.Linear(8, 8), nn.ReLU()), False

    def forward(self, x):
        h = self.body(x)
        h = h + self.extra(h) if self.use_extra else h
        return self.head(h) + 0.1 * self.aux(h) if self.training else self.head(h)


class _SwitchOn(Callback):
    def before_epoch(self, learn):
        learn.model.use_extra = learn.epoch >= 1


class _DropOddBatches(Callback):
    order = -1  # (a guard that drops batches at after_predict, before ActivationStats sees them)

    def after_predict(self, learn):
        if learn.training and learn.iter % 2:
            raise CancelBatchException()


@pytest.mark.parametrize("case", ["a head used in training only", "a block switched on mid-fit",
                                  "batches dropped at after_predict"])
def test_a_layer_that_runs_in_some_passes_or_batches_only_is_refused_too(case):
    """Counted per pass, a layer that ran in every training batch and in no validation batch (on_valid=True), one
    switched on at the second epoch, or one skipped in batches a guard dropped before ActivationStats' after_predict
    passed, its records drawn at other batches' places."""
    model, cbs, kw = _AuxHead(), [], {"mod_filter": lambda m: isinstance(m, (nn.Linear, nn.ReLU))}
    if case == "a head used in training only":
        kw["on_valid"] = True
    elif case == "a block switched on mid-fit":
        cbs = [_SwitchOn()]
    else:
        model, cbs = LayerDrop(), [_DropOddBatches()]
    learn = TrainLearner(model, linear_dls(n_train=64, n_valid=32, bs=16), F.mse_loss, lr=0.01,
                         cbs=[ActivationStats(**kw), *cbs])
    with pytest.raises(ValueError, match=r"ActivationStats: layer \d+ \('(aux|extra\.0|block\.0)', Linear\) (did not "
                                         r"run|ran) in batch \d of this (training|validation) pass"):
        learn.fit(2)


def test_swas_pass_of_its_average_after_the_fit_is_not_checked_as_a_recorded_pass():
    """SWACB validates its averaged model in after_fit; with on_valid=True that pass was taken for a recorded one
    whose hooked layers did not run, and the whole fit was refused after its last epoch."""
    from miniai.callbacks.swa import SWACB
    stats = ActivationStats(lambda m: isinstance(m, nn.ReLU), on_valid=True)
    learner(mlp(), [stats, SWACB(swa_start=1, swa_lr=1e-3)]).fit(2)
    assert len(stats.stats[0][0]) == 2 * (3 + 2)


def test_hooks_on_a_model_compiled_without_hook_guards_are_refused_with_the_way():
    """(probe S26 compile) ActivationStats on torch.compile(model), its code compiled by an earlier fit, recorded
    nothing, without a word (torch's compiled code does not look for hooks added later, by default); so did
    summary() of a model compiled in place (model.compile())."""
    import torch._dynamo as dynamo
    from miniai.learner import TrainLearner

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))
    with dynamo.config.patch(skip_nnmodule_hook_guards=True):  # torch's default (learn.compile() sets it False)
        learn = TrainLearner(torch.compile(model(), backend="eager"), linear_dls(), F.mse_loss, lr=0.1)
        learn.fit(1)
        with pytest.raises(RuntimeError, match=r"ActivationStats: the compiled code of learn.model \(a torch.compile "
                                               r"wrapper\).*model._orig_mod\), and compile it with learn.compile"):
            learn.fit(1, cbs=[ActivationStats(lambda m: isinstance(m, nn.ReLU))])
        body = TrainLearner(nn.Sequential(torch.compile(model(), backend="eager"), nn.Linear(1, 1)), linear_dls(),
                            F.mse_loss, lr=0.1)  # (regression round T18) a compiled part, the body
        body.fit(1)
        for call in (lambda: body.fit(1, cbs=[ActivationStats(lambda m: isinstance(m, nn.ReLU))]), body.summary):
            with pytest.raises(RuntimeError, match=r"the compiled code of its part '0'.*part._orig_mod"):
                call()
        head = ActivationStats(lambda m: m is body.model[1])  # (regression round T19) hooks outside the part: run
        body.fit(1, cbs=[head])
        assert len(head.hooks[0].stats[0]) == 3
        in_place = model()
        in_place.compile(backend="eager")
        with pytest.raises(RuntimeError, match=r"summary: the compiled code of learn.model.*compiled in place.*"
                                               r"skip_nnmodule_hook"):
            TrainLearner(in_place, linear_dls(), F.mse_loss).summary()
    with dynamo.config.patch(skip_nnmodule_hook_guards=False):
        dynamo.reset()  # (as in a new process: the code compiled above, unwatched, is shared by the class's forward)
        learn = TrainLearner(model(), linear_dls(), F.mse_loss, lr=0.1)
        learn.compile(backend="eager")  # the way the message gives: hooks watched
        learn.fit(1)
        astats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
        learn.fit(1, cbs=[astats])
        assert len(astats.hooks[0].stats[0]) == 3  # (3 training batches)
    dynamo.reset()


def test_hooks_on_a_compiled_wrapper_itself_run_and_a_part_whose_forward_is_compiled_is_refused():
    """(regression round T20) Hooks on a torch.compile wrapper part itself (which runs them) were refused; a part
    whose forward was compiled (torch.compile(part.forward), or a decorated forward) took hooks on its layers and
    recorded nothing, without a word."""
    import torch._dynamo as dynamo
    from miniai.learner import TrainLearner

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Sequential(nn.Linear(1, 4), nn.ReLU()), nn.Linear(4, 1))
    with dynamo.config.patch(skip_nnmodule_hook_guards=True):
        model = make()
        model[0] = torch.compile(model[0], backend="eager")
        learn = TrainLearner(model, linear_dls(), F.mse_loss, lr=0.1)
        learn.fit(1)
        on_wrapper = HooksCallback(append_stats, mods=[model[0]])
        learn.fit(1, cbs=[on_wrapper])
        assert len(on_wrapper.hooks[0].stats[0]) == 3
        model = make()
        model[0].forward = torch.compile(model[0].forward, backend="eager")
        learn = TrainLearner(model, linear_dls(), F.mse_loss, lr=0.1)
        learn.fit(1)
        with pytest.raises(RuntimeError, match=r"the compiled code of its part '0' \(compiled in place\)"):
            learn.fit(1, cbs=[ActivationStats(lambda m: isinstance(m, nn.ReLU))])
    dynamo.reset()
