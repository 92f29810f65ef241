"""miniai.idx, sources, cache, data: IDX files, finding and caching data, loaders (synthetic; real data is slow)."""
from __future__ import annotations

import ast
import gzip
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from miniai import cache, sources
from miniai.cache import CACHE_STATS, load_tensors
from miniai.data import DataLoaders, TensorLoader, collate_dict, get_dls
from miniai.idx import IDXError, read_idx, write_idx
from miniai.sources import CIFAR10_CLASSES, FASHION_CLASSES, DataNotFoundError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def fresh_caches(tmp_path, monkeypatch):
    """Every test gets an empty in-memory cache and its own disk cache dir."""
    monkeypatch.setenv("MINIAI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIAI_DATA", raising=False)
    cache.clear_cache()
    yield
    cache.clear_cache()


def fake_fashion(n_train=40, n_valid=12, seed=0):
    """Random Fashion-MNIST-shaped uint8 images [N,28,28] and labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n_train, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n_train,), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (n_valid, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n_valid,), generator=g, dtype=torch.uint8))


def write_fashion_dir(d: Path, tensors, gz=True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, t in zip(IDX_NAMES, tensors):
        write_idx(d / (name + (".gz" if gz else "")), t)
    return d


def save_dd(d: Path, splits: dict, x_col: str, names) -> Path:
    """Save a DatasetDict with the hub schema (Image() + ClassLabel) through the real `datasets` library."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    features = Features({x_col: Image(), "label": ClassLabel(names=list(names))})
    def to_pil(x):  # [C,H,W] uint8 -> PIL ("L" for one channel, "RGB" for three)
        return PIL.Image.fromarray(x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy())
    DatasetDict({k: Dataset.from_dict({x_col: [to_pil(x) for x in xs], "label": ys.tolist()}, features=features)
                 for k, (xs, ys) in splits.items()}).save_to_disk(str(d))
    return d


# ---------------------------------------------------------------- module boundaries

ROOT = Path(__file__).resolve().parents[1]
DATA_MODULES = ("idx", "sources", "cache", "data")


@pytest.mark.parametrize("module", DATA_MODULES)
def test_data_modules_import_neither_learner_nor_callbacks(module):
    """A plain torch loop can use the data modules: they import nothing from the training side."""
    tree = ast.parse((ROOT / "miniai" / f"{module}.py").read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m.lstrip(".").split(".")[0] in ("learner", "callbacks")
                or m.startswith(("miniai.learner", "miniai.callbacks"))}


