"""The foundation on the real Fashion-MNIST: the README's example learns, is reproducible, and the CLI works."""
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torcheval.metrics import MulticlassAccuracy

from miniai import (DeviceCB, MetricsCB, ProgressCB, SingleBatchCB, TrainLearner, GeneralRelu, get_dls, get_model,
                    init_weights, set_seed)
from tests.synth import LossLog

ROOT = Path(__file__).resolve().parents[1]


def reference_learner(dls, cbs=()):
    """The README's model: conv stack 8-16-32-64, GeneralRelu(0.1, 0.4), BatchNorm, leaky Kaiming init, AdamW."""
    act_gr = partial(GeneralRelu, leak=0.1, sub=0.4)
    model = get_model(act_gr, norm=nn.BatchNorm2d).apply(partial(init_weights, leaky=0.1))
    return TrainLearner(model, dls, F.cross_entropy, lr=2e-2, cbs=[DeviceCB("cpu"), *cbs], opt_func=optim.AdamW)


@pytest.mark.slow
def test_readme_example_reaches_080_in_one_epoch_and_single_batch_check_works(capsys):
    set_seed(42)
    dls = get_dls(bs=1024)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (1024, 1, 28, 28) and xb.dtype == torch.float32 and yb.shape == (1024,) and yb.dtype == torch.int64
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    learn = reference_learner(dls, [metrics, ProgressCB(plot=True)])
    learn.fit(1)
    assert metrics.last["valid_accuracy"] >= 0.80
    assert [(r["epoch"], r["train"]) for r in metrics.history] == [(0, "train"), (0, "valid")]
    single = SingleBatchCB()
    learn.fit(1, cbs=[single])
    assert single not in learn.cbs and learn.iter == 0
    assert learn.opt.param_groups[0]["lr"] == 2e-2 and len(learn.opt.state) > 0


@pytest.mark.slow
def test_same_seed_twice_gives_identical_losses():
    def run():
        set_seed(7)
        log = LossLog()
        reference_learner(get_dls(bs=512, n_train=6144, n_valid=512), [log]).fit(1)
        return log.losses
    first, second = run(), run()
    assert len(first) == 12 and first == second


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "miniai", *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def test_cli_help_lists_the_options():
    run = run_cli("train", "--help")
    assert run.returncode == 0, run.stderr
    for option in ("--epochs", "--lr", "--out", "--sched", "warmup over the first 10% of the steps"):
        assert option in " ".join(run.stdout.split())  # argparse wraps long help lines


@pytest.mark.slow
def test_cli_train_with_piped_stdout_prints_one_row_per_pass_and_saves(tmp_path):
    run = run_cli("train", "--epochs", "2", "--lr", "2e-2", "--out", str(tmp_path), "--device", "cpu")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["accuracy", "loss", "epoch", "train", "time"]
    rows = [l.split() for l in lines[1:5]]
    assert [(r[2], r[3]) for r in rows] == [("0", "train"), ("0", "valid"), ("1", "train"), ("1", "valid")]
    assert "\r" not in run.stdout and "Epoch" not in run.stdout  # no progress bars in a log
    accuracy = float(next(l for l in lines if l.startswith("validation accuracy:")).split(":")[1])
    assert accuracy > 0.8
    assert (tmp_path / "model.pt").stat().st_size > 0 and (tmp_path / "loss.png").stat().st_size > 0
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
