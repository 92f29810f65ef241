"""DDPCB and the rank-aware callbacks: 2 processes on the CPU (gloo) started with torchrun, plus in-process checks.

Processes are expensive, so one torchrun launch checks most things at once (see WORKER); a second checks that a
failure on one rank ends both. Each launch runs under a timeout, so a hang fails the test instead of blocking.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from miniai.callbacks import DeviceCB, GradAccumCB, MetricsCB, ProgressCB, RecorderCB, SingleBatchCB, _lr
from miniai.callbacks.checkpoint import CheckpointCB, load_checkpoint
from miniai.callbacks.ddp import DDPCB
from miniai.data import DataLoaders, TensorLoader
from miniai.distributed import all_reduce_sum, is_dist, is_main_process, local_rank, rank, world_size
from miniai.learner import MomentumLearner, TrainLearner

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VALID, BS, SEED, EPOCHS, LR = 70, 31, 8, 7, 2, 0.3  # 70 = 4 global batches of 2×8 and one of 6
SUM_LR = 0.01  # a loss of reduction='sum' steps by its summed gradients: bs × larger

# Runs on each rank: argv = out dir. Writes rank{r}.json/.pt, resumed{r}.pt, torchdl{r}.json/.pt, unseeded{r}.json
# and failed{r}.json for the tests.
WORKER = '''
import json, os, sys
import torch
torch.set_num_threads(1)
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy
from miniai.callbacks import DeviceCB, MetricsCB, ProgressCB, RecorderCB, _lr
from miniai.callbacks.checkpoint import CheckpointCB
from miniai.callbacks.ddp import DDPCB
from miniai.data import DataLoaders, TensorLoader
from miniai.distributed import is_dist, rank
from miniai.learner import Callback, TrainLearner

out = sys.argv[1]
r = int(os.environ["RANK"])
setup = torch.load(f"{out}/setup.pt")

def learner(cbs):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(setup["init"] if r == 0 else {k: v + 1 for k, v in setup["init"].items()})  # DDP syncs
    seed = setup["seed"] if r == 0 else None  # DDPCB gives every rank rank 0's seed
    dls = DataLoaders(TensorLoader(setup["xt"], setup["yt"], setup["bs"], shuffle=True, seed=seed),
                      TensorLoader(setup["xv"], setup["yv"], setup["bs"]))
    return TrainLearner(model, dls, F.cross_entropy, lr=setup["lr"], cbs=cbs)

class FailOnRank1(Callback):
    def after_backward(self, learn):
        if rank() == 1 and learn.iter == 2:
            raise RuntimeError("boom on rank 1")

def record(name, learn, **extra):
    with open(f"{out}/{name}{r}.json", "w") as f:
        json.dump({"in_group": is_dist(), "model": type(learn.model).__name__, "train_len": len(learn.dls.train),
                   **extra}, f)

# A: train with the usual callbacks
metrics, recorder = MetricsCB(accuracy=MulticlassAccuracy()), RecorderCB(lr=_lr)
learn = learner([DDPCB(), DeviceCB("cpu"), metrics, ProgressCB(mode="plain"), recorder,
                 CheckpointCB(f"{out}/ckpt_rank{r}", monitor="valid_loss")])
learn.fit_one_cycle(setup["epochs"], setup["lr"])
torch.save(learn.model.state_dict(), f"{out}/rank{r}.pt")
recorder.plot(f"{out}/lr_rank{r}.png")
record("rank", learn, last=metrics.last, lrs=recorder.recs["lr"], keys=list(learn.model.state_dict()),
       checkpoint=str(learn.last_checkpoint),
       best=str(next(cb for cb in learn.cbs if isinstance(cb, CheckpointCB)).best_path))

# B: the other way round: resume a single-process checkpoint in this 2-process run (MetricsCB prints itself)
learn = learner([DDPCB(), DeviceCB("cpu"), MetricsCB(accuracy=MulticlassAccuracy()), RecorderCB(lr=_lr)])
learn.fit_one_cycle(setup["epochs"], setup["lr"], resume=f"{out}/single/epoch_0001.pt")
torch.save(learn.model.state_dict(), f"{out}/resumed{r}.pt")
# B2: a one-process run whose loader had no seed (its orders from torch's RNG), resumed here: DDPCB seeds the ranks'
# one order, so the orders differ from the saved run's
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    learn = learner([DDPCB(), DeviceCB("cpu")])
    learn.dls.train.seed = None
    learn.fit(2, resume=f"{out}/unseeded_single/epoch_0001.pt")
record("unseeded_resume", learn, warnings=[str(w.message) for w in caught])

# C: torch DataLoaders (a DistributedSampler for training, a contiguous split for validation)
from torch.utils.data import DataLoader, TensorDataset
learn = learner([DDPCB(), DeviceCB("cpu"), metrics])
metrics.log_fn = lambda row: None  # quiet: the output counts above are about A and B
learn.dls = DataLoaders(DataLoader(TensorDataset(setup["xt"], setup["yt"]), setup["bs"], shuffle=True),
                        DataLoader(TensorDataset(setup["xv"], setup["yv"]), setup["bs"]))
learn.fit(2)
torch.save(learn.model.state_dict(), f"{out}/torchdl{r}.pt")
record("torchdl", learn, last=metrics.last, sampler=type(learn.dls.train.sampler).__name__,
       dl_given_back=learn.dl is learn.dls.valid)

# D: a loader without a seed on ranks whose RNGs differ, twice: one order for both ranks, the same both times
class Walked(Callback):
    def __init__(self):
        self.items = []
    def before_batch(self, learn):
        if learn.training:
            self.items.append(learn.batch[0][:, 0].tolist())  # the first feature identifies the item

walks = []
for _ in range(2):
    torch.manual_seed(100 + r)
    walked = Walked()
    learn = learner([DDPCB(), DeviceCB("cpu"), walked])
    learn.dls.train.seed = None
    learn.fit(2)
    walks.append(walked.items)
record("unseeded", learn, walks=walks, seed_after=learn.dls.train.seed)

# F: ranks seeded apart, Dropout, a layer with a generator of its own seeded per rank, and a shuffled torch
# DataLoader: a run resumed in this process (whose RNG has moved on since) ends as the one never stopped. Each rank's
# RNG, its layer's generator and the DistributedSampler's seed come from the checkpoint.
import torch.distributed as dist
from miniai.utils import set_seed
class Noise(nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.Generator().manual_seed(200 + r)
    def forward(self, x):
        return x + torch.randn(x.shape, generator=self.g) if self.training else x
def dropout_learner(path):
    set_seed(100 + r)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3), Noise())
    model.load_state_dict({k.replace("2.", "3."): v for k, v in setup["init"].items()})
    dls = DataLoaders(DataLoader(TensorDataset(setup["xt"], setup["yt"]), setup["bs"], shuffle=True),
                      DataLoader(TensorDataset(setup["xv"], setup["yv"]), setup["bs"]))
    quiet = MetricsCB()
    quiet.log_fn = lambda row: None
    return TrainLearner(model, dls, F.cross_entropy, lr=setup["lr"], cbs=[DDPCB(), DeviceCB("cpu"), quiet,
                                                                          CheckpointCB(path)])
straight = dropout_learner(f"{out}/F_straight")
straight.fit(3)
dropout_learner(f"{out}/F_stopped").fit(1)
dist.barrier()  # rank 0 has written the checkpoint
resumed = dropout_learner(f"{out}/F_stopped")
torch.rand(7)  # the RNG moves on, as a notebook's does between cells
resumed.fit(3, resume=f"{out}/F_stopped")
torch.save({"straight": straight.model.state_dict(), "resumed": resumed.model.state_dict()}, f"{out}/F{r}.pt")

# G: what DDP can't do is refused on every rank, before anything hangs; a resume right after a fit finds the
# checkpoint its fit wrote (no barrier of the script's own: CheckpointCB waits for rank 0's file)
from miniai.callbacks import SWACB
from torch.utils.data import SubsetRandomSampler
refused = {}
def refusal(name, call):
    try:
        call()
    except (RuntimeError, TypeError, ValueError) as e:
        refused[name] = str(e)
quiet = MetricsCB()
quiet.log_fn = lambda row: None
refusal("lr_find", lambda: learner([DDPCB(), DeviceCB("cpu")]).lr_find(plot=False))
refusal("swa", lambda: learner([DDPCB(), DeviceCB("cpu"), SWACB(1, 0.01)]).fit(2))
learn = learner([DDPCB(), DeviceCB("cpu")])
learn.dls = DataLoaders(DataLoader(TensorDataset(setup["xt"], setup["yt"]), setup["bs"],
                                   sampler=SubsetRandomSampler(range(20))), learn.dls.valid)
refusal("sampler", lambda: learn.fit(1))
learn = learner([DDPCB(), DeviceCB("cpu")])
learn.dls = DataLoaders(learn.dls.train, learn.dls.train)
refusal("same_loader", lambda: learn.fit(1))
class PredsNow(Callback):
    def after_epoch(self, learn):
        learn.get_preds()
refusal("preds_in_fit", lambda: learner([DDPCB(), DeviceCB("cpu"), PredsNow()]).fit(1))
learn = learner([DDPCB(), DeviceCB("cpu")])
learn.dls.valid.y = learn.dls.valid.y.roll(r)  # rank 1 read its labels apart (another split, another file)
refusal("other_data", lambda: learn.fit(1))
from torch.utils.data import random_split
parts = random_split(TensorDataset(setup["xt"], setup["yt"]), [46, 24], generator=torch.Generator().manual_seed(r))
learn = learner([DDPCB(), DeviceCB("cpu")])  # each rank split the data with its own RNG
learn.dls = DataLoaders(DataLoader(parts[0], setup["bs"], shuffle=True), DataLoader(parts[1], setup["bs"]))
refusal("own_split", lambda: learn.fit(1))
learn = learner([DDPCB(presharded=("train",)), DeviceCB("cpu")])
learn.dls.train = TensorLoader(setup["xt"][:32 + 8 * r], setup["yt"][:32 + 8 * r], setup["bs"])  # 4 and 5 batches
refusal("uneven_shards", lambda: learn.fit(1))  # (it ended in gloo's "collective mismatch" and a SIGABRT)
learn.fit(1, train=False)  # an evaluation takes no training step: not refused
# (probe P50) a shuffled shard of one's own seeded per rank (set_seed(42 + rank) then a drawn seed): the ranks' parts
# of two orders overlapped, 13 of 64 items never trained on; and shard(0, 2) on every rank
learn.dls.train = TensorLoader(setup["xt"][:64], setup["yt"][:64], setup["bs"], shuffle=True, seed=r).shard(r, 2)
refusal("shard_seeds", lambda: learn.fit(1))
learn.dls.train = TensorLoader(setup["xt"][:64], setup["yt"][:64], setup["bs"], shuffle=True, seed=0).shard(0, 2)
refusal("shard_ranks", lambda: learn.fit(1))
learn.fit(1, train=False)  # (nor the shards it does not train on)
first = learner([DDPCB(), DeviceCB("cpu"), quiet, CheckpointCB(f"{out}/G")])
first.fit(2)
last_checkpoint = str(first.last_checkpoint)
again = learner([DDPCB(), DeviceCB("cpu"), quiet, CheckpointCB(f"{out}/G")])
again.fit(3, resume=f"{out}/G")
torch.save(again.model.state_dict(), f"{out}/G{r}.pt")
record("G", again, refused=refused, last_checkpoint=last_checkpoint)

# H: BatchNorm. Rank 0 alone predicts on a sample batch during the fit (a plot of samples): that must not wait for
# rank 1 (DDP's forward broadcasts the buffers, a collective). Export writes on rank 0 only.
from miniai.distributed import is_main_process
class SamplePreds(Callback):
    def after_epoch(self, learn):
        if learn.training and is_main_process():
            learn.get_preds(dl=[(setup["xv"][:4], setup["yv"][:4])])
torch.manual_seed(r)  # the ranks start apart: DDP broadcasts rank 0's model
bn = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
dls = DataLoaders(TensorLoader(setup["xt"], setup["yt"], setup["bs"], shuffle=True, seed=setup["seed"]),
                  TensorLoader(setup["xv"], setup["yv"], setup["bs"]))
learn = TrainLearner(bn, dls, F.cross_entropy, lr=setup["lr"], cbs=[DDPCB(), DeviceCB("cpu"), SamplePreds()])
learn.fit(2, valid=False)
torch.save(learn.model.state_dict(), f"{out}/H{r}.pt")
learn.export(f"{out}/H_export{r}.pkl")

# I: a validation loader over an IterableDataset the script shards itself, named in presharded: left as it is,
# the metrics summed over the ranks are those of the whole set
from torch.utils.data import IterableDataset
from miniai.distributed import world_size
class MyShard(IterableDataset):
    def __iter__(self):
        return iter([(setup["xv"][i], setup["yv"][i]) for i in range(rank(), len(setup["xv"]), world_size())])
metrics = MetricsCB(accuracy=MulticlassAccuracy())
metrics.log_fn = lambda row: None
learn = learner([DDPCB(presharded=("valid",)), DeviceCB("cpu"), metrics])
learn.dls.valid = DataLoader(MyShard(), batch_size=setup["bs"])
learn.fit(1)
record("presharded", learn, last=metrics.last)
torch.save(learn.model.state_dict(), f"{out}/presharded{r}.pt")

# J: after the DDP fits, each rank scores its own data with a plain learner (no DDPCB), and rank 0 alone scores
# again: MetricsCB merged the ranks' sums in any fit once a process group existed (each rank reported the pooled
# numbers; rank 0 alone waited for ever for rank 1)
mine = slice(r * 10, r * 10 + 10)
own = MetricsCB(accuracy=MulticlassAccuracy())
own.log_fn = lambda row: None
plain = TrainLearner(learn.model, DataLoaders(TensorLoader(setup["xv"][mine], setup["yv"][mine], 4),
                                              TensorLoader(setup["xv"][mine], setup["yv"][mine], 4)),
                     F.cross_entropy, cbs=[own])
plain.fit(1, train=False)
with torch.no_grad():
    truth = (learn.model(setup["xv"][mine]).argmax(1) == setup["yv"][mine]).float().mean().item()
alone = None
if r == 0:
    plain.fit(1, train=False)
    alone = own.last["valid_accuracy"]
record("own", learn, accuracy=own.last["valid_accuracy"], truth=truth, alone=alone)
dist.barrier()

# K: a loss of reduction='sum': DDP averaged the ranks' summed gradients, half one process's with the global batch
learn = learner([DDPCB(), DeviceCB("cpu")])
learn.loss_func = nn.CrossEntropyLoss(reduction="sum")
learn.fit(setup["epochs"], lr=setup["sum_lr"])
torch.save(learn.model.state_dict(), f"{out}/sum{r}.pt")
# K2: and with what .grad carries from batch to batch (GradAccumCB, MomentumLearner): summing the ranks' .grad summed
# the carried part too, once per rank
from miniai.callbacks import GradAccumCB
from miniai.learner import MomentumLearner
learn = learner([DDPCB(), DeviceCB("cpu"), GradAccumCB(2)])
learn.loss_func = nn.CrossEntropyLoss(reduction="sum")
learn.fit(setup["epochs"], lr=setup["sum_lr"])
torch.save(learn.model.state_dict(), f"{out}/sumaccum{r}.pt")
learn = learner([DDPCB(), DeviceCB("cpu")])
learn = MomentumLearner(learn.model, learn.dls, nn.CrossEntropyLoss(reduction="sum"), lr=setup["sum_lr"],
                        cbs=learn.cbs, mom=0.9)
learn.fit(setup["epochs"])
torch.save(learn.model.state_dict(), f"{out}/summom{r}.pt")
# K3: a mean over class-weighted targets, some ignored: each rank divided by its own part's weights, and DDP averaged
# the ranks, not the global batch's weighted mean
learn = learner([DDPCB(), DeviceCB("cpu")])
learn.loss_func = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 0.2]), ignore_index=1)
learn.fit(setup["epochs"])
torch.save(learn.model.state_dict(), f"{out}/weighted{r}.pt")
# K4: the same loss scored by a get_loss of one's own (of the batch's targets): trains as K3, without a word
class OwnGetLoss(TrainLearner):
    def get_loss(self):
        self.loss = self.loss_func(self.preds, *self.yb)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    plain = learner([DDPCB(), DeviceCB("cpu")])
    learn = OwnGetLoss(plain.model, plain.dls, nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 0.2]),
                                                                   ignore_index=1), lr=setup["lr"], cbs=plain.cbs)
    learn.fit(setup["epochs"])
torch.save(learn.model.state_dict(), f"{out}/own_get_loss{r}.pt")
record("own_get_loss", learn, warnings=[str(w.message) for w in caught if "DDPCB" in str(w.message)])

# L: a CancelStepException on rank 1 alone skips a step there: the replicas part, and the fit must say so
from miniai.learner import CancelStepException
class SkipOnRank1(Callback):
    def after_backward(self, learn):
        if rank() == 1 and learn.epoch == 0 and learn.iter == 2:
            raise CancelStepException()
learn = learner([DDPCB(), DeviceCB("cpu"), SkipOnRank1()])
try:
    learn.fit(1)
    parted = "no error"
except RuntimeError as e:
    parted = str(e)
record("parted", learn, error=parted)

# E: rank 1 fails in the middle of an epoch
learn = learner([DDPCB(), DeviceCB("cpu"), FailOnRank1()])
try:
    learn.fit(1)
finally:
    record("failed", learn)
'''


def make_setup(out: Path) -> dict:
    """Data and initial weights shared by the workers and the single-process reference."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=g)
    xt, xv = torch.randn(N_TRAIN, 6, generator=g), torch.randn(N_VALID, 6, generator=g)
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).state_dict()
    setup = dict(xt=xt, yt=(xt @ w).argmax(1), xv=xv, yv=(xv @ w).argmax(1), init=init, bs=BS, seed=SEED,
                 epochs=EPOCHS, lr=LR, sum_lr=SUM_LR)
    torch.save(setup, out / "setup.pt")
    return setup


