"""The training recipes (`python -m miniai train --recipe NAME`): they build, train, and the CLI reports them."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from miniai.callbacks import BatchTransformCB, DeviceCB
from miniai.callbacks.scheduling import BatchSchedCB
from miniai.data import DataLoaders, TensorLoader
from miniai.recipes import RECIPES, recipe_learner
from tests.synth import NoLen

ROOT = Path(__file__).resolve().parents[1]


def tiny_images(n: int = 64) -> DataLoaders:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoaders(TensorLoader(x, y, bs=16, shuffle=True), TensorLoader(x[:32], y[:32], bs=16))


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_builds_what_it_says_and_trains(name):
    recipe = replace(RECIPES[name], epochs=2)
    learn = recipe_learner(recipe, tiny_images(), device="cpu")
    kinds = {type(cb) for cb in learn.cbs}
    assert {DeviceCB, BatchSchedCB} <= kinds and (BatchTransformCB in kinds) == bool(recipe.augmentation())
    assert learn.opt_func.keywords["weight_decay"] == recipe.weight_decay
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(recipe.epochs)
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    sched = next(cb for cb in learn.cbs if isinstance(cb, BatchSchedCB))
    assert sched.scheduler.total_steps == recipe.epochs * 4 and sched.n_steps == recipe.epochs * 4


def test_a_recipe_with_an_unknown_model_or_activation_is_refused_when_made():
    with pytest.raises(ValueError, match="model is 'resnet', 'cnn' or 'convnet' \\(got 'resnet18'\\)"):
        replace(RECIPES["five"], model="resnet18")
    with pytest.raises(ValueError, match="act is 'general' or 'relu' \\(got 'gelu'\\)"):
        replace(RECIPES["fast"], act="gelu")



@pytest.mark.parametrize("field, value", [("epochs", 0), ("bs", 0), ("max_lr", -1.0), ("max_lr", float("nan")),
                                          ("label_smoothing", 1.5), ("crop_padding", -1), ("erase", 2.0),
                                          ("pct_start", 1.5), ("nfs", ()), ("nfs", (16, 0)), ("weight_decay", -0.1)])
def test_a_recipe_with_a_value_out_of_range_is_refused_when_made(field, value):
    """epochs=0 failed in the one-cycle with ZeroDivisionError, nfs=() with IndexError, others only mid-fit."""
    with pytest.raises(ValueError, match=f"Recipe {field} must be"):
        replace(RECIPES["fast"], **{field: value})

@pytest.mark.slow
def test_cli_recipe_prints_accuracy_tta_and_wall_time_and_writes_the_result(tmp_path):
    out = subprocess.run([sys.executable, "-m", "miniai", "train", "--recipe", "five", "--epochs", "1",
                          "--n-train", "2048", "--n-valid", "512", "--device", "cpu", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "validation accuracy: 0." in out.stdout and "with TTA (the flip averaged in): 0." in out.stdout
    assert "since the process started" in out.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["recipe"] == "five" and result["epochs"] == 1 and 0.1 < result["accuracy"] <= 1
    assert result["accuracy_tta"] is not None and result["wall_s"] > result["fit_s"] > 0
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("epoch,train,accuracy,loss,time")


def test_a_recipes_one_cycle_spans_the_fit_in_optimizer_steps():
    """The one-cycle was sized in batches for recipe.epochs: with GradAccumCB(2) the lr ended near its peak, and
    learn.fit(1) ran 1/epochs of the cycle."""
    from miniai.callbacks import GradAccumCB, RecorderCB, _lr
    from miniai.recipes import RECIPES, recipe_learner
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x[:16], y[:16], 16))
    recipe = replace(RECIPES["fast"], epochs=2, bs=16)
    for cbs, n_epochs in (([GradAccumCB(2)], 2), ([], 1)):
        rec = RecorderCB(lr=_lr)
        learn = recipe_learner(recipe, dls, cbs=[rec, *cbs], device="cpu")
        learn.fit(n_epochs)
        assert rec.recs["lr"][-1] < 1e-4 * recipe.max_lr, rec.recs["lr"]  # annealed to the end of the cycle


def test_loaders_of_another_batch_size_than_the_recipes_are_named():
    from miniai.recipes import RECIPES, recipe_learner
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    dls = DataLoaders(TensorLoader(x, y, 16), TensorLoader(x[:16], y[:16], 16))
    with pytest.warns(UserWarning, match="recipe fast was chosen at bs 512; these loaders have bs 16"):
        recipe_learner(RECIPES["fast"], dls, device="cpu")


def test_a_recipe_on_a_train_loader_without_a_length_is_refused_before_training():
    """The one-cycle was built with 1 step per epoch: the fit trained at wrong lrs, then torch raised "Tried to
    step 3 times" mid-fit."""
    from miniai.callbacks import RecorderCB, _lr
    x, y = torch.randn(96, 1, 28, 28), torch.randint(0, 10, (96,))
    dls = DataLoaders(NoLen(TensorLoader(x, y, 32)), TensorLoader(x[:32], y[:32], 32))
    rec = RecorderCB(lr=_lr)
    learn = recipe_learner(replace(RECIPES["fast"], epochs=2, bs=32), dls, cbs=[rec], device="cpu")
    with pytest.raises(TypeError, match=r"recipe .*'s one-cycle needs len\(dls.train\).*no length"):
        learn.fit(2)
    assert rec.recs["lr"] == []


def test_recipe_search_refuses_a_value_it_cannot_read_before_training(tmp_path):
    """bench/recipe_search.py took flip=on as False (anything but 1/true/yes), named an unknown field with a bare
    AttributeError, and found an --out it could not write only after the training, losing the run."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    try:
        from recipe_search import parse_field
    finally:
        sys.path.remove(str(root / "bench"))
    from miniai.recipes import RECIPES
    assert parse_field(RECIPES["fast"], "flip=no") == ("flip", False)
    assert parse_field(RECIPES["fast"], "flip=Yes") == ("flip", True)
    with pytest.raises(SystemExit, match=r"flip takes true/false.*got 'on'"):
        parse_field(RECIPES["fast"], "flip=on")
    with pytest.raises(SystemExit, match=r"'bogus' is no field of a Recipe"):
        parse_field(RECIPES["fast"], "bogus=1")