def test_datasets_is_imported_only_when_needed():
    """`datasets` takes seconds to import: importing miniai and reading IDX files must not pay for it."""
    code = ("import sys, miniai; from miniai.sources import find_source; find_source('fashion_mnist'); "
            "print('datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------- IDX reader and writer

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("tensor", [torch.arange(2 * 3 * 5, dtype=torch.uint8).view(2, 3, 5),
                                    torch.tensor([7, 0, 255], dtype=torch.uint8),
                                    torch.tensor([[-5, 70000], [1, 2]], dtype=torch.int32),
                                    torch.tensor([1.5, -2.25], dtype=torch.float64)])
def test_idx_round_trip(tmp_path, suffix, tensor):
    path = tmp_path / f"t.idx{suffix}"
    write_idx(path, tensor)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_idx(path)
    assert back.dtype == tensor.dtype and torch.equal(back, tensor)


def test_idx_header_is_big_endian_magic_then_dims(tmp_path):
    write_idx(tmp_path / "a", torch.zeros(2, 3, dtype=torch.uint8))
    assert (tmp_path / "a").read_bytes()[:12] == bytes.fromhex("00000802" "00000002" "00000003")


def test_gzip_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "a.gz", torch.arange(6, dtype=torch.uint8))
    (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    assert torch.equal(read_idx(tmp_path / "plain-name"), torch.arange(6, dtype=torch.uint8))


def test_truncated_file_names_file_and_expected_size(tmp_path):
    path = tmp_path / "imgs-idx3-ubyte"
    write_idx(path, torch.zeros(3, 4, 5, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(IDXError, match=r"imgs-idx3-ubyte: header says 3x4x5 uint8 = 60 data bytes, found 50 \(truncated"):
        read_idx(path)


def test_header_dims_claiming_more_than_data(tmp_path):
    path = tmp_path / "liar"
    path.write_bytes(bytes.fromhex("00000801" "000003e8") + bytes(10))  # says 1000 items, holds 10
    with pytest.raises(IDXError, match="liar: header says 1000 uint8 = 1000 data bytes, found 10"):
        read_idx(path)


def test_trailing_bytes_are_an_error(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(bytes.fromhex("00000801" "00000002") + bytes(5))
    with pytest.raises(IDXError, match="long: header says 2 uint8 = 2 data bytes, found 5 \\(trailing bytes"):
        read_idx(path)


def test_wrong_magic_names_file(tmp_path):
    path = tmp_path / "notidx.gz"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(IDXError, match=r"notidx.gz: not an IDX file: expected magic 0x0000TTNN.*got 0x504b0304"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(IDXError, match="x-idx3-ubyte.gz: broken gzip stream"):
        read_idx(path)


def _read_bytes(blob: bytes):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "f").write_bytes(blob)
        try:
            return read_idx(Path(d) / "f")
        except IDXError as e:
            assert str(Path(d) / "f") in str(e)
            return e


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_give_our_error_or_a_consistent_array(blob):
    out = _read_bytes(blob)
    if isinstance(out, torch.Tensor):  # a rare valid IDX: its size must match the header exactly
        ndim = blob[3]
        assert tuple(out.shape) == tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
        assert 4 + 4 * ndim + out.numel() * out.element_size() == len(blob)


_VALID = torch.arange(60, dtype=torch.int16).view(3, 4, 5) * 300
_PLAIN = bytes.fromhex("00000B03" "00000003" "00000004" "00000005") + _VALID.numpy().astype(">i2").tobytes()
_GZ = gzip.compress(_PLAIN)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([_PLAIN, _GZ]), st.data())
def test_truncations_give_our_error_or_the_right_array(blob, draw):
    cut = draw.draw(st.integers(0, len(blob)))
    out = _read_bytes(blob[:cut])
    if cut == len(blob):
        assert isinstance(out, torch.Tensor) and torch.equal(out, _VALID)
    else:
        assert isinstance(out, IDXError)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(_GZ) - 1), st.integers(1, 255))
def test_corrupt_gzip_bytes_give_our_error_or_the_right_array(pos, flip):
    """gzip's CRC catches corrupt data, so a flipped byte can never yield a different array."""
    blob = bytearray(_GZ)
    blob[pos] ^= flip
    out = _read_bytes(bytes(blob))
    assert isinstance(out, IDXError) or torch.equal(out, _VALID)


# ---------------------------------------------------------------- TensorLoader

def loader(n=10, bs=4, **kwargs):
    """Items whose x row is 10*y, so pairing can be checked after shuffling."""
    y = torch.arange(n)
    return TensorLoader((y * 10).float().unsqueeze(1), y, bs, **kwargs)


def epoch_order(dl):
    ys = []
    for xb, yb in dl:
        assert torch.equal(xb[:, 0], (yb * 10).float())
        ys.append(yb)
    return torch.cat(ys)


def test_len_counts_batches_keeping_last_partial():
    assert len(loader(10, 4)) == 3 and [len(yb) for _, yb in loader(10, 4)] == [4, 4, 2]
    assert len(loader(10, 4, drop_last=True)) == 2 and [len(yb) for _, yb in loader(10, 4, drop_last=True)] == [4, 4]
    assert len(loader(8, 4)) == 2


def test_each_item_once_per_epoch_in_new_order():
    dl = loader(50, 8, shuffle=True, seed=1)
    first, second = epoch_order(dl), epoch_order(dl)
    assert torch.equal(first.sort().values, torch.arange(50)) and torch.equal(second.sort().values, torch.arange(50))
    assert not torch.equal(first, second)
    assert dl.epoch == 2


def test_unshuffled_loader_walks_in_order():
    assert torch.equal(epoch_order(loader(10, 3)), torch.arange(10))


def test_same_seed_same_order_and_documented_formula():
    a, b = loader(30, 7, shuffle=True, seed=5), loader(30, 7, shuffle=True, seed=5)
    assert [epoch_order(a).tolist() for _ in range(3)] == [epoch_order(b).tolist() for _ in range(3)]
    mixed = (5 * 0x9E3779B97F4A7C15 + 4) % 2**64  # the documented mix of seed 5 and epoch 4
    assert torch.equal(a.permutation(4), torch.randperm(30, generator=torch.Generator().manual_seed(mixed)))


def test_no_seed_draws_each_order_from_torch_global_rng_at_iter():
    """set_seed before a fit reproduces it: the same loader, or a fresh one, walks the order the global RNG gives."""
    dl = loader(50, 8, shuffle=True)
    torch.manual_seed(42)
    first = epoch_order(dl)
    torch.manual_seed(42)
    assert torch.equal(epoch_order(dl), first)
    torch.manual_seed(42)
    assert torch.equal(epoch_order(loader(50, 8, shuffle=True)), first)
    torch.manual_seed(43)
    assert not torch.equal(epoch_order(dl), first)
    assert dl.seed is None and dl.state_dict() == {"seed": None, "epoch": 3, "orders": 2, "shuffle": True, "drop_last": False}


def test_no_seed_order_is_the_same_in_a_new_process():
    code = ("import torch; from miniai.data import TensorLoader; torch.manual_seed(42); "
            "print([yb.tolist() for _, yb in TensorLoader(torch.zeros(50), torch.arange(50), 8, shuffle=True)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    torch.manual_seed(42)
    assert out.stdout.strip() == str([yb.tolist() for _, yb in loader(50, 8, shuffle=True)])


def test_no_seed_state_dict_round_trip_keeps_none():
    dl = loader(shuffle=True, seed=4)
    dl.load_state_dict({"seed": None, "epoch": 3})
    assert (dl.seed, dl.epoch) == (None, 3)
    with pytest.raises(ValueError, match="seed=None.*global RNG.*give the loader a seed"):
        dl.permutation(0)


def test_sharded_loader_without_seed_refuses_to_shuffle():
    """Each rank would draw its own order from its own RNG: overlapping items, silently."""
    dl = loader(10, 2, shuffle=True).shard(0, 2)
    with pytest.raises(ValueError, match="sharded over 2 processes but has seed=None.*set dl.seed"):
        iter(dl)


def test_set_epoch_replays_that_epochs_order():
    """With a seed, epoch e's order is a pure function of (seed, e): set_epoch(3) gives a fresh loader's 4th."""
    fresh = loader(30, 7, shuffle=True, seed=5)
    orders = [epoch_order(fresh) for _ in range(4)]
    dl = loader(30, 7, shuffle=True, seed=5)
    epoch_order(dl)
    dl.set_epoch(3)
    torch.manual_seed(0)  # the global RNG plays no part
    assert torch.equal(epoch_order(dl), orders[3]) and dl.epoch == 4


def test_state_dict_resumes_next_epoch_order():
    dl = loader(40, 6, shuffle=True, seed=11)
    epoch_order(dl), epoch_order(dl)
    state = dl.state_dict()
    assert state == {"seed": 11, "epoch": 2, "orders": 2, "shuffle": True, "drop_last": False}
    resumed = loader(40, 6, shuffle=True, seed=999)
    resumed.load_state_dict(state)
    assert epoch_order(resumed).tolist() == epoch_order(dl).tolist()


def test_shard_gives_disjoint_equal_slices_of_one_permutation():
    ranks = [loader(23, 4, shuffle=True, seed=2).shard(r, 3) for r in range(3)]
    assert [len(dl) for dl in ranks] == [2, 2, 2]  # 23 // 3 = 7 items each -> batches of 4 and 3
    orders = [epoch_order(dl) for dl in ranks]
    assert [len(o) for o in orders] == [7, 7, 7]
    assert len(set(torch.cat(orders).tolist())) == 21
    # global batch g (12 items) is the ranks' batch g side by side: batches [0:4|4:8|8:12], then [12:15|15:18|18:21]
    perm = ranks[0].permutation(0)
    assert torch.equal(torch.cat([o[:4] for o in orders] + [o[4:] for o in orders]), perm[:21])


def test_shard_unshuffled_and_bad_args():
    assert epoch_order(loader(10, 4).shard(1, 2)).tolist() == [4, 5, 6, 7, 9]  # batches [0:4|4:8], [8|9]
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        loader().shard(2, 2)


def test_to_returns_self_and_moves_data():
    dl = loader()
    assert dl.to("cpu") is dl and dl.x.device.type == "cpu" and len(dl.dataset) == 10 and dl.bs == 4
    dls = DataLoaders(dl, loader(6))
    assert dls.to("cpu") is dls


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_batches_on_device_without_host_sync():
    dl = loader(20, 8, shuffle=True, seed=0).to("cuda")
    xb, yb = next(iter(dl))
    assert xb.is_cuda and yb.is_cuda
    assert epoch_order(dl).sort().values.tolist() == list(range(20))
    cpu = loader(20, 8, shuffle=True, seed=0)
    cpu.set_epoch(2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the per-epoch permutation copy must not block the host
    try:
        batches = [yb for _, yb in dl]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(torch.cat(batches).cpu(), epoch_order(cpu))  # same order as on the CPU


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        TensorLoader(torch.zeros(3), torch.zeros(2))


# ---------------------------------------------------------------- get_dls on synthetic IDX files

def test_get_dls_from_path_shapes_dtypes_normalization(tmp_path):
    raw = fake_fashion()
    write_fashion_dir(tmp_path / "fm", raw)
    dls = get_dls(path=tmp_path / "fm", bs=16, seed=0)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (16, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert len(dls.train) == 3 and len(dls.valid) == 1 and dls.classes == list(FASHION_CLASSES)
    x = dls.train.x
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-4
    pix = raw[0].double() / 255
    expected = ((raw[2].double() / 255 - pix.mean()) / pix.std(unbiased=False)).float()
    assert torch.allclose(dls.valid.x[:, 0], expected, atol=1e-5)
    assert torch.equal(dls.valid.y, raw[3].long())


def test_env_var_and_plain_names_and_subsets(tmp_path, monkeypatch):
    raw = fake_fashion()
    monkeypatch.setenv("MINIAI_DATA", str(write_fashion_dir(tmp_path / "fm", raw, gz=False)))
    dls = get_dls(bs=8, n_train=20, n_valid=5)
    assert len(dls.train.x) == 20 and len(dls.valid.y) == 5
    assert torch.equal(dls.valid.y, raw[3][:5].long())
    with pytest.raises(ValueError, match="n_train must be in 1..40, got 41"):
        get_dls(n_train=41)


@pytest.mark.parametrize("kwargs, name", [({"holdout": 0.2}, "holdout"), ({"n_train": 0.5}, "n_train"),
                                          ({"n_valid": 5.0}, "n_valid"), ({"holdout": True}, "holdout"),
                                          ({"n_train": True}, "n_train"), ({"valid_bs": 0}, "valid_bs"),
                                          ({"valid_bs": 2.5}, "valid_bs")])
def test_get_dls_refuses_counts_that_are_not_whole_numbers(tmp_path, kwargs, name):
    """holdout=0.2 (a fraction, as sklearn takes it) ended in 'slice indices must be integers'; valid_bs=0 was
    silently replaced by bs; holdout=True held out one image."""
    d = write_fashion_dir(tmp_path / "fm", fake_fashion())
    with pytest.raises(ValueError, match=rf"{name} must be (an int|a whole number)"):
        get_dls(path=d, **kwargs)
    assert len(get_dls(path=d, n_train=np.int64(20), holdout=np.int32(4)).train.x) == 20  # numpy ints are fine


def test_second_get_dls_hits_memory_then_disk_cache(tmp_path, monkeypatch):
    write_fashion_dir(tmp_path / "fm", fake_fashion())
    before = dict(CACHE_STATS)
    a = get_dls(path=tmp_path / "fm")
    b = get_dls(path=tmp_path / "fm")
    assert CACHE_STATS["decodes"] == before["decodes"] + 1
    assert CACHE_STATS["memory_hits"] == before["memory_hits"] + 1
    assert torch.equal(b.train.x, a.train.x) and b.train.x.data_ptr() != a.train.x.data_ptr()  # a copy each
    cache.clear_cache()
    monkeypatch.setattr(sources, "read_idx", None)  # a disk hit must not read the IDX files at all
    c = get_dls(path=tmp_path / "fm")
    assert CACHE_STATS["disk_hits"] == before["disk_hits"] + 1 and torch.equal(c.valid.x, a.valid.x)


def test_a_disk_cache_written_by_another_decoding_is_decoded_again_and_replaced(tmp_path, monkeypatch):
    """(probe P25, session 23) The cache key held the files' stats alone: a cache an older miniai wrote (colour images
    turned gray, which this one refuses) was served by this one, skipping its checks. The key now holds the version
    of the decoding, which a change in what a cache would hold bumps."""
    write_fashion_dir(tmp_path / "fm", fake_fashion())
    get_dls(path=tmp_path / "fm")
    [old] = (tmp_path / "cache").glob("fashion_mnist_*.pt")
    cache.clear_cache()
    monkeypatch.setattr(sources, "DECODING", sources.DECODING + 1)
    decodes = CACHE_STATS["decodes"]
    get_dls(path=tmp_path / "fm")
    assert CACHE_STATS["decodes"] == decodes + 1
    assert len([f for f in (tmp_path / "cache").glob("fashion_mnist_*.pt") if f != old]) == 1  # written anew


def test_corrupt_disk_cache_is_rebuilt(tmp_path):
    write_fashion_dir(tmp_path / "fm", fake_fashion())
    get_dls(path=tmp_path / "fm")
    [cache_file] = (tmp_path / "cache").glob("fashion_mnist_*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    cache.clear_cache()
    decodes = CACHE_STATS["decodes"]
    get_dls(path=tmp_path / "fm")
    assert CACHE_STATS["decodes"] == decodes + 1
    assert cache._read_cache(cache_file) is not None and not list((tmp_path / "cache").glob(".*tmp"))


def test_editing_the_loaders_data_leaves_later_get_dls_and_load_tensors_alone(tmp_path):
    """get_dls handed out views of the in-memory cache: an occlusion or label-noise experiment changed every later
    get_dls() and load_tensors() of the process."""
    d = write_fashion_dir(tmp_path / "fm", fake_fashion())
    first = get_dls(path=d, bs=8)
    clean_x, clean_y = first.valid.x.clone(), first.valid.y.clone()
    first.valid.x[:, :, :14] = 0
    first.valid.y[:] = 0
    load_tensors(path=d).train_y[:5] = 9
    again = get_dls(path=d, bs=8)
    assert torch.equal(again.valid.x, clean_x) and torch.equal(again.valid.y, clean_y)
    assert torch.equal(load_tensors(path=d).train_y[:5], fake_fashion()[1][:5].long())


def test_a_corrupted_byte_in_the_disk_cache_is_caught_and_decoded_again(tmp_path):
    """torch's zip reader checks no data: a flipped pixel in the cache file was served until the sources changed."""
    from tests.synth import zip_record_start
    raw = fake_fashion()
    d = write_fashion_dir(tmp_path / "fm", raw)
    get_dls(path=d)
    [cache_file] = (tmp_path / "cache").glob("fashion_mnist_*.pt")
    data = bytearray(cache_file.read_bytes())
    # the first tensor record, train_x's pixels
    data[zip_record_start(cache_file, lambda i: "/data/" in i.filename) + 10] ^= 0xFF
    cache_file.write_bytes(bytes(data))
    cache.clear_cache()
    decodes = CACHE_STATS["decodes"]
    served = load_tensors(path=d)
    assert CACHE_STATS["decodes"] == decodes + 1 and torch.equal(served.train_x[:, 0], raw[0])


def test_a_damaged_class_name_in_the_disk_cache_is_caught_and_decoded_again(tmp_path):
    """(probe P19) The checksum covered the four tensors only: "Trouser" changed to "Trousfr" in the cache file was
    served as the loaders' classes (what infer and export name predictions with)."""
    raw = fake_fashion()
    d = write_fashion_dir(tmp_path / "fm", raw)
    classes = get_dls(path=d).classes
    [cache_file] = (tmp_path / "cache").glob("fashion_mnist_*.pt")
    state = torch.load(cache_file, weights_only=True)
    state["classes"][1] = "Trousfr"  # its digest kept, as a flipped byte would keep it
    torch.save(state, cache_file)
    cache.clear_cache()
    decodes = CACHE_STATS["decodes"]
    assert get_dls(path=d).classes == classes and CACHE_STATS["decodes"] == decodes + 1


def test_a_source_file_replaced_with_the_same_size_and_mtime_is_read_again(tmp_path):
    """cp -p, rsync -a or tar x keep the mtime: the cache, keyed by size and mtime, served the old labels."""
    d = write_fashion_dir(tmp_path / "fm", fake_fashion(), gz=False)
    labels = d / "t10k-labels-idx1-ubyte"
    get_dls(path=d)
    stat = labels.stat()
    new = (fake_fashion()[3] + 1) % 10
    labels.unlink()
    write_idx(labels, new)
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert labels.stat().st_size == stat.st_size and labels.stat().st_mtime_ns == stat.st_mtime_ns
    assert torch.equal(get_dls(path=d).valid.y, new.long())


def test_a_directory_with_both_a_gz_and_a_plain_file_is_refused(tmp_path):
    """With t10k-labels-idx1-ubyte.gz and t10k-labels-idx1-ubyte both there, the .gz was read without a word."""
    d = write_fashion_dir(tmp_path / "fm", fake_fashion())
    write_idx(d / "t10k-labels-idx1-ubyte", fake_fashion()[3])
    with pytest.raises(DataNotFoundError, match=r"both t10k-labels-idx1-ubyte.gz and t10k-labels-idx1-ubyte: remove"):
        get_dls(path=d)


def test_a_cache_dir_that_is_a_file_only_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIAI_CACHE", str(tmp_path / "afile"))
    (tmp_path / "afile").write_text("x")
    d = write_fashion_dir(tmp_path / "fm", fake_fashion())
    with pytest.warns(UserWarning, match="could not write the data cache") as record:
        assert len(get_dls(path=d, bs=8).train.x) == 40
    assert any("If the disk is full, free some space; else set MINIAI_CACHE" in str(w.message) for w in record)


def test_a_full_disk_while_the_cache_is_written_only_warns_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """torch's writer reports a full disk as RuntimeError('enforce fail at inline_container...'), which was not
    caught: get_dls crashed with it, and its half-written temporary file (55 MB for Fashion-MNIST) stayed, one more
    per failed run; temporaries of killed writers were never removed."""
    import os
    import time
    monkeypatch.setenv("MINIAI_CACHE", str(tmp_path / "cache"))
    d = write_fashion_dir(tmp_path / "fm", fake_fashion())
    (tmp_path / "cache").mkdir()
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1366")
    monkeypatch.setattr(cache.torch, "save", full)
    cache.clear_cache()
    with pytest.warns(UserWarning, match=r"could not write the data cache .*RuntimeError: \[enforce fail.*the data are "
                                         r"read without it"):
        assert len(get_dls(path=d, bs=8).train.x) == 40
    assert not list((tmp_path / "cache").glob(".*.tmp"))
    monkeypatch.setattr(cache.torch, "save", real_save)
    name = next((tmp_path / "cache").glob("*.pt"), None)
    assert name is None  # (nothing was written)
    cache.clear_cache()
    get_dls(path=d, bs=8)
    written = next((tmp_path / "cache").glob("*.pt"))
    old, fresh = (written.with_name(f".{written.name}.{pid}.1.tmp") for pid in (111, 222))
    notes = written.with_name(f".{written.name}.notes.tmp")  # (not a writer's: left alone)
    older = written.with_name(f".{written.name}.333.tmp")  # (an older miniai's writer: no thread in the name)
    for f, text in ((old, b"killed writer"), (fresh, b"a writer of now"), (notes, b"mine"), (older, b"killed")):
        f.write_bytes(text)
    for f in (old, notes, older):
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    written.unlink()
    cache.clear_cache()
    get_dls(path=d, bs=8)
    assert not old.exists() and not older.exists() and fresh.exists() and notes.exists()


def test_changed_source_file_invalidates_cache(tmp_path):
    d = write_fashion_dir(tmp_path / "fm", fake_fashion(seed=0))
    get_dls(path=d)
    new = fake_fashion(seed=1, n_valid=13)
    write_idx(d / "t10k-images-idx3-ubyte.gz", new[2])
    write_idx(d / "t10k-labels-idx1-ubyte.gz", new[3])
    assert torch.equal(load_tensors(path=d).valid_y, new[3].long())


def test_a_changed_source_keeps_two_cache_files_and_leaves_other_sources_files(tmp_path):
    """Every change of the source files wrote a new cache file and kept the old ones (55 MB each for Fashion-MNIST;
    300 rewrites left 300 files). The newest two stay (machines sharing a cache dir, each with its own copy of the
    data at one path, take turns); another source's file (another directory) stays; an older naming's go (files
    that hold what miniai writes: a user's file named so stays, test_data_trust)."""
    (tmp_path / "cache").mkdir()
    x, y = fake_fashion(seed=4)[:2]
    torch.save({"train_x": x[:, None], "train_y": y.long(), "valid_x": x[:, None], "valid_y": y.long(),
                "classes": list(FASHION_CLASSES), "source": "IDX files in /old"},
               tmp_path / "cache" / "fashion_mnist_0123456789abcdef.pt")
    other = write_fashion_dir(tmp_path / "other", fake_fashion(seed=5))
    load_tensors(path=other)
    d = write_fashion_dir(tmp_path / "fm", fake_fashion(seed=0))
    for seed in (1, 2, 3):
        load_tensors(path=d)
        write_fashion_dir(d, fake_fashion(seed=seed))
    cache.clear_cache()  # a new process: from the disk cache
    assert torch.equal(load_tensors(path=d).valid_y, fake_fashion(seed=3)[3].long())
    assert torch.equal(load_tensors(path=other).valid_y, fake_fashion(seed=5)[3].long())
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    assert not (tmp_path / "cache" / "fashion_mnist_0123456789abcdef.pt").exists()


def test_corrupt_source_raises_idx_error(tmp_path):
    d = write_fashion_dir(tmp_path / "fm", fake_fashion())
    f = d / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(IDXError, match="train-labels-idx1-ubyte.gz: broken gzip stream"):
        get_dls(path=d)


def test_missing_data_error_names_the_system_dir_the_hub_and_every_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system-dir")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataNotFoundError) as info:
        get_dls()
    msg = str(info.value)
    assert "MINIAI_DATA" in msg and "path=" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "no-system-dir") in msg
    assert "datasets.load_dataset('zalando-datasets/fashion_mnist')" in msg and "offline" in msg.lower()


@pytest.fixture
def system_dir(tmp_path, monkeypatch):
    """A usable system dir, so a test can show that an explicit directory never falls back to it."""
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", write_fashion_dir(tmp_path / "system", fake_fashion()))


LOOKED_FOR = (r"(?s)Looked there for the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
              r"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each \.gz or plain.*or a DatasetDict saved with "
              r"save_to_disk")


@pytest.mark.parametrize("make, why", [(lambda d: None, "it does not exist"),
                                       (lambda d: d.mkdir(), "it lacks train-images-idx3-ubyte"),
                                       (lambda d: d.write_text("x"), "it is not a directory")])
def test_explicit_path_without_data_is_an_error_not_a_fallback(tmp_path, system_dir, make, why):
    make(tmp_path / "typo")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not a warning and another source
        with pytest.raises(DataNotFoundError, match=re.escape(f"{tmp_path / 'typo'} (given as path=) holds no usable "
                                                              f"fashion_mnist data: {why}")) as info:
            get_dls(path=tmp_path / "typo")
    assert re.search(LOOKED_FOR, str(info.value))
    assert get_dls(bs=8).classes == list(FASHION_CLASSES)  # no path: the system dir


def test_explicit_path_missing_one_file_names_it(tmp_path, system_dir):
    d = write_fashion_dir(tmp_path / "fm", fake_fashion())
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"it lacks t10k-labels-idx1-ubyte\(\.gz\) and has no "
                                                r"dataset_dict.json"):
        get_dls(path=d)


def test_miniai_data_without_data_is_an_error_naming_the_variable(tmp_path, system_dir, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MINIAI_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError, match=re.escape(f"{tmp_path / 'empty'} (given as $MINIAI_DATA) holds no")):
        get_dls()


def test_cifar10_path_without_a_saved_datasetdict_is_an_error(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(DataNotFoundError, match=r"(?s)it has no dataset_dict.json.*Looked there for a DatasetDict "
                                                r"saved with save_to_disk"):
        get_dls("cifar10", path=tmp_path / "c")


# ---------------------------------------------------------------- the hub code path, on local copies

def test_saved_datasetdict_gives_same_tensors_as_idx(tmp_path):
    raw = fake_fashion(n_train=30, n_valid=10)
    idx = load_tensors(path=write_fashion_dir(tmp_path / "fm", raw))
    dd_dir = save_dd(tmp_path / "dd", {"train": (idx.train_x, idx.train_y), "test": (idx.valid_x, idx.valid_y)},
                     "image", FASHION_CLASSES)
    hub = load_tensors(path=dd_dir)
    for a, b in zip(hub[:4], idx[:4]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert hub.classes == FASHION_CLASSES and "saved DatasetDict" in hub.source
    assert get_dls(path=dd_dir, bs=8).train.x.shape == (30, 1, 28, 28)


@pytest.mark.parametrize("mode", ["P", "LA", "RGB"])
def test_a_saved_datasetdict_of_other_colour_modes_gives_the_gray_levels_infer_sees(tmp_path, mode):
    """Palette images were decoded as their palette indices (123 gray levels off on average, while infer converts
    the same image to gray): training and inference saw different pixels. LA and RGB gave 2 or 3 channels."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    gray = fake_fashion(n_train=6, n_valid=1)[0]
    imgs = [PIL.Image.fromarray(x.numpy()).convert("RGB") for x in gray]
    imgs = [im.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=256) if mode == "P" else im.convert(mode)
            for im in imgs]
    features = Features({"image": Image(), "label": ClassLabel(names=list(FASHION_CLASSES))})
    DatasetDict({k: Dataset.from_dict({"image": imgs, "label": [0] * 6}, features=features)
                 for k in ("train", "test")}).save_to_disk(str(tmp_path / "dd"))
    x = load_tensors(path=tmp_path / "dd").train_x
    assert x.shape == (6, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.stack([torch.from_numpy(np.array(im.convert("L"))) for im in imgs]))


def test_a_saved_datasetdict_of_colour_images_is_refused_not_turned_gray(tmp_path):
    """(probe P5, session 22) A DatasetDict of RGB images (their channels differ) was decoded as gray and trained on
    with exit status 0, where the README said data of more than one channel stops `python -m miniai train`."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    gray = fake_fashion(n_train=6, n_valid=1)[0]
    imgs = [PIL.Image.fromarray(x.numpy()).convert("RGB") for x in gray]  # gray in RGB: R = G = B
    imgs[4] = PIL.Image.merge("RGB", (imgs[4].getchannel(0), imgs[4].getchannel(0).point(lambda v: 255 - v),
                                      imgs[4].getchannel(0)))
    features = Features({"image": Image(), "label": ClassLabel(names=list(FASHION_CLASSES))})
    DatasetDict({k: Dataset.from_dict({"image": imgs, "label": [0] * 6}, features=features)
                 for k in ("train", "test")}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"split 'train': column 'image' holds colour images \(row 4: its red, green "
                                         r"and blue differ\).*read as gray.*im.convert\('L'\)"):
        load_tensors(path=tmp_path / "dd")


def test_a_saved_validation_split_without_labels_is_named_with_its_folder_and_split(tmp_path):
    """(probe P19) A validation split of images alone: a bare KeyError "dataset needs columns 'image' and 'label'
    ... rename yours as those", naming neither the folder nor the split, and advising a rename of nothing."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    imgs = [PIL.Image.fromarray(x.numpy()) for x in fake_fashion(n_train=4, n_valid=1)[0]]
    labelled = Features({"image": Image(), "label": ClassLabel(names=list(FASHION_CLASSES))})
    DatasetDict({"train": Dataset.from_dict({"image": imgs, "label": [0, 1, 2, 3]}, features=labelled),
                 "validation": Dataset.from_dict({"image": imgs}, features=Features({"image": Image()}))}
                ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(KeyError) as info:
        get_dls(path=tmp_path / "dd")
    message = str(info.value)
    assert f"{tmp_path / 'dd'}: split 'validation'" in message and "has no 'label' column" in message
    assert "rename" not in message and "train_test_split" in message


def test_a_saved_datasetdict_whose_splits_name_the_classes_differently_is_refused(tmp_path):
    """Class names came from the train split alone: a validation split listing them in another order had every
    label read as the wrong class."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    imgs = [PIL.Image.fromarray(x.numpy()) for x in fake_fashion(n_train=4, n_valid=1)[0]]
    def split(names): return Dataset.from_dict({"image": imgs, "label": [0, 1, 0, 1]},
                                               features=Features({"image": Image(), "label": ClassLabel(names=names)}))
    DatasetDict({"train": split(["cat", "dog"]), "test": split(["dog", "cat"])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"'test'.*\['dog', 'cat'\].*'train'.*\['cat', 'dog'\]"):
        load_tensors(path=tmp_path / "dd")


def test_cifar10_from_saved_datasetdict(tmp_path):
    g = torch.Generator().manual_seed(0)
    def split(n): return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                          torch.randint(0, 10, (n,), generator=g))
    train, test = split(12), split(6)
    d = save_dd(tmp_path / "cifar", {"train": train, "test": test}, "img", CIFAR10_CLASSES)
    dls = get_dls("cifar10", bs=4, path=d)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.equal(load_tensors("cifar10", path=d).train_x, train[0]) and dls.classes == list(CIFAR10_CLASSES)
    channel_means = dls.train.x.mean(dim=(0, 2, 3))
    assert torch.allclose(channel_means, torch.zeros(3), atol=1e-4)


def test_from_dd_course_adapter():
    from datasets import Dataset, DatasetDict
    ds = lambda n: Dataset.from_dict({"x": [[float(i)] * 3 for i in range(n)], "label": list(range(n))})
    dls = DataLoaders.from_dd(DatasetDict({"train": ds(10), "test": ds(6)}).with_format("torch"), 4)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (4, 3) and yb.shape == (4,) and torch.equal(xb[:, 0], yb.float())
    assert len(next(iter(dls.valid))[0]) == 6 and len(dls.train) == 3


@pytest.mark.parametrize("splits, valid", [(("dev", "train"), "dev"), (("train", "test", "validation"), "validation"),
                                           (("valid", "train", "extra"), "valid"),
                                           (("train", "val", "test"), "val"), (("train", "dev", "test"), "dev"),
                                           (("test", "train", "dev"), "dev")])
def test_from_dd_picks_splits_by_name(splits, valid):
    """Split order means nothing: train is 'train', validation the first of validation, valid, val, dev, test
    (train/val/test was validated on test, the user's val split ignored; so was train/dev/test, its dev split)."""
    from datasets import Dataset, DatasetDict
    sizes = {name: 4 + i for i, name in enumerate(splits)}  # each split's size tells which one a loader walks
    dd = DatasetDict({name: Dataset.from_dict({"x": [[0.0]] * n, "label": [0] * n}) for name, n in sizes.items()})
    dls = DataLoaders.from_dd(dd.with_format("torch"), 2)
    assert len(dls.train.dataset) == sizes["train"] and len(dls.valid.dataset) == sizes[valid]


def test_get_dls_on_a_saved_datasetdict_validates_on_its_validation_split_as_from_dd_does(tmp_path):
    """get_dls took 'test' before 'validation', so a DatasetDict with both was validated on its test set."""
    raw = fake_fashion(n_train=12, n_valid=9)
    splits = {"train": (raw[0][:, None], raw[1]), "validation": (raw[2][:5, None], raw[3][:5]),
              "test": (raw[2][5:, None], raw[3][5:])}
    d = save_dd(tmp_path / "dd", splits, "image", FASHION_CLASSES)
    assert torch.equal(get_dls(path=d, bs=4).valid.y, raw[3][:5].long())
    splits["dev"] = splits.pop("validation")  # a dev split is the validation split too, never the test split
    assert torch.equal(get_dls(path=save_dd(tmp_path / "dev", splits, "image", FASHION_CLASSES), bs=4).valid.y,
                       raw[3][:5].long())


def test_from_dd_drop_last_drops_only_training_items():
    """drop_last=True (for BatchNorm's sake) was passed to the validation loader too: 3 of 7 items unscored."""
    from datasets import Dataset, DatasetDict
    dd = DatasetDict({name: Dataset.from_dict({"x": [[float(i)] for i in range(n)], "label": [0] * n})
                      for name, n in (("train", 10), ("validation", 7))}).with_format("torch")
    dls = DataLoaders.from_dd(dd, 2, drop_last=True)
    assert sum(len(xb) for xb, _ in dls.valid) == 7 and sum(len(xb) for xb, _ in dls.train) == 10
    assert len(dls.train) == 5 and DataLoaders.from_dd(dd, 4, drop_last=True).train.drop_last


def test_from_dd_batches_hold_the_feature_columns_in_features_order_as_collate_dict():
    """A transform returning {'label', 'image'} gave (labels, images) batches, and one adding a column gave 3 items;
    the course's from_dd (and our collate_dict) take the dataset's features, in their order."""
    from datasets import Dataset, DatasetDict
    dd = DatasetDict({name: Dataset.from_dict({"x": [[float(i)] * 3 for i in range(8)], "label": list(range(8))})
                      for name in ("train", "test")})
    relabelled = dd.with_transform(lambda b: {"label": b["label"], "x": torch.tensor(b["x"]), "idx": b["label"]})
    xb, yb = next(iter(DataLoaders.from_dd(relabelled, 4).valid))
    assert xb.shape == (8, 3) and yb.shape == (8,) and torch.equal(xb[:, 0], yb.float())


def test_from_dd_keeps_the_columns_a_transform_renamed():
    """Keeping only features' columns dropped the inputs when a transform renamed image to pixel_values."""
    from datasets import Dataset, DatasetDict
    dd = DatasetDict({name: Dataset.from_dict({"x": [[float(i)] * 3 for i in range(8)], "label": list(range(8))})
                      for name in ("train", "test")})
    renamed = dd.with_transform(lambda b: {"pixel_values": torch.tensor(b["x"]), "label": b["label"]})
    xb, yb = next(iter(DataLoaders.from_dd(renamed, 4).valid))
    assert xb.shape == (8, 3) and torch.equal(xb[:, 0], yb.float())


@pytest.mark.parametrize("splits, missing", [(("train",), "no validation split"),
                                             (("test", "dev"), "no 'train' split")])
def test_from_dd_without_train_or_validation_split_is_an_error(splits, missing):
    from datasets import Dataset, DatasetDict
    dd = DatasetDict({name: Dataset.from_dict({"x": [[0.0]] * 3, "label": [0] * 3}) for name in splits})
    found = re.escape(f"found {list(splits)}")
    with pytest.raises(ValueError, match=rf"{missing}.*{found}.*'validation', 'valid', 'val', 'dev', 'test'"):
        DataLoaders.from_dd(dd, 2)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of"):
        get_dls("mnist")


# ---------------------------------------------------------------- the real Fashion-MNIST (fails, not skips, if absent)

@pytest.mark.slow
def test_real_fashion_mnist_counts_and_pixel_mean():
    raw = load_tensors()
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.valid_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(raw.train_y).tolist() == [6000] * 10
    assert raw.train_x.double().mean().item() / 255 == pytest.approx(0.286, abs=1e-3)


@pytest.mark.slow
def test_real_get_dls_shapes_normalization_and_cache():
    memory_hits = CACHE_STATS["memory_hits"]
    dls = get_dls()
    xb, yb = next(iter(dls.train))
    assert xb.shape == (1024, 1, 28, 28) and xb.dtype == torch.float32
    assert yb.shape == (1024,) and yb.dtype == torch.int64
    assert len(dls.train) == 59 and len(dls.valid) == 10
    assert dls.train.x.mean().item() == pytest.approx(0, abs=1e-3)
    assert dls.train.x.std().item() == pytest.approx(1, abs=1e-3)
    get_dls()
    assert CACHE_STATS["memory_hits"] == memory_hits + 1


@pytest.mark.slow
def test_real_subset_through_datasets_matches_idx(tmp_path):
    idx = load_tensors()
    d = save_dd(tmp_path / "dd", {"train": (idx.train_x[:500], idx.train_y[:500]),
                                  "test": (idx.valid_x[:200], idx.valid_y[:200])}, "image", FASHION_CLASSES)
    hub = load_tensors(path=d)
    assert torch.equal(hub.train_x, idx.train_x[:500]) and torch.equal(hub.train_y, idx.train_y[:500])
    assert torch.equal(hub.valid_x, idx.valid_x[:200]) and torch.equal(hub.valid_y, idx.valid_y[:200])


def test_load_dataset_on_local_hub_layout_gives_same_tensors(tmp_path):
    """The hub call itself, datasets.load_dataset, on a local dir of parquet files with the hub schema."""
    from datasets import load_from_disk
    raw = fake_fashion(n_train=20, n_valid=8)
    idx = load_tensors(path=write_fashion_dir(tmp_path / "fm", raw))
    dd = load_from_disk(str(save_dd(tmp_path / "dd", {"train": (idx.train_x, idx.train_y),
                                                      "test": (idx.valid_x, idx.valid_y)}, "image", FASHION_CLASSES)))
    (tmp_path / "hub").mkdir()
    for split in ("train", "test"):
        dd[split].to_parquet(str(tmp_path / "hub" / f"{split}.parquet"))
    loaded = sources.load_hub_dataset(tmp_path / "hub", cache_dir=str(tmp_path / "hf-cache"))
    assert loaded["train"].features["label"].names == list(FASHION_CLASSES)
    x, y = sources.hf_to_tensors(loaded["test"])
    assert torch.equal(x, idx.valid_x) and torch.equal(y, idx.valid_y)


def test_idx_labels_outside_the_classes_are_refused_naming_the_file(tmp_path):
    """A label 10 of Fashion-MNIST's 10 classes loaded without a word; the fit then ended in a bare 'Target 10 is
    out of bounds' (on a GPU, a device-side assert), naming no file."""
    train_x, train_y, valid_x, valid_y = fake_fashion()
    valid_y[3] = 10
    d = write_fashion_dir(tmp_path / "fm", (train_x, train_y, valid_x, valid_y))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz holds labels \[10\] outside 0..9"):
        load_tensors(path=d)


def test_datasetdict_labels_outside_the_classes_are_refused_naming_the_split(tmp_path):
    """datasets' ClassLabel takes -1 for 'no label': such items were trained on as a class, until the loss failed."""
    train_x, train_y, valid_x, valid_y = fake_fashion()
    train_y = train_y.long()
    train_y[0] = -1
    d = save_dd(tmp_path / "dd", {"train": (train_x[:, None], train_y), "test": (valid_x[:, None], valid_y)},
                "image", FASHION_CLASSES)
    with pytest.raises(ValueError, match=r"split 'train' .*holds labels \[-1\] outside 0..9"):
        load_tensors(path=d)
    # (probe P19) the advice keeps only labels of a class: item['label'] >= 0 alone would keep a label too high
    from datasets import Dataset, DatasetDict
    ds = Dataset.from_dict({"image": [np.zeros((2, 2), np.uint8)] * 3, "label": [3, 10, -1]})
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(ValueError, match=r"holds labels \[-1\] outside 0..10.*0 <= item\['label'\] < 11"):
        load_tensors(path=tmp_path / "ints")


def test_a_saved_datasetdict_of_plain_integer_labels_names_its_classes_by_number(tmp_path):
    """(probe P44) Labels of plain ints (from a CSV or parquet, no ClassLabel) were named as Fashion-MNIST's ten
    classes: a 3-class digits set's dls.classes said 'T-shirt/top', ..., which infer and export use."""
    from datasets import Dataset, DatasetDict
    ds = Dataset.from_dict({"image": [np.full((4, 4), i * 40, np.uint8) for i in range(6)], "label": [0, 1, 2] * 2})
    DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(tmp_path / "digits"))
    assert get_dls(path=tmp_path / "digits", bs=2).classes == ["0", "1", "2"]


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_hf_images_wider_than_8_bits_are_refused_not_clipped(mode):
    """16-bit or float images in an Image() column were converted to "L" by PIL, which clips: two gray levels
    left (0 and 255), normalized and trained on without a word (infer refuses such images for that reason)."""
    import PIL.Image
    from datasets import Dataset, Features, Image, Value
    pixels = torch.randint(0, 256, (4, 6, 6), dtype=torch.uint8).numpy()
    image = {"I;16": lambda a: PIL.Image.fromarray(a.astype(np.uint16) * 257),
             "F": lambda a: PIL.Image.fromarray(a.astype(np.float32) / 255)}[mode]
    ds = Dataset.from_dict({"image": [image(a) for a in pixels], "label": [0, 1, 2, 3]},
                           features=Features({"image": Image(), "label": Value("int64")}))
    with pytest.raises(ValueError, match=rf"column 'image' holds images of mode {re.escape(mode)}.*not 8-bit.*clip"):
        sources.hf_to_tensors(ds, mode="L")


def test_hf_32_bit_images_of_8_bit_pixels_are_told_to_be_cast_not_divided():
    """(probe P44) int64 arrays of 0-255 given to an Image() column are stored as 32-bit images (mode I): the
    refusal advised 16-bit pixels // 257, which makes every image black."""
    from datasets import Dataset, Features, Image, Value
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 6))
    ds = Dataset.from_dict({"image": list(pixels), "label": [0, 1, 2, 3]},
                           features=Features({"image": Image(), "label": Value("int64")}))
    with pytest.raises(ValueError, match=r"mode I.*pixels all lie in 0..255.*np.asarray\(a, dtype=np.uint8\)") as e:
        sources.hf_to_tensors(ds, mode="L")
    assert "// 257" not in str(e.value)
    # (regression round T1) judged from the first 256 images, 16-bit ones after them were told to be cast (wrapped)
    wide = list(np.random.default_rng(0).integers(0, 256, (257, 2, 2)))
    wide[-1] = wide[-1] * 257
    ds = Dataset.from_dict({"image": wide, "label": [0] * 257},
                           features=Features({"image": Image(), "label": Value("int64")}))
    with pytest.raises(ValueError, match=r"// 257") as e:
        sources.hf_to_tensors(ds, mode="L")
    assert "lie in 0..255" not in str(e.value)


@pytest.mark.parametrize("kind", ["Array2D", "Sequence"])
def test_hf_uint8_array_columns_are_read_as_the_pixels_they_declare(kind):
    """datasets' numpy formatting widens uint8 arrays to int64, and the column was refused as 'array int64' though
    it is declared uint8: a DatasetDict made from tensors (Dataset.from_dict) could not be used."""
    from datasets import Array2D, Dataset, Features, Sequence, Value
    pixels = torch.randint(0, 256, (4, 6, 6), dtype=torch.uint8)
    feature = Array2D((6, 6), "uint8") if kind == "Array2D" else Sequence(Sequence(Value("uint8")))
    ds = Dataset.from_dict({"image": pixels.numpy(), "label": [0, 1, 2, 3]},
                           features=Features({"image": feature, "label": Value("int64")}))
    x, y = sources.hf_to_tensors(ds, mode="L")
    assert x.dtype == torch.uint8 and torch.equal(x, pixels[:, None]) and y.tolist() == [0, 1, 2, 3]


def test_hf_images_stored_by_a_path_datasets_opens_are_read(tmp_path):
    """An Image() column stored by path, here inside a zip archive (datasets opens such paths, as it does URLs):
    the mode check handed the path to PIL, which can't open it, where decoding had worked."""
    import zipfile

    import PIL.Image
    from datasets import Dataset, Image
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    PIL.Image.fromarray(pixels).save(tmp_path / "0.png")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        archive.write(tmp_path / "0.png", "0.png")
    url = f"zip://0.png::{tmp_path / 'images.zip'}"
    ds = Dataset.from_dict({"image": [url] * 2, "label": [0, 1]}).cast_column("image", Image())
    x, _ = sources.hf_to_tensors(ds, mode="L")
    assert torch.equal(x[1, 0], torch.from_numpy(pixels))


def test_the_declared_pixel_type_is_read_through_lists_of_older_datasets_too():
    """datasets < 4 (which pyproject allows) gives its Sequence a dtype of its own, 'list': the walk to the items'
    type stopped there, so uint8 list columns were still refused as int64 on those versions."""
    import dataclasses
    import typing

    from datasets import Value

    @dataclasses.dataclass
    class Sequence:  # as datasets 2.x and 3.x define it
        feature: typing.Any
        dtype: typing.ClassVar[str] = "list"
    assert sources._declared_dtype(Sequence(Sequence(Value("uint8")))) == "uint8"


@pytest.mark.slow
def test_holdout_validates_on_training_images_never_the_test_set():
    """For choosing a recipe honestly: the held-out images come from the training set, the same every time, and
    are not trained on."""
    from miniai.cache import load_normalized
    from miniai.data import get_dls
    raw, _ = load_normalized()
    dls = get_dls(holdout=10_000)
    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(0))
    held, kept = order[:10_000].sort().values, order[10_000:].sort().values
    # normalized by the 50,000 images trained on (the held-out ones shaped it before: 0.28604 against 0.28579)
    pixels = raw.train_x[kept].double() / 255
    mean, std = pixels.mean(), pixels.std(correction=0)
    assert dls.normalize.mean.item() == pytest.approx(mean.item(), abs=1e-7)
    assert dls.normalize.std.item() == pytest.approx(std.item(), abs=1e-7)
    assert torch.allclose(dls.valid.x, ((raw.train_x[held] / 255 - mean) / std).float(), atol=1e-5)
    assert torch.equal(dls.valid.y, raw.train_y[held]) and torch.equal(dls.train.y, raw.train_y[kept])
    assert torch.allclose(dls.train.x, ((raw.train_x[kept] / 255 - mean) / std).float(), atol=1e-5)
    assert torch.equal(get_dls(holdout=10_000).valid.y, dls.valid.y)  # the same split every time
    assert not torch.equal(get_dls(holdout=10_000, holdout_seed=1).valid.y, dls.valid.y)
    with pytest.raises(ValueError, match="holdout must be in 1..59999"):
        get_dls(holdout=60_000)


@pytest.mark.parametrize("bs", [2.5, "64", True, 0])
def test_tensor_loader_refuses_a_batch_size_that_is_not_a_positive_int(bs):
    """A float bs ended in torch's "'float' object cannot be interpreted as an integer", naming nothing."""
    with pytest.raises(ValueError, match=r"bs must be a whole number >= 1 \(items per batch\), got"):
        TensorLoader(torch.zeros(4, 2), torch.zeros(4), bs=bs)


def test_tensor_loader_takes_a_numpy_int_batch_size():
    loader = TensorLoader(torch.zeros(5, 2), torch.zeros(5), bs=np.int64(2))
    assert [len(xb) for xb, _ in loader] == [2, 2, 1]


def test_modifying_an_unshuffled_batch_in_place_leaves_the_loaders_data_as_it_was():
    """Unshuffled batches were views of the loader's tensors, which get_dls shares through its in-memory cache:
    an in-place transform on validation batches (the course's RandErase is one) changed the validation set for
    every later epoch and every later get_dls() in the process, without a word."""
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    loader = TensorLoader(x, y, bs=4)
    for xb, yb in loader:
        xb.zero_()
        yb.zero_()
    assert torch.equal(loader.x, torch.arange(10.0).view(10, 1)) and torch.equal(loader.y, torch.arange(10))
    assert torch.equal(torch.cat([xb for xb, _ in loader]), torch.arange(10.0).view(10, 1))


def test_from_dd_loaders_can_be_pickled_for_spawned_workers_and_put_the_label_last():
    """The collate functions were closures, which workers started by spawn (macOS, Windows; forkserver on Linux
    from Python 3.14) can't pickle. And the Hugging Face docs' transform (add pixel_values, del image) made batches
    (label, pixel_values): the model was fed the labels. shuffle=False given to from_dd clashed with its own."""
    import pickle

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    import PIL.Image
    imgs = [PIL.Image.fromarray(x.numpy()) for x in fake_fashion(n_train=6, n_valid=1)[0]]
    feats = Features({"image": Image(), "label": ClassLabel(names=list(FASHION_CLASSES))})
    ds = Dataset.from_dict({"image": imgs, "label": [i % 10 for i in range(6)]}, features=feats)

    def transforms(examples):
        examples["pixel_values"] = [torch.from_numpy(np.array(im, dtype=np.float32) / 255)[None]
                                    for im in examples["image"]]
        del examples["image"]
        return examples
    dls = DataLoaders.from_dd(DatasetDict({"train": ds, "test": ds}).with_transform(transforms), 3, shuffle=False)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (3, 1, 28, 28) and torch.equal(yb, torch.tensor([0, 1, 2]))  # in order: shuffle=False
    pickle.dumps(dls.train.collate_fn)
    pickle.dumps(collate_dict(ds))


def test_an_empty_split_is_named_in_the_error(tmp_path):
    """An IDX test split of 0 images failed inside the cache's checksum (RuntimeError: self.stride(-1) must be 1 to
    view Long as Byte), a saved DatasetDict's with IndexError: list index out of range; neither named the split."""
    raw = list(fake_fashion())
    raw[2], raw[3] = torch.zeros(0, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8)
    d = write_fashion_dir(tmp_path / "fm", raw)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz holds no images.*validation"):
        get_dls(path=d)
    x, y = fake_fashion(n_train=4, n_valid=1)[:2]
    dd = save_dd(tmp_path / "dd", {"train": (x[:, None], y), "test": (x[:0, None], y[:0])}, "image", FASHION_CLASSES)
    with pytest.raises(ValueError, match=r"split 'test'.*no images"):
        get_dls(path=dd)


def test_a_count_too_large_after_holdout_says_what_holdout_took(tmp_path):
    """holdout=39 of 40 images, n_train=5 said 'n_train must be in 1..1, got 5', without why there was one image."""
    d = write_fashion_dir(tmp_path / "fm", fake_fashion(), gz=False)
    with pytest.raises(ValueError, match=r"^n_train must be in 1..1, got 5: holdout=39 took the other 39 of the 40 "
                                         "training images"):
        get_dls(path=d, holdout=39, n_train=5)
    with pytest.raises(ValueError, match=r"^n_valid must be in 1..4, got 5: with holdout=4 the validation images are "
                                         "the 4 held out"):
        get_dls(path=d, holdout=4, n_valid=5)


# ---------------------------------------------------------------- TensorLoader's arguments and seeds

def test_neighbouring_seeds_walk_unrelated_orders():
    """Epoch e was seeded seed + e, so seed=1 walked seed=0's orders one epoch later: a seed sweep shared its data
    orders (4 of 5 epochs of a 5-epoch run)."""
    x, y = torch.zeros(50, 1), torch.arange(50)

    def order(seed, epoch):
        dl = TensorLoader(x, y, bs=50, shuffle=True, seed=seed)
        dl.set_epoch(epoch)
        return next(iter(dl))[1]
    orders = [order(s, e) for s in range(3) for e in range(4)]
    assert all(not torch.equal(a, b) for i, a in enumerate(orders) for b in orders[i + 1:])
    assert torch.equal(order(7, 2), order(7, 2))


@pytest.mark.parametrize("seed", [2**32 - 1, 0, 12345])
def test_a_seed_of_torchs_range_walks_every_epoch(seed):
    """seed + epoch overflowed torch's seed range: epoch 0 trained, epoch 1 failed (Overflow when unpacking). Seeds
    outside 0..2**32-1 are refused (test_data_trust), as torch reads 32 bits of one."""
    dl = TensorLoader(torch.zeros(6, 1), torch.arange(6), bs=6, shuffle=True, seed=seed)
    assert [sorted(next(iter(dl))[1].tolist()) for _ in range(3)] == [list(range(6))] * 3


@pytest.mark.parametrize("x, y, seed, match", [
    (np.zeros((4, 2), np.float32), np.arange(4), None, r"x and y must be tensors.*ndarray.*torch.as_tensor"),
    (torch.zeros(4, 2), list(range(4)), None, r"x and y must be tensors.*list.*torch.as_tensor"),
    (torch.zeros(4, 2), torch.arange(4), 1.7, r"seed must be an int or None, got 1.7"),
    (torch.zeros(4, 2), torch.arange(4), True, r"seed must be an int or None, got True")])
def test_tensorloader_refuses_what_it_would_misread(x, y, seed, match):
    """NumPy arrays and lists failed at the first batch with AttributeErrors; seed=1.7 became 1 without a word."""
    with pytest.raises((TypeError, ValueError), match=match):
        TensorLoader(x, y, bs=2, shuffle=True, seed=seed)


def test_a_seeded_state_of_the_old_order_rule_warns_that_resume_is_not_exact():
    """A checkpoint of a loader whose epochs were seeded seed + e: the orders after resume are the new rule's."""
    dl = loader(10, 5, shuffle=True, seed=0)
    with pytest.warns(UserWarning, match=r"older miniai.*seed \+ e.*not walk the data exactly"):
        dl.load_state_dict({"seed": 3, "epoch": 2})
    assert (dl.seed, dl.epoch) == (3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dl.load_state_dict(dl.state_dict())


def test_from_dd_names_the_classes_of_its_label_column():
    """dls.classes was None for a DatasetDict whose label column is a ClassLabel: infer answered '3', not the name,
    and export saved no class names (get_dls read them)."""
    import datasets
    feats = datasets.Features({"image": datasets.Array2D((2, 2), "float32"),
                               "label": datasets.ClassLabel(names=["cat", "dog"])})
    split = datasets.Dataset.from_dict({"image": [[[0.0, 1.0], [1.0, 0.0]]] * 4, "label": [0, 1, 0, 1]},
                                       features=feats).with_format("torch")
    dls = DataLoaders.from_dd(datasets.DatasetDict({"train": split, "validation": split}), 2)
    assert dls.classes == ["cat", "dog"]
    plain = datasets.Dataset.from_dict({"image": [[[0.0]]] * 2, "label": [0, 1]}).with_format("torch")
    assert DataLoaders.from_dd(datasets.DatasetDict({"train": plain, "test": plain}), 2).classes is None
    # a ClassLabel named otherwise, last, is the target too (it was: classes None, infer answered numbers)
    feats = datasets.Features({"image": datasets.Array2D((2, 2), "float32"),
                               "category": datasets.ClassLabel(names=["cat", "dog"])})
    split = datasets.Dataset.from_dict({"image": [[[0.0, 1.0], [1.0, 0.0]]] * 4, "category": [0, 1, 0, 1]},
                                       features=feats).with_format("torch")
    assert DataLoaders.from_dd(datasets.DatasetDict({"train": split, "validation": split}), 2).classes == ["cat", "dog"]
    # without as_tuple the batches stay dicts, and nothing makes the last column the target: a label-named one only
    feats = datasets.Features({"x": datasets.Array2D((2, 2), "float32"),
                               "category": datasets.ClassLabel(names=["cat", "dog"]),
                               "source": datasets.ClassLabel(names=["web", "camera"])})
    split = datasets.Dataset.from_dict({"x": [[[0.0, 1.0], [1.0, 0.0]]] * 4, "category": [0, 1, 0, 1],
                                        "source": [0, 0, 1, 1]}, features=feats).with_format("torch")
    dd = datasets.DatasetDict({"train": split, "validation": split})
    assert DataLoaders.from_dd(dd, 2, as_tuple=False).classes is None  # (it named them web, camera)


def test_from_dd_refuses_splits_whose_columns_differ():
    """train with an extra last column 'id', validation without: train batches were (x, category, id), target id,
    and valid batches (x, category), target category: each pass had another target, with a warning about train's
    columns only."""
    import datasets
    feats = {"x": datasets.Array2D((2, 2), "float32"), "category": datasets.ClassLabel(names=["cat", "dog"])}
    rows = {"x": [[[0.0, 1.0], [1.0, 0.0]]] * 4, "category": [0, 1, 0, 1]}
    valid = datasets.Dataset.from_dict(rows, features=datasets.Features(feats))
    train = datasets.Dataset.from_dict({**rows, "id": [0, 1, 2, 3]},
                                       features=datasets.Features({**feats, "id": datasets.Value("int64")}))
    with pytest.raises(ValueError, match=r"split 'train' gives batches of \('x', 'category', 'id'\) and split "
                                         r"'validation' of \('x', 'category'\).*if it is not the target, remove it "
                                         r"from train, dd\['train'\] = dd\['train'\].remove_columns\(\['id'\]\)"):
        DataLoaders.from_dd(datasets.DatasetDict({"train": train, "validation": valid}), 2)
    DataLoaders.from_dd(datasets.DatasetDict({"train": train, "validation": valid}), 2, as_tuple=False)  # dicts: fine
    unlabelled = datasets.Dataset.from_dict({"x": rows["x"]}, features=datasets.Features({"x": feats["x"]}))
    with pytest.raises(ValueError, match=r"split 'test' has no 'category', the column train's batches end with, "
                                         r"their target, so the split can't be validated on.*train_test_split"):
        DataLoaders.from_dd(datasets.DatasetDict({"train": valid, "test": unlabelled}), 2)
    # what batches are alike passes: an extra column in valid, 'label' vs 'labels', a transform dropping train's extra
    labelled = {"x": rows["x"], "label": rows["category"]}
    plain = datasets.Dataset.from_dict(labelled)
    DataLoaders.from_dd(datasets.DatasetDict({"train": valid, "validation": train}), 2)
    DataLoaders.from_dd(datasets.DatasetDict({"train": plain, "validation": plain.rename_column("label", "labels")}), 2)
    dropped = train.with_transform(lambda b: {"x": b["x"], "category": b["category"]})
    DataLoaders.from_dd(datasets.DatasetDict({"train": dropped, "validation": valid}), 2)
    DataLoaders.from_dd(datasets.DatasetDict({"train": torch.utils.data.Subset(valid, [0, 1]), "validation": valid}), 2)
    renamed = valid.with_transform(lambda b: {"pixels": b["x"], "category": b["category"]})  # a transform on train
    with pytest.raises(ValueError, match=r"\('pixels', 'category'\).*\('x', 'category'\).*the same transforms\)$"):
        DataLoaders.from_dd(datasets.DatasetDict({"train": renamed, "validation": valid}), 2)  # (no remove advice)
    # (input_ids, attention_mask) here and (input_ids, token_type_ids) there: the second input differs
    tokens = datasets.Dataset.from_dict({"input_ids": [[1, 2]] * 2, "attention_mask": [[1, 1]] * 2, "label": [0, 1]})
    other = tokens.rename_column("attention_mask", "token_type_ids")
    with pytest.raises(ValueError, match=r"\('input_ids', 'attention_mask', 'label'\).*\('input_ids', "
                                         r"'token_type_ids', 'label'\).*the same transforms\)$"):  # (no removal)
        DataLoaders.from_dd(datasets.DatasetDict({"train": tokens, "validation": other}), 2)
    # a collate of one's own that gives dicts (a padding collator's) is checked through it
    meta = tokens.add_column("meta", [0, 1])
    with pytest.raises(ValueError, match=r"split 'train' alone|remove_columns\(\['meta'\]\)"):
        DataLoaders.from_dd(datasets.DatasetDict({"train": meta, "validation": tokens}), 2,
                            collate_fn=lambda items: torch.utils.data.default_collate(items))
    DataLoaders.from_dd(datasets.DatasetDict({"train": train, "validation": valid}), 2,  # its own tuples: its own
                        collate_fn=lambda items: (torch.stack([torch.as_tensor(i["x"]) for i in items]),
                                                  torch.tensor([int(i["category"]) for i in items])))



def test_from_dd_warns_of_a_classlabel_column_that_would_go_to_the_model():
    """Features {'cls': ClassLabel, 'image': ...}: only columns named label/labels/target/targets/y go last, so the
    batch was (cls, image) and the model was fed the labels, failing deep inside with an IndexError. Taking the
    ClassLabel for the label instead would swap a tabular dataset's ClassLabel input and its float target, silently:
    from_dd keeps the features' order and says what goes where, and how to name the label."""
    import datasets
    feats = datasets.Features({"cls": datasets.ClassLabel(names=["cat", "dog"]),
                               "image": datasets.Array2D((2, 2), "float32")})
    split = datasets.Dataset.from_dict({"cls": [0, 1, 1, 0], "image": [[[0.5, 1.0], [1.0, 0.0]]] * 4},
                                       features=feats).with_format("torch")
    dd = datasets.DatasetDict({"train": split, "validation": split})
    said = (r"no column is named as a label .* the batches are \(cls, image\): the last, 'image', is the target, and "
            r"the ClassLabel 'cls' goes to the model.*ds = ds.rename_column\('cls', 'label'\)")
    with pytest.warns(UserWarning, match="DataLoaders.from_dd: " + said):  # at the first batch: what it really is
        next(iter(DataLoaders.from_dd(dd, 4).train))
    with pytest.warns(UserWarning, match="collate_dict: " + said):
        collate_dict(split)([split[0], split[1]])
    same_names = dd.with_transform(lambda b: {"cls": b["cls"], "image": [[[0.0] * 2] * 2] * len(b["cls"])})
    with pytest.warns(UserWarning, match="DataLoaders.from_dd: " + said):  # a transform keeping the columns
        next(iter(DataLoaders.from_dd(same_names, 4).train))
    with pytest.warns(UserWarning, match="DataLoaders.from_dd: " + said):  # a collate of one's own giving a dict
        next(iter(DataLoaders.from_dd(dd, 4, collate_fn=lambda items: {k: torch.stack([i[k] for i in items])
                                                                         for k in items[0]}).train))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dls = DataLoaders.from_dd(dd.rename_column("cls", "label"), 4)
        xb, yb = next(iter(dls.valid))
        assert xb.shape == (4, 2, 2) and yb.tolist() == [0, 1, 1, 0] and dls.classes == ["cat", "dog"]
        next(iter(DataLoaders.from_dd(datasets.DatasetDict({"train": split.select_columns(["image", "cls"]),
                                                            "test": split.select_columns(["image", "cls"])}), 4).train))
        renamed = dd.with_transform(lambda b: {"image": b["image"], "label": b["cls"]})  # a transform's own columns
        assert next(iter(DataLoaders.from_dd(renamed, 4).valid))[1].tolist() == [0, 1, 1, 0]
        def own_tuple(items):  # a collate of one's own making the tuple itself
            return torch.stack([i["image"] for i in items]), torch.stack([i["cls"] for i in items])
        next(iter(DataLoaders.from_dd(dd, 4, collate_fn=own_tuple).train))


def test_the_classlabel_warning_is_not_given_by_loader_workers(monkeypatch):
    """Given inside each loader worker, the warning came once per worker and pass on stderr, and could not be caught
    in the main process (warnings.catch_warnings saw none): in a worker (get_worker_info() set) it is not given."""
    import datasets
    import miniai.data
    feats = datasets.Features({"cls": datasets.ClassLabel(names=["cat", "dog"]),
                               "image": datasets.Array2D((2, 2), "float32")})
    split = datasets.Dataset.from_dict({"cls": [0, 1, 1, 0], "image": [[[0.5, 1.0], [1.0, 0.0]]] * 4},
                                       features=feats).with_format("torch")
    dls = DataLoaders.from_dd(datasets.DatasetDict({"train": split, "validation": split}), 2)
    monkeypatch.setattr(miniai.data, "get_worker_info", lambda: object())  # as in a worker
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(dls.train)) == 2
    # with workers the batches are collated there: from_dd asks of the first item, drawing nothing
    state = torch.get_rng_state()
    drawing = split.with_transform(lambda b: {"cls": b["cls"], "image": torch.rand(len(b["cls"]), 2, 2)})
    with pytest.warns(UserWarning, match=r"DataLoaders.from_dd: no column is named as a label"):
        DataLoaders.from_dd(datasets.DatasetDict({"train": drawing, "validation": drawing}), 2, num_workers=1)
    assert torch.equal(state, torch.get_rng_state())
    streaming = datasets.IterableDatasetDict({"train": split.to_iterable_dataset(),
                                              "validation": split.to_iterable_dataset()})
    with pytest.warns(UserWarning, match=r"DataLoaders.from_dd: no column is named as a label"):  # (no item 0)
        DataLoaders.from_dd(streaming, 2, num_workers=1)


def test_a_saved_dataset_whose_label_column_is_named_labels_says_how_to_rename_it():
    """get_dls(path=) of a saved DatasetDict with a 'labels' column said only that it needs 'label' (from_dd takes
    'labels', 'target', 'y' too): the message now gives the rename."""
    from datasets import Dataset
    ds = Dataset.from_dict({"image": [np.zeros((2, 2), np.uint8)], "labels": [0]})
    with pytest.raises(KeyError, match=r"has \['image', 'labels'\]: rename yours as those, e.g. "
                                       r"ds = ds.rename_column\('labels', 'label'\)"):
        sources.hf_to_tensors(ds)
    ds = Dataset.from_dict({"id": [7], "pixels": [np.zeros((2, 2), np.uint8)], "label": [0]})
    with pytest.raises(KeyError, match=r"e.g. ds = ds.rename_column\('pixels', 'image'\)"):  # (it said 'id')
        sources.hf_to_tensors(ds)
    for ints in ({"id": [7], "num": [0]}, {"idx": [7]}):  # ints, neither a ClassLabel nor named as a label: no guess
        ds = Dataset.from_dict({"image": [np.zeros((2, 2), np.uint8)], **ints})
        with pytest.raises(KeyError, match=r"rename yours as those, ds = ds.rename_column\(old, new\)"):
            sources.hf_to_tensors(ds)


def test_images_stored_as_python_lists_or_as_encoded_files_without_metadata_get_the_cast_that_reads_them(tmp_path):
    """Dataset.from_dict of images as Python lists stores int64: refused as 'must hold same-sized 8-bit images,
    got array int64', with no way out named; a parquet file written by plain pyarrow (no datasets metadata) holds
    {bytes, path} records, refused as 'images that differ in size ... pass mode=' (it was given). Each message now
    names the cast, and the cast works."""
    import io

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    lists = datasets.Dataset.from_dict({"image": images.tolist(), "label": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"int64 .*ds = ds.cast_column\('image', datasets.Array2D\(\(4, 5\), "
                                         r"'uint8'\)\)"):
        sources.hf_to_tensors(lists)
    wide = datasets.Dataset.from_dict({"image": list(images.astype(np.int16) * 100), "label": [0, 1, 2]},
                                      features=datasets.Features({"image": datasets.Array2D((4, 5), "int16"),
                                                                  "label": datasets.Value("int64")}))
    with pytest.raises(ValueError, match=r"8-bit images, got array int16 \(3, 4, 5\)$"):  # (it said int64)
        sources.hf_to_tensors(wide)
    x, _ = sources.hf_to_tensors(lists.cast_column("image", datasets.Array2D((4, 5), "uint8")))
    assert torch.equal(x, torch.from_numpy(images)[:, None])

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        return {"bytes": buf.getvalue(), "path": None}
    pq.write_table(pa.table({"image": [png(a) for a in images], "label": [0, 1, 2]}), tmp_path / "train.parquet")
    plain = datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"), split="train")
    with pytest.raises(ValueError, match=r"encoded image files .*ds = ds.cast_column\('image', datasets.Image\(\)\)"):
        sources.hf_to_tensors(plain, mode="L")
    x, _ = sources.hf_to_tensors(plain.cast_column("image", datasets.Image()), mode="L")
    assert torch.equal(x, torch.from_numpy(images)[:, None])


def test_normalize_given_as_the_means_alone_gets_the_packages_own_message():
    """normalize=[0.49, 0.48, 0.45] (per-channel means, no stds) ended in Python's "Normalize.__init__() takes 3
    positional arguments but 4 were given", never reaching the message that says what normalize takes."""
    x = torch.zeros(4, 3, 2, 2)
    with pytest.raises(TypeError, match=r"normalize must be a callable, \(mean, std\) or None.*3 items"):
        DataLoaders(TensorLoader(x, x, 2), TensorLoader(x, x, 2), normalize=[0.49, 0.48, 0.45])
    assert DataLoaders(TensorLoader(x, x, 2), None, normalize=([0.5] * 3, [0.25] * 3)).normalize is not None


def test_write_idx_through_a_symlink_writes_where_the_link_points(tmp_path):
    """write_idx on a link replaced the link with a new file, leaving the file it pointed to as it was."""
    (tmp_path / "real").mkdir()
    write_idx(tmp_path / "real" / "labels", torch.arange(10, dtype=torch.uint8))
    (tmp_path / "link").symlink_to(tmp_path / "real" / "labels")
    write_idx(tmp_path / "link", torch.arange(10, dtype=torch.uint8) + 5)
    assert (tmp_path / "link").is_symlink()
    assert read_idx(tmp_path / "real" / "labels").tolist() == list(range(5, 15))


def test_write_idx_to_a_directory_says_so_and_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """write_idx on a directory (or a link to one) failed naming its temporary file ('.d.123.tmp' -> 'd') and left
    it beside the data, as any failed write did."""
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    for path in (tmp_path / "d", tmp_path / "link"):
        with pytest.raises(IsADirectoryError, match=r"write_idx writes one file, and .*d is a directory: give a file "
                                                    r"name, e.g. write_idx\('.*labels\.idx', tensor\)"):
            write_idx(path, torch.arange(3, dtype=torch.uint8))

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_idx(tmp_path / "labels.gz", torch.arange(3, dtype=torch.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "link"]


def test_a_normalization_the_loaders_items_have_not_had_is_refused():
    """(probe P24, session 23) normalize=(mean, std) says how raw pixels became the loaders' items; over items left
    at 0-1 whose statistics are those very mean and std, the fit trained on 0-1 inputs and infer fed normalized
    ones: its predictions agreed with get_preds' on 60% of the same images, without a word."""
    raw = torch.randint(0, 256, (200, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x01, y = raw.float() / 255, torch.zeros(200, dtype=torch.long)
    mean, std = x01.mean().item(), x01.std().item()
    with pytest.raises(ValueError, match=r"the training items. mean is 0.4\d+ and std 0.2\d+: those of pixels on "
                                         r"the 0-1 "
                                         r"scale that normalize=.* describes, not of normalized ones"):
        DataLoaders(TensorLoader(x01, y, bs=32), TensorLoader(x01, y, bs=32), normalize=([mean], [std]))
    normalized = (x01 - mean) / std  # what normalize says they are: taken
    DataLoaders(TensorLoader(normalized, y, bs=32), TensorLoader(normalized, y, bs=32), normalize=([mean], [std]))
    # (probe P25) items on the 0-255 scale, or in [-1, 1], can't be pixels normalized so: refused too
    with pytest.raises(ValueError, match=r"the training items range from .* to .*: normalize=.* makes pixels "
                                         r"\(0-1\) into values from -\d.\d+ to \d.\d+, so these are no pixels"):
        DataLoaders(TensorLoader(raw.float(), y, bs=32), TensorLoader(raw.float(), y, bs=32), normalize=([mean], [std]))
    twice = ((x01 - 0.5) / 0.5 - 0.5) / 0.5  # (regression round T4) normalized twice: -3 to 1, where once is -1 to 1
    with pytest.raises(ValueError, match=r"so these are no pixels it normalized"):
        DataLoaders(TensorLoader(twice, y, bs=32), TensorLoader(twice, y, bs=32), normalize=([0.5], [0.5]))
    # (regression rounds T2, T3) normalized items with a little noise, or upsampled, or pixels noised before they
    # were normalized, reach past that range: taken
    g = torch.Generator().manual_seed(0)
    for near in (normalized + 0.02 * torch.randn(normalized.shape, generator=g),
                 (x01 + 0.1 * torch.randn(x01.shape, generator=g) - mean) / std,
                 torch.nn.functional.interpolate(normalized, size=8, mode="bicubic")):
        DataLoaders(TensorLoader(near, y, bs=32), TensorLoader(near, y, bs=32), normalize=([mean], [std]))
    # and unnormalized 0-1 colour items with statistics close to normalize's, ImageNet's, are refused
    cifar = (torch.randn(300, 3, 8, 8, generator=g) * torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)
             + torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)).clamp(0, 1)
    with pytest.raises(ValueError, match=r"those of pixels on the 0-1 scale"):
        DataLoaders(TensorLoader(cifar, y[:1].expand(300), bs=32), TensorLoader(cifar, y[:1].expand(300), bs=32),
                    normalize=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    # (regression round T1) bright RGB photos normalized with torchvision's habit (0.5, 0.5) have items whose mean
    # and std are 0.5 too: taken, as they are no 0-1 pixels (some are below 0)
    g = torch.Generator().manual_seed(0)
    photos = ((0.75 + 0.25 * torch.randn(64, 3, 8, 8, generator=g)).clamp(0, 1) - 0.5) / 0.5
    DataLoaders(TensorLoader(photos, y[:64], 16), TensorLoader(photos, y[:64], 16), normalize=((0.5,) * 3, (0.5,) * 3))


def test_collate_dict_after_a_transform_that_renames_columns_takes_the_batchs_own_as_from_dd_does():
    """(probe P44) The Hugging Face docs' set_transform (image -> pixel_values): collate_dict(ds) failed with a bare
    KeyError: 'image', where from_dd took the batch's own columns."""
    import PIL.Image
    from datasets import ClassLabel, Dataset, Features, Image
    images = [PIL.Image.fromarray(np.full((5, 5), 30 * i, np.uint8)) for i in range(4)]
    ds = Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]},
                           features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}))
    ds.set_transform(lambda b: {"pixel_values": [torch.tensor(np.array(o), dtype=torch.float32) for o in b["image"]],
                                "label": b["label"]})
    xb, yb = collate_dict(ds)([ds[0], ds[1]])
    assert xb.shape == (2, 5, 5) and yb.tolist() == [0, 1]
