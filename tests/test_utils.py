"""to_device/to_cpu on nested batches, def_device, and set_seed reproducibility."""
import math
import random
from collections import OrderedDict, defaultdict, namedtuple

import numpy as np
import pytest
import torch

from miniai.utils import def_device, model_device, set_seed, to_cpu, to_device

Pair = namedtuple("Pair", ["x", "y"])


@pytest.fixture
def restore_determinism():
    """set_seed flips global torch flags; put them back so other tests are unaffected."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1], flags[2]


def test_def_device_is_a_usable_device_string():
    assert def_device in ("cuda", "mps", "cpu")
    assert torch.zeros(1, device=def_device).device.type == def_device


def test_to_device_moves_every_tensor_in_nested_containers_and_keeps_types():
    label = "keep me"
    batch = {"img": (torch.ones(2, 3), [torch.zeros(2), 7, label]), "pair": Pair(torch.ones(1), None),
             "od": OrderedDict(a=torch.ones(1))}
    moved = to_device(batch, "meta")  # 'meta' exists on every machine, so this proves a real move
    assert type(moved) is dict and type(moved["img"]) is tuple and type(moved["img"][1]) is list
    assert moved["img"][0].device.type == "meta" and moved["img"][0].shape == (2, 3)
    assert moved["img"][1][0].device.type == "meta"
    assert moved["img"][1][1] == 7 and moved["img"][1][2] is label
    assert isinstance(moved["pair"], Pair) and moved["pair"].x.device.type == "meta" and moved["pair"].y is None
    assert type(moved["od"]) is OrderedDict and moved["od"]["a"].device.type == "meta"
    assert batch["img"][0].device.type == "cpu", "the input is not modified in place"


def test_to_device_cpu_and_defaultdict():
    dd = defaultdict(list, a=torch.ones(2))
    out = to_device(dd, torch.device("cpu"))
    assert type(out) is defaultdict and out.default_factory is list and torch.equal(out["a"], torch.ones(2))
    assert to_device(3.5, "meta") == 3.5


def test_to_cpu_detaches_and_keeps_dtype():
    w = torch.ones(3, requires_grad=True)
    out = to_cpu([(w * 2).half(), {"k": w}, "label"])
    assert type(out[1]) is dict and not out[1]["k"].requires_grad and out[2] == "label"
    assert out[0].dtype == torch.float16 and not out[0].requires_grad and out[0].device.type == "cpu"
    assert torch.equal(out[0], torch.full((3,), 2.0, dtype=torch.float16))
    with pytest.raises(NotImplementedError):  # meta tensors have no data to copy: proves to_cpu really moves
        to_cpu(torch.ones(1, device="meta"))


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randn(2).tolist()


def test_set_seed_makes_python_numpy_and_torch_repeat(restore_determinism):
    set_seed(42)
    first = draws()
    set_seed(42)
    assert draws() == first
    set_seed(43)
    assert draws() != first


def test_set_seed_deterministic_flag_sets_and_clears_torch_switches(restore_determinism):
    set_seed(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    set_seed(0)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_cuda_round_trip_reads_back_the_values():
    """The non-blocking copy to the GPU and the blocking copy back must deliver every value."""
    x = {"a": [torch.arange(1_000_000, dtype=torch.float32)], "b": (torch.ones(3, dtype=torch.int64), "tag")}
    on_gpu = to_device(x, "cuda")
    assert on_gpu["a"][0].is_cuda and on_gpu["b"][0].is_cuda and on_gpu["b"][1] == "tag"
    back = to_cpu(to_device(to_device(x, "cuda"), "cpu"))
    assert torch.equal(back["a"][0], x["a"][0]) and torch.equal(back["b"][0], x["b"][0])


def test_model_device_is_the_first_parameters_device_or_the_cpu():
    assert model_device(torch.nn.Linear(1, 1).to("meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters


def test_map_tensors_keeps_dict_subclasses_and_maps_dataclasses():
    """dict.copy gave an attribute-dict back as a plain dict (a metric reading preds.logits then failed), and an
    OrderedDict subclass whose constructor takes arguments raised; a dataclass output kept its autograd graph."""
    import dataclasses
    from collections import OrderedDict

    from miniai.utils import map_tensors

    class AttrDict(dict):
        __getattr__ = dict.__getitem__

    class Needs(OrderedDict):
        def __init__(self, required, *args):
            super().__init__(*args)

    @dataclasses.dataclass
    class Output:
        logits: torch.Tensor
        n: int = 0
    w = torch.ones(2, requires_grad=True)
    got = map_tensors(AttrDict(logits=w * 2), torch.Tensor.detach)
    assert type(got) is AttrDict and not got.logits.requires_grad
    needs = map_tensors(Needs("x", {"a": w * 2}), torch.Tensor.detach)  # can't be copied: a plain dict, not a crash
    assert type(needs) is dict and torch.equal(needs["a"], w * 2) and not needs["a"].requires_grad
    out = map_tensors(Output(w * 2, 3), torch.Tensor.detach)
    assert type(out) is Output and not out.logits.requires_grad and out.n == 3


def test_a_directory_claim_refuses_another_thread_and_a_forked_child(tmp_path):
    """Claims counted per process let a second fit of another thread into a directory being written (both found it
    free), and a child forked during a run inherited the count, so its claim of the parent's directory passed."""
    import multiprocessing
    import threading

    from miniai.utils import DirInUseError, claim_dir
    release = claim_dir(tmp_path, "the run")
    outcome = []

    def other_thread():
        try:
            claim_dir(tmp_path, "the other run")()
            outcome.append("claimed")
        except DirInUseError as e:
            outcome.append(str(e))
    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert "in use by another run of this process (another thread)" in outcome[0]
    child = multiprocessing.get_context("fork").Process(target=claim_dir, args=(tmp_path, "the child's run"))
    child.start()
    child.join()
    assert child.exitcode != 0  # refused: DirInUseError
    again = claim_dir(tmp_path, "the run, within itself")  # this thread's own claim counts: the CLI's --out and
    again()  # its CheckpointCB
    assert (tmp_path / ".miniai-run").exists()
    release()
    assert not (tmp_path / ".miniai-run").exists()