def single_process_learner(setup: dict, bs: int, cbs=()) -> TrainLearner:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(setup["init"])
    dls = DataLoaders(TensorLoader(setup["xt"], setup["yt"], bs, shuffle=True, seed=setup["seed"]),
                      TensorLoader(setup["xv"], setup["yv"], bs))
    return TrainLearner(model, dls, F.cross_entropy, lr=setup["lr"], cbs=[DeviceCB("cpu"), *cbs])


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from Linux's /proc (none elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()  # (the name in parentheses may hold spaces)
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_with_timeout(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group and kill it and every process below it if it outlives `timeout`."""
    env = {**(env or os.environ), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun starts each worker in a session of its own: killing its group alone left them running, holding
        # the output pipes, and communicate() then waited for ever
        if not Path("/proc").exists():
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"{' '.join(cmd[2:5])} ... hung for {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """The single-process reference, then one torchrun launch of WORKER on 2 processes."""
    out = tmp_path_factory.mktemp("ddp")
    setup = make_setup(out)
    # the reference: one process, bs 2×8, the same callbacks; its epoch-1 checkpoint is resumed by the workers
    metrics, recorder = MetricsCB(accuracy=MulticlassAccuracy()), RecorderCB(lr=_lr)
    metrics.log_fn = lambda row: None
    single = single_process_learner(setup, 2 * BS, [metrics, recorder, CheckpointCB(out / "single")])
    single.fit_one_cycle(EPOCHS, LR)
    (out / "worker.py").write_text(textwrap.dedent(WORKER))
    summed = single_process_learner(setup, 2 * BS)  # the reference of the workers' reduction='sum' fit
    summed.loss_func = nn.CrossEntropyLoss(reduction="sum")
    summed.fit(EPOCHS, lr=SUM_LR)
    accum = single_process_learner(setup, 2 * BS, [GradAccumCB(2)])
    accum.loss_func = nn.CrossEntropyLoss(reduction="sum")
    accum.fit(EPOCHS, lr=SUM_LR)
    plain = single_process_learner(setup, 2 * BS)
    mom = MomentumLearner(plain.model, plain.dls, nn.CrossEntropyLoss(reduction="sum"), lr=SUM_LR, cbs=plain.cbs,
                          mom=0.9)
    mom.fit(EPOCHS)
    unseeded = single_process_learner(setup, 2 * BS, [CheckpointCB(out / "unseeded_single")])
    unseeded.dls.train.seed = None
    unseeded.fit(1)
    weighted = single_process_learner(setup, 2 * BS)
    weighted.loss_func = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 0.2]), ignore_index=1)
    weighted.fit(EPOCHS)
    run = run_with_timeout([*TORCHRUN, str(out / "worker.py"), str(out)], timeout=90)
    return SimpleNamespace(out=out, run=run, setup=setup, single=single.model.state_dict(), lrs=recorder.recs["lr"],
                           summed=summed.model.state_dict(), sumaccum=accum.model.state_dict(),
                           summom=mom.model.state_dict(), weighted=weighted.model.state_dict())


def test_two_processes_train_like_one_with_twice_the_batch(launch):
    """Identical ranks, = one process with bs 2×8, whole-set metrics, rank-0-only output, checkpoints both ways."""
    out, run, setup = launch.out, launch.run, launch.setup
    assert (out / "rank1.json").exists(), run.stdout + run.stderr
    res = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    params = [torch.load(out / f"rank{r}.pt") for r in range(2)]

    # identical on both ranks, and equal to one process walking the same order with the global batch
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    for k, v in launch.single.items():
        torch.testing.assert_close(params[0][k], v, atol=1e-5, rtol=0)
    # the schedule counted per-rank batches: 5 a pass on each rank, the lrs the single process used
    assert res[0]["lrs"] == pytest.approx(launch.lrs, abs=1e-12) and len(res[0]["lrs"]) == EPOCHS * 5
    # every rank reports the metrics of the whole validation set (31 items: 15 on rank 0, 16 on rank 1)
    assert res[0]["last"] == res[1]["last"]
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(params[0])  # a DDP run's weights load into a plain module: no `module.` prefix
    with torch.no_grad():
        logits = model(setup["xv"])
    assert res[0]["last"]["valid_accuracy"] == pytest.approx((logits.argmax(1) == setup["yv"]).float().mean().item())
    assert res[0]["last"]["valid_loss"] == pytest.approx(F.cross_entropy(logits, setup["yv"]).item(), abs=1e-6)
    # after the fit: the plain model, the whole loader (70 items in batches of 8); the group stays for later fits
    for r in res:
        assert (r["model"], r["train_len"], r["in_group"]) == ("Sequential", 9, True)
        assert not any(k.startswith("module.") for k in r["keys"])

    # only rank 0 prints and writes: a header per fit (ProgressCB's, then MetricsCB's own), a valid row per epoch
    assert run.stdout.count("accuracy") == 2 and run.stdout.count("valid") == EPOCHS + 1, run.stdout
    assert (out / "lr_rank0.png").exists() and not (out / "lr_rank1.png").exists()
    assert not (out / "ckpt_rank1").exists()
    # a path of each rank's: every rank's last_checkpoint is the file rank 0 wrote (rank 1's named one never written)
    assert res[0]["checkpoint"] == res[1]["checkpoint"] == str(out / "ckpt_rank0" / f"epoch_{EPOCHS:04d}.pt")
    assert res[0]["best"] == res[1]["best"] and Path(res[1]["best"]).exists()  # (rank 1's named its own, unwritten)
    state = load_checkpoint(out / "ckpt_rank0" / f"epoch_{EPOCHS:04d}.pt")
    fresh = single_process_learner(setup, 2 * BS)
    fresh.model.load_state_dict(state["model"])  # DDP checkpoint -> single-process learner
    assert all(torch.equal(fresh.model.state_dict()[k], params[0][k]) for k in params[0])
    # single-process checkpoint -> DDP run: resuming after epoch 1 on 2 ranks ends where the single process did
    for r in range(2):
        resumed = torch.load(out / f"resumed{r}.pt")
        for k, v in launch.single.items():
            torch.testing.assert_close(resumed[k], v, atol=1e-5, rtol=0)


def test_a_one_process_run_without_a_loader_seed_resumed_under_ddp_says_its_order_is_not_the_saved_runs(launch):
    """The saved run drew each epoch's order from torch's RNG; DDPCB seeds the ranks' one order: the resumed run
    walked other orders than the run never stopped, without a word (probe C: weights 0.04 apart)."""
    res = [json.loads((launch.out / f"unseeded_resume{r}.json").read_text()) for r in range(2)]
    for r in res:
        assert any("drew its orders from torch's RNG" in w and "not an exact resume" in w for w in r["warnings"]), r


@pytest.mark.parametrize("run", ["sum", "sumaccum", "summom", "weighted"])
def test_a_sum_or_weighted_mean_loss_trains_like_one_process_with_the_global_batch(launch, run):
    """DDP averages the ranks' gradients: with reduction='sum' each rank's is a sum over its part, so 2 ranks trained
    with half the gradient of one process with the global batch (its sum over all), silently. The comm hook that
    summed them instead also summed what .grad carries, once per rank: under GradAccumCB(2) and a MomentumLearner
    the weights parted from one process's by up to 0.04 and 0.18. A mean over class-weighted targets, some ignored
    (weighted): each rank divided by its own part's weights, and the ranks' average was not the global batch's
    weighted mean (0.03 apart, probe C)."""
    assert (launch.out / f"{run}1.pt").exists(), launch.run.stdout + launch.run.stderr
    reference = {"sum": launch.summed, "sumaccum": launch.sumaccum, "summom": launch.summom,
                 "weighted": launch.weighted}[run]
    for r in range(2):
        params = torch.load(launch.out / f"{run}{r}.pt")
        for k, v in reference.items():
            torch.testing.assert_close(params[k], v, atol=1e-5, rtol=0)


def test_a_class_weighted_loss_of_dict_batches_is_said_to_be_each_ranks_mean_and_one_of_a_get_loss_of_ones_own_is_not(
        launch):
    """Under DDP a class-weighted cross-entropy of dict batches trained another model than one process with the
    global batch (0.15 apart), without a word: DDPCB can't read a dict's targets to weigh the ranks (probe ddp, s27);
    so did a plain one of -100 padding (regression round 28: warned of only for class weights).
    Of tuple batches scored by a get_loss of one's own it weighs them by the batch's targets: the same model as one
    process, and no word (regression round 27: it was warned of, falsely)."""
    for r in range(2):
        record = json.loads((launch.out / f"own_get_loss{r}.json").read_text())
        assert record["warnings"] == [], record
        params = torch.load(launch.out / f"own_get_loss{r}.pt")
        for k, v in launch.weighted.items():
            torch.testing.assert_close(params[k], v, atol=1e-5, rtol=0)
    cb = DDPCB()  # (dict batches: said at the first, in-process)
    cb.active, cb._weighted_mean, cb._said_share = True, True, False
    loss = torch.ones((), requires_grad=True)
    learn = SimpleNamespace(training=True, loss=loss, batch={"x": torch.zeros(2), "label": torch.zeros(2)},
                            loss_func=nn.CrossEntropyLoss())
    with pytest.warns(UserWarning, match=r"class weights or kept targets.*batches are dicts.*tuple batches \(x, y\)"):
        cb.after_loss(learn)  # (no class weights, but -100 padding would part too: regression round 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb.after_loss(learn)  # (once a fit)


def test_a_step_skipped_on_one_rank_only_is_an_error_at_the_end_of_the_fit(launch):
    """A CancelStepException on rank 1 alone left the replicas with different weights, and the fit ended without a
    word (rank 0's weights checkpointed, metrics merged from two models)."""
    for r in range(2):
        error = json.loads((launch.out / f"parted{r}.json").read_text())["error"]
        assert "the ranks' models differ" in error and "every rank" in error, error


@pytest.mark.parametrize("r", [0, 1])
def test_ranks_seeded_apart_with_a_torch_dataloader_resume_exactly(launch, r):
    """The checkpoint held rank 0's RNG only, and DDPCB drew the DistributedSampler's seed before the resume
    restored the RNG: a resumed run differed from the straight one, without a word. (Session 22's T5) A layer's
    own generator, seeded per rank, was saved from rank 0 only: rank 1 resumed drawing rank 0's noise."""
    runs = torch.load(launch.out / f"F{r}.pt")
    for k, v in runs["straight"].items():
        assert torch.equal(v, runs["resumed"][k]), k


def test_batchnorm_under_ddp_rank_0_predicting_alone_and_exporting_alone(launch):
    """A rank-0-only get_preds during the fit on a BatchNorm model hung both ranks (DDP's forward broadcasts the
    buffers, a collective rank 1 never joined); export wrote on every rank, the last writer winning (after
    fit(valid=False) each rank's BatchNorm statistics are of its own last batch)."""
    out, run = launch.out, launch.run
    assert (out / "H1.pt").exists(), run.stdout + run.stderr
    assert (out / "H_export0.pkl").exists() and not (out / "H_export1.pkl").exists()


def test_a_loader_sharded_by_the_script_is_named_in_presharded_and_left_as_it_is(launch):
    """DDPCB refused every loader over an IterableDataset, even one sharded as its own message advised: no way to
    say so. Named in presharded, it is left as it is, and the metrics cover the whole validation set."""
    out, setup = launch.out, launch.setup
    res = [json.loads((out / f"presharded{r}.json").read_text()) for r in range(2)]
    assert res[0]["last"] == res[1]["last"]
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(torch.load(out / "presharded0.pt"))
    with torch.no_grad():
        logits = model(setup["xv"])
    assert res[0]["last"]["valid_loss"] == pytest.approx(F.cross_entropy(logits, setup["yv"]).item(), abs=1e-6)
    assert res[0]["last"]["valid_accuracy"] == pytest.approx((logits.argmax(1) == setup["yv"]).float().mean().item())
    with pytest.raises(ValueError, match=r"presharded names the loaders"):
        DDPCB(presharded="valid")


def test_torch_dataloaders_are_sharded_and_given_back(launch):
    out, setup = launch.out, launch.setup
    res = [json.loads((out / f"torchdl{r}.json").read_text()) for r in range(2)]
    params = [torch.load(out / f"torchdl{r}.pt") for r in range(2)]
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(params[0])
    with torch.no_grad():
        accuracy = (model(setup["xv"]).argmax(1) == setup["yv"]).float().mean().item()
    assert res[0]["last"] == res[1]["last"] and res[0]["last"]["valid_accuracy"] == pytest.approx(accuracy)
    assert [(r["sampler"], r["train_len"], r["model"]) for r in res] == [("RandomSampler", 9, "Sequential")] * 2
    # (probe workers) learn.dl stayed the last pass's sharded copy, with its workers if they persist
    assert [r["dl_given_back"] for r in res] == [True, True]


def test_what_ddp_cannot_do_is_refused_on_every_rank_and_a_resume_right_after_a_fit_agrees(launch):
    """Each of these was silent or hung: lr_find (each rank stopped on its own loss: a hang); SWACB (the average
    stayed wrapped, each rank refreshed BatchNorm on its own shard); a DataLoader's own sampler (replaced by a
    DistributedSampler over the whole dataset); one loader for both passes (sharded twice: a crash in gloo);
    get_preds during the fit (this rank's shard only); ranks holding other data (each trained and scored its part
    of its own data); and a resume right after a fit, where rank 1 could read the directory before rank 0 had
    written its last file (ranks resumed from different epochs)."""
    for r in (0, 1):
        result = json.loads((launch.out / f"G{r}.json").read_text())
        assert set(result["refused"]) == {"lr_find", "swa", "sampler", "same_loader", "preds_in_fit", "other_data",
                                          "own_split", "uneven_shards", "shard_seeds", "shard_ranks"}, \
            result
        assert "dls.train holds other data on rank 1 than on rank 0 (the checksums of its 46 items differ)" in \
            result["refused"]["own_split"]
        assert "dls.valid" in result["refused"]["other_data"] and "rank 1" in result["refused"]["other_data"]
        assert "presharded dls.train gives 5 batches on rank 1 and 4 on rank 0" in result["refused"]["uneven_shards"]
        assert "seed 1 on rank 1 and 0 on rank 0" in result["refused"]["shard_seeds"]
        assert "shard(0, 2) on rank 1" in result["refused"]["shard_ranks"]
        assert "one process" in result["refused"]["lr_find"] and "SubsetRandomSampler" in result["refused"]["sampler"]
        assert result["last_checkpoint"].endswith("epoch_0002.pt")  # rank 1 knows it too (NaN and Ctrl-C notes)
    ranks = [torch.load(launch.out / f"G{r}.pt") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])


def test_a_fit_without_ddp_after_a_ddp_fit_scores_its_own_rank_s_data(launch):
    for r in range(2):
        res = json.loads((launch.out / f"own{r}.json").read_text())
        assert res["accuracy"] == pytest.approx(res["truth"]), (r, res)
    assert json.loads((launch.out / "own0.json").read_text())["alone"] is not None


def test_failure_on_one_rank_ends_both_with_the_error(launch):
    """The worker's last fit raises on rank 1 mid-epoch: torchrun fails (no hang: the fixture has a timeout)."""
    run = launch.run
    assert run.returncode != 0
    assert "boom on rank 1" in run.stdout + run.stderr
    assert "[rank1]: [rank1]:" not in run.stderr  # the group was joined once, so torch prefixed tracebacks once
    failed = json.loads((launch.out / "failed1.json").read_text())
    # cleanup_fit ran on the failing rank: model unwrapped; the group is left at exit
    assert (failed["model"], failed["in_group"]) == ("Sequential", True)


def test_unseeded_loader_walks_rank_0s_drawn_order_on_every_rank(launch):
    """The ranks' global RNGs differ, yet they split one order; rank 0's RNG seeded alike gives the same walk."""
    res = [json.loads((launch.out / f"unseeded{r}.json").read_text()) for r in range(2)]
    item = {x: i for i, x in enumerate(launch.setup["xt"][:, 0].tolist())}
    for run in range(2):
        walked = [[[item[x] for x in batch] for batch in res[r]["walks"][run]] for r in range(2)]
        assert len(walked[0]) == len(walked[1]) == EPOCHS * 5
        for e in range(EPOCHS):
            items = [i for r in range(2) for batch in walked[r][e * 5:(e + 1) * 5] for i in batch]
            assert sorted(items) == list(range(N_TRAIN))  # disjoint parts that cover the training set
        assert walked[0][:5] != walked[0][5:]  # a new order each epoch
    for r in range(2):
        assert res[r]["walks"][0] == res[r]["walks"][1] and res[r]["seed_after"] is None


# ---------------------------------------------------------------- in one process

@pytest.mark.parametrize("n, bs, world, drop_last", [(70, 8, 2, False), (70, 8, 2, True), (23, 4, 3, False)])
def test_ranks_together_walk_the_batches_of_one_process(n, bs, world, drop_last):
    """Rank r's batch g is the r-th equal part of batch g of one process with bs × world over the same order."""
    ranks = []
    for r in range(world):
        dl = TensorLoader(torch.arange(n).unsqueeze(1), torch.arange(n), bs, shuffle=True, seed=3, drop_last=drop_last)
        ranks.append([yb for _, yb in dl.shard(r, world)])
        assert len(ranks[-1]) == len(dl)
    assert len({len(batches) for batches in ranks}) == 1  # as many batches on every rank
    order = TensorLoader(torch.arange(n), torch.arange(n), seed=3).permutation(0)[:n - n % world]  # remainder dropped
    expected = [order[i:i + bs * world] for i in range(0, len(order), bs * world)]
    expected = [b for b in expected if len(b) == bs * world or not drop_last]
    assert len(ranks[0]) == len(expected)
    for g, batch in enumerate(expected):
        assert torch.equal(torch.cat([batches[g] for batches in ranks]), batch)
        assert len({len(batches[g]) for batches in ranks}) == 1  # equal parts: DDP's mean of means is the global mean


def test_validation_shard_keeps_every_item_once():
    ranks = [list(TensorLoader(torch.arange(31).unsqueeze(1), torch.arange(31), 8).shard(r, 2, even=False))
             for r in range(2)]
    items = torch.cat([yb for rank_batches in ranks for _, yb in rank_batches])
    assert sorted(items.tolist()) == list(range(31))


def test_an_unshuffled_training_loader_that_leaves_the_same_items_out_every_epoch_is_warned_of(monkeypatch):
    """101 items on 2 ranks in a fixed order: item 100 was left out of every epoch, never trained on, unsaid."""
    from torch.utils.data import DataLoader, TensorDataset
    from miniai.callbacks.ddp import warn_same_left_out
    monkeypatch.setenv("RANK", "0")  # no process group: _shard reads torchrun's variables, and an unshuffled
    monkeypatch.setenv("WORLD_SIZE", "2")  # TensorLoader needs no broadcast of its seed
    x, y = torch.randn(101, 2), torch.randn(101, 1)
    left_out = r"the same 1 of its 101 items \(its last\) are left out of every epoch.*shuffle=True"
    with pytest.warns(UserWarning, match=left_out):
        DDPCB()._shard(SimpleNamespace(dls=SimpleNamespace(train=TensorLoader(x, y, 8), valid=TensorLoader(x, y, 8))))
    with pytest.warns(UserWarning, match=left_out):
        warn_same_left_out(DataLoader(TensorDataset(x, y), batch_size=8), "train", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dl in (TensorLoader(x, y, 8, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
                   TensorLoader(x[:100], y[:100], 8)):  # shuffled: other items each epoch; or none left out
            warn_same_left_out(dl, "train", 2)


def test_a_tensorloader_of_fewer_items_than_processes_is_refused_naming_it(monkeypatch):
    """A validation TensorLoader of 1 item on 2 ranks was refused as "need 0 <= rank < world_size <= 1 items", which
    named neither the loader nor what to do; a torch DataLoader's refusal named it."""
    monkeypatch.setenv("RANK", "0")  # no process group: unshuffled TensorLoaders need no collective
    monkeypatch.setenv("WORLD_SIZE", "2")
    train = TensorLoader(torch.randn(20, 2), torch.randn(20, 1), 4)
    with pytest.raises(ValueError, match=r"dls.valid has 1 items for 2 processes: every process needs at least one"):
        DDPCB()._shard(SimpleNamespace(dls=SimpleNamespace(train=train, valid=TensorLoader(torch.randn(1, 2),
                                                                                             torch.randn(1, 1), 4))))


def test_a_presharded_validation_loader_whose_distributed_sampler_pads_is_refused(monkeypatch):
    """DistributedSampler(drop_last=False) pads 17 items to 18 on 2 ranks, and the metrics summed over the ranks
    counted item 0 twice (6/18 for 5/17), silently; DDPCB's refusal of such a loader advised presharded."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    monkeypatch.setenv("RANK", "0")  # no process group: presharded loaders and refusals need no collective
    monkeypatch.setenv("WORLD_SIZE", "2")
    train = TensorLoader(torch.randn(20, 2), torch.randn(20, 1), 4)  # unshuffled: no seed to broadcast

    def shard(cb: DDPCB, n_valid: int) -> None:
        ds = TensorDataset(torch.randn(n_valid, 2), torch.randn(n_valid, 1))
        valid = DataLoader(ds, 4, sampler=DistributedSampler(ds, 2, 0, shuffle=False))
        cb._shard(SimpleNamespace(dls=SimpleNamespace(train=train, valid=valid)))
    with pytest.raises(ValueError, match=r"pads its 17 items to 18.*DDPCB splits it over the ranks without padding"):
        shard(DDPCB(presharded=("valid",)), 17)
    shard(DDPCB(presharded=("valid",)), 18)  # no padding: each item on one rank
    with pytest.raises(TypeError, match=r"DistributedSampler.*without padding") as refused:
        shard(DDPCB(), 17)
    assert "presharded" not in str(refused.value)  # (it led users into the padding above)


def test_a_presharded_validation_tensorloader_sharded_to_drop_items_is_refused(monkeypatch):
    """(probe P10, session 22) TensorLoader(xv, yv, 3).shard(rank(), world_size()), named in presharded: shard's
    default even=True left out 23 % 2 items, and the metrics covered 22 of the 23, without a word."""
    monkeypatch.setenv("RANK", "0")  # no process group: presharded loaders and refusals need no collective
    monkeypatch.setenv("WORLD_SIZE", "2")
    train = TensorLoader(torch.randn(20, 2), torch.randn(20, 1), 4)

    def shard(n_valid: int, even: bool) -> None:
        valid = TensorLoader(torch.randn(n_valid, 2), torch.randn(n_valid, 1), 3).shard(0, 2, even=even)
        DDPCB(presharded=("valid",))._shard(SimpleNamespace(dls=SimpleNamespace(train=train, valid=valid)))
    with pytest.raises(ValueError, match=r"shard\(rank, 2\) and its default even=True, which leaves out 1 of its 23 "
                                         r"items.*shard it with even=False"):
        shard(23, even=True)
    shard(23, even=False)
    shard(22, even=True)  # (nothing left out)


def test_the_data_checksums_tell_subsets_of_other_indices_apart():
    """(probe P10, session 22) Each rank split its data with random_split under its own RNG: only the subsets' sizes
    were compared (a Subset had no checksum), and the fit trained on overlapping parts and scored a mix of two
    validation sets, without a word."""
    from torch.utils.data import DataLoader, TensorDataset, random_split
    from miniai.callbacks.ddp import _data_sums
    ds = TensorDataset(torch.randn(69, 2), torch.randn(69, 1))
    splits = [random_split(ds, [46, 23], generator=torch.Generator().manual_seed(s)) for s in (0, 1, 0)]
    sums = [_data_sums(DataLoader(split[1], 4)) for split in splits]
    assert sums[0]["items"] == sums[1]["items"] == 23 and sums[0] != sums[1] and sums[0] == sums[2]
    other = TensorDataset(ds.tensors[0] + 1, ds.tensors[1])  # the same indices of other data
    assert _data_sums(DataLoader(torch.utils.data.Subset(other, splits[0][1].indices), 4)) != sums[0]


def test_a_presharded_training_loaders_distributed_sampler_walks_a_new_order_each_epoch(monkeypatch):
    """A training DataLoader the script sharded with DistributedSampler(shuffle=True), named in presharded: nothing
    called its set_epoch, so every epoch walked the same order, without a word (torch's own pitfall)."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    monkeypatch.setenv("RANK", "0")  # no process group: presharded loaders need no collective
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = TensorDataset(torch.randn(40, 2), torch.randn(40, 1))
    train = DataLoader(ds, 4, sampler=DistributedSampler(ds, 2, 0, shuffle=True, seed=0))
    cb = DDPCB(presharded=("train",))
    cb._shard(SimpleNamespace(dls=SimpleNamespace(train=train, valid=None)))
    orders = []
    for epoch in range(3):
        cb.before_epoch(SimpleNamespace(training=True, epoch_offset=0, epoch=epoch))
        orders.append(list(train.sampler))
    assert orders[0] != orders[1] != orders[2], orders
    assert train.sampler.epoch == 2  # the learner's epoch: a resumed run walks the orders it would have


def test_a_sharded_loader_counts_its_batches_alike_on_every_rank_for_a_resume_to_compare():
    """17 validation items, bs 8, 2 ranks: rank 0's shard gives 1 batch, rank 1's 2. The checkpoint saved rank 0's
    count and rank 1 warned, resuming the same run with the same loaders, that its loader gave another."""
    from torch.utils.data import DataLoader, TensorDataset
    from miniai.callbacks.checkpoint import loader_size
    x, y = torch.randn(17, 2), torch.randn(17)
    one = loader_size(TensorLoader(x, y, 16))  # one process with the global batch
    assert one == {"batches": 2, "items": 17}
    assert [loader_size(TensorLoader(x, y, 8).shard(r, 2, even=False)) for r in range(2)] == [one, one]
    x, y = torch.randn(70, 2), torch.randn(70)  # training: 4 global batches of 2×8 and one of 6
    assert [loader_size(TensorLoader(x, y, 8, shuffle=True, seed=0).shard(r, 2)) for r in range(2)] == [
        loader_size(TensorLoader(x, y, 16))] * 2
    # DDPCB's contiguous split of a validation DataLoader: the ranks' counts differ, so none is saved or compared
    dl = DataLoader(TensorDataset(torch.randn(17, 2), torch.randn(17)), 8)
    assert [loader_size(DDPCB()._shard_torch_loader(dl, "valid", r, 2, even=False)) for r in range(2)] == [
        {"batches": None, "items": 17}] * 2


def test_resuming_with_another_batch_size_still_warns_of_the_loaders_size(tmp_path):
    """(The check DDPCB's shards no longer trip: still there for a loader that really differs.)"""
    tiny([CheckpointCB(tmp_path)]).fit(1)
    with pytest.warns(UserWarning, match=r"dls.train gives 5 batches of 20 items an epoch, the saved run's 3 of 20"):
        tiny([CheckpointCB(tmp_path)], bs=4).fit(2, resume=tmp_path)


def _torchrun_env(monkeypatch, rank: int, world: int = 2) -> None:
    """The variables torchrun gives rank `rank` of `world` processes, without a process group."""
    for name, value in {"RANK": rank, "WORLD_SIZE": world, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500}.items():
        monkeypatch.setenv(name, str(value))


def test_helpers_read_the_torchrun_environment_without_a_process_group(monkeypatch):
    _torchrun_env(monkeypatch, 1)
    assert not is_dist() and (rank(), world_size(), is_main_process()) == (1, 2, False)
    t = torch.ones(2)
    assert all_reduce_sum(t) is t and t.tolist() == [1, 1]  # no group: nothing to sum over
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)


def test_a_stray_rank_without_a_world_is_an_error(monkeypatch, tmp_path):
    """$RANK=1 left in the environment, no $WORLD_SIZE: rank 1 of a world of 1 wrote no checkpoint, no export and
    printed nothing, silently."""
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match=r"\$RANK is 1 but \$WORLD_SIZE is \(unset: 1\)"):
        tiny([CheckpointCB(tmp_path)]).fit(1)


def test_a_stray_rank_without_a_launch_is_warned_of_once_and_torchruns_rank_1_is_not(monkeypatch, tmp_path):
    """$RANK=1 and $WORLD_SIZE=2 left in the environment, no launch: a fit trained, printed nothing and wrote no
    checkpoint, while learn.last_checkpoint named one (probe C). An error for it refused scripts that join by
    tcp:// or file:// after reading their rank (probe T3): a warning, once. torchrun's rank 1 (MASTER_ADDR set) fits
    as before, DDPCB or not (a one-batch check: probe T2)."""
    from miniai import distributed
    monkeypatch.setattr(distributed, "_said_stray", False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    learn = tiny([CheckpointCB(tmp_path)])
    with pytest.warns(UserWarning, match=r"\$RANK is 1, with no process group and no \$MASTER_ADDR: .*prints and "
                                         r"writes nothing .*unset RANK and WORLD_SIZE") as record:
        learn.fit(2, cbs=[MetricsCB()])
    said = [w for w in record if "$RANK is 1" in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__, said  # (at the user's line: probe T4)
    _torchrun_env(monkeypatch, 1)
    monkeypatch.setattr(distributed, "_said_stray", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1, cbs=[SingleBatchCB()])
    assert not list(tmp_path.iterdir())  # (rank 1 writes nothing: rank 0 does)


@pytest.mark.parametrize("name", ["WORLD_SIZE", "RANK", "LOCAL_RANK"])
def test_a_torchrun_variable_that_is_no_number_is_named(monkeypatch, name):
    """WORLD_SIZE=two failed with int()'s "invalid literal for int() with base 10: 'two'", naming no variable."""
    monkeypatch.setenv(name, "two")
    with pytest.raises(ValueError, match=rf"\${name} is 'two', not a whole number"):
        {"WORLD_SIZE": world_size, "RANK": rank, "LOCAL_RANK": local_rank}[name]()


def tiny(cbs, bs=8):
    torch.manual_seed(0)
    x = torch.randn(20, 6)
    y = x.sum(1).gt(0).long()
    dls = DataLoaders(TensorLoader(x, y, bs, shuffle=True, seed=0), TensorLoader(x[:9].clone(), y[:9].clone(), bs))
    return TrainLearner(nn.Sequential(nn.Linear(6, 2)), dls, F.cross_entropy, lr=0.1, cbs=cbs)


def test_ddpcb_does_nothing_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    learn = tiny([DDPCB(), DeviceCB("cpu")])
    model = learn.model
    learn.fit(1)
    assert learn.model is model and isinstance(model, nn.Sequential) and len(learn.dls.train) == 3


def test_non_zero_rank_prints_nothing(monkeypatch, capsys):
    _torchrun_env(monkeypatch, 1)  # no process group: the helpers read torchrun's variables
    tiny([DeviceCB("cpu"), MetricsCB(accuracy=MulticlassAccuracy())]).fit(1)
    tiny([DeviceCB("cpu"), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB(mode="terminal")]).fit(1)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("env, cb, error, match", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, DDPCB(), RuntimeError, "not MASTER_ADDR, MASTER_PORT: launch with torchrun"),
    ({"WORLD_SIZE": "2"}, DDPCB(sync_bn=True), ValueError, "sync_bn=True needs CUDA"),
    ({"WORLD_SIZE": "2"}, DDPCB(backend="nccl"), ValueError, "backend='nccl' needs CUDA"),
])
def test_ddpcb_says_what_is_wrong_and_leaves_the_model(monkeypatch, env, cb, error, match):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    learn = tiny([cb, DeviceCB("cpu")])
    model = learn.model
    with pytest.raises(error, match=match):
        learn.fit(1)
    assert learn.model is model and not is_dist()


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be 'nccl'"):
        DDPCB(backend="mpi")


@pytest.mark.slow
def test_cli_under_torchrun_prints_and_writes_once(tmp_path):
    """`torchrun --nproc_per_node=2 -m miniai train --sched onecycle` on real Fashion-MNIST (a subset, on the CPU)."""
    run = run_with_timeout([*TORCHRUN, "-m", "miniai", "train", "--epochs", "1", "--sched", "onecycle", "--bs", "256",
                            "--n-train", "4096", "--n-valid", "1000", "--device", "cpu", "--out", str(tmp_path)],
                           timeout=150)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("validation accuracy:") == 1 and run.stdout.count("saved") == 2, run.stdout
    assert not any(k.startswith("module.") for k in torch.load(tmp_path / "model.pt"))
    assert {p.name for p in tmp_path.iterdir()} >= {"model.pt", "loss.png", "schedule.png"}


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL with 2 processes needs 2 GPUs")
def test_cli_on_two_gpus(tmp_path):
    """The same on 2 GPUs: NCCL, one GPU per process (cuda:LOCAL_RANK), the sums reduced on the GPU."""
    run = run_with_timeout([*TORCHRUN, "-m", "miniai", "train", "--epochs", "1", "--sched", "onecycle",
                            "--n-train", "8192", "--out", str(tmp_path)], timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("validation accuracy:") == 1
    assert not any(k.startswith("module.") for k in torch.load(tmp_path / "model.pt"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nccl_on_one_gpu_with_sync_bn(monkeypatch):
    """A 1-process NCCL group made here (DDPCB joins it, leaves it): DDP on cuda:0, SyncBatchNorm in and out."""
    import socket
    import torch.distributed as dist
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                        "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
    try:
        metrics = MetricsCB(accuracy=MulticlassAccuracy())
        learn = tiny([DDPCB(sync_bn=True), DeviceCB("cuda"), metrics])
        learn.model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        bn = learn.model[1]
        learn.fit(1)
        assert learn.model[1] is bn and type(bn) is nn.BatchNorm1d and bn.num_batches_tracked.item() == 3
        assert next(learn.model.parameters()).device == torch.device("cuda", 0) and dist.is_initialized()
        x, y = learn.dls.valid.x, learn.dls.valid.y
        with torch.no_grad():
            learn.model.eval()
            accuracy = (learn.model(x.cuda()).argmax(1).cpu() == y.cpu()).float().mean().item()
        assert metrics.last["valid_accuracy"] == pytest.approx(accuracy)
    finally:
        dist.destroy_process_group()


def _nan_on_rank_1(r: int, out: str) -> None:
    """A spawned rank of 2 (gloo on the CPU): fits whose training loss is NaN on rank 1 only, at global batch 0,
    with the guard checking each loss (the CPU's way) and at the pass end (the GPU's way). Writes nan{r}.json."""
    import torch.distributed as dist

    from miniai.callbacks.guards import TerminateOnNaNCB
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=r, world_size=2)
    seen = {}
    for way, guard in (("immediate", TerminateOnNaNCB()), ("deferred", TerminateOnNaNCB(immediate=False))):
        torch.manual_seed(0)
        x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
        x[5] = float("nan")  # global batch 0 is items 0..7: rank 1 gets items 4..7
        dls = DataLoaders(TensorLoader(x, y, bs=4), TensorLoader(x[:8].clone(), y[:8].clone(), bs=4))
        learn = TrainLearner(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)), dls, F.cross_entropy,
                             lr=0.1, cbs=[DDPCB(), guard], nan_guard=False)
        try:
            learn.fit(1)
            seen[way] = "no error"
        except Exception as e:  # noqa: BLE001 -- what each rank ended with is the test's result
            seen[way] = f"{type(e).__name__}: {e}"
    # then a fit on rank 0 alone, in the process group the DDP fits left: its guard must not wait for rank 1
    finite = DataLoaders(TensorLoader(x[8:], y[8:], bs=4), TensorLoader(x[8:], y[8:], bs=4))
    learn = TrainLearner(nn.Linear(5, 3), finite, F.cross_entropy, lr=0.1)
    if r == 0:
        learn.fit(1)
    dist.barrier()
    seen["alone"] = "done"
    Path(out, f"nan{r}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_a_nan_loss_on_one_rank_stops_every_rank_with_the_nan_error(tmp_path):
    """Rank 1 raised NonFiniteLossError while rank 0 waited in DDP's gradient all_reduce until rank 1's process
    exited (then a gloo 'Connection closed by peer'), or forever: the ranks now agree on the guard's check."""
    import multiprocessing
    import time
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_nan_on_rank_1, args=(r, str(tmp_path)), daemon=True) for r in range(2)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 90  # for both together: seconds of imports, then two tiny fits
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [proc for proc in procs if proc.is_alive()]
    for proc in hung:
        proc.kill()
    assert not hung, "a rank hung"
    for r in range(2):
        seen = json.loads((tmp_path / f"nan{r}.json").read_text())
        assert seen.pop("alone") == "done"  # (the guard agreed with the other ranks in a plain fit too: a hang)
        for way, result in seen.items():
            assert result.startswith("NonFiniteLossError: training loss is nan on rank 1 at epoch 0, batch 0"), \
                (r, way, result)


DEFERRED_WORKER = '''
import os, sys
import torch
torch.set_num_threads(1)
import torch.nn.functional as F
from torch import nn
from miniai.callbacks import DeviceCB
from miniai.callbacks.ddp import DDPCB
from miniai.callbacks.guards import TerminateOnNaNCB
from miniai.data import DataLoaders, TensorLoader
from miniai.distributed import rank
from miniai.learner import Callback, TrainLearner

class FailOnRank1(Callback):
    def after_backward(self, learn):
        if rank() == 1 and learn.epoch == 1 and learn.iter == 2:
            raise RuntimeError("boom on rank 1")

torch.manual_seed(0)
x = torch.randn(64, 6)
y = x.sum(1, keepdim=True)
dls = DataLoaders(TensorLoader(x, y, 4, shuffle=True, seed=1), TensorLoader(x, y, 4))
learn = TrainLearner(nn.Linear(6, 1), dls, F.mse_loss, lr=0.01,
                     cbs=[DDPCB(), DeviceCB("cpu"), TerminateOnNaNCB(immediate=False), FailOnRank1()])
learn.fit(2)
'''


def test_failure_on_one_rank_under_the_deferred_nan_guard_shows_the_error(tmp_path):
    """The NaN guard checks losses at the end of a pass on accelerators (immediate=False): a pass that failed on one
    rank still ran its agreement all_reduce there, while the other rank waited in DDP's gradient all_reduce: gloo
    aborted that rank with "collective mismatch" and the real error appeared nowhere (NCCL would hang)."""
    (tmp_path / "worker.py").write_text(textwrap.dedent(DEFERRED_WORKER))
    run = run_with_timeout([*TORCHRUN, str(tmp_path / "worker.py")], timeout=90)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "boom on rank 1" in out, out[-3000:]
    assert "collective mismatch" not in out and "doesn't match expected size" not in out, out[-3000:]


@pytest.mark.parametrize("call", ["get_preds", "tta", "interpretation"])
def test_predictions_on_a_presharded_validation_loader_are_refused_under_ddp(monkeypatch, call):
    """After a DDP fit with DDPCB(presharded=('valid',)), dls.valid holds this process's part: learn.get_preds(),
    tta and Interpretation.from_learner covered it alone, without a word. A whole loader given as dl= is taken."""
    from miniai.interpret import Interpretation
    monkeypatch.setenv("RANK", "0")  # no process group: world_size() reads torchrun's variables
    monkeypatch.setenv("WORLD_SIZE", "2")
    learn = tiny([DDPCB(presharded=("valid",)), DeviceCB("cpu")])
    run = {"get_preds": lambda **kw: learn.get_preds(**kw), "tta": lambda **kw: learn.tta(tfms=lambda x: x, **kw),
           "interpretation": lambda **kw: Interpretation.from_learner(learn, **kw)}[call]
    for dl in (None, learn.dls.valid):
        with pytest.raises(RuntimeError, match=r"presharded.*this process's part.*dl="):
            run(dl=dl)
    whole = TensorLoader(learn.dls.valid.x, learn.dls.valid.y, 8)
    run(dl=whole)
    monkeypatch.setenv("WORLD_SIZE", "1")
    run()  # one process: its part is the whole


def test_a_tensor_the_optimizer_trains_beside_the_model_is_refused_under_ddp(monkeypatch):
    """DDP averages the gradients of the model's parameters only: a temperature the optimizer trains beside the
    model took each rank's own gradient, and the ranks' copies drifted apart, without a word."""
    monkeypatch.setenv("RANK", "0")  # refused before the process group is joined: no collective
    monkeypatch.setenv("WORLD_SIZE", "2")
    temperature = torch.ones((), requires_grad=True)
    model = nn.Linear(2, 1)
    learn = TrainLearner(model, DataLoaders(TensorLoader(torch.randn(8, 2), torch.randn(8, 1), 4),
                                            TensorLoader(torch.randn(8, 2), torch.randn(8, 1), 4)),
                         lambda p, y: F.mse_loss(p * temperature, y), lr=0.1,
                         opt_func=lambda params, lr: torch.optim.SGD(list(params) + [temperature], lr=lr))
    with pytest.raises(ValueError, match=r"1 tensor of shape \(\) beside the model.*register_parameter"):
        learn.fit(1, cbs=[DDPCB()])
    assert learn.model is model and not is_dist()