def test_map_tensors_keeps_a_dataclass_fields_not_in_init_and_its_other_attributes():
    """dataclasses.replace reset an init=False field to its default and dropped attributes set outside the fields."""
    import dataclasses

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        extra: torch.Tensor | None = dataclasses.field(default=None, init=False)

    t = torch.ones(2, dtype=torch.float64)
    out = Out(t)
    out.extra, out.note = t * 5, "kept"
    moved = to_device(out, "cpu")
    assert torch.equal(moved.extra, t * 5) and moved.note == "kept" and moved is not out


def test_map_tensors_on_a_list_subclass_whose_constructor_takes_other_arguments():
    class Batch(list):
        def __init__(self, items, name):
            super().__init__(items)
            self.name = name

    moved = to_cpu(Batch([torch.ones(2, requires_grad=True)], "b"))
    assert type(moved) is Batch and moved.name == "b" and not moved[0].requires_grad


def test_check_count_takes_whole_numbers_from_its_least_and_refuses_bools():
    from miniai.checks import check_count
    assert check_count("bs", 3) == 3 and check_count("bs", np.int64(3)) == 3 and check_count("n", 0, least=0) == 0
    for bad in (True, 0, 2.5, "3", None, torch.tensor(3)):
        with pytest.raises(ValueError, match=r"bs must be a whole number >= 1 \(items\), got"):
            check_count("bs", bad, what=" (items)")


def test_check_number_takes_real_numbers_from_its_least_and_refuses_nan_and_bools():
    from miniai.checks import check_number
    assert check_number("lr", 0) == 0 and check_number("lr", np.float32(0.5)) == 0.5
    assert check_number("norm", math.inf, strict=True) == math.inf
    for bad, strict in ((math.nan, False), (True, False), (-1e-9, False), (0.0, True), ("1", False), (None, False)):
        with pytest.raises(ValueError, match=r"lr must be a number >=? 0 \(rate\), got"):
            check_number("lr", bad, strict=strict, what=" (rate)")


@pytest.mark.parametrize("make", ["GradAccumCB(True)", "SWACB(swa_start=True, swa_lr=0.01)",
                                  "ActivationStats(every=True)", "RandomCrop(True)", "RandomCrop(8, padding=True)"])
def test_a_bool_is_no_count_anywhere(make):
    """GradAccumCB(True) and SWACB(swa_start=True) were taken as 1: Python counts a bool as an int."""
    from miniai.augment import RandomCrop  # noqa: F401 (used by eval)
    from miniai.callbacks import SWACB, ActivationStats, GradAccumCB  # noqa: F401
    with pytest.raises(ValueError, match=r"must be a whole number >= \d.*, got True"):
        eval(make)


def test_tensors_in_finds_the_tensors_a_dataclass_holds_as_map_tensors_maps_them():
    """tensors_in skipped dataclasses (MetricsCB's flush by size and checkpoint checksums counted none there)."""
    import dataclasses
    from miniai.utils import map_tensors, tensors_in

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        extra: tuple

    out = Out(torch.ones(2), (torch.zeros(3), "name"))
    assert [t.shape for t in tensors_in(out)] == [(2,), (3,)]
    assert len(list(tensors_in(map_tensors(out, lambda t: t + 1)))) == 2



@pytest.mark.parametrize("seed", [42 + 2**32, -1, 2.5, True])
def test_set_seed_refuses_seeds_that_would_repeat_another_run(seed):
    """set_seed(42 + 2**32) gave bit-identical runs to set_seed(42): torch's CPU generator reads 32 bits."""
    with pytest.raises(ValueError, match=r"0..2\*\*32-1"):
        set_seed(seed)
    set_seed(2**32 - 1)


def test_set_seed_takes_numpy_integers():
    """set_seed(np.int64(3)) failed in Python's random.seed ("The only supported seed types are...")."""
    import numpy as np
    set_seed(np.int64(3))
    a = torch.rand(3)
    set_seed(3)
    assert torch.equal(a, torch.rand(3))
